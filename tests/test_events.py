"""events.jsonl readers: each event once, partial last lines left for later, junk skipped."""

import json

from finetty.core.run.events import EventReader, EventWriter, read_all
from finetty.core.run.rundir import RunSummary, apply_events


def test_reader_follows_and_leaves_a_partial_line(tmp_path):
    writer = EventWriter(tmp_path)
    writer.emit("run_started", step=0, total_steps=10)
    reader = EventReader(tmp_path)
    assert [e["type"] for e in reader.poll()] == ["run_started"]
    assert reader.poll() == []
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('{"ts": 1, "type": "step", "st')
    assert reader.poll() == []
    with open(tmp_path / "events.jsonl", "a") as handle:
        handle.write('ep": 3, "loss": 1.5}\nnot json\n{"ts": 2, "type": "future_kind", "x": 1}\n')
    got = reader.poll()
    assert [e["type"] for e in got] == ["step", "future_kind"] and got[0]["step"] == 3


def test_a_truncated_last_line_is_skipped(tmp_path):
    (tmp_path / "events.jsonl").write_text(json.dumps({"ts": 1, "type": "step", "step": 1, "loss": 2.0})
                                           + "\n" + '{"ts": 2, "type": "st')
    assert [e["step"] for e in read_all(tmp_path)] == [1]


def test_summary_reads_steps_and_the_end():
    summary = RunSummary(id="x", path=None, status="starting")
    apply_events(summary, [
        {"ts": 10, "type": "run_started", "step": 0, "total_steps": 4, "recipe": {"model": "m", "method": "lora"}},
        {"ts": 12, "type": "step", "step": 2, "loss": 1.0},
        {"ts": 14, "type": "run_failed", "reason": "CUDA out of memory"},
    ])
    assert (summary.status, summary.step, summary.total, summary.loss, summary.method) == \
        ("failed", 2, 4, 1.0, "lora")
    assert summary.reason == "CUDA out of memory"


# -- the event contract (core/run/event_types.py) ----------------------------------------------------

ILL_TYPED = '{"ts": 1, "type": "step", "step": "x", "loss": 1.0}'


def test_readers_skip_and_count_a_line_against_the_contract(tmp_path):
    good = json.dumps({"ts": 2, "type": "step", "step": 2, "loss": 1.5})
    (tmp_path / "events.jsonl").write_text(f"{ILL_TYPED}\nnot json\n{good}\n"
                                           '{"ts": 3, "type": "watermark", "state": "melted"}\n'
                                           '{"ts": 4, "type": "future_kind", "step": "anything"}\n')
    reader = EventReader(tmp_path)
    assert [(e["type"], e.get("step")) for e in reader.poll()] == [("step", 2), ("future_kind", "anything")]
    assert reader.skipped == 3


def test_every_event_type_is_in_docs_events_md():
    from pathlib import Path

    from finetty.core.run.event_types import EVENT_TYPES, describe

    text = (Path(__file__).parent.parent / "docs" / "events.md").read_text()
    for kind, declaration in EVENT_TYPES.items():
        assert f"### `{kind}`" in text, kind
        section = text.split(f"### `{kind}`", 1)[1].split("\n### ", 1)[0]
        for name, written, required, _ in describe(declaration):
            row = f"| `{name}` | `{written}` | {'yes' if required else 'no'} |"
            assert row in section, f"{kind}: {row}"


def test_a_real_run_and_an_eval_write_only_declared_events(runs_dir, demo_model):
    """Every event a real run (trainer evals, checkpoints, memory) and finetty eval's writer produce matches its
    declaration, every required field included; the worker leaves its heartbeat and an index equal to a replay."""
    from finetty.core.results import evaluate
    from finetty.core.run import rundir, summary as summary_mod
    from finetty.core.run.event_types import EVENT_TYPES, problem

    from .conftest import RECIPES, events, finetty, only_run

    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs_dir), "--set", "train.max_steps=4",
                  "--set", "train.eval_steps=2", "--set", "train.val_size=4", "--set", "train.save_steps=2",
                  "--set", "train.logging_steps=1")
    assert out.returncode == 0, out.stderr
    run = only_run(runs_dir)
    report = evaluate.Report(run=run.name, checkpoint="final", step=4, method="lora", data="x", examples=1,
                             max_new_tokens=8, base={"exact_match": 0.0}, tuned={"exact_match": 1.0})
    json_path, _ = evaluate.write_report(run, report)
    assert evaluate.record_event(run, report, json_path)

    written = events(run)
    wrong = [(e["type"], problem(e, strict=True)) for e in written if problem(e, strict=True)]
    assert not wrong, wrong
    assert {e["type"] for e in written} <= set(EVENT_TYPES)
    assert {"worker_started", "data", "run_started", "step", "eval", "checkpoint", "run_finished"} <= \
        {e["type"] for e in written}
    evals = [e for e in written if e["type"] == "eval"]
    assert [e["source"] for e in evals] == ["trainer", "trainer", "finetty eval"]
    assert all(isinstance(e["loss"], float) for e in evals[:2]) and evals[2]["metrics"]["exact_match"] == 1.0
    assert {"step", "source", "loss", "metrics"} <= set(evals[0]) & set(evals[2])  # one shape, two writers

    beat = json.loads((run / rundir.HEARTBEAT_FILE).read_text())
    started = next(e for e in written if e["type"] == "worker_started")
    assert beat["pid"] == started["pid"] and beat["stop_requested"] is False
    index = summary_mod.read_index(run)
    replayed = summary_mod.RunSummary(id=run.name, path=run, status="starting")
    summary_mod.apply_events(replayed, written[:-1])  # the index is the worker's: finetty eval's event came after
    assert index is not None and index.phase == "finished"
    assert (index.step, index.loss, index.checkpoints, index.events, index.end) == \
        (replayed.step, replayed.loss, replayed.checkpoints, replayed.events, replayed.end)


