"""A worker started before its run exists, so the heavy imports are paid while a person is still choosing.

The New run screen calls :func:`start` when it opens. That spawns
``python -m finetty.core.standby FD`` in its own session, tied to the
launcher only by one end of a Unix socket pair. It imports what a run needs
(torch, transformers and its Trainer, datasets, peft) and waits.

:meth:`Standby.launch` hands it a run: the run directory, and the run's lock
descriptor itself (``SCM_RIGHTS``), taken by the launcher before it is sent,
so the run is never without an owner. From then on the process is that run's
worker, exactly as ``python -m finetty.core.worker RUN --lock-fd N`` started
by :func:`finetty.core.launch.start_worker` would be: its output goes to
``worker.log``, it works in the run directory, it ignores SIGHUP, and the
launcher going away does not touch it.

It serves what it imported for: a single-process run with no bitsandbytes
(no quantizer, no 8-bit optimizer; bitsandbytes is hidden from it, as the
worker hides it for such runs). For anything else :meth:`Standby.launch`
returns False and the caller starts a worker the usual way; the standby
stays for the next run. If the launcher exits without a run, the socket
closes and the standby exits. ``FINETTY_STANDBY=0`` turns this off.

Nothing here imports torch in the launcher's process.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from . import rundir

ENV = "FINETTY_STANDBY"


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


class Standby:
    """The launcher's handle on a standby worker."""

    def __init__(self, process: subprocess.Popen, channel: socket.socket):
        self.process = process
        self.channel = channel
        self.used = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return not self.used and self.process.poll() is None

    def serves(self, recipe) -> bool:
        """True for the runs this standby was warmed for (see the module's docstring)."""
        from .distributed import is_distributed
        from .recipe import needs_bitsandbytes

        return not is_distributed(recipe.launch) and not needs_bitsandbytes(recipe)

    def launch(self, run_dir: Path, resume: bool = False) -> bool:
        """Make the standby ``run_dir``'s worker; False (nothing changed) when it cannot serve this run.

        Raises RunBusyError, like :func:`finetty.core.launch.start_worker`, if a worker is live."""
        from .recipe import from_run

        run_dir = Path(run_dir).resolve()
        if not self.alive() or not self.serves(from_run(run_dir)):
            return False
        fd = rundir.acquire_lock(run_dir)
        try:
            request = json.dumps({"run_dir": str(run_dir), "resume": resume}).encode()
            try:
                socket.send_fds(self.channel, [request], [fd])
            except OSError:  # it died a moment ago: the caller starts a worker instead
                return False
            rundir.record_holder(fd, self.process.pid)  # at once, as start_worker does
            self.used = True
            self.channel.close()
            return True
        finally:
            os.close(fd)

    def close(self) -> None:
        """Let an unused standby go (it exits when its end of the socket closes)."""
        if not self.used:
            self.channel.close()


def start() -> Standby | None:
    """Spawn a standby worker (None if it cannot be started); callers ask :func:`enabled` first."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        process = subprocess.Popen([sys.executable, "-m", "finetty.core.standby", str(theirs.fileno())],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True, pass_fds=(theirs.fileno(),), close_fds=True)
    except OSError:
        ours.close()
        return None
    finally:
        theirs.close()
    return Standby(process, ours)


# -- the standby process ------------------------------------------------------------------------------

def _preload() -> None:
    """The imports a LoRA or full run pays before its first step."""
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)  # read by huggingface_hub and datasets when they are imported
    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # what the worker does for runs without a quantizer
    import datasets  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401

    from . import callbacks, worker  # noqa: F401


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    channel = socket.socket(fileno=int(argv[0]))
    try:
        _preload()
    except Exception:
        return 1  # the launcher sees it gone and starts a worker the usual way
    try:
        message, fds, _, _ = socket.recv_fds(channel, 65536, 1)
    except OSError:
        return 0
    channel.close()
    if not message or not fds:
        return 0  # the launcher went away without a run
    request = json.loads(message)
    run_dir = Path(request["run_dir"])
    log = os.open(run_dir / rundir.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(run_dir)
    from . import worker

    return worker.main([str(run_dir), "--lock-fd", str(fds[0])] + (["--resume"] if request.get("resume") else []))


if __name__ == "__main__":
    sys.exit(main())
