"""The terminal app driven with Textual's Pilot: what a person does, and what the screen then shows."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from finetty.core.run import queue, rundir
from finetty.core.run.events import EventWriter

from .conftest import events as run_events
from .tui_runs import FROZEN, START, make_runs, memory_events, recorded, with_broken_plugin, write_run


def make_app(runs: Path, **kwargs):
    from finetty.tui.app import FinettyApp

    kwargs.setdefault("first_run", False)
    kwargs.setdefault("clock", lambda: FROZEN)
    kwargs.setdefault("poll_interval", 0.2)
    kwargs.setdefault("notify_write", lambda text: None)
    kwargs.setdefault("preview", lambda request: {"error": "preview off in this test"})
    return FinettyApp(runs=runs, **kwargs)


async def until(pilot, condition, timeout: float = 60.0, what: str = "") -> None:
    """Let the app run until ``condition()`` holds (cross-process waits: a deadline, not a sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.1)


def run(coro):
    return asyncio.run(coro)


def table_statuses(screen) -> dict[str, str]:
    from textual.widgets import DataTable

    table = screen.query_one("#runs-table", DataTable)
    return {row.key.value: str(table.get_row(row.key)[1]) for row in table.ordered_rows}


async def open_form(pilot, app):
    """Press n on Runs and wait for the New run screen."""
    from finetty.tui.screens.new_run import NewRunScreen

    await pilot.press("n")
    await until(pilot, lambda: isinstance(app.screen, NewRunScreen), what="the New run screen")
    return app.screen


async def launch_form(pilot, app, form, train: dict[str, str], also=lambda recipe: True):
    """Type ``train`` settings into the form, wait until it validates with them (and ``also``), press ctrl+l,
    and return the monitor the launch opens."""
    from textual.widgets import Input

    from finetty.tui.screens.monitor import MonitorScreen

    for name, value in train.items():
        form.query_one(f"#train-{name}-editor", Input).value = value
    await until(pilot, lambda: form.recipe is not None and also(form.recipe)
                and all(str(form.recipe.train.get(k)) == v for k, v in train.items()), what="the form to validate")
    await pilot.press("ctrl+l")
    await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
    return app.screen


# -- the main flow: new run through the form, watch it, stop it --------------------------------------

@pytest.mark.slow
def test_new_run_through_the_form_then_monitor_stop_and_list(runs_dir, demo_model):
    from finetty.tui.screens.runs import RunsScreen

    async def scenario():
        app = make_app(runs_dir, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            form = await open_form(pilot, app)
            # the starter is tiny-demo + identity + LoRA: nothing to pick, no path typed; only make it long
            # enough to stop and log every step
            monitor = await launch_form(pilot, app, form, {"max_steps": "2000", "logging_steps": "1",
                                                           "save_steps": "1000"},
                                        also=lambda r: r.model == "tiny-demo" and r.method == "lora")
            await until(pilot, lambda: len(monitor.history.train) >= 2, timeout=120, what="step events")
            assert monitor.query_one("#loss-chart").train  # the chart has the points
            assert "running" in str(monitor.query_one("#monitor-status").render())
            await pilot.press("s")
            await until(pilot, lambda: monitor.history.status == "stopped", timeout=120, what="the stop")
            assert monitor.history.end["type"] == "stopped"
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen))
            run_dir = only_run(runs_dir)
            await until(pilot, lambda: table_statuses(app.screen).get(run_dir.name) == "stopped",
                        what="the run listed as stopped")
        stopped = [e for e in run_events(run_dir) if e["type"] == "stopped"]
        assert stopped and rundir.latest_checkpoint(run_dir) is not None  # it checkpointed before stopping

    run(scenario())


