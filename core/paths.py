"""Where finetty keeps things: FINETTY_HOME, the runs directory, safe names."""

from __future__ import annotations

import os
import re
from pathlib import Path

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def home() -> Path:
    """``$FINETTY_HOME``, default ``~/.finetty``."""
    return Path(os.environ.get("FINETTY_HOME") or Path.home() / ".finetty").expanduser()


def runs_dir(override: str | Path | None = None) -> Path:
    """``--runs-dir`` if given, else ``$FINETTY_HOME/runs``."""
    return Path(override).expanduser() if override else home() / "runs"


def log_dir() -> Path:
    return home() / "logs"


def is_safe_name(name: str) -> bool:
    """A name that cannot leave its directory: no separators, no ``..``, no leading dot."""
    return isinstance(name, str) and bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


def child(parent: Path, name: str) -> Path:
    """``parent / name``, refusing any name that would escape ``parent``."""
    if not is_safe_name(name):
        raise ValueError(f"{name!r} is not a safe name (letters, digits, '.', '_', '-'; no '..')")
    return parent / name
