"""The run directory: creating one, finding one, its worker lock, and what state it is in.

A run's status is derived, never stored: the last terminal event says
finished / failed / stopped; otherwise a held worker lock says running; a run
with neither lost its worker (killed, OOM-killed, power) and can be resumed.
The lock is an ``flock`` held by the worker process itself, so a dead
worker's lock never blocks. The rule itself is :mod:`finetty.core.run.status`;
:func:`summarize` gathers what it needs.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import secrets
import time
from pathlib import Path

from finetty.core import paths
from finetty.core.errors import InputError, RunBusyError
from finetty.core.run import summary as summary_mod
from finetty.core.run.events import EVENTS_FILE
from finetty.core.run.summary import RunSummary, apply_events  # (where they were before the history index)

RECIPE_FILE = paths.RUN_RECIPE  # (the layout is named in paths: a run is also a model a recipe names)
LOCK_FILE = "worker.lock"
LOG_FILE = "worker.log"
HEARTBEAT_FILE = "heartbeat.json"
CHECKPOINTS = paths.RUN_CHECKPOINTS
FINAL = paths.RUN_FINAL
COMPLETE_MARKER = paths.CHECKPOINT_MARKER


def new_run_id(method: str, objective: str | None = None) -> str:
    """``261202-125307-lora-dpo-1b4f``: when, and what runs (the method, then the objective), for a person."""
    stamp = time.strftime("%y%m%d-%H%M%S")
    what = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", part) for part in (method, objective) if part)
    return f"{stamp}-{what}-{secrets.token_hex(2)}"


def what_runs(method: str, objective: str | None) -> str:
    """How a run is named wherever it is listed: ``lora/dpo`` (the method, then the objective)."""
    return f"{method}/{objective}" if objective else method


def create(runs: Path, method: str, recipe_text: str) -> Path:
    """Make ``<runs>/<run-id>/`` holding the resolved recipe (written then renamed).

    The recipe's notify URLs are credentials: the copy holds them masked, and the real ones are kept outside
    the run directory for its worker (:func:`finetty.core.run.notify.keep_secrets`)."""
    from finetty.core.run import notify

    paths.make_private_dir(runs)  # (0700, missing parents too: they hold every run)
    while True:
        run_dir = paths.child(runs, new_run_id(method, _objective(recipe_text)))
        try:
            os.mkdir(run_dir, paths.PRIVATE_DIR)
            break
        except FileExistsError:
            continue
    recipe_text = notify.keep_secrets(run_dir, recipe_text)
    tmp = run_dir / (RECIPE_FILE + ".tmp")
    with os.fdopen(paths.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w", encoding="utf-8") as handle:
        handle.write(recipe_text)
    tmp.rename(run_dir / RECIPE_FILE)
    return run_dir


def _objective(recipe_text: str) -> str | None:
    """The objective a resolved recipe names (None for a text that names none)."""
    import yaml

    try:
        data = yaml.safe_load(recipe_text)
    except yaml.YAMLError:
        return None
    return str(data["objective"]) if isinstance(data, dict) and data.get("objective") else None


def find(run: str, runs: Path) -> Path:
    """A run given as a directory path or as an id in the runs directory."""
    candidate = Path(run).expanduser()
    for found in (candidate, runs / run if paths.is_safe_name(run) else None):
        if found is not None and (found / RECIPE_FILE).is_file():
            if (found / RECIPE_FILE).is_symlink():
                raise InputError(found / RECIPE_FILE, None, "is a symbolic link, and finetty never follows links "
                                 "in a run directory", "put the recipe itself there")
            return found
    raise InputError(None, f"run {run!r}", f"is neither a run directory nor a run id in {runs}",
                     "see `finetty runs` for the ids")


# -- the worker lock -------------------------------------------------------------------------------

def acquire_lock(run_dir: Path) -> int:
    """Take the run's worker lock for a new worker; returns the descriptor to hand to it.

    The lock file is owner-only in an owner-only run directory, so no other user can open it and hold
    its ``flock``; a lock file that is a link or belongs to another user is refused by name, and a run
    directory made before runs were private is made so now."""
    path = run_dir / LOCK_FILE
    fd = paths.open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        _own_privately(fd, path, run_dir)
    except InputError:
        os.close(fd)
        raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = lock_holder(run_dir)
        deadline = time.monotonic() + 2.0
        while holder is None and time.monotonic() < deadline:  # its launcher is about to write the pid
            time.sleep(0.05)
            holder = lock_holder(run_dir)
        raise RunBusyError(f"run {run_dir.name} is being trained by a live worker"
                           f"{f' (pid {holder})' if holder else ''}; stop it first with `finetty stop {run_dir.name}`")
    os.ftruncate(fd, 0)  # a dead worker's pid is never named as the holder
    return fd


def _own_privately(fd: int, path: Path, run_dir: Path) -> None:
    """Refuse a lock file another user owns; make this user's lock and run directory owner-only."""
    info = os.fstat(fd)
    if info.st_uid != os.geteuid():
        raise InputError(path, None, f"belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}): another user "
                         "made it, and could hold it to block or fake this run's worker",
                         "remove it, and keep run directories private (chmod 700)")
    if info.st_mode & 0o077:
        os.fchmod(fd, paths.PRIVATE_FILE)
    try:
        if os.stat(run_dir).st_uid == os.geteuid() and paths.exposure(run_dir):
            os.chmod(run_dir, paths.PRIVATE_DIR)
    except OSError:
        pass


