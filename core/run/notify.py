"""Notifications that need no terminal: the worker and the queue runner tell a person through Apprise.

A queue that trains overnight with the app closed has nobody watching its
events, so the processes that outlive the app send the news themselves: the
worker when its run finishes, fails (the reason), crosses the memory watermark
or runs out of memory (:func:`watch` wraps its event writer), the queue runner
when an entry cannot start and when the queue is done. The URLs are
config.yaml's ``notify:`` (every run) plus the recipe's (that run).

- Delivery never touches the run: the worker hands each message to one
  background thread and goes on; a URL that fails (endpoint down, a timeout)
  becomes a ``warning`` event and a worker.log line. At the end of the run
  the worker waits at most :data:`CLOSE_WAIT` seconds for what is still being
  sent, each URL gets :data:`CONNECT_TIMEOUT` / :data:`READ_TIMEOUT`, so a slow
  endpoint delays the worker's exit by a few seconds and never its final event.
- A URL is a credential. The run directory's recipe copy holds them masked
  (:func:`keep_secrets`, called where the run directory is made); the real
  ones wait in ``$FINETTY_HOME/notify/<run-id>.json`` (owner-only), outside
  the run directory, where a resumed worker finds them again.
- Text from the run (a failure reason, a dataset name) is untrusted: it is
  cleaned of control characters before it leaves (:func:`finetty.core.text.clean`).

Apprise is imported only when there is something to send.
"""

from __future__ import annotations

import json
import os
import queue as queue_mod
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from finetty.core import paths
from finetty.core.recipe import config, notify_urls
from finetty.core.text import clean, one_line

SECRETS_DIR = "notify"
"""under $FINETTY_HOME: the real URLs of each run's recipe, one owner-only file per run"""
CONNECT_TIMEOUT = 3.0
"""seconds to reach an endpoint"""
READ_TIMEOUT = 5.0
"""seconds an endpoint may take to answer"""
CLOSE_WAIT = 8.0
"""seconds the end of a worker waits, at most, for notifications still being sent"""


@dataclass
class Delivery:
    """What became of one message to one URL."""

    url: str
    """the URL masked, as it may be shown"""
    ok: bool
    reason: str = ""
    """why it failed (Apprise's words), empty when it was delivered"""


# -- where the URLs come from ----------------------------------------------------------------------

def config_urls() -> list[str]:
    """config.yaml's ``notify`` URLs (every run's); an InputError names the file when one is bad."""
    return notify_urls.check(config.read_config().get(notify_urls.KEY), config.config_file(),
                             f"key {notify_urls.KEY}")


def _secret_file(run_dir: Path) -> Path:
    return paths.child(paths.home() / SECRETS_DIR, f"{Path(run_dir).name}.json")


