"""What a run's events add up to (:class:`RunSummary`), and the history index that keeps it cheap.

A summary is a fold of the events (:func:`apply_events`); its status comes
from the one rule in :mod:`finetty.core.run.status` (:func:`settle`).

The history index, ``summary.json`` in the run directory, is that fold
written down with the byte offset of ``events.jsonl`` it covers. The worker
keeps it up to date (its heartbeat thread rewrites it every
:data:`INDEX_EVERY` seconds and at the end, see
:mod:`finetty.core.train.heartbeat`), so ``finetty runs``, ``attach`` and the
app read the index and only the events after its offset: a run of a million
events lists in milliseconds. The index is only ever a cache of the events:
one that is missing, of another version, or longer than the file (the file
was replaced) is rebuilt by folding the events again in chunks, in bounded
memory, and written back; an old one is completed by folding its tail. It is
written to a temporary name and renamed, so a reader never sees half of one.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from finetty.core import paths
from finetty.core.run.events import EVENTS_FILE, EventReader
from finetty.core.run.event_types import TERMINAL
from finetty.core.run.status import label, run_status, stall_after

RECENT_STEPS = 20
"""step events the ETA's pace is measured over"""
INDEX_FILE = "summary.json"
INDEX_VERSION = 2
"""(2: the summary keeps the run's hub downloads; an index of 1 did not fold them and is read again)"""
INDEX_EVERY = 2.0
"""seconds between the worker's rewrites of the index"""
READ_CHUNK = 4 * 1024 * 1024
"""a full replay reads the events this many bytes at a time, so its memory does not grow with the history"""
WRITE_BACK_AFTER = 1024 * 1024
"""a reader that folded more than this many bytes past the index writes the index back"""


@dataclass
class RunSummary:
    """One line of ``finetty runs`` and of the app's Runs screen."""

    id: str
    path: Path
    status: str
    """from :func:`finetty.core.run.status.run_status`; ``phase`` is what the events alone say"""
    model: str = "?"
    method: str = "?"
    step: int = 0
    total: int | None = None
    loss: float | None = None
    started: float | None = None
    updated: float | None = None
    reason: str | None = None
    checkpoints: int = 0
    extra: dict = field(default_factory=dict)
    phase: str = "starting"
    end_reason: str | None = None
    """the reason the events gave (a failure's, a stop's); ``reason`` adds the rule's own (``lost``)"""
    stalled_for: float | None = None
    end: dict | None = None
    """the event that ended the last worker's run (None while a worker is on it)"""
    events: int = 0
    skipped: int = 0
    """lines of events.jsonl skipped as torn, not JSON, or against the event contract"""
    offset: int = 0
    """bytes of events.jsonl folded in"""
    parent: dict | None = None
    """the run this one started from (``run_started``'s ``parent``: run, checkpoint, path, mode, ...), or None"""

    @property
    def label(self) -> str:
        """The status as shown: ``stalled (for 42 s)``."""
        return label(self.status, self.stalled_for)

    @property
    def origin(self) -> str:
        """What the run started from, as listed: the model's folder name, or for a run on top of a run the
        chain, ``← PARENT-ID`` (``@step-000040`` when it started from a checkpoint)."""
        parent = self.parent or {}
        if parent.get("run"):
            at = "" if parent.get("checkpoint") in (None, paths.RUN_FINAL) else f"@{parent['checkpoint']}"
            return f"\N{LEFTWARDS ARROW} {parent['run']}{at}"
        return Path(self.model).name

    @property
    def elapsed(self) -> float | None:
        if self.started is None:
            return None
        end = time.time() if self.status in ("running", "starting", "stalled") else (self.updated or self.started)
        return max(0.0, end - self.started)

    @property
    def eta(self) -> float | None:
        """Seconds left at the pace of the last :data:`RECENT_STEPS` steps.

        A window, not the last step (one slow step on a busy machine swung it by minutes) nor the
        average since the start (which counts loading the model and adapts to nothing)."""
        if self.status != "running" or not self.total or not self.step or self.elapsed is None:
            return None
        rate = self.extra.get("seconds_per_step")
        recent = self.extra.get("recent_steps") or []
        if len(recent) >= 2 and recent[-1][1] > recent[0][1]:
            rate = (recent[-1][0] - recent[0][0]) / (recent[-1][1] - recent[0][1])
        return max(0.0, (self.total - self.step) * rate) if rate else None