@pytest.mark.slow
def test_a_launch_from_new_run_is_served_by_the_standby_worker(runs_dir, demo_model, standby_on):
    """New run starts a standby worker; the launch hands it the run, and it trains exactly like a cold worker."""
    from finetty.core.run import standby

    async def scenario():
        app = make_app(runs_dir, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            form = await open_form(pilot, app)
            await until(pilot, standby.ready, timeout=120, what="the standby worker's imports")
            waiting = standby.pid()
            monitor = await launch_form(pilot, app, form, {"max_steps": "12", "logging_steps": "1"})
            await until(pilot, lambda: monitor.history.status == "finished", timeout=120, what="the run to finish")
        return waiting

    waiting = run(scenario())
    run_dir = only_run(runs_dir)
    started = [e for e in run_events(run_dir) if e["type"] == "worker_started"]
    assert [e["pid"] for e in started] == [waiting]  # the standby process became the run's worker
    steps = [e for e in run_events(run_dir) if e["type"] == "step"]
    assert len(steps) == 12 and steps[-1]["loss"] < steps[0]["loss"]
    assert (run_dir / rundir.FINAL / "adapter_model.safetensors").is_file()
    assert not rundir.is_live(run_dir)


@pytest.mark.slow
def test_new_run_offers_processes_and_the_distributed_engine_and_launches_two(runs_dir, demo_model):
    from textual.widgets import Select

    async def scenario():
        app = make_app(runs_dir, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            form = await open_form(pilot, app)
            processes = form.query_one("#launch-processes", Select)
            engine = form.query_one("#launch-engine", Select)
            # no GPU here: the CPU, or two gloo processes; one process needs no engine
            assert [value for _, value in processes._options if value is not Select.BLANK] == [1, 2]
            assert processes.value == 1 and engine.disabled
            await until(pilot, lambda: form.recipe is not None, what="the form to validate")
            assert not form.recipe.launch.get("num_processes", 1) > 1
            # FSDP and DeepSpeed need GPUs: with none, DDP (gloo) is the only engine offered
            assert [value for _, value in engine._options if value is not Select.BLANK] == ["ddp"]
            processes.value = 2
            await until(pilot, lambda: form.recipe is not None and form.recipe.launch.get("num_processes") == 2
                        and form.recipe.launch.get("distributed_type") == "ddp", what="two DDP processes")
            assert not engine.disabled
            monitor = await launch_form(pilot, app, form, {"max_steps": "6", "logging_steps": "1",
                                                           "per_device_train_batch_size": "4"},
                                        also=lambda r: r.launch.get("distributed_type") == "ddp")
            await until(pilot, lambda: monitor.history.status == "finished", timeout=180, what="the run to finish")

    run(scenario())
    run_dir = only_run(runs_dir)
    found = run_events(run_dir)
    started = next(e for e in found if e["type"] == "run_started")
    assert started["world_size"] == 2
    assert [e["step"] for e in found if e["type"] == "step"] == list(range(1, 7))


@pytest.mark.slow
def test_trust_remote_code_is_asked_before_a_launch(runs_dir, demo_model):
    from textual.widgets import Select

    from finetty.tui.screens.confirm import ConfirmScreen
    from finetty.tui.screens.new_run import NewRunScreen

    async def scenario():
        app = make_app(runs_dir, clock=time.time)
        async with app.run_test(size=(100, 30)) as pilot:
            form = await open_form(pilot, app)
            await until(pilot, lambda: form.recipe is not None, what="the form to validate")
            assert form.recipe.trust_remote_code is False  # off unless asked for
            form.query_one("#trust_remote_code-editor", Select).value = True
            await until(pilot, lambda: form.recipe is not None and form.recipe.trust_remote_code,
                        what="the form to validate with trust_remote_code")
            await pilot.press("ctrl+l")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
            assert "trust_remote_code" in str(app.screen.query_one("Static").render())
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen))
            assert not runs_dir.exists() or not any(runs_dir.iterdir()), "nothing launched on no"
            monitor = await launch_after_yes(pilot, app, form)
            await until(pilot, lambda: monitor.history.status == "finished", timeout=120, what="the run to finish")

    async def launch_after_yes(pilot, app, form):
        from textual.widgets import Input

        from finetty.tui.screens.monitor import MonitorScreen

        form.query_one("#train-max_steps-editor", Input).value = "2"
        await until(pilot, lambda: form.recipe is not None and form.recipe.train["max_steps"] == 2)
        await pilot.press("ctrl+l")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question again")
        await pilot.press("y")
        await until(pilot, lambda: isinstance(app.screen, MonitorScreen), what="the monitor")
        return app.screen

    run(scenario())
    assert "trust_remote_code: true" in (only_run(runs_dir) / "recipe.yaml").read_text()


