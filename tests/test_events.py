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
