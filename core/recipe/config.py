"""``$FINETTY_HOME/config.yaml``: the person's own settings, the same for every recipe and every run.

It holds what belongs to the person rather than to a job: where to tell them
that a run ended (``notify:``, a list of Apprise URLs) is the first such key.
One reader for every caller (the recipe validator, the worker, the queue runner,
``finetty notify``), so a bad file is refused in one way: an
:class:`~finetty.core.errors.InputError` naming the file, the key and the fix.

It lives with the recipe because it is checked with every recipe: a run starts
only when both are good.
"""

from __future__ import annotations

from pathlib import Path

from finetty.core import paths
from finetty.core.errors import InputError

CONFIG_FILE = "config.yaml"
#: The keys config.yaml may hold, with what each is for (a misspelt key is refused with these named).
KEYS = {"notify": "Apprise URLs told when a run or the queue ends, fails, crosses the memory watermark or runs "
                  "out of memory"}


def config_file() -> Path:
    """``$FINETTY_HOME/config.yaml``."""
    return paths.home() / CONFIG_FILE


def read_config() -> dict:
    """The settings in config.yaml (empty when there is no such file); a file that is not a mapping of known keys
    is refused with an InputError naming it."""
    import yaml

    file = config_file()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(file, None, f"cannot be read ({exc})", "make it a readable UTF-8 YAML file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(file, f"line {mark.line + 1}" if mark else None,
                         f"is not valid YAML: {getattr(exc, 'problem', None) or exc}",
                         "check the indentation and quoting there") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputError(file, "top level", f"is a YAML {type(data).__name__}",
                         f"config.yaml is a mapping of keys: {', '.join(KEYS)}")
    for key in data:
        if key not in KEYS:
            raise InputError(file, f"key {key}", f"{str(key)!r} is not a config.yaml key",
                             "its keys: " + "; ".join(f"{name} ({what})" for name, what in KEYS.items()))
    return data
