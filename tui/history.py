"""A run's events folded into what the monitor shows: plain Python, no Textual, no torch.

Attaching is replay then follow: :class:`RunHistory` is fed every batch the
reader returns, from offset 0 on, so a monitor opened late and a monitor open
from the start end in the same state.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetty.core.run import rundir
from finetty.core.run import summary as summary_mod
from finetty.core.run.events import TERMINAL, EventReader

#: One read takes at most this much of the file; a long history arrives over a few polls.
READ_CHUNK = summary_mod.READ_CHUNK


@dataclass
class GpuMemory:
    """The latest sample of one GPU, and its peak over the run."""

    index: int
    name: str
    used: int
    total: int
    util: float | None = None
    peak: int = 0
    state: str = "ok"
    """ok, or crossed while above the watermark"""

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0

    @property
    def peak_fraction(self) -> float:
        return self.peak / self.total if self.total else 0.0


@dataclass
class HostMemory:
    used: int
    total: int
    process_rss: int | None = None
    cpu_percent: float | None = None
    peak: int = 0

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


@dataclass(frozen=True)
class MemoryPoint:
    """One memory sample of one device: when, at which step, bytes used (all processes) and total, and the
    run's own share (NVML's ``process_used`` of the run's processes on a GPU, the worker's RSS on the host;
    None where the sample does not say)."""

    ts: float
    step: int | None
    used: int
    total: int
    own: int | None


@dataclass
class RunHistory:
    """Everything the monitor shows about one run, built from its events."""

    run_dir: Path
    summary: rundir.RunSummary = None  # type: ignore[assignment]
    train: list[tuple[int, float]] = field(default_factory=list)
    eval: list[tuple[int, float]] = field(default_factory=list)
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    tokens: int | None = None
    epoch: float | None = None
    checkpoints: list[tuple[int, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    recipe: dict = field(default_factory=dict)
    device: str | None = None
    trainable: int | None = None
    total_parameters: int | None = None
    watermark: float | None = None
    watermark_policy: str | None = None
    gpus: dict[int, GpuMemory] = field(default_factory=dict)
    host: HostMemory | None = None
    crossings: list[dict] = field(default_factory=list)
    gpu_series: dict[int, list[MemoryPoint]] = field(default_factory=dict)
    """every memory sample of each GPU, in order: the monitor's memory-over-time charts"""
    host_series: list[MemoryPoint] = field(default_factory=list)
    end: dict | None = None
    events: int = 0

    def __post_init__(self) -> None:
        if self.summary is None:
            self.summary = rundir.RunSummary(id=self.run_dir.name, path=self.run_dir, status="starting")

    @property
    def status(self) -> str:
        return self.summary.status

    def feed(self, events: list[dict]) -> list[dict]:
        """Fold a batch of events in; returns the notable ones (end of run, watermark crossings)."""
        notable = []
        rundir.apply_events(self.summary, events)
        for event in events:
            self.events += 1
            kind = event.get("type")
            step = event.get("step")
            if kind == "run_started":
                self.recipe = event.get("recipe") or self.recipe
                self.device = event.get("device", self.device)
                self.trainable = event.get("trainable_parameters", self.trainable)
                self.total_parameters = event.get("total_parameters", self.total_parameters)
                self.end = None
                if step:  # a resumed run: history after its checkpoint is replaced by the new steps
                    self.train = [p for p in self.train if p[0] <= step]
                    self.eval = [p for p in self.eval if p[0] <= step]
            elif kind == "step" and isinstance(step, int):
                loss = event.get("loss")
                if isinstance(loss, (int, float)):
                    if self.train and self.train[-1][0] >= step:
                        self.train = [p for p in self.train if p[0] < step]
                    self.train.append((step, float(loss)))
                self.learning_rate = event.get("learning_rate", self.learning_rate)
                self.tokens_per_second = event.get("tokens_per_second", self.tokens_per_second)
                self.tokens = event.get("tokens", self.tokens)
                self.epoch = event.get("epoch", self.epoch)
            elif kind == "eval" and isinstance(step, int):
                loss = event.get("eval_loss", event.get("loss"))
                if isinstance(loss, (int, float)):
                    self.eval = [p for p in self.eval if p[0] != step] + [(step, float(loss))]
            elif kind == "checkpoint":
                self.checkpoints.append((int(step or 0), str(event.get("path", ""))))
            elif kind == "warning":
                self.warnings.append(str(event.get("message", "")))
            elif kind == "memory":
                self._memory(event)
            elif kind == "watermark":
                self._watermark(event)
                if event.get("state") == "crossed":
                    notable.append(event)
            elif kind in TERMINAL:
                self.end = event
                notable.append(event)
        return notable

    def _memory(self, event: dict) -> None:
        ts = float(event["ts"]) if isinstance(event.get("ts"), (int, float)) else 0.0
        if isinstance(event.get("watermark"), (int, float)):
            self.watermark = float(event["watermark"])
        for gpu in event.get("gpus") or []:
            try:
                index = int(gpu["index"])
                used, total = int(gpu["used"]), int(gpu["total"])
            except (KeyError, TypeError, ValueError):
                continue
            known = self.gpus.get(index)
            own = gpu.get("process_used")
            self.gpu_series.setdefault(index, []).append(
                MemoryPoint(ts, event.get("step"), used, total, int(own) if isinstance(own, (int, float)) else None))
            peak = max(used, int(gpu.get("torch_peak") or 0), known.peak if known else 0)
            self.gpus[index] = GpuMemory(index, str(gpu.get("name") or f"GPU {index}"), used, total,
                                         gpu.get("util"), peak, known.state if known else "ok")
        host = event.get("host")
        if isinstance(host, dict) and host.get("total"):
            peak = max(int(host.get("used") or 0), self.host.peak if self.host else 0)
            rss = host.get("process_rss")
            self.host_series.append(MemoryPoint(ts, event.get("step"), int(host.get("used") or 0), int(host["total"]),
                                                int(rss) if isinstance(rss, (int, float)) else None))
            self.host = HostMemory(int(host.get("used") or 0), int(host["total"]), host.get("process_rss"),
                                   host.get("cpu_percent"), peak)

    def _watermark(self, event: dict) -> None:
        self.crossings.append(event)
        if isinstance(event.get("watermark"), (int, float)):
            self.watermark = float(event["watermark"])
        self.watermark_policy = event.get("policy", self.watermark_policy)
        index = event.get("gpu")
        if isinstance(index, int):
            gpu = self.gpus.get(index) or GpuMemory(index, f"GPU {index}", 0, 0)
            gpu.state = "crossed" if event.get("state") == "crossed" else "ok"
            self.gpus[index] = gpu


