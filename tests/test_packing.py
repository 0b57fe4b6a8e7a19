"""Padding-free packing: examples share rows without seeing each other, and train as they would unpacked."""

import random

import pytest

from finetty.core.data import packing
from finetty.core.data.tokenize import IGNORE

from .conftest import RECIPES, events, finetty, losses, only_run


def test_rows_hold_every_example_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 100) for _ in range(500)]
    rows = packing.pack_rows(lengths, 128)
    assert sorted(i for row in rows for i in row) == list(range(500))
    assert all(sum(lengths[i] for i in row) <= 128 for row in rows)
    assert packing.pack_rows(lengths, 128) == rows  # deterministic
    # best-fit decreasing wastes little: at most one row's worth more than the lower bound, plus a few percent
    assert len(rows) <= sum(lengths) / 128 * 1.05 + 1
    with pytest.raises(ValueError, match="more than a row holds"):
        packing.pack_rows([10, 200], 128)


def test_packed_labels_never_cross_an_example_boundary():
    rows = [{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]},
            {"input_ids": [6, 7, 8, 9], "labels": [IGNORE, IGNORE, 8, 9]}]
    (packed,) = packing.pack_examples(rows, 16)
    assert packed["input_ids"] == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert packed["position_ids"] == [0, 1, 2, 0, 1, 0, 1, 2, 3]
    # the model predicts labels[t] from tokens < t: a first token's label would be predicted across the boundary
    assert packed["labels"] == [IGNORE, 2, 3, IGNORE, 5, IGNORE, IGNORE, 8, 9]
    batch = packing.PackedCollator()([packed, packing.pack_examples(rows[:1], 16)[0]])
    assert batch["input_ids"].shape == (1, 12) and "attention_mask" not in batch
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 5, 9, 12] and batch["max_length_q"] == 4


def _examples(tokenizer, count=24):
    from finetty.core.train.sft_data import tokenize_examples

    rng = random.Random(1)
    words = "the model learns what it is asked and answers in a few short words".split()
    conversations = []
    for _ in range(count):
        question = " ".join(rng.choice(words) for _ in range(rng.randint(2, 30)))
        answer = " ".join(rng.choice(words) for _ in range(rng.randint(1, 40)))
        conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])
    return tokenize_examples(conversations, tokenizer, 256, "truncate", "all", lambda message: None)


def _per_example_losses(logits, labels, starts):
    import torch

    token_loss = torch.nn.functional.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE, reduction="none")
    valid = labels[1:] != IGNORE
    out = []
    for a, b in zip(starts, starts[1:]):
        out.append((token_loss[a:b - 1][valid[a:b - 1]].sum() / valid[a:b - 1].sum()).item())
    return out


@pytest.mark.parametrize("wrap", ["plain", "lora"])
def test_per_example_losses_equal_the_unpacked_ones(demo_model, wrap):
    import torch
    from transformers import AutoModelForCausalLM

    from finetty.core.model.loading import load_tokenizer

    tokenizer = load_tokenizer(demo_model)
    model = AutoModelForCausalLM.from_pretrained(str(demo_model), dtype=torch.float32)
    if wrap == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    model.eval()
    rows = _examples(tokenizer)
    packed = packing.pack_examples(rows, 256)
    assert len(packed) < len(rows)  # several examples do share rows
    batch = packing.PackedCollator()(packed[:3])
    with torch.no_grad():
        unpacked = [_per_example_losses(model(input_ids=torch.tensor([r["input_ids"]])).logits[0],
                                        torch.tensor(r["labels"]), [0, len(r["labels"])])[0] for r in rows]
        previous = packing.use_packed_attention(model)
        try:
            logits = model(**batch, use_cache=False).logits[0]
        finally:
            base = model.get_base_model() if wrap == "lora" else model
            base.set_attn_implementation(previous)
    starts = batch["cu_seq_lens_q"].tolist()
    got = _per_example_losses(logits, batch["labels"][0], starts)
    order = [i for row in packing.pack_rows([len(r["input_ids"]) for r in rows], 256)[:3] for i in row]
    assert len(got) == len(order) > 3
    for index, loss in zip(order, got):
        assert loss == pytest.approx(unpacked[index], abs=1e-4)
    # and the boundaries matter: the same row with plain causal attention over it gives other losses
    with torch.no_grad():
        crossed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"][:, :0].new_tensor(
            [list(range(batch["input_ids"].shape[1]))])).logits[0]
    assert any(abs(a - b) > 1e-3 for a, b in zip(_per_example_losses(crossed, batch["labels"][0], starts), got))


