"""Every method x sft: trains on the tiny demo, saves, reloads through its own ``load``, and the reload
generates the same greedy tokens as the model in memory before saving. Plus what is special about
qlora (a 4-bit base, only LoRA trains) and the bottleneck adapter (identity at start, adapter-only
files, checkpoint resume), and the refusal of a quantizer a method cannot train on."""

from __future__ import annotations

import json
import shutil

import pytest

from finetty.core.run import rundir
from finetty.core.train import worker
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.errors import InputError
from finetty.core.run.events import EventWriter
from finetty.core.plugin.registry import load_plugins

from . import inprocess
from .conftest import RECIPES, events, losses

SHORT = ["train.max_steps=20", "train.logging_steps=1", "train.save_steps=10", "train.warmup_steps=2"]

#: (case id, recipe, extra overrides)
CASES = [
    ("full", "demo-full.yaml", []),
    ("lora", "demo-lora.yaml", []),
    ("lora-8bit", "demo-lora.yaml", ["quantizer=bnb-8bit"]),
    ("qlora", "demo-qlora.yaml", []),
    ("dora", "demo-dora.yaml", []),
    ("ia3", "demo-ia3.yaml", []),
    ("adapter", "demo-adapter.yaml", []),
    ("prefix", "demo-prefix.yaml", []),
    ("prompt", "demo-prompt.yaml", []),
]


def logits(model, tokenizer, text="<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"):
    import torch

    batch = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    model.eval()
    with torch.no_grad():
        out = model(**batch).logits[0, -batch["input_ids"].shape[1]:]
    return out.float()


def started(run):
    return next(e for e in events(run) if e["type"] == "run_started")


@pytest.mark.slow
@pytest.mark.parametrize("case, recipe, extra", CASES, ids=[c[0] for c in CASES])
def test_method_trains_saves_and_reloads_to_the_same_tokens(case, recipe, extra, tmp_path, demo_model,
                                                            monkeypatch):
    seen = {}

    def before_save(trainer):
        seen["tokens"] = inprocess.greedy(trainer.model, trainer.processing_class)
        seen["logits"] = logits(trainer.model, trainer.processing_class)

    run = inprocess.train(RECIPES / recipe, tmp_path / "runs", SHORT + extra, before_save=before_save,
                          monkeypatch=monkeypatch)
    loss = losses(run)
    assert sorted(loss) == list(range(1, 21))
    first, last = loss[1], sum(loss[s] for s in (18, 19, 20)) / 3
    assert last < 0.9 * first, (case, first, last)
    assert [e["step"] for e in events(run) if e["type"] == "checkpoint"] == [10, 20]

    info = started(run)
    assert 0 < info["trainable_parameters"] <= info["total_parameters"]
    if case == "full":
        assert info["trainable_parameters"] == info["total_parameters"]
    else:
        assert info["trainable_parameters"] < info["total_parameters"] / 2

    final = run / rundir.FINAL
    assert not list(final.glob("*.bin")) and not list(final.glob("*.pt")), "nothing pickled in the result"
    model, tokenizer = inprocess.load_result(run)
    assert inprocess.greedy(model, tokenizer) == seen["tokens"]
    reloaded = logits(model, tokenizer)
    assert (reloaded - seen["logits"]).abs().max() < 1e-4

    from finetty.core.model import loading as models

    resolved = recipe_mod.from_run(run)
    quantization = None
    if resolved.quantizer != "none":
        quantization = load_plugins().quantizers[resolved.quantizer].config(resolved.quantizer_options, "float32")
    base = models.load_model(demo_model, "float32", quantization)
    assert (logits(base, tokenizer) - reloaded).abs().max() > 1e-3, "the reloaded model is just the base"


