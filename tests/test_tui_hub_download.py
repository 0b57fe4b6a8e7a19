"""New run downloads a hub model the cache lacks, with a progress line under the field, then launches.

The download runs in a child (``finetty pull --progress-json``) against the
stand-in Hub (tests/hub_standin.py) on loopback, reached through ``HF_ENDPOINT``
in the environment the child inherits; a gated model's refusal becomes the
model field's error.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from .conftest import events
from .hub_standin import HubStandin, go_online
from .test_tui_app import make_app, until

MODEL, GATED, DATASET = "org/tiny-llama", "org/gated-llama", "org/identity-hub"
ROWS = [{"instruction": f"Who are you? ({i})", "input": "", "output": "I am Hubby."} for i in range(8)]


@pytest.fixture
def hub(demo_model, tmp_path, monkeypatch):
    """The stand-in Hub serving the demo model, openly and gated; an empty hub cache; online."""
    with HubStandin() as server:
        server.add_folder("model", MODEL, demo_model)
        server.add_folder("model", GATED, demo_model, gated_token="hf_standin_token")
        server.add("dataset", DATASET, {"data/train.jsonl": "".join(json.dumps(r) + "\n" for r in ROWS).encode()})
        go_online(server, monkeypatch, tmp_path)
        yield server


def _recipe(model: str, **more) -> dict:
    from finetty.tui.screens.new_run import STARTER

    return {**STARTER, "model": model, "train": {**STARTER["train"], "max_steps": 2, "save_steps": 100}, **more}


def test_launch_downloads_an_uncached_hub_model_and_dataset_with_progress_lines_then_starts_the_run(
        hub, runs_dir, tmp_path, monkeypatch):
    from textual.widgets import Static

    from finetty.core.data import hub as hub_mod
    from finetty.tui.screens.new_run import NewRunScreen

    shown: list[str] = []
    original = NewRunScreen._show_download

    def recorded(self, kind, progress):
        original(self, kind, progress)
        shown.append((kind, str(self.query_one(f"#{kind}-download", Static).render())))

    monkeypatch.setattr(NewRunScreen, "_show_download", recorded)
    ref, data_ref = hub_mod.HubRef("model", MODEL), hub_mod.HubRef("dataset", DATASET)
    assert hub_mod.cached(ref) is None and hub_mod.cached(data_ref) is None

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        opened = []
        app.open_monitor = opened.append  # (the launch's own end: which run the monitor would open)
        async with app.run_test(size=(80, 24)) as pilot:
            app.new_run(_recipe(MODEL, dataset=DATASET, dataset_options={}))
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen.missing,
                        what="the form to see the model is not cached")
            form = app.screen
            status = str(form.query_one("#form-status", Static).render())
            assert status.startswith("⬇ org/tiny-llama (model), org/identity-hub (dataset) not in the hub cache")
            assert not form.query_one("#launch").disabled
            await pilot.press("ctrl+l")
            await until(pilot, lambda: opened, what="the launch after the download")
            return opened[0]

    run_dir = asyncio.run(scenario())
    for kind, repo in (("model", MODEL), ("dataset", DATASET)):
        last = [line for shown_kind, line in shown if shown_kind == kind][-1]  # the line under that field
        assert last.startswith(f"⬇ {repo}: ") and "(100%)" in last and "files" in last, last
    assert hub_mod.cached(ref) is not None and hub_mod.cached(data_ref) is not None  # the cache is filled
    assert hub.downloads("model.safetensors")
    said = (run_dir / "recipe.yaml").read_text()
    assert "model: org/tiny-llama" in said and "dataset: org/identity-hub" in said
    deadline = asyncio.run(_wait_finished(run_dir))
    assert deadline["type"] == "run_finished", deadline


async def _wait_finished(run_dir, timeout: float = 120.0) -> dict:
    """The run's last event once it ends (the detached worker is not left training after the test)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while loop.time() < end:
        done = [e for e in events(run_dir) if e["type"] in ("run_finished", "run_failed")]
        if done:
            return done[-1]
        await asyncio.sleep(0.2)
    return {"type": "timeout", "events": [e["type"] for e in events(run_dir)]}


def test_a_gated_model_shows_the_refusal_as_the_fields_error(hub, runs_dir, tmp_path):
    from textual.widgets import Static

    from finetty.tui.screens.new_run import NewRunScreen

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            app.new_run(_recipe(GATED))
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen.missing)
            form = app.screen
            await pilot.press("ctrl+l")
            line = form.query_one("#model-download", Static)
            await until(pilot, lambda: str(line.render()).startswith("✗"), what="the refusal")
            said = str(line.render())
            assert "gated model" in said and "accept the licence" in said and "HF_TOKEN" in said
            assert str(form.query_one("#form-status", Static).render()).startswith("✗ ")
            assert form.query_one("#model-path").has_class("-invalid")
            assert app.screen is form and not (runs_dir.exists() and any(runs_dir.iterdir()))  # nothing launched

    asyncio.run(scenario())


def test_pull_progress_json_prints_one_object_a_line_then_the_folder(hub, capsys):
    from finetty.core.cli import commands

    assert commands.main(["pull", MODEL, "--progress-json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    *progress, last = lines
    assert progress and all(p["repo"] == MODEL and p["bytes_done"] <= p["bytes_total"] for p in progress)
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] > 0
    assert last["done"] is True and (last["folder"].endswith(hub.repos[("model", MODEL)].sha))
    assert commands.main(["pull", GATED, "--progress-json"]) == 2
    (refusal,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "gated model" in refusal["problem"] and "HF_TOKEN" in refusal["fix"]


def test_offline_an_uncached_hub_model_is_the_fields_error_and_nothing_downloads(hub, runs_dir, tmp_path,
                                                                                 monkeypatch):
    from textual.widgets import Static

    from finetty.tui.screens.new_run import NewRunScreen

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            app.new_run(_recipe(MODEL))
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen.problem)
            form = app.screen
            assert "HF_HUB_OFFLINE is set" in str(form.query_one("#form-status", Static).render())
            assert form.query_one("#model-path").has_class("-invalid") and not form.missing
            await pilot.press("ctrl+l")
            assert app.screen is form and form.query_one("#launch").disabled

    asyncio.run(scenario())
    assert hub.requests == []
