"""Help: what finetty's app does, and every key of the screen it was opened from."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

ABOUT = """\
finetty trains in a detached worker: quitting this app or losing the SSH connection never stops a run.
Runs (home) lists every run; Enter opens its monitor, which replays the run's events and then follows them.
n starts a New run: pick model, dataset, method; ctrl+l launches it, ctrl+u queues it (queued runs start
one after another, even after the app is closed); ctrl+s saves the form as a recipe for `finetty train`.
ctrl+p opens the command palette (every action below, searchable). Keys can be rebound by id in
$FINETTY_HOME/tui.yaml (keys: {runs.new: a}); notifications (bell, OSC 9/777) are turned off there
(notifications: false), with FINETTY_NOTIFY=0, or with F3.
"""


class HelpScreen(ModalScreen):
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 96%; max-width: 110; height: 90%; border: thick $primary;
                                  background: $surface; padding: 0 1; }
    """
    BINDINGS = [Binding("escape,q,f1,question_mark", "app.pop_screen", "Close", id="help.close")]

    def __init__(self, under: Screen):
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        table = Table("key", "action", "id", box=None, padding=(0, 1), show_edge=False)
        self.keys: list[tuple[str, str, str]] = []
        seen = set()
        for key, active in self.under.active_bindings.items():
            binding = active.binding
            if not binding.id or not binding.description or (binding.id, binding.action) in seen:
                continue
            seen.add((binding.id, binding.action))
            row = (self.app.get_key_display(binding), binding.tooltip or binding.description, binding.id or "")
            self.keys.append(row)
            table.add_row(*row, style="" if active.enabled else "dim")
        table.add_row("ctrl+p", "command palette", "")
        with VerticalScroll():
            yield Static(Text(f"Keys on {type(self.under).__name__.removesuffix('Screen')}", style="bold"))
            yield Static(table)
            yield Static(Text(ABOUT, style="dim"))
