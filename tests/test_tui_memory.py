"""GPU memory as a person watches it: the monitor's Memory tab, each GPU's processes, and the GPU view (``g``).

The run's memory comes from recorded events (memory rising past the 90% watermark, the policy that fired);
the machine's GPUs and their processes from the fake NVML (tests/fake_nvml.py), with real processes behind
its pids so that psutil names their user and command.
"""

from __future__ import annotations

import asyncio
import fcntl
import getpass
import os
import subprocess
import sys
import threading
import time

import pytest

from .fake_nvml import GIB, FakeNvml
from .tui_runs import FROZEN, recorded, write_run

HOSTILE = "\x1b]0;owned\x07\x1b[2J[bold red]fake[/] train.py"
"""a command line that would set the window title, clear the screen and be read as markup"""


def rising_memory(events: list[dict], gpus: int = 1, cross_at: int = 50) -> list[dict]:
    """A memory sample after each step: GPU 0 rises from 60% to 96% of 24 GiB and crosses the 90% watermark at
    ``cross_at``, its first sample at 90% (policy checkpoint); the run's own share is 2 GiB under the total (another process holds it)."""
    out = []
    for event in events:
        out.append(event)
        if event["type"] != "step":
            continue
        step = event["step"]
        fraction = 0.6 + 0.36 * step / 60
        samples = [{"index": i, "name": f"Fake L4 {i}", "used": int(fraction * 24 * GIB) if i == 0 else 3 * GIB,
                    "total": 24 * GIB, "util": 90.0,
                    "process_used": int(fraction * 24 * GIB) - 2 * GIB if i == 0 else 0} for i in range(gpus)]
        out.append({"ts": event["ts"] + 0.01, "type": "memory", "step": step, "watermark": 0.9, "gpus": samples,
                    "host": {"used": 9 * GIB, "total": 32 * GIB, "process_rss": 3 * GIB, "cpu_percent": 100.0}})
        if step == cross_at:
            out.append({"ts": event["ts"] + 0.02, "type": "watermark", "gpu": 0, "fraction": round(fraction, 4),
                        "watermark": 0.9, "state": "crossed", "policy": "checkpoint", "step": step,
                        "used": samples[0]["used"], "total": 24 * GIB})
    return out


RANKED = ("import subprocess, sys, time; rank = subprocess.Popen(['rank-of-the-live-run', '-c', "
          "'import sys; sys.stdin.read()'], executable=sys.executable, stdin=subprocess.PIPE); "
          "print(rank.pid, flush=True); time.sleep(120)")
"""a stand-in worker with one rank: it prints the rank's pid"""


def host_only(events: list[dict]) -> list[dict]:
    out = []
    for event in events:
        out.append(event)
        if event["type"] == "step":
            out.append({"ts": event["ts"] + 0.01, "type": "memory", "step": event["step"], "watermark": 0.9,
                        "gpus": [], "host": {"used": (8 + event["step"] / 30) * GIB, "total": 32 * GIB,
                                             "process_rss": int(1.5 * GIB), "cpu_percent": 100.0}})
    return out


@pytest.fixture
def sleeper():
    """A real process with a hostile command line (psutil reads it as nvitop would)."""
    process = subprocess.Popen([HOSTILE, "-c", "import time; time.sleep(120)"], executable=sys.executable)
    yield process
    process.kill()
    process.wait()


def rendered(app) -> str:
    """Every character the app's screen would draw now."""
    update = app.screen._compositor.render_update(full=True)
    return "".join(segment.text for strip in update.strips for segment in strip)


def make_app(runs, nvml, **kwargs):
    from finetty.tui.app import FinettyApp

    kwargs.setdefault("first_run", False)
    return FinettyApp(runs=runs, clock=lambda: FROZEN, notify_write=lambda text: None,
                      preview=lambda request: {"error": "no preview in this test"}, nvml_lib=nvml, **kwargs)


async def until(pilot, condition, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)