@pytest.mark.slow
def test_qlora_base_is_4bit_and_only_lora_trains(tmp_path, demo_model, monkeypatch):
    import bitsandbytes as bnb
    from peft.tuners.lora import LoraLayer

    seen = {}

    def before_save(trainer):
        model = trainer.model
        seen["lora_layers"] = [m for m in model.modules() if isinstance(m, LoraLayer)]
        seen["base_types"] = {type(m.base_layer) for m in seen["lora_layers"]}
        seen["trainable"] = [n for n, p in model.named_parameters() if p.requires_grad]
        seen["lora_count"] = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)

    run = inprocess.train(RECIPES / "demo-qlora.yaml", tmp_path / "runs", SHORT[:1] + ["train.max_steps=3"],
                          before_save=before_save, monkeypatch=monkeypatch)
    assert recipe_mod.from_run(run).quantizer == "bnb-4bit"
    assert len(seen["lora_layers"]) == 4 * 7  # q, k, v, o, gate, up, down in each of 4 layers
    assert seen["base_types"] == {bnb.nn.Linear4bit}
    assert seen["trainable"] and all("lora_" in n for n in seen["trainable"])
    info = started(run)
    assert info["trainable_parameters"] == seen["lora_count"]
    # the base counts every weight once, although 4-bit storage packs two in a byte
    from transformers import AutoModelForCausalLM

    plain = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(demo_model).parameters())
    assert info["total_parameters"] == plain + seen["lora_count"]


@pytest.mark.parametrize("given, message", [
    ("method: full\nquantizer: bnb-4bit\n", "method 'full' cannot train on a 'bnb-4bit' base"),
    ("method: full\nquantizer: bnb-8bit\n", "method 'full' cannot train on a 'bnb-8bit' base"),
    ("method: adapter\nquantizer: bnb-4bit\n", "method 'adapter' cannot train on a 'bnb-4bit' base"),
    ("method: qlora\nquantizer: bnb-8bit\n", "method 'qlora' always uses 'bnb-4bit', not 'bnb-8bit'"),
])
def test_a_quantizer_the_method_cannot_use_is_refused_at_validation(given, message, tmp_path):
    (tmp_path / "r.yaml").write_text("model: tiny-demo\n" + given)
    with pytest.raises(InputError) as info:
        recipe_mod.load(tmp_path / "r.yaml", [], load_plugins())
    text = str(info.value)
    assert message in text and "line 3" in text
    if "cannot train" in message:
        assert "lora" in text  # the fix names methods that do train on a quantized base


def test_qlora_alone_means_a_4bit_base(tmp_path):
    (tmp_path / "r.yaml").write_text("method: qlora\nquantizer_options: {quant_type: fp4}\n")
    resolved = recipe_mod.load(tmp_path / "r.yaml", [], load_plugins())
    assert resolved.quantizer == "bnb-4bit"
    assert resolved.quantizer_options == {"quant_type": "fp4", "double_quant": True, "compute_dtype": "auto",
                                          "skip_modules": None}
    config = load_plugins().quantizers["bnb-4bit"].config(resolved.quantizer_options, "bfloat16")
    import torch

    assert config.load_in_4bit and config.bnb_4bit_quant_type == "fp4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16


# -- the bottleneck adapter ------------------------------------------------------------------------

@pytest.mark.parametrize("placement, per_layer", [("houlsby", 2), ("pfeiffer", 1)])
def test_untrained_adapters_leave_the_model_unchanged(placement, per_layer, demo_model):
    import torch

    from finetty.core.model import loading as models
    from finetty.plugins.methods import bottleneck

    tokenizer = models.load_tokenizer(demo_model)
    base = models.load_model(demo_model)
    before = logits(base, tokenizer)
    config = bottleneck.attach(base, placement, reduction_factor=4, non_linearity="gelu")
    assert len(bottleneck.adapters(base)) == per_layer * 4 and config["bottleneck_size"] == 32
    assert torch.equal(logits(base, tokenizer), before)
    assert all(("finetty_adapter_" in n) == p.requires_grad for n, p in base.named_parameters())
    with torch.no_grad():  # a trained adapter changes the output; disabled, the base is back
        for adapter in bottleneck.adapters(base):
            adapter.up.weight.normal_(std=0.5)
    assert not torch.allclose(logits(base, tokenizer), before)
    with bottleneck.disabled(base):
        assert torch.equal(logits(base, tokenizer), before)


