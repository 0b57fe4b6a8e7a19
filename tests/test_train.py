"""The demo recipes train on CPU, the loss falls, and the results load in plain transformers / PEFT."""

import json

import pytest

from .conftest import RECIPES, events, finetty, losses, only_run


@pytest.mark.slow
def test_demo_lora_trains_and_loads_as_a_plain_peft_adapter(runs_dir, demo_model):
    result = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs_dir))
    assert result.returncode == 0, result.stderr
    assert "finished at step 120" in result.stdout
    run = only_run(runs_dir)
    loss = losses(run)
    first, last = loss[min(loss)], loss[max(loss)]
    assert last <= first / 2, (first, last)

    final = run / "final"
    assert (final / "adapter_config.json").exists() and (final / "adapter_model.safetensors").exists()
    assert not list(final.glob("*.bin")), "nothing pickled in the result"
    base_path = json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(final))
    assert sum(p.numel() for n, p in model.named_parameters() if "lora_" in n) > 0

    kinds = [e["type"] for e in events(run)]
    assert kinds[-1] == "run_finished" and "run_started" in kinds
    started = next(e for e in events(run) if e["type"] == "run_started")
    assert 0 < started["trainable_parameters"] < started["total_parameters"]
    assert started["world_size"] == 1 and started["device"] == "cpu"
    step = next(e for e in events(run) if e["type"] == "step")
    assert {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens", "tokens_per_second",
            "elapsed", "ts"} <= set(step)


@pytest.mark.slow
def test_demo_full_trains_and_loads_with_automodel(runs_dir, demo_model):
    result = finetty("train", str(RECIPES / "demo-full.yaml"), "--runs-dir", str(runs_dir),
                     "--set", "train.max_steps=40", "--set", "train.learning_rate=2e-3")
    assert result.returncode == 0, result.stderr
    run = only_run(runs_dir)
    loss = losses(run)
    assert loss[max(loss)] < loss[min(loss)] / 2
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert model.config.model_type == "llama" and tokenizer.chat_template
    started = next(e for e in events(run) if e["type"] == "run_started")
    assert started["trainable_parameters"] == started["total_parameters"]


def test_val_size_gives_eval_events(runs_dir, demo_model):
    result = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs_dir),
                     "--set", "train.max_steps=10", "--set", "train.val_size=0.2", "--set", "train.eval_steps=5")
    assert result.returncode == 0, result.stderr
    run = only_run(runs_dir)
    evals = [e for e in events(run) if e["type"] == "eval"]
    assert [e["step"] for e in evals] == [5, 10] and all(e["loss"] > 0 for e in evals)
    data = next(e for e in events(run) if e["type"] == "data")
    assert data["eval_records"] == 8 and data["train_records"] == 32 and data["format"] == "alpaca"


def test_over_length_examples_are_reported(runs_dir, demo_model):
    result = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs_dir),
                     "--set", "train.max_steps=2", "--set", "train.max_length=24", "--set", "train.truncation=drop")
    assert result.returncode == 0, result.stderr
    warnings = [e["message"] for e in events(only_run(runs_dir)) if e["type"] == "warning"]
    assert any("dropped" in w and "max_length=24" in w for w in warnings), warnings
