"""The New run form as data (tui/form.py): a recipe to the form and back, typed field errors, marked fields."""

from __future__ import annotations

import pytest
import yaml

from finetty.tui.form import (
    PATH,
    Field,
    FieldError,
    FormState,
    extra_line,
    field_for,
    from_recipe,
    to_recipe,
    uncarried,
    widget_for,
)

from .conftest import RECIPES

KNOWN_MODELS = {"tiny-demo"}
KNOWN_DATASETS = {"identity", "identity-preference", "tiny-corpus"}


def _without_comments(recipe: dict) -> dict:
    """What a recipe means to the form: empty option sections are the same as absent ones."""
    out = {k: v for k, v in recipe.items() if v not in ({}, None)}
    for kind in ("method", "quantizer", "objective"):
        out.setdefault(f"{kind}_options", {})
    out.setdefault("dataset_options", {})
    out.setdefault("format", "auto")
    return out


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_recipe_survives_the_form_and_back(path):
    recipe = yaml.safe_load(path.read_text())
    back = to_recipe(from_recipe(recipe, KNOWN_MODELS, KNOWN_DATASETS))
    expected = _without_comments(recipe)
    for key in ("model", "dataset", "method", "quantizer", "objective", "format", "dataset_options",
                "method_options", "quantizer_options", "objective_options", "launch", "trust_remote_code"):
        assert back.get(key) == expected.get(key), key
    train = {k: v for k, v in (recipe.get("train") or {}).items() if v is not False}
    assert back["train"] == train
    for key, value in expected.items():  # every key of the recipe, not only those above
        assert back.get(key) == (train if key == "train" else value), key


#: Keys the form has no field for, as a recipe gives them.
EXTRA = {"chat_template": "chatml", "data_options": {"fill": False},
         "monitor": {"watermark": 0.9, "on_watermark": "warn"}, "notify": ["ntfy://finetty-test"]}


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_keys_the_form_has_no_field_for_go_through_it_unchanged(path):
    recipe = {**yaml.safe_load(path.read_text()), **EXTRA}
    recipe["model_options"] = {**(recipe.get("model_options") or {}), "device_map": "auto"}
    state = from_recipe(recipe, KNOWN_MODELS, KNOWN_DATASETS)
    back = to_recipe(state)
    for key, value in EXTRA.items():
        assert back[key] == value, key
    assert back["model_options"]["device_map"] == "auto"
    assert extra_line(state.extra) == ("also from the recipe: chat_template, data_options, "
                                       "monitor, notify, model_options.device_map")
    back["notify"].append("changed")  # the recipe's own values are not shared with the form's output
    assert to_recipe(state)["notify"] == ["ntfy://finetty-test"]


def test_an_option_the_chosen_component_does_not_declare_cannot_be_carried():
    recipe = {"method": "lora", "method_options": {"r": 8, "rank": 4}, "objective_options": {"beta": 0.1}}
    assert uncarried(recipe, {"method": {"r", "lora_alpha"}, "objective": {"beta"}}) == ["method_options.rank"]
    assert extra_line({}) == ""


def test_a_model_or_dataset_not_in_the_pickers_goes_to_its_path_field():
    state = from_recipe({"model": "./my-model", "dataset": "data/chat.jsonl"}, KNOWN_MODELS, KNOWN_DATASETS)
    assert (state.model, state.model_path) == (PATH, "./my-model")
    assert (state.dataset, state.dataset_path) == (PATH, "data/chat.jsonl")
    assert widget_for("model", state) == "model-path" and widget_for("dataset", state) == "dataset-path"
    picked = from_recipe({"model": "tiny-demo", "dataset": "identity"}, KNOWN_MODELS, KNOWN_DATASETS)
    assert widget_for("model", picked) == "model" and widget_for("dataset", picked) == "dataset"


def test_typed_text_is_read_as_the_option_type():
    state = FormState(components={"method": "lora", "quantizer": "none", "objective": "sft"}, fields=[
        Field("train-learning_rate", "train.learning_rate", "float", text="1e-4"),
        Field("train-max_steps", "train.max_steps", "int", text="50"),
        Field("train-packing", "train.packing", "bool", picked=True, value=False),
        Field("opt-method-target_modules", "method_options.target_modules", "str|list", text="[q_proj, v_proj]"),
    ], train_more="{weight_decay: 0.01}")
    recipe = to_recipe(state)
    assert recipe["train"] == {"weight_decay": 0.01, "learning_rate": 1e-4, "max_steps": 50}
    assert recipe["method_options"] == {"target_modules": ["q_proj", "v_proj"]}


@pytest.mark.parametrize(("state", "field", "says"), [
    (FormState(dataset_options="{name: [unclosed"), "dataset_options", "is not a YAML mapping"),
    (FormState(train_more="just text"), "train-more", "must be a mapping"),
    (FormState(fields=[Field("opt-method-r", "method_options.r", "int", text="[1,")]), "opt-method-r",
     "r: '[1,' is not a value"),
])
def test_a_field_that_is_not_a_value_is_named(state, field, says):
    with pytest.raises(FieldError) as caught:
        to_recipe(state)
    assert caught.value.field == field and says in caught.value.problem


def test_several_processes_choose_the_engine_and_keep_the_recipe_launch_settings():
    state = from_recipe({"launch": {"num_processes": 4, "distributed_type": "deepspeed", "zero_stage": 3,
                                    "mixed_precision": "bf16"}}, KNOWN_MODELS, KNOWN_DATASETS)
    assert (state.processes, state.engine) == (4, "deepspeed-3")
    assert to_recipe(state)["launch"] == {"mixed_precision": "bf16", "num_processes": 4,
                                          "distributed_type": "deepspeed", "zero_stage": 3}
    state.processes = 1
    assert to_recipe(state)["launch"] == {"mixed_precision": "bf16"}


@pytest.mark.parametrize(("place", "widget"), [
    ("key train.max_steps", "train-max_steps"),
    ("key train.weight_decay", "train-more"),
    ("key method_options.r", "opt-method-r"),
    ("key quantizer_options.quant_type", "opt-quantizer-quant_type"),
    ("key objective", "objective"),
    ("line 3", None),
])
def test_a_validator_complaint_marks_its_field(place, widget):
    assert widget_for(field_for(place), FormState()) == widget


def test_a_methods_recommendations_load_only_into_fields_the_form_last_set():
    from finetty.tui.form import field_values, recommend, recommendation_notice

    given = field_values(FormState(fields=[Field("train-learning_rate", "train.learning_rate", "float", text="0.003"),
                                           Field("train-max_steps", "train.max_steps", "int", text="120")],
                                   train_more="{weight_decay: 0.0}"))
    assert given == {"train.learning_rate": 0.003, "train.max_steps": 120, "train.weight_decay": 0.0}
    untouched = dict(given)
    changed = {**given, "train.learning_rate": 5e-4, "train.weight_decay": 0.1}
    wanted = {"train.learning_rate": 1e-2, "train.weight_decay": 0.01, "method_options.prefix_projection": True}
    assert recommend(wanted, untouched, given) == (wanted, [])
    load, kept = recommend(wanted, changed, given)
    assert load == {"method_options.prefix_projection": True} and kept == ["train.learning_rate", "train.weight_decay"]
    assert recommendation_notice("prefix", load, kept) == ("prefix: prefix_projection true from the method's "
                                                           "recommendations; kept your learning_rate, weight_decay")
    assert recommendation_notice("full", {}, []) == ""
