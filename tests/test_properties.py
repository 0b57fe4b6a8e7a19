"""Property tests: whatever a recipe or a dataset holds, validation answers with InputError or accepts it.

Arbitrary text, YAML structures, ``--set`` overrides, dataset bytes and
records go through the recipe parser (``parse_text`` / ``apply_overrides`` /
``validate``) and the dataset reader (``iter_records``, ``detect_format``,
``validate_records``); any other exception escaping is a bug.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetty.core.data import reading as data_mod
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.errors import InputError
from finetty.core.plugin.registry import load_plugins

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.sampled_from(["model", "dataset", "dataset_options", "format", "method", "method_options", "quantizer",
                         "quantizer_options", "objective", "objective_options", "train", "trust_remote_code",
                         "launch", "r", "max_steps", "learning_rate", "val_size", "max_length", "num_processes",
                         "tiny-demo", "lora", "full", "bnb-4bit", "sft", "dpo", "identity"]) | st.text(max_size=12)
scalars = (st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.sampled_from(["tiny-demo", "lora", "identity", "auto", "none", "../..", "/",
                                                     "a\x00b", "~", "all-linear", "1e-4", "-1"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(names, inner, max_size=4),
                      max_leaves=12)
recipes = st.dictionaries(names, values, max_size=8)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("props")
    (folder / "d.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n')
    return folder


def _only_input_errors(fn, *args):
    try:
        return fn(*args)
    except InputError as exc:
        assert str(exc)  # and it can say what is wrong
        return None


@SETTINGS
@given(text=st.text(max_size=300))
def test_any_text_parses_or_is_refused(text):
    _only_input_errors(recipe_mod.parse_text, text, Path("r.yaml"))


@SETTINGS
@given(text=st.text(alphabet=string.printable + "{}[]:-#&*!|>'\"%@`\t\u00e9\u2028", max_size=200))
def test_yaml_looking_text_parses_or_is_refused(text):
    _only_input_errors(recipe_mod.parse_text, text, Path("r.yaml"))


@SETTINGS
@given(recipe=recipes, overrides=st.lists(st.text(max_size=30) | st.builds(
    lambda k, v: f"{k}={v}", st.sampled_from(["train.max_steps", "method_options.r", "model", "train", "a.b.c",
                                             "model.x", ".", ""]), st.text(max_size=10)), max_size=3))
def test_any_recipe_structure_validates_or_is_refused(base, recipe, overrides):
    text = yaml.safe_dump(recipe)
    parsed = _only_input_errors(recipe_mod.parse_text, text, base / "r.yaml")
    if parsed is None:
        return
    data, source = parsed
    if _only_input_errors(recipe_mod.apply_overrides, data, overrides, source) is None:
        return
    _only_input_errors(recipe_mod.validate, data, load_plugins(), source, base, True)


@SETTINGS
@given(recipe=st.fixed_dictionaries({}, optional={
    "model": st.just("tiny-demo"), "dataset": st.sampled_from(["identity", "d.jsonl"]),
    "method": st.sampled_from(["lora", "full", "qlora", "nope"]), "train": st.dictionaries(names, values, max_size=4),
    "method_options": st.dictionaries(st.sampled_from(["r", "lora_alpha", "target_modules", "x"]), values, max_size=3),
    "launch": st.dictionaries(st.sampled_from(["num_processes", "num_machines", "machine_rank", "main_process_ip"]),
                              values, max_size=3)}))
def test_nearly_valid_recipes_validate_or_are_refused(base, recipe):
    data, source = recipe_mod.parse_text(yaml.safe_dump(recipe), base / "r.yaml")
    _only_input_errors(recipe_mod.validate, data, load_plugins(), source, base, True)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
json_values = st.recursive(json_scalars,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=3), max_leaves=10)
field_names = st.sampled_from(["instruction", "input", "output", "system", "history", "conversations", "from",
                               "value", "messages", "role", "content", "prompt", "chosen", "rejected", "text"])
records = st.dictionaries(field_names | st.text(max_size=6), json_values | st.lists(
    st.dictionaries(field_names, json_values | st.sampled_from(["user", "assistant", "human", "gpt", "x"]),
                    max_size=3), max_size=3), max_size=5)


@SETTINGS
@given(record=records)
def test_format_detection_and_conversion_never_escape(record):
    formats = load_plugins().data_formats
    found = data_mod.detect_format(record, formats)
    assert found is None or found.name in formats
    for data_format in formats.values():  # what validate_records turns into an InputError naming the record
        try:
            data_format.convert(record)
        except (ValueError, TypeError, KeyError, AttributeError):
            pass


@SETTINGS
@given(content=st.binary(max_size=300) | st.builds(lambda rs: "\n".join(map(json.dumps, rs)).encode(),
                                                    st.lists(records | json_values, max_size=4)),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".txt", ".parquet"]),
       fmt=st.sampled_from(["auto", "alpaca", "sharegpt", "messages", "preference", "text"]),
       accepts=st.sampled_from([("conversation", "text"), ("preference",)]))
def test_any_dataset_file_validates_or_is_refused(tmp_path_factory, content, suffix, fmt, accepts):
    folder = tmp_path_factory.mktemp("ds")
    path = folder / f"data{suffix}"
    path.write_bytes(content)
    source = _only_input_errors(data_mod.resolve_source, path.name, folder)
    if source is None:
        return
    _only_input_errors(data_mod.validate_records, source, fmt, load_plugins().data_formats, accepts, "sft")
