"""Every export carries a model card (README.md), names its base so another machine can find it (a hub id, or
a path relative to the export folder, never an absolute one), and has ordinary file modes whatever the umask
and the private run directory's modes were."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.results import export, inference
from finetty.core.run import events as events_mod


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card[4:card.index("\n---\n", 4)])


def export_under_private_umask(run: Path, out: Path, **options) -> export.ExportResult:
    """Export as a process whose umask makes everything private: the modes must come from export itself."""
    previous = os.umask(0o077)
    try:
        return export.export(run, out, **options)
    finally:
        os.umask(previous)


def assert_ordinary_modes(folder: Path) -> None:
    assert folder.stat().st_mode & 0o777 == 0o755
    for path in folder.rglob("*"):
        expected = 0o755 if path.is_dir() else 0o644
        assert path.stat().st_mode & 0o777 == expected, path


def test_adapter_export_has_a_card_a_relative_base_and_ordinary_modes(identity_run, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "shared" / "tiny-adapter"
    out.parent.mkdir()
    result = export_under_private_umask(identity_run, out)
    assert "README.md" in result.files
    card = (out / "README.md").read_text(encoding="utf-8")
    front = front_matter(card)
    assert front["library_name"] == "peft" and front["tags"] == ["finetty", "lora", "sft"]

    base_dir = inference.base_model_dir(identity_run)
    config = json.loads((out / "adapter_config.json").read_text())
    base = config["base_model_name_or_path"]
    assert base == front["base_model"] and not os.path.isabs(base)
    assert (out / base).resolve() == base_dir.resolve()
    assert "did not come from the Hugging Face Hub" in card and str(base_dir.resolve()) in card
    assert json.loads((out / "finetty-export.json").read_text())["base_model"] == base

    events = events_mod.read_all(identity_run)
    last_step = [e for e in events if e["type"] == "step"][-1]
    finished = [e for e in events if e["type"] == "run_finished"][-1]
    assert f"- final train loss: {last_step['loss']:.4f}" in card
    assert f"- steps: {finished['step']}" in card
    assert "- method: `lora`" in card and "  - `r`: `16`" in card and "- objective: `sft`" in card
    assert "4 records" in card and "identity-small.jsonl" in card
    assert (identity_run / "recipe.yaml").read_text().rstrip("\n") in card
    assert_ordinary_modes(out)

    # Plain PEFT, from the export folder alone: the base found through the relative path.
    plain_base = AutoModelForCausalLM.from_pretrained(str(out / base)).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        base_logits = plain_base(ids).logits
        tuned = PeftModel.from_pretrained(plain_base, str(out)).eval()
        tuned_logits = tuned(ids).logits
        reference = inference.load(identity_run).model(ids).logits
    assert not torch.allclose(tuned_logits, base_logits)
    assert torch.allclose(tuned_logits, reference, atol=1e-5)


def test_merged_export_card_and_modes(identity_run, tmp_path):
    out = tmp_path / "merged"
    result = export_under_private_umask(identity_run, out, merge=True)
    assert result.merged
    front = front_matter((out / "README.md").read_text(encoding="utf-8"))
    assert front["library_name"] == "transformers" and not os.path.isabs(front["base_model"])
    assert (out / front["base_model"]).resolve() == inference.base_model_dir(identity_run).resolve()
    # no JSON file of the export names the base by this machine's path (only the card says where it was):
    # transformers' config.json leaves out _name_or_path today, and should it come back it must be the card's
    base_path = str(inference.base_model_dir(identity_run).resolve())
    for path in out.glob("*.json"):
        assert base_path not in path.read_text(encoding="utf-8"), path.name
    assert json.loads((out / "config.json").read_text()).get("_name_or_path", front["base_model"]) == \
        front["base_model"]
    assert_ordinary_modes(out)


def test_config_name_or_path_is_rewritten_to_the_cards_base_where_transformers_wrote_one(tmp_path):
    """transformers 4.x writes ``_name_or_path`` (the trainer's absolute base folder) into config.json."""
    with_path, without = tmp_path / "with", tmp_path / "without"
    for folder, config in ((with_path, {"_name_or_path": "/home/me/.cache/base", "model_type": "llama"}),
                           (without, {"model_type": "llama"})):
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps(config))
        export._point_adapter_at(folder, "../base")
    assert json.loads((with_path / "config.json").read_text()) == {"_name_or_path": "../base", "model_type": "llama"}
    assert json.loads((without / "config.json").read_text()) == {"model_type": "llama"}


@pytest.mark.parametrize("base, expected", [
    ("hub/models--Qwen--Qwen2.5-0.5B/snapshots/abc123", "Qwen/Qwen2.5-0.5B"),
    ("hub/models--gpt2/snapshots/abc123", None),
    ("models/my-base", None),
])
def test_base_reference_is_the_hub_id_or_a_relative_path(tmp_path, base, expected):
    folder = tmp_path / base
    folder.mkdir(parents=True)
    reference, note = export.base_reference(folder, tmp_path / "out")
    if expected:
        assert (reference, note) == (expected, None)
    else:
        assert not os.path.isabs(reference) and (tmp_path / "out" / reference).resolve() == folder.resolve()
        assert str(folder.resolve()) in note


def test_card_lists_eval_scores_and_untrusted_names_cannot_break_it(identity_run, tmp_path):
    run = tmp_path / identity_run.name
    run.mkdir()
    for name in ("recipe.yaml", "events.jsonl"):
        shutil.copyfile(identity_run / name, run / name)
    hostile = "data`s\n---\nbase_model: evil\x1b[31m.jsonl"
    writer = events_mod.EventWriter(run)
    writer.emit("data", dataset=hostile, format="alpaca", records=4, train_records=3, eval_records=1)
    writer.emit("eval", step=40, source="finetty eval", loss=None,
                metrics={"exact_match": 0.75, "rouge_l": 0.9, "bleu": None, "perplexity": 3.5})
    writer.close()
    recipe = recipe_mod.from_run(run)
    card = export.model_card(run, recipe, load_plugins().methods["lora"], "final", False, "org/base", None)
    assert front_matter(card) == {"base_model": "org/base", "library_name": "peft", "tags": ["finetty", "lora", "sft"]}
    assert "\x1b" not in card and "\nbase_model: evil" not in card
    assert "- data: ``data`s --- base_model: evil [31m.jsonl``" in card
    assert "| 40 | `finetty eval` |  | exact_match=0.7500, perplexity=3.5000, rouge_l=0.9000 |" in card