class RunFollower:
    """Replays a run's events from the start, then follows the file.

    :meth:`read` does the file work (call it from a worker thread);
    :meth:`apply` folds what it returned into :attr:`history` (call it on the event loop)."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.reader = EventReader(self.run_dir)
        self.busy = threading.Lock()
        """held by the thread that reads and applies: a poll that finds it taken skips its turn (thread workers
        are not interrupted, so a new one must not read alongside a long replay, nor apply out of order)"""
        self.history = RunHistory(self.run_dir)

    def read(self, log_lines: int = 40) -> dict[str, Any]:
        """New events (at most READ_CHUNK of them) and what lies beside them: log tail, recipe, checkpoints."""
        events = self.reader.poll(READ_CHUNK)
        more = not self.reader.at_end
        live = rundir.is_live(self.run_dir)
        recipe_text = ""
        try:
            recipe_text = (self.run_dir / rundir.RECIPE_FILE).read_text(encoding="utf-8")
        except OSError:
            pass
        return {
            "events": events,
            "more": more,
            "live": live,
            "heartbeat": rundir.heartbeat_age(self.run_dir) if live else None,
            "skipped": self.reader.skipped,
            "log": rundir.log_tail(self.run_dir, log_lines),
            "recipe": recipe_text,
            "checkpoints": [(step, path.name) for step, path in rundir.complete_checkpoints(self.run_dir)],
            "final": (self.run_dir / rundir.FINAL).is_dir(),
        }

    def apply(self, batch: dict[str, Any]) -> list[dict]:
        """Fold a :meth:`read` result into the history; returns the notable events."""
        notable = self.history.feed(batch["events"])
        summary = self.history.summary
        summary.skipped = batch.get("skipped", 0)
        summary_mod.settle(summary, complete=not batch["more"], live=batch["live"],
                           heartbeat_age=batch.get("heartbeat"))
        return notable


@dataclass
class RunsBatch:
    """What one read of the runs directory found (built in a worker thread)."""

    events: dict[str, list[dict]]
    """new events of each run followed before (a run seen for the first time has [] here and is in ``fresh``)"""
    live: dict[str, bool]
    gone: list[str]
    queue: Any
    fresh: dict[str, rundir.RunSummary] = field(default_factory=dict)
    """runs seen for the first time, summarized from their history index and the events after it"""
    heartbeat: dict[str, float | None] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)
    """lines skipped (torn, or against the event contract) among this batch's new events"""


