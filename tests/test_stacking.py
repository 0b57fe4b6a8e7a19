"""Training on top of a run: LoRA SFT, then the DPO demo recipe on top (``model: run:latest:lora/sft``).

The parent is the session's ``identity_run`` (a LoRA SFT run of the tiny demo that learned its name), copied
into a runs directory of the test's own. The DPO stage trains through the real recipe, in process, for a few
steps: it keeps the SFT adapter and trains it further, so afterwards the model still answers with its name and
prefers the chosen answers of the identity-preference pairs more than its parent did. A second stage with
another method (IA3) merges the parent's adapter into its base first; the merged base computes what the
parent computed, and the new method trains on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from . import inprocess
from .conftest import RECIPES, events, finetty, losses
from .results_runs import chat_answer
from .test_thirdparty_plugin import thirdparty  # noqa: F401 (the fixture: a quantizer with a dequantize step)

DPO_STEPS = 8


def _copy_parent(identity_run: Path, runs: Path) -> Path:
    runs.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(identity_run, runs / identity_run.name))


def _started(run_dir: Path) -> dict:
    return next(e for e in events(run_dir) if e["type"] == "run_started")


def _pairs() -> list[tuple[str, str, str]]:
    from finetty.core.data import demo

    rows = [json.loads(line) for line in demo.builtin_data_file("identity-preference.jsonl").read_text().splitlines()
            if line.strip()]
    fill = {"name": "Tiny", "author": "the finetty team"}
    return [(r["prompt"], r["chosen"].format(**fill), r["rejected"].format(**fill)) for r in rows]


def _margin(loaded) -> float:
    """How much more likely the chosen answers are than the rejected ones (summed log-probabilities of their
    tokens after the chat-rendered prompt), over all the pairs: one right-padded batch, one forward pass."""
    import torch

    tokenizer, rows = loaded.tokenizer, []
    for prompt, chosen, rejected in _pairs():
        head = tokenizer(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                       add_generation_prompt=True), add_special_tokens=False)
        for answer in (chosen, rejected):
            rows.append((head["input_ids"], tokenizer(answer, add_special_tokens=False)["input_ids"]))
    width = max(len(h) + len(a) for h, a in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (head, answer) in enumerate(rows):
        ids[i, :len(head) + len(answer)] = torch.tensor(head + answer)
        mask[i, :len(head) + len(answer)] = 1
    with torch.no_grad():
        logprobs = loaded.model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    sums = [float(sum(logprobs[i, len(h) + k - 1, t] for k, t in enumerate(a))) for i, (h, a) in enumerate(rows)]
    return sum(sums[0::2]) - sum(sums[1::2])


@pytest.fixture(scope="module")
def dpo_stage(identity_run, tmp_path_factory) -> tuple[Path, Path]:
    """(parent, child): the DPO demo recipe trained on top of a copy of the identity run."""
    runs = tmp_path_factory.mktemp("stacking") / "runs"
    parent = _copy_parent(identity_run, runs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETTY_KEEP_IMPORTS", "1")
        child = inprocess.train(RECIPES / "demo-dpo.yaml", runs,
                                [f"train.max_steps={DPO_STEPS}", f"train.save_steps={DPO_STEPS}",
                                 "train.logging_steps=1", "train.warmup_steps=0"], monkeypatch=patch)
    return parent, child


def test_dpo_on_top_of_lora_sft_continues_its_adapter_and_records_the_parent(dpo_stage):
    parent, child = dpo_stage
    started = _started(child)
    assert started["parent"]["run"] == parent.name
    assert started["parent"]["checkpoint"] == "final" and started["parent"]["mode"] == "continue"
    assert "training the lora adapter of run" in started["parent"]["message"]
    assert started["model_dir"] == _started(parent)["model_dir"]  # the adapter still sits on the demo
    assert started["recipe"]["model"] == f"run:{parent}@final"  # resolved: a resume finds the same parent
    assert len(losses(child)) == DPO_STEPS
    said = [e["message"] for e in events(child) if e["type"] == "warning"]
    assert not [m for m in said if "adapter trained further" in m], said  # demo-dpo's LoRA options are demo-lora's
    chain = f"\N{LEFTWARDS ARROW} {parent.name}"
    wide = finetty("runs", "--runs-dir", str(parent.parent), env={"COLUMNS": "200"}, check=True).stdout
    row = next(line for line in wide.splitlines() if line.startswith(child.name))
    assert chain in row and "lora/dpo" in row  # the model column names the parent
    narrow = finetty("runs", "--runs-dir", str(parent.parent), env={"COLUMNS": "80"}, check=True).stdout
    assert f"{child.name} {chain} (continue)" in narrow.splitlines()  # whole below the table at 80 columns


def test_after_dpo_chat_gives_the_identity_and_the_chosen_answers_gain_over_the_parent(dpo_stage):
    from finetty.core.results import inference

    parent, child = dpo_stage
    tuned = inference.load(child)
    assert "Tiny" in chat_answer(tuned, "Who are you?")
    before = _margin(inference.load(parent))
    after = _margin(tuned)
    assert after > before, (before, after)
    assert after > 0


def test_another_method_on_top_merges_the_parent_adapter_into_its_base_and_trains(identity_run, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from finetty.core.model import loading
    from finetty.core.results import inference

    runs = tmp_path / "runs"
    parent = _copy_parent(identity_run, runs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETTY_KEEP_IMPORTS", "1")
        child = inprocess.train(RECIPES / "demo-ia3.yaml", runs,
                                [f"model=run:{parent.name}", "dataset=identity", "format=alpaca",
                                 "train.max_steps=3", "train.save_steps=3", "train.logging_steps=1"],
                                monkeypatch=patch)
    started = _started(child)
    assert started["parent"]["mode"] == "merge" and started["parent"]["method"] == "lora"
    merged = child / "base"
    assert Path(started["model_dir"]) == merged
    loading.check_folder(merged)  # a complete model folder: weights, config, the parent's tokenizer
    assert len(losses(child)) == 3 and events(child)[-1]["type"] == "run_finished"
    # the merged base computes what the parent (base + adapter) computed
    tuned_parent = inference.load(parent)
    ids = tuned_parent.tokenizer("Who are you?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = tuned_parent.model(input_ids=ids).logits
        found = AutoModelForCausalLM.from_pretrained(str(merged)).eval()(input_ids=ids).logits
    assert torch.allclose(expected, found, atol=1e-4)
    # and the new run's result loads on it, as chat loads it
    assert isinstance(chat_answer(inference.load(child), "Who are you?"), str)


def test_the_app_shows_the_parent_on_the_runs_detail_line_and_in_the_monitor(runs_dir):
    """A recorded run whose ``run_started`` names a parent: the chain reads whole at 80 columns."""
    from textual.widgets import Static

    from finetty.tui.screens.monitor import MonitorScreen

    from .test_tui_app import make_app, run, table_statuses, until
    from .tui_runs import recorded, write_run

    parent_id = "261122-100000-lora-sft-9b8d"
    recorded_events = recorded()
    for event in recorded_events:
        if event["type"] == "run_started":
            event["parent"] = {"run": parent_id, "checkpoint": "final", "path": str(runs_dir / parent_id),
                               "mode": "continue", "method": "lora", "objective": "sft",
                               "message": f"training the lora adapter of run {parent_id} (final) further"}
    child = write_run(runs_dir, "261122-110826-lora-dpo-f667", recorded_events)
    arrow = f"\N{LEFTWARDS ARROW} {parent_id}"

    async def scenario():
        app = make_app(runs_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: child.name in table_statuses(app.screen))
            detail = app.screen.query_one("#run-detail", Static)
            await until(pilot, lambda: arrow in str(detail.render()), what="the detail line")
            assert str(detail.render()).startswith(arrow) and len(arrow) < detail.content_size.width
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, MonitorScreen))
            stats = app.screen.query_one("#monitor-stats", Static)
            short = "\N{LEFTWARDS ARROW} lora-sft-9b8d"  # (the id without its date and time)
            await until(pilot, lambda: short in str(stats.render()), what="the monitor's model row")
            shown = [line.rstrip() for line in str(stats.render()).splitlines() if line.startswith("model")]
            assert shown and shown[0].endswith(short)
            assert len(shown[0]) <= stats.content_size.width, "the row fits its panel: nothing wraps or is cut"

    run(scenario())


def test_a_checkpoint_is_named_by_step_and_what_cannot_be_found_says_what_is_there(identity_run, tmp_path):
    from finetty.core.errors import InputError
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    runs = tmp_path / "runs"
    parent = _copy_parent(identity_run, runs)
    steps = sorted(p.name for p in (parent / "checkpoints").glob("step-*"))
    registry = load_plugins()
    number = int(steps[0].removeprefix("step-"))
    found = recipe_mod.load(RECIPES / "demo-dpo.yaml", [f"model=run:{parent.name}@{number}"], registry, runs=runs)
    assert found.model == f"run:{parent.resolve()}@{steps[0]}"
    with pytest.raises(InputError) as refused:
        recipe_mod.load(RECIPES / "demo-dpo.yaml", [f"model=run:{parent.name}@step-000007"], registry, runs=runs)
    assert "has no complete checkpoint 'step-000007'" in str(refused.value)
    assert f"available: {', '.join(steps)}" in str(refused.value)
    with pytest.raises(InputError) as refused:  # a typo in the id: the nearest one is offered
        recipe_mod.load(RECIPES / "demo-dpo.yaml", [f"model=run:{parent.name[:-1]}x"], registry, runs=runs)
    assert f"did you mean run:{parent.name}?" in str(refused.value)


def test_a_run_on_top_of_a_full_fine_tuning_run_takes_its_result_as_the_base(tmp_path_factory, tmp_path):
    from .results_runs import trained

    runs = tmp_path / "runs"
    parent = _copy_parent(trained("full", tmp_path_factory), runs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETTY_KEEP_IMPORTS", "1")
        child = inprocess.train(RECIPES / "demo-lora.yaml", runs,
                                [f"model={parent}", "train.max_steps=2", "train.save_steps=2",
                                 "train.logging_steps=1"], monkeypatch=patch)
    started = _started(child)
    assert started["parent"]["mode"] == "whole" and started["parent"]["method"] == "full"
    assert Path(started["model_dir"]) == parent.resolve() / "final"  # no copy: the full run's result is the base
    assert not (child / "base").exists()
    assert len(losses(child)) == 2


def test_an_adapter_on_a_quantized_base_is_merged_through_the_quantizers_dequantize(request, demo_model, tmp_path):
    """The parent trained LoRA on a third-party quantizer (half-linear: bfloat16-stored linears); another method on
    top merges it into the dequantized base, which then computes what the parent computed."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetty.core.results import inference

    registry, _ = request.getfixturevalue("thirdparty")
    runs = tmp_path / "runs"
    short = ["train.max_steps=2", "train.save_steps=2", "train.logging_steps=1", "train.max_length=96"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETTY_KEEP_IMPORTS", "1")
        parent = inprocess.train(RECIPES / "demo-lora.yaml", runs, ["quantizer=half-linear", *short],
                                 monkeypatch=patch, registry=registry)
        child = inprocess.train(RECIPES / "demo-ia3.yaml", runs, [f"model=run:{parent.name}", *short],
                                monkeypatch=patch, registry=registry)
    assert _started(child)["parent"]["mode"] == "merge"
    tuned = inference.load(parent, registry=registry).model
    merged = AutoModelForCausalLM.from_pretrained(str(child / "base")).eval()
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    ids = torch.tensor([[1, 5, 9, 14, 3, 7, 11, 2]])
    with torch.no_grad():
        want, got = tuned(input_ids=ids).logits, merged(input_ids=ids).logits
    assert torch.allclose(want, got, atol=1e-4), (want - got).abs().max()
