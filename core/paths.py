"""Where finetty keeps things: FINETTY_HOME, the runs directory, safe names, and who may read them.

Everything finetty creates is owner-only: directories 0700, files 0600. Run
directories hold recipes, data excerpts in logs, optimizer state and the locks
that say who trains; another local user can neither read them nor take a lock
(an ``flock`` needs an open descriptor, and a 0700 directory gives none).
Files in a run directory are opened without following a symbolic link in
their last component: a link planted there never redirects a write or a read.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from finetty.core.errors import InputError

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def home() -> Path:
    """``$FINETTY_HOME``, default ``~/.finetty``."""
    return Path(os.environ.get("FINETTY_HOME") or Path.home() / ".finetty").expanduser()


def runs_dir(override: str | Path | None = None) -> Path:
    """``--runs-dir`` if given, else ``$FINETTY_HOME/runs``."""
    return Path(override).expanduser() if override else home() / "runs"


def log_dir() -> Path:
    return home() / "logs"


# -- a run directory's layout (DESIGN.md): named here, on the ground floor, because a run's result is also a
# model a recipe can start from, and the rooms that resolve models sit below the run room

RUN_RECIPE = "recipe.yaml"
RUN_CHECKPOINTS = "checkpoints"
RUN_FINAL = "final"
CHECKPOINT_MARKER = "finetty-checkpoint.json"
"""written last into a checkpoint folder: without it, the folder is not a complete checkpoint"""


def is_safe_name(name: str) -> bool:
    """A name that cannot leave its directory: no separators, no ``..``, no leading dot."""
    return isinstance(name, str) and bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


def child(parent: Path, name: str) -> Path:
    """``parent / name``, refusing any name that would escape ``parent``."""
    if not is_safe_name(name):
        raise ValueError(f"{name!r} is not a safe name (letters, digits, '.', '_', '-'; no '..')")
    return parent / name


def make_private_dir(path: Path) -> Path:
    """Create ``path`` and its missing parents owner-only (0700); an existing one is left as it is.

    (``Path.mkdir(mode=..., parents=True)`` gives the parents the default mode, as ``mkdir -p`` does.)"""
    wanted = path = Path(path)
    missing = []
    while not os.path.lexists(path):
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for folder in reversed(missing):
        try:
            os.mkdir(folder, PRIVATE_DIR)
        except FileExistsError:
            pass
    return wanted


def open_nofollow(path: Path, flags: int, mode: int = PRIVATE_FILE) -> int:
    """``os.open`` that refuses a symbolic link as the last component, with an error naming the file.

    New files are created ``mode`` (owner-only); a link raises :class:`InputError` (exit 2) instead of
    ELOOP, so a link planted in a run directory is reported, never followed."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and os.path.islink(path)):
            raise InputError(path, None, "is a symbolic link, and finetty never follows links in a run directory",
                             "remove the link and put the real file in its place") from None
        raise


def exposure(path: Path) -> str | None:
    """How ``path`` is open to other users (``"group- and world-accessible (mode 0755)"``), None if private."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    who = [name for name, bits in (("group", stat.S_IRWXG), ("world", stat.S_IRWXO)) if mode & bits]
    if not who:
        return None
    return f"{'- and '.join(who)}-accessible (mode {stat.S_IMODE(mode):04o})"


def home_warning() -> str | None:
    """A one-line warning when ``$FINETTY_HOME`` exists and other users may enter it, else None."""
    folder = home()
    open_to = exposure(folder)
    if open_to is None:
        return None
    return (f"{folder} is {open_to}: other users may read your runs (recipes, logs, checkpoints) and block "
            f"their locks; make it private with `chmod 700 {folder}`")
