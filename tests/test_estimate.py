"""The pre-flight estimate: weights, gradients and optimizer state equal the real tensors' bytes on the tiny model;
the rest (config lookup, verdicts, suggestions, the command) behaves as documented."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finetty.core.memory import estimate as estimate_mod
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.memory.gpu import GpuReading
from finetty.core.plugin.registry import load_plugins

from .conftest import RECIPES, finetty

GIB = 2**30


def _recipe(*overrides: str, path=RECIPES / "demo-lora.yaml"):
    return recipe_mod.load(path, list(overrides), load_plugins(), check_data=False, check_sources=False)


def _real_model(recipe):
    """The model exactly as the worker builds it for ``recipe`` (same loader, quantizer and method plugin)."""
    from finetty.core.train import worker

    _, _, model, _ = worker._setup_model(recipe, load_plugins(), None)
    return model


def _storage_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def _weight_tensors(model):
    """Every tensor the model holds: parameters, buffers, and bitsandbytes' quantization state."""
    import torch

    found = list(model.parameters()) + list(model.buffers())
    for p in model.parameters():
        state = getattr(p, "quant_state", None)
        if state is not None:
            found += [state.absmax, state.code]
            if state.offset is not None:
                found.append(state.offset)
            if state.nested:
                found += [state.state2.absmax, state.state2.code]
        if getattr(p, "SCB", None) is not None:
            found.append(p.SCB)
    return [t for t in found if isinstance(t, torch.Tensor)]


def _optimizer_bytes(model, recipe) -> int:
    """Build the optimizer the Trainer would, take one step, count its state."""
    import torch
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir="/tmp/unused", report_to="none", use_cpu=True,
                             optim=recipe.train.get("optim") or TrainingArguments.optim)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = cls(params, **kwargs)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return _storage_bytes([v for state in optimizer.state.values() for v in state.values()
                           if isinstance(v, torch.Tensor)])


CASES = [
    ("full", RECIPES / "demo-full.yaml", []),
    ("full-bf16", RECIPES / "demo-full.yaml", ["train.bf16=true"]),
    ("lora", RECIPES / "demo-lora.yaml", []),
    ("lora-bf16-qv", RECIPES / "demo-lora.yaml", ["train.bf16=true", "method_options.target_modules=[q_proj, v_proj]",
                                                 "method_options.r=4"]),
    ("lora-regex", RECIPES / "demo-lora.yaml", ["method_options.target_modules=.*mlp\\.(up|down)_proj"]),
    ("qlora", RECIPES / "demo-qlora.yaml", []),
    ("qlora-bf16-no-double-quant", RECIPES / "demo-qlora.yaml", ["train.bf16=true",
                                                                "quantizer_options.double_quant=false"]),
    ("lora-8bit", RECIPES / "demo-lora.yaml", ["quantizer=bnb-8bit"]),
    ("adapter-pfeiffer", RECIPES / "demo-lora.yaml", ["method=adapter", "method_options={placement: pfeiffer}"]),
    ("dora-8bit-optim", RECIPES / "demo-lora.yaml", ["method=dora", "train.optim=adamw_bnb_8bit"]),
]


@pytest.mark.parametrize("name,path,overrides", CASES, ids=[c[0] for c in CASES])
def test_weights_gradients_optimizer_match_the_real_tensors(name, path, overrides, demo_model):
    recipe = _recipe(*overrides, path=path)
    found = estimate_mod.estimate(recipe, gpus=[])
    model = _real_model(recipe)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert found.weights == _storage_bytes(_weight_tensors(model)), found.weights_detail
    assert found.trainable_parameters == sum(p.numel() for p in trainable)
    assert found.gradients == sum(p.numel() * p.element_size() for p in trainable)  # a grad is its param's size
    assert found.optimizer == _optimizer_bytes(model, recipe)


