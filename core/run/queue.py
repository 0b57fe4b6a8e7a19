"""The run queue: recipes lined up to train one after another, headless.

The queue belongs to a runs directory and lives in ``<runs>/queue.json``;
every change happens under an ``flock`` on ``<runs>/queue.lock``, waited for at
most :data:`LOCK_TIMEOUT` seconds (a holder that keeps it longer is named, pid
and command, instead of hanging), and every file is owner-only. An entry
holds an already validated recipe; its run directory is created only when it
starts, so a queued run is never mistaken for a lost one.

:func:`advance` starts the first entry when no worker in the runs directory is
live (the GPUs are free): the run before it has finished, failed or stopped.
:func:`run_forever` calls it until the queue is empty and its last run has
ended, then sends the notifications (:mod:`finetty.core.run.notify`); it is what
``finetty queue run`` does, and :func:`ensure_runner` starts it as a detached
process of its own (one per runs directory, kept single by a second lock), so
the queue keeps going after the app that filled it is closed or the SSH
connection drops.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from finetty.core import paths
from finetty.core.errors import RunBusyError
from finetty.core.run import rundir

QUEUE_FILE = "queue.json"
QUEUE_LOCK = "queue.lock"
RUNNER_LOCK = "queue-runner.lock"
RUNNER_LOG = "queue-runner.log"
LOCK_TIMEOUT = 15.0
"""seconds a queue operation waits for another one to finish (starting a run under the lock takes a few)"""


@dataclass
class Entry:
    """One queued job: its resolved recipe and what to show for it."""

    id: str
    recipe: str
    model: str
    method: str
    dataset: str
    added: float
    objective: str = "sft"
    """(queues written before the objective was shown hold none: they trained sft, the default)"""


@dataclass
class QueueState:
    """What ``queue.json`` holds."""

    entries: list[Entry] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    """run ids the queue started, oldest first"""
    last_error: str | None = None
    """why the last entry could not start (it was dropped)"""


def _read(runs: Path) -> QueueState:
    try:
        data = json.loads((runs / QUEUE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return QueueState()
    entries = []
    for item in data.get("entries", []):
        try:
            entries.append(Entry(**{k: item[k] for k in Entry.__dataclass_fields__ if k in item}))
        except (KeyError, TypeError):
            continue
    return QueueState(entries, list(data.get("started", [])), data.get("last_error"))


def _write(runs: Path, state: QueueState) -> None:
    tmp = runs / (QUEUE_FILE + ".tmp")
    with os.fdopen(paths.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(state), indent=1))
    tmp.replace(runs / QUEUE_FILE)


def _holder(fd: int) -> str:
    """Who holds a queue lock, from the pid and start time it wrote: ``pid 123 (finetty queue add ...)``."""
    fields = os.pread(fd, 256, 0).decode("ascii", "replace").split()
    if not fields or not fields[0].isdigit():
        return "a process that has not written its pid"
    pid = int(fields[0])
    import psutil

    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())[:120] or process.name()
        return f"pid {pid} ({command}) of user {process.username()}"
    except (psutil.Error, OSError, KeyError):
        return f"pid {pid}"


@contextmanager
def _locked(runs: Path, timeout: float | None = None) -> Iterator[QueueState]:
    """The queue, read under its lock and written back when the block ends without error.

    Waits at most ``timeout`` seconds (default :data:`LOCK_TIMEOUT`) for the lock, then raises
    :class:`RunBusyError` naming the holder: a stuck or hostile holder never hangs a command."""
    paths.make_private_dir(runs)
    fd = paths.open_nofollow(runs / QUEUE_LOCK, os.O_RDWR | os.O_CREAT)
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunBusyError(f"the queue of {runs} has been locked for {timeout:g} s by {_holder(fd)}; "
                                       f"nothing was changed: try again, or end that process if it is stuck") from None
                time.sleep(0.05)
        rundir.record_holder(fd)
        state = _read(runs)
        yield state
        _write(runs, state)
    finally:
        os.close(fd)  # (the next holder writes its own pid over this one's)


def read(runs: Path) -> QueueState:
    """The queue as it is now (a consistent snapshot; no lock needed to read a renamed file)."""
    return _read(runs)


def add(runs: Path, recipe) -> Entry:
    """Queue a validated :class:`~finetty.core.recipe.recipe.Recipe`; returns its entry."""
    entry = Entry(id=f"q-{secrets.token_hex(3)}", recipe=recipe.to_yaml(), model=str(recipe.model),
                  method=str(recipe.method), dataset=str(recipe.dataset), added=round(time.time(), 3),
                  objective=str(recipe.objective))
    with _locked(runs) as state:
        state.entries.append(entry)
    return entry


def remove(runs: Path, entry_id: str) -> bool:
    with _locked(runs) as state:
        before = len(state.entries)
        state.entries = [e for e in state.entries if e.id != entry_id]
        return len(state.entries) != before


def move(runs: Path, entry_id: str, delta: int) -> int | None:
    """Move an entry ``delta`` places (negative: earlier); returns its new index, None if absent."""
    with _locked(runs) as state:
        ids = [e.id for e in state.entries]
        if entry_id not in ids:
            return None
        index = ids.index(entry_id)
        target = max(0, min(len(ids) - 1, index + delta))
        state.entries.insert(target, state.entries.pop(index))
        return target


def clear(runs: Path) -> int:
    with _locked(runs) as state:
        count = len(state.entries)
        state.entries = []
        return count


def live_runs(runs: Path) -> list[str]:
    """Ids of runs whose worker is alive."""
    if not runs.is_dir():
        return []
    return [p.name for p in runs.iterdir() if (p / rundir.RECIPE_FILE).is_file() and rundir.is_live(p)]


def _start(runs: Path, entry: Entry) -> Path:
    """Check the entry's recipe again (files may have moved since) and start its worker."""
    from finetty.core.run import launch
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.plugin.registry import load_plugins

    data, source = recipe_mod.parse_text(entry.recipe, None)
    recipe = recipe_mod.validate(data, load_plugins(), source, Path.cwd(), runs=runs)
    run_dir = rundir.create(runs, recipe.method, recipe.to_yaml())
    launch.start_worker(run_dir)
    return run_dir


