"""Plugins: every discovered plugin with its distribution and version; failed ones with their error."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from finetty.core.text import as_text, clean, one_line


class PluginsScreen(Screen):
    SUB_TITLE = "plugins"
    DEFAULT_CSS = """
    PluginsScreen #plugin-table { height: auto; max-height: 60%; }
    PluginsScreen #plugin-details { height: 1fr; padding: 0 1; border-top: solid $primary; }
    """
    BINDINGS = [Binding("escape,b", "app.pop_screen", "Back", id="plugins.back")]

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="plugin-table", cursor_type="row", zebra_stripes=True)
        with VerticalScroll(id="plugin-details"):
            yield Static(id="plugin-errors")
            yield Static(id="plugin-components")
        yield Footer()

    def on_mount(self) -> None:
        registry = self.app.registry
        table = self.query_one(DataTable)
        for name in ("plugin", "status", "provides", "distribution", "version"):
            table.add_column(name, key=name)
        for plugin in registry.plugins:
            provides = ", ".join(name for _, name in plugin.provides) or "-"
            status = Text("ok", style="green") if plugin.error is None else Text("failed", style="bold red")
            table.add_row(as_text(plugin.name, one_line=True), status,
                          as_text(provides if len(provides) <= 30 else provides[:29] + "…", one_line=True),
                          as_text(plugin.distribution, one_line=True), as_text(plugin.version or "-", one_line=True),
                          key=plugin.name)
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