def start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), None if there is no such process.

    With the pid it identifies one process for good: a pid is reused, a (pid, start time) pair never."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.Error, ValueError):
        return None


def record_holder(fd: int, pid: int | None = None) -> None:
    """Write the holder's pid (default: this process) and its start time into the lock.

    The launcher and the worker both do; :func:`live_holder` checks the pair before anything signals it."""
    pid = pid or os.getpid()
    started = start_time(pid)
    os.ftruncate(fd, 0)
    os.pwrite(fd, (f"{pid} {started:.3f}\n" if started is not None else f"{pid}\n").encode(), 0)


def write_holder(run_dir: Path) -> None:
    """Record this process as the holder in a lock another process holds (a supervisor's rank 0)."""
    fd = paths.open_nofollow(run_dir / LOCK_FILE, os.O_WRONLY | os.O_CREAT)
    try:
        record_holder(fd)
    finally:
        os.close(fd)


def _holder_record(run_dir: Path) -> tuple[int, float | None] | None:
    return _record_in(run_dir / LOCK_FILE)


def _record_in(lock: Path) -> tuple[int, float | None] | None:
    """The (pid, start time) that :func:`record_holder` wrote into ``lock``, None if none is there."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fields = os.read(fd, 256).decode("ascii", "replace").split()
    finally:
        os.close(fd)
    try:
        return (int(fields[0]), float(fields[1]) if len(fields) > 1 else None) if fields else None
    except ValueError:
        return None


def lock_holder(run_dir: Path) -> int | None:
    """The pid the lock names (as written: it may be dead or, after reuse, another process; see :func:`live_holder`)."""
    record = _holder_record(run_dir)
    return record[0] if record else None


#: How far a process's start time may read from the one recorded in the lock (the kernel counts in ticks).
START_TIME_TOLERANCE = 0.5


def live_holder(run_dir: Path) -> tuple[int | None, str | None]:
    """``(pid, None)`` when the lock names a running process that started when the lock says; else ``(None, why)``.

    Anything that signals a worker asks this first: a pid from the lock alone may, after the worker died,
    belong to an unrelated process."""
    return holder_of(run_dir / LOCK_FILE)


def holder_of(lock: Path) -> tuple[int | None, str | None]:
    """:func:`live_holder` for any lock file written by :func:`record_holder` (a run's, the standby's)."""
    record = _record_in(lock)
    if record is None:
        return None, "its worker has not written its pid yet"
    pid, recorded = record
    if recorded is None:
        return None, f"{lock} names pid {pid} without its start time, so it cannot be checked"
    started = start_time(pid)
    if started is None:
        return None, f"pid {pid} in {lock} is not running"
    if abs(started - recorded) > START_TIME_TOLERANCE:
        return None, (f"pid {pid} in {lock} is another process now (started at {started:.3f}, "
                      f"the holder at {recorded:.3f})")
    return pid, None


def is_live(run_dir: Path) -> bool:
    """True while a worker process holds the run's lock."""
    return is_locked(run_dir / LOCK_FILE)


