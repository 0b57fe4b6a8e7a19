"""GPUs (``g`` on Runs): every GPU of the machine, its memory, utilisation and processes, and which runs use it.

For deciding where to launch: a person sees at a glance which GPU is free,
which one another user's job fills, and which of their own runs trains where.
The readings come from NVML and psutil (:func:`finetty.core.memory.gpu.machine`)
in a thread worker, refreshed every :data:`INTERVAL` seconds; the screen's
first frame shows a loading line and never waits for them.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, Static

from finetty.core.text import one_line

from ..widgets.memory import gauge
from ..widgets.memory_chart import ProcessTable

#: seconds between two readings of the GPUs
INTERVAL = 2.0


def default_watermark() -> float:
    """The watermark a run gets unless its recipe sets ``monitor.watermark`` (one declaration: the option's)."""
    from finetty.core.recipe.sections import MONITOR_OPTIONS

    return float(next(o.default for o in MONITOR_OPTIONS if o.name == "watermark"))


def run_workers(runs: dict[str, Path]) -> dict[int, str]:
    """``{worker pid: run id}`` of the runs whose worker is alive (a rank's parent is its run's worker)."""
    from finetty.core.run import rundir

    out = {}
    for run_id, path in runs.items():
        if rundir.is_live(path):
            pid, _ = rundir.live_holder(path)
            if pid is not None:
                out[pid] = run_id
    return out


class GpuScreen(Screen):
    """Each GPU: memory used/total against the watermark, utilisation, the runs on it, its process table."""

    SUB_TITLE = "GPUs"
    DEFAULT_CSS = """
    GpuScreen #gpu-status { height: auto; padding: 0 1; background: $boost; }
    GpuScreen #gpu-list { height: 1fr; padding: 0 1; }
    GpuScreen .gpu { height: auto; margin-bottom: 1; }
    GpuScreen .gpu-head { height: auto; }
    """
    BINDINGS = [
        Binding("escape,b,g", "app.back", "Back", id="gpus.back"),
        Binding("r", "reread", "Read again", id="gpus.reread", tooltip="read the GPUs now"),
    ]

    def __init__(self, nvml_lib=None, runs: dict[str, Path] | None = None):
        super().__init__()
        self.nvml_lib = nvml_lib
        """a pynvml stand-in (tests), or None for nvidia-ml-py"""
        self.runs = runs
        """run id -> run directory, to name the runs on each GPU (None: the app's runs)"""
        self.readings: list | None = None
        """the last reading: [(GpuReading, [GpuProcess])], None until the first one arrives"""
        self.watermark = default_watermark()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(Text("reading the GPUs…", style="dim"), id="gpu-status")
        yield VerticalScroll(id="gpu-list")
        yield Footer()

    def on_mount(self) -> None:
        self.reread()
        self.set_interval(INTERVAL, self.reread)

    def action_reread(self) -> None:
        self.reread()

    def _runs(self) -> dict[str, Path]:
        if self.runs is not None:
            return self.runs
        tracker = getattr(self.app, "tracker", None)
        if tracker is None:
            return {}
        return {s.id: s.path for s in tracker.summaries.values() if s.status in ("running", "starting")}

    @work(thread=True, exclusive=True, exit_on_error=False, group="gpus")
    def reread(self) -> None:
        from finetty.core.memory import gpu

        found = gpu.machine(self.nvml_lib)
        workers = run_workers(self._runs())
        self.app.call_from_thread(self._show, found, workers)

    async def _show(self, found: list, workers: dict[int, str]) -> None:
        self.readings = found
        status = self.query_one("#gpu-status", Static)
        box = self.query_one("#gpu-list", VerticalScroll)
        if not found:
            status.update(Text("No GPU: NVML sees none on this machine (no NVIDIA driver, or no GPU); "
                               "runs train on the CPU.", style="yellow"))
            await box.remove_children()
            return
        free = [r.index for r, _ in found if r.fraction < self.watermark]
        status.update(Text(f"{len(found)} GPU{'s' if len(found) != 1 else ''} · watermark {self.watermark:.0%} "
                           f"(monitor.watermark) · under it: "
                           + (", ".join(f"GPU{i}" for i in free) if free else "none")))
        ids = [f"gpu-{reading.index}" for reading, _ in found]
        if [child.id for child in box.children] != ids:
            await box.remove_children()
            await box.mount_all([Vertical(Static(classes="gpu-head"), ProcessTable(runs_column=True),
                                          classes="gpu", id=panel_id) for panel_id in ids])
        width = max(20, box.size.width - 4)
        for reading, processes in found:
            panel = box.query_one(f"#gpu-{reading.index}", Vertical)
            labels = {}
            for process in processes:
                owner = next((workers[p] for p in (process.pid, *process.parents) if p in workers), None)
                if owner is not None:
                    labels[process.pid] = owner
            head = gauge(f"GPU{reading.index} {one_line(reading.name)}", reading.used, reading.total, width,
                         self.watermark, crossed=reading.fraction >= self.watermark)
            head.append("\n")
            head.append(f"utilisation {reading.util:.0f}%" if reading.util is not None else "utilisation -")
            runs_here = sorted(set(labels.values()))
            head.append(" · runs: ")
            head.append(", ".join(one_line(r) for r in runs_here) if runs_here else "none of finetty's",
                        style="cyan" if runs_here else "dim")
            head.append(f" · {len(processes)} process{'es' if len(processes) != 1 else ''}")
            panel.query_one(".gpu-head", Static).update(head)
            panel.query_one(ProcessTable).show(processes, labels)
