"""A scripted stand-in for ``pynvml`` (nvidia-ml-py), for tests on machines without a GPU.

``FakeNvml(frames, names=...)`` answers the calls :mod:`finetty.core.memory.gpu` makes,
raising ``pynvml``'s own ``NVMLError`` subclasses. Each frame is one reading of
every device::

    {0: (used_bytes, total_bytes, util_percent), 1: LOST}   # GPU 1 fell off the bus
    ERROR                                                   # NVML as a whole fails

A new frame starts whenever a device is read a second time (one monitor
sample reads each device once); the last frame then repeats. ``no_driver=True``
makes ``nvmlInit`` fail as it does without an NVIDIA driver. ``process_used``
(bytes) is reported for the pids given in ``pids``, on every device; or
``processes={0: [(pid, used_bytes), ...]}`` lists each device's own compute
processes (what nvidia-smi's process table shows), ``used_bytes`` None where
the driver does not say.
"""

from __future__ import annotations

from types import SimpleNamespace

import pynvml

LOST = "lost"
ERROR = "error"
GIB = 2**30


class FakeNvml:
    NVMLError = pynvml.NVMLError

    def __init__(self, frames: list, names: dict[int, str] | None = None, no_driver: bool = False,
                 pids: set[int] | None = None, process_used: int = 0,
                 processes: dict[int, list[tuple[int, int | None]]] | None = None):
        self.frames = list(frames)
        self.count = max((len(f) for f in frames if isinstance(f, dict)), default=0)
        self.names = names or {}
        self.no_driver = no_driver
        self.pids = pids or set()
        self.process_used = process_used
        self.processes = processes
        self.frame = 0
        self.read_this_frame: set[int] = set()
        self.initialised = False
        self.calls = 0

    # -- what finetty.core.memory.gpu calls ----------------------------------------------------------------

    def nvmlInit(self):
        if self.no_driver:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
        self.initialised = True

    def nvmlShutdown(self):
        self.initialised = False

    def nvmlDeviceGetCount(self):
        self._check()
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index):
        self._check()
        if index >= self.count:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return SimpleNamespace(index=index)

    def nvmlDeviceGetName(self, handle):
        return self.names.get(handle.index, f"Fake GPU {handle.index}").encode()

    def nvmlDeviceGetUUID(self, handle):
        return f"GPU-fake-{handle.index}"

    def nvmlDeviceGetMemoryInfo(self, handle):
        if handle.index in self.read_this_frame:
            self.frame = min(self.frame + 1, len(self.frames) - 1)
            self.read_this_frame = set()
        self.read_this_frame.add(handle.index)
        self.calls += 1
        used, total, _ = self._device(handle.index)
        return SimpleNamespace(used=used, total=total, free=total - used)

    def nvmlDeviceGetUtilizationRates(self, handle):
        return SimpleNamespace(gpu=self._device(handle.index)[2], memory=0)

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        self._device(handle.index)
        if self.processes is not None:
            return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in self.processes.get(handle.index, [])]
        return [SimpleNamespace(pid=pid, usedGpuMemory=self.process_used) for pid in sorted(self.pids)]

    # -- the script ---------------------------------------------------------------------------------

    def _check(self):
        if not self.initialised:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNINITIALIZED)
        if self.frames[self.frame] == ERROR:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_UNKNOWN)

    def _device(self, index):
        self._check()
        value = self.frames[self.frame].get(index)
        if value is None or value == LOST:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
        return value
