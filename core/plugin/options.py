"""Typed option descriptions: one declaration feeds the recipe validator, the CLI and the TUI.

A plugin describes each of its options once with :class:`Option`. The recipe
validator checks values against it, ``finetty plugins --options`` prints it and
the TUI builds its form fields from it.
"""

from __future__ import annotations

import builtins
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "list": list, "dict": dict}


def yaml_number(value: Any, types: str) -> Any:
    """A number where YAML 1.1 left text: it reads ``1e-4`` (no dot) as a string.

    For an option whose type admits ``int`` or ``float`` (``types`` as an
    Option's: ``"float"``, ``"int|float"``), text that is a number becomes one:
    an int when it is whole and the option takes no float or the text has no
    dot or exponent, else a float. Anything else comes back as it was. The
    recipe validator and the app's form both read typed values through this.
    """
    kinds = set(types.split("|"))
    if not isinstance(value, str) or not kinds & {"int", "float"}:
        return value
    try:
        number = float(value)
    except ValueError:
        return value
    if number.is_integer() and ("float" not in kinds or not any(c in value.lower() for c in ".e")):
        return int(number)
    return number


@dataclass(frozen=True)
class Option:
    """One typed setting of a plugin.

    ``type`` is one of ``int``, ``float``, ``bool``, ``str``, ``list``, ``dict``
    or a union written ``"str|list"``; ``choices`` limits a value to a set;
    ``minimum`` / ``maximum`` bound numbers (inclusive); ``nullable`` admits ``None``.
    """

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"option name {self.name!r} is not an identifier")
        for part in self.type.split("|"):
            if part not in _TYPES:
                raise ValueError(f"option {self.name!r}: type {part!r} is not one of {sorted(_TYPES)}")
        if not self.help:
            raise ValueError(f"option {self.name!r} has no help text")
        if self.default is not None or not self.nullable:
            problem = self.check(self.default)
            if problem:
                raise ValueError(f"option {self.name!r}: default {self.default!r} {problem}")

    @property
    def python_types(self) -> tuple[builtins.type, ...]:  # (``type`` is a field here)
        return tuple(_TYPES[p] for p in self.type.split("|"))

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is not acceptable, or None when it is."""
        if value is None:
            return None if self.nullable else f"must be a {self.type}, not empty"
        types = self.python_types
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok and float in types and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            return f"must be a {self.type.replace('|', ' or ')}, not {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(map(str, self.choices))}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if self.minimum is not None and value < self.minimum:
                return f"must be at least {self.minimum}"
            if self.maximum is not None and value > self.maximum:
                return f"must be at most {self.maximum}"
        return None

    def describe(self) -> str:
        text = f"{self.name} ({self.type}, default {self.default!r}): {self.help}"
        if self.choices:
            text += f" [one of: {', '.join(map(str, self.choices))}]"
        return text


def nearest(name: str, candidates: Sequence[str]) -> str | None:
    """The closest candidate to a misspelt name, if any is close."""
    hits = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return hits[0] if hits else None


def resolve_options(
    options: Sequence[Option], given: Mapping[str, Any] | None
) -> tuple[dict[str, Any], list[tuple[str, str, str | None]]]:
    """Merge ``given`` over the defaults.

    Returns the resolved values and a list of ``(key, problem, fix)`` for every
    bad key, so the caller can name its own file and place.
    """
    by_name = {o.name: o for o in options}
    values = {o.name: o.default for o in options}
    problems: list[tuple[str, str, str | None]] = []
    for key, value in (given or {}).items():
        option = by_name.get(key)
        if option is None:
            close = nearest(str(key), list(by_name))
            fix = f"did you mean {close!r}?" if close else (
                f"known options: {', '.join(by_name)}" if by_name else "this plugin takes no options")
            problems.append((str(key), "is not a known option", fix))
            continue
        problem = option.check(value)
        if problem:
            problems.append((key, f"{value!r} {problem}" if not problem.startswith("must be a") else problem,
                             option.help))
            continue
        values[key] = value
    return values, problems
