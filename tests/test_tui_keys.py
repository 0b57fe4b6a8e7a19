"""Keys that are never lost: F1 lists every key that works on a screen, and every key it lists works."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pkgutil

from textual.actions import parse
from textual.binding import Binding
from textual.screen import Screen

from .tui_runs import FROZEN, make_runs, workers_done


def test_every_binding_of_every_screen_has_an_id_and_a_description():
    """Help lists bindings with an id and a description: one without would be a key that works, unlisted."""
    import finetty.tui.screens as screens
    from finetty.tui.app import FinettyApp

    found = [FinettyApp]
    for module in pkgutil.iter_modules(screens.__path__):
        loaded = importlib.import_module(f"finetty.tui.screens.{module.name}")
        found += [cls for _, cls in inspect.getmembers(loaded, inspect.isclass)
                  if issubclass(cls, Screen) and cls.__module__ == loaded.__name__]
    assert len(found) > 6
    for cls in found:
        for binding in cls.BINDINGS:
            assert isinstance(binding, Binding), (cls, binding)
            assert binding.id and binding.description, (cls.__name__, binding)


def _grouped(app, screen) -> dict[str, set[str]]:
    """What works on ``screen``: binding id -> the displayed keys that reach it."""
    out: dict[str, set[str]] = {}
    for key, active in screen.active_bindings.items():
        if active.binding.id and active.binding.description:
            out.setdefault(active.binding.id, set()).add(app.get_key_display(active.binding))
    return out


def _resolves(app, screen, binding_id: str) -> bool:
    """The binding's action names a method of the node it is bound on (or of the app, for ``app.``)."""
    for active in screen.active_bindings.values():
        if active.binding.id == binding_id:
            target, name, _ = parse(active.binding.action)
            node = app if target == "app" else (screen if target == "screen" else active.node)
            return callable(getattr(node, f"action_{name}", None))
    return False


def test_help_lists_each_key_that_works_and_each_listed_key_works(runs_dir):
    from finetty.tui.app import FinettyApp
    from finetty.tui.screens.help import HelpScreen, keys_of
    from finetty.tui.screens.monitor import MonitorScreen
    from finetty.tui.screens.new_run import NewRunScreen
    from finetty.tui.screens.plugins import PluginsScreen

    made = make_runs(runs_dir)

    async def scenario() -> list[str]:
        app = FinettyApp(runs=runs_dir, first_run=False, clock=lambda: FROZEN, notify_write=lambda text: None,
                         preview=lambda request: {"error": "no preview in this test"})
        walked = []
        async with app.run_test(size=(120, 40)) as pilot:
            openers = [lambda: None, lambda: app.open_monitor(made["finished"]), app.new_run, app.action_plugins]
            for open_screen, kind in zip(openers, ("RunsScreen", MonitorScreen, NewRunScreen, PluginsScreen)):
                open_screen()
                while type(app.screen).__name__ != (kind if isinstance(kind, str) else kind.__name__):
                    await pilot.pause(0.05)
                await pilot.pause()
                under = app.screen
                works = _grouped(app, under)
                await pilot.press("f1")
                while not isinstance(app.screen, HelpScreen):
                    await pilot.pause(0.05)
                listed = {binding_id: set(keys.split(", ")) for keys, _, binding_id in app.screen.keys}
                assert listed == works, (type(under).__name__, listed, works)  # every key, and only keys that work
                for binding_id in listed:
                    assert _resolves(app, under, binding_id), (type(under).__name__, binding_id)
                about = str(app.screen.query_one("#help-about").render())
                if isinstance(under, NewRunScreen):
                    footer = [app.get_key_display(a.binding) for a in under.active_bindings.values()
                              if a.binding.id == "new_run.queue" and a.binding.show]
                    assert footer and f"{footer[0]} or" in about and "queues it" in about, about
                    assert keys_of(app, "new_run.queue").startswith(footer[0])
                assert "{" not in about.replace("{runs.new: a}", ""), about  # every binding id was replaced
                walked.append(type(under).__name__)
                await pilot.press("escape")
                while isinstance(app.screen, HelpScreen):
                    await pilot.pause(0.05)
                if type(under).__name__ != "RunsScreen":
                    app.pop_screen()
                    while type(app.screen).__name__ != "RunsScreen":
                        await pilot.pause(0.05)
            await workers_done(app)
        return walked

    walked = asyncio.run(scenario())
    assert walked == ["RunsScreen", "MonitorScreen", "NewRunScreen", "PluginsScreen"]