def test_memory_tab_draws_memory_over_time_the_watermark_the_crossing_and_the_processes(tmp_path, sleeper):
    from textual.widgets import Static

    from finetty.tui.screens.monitor import MonitorScreen
    from finetty.tui.widgets.memory_chart import DevicePanel, MemoryChart, ProcessTable

    run = write_run(tmp_path / "runs", "261122-110826-lora-f667", rising_memory(recorded()))
    nvml = FakeNvml([{0: (int(0.96 * 24 * GIB), 24 * GIB, 90)}], names={0: "Fake L4 0"},
                    processes={0: [(os.getpid(), int(4 * GIB)), (sleeper.pid, 2 * GIB)]})

    async def scenario():
        app = make_app(tmp_path / "runs", nvml)
        async with app.run_test(size=(80, 24)) as pilot:
            app.open_monitor(run)
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
            monitor = app.screen
            await until(pilot, lambda: monitor.history.status == "finished", what="the history")
            await pilot.press("m")
            await until(pilot, lambda: monitor.query("#memory-gpu-0"), what="GPU 0's panel")
            await until(pilot, lambda: not monitor.query_one("#monitor-top").display, what="the tab to take the room")
            panel = monitor.query_one("#memory-gpu-0", DevicePanel)
            chart = panel.query_one(MemoryChart)
            table = panel.query_one(ProcessTable)
            await until(pilot, lambda: table.rows_shown, what="the process table")

            # memory over time, all processes and the run's own share, against the 24 GiB total
            used = chart.lines["all processes"]
            own = chart.lines["this run"]
            assert len(used) == len([e for e in recorded() if e["type"] == "step"])
            assert used[0][1] < 0.9 * 24 < used[-1][1], "memory rose past the watermark"
            assert all(o == pytest.approx(u - 2, abs=0.01) for (_, u), (_, o) in zip(used, own))
            assert chart.watermark == 0.9
            # the crossing marked where it happened, with the policy that fired
            [(x, label)] = chart.marks
            steps = [e["step"] for e in recorded() if e["type"] == "step"]
            assert x == pytest.approx(used[steps.index(50)][0], abs=0.05)  # beside step 50's sample
            assert label.startswith("watermark crossed at step 50: policy checkpoint")
            legend = str(panel.query_one(".legend", Static).render())
            assert "watermark crossed at step 50: policy checkpoint" in legend
            assert "this run" in legend and "others 2.0 GiB" in legend
            assert "━ all processes  ━ this run  ─ watermark 90%  │ crossing" in legend  # (the key, under the chart)
            assert "this run" not in chart.plt.build()  # (no legend box over the lines)

            # the processes NVML lists, with psutil's user and command; hostile text made harmless
            rows = {pid: (user, mem, command) for pid, user, mem, _, command in table.rows_shown}
            assert set(rows) == {os.getpid(), sleeper.pid}
            assert rows[os.getpid()][:2] == (getpass.getuser()[:12], "4.0 GiB")
            assert rows[sleeper.pid][1] == "2.0 GiB"
            command = rows[sleeper.pid][2]
            assert "[bold red]fake[/] train.py" in command and "\x1b" not in command and "\x07" not in command
            await pilot.pause()
            screen = rendered(app)
            assert "[bold red]fake[/]" in screen and "\x1b" not in screen and "\x07" not in screen  # as written

    asyncio.run(scenario())


def test_without_a_gpu_the_memory_tab_charts_host_ram(tmp_path):
    from finetty.tui.screens.monitor import MonitorScreen
    from finetty.tui.widgets.memory_chart import DevicePanel, MemoryChart

    run = write_run(tmp_path / "runs", "261122-110826-lora-f667", host_only(recorded()))

    async def scenario():
        app = make_app(tmp_path / "runs", FakeNvml([{}], no_driver=True))
        async with app.run_test(size=(80, 24)) as pilot:
            app.open_monitor(run)
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
            monitor = app.screen
            await until(pilot, lambda: monitor.history.status == "finished", what="the history")
            await pilot.press("m")
            await until(pilot, lambda: monitor.query("#memory-host"), what="the host RAM panel")
            panel = monitor.query_one("#memory-host", DevicePanel)
            chart = panel.query_one(MemoryChart)
            assert chart.title == "host RAM"
            assert chart.lines["this run"][0][1] == pytest.approx(1.5)
            assert chart.lines["all processes"][-1][1] > chart.lines["all processes"][0][1]
            assert "no GPU in this run" in str(panel.query_one(".legend").render())
            assert not monitor.query("#memory-gpu-0")

    asyncio.run(scenario())


