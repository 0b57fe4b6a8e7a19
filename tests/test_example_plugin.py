"""The third-party example plugin (examples/finetty-plugin-example), installed with pip, is listed by
``finetty plugins`` and a recipe using it trains; colliding and badly described plugins are skipped."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution

import pytest

from finetty.core.plugin import registry
from finetty.core.plugin_api import Method, Objective, Option, Quantizer, hookimpl

from .conftest import REPO, events, finetty, losses, only_run, own_plugin_names

EXAMPLE = REPO / "examples" / "finetty-plugin-example"


def _installed() -> bool:
    try:
        distribution("finetty-freeze-layers")
    except PackageNotFoundError:
        return False
    return True


needs_example = pytest.mark.skipif(not _installed(), reason="install it: pip install -e examples/finetty-plugin-example")
WITH_EXAMPLE = {"FINETTY_LOAD_PLUGINS": own_plugin_names() + ",freeze-layers"}


@needs_example
def test_finetty_plugins_lists_the_installed_example(monkeypatch):
    out = finetty("plugins", "--options", env=WITH_EXAMPLE)
    assert out.returncode == 0, out.stderr
    line = next(l for l in out.stdout.splitlines() if l.startswith("freeze-layers"))
    assert "method" in line and "ok" in line
    assert "last_layers (int, default 2)" in out.stdout
    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", WITH_EXAMPLE["FINETTY_LOAD_PLUGINS"])
    plugin = next(p for p in registry.discover().plugins if p.name == "freeze-layers")
    assert plugin.distribution == "finetty-freeze-layers" and plugin.provides == [("method", "freeze-layers")]


@pytest.mark.slow
@needs_example
def test_a_recipe_using_the_example_trains_only_the_last_layers(tmp_path, demo_model):
    out = finetty("train", str(EXAMPLE / "recipe-demo.yaml"), "--runs-dir", str(tmp_path),
                  "--set", "train.max_steps=20", "--set", "train.logging_steps=1", env=WITH_EXAMPLE)
    assert out.returncode == 0, out.stderr
    run = only_run(tmp_path)
    loss = losses(run)
    assert loss[20] < 0.8 * loss[1]
    started = next(e for e in events(run) if e["type"] == "run_started")
    assert 0 < started["trainable_parameters"] < started["total_parameters"] / 2

    import torch
    from transformers import AutoModelForCausalLM

    base = dict(AutoModelForCausalLM.from_pretrained(demo_model).named_parameters())
    trained = dict(AutoModelForCausalLM.from_pretrained(run / "final").named_parameters())
    changed = {name for name, p in trained.items() if not torch.equal(p, base[name])}
    assert changed and all(n.startswith(("model.layers.2.", "model.layers.3.", "model.norm.")) for n in changed)
    assert any(n.startswith("model.layers.3.") for n in changed)


def test_without_the_allowlist_entry_the_example_is_not_loaded():
    assert "freeze-layers" not in registry.load_plugins().methods


def test_collisions_with_builtins_and_bad_option_descriptions_are_reported_and_skipped():
    class Colliding:
        @staticmethod
        @hookimpl
        def register_quantizers(register):
            register(Quantizer(name="bnb-4bit", summary="an impostor", config=lambda o, d: None))

        @staticmethod
        @hookimpl
        def register_objectives(register):
            register(Objective(name="dpo", summary="an impostor", accepts=("preference",),
                               build_trainer=lambda ctx: None))
            register(Objective(name="orpo", summary="a new one", accepts=("preference",),
                               build_trainer=lambda ctx: None))

    class BadOptions:
        @staticmethod
        @hookimpl
        def register_methods(register):
            register(Method(name="loose", summary="options given as dicts", apply=None, load=None,
                            options=({"name": "r", "type": "int"},)))

    class BadOption:
        @staticmethod
        @hookimpl
        def register_methods(register):
            register(Method(name="worse", summary="an option whose default breaks its own type", apply=None,
                            load=None, options=(Option("r", "int", "eight", "rank"),)))

    found = registry.discover(extra=[("colliding", Colliding), ("bad-options", BadOptions), ("bad-option", BadOption)])
    by_name = {p.name: p for p in found.plugins}
    assert found.quantizers["bnb-4bit"].summary != "an impostor"
    assert found.objectives["dpo"].summary != "an impostor" and "orpo" in found.objectives
    assert "quantizer 'bnb-4bit' is already provided by plugin 'bnb'" in by_name["colliding"].error
    assert "objective 'dpo' is already provided by plugin 'dpo'" in by_name["colliding"].error
    assert "loose" not in found.methods and "options must be Option descriptors" in by_name["bad-options"].error
    assert "worse" not in found.methods and "default 'eight' must be a int" in by_name["bad-option"].error
    assert all(by_name[p].error is None for p in own_plugin_names().split(","))
