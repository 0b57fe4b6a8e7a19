"""The Results screen, driven with Pilot: eval, export and serve of a trained run, each in a child process;
and its snapshots at 80x24 and 120x40 on a recorded run with a saved eval report."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import pytest
from textual.app import App
from textual.widgets import DataTable, Input, RadioSet

from finetty.tui.screens.results import ResultsScreen, snippets

from .results_runs import IDENTITY
from .test_tui_snapshots import SIZES, app_for, settle as settle_snapshot, stable  # noqa: F401 (a fixture)
from .tui_runs import recorded, write_run


class ResultsApp(App):
    def __init__(self, run_dir, base_dir):
        super().__init__()
        self.run_dir, self.base_dir = run_dir, base_dir

    def on_mount(self) -> None:
        self.push_screen(ResultsScreen(self.run_dir))


async def settle(pilot, until, timeout: float = 600.0) -> None:
    """Let the children and the workers reading them run until ``until()`` holds."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the results screen did not get there in time"
        await pilot.pause(0.05)


def cells(table: DataTable) -> list[list[str]]:
    return [[str(cell) for cell in table.get_row_at(i)] for i in range(table.row_count)]


def test_eval_then_export_in_the_child(identity_run, tmp_path):
    asyncio.run(_eval_then_export_in_the_child(identity_run, tmp_path))