def test_with_gpus_new_run_offers_one_process_per_gpu_and_every_engine(runs_dir, monkeypatch):
    from textual.widgets import Select

    from finetty.core.memory.gpu import GpuReading
    from finetty.tui.screens.new_run import NewRunScreen

    four = [GpuReading(n, "NVIDIA A100-SXM4-80GB", 0, 80 * 2**30, 0, None) for n in range(4)]
    monkeypatch.setattr(NewRunScreen, "_gpus", staticmethod(lambda: four))

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            form = await open_form(pilot, app)
            processes = form.query_one("#launch-processes", Select)
            engine = form.query_one("#launch-engine", Select)
            assert [value for _, value in processes._options] == [1, 2, 4]
            assert [value for _, value in engine._options] == ["ddp", "fsdp", "deepspeed-2", "deepspeed-3"]
            processes.value = 4
            engine.value = "deepspeed-3"
            await until(pilot, lambda: form.recipe is not None and form.recipe.launch.get("num_processes") == 4)
            assert form.recipe.launch["distributed_type"] == "deepspeed" and form.recipe.launch["zero_stage"] == 3

    run(scenario())


def only_run(runs: Path) -> Path:
    found = [p for p in runs.iterdir() if (p / "recipe.yaml").is_file()]
    assert len(found) == 1, found
    return found[0]


# -- attach: replay then follow ----------------------------------------------------------------------

def test_attach_to_a_finished_run_shows_the_whole_loss_history(runs_dir):
    from finetty.tui.screens.monitor import MonitorScreen

    made = make_runs(runs_dir)
    steps = [(e["step"], e["loss"]) for e in recorded() if e["type"] == "step"]
    evals = [(e["step"], e["loss"]) for e in recorded() if e["type"] == "eval"]

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: made["finished"].name in table_statuses(app.screen))
            app.screen.query_one("#runs-table").move_cursor(
                row=list(table_statuses(app.screen)).index(made["finished"].name))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
            monitor = app.screen
            await until(pilot, lambda: monitor.history.status == "finished", what="the replay")
            assert monitor.history.train == steps
            assert monitor.history.eval == evals
            chart = monitor.query_one("#loss-chart")
            assert chart.train == steps and chart.eval == evals
            status = str(monitor.query_one("#monitor-status").render())
            assert "finished" in status and "step 60/60" in status
            options = monitor.query_one("#checkpoint-list")
            labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            assert labels[0].startswith("step-000040") and labels[-1].startswith("final")

    run(scenario())


def test_a_long_finished_history_is_replayed_in_order_and_never_shown_lost(runs_dir, monkeypatch):
    """Chunk by chunk, with the monitor's own polls ticking meanwhile: each step folded once, in order; what
    each draw shows meanwhile is the replay's progress, never "lost" or a running run's ETA."""
    from finetty.tui import history
    from finetty.tui.screens.monitor import MonitorScreen

    monkeypatch.setattr(history, "READ_CHUNK", 8192)  # about 40 steps a chunk: ~50 chunks
    events = recorded()
    head = [{**e, "total_steps": 2000} if e["type"] == "run_started" else e
            for e in events if e["type"] in ("worker_started", "data", "run_started")]
    step, end = next(e for e in events if e["type"] == "step"), events[-1]
    steps = [{**step, "step": n, "loss": 3.0 - n / 1000, "ts": START + n} for n in range(1, 2001)]
    run_dir = write_run(runs_dir, "261122-110826-lora-f667",
                        [*head, *steps, {**end, "step": 2000, "ts": START + 2001}])
    shown = []
    draw = MonitorScreen._draw

    def drawn(screen):
        draw(screen)
        shown.append(str(screen.query_one("#monitor-status").render()))

    monkeypatch.setattr(MonitorScreen, "_draw", drawn)

    async def scenario():
        app = make_app(runs_dir, open_run=run_dir, poll_interval=0.02)  # polls overlap the replay
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
            monitor = app.screen
            await until(pilot, lambda: monitor.history.status == "finished", what="the replay")
            assert [s for s, _ in monitor.history.train] == list(range(1, 2001))
            assert monitor.history.events == len(head) + len(steps) + 1

    run(scenario())
    replay = shown[:-1]
    assert len(replay) > 10 and all(line.startswith(("starting", "reading the history")) for line in replay)
    assert shown[-1].startswith("finished  step 2000/2000")


