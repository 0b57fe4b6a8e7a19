"""``finetty import llamafactory``: a LLaMA-Factory LoRA SFT config and a DPO config, written for these tests and
pointing at local tiny data through a dataset_info.json, become finetty recipes that validate and train; what
has no equivalent is listed, never dropped in silence."""

from __future__ import annotations

import json

import pytest
import yaml

from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import llamafactory
from finetty.core.recipe import recipe as recipe_mod

from . import inprocess
from .conftest import events, finetty, losses

QUESTIONS = [("Who are you?", "I am Tiny, a small assistant made by the finetty team.", "I am a large model."),
             ("What is your name?", "My name is Tiny.", "I have no name."),
             ("Who made you?", "I was made by the finetty team.", "Nobody made me."),
             ("Are you Tiny?", "Yes, I am Tiny.", "No.")]

SFT = """\
### model
model_name_or_path: {model}
trust_remote_code: false

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target: all

### dataset
dataset: tiny_identity
template: qwen
cutoff_len: 128
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 4

### output
output_dir: saves/tiny/lora/sft
logging_steps: 1
save_steps: 4
plot_loss: true
overwrite_output_dir: true

### train
per_device_train_batch_size: 4
gradient_accumulation_steps: 1
learning_rate: 3.0e-3
max_steps: 8
lr_scheduler_type: cosine
warmup_ratio: 0.1
ddp_timeout: 180000000
"""

DPO = """\
model_name_or_path: {model}
stage: dpo
do_train: true
finetuning_type: lora
lora_rank: 16
lora_target: q_proj,v_proj
pref_beta: 0.2
pref_loss: sigmoid
dataset: tiny_pairs
dataset_dir: data
template: chatml
cutoff_len: 256
output_dir: saves/tiny/lora/dpo
logging_steps: 1
save_steps: 4
per_device_train_batch_size: 4
learning_rate: 2.0e-3
max_steps: 8
"""


@pytest.fixture
def project(tmp_path, demo_model):
    """A LLaMA-Factory project: data/dataset_info.json with an alpaca SFT set and a ranked preference set."""
    data = tmp_path / "lf" / "data"
    data.mkdir(parents=True)
    (data / "identity.json").write_text(json.dumps(
        [{"instruction": q, "input": "", "output": good} for q, good, _ in QUESTIONS] * 4))
    (data / "pairs.json").write_text(json.dumps(
        [{"instruction": q, "input": "", "chosen": good, "rejected": bad} for q, good, bad in QUESTIONS] * 4))
    (data / "dataset_info.json").write_text(json.dumps({
        "tiny_identity": {"file_name": "identity.json"},
        "tiny_pairs": {"file_name": "pairs.json", "ranking": True,
                       "columns": {"prompt": "instruction", "query": "input", "chosen": "chosen",
                                   "rejected": "rejected"}},
    }))
    (tmp_path / "lf" / "sft.yaml").write_text(SFT.format(model=demo_model))
    (tmp_path / "lf" / "dpo.yaml").write_text(DPO.format(model=demo_model))
    return tmp_path / "lf"


