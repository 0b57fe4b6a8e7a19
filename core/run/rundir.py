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
from finetty.core.run.summary import RunSummary, apply_events  # (where they were before the history index)

RECIPE_FILE = "recipe.yaml"
LOCK_FILE = "worker.lock"
LOG_FILE = "worker.log"
HEARTBEAT_FILE = "heartbeat.json"
CHECKPOINTS = "checkpoints"
FINAL = "final"
COMPLETE_MARKER = "finetty-checkpoint.json"


def new_run_id(method: str, objective: str | None = None) -> str:
    """``261202-125307-lora-dpo-1b4f``: when, and what runs (the method, then the objective), for a person."""
    stamp = time.strftime("%y%m%d-%H%M%S")
    what = "-".join(re.sub(r"[^A-Za-z0-9.]+", "_", part) for part in (method, objective) if part)
    return f"{stamp}-{what}-{secrets.token_hex(2)}"


def what_runs(method: str, objective: str | None) -> str:
    """How a run is named wherever it is listed: ``lora/dpo`` (the method, then the objective)."""
    return f"{method}/{objective}" if objective else method


def create(runs: Path, method: str, recipe_text: str) -> Path:
    """Make ``<runs>/<run-id>/`` holding the resolved recipe (written then renamed)."""
    runs.mkdir(parents=True, exist_ok=True)
    while True:
        run_dir = paths.child(runs, new_run_id(method, _objective(recipe_text)))
        try:
            run_dir.mkdir()
            break
        except FileExistsError:
            continue
    tmp = run_dir / (RECIPE_FILE + ".tmp")
    tmp.write_text(recipe_text, encoding="utf-8")
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
    if (candidate / RECIPE_FILE).is_file():
        return candidate
    if paths.is_safe_name(run) and (runs / run / RECIPE_FILE).is_file():
        return runs / run
    raise InputError(None, f"run {run!r}", f"is neither a run directory nor a run id in {runs}",
                     "see `finetty runs` for the ids")


# -- the worker lock -------------------------------------------------------------------------------

def acquire_lock(run_dir: Path) -> int:
    """Take the run's worker lock for a new worker; returns the descriptor to hand to it."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
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


def record_holder(fd: int, pid: int | None = None) -> None:
    """Write the holder's pid (default: this process) into the lock: the launcher and the worker both do."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{pid or os.getpid()}\n".encode(), 0)


def lock_holder(run_dir: Path) -> int | None:
    try:
        text = (run_dir / LOCK_FILE).read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


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


def latest_checkpoint(run_dir: Path) -> Path | None:
    done = complete_checkpoints(run_dir)
    return done[-1][1] if done else None


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


def log_tail(run_dir: Path, lines: int = 20) -> list[str]:
    try:
        with open(run_dir / LOG_FILE, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return []
    return data.splitlines()[-lines:]