def keep_secrets(run_dir: Path, recipe_text: str) -> str:
    """The recipe text a new run directory may hold: its notify URLs masked. The real ones go to a private
    file outside the run directory, named for the run (and holding its path, so only this run reads them)."""
    masked, urls = notify_urls.split_recipe_text(recipe_text)
    if not urls:
        return recipe_text
    folder = paths.make_private_dir(paths.home() / SECRETS_DIR)
    target = _secret_file(run_dir)
    tmp = folder / (target.name + ".tmp")
    with os.fdopen(paths.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as handle:
        json.dump({"run_dir": str(Path(run_dir).resolve()), "urls": urls}, handle)
    tmp.replace(target)
    return masked


def recipe_urls(run_dir: Path) -> list[str]:
    """The real notify URLs of the run's recipe (from the private file :func:`keep_secrets` wrote)."""
    try:
        fd = paths.open_nofollow(_secret_file(run_dir), os.O_RDONLY)
    except (OSError, ValueError):
        return []
    with os.fdopen(fd, encoding="utf-8") as handle:
        try:
            kept = json.load(handle)
        except ValueError:
            return []
    if not isinstance(kept, dict) or kept.get("run_dir") != str(Path(run_dir).resolve()):
        return []
    return [url for url in kept.get("urls", []) if isinstance(url, str)]


def run_urls(run_dir: Path) -> list[str]:
    """Every URL a run tells: config.yaml's, then its recipe's, each once."""
    return list(dict.fromkeys(config_urls() + recipe_urls(run_dir)))


# -- sending ---------------------------------------------------------------------------------------

def deliver(urls: list[str], title: str, body: str, kind: str = "info") -> list[Delivery]:
    """Send one message to each URL in turn, each with short timeouts; what became of each (never raises).

    ``kind`` is Apprise's notify type: info, success, warning or failure (the icon or colour a service shows)."""
    import apprise

    title, body = one_line(title), clean(body)
    found = []
    for url in urls:
        box = apprise.Apprise()
        with notify_urls.apprise_log() as log:
            try:
                if not box.add(url) or not len(box):
                    found.append(Delivery(notify_urls.mask(url), False, "Apprise cannot read this URL"))
                    continue
                server = box[0]
                server.socket_connect_timeout, server.socket_read_timeout = CONNECT_TIMEOUT, READ_TIMEOUT
                shown = server.url(privacy=True)
                ok = bool(box.notify(body=body, title=title, notify_type=kind))
            except Exception as exc:  # a service's own bug must not reach the run
                shown, ok = notify_urls.mask(url), False
                log.write(f"{type(exc).__name__}: {exc}\n")
        said = [line.split(" - ", 2)[-1] for line in log.getvalue().splitlines() if line.strip()]
        found.append(Delivery(shown, ok, "" if ok else one_line("; ".join(said) or "the service refused it")))
    return found


class Sender:
    """Delivers on one background thread, in order, so the caller never waits on an endpoint.

    ``report(message)`` is called (from that thread) for each URL that fails."""

    def __init__(self, urls: list[str], report: Callable[[str], None]):
        self.urls = urls
        self.report = report
        self._jobs: queue_mod.Queue = queue_mod.Queue()
        self._thread = threading.Thread(target=self._work, name="finetty-notify", daemon=True)
        self._thread.start()

    def send(self, title: str, body: str, kind: str = "info") -> None:
        self._jobs.put((title, body, kind))

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            for delivery in deliver(self.urls, *job):
                if not delivery.ok:
                    self.report(f"notification {job[0]!r} to {delivery.url} was not delivered "
                                f"({delivery.reason}); the run is not affected")

    def close(self, wait: float = CLOSE_WAIT) -> bool:
        """Wait at most ``wait`` seconds for what is queued; True when everything was sent (or failed) by then."""
        self._jobs.put(None)
        self._thread.join(wait)
        return not self._thread.is_alive()


# -- what the worker says --------------------------------------------------------------------------

def host() -> str:
    return socket.gethostname() or "this machine"


def _about(run_dir: Path) -> str:
    """The lines every message about a run starts with: which run, on what, training what."""
    from finetty.core.recipe.recipe import from_run

    lines = [f"run: {Path(run_dir).name} on {host()}", f"folder: {run_dir}"]
    try:
        recipe = from_run(run_dir)
    except (OSError, ValueError):
        return "\n".join(lines)
    dataset = recipe.dataset if isinstance(recipe.dataset, str) else json.dumps(recipe.dataset, default=str)
    lines += [f"model: {recipe.model}", f"dataset: {dataset}", f"method/objective: {recipe.method}/{recipe.objective}"]
    return "\n".join(lines)


def message_for(event: dict, run_dir: Path) -> tuple[str, str, str] | None:
    """(title, body, kind) for an event a person wants to hear of with the app closed; None for the others."""
    name = Path(run_dir).name
    kind = event.get("type")
    if kind == "run_finished":
        loss = event.get("train_loss")
        runtime = event.get("runtime")
        what = [f"finished at step {event.get('step')}",
                f"train loss {loss:.4f}" if isinstance(loss, (int, float)) else None,
                f"in {runtime:.0f} s" if isinstance(runtime, (int, float)) else None]
        body = ", ".join(w for w in what if w) + f"\nresult: {Path(run_dir) / str(event.get('final', 'final'))}"
        return f"finetty: {name} finished", f"{_about(run_dir)}\n{body}", "success"
    if kind == "run_failed":
        body = (f"failed: {event.get('reason')}\nthe last complete checkpoint is kept; resume with "
                f"`finetty train --resume {name}`")
        return f"finetty: {name} failed", f"{_about(run_dir)}\n{body}", "failure"
    if kind == "watermark" and event.get("state") == "crossed":
        fraction, mark = event.get("fraction"), event.get("watermark")
        body = (f"GPU {event.get('gpu')} at {fraction:.0%} of its memory crossed the {mark:.0%} watermark at step "
                f"{event.get('step')}; policy: {event.get('policy')}")
        return f"finetty: {name} crossed the memory watermark", f"{_about(run_dir)}\n{body}", "warning"
    if kind == "shrink":
        where = event.get("checkpoint") or "step 0"
        body = (f"{event.get('reason')}: going on from {where} with micro-batch {event.get('previous_micro_batch')} "
                f"-> {event.get('micro_batch')} (gradient accumulation "
                f"{event.get('previous_gradient_accumulation_steps')} -> {event.get('gradient_accumulation_steps')})")
        return f"finetty: {name} ran out of memory", f"{_about(run_dir)}\n{body}", "warning"
    return None


class Watch:
    """An event writer that also tells the run's notify URLs of the events :func:`message_for` answers.

    Every other attribute is the wrapped writer's. Emitting is locked: the memory monitor's thread and the
    delivery thread's warnings write to the same file as the training loop."""

    def __init__(self, events, run_dir: Path, urls: list[str]):
        self._events = events
        self._run_dir = Path(run_dir)
        self._lock = threading.Lock()
        self._closed = False
        self._sender = Sender(urls, self._warn)

    def __getattr__(self, name: str):
        return getattr(self._events, name)

    def emit(self, type_: str, **fields) -> dict:
        with self._lock:
            event = self._events.emit(type_, **fields)
        try:
            message = message_for(event, self._run_dir)
        except Exception as exc:  # (a message that cannot be composed must not end the run)
            self._warn(f"no notification for the {type_} event: {type(exc).__name__}: {exc}")
            message = None
        if message is not None:
            self._sender.send(*message)
        return event

    def _warn(self, message: str) -> None:
        print(f"finetty: warning: {message}", flush=True)  # worker.log
        with self._lock:
            if not self._closed:
                self._events.emit("warning", message=message)

    def close(self) -> None:
        if not self._sender.close(CLOSE_WAIT):
            self._warn(f"notifications still being sent after {CLOSE_WAIT:g} s were given up; the run is not "
                       f"affected")
        with self._lock:
            self._closed = True
            self._events.close()


def watch(events, run_dir: Path):
    """``events``, telling the run's notify URLs what a person wants to know; ``events`` itself when there are
    none. A config.yaml that became unreadable since the run was checked is a warning, never a failure."""
    try:
        urls = run_urls(run_dir)
    except Exception as exc:
        message = f"no notifications: {exc}"
        print(f"finetty: warning: {message}", flush=True)
        events.emit("warning", message=one_line(message))
        urls = recipe_urls(run_dir)
    return Watch(events, run_dir, urls) if urls else events


# -- what the queue runner says --------------------------------------------------------------------

def queue_dropped(runs: Path, reason: str, recipe_text: str, say: Callable[[str], None]) -> None:
    """An entry of the queue could not start, so no worker will tell of it: config.yaml's URLs and its recipe's
    hear why."""
    urls = notify_urls.split_recipe_text(recipe_text)[1]
    _send(f"finetty: a queued run did not start ({host()})", f"queue of {runs}\n{reason}", "failure", urls, say)


def queue_finished(runs: Path, run_dirs: list[Path], say: Callable[[str], None]) -> None:
    """The queue is empty and its last run has ended: each run it started and how it ended, to config.yaml's URLs
    and those of the runs' recipes."""
    if not run_dirs:
        return
    lines = [f"queue of {runs} on {host()}: {len(run_dirs)} run(s)"]
    failed = 0
    for run_dir in run_dirs:
        status, detail = _ending(run_dir)
        failed += status != "finished"
        lines.append(f"{run_dir.name}: {status}{f' ({detail})' if detail else ''}")
    kind = "failure" if failed else "success"
    title = f"finetty: queue finished, {failed} of {len(run_dirs)} run(s) did not finish" if failed else \
        f"finetty: queue finished, {len(run_dirs)} run(s)"
    urls = [url for run_dir in run_dirs for url in recipe_urls(run_dir)]
    _send(title, "\n".join(lines), kind, urls, say)


def _ending(run_dir: Path) -> tuple[str, str]:
    """How a run ended, from its final event: (finished | failed | stopped | lost, what to add)."""
    from finetty.core.run.events import TERMINAL, read_all

    ends = [e for e in read_all(run_dir) if e["type"] in TERMINAL]
    if not ends:
        return "lost", "its worker ended without a final event"
    end = ends[-1]
    if end["type"] == "run_finished":
        loss = end.get("train_loss")
        return "finished", f"step {end.get('step')}" + (f", train loss {loss:.4f}" if isinstance(loss, float) else "")
    return TERMINAL[end["type"]], str(end.get("reason") or "")


def _send(title: str, body: str, kind: str, urls: list[str], say: Callable[[str], None]) -> None:
    """Send to config.yaml's URLs and ``urls``; each failure is said, never raised."""
    try:
        urls = list(dict.fromkeys(config_urls() + urls))
    except Exception as exc:
        say(f"no notification from config.yaml: {exc}")
    for delivery in deliver(urls, title, body, kind) if urls else []:
        if not delivery.ok:
            say(f"notification to {delivery.url} was not delivered ({delivery.reason})")
