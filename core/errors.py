"""The one error type for bad input: it names the file, the place and the fix."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class InputError(Exception):
    """Bad input found before a run starts.

    ``source`` is the file (or the command-line flag) that holds the problem,
    ``place`` where in it (``line 4``, ``record 17``, ``key train.max_steps``),
    ``problem`` what is wrong and ``fix`` what would be accepted instead.
    """

    source: str | Path | None
    place: str | None
    problem: str
    fix: str | None = None

    def __str__(self) -> str:
        where = ", ".join(str(p) for p in (self.source, self.place) if p)
        text = f"{where}: {self.problem}" if where else self.problem
        if self.fix:
            text += f" ({self.fix})"
        return text


class RunBusyError(Exception):
    """A live worker already holds the run."""


EXIT_BAD_INPUT = 2
