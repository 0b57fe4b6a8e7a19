"""The run queue (core/run/queue.py, `finetty queue`): entries start one after another when nothing trains."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from finetty.core.run import queue
from finetty.core.run import rundir
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.plugin.registry import load_plugins

from .conftest import RECIPES, events, finetty


def demo_recipe(**train):
    return recipe_mod.load(None, [f"train.{k}={v}" for k, v in train.items()], load_plugins(), check_data=False)


def test_entries_are_added_moved_removed_and_cleared(tmp_path):
    runs = tmp_path / "runs"
    a, b, c = (queue.add(runs, demo_recipe(max_steps=n)) for n in (1, 2, 3))
    assert [e.id for e in queue.read(runs).entries] == [a.id, b.id, c.id]
    assert queue.move(runs, c.id, -5) == 0
    assert queue.move(runs, a.id, 1) == 2
    assert [e.id for e in queue.read(runs).entries] == [c.id, b.id, a.id]
    assert queue.remove(runs, b.id) and not queue.remove(runs, b.id)
    assert queue.move(runs, "q-missing", 1) is None
    assert queue.clear(runs) == 2 and queue.read(runs).entries == []
    # a queued run has no run directory yet, so `finetty runs` never lists it as lost
    assert not any(p.is_dir() for p in runs.iterdir())


def test_advance_waits_for_the_live_run_then_starts_the_next_in_order(tmp_path):
    runs = tmp_path / "runs"
    first, second = queue.add(runs, demo_recipe(max_steps=1)), queue.add(runs, demo_recipe(max_steps=2))
    busy = rundir.create(runs, "lora", "model: tiny-demo\n")
    lock = rundir.acquire_lock(busy)  # a run is training
    started: list[str] = []

    def fake_start(runs_dir: Path, entry):
        started.append(entry.id)
        run_dir = rundir.create(runs_dir, entry.method, entry.recipe)
        return run_dir

    try:
        assert queue.advance(runs, start=fake_start) is None
        assert started == []
    finally:
        os.close(lock)
    run_dir = queue.advance(runs, start=fake_start)
    assert started == [first.id] and run_dir is not None
    assert [e.id for e in queue.read(runs).entries] == [second.id]
    assert queue.read(runs).started == [run_dir.name]


def test_an_entry_that_no_longer_validates_is_dropped_with_its_reason(tmp_path):
    runs = tmp_path / "runs"
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    bad = queue.add(runs, recipe_mod.load(None, [f"dataset={data}"], load_plugins()))
    good = queue.add(runs, demo_recipe(max_steps=1))
    data.unlink()  # the file went away while it waited
    started = []
    run_dir = queue.advance(runs, start=lambda r, e: started.append(e.id) or rundir.create(r, e.method, e.recipe)
                            if e.id == good.id else queue._start(r, e))
    assert started == [good.id] and run_dir is not None
    assert bad.id in queue.read(runs).last_error and "data.jsonl" in queue.read(runs).last_error


@pytest.mark.slow
def test_finetty_queue_run_trains_queued_recipes_one_after_another(tmp_path, demo_model):
    runs = tmp_path / "runs"
    for steps in (3, 2):
        result = finetty("queue", "add", str(RECIPES / "demo-lora.yaml"), "--set", f"train.max_steps={steps}",
                         "--set", "train.save_steps=100", "--no-start", "--runs-dir", str(runs), check=True)
        assert "queued" in result.stdout
    listing = finetty("queue", "--runs-dir", str(runs), check=True).stdout
    assert listing.count("lora") == 2 and "no runner" in listing
    result = finetty("queue", "run", "--runs-dir", str(runs), check=True, timeout=600)
    assert "started 2 run(s)" in result.stdout
    order = queue.read(runs).started
    assert len(order) == 2
    first, second = (runs / name for name in order)
    deadline = time.monotonic() + 300  # the runner leaves once the queue is empty; the last run trains on
    while rundir.summarize(second).status != "finished" and time.monotonic() < deadline:
        time.sleep(0.3)
    ends = {name: events(runs / name) for name in order}
    assert ends[first.name][-1]["type"] == "run_finished" and ends[first.name][-1]["step"] == 3
    # the second waited for the first worker to end
    assert ends[second.name][0]["ts"] >= ends[first.name][-1]["ts"]
    assert ends[second.name][-1]["type"] == "run_finished" and ends[second.name][-1]["step"] == 2


def test_a_second_runner_leaves_at_once(tmp_path):
    import fcntl

    runs = tmp_path / "runs"
    runs.mkdir()
    with open(runs / queue.RUNNER_LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert queue.runner_alive(runs)
        said = []
        assert queue.run_forever(runs, say=said.append) == 0
        assert "already" in said[0]
        assert queue.ensure_runner(runs) is None
    assert not queue.runner_alive(runs)
