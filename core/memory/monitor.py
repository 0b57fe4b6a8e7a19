"""The memory monitor in the worker: samples GPU and host memory, writes ``memory`` events, keeps the watermark.

A daemon thread samples every ``monitor.interval_s`` seconds and, woken by a
Trainer callback, after every optimizer step. Each sample reads, per GPU the
run may use, NVML's used / total / utilisation and this run's processes'
share (through :mod:`finetty.core.memory.gpu`), torch's allocated / reserved / peak
for the devices this process trains on, and host memory and CPU (psutil).

Events (one writer: the worker's :class:`~finetty.core.run.events.EventWriter`)::

    {"type": "memory", "step": N|null, "watermark": 0.9,
     "gpus": [{"index", "name", "used", "total", "util", "process_used",
               "torch_allocated", "torch_reserved", "torch_peak"}],
     "host": {"used", "total", "process_rss", "cpu_percent"}}
    {"type": "watermark", "gpu": 0, "fraction": 0.93, "watermark": 0.9,
     "state": "crossed"|"recovered", "policy": "warn"|"checkpoint"|"stop"|"shrink"}

A ``memory`` event is written at most once per ``interval_s`` (the first
sample, and any sample that starts or ends a watermark episode, always), so a
run of fast steps does not flood its events file; every sample, written or
not, feeds the watermark and the peaks.

The watermark: a GPU whose used memory reaches ``watermark`` x total starts an
episode: one ``watermark`` event (``crossed``) and the policy
(``monitor.on_watermark``): ``warn`` does nothing more, ``checkpoint`` saves a
checkpoint at the next step, ``stop`` checkpoints and stops, ``shrink``
checkpoints and has the worker continue from that checkpoint with half the
micro-batch and twice the accumulation (see :mod:`finetty.core.memory.oom`). The
episode ends (``recovered``) when the GPU falls under the watermark by
:data:`HYSTERESIS` of its total, so a reading that flickers around the line
does not start an episode per sample.

No NVML, no driver, no GPU, or NVML failing mid-run: one ``warning`` event,
then host-only ``memory`` events (``gpus: []``). A GPU that stops answering is
dropped with a warning and the others go on. Nothing the monitor does can
fail the training: any error in the thread ends the monitor with a warning.
"""

from __future__ import annotations

import os
import sys
import threading
import time

from finetty.core.memory import gpu as gpu_mod
from finetty.core.recipe.sections import MONITOR_OPTIONS, POLICIES  # noqa: F401 - POLICIES re-exported

HYSTERESIS = 0.01
DEFAULTS = {o.name: o.default for o in MONITOR_OPTIONS}


def settings(recipe) -> dict:
    return {**DEFAULTS, **(getattr(recipe, "monitor", None) or {})}