def test_estimate_imports_no_torch_and_is_fast():
    code = ("import sys, time; t = time.perf_counter(); from finetty.core.memory import estimate; from finetty.core.recipe import recipe; from finetty.core.plugin import registry; "
            "r = recipe.load('recipes/llama-3.1-8b-qlora.yaml', [], registry.load_plugins(), check_data=False, "
            "check_sources=False); e = estimate.estimate(r, gpus=[]); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(e.total)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=RECIPES.parent)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) > 8 * GIB


def test_known_config_is_used_when_the_model_is_not_cached_and_says_so():
    found = estimate_mod.estimate(_recipe(path=RECIPES / "qwen2.5-0.5b-qlora.yaml"), gpus=[])
    assert "not in the local cache" in found.config_source
    assert found.parameters == 494_032_768  # Qwen2.5-0.5B's published count
    llama = estimate_mod.estimate(_recipe(path=RECIPES / "llama-3.1-8b-qlora.yaml"), gpus=[])
    assert llama.parameters == 8_030_261_248


def test_verdicts_against_each_gpu_and_the_watermark():
    recipe = _recipe(path=RECIPES / "llama-3.1-8b-qlora.yaml")
    total = estimate_mod.estimate(recipe, gpus=[]).total
    roomy = GpuReading(0, "big", 0, int(total / 0.5), None, None)
    tight = GpuReading(1, "tight", 0, int(total / 0.95), None, None)
    small = GpuReading(2, "small", 0, int(total * 0.9), None, None)
    found = estimate_mod.estimate(recipe, gpus=[roomy])
    assert found.fits and found.gpus[0].under_watermark and not found.suggestions
    found = estimate_mod.estimate(recipe, gpus=[tight])
    assert found.fits is False and found.gpus[0].fits and not found.gpus[0].under_watermark
    assert "above the 90% watermark" in found.verdict()
    found = estimate_mod.estimate(recipe, gpus=[small])
    assert found.fits is False and not found.gpus[0].fits and "does not fit" in found.verdict()
    assert found.suggestions and found.suggestions[0].fits
    tiny = GpuReading(3, "tiny", 0, int(total / 3), None, None)
    nothing_alone = estimate_mod.estimate(recipe, gpus=[tiny])
    assert nothing_alone.suggestions[-1].why == "all of these together"
    # every suggestion, applied, gives the total it promises
    for suggestion in found.suggestions:
        if "max_length" in suggestion.change or "batch_size" in suggestion.change:
            changes = [c for c in suggestion.change.split("--set ") if c.strip()]
            again = estimate_mod.estimate(_recipe(*[c.strip() for c in changes],
                                                  path=RECIPES / "llama-3.1-8b-qlora.yaml"), gpus=[small])
            assert again.total == suggestion.total


def test_activation_parts_move_the_way_they_should():
    base = estimate_mod.estimate(_recipe("train.max_length=512"), gpus=[])
    longer = estimate_mod.estimate(_recipe("train.max_length=1024"), gpus=[])
    half = estimate_mod.estimate(_recipe("train.max_length=512", "train.per_device_train_batch_size=4"), gpus=[])
    checkpointed = estimate_mod.estimate(_recipe("train.max_length=512", "train.gradient_checkpointing=true"),
                                         gpus=[])
    assert longer.activations == 2 * base.activations
    assert half.activations * 2 == base.activations
    assert checkpointed.activations < base.activations
    assert checkpointed.weights == base.weights and checkpointed.optimizer == base.optimizer


def test_unknown_model_is_a_clear_input_error(tmp_path):
    from finetty.core.errors import InputError

    recipe = _recipe()
    recipe.model = "nobody/nothing-7b"
    with pytest.raises(InputError) as info:
        estimate_mod.estimate(recipe, gpus=[])
    assert "nobody/nothing-7b" in str(info.value) and "finetty pull nobody/nothing-7b" in str(info.value)


def test_without_a_gpu_the_verdict_is_about_the_hosts_memory():
    recipe = _recipe(path=RECIPES / "llama-3.1-8b-qlora.yaml")
    roomy = estimate_mod.estimate(recipe, gpus=[], host_available=64 * GIB)
    assert roomy.fits is None and roomy.fits_here is True  # no GPU to judge; the host has room
    assert roomy.host_total == roomy.total - estimate_mod.CONTEXT_BYTES  # the same tensors, no CUDA context
    assert "trains on the CPU" in roomy.verdict() and "64.0 GiB available" in roomy.verdict()
    short = estimate_mod.estimate(recipe, gpus=[], host_available=4 * GIB)
    assert short.fits_here is False and short.summary().endswith("more than the 4.0 GiB free")
    two = estimate_mod.estimate(_recipe("launch.num_processes=2", path=RECIPES / "llama-3.1-8b-qlora.yaml"),
                                gpus=[], host_available=64 * GIB)
    assert two.host_total == 2 * (two.total - estimate_mod.CONTEXT_BYTES)  # each CPU process holds its copy
    on_gpu = estimate_mod.estimate(recipe, gpus=[GpuReading(0, "big", 0, 80 * GIB, None, None)])
    assert on_gpu.host_available is None and on_gpu.fits_here is on_gpu.fits is True


def test_estimate_command_prints_breakdown_and_verdict(demo_model):
    out = finetty("estimate", str(RECIPES / "demo-lora.yaml"), "--gpu-memory", "24GiB")
    assert out.returncode == 0, out.stderr
    for word in ("weights", "gradients", "optimizer state", "activations", "margin", "total", "fits"):
        assert word in out.stdout
    out = finetty("estimate", str(RECIPES / "llama-3.1-8b-qlora.yaml"), "--gpu-memory", "8GiB")
    assert out.returncode == 1
    assert "does not fit" in out.stdout and "not in the local cache" in out.stdout and "--set" in out.stdout
    out = finetty("estimate", str(RECIPES / "llama-3.1-8b-qlora.yaml"), "--json", "--gpu-memory", "80GB")
    data = json.loads(out.stdout)
    assert data["fits"] is True and data["total"] == sum(data[k] for k in ("weights", "gradients", "optimizer",
                                                                           "activations", "margin"))
    out = finetty("estimate", str(RECIPES / "demo-lora.yaml"), env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU here
    assert out.returncode == 0 and "trains on the CPU" in out.stdout and "available" in out.stdout
    out = finetty("estimate", str(RECIPES / "demo-lora.yaml"), "--gpu-memory", "lots")
    assert out.returncode == 2 and "--gpu-memory" in out.stderr


def _measured_activation_peak(recipe) -> int:
    """Peak bytes allocated above the start of one forward + backward on CPU (torch's profiler memory events)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model = _real_model(recipe)
    if recipe.train.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    torch.manual_seed(0)
    ids = torch.randint(0, 1000, (recipe.train["per_device_train_batch_size"], recipe.train["max_length"]))
    model(input_ids=ids, labels=ids).loss.backward()  # gradients exist before the measured step, as in training
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(input_ids=ids, labels=ids).loss.backward()
    timeline = sorted((e.time_range.start, e.cpu_memory_usage if e.name == "[memory]" else e.self_cpu_memory_usage)
                      for e in prof.events())
    current = peak = 0
    for _, change in timeline:
        current += change
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("overrides,low,high", [
    ([], -0.10, 0.10),
    (["method_options.lora_dropout=0.1"], -0.10, 0.10),
    (["train.per_device_train_batch_size=2", "train.max_length=512"], -0.10, 0.10),
    (["train.gradient_checkpointing=true"], 0.0, 1.0),  # conservative: one whole layer recomputed at once
], ids=["lora", "lora-dropout", "longer", "checkpointing"])
def test_activation_model_against_the_measured_peak(overrides, low, high, demo_model):
    recipe = _recipe(*overrides)
    predicted = estimate_mod.estimate(recipe, gpus=[]).activations
    measured = _measured_activation_peak(recipe)
    assert low <= predicted / measured - 1 <= high, (predicted, measured)
