"""model_options (attention and dtype), Liger and NEFTune: checked against the machine, and in effect when they run.

The refusals are checked through the recipe validator (the bad-input corpus
runs the same ones through ``finetty train``); the training tests train the
tiny demo for a few steps in this process and read the losses from
events.jsonl.
"""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest

from finetty.core.data import packing
from finetty.core.errors import InputError, InputErrors
from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import machine
from finetty.core.recipe import recipe as recipe_mod

from . import inprocess
from .conftest import RECIPES, losses

SHORT = ["train.max_steps=3", "train.logging_steps=1", "train.save_steps=1000", "train.warmup_steps=0"]


def refusal(overrides: list[str]) -> str:
    """The one message the validator gives for the default recipe with ``overrides``."""
    with pytest.raises((InputError, InputErrors)) as caught:
        recipe_mod.load(None, overrides, load_plugins(), check_data=False)
    return " ".join(str(caught.value).split())


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is not None and machine.has_cuda(),
                    reason="this machine can run flash-attention 2")
def test_flash_attention_2_is_refused_on_this_machine_with_the_reason():
    message = refusal(["model_options.attn_implementation=flash_attention_2"])
    assert "model_options.attn_implementation" in message
    assert "flash_attention_2 needs the flash-attn package and a CUDA GPU" in message
    if importlib.util.find_spec("flash_attn") is None:
        assert "the flash-attn package is not installed" in message
    if not machine.has_cuda():
        assert "this machine has no CUDA GPU" in message


def test_flash_attention_is_accepted_where_the_package_and_a_gpu_are(monkeypatch):
    """The same check on a machine that has them (a double for the GPU and the package)."""
    monkeypatch.setattr(machine, "has_cuda", lambda: True)
    assert "pip install flash-attn" in machine.attention_problem("flash_attention_2")[1]
    monkeypatch.setattr(machine, "installed", lambda module: module in ("flash_attn", "kernels"))
    assert machine.attention_problem("flash_attention_2") is None
    assert "flash-attn-3" in machine.attention_problem("flash_attention_3")[0]
    assert machine.attention_problem("kernels-community/flash-attn2") is None
    # flash kernels take bfloat16 or float16 only: a float32 run is told how to compute in half precision
    message = refusal(["model_options.attn_implementation=flash_attention_2"])
    assert "flash_attention_2 computes in bfloat16 or float16 only, and this recipe computes in float32" in message
    assert "add bf16: true under train:" in message
    recipe = recipe_mod.load(None, ["model_options.attn_implementation=flash_attention_2", "train.bf16=true",
                                    "train.use_cpu=true"],
                             load_plugins(), check_data=False)
    assert recipe.model_options["attn_implementation"] == "flash_attention_2"


@pytest.mark.skipif(importlib.util.find_spec("kernels") is not None, reason="the kernels package is installed")
def test_a_kernels_hub_attention_without_the_kernels_package_is_refused():
    message = refusal(["model_options.attn_implementation=kernels-community/flash-attn2"])
    assert "is a kernels-hub attention" in message and "pip install kernels" in message


def test_model_options_keys_and_values_are_checked():
    assert "did you mean 'attn_implementation'" in refusal(["model_options.attn_implementaton=sdpa"])
    assert "'flash' is not an attention implementation" in refusal(["model_options.attn_implementation=flash"])
    assert "must be one of auto, bfloat16, float16, float32" in refusal(["model_options.torch_dtype=fp8"])
    # a top-level key of the model's is pointed at its section
    assert "model_options.attn_implementation" in refusal(["attn_implementation=sdpa"])


@pytest.mark.skipif(machine.has_cuda(), reason="on a GPU the dtype rule is the GPU's")
def test_a_half_precision_dtype_on_the_cpu_meets_the_bf16_and_fp16_rule():
    message = refusal(["model_options.torch_dtype=float16"])
    assert "model_options.torch_dtype: torch_dtype is float16, and this machine has no GPU" in message
    message = refusal(["model_options.torch_dtype=bfloat16"])
    assert "add use_cpu: true under train:" in message
    recipe = recipe_mod.load(None, ["model_options.torch_dtype=bfloat16", "train.use_cpu=true"], load_plugins(),
                             check_data=False)
    assert recipe.model_options == {"attn_implementation": None, "torch_dtype": "bfloat16"}


@pytest.mark.skipif(importlib.util.find_spec("liger_kernel") is not None and machine.has_cuda(),
                    reason="this machine can run Liger kernels")
def test_liger_kernels_are_refused_where_they_cannot_run():
    message = refusal(["train.use_liger_kernel=true"])
    assert "train.use_liger_kernel: use_liger_kernel needs the liger-kernel package and a CUDA GPU" in message
    assert "leave use_liger_kernel off here" in message