class Sampler:
    """Samples memory, writes events, keeps watermark episodes and applies the policy through ``requests``.

    ``nvml`` is a :class:`finetty.core.memory.gpu.Nvml` (not yet opened) or None for
    the real one; ``clock`` is injectable for tests. ``sample()`` may be called
    directly (tests do); ``start()`` runs it on a daemon thread.
    """

    def __init__(self, events, requests=None, *, interval_s: float = 2.0, watermark: float = 0.9,
                 policy: str = "warn", nvml=None, model=None, clock=time.monotonic, pids=None):
        self.events = events
        self.requests = requests
        self.interval_s = float(interval_s)
        self.watermark = float(watermark)
        self.policy = policy
        self.nvml = nvml if nvml is not None else gpu_mod.Nvml()
        self.clock = clock
        self.step: int | None = None
        self.micro_batch: int | None = None
        self.shrink_pending = False
        self.peaks: dict[int, int] = {}  # NVML index -> highest used seen
        self.last: dict[int, gpu_mod.GpuReading] = {}
        self.samples = 0
        self.written = 0
        self._episodes: set[int] = set()
        self._last_emit: float | None = None
        self._host: gpu_mod.HostReading | None = None
        self._gpu_ok = False
        self._pids = pids
        self._torch_devices: dict[int, int] | None = None  # NVML index -> torch index
        self._model = model
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    # -- life cycle --------------------------------------------------------------------------------

    def open(self) -> None:
        """Open NVML; on failure say so once and go on with host memory."""
        try:
            self.nvml.open()
        except gpu_mod.GpuError as exc:
            self.nvml = None
            self.events.emit("warning", message=f"GPU memory is not monitored: {exc} (no NVIDIA driver or GPU); "
                                                "memory events carry host memory only")
            return
        if not self.nvml.indexes:
            self.nvml.close()
            self.nvml = None
            self.events.emit("warning", message="GPU memory is not monitored: NVML sees no GPU this run may use; "
                                                "memory events carry host memory only")
            return
        self._gpu_ok = True
        if self._pids is None:
            try:
                self._pids = gpu_mod.run_pids()
            except Exception:
                self._pids = {os.getpid()}

    def start(self) -> "Sampler":
        self.open()
        self._thread = threading.Thread(target=self._run, name="finetty-memory", daemon=True)
        self._thread.start()
        return self

    def poke(self, step: int) -> None:
        """Ask for a sample now (called at each step end from the training thread: costs one Event.set)."""
        self.step = step
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.nvml is not None:
            self.nvml.close()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self.sample()
                self._wake.wait(self.interval_s)
                self._wake.clear()
        except Exception as exc:  # the monitor must never take the run down
            try:
                self.events.emit("warning", message=f"the memory monitor stopped: {type(exc).__name__}: {exc}")
            except Exception:
                pass

    # -- one sample --------------------------------------------------------------------------------

    def sample(self) -> dict:
        """Read everything once; write a ``memory`` event if due; keep the watermark. Returns the event."""
        with self._lock:
            readings = self._read_gpus()
            changes = self._episodes_changed(readings)
            now = self.clock()
            due = self._last_emit is None or bool(changes) or now - self._last_emit >= self.interval_s
            if due or self._host is None:  # host memory is only read for an event that is written
                self._host = gpu_mod.host()
            host = self._host
            torch_stats = self._torch_stats()
            gpus = []
            for r in readings:
                allocated, reserved, peak = torch_stats.get(r.index, (None, None, None))
                gpus.append({"index": r.index, "name": r.name, "used": r.used, "total": r.total, "util": r.util,
                             "process_used": r.process_used, "torch_allocated": allocated,
                             "torch_reserved": reserved, "torch_peak": peak})
                self.peaks[r.index] = max(self.peaks.get(r.index, 0), r.used)
                self.last[r.index] = r
            event = {"step": self.step, "watermark": self.watermark, "gpus": gpus,
                     "host": {"used": host.used, "total": host.total, "process_rss": host.process_rss,
                              "cpu_percent": host.cpu_percent}}
            self.samples += 1
            if due:
                self.events.emit("memory", **event)
                self._last_emit = now
                self.written += 1
            for change in changes:
                self._announce(*change)
            return event

    def _read_gpus(self) -> list:
        if self.nvml is None or not self._gpu_ok:
            return []
        readings, failed = [], []
        for index in list(self.nvml.indexes):
            try:
                readings.append(self.nvml.read_one(index, self._pids))
            except gpu_mod.GpuError as exc:
                failed.append((index, exc))
        if failed and not readings:
            reason = "; ".join(str(exc) for _, exc in failed)
            self.nvml.close()
            self.nvml = None
            self._gpu_ok = False
            self._episodes.clear()
            self.events.emit("warning", message=f"NVML failed mid-run ({reason}): GPU memory is no longer "
                                                "monitored; memory events carry host memory only")
            return []
        for index, exc in failed:
            self.nvml.drop(index)
            self._episodes.discard(index)
            self.events.emit("warning", message=f"{exc}: this GPU is no longer monitored")
        return readings

    def _torch_stats(self) -> dict[int, tuple[int, int, int]]:
        """NVML index -> (allocated, reserved, peak) for the CUDA devices this process trains on."""
        torch = sys.modules.get("torch")
        if torch is None or not self._gpu_ok:
            return {}
        try:
            if not torch.cuda.is_available() or not torch.cuda.is_initialized():
                return {}
            if self._torch_devices is None:
                self._torch_devices = self._devices(torch)
            return {nvml_index: (int(torch.cuda.memory_allocated(i)), int(torch.cuda.memory_reserved(i)),
                                 int(torch.cuda.max_memory_allocated(i)))
                    for nvml_index, i in self._torch_devices.items()}
        except Exception:
            return {}

    def _devices(self, torch) -> dict[int, int]:
        """Which CUDA devices hold the model (torch index), keyed by their NVML index (CUDA_VISIBLE_DEVICES order)."""
        used = set()
        if self._model is not None:
            used = {p.device.index for p in self._model.parameters() if p.device.type == "cuda"}
        if not used:
            used = {torch.cuda.current_device()}
        order = list(self.nvml.indexes) if self.nvml is not None else []
        return {order[i] if i < len(order) else i: i for i in sorted(used)}

    # -- the watermark -----------------------------------------------------------------------------

    def _episodes_changed(self, readings) -> list[tuple[str, object]]:
        changes = []
        for r in readings:
            if r.index not in self._episodes and r.fraction >= self.watermark:
                self._episodes.add(r.index)
                changes.append(("crossed", r))
            elif r.index in self._episodes and r.fraction < self.watermark - HYSTERESIS:
                self._episodes.discard(r.index)
                changes.append(("recovered", r))
        return changes

    def _announce(self, state: str, reading) -> None:
        self.events.emit("watermark", gpu=reading.index, fraction=round(reading.fraction, 4),
                         watermark=self.watermark, state=state, policy=self.policy, step=self.step,
                         used=reading.used, total=reading.total)
        if state == "crossed":
            self._apply(reading)

    def _apply(self, reading) -> None:
        requests = self.requests
        if requests is None or self.policy == "warn":
            return
        why = (f"GPU {reading.index} at {reading.fraction:.0%} of its memory crossed the {self.watermark:.0%} "
               f"watermark; monitor.on_watermark: {self.policy}")
        if self.policy == "checkpoint":
            requests.checkpoint = True
        elif self.policy == "stop":
            requests.signal_name = why
            requests.stop = True
        elif self.policy == "shrink":
            if self.micro_batch is not None and self.micro_batch <= 1:
                self.events.emit("warning", message=f"{why}, but the micro-batch is already 1: going on; "
                                                    "try gradient checkpointing, QLoRA or a shorter max_length")
                return
            self.shrink_pending = True
            requests.stop = True  # the step's end checkpoints and leaves trainer.train(); the worker restarts


def callback(sampler: Sampler):
    """A Trainer callback that wakes the sampler after every optimizer step."""
    from transformers import TrainerCallback

    class MemoryCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            sampler.poke(state.global_step)

    return MemoryCallback()


def start(recipe, events, requests, model=None, nvml=None) -> Sampler:
    """The worker's sampler for ``recipe`` (rank 0 only; other ranks get one that never samples)."""
    from finetty.core.run import launch

    values = settings(recipe)
    sampler = Sampler(events, requests, interval_s=values["interval_s"], watermark=values["watermark"],
                      policy=values["on_watermark"], nvml=nvml, model=model)
    if launch.rank() != 0:
        return sampler  # never started: rank 0 watches every GPU of the machine
    return sampler.start()
