"""The data path, faithful: every layout in tests/fixtures/data/ read as training will read it.

Each fixture is a small dataset written for these tests in one of the layouts
people bring (LLaMA-Factory's sharegpt with tools, preference pairs, KTO
labels, mapped columns, dataset_info.json, {{name}} fields). The reader is the
one the recipe validator, ``finetty data``, the app's preview and the worker
all call, so what is asserted here is what trains.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from finetty.core.data import reading
from finetty.core.data.tokenize import IGNORE, TemplateCannotRenderTools, check_renders_tools, tokenize_conversation
from finetty.core.errors import InputError
from finetty.core.plugin.registry import load_plugins

DATA = Path(__file__).parent / "fixtures" / "data"
SFT = ("conversation", "text")
OBJECTIVES = {"sft": SFT, "dpo": ("preference",), "kto": ("kto", "preference")}


def read(dataset, accepts=SFT, objective="sft", options=None, data_options=None, fmt="auto"):
    entries = reading.parse_dataset(dataset, DATA)
    return reading.read_data(entries, fmt, load_plugins().data_formats, accepts, objective, options or {},
                             data_options or {}, OBJECTIVES)


@pytest.fixture(scope="module")
def tokenizer():
    from finetty.core.data import demo

    return demo.build_tokenizer()


def test_sharegpt_tools_become_schemas_calls_and_results():
    found = read("tools-sharegpt.jsonl")
    first = found.examples[0]
    assert found.format == "sharegpt" and found.tools
    assert [t["function"]["name"] for t in first["tools"]] == ["lookup_tide", "switch_lamp"]
    roles = [m["role"] for m in first["messages"]]
    assert roles == ["system", "user", "assistant", "tool", "assistant"]
    assert first["messages"][0]["content"] == "You answer harbour questions in one sentence."
    call = first["messages"][2]["tool_calls"][0]["function"]
    assert call == {"name": "lookup_tide", "arguments": {"harbour": "Bergen"}}
    assert found.columns == {"id": "ignored", "system": "used", "tools": "used", "conversations": "used"}


def test_the_loss_covers_the_call_and_not_the_observation(tokenizer):
    conversation = read("tools-sharegpt.jsonl").examples[0]
    row = tokenize_conversation(tokenizer, conversation, 1024)
    text = tokenizer.decode(row["input_ids"])
    trained = tokenizer.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != IGNORE])
    assert '"name": "lookup_tide", "description": "High and low tide times' in text  # the schema is rendered
    assert '"harbour": {"type": "string"}' in text
    assert '<tool_call>{"name": "lookup_tide", "arguments": {"harbour": "Bergen"}}</tool_call>' in trained
    assert "High tide in Bergen is at 12:40." in trained
    assert '"high": "12:40"' in text and '"high": "12:40"' not in trained  # the tool's result is context
    assert "lookup_tide\", \"description" not in trained and "When is high tide" not in trained


def test_a_template_that_cannot_render_tools_is_refused(tokenizer):
    check_renders_tools(tokenizer)
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n' }}"
                           "{% endfor %}")
    with pytest.raises(TemplateCannotRenderTools, match="does not render tool schemas or tool calls"):
        check_renders_tools(other)


def test_messages_with_openai_tool_calls_and_a_system_column():
    found = read("messages-system.jsonl")
    plain, with_tools = found.examples
    assert plain[0] == {"role": "system", "content": "Reply like a ship's log."}
    assert with_tools["messages"][0]["role"] == "system"
    assert with_tools["messages"][2]["tool_calls"][0]["function"] == {"name": "switch_lamp",
                                                                      "arguments": {"room": "cabin", "on": False}}
    assert with_tools["messages"][3] == {"role": "tool", "content": "done", "tool_call_id": "c1"}


def test_sharegpt_system_column_and_a_default_system_prompt():
    found = read("sharegpt-system.jsonl")
    assert found.examples[0][0] == {"role": "system", "content": "Answer in French."}
    found = read({"path": "from-value-messages.jsonl", "columns": {"messages": "messages"}},
                 data_options={"system": "Be brief."})
    assert found.examples[0][0] == {"role": "system", "content": "Be brief."}


def test_llamafactory_preference_layouts():
    found = read("preference-sharegpt.jsonl", accepts=("preference",), objective="dpo")
    assert found.format == "preference"
    first = found.examples[0]
    assert first["prompt"] == [{"role": "system", "content": "Be kind."},
                               {"role": "user", "content": "Is my poem good?"}]
    assert first["chosen"].startswith("It has a lovely rhythm") and first["rejected"] == "No."
    alpaca = read("preference-alpaca.jsonl", accepts=("preference",), objective="dpo").examples
    assert alpaca[0] == {"prompt": [{"role": "user", "content": "Name a prime number\n\nbetween 10 and 20"}],
                         "chosen": "13", "rejected": "15"}


def test_kto_labels_are_refused_without_kto_and_read_with_it():
    with pytest.raises(InputError) as refused:
        read("kto.jsonl")
    message = str(refused.value)
    assert "column 'label' labels each answer desirable or undesirable" in message
    assert "use objective: kto" in message and "ignore_columns: [label]" in message
    found = read("kto.jsonl", accepts=("kto", "preference"), objective="kto")
    assert found.kind == "kto"
    assert [e["label"] for e in found.examples] == [True, False]
    assert found.examples[1] == {"prompt": [{"role": "user", "content": "Capital of Norway?"}],
                                 "completion": "Stockholm.", "label": False}
    dropped = read("kto.jsonl", data_options={"ignore_columns": ["label"]})
    assert dropped.format == "messages" and dropped.columns["label"] == "ignored on purpose"


def test_an_images_column_is_refused_by_name_unless_dropped_on_purpose():
    with pytest.raises(InputError) as refused:
        read("images.jsonl")
    assert "column 'images' holds images" in str(refused.value)
    assert "ignore_columns: [images]" in str(refused.value)
    assert refused.value.place == "line 1"
    found = read({"path": "images.jsonl", "ignore_columns": ["images"]})
    assert found.columns["images"] == "ignored on purpose" and not found.warnings()


def test_column_mapping_and_tag_mapping():
    found = read({"path": "question-answer.jsonl", "columns": {"prompt": "question", "response": "answer"}})
    assert found.format == "alpaca"
    assert found.examples[0] == [{"role": "user", "content": "How many legs has a spider?"},
                                 {"role": "assistant", "content": "Eight."}]
    assert found.columns == {"question": "mapped", "answer": "mapped", "source": "ignored"}
    assert found.warnings() == ["column 'source' is ignored: 2 of 3 records carry it (map it, or list it in "
                                "data_options.ignore_columns to drop it on purpose)"]
    tags = {"role_tag": "speaker", "content_tag": "text", "user_tag": "human", "assistant_tag": "bot"}
    found = read({"path": "speaker-turns.jsonl", "columns": {"messages": "dialog"}, "tags": tags})
    assert found.examples[1] == [{"role": "user", "content": "Tell me a colour"},
                                 {"role": "assistant", "content": "Green."}]
    with pytest.raises(InputError, match="'answr' is not one of the alpaca column names"):
        read({"path": "question-answer.jsonl", "columns": {"answr": "answer"}})


def test_a_dataset_info_entry_brings_its_file_and_mapping():
    found = read("dataset_info.json#quiz_demo")
    assert found.format == "alpaca" and found.examples[2][-1] == {"role": "assistant", "content": "Mars."}
    assert found.mapped == {"question": "instruction", "answer": "output"}
    ranked = read("dataset_info.json#poems_pref", accepts=("preference",), objective="dpo")
    assert ranked.format == "preference" and ranked.examples[1]["rejected"] == "Do them yourself."
    with pytest.raises(InputError, match="is not a dataset in it") as missing:
        read("dataset_info.json#quiz_dmeo")
    assert "did you mean 'quiz_demo'?" in str(missing.value)
    with pytest.raises(InputError, match="names no local file_name \\(it has hf_hub_url\\)"):
        read("dataset_info.json#on_the_hub")


def test_a_mixture_of_two_datasets_with_weights_is_reported():
    found = read([{"path": "mix-greetings.jsonl", "weight": 1}, {"path": "mix-farewells.jsonl", "weight": 2}])
    texts = [e[0]["content"] for e in found.examples]
    greetings = sum(t.startswith("Greet") for t in texts)
    farewells = sum(t.startswith("Say goodbye") for t in texts)
    assert (greetings, farewells) == (3, 6)  # 9 examples in all, shared 1:2
    assert set(texts) <= {f"Greet person {i}" for i in range(6)} | {f"Say goodbye to person {i}" for i in range(3)}
    assert len({t for t in texts if t.startswith("Say")}) == 3  # 2 copies of each farewell, not 6 draws
    assert [(m["dataset"].rsplit("/", 1)[-1], m["examples"]) for m in found.mixture] == [
        ("mix-greetings.jsonl", 3), ("mix-farewells.jsonl", 6)]
    assert found.warnings()[-1].startswith("mixture: 3 examples from ")
    counted = read([{"path": "mix-greetings.jsonl", "samples": 2}, "mix-farewells.jsonl"])
    assert [m["examples"] for m in counted.mixture] == [2, 3]


def test_fields_in_any_file_are_filled_and_an_unfilled_one_is_refused():
    found = read("identity-llamafactory.json", options={"name": "Ada", "author": "the lab"})
    assert found.examples[0][-1]["content"] == "I am Ada, built by the lab."
    with pytest.raises(InputError) as refused:
        read("identity-llamafactory.json", options={"name": "Ada"})
    assert "holds {{author}}, which dataset_options does not fill" in str(refused.value)
    assert refused.value.place == "record 0" and "dataset_options: {author: ...}" in str(refused.value)


def test_validation_and_training_read_the_same_records(tmp_path):
    """A CSV's numbers stay text and a JSON null is an absent column, in validation and in the worker alike."""
    (tmp_path / "d.csv").write_text("instruction,output\nHow many?,42\n")
    source = reading.resolve_source("d.csv", tmp_path)
    formats = load_plugins().data_formats
    summary = reading.validate_records(source, "auto", formats, SFT, "sft")
    examples, data_format = reading.load_records(source, "auto", formats)
    assert summary.format == data_format.name == "alpaca"
    assert examples[0][-1] == {"role": "assistant", "content": "42"}