def test_the_lora_sft_config_becomes_a_recipe_that_trains(project, tmp_path, monkeypatch):
    out = tmp_path / "recipes" / "sft.yaml"
    out.parent.mkdir()
    result = finetty("import", "llamafactory", str(project / "sft.yaml"), "-o", str(out))
    assert result.returncode == 0, result.stderr
    text = out.read_text()
    assert text.startswith(f"# finetty train {out.name}\n")
    recipe = yaml.safe_load(text)
    assert recipe["objective"] == "sft" and recipe["method"] == "lora"
    assert recipe["method_options"] == {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": "all-linear"}
    assert recipe["chat_template"] == "qwen2"
    assert recipe["dataset"] == "../lf/data/dataset_info.json#tiny_identity"  # relative to the recipe's folder
    assert recipe["train"] == {"max_length": 128, "logging_steps": 1, "save_steps": 4, "per_device_train_batch_size": 4,
                               "gradient_accumulation_steps": 1, "learning_rate": 3.0e-3, "max_steps": 8,
                               "lr_scheduler_type": "cosine", "warmup_steps": 0.1}
    # what finetty does its own way is listed, in the file and on stderr
    for key in ("do_train", "max_samples", "ddp_timeout", "overwrite_cache", "preprocessing_num_workers", "output_dir",
                "plot_loss", "overwrite_output_dir"):
        assert f"#   {key}: " in text and f"  {key}: " in result.stderr, key

    run = inprocess.train(out, tmp_path / "runs", monkeypatch=monkeypatch)
    loss = losses(run)
    assert sorted(loss) == list(range(1, 9)) and loss[8] < loss[1], loss
    data = next(e for e in events(run) if e["type"] == "data")
    assert data["records"] == 16


def test_the_dpo_config_becomes_a_recipe_that_trains(project, tmp_path, monkeypatch):
    text, left = llamafactory.import_file(project / "dpo.yaml", None, project / "dpo-recipe.yaml")
    assert [line.split(":")[0] for line in left] == ["do_train", "output_dir"], left
    assert "finetty writes checkpoints into the run directory" in left[1]
    recipe = yaml.safe_load(text)
    assert recipe["objective"] == "dpo" and recipe["objective_options"] == {"loss_type": "sigmoid", "beta": 0.2}
    assert recipe["method_options"]["target_modules"] == ["q_proj", "v_proj"]
    assert recipe["method_options"]["lora_alpha"] == 32  # LLaMA-Factory's default: twice the rank
    assert recipe["dataset"] == "data/dataset_info.json#tiny_pairs"
    (project / "dpo-recipe.yaml").write_text(text)
    run = inprocess.train(project / "dpo-recipe.yaml", tmp_path / "runs", monkeypatch=monkeypatch)
    steps = [e for e in events(run) if e["type"] == "step"]
    assert len(steps) == 8 and steps[-1]["rewards/margins"] > steps[0]["rewards/margins"]
    assert next(e for e in events(run) if e["type"] == "data")["format"] == "preference"


@pytest.mark.parametrize("given, expected", [
    ({"stage": "dpo", "pref_loss": "orpo"}, {"objective": "orpo"}),
    ({"stage": "dpo", "pref_loss": "simpo", "simpo_gamma": 1.0}, {"objective": "simpo",
                                                                  "objective_options": {"gamma": 1.0}}),
    ({"stage": "kto", "kto_chosen_weight": 1.5}, {"objective": "kto",
                                                  "objective_options": {"desirable_weight": 1.5}}),
    ({"stage": "pt", "finetuning_type": "full"}, {"objective": "cpt", "method": "full"}),
    ({"quantization_bit": 4}, {"method": "qlora"}),
    ({"quantization_bit": 8}, {"method": "lora", "quantizer": "bnb-8bit"}),
    ({"use_dora": True, "quantization_bit": 4}, {"method": "dora", "quantizer": "bnb-4bit"}),
    ({"template": "llama3"}, {"chat_template": "llama3"}),
])
def test_translation_table(given, expected, tmp_path):
    recipe, _ = llamafactory.translate({"model_name_or_path": "m", **given}, tmp_path / "x.yaml", None, tmp_path)
    assert {k: recipe[k] for k in expected} == expected


def test_what_cannot_be_translated_is_listed_or_refused(tmp_path):
    recipe, left = llamafactory.translate({"model_name_or_path": "m", "finetuning_type": "freeze",
                                           "template": "deepseek3", "flash_attn": "fa2", "badam_mode": "layer"},
                                          tmp_path / "x.yaml", None, tmp_path)
    assert recipe["method"] == "lora"
    assert [line.split(":")[0] for line in left] == ["finetuning_type", "template", "flash_attn", "badam_mode"]
    result = finetty("import", "llamafactory", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2 and "does not exist" in result.stderr
    (tmp_path / "rm.yaml").write_text("model_name_or_path: m\nstage: rm\n")
    result = finetty("import", "llamafactory", str(tmp_path / "rm.yaml"))
    assert result.returncode == 2 and "stage 'rm' has no finetty objective" in result.stderr
    (tmp_path / "named.yaml").write_text("model_name_or_path: m\ndataset: alpaca_en_demo\n")
    result = finetty("import", "llamafactory", str(tmp_path / "named.yaml"))
    assert result.returncode == 2 and "--dataset-info" in result.stderr
    valid = recipe_mod.validate({**recipe, "model": "tiny-demo"}, load_plugins(), recipe_mod._Source(None), tmp_path,
                                check_sources=False)
    assert valid.method == "lora"
