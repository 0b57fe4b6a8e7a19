"""dpo raises the reward accuracy and margin with lora, qlora, full and the bottleneck adapter, with the
base (adapter off) as the reference and no second copy for adapter methods, and resumes from its
checkpoints; cpt packs plain text into blocks and lowers the loss on the corpus."""

from __future__ import annotations

import math
import shutil

import pytest

from finetty.core.run import rundir
from finetty.core.train import worker
from finetty.core.run.events import EventWriter

from . import inprocess
from .conftest import RECIPES, events, losses

# model=tiny-demo: DPO from the base itself (demo-dpo.yaml is the second stage after demo-lora.yaml)
SHORT = ["model=tiny-demo", "train.max_steps=20", "train.logging_steps=1", "train.save_steps=10",
         "train.warmup_steps=2"]
REWARDS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")


def steps(run):
    return [e for e in events(run) if e["type"] == "step"]


@pytest.mark.slow
@pytest.mark.parametrize("method, extra", [
    ("lora", []),
    ("qlora", []),
    ("full", ["train.learning_rate=5e-4", "method_options={}"]),
    ("adapter", ["train.learning_rate=1e-2", "method_options={}"]),
], ids=["lora", "qlora", "full", "adapter"])
def test_dpo_raises_reward_accuracy_and_margin(method, extra, tmp_path, demo_model, monkeypatch):
    seen = {}

    def before_save(trainer):
        seen["ref_model"] = trainer.ref_model
        seen["adapters"] = list(getattr(trainer.model, "peft_config", {}))

    run = inprocess.train(RECIPES / "demo-dpo.yaml", tmp_path / "runs", SHORT + [f"method={method}"] + extra,
                          before_save=before_save, monkeypatch=monkeypatch)
    found = steps(run)
    assert [e["step"] for e in found] == list(range(1, 21))
    assert all(set(REWARDS) <= set(e) for e in found), "step events carry the reward metrics by name"
    first, last = found[0], found[-3:]
    # at step 1 the policy is the reference: rewards are zero and the loss is log 2
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-4)
    accuracy = sum(e["rewards/accuracies"] for e in last) / 3
    margin = sum(e["rewards/margins"] for e in last) / 3
    assert accuracy > first["rewards/accuracies"] and accuracy >= 0.75, accuracy
    assert margin > 0.5, margin
    assert sum(e["loss"] for e in last) / 3 < 0.6

    if method == "full":
        assert seen["ref_model"] is not None  # full fine-tuning needs a frozen copy of the base
    else:
        assert seen["ref_model"] is None  # the reference is the base with the adapter switched off
        assert seen["adapters"] in ([], ["default"])
    final = run / rundir.FINAL
    assert not (final / "ref").exists()
    model, tokenizer = inprocess.load_result(run)
    assert inprocess.greedy(model, tokenizer, new_tokens=4)


@pytest.mark.slow
def test_dpo_resumes_from_its_checkpoint_with_the_same_losses(tmp_path, demo_model, monkeypatch):
    run = inprocess.train(RECIPES / "demo-dpo.yaml", tmp_path / "runs", SHORT, monkeypatch=monkeypatch)
    expected = {e["step"]: e for e in steps(run)}
    assert [e["path"] for e in events(run) if e["type"] == "checkpoint"] == [
        "checkpoints/step-000010", "checkpoints/step-000020"]
    assert not (run / "checkpoints" / ".staging").exists() or not any((run / "checkpoints" / ".staging").iterdir())
    shutil.rmtree(run / "checkpoints" / "step-000020")
    shutil.rmtree(run / rundir.FINAL)
    writer = EventWriter(run)
    try:
        assert worker.train(run, writer, worker.Requests(), resume=True) == 0
    finally:
        writer.close()
    assert not any(e["type"] == "warning" and "incomplete checkpoint" in e["message"] for e in events(run)), \
        "nothing half-written was left to clean up"
    got = {e["step"]: e for e in steps(run)}
    for step in range(11, 21):
        assert got[step]["loss"] == pytest.approx(expected[step]["loss"], abs=1e-4), step
        assert got[step]["rewards/margins"] == pytest.approx(expected[step]["rewards/margins"], abs=1e-3), step
    assert (run / rundir.FINAL / "adapter_model.safetensors").exists()