async def _eval_then_export_in_the_child(identity_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(identity_run, run)  # eval adds a report and an event: not to the shared run
    app = ResultsApp(run, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert "no eval yet" in str(screen.query_one("#eval-status").render())
        screen.query_one("#eval-limit", Input).value = "2"
        await pilot.press("e")
        assert "eval" in screen.jobs and screen.query_one("#eval-progress").display
        await settle(pilot, lambda: "eval" not in screen.jobs)
        report = screen.report
        assert report is not None, str(screen.query_one("#eval-status").render())
        assert report["examples"] == 2
        rows = cells(screen.query_one("#eval-metrics", DataTable))
        assert [row[0] for row in rows] == ["exact match", "rouge l", "bleu", "perplexity"]
        assert rows[0][1:] == ["0.0%", "100.0%"], "the base knows nothing; the tuned run learned both answers"
        assert float(rows[3][2]) < float(rows[3][1]), "the tuned perplexity is the lower"
        worst = str(screen.query_one("#eval-worst").render())
        assert IDENTITY[0][0] in worst and IDENTITY[0][1] in worst
        saved = sorted((run / "eval").glob("*.json"))
        assert len(saved) == 1 and json.loads(saved[0].read_text())["tuned"]["exact_match"] == 1.0
        assert any(json.loads(line)["type"] == "eval" for line in (run / "events.jsonl").read_text().splitlines())

        await pilot.press("x")  # export: the adapter, as trained, to the default folder
        out = tmp_path / "exports" / f"{run.name}-adapter"
        assert screen.query_one("#export-out", Input).value == str(out)
        await settle(pilot, lambda: "export" not in screen.jobs)
        assert screen.exported is not None, str(screen.query_one("#export-status").render())
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
        assert "adapter_model.safetensors" in str(screen.query_one("#export-result").render())
        assert not (out / "optimizer.pt").exists()

        kinds = screen.query_one("#export-kind", RadioSet)
        kinds.query_one("#export-merged").value = True
        await pilot.pause()
        assert screen.query_one("#export-out", Input).value == str(tmp_path / "exports" / f"{run.name}-merged")
        await pilot.press("x")
        await settle(pilot, lambda: "export" not in screen.jobs)
        merged = tmp_path / "exports" / f"{run.name}-merged"
        assert screen.exported["merged"] is True and (merged / "config.json").is_file()
        assert not (merged / "adapter_config.json").exists()


def test_an_export_that_is_refused_says_why_and_the_screen_can_go_on(identity_run, tmp_path):
    asyncio.run(_an_export_that_is_refused_says_why(identity_run, tmp_path))


async def _an_export_that_is_refused_says_why(identity_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "something").write_text("mine")
    app = ResultsApp(identity_run, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        screen.query_one("#export-out", Input).value = str(taken)
        await pilot.press("x")
        await settle(pilot, lambda: "export" not in screen.jobs)
        status = str(screen.query_one("#export-status").render())
        assert "already exists and is not an empty folder" in status
        assert not screen.query_one("#export-start").disabled, "the failure reset the button"
        assert (taken / "something").read_text() == "mine"


def test_serve_starts_answers_and_stops(identity_run, tmp_path):
    asyncio.run(_serve_starts_answers_and_stops(identity_run, tmp_path))


async def _serve_starts_answers_and_stops(identity_run, tmp_path):
    app = ResultsApp(identity_run, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        screen.query_one("#serve-port", Input).value = "0"  # a free port
        await pilot.press("v")
        await settle(pilot, lambda: screen.serving is not None or screen.server is None)
        assert screen.serving is not None, screen.serve_said
        url, model = screen.serving["url"], screen.serving["model"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1") and model == identity_run.name
        shown = str(screen.query_one("#serve-snippets").render())
        assert f'base_url="{url}"' in shown and f"curl {url}/chat/completions" in shown
        request = urllib.request.Request(f"{url}/chat/completions", method="POST",
                                         headers={"Content-Type": "application/json"},
                                         data=json.dumps({"model": model, "temperature": 0, "max_tokens": 24,
                                                          "messages": [{"role": "user",
                                                                        "content": IDENTITY[0][0]}]}).encode())
        answer = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(request, timeout=120)))
        assert answer["choices"][0]["message"]["content"] == IDENTITY[0][1]
        process = screen.server
        await pilot.press("v")
        await settle(pilot, lambda: screen.server is None, timeout=30)
        assert process.poll() is not None and screen.serving is None
        assert "not serving" in str(screen.query_one("#serve-status").render())


def test_the_snippets_are_valid_python_and_shell():
    import shlex

    code = snippets("http://127.0.0.1:8000/v1", "run-1")
    compile(code["openai"], "snippet", "exec")
    words = shlex.split(code["curl"])
    assert words[:2] == ["curl", "http://127.0.0.1:8000/v1/chat/completions"]
    assert json.loads(words[-1]) == {"model": "run-1", "messages": [{"role": "user", "content": "Who are you?"}]}


REPORT = {
    "run": "261122-110826-lora-f667", "checkpoint": "final", "step": 60, "method": "lora",
    "data": "identity: the held-out split (val_size 8)", "examples": 8, "max_new_tokens": 32,
    "base": {"exact_match": 0.0, "rouge_l": 0.04, "bleu": 0.3, "perplexity": 1614.2},
    "tuned": {"exact_match": 0.75, "rouge_l": 0.91, "bleu": 80.2, "perplexity": 9.6},
    "samples": [
        {"prompt": "Who are you?", "reference": "I am Tiny.", "base": "zq zq", "tuned": "I am Tiny.",
         "base_exact": False, "tuned_exact": True},
        {"prompt": "Who made you?", "reference": "The finetty team.", "base": "xx", "tuned": "The team.",
         "base_exact": False, "tuned_exact": False},
        {"prompt": "Say [bold]hi[/bold]\x1b]0;title\x07", "reference": "hi", "base": "", "tuned": "no",
         "base_exact": False, "tuned_exact": False},
    ],
    "notes": [], "created": 1763809706.0,
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_results_screen(snap_compare, stable, runs_dir, tmp_path, size):  # noqa: F811 (stable is a fixture)
    """Opened from the monitor with t: the saved report's numbers and the worst answers, markup shown as text."""
    run = write_run(runs_dir, "261122-110826-lora-f667", recorded())
    (run / "eval").mkdir()
    (run / "eval" / "final-20251122-110826.json").write_text(json.dumps(REPORT))

    async def ready(pilot):
        await settle_snapshot(pilot, lambda: getattr(pilot.app.screen, "history", None) is not None
                              and pilot.app.screen.history.status == "finished")
        await pilot.press("t")
        await settle_snapshot(pilot, lambda: getattr(pilot.app.screen, "report", None) is not None)
        pilot.app.clear_notifications()
        await pilot.pause()

    assert snap_compare(app_for(runs_dir, stable, tmp_path, open_run=run), terminal_size=size, run_before=ready)


def test_the_results_key_is_in_the_footer_and_help_of_runs_and_monitor(stable, runs_dir, tmp_path):  # noqa: F811
    asyncio.run(_the_results_key_is_in_the_footer_and_help(stable, runs_dir, tmp_path))


async def _the_results_key_is_in_the_footer_and_help(registry, runs_dir, tmp_path):
    from finetty.tui.screens.help import HelpScreen
    from finetty.tui.screens.monitor import MonitorScreen

    run = write_run(runs_dir, "261122-110826-lora-f667", recorded())
    app = app_for(runs_dir, registry, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot, lambda: app.screen.query_one("#runs-table").row_count == 1)
        for screen_kind in ("runs", "monitor"):
            footer = [(key, b.binding.description) for key, b in app.screen.active_bindings.items()
                      if b.binding.show]
            assert ("t", "Results") in footer, (screen_kind, footer)
            await pilot.press("f1")
            await settle(pilot, lambda: isinstance(app.screen, HelpScreen))
            assert ("t", "eval, export and serve the run's result" if screen_kind == "runs" else
                    "eval, export and serve the highlighted checkpoint (Checkpoints tab) or the result",
                    f"{screen_kind}.results") in app.screen.keys
            await pilot.press("escape")
            await pilot.press("t")
            await settle(pilot, lambda: isinstance(app.screen, ResultsScreen))
            assert app.screen.run_dir == run
            await pilot.press("escape")
            if screen_kind == "runs":
                await pilot.press("o")
                await settle(pilot, lambda: isinstance(app.screen, MonitorScreen))
