"""A third-party method and quantizer (tests/fixtures/thirdparty_plugin.py, installed as a distribution) are
treated as built-ins are: the method is estimated byte for byte, lora trains on the quantizer, ``export
--merge`` goes through its dequantize step, and a run names the package its plugins came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetty.core.memory import estimate as estimate_mod
from finetty.core.plugin import registry as registry_mod
from finetty.core.recipe import recipe as recipe_mod

from . import inprocess
from .conftest import RECIPES, events, finetty, losses, own_plugin_names
from .test_estimate import _optimizer_bytes, _storage_bytes, _weight_tensors
from .test_plugins import install_fake_distribution

SOURCE = Path(__file__).parent / "fixtures" / "thirdparty_plugin.py"


@pytest.fixture
def thirdparty(tmp_path, monkeypatch):
    """The plugin installed as ``finetty-thirdparty`` 1.0 on a folder on sys.path; yields (registry, env)."""
    site = tmp_path / "site"
    install_fake_distribution(site, "finetty-thirdparty", {"finetty_thirdparty": SOURCE.read_text()},
                              {"thirdparty": "finetty_thirdparty"})
    monkeypatch.syspath_prepend(str(site))
    allow = own_plugin_names() + ",thirdparty"
    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", allow)
    found = registry_mod.discover()
    assert found.owners[("method", "norms")].distribution == "finetty-thirdparty", found.failed
    return found, {"PYTHONPATH": str(site), "FINETTY_LOAD_PLUGINS": allow}


def _recipe(registry, *overrides: str):
    return recipe_mod.load(RECIPES / "demo-lora.yaml", list(overrides), registry, check_data=False,
                           check_sources=False)


@pytest.mark.parametrize("overrides", [
    ("method=norms", "method_options={}"),
    ("quantizer=half-linear",),
    ("quantizer=half-linear", "quantizer_options.skip_modules=[down_proj]", "train.optim=adamw_bnb_8bit"),
], ids=["norms", "lora-on-half-linear", "lora-on-half-linear-skip-8bit-optim"])
def test_third_party_components_are_estimated_like_builtins(overrides, thirdparty, demo_model):
    from finetty.core.train import worker

    registry, _ = thirdparty
    recipe = _recipe(registry, *overrides)
    found = estimate_mod.estimate(recipe, gpus=[], registry=registry)
    assert found.exact_trainable and not [n for n in found.notes if "describe" in n], found.notes
    _, _, model, _ = worker._setup_model(recipe, registry, None)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert found.weights == _storage_bytes(_weight_tensors(model)), found.weights_detail
    assert found.trainable_parameters == sum(p.numel() for p in trainable) > 0
    assert found.gradients == sum(p.numel() * p.element_size() for p in trainable)
    assert found.optimizer == _optimizer_bytes(model, recipe)


def test_finetty_estimate_counts_the_third_party_method(thirdparty, demo_model):
    registry, env = thirdparty
    expected = estimate_mod.estimate(_recipe(registry, "method=norms", "method_options={}"), gpus=[],
                                     registry=registry)
    out = finetty("estimate", str(RECIPES / "demo-lora.yaml"), "--set", "method=norms", "--set", "method_options={}",
                  "--gpu-memory", "24GiB", env=env)
    assert out.returncode == 0, out.stderr
    assert f"{expected.trainable_parameters / 1e6:,.2f}M trainable)" in out.stdout  # not "approximate"
    assert "does not describe" not in out.stdout


def test_lora_trains_on_a_third_party_quantizer_and_merges_through_its_dequantize(thirdparty, demo_model, tmp_path,
                                                                                monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    from finetty.core.results import export, inference
    from finetty.core.train import worker

    registry, _ = thirdparty
    stored = {}

    def look(trainer):
        weights = [m.weight for n, m in trainer.model.named_modules() if type(m).__name__ == "HalfLinear"]
        stored.update(count=len(weights), dtypes={w.dtype for w in weights})

    run_dir = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path / "runs",
                              ["quantizer=half-linear", "train.max_steps=16", "train.logging_steps=1",
                               "train.per_device_train_batch_size=4", "train.max_length=96", "train.save_steps=16"],
                              monkeypatch=monkeypatch, before_save=look, registry=registry)
    loss = losses(run_dir)
    last = [loss[s] for s in sorted(loss)[-4:]]
    assert sum(last) / len(last) < 0.8 * loss[1], loss
    layers = json.loads((demo_model / "config.json").read_text())["num_hidden_layers"]
    assert stored == {"count": 7 * layers, "dtypes": {torch.bfloat16}}  # every decoder linear, trained as stored
    started = next(e for e in events(run_dir) if e["type"] == "run_started")
    assert {"kind": "quantizer", "name": "half-linear", "plugin": "thirdparty", "distribution": "finetty-thirdparty",
            "version": "1.0"} in started["plugins"]

    tuned = inference.load(run_dir, registry=registry).model
    result = export.export(run_dir, tmp_path / "merged", merge=True, registry=registry)
    assert result.merged
    merged = AutoModelForCausalLM.from_pretrained(str(result.path))
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 11, 2]])
    with torch.no_grad():
        want, got = tuned(input_ids=ids).logits, merged(input_ids=ids).logits
    # merged in float32 after dequantize: the same function as the adapter on the bfloat16-stored base
    # (folding it into the bfloat16 weights instead would add bfloat16 rounding to every merged weight)
    assert torch.allclose(want, got, atol=1e-4), (want - got).abs().max()

    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", own_plugin_names())  # the package is gone
    without = registry_mod.discover()
    monkeypatch.setattr(worker, "load_plugins", lambda: without)
    with pytest.raises(worker.PluginFailure, match="install finetty-thirdparty 1.0"):
        worker.train(run_dir, worker.NullWriter(), worker.Requests(), resume=True)


@pytest.mark.parametrize("overrides,hidden", [
    (("method=full", "method_options={}"), ["bitsandbytes", "peft"]),  # full and sft need neither
    ((), ["bitsandbytes"]),  # lora needs peft
    (("quantizer=half-linear",), ["bitsandbytes"]),  # a quantizer that needs nothing more
    (("quantizer=bnb-4bit",), []),  # bitsandbytes and peft's k-bit preparation
    (("method=norms", "method_options={}", "train.optim=adamw_bnb_8bit"), ["peft"]),  # the optimizer needs bnb
    (("objective=kto",), None),  # an objective that does not say what it needs: nothing is hidden
], ids=["full", "lora", "lora-half-linear", "lora-bnb-4bit", "norms-8bit-optim", "undeclared"])
def test_the_worker_hides_the_libraries_no_component_names(overrides, hidden, thirdparty, monkeypatch):
    """Read from each component's runtime_libraries (the import trimming that saves seconds at worker start)."""
    import dataclasses
    import sys

    from finetty.core.train import worker

    registry, _ = thirdparty
    recipe = _recipe(registry, *overrides)
    if hidden is None:  # (made up here: whatever kto says today, one that says nothing keeps everything)
        kto = dataclasses.replace(registry.objectives["kto"], runtime_libraries=None)
        monkeypatch.setitem(registry.components["objective"], "kto", kto)
        hidden = []
    for name in ("bitsandbytes", "peft"):  # skipping sets sys.modules[name] = None: undo it after the test
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, None)
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.delenv("FINETTY_KEEP_IMPORTS", raising=False)
    assert worker._skip_unneeded_imports(recipe, registry) == hidden


