"""bench/gpu_smoke.py on a machine without CUDA: one clear line and exit 0, so CPU machines can run it as-is;
and everything it hands finetty (every recipe, every CLI flag, every event type it reads) checked here, so a
renamed key fails on a CPU and not on the first GPU."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parent.parent / "bench" / "gpu_smoke.py"


def smoke_module():
    spec = importlib.util.spec_from_file_location("gpu_smoke", SMOKE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_smoke_skips_cleanly_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device: run bench/gpu_smoke.py itself")
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(SMOKE), "--work", str(work)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [
        "gpu_smoke: skipped, no CUDA device (torch.cuda.is_available() is False)"]
    assert not work.exists()  # nothing built, nothing trained


def _as_on_a_gpu_with_everything(monkeypatch) -> None:
    """The validator's view of an H200 with flash-attn and bitsandbytes installed: CUDA, bf16, the packages."""
    import torch

    from finetty.core.recipe import machine

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: True)
    real = machine.installed
    monkeypatch.setattr(machine, "installed", lambda module: module in ("flash_attn", "bitsandbytes") or real(module))


def _kept(written, resolved, place: str) -> None:
    """Every value the script wrote is in the resolved recipe as written (nothing dropped or renamed)."""
    if isinstance(written, dict):
        assert isinstance(resolved, dict), place
        for key, value in written.items():
            assert key in resolved, f"{place}.{key} is not in the resolved recipe"
            _kept(value, resolved[key], f"{place}.{key}")
    else:
        assert resolved == written, f"{place}: wrote {written!r}, resolved {resolved!r}"


@pytest.fixture(scope="module")
def smoke_models(tmp_path_factory):
    """The script's own tiny Llama and Qwen2, built once for this module."""
    return smoke_module().build_models(tmp_path_factory.mktemp("smoke-models"))


def test_every_recipe_the_smoke_check_trains_validates(tmp_path, monkeypatch, smoke_models):
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    smoke = smoke_module()
    models = smoke_models
    recipes = smoke.smoke_recipes(models, tmp_path)
    assert {"watermark", "oom-measure", "oom-fail", "oom-shrink", "bnb4", "bnb8", "bf16", "packing-sdpa",
            "packing-flash_attention_2", "estimate-lora", "estimate-qlora", "estimate-full", "fsdp"} == set(recipes)
    _as_on_a_gpu_with_everything(monkeypatch)
    registry = load_plugins()
    for label, text in recipes.items():
        path = tmp_path / f"{label}.yaml"
        path.write_text(text, encoding="utf-8")
        resolved = recipe_mod.load(path, [], registry, runs=tmp_path / "runs").to_dict()
        _kept(json.loads(text), resolved, label)
    assert json.loads(recipes["packing-flash_attention_2"])["model_options"] == {
        "attn_implementation": "flash_attention_2"}


def test_the_smoke_checks_cli_flags_and_event_types_exist():
    from finetty.core.cli.commands import build_parser
    from finetty.core.run.event_types import EVENT_TYPES

    parser = build_parser()
    train = parser.parse_args(["train", "r.yaml", "--runs-dir", "runs"])
    assert (train.recipe, train.runs_dir) == ("r.yaml", "runs")
    assert parser.parse_args(["estimate", "r.yaml", "--json"]).json is True
    read = set(re.findall(r'\["type"\] == "(\w+)"', SMOKE.read_text(encoding="utf-8")))
    assert {"step", "memory", "watermark", "run_failed", "run_finished", "shrink", "run_started"} <= read
    assert read <= set(EVENT_TYPES), read - set(EVENT_TYPES)


def test_the_packing_comparison_on_cpu_sdpa(tmp_path, smoke_models, monkeypatch):
    """The packing check's own arithmetic, on a CPU under sdpa: finetty's split sdpa gives every example the
    loss it has alone; and the comparison notices an example that sees its neighbour (the check has teeth)."""
    import torch

    from finetty.core.data import packing

    smoke = smoke_module()
    recipe = tmp_path / "packing.yaml"
    recipe.write_text(smoke.packing_recipe(smoke_models, "sdpa"), encoding="utf-8")
    path, alone, together, rounding = smoke.packed_and_alone(recipe, "cpu")
    assert path == packing.SPLIT_SDPA and rounding is None and len(alone) == 40
    assert max(smoke.relative_gaps(alone, together)) <= 1e-4

    def leaky(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
        """Causal over the whole packed row: every example sees the ones before it."""
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, is_causal=True,
                                                               enable_gqa=query.shape[1] != key.shape[1])
        return out.transpose(1, 2).contiguous(), None

    original = packing.packed_sdpa_forward
    monkeypatch.setattr(packing, "packed_sdpa_forward", lambda *a, **k: leaky(*a, **k)
                        if k.get("cu_seq_lens_q") is not None else original(*a, **k))
    try:
        _, alone, leaked, _ = smoke.packed_and_alone(recipe, "cpu")
    finally:
        monkeypatch.undo()
        packing._register()  # transformers' registry holds the function last registered: the real one again
    assert sum(smoke.relative_gaps(alone, leaked)) / len(alone) > 2e-3
