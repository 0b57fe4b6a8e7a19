"""A path field that completes from the file system (right arrow or End accepts the suggestion)."""

from __future__ import annotations

import os
from pathlib import Path

from textual.suggester import Suggester


class PathSuggester(Suggester):
    """Suggests the first entry of the typed folder that starts with what was typed; folders end with ``/``.

    ``suffixes`` keeps files to those endings (folders are always offered)."""

    def __init__(self, suffixes: tuple[str, ...] = (), base: Path | None = None):
        super().__init__(use_cache=False, case_sensitive=True)
        self.suffixes = suffixes
        self.base = base

    async def get_suggestion(self, value: str) -> str | None:
        return complete(value, self.suffixes, self.base)


def complete(value: str, suffixes: tuple[str, ...] = (), base: Path | None = None) -> str | None:
    if not value:
        return None
    expanded = os.path.expanduser(value)
    folder, prefix = os.path.split(expanded)
    where = Path(folder or ".")
    if not where.is_absolute() and base is not None:
        where = base / where
    try:
        names = sorted(os.listdir(where))
    except OSError:
        return None
    for name in names:
        if not name.startswith(prefix) or (name.startswith(".") and not prefix.startswith(".")) or name == prefix:
            continue
        full = where / name
        if full.is_dir():
            name += "/"
        elif suffixes and not name.lower().endswith(suffixes):
            continue
        return value + name[len(prefix):]
    return None
