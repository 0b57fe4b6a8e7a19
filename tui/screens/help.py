"""Help: what finetty's app does, and every key of the screen it was opened from.

The keys are read from the bindings, never written out by hand: the table from the
screen's active bindings (every key of each, after the person's rebinding in
``tui.yaml``), and the keys the text names from the binding ids in braces. A key
written by hand drifts (F1 once said queue is ctrl+u while the footer said ctrl+o).
"""

from __future__ import annotations

import re

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
{runs.new} starts a New run: pick model, dataset, method; {new_run.launch} launches it, {new_run.queue} queues it
(queued runs start one after another, even after the app is closed); {new_run.save} saves the form as a recipe
for `finetty train`. ctrl+p opens the command palette (every action below, searchable). Keys can be rebound by
id in $FINETTY_HOME/tui.yaml (keys: {{runs.new: a}}); notifications (bell, OSC 9/777) are turned off there
(notifications: false), with FINETTY_NOTIFY=0, or with {app.notifications}.
"""
_NAMED = re.compile(r"(?<!\{)\{([a-z_]+\.[a-z_]+)\}(?!\})")


def key_rows(app, screen: Screen) -> list[tuple[str, str, str, bool]]:
    """(keys, what it does, binding id, enabled) for each binding with an id active on ``screen``.

    A binding of several keys (``ctrl+l,f5``) is one row listing each key that reaches it; a key another
    binding shadows is not listed, since pressing it does the other thing."""
    rows: dict[tuple[str, str], list] = {}
    for key, active in screen.active_bindings.items():
        binding = active.binding
        if not binding.id or not binding.description:
            continue
        row = rows.setdefault((binding.id, binding.action),
                              [[], binding.tooltip or binding.description, binding.id, active.enabled])
        row[0].append(app.get_key_display(binding))
    return [(", ".join(dict.fromkeys(keys)), what, binding_id, enabled) for keys, what, binding_id, enabled in
            rows.values()]


def keys_of(app, binding_id: str) -> str:
    """The keys bound to ``binding_id`` on any of the app's screens (the person's keymap first), for display."""
    from .new_run import NewRunScreen
    from .runs import RunsScreen

    keys = getattr(app, "_keymap", {}).get(binding_id)
    if keys is None:
        for bindings in (type(app).BINDINGS, RunsScreen.BINDINGS, NewRunScreen.BINDINGS):
            found = next((b for b in bindings if isinstance(b, Binding) and b.id == binding_id), None)
            if found is not None:
                keys = found.key
                break
    if keys is None:
        return binding_id
    return " or ".join(app.get_key_display(Binding(key.strip(), "")) for key in keys.split(","))


def about(app) -> str:
    """:data:`ABOUT` with each ``{binding.id}`` replaced by its keys."""
    return _NAMED.sub(lambda match: keys_of(app, match.group(1)), ABOUT).replace("{{", "{").replace("}}", "}")


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
        for keys, what, binding_id, enabled in key_rows(self.app, self.under):
            self.keys.append((keys, what, binding_id))
            table.add_row(keys, what, binding_id, style="" if enabled else "dim")
        table.add_row("ctrl+p", "command palette", "")
        with VerticalScroll():
            yield Static(Text(f"Keys on {type(self.under).__name__.removesuffix('Screen')}", style="bold"))
            yield Static(table)
            yield Static(Text(about(self.app), style="dim"), id="help-about")