def apply_events(summary: RunSummary, events: list[dict]) -> None:
    """Fold events into a summary (used for the first read and for each new batch).

    Events have passed the contract's check (:func:`finetty.core.run.event_types.problem`), so a field
    that is there has its type; one that is missing (an older run) is read as unknown."""
    for event in events:
        summary.events += 1
        kind = event.get("type")
        if kind == "worker_started":
            summary.phase = "starting"  # a resume after an end, or after a lost worker
            summary.end = None
        elif kind == "run_started":
            recipe = event.get("recipe") or {}
            summary.model = str(recipe.get("model", summary.model))
            summary.parent = event.get("parent") or summary.parent
            summary.method = str(recipe.get("method", summary.method))
            summary.extra["objective"] = str(recipe.get("objective") or "sft")
            summary.extra["recent_steps"] = []  # (ts, step) of the last RECENT_STEPS steps: the ETA's rate
            summary.total = event.get("total_steps", summary.total)
            if summary.started is None or not event.get("resumed_from"):
                summary.started = summary.started or event.get("ts")
            summary.phase = "running"
            summary.reason = summary.end_reason = None
            summary.extra["resumed_at"] = (event.get("ts"), event.get("step") or 0)
        elif kind == "step":
            summary.step = event.get("step", summary.step)
            if event.get("loss") is not None:
                summary.loss = event["loss"]
            start_ts, start_step = summary.extra.get("resumed_at", (None, 0))
            if start_ts and event.get("ts") and summary.step > start_step:
                summary.extra["seconds_per_step"] = (event["ts"] - start_ts) / (summary.step - start_step)
            if event.get("ts"):
                recent = summary.extra.setdefault("recent_steps", [])
                recent.append([event["ts"], summary.step])
                del recent[:-RECENT_STEPS]
        elif kind == "checkpoint":
            summary.checkpoints += 1
        elif kind == "download":  # what it took from the hub; a resumed run names a repo again: the latest is kept
            keep = {k: event.get(k) for k in ("kind", "repo", "revision", "commit", "files", "bytes")}
            summary.extra.setdefault("downloads", {})[f"{keep['kind']} {keep['repo']}"] = keep
        elif kind in TERMINAL:
            summary.phase = TERMINAL[kind]
            summary.end = event
            summary.reason = summary.end_reason = event.get("reason")
            summary.step = event.get("step", summary.step)
        summary.updated = event.get("ts", summary.updated)
    summary.status = summary.phase


def settle(summary: RunSummary, *, complete: bool, live: bool, heartbeat_age: float | None) -> None:
    """Give the summary its status by the one rule (see :mod:`finetty.core.run.status`)."""
    status = run_status(summary.phase, complete=complete, live=live, heartbeat_age=heartbeat_age,
                        stall_limit=stall_after())
    summary.status = status.state
    summary.stalled_for = status.stalled_for
    summary.reason = status.reason or summary.end_reason


def poll_into(summary: RunSummary, reader: EventReader, max_bytes: int | None = None) -> list[dict]:
    """Read what is new after ``reader``'s offset and fold it in; returns the new events."""
    skipped = reader.skipped
    events = reader.poll(max_bytes)
    apply_events(summary, events)
    summary.skipped += reader.skipped - skipped
    summary.offset = reader.offset
    if reader.linked:
        summary.extra["events_linked"] = True  # said by `finetty runs`: a link is never read
    return events


def replay(summary: RunSummary, reader: EventReader) -> None:
    """Fold everything after ``reader``'s offset, a chunk at a time (bounded memory)."""
    while True:
        before = reader.offset
        poll_into(summary, reader, READ_CHUNK)
        if reader.offset == before:
            return


# -- the history index ------------------------------------------------------------------------------

def _events_size(run_dir: Path) -> int:
    try:
        return os.path.getsize(Path(run_dir) / EVENTS_FILE)
    except OSError:
        return 0


def read_index(run_dir: Path) -> RunSummary | None:
    """The summary the index holds, or None when there is none to trust (missing, another version, stale)."""
    run_dir = Path(run_dir)
    try:
        fd = os.open(run_dir / INDEX_FILE, os.O_RDONLY | os.O_NOFOLLOW)  # a planted link is never read
        with os.fdopen(fd, "rb") as handle:
            data = json.loads(handle.read().decode("utf-8"))
        if data.pop("version") != INDEX_VERSION:
            return None
        known = {f.name for f in fields(RunSummary)} - {"id", "path"}
        summary = RunSummary(id=run_dir.name, path=run_dir, status=str(data.get("phase", "starting")),
                             **{k: v for k, v in data.items() if k in known})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(summary.offset, int) or summary.offset > _events_size(run_dir):
        return None  # events.jsonl was replaced or cut: the index describes another file
    if isinstance(summary.extra.get("resumed_at"), list):
        summary.extra["resumed_at"] = tuple(summary.extra["resumed_at"])
    return summary


def write_index(run_dir: Path, summary: RunSummary) -> bool:
    """Write the index (temporary name, then rename); False where the run directory is not writable."""
    data = {k: v for k, v in asdict(summary).items() if k not in ("id", "path", "status", "stalled_for")}
    data["version"] = INDEX_VERSION
    target = Path(run_dir) / INDEX_FILE
    partial = target.with_name(f".{INDEX_FILE}.{os.getpid()}")
    try:
        partial.write_text(json.dumps(data, default=str), encoding="utf-8")
        os.replace(partial, target)
    except OSError:
        partial.unlink(missing_ok=True)
        return False
    return True


def load(run_dir: Path, *, write_back: bool = True) -> tuple[RunSummary, EventReader]:
    """The run's summary from its index and the events after it; the reader is left at the end (to follow).

    The status is not settled (that needs the lock and the heartbeat, see
    :func:`finetty.core.run.rundir.summarize`)."""
    run_dir = Path(run_dir)
    summary = read_index(run_dir)
    if summary is None:
        summary = RunSummary(id=run_dir.name, path=run_dir, status="starting")
    start = summary.offset
    reader = EventReader(run_dir, start)
    replay(summary, reader)
    if write_back and reader.offset - start > WRITE_BACK_AFTER:
        write_index(run_dir, summary)
    return summary, reader


class IndexKeeper:
    """Keeps a run's index up to date from its own events (the worker's heartbeat thread calls :meth:`refresh`)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.summary: RunSummary | None = None
        self.reader: EventReader | None = None
        self.written = -1

    def refresh(self) -> None:
        if self.summary is None or self.reader is None:
            self.summary, self.reader = load(self.run_dir, write_back=False)
        else:
            replay(self.summary, self.reader)
        if self.summary.offset != self.written and write_index(self.run_dir, self.summary):
            self.written = self.summary.offset
