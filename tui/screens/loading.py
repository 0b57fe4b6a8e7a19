"""A screen's first frame while what it needs is read off the event loop.

Plugin discovery, GPU probing and cache scans take from a tenth of a second
to a few seconds on a busy machine. A screen that needs them at compose time
(New run, Plugins) is opened through :class:`LoadingScreen`: its header and a
loading line are drawn at once, a thread does the slow part, and the screen
itself replaces this one when it is done. A person who leaves first (Escape)
is not pulled back.
"""

from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from finetty.core.errors import describe
from finetty.core.text import one_line


class LoadingScreen(Screen):
    """Shows ``sub_title`` and ``loading WHAT…``; runs ``prepare`` in a thread, then switches to ``make()``."""

    DEFAULT_CSS = """
    LoadingScreen #loading-header { dock: top; height: 1; width: 1fr; content-align: center middle;
                                    background: $panel; color: $foreground; }
    LoadingScreen #loading-status { height: auto; padding: 0 1; background: $boost; }
    """
    BINDINGS = [Binding("escape", "app.back", "Back", id="loading.back")]

    def __init__(self, sub_title: str, what: str, prepare: Callable[[], object], make: Callable[[], Screen]):
        super().__init__()
        self.sub_title = sub_title
        self.what = what
        self.prepare = prepare
        self.make = make

    def compose(self) -> ComposeResult:
        # the header's text, not a Header: Textual's Header sets its title after it mounts, and a loading
        # screen replaced (or left) at once would have it look for a title widget that is gone
        yield Static(f"{one_line(self.app.title)} — {one_line(self.sub_title)}", id="loading-header")
        yield Static(Text(f"loading {self.what}…", style="dim"), id="loading-status")
        yield Footer()

    def on_mount(self) -> None:
        # after this screen has been painted: a quick ``prepare`` would otherwise have the (slow to compose)
        # screen replace this one before its first frame ever reached the terminal
        self.call_after_refresh(self._load)

    @work(thread=True, exclusive=True, exit_on_error=False, group="loading")
    def _load(self) -> None:
        try:
            self.prepare()
        except Exception as exc:  # the screen itself reports it as it would have without this one
            self.app.call_from_thread(self.query_one("#loading-status", Static).update,
                                      Text(one_line(f"loading {self.what} failed: {describe(exc)}"), style="red"))
        self.app.call_from_thread(self._ready)

    def _ready(self) -> None:
        if self.is_current:
            self.app.switch_screen(self.make())
