"""A narrow interface to the GPUs (NVML, through nvidia-ml-py's ``pynvml``) and to the host (psutil).

Everything the memory monitor and the estimate need from the hardware goes
through :class:`Nvml` and :func:`host`; nothing else in finetty calls NVML.
Every NVML failure becomes a :class:`GpuError` naming what failed, so callers
catch one type. Tests replace the library with a scripted double
(``tests/fake_nvml.py``) by passing it as ``Nvml(lib=...)``.

No torch here: the TUI and ``finetty estimate`` use this module too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


class GpuError(Exception):
    """NVML is missing or failed. ``index`` names the GPU when one device failed, else None."""

    def __init__(self, message: str, index: int | None = None):
        super().__init__(message)
        self.index = index


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment (bytes, percent). ``process_used`` sums this run's processes; None if unknown."""

    index: int
    name: str
    used: int
    total: int
    util: float | None
    process_used: int | None

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


@dataclass(frozen=True)
class GpuProcess:
    """One process holding memory on a GPU, as nvidia-smi and nvitop list it.

    ``user`` and ``command`` come from psutil (``?`` where the process is gone or not ours to read) and
    are untrusted text: a command line is whatever its author wrote. ``used`` is None where NVML does not
    say (some drivers under MIG or in containers). ``parents`` are its ancestors' pids, nearest first, so a
    caller can tell which finetty worker a rank belongs to."""

    gpu: int
    pid: int
    used: int | None
    user: str
    command: str
    parents: tuple[int, ...] = ()


@dataclass(frozen=True)
class HostReading:
    """Host memory (bytes) and CPU at one moment."""

    used: int
    total: int
    process_rss: int
    cpu_percent: float


def _load_pynvml():
    try:
        import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency; a broken install still must not stop a run
        raise GpuError(f"nvidia-ml-py is not importable ({exc})") from None
    return pynvml


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _visible(lib, count: int) -> list[int]:
    """NVML indexes of the GPUs this process may use (``CUDA_VISIBLE_DEVICES``: indexes or UUIDs), in CUDA order."""
    spec = os.environ.get("CUDA_VISIBLE_DEVICES")
    if spec is None:
        return list(range(count))
    wanted = [part.strip() for part in spec.split(",") if part.strip()]
    found: list[int] = []
    uuids: dict[str, int] | None = None
    for item in wanted:
        if item.lstrip("-").isdigit():
            index = int(item)
            if index < 0 or index >= count:
                break  # CUDA stops at the first invalid entry
            found.append(index)
            continue
        if uuids is None:
            uuids = {}
            for index in range(count):
                try:
                    uuids[_text(lib.nvmlDeviceGetUUID(lib.nvmlDeviceGetHandleByIndex(index)))] = index
                except lib.NVMLError:
                    pass
        match = next((i for u, i in uuids.items() if u == item or u.startswith(item)
                      or u.startswith("GPU-" + item)), None)
        if match is None:
            break
        found.append(match)
    return found