def advance(runs: Path, start: Callable[[Path, Entry], Path] = _start,
            say: Callable[[str], None] = lambda _: None) -> Path | None:
    """Start the next queued run if no worker is live; returns its run directory, else None.

    An entry that cannot start (its recipe no longer validates) is dropped, the
    reason kept in ``last_error`` and sent to the notify URLs (no worker will
    ever tell of it); the next one is tried. ``say`` hears what could not be sent."""
    from finetty.core.errors import InputError, RunBusyError
    from finetty.core.run import notify

    dropped: list[tuple[str, Entry]] = []
    run_dir = None
    with _locked(runs) as state:
        while state.entries and not live_runs(runs):
            entry = state.entries.pop(0)
            try:
                run_dir = start(runs, entry)
            except (InputError, RunBusyError, OSError) as exc:
                dropped.append((f"{entry.id} ({entry.method} on {entry.model}) did not start: {exc}", entry))
                state.last_error = "; ".join(reason for reason, _ in dropped)
                continue
            state.started.append(run_dir.name)
            state.last_error = "; ".join(reason for reason, _ in dropped) or None
            break
    for reason, entry in dropped:  # (outside the lock: a slow endpoint never holds up the queue's commands)
        notify.queue_dropped(runs, reason, entry.recipe, say)
    return run_dir


def run_forever(runs: Path, poll: float = 2.0, say: Callable[[str], None] = lambda _: None) -> int:
    """Start queued runs one after another until the queue is empty and the last run has ended; returns how
    many started.

    The runner stays until its last run ends (a recipe queued meanwhile is
    started too), then tells the notify URLs how each run ended
    (:func:`finetty.core.run.notify.queue_finished`): with the app closed, that
    message is how a person learns that the night's queue is done. Only one
    runner works a runs directory at a time; a second returns 0 at once."""
    from finetty.core.run import notify

    paths.make_private_dir(runs)
    with os.fdopen(paths.open_nofollow(runs / RUNNER_LOCK, os.O_RDWR | os.O_CREAT), "r+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another queue runner is already working this runs directory")
            return 0
        rundir.record_holder(lock.fileno())
        mine: list[Path] = []
        said = None
        while True:
            try:
                run_dir = advance(runs, say=say)
            except RunBusyError as exc:  # another queue command held the lock too long: say so, try again
                say(str(exc))
                time.sleep(poll)
                continue
            if run_dir is not None:
                mine.append(run_dir)
                say(f"started {run_dir.name}")
                continue
            state = read(runs)
            if state.last_error and state.last_error != said:
                said = state.last_error
                say(said)
            if not state.entries and not any(rundir.is_live(run) for run in mine):
                notify.queue_finished(runs, mine, say)
                return len(mine)
            time.sleep(poll)


def runner_alive(runs: Path) -> bool:
    return rundir.is_locked(runs / RUNNER_LOCK)


def ensure_runner(runs: Path) -> subprocess.Popen | None:
    """Start a detached ``finetty queue run`` for ``runs`` unless one is working it already."""
    if runner_alive(runs) or not read(runs).entries:
        return None
    paths.make_private_dir(runs)
    with os.fdopen(paths.open_nofollow(runs / RUNNER_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "finetty.core.cli", "queue", "run", "--runs-dir", str(runs)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