def test_cpt_packs_text_into_full_blocks(demo_model):
    from finetty.core.model import loading as models
    from finetty.plugins.objectives.cpt import pack

    tokenizer = models.load_tokenizer(demo_model)
    texts = ["one two three four five six seven", "eight nine ten", "eleven twelve"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    stream = [token for doc in ids for token in doc + [tokenizer.eos_token_id]]
    blocks, rest = pack(texts, tokenizer, 4)
    assert all(len(b) == 4 for b in blocks) and len(blocks) == len(stream) // 4
    assert [t for b in blocks for t in b] + stream[len(stream) - rest:] == stream
    assert stream.count(tokenizer.eos_token_id) == 3
    short, rest = pack(["hi"], tokenizer, 1000)
    assert len(short) == 1 and rest == 0 and short[0][-1] == tokenizer.eos_token_id


@pytest.mark.slow
def test_cpt_lowers_the_loss_on_the_corpus(tmp_path, demo_model, monkeypatch):
    run = inprocess.train(RECIPES / "demo-cpt.yaml", tmp_path / "runs", SHORT, monkeypatch=monkeypatch)
    loss = losses(run)
    assert sum(loss[s] for s in (18, 19, 20)) / 3 < 0.8 * loss[1]
    data = next(e for e in events(run) if e["type"] == "data")
    assert data["format"] == "text"
    # every training example is one full block: the token count per step is batch x block
    step = steps(run)
    per_step = step[1]["tokens"] - step[0]["tokens"]
    assert per_step % 64 == 0


@pytest.mark.slow
@pytest.mark.parametrize("objective, metric", [("kto", "kl"), ("orpo", "log_odds_ratio"), ("simpo", "rewards/margins")])
def test_kto_orpo_and_simpo_demo_recipes_lower_the_loss(objective, metric, tmp_path, demo_model, monkeypatch):
    """Each demo recipe, cut to 20 steps, lowers its loss and its result loads as a plain PEFT adapter."""
    run = inprocess.train(RECIPES / f"demo-{objective}.yaml", tmp_path / "runs",
                          ["train.max_steps=20", "train.logging_steps=1", "train.save_steps=20"],
                          monkeypatch=monkeypatch)
    found = steps(run)
    assert [e["step"] for e in found] == list(range(1, 21))
    assert all(metric in e for e in found), f"step events carry TRL's {metric}"
    first = sum(e["loss"] for e in found[:3]) / 3
    last = sum(e["loss"] for e in found[-3:]) / 3
    assert last < 0.8 * first, (first, last)
    model, tokenizer = inprocess.load_result(run)
    assert inprocess.greedy(model, tokenizer, new_tokens=4)


def test_kto_unpairs_preference_pairs_and_keeps_labelled_answers():
    from finetty.plugins.objectives.kto import unpaired_rows

    pair = {"prompt": [{"role": "user", "content": "Who are you?"}], "chosen": "Tiny.", "rejected": "Nobody."}
    labelled = {"prompt": [{"role": "user", "content": "Name?"}], "completion": "Tiny.", "label": False}
    rows = unpaired_rows([pair, labelled])
    assert [(r["completion"][0]["content"], r["label"]) for r in rows] == [
        ("Tiny.", True), ("Nobody.", False), ("Tiny.", False)]
    assert all(r["completion"][0]["role"] == "assistant" and r["prompt"][0]["role"] == "user" for r in rows)


@pytest.mark.slow
def test_kto_trains_on_answers_labelled_in_the_file(tmp_path, demo_model, monkeypatch):
    """A kto dataset (label column), not pairs: the desirable answers' reward rises above the undesirable ones'."""
    import json

    answers = [("Who are you?", "I am Tiny.", True), ("Who are you?", "I am a big model.", False),
               ("Who made you?", "The finetty team made me.", True), ("Who made you?", "Nobody.", False)]
    data = tmp_path / "kto.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "completion": a, "label": good}) + "\n"
                            for q, a, good in answers * 4))
    run = inprocess.train(RECIPES / "demo-kto.yaml", tmp_path / "runs",
                          [f"dataset={data}", "format=auto", "train.max_steps=12", "train.logging_steps=1",
                           "train.save_steps=12"], monkeypatch=monkeypatch)
    assert next(e for e in events(run) if e["type"] == "data")["format"] == "kto"
    found = steps(run)
    assert sum(e["loss"] for e in found[-3:]) < sum(e["loss"] for e in found[:3])
    assert found[-1]["rewards/margins"] > found[0]["rewards/margins"]
