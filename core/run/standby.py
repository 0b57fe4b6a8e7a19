"""A worker that has done its imports before its run exists, so a launch goes straight to loading the model.

Every launch (``finetty train``, resume, the queue, the app) goes through
:func:`finetty.core.run.launch.start_worker`, which first offers the run to the
standby: one waiting process per user, Python environment and finetty home,
started in its own session by :func:`ensure`. A worker (or the supervisor of
several) calls it as it ends, for the next launch, and the New run screen as
it opens. (Not at a launch: its imports would then take CPU from the run that
just started.) Like a build daemon, it imports what a run needs (torch,
transformers and its Trainer, datasets, peft), then listens on a Unix socket
in a private (0700) directory.

:func:`hand_over` sends it the run directory and the run's lock descriptor
itself (``SCM_RIGHTS``), taken by the launcher first, so the run is never
without an owner. The standby answers with its pid and from then on is that
run's worker, exactly as ``python -m finetty.core.train.worker RUN --lock-fd N``
started by ``start_worker`` would be: its output goes to ``worker.log``, it
works in the run directory, and the launcher going away does not touch it.

It refuses (and the launcher starts a worker the usual way):

- a run it did not import for: several processes, or bitsandbytes (a
  quantizer or an 8-bit optimizer; it hides bitsandbytes, as the worker does
  for runs without one);
- a launcher whose environment differs from the one it was started in
  (variables are read when transformers is imported, so it cannot adopt them),
  or whose installed software changed since (``pip install``, an edited
  finetty): then it exits, and the worker started instead leaves a fresh one.

It exits on its own after ``FINETTY_STANDBY_IDLE`` seconds without a run
(default 1200; 60 for a home in the temp dir, a test's or a tool's, whose
purpose is over long before that), and as soon as its finetty home is
deleted; ``FINETTY_STANDBY=0`` turns it off. Most of its imports run
at the lowest priority, so it does not slow a run that is training.

Nothing here imports torch in the launcher's process.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from finetty.core import paths
from finetty.core.run import entry, rundir

ENV = "FINETTY_STANDBY"
IDLE_ENV = "FINETTY_STANDBY_IDLE"
IDLE_DEFAULT = 1200.0
IDLE_TEMPORARY_HOME = 60.0
"""the idle limit for a home under the temp dir (a test's, a benchmark's, a tool's)"""
HOME_CHECK = 5.0
"""seconds between two looks at whether the home still exists"""

# what differs between two shells (or test runs) of one person without changing what a run does
_SESSION_VARS = {"_", "PWD", "OLDPWD", "SHLVL", "TERM", "TERM_PROGRAM", "TERM_PROGRAM_VERSION", "COLORTERM",
                 "COLUMNS", "LINES", "TMUX", "TMUX_PANE", "STY", "WINDOW", "WINDOWID", "DISPLAY", "XAUTHORITY",
                 "PS1", "PS2", "PROMPT_COMMAND", "LS_COLORS", "MAIL", "GPG_TTY", "XDG_SESSION_ID",
                 "KITTY_WINDOW_ID", "VSCODE_IPC_HOOK_CLI", ENV, IDLE_ENV}
_SESSION_PREFIXES = ("SSH_", "LC_TERMINAL", "ITERM_", "WT_", "KONSOLE_", "VTE_", "PYTEST_", "COV_CORE_")


def enabled() -> bool:
    return os.environ.get(ENV, "1") != "0"


def idle_seconds() -> float:
    default = IDLE_TEMPORARY_HOME if temporary_home() else IDLE_DEFAULT
    try:
        return max(1.0, float(os.environ.get(IDLE_ENV, default)))
    except ValueError:
        return default


def temporary_home() -> bool:
    """True for a finetty home in the temp dir: made for a test or a tool, gone with it."""
    try:
        return paths.home().resolve().is_relative_to(Path(tempfile.gettempdir()).resolve())
    except OSError:
        return False


# -- where it listens ------------------------------------------------------------------------------

def _place() -> Path | None:
    """The path prefix of this environment's standby files, in a directory only this user can enter.

    A socket path must stay under about 100 bytes, so it lives in the runtime
    directory (``$XDG_RUNTIME_DIR`` or the temp dir), not under FINETTY_HOME;
    the name is keyed by the Python environment and the finetty home."""
    base = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()) / f"finetty-{os.getuid()}"
    try:
        base.mkdir(mode=0o700, exist_ok=True)
        st = base.stat()
    except OSError:
        return None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None  # someone else's, or open to others: never listen or connect there
    key = hashlib.sha256(f"{sys.prefix}\0{paths.home().resolve()}".encode()).hexdigest()[:16]
    place = base / f"standby-{key}"
    return place if len(str(place)) < 96 else None


def _file(suffix: str) -> Path | None:
    place = _place()
    return place.with_name(place.name + suffix) if place else None


def pid() -> int | None:
    """The pid of this environment's standby, if one is alive (warming up or waiting)."""
    lock = _file(".lock")
    if lock is None or not rundir.is_locked(lock):
        return None
    return rundir.holder_of(lock)[0]  # the pid checked against its start time: never a reused pid


