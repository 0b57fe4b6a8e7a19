"""Following a run in the terminal: a rich progress bar fed by ``events.jsonl``."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from finetty.core.run.events import TERMINAL, EventReader
from finetty.core.run.rundir import is_live


def follow(run_dir: Path, console: Console, poll_interval: float = 0.2, on_wait=None,
           offset: int = 0) -> dict | None:
    """Show progress until the run ends; returns the terminal event (None if the worker vanished).

    ``offset`` skips history (a resume follows from where the file ended); an old terminal
    event followed by a later worker's events does not end following."""
    reader = EventReader(run_dir, offset)
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(), console=console,
                        transient=False)
    task = progress.add_task("starting", total=None, loss="-", rate="")
    seen_start = False
    quiet_since = time.monotonic()
    with progress:
        while True:
            events = reader.poll()
            ended = None
            for event in events:
                kind = event["type"]
                if kind == "worker_started":
                    ended = None  # the run was resumed after that end
                elif kind == "run_started":
                    seen_start = True
                    progress.update(task, description="training", total=event.get("total_steps"),
                                    completed=event.get("step", 0))
                elif kind == "step":
                    progress.update(task, completed=event["step"], loss=f"{event['loss']:.4f}",
                                    rate=f"{event.get('tokens_per_second', 0):.0f} tok/s")
                elif kind == "eval":
                    progress.console.print(f"  eval at step {event.get('step')}: loss {event.get('loss')}",
                                           markup=False)
                elif kind == "checkpoint":
                    progress.console.print(f"  checkpoint {event['path']}", markup=False)
                elif kind == "warning":
                    progress.console.print(f"  [yellow]warning:[/] {escape(str(event['message']))}")
                elif kind == "data":
                    how = "detected" if event.get("detected") else "given"
                    progress.console.print(f"  data: {escape(str(event['dataset']))}: {event['records']} records, "
                                           f"format {event['format']} ({how}), {event['train_records']} train / "
                                           f"{event['eval_records']} eval")
                elif kind in TERMINAL:
                    if kind == "run_finished":
                        progress.update(task, description="finished", completed=event.get("step"))
                    ended = event
            if ended is not None:
                return ended
            if events:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 2.0 and not is_live(run_dir):
                # one last read: the final event may have landed just before the worker exited
                last = [e for e in reader.poll() if e["type"] in TERMINAL]
                return last[-1] if last else None
            if on_wait is not None:
                on_wait()
            time.sleep(poll_interval)
            if not seen_start:
                progress.update(task, description="loading")