def test_an_ill_typed_line_breaks_no_reader(runs_dir):
    """Reproduction 5 of issue 19: one parseable but ill-typed line in one run stopped `finetty runs` for every
    run and the app at its start. Now it is skipped, counted and said, everywhere."""
    from finetty.tui.screens.monitor import MonitorScreen

    from .conftest import finetty
    from .test_tui_app import make_app, run, table_statuses, until
    from .tui_runs import make_runs

    made = make_runs(runs_dir)
    with open(made["finished"] / "events.jsonl", "a") as handle:
        handle.write(ILL_TYPED + "\n")
    with open(made["stopped"] / "events.jsonl", "r+") as handle:  # and one in the middle of a history
        lines = handle.readlines()
        handle.seek(0)
        handle.writelines(lines[:5] + [ILL_TYPED + "\n"] + lines[5:])

    out = finetty("runs", "--runs-dir", str(runs_dir))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for kind, path in made.items():
        assert path.name in text and kind in text
    assert f"{made['finished'].name}: skipped 1 line(s)" in text and f"{made['stopped'].name}: skipped 1" in text
    attach = finetty("attach", made["finished"].name, "--runs-dir", str(runs_dir), "--history")
    assert attach.returncode == 0 and "finished at step 60" in attach.stdout and "skipped 1 line" in attach.stdout

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: len(table_statuses(app.screen)) == 4, what="every run listed")
            statuses = table_statuses(app.screen)
            assert statuses[made["finished"].name] == "finished" and statuses[made["stopped"].name] == "stopped"
            app.screen.query_one("#runs-table").move_cursor(row=list(statuses).index(made["stopped"].name))
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
            monitor = app.screen
            await until(pilot, lambda: monitor.history.status == "stopped", what="the replay")
            assert monitor.history.summary.skipped == 1 and monitor.history.train[-1][0] == 40

    run(scenario())


# -- the history index (summary.json) ------------------------------------------------------------------

def _long_run(folder, steps: int):
    """A finished run of ``steps`` step events, written directly (a real run of that length would take hours)."""
    import shutil

    from .tui_runs import FIXTURE

    folder.mkdir(parents=True)
    shutil.copy(FIXTURE / "recipe.yaml", folder / "recipe.yaml")
    lines = [json.dumps({"ts": 1.0, "type": "worker_started", "pid": 1, "resume": False}),
             json.dumps({"ts": 2.0, "type": "run_started", "step": 0, "total_steps": steps,
                         "recipe": {"model": "tiny-demo", "method": "lora"}})]
    lines += [json.dumps({"ts": 2.0 + i / 100, "type": "step", "step": i, "epoch": i / 1000, "loss": 3.0 - i / steps,
                          "learning_rate": 1e-3, "grad_norm": 1.0, "tokens": 512 * i, "tokens_per_second": 9000.0,
                          "elapsed": i / 100}) for i in range(1, steps + 1)]
    (folder / "events.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_the_history_index_replaces_a_long_replay_and_is_rebuilt_when_stale(tmp_path, monkeypatch):
    """Reproduction 11 of issue 19 (a 1M-event history cost 1.8 GB and 17 s to list): a run is listed from its
    index and the events after it; without an index the events are folded in chunks (memory bounded by the
    chunk, not the history) and the index is written back; an index describing another file is not trusted."""
    import pytest

    from finetty.core.run import rundir, summary as summary_mod

    run = _long_run(tmp_path / "runs" / "long", 100_000)
    size = (run / "events.jsonl").stat().st_size
    monkeypatch.setattr(summary_mod, "READ_CHUNK", 256 * 1024)
    batches = []
    fold = summary_mod.apply_events
    monkeypatch.setattr(summary_mod, "apply_events", lambda summary, events: (batches.append(len(events)),
                                                                               fold(summary, events)))
    first = rundir.summarize(run)
    assert (first.status, first.step, first.total, first.events) == ("lost", 100_000, 100_000, 100_002)
    assert first.loss == pytest.approx(2.0)
    assert sum(batches) == 100_002 and max(batches) < 3_000  # never the whole history in memory at once
    index = summary_mod.read_index(run)
    assert index is not None and index.offset == size and index.step == 100_000  # written back

    # the index is read, not the history: garbage over the first line's bytes changes nothing
    with open(run / "events.jsonl", "r+b") as handle:
        first_line = len(handle.readline())
        handle.seek(0)
        handle.write(b"x" * (first_line - 1))
    again = rundir.summarize(run)
    assert (again.step, again.events, again.skipped) == (100_000, 100_002, 0)

    # what is written after the index is folded in
    with open(run / "events.jsonl", "a") as handle:
        handle.write(json.dumps({"ts": 5000.0, "type": "run_finished", "step": 100_000, "final": "final",
                                 "train_loss": 2.5, "runtime": 1000.0, "tokens": 1}) + "\n")
    assert rundir.summarize(run).status == "finished"

    # an index longer than the file it claims to describe (the file was replaced) is rebuilt from the events
    short = _long_run(tmp_path / "other", 10)
    (run / "events.jsonl").write_bytes((short / "events.jsonl").read_bytes())
    rebuilt = rundir.summarize(run)
    assert (rebuilt.step, rebuilt.total, rebuilt.events, rebuilt.status) == (10, 10, 12, "lost")
