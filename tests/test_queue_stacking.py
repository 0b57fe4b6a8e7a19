"""Queueing both stages: `finetty queue add` of demo-lora, then of demo-dpo (``model: run:latest:lora/sft``).

The DPO entry keeps ``run:latest:lora/sft`` unresolved and starts from the LoRA run the queue just trained,
not from an older LoRA run that was the newest when it was queued. The queue's own loop runs in this process:
``launch.start_worker`` is swapped for the worker's ``train`` called in place (two steps a stage), so
everything else (checking the entry again, pinning its parent, dropping what cannot start) is the real code.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from finetty.core.cli.commands import main as cli
from finetty.core.plugin.registry import load_plugins
from finetty.core.run import launch, queue
from finetty.core.run.events import EventWriter
from finetty.core.train import worker

from .conftest import RECIPES, events

SHORT = ["--set", "train.max_steps=2", "--set", "train.save_steps=2", "--set", "train.logging_steps=1",
         "--set", "train.warmup_steps=0"]


def _started(run_dir: Path) -> dict:
    return next(e for e in events(run_dir) if e["type"] == "run_started")


def _queue(runs: Path, recipe: str, *more: str) -> int:
    return cli(["queue", "add", str(RECIPES / recipe), *SHORT, *more, "--no-start", "--runs-dir", str(runs)])


@pytest.fixture
def older_lora(identity_run, tmp_path) -> Path:
    """A runs folder holding a finished LoRA SFT run (a copy of the session's identity run)."""
    runs = tmp_path / "runs"
    runs.mkdir()
    return Path(shutil.copytree(identity_run, runs / identity_run.name))


def _train_in_place(monkeypatch) -> None:
    registry = load_plugins()
    monkeypatch.setenv("FINETTY_KEEP_IMPORTS", "1")
    monkeypatch.setattr(worker, "load_plugins", lambda: registry)

    def start_worker(run_dir: Path, *args, **kwargs) -> None:
        writer = EventWriter(run_dir)
        try:
            worker.train(run_dir, writer, worker.Requests(), resume=False)
        finally:
            writer.close()

    monkeypatch.setattr(launch, "start_worker", start_worker)


def test_a_queued_dpo_stage_trains_on_top_of_the_lora_run_queued_before_it(older_lora, monkeypatch, capsys):
    runs = older_lora.parent
    assert _queue(runs, "demo-lora.yaml") == 0
    assert _queue(runs, "demo-dpo.yaml") == 0
    said = " ".join(capsys.readouterr().out.split())  # (rich wraps at the terminal's width)
    lora_entry, dpo_entry = queue.read(runs).entries
    assert dpo_entry.model == "run:latest:lora/sft" and dpo_entry.after == lora_entry.id
    assert "model: run:latest:lora/sft" in dpo_entry.recipe  # kept unresolved, not the older run's path
    assert f"resolved when it starts: the run of {lora_entry.id}" in said

    _train_in_place(monkeypatch)
    assert queue.run_forever(runs, poll=0.05) == 2
    state = queue.read(runs)
    lora_run, dpo_run = (runs / run_id for run_id in state.started)
    assert state.ran == {lora_entry.id: lora_run.name, dpo_entry.id: dpo_run.name} and not state.last_error
    assert (lora_run / "final").is_dir() and (dpo_run / "final").is_dir()
    parent = _started(dpo_run)["parent"]
    assert parent["run"] == lora_run.name != older_lora.name  # the stage just trained, not the older run
    assert parent["mode"] == "continue" and parent["objective"] == "sft"
    assert _started(dpo_run)["recipe"]["model"] == f"run:{lora_run.resolve()}@final"


def test_a_stage_whose_first_stage_failed_is_dropped_not_stacked_on_an_older_run(older_lora, monkeypatch):
    runs = older_lora.parent
    assert _queue(runs, "demo-lora.yaml") == 0
    assert _queue(runs, "demo-dpo.yaml") == 0
    lora_entry, dpo_entry = queue.read(runs).entries

    def fail(runs_dir: Path, entry):  # the first stage starts and fails: it leaves no final/
        from finetty.core.run import rundir

        return rundir.create(runs_dir, entry.method, entry.recipe)

    assert queue.advance(runs, start=fail) is not None
    assert queue.advance(runs) is None  # the DPO stage cannot start: its parent has no result
    state = queue.read(runs)
    assert state.entries == [] and dpo_entry.id in state.last_error and "has not finished" in state.last_error
    assert len([p for p in runs.iterdir() if (p / "recipe.yaml").is_file()]) == 2  # nothing started on the old run


def test_latest_with_nothing_finished_nor_queued_is_refused_naming_why(tmp_path, demo_model, capsys):
    runs = tmp_path / "runs"
    assert _queue(runs, "demo-dpo.yaml") == 2
    err = capsys.readouterr().err
    assert "run:latest:lora/sft" in err and "no finished run that trained lora/sft" in err and "none queued" in err
    assert queue.read(runs).entries == [] and not (runs.exists() and any(p.is_dir() for p in runs.iterdir()))


def test_a_latest_stage_queued_on_a_finished_run_resolves_when_it_starts_and_run_id_at_add(older_lora):
    runs = older_lora.parent
    assert _queue(runs, "demo-dpo.yaml") == 0
    assert _queue(runs, "demo-dpo.yaml", "--set", f"model=run:{older_lora.name}") == 0
    latest, named = queue.read(runs).entries
    assert latest.model == "run:latest:lora/sft" and latest.after is None and latest.parent_run is None
    assert named.model == f"run:{older_lora.resolve()}@final" and named.after is None  # checked and resolved now


def test_a_latest_stage_queued_while_its_first_stage_trains_starts_from_that_run(tmp_path, demo_model, capsys):
    import os

    from finetty.core.run import rundir

    runs = tmp_path / "runs"
    training = rundir.create(runs, "lora", "model: tiny-demo\ndataset: identity\nmethod: lora\nobjective: sft\n")
    lock = rundir.acquire_lock(training)  # its worker is alive: the queue waits for it
    try:
        assert _queue(runs, "demo-dpo.yaml") == 0
    finally:
        os.close(lock)
    (entry,) = queue.read(runs).entries
    assert entry.parent_run == training.name and entry.after is None
    assert f"resolved when it starts: run {training.name}" in " ".join(capsys.readouterr().out.split())  # (rich wraps)
    data: dict = {"model": "run:latest:lora/sft@final"}
    queue._pin_parent(entry, data)  # when it starts: that run, whatever finished meanwhile
    assert data["model"] == f"run:{training.name}@final"


def test_the_new_run_form_queues_a_latest_stage_unresolved_after_the_queued_lora_stage(older_lora, tmp_path,
                                                                                         monkeypatch):
    import asyncio

    import yaml

    from finetty.core.recipe import recipe as recipe_mod
    from finetty.tui.screens.new_run import NewRunScreen

    from .test_tui_app import make_app, until

    runs = older_lora.parent
    monkeypatch.setattr(queue, "ensure_runner", lambda runs_dir: None)  # (queued only: nothing trains here)
    first = queue.add(runs, recipe_mod.load(RECIPES / "demo-lora.yaml", [], load_plugins(), check_data=False))
    dpo = yaml.safe_load((RECIPES / "demo-dpo.yaml").read_text())

    async def scenario():
        app = make_app(runs, base_dir=tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            app.new_run(dpo)
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen.recipe is not None,
                        what="the form checked (against the older run, the newest finished one now)")
            await pilot.press("ctrl+o")
            await until(pilot, lambda: len(queue.read(runs).entries) == 2, what="the DPO stage queued")

    asyncio.run(scenario())
    queued = queue.read(runs).entries[1]
    assert queued.model == "run:latest:lora/sft" and queued.after == first.id  # not the older run's path
