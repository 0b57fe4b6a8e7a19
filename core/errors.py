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


class InputErrors(InputError):
    """Several problems found in one pass over the same input, each an :class:`InputError`.

    A recipe is checked whole before it is refused, so a user fixes every
    problem in one edit instead of meeting them one attempt at a time
    (torchtune's ``ConfigError`` does the same). It is an ``InputError``, so
    every caller that refuses bad input refuses it; its text is one line per
    problem, each in the single-problem form.
    """

    def __init__(self, errors: list[InputError]):
        self.errors = list(errors)
        first = self.errors[0]
        # ``place`` and ``problem`` for a caller that shows one field (the app's form marks the first place)
        each = "; ".join(f"{e.place}: {e.problem}" + (f" ({e.fix})" if e.fix else "") if e.place else
                         e.problem + (f" ({e.fix})" if e.fix else "") for e in self.errors)
        super().__init__(first.source, first.place, f"{len(self.errors)} problems: {each}", None)

    def __str__(self) -> str:
        return f"{len(self.errors)} problems:\n" + "\n".join(f"  {error}" for error in self.errors)


def raise_all(errors: list[InputError]) -> None:
    """Raise nothing, the one error, or an :class:`InputErrors` holding them all."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise InputErrors(errors)


class RunBusyError(Exception):
    """A live worker already holds the run."""


EXIT_BAD_INPUT = 2


def describe(exc: BaseException, with_type: bool = True) -> str:
    """An exception in one line, for a list, an event or a status: ``TypeError: the first line of its message``."""
    text = (str(exc).strip().splitlines() or [""])[0]
    if not with_type:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
