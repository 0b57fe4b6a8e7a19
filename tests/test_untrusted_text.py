"""Text a person does not control never reaches their terminal raw (issue 19, reproductions 2 and 3).

Every field a file, a model folder, a dataset or a log controls is given an OSC 0 title, an OSC 52
clipboard write and an ``ESC [ 2 J``, plus text that is invalid rich markup (``[]starting[/]``). The CLI
runs on a pty, as in a terminal, and the bytes it writes are read back; the app is driven with Pilot and
what its screens render is read back. Neither may carry an escape sequence from the data.
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from finetty.core.text import as_markup, as_text, clean, one_line

from .conftest import REPO
from .tui_runs import FROZEN, upto, workers_done, write_run

EVIL = "\x1b]0;pwned-title\x07\x1b]52;c;cHduZWQ=\x07\x1b[2J\x9b2J[]starting[/][bold]"
NAME = EVIL.replace("/", "")
"""(a directory name has no ``/``)"""
#: What must never be written: each sequence the data carries (rich's own colours are ``ESC [ ... m``).
INJECTED = (b"\x1b]0;", b"\x1b]52;", b"\x1b[2J", "\x9b".encode(), b"\x9b", b"pwned-title")


def test_clean_drops_whole_sequences_and_shows_other_controls():
    assert clean("a\x1b]0;title\x07b\x1b]52;c;eA==\x1b\\c\x1b[2Jd") == "abcd"
    assert clean("\x9b31mred\x9d0;t\x9c!") == "red!"
    assert clean("bell\x07 nul\x00 del\x7f") == "bell\ufffd nul\ufffd del\ufffd"
    assert clean("tab\tkept\nnewline kept\r\nCRLF\rCR") == "tab\tkept\nnewline kept\nCRLF\nCR"
    assert one_line("two\nlines\tand a tab") == "two lines and a tab"
    assert clean("unterminated \x1b]0;title") == "unterminated "
    assert as_text("[]starting[/]").plain == "[]starting[/]"  # a Text: never parsed as markup
    from rich.console import Console

    console = Console(file=open(os.devnull, "w"), record=True, width=200)
    console.print(f"[red]x[/] {as_markup('[]starting[/] [bold]y')}")  # an f-string of markup: no MarkupError
    assert console.export_text().strip() == "x []starting[/] [bold]y"


def _event(kind: str, **fields) -> dict:
    return {"ts": FROZEN - 100, "type": kind, **fields}


def evil_runs(runs: Path) -> dict[str, Path]:
    """A failed run, a lost one and a starting one whose every text field carries :data:`EVIL`."""
    history = upto(10)
    for event in history:
        if event["type"] == "run_started":
            event["recipe"] = {**event["recipe"], "model": f"/models/tiny{EVIL}", "method": f"lora{EVIL}"}
        elif event["type"] == "data":
            event["dataset"] = f"/data/records{EVIL}.jsonl"
            event["format"] = f"alpaca{EVIL}"
    extra = [_event("warning", message=f"careful {EVIL}"),
             _event("checkpoint", step=10, path=f"checkpoints/step-000010{EVIL}"),
             _event("eval", step=10, loss=1.5, source="trainer")]
    log = f"loading {EVIL}\nTraceback: boom {EVIL}\n"
    made = {
        "failed": write_run(runs, f"failed{NAME}", history + extra + [_event("run_failed", reason=f"broke {EVIL}")],
                            log=log),
        "lost": write_run(runs, f"lost{NAME}", history + extra, log=log),
        "starting": write_run(runs, f"starting{NAME}", [e for e in history if e["type"] == "worker_started"] or
                              [_event("worker_started", pid=os.getpid(), resume=False)], log=log),
    }
    for run in made.values():
        recipe = run / "recipe.yaml"
        recipe.write_text(recipe.read_text() + f"# {EVIL}\n")
    return made


def on_pty(*args: str, cols: int = 220) -> tuple[int, bytes]:
    """``finetty ARGS`` with a pty as its terminal; its exit code and every byte it wrote."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES", "NO_COLOR")}
    process = subprocess.Popen([sys.executable, "-m", "finetty.core.cli", *args], stdin=slave, stdout=slave,
                               stderr=slave, cwd=REPO, env={**env, "TERM": "xterm-256color"}, close_fds=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=60), bytes(out)