def test_two_apps_follow_one_run_as_it_grows(runs_dir):
    """Replay then follow: both monitors see the history and every event appended after they opened."""
    events = recorded()
    head = [e for e in events if e["type"] != "run_finished" and (e.get("step") or 0) <= 30]
    tail = [e for e in events if e not in head]
    run_dir = write_run(runs_dir, "261122-110826-lora-f667", head)
    lock = rundir.acquire_lock(run_dir)  # this test plays the live worker
    try:
        async def scenario():
            one, two = make_app(runs_dir, open_run=run_dir), make_app(runs_dir, open_run=run_dir)
            async with one.run_test(size=(80, 24)) as p1, two.run_test(size=(80, 24)) as p2:
                for pilot, app in ((p1, one), (p2, two)):
                    await until(pilot, lambda app=app: app.screen.history.summary.step == 30)
                    assert app.screen.history.status == "running"
                writer = EventWriter(run_dir)
                for event in tail:
                    writer._file.write(json.dumps(event) + "\n")
                writer._file.flush()
                for pilot, app in ((p1, one), (p2, two)):
                    await until(pilot, lambda app=app: app.screen.history.end is not None, what="the tail")
                    assert app.screen.history.train == [(e["step"], e["loss"]) for e in events if e["type"] == "step"]
                    assert app.screen.history.summary.step == 60

        run(scenario())
    finally:
        import os

        os.close(lock)


def test_a_dead_worker_shows_as_lost_with_reason_and_log_tail(runs_dir):
    from finetty.tui.screens.monitor import MonitorScreen

    made = make_runs(runs_dir)

    async def scenario():
        app = make_app(runs_dir, open_run=made["lost"])
        async with app.run_test(size=(80, 24)) as pilot:
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await until(pilot, lambda: monitor.history.status == "lost")
            status = str(monitor.query_one("#monitor-status").render())
            assert "lost" in status and "without a final event" in status
            await until(pilot, lambda: "Killed" in str(monitor.query_one("#log-tail").render()))
            assert monitor.query_one("#monitor-tabs").active == "log"
            await pilot.press("escape")
            runs_screen = app.screen
            statuses = table_statuses(runs_screen)
            assert statuses[made["lost"].name] == "lost" and statuses[made["failed"].name] == "failed"
            runs_screen.query_one("#runs-table").move_cursor(row=list(statuses).index(made["failed"].name))
            await pilot.pause()
            detail = str(runs_screen.query_one("#run-detail").render())
            assert "CUDA out of memory" in detail and "Traceback" in detail

    run(scenario())


def test_memory_gauges_mark_the_watermark_and_a_crossing_notifies(runs_dir):
    events = memory_events(recorded())
    cut = next(i for i, e in enumerate(events) if e["type"] == "step" and e["step"] == 45)
    head = events[:cut]
    run_dir = write_run(runs_dir, "261122-110826-lora-f667", head)
    lock = rundir.acquire_lock(run_dir)
    written = []
    try:
        async def scenario():
            app = make_app(runs_dir, open_run=run_dir, clock=time.time, notify_write=written.append)
            async with app.run_test(size=(120, 40)) as pilot:
                monitor = app.screen
                await until(pilot, lambda: monitor.history.summary.step == 40)
                gauges = str(monitor.query_one("#memory").render())
                assert "GPU0" in gauges and "RAM" in gauges and "│ watermark 90%" in gauges
                with open(run_dir / "events.jsonl", "a") as handle:
                    for event in events[len(head):]:
                        if event["type"] != "run_finished":
                            event = {**event, "ts": time.time()}
                            handle.write(json.dumps(event) + "\n")
                            if event["type"] == "watermark":
                                break
                await until(pilot, lambda: monitor.history.gpus[0].state == "crossed")
                assert monitor.history.gpus[0].peak >= int(0.93 * 24 * 1024 ** 3) - 1024 ** 3
                await until(pilot, lambda: any("\x1b]9;" in w for w in written), what="the notification")
                assert any(w.startswith("\a") and "\x1b]777;notify;" in w and "watermark" in w for w in written)

        run(scenario())
    finally:
        import os

        os.close(lock)


