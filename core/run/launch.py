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
from pathlib import Path

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
    with open(run_dir / rundir.LOG_FILE, "ab") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, pass_fds=(fd,), close_fds=True, cwd=str(run_dir))
    if not distributed:  # (a supervisor's rank 0 writes its own pid)
        rundir.record_holder(fd, process.pid)  # at once: a stop or a second launch names it from now on
    return process.pid


def _signal(run_dir: Path, signum: int) -> int:
    if not rundir.is_live(run_dir):
        raise InputError(None, f"run {run_dir.name}", "has no live worker",
                         f"resume it with `finetty train --resume {run_dir.name}`")
    pid = rundir.lock_holder(run_dir)
    if not pid:
        raise InputError(None, f"run {run_dir.name}", "is starting; its worker has not said its pid yet",
                         "try again in a moment")
    os.kill(pid, signum)
    return pid


def request_stop(run_dir: Path) -> int:
    """Ask the worker to checkpoint and stop (SIGTERM); returns its pid."""
    return _signal(run_dir, signal.SIGTERM)


def request_checkpoint(run_dir: Path) -> int:
    """Ask the worker to save a checkpoint now and go on (SIGUSR1); returns its pid."""
    return _signal(run_dir, signal.SIGUSR1)


# -- which process of a run this is (the launcher sets these for every rank) ---------------------

def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