def assert_nothing_injected(out: bytes) -> None:
    for sequence in INJECTED:
        assert sequence not in out, (sequence, out[-3000:])


def test_finetty_runs_and_attach_write_no_escape_from_the_data(tmp_path):
    runs = tmp_path / "runs"
    made = evil_runs(runs)
    lock = os.open(made["starting"] / "worker.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock, fcntl.LOCK_EX)  # a live worker: the run is starting (reproduction 2)
    try:
        code, out = on_pty("runs", "--runs-dir", str(runs))
    finally:
        os.close(lock)
    assert code == 0, out.decode(errors="replace")[-3000:]
    assert_nothing_injected(out)
    text = out.decode("utf-8", "replace")
    assert "broke" in text and "[]starting[]" in text and "loading" in text  # the reason, the names, the log

    code, out = on_pty("attach", str(made["failed"]))
    assert code == 1, out.decode(errors="replace")[-3000:]  # a failed run
    assert_nothing_injected(out)
    assert "broke" in out.decode("utf-8", "replace")


def test_following_a_run_in_the_foreground_writes_no_escape_from_the_data(tmp_path):
    """What ``finetty train`` prints while it follows (every event from the start): data, warning, checkpoint."""
    import io

    from rich.console import Console

    from finetty.core.run.follow import follow

    made = evil_runs(tmp_path / "runs")
    out = io.StringIO()
    end = follow(made["failed"], Console(file=out, force_terminal=True, width=200, highlight=False), poll_interval=0.01)
    assert end is not None and end["type"] == "run_failed"
    text = out.getvalue()
    assert_nothing_injected(text.encode())
    for seen in ("careful", "records", "step-000010"):  # the warning, data and checkpoint lines
        assert seen in text, text


def _rendered(app) -> str:
    """Every character the app's screen would draw now."""
    update = app.screen._compositor.render_update(full=True)
    return "".join(segment.text for strip in update.strips for segment in strip)


@pytest.mark.parametrize("which", ["failed", "lost"])
def test_the_app_draws_no_escape_from_the_data(tmp_path, which):
    import asyncio

    from finetty.tui.app import FinettyApp
    from finetty.tui.screens.monitor import MonitorScreen

    runs = tmp_path / "runs"
    made = evil_runs(runs)
    written: list[str] = []

    async def drive() -> list[str]:
        app = FinettyApp(runs=runs, first_run=False, clock=lambda: FROZEN, notify_write=written.append)
        screens = []
        async with app.run_test(size=(160, 48)) as pilot:
            table = app.screen.query_one("#runs-table")
            while table.row_count < len(made):
                await pilot.pause(0.05)
            keys = [table.coordinate_to_cell_key((row, 0)).row_key.value for row in range(table.row_count)]
            table.move_cursor(row=keys.index(made[which].name))
            await pilot.pause()
            screens.append(_rendered(app))  # the run table and the detail line (reason, log tail)
            await pilot.press("enter")
            while not (isinstance(app.screen, MonitorScreen) and app.screen.history.events):
                await pilot.pause(0.05)
            await workers_done(app)
            await pilot.pause()
            for tab in ("checkpoints", "log", "recipe", "warnings"):
                app.screen.action_tab(tab)
                await pilot.pause()
                screens.append(_rendered(app))  # header, status, stats and each tab
            app.notify(f"run {made[which].name} failed: broke {EVIL}")
            app.notifier("finetty: run failed", f"broke {EVIL}")
            await pilot.pause()
            screens.append(_rendered(app))
        return screens

    screens = asyncio.run(drive())
    for screen in screens:
        for sequence in INJECTED:
            assert sequence.decode("latin-1") not in screen, (sequence, screen[-2000:])
        assert "\x1b" not in screen and "\x07" not in screen
    assert any(("broke" if which == "failed" else "the worker ended") in screen for screen in screens)  # reason
    assert any("careful" in screen for screen in screens)  # the warning reached the Warnings tab
    assert any("Traceback: boom" in screen for screen in screens)  # the log tail
    for text in written:  # the bell and OSC 9/777 notifications: finetty's own sequences, never the data's
        assert "pwned-title" not in text and "\x1b]52" not in text and "\x1b[2J" not in text
