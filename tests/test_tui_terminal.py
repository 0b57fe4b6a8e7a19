"""The app in a real terminal (tmux), and its weight: no torch & co. in the app's process."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .tui_runs import make_runs

HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "datasets")

WEIGHT = """
import asyncio, sys, time
from pathlib import Path
from finetty.tui.app import FinettyApp
from finetty.tui.screens.monitor import MonitorScreen

async def main():
    app = FinettyApp(runs=Path(sys.argv[1]), first_run=False, notify_write=lambda text: None)
    async with app.run_test(size=(80, 24)) as pilot:
        deadline = time.monotonic() + 30
        while app.screen.query_one("#runs-table").row_count < 4:
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        await pilot.press("enter")
        while not (isinstance(app.screen, MonitorScreen) and app.screen.history.train):
            assert time.monotonic() < deadline
            await pilot.pause(0.05)
        await pilot.press("escape", "p", "escape")
        await app.workers.wait_for_complete()
    print("HEAVY", sorted(m for m in %r if m in sys.modules))

asyncio.run(main())
""" % (HEAVY,)


def test_the_app_process_imports_no_torch_to_start_list_and_monitor(runs_dir):
    make_runs(runs_dir)
    out = subprocess.run([sys.executable, "-c", WEIGHT, str(runs_dir)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "HEAVY []" in out.stdout


def test_finetty_help_still_prints_the_commands():
    out = subprocess.run([sys.executable, "-m", "finetty.core.cli", "--help"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "queue" in out.stdout and "train" in out.stdout


def _screen(session: str) -> str:
    return subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout


def _wait_for(session: str, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        screen = _screen(session)
        if text in screen:
            return screen
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} never appeared; the screen:\n{screen}")
        time.sleep(0.2)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_finetty_in_tmux_lists_runs_and_opens_one_at_80x24(runs_dir, finetty_env):
    made = make_runs(runs_dir)
    home = Path(os.environ["FINETTY_HOME"])
    shutil.rmtree(home / "runs", ignore_errors=True)
    shutil.copytree(runs_dir, home / "runs")
    session = f"finetty-test-{os.getpid()}"
    finetty = str(Path(sys.executable).with_name("finetty"))
    env = " ".join(f"{k}={v}" for k, v in (("FINETTY_HOME", home), ("FINETTY_NOTIFY", "0"), ("TERM", "xterm-256color"),
                                           ("FINETTY_LOAD_PLUGINS", os.environ["FINETTY_LOAD_PLUGINS"])))
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24",
                    f"env {env} {finetty}; sleep 5"], check=True)
    try:
        screen = _wait_for(session, made["finished"].name)
        # every cell whole at 80 columns: a row's status word and its step count, never cut (`finishe`, `60/6`)
        for status, run in made.items():
            row = next(line for line in screen.splitlines() if run.name in line)
            assert re.search(rf"\b{status}\b", row) and re.search(r"\b\d+/60\b", row), (status, row)
        subprocess.run(["tmux", "send-keys", "-t", session, "Enter"], check=True)
        _wait_for(session, "step 60/60")
        screen = _wait_for(session, "step-000060")  # (the tabs come just after the monitor's first frame)
        assert "Checkpoints" in screen and "step-000060" in screen and "loss" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "Escape"], check=True)
        _wait_for(session, "New")
        subprocess.run(["tmux", "send-keys", "-t", session, "n"], check=True)
        screen = _wait_for(session, "lora/sft on tiny-demo with identity")
        assert "Launch" in screen
        subprocess.run(["tmux", "send-keys", "-t", session, "C-q"], check=True)
        deadline = time.monotonic() + 20
        while made["finished"].name in _screen(session) or "Launch" in _screen(session):
            assert time.monotonic() < deadline, "the app did not quit"
            time.sleep(0.2)
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