def test_streaming_reads_the_head_to_validate_and_every_record_as_it_trains(monkeypatch):
    with pytest.raises(InputError, match="train.max_steps: is needed with data_options.streaming"):
        read("mix-greetings.jsonl", data_options={"streaming": True})
    monkeypatch.setattr(reading, "STREAM_HEAD", 2)
    streaming = {"streaming": True}
    head = reading.read_data(reading.parse_dataset("mix-greetings.jsonl", DATA), "auto", load_plugins().data_formats,
                             SFT, "sft", {}, streaming, train={"max_steps": 5})
    assert head.records == 2  # validation read the first records only
    entries = reading.parse_dataset([{"path": "mix-greetings.jsonl", "weight": 3}, "mix-farewells.jsonl"], DATA)
    stream, found = reading.stream_examples(entries, "auto", load_plugins().data_formats, SFT, "sft", {}, streaming,
                                            {"max_steps": 5})
    first = [e[0]["content"] for e in stream]
    second = [e[0]["content"] for e in stream]
    assert sorted(first) == sorted(second) == sorted([f"Greet person {i}" for i in range(6)]
                                                     + [f"Say goodbye to person {i}" for i in range(3)])
    assert first != second  # each pass interleaves the two files afresh
    with pytest.raises(InputError, match="train.val_size: a held-out split needs the whole dataset"):
        reading.check_streaming({"max_steps": 5, "val_size": 0.1})
