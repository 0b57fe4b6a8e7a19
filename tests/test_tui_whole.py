"""Every screen whole at 80x24 and 120x40: no label, header, cell or footer key cut mid-word.

Each screen is rendered to plain text (the compositor's own frame, as a terminal shows it) and every word a
person must be able to read is looked for whole in it: each footer key's description, each table's column
headers and cells, each New run label (scrolled into view in turn), each picker's title and choices, the
Memory tab's legend, each GPU's head in the GPU view, each Results tab's status and choices (GPUs from the fake
NVML). A process table's command is cut to fit, ending in ``…``: what is left of it is whole. A line that is
merely not too long would pass with ``finishe`` in it; these checks do not.
"""

from __future__ import annotations

import asyncio
import io
import re

import pytest

from .test_tui_snapshots import SIZES, app_for, every_status, fake_gpus  # noqa: F401 (a fixture)
from .tui_runs import memory_events, recorded, with_broken_plugin, workers_done, write_run


def rendered(app) -> str:
    """The screen as the terminal shows it, modal screens over their background included, as plain text."""
    from rich.console import Console

    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), record=True, legacy_windows=False,
                      safe_box=False, force_terminal=True)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


def whole(word: str, text: str) -> bool:
    """``word`` appears with no letter, digit, ``_`` or ``/`` glued to either end (a cut word would not)."""
    return re.search(rf"(?<![\w/]){re.escape(word)}(?![\w/])", text) is not None


def missing(words, text: str) -> list[str]:
    return [word for word in words if word and not whole(word, text)]


async def expect_whole(pilot, words, what: str, text: str | None = None) -> None:
    """Every one of ``words`` whole on the screen (or in ``text``); the screen is read again for up to two
    seconds, for a footer or a table drawn a frame later."""
    import time

    words = list(words)
    deadline = time.monotonic() + 2
    while True:
        shown = text if text is not None else rendered(pilot.app)
        lost = missing(words, shown)
        if not lost:
            return
        assert text is None and time.monotonic() < deadline, f"{what}: cut or missing {lost}\n{shown}"
        await pilot.pause(0.1)


def footer_words(screen) -> list[str]:
    """The description of every binding the screen's footer shows."""
    return sorted({active.binding.description for active in screen.active_bindings.values()
                   if active.binding.show and active.binding.description})


def table_words(table) -> list[str]:
    """Every header and every cell of a DataTable, each word of it."""
    words = [str(column.label) for column in table.columns.values()]
    for row in table.ordered_rows:
        words += [word for cell in table.get_row(row.key) for word in str(cell).split()]
    return words


