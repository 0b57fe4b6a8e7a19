"""Say what runs: the objective beside the method wherever a run is named, checkpoints with their facts, a steady ETA."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from finetty.core.run import queue, rundir
from finetty.core.run.summary import RECENT_STEPS, RunSummary, apply_events

from .conftest import finetty
from .tui_runs import FROZEN, make_runs, workers_done

DPO_RECIPE = "model: tiny-demo\ndataset: identity-preference\nmethod: lora\nobjective: dpo\n"


def test_a_run_id_and_every_listing_name_the_objective(tmp_path):
    runs = tmp_path / "runs"
    run = rundir.create(runs, "lora", DPO_RECIPE)
    assert re.fullmatch(r"\d{6}-\d{6}-lora-dpo-[0-9a-f]{4}", run.name), run.name
    assert rundir.what_runs("lora", "dpo") == "lora/dpo"
    started = {"ts": 1.0, "type": "run_started", "step": 0, "total_steps": 10,
               "recipe": {"model": "tiny-demo", "method": "lora", "objective": "dpo"}}
    (run / "events.jsonl").write_text(json.dumps({"ts": 1.0, "type": "worker_started", "pid": 1, "resume": False})
                                      + "\n" + json.dumps(started) + "\n")
    listed = finetty("runs", "--runs-dir", str(runs), env={"COLUMNS": "200"})
    assert listed.returncode == 0, listed.stderr
    assert "lora/dpo" in listed.stdout, listed.stdout


def test_a_queue_entry_names_its_objective_and_an_old_entry_reads_as_sft(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    old = {"id": "q-000001", "recipe": "model: tiny-demo\n", "model": "tiny-demo", "method": "lora",
           "dataset": "identity", "added": 1.0}  # written before entries had an objective
    (runs / queue.QUEUE_FILE).write_text(json.dumps({"entries": [old], "started": []}))
    [entry] = queue.read(runs).entries
    assert (entry.id, entry.objective) == ("q-000001", "sft")


def _steps(paces: list[float], start: float = 1000.0) -> list[dict]:
    events = [{"ts": start, "type": "run_started", "step": 0, "total_steps": 200,
               "recipe": {"model": "m", "method": "lora", "objective": "sft"}}]
    ts = start
    for step, pace in enumerate(paces, 1):
        ts += pace
        events.append({"ts": ts, "type": "step", "step": step, "loss": 1.0})
    return events


def _eta(events: list[dict]) -> float:
    summary = RunSummary(id="r", path=Path("r"), status="starting")
    apply_events(summary, events)
    summary.status = "running"
    return summary.eta


def test_the_eta_follows_the_recent_pace_and_one_slow_step_does_not_swing_it():
    # 60 s to load the model, then 50 steps at 2 s, then 50 at 1 s: 100 steps left at 1 s each
    events = _steps([62.0] + [2.0] * 49 + [1.0] * 50)
    assert abs(_eta(events) - 100.0) < 1.0  # (the average since the start said 220 s)
    steady = _eta(events)
    one_slow = _eta(events + [{"ts": events[-1]["ts"] + 20.0, "type": "step", "step": 101, "loss": 1.0}])
    assert one_slow < steady * (1 + 20.0 / RECENT_STEPS) + 1  # a 20 s step moves it by a step's share, not 20x


def test_the_app_names_the_objective_and_each_checkpoint_with_its_loss_time_and_size(runs_dir):
    from finetty.tui.app import FinettyApp
    from finetty.tui.screens.monitor import MonitorScreen

    made = make_runs(runs_dir)

    async def scenario():
        app = FinettyApp(runs=runs_dir, first_run=False, clock=lambda: FROZEN, notify_write=lambda text: None)
        async with app.run_test(size=(140, 40)) as pilot:
            table = app.screen.query_one("#runs-table")
            while table.row_count < len(made):
                await pilot.pause(0.05)
            methods = {str(table.get_cell_at((row, 3))) for row in range(table.row_count)}
            app.open_monitor(made["finished"])
            while not (isinstance(app.screen, MonitorScreen) and app.screen.history.train):
                await pilot.pause(0.05)
            await workers_done(app)
            await pilot.pause()
            options = app.screen.query_one("#checkpoint-list")
            rows = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            return methods, app.screen.sub_title, rows, dict(app.screen.history.train)

    methods, header, rows, losses = asyncio.run(scenario())
    assert methods == {"lora/sft"}, methods
    assert header.endswith("· lora/sft"), header
    checkpoints = [row for row in rows if row.startswith("step-")]
    assert checkpoints, rows
    for row in checkpoints:
        match = re.fullmatch(r"step-(\d{6})  step (\d+) · loss (\d+\.\d{4}) · \d\d:\d\d · [\d.]+ (B|kB|MB|GB)", row)
        assert match, row
        assert abs(float(match.group(3)) - losses[int(match.group(2))]) < 1e-4