class RunsTracker:
    """Every run of a runs directory, followed incrementally: the Runs screen's data and the notifications.

    :meth:`read` does the file work (worker thread); :meth:`apply` folds it in (event loop) and returns the
    notable events that happened after ``since`` (end of a run, a watermark crossed) with their run ids."""

    def __init__(self, runs: Path, since: float):
        self.runs = Path(runs)
        self.since = since
        self.readers: dict[str, EventReader] = {}
        self.summaries: dict[str, rundir.RunSummary] = {}
        self.busy = threading.Lock()
        """as :attr:`RunFollower.busy`"""

    def read(self) -> RunsBatch:
        from finetty.core.run import queue

        batch = RunsBatch({}, {}, [], None)
        present = set()
        if self.runs.is_dir():
            for path in self.runs.iterdir():
                if not (path / rundir.RECIPE_FILE).is_file():
                    continue
                present.add(path.name)
                reader = self.readers.get(path.name)
                if reader is None:  # the index, then only what was written after it
                    batch.fresh[path.name], self.readers[path.name] = summary_mod.load(path)
                    batch.events[path.name] = []
                else:
                    skipped = reader.skipped
                    batch.events[path.name] = reader.poll()
                    batch.skipped[path.name] = reader.skipped - skipped
                live = batch.live[path.name] = rundir.is_live(path)
                batch.heartbeat[path.name] = rundir.heartbeat_age(path) if live else None
        batch.gone = [name for name in self.readers if name not in present]
        for name in batch.gone:
            del self.readers[name]
        batch.queue = queue.read(self.runs)
        return batch

    def apply(self, batch: RunsBatch) -> list[tuple[str, dict]]:
        notable = []
        for name in batch.gone:
            self.summaries.pop(name, None)
        self.summaries.update(batch.fresh)
        for name, events in batch.events.items():
            summary = self.summaries.get(name)
            if summary is None:
                summary = self.summaries[name] = rundir.RunSummary(id=name, path=self.runs / name, status="starting")
            rundir.apply_events(summary, events)
            summary.skipped += batch.skipped.get(name, 0)
            summary_mod.settle(summary, complete=True, live=batch.live[name], heartbeat_age=batch.heartbeat.get(name))
            for event in events:
                kind = event.get("type")
                if (kind in TERMINAL or (kind == "watermark" and event.get("state") == "crossed")) \
                        and (event.get("ts") or 0) >= self.since:
                    notable.append((name, event))
        return notable

    def ordered(self) -> list[rundir.RunSummary]:
        """Newest first."""
        return sorted(self.summaries.values(), key=lambda s: (s.started or s.updated or 0, s.id), reverse=True)
