"""Following a run in the terminal: a rich progress bar fed by ``events.jsonl``.

The bar's state is the run's :class:`~finetty.core.run.summary.RunSummary`
and its status comes from the one rule (:mod:`finetty.core.run.status`), so a
worker that stops beating shows ``stalled (for N s)`` here as everywhere.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from finetty.core.run import rundir
from finetty.core.run import summary as summary_mod
from finetty.core.run.events import TERMINAL, EventReader
from finetty.core.run.status import ENDED
from finetty.core.text import as_markup, one_line

if TYPE_CHECKING:  # (rich's progress bars are imported by follow() alone: the app imports this module too)
    from rich.console import Console
    from rich.progress import Progress

QUIET = 2.0
"""seconds without an event before the worker's liveness is asked (a launch, and a final event just written,
both race a look at the lock)"""


def follow(run_dir: Path, console: Console, poll_interval: float = 0.2, on_wait=None,
           offset: int = 0, history: bool = True, on_interrupt=None) -> dict | None:
    """Show progress until the run ends; returns the terminal event (None if the worker vanished).

    ``offset`` skips history (a resume follows from where the file ended); an old terminal
    event followed by a later worker's events does not end following. ``history=False``
    starts from the run's history index instead of replaying every event (``finetty attach``):
    the bar starts where the run is, and what is written after is followed. ``on_interrupt()`` is called
    on a Ctrl-C between reads: following goes on with the same reader and bar (no line is printed twice)
    while it returns true; otherwise KeyboardInterrupt is raised."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    run_dir = Path(run_dir)
    if history:
        summary = summary_mod.RunSummary(id=run_dir.name, path=run_dir, status="starting")
        reader = EventReader(run_dir, offset)
    else:
        summary, reader = summary_mod.load(run_dir)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                        transient=False)
    task = progress.add_task("starting", total=None, loss="-", rate="")
    skipped = 0
    if not history:
        if summary.phase != "starting":
            progress.update(task, description="training", total=summary.total, completed=summary.step,
                            loss=f"{summary.loss:.4f}" if isinstance(summary.loss, (int, float)) else "-")
        rundir.finish_status(summary, run_dir)
        if summary.status in ENDED or summary.status == "lost":
            with progress:
                progress.update(task, description=summary.label)
            _say_skipped(console, summary.skipped)
            return summary.end
    quiet_since = time.monotonic()
    ended = None
    with progress:
        while True:
            # a long history arrives a chunk at a time (bounded memory); an end counts once nothing follows it
            events = summary_mod.poll_into(summary, reader, summary_mod.READ_CHUNK)
            for event in events:
                ended = _show(progress, task, event, ended)
            if reader.skipped > skipped:
                _say_skipped(progress.console, reader.skipped - skipped)
                skipped = reader.skipped
            more = bool(events) and not reader.at_end
            if ended is not None and not more:
                return ended
            if more:
                continue
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > QUIET:
                rundir.finish_status(summary, run_dir)
                if summary.status == "lost":
                    # one last read: the final event may have landed just before the worker exited
                    last = [e for e in summary_mod.poll_into(summary, reader) if e["type"] in TERMINAL]
                    return last[-1] if last else None
                if summary.status in ("stalled", "starting", "running"):
                    progress.update(task, description=_description(summary))
            if on_wait is not None:
                on_wait()
            try:
                time.sleep(poll_interval)  # (where a Ctrl-C almost always lands)
            except KeyboardInterrupt:
                if on_interrupt is None or not on_interrupt():
                    raise


def _description(summary: summary_mod.RunSummary) -> str:
    if summary.status == "stalled":
        return summary.label
    return "training" if summary.phase == "running" else "loading"


def _show(progress: Progress, task, event: dict, ended: dict | None) -> dict | None:
    """Draw one event; returns the terminal event seen so far in this batch (None after a resume began)."""
    kind = event["type"]
    if kind == "worker_started":
        return None  # the run was resumed after that end
    if kind == "run_started":
        progress.update(task, description="training", total=event.get("total_steps"),
                        completed=event.get("step", 0))
        if isinstance(event.get("parent"), dict) and not event.get("resumed_from"):
            progress.console.print(as_markup(f"  parent: {event['parent'].get('message')}", one_line=True))
    elif kind == "step":
        loss = event.get("loss")
        progress.update(task, completed=event.get("step", 0),
                        loss=f"{loss:.4f}" if isinstance(loss, (int, float)) else "-",
                        rate=f"{event.get('tokens_per_second') or 0:.0f} tok/s")
    elif kind == "eval":
        progress.console.print(one_line(f"  eval at step {event.get('step')}: loss {event.get('loss')}"), markup=False)
    elif kind == "checkpoint":
        progress.console.print(one_line(f"  checkpoint {event.get('path')}"), markup=False)
    elif kind == "warning":
        progress.console.print(f"  [yellow]warning:[/] {as_markup(event.get('message'))}")
    elif kind == "data":
        how = "detected" if event.get("detected") else "given"
        progress.console.print(as_markup(f"  data: {event.get('dataset')}: {event.get('records')} records, "
                                         f"format {event.get('format')} ({how}), {event.get('train_records')} "
                                         f"train / {event.get('eval_records')} eval", one_line=True))
    elif kind == "download":
        progress.console.print(as_markup(f"  {download_line(event)}", one_line=True))
    elif kind in TERMINAL:
        if kind == "run_finished":
            progress.update(task, description="finished", completed=event.get("step"))
        return event
    return ended


def download_line(event: dict) -> str:
    """A ``download`` event as one line of plain text (untrusted: escape it before markup), for the terminal
    and the app's monitor alike: ``model: org/name at 0123456789ab (5 files, 1.2 MB) from the Hugging Face
    cache``."""
    size = event.get("bytes")
    size = f", {size / 1e6:.1f} MB" if isinstance(size, (int, float)) else ""
    return (f"{event.get('kind')}: {event.get('repo')} at {str(event.get('commit'))[:12]} "
            f"({event.get('files')} files{size}) from the Hugging Face cache")


def _say_skipped(console: Console, count: int) -> None:
    if count:
        console.print(f"  [yellow]warning:[/] skipped {count} line{'s' if count != 1 else ''} of events.jsonl "
                      f"that {'are' if count != 1 else 'is'} not an event of the contract (see docs/events.md)")
