"""Every recipe in recipes/ validates, and the parser resolves what it should."""

import shutil
from pathlib import Path

import pytest
import yaml

from finetty.core.recipe import recipe as recipe_mod
from finetty.core.errors import InputError
from finetty.core.plugin.registry import load_plugins

from .conftest import RECIPES

ALL = sorted(RECIPES.glob("*.yaml"))


def test_there_are_recipes():
    assert any(p.name == "demo-lora.yaml" for p in ALL)


@pytest.mark.parametrize("path", ALL, ids=lambda p: p.name)
def test_recipe_validates(path: Path, request, tmp_path):
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# finetty train recipes/"), "a recipe opens with the command that runs it"
    registry = load_plugins()
    if "demo" in path.name:
        runs = None
        if str(yaml.safe_load(path.read_text()).get("model", "")).startswith("run:"):
            # a second stage (demo-dpo: model: run:latest:lora/sft) starts from a finished run of the first
            parent = request.getfixturevalue("identity_run")
            runs = tmp_path / "runs"
            shutil.copytree(parent, runs / parent.name)
        recipe = recipe_mod.load(path, [], registry, runs=runs)
    else:  # a real model: every key, option and combination is checked; the weights need not be here
        recipe = recipe_mod.load(path, [], registry, check_data=False, check_sources=False)
        try:
            recipe_mod.load(path, [], registry)
        except InputError as exc:  # not downloaded here: the message says how to get it
            assert "local Hugging Face cache" in str(exc) and "finetty pull" in str(exc), str(exc)
    assert recipe.method in registry.methods
    assert recipe.objective in registry.objectives


def test_overrides_and_defaults(tmp_path):
    registry = load_plugins()
    recipe = recipe_mod.load(RECIPES / "demo-lora.yaml", ["train.max_steps=7", "method_options.r=4",
                                                           "train.learning_rate=1e-4"], registry)
    assert recipe.train["max_steps"] == 7
    assert recipe.train["learning_rate"] == pytest.approx(1e-4)
    assert recipe.method_options["r"] == 4
    assert recipe.method_options["lora_dropout"] == 0.0  # filled from the plugin's description
    assert recipe.train["val_size"] == 0 and recipe.train["truncation"] == "truncate"


def test_relative_dataset_path_resolves_against_recipe_folder(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "data.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    (folder / "r.yaml").write_text("dataset: data.jsonl\n")
    recipe = recipe_mod.load(folder / "r.yaml", [], load_plugins())
    assert recipe.dataset == str((folder / "data.jsonl").resolve())


def test_misspelt_key_names_the_nearest(tmp_path):
    (tmp_path / "r.yaml").write_text("model: tiny-demo\nmethd: lora\n")
    with pytest.raises(InputError) as info:
        recipe_mod.load(tmp_path / "r.yaml", [], load_plugins())
    assert "line 2" in str(info.value) and "'method'" in str(info.value)
