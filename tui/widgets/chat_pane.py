"""A column of chat messages under a title; the last answer grows as tokens arrive.

The pane is given text and shows it; it never calls core (the chat screen
does the loading and generating).
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widget import Widget
from textual.widgets import Static

from finetty.core.text import as_markup, clean


class ChatMessage(Static):
    """One message; an assistant message being streamed grows with :meth:`append`."""

    DEFAULT_CSS = """
    ChatMessage { margin: 0 0 1 0; padding: 0 1; }
    ChatMessage.-user { background: $boost; color: $text; }
    ChatMessage.-assistant { color: $text; }
    ChatMessage.-note { color: $text-muted; text-style: italic; }
    ChatMessage.-streaming { border-left: thick $accent; }
    """

    def __init__(self, role: str, text: str = "", streaming: bool = False):
        super().__init__(clean(text), markup=False, classes=f"-{role}" + (" -streaming" if streaming else ""))
        self.role = role
        self.text = text

    def append(self, piece: str) -> None:
        self.text += piece
        self.update(clean(self.text))  # what the model wrote is data: no escape reaches the terminal

    def finish(self, suffix: str = "") -> None:
        if suffix:
            self.text += suffix
        self.update(clean(self.text) or "(no answer)")
        self.remove_class("-streaming")


class ChatPane(Widget):
    """A titled, scrolling list of :class:`ChatMessage`."""

    DEFAULT_CSS = """
    ChatPane { height: 1fr; width: 1fr; border: round $primary; }
    ChatPane > VerticalScroll { height: 1fr; }
    """

    def __init__(self, title: str, id: str | None = None):
        super().__init__(id=id)
        self.border_title = as_markup(title, one_line=True)

    def compose(self) -> ComposeResult:
        yield VerticalScroll()

    @property
    def messages(self) -> list[ChatMessage]:
        return list(self.query(ChatMessage))

    @property
    def transcript(self) -> str:
        """Every message as ``role: text`` lines (what the pane shows, as plain text)."""
        return "\n".join(f"{m.role}: {m.text}" for m in self.messages)

    def set_title(self, title: str) -> None:
        self.border_title = as_markup(title, one_line=True)

    def add(self, role: str, text: str = "", streaming: bool = False) -> ChatMessage:
        message = ChatMessage(role, text, streaming)
        scroll = self.query_one(VerticalScroll)
        scroll.mount(message)
        scroll.scroll_end(animate=False)
        return message

    def follow(self) -> None:
        self.query_one(VerticalScroll).scroll_end(animate=False)

    def clear(self) -> None:
        self.query_one(VerticalScroll).remove_children()