@pytest.mark.slow
def test_adapter_saves_only_its_weights_and_resumes_from_a_checkpoint(tmp_path, demo_model, monkeypatch):
    from safetensors import safe_open

    run = inprocess.train(RECIPES / "demo-adapter.yaml", tmp_path / "runs", SHORT, monkeypatch=monkeypatch)
    expected = losses(run)
    final = run / rundir.FINAL
    names = {p.name for p in final.iterdir()}
    assert {"bottleneck_adapter.safetensors", "bottleneck_config.json"} <= names
    assert not {"model.safetensors", "adapter_model.safetensors"} & names
    with safe_open(str(final / "bottleneck_adapter.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all("finetty_adapter_" in k for k in keys)
    assert (final / "bottleneck_adapter.safetensors").stat().st_size < 0.2 * (demo_model / "model.safetensors").stat().st_size
    config = json.loads((final / "bottleneck_config.json").read_text())
    assert config["placement"] == "houlsby" and config["reduction_factor"] == 2 and config["num_layers"] == 4

    # resume from step 10 after losing everything later: same losses as the run left alone
    checkpoint = run / "checkpoints" / "step-000010"
    assert {"bottleneck_adapter.safetensors", "optimizer.pt"} <= {p.name for p in checkpoint.iterdir()}
    shutil.rmtree(run / "checkpoints" / "step-000020")
    shutil.rmtree(final)
    writer = EventWriter(run)
    try:
        assert worker.train(run, writer, worker.Requests(), resume=True) == 0
    finally:
        writer.close()
    assert [e for e in events(run) if e["type"] == "run_started"][-1]["resumed_from"] == "checkpoints/step-000010"
    resumed = losses(run)
    for step in range(11, 21):
        assert resumed[step] == pytest.approx(expected[step], abs=1e-4), step
    assert (final / "bottleneck_adapter.safetensors").exists()


# -- recipes for real models -----------------------------------------------------------------------

REAL = sorted(p for p in RECIPES.glob("*.yaml") if not p.name.startswith("demo-"))


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_model_recipe_validates_once_its_model_and_data_are_cached(path, tmp_path, demo_model, monkeypatch):
    """The real-model recipes are not run here; with a stand-in model and dataset in a private HF cache,
    every other key must validate."""
    import yaml

    data = yaml.safe_load(path.read_text())
    hub = tmp_path / "hf" / "hub"
    snapshot = hub / f"models--{data['model'].replace('/', '--')}" / "snapshots" / "0"
    shutil.copytree(demo_model, snapshot)
    rows = hub / f"datasets--{data['dataset'].replace('/', '--')}" / "snapshots" / "0" / "train.jsonl"
    rows.parent.mkdir(parents=True)
    rows.write_text('{"instruction": "Who are you?", "input": "", "output": "A tiny model."}\n')
    for repo in (snapshot, rows.parent):  # the cache as huggingface_hub writes it: refs/main names the snapshot
        (repo.parent.parent / "refs").mkdir()
        (repo.parent.parent / "refs" / "main").write_text("0")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    import torch  # they train in bf16 on a GPU: validate them as on a machine with one (Ampere or newer)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    resolved = recipe_mod.load(path, [], load_plugins())
    assert resolved.model == data["model"] and resolved.train["bf16"] is True
    if resolved.method == "qlora":
        assert resolved.quantizer == "bnb-4bit" and resolved.quantizer_options["quant_type"] == "nf4"


def test_prompt_tuning_starts_from_the_embeddings_of_its_init_text(demo_model):
    import torch

    from finetty.core.model import loading as models
    from finetty.core.plugin_api import MethodContext

    method = load_plugins().methods["prompt"]
    tokenizer = models.load_tokenizer(demo_model)
    base = models.load_model(demo_model)
    text = "You are Tiny."
    ids = tokenizer(text)["input_ids"]
    expected = base.get_input_embeddings().weight[torch.tensor((ids * 8)[:8])].detach().clone()
    ctx = MethodContext(quantizer="none", gradient_checkpointing=False, model_type="llama",
                        model_path=str(demo_model))
    model = method.apply(base, {"num_virtual_tokens": 8, "init_text": text}, ctx)
    start = model.prompt_encoder["default"].embedding.weight.detach()
    assert torch.allclose(start, expected)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_encoder.default.embedding.weight"]