def _identity_rows():
    from finetty.core.data import reading as data
    from finetty.core.data import demo
    from finetty.core.plugin import registry
    from finetty.core.model.loading import load_tokenizer
    from finetty.core.train.sft_data import tokenize_examples

    source = data.resolve_source("identity", RECIPES)
    records, _ = data.load_records(source, "auto", registry.load_plugins().data_formats,
                                   {"name": "Tiny", "author": "the finetty team"})
    return tokenize_examples(records, load_tokenizer(demo.demo_dir()), 256, "truncate", "assistant", print)


@pytest.mark.slow
def test_a_packed_run_learns_counts_real_tokens_and_a_second_run_reuses_the_tokens(runs_dir, demo_model):
    import shutil

    from finetty.core.data import cache

    # the suite's home is shared: an earlier packed run of the same data would have filled the cache already
    shutil.rmtree(cache.folder(), ignore_errors=True)
    args = ("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs_dir), "--set", "train.packing=true",
            "--set", "train.max_steps=30", "--set", "train.save_steps=1000", "--set", "train.logging_steps=1")
    first = finetty(*args)
    assert first.returncode == 0, first.stderr
    run = only_run(runs_dir)
    log = (run / "worker.log").read_text()
    assert "packed into" in log and "from the cache" not in log
    loss = losses(run)
    assert loss[max(loss)] < loss[min(loss)] * 0.7, loss
    # batches are padding-free: after whole epochs, the tokens counted are exactly the dataset's tokens
    dataset_tokens = sum(len(r["input_ids"]) for r in _identity_rows())
    whole = [e for e in events(run) if e["type"] == "step" and e["epoch"] == int(e["epoch"]) and e["epoch"] > 0]
    assert whole, "no step ended an epoch"
    assert all(e["tokens"] == int(e["epoch"]) * dataset_tokens for e in whole)

    second_runs = runs_dir.parent / "second"
    again = finetty(*args[:2], "--runs-dir", str(second_runs), *args[4:])
    assert again.returncode == 0, again.stderr
    rerun = only_run(second_runs)
    assert "from the cache" in (rerun / "worker.log").read_text()
    assert losses(rerun) == pytest.approx(loss, abs=1e-6)  # the cached rows train exactly as the fresh ones


def test_packing_refuses_prompt_tuning(demo_model):
    import torch
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetty.core.train.sft_data import _refuse_prompt_learning

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(demo_model), dtype=torch.float32),
                           PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    with pytest.raises(ValueError, match="prompt or prefix tuning"):
        _refuse_prompt_learning(model)


def test_unpacked_batches_group_similar_lengths(demo_model):
    from types import SimpleNamespace

    from transformers import TrainingArguments

    from finetty.core.model.loading import load_tokenizer
    from finetty.core.train.sft_data import build_sft_trainer

    tokenizer = load_tokenizer(demo_model)
    rng = random.Random(2)
    records = [[{"role": "user", "content": "q " * rng.randint(1, 120)},
                {"role": "assistant", "content": "a " * rng.randint(1, 60)}] for _ in range(400)]

    def padding(strategy):
        from transformers import AutoModelForCausalLM

        args = TrainingArguments(output_dir="/tmp/unused", per_device_train_batch_size=4, report_to="none",
                                 train_sampling_strategy=strategy, seed=0)
        ctx = SimpleNamespace(model=AutoModelForCausalLM.from_pretrained(str(demo_model)), tokenizer=tokenizer,
                              train_records=records, eval_records=None, args=args, callbacks=[], options={},
                              method=None, max_length=256, truncation="truncate", report=lambda m: None,
                              packing=False)
        trainer = build_sft_trainer(ctx, train_on="all")
        pads = total = 0
        for batch in trainer.get_train_dataloader():
            pads += int((batch["attention_mask"] == 0).sum())
            total += batch["attention_mask"].numel()
        return pads / total

    assert padding("random") < padding("sequential") / 3  # the default groups by length; the records are mixed
