"""A form row for one typed option: label, editor, help. Given an Option descriptor; calls no core."""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Input, Label, Select

from ..form import Field, to_text
from .picker import Picker


class OptionField(Horizontal):
    """``name  [editor]``; choices and booleans get a picker, everything else a text field."""

    DEFAULT_CSS = """
    OptionField { height: auto; margin: 0 0 0 0; }
    OptionField > Label { width: 29; padding: 0 1 0 0; text-wrap: nowrap; text-overflow: ellipsis; }
    OptionField > Input, OptionField > Select { width: 1fr; }
    """

    def __init__(self, key: str, name: str, type_: str, default: Any, help_text: str,
                 choices: tuple | None = None, value: Any = None, id: str | None = None):
        super().__init__(id=id, classes="field")
        self.key = key
        self.option_name = name
        self.type_ = type_
        self.default = default
        self.help_text = help_text
        self.choices = choices
        self.value = default if value is None else value

    def compose(self) -> ComposeResult:
        yield Label(self.option_name)
        if self.choices or self.type_ == "bool":
            choices = self.choices or (False, True)
            value = next((c for c in (self.value, self.default) if c is not None and c in choices), choices[0])
            yield Picker([(to_text(c), c) for c in choices], value=value, allow_blank=False, id=f"{self.id}-editor",
                         tooltip=self.help_text, compact=True, title=self.option_name, help_text=self.help_text)
        else:
            yield Input(to_text(self.value), placeholder=f"{self.type_}, default {to_text(self.default) or '-'}",
                        id=f"{self.id}-editor", tooltip=self.help_text, compact=True)

    def field(self) -> Field:
        """What the editor holds, as the form model reads it (typed text, or a picked value)."""
        found = self.query(f"#{self.id}-editor")
        if not found:  # not composed yet: the value it was given
            return Field(self.id or "", self.key, self.type_, picked=True, value=self.value)
        editor = found.first()
        if isinstance(editor, Select):
            return Field(self.id or "", self.key, self.type_, picked=True, value=editor.value)
        return Field(self.id or "", self.key, self.type_, text=editor.value)

    def mark(self, invalid: bool) -> None:
        for editor in self.query(f"#{self.id}-editor"):
            editor.set_class(invalid, "-invalid")
