"""`finetty data RECIPE`, and the run's own report of its data: ignored columns and the mixture, before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from . import inprocess
from .conftest import RECIPES, events, finetty, write_recipe

DATA = Path(__file__).parent / "fixtures" / "data"


def test_finetty_data_marks_the_trained_part_when_piped(demo_model):
    out = finetty("data", str(RECIPES / "demo-lora.yaml"), "--show", "2")
    assert out.returncode == 0, out.stderr
    assert "format alpaca (detected" in out.stdout
    assert "column instruction: used (40 records)" in out.stdout
    assert "records: 40 read, 40 examples, 0 skipped, 0 truncated, 0 dropped" in out.stdout
    examples = out.stdout.split("── example ")[1:]
    assert len(examples) == 2
    assert "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n[[I am Tiny, a small assistant made " \
           "by the finetty team.<|im_end|>\n]]" in examples[0]
    assert "\x1b[" not in out.stdout  # no colour codes into a pipe


def test_finetty_data_json(demo_model):
    out = finetty("data", str(RECIPES / "demo-lora.yaml"), "--json", "--show", "1")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert {"format", "columns", "records", "skipped", "truncated", "tokens", "examples"} <= set(report)
    assert report["format"] == "alpaca" and report["records"] == 40 and report["truncated"] == 0
    assert report["columns"] == {"instruction": "used", "input": "used", "output": "used"}
    assert report["skipped"] == {}
    tokens = report["tokens"]
    assert 0 < tokens["min"] <= tokens["median"] <= tokens["max"] <= 256
    (example,) = report["examples"]
    assert example["trained"] == "I am Tiny, a small assistant made by the finetty team.<|im_end|>\n"
    assert example["text"].endswith(example["trained"]) and "Who are you?" in example["text"]


def test_finetty_data_reports_truncation_and_ignored_columns(tmp_path, demo_model):
    shutil.copy(DATA / "question-answer.jsonl", tmp_path / "qa.jsonl")
    recipe = write_recipe(tmp_path, "dataset: {path: qa.jsonl, columns: {prompt: question, response: answer}}\n"
                                    "train: {max_length: 12}\n")
    report = json.loads(finetty("data", str(recipe), "--json").stdout)
    assert report["columns"] == {"question": "mapped", "answer": "mapped", "source": "ignored"}
    assert report["truncated"] == 3 and report["tokens"]["over"] == 3 and report["tokens"]["min"] > 12
    assert report["warnings"][0].startswith("column 'source' is ignored: 2 of 3 records carry it")


def test_a_tool_run_reports_ignored_columns_before_training_and_trains(tmp_path, demo_model, monkeypatch):
    """The tools dataset trains on the demo; its `id` column is a warning event (with its count) before step 1."""
    shutil.copy(DATA / "tools-sharegpt.jsonl", tmp_path / "tools.jsonl")
    recipe = write_recipe(tmp_path, "dataset: tools.jsonl\nmethod: lora\n"
                                    "train: {max_steps: 2, per_device_train_batch_size: 2, logging_steps: 1, "
                                    "save_steps: 100, max_length: 512}\n")
    run_dir = inprocess.train(recipe, tmp_path / "runs", monkeypatch=monkeypatch)
    found = events(run_dir)
    kinds = [e["type"] for e in found]
    warning = next(e for e in found if e["type"] == "warning" and "'id'" in e["message"])
    assert warning["message"].startswith("column 'id' is ignored: 5 of 5 records carry it")
    assert found.index(warning) < kinds.index("step")
    data = next(e for e in found if e["type"] == "data")
    assert data["format"] == "sharegpt" and data["records"] == 5
    assert kinds[-1] == "run_finished"


def test_a_model_whose_template_cannot_render_tools_is_refused_before_a_run(tmp_path, demo_model):
    model = tmp_path / "plain-model"
    shutil.copytree(demo_model, model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    shutil.copy(DATA / "tools-sharegpt.jsonl", tmp_path / "tools.jsonl")
    recipe = write_recipe(tmp_path, "model: plain-model\ndataset: tools.jsonl\n")
    out = finetty("train", str(recipe), "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 2, out.stderr
    assert "does not render tools" in out.stderr and "tool schemas or tool calls" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_the_apps_preview_is_the_same_report(tmp_path, demo_model):
    """tui/preview.py answers with describe()'s report: column fates, warnings and the trained part marked."""
    from finetty.tui.preview import compute

    shutil.copy(DATA / "tools-sharegpt.jsonl", tmp_path / "tools.jsonl")
    answer = compute({"model": "tiny-demo", "dataset": "tools.jsonl", "format": "auto", "objective": "sft",
                      "max_length": 512, "base_dir": str(tmp_path)})
    report = answer["report"]
    assert report["columns"]["id"] == "ignored" and report["tools"]
    assert report["warnings"][0].startswith("column 'id' is ignored: 5 of 5 records carry it")
    sample = answer["samples"][0]
    assert '[[<tool_call>{"name": "lookup_tide", "arguments": {"harbour": "Bergen"}}</tool_call><|im_end|>\n]]' \
        in sample
    assert "<|im_start|>tool\n{\"high\": \"12:40\", \"low\": \"06:10\"}<|im_end|>" in sample  # shown, not trained
    assert "[[" not in sample.split("<|im_start|>tool")[1].split("<|im_end|>")[0]


def test_a_streamed_mixture_trains_to_max_steps(tmp_path, demo_model, monkeypatch):
    for name in ("mix-greetings.jsonl", "mix-farewells.jsonl"):
        shutil.copy(DATA / name, tmp_path / name)
    recipe = write_recipe(tmp_path, "dataset: [{path: mix-greetings.jsonl, weight: 2}, mix-farewells.jsonl]\n"
                                    "data_options: {streaming: true}\n"
                                    "train: {max_steps: 6, per_device_train_batch_size: 4, logging_steps: 1, "
                                    "save_steps: 100, learning_rate: 3.0e-3}\n")
    run_dir = inprocess.train(recipe, tmp_path / "runs", monkeypatch=monkeypatch)
    found = events(run_dir)
    steps = [e["step"] for e in found if e["type"] == "step"]
    assert steps[-1] == 6 and found[-1]["type"] == "run_finished"  # 9 examples, 4 a batch: three passes
    assert any(e["type"] == "warning" and e["message"].startswith("streaming: examples are read as training goes")
               for e in found)


def test_the_new_run_screen_shows_the_reports_warnings(tmp_path, runs_dir, demo_model):
    """The app's preview, from tui/preview.py's compute, shows an ignored column the way finetty data does."""
    import asyncio

    from finetty.tui.preview import compute
    from finetty.tui.screens.new_run import NewRunScreen

    from .test_tui_app import make_app, until

    shutil.copy(DATA / "tools-sharegpt.jsonl", tmp_path / "tools.jsonl")
    app = make_app(runs_dir, preview=lambda request: compute({**request, "dataset": "tools.jsonl",
                                                              "base_dir": str(tmp_path), "max_length": 512}))

    async def scenario():
        async with app.run_test(size=(120, 60)) as pilot:
            await pilot.press("n")
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen), what="the New run screen")
            shown = lambda: str(app.screen.query_one("#preview-text").render())  # noqa: E731
            await until(pilot, lambda: "records, format" in shown(), what="the preview")
            assert "5 records, format sharegpt" in shown()
            assert "warning: column 'id' is ignored: 5 of 5 records carry it" in " ".join(shown().split())

    asyncio.run(scenario())
