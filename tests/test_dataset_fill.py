"""``data_options.fill``: data that holds Jinja (or any ``{{word}}``) trains as written when asked.

By default every ``{{word}}`` in a dataset is a field ``dataset_options``
must fill (LLaMA-Factory's identity.json), and one without a value is refused;
a dataset *about* templates would be refused or filled wrongly. The opt-out
leaves every brace as it is, or fills only the names it lists.
"""

from __future__ import annotations

import json

import pytest

from finetty.core.data import reading
from finetty.core.errors import InputError
from finetty.core.plugin.registry import load_plugins

from . import inprocess
from .conftest import RECIPES

SFT = ("conversation", "text")
JINJA = "Write {{ greeting }}, {{name}}! in the template and render it with greeting set."


@pytest.fixture
def jinja_data(tmp_path):
    path = tmp_path / "jinja.jsonl"
    rows = [{"instruction": f"How do I greet person {i} from a template?", "output": JINJA} for i in range(8)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read(path, options=None, data_options=None):
    entries = reading.parse_dataset(str(path), path.parent)
    return reading.read_data(entries, "auto", load_plugins().data_formats, SFT, "sft", options or {},
                             data_options or {})


def answers(found) -> set[str]:
    return {example[-1]["content"] for example in found.examples}


def test_without_the_opt_out_the_refusal_names_it(jinja_data):
    with pytest.raises(InputError) as refused:
        read(jinja_data, options={"name": "Ada"})
    message = str(refused.value)
    assert refused.value.place == "line 1"
    assert "holds {{greeting}}, which dataset_options does not fill" in message
    assert "dataset_options: {greeting: ...}" in message
    assert "data_options: {fill: false}" in message


def test_fill_false_keeps_every_brace_and_a_list_fills_only_its_fields(jinja_data):
    assert answers(read(jinja_data, {"name": "Ada"}, {"fill": False})) == {JINJA}
    only_name = answers(read(jinja_data, {"name": "Ada", "greeting": "Hi"}, {"fill": ["name"]}))
    assert only_name == {JINJA.replace("{{name}}", "Ada")}
    # a listed name with no value is still refused: the list says it is a field to fill
    with pytest.raises(InputError, match="holds {{name}}, which dataset_options does not fill"):
        read(jinja_data, {}, {"fill": ["name"]})
    # the default fills every one, both brace styles
    assert answers(read(jinja_data, {"name": "Ada", "greeting": "Hi"})) == {
        "Write Hi, Ada! in the template and render it with greeting set."}


def test_the_option_is_typed_and_listed():
    option = next(o for o in reading.DATA_OPTIONS if o.name == "fill")
    assert option.default is True and option.type == "bool|list"
    assert reading.check_data_options({"fill": ["name", "author"]}) == {"fill": ["name", "author"]}
    with pytest.raises(InputError, match="fill must be a bool or list, not str 'no'"):
        reading.check_data_options({"fill": "no"})
    with pytest.raises(InputError, match="'a b' is not a field name"):
        reading.check_data_options({"fill": ["a b"]})


def test_jinja_text_trains_unchanged_with_the_opt_out(jinja_data, tmp_path, demo_model, monkeypatch):
    seen = {}

    def before_save(trainer):
        tokenizer = trainer.processing_class
        seen["texts"] = [tokenizer.decode(row["input_ids"]) for row in trainer.train_dataset]

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text((RECIPES / "demo-lora.yaml").read_text())
    inprocess.train(recipe, tmp_path / "runs", [f"dataset={jinja_data}", "data_options.fill=false",
                                                "train.max_steps=1", "train.save_steps=10"],
                    monkeypatch=monkeypatch, before_save=before_save)
    assert len(seen["texts"]) == 8
    assert all(JINJA in text for text in seen["texts"])


def test_finetty_plugins_options_lists_the_data_options(capsys):
    from finetty.core.cli import commands

    assert commands.main(["plugins", "--options"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    listed = out[out.index("data_options: how the datasets are read"):]
    assert "fill (bool|list, default True): which of the data's {{name}} / {name} fields" in listed
    assert "[name, author]: only those" in listed  # (printed as text, not taken for markup)
