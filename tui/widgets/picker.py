"""A select whose list opens as a bordered modal: each choice in full, nothing drawn over the form.

Textual's own ``Select`` drops its list over whatever lies below it (at 80x24 the
hint line, the buttons and the footer), without a border in compact mode, and
cuts each choice at the field's width. :class:`Picker` keeps ``Select``'s value,
``Changed`` message and keys (Enter, space, arrows, a click) and shows the list
in :class:`PickerScreen` instead: centred, bordered, titled with the field's
name, every label whole (wrapped at word boundaries) and the field's help below.
The field itself shows the chosen label shortened at a word boundary to its width.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import OptionList, Select, Static
from textual.widgets.option_list import Option


def shorten(label: str, most: int = 44) -> str:
    """``label`` in at most ``most`` characters, cut at a word boundary and ended with ``…`` (and the closing
    parenthesis, when the cut fell inside one): no word is ever shown in part."""
    if len(label) <= most:
        return label
    closing = ")" if "(" in label and label.endswith(")") else ""
    room = most - 1 - len(closing)
    cut = label[:room + 1]
    space = cut.rfind(" ")
    cut = cut[:space] if space > 0 else cut[:room]
    return cut.rstrip(" ,;:(") + "…" + (closing if "(" in cut else "")


class PickerScreen(ModalScreen[int | None]):
    """The choices of one :class:`Picker`: Enter or a click chooses, Escape keeps the current one."""

    DEFAULT_CSS = """
    PickerScreen { align: center middle; }
    PickerScreen > Vertical { width: 90%; max-width: 100; height: auto; max-height: 100%; border: thick $primary;
                              border-title-style: bold; background: $surface; padding: 0 1; }
    PickerScreen OptionList, PickerScreen OptionList:focus { height: auto; max-height: 16; border: none; padding: 0; }
    PickerScreen OptionList > .option-list--option { padding: 0 1; }
    PickerScreen .picker-help { height: auto; color: $text-muted; padding: 0 1; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker.cancel")]

    def __init__(self, title: str, labels: list[str], current: int | None, help_text: str = ""):
        super().__init__()
        self.title_text, self.labels, self.current, self.help_text = title, labels, current, help_text

    def compose(self) -> ComposeResult:
        box = Vertical(id="picker")
        box.border_title = Text(self.title_text)
        box.border_subtitle = "↑↓ move · Enter choose · Esc keep"
        with box:
            yield OptionList(*[Option(Text(label)) for label in self.labels], id="picker-options")
            if self.help_text:
                yield Static(Text(self.help_text), classes="picker-help")

    def on_mount(self) -> None:
        options = self.query_one(OptionList)
        options.highlighted = self.current if self.current is not None else 0
        options.focus()

    @on(OptionList.OptionSelected)
    def _chosen(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option_index)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Picker(Select):
    """``Select`` with its list in a :class:`PickerScreen`; ``options`` are ``(full label, value)``, the label
    plain text (a ``str`` is never read as markup)."""

    def __init__(self, options: Iterable[tuple[str, Any]], *, title: str = "", help_text: str = "",
                 short: int = 44, **kwargs):
        # labels are plain text, never markup (a model folder's name is data): Text in, Text out
        choices = [(label.plain if isinstance(label, Text) else str(label), value) for label, value in options]
        self.full_labels = [label for label, _ in choices]
        self.title_text = title
        self.help_text = help_text
        self._short = short
        super().__init__([(Text(shorten(label, short)), value) for label, value in choices], **kwargs)

    def set_choices(self, options: Iterable[tuple[str, Any]]) -> None:
        """Replace the choices (a list filled later, as a cache scan ends), keeping the chosen value when it is
        still offered; no ``Changed`` is posted unless the value had to change."""
        choices = [(label.plain if isinstance(label, Text) else str(label), value) for label, value in options]
        kept = self.value
        with self.prevent(Select.Changed):
            self.full_labels = [label for label, _ in choices]
            self.set_options([(Text(shorten(label, self._short)), value) for label, value in choices])
            if kept in {value for _, value in choices}:
                self.value = kept
        if self.value != kept:
            self.post_message(Select.Changed(self, self.value))
        self._fit_label()

    def on_resize(self) -> None:
        self._fit_label()

    def _watch_value(self, value) -> None:
        super()._watch_value(value)
        self._fit_label()

    def _fit_label(self) -> None:
        """The chosen label as long as the field is wide (at 120 columns more of it), cut at a word."""
        values = [value for _, value in self._options if value is not Select.BLANK]
        if self.value not in values or self.size.width <= 0:
            return
        label = Text(shorten(self.full_labels[values.index(self.value)], max(self.size.width - 4, 12)))
        for current in self.query("SelectCurrent"):  # (the field's own line: the arrow takes the rest)
            current.update(label)

    def _watch_expanded(self, expanded: bool) -> None:
        if not expanded:
            super()._watch_expanded(False)
            return
        self.expanded = False  # Select's own list stays closed: the modal shows the choices
        values = [value for _, value in self._options if value is not Select.BLANK]
        current = values.index(self.value) if self.value in values else None
        self.app.push_screen(PickerScreen(self.title_text, self.full_labels, current, self.help_text), self._picked)

    def _picked(self, index: int | None) -> None:
        values = [value for _, value in self._options if value is not Select.BLANK]
        if index is not None and 0 <= index < len(values):
            self.value = values[index]
        self.focus()