def ready() -> bool:
    """True when a standby is listening (its imports are done)."""
    path = _file(".sock")
    if path is None:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
            probe.sendall(b"{}")  # an empty request: it answers and waits for the next
            return probe.recv(64) == b"{}"
        except OSError:
            return False


# -- what must match -------------------------------------------------------------------------------

def fingerprint(env: dict | None = None) -> dict:
    """What the standby's imports depend on: the interpreter, the environment variables and the installed software.

    The software is stamped by the modification times of the site-packages
    directories (``pip install`` adds or removes entries there) and of
    finetty's own files (an editable install)."""
    env = os.environ if env is None else env
    variables = {k: v for k, v in env.items() if k not in _SESSION_VARS and not k.startswith(_SESSION_PREFIXES)}
    return {"python": sys.executable, "variables": variables, "software": _software()}


def differences(ours: dict, theirs: dict) -> list[str]:
    """What differs between two fingerprints, by name (never the values)."""
    found = [key for key in ("python", "software") if ours.get(key) != theirs.get(key)]
    a, b = ours.get("variables", {}), theirs.get("variables", {})
    return found + sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _software() -> list:
    stamps = []
    for folder in sys.path:  # not the script's or the working directory, which differ between launchers
        if not folder.rstrip(os.sep).endswith(("site-packages", "dist-packages")):
            continue
        try:
            stamps.append([folder, os.stat(folder).st_mtime_ns])
        except OSError:
            pass
    from importlib.util import find_spec

    newest = 0
    for package in ("finetty.core", "finetty.plugins", "finetty.tui"):
        spec = find_spec(package)
        for top in (spec.submodule_search_locations or []) if spec else []:
            for folder, _, files in os.walk(top):
                for name in files:
                    if name.endswith(".py"):
                        try:
                            newest = max(newest, os.stat(os.path.join(folder, name)).st_mtime_ns)
                        except OSError:
                            pass
    return stamps + [newest]


# -- the launcher's side ---------------------------------------------------------------------------

def serves(recipe) -> bool:
    """True for the runs a standby imports for (see the module's docstring)."""
    from finetty.core.recipe.sections import is_distributed
    from finetty.core.recipe.recipe import needs_bitsandbytes

    return not is_distributed(recipe.launch) and not needs_bitsandbytes(recipe)


def ensure(env: dict | None = None) -> None:
    """Start this environment's standby unless one is alive; it is ready a few seconds later.

    ``env``: the environment to start it in (default this process's); a worker
    passes the one it was launched with, not what its imports have set since."""
    lock = _file(".lock")
    if lock is None or rundir.is_locked(lock):
        return
    log = _file(".log")
    try:
        with open(log, "ab") as out:  # kept across standbys: it says why the last one stepped aside
            subprocess.Popen([sys.executable, "-m", "finetty.core.run.standby"], stdin=subprocess.DEVNULL,
                             stdout=out, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                             cwd=str(lock.parent), env=env)
    except OSError:
        pass  # no standby: launches start their worker the usual way


def hand_over(run_dir: Path, lock_fd: int, resume: bool = False) -> int | None:
    """Make the standby ``run_dir``'s worker, sending it the run's locked descriptor; its pid, or None.

    None means nothing changed: no standby is listening, or it refused (it
    has then not kept the descriptor), and the caller starts a worker itself."""
    path = _file(".sock")
    if path is None:
        return None
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with channel:
        channel.settimeout(5)
        try:
            channel.connect(str(path))
        except OSError:
            return None
        request = {"run_dir": str(Path(run_dir).resolve()), "resume": resume, "fingerprint": fingerprint(),
                   "umask": _umask()}
        try:
            socket.send_fds(channel, [json.dumps(request).encode()], [lock_fd])
            channel.settimeout(None)  # once it holds the lock, only its answer (or its death) says who trains
            reply = channel.recv(4096)
        except OSError:
            return None
    try:
        return int(json.loads(reply).get("pid") or 0) or None
    except ValueError:
        return None  # it died before answering: it holds nothing