def is_locked(path: Path) -> bool:
    """True while some process holds an ``flock`` on ``path`` (a dead holder's lock is gone with it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# -- checkpoints -----------------------------------------------------------------------------------

def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints, oldest first; anything without the marker is not one."""
    found = []
    folder = run_dir / CHECKPOINTS
    if not folder.is_dir():
        return []
    for path in folder.iterdir():
        if not (path.name.startswith("step-") and path.is_dir()):
            continue
        try:
            marker = json.loads((path / COMPLETE_MARKER).read_text())
            found.append((int(marker["step"]), path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(found)


def tokens_at(checkpoint: Path | None) -> int:
    """The tokens trained up to ``checkpoint``, as its completeness marker records them (0 when unknown)."""
    if checkpoint is None:
        return 0
    try:
        return int(json.loads((checkpoint / COMPLETE_MARKER).read_text()).get("tokens", 0) or 0)
    except (OSError, ValueError, AttributeError):
        return 0


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1][1] if done else None


def file_digest(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB pieces (checkpoint files are large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(2**20), b""):
            digest.update(piece)
    return digest.hexdigest()


def describe_files(folder: Path) -> dict[str, dict]:
    """Each file under ``folder`` (by relative path) with its size and sha256: what a checkpoint's marker records."""
    return {str(path.relative_to(folder)): {"size": path.stat().st_size, "sha256": file_digest(path)}
            for path in sorted(folder.rglob("*")) if path.is_file() and path.name != COMPLETE_MARKER}


def checkpoint_problem(checkpoint: Path) -> str | None:
    """What is wrong with a complete checkpoint's files against its marker (the first thing found), None if intact.

    Markers written before they recorded sizes and hashes (a list of names) are checked for presence only."""
    try:
        files = json.loads((checkpoint / COMPLETE_MARKER).read_text()).get("files")
    except (OSError, ValueError, AttributeError) as exc:
        return f"its marker {COMPLETE_MARKER} cannot be read ({exc})"
    expected_files = files if isinstance(files, dict) else {name: None for name in files or ()}
    for name, expected in expected_files.items():
        target = checkpoint / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            return f"its marker names {name!r}, which is not inside the checkpoint"
        try:
            size = os.lstat(target).st_size
        except OSError:
            return f"{name} is missing"
        if not isinstance(expected, dict):
            continue
        if size != expected.get("size"):
            return f"{name} has {size} bytes where the marker recorded {expected.get('size')}"
        found = file_digest(target)
        if found != expected.get("sha256"):
            return f"{name} has sha256 {found[:16]}... where the marker recorded {str(expected.get('sha256'))[:16]}..."
    return None


def intact_checkpoint(run_dir: Path, move_aside: bool = True, report=lambda message: None) -> Path | None:
    """The newest complete checkpoint whose files match its marker, None if there is none.

    Each newer one that does not match is reported (which file, what was expected, what was found) and
    moved aside to ``checkpoints/corrupt-step-NNNNNN/``: never deleted (it may hold what someone wants
    back), and never again taken for a checkpoint."""
    damaged = False
    for _, checkpoint in reversed(complete_checkpoints(run_dir)):
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            if damaged:
                report(f"resuming from {checkpoint.name}, the newest intact checkpoint")
            return checkpoint
        damaged = True
        where = "left where it is"
        if move_aside:
            aside = checkpoint.with_name(f"corrupt-{checkpoint.name}")
            suffix = 1
            while os.path.lexists(aside):
                suffix += 1
                aside = checkpoint.with_name(f"corrupt-{checkpoint.name}-{suffix}")
            try:
                os.rename(checkpoint, aside)
                where = f"moved aside to {aside.relative_to(run_dir)}"
            except OSError as exc:
                where = f"could not be moved aside ({exc})"
        report(f"checkpoint {checkpoint.name} is damaged: {problem}; {where}; looking for an earlier intact one")
    return None


# -- status ----------------------------------------------------------------------------------------

def heartbeat(run_dir: Path, now: float | None = None) -> tuple[dict, float] | None:
    """The current worker's last beat and its age in seconds (see :mod:`finetty.core.train.heartbeat`); None if unknown.

    A heartbeat file left by an earlier worker (its pid is not the lock's holder) says nothing about this one."""
    path = Path(run_dir) / HEARTBEAT_FILE
    try:
        beat = json.loads(path.read_text())
        mtime = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    holder = lock_holder(run_dir)
    if not isinstance(beat, dict) or (holder is not None and beat.get("pid") != holder):
        return None
    return beat, max(0.0, (time.time() if now is None else now) - mtime)


def heartbeat_age(run_dir: Path) -> float | None:
    found = heartbeat(run_dir)
    return found[1] if found else None


def summarize(run_dir: Path, events: list[dict] | None = None) -> RunSummary:
    """A run's state: its history index and the events after it (or ``events``, when given), its lock, its heartbeat."""
    if events is None:
        found, _ = summary_mod.load(run_dir)
    else:
        found = RunSummary(id=run_dir.name, path=run_dir, status="starting")
        apply_events(found, events)
    finish_status(found, run_dir)
    return found


def finish_status(summary: RunSummary, run_dir: Path, complete: bool = True) -> None:
    """Settle the status of a summary whose events were read, by the one rule (:mod:`finetty.core.run.status`)."""
    live = is_live(run_dir)
    summary_mod.settle(summary, complete=complete, live=live, heartbeat_age=heartbeat_age(run_dir) if live else None)


def list_runs(runs: Path) -> list[RunSummary]:
    if not runs.is_dir():
        return []
    found = [summarize(p) for p in runs.iterdir() if (p / RECIPE_FILE).is_file()]
    return sorted(found, key=lambda s: s.started or 0)


def recorded_plugins(run_dir: Path) -> list[dict]:
    """The plugins the run's first ``run_started`` event recorded (kind, name, plugin, distribution, version):
    where a component is missing later, they say which package to install."""
    try:
        with open(run_dir / EVENTS_FILE, encoding="utf-8") as lines:
            for line in lines:
                if '"run_started"' in line:
                    return list(json.loads(line).get("plugins") or [])
    except (OSError, ValueError):
        pass
    return []


def log_tail(run_dir: Path, lines: int = 20) -> list[str]:
    try:
        handle = os.fdopen(paths.open_nofollow(run_dir / LOG_FILE, os.O_RDONLY), "rb")
    except InputError:
        return [f"({LOG_FILE} is a symbolic link; finetty does not follow links in a run directory)"]
    except OSError:
        return []
    try:
        with handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]