def test_a_run_ending_rings_and_notifies_unless_turned_off(runs_dir, monkeypatch):
    events = recorded()
    head = [e for e in events if e["type"] != "run_finished"]
    run_dir = write_run(runs_dir, "261122-110826-lora-f667", head)

    async def scenario(expect: bool):
        written = []
        app = make_app(runs_dir, clock=time.time, notify_write=written.append)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: run_dir.name in table_statuses(app.screen))
            with open(run_dir / "events.jsonl", "a") as handle:
                handle.write(json.dumps({"ts": time.time(), "type": "run_finished", "step": 60}) + "\n")
            await until(pilot, lambda: table_statuses(app.screen)[run_dir.name] == "finished")
            await pilot.pause(0.3)
        assert bool(written) == expect
        if expect:
            assert written[0] == "\a\x1b]9;finetty: run finished: 261122-110826-lora-f667 finished at step 60\x07" \
                                 "\x1b]777;notify;finetty: run finished;261122-110826-lora-f667 finished at step 60\x07"
        (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in head))

    run(scenario(True))
    monkeypatch.setenv("FINETTY_NOTIFY", "0")
    run(scenario(False))


# -- plugins -------------------------------------------------------------------------------------------

def test_a_failed_plugin_is_listed_with_its_error(runs_dir):
    registry = with_broken_plugin(RuntimeError("this plugin needs a GPU library that is not installed"))

    async def scenario():
        app = make_app(runs_dir, registry=registry)
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("p")
            screen = app.screen
            table = screen.query_one("#plugin-table")
            rows = {str(table.get_row(r.key)[0]): str(table.get_row(r.key)[1]) for r in table.ordered_rows}
            assert rows["broken-example"] == "failed" and rows["lora"] == "ok"
            errors = str(screen.query_one("#plugin-errors").render())
            assert "broken-example" in errors and "needs a GPU library" in errors
            await pilot.press("escape")
            await pilot.press("n")  # the rest still works: the form lists the good plugins
            await until(pilot, lambda: getattr(app.screen, "recipe", None) is not None)

    run(scenario())


# -- the form refuses what the recipe validator refuses -------------------------------------------------

def test_invalid_field_values_are_rejected_in_the_form(runs_dir):
    from textual.widgets import Button, Input

    from finetty.tui.screens.new_run import NewRunScreen

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            form = await open_form(pilot, app)
            assert isinstance(form, NewRunScreen)
            await until(pilot, lambda: form.recipe is not None)
            cases = [
                ("train-learning_rate-editor", "fast", "learning_rate"),
                ("train-max_steps-editor", "-5", "max_steps"),
                ("opt-method-r-editor", "0", "r"),
                ("opt-method-lora_dropout-editor", "[1, 2", None),
                ("train-more", "{weight_decai: 0.1}", "weight_decay"),
            ]
            for widget_id, bad, mentioned in cases:
                editor = form.query_one(f"#{widget_id}", Input)
                good = editor.value
                editor.value = bad
                await until(pilot, lambda: form.recipe is None and form.problem, what=f"{widget_id} rejected")
                assert editor.has_class("-invalid"), widget_id
                if mentioned:
                    assert mentioned in form.problem, (widget_id, form.problem)
                assert form.query_one("#launch", Button).disabled
                await pilot.press("ctrl+l")  # refused: nothing is created
                assert not runs_dir.exists() or not any(runs_dir.iterdir())
                editor.value = good
                await until(pilot, lambda: form.recipe is not None, what=f"{widget_id} accepted again")
                assert not editor.has_class("-invalid")

    run(scenario())