def test_packing_takes_flash_attentions_varlen_path_only_when_its_kernel_is_there(monkeypatch):
    """With flash_attention_2 and flash_attn installed the model is left to transformers' varlen kernel;
    without the kernel, or under sdpa or eager, it is switched to the split-sdpa attention."""
    switched = []

    def model(implementation):
        config = SimpleNamespace(_attn_implementation=implementation)

        def switch(name):
            switched.append(name)
            config._attn_implementation = name

        return SimpleNamespace(config=config, set_attn_implementation=switch)

    monkeypatch.setattr(packing, "_found", lambda module: module == "flash_attn")
    assert packing.packed_path("flash_attention_2") == packing.VARLEN
    assert packing.use_packed_attention(model("flash_attention_2")) is None and switched == []
    monkeypatch.setattr(packing, "_found", lambda module: False)
    assert packing.packed_path("flash_attention_2") == packing.SPLIT_SDPA
    assert packing.use_packed_attention(model("flash_attention_2")) == "flash_attention_2"
    assert switched == [packing.ATTENTION]
    for name in ("sdpa", "eager"):
        assert packing.packed_path(name) == packing.SPLIT_SDPA
    with pytest.raises(ValueError, match="train.packing needs sdpa, eager or flash attention"):
        packing.packed_path("kernels-community/some-other-kernel")


@pytest.mark.slow
def test_sdpa_and_eager_train_with_equal_losses_and_neftune_changes_them(tmp_path, monkeypatch):
    """The recipe's attention reaches from_pretrained (the trained model uses it), both compute the same
    losses, and NEFTune's noise on the embeddings, with the same seed and data, gives other ones."""
    used = {}

    def run(name: str, *more: str):
        def seen(trainer):
            base = trainer.model.get_base_model()
            used[name] = base.config._attn_implementation

        return inprocess.train(RECIPES / "demo-lora.yaml", tmp_path / name, [*SHORT, *more], monkeypatch=monkeypatch,
                               before_save=seen)

    sdpa = losses(run("sdpa", "model_options.attn_implementation=sdpa"))
    eager = losses(run("eager", "model_options.attn_implementation=eager"))
    noisy = losses(run("neftune", "model_options.attn_implementation=sdpa", "train.neftune_noise_alpha=50"))
    assert used == {"sdpa": "sdpa", "eager": "eager", "neftune": "sdpa"}
    assert sorted(sdpa) == sorted(eager) == sorted(noisy) == [1, 2, 3]
    for step in sdpa:
        assert eager[step] == pytest.approx(sdpa[step], abs=1e-4)
    assert all(abs(noisy[step] - sdpa[step]) > 1e-3 for step in sdpa), (sdpa, noisy)


def test_finetty_plugins_options_lists_the_model_options(capsys):
    from finetty.core.cli import commands

    capsys.readouterr()
    assert commands.main(["plugins", "--options"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "model_options: how the base model loads" in text
    assert "attn_implementation (str, default None): attention kernel: sdpa, eager" in text
    assert "torch_dtype (str, default 'auto')" in text and "[one of: auto, bfloat16, float16, float32]" in text


def test_the_weights_load_in_torch_dtype_where_given_else_in_the_compute_dtype():
    from finetty.core.memory import estimate
    from finetty.core.model import loading

    assert loading.weights_dtype({"bf16": True}, {"torch_dtype": "auto"}) == "bfloat16"
    assert loading.weights_dtype({"bf16": True}, {"torch_dtype": "float32"}) == "float32"
    assert loading.weights_dtype({}, {"torch_dtype": "bfloat16"}) == "bfloat16"
    assert loading.weights_dtype({"fp16": True}, None) == "float16"
    # the estimate counts the weights in the dtype they load in
    recipe = recipe_mod.load(None, ["model_options.torch_dtype=bfloat16", "train.use_cpu=true"], load_plugins(),
                             check_data=False)
    assert estimate._spec(recipe).dtype == "bfloat16"


def test_the_new_run_form_carries_model_options_to_the_recipe_and_back():
    from finetty.tui import form

    state = form.from_recipe({"model": "tiny-demo", "model_options": {"attn_implementation": "eager"}},
                             {"tiny-demo"}, {"identity"})
    assert form.to_recipe(state)["model_options"] == {"attn_implementation": "eager"}
    assert "model_options" not in form.to_recipe(form.from_recipe({"model": "tiny-demo"}, {"tiny-demo"}, set()))
    assert form.widget_for("model_options.attn_implementation", state) == "opt-model-attn_implementation"


def test_the_new_run_form_shows_the_model_options_and_the_validator_checks_them(runs_dir, demo_model):
    from textual.widgets import Input

    from .test_tui_app import make_app, open_form, run, until

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = await open_form(pilot, app)
            assert screen.query_one("#opt-model-torch_dtype").field().read() == "auto"
            editor = screen.query_one("#opt-model-attn_implementation-editor", Input)
            editor.value = "eager"
            await until(pilot, lambda: screen.recipe is not None
                        and screen.recipe.model_options.get("attn_implementation") == "eager", what="eager")
            editor.value = "kernels community"
            await until(pilot, lambda: editor.has_class("-invalid"), what="the field marked")
            assert "'kernels community' is not an attention implementation" in screen.problem

    run(scenario())