def _umask() -> int:
    """This process's umask, read without setting it (another thread may be creating files)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


def stop() -> None:
    """End this environment's standby if one is waiting (it is never a run's worker by then).

    :func:`pid` checks the pid against the start time the lock records, so a pid reused since is never signalled."""
    import signal

    found = pid()
    if found:
        try:
            os.kill(found, signal.SIGTERM)
        except OSError:
            pass


# -- the standby process ---------------------------------------------------------------------------

def _preload() -> None:
    """The imports a LoRA or full run pays before its first step, mostly at the lowest priority.

    Linux sets niceness per thread, and a thread inherits its creator's: torch
    is imported on the main thread, because importing it starts the pool
    threads the run computes on later; the rest (about two thirds of the time)
    is imported on a thread at nice 19, so that a run already training keeps the CPU.
    The environment is left as it was found: the worker it becomes sets what it needs."""
    found = dict(os.environ)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false")):
        os.environ.setdefault(key, value)  # as the worker does, before huggingface_hub reads them
    if "bitsandbytes" not in sys.modules:
        sys.modules["bitsandbytes"] = None  # what the worker does for runs without a quantizer
    import torch  # noqa: F401

    failed: list[BaseException] = []

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (OSError, AttributeError):
            pass
        try:
            import datasets  # noqa: F401
            import peft  # noqa: F401
            import transformers  # noqa: F401
            from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer  # noqa: F401

            entry.preload_worker()
        except BaseException as exc:  # noqa: BLE001 - raised again on the main thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="standby-imports")
    thread.start()
    thread.join()
    os.environ.clear()
    os.environ.update(found)
    if failed:
        raise failed[0]


def _peer_is_us(conn: socket.socket) -> bool:
    if not hasattr(socket, "SO_PEERCRED"):
        return True  # the directory's permissions are the guard
    _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
    return uid == os.getuid()


def _serve(listener: socket.socket, expected: dict, leave) -> tuple[dict, int] | None:
    """Answer requests until a run is taken (its request and lock descriptor) or the idle time runs out.

    ``leave()`` gives up the socket and the standby's lock before the launcher
    hears the answer, so the standby it then starts for the next launch can take them."""
    home = paths.home()
    deadline = time.monotonic() + idle_seconds()
    listener.settimeout(min(HOME_CHECK, idle_seconds()))
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            if time.monotonic() >= deadline or not home.is_dir():
                return None  # idle too long, or its home was deleted: nothing will launch here again
            continue
        except OSError:
            return None
        deadline = time.monotonic() + idle_seconds()
        with conn:
            conn.settimeout(5)
            try:
                message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 1)
                request = json.loads(message or b"{}")
            except (OSError, ValueError):
                continue
            if not fds:
                _answer(conn, {})  # a probe (see ready())
                continue
            lock_fd = fds[0]
            if not _peer_is_us(conn):
                os.close(lock_fd)
                _answer(conn, {"refused": "another user"})
                continue
            stale = differences(expected, request.get("fingerprint") or {})
            if stale:
                print(f"standby: a launcher differs in {', '.join(stale)}: leaving for a fresh standby", flush=True)
                os.close(lock_fd)
                leave()  # the launcher starts a worker, whose end leaves a standby for what it has now
                _answer(conn, {"refused": "stale"})
                return None
            rundir.record_holder(lock_fd)  # before answering: a stop from now on names this process
            leave()
            if _answer(conn, {"pid": os.getpid()}):
                return request, lock_fd
            os.close(lock_fd)  # the launcher went away before the answer: it did not start the run
            return None


def _answer(conn: socket.socket, reply: dict) -> bool:
    try:
        conn.sendall(json.dumps(reply).encode())
        return True
    except OSError:
        return False


def _step_back() -> None:
    """Give way to runs that are training, in a way that a run's worker does not keep.

    With autogroup scheduling (most desktop and server kernels), CPU time is
    shared between sessions first, so niceness alone would not help: the
    standby lowers its session's group to nice 19, and a taken standby starts
    a session (and group) of its own, back at nice 0. A session leader cannot
    start another session, so the process :func:`ensure` started forks once
    and leaves the waiting to its child."""
    if os.getsid(0) == os.getpid():
        if os.fork() > 0:
            os._exit(0)
    try:
        Path("/proc/self/autogroup").write_text("19\n")
    except OSError:
        pass  # no autogroup here: the imports' thread is niced all the same (see _preload)


def main(argv: list[str] | None = None) -> int:
    expected = fingerprint()  # the environment it was started in, before the imports set anything
    lock_path, sock_path = _file(".lock"), _file(".sock")
    if lock_path is None:
        return 0
    _step_back()
    lock = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another standby is alive for this environment
    rundir.record_holder(lock)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left = []

    def leave() -> None:
        if not left:
            left.append(True)
            listener.close()
            sock_path.unlink(missing_ok=True)
            os.ftruncate(lock, 0)  # so the next standby's lock never names this process, not even before it writes
            os.close(lock)  # from here on a new standby may start

    try:
        _preload()
        sock_path.unlink(missing_ok=True)  # a dead standby's; we hold the lock, so no live one owns it
        listener.bind(str(sock_path))
        listener.listen(8)
        taken = _serve(listener, expected, leave)
    finally:
        leave()
    if taken is None:
        return 0
    request, lock_fd = taken
    os.setsid()  # a session and scheduling group of its own, at normal priority, like a cold worker's
    run_dir = Path(request["run_dir"])
    os.umask(int(request.get("umask", 0o22)))
    log = paths.open_nofollow(run_dir / rundir.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # 0600, no link
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.chdir(run_dir)
    print("worker: started from the standby (its imports were already done)", flush=True)
    return entry.worker_main([str(run_dir), "--lock-fd", str(lock_fd)] + (["--resume"] if request.get("resume") else []))


if __name__ == "__main__":
    sys.exit(main())
