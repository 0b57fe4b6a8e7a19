"""The one status rule (core/run/status.py), as a table, and the readers that use it."""

from __future__ import annotations

import json

import pytest

from finetty.core.run import summary as summary_mod
from finetty.core.run.status import LOST_REASON, run_status

# phase (what the events said), complete, live, heartbeat age -> status (and stalled_for)
CASES = [
    # a long history still being replayed: nothing is decided before its end
    ("running", False, True, None, "reading", None),
    ("finished", False, False, None, "reading", None),
    ("starting", False, False, None, "reading", None),
    # ended runs
    ("finished", True, False, None, "finished", None),
    ("failed", True, False, None, "failed", None),
    ("stopped", True, False, None, "stopped", None),
    ("finished", True, True, None, "finished", None),  # the worker lets go of the lock just after its last event
    ("stopped", True, True, 1.0, "starting", None),  # a resume's worker holds the lock, has not written yet
    ("failed", True, True, None, "starting", None),
    ("stopped", True, True, 100.0, "starting", None),  # (an old heartbeat belongs to the worker that stopped)
    # a worker on it
    ("running", True, True, None, "running", None),  # no heartbeat known (a run from before heartbeats)
    ("running", True, True, 0.4, "running", None),
    ("running", True, True, 14.9, "running", None),
    ("running", True, True, 15.1, "stalled", 15.1),
    ("starting", True, True, None, "starting", None),
    ("starting", True, True, 60.0, "stalled", 60.0),  # hung while loading the model
    # the worker went without a final event
    ("running", True, False, None, "lost", None),
    ("starting", True, False, None, "lost", None),  # a resume that died before training
    ("running", True, False, 99.0, "lost", None),  # (no lock: the heartbeat is not asked)
]


@pytest.mark.parametrize("phase, complete, live, age, state, stalled_for", CASES)
def test_the_status_rule(phase, complete, live, age, state, stalled_for):
    status = run_status(phase, complete=complete, live=live, heartbeat_age=age, stall_limit=15.0)
    assert (status.state, status.stalled_for) == (state, stalled_for)
    assert (status.reason == LOST_REASON) == (state == "lost")


def test_a_stalled_run_says_for_how_long():
    assert str(run_status("running", complete=True, live=True, heartbeat_age=42.7, stall_limit=15.0)) == \
        "stalled (for 42 s)"
    assert str(run_status("running", complete=True, live=True, heartbeat_age=1.0)) == "running"


def _summary(events):
    summary = summary_mod.RunSummary(id="x", path=None, status="starting")
    summary_mod.apply_events(summary, events)
    return summary


STARTED = {"ts": 2.0, "type": "run_started", "step": 0, "total_steps": 10, "recipe": {"model": "m", "method": "lora"}}


@pytest.mark.parametrize("events, phase", [
    ([], "starting"),
    ([{"ts": 1.0, "type": "worker_started", "pid": 1, "resume": False}], "starting"),
    ([STARTED, {"ts": 3.0, "type": "step", "step": 1, "loss": 2.0}], "running"),
    ([STARTED, {"ts": 4.0, "type": "stopped", "step": 4, "checkpoint": None, "reason": "stop requested"}], "stopped"),
    # a resume after the stop: its worker is starting again, whatever came before
    ([STARTED, {"ts": 4.0, "type": "stopped", "step": 4, "checkpoint": None, "reason": "r"},
      {"ts": 5.0, "type": "worker_started", "pid": 2, "resume": True}], "starting"),
    ([STARTED, {"ts": 4.0, "type": "run_failed", "reason": "boom"},
      {"ts": 5.0, "type": "worker_started", "pid": 2, "resume": True}, dict(STARTED, ts=6.0, step=4)], "running"),
    # finetty eval's event after the end changes nothing
    ([STARTED, {"ts": 4.0, "type": "run_finished", "step": 10, "final": "final", "train_loss": 1.0,
                "runtime": 1.0, "tokens": 5},
      {"ts": 9.0, "type": "eval", "step": 10, "source": "finetty eval", "loss": None, "metrics": {}}], "finished"),
])
def test_the_events_fold_into_a_phase(events, phase):
    assert _summary(events).phase == phase


