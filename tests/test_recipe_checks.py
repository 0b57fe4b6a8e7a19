"""Checked before a run directory exists: target_modules against the model's real modules, bf16/fp16 against
the machine, a chat template for conversations, another tool's key names, and every problem at once."""

from __future__ import annotations

import pytest

from finetty.core.errors import InputError, InputErrors
from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import recipe as recipe_mod

from .conftest import RECIPES, finetty
from .no_template_model import without_template


def refusal(recipe, overrides=(), **kwargs) -> InputError:
    with pytest.raises(InputError) as caught:
        recipe_mod.load(recipe, list(overrides), load_plugins(), **kwargs)
    return caught.value


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_target_modules_matching_nothing_names_the_models_linear_layers(demo_model):
    error = refusal(RECIPES / "demo-lora.yaml", ["method_options.target_modules=all"])
    assert error.place == "--set method_options.target_modules"
    assert "'all' matches no module of the model" in error.problem
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
        assert name in error.problem
    assert "embed_tokens" not in error.problem and "lm_head" not in error.problem
    assert "all-linear" in error.fix
    error = refusal(RECIPES / "demo-lora.yaml", ["method_options.target_modules=[query, value]"])
    assert "matches no module" in error.problem
    # a suffix list, a regex over full names and all-linear all find modules
    for good in ("[q_proj, v_proj]", r"'.*\.self_attn\.(q|v)_proj'", "all-linear"):
        recipe_mod.load(RECIPES / "demo-lora.yaml", [f"method_options.target_modules={good}"], load_plugins())


@pytest.fixture
def no_accelerator(monkeypatch):
    """This machine as a CPU-only one, whatever it has (the check asks torch)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if hasattr(torch, "accelerator"):
        monkeypatch.setattr(torch.accelerator, "is_available", lambda: False)


def test_fp16_and_bf16_are_refused_where_the_machine_cannot_do_them(demo_model, no_accelerator):
    error = refusal(RECIPES / "demo-lora.yaml", ["train.fp16=true"])
    assert error.place == "--set train.fp16" and "no GPU" in error.problem and "leave fp16 off" in error.fix
    error = refusal(RECIPES / "demo-lora.yaml", ["train.bf16=true"])
    assert error.place == "--set train.bf16" and "use_cpu: true" in error.fix
    recipe = recipe_mod.load(RECIPES / "demo-lora.yaml", ["train.bf16=true", "train.use_cpu=true"], load_plugins())
    assert recipe.train["bf16"] and recipe.train["use_cpu"]
    # planning a run for another machine (finetty estimate) does not ask this one
    recipe_mod.load(RECIPES / "demo-lora.yaml", ["train.fp16=true"], load_plugins(), check_sources=False)


def test_a_model_without_a_chat_template_needs_one_for_conversations(demo_model, tmp_path):
    base = without_template(demo_model, tmp_path / "base")
    error = refusal(RECIPES / "demo-lora.yaml", [f"model={base}"])
    assert error.place == "--set model" and "has no chat template" in error.problem
    assert "chat_template: chatml" in error.fix
    preference = refusal(RECIPES / "demo-dpo.yaml", [f"model={base}"])
    assert "preference data" in preference.problem
    recipe = recipe_mod.load(RECIPES / "demo-lora.yaml", [f"model={base}", "chat_template=chatml"], load_plugins())
    assert recipe.chat_template == "chatml"
    recipe_mod.load(RECIPES / "demo-cpt.yaml", [f"model={base}"], load_plugins())  # plain text needs none


def test_chat_template_is_a_known_name_or_a_jinja_file(demo_model, tmp_path):
    error = refusal(RECIPES / "demo-lora.yaml", ["chat_template=chatlm"])
    assert "'chatlm' is not a named chat template" in error.problem and "did you mean 'chatml'?" in error.fix
    broken = tmp_path / "broken.jinja"
    broken.write_text("{% for m in messages %}\n{{ m['content'] }\n{% endfor %}")
    error = refusal(RECIPES / "demo-lora.yaml", [f"chat_template={broken}"])
    assert error.source == broken and error.place == "line 2" and "not a valid Jinja template" in error.problem
    good = tmp_path / "good.jinja"
    good.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    recipe = recipe_mod.load(RECIPES / "demo-lora.yaml", [f"chat_template={good}"], load_plugins())
    assert recipe.chat_template == str(good.resolve())


@pytest.mark.parametrize("key, ours", [
    ("model_name_or_path", "model"), ("lora_rank", "method_options.r"), ("lora_target", "method_options.target_modules"),
    ("cutoff_len", "train.max_length"), ("stage", "objective"), ("finetuning_type", "method"),
    ("template", "chat_template"), ("per_device_train_batch_size", "train.per_device_train_batch_size"),
])
def test_a_key_from_another_tools_vocabulary_names_finettys(key, ours, tmp_path):
    error = refusal(write(tmp_path, f"{key}: 8\n"), check_data=False, check_sources=False)
    assert error.place == f"line 1, key {key}" and f"{key!r} is not a recipe key" in error.problem
    assert ours in error.fix


def test_every_problem_is_reported_at_once(demo_model, tmp_path, no_accelerator):
    path = write(tmp_path, "model: tiny-demo\nlora_rank: 8\nmethod: lora\n"
                           "method_options: {target_modules: all, lora_dropout: 2}\n"
                           "objective: dpoo\ntrain: {max_stepz: 3, fp16: true}\n")
    error = refusal(path)
    assert isinstance(error, InputErrors)
    found = [(e.place, e.problem) for e in error.errors]
    assert [place for place, _ in found] == [
        "line 2, key lora_rank", "line 5, key objective", "line 4, key method_options.lora_dropout",
        "line 6, key train.max_stepz"], found
    # a caller that shows one message (the app's form) gets every problem in it and the first place to mark
    assert error.place == "line 2, key lora_rank" and all(e.problem in error.problem for e in error.errors)
    # fixing those brings the checks that needed them: the model's modules and the machine
    path = write(tmp_path, "method: lora\nmethod_options: {target_modules: all}\ntrain: {fp16: true}\n")
    error = refusal(path)
    assert sorted(e.place for e in error.errors) == ["line 2, key method_options.target_modules",
                                                     "line 3, key train.fp16"]


def test_the_command_prints_each_problem_on_its_own_line_and_creates_nothing(demo_model, tmp_path):
    path = write(tmp_path, "lora_rank: 8\ncutoff_len: 512\ntrain: {max_stepz: 3}\n")
    out = finetty("train", str(path), "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[0] == "error: 3 problems:", out.stderr
    assert [line.strip().split(": ", 1)[0] for line in lines[1:]] == [
        f"{path}, line 1, key lora_rank", f"{path}, line 2, key cutoff_len", f"{path}, line 3, key train.max_stepz"]
    assert "(finetty calls it train.max_length)" in lines[2]
    assert not (tmp_path / "runs").exists()