def test_a_run_whose_method_is_no_longer_installed_names_the_package(thirdparty, demo_model, tmp_path, monkeypatch):
    """The run_started event records where each component came from; export and the worker say what to install."""
    from finetty.core.errors import InputError
    from finetty.core.results import export
    from finetty.core.run import rundir
    from finetty.core.train import worker

    registry, _ = thirdparty
    run_dir = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path / "runs",
                              ["method=norms", "method_options={}", "train.max_steps=1", "train.max_length=32",
                               "train.per_device_train_batch_size=1", "train.save_steps=1"],
                              monkeypatch=monkeypatch, registry=registry)
    assert {"kind": "method", "name": "norms", "plugin": "thirdparty", "distribution": "finetty-thirdparty",
            "version": "1.0"} in rundir.recorded_plugins(run_dir)
    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", own_plugin_names())  # the package is gone
    without = registry_mod.discover()
    with pytest.raises(InputError, match="install finetty-thirdparty 1.0"):
        export.export(run_dir, tmp_path / "out", registry=without)
    monkeypatch.setattr(worker, "load_plugins", lambda: without)
    with pytest.raises(worker.PluginFailure, match="method 'norms' is not available: it came from plugin "
                                                  "'thirdparty'; install finetty-thirdparty 1.0"):
        worker.train(run_dir, worker.NullWriter(), worker.Requests(), resume=True)
