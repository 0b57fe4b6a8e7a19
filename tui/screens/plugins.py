"""Plugins: every discovered plugin with its kind, distribution and version; failed ones with their error.

The table has the columns of ``finetty plugins``; one that does not fit the
screen whole is left out by priority (distribution first, then version), never
cut, and what a long ``provides`` list leaves out is counted (``+3 more``).
"""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from finetty.core.text import as_text, clean, one_line

#: The table's columns, left to right: ``finetty plugins``'s, the status second (a failed plugin is what a person
#: opens this screen to find).
COLUMNS = ("plugin", "status", "kind", "provides", "distribution", "version")
#: The columns kept when the screen is narrow, first kept first (provides takes what is left).
PRIORITY = ("plugin", "status", "kind", "provides", "version", "distribution")
PROVIDES_MIN = 16


def listing(names: list[str], most: int) -> str:
    """``a, b, c`` in at most ``most`` characters: names that do not fit are counted (``a, b, +4 more``)."""
    text = ", ".join(names) or "-"
    if len(text) <= most:
        return text
    for keep in range(len(names) - 1, 0, -1):
        shown = ", ".join(names[:keep]) + f", +{len(names) - keep} more"
        if len(shown) <= most:
            return shown
    return f"{len(names)} components"


class PluginsScreen(Screen):
    SUB_TITLE = "plugins"
    DEFAULT_CSS = """
    PluginsScreen #plugin-table { height: auto; max-height: 60%; }
    PluginsScreen #plugin-details { height: 1fr; padding: 0 1; border-top: solid $primary; }
    """
    BINDINGS = [Binding("escape,b", "app.back", "Back", id="plugins.back")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="plugin-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="plugin-details"):
            yield Static(id="plugin-errors")
            yield Static(id="plugin-components")
        yield Footer()

    def on_mount(self) -> None:
        registry = self.app.registry
        self._fill()
        errors = Text()
        for plugin in registry.failed:
            errors.append(one_line(plugin.name), style="bold red")
            errors.append(f" ({one_line(plugin.distribution)}): {clean(plugin.error)}\n")
        errors.rstrip()
        self.query_one("#plugin-errors", Static).update(errors if registry.failed else
                                                      Text("every plugin loaded", style="green"))
        text = Text()
        for kind, components in registry.components.items():
            for name, component in components.items():
                text.append(f"\n{kind} ", style="dim")
                text.append(one_line(name), style="bold")
                text.append(f": {one_line(component.summary)}")
        self.query_one("#plugin-components", Static).update(text)

    def on_resize(self) -> None:
        self._fill()

    def _fill(self) -> None:
        """The table at this width: the columns that fit whole, by :data:`PRIORITY`."""
        table = self.query_one(DataTable)
        styles = {"ok": "green", "partial": "yellow"}
        rows = []
        for plugin in self.app.registry.plugins:
            rows.append({"plugin": one_line(plugin.name),
                         "kind": one_line(", ".join(sorted({kind for kind, _ in plugin.provides})) or "-"),
                         "provides": [one_line(name) for _, name in plugin.provides],
                         "distribution": one_line(plugin.distribution), "version": one_line(plugin.version or "-"),
                         "status": Text(plugin.state, style=styles.get(plugin.state, "bold red"))})
        room = self.size.width - 2
        widths = {name: max([len(name)] + [len(str(row[name])) if name != "provides"
                                            else len(listing(row[name], 10 ** 6)) for row in rows]) + 2
                  for name in COLUMNS}
        kept: list[str] = []
        for name in PRIORITY:
            need = min(widths[name], PROVIDES_MIN + 2) if name == "provides" else widths[name]
            if need <= room:
                kept.append(name)
                room -= need
        provides_room = min(widths["provides"], room + PROVIDES_MIN + 2) - 2 if "provides" in kept else 0
        columns = [name for name in COLUMNS if name in kept]
        table.clear(columns=True)
        for name in columns:  # (widths given: the cells fit them whole, by construction)
            table.add_column(name, key=name, width=provides_room if name == "provides" else widths[name] - 2)
        for row in rows:
            cells = {**row, "provides": listing(row["provides"], provides_room)}
            table.add_row(*[cells[name] if isinstance(cells[name], Text) else as_text(cells[name], one_line=True)
                            for name in columns], key=row["plugin"])