def test_g_on_runs_opens_the_gpu_view_with_each_gpus_processes_and_the_runs_on_it(tmp_path, sleeper):
    """A live run (its lock held, its holder recorded) whose worker is the parent of a GPU process is named."""
    from finetty.core.run import rundir
    from finetty.tui.screens.gpu import GpuScreen
    from finetty.tui.screens.help import HelpScreen
    from finetty.tui.screens.runs import RunsScreen
    from finetty.tui.widgets.memory_chart import ProcessTable

    runs = tmp_path / "runs"
    live = write_run(runs, "261122-120000-lora-11ve", [e for e in recorded() if e["type"] in ("run_started", "step")
                                                      and (e.get("step") or 0) <= 10])
    worker = subprocess.Popen([sys.executable, "-c", RANKED], stdout=subprocess.PIPE, text=True)
    rank = int(worker.stdout.readline())
    fd = os.open(live / rundir.LOCK_FILE, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (held here: what is_live asks) for the worker it names
    rundir.record_holder(fd, worker.pid)
    nvml = FakeNvml([{0: (22 * GIB, 24 * GIB, 97), 1: (3 * GIB, 24 * GIB, 0)}],
                    names={0: "Fake L4 0", 1: "Fake L4 1"},
                    processes={0: [(rank, int(18 * GIB)), (sleeper.pid, 2 * GIB)], 1: [(sleeper.pid, GIB)]})

    async def scenario():
        app = make_app(runs, nvml)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen) and app.tracker.summaries, what="Runs")
            await pilot.press("g")
            await until(pilot, lambda: isinstance(app.screen, GpuScreen), what="the GPU view")
            view = app.screen
            await until(pilot, lambda: view.query(ProcessTable) and all(t.rows_shown for t in view.query(ProcessTable)),
                        what="the process tables")
            status = str(view.query_one("#gpu-status").render())
            assert "2 GPUs" in status and "watermark 90%" in status and "under it: GPU1" in status
            heads = [str(h.render()) for h in view.query(".gpu-head")]
            assert "GPU0 Fake L4 0" in heads[0] and "22.0/24.0 GiB" in heads[0] and "utilisation 97%" in heads[0]
            assert "ABOVE WATERMARK" in heads[0] and "ABOVE WATERMARK" not in heads[1]
            assert f"runs: {live.name}" in heads[0] and "none of finetty's" in heads[1]
            first, second = (t.rows_shown for t in view.query(ProcessTable))
            assert [(pid, mem, run) for pid, _, mem, run, _ in first] == [(rank, "18.0 GiB", live.name),
                                                                         (sleeper.pid, "2.0 GiB", "")]
            assert "rank-of-the-live-run" in first[0][4]
            assert [pid for pid, *_ in second] == [sleeper.pid]
            assert all("\x1b" not in row[4] for row in first + second)
            await pilot.press("f1")  # the GPU view's keys are listed, built from its bindings
            await until(pilot, lambda: isinstance(app.screen, HelpScreen))
            assert {binding_id for _, _, binding_id in app.screen.keys} >= {"gpus.back", "gpus.reread"}
            await pilot.press("escape")
            await pilot.press("g")  # g again (or escape) goes back to Runs
            await until(pilot, lambda: isinstance(app.screen, RunsScreen), what="Runs again")

    try:
        asyncio.run(scenario())
    finally:
        os.close(fd)
        worker.kill()  # (its rank ends when its stdin, the worker's pipe, closes)
        worker.wait()


def test_the_gpu_view_says_when_there_is_no_gpu(tmp_path):
    from finetty.tui.screens.gpu import GpuScreen

    async def scenario():
        app = make_app(tmp_path / "runs", FakeNvml([{}], no_driver=True))
        async with app.run_test(size=(80, 24)) as pilot:
            app.action_gpus()
            await until(pilot, lambda: isinstance(app.screen, GpuScreen) and app.screen.readings is not None)
            assert "No GPU" in str(app.screen.query_one("#gpu-status").render())

    asyncio.run(scenario())


def test_new_run_and_plugins_draw_their_first_frame_while_the_plugins_are_still_being_discovered(tmp_path,
                                                                                                   monkeypatch):
    """Discovery held back: the screens' headers and a loading line are up, then the screens themselves."""
    from finetty.core.plugin import registry as registry_mod
    from finetty.tui.screens.loading import LoadingScreen
    from finetty.tui.screens.new_run import NewRunScreen
    from finetty.tui.screens.plugins import PluginsScreen

    release = threading.Event()
    real = registry_mod.load_plugins

    def slow_discovery(*args, **kwargs):
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry_mod, "load_plugins", slow_discovery)
    monkeypatch.setattr(NewRunScreen, "_gpus", staticmethod(lambda: []))

    async def scenario():
        app = make_app(tmp_path / "runs", None, first_run=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, LoadingScreen), what="New run's first frame")
            await pilot.pause(0.3)
            assert isinstance(app.screen, LoadingScreen) and app.screen.sub_title == "new run"
            assert "loading the plugins" in str(app.screen.query_one("#loading-status").render())
            await pilot.press("escape")  # leaving first is not pulled back
            await pilot.press("f2")
            await until(pilot, lambda: isinstance(app.screen, LoadingScreen) and app.screen.sub_title == "plugins")
            release.set()
            await until(pilot, lambda: isinstance(app.screen, PluginsScreen), what="Plugins")
            assert len(app.screen_stack) == 3  # (the default screen, Runs, Plugins): no New run came back
            await pilot.press("escape")
            app.new_run()
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen), what="the New run form")
            form = app.screen
            await until(pilot, lambda: form.recipe is not None or form.problem, what="the form checked")

    asyncio.run(scenario())
