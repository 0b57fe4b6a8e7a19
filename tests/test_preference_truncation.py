"""Over-length preference pairs are counted and reported, as sft reports its truncated examples.

TRL cuts a pair whose prompt with the chosen or the rejected answer is longer
than ``max_length`` (and an answer over ``max_completion_length``) without a
word; a long rejected answer used to train cut in silence unless the recipe
said ``truncation: drop``. Both ``finetty data`` (:func:`describe`) and the run
(a ``warning`` event) now count them.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from finetty.core.data import reading
from finetty.core.data.report import describe
from finetty.core.plugin.registry import load_plugins
from finetty.plugins.objectives.trl_common import pair_rows

from . import inprocess
from .conftest import RECIPES, events

LONG = " ".join(["a rambling answer that goes on and on"] * 12)
MAX = 64


@pytest.fixture(scope="module")
def tokenizer():
    from finetty.core.data import demo

    return demo.build_tokenizer()


@pytest.fixture
def pairs(tmp_path):
    """Eight pairs: three with a long rejected answer, one with a long chosen one, four short."""
    records = [{"prompt": f"Question {i}?", "chosen": f"Answer {i}.", "rejected": f"No {i}."} for i in range(8)]
    for i in (1, 4, 6):
        records[i]["rejected"] = LONG
    records[7]["chosen"] = LONG
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def read(path):
    return reading.read_data(reading.parse_dataset(str(path), path.parent), "auto", load_plugins().data_formats,
                             ("preference",), "dpo", {}, {})


def test_finetty_data_counts_a_pair_over_length_by_either_answer(pairs, tokenizer):
    found = read(pairs)
    assert found.kind == "preference" and found.records == 8
    report = describe(found, tokenizer, MAX)
    assert report["truncated"] == report["tokens"]["over"] == 4
    assert report["tokens"]["max"] > MAX
    dropping = describe(found, tokenizer, MAX, truncation="drop")
    assert dropping["dropped"] == 4 and dropping["truncated"] == 0
    assert dropping["skipped"] == {f"longer than max_length={MAX} (truncation: drop)": 4}


def test_the_pairs_trl_will_cut_are_reported_or_dropped(pairs, tokenizer):
    found = read(pairs)
    said = []
    ctx = SimpleNamespace(tokenizer=tokenizer, max_length=MAX, truncation="truncate", report=said.append)
    assert len(pair_rows(found.examples, ctx, "orpo", "training")) == 8
    assert said == [f"orpo: 4 of 8 training pairs were longer than max_length={MAX} and were truncated"]
    said.clear()
    # an answer over max_completion_length is cut too, however short the whole pair is
    ctx.max_length = 10_000
    pair_rows(found.examples, ctx, "orpo", "training", max_completion=40)
    assert said == ["orpo: 4 of 8 training pairs were longer than max_length=10000 (answers: "
                    "max_completion_length=40) and were truncated"]
    said.clear()
    ctx.max_length, ctx.truncation = MAX, "drop"
    kept = pair_rows(found.examples, ctx, "orpo", "training")
    assert [row["prompt"][0]["content"] for row in kept] == [f"Question {i}?" for i in (0, 2, 3, 5)]
    assert said == [f"orpo: 4 of 8 training pairs were longer than max_length={MAX} and were dropped"]


@pytest.mark.slow
def test_a_dpo_run_warns_of_the_pairs_it_truncates(pairs, tmp_path, demo_model, monkeypatch):
    run = inprocess.train(RECIPES / "demo-dpo.yaml", tmp_path / "runs",
                          ["model=tiny-demo", f"dataset={pairs}", f"train.max_length={MAX}", "train.max_steps=1",
                           "train.save_steps=10"], monkeypatch=monkeypatch)
    warnings = [e["message"] for e in events(run) if e["type"] == "warning"]
    assert f"dpo: 4 of 8 training pairs were longer than max_length={MAX} and were truncated" in warnings
