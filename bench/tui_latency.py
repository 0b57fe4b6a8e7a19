"""The terminal app in a real pseudo-terminal: each screen's first frame, and key-to-repaint latency while a run trains.

    python bench/tui_latency.py [--launches 5] [--keys 60]
    python bench/tui_latency.py --quick     # only the screens' first frames, 2 launches each

The app runs as ``finetty`` does (``python -m finetty.core.cli``, Textual's own
Linux driver) on an 80x24 pty this script owns, exactly what sshd gives it.
A reader thread timestamps every byte the app writes.

1. First frame of each screen: from starting the process to the moment the
   screen's header (``finetty — runs``) or a text only it shows has been
   written, in a fresh process each time (interpreter start and imports
   included), with nothing training. Runs; New run on a fresh
   ``FINETTY_HOME`` (a newcomer's first screen); the monitor of a finished
   run (``run_app(open_run=...)``: the CLI has no verb for it); Plugins, Help,
   the GPU view and Chat, each opened by its key as soon as Runs is up (Chat
   has no CLI verb that opens the app). Each is timed from the process start
   and from the key, and again to the moment the screen is *filled* (what its
   workers read after the first frame: the New run form, the plugin table,
   the run's status line, the GPU readings).
2. Launch to first step: the New run screen opened as a newcomer sees it, 8 s
   to "choose", ctrl+l, and the seconds to the run's first optimizer step,
   with the standby worker (core/run/standby.py) and without it, alternating.
3. Key to repaint: with a LoRA run of the tiny demo training in the
   background (a detached worker on both cores, its events followed live by
   the Runs screen), the script types ``p`` (open Plugins) and ``b`` (back to
   Runs), alternately, and times each key to the first write that shows the
   new screen's header. A whole-screen switch is the most a key repaints;
   moving a cursor repaints less.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RUNS_MARK = "finetty — runs".encode()
PLUGINS_MARK = "finetty — plugins".encode()
F1 = b"\x1bOP"
MONITOR = ("import sys; from pathlib import Path; from finetty.tui.app import run_app; "
           "sys.exit(run_app(open_run=Path(sys.argv[1])))")

#: (screen, how it opens, first-frame mark, filled mark); how: "start" (the app opens on it), a key typed once
#: Runs is up, or "monitor" / "fresh" (the monitor of a finished run; the app on a fresh FINETTY_HOME)
#: seconds between Runs' first frame and a key that opens another screen: a person reads the screen first
SETTLE = 1.0

SCREENS = (
    ("Runs", "start", RUNS_MARK, None),  # filled: the finished run's row (its id)
    ("New run (fresh home)", "fresh", "finetty — new run".encode(), b"Save recipe"),
    ("Monitor (finished run)", "monitor", "finetty — run ".encode(), b"finished"),  # (its status, read)
    ("Plugins", b"p", PLUGINS_MARK, (b"every plugin loaded", b"provides")),
    ("Help", F1, b"Keys on Runs", b"Keys on Runs"),
    ("GPUs", b"g", "finetty — GPUs".encode(), (b"No GPU", b"utilisation")),
    ("Chat", b"c", b"Ask something", b"Ask something"),
)


ESCAPES = re.compile(rb"\x1b\[[0-9;?<>=$]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>]")


def _text(data: bytes) -> bytes:
    return ESCAPES.sub(b"", data)


class Terminal:
    """The app on a pty of ``cols`` x ``rows``; ``output`` collects (time, bytes) as they arrive."""

    def __init__(self, env: dict, cols: int = 80, rows: int = 24, argv: list[str] | None = None):
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.started = time.perf_counter()
        self.process = subprocess.Popen(argv or [sys.executable, "-m", "finetty.core.cli"], stdin=slave,
                                        stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True)
        os.close(slave)
        self.chunks: list[tuple[float, bytes]] = []
        self.lock = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            now = time.perf_counter()
            with self.lock:
                if not data:
                    self.chunks.append((now, b""))
                    self.lock.notify_all()
                    return
                self.chunks.append((now, data))
                self.lock.notify_all()

    def wait_for(self, mark: bytes | tuple[bytes, ...], since: int, timeout: float = 30.0) -> tuple[float, int]:
        """The time of the first chunk from index ``since`` on after which ``mark`` (or one of several) has been
        written (as text on the screen: escape sequences between the styled pieces removed), and the index after it."""
        marks = mark if isinstance(mark, tuple) else (mark,)
        deadline = time.perf_counter() + timeout
        with self.lock:
            while True:
                seen = b"".join(data for _, data in self.chunks[since:])
                if any(m in _text(seen) for m in marks):
                    total = b""
                    for index in range(since, len(self.chunks)):
                        total += self.chunks[index][1]
                        if any(m in _text(total) for m in marks):
                            return self.chunks[index][0], index + 1
                if self.chunks and self.chunks[-1][1] == b"":
                    raise RuntimeError("the app exited: " + seen[-2000:].decode(errors="replace"))
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise TimeoutError(f"no {mark!r} within {timeout} s")
                self.lock.wait(left)

    def type(self, key: bytes) -> tuple[float, int]:
        with self.lock:
            index = len(self.chunks)
        sent = time.perf_counter()
        os.write(self.master, key)
        return sent, index

    def close(self) -> None:
        try:
            os.write(self.master, b"\x11")  # ctrl+q
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        os.close(self.master)


def first_frames(env: dict, launches: int) -> list[float]:
    times = []
    for _ in range(launches):
        term = Terminal(env)
        try:
            at, _ = term.wait_for(RUNS_MARK, 0)
            times.append(at - term.started)
        finally:
            term.close()
    return times


def screen_frame(env: dict, how, mark: bytes, filled, run_dir: Path, settle: float | None = None
                 ) -> dict[str, float | None]:
    """One fresh process: seconds from its start (and from the key, if one opens the screen) to the screen's
    first frame, and from its start to the screen filled. A key is typed ``settle`` s after Runs' first frame
    (a person reading it; the app has done its after-the-first-frame work), or the moment it appears (None)."""
    argv = [sys.executable, "-c", MONITOR, str(run_dir)] if how == "monitor" else None
    term = Terminal(env, argv=argv)
    try:
        key_at = None
        index = 0
        if isinstance(how, bytes):
            _, index = term.wait_for(RUNS_MARK, 0)
            if settle:
                time.sleep(settle)
            key_at, index = term.type(how)
        at, _ = term.wait_for(mark, index)
        full, _ = term.wait_for(filled, index, timeout=120)  # (the first frame may hold it already)
        return {"start": at - term.started, "key": (at - key_at) if key_at is not None else None,
                "filled": max(at, full) - term.started}
    finally:
        term.close()


def screen_frames(env: dict, launches: int, run_dir: Path, work: Path) -> dict[str, list[dict]]:
    """Every screen of :data:`SCREENS`, ``launches`` fresh processes each (New run: a new home each time)."""
    out: dict[str, list[dict]] = {}
    for name, how, mark, filled in SCREENS:
        filled = filled or run_dir.name.encode()
        for n in range(launches):
            screen_env = env
            if how == "fresh":
                screen_env = dict(env, FINETTY_HOME=str(work / f"fresh-{n}"))
            try:
                frame = screen_frame(screen_env, how, mark, filled, run_dir, settle=SETTLE)
                if isinstance(how, bytes):  # and the worst case: the key typed the moment Runs appears
                    at_once = screen_frame(screen_env, how, mark, filled, run_dir)
                    frame.update(at_once_key=at_once["key"], at_once_start=at_once["start"])
                out.setdefault(name, []).append(frame)
            except (TimeoutError, RuntimeError) as exc:  # one screen that never came: say so, measure the rest
                out.setdefault(name, []).append({"start": None, "key": None, "filled": None, "error": str(exc)})
            finally:
                if how == "fresh":  # the form starts a standby for that home: end it with the home
                    subprocess.run([sys.executable, "-c", "from finetty.core.run import standby; standby.stop()"],
                                   env=screen_env, capture_output=True)
    return out


def frames_table(frames: dict[str, list[dict]]) -> str:
    """A markdown table: each screen's median first frame from the start and from its key, and filled."""
    def ms(values: list) -> str:
        values = [v for v in values if v is not None]
        return f"{statistics.median(values) * 1e3:.0f}" if values else "-"

    lines = ["| screen (80x24 pty) | opened by | first frame, ms | key typed at once: from the key (from the start), ms"
             " | filled from start, ms | n |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, runs in frames.items():
        failed = [r["error"][:60] for r in runs if r.get("error")]
        keyed = any(r.get("key") is not None for r in runs)
        first = ms([r["key"] for r in runs]) if keyed else ms([r["start"] for r in runs])
        at_once = (f"{ms([r.get('at_once_key') for r in runs])} ({ms([r.get('at_once_start') for r in runs])})"
                   if keyed else "-")
        lines.append(f"| {name} | {'its key, on Runs' if keyed else 'the process start'} | {first} | {at_once} | "
                     f"{ms([r['filled'] for r in runs]) if not keyed else '-'} | {len(runs) - len(failed)} |"
                     + (f" failed: {failed[0]}" if failed else ""))
    return "\n".join(lines)


def key_latencies(env: dict, keys: int) -> list[float]:
    term = Terminal(env)
    latencies = []
    try:
        _, index = term.wait_for(RUNS_MARK, 0)
        time.sleep(1.0)  # let the first refreshes pass
        for n in range(keys):
            key, mark = (b"p", PLUGINS_MARK) if n % 2 == 0 else (b"b", RUNS_MARK)
            sent, index = term.type(key)
            at, _ = term.wait_for(mark, index)
            latencies.append(at - sent)
            time.sleep(0.1 + 0.05 * (n % 3))  # keys at a person's pace, not in phase with the app's timers
    finally:
        term.close()
    return latencies


def launch_to_first_step(runs: Path, standby: bool, think: float = 8.0) -> float:
    """Seconds from ctrl+l on the New run screen to the run's first optimizer step, the form opened ``think`` s before.

    The app runs headless in this process (Pilot); the worker is a real detached process either way."""
    import asyncio

    from textual.widgets import Input

    from finetty.tui.app import FinettyApp
    from finetty.tui.screens.new_run import NewRunScreen

    async def scenario() -> float:
        os.environ["FINETTY_STANDBY"] = "1" if standby else "0"
        app = FinettyApp(runs=runs, first_run=True, notify_write=lambda text: None)
        async with app.run_test(size=(80, 24)) as pilot:
            while not isinstance(app.screen, NewRunScreen):
                await pilot.pause(0.05)
            form = app.screen
            form.query_one("#train-max_steps-editor", Input).value = "5"
            form.query_one("#train-logging_steps-editor", Input).value = "1"
            started = time.monotonic()
            while form.recipe is None or form.recipe.train["max_steps"] != 5 or time.monotonic() - started < think:
                await pilot.pause(0.05)
            before = set(runs.iterdir()) if runs.exists() else set()
            pressed = time.time()
            await pilot.press("ctrl+l")
            deadline = time.monotonic() + 120
            while True:
                new = [p for p in (set(runs.iterdir()) - before) if (p / "events.jsonl").exists()]
                for run in new:
                    for line in (run / "events.jsonl").read_text().splitlines():
                        if '"type": "step"' in line:
                            first = json.loads(line)["ts"] - pressed
                            while '"run_finished"' not in (run / "events.jsonl").read_text():
                                await pilot.pause(0.1)
                            return first
                if time.monotonic() > deadline:
                    raise RuntimeError("the launched run did not reach its first step")
                await pilot.pause(0.02)

    return asyncio.run(scenario())


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def measure(launches: int = 5, keys: int = 60, work: Path | None = None, quick: bool = False) -> dict:
    work = Path(work or tempfile.mkdtemp(prefix="finetty-tui-bench-"))
    home = work / "home"
    env = dict(os.environ, FINETTY_HOME=str(home), TERM="xterm-256color", COLORTERM="truecolor",
               HF_HUB_OFFLINE="1", FINETTY_NOTIFY="0", LANG="C.UTF-8", LC_ALL="C.UTF-8")
    env.pop("TEXTUAL", None)
    # finetty's bytecode compiled, as ``pip install`` leaves it (an environment that sets PYTHONDONTWRITEBYTECODE
    # would otherwise compile every module of the app from source at each start, a tenth of a second)
    subprocess.run([sys.executable, "-m", "compileall", "-q"] + [str(REPO / d) for d in ("core", "tui", "plugins")],
                   check=True, capture_output=True)
    cli = [sys.executable, "-m", "finetty.core.cli"]
    # one finished run so the app opens on Runs (not the first-run New run screen)
    subprocess.run(cli + ["train", str(REPO / "recipes/demo-lora.yaml"), "--set", "train.max_steps=4"], env=env,
                   check=True, capture_output=True)
    os.environ.update(env)  # the app below runs in this process: the same environment as the commands
    from finetty.core.run import standby

    deadline = time.monotonic() + 60
    while not standby.ready() and time.monotonic() < deadline:  # that launch left one: let it finish importing
        time.sleep(0.2)
    run_dir = next(p for p in (home / "runs").iterdir() if (p / "recipe.yaml").is_file())
    screens = screen_frames(env, launches, run_dir, work)
    if quick:
        standby.stop()
        shutil.rmtree(work, ignore_errors=True)
        return {"screens": screens}
    frames = first_frames(env, launches)
    launch = {"cold": [], "standby": []}
    for round_ in range(max(1, launches // 2)):
        for warm in ((False, True) if round_ % 2 == 0 else (True, False)):
            launch["standby" if warm else "cold"].append(launch_to_first_step(home / "runs", warm))
    out = subprocess.run(cli + ["train", str(REPO / "recipes/demo-lora.yaml"), "--detach", "--set",
                                "train.max_steps=100000", "--set", "train.save_steps=100000"],
                         env=env, check=True, capture_output=True, text=True)
    run_id = out.stdout.strip().splitlines()[-1]
    events = home / "runs" / run_id / "events.jsonl"
    deadline = time.monotonic() + 120
    while '"type": "step"' not in (events.read_text() if events.exists() else ""):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the background run did not start training; see {events.parent / 'worker.log'}")
        time.sleep(0.2)
    try:
        latencies = key_latencies(env, keys)
        steps = sum(1 for line in events.read_text().splitlines() if '"type": "step"' in line)
    finally:
        subprocess.run(cli + ["stop", run_id], env=env, capture_output=True)
        from finetty.core.run import rundir

        deadline = time.monotonic() + 60
        while rundir.is_live(events.parent) and time.monotonic() < deadline:  # its end leaves a standby: wait
            time.sleep(0.2)
        standby.stop()
    shutil.rmtree(work, ignore_errors=True)
    return {"screens": screens, "first_frame": frames, "first_frame_median": statistics.median(frames),
            "latencies": latencies, "latency_median": statistics.median(latencies), "latency_p95": p95(latencies),
            "background_steps": steps, "launch_cold": launch["cold"], "launch_standby": launch["standby"],
            "launch_cold_median": statistics.median(launch["cold"]),
            "launch_standby_median": statistics.median(launch["standby"])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--launches", type=int, default=5)
    parser.add_argument("--keys", type=int, default=60)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true",
                        help="only each screen's first frame, 2 launches each (unless --launches says)")
    args = parser.parse_args(argv)
    launches = 2 if args.quick and "--launches" not in (argv or sys.argv) else args.launches
    result = measure(launches, args.keys, quick=args.quick)
    if args.json:
        print(json.dumps(result))
        return 0
    print(frames_table(result["screens"]))
    if args.quick:
        return 0
    print(f"first frame: median {result['first_frame_median'] * 1e3:.0f} ms "
          f"({', '.join(f'{t * 1e3:.0f}' for t in result['first_frame'])} ms)")
    print(f"New run, ctrl+l to the first optimizer step: cold worker {result['launch_cold_median']:.2f} s, "
          f"standby worker {result['launch_standby_median']:.2f} s (medians; the form open 8 s first)")
    print(f"key to repaint while training ({result['background_steps']} steps trained meanwhile): "
          f"median {result['latency_median'] * 1e3:.1f} ms, p95 {result['latency_p95'] * 1e3:.1f} ms "
          f"over {len(result['latencies'])} keys")
    return 0


if __name__ == "__main__":
    sys.exit(main())
