"""Leave nothing behind: a standby for a temporary home ends with its purpose; the suite checks its own end."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .conftest import finetty_processes


def test_a_standby_for_a_home_in_the_temp_dir_waits_a_minute_not_twenty(tmp_path, monkeypatch):
    from finetty.core.run import standby

    monkeypatch.delenv(standby.IDLE_ENV, raising=False)
    monkeypatch.setenv("FINETTY_HOME", str(tmp_path / "home"))
    assert standby.temporary_home() and standby.idle_seconds() == standby.IDLE_TEMPORARY_HOME
    monkeypatch.setenv("FINETTY_HOME", str(Path.home() / ".finetty"))
    assert not standby.temporary_home() and standby.idle_seconds() == standby.IDLE_DEFAULT
    monkeypatch.setenv(standby.IDLE_ENV, "7")  # an explicit limit wins either way
    assert standby.idle_seconds() == 7


def test_a_waiting_standby_leaves_when_its_home_is_deleted(tmp_path, monkeypatch):
    from finetty.core.run import standby

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("FINETTY_HOME", str(home))
    monkeypatch.setenv(standby.IDLE_ENV, "600")
    monkeypatch.setattr(standby, "HOME_CHECK", 0.1)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "standby.sock"))
    listener.listen(1)
    remover = threading.Timer(0.5, shutil.rmtree, args=(home,))
    remover.start()
    started = time.monotonic()
    try:
        assert standby._serve(listener, {}, leave=lambda: None) is None  # no run taken: it returns to exit
    finally:
        remover.join()
        listener.close()
    assert time.monotonic() - started < 30  # the home's removal ended the wait, not the 600 s limit


def test_the_suite_finds_a_finetty_process_started_for_its_home(finetty_env):
    """What the session's last check sees (tests/conftest.py): a process with this home, until it ends."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "finetty-stand-in"],
                             env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        while child.pid not in [pid for pid, _ in finetty_processes(finetty_env)]:
            assert time.monotonic() < deadline, "the stand-in was not found"
            time.sleep(0.05)
    finally:
        child.kill()
        child.wait()
    assert child.pid not in [pid for pid, _ in finetty_processes(finetty_env)]
