"""Discovering plugins, validating a recipe and listing runs import no torch (checked in a fresh process)."""

import subprocess
import sys

from .conftest import RECIPES

CODE = f"""
import sys
from finetty.core.cli import commands as cli
from finetty.core.recipe import recipe
from finetty.core.run import rundir
from finetty.core.plugin.registry import load_plugins
reg = load_plugins()
recipe.load({str(RECIPES / 'demo-lora.yaml')!r}, [], reg)
cli.main(["runs"])
cli.main(["plugins"])
heavy = sorted(m for m in ("torch", "transformers", "peft", "datasets", "bitsandbytes") if m in sys.modules)
print("HEAVY", heavy)
"""


def test_discovery_and_validation_import_no_torch():
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


APP = r"""
import asyncio, json, sys, time
from pathlib import Path

from textual.widgets import Input

from finetty.tui.app import FinettyApp

HEAVY = ("torch", "transformers", "peft", "datasets", "bitsandbytes", "accelerate")
runs, run, work = map(Path, sys.argv[1:4])
seen = {}


def heavy():
    return sorted(m for m in HEAVY if m in sys.modules)


async def until(pilot, check, what, timeout=400):
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            print("SEEN", json.dumps(seen))
            raise SystemExit(f"timed out waiting for {what}")
        await pilot.pause(0.1)


async def main():
    app = FinettyApp(runs=runs, first_run=False, notify_write=lambda text: None, base_dir=work)
    async with app.run_test(size=(120, 40)) as pilot:
        app.open_chat(run)
        await pilot.pause()
        chat = app.screen
        await until(pilot, lambda: "tuned" in chat.models, "the chat model")
        chat.query_one("#chat-temperature", Input).value = "0"
        chat.query_one("#chat-max-new-tokens", Input).value = "24"
        chat.query_one("#chat-input", Input).focus()
        await pilot.press(*"Who are you?", "enter")
        await until(pilot, lambda: len(chat.histories["tuned"]) == 2, "the answer")
        seen["answer"] = chat.histories["tuned"][-1]["content"]
        seen["after chat"] = heavy()
        await pilot.press("escape")
        app.open_results(run)
        await pilot.pause()
        results = app.screen
        results.query_one("#eval-limit", Input).value = "1"
        await pilot.press("e")
        await until(pilot, lambda: "eval" not in results.jobs, "the eval")
        seen["eval"] = results.report and results.report["tuned"]["exact_match"]
        seen["after eval"] = heavy()
        await pilot.press("x")
        await until(pilot, lambda: "export" not in results.jobs, "the export")
        seen["export"] = results.exported and results.exported["path"]
        seen["after export"] = heavy()


asyncio.run(main())
print("SEEN", json.dumps(seen))
"""


def test_the_app_never_imports_torch_chat_eval_and_export_run_in_a_child(identity_run, tmp_path):
    """The app's own process, driven with Pilot through chat, eval and export, has no torch & co. at any point."""
    import json
    import shutil

    from .results_runs import IDENTITY

    runs, work = tmp_path / "runs", tmp_path / "work"
    work.mkdir()
    run = runs / identity_run.name
    shutil.copytree(identity_run, run)  # eval adds a report and an event: not to the shared run
    out = subprocess.run([sys.executable, "-c", APP, str(runs), str(run), str(work)], capture_output=True,
                         text=True, timeout=1200)
    seen = json.loads(next((line[5:] for line in out.stdout.splitlines() if line.startswith("SEEN ")), "{}"))
    assert out.returncode == 0, (seen, out.stderr[-3000:])
    assert seen["answer"] == IDENTITY[0][1], "the tuned model answered, in the child"
    assert seen["eval"] == 1.0 and seen["export"] == str(work / "exports" / f"{run.name}-adapter")
    assert seen["after chat"] == seen["after eval"] == seen["after export"] == []