def test_method_options_come_from_the_plugin_and_save_as_a_recipe(runs_dir, tmp_path):
    from textual.widgets import Input, Select

    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        async with app.run_test(size=(120, 40)) as pilot:
            form = await open_form(pilot, app)
            await until(pilot, lambda: form.recipe is not None)
            form.query_one("#method", Select).value = "ia3"
            await until(pilot, lambda: form.recipe is not None and form.recipe.method == "ia3")
            names = {f.option_name for f in form.query("#method-options OptionField")}
            assert names == {o.name for o in load_plugins().methods["ia3"].options}
            await pilot.press("ctrl+s")
            prompt = app.screen
            prompt.query_one(Input).value = "my-ia3.yaml"
            await pilot.press("enter")
            await until(pilot, lambda: (tmp_path / "my-ia3.yaml").exists())
        saved = tmp_path / "my-ia3.yaml"
        assert saved.read_text().startswith("# finetty train my-ia3.yaml\n")
        recipe = recipe_mod.load(saved, [], load_plugins())
        assert recipe.method == "ia3" and recipe.model == "tiny-demo" and recipe.train["max_steps"] == 120

    run(scenario())


def test_the_preview_shows_rendered_records_and_token_lengths(demo_model):
    from finetty.tui.preview import compute

    answer = compute({"model": "tiny-demo", "dataset": "identity", "format": "auto", "objective": "sft",
                      "dataset_options": {"name": "Ada", "author": "Lovelace"}, "max_length": 24})
    assert answer["format"] == "alpaca" and answer["detected"] and answer["records"] == 40
    assert "<|im_start|>assistant" in answer["samples"][0] and "Ada" in "".join(answer["samples"])
    lengths = answer["lengths"]
    assert lengths["count"] == 40 and lengths["min"] <= lengths["median"] <= lengths["max"]
    assert 0 < lengths["over"] <= 40  # max_length 24 is shorter than some examples


# -- runs screen: queue, delete --------------------------------------------------------------------------

def test_the_queue_is_shown_reordered_and_cleared(runs_dir):
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    made = make_runs(runs_dir)
    recipe = recipe_mod.load(None, [], load_plugins(), check_data=False)
    first, second = queue.add(runs_dir, recipe), queue.add(runs_dir, recipe)

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await until(pilot, lambda: screen.query_one("#queue-table").row_count == 2)
            assert "2 waiting" in str(screen.query_one("#queue-title").render())
            screen.query_one("#queue-table").focus()
            await pilot.press("right_square_bracket")  # the first entry goes later
            await until(pilot, lambda: [e.id for e in queue.read(runs_dir).entries] == [second.id, first.id])
            await pilot.press("x")
            await until(pilot, lambda: [e.id for e in queue.read(runs_dir).entries] == [second.id])
            await pilot.press("X", "y")
            await until(pilot, lambda: not queue.read(runs_dir).entries)
            await until(pilot, lambda: not screen.query_one("#queue-box").display)
            assert made["finished"].exists()

    run(scenario())


def test_delete_asks_first(runs_dir):
    made = make_runs(runs_dir)

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            screen = app.screen
            await until(pilot, lambda: len(table_statuses(screen)) == 4)
            screen.query_one("#runs-table").move_cursor(row=list(table_statuses(screen)).index(made["lost"].name))
            await pilot.press("d", "n")  # cancelled
            await pilot.pause(0.3)
            assert made["lost"].exists()
            await pilot.press("d", "y")
            await until(pilot, lambda: not made["lost"].exists())
            await until(pilot, lambda: made["lost"].name not in table_statuses(screen))

    run(scenario())


def test_first_start_opens_a_ready_new_run_and_the_palette_lists_bindings(runs_dir):
    from finetty.tui.screens.new_run import NewRunScreen

    async def scenario():
        app = make_app(runs_dir, first_run=None)  # no runs yet: the New run opens by itself
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen))
            form = app.screen
            await until(pilot, lambda: form.recipe is not None)
            assert (form.recipe.model, form.recipe.dataset, form.recipe.method) == ("tiny-demo", "identity", "lora")
            commands = [c.title for c in app.get_system_commands(form)]
            assert {"Launch", "Queue", "Save recipe", "Back", "Help"} <= set(commands)
            await pilot.press("f1")
            keys = {row[2]: row[0] for row in app.screen.keys}
            assert keys["new_run.launch"] == "^l, f5" and keys["new_run.queue"] == "^o, f6"

    run(scenario())
