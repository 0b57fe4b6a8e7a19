"""The one status rule (core/run/status.py), as a table, and the readers that use it."""

from __future__ import annotations

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
