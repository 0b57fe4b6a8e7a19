"""Evaluation: eval events during training (val_size, eval_steps) and ``finetty eval``: base vs tuned exact match,
ROUGE-L, BLEU and perplexity, a report in the run directory and an ``eval`` event written under the run's lock."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from finetty.core.results import evaluate
from finetty.core.run import rundir
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.plugin.registry import load_plugins

from . import inprocess
from .conftest import RECIPES, events, finetty
from .results_runs import IDENTITY


def test_metrics():
    refs = ["I am Tiny.", "My name is Tiny."]
    assert evaluate.exact_match(["  i am   tiny. ", "My name is Bob."], refs) == 0.5
    assert evaluate.rouge_l(refs, refs) == 1.0
    assert 0 < evaluate.rouge_l(["I am Bob.", "name is Tiny"], refs) < 1
    assert evaluate.bleu(refs, refs) == pytest.approx(100.0)
    assert evaluate.bleu(["x y z", "q"], refs) < 5


def test_val_size_gives_eval_events_at_eval_steps(tmp_path, demo_model, monkeypatch):
    monkeypatch.setenv("FINETTY_KEEP_IMPORTS", "1")
    run = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path / "runs",
                          ["train.max_steps=6", "train.eval_steps=3", "train.val_size=4", "train.save_steps=6",
                           "train.logging_steps=1"], monkeypatch=monkeypatch)
    evals = [e for e in events(run) if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6]
    assert all(math.isfinite(e["loss"]) for e in evals)
    data = next(e for e in events(run) if e["type"] == "data")
    assert data["eval_records"] == 4 and data["train_records"] == 36

    # finetty eval's default data for such a run is that same held-out split
    recipe = recipe_mod.from_run(run)
    examples, described = evaluate.examples_for(run, recipe, load_plugins(), None)
    assert len(examples) == 4 and "held-out split" in described
    everything = [json.dumps(r) for r in _all_identity(recipe)]
    held = {json.dumps(e.messages) for e in examples}
    assert len(held) == 4 and held <= set(everything)


def _all_identity(recipe):
    from finetty.core.data import reading as data_mod

    source = data_mod.resolve_source(recipe.dataset, RECIPES)
    records, _ = data_mod.load_records(source, "auto", load_plugins().data_formats, recipe.dataset_options)
    return records


def test_finetty_eval_reports_base_and_tuned_side_by_side(identity_run, tmp_path):
    # eval adds a report and an event: to a copy, so the shared run stays as other tests expect it (no eval yet)
    identity_run = shutil.copytree(identity_run, tmp_path / identity_run.name)
    before = [e for e in events(identity_run) if e["type"] == "eval"]
    result = finetty("eval", str(identity_run), check=True)
    assert "exact match" in result.stdout and "perplexity" in result.stdout
    assert "the run's training data" in result.stdout

    reports = sorted((identity_run / "eval").glob("final-*.json"))
    assert len(reports) == 1 and reports[0].with_suffix(".md").is_file()
    report = json.loads(reports[0].read_text())
    assert report["examples"] == len(IDENTITY) and report["checkpoint"] == "final" and report["step"] == 40
    base, tuned = report["base"], report["tuned"]
    assert tuned["exact_match"] == 1.0 and base["exact_match"] == 0.0
    assert tuned["rouge_l"] > base["rouge_l"] + 0.5 and tuned["bleu"] > base["bleu"] + 50
    assert tuned["perplexity"] < 2 < 100 < base["perplexity"]
    assert [s["tuned"] for s in report["samples"]] == [a for _, a in IDENTITY]
    markdown = reports[0].with_suffix(".md").read_text()
    assert "| exact match | 0.0% | 100.0% |" in markdown

    added = [e for e in events(identity_run) if e["type"] == "eval"][len(before):]
    assert len(added) == 1 and added[0]["source"] == "finetty eval" and added[0]["step"] == 40
    assert added[0]["metrics"]["exact_match"] == 1.0 and added[0]["report"] == f"eval/{reports[0].name}"
    assert not rundir.is_live(identity_run), "the lock was let go"


def test_eval_on_other_data_and_a_checkpoint(identity_run, tmp_path):
    data = tmp_path / "held-out.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "Who are you?"},
                                             {"role": "assistant", "content": IDENTITY[0][1]}]}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "Say hi."},
                                               {"role": "assistant", "content": "Hi!"}]}) + "\n")
    report = evaluate.evaluate(identity_run, data=str(data), checkpoint="20", max_new_tokens=24)
    assert report.examples == 2 and report.checkpoint == "step-000020" and report.step == 20
    assert "held-out.jsonl" in report.data
    assert report.tuned["exact_match"] == 0.5 and report.base["exact_match"] == 0.0
    assert report.samples[0]["tuned_exact"] and not report.samples[1]["tuned_exact"]


def test_the_eval_event_is_never_written_beside_a_live_worker(identity_run, tmp_path):
    run = shutil.copytree(identity_run, tmp_path / identity_run.name)
    report = evaluate.Report(run=run.name, checkpoint="final", step=40, method="lora", data="x", examples=1,
                             max_new_tokens=8, base={"exact_match": 0.0}, tuned={"exact_match": 1.0})
    json_path, md_path = evaluate.write_report(run, report)
    count = len(events(run))
    fd = rundir.acquire_lock(run)  # stands for a live worker
    try:
        assert evaluate.record_event(run, report, json_path) is False
        assert len(events(run)) == count
    finally:
        import os

        os.close(fd)
    assert evaluate.record_event(run, report, json_path) is True
    assert events(run)[-1]["type"] == "eval" and len(events(run)) == count + 1


def test_eval_answers_every_prompt_in_one_batch_per_model_as_one_at_a_time_would(identity_run, monkeypatch):
    from finetty.core.results import inference

    batches = []
    generate = inference.generate

    def counted(loaded, sequences):
        batches.append((loaded.label, len(sequences)))
        return generate(loaded, sequences)

    monkeypatch.setattr(inference, "generate", counted)
    together = evaluate.evaluate(identity_run, max_new_tokens=24)
    assert batches == [("final", len(IDENTITY)), ("base", len(IDENTITY))], "the tuned model, then the base"
    batches.clear()
    alone = evaluate.evaluate(identity_run, max_new_tokens=24, batch_size=1)
    assert len(batches) == 2 * len(IDENTITY)
    assert [(s["base"], s["tuned"]) for s in together.samples] == [(s["base"], s["tuned"]) for s in alone.samples]
    assert [s["tuned"] for s in together.samples] == [a for _, a in IDENTITY]