class Nvml:
    """The GPUs NVML sees that this process may use.

    ``open()`` initialises NVML (raises :class:`GpuError` when there is no
    driver or library); ``read(pids)`` returns one :class:`GpuReading` per
    device, raising :class:`GpuError` with ``index`` set when one device
    fails (a GPU that fell off the bus) and without when NVML as a whole does.
    """

    def __init__(self, lib=None):
        self._lib = lib
        self.indexes: list[int] = []
        self._handles: dict[int, object] = {}
        self._names: dict[int, str] = {}
        self.is_open = False

    @property
    def lib(self):
        if self._lib is None:
            self._lib = _load_pynvml()
        return self._lib

    def open(self, every_device: bool = False) -> "Nvml":
        """Initialise NVML. ``every_device``: the whole machine's GPUs, not only those ``CUDA_VISIBLE_DEVICES``
        gives this process (the app's GPU view is for deciding where a run should go)."""
        lib = self.lib
        try:
            lib.nvmlInit()
            count = int(lib.nvmlDeviceGetCount())
            self.indexes = list(range(count)) if every_device else _visible(lib, count)
            for index in self.indexes:
                handle = lib.nvmlDeviceGetHandleByIndex(index)
                self._handles[index] = handle
                self._names[index] = _text(lib.nvmlDeviceGetName(handle))
        except lib.NVMLError as exc:
            raise GpuError(f"NVML: {exc}") from None
        self.is_open = True
        return self

    def drop(self, index: int) -> None:
        """Stop reading one device (it disappeared)."""
        if index in self.indexes:
            self.indexes.remove(index)
        self._handles.pop(index, None)

    def read_one(self, index: int, pids: set[int] | None = None) -> GpuReading:
        lib = self.lib
        try:
            handle = self._handles[index]
            memory = lib.nvmlDeviceGetMemoryInfo(handle)
            try:
                util = float(lib.nvmlDeviceGetUtilizationRates(handle).gpu)
            except lib.NVMLError:
                util = None  # some boards (and MIG slices) do not report utilisation
            process_used = None
            if pids:
                try:
                    process_used = sum(int(p.usedGpuMemory or 0) for p in lib.nvmlDeviceGetComputeRunningProcesses(handle)
                                       if p.pid in pids)
                except lib.NVMLError:
                    process_used = None  # containers without the host's pid namespace cannot see processes
        except lib.NVMLError as exc:
            raise GpuError(f"GPU {index} ({self._names.get(index, '?')}): NVML: {exc}", index) from None
        return GpuReading(index=index, name=self._names.get(index, f"GPU {index}"), used=int(memory.used),
                          total=int(memory.total), util=util, process_used=process_used)

    def read(self, pids: set[int] | None = None) -> list[GpuReading]:
        return [self.read_one(index, pids) for index in list(self.indexes)]

    def processes(self, index: int) -> list[GpuProcess]:
        """The compute processes on GPU ``index``, most memory first; [] where NVML cannot see them (a container
        without the host's pid namespace), so a caller shows an empty table rather than an error."""
        lib = self.lib
        try:
            found = lib.nvmlDeviceGetComputeRunningProcesses(self._handles[index])
        except (lib.NVMLError, KeyError):
            return []
        out = []
        for entry in found:
            used = getattr(entry, "usedGpuMemory", None)
            user, command, parents = _describe(int(entry.pid))
            out.append(GpuProcess(gpu=index, pid=int(entry.pid), used=int(used) if isinstance(used, int) else None,
                                  user=user, command=command, parents=parents))
        return sorted(out, key=lambda p: (-(p.used or 0), p.pid))

    def close(self) -> None:
        if self.is_open:
            self.is_open = False
            try:
                self.lib.nvmlShutdown()
            except Exception:
                pass


def _describe(pid: int) -> tuple[str, str, tuple[int, ...]]:
    """(user, command line, ancestors' pids) of ``pid`` from psutil; ``?`` for what cannot be read."""
    import psutil

    try:
        process = psutil.Process(pid)
    except (psutil.Error, ValueError):
        return "?", "?", ()
    try:
        user = process.username()
    except (psutil.Error, KeyError):  # KeyError: a uid with no passwd entry (containers)
        user = "?"
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        command = "?"
    try:
        parents = tuple(p.pid for p in process.parents())
    except psutil.Error:
        parents = ()
    return user, command, parents


def machine(lib=None) -> list[tuple[GpuReading, list[GpuProcess]]]:
    """Every GPU of the machine (not only the visible ones) with its processes; [] without NVML (never raises).

    A device that fails on its own is left out and the others are read."""
    nvml = Nvml(lib)
    try:
        nvml.open(every_device=True)
        out = []
        for index in list(nvml.indexes):
            try:
                out.append((nvml.read_one(index), nvml.processes(index)))
            except GpuError:
                continue
        return out
    except GpuError:
        return []
    finally:
        nvml.close()


def devices(lib=None) -> list[GpuReading]:
    """One reading of every visible GPU, or [] when there is no NVML or no GPU (never raises)."""
    nvml = Nvml(lib)
    try:
        nvml.open()
        return nvml.read()
    except GpuError:
        return []
    finally:
        nvml.close()


_process = None


def host(pid: int | None = None) -> HostReading:
    """Host memory and CPU: ``cpu_percent`` is this process's since the previous call (100 = one core busy)."""
    global _process
    import psutil

    if pid is not None and pid != os.getpid():
        process = psutil.Process(pid)
    else:
        if _process is None:
            _process = psutil.Process()
            _process.cpu_percent(None)
        process = _process
    memory = psutil.virtual_memory()
    return HostReading(used=int(memory.total - memory.available), total=int(memory.total),
                       process_rss=int(process.memory_info().rss), cpu_percent=float(process.cpu_percent(None)))


def run_pids() -> set[int]:
    """This run's processes on this machine: the worker and its children; under a supervisor, every rank."""
    import psutil

    me = psutil.Process()
    root = me
    if os.environ.get("FINETTY_SUPERVISED") == "1" or os.environ.get("LOCAL_RANK") is not None:
        root = me.parent() or me
    pids = {root.pid, me.pid}
    try:
        pids.update(child.pid for child in root.children(recursive=True))
    except psutil.Error:
        pass
    return pids
