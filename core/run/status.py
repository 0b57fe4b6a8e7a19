"""A run's status: one rule, one pure function, used by every reader.

``finetty runs``, the foreground progress of ``finetty train`` / ``attach``,
the app's Runs list and its monitor all ask :func:`run_status`; none of them
decides on its own. The function reads no file and no clock: its caller says
what it knows, so the rule is tested as a table (tests/test_status.py).

What is known about a run:

- ``phase``: what its events said last, folded by
  :func:`finetty.core.run.summary.apply_events`: ``starting`` (a worker began,
  no training yet), ``running`` (training began), or how it ended:
  ``finished``, ``failed``, ``stopped``. A ``worker_started`` after an end (a
  resume) makes it ``starting`` again.
- ``complete``: whether every complete line of ``events.jsonl`` has been read.
  A long history is read in chunks; until the last one the status is
  ``reading`` (its end may still be ahead).
- ``live``: whether a process holds the run's worker lock.
- ``heartbeat_age``: seconds since the current worker last said it is alive
  (:mod:`finetty.core.train.heartbeat`), or None when nobody knows (no
  heartbeat file, or one left by an earlier worker).

The statuses: ``reading``, ``starting``, ``running``, ``stalled`` (a live
worker whose heartbeat stopped ``stalled_for`` seconds ago: stopped with
SIGSTOP, hung in a driver call, swapping), ``finished``, ``failed``,
``stopped``, and ``lost`` (no final event and no worker: killed, OOM-killed,
power; it can be resumed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: A live worker whose heartbeat is older than this is ``stalled``. The heartbeat beats every
#: :data:`finetty.core.train.heartbeat.INTERVAL` seconds, so this is several missed beats, not a slow step.
STALL_AFTER = 15.0
STALL_ENV = "FINETTY_STALL_AFTER_S"
"""overrides :data:`STALL_AFTER` (tests use a few seconds)"""

ENDED = ("finished", "failed", "stopped")
ACTIVE = ("starting", "running", "stalled")
"""the statuses of a run that has a worker: it can be stopped, not resumed"""
LOST_REASON = "the worker ended without a final event (killed?); resume to go on"


@dataclass(frozen=True)
class Status:
    state: str
    stalled_for: float | None = None
    """seconds since the last heartbeat, for ``stalled``"""
    reason: str | None = None
    """why, where the rule itself knows (``lost``); otherwise the run's own last reason applies"""

    def __str__(self) -> str:
        return label(self.state, self.stalled_for)


def label(state: str, stalled_for: float | None = None) -> str:
    """The status as a person reads it: ``stalled (for 42 s)``."""
    if state == "stalled" and stalled_for is not None:
        return f"stalled (for {int(stalled_for)} s)"
    return state


def stall_after() -> float:
    try:
        return float(os.environ.get(STALL_ENV) or STALL_AFTER)
    except ValueError:
        return STALL_AFTER


def run_status(phase: str, *, complete: bool, live: bool, heartbeat_age: float | None = None,
               stall_limit: float = STALL_AFTER) -> Status:
    """The status of a run from what is known about it (see the module's docstring)."""
    if not complete:
        return Status("reading")  # the end of the history may still say finished, or resumed after an end
    if phase in ENDED:
        if live and phase != "finished":
            return Status("starting")  # a resume's worker holds the lock and has not written yet
        return Status(phase)
    if not live:
        return Status("lost", reason=LOST_REASON)
    if heartbeat_age is not None and heartbeat_age > stall_limit:
        return Status("stalled", stalled_for=heartbeat_age)
    return Status("running" if phase == "running" else "starting")
