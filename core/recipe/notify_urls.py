"""Notification URLs (the ``notify:`` key of a recipe and of config.yaml): checked, and masked wherever written.

A notification URL is an Apprise URL (``ntfy://topic``, ``mailto://user:pass@host``,
``discord://id/token``, ``json://host/path``): one string per service, and
often the only credential it needs. So a URL is a secret:

- :func:`check` refuses a URL Apprise cannot send to before anything starts,
  and its message shows the service's name, never the rest of the URL;
- :func:`mask` is the URL as Apprise itself shows it in privacy mode (passwords
  and tokens replaced), which is what the run directory's recipe copy holds
  (:func:`split_recipe_text`); the worker gets the real URLs from a private
  file outside the run directory (:mod:`finetty.core.run.notify`).

Apprise is imported only when there is a URL to look at: never at the app's or
the command line's start-up.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from finetty.core.errors import InputError, raise_all

KEY = "notify"
EXAMPLE = "notify: [ntfy://my-topic, 'mailto://me:app-password@gmail.com']"
_SCHEME = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(url: str) -> str | None:
    """The service part of a URL (``ntfy`` in ``ntfy://topic``), None when it has none."""
    found = _SCHEME.match(url)
    return found.group(1).lower() if found else None


def _hidden(url: str) -> str:
    """A URL Apprise could not read, as it may be shown: its scheme only (whatever follows may be a secret)."""
    name = scheme(url)
    return f"{name}://…" if name else "…"


def mask(url: str) -> str:
    """``url`` as Apprise shows it in privacy mode (``json://user:****@host/path``); scheme-only if unreadable."""
    server = _server(url)
    return server.url(privacy=True) if server is not None else _hidden(url)


@contextmanager
def apprise_log(level: int = logging.WARNING) -> Iterator:
    """Apprise's log captured (``.getvalue()``) and kept off the terminal: its messages may quote a URL."""
    import apprise

    logger = logging.getLogger(apprise.LOGGER_NAME)
    propagate = logger.propagate
    logger.propagate = False
    try:
        with apprise.LogCapture(level=level) as log:
            yield log
    finally:
        logger.propagate = propagate


def _server(url: str):
    """Apprise's object for ``url``, None if it cannot send there."""
    import apprise

    box = apprise.Apprise()
    with apprise_log():
        return box[0] if box.add(url) and len(box) else None


def _known_schemes() -> list[str]:
    from apprise import NotificationManager

    return sorted(NotificationManager().schemas())


def check(urls: Any, file: str | Path | None, place: str) -> list[str]:
    """The ``notify`` value as a list of URLs Apprise can send to; every bad one refused in one InputError each.

    ``place`` names the key in ``file`` (``line 12, key notify``); an item's place adds its number (from 1)."""
    if urls is None:
        return []
    if not isinstance(urls, list):
        raise InputError(file, place, f"must be a list of Apprise URLs, not a {type(urls).__name__}", EXAMPLE)
    problems: list[InputError] = []
    found = []
    for number, url in enumerate(urls, 1):
        where = f"{place}, item {number}"
        if not isinstance(url, str) or not url.strip():  # (the value is not shown: it may hold a secret)
            kinds = {bool: "true/false", int: "a number", float: "a number", dict: "a mapping", list: "a list"}
            what = "an empty text" if isinstance(url, str) else kinds.get(type(url), "empty")
            problems.append(InputError(file, where, f"must be an Apprise URL, not {what}", EXAMPLE))
            continue
        url = url.strip()
        if _server(url) is None:
            problems.append(_refusal(url, file, where))
            continue
        found.append(url)
    raise_all(problems)
    return found


def _refusal(url: str, file: str | Path | None, where: str) -> InputError:
    """Why Apprise cannot send to ``url``, naming the service but no other part of it (it may hold a secret)."""
    from finetty.core.plugin.options import nearest

    name = scheme(url)
    known = _known_schemes()
    if name is None:
        return InputError(file, where, "is not a URL (no service:// at its start)", EXAMPLE)
    if name not in known:
        close = nearest(name, known)
        return InputError(file, where, f"{_hidden(url)} names no service Apprise knows",
                          f"did you mean {close}://?" if close else
                          "see https://github.com/caronc/apprise/wiki for the services and their URLs")
    return InputError(file, where, f"{_hidden(url)} is not a URL Apprise can send to (a part the {name} service "
                      "needs is missing or malformed; the rest of the URL is not shown, it may hold a secret)",
                      f"see the {name} page of https://github.com/caronc/apprise/wiki for its URL's form")


def split_recipe_text(recipe_text: str) -> tuple[str, list[str]]:
    """A resolved recipe's YAML with its notify URLs masked, and the real URLs (``[]`` and the text as it was when
    it has none): the run directory keeps the first, never the second."""
    import yaml

    try:
        data = yaml.safe_load(recipe_text)
    except yaml.YAMLError:
        return recipe_text, []
    urls = data.get(KEY) if isinstance(data, dict) else None
    if not urls or not isinstance(urls, list):
        return recipe_text, []
    urls = [str(url) for url in urls]
    data[KEY] = [mask(url) for url in urls]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True), urls
