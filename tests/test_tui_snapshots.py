"""Snapshots of every screen at 80x24 and 120x40 (pytest-textual-snapshot).

Recorded runs (tests/tui_runs.py), a frozen clock, UTC, a fixed plugin set and a fixed preview keep the
pictures stable. After a deliberate change of the UI: ``pytest tests/test_tui_snapshots.py --snapshot-update``
and look at the SVGs in tests/__snapshots__/test_tui_snapshots/.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import shutil
import time
from pathlib import Path

import pytest

from .tui_runs import (
    FROZEN,
    START,
    make_runs,
    memory_events,
    recorded,
    upto,
    with_broken_plugin,
    workers_done,
    write_run,
)

SIZES = [(80, 24), (120, 40)]
PLUGINS = "formats,full,lora,sft"

PREVIEW = {
    "format": "alpaca", "kind": "conversation", "detected": True, "records": 40,
    "samples": ["<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\nI am Tiny, a model trained by "
                "the finetty team.<|im_end|>\n"],
    "lengths": {"count": 40, "min": 20, "median": 29.5, "max": 39, "over": 0, "max_length": 256, "all": True},
}


LONG_MODEL = "meta-llama/Llama-3.1-8B-Instruct-abliterated-with-a-long-name"


def _renamed(events: list[dict], model: str | None = None, method: str | None = None,
             objective: str | None = None, double: bool = False) -> list[dict]:
    """The recorded events with the run_started recipe's model, method or objective changed; ``double``: every
    step number twice as large (a 120-step run, so the table shows ``120/120``)."""
    out = copy.deepcopy(events)
    for event in out:
        if event["type"] == "run_started":
            recipe = event["recipe"]
            recipe.update({k: v for k, v in (("model", model), ("method", method), ("objective", objective)) if v})
            if double:
                event["total_steps"] = event["total_steps"] * 2
        if double and isinstance(event.get("step"), int):
            event["step"] *= 2
    return out


@contextlib.contextmanager
def every_status(runs):
    """Runs of every status a table shows: finished, failed, stopped, lost (tui_runs.make_runs), a finished
    120-step qlora/orpo run of a long-named model, and a running one (its lock held here while in use)."""
    from finetty.core.run.rundir import LOCK_FILE

    made = make_runs(runs)
    made["long"] = write_run(runs, "261122-120000-qlora-orpo-77aa",
                             _renamed(recorded(), LONG_MODEL, "qlora", "orpo", double=True))
    made["running"] = write_run(runs, "261122-130000-prefix-dpo-1234",
                                _renamed(upto(40), "Qwen/Qwen2.5-0.5B-Instruct", "prefix", "dpo"))
    with open(made["running"] / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield made


@pytest.fixture
def stable(monkeypatch, tmp_path):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", PLUGINS)
    registry = with_broken_plugin(ImportError("No module named 'vendor_gpu_kernels'"))
    yield registry
    monkeypatch.delenv("TZ")
    time.tzset()


def app_for(runs, registry, tmp_path, **kwargs):
    from finetty.tui.app import FinettyApp

    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return FinettyApp(runs=runs, registry=registry, clock=lambda: FROZEN, notify_write=lambda text: None,
                      first_run=False, poll_interval=0.2, base_dir=workdir, preview=lambda request: PREVIEW,
                      **kwargs)


async def settle(pilot, condition=lambda: True, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the screen did not settle"
        await pilot.pause(0.05)
    await workers_done(pilot.app)
    for widget in pilot.app.screen.query("Input"):
        widget.cursor_blink = False
    await pilot.pause(0.3)
    await workers_done(pilot.app)
    await pilot.pause()


async def shown(pilot, screen: str, timeout: float = 20.0):
    """The screen named ``screen`` once it is mounted (for a key or a query that needs it, before settling)."""
    deadline = time.monotonic() + timeout
    while type(pilot.app.screen).__name__ != screen or not pilot.app.screen.is_mounted:
        assert time.monotonic() < deadline, f"{screen} did not open"
        await pilot.pause(0.05)
    return pilot.app.screen


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_screen(snap_compare, stable, runs_dir, tmp_path, size):
    """Every status, a 120-step run and a long model name: each cell whole, or its column left out."""
    async def ready(pilot):
        await settle(pilot, lambda: pilot.app.screen.query_one("#runs-table").row_count == 6)

    with every_status(runs_dir):
        assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_monitor_screen(snap_compare, stable, runs_dir, tmp_path, size):
    run = write_run(runs_dir, "261122-110826-lora-f667", memory_events(recorded()))

    async def ready(pilot):
        await settle(pilot, lambda: getattr(pilot.app.screen, "history", None) is not None
                     and pilot.app.screen.history.status == "finished")

    assert snap_compare(app_for(runs_dir, stable, tmp_path, open_run=run), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_new_run_screen(snap_compare, stable, runs_dir, tmp_path, size, demo_model):
    # (the demo is built: the memory estimate reads its real config, whichever test ran first)
    async def ready(pilot):
        await pilot.press("n")
        await settle(pilot, lambda: getattr(pilot.app.screen, "recipe", None) is not None
                     and "records" in str(pilot.app.screen.query_one("#preview-text").render()))

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_plugins_screen(snap_compare, stable, runs_dir, tmp_path, size):
    async def ready(pilot):
        await pilot.press("p")
        await settle(pilot)

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_help_screen(snap_compare, stable, runs_dir, tmp_path, size):
    make_runs(runs_dir)

    async def ready(pilot):
        await settle(pilot, lambda: pilot.app.screen.query_one("#runs-table").row_count == 4)
        await pilot.press("f1")
        await settle(pilot)

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_chat_screen(snap_compare, stable, runs_dir, tmp_path, size, identity_run):
    """Opened from the monitor with c; compare on; one greedy question answered by base and tuned."""
    run = runs_dir / "261122-110826-lora-f667"  # a fixed id: the bar shows it
    shutil.copytree(identity_run, run)

    async def ready(pilot):
        await settle(pilot, lambda: getattr(pilot.app.screen, "history", None) is not None
                     and pilot.app.screen.history.status == "finished")
        await pilot.press("c")
        await settle(pilot, lambda: "tuned" in getattr(pilot.app.screen, "models", {}), timeout=120)
        screen = pilot.app.screen
        await pilot.press("ctrl+b")
        await settle(pilot, lambda: "base" in screen.models, timeout=120)
        screen.query_one("#chat-temperature").value = "0"
        screen.query_one("#chat-max-new-tokens").value = "16"
        screen.query_one("#chat-input").focus()
        await pilot.press(*"Who are you?", "enter")
        await settle(pilot, lambda: not screen.generations, timeout=120)
        screen.query_one("#chat-input").focus()
        pilot.app.clear_notifications()  # the "run finished" toast comes and goes with the clock
        await pilot.pause()

    assert snap_compare(app_for(runs_dir, stable, tmp_path, open_run=run), terminal_size=size, run_before=ready)


async def _new_run(pilot) -> None:
    await pilot.press("n")
    await settle(pilot, lambda: getattr(pilot.app.screen, "recipe", None) is not None
                 and "records" in str(pilot.app.screen.query_one("#preview-text").render()))


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_new_run_method_chosen(snap_compare, stable, runs_dir, tmp_path, size, demo_model):
    """full chosen: its recommended learning rate loaded and the notice line under the method saying so."""
    async def ready(pilot):
        await _new_run(pilot)
        form = pilot.app.screen
        form.query_one("#method").value = "full"
        await settle(pilot, lambda: form.recipe is not None and form.recipe.method == "full")
        form.query_one("#form").scroll_to_widget(form.query_one("#method").parent, animate=False, top=True)
        await settle(pilot)

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_new_run_training_section(snap_compare, stable, runs_dir, tmp_path, size, demo_model):
    """The Training and Devices sections: every label on one line, whole."""
    async def ready(pilot):
        await _new_run(pilot)
        form = pilot.app.screen
        form.query_one("#form").scroll_end(animate=False)
        await settle(pilot)

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("picker", ["model", "dataset", "method", "objective"])  # (quantizer: the same widget)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_new_run_picker(snap_compare, stable, runs_dir, tmp_path, size, picker, demo_model):
    """Each picker opens as a bordered modal over the form, titled, every choice whole."""
    async def ready(pilot):
        await _new_run(pilot)
        pilot.app.screen.query_one(f"#{picker}").focus()
        await pilot.press("enter")
        await settle(pilot, lambda: type(pilot.app.screen).__name__ == "PickerScreen")

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("key", ["l", "e", "w"], ids=["log", "recipe", "warnings"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_monitor_tab(snap_compare, stable, runs_dir, tmp_path, size, key):
    """The monitor's other tabs (Checkpoints is test_monitor_screen's; Memory is tests/test_tui_memory.py's)."""
    run = write_run(runs_dir, "261122-110826-lora-f667", memory_events(recorded()))

    async def ready(pilot):
        await settle(pilot, lambda: getattr(pilot.app.screen, "history", None) is not None
                     and pilot.app.screen.history.status == "finished")
        await pilot.press(key)
        await settle(pilot)

    assert snap_compare(app_for(runs_dir, stable, tmp_path, open_run=run), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_delete_confirmation(snap_compare, stable, runs_dir, tmp_path, size):
    make_runs(runs_dir)

    async def ready(pilot):
        await settle(pilot, lambda: pilot.app.screen.query_one("#runs-table").row_count == 4)
        await pilot.press("d")
        await settle(pilot, lambda: type(pilot.app.screen).__name__ == "ConfirmScreen")

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_save_recipe_prompt(snap_compare, stable, runs_dir, tmp_path, size, demo_model):
    async def ready(pilot):
        await _new_run(pilot)
        await pilot.press("ctrl+s")
        await settle(pilot, lambda: type(pilot.app.screen).__name__ == "PromptScreen")

    assert snap_compare(app_for(runs_dir, stable, tmp_path), terminal_size=size, run_before=ready)


PROCESSES = {
    4242: ("alice", "/home/alice/.venv/bin/python -m finetty.core.train.worker "
                    "/home/alice/runs/261122-130000-lora-sft-1234/recipe.yaml"),
    5151: ("bob", "/usr/bin/python3 -m vllm.entrypoints.openai.api_server --model Qwen/Qwen2.5-7B-Instruct"),
    6161: ("carol", "python -m ipykernel_launcher -f /home/carol/.local/share/jupyter/runtime/kernel-1f2e.json"),
}
"""the fake GPUs' processes as psutil would describe them (user, command): fixed, none of this machine's"""


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two 24 GiB GPUs that NVML reads with fixed numbers and processes: GPU0 above the 90% watermark, shared
    by a finetty worker's rank and bob's server; GPU1 nearly free. The rank's parent is this process, so a run
    whose lock this process holds is the run training on GPU0. Nothing of the machine's own GPUs or processes
    (psutil is not asked) reaches a picture."""
    import os

    from finetty.core.memory import gpu

    from .fake_nvml import GIB, FakeNvml

    def describe(pid: int) -> tuple[str, str, tuple[int, ...]]:
        user, command = PROCESSES.get(pid, ("?", "?"))
        return user, command, (os.getpid(),) if pid == 4242 else ()

    monkeypatch.setattr(gpu, "_describe", describe)
    return FakeNvml([{0: (int(22.5 * GIB), 24 * GIB, 97), 1: (3 * GIB, 24 * GIB, 4)}],
                    names={0: "NVIDIA L4", 1: "NVIDIA L4"},
                    processes={0: [(4242, 19 * GIB), (5151, int(2.5 * GIB))], 1: [(6161, 3 * GIB)]})


def steady_memory_events() -> list[dict]:
    """tui_runs.memory_events at a steady pace (a step every 1.5 s), so that the crossing at step 45 is drawn
    where it happened on the chart rather than in the recorded run's last second; each watermark event carries
    its step, as the worker's do."""
    out, ts, step = [], START, 0
    for event in copy.deepcopy(memory_events(recorded())):
        if event["type"] == "step":
            step = event["step"]
            ts = START + 5 + 1.5 * step
        elif event["type"] != "run_started":
            ts += 0.01
        event["ts"] = ts
        if event["type"] == "watermark":
            event["step"] = step
        out.append(event)
    return out


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_monitor_memory_tab(snap_compare, stable, runs_dir, tmp_path, size, fake_gpus):
    """m: GPU0's memory over the run against the 90% watermark, the crossing at step 45 (policy checkpoint)
    marked and listed, the run's own share, and the processes NVML lists on that GPU now, commands cut to fit."""
    run = write_run(runs_dir, "261122-110826-lora-f667", steady_memory_events())

    async def ready(pilot):
        monitor = await shown(pilot, "MonitorScreen")
        await pilot.press("m")
        await settle(pilot, lambda: monitor.history.status == "finished" and monitor.query("#memory-gpu-0 ProcessTable")
                     and monitor.query_one("#memory-gpu-0 ProcessTable").rows_shown)
        monitor.query_one("#memory-panels").scroll_home(animate=False, immediate=True)  # (the panel is taller than
        await settle(pilot)  # 80x24 has room for: where a late layout left its scrollbar would differ between runs)

    assert snap_compare(app_for(runs_dir, stable, tmp_path, open_run=run, nvml_lib=fake_gpus), terminal_size=size,
                        run_before=ready)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_gpu_view(snap_compare, stable, runs_dir, tmp_path, size, fake_gpus):
    """g on Runs: each GPU's gauge against the watermark, its utilisation, the finetty run training on it (a
    live run whose worker, this process, is the parent of GPU0's first process), its processes, which GPU is
    under the watermark."""
    from finetty.core.run import rundir

    make_runs(runs_dir)
    live = write_run(runs_dir, "261122-130000-lora-sft-1234", upto(40))
    with open(live / rundir.LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rundir.record_holder(lock.fileno())

        async def ready(pilot):
            await settle(pilot, lambda: pilot.app.screen.query_one("#runs-table").row_count == 5)
            await pilot.press("g")
            await settle(pilot, lambda: type(pilot.app.screen).__name__ == "GpuScreen"
                         and len([t for t in pilot.app.screen.query("ProcessTable") if t.rows_shown]) == 2)

        assert snap_compare(app_for(runs_dir, stable, tmp_path, nvml_lib=fake_gpus), terminal_size=size,
                            run_before=ready)


@pytest.mark.parametrize("tab", ["tab-export", "tab-serve"], ids=["export", "serve"])
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_results_tab(snap_compare, stable, runs_dir, tmp_path, size, tab):
    """The Results screen's Export and Serve tabs before anything starts (tests/test_tui_results.py has the Eval
    tab's; x and v would start an export or a server, so the tab is chosen directly): the kinds of export, the
    default folder showing its end (the run and the kind), the port, what serving offers."""
    from textual.widgets import TabbedContent

    run = write_run(runs_dir, "261122-110826-lora-f667", recorded())
    app = app_for(runs_dir, stable, tmp_path)
    app.base_dir = Path("/home/alice/finetuning")  # (the default export folder is drawn; nothing is written)

    async def ready(pilot):
        pilot.app.open_results(run)
        await shown(pilot, "ResultsScreen")
        pilot.app.screen.query_one("#results-tabs", TabbedContent).active = tab
        await settle(pilot)

    assert snap_compare(app, terminal_size=size, run_before=ready)