def test_settle_keeps_the_events_reason_and_adds_lost():
    summary = _summary([STARTED, {"ts": 4.0, "type": "run_failed", "reason": "CUDA out of memory"}])
    summary_mod.settle(summary, complete=True, live=False, heartbeat_age=None)
    assert (summary.status, summary.reason) == ("failed", "CUDA out of memory")
    lost = _summary([STARTED])
    summary_mod.settle(lost, complete=True, live=False, heartbeat_age=None)
    assert (lost.status, lost.reason) == ("lost", LOST_REASON)
    summary_mod.settle(lost, complete=True, live=True, heartbeat_age=20.0)  # the same summary, asked again
    assert (lost.status, lost.label, lost.reason) == ("stalled", "stalled (for 20 s)", None)


@pytest.mark.slow
def test_a_stopped_worker_shows_as_stalled_and_stop_says_it_did_not_stop(tmp_path, demo_model):
    """Reproduction 7 of issue 19: after `kill -STOP` of the worker, `runs` said running forever and `finetty
    stop` reported success while nothing happened. Now the heartbeat stops, the run is `stalled (for N s)`, and
    stop says plainly that the worker has not stopped; once the worker runs again, it takes the request."""
    import os
    import signal
    import time

    from finetty.core.run import rundir

    from .conftest import RECIPES, events, finetty, only_run, wait_for

    runs = tmp_path / "runs"
    finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), "--detach",
            "--set", "train.max_steps=100000", "--set", "train.save_steps=100000", "--set", "train.logging_steps=1",
            check=True)
    run_dir = only_run(runs)
    wait_for(lambda: (run_dir / "events.jsonl").exists() and any(e["type"] == "step" for e in events(run_dir)),
             "the first step")
    pid = rundir.lock_holder(run_dir)
    beat = run_dir / rundir.HEARTBEAT_FILE
    assert json.loads(beat.read_text())["pid"] == pid
    quick = {"FINETTY_STALL_AFTER_S": "3", "COLUMNS": "200"}
    assert "running" in finetty("runs", "--runs-dir", str(runs)).stdout
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: time.time() - beat.stat().st_mtime > 4, "the heartbeat to stop")
        listed = " ".join(finetty("runs", "--runs-dir", str(runs), env=quick).stdout.split())
        assert f"{run_dir.name} stalled (for " in listed, listed
        stop = finetty("stop", run_dir.name, "--runs-dir", str(runs), "--wait", "2", env=quick)
        assert stop.returncode == 1, stop.stdout + stop.stderr
        said = " ".join(stop.stderr.split())
        assert "not stopped" in said and f"worker {pid} has not run for" in said and f"kill -CONT {pid}" in said
        assert not any(e["type"] == "stopped" for e in events(run_dir))
    finally:
        os.kill(pid, signal.SIGCONT)
    # running again, the worker finds the stop request it was sent while stopped
    wait_for(lambda: rundir.summarize(run_dir).status == "stopped", "the run to stop", timeout=300)
    stopped = [e for e in events(run_dir) if e["type"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["checkpoint"]
    assert "stopped" in finetty("runs", "--runs-dir", str(runs), env=quick).stdout


@pytest.mark.slow
def test_stop_waits_for_the_worker_and_reports_the_checkpoint(tmp_path, demo_model):
    from finetty.core.run import rundir

    from .conftest import RECIPES, events, finetty, only_run, wait_for

    runs = tmp_path / "runs"
    finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), "--detach",
            "--set", "train.max_steps=100000", "--set", "train.save_steps=100000", check=True)
    run_dir = only_run(runs)
    wait_for(lambda: (run_dir / "events.jsonl").exists() and any(e["type"] == "step" for e in events(run_dir)),
             "the first step")
    stop = finetty("stop", run_dir.name, "--runs-dir", str(runs), "--wait", "300")
    assert stop.returncode == 0 and "stopped at step" in stop.stdout, stop.stdout + stop.stderr
    stopped = [e for e in events(run_dir) if e["type"] == "stopped"][0]
    assert f"stopped at step {stopped['step']} with checkpoint {stopped['checkpoint']}" in " ".join(stop.stdout.split())
    assert rundir.latest_checkpoint(run_dir).name == rundir.checkpoint_name(stopped["step"])
