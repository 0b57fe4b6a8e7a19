"""Starting a worker detached from the terminal, and sending it requests.

The worker runs in its own session (``start_new_session=True``), so closing
the terminal, the TUI or the SSH connection never stops it. The launcher
takes the run's lock first and hands the locked descriptor to the worker,
so the run is never without an owner between launch and start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from finetty.core import paths
from finetty.core.run import entry, rundir
from finetty.core.errors import InputError


def start_worker(run_dir: Path, resume: bool = False) -> int:
    """Start the worker for ``run_dir`` (or, for several processes, the supervisor that launches them); its pid.

    The standby worker takes the run when it can (see :mod:`finetty.core.run.standby`);
    otherwise a fresh process is spawned. Raises RunBusyError if a worker is live."""
    from finetty.core.run import standby
    from finetty.core.recipe.sections import is_distributed
    from finetty.core.recipe.recipe import from_run

    run_dir = Path(run_dir).resolve()  # the worker starts in run_dir: a relative path would not resolve there
    fd = rundir.acquire_lock(run_dir)
    try:
        # a worker.log planted as a link is refused here, before any process (a standby too) is handed the run
        os.close(paths.open_nofollow(run_dir / rundir.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
        recipe = from_run(run_dir)
        pid = standby.hand_over(run_dir, fd, resume) if standby.enabled() and standby.serves(recipe) else None
        if pid is None:
            pid = _spawn(run_dir, fd, resume, distributed=is_distributed(recipe.launch))
    finally:
        os.close(fd)
    return pid


def _spawn(run_dir: Path, fd: int, resume: bool, distributed: bool) -> int:
    module = entry.SUPERVISOR_MODULE if distributed else entry.WORKER_MODULE
    cmd = [sys.executable, "-m", module, str(run_dir), "--lock-fd", str(fd)]
    if resume:
        cmd.append("--resume")
    # owner-only, never through a link planted as worker.log; the worker creates everything else 0600/0700
    log_fd = paths.open_nofollow(run_dir / rundir.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(log_fd, "ab") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, pass_fds=(fd,), close_fds=True, cwd=str(run_dir),
                                   umask=0o077)
    if not distributed:  # (a supervisor's rank 0 writes its own pid)
        rundir.record_holder(fd, process.pid)  # at once: a stop or a second launch names it from now on
    return process.pid


def _signal(run_dir: Path, signum: int) -> int:
    if not rundir.is_live(run_dir):
        raise InputError(None, f"run {run_dir.name}", "has no live worker",
                         f"resume it with `finetty train --resume {run_dir.name}`")
    pid, why = rundir.live_holder(run_dir)  # the pid with its start time: never a reused pid's new owner
    if not pid:
        raise InputError(None, f"run {run_dir.name}", f"has a held lock, but {why}; nothing was signalled",
                         "try again in a moment; if it stays so, see `finetty runs`")
    os.kill(pid, signum)
    return pid


def request_stop(run_dir: Path) -> int:
    """Ask the worker to checkpoint and stop (SIGTERM); returns its pid."""
    return _signal(run_dir, signal.SIGTERM)


@dataclass
class StopOutcome:
    """What became of a stop request (:func:`await_stop`)."""

    outcome: str
    """``ended`` (a final event came), ``exited`` (the worker went without one), ``acknowledged`` (it took the
    request and is finishing its step and checkpoint), ``stalled`` (it has not run for ``stalled_for`` seconds),
    ``busy`` (it beats but has not taken the request: inside one long operation) or ``silent`` (no heartbeat to
    tell)"""
    end: dict | None = None
    stalled_for: float | None = None


def await_stop(run_dir: Path, pid: int, offset: int, timeout: float = 10.0, poll: float = 0.1) -> StopOutcome:
    """Watch a run after a stop request to its worker ``pid`` for at most ``timeout`` seconds; say what happened.

    ``offset`` is the size of events.jsonl when the request was sent (only later events answer it). The worker
    answers with a ``stopped`` event once its step ends and the checkpoint is saved; before that, its heartbeat
    says it took the request (``stop_requested``). A worker that never answers is reported as such, never as
    stopped."""
    from finetty.core.run.events import TERMINAL, EventReader
    from finetty.core.run.status import stall_after

    reader = EventReader(run_dir, offset)
    deadline = time.monotonic() + timeout
    acknowledged = False
    while True:
        ends = [e for e in reader.poll() if e["type"] in TERMINAL]
        if ends:
            return StopOutcome("ended", ends[-1])
        if not rundir.is_live(run_dir):
            ends = [e for e in reader.poll() if e["type"] in TERMINAL]  # the final event may have just landed
            return StopOutcome("ended", ends[-1]) if ends else StopOutcome("exited")
        beat = rundir.heartbeat(run_dir)
        if beat is not None and beat[0].get("pid") == pid and beat[0].get("stop_requested"):
            acknowledged = True
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    if acknowledged:
        return StopOutcome("acknowledged")
    if beat is None:
        return StopOutcome("silent")
    if beat[1] > max(3.0, min(timeout, stall_after())):  # several missed beats (one a second)
        return StopOutcome("stalled", stalled_for=beat[1])
    return StopOutcome("busy")


def request_checkpoint(run_dir: Path) -> int:
    """Ask the worker to save a checkpoint now and go on (SIGUSR1); returns its pid."""
    return _signal(run_dir, signal.SIGUSR1)


# -- which process of a run this is (the launcher sets these for every rank) ---------------------

def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