async def settle(pilot, condition=lambda: True, timeout: float = 30.0) -> None:
    import time

    from textual.screen import ModalScreen

    deadline = time.monotonic() + timeout
    while not condition() or not (isinstance(pilot.app.screen, ModalScreen) or pilot.app.screen.query("FooterKey")):
        assert time.monotonic() < deadline, "the screen did not settle"
        await pilot.pause(0.05)
    await workers_done(pilot.app)
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_screen_shows_its_words_whole(monkeypatch, runs_dir, tmp_path, size, fake_gpus):  # noqa: F811
    from textual.widgets import DataTable, TabbedContent

    from finetty.tui.screens.help import HelpScreen
    from finetty.tui.screens.monitor import MonitorScreen
    from finetty.tui.screens.new_run import NewRunScreen
    from finetty.tui.screens.plugins import PluginsScreen
    from finetty.tui.screens.results import ResultsScreen
    from finetty.tui.widgets.memory_chart import ProcessTable
    from finetty.tui.widgets.picker import PickerScreen

    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", "formats,full,lora,prefix,qlora,bnb,sft,dpo")
    registry = with_broken_plugin(ImportError("No module named 'vendor_gpu_kernels'"))
    checked: list[str] = []

    async def scenario():
        with every_status(runs_dir) as made:
            monitored = write_run(runs_dir, "261122-140000-lora-sft-aaaa", memory_events(recorded()))
            app = app_for(runs_dir, registry, tmp_path, nvml_lib=fake_gpus)
            async with app.run_test(size=size) as pilot:
                # Runs: every header and cell, the footer
                table = app.screen.query_one("#runs-table", DataTable)
                await settle(pilot, lambda: table.row_count == len(made) + 1)
                await expect_whole(pilot, table_words(table) + footer_words(app.screen), "Runs")
                assert {"status", "step", "run"} <= {str(c.label) for c in table.columns.values()}
                checked.append("runs")

                # Help over Runs
                await pilot.press("f1")
                await settle(pilot, lambda: isinstance(app.screen, HelpScreen))
                help_screen = app.screen
                await expect_whole(pilot, [word for _, what, _ in help_screen.keys[:8] for word in what.split()],
                                   "Help")
                await pilot.press("escape")

                # the delete confirmation
                await settle(pilot, lambda: not isinstance(app.screen, HelpScreen))
                await pilot.press("d")
                await settle(pilot, lambda: type(app.screen).__name__ == "ConfirmScreen")
                await expect_whole(pilot, ["Delete", "run", "Cancel", "(n)", "(y)", "checkpoints"], "Confirm")
                await pilot.press("n")
                checked.append("confirm")

                # Plugins: the CLI's columns (those that fit), every cell, the footer
                await settle(pilot, lambda: type(app.screen).__name__ == "RunsScreen")
                await pilot.press("p")
                await settle(pilot, lambda: isinstance(app.screen, PluginsScreen))
                plugins = app.screen.query_one("#plugin-table", DataTable)
                await settle(pilot, lambda: plugins.row_count > 0)
                headers = {str(c.label) for c in plugins.columns.values()}
                assert {"plugin", "kind", "provides", "status"} <= headers, headers
                await expect_whole(pilot, table_words(plugins) + footer_words(app.screen), "Plugins")
                checked.append("plugins")
                await pilot.press("escape")

                # New run: each section's labels scrolled into view, the footer, each picker
                await settle(pilot, lambda: type(app.screen).__name__ == "RunsScreen")
                await pilot.press("n")
                await settle(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen.recipe is not None)
                form = app.screen
                await expect_whole(pilot, footer_words(form), "New run footer")
                scroller = form.query_one("#form")
                pages = []
                while True:  # page by page to the end of the form: every label is on some page, whole
                    pages.append(rendered(app))
                    if scroller.scroll_y >= scroller.max_scroll_y:
                        break
                    scroller.scroll_to(y=scroller.scroll_y + scroller.size.height - 2, animate=False)
                    await pilot.pause()
                labels = [str(label.render()) for label in form.query("#form Label")
                          if label.display and label.parent.display]
                assert len(labels) > 20 and "per_device_train_batch_size" in labels
                await expect_whole(pilot, labels, "New run labels", "\n".join(pages))
                for picker_id in ("model", "dataset", "method", "quantizer", "objective"):
                    form.query_one(f"#{picker_id}").focus()
                    await pilot.press("enter")
                    await settle(pilot, lambda: isinstance(app.screen, PickerScreen))
                    picker = form.query_one(f"#{picker_id}")
                    await expect_whole(pilot, [picker_id] + [w for label in picker.full_labels for w in label.split()],
                                       f"the {picker_id} picker")
                    await pilot.press("escape")
                    await settle(pilot, lambda: app.screen is form)
                checked.append("new run")
                await pilot.press("escape")

                # Monitor: every tab's title, the footer
                await settle(pilot, lambda: type(app.screen).__name__ == "RunsScreen")
                app.open_monitor(monitored)
                await settle(pilot, lambda: isinstance(app.screen, MonitorScreen)
                             and app.screen.history is not None and app.screen.history.status == "finished")
                monitor = app.screen
                tabs = [str(pane._title) for pane in monitor.query("TabPane")]
                for tab in ("checkpoints", "log", "recipe", "warnings", "memory"):
                    monitor.action_tab(tab)
                    await settle(pilot)
                    await expect_whole(pilot, [w for t in tabs for w in t.split()] + footer_words(monitor),
                                       f"Monitor tab {tab}")
                # the Memory tab: the chart's title, the legend (the crossing, its policy), the process table
                memory = monitor.query_one("#memory-gpu-0")
                processes = memory.query_one(ProcessTable)
                await settle(pilot, lambda: processes.rows_shown)
                legend = str(memory.query_one(".legend").render())
                assert "watermark crossed" in legend and "policy checkpoint" in legend, legend
                await expect_whole(pilot, ["GPU0", "NVIDIA", "L4"] + legend.split() + table_words(processes),
                                   "Monitor tab memory")
                checked.append("monitor")

                # the GPU view (g on Runs): each GPU's head, its process table, the footer
                await pilot.press("escape")
                await settle(pilot, lambda: type(app.screen).__name__ == "RunsScreen")
                await pilot.press("g")
                await settle(pilot, lambda: type(app.screen).__name__ == "GpuScreen")
                view = app.screen
                await settle(pilot, lambda: len([t for t in view.query(ProcessTable) if t.rows_shown]) == 2)
                heads = [word for head in view.query(".gpu-head") for line in str(head.render()).splitlines()
                         if "█" not in line and "░" not in line for word in line.split()]  # (not the bar)
                await expect_whole(pilot, heads + [w for t in view.query(ProcessTable) for w in table_words(t)]
                                   + str(view.query_one("#gpu-status").render()).split() + footer_words(view),
                                   "GPU view")
                checked.append("gpus")

                # Results (t): each tab's title, its status and choices, the footer
                await pilot.press("escape")
                await settle(pilot, lambda: type(app.screen).__name__ == "RunsScreen")
                app.open_results(monitored)
                await settle(pilot, lambda: isinstance(app.screen, ResultsScreen))
                results = app.screen
                tabs = [str(pane._title) for pane in results.query("TabPane")]
                assert tabs == ["Eval", "Export", "Serve"], tabs
                shown = {"tab-eval": ["#eval-status"], "tab-export": ["#export-kind RadioButton"],
                         "tab-serve": ["#serve-status", "#serve-snippets"]}
                for tab, parts in shown.items():
                    results.query_one("#results-tabs", TabbedContent).active = tab
                    await settle(pilot)
                    words = [w for part in parts for widget in results.query(part)
                             for w in str(widget.render() if part[0] == "#" and " " not in part
                                          else widget.label).split()]
                    assert words, tab
                    await expect_whole(pilot, tabs + words + footer_words(results), f"Results tab {tab}")
                checked.append("results")

    asyncio.run(scenario())
    assert checked == ["runs", "confirm", "plugins", "new run", "monitor", "gpus", "results"]
