"""``finetty export``: the adapter in standard PEFT layout, or merged into the base, loadable by plain
transformers (no finetty) and generating exactly what base + adapter generate; methods that cannot merge
say so; a QLoRA adapter merges into the dequantized base."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from finetty.core.results import export
from finetty.core.results import inference
from finetty.core.errors import InputError
from finetty.core.plugin.registry import load_plugins

from . import results_runs
from .conftest import finetty
from .results_runs import IDENTITY

PLAIN_TRANSFORMERS = r"""
import json, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

folder, questions = sys.argv[1], json.loads(sys.argv[2])
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder).eval()
found = []
for question in questions:
    text = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                         add_generation_prompt=True)
    batch = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=24, do_sample=False)
    found.append(out[0, batch["input_ids"].shape[1]:].tolist())
print(json.dumps({"tokens": found, "finetty_imported": any(m.startswith("finetty") for m in sys.modules),
                  "dtype": str(model.dtype)}))
"""


def greedy(loaded, questions, new_tokens=24):
    import torch

    found = []
    for question in questions:
        text, _ = inference.render(loaded.tokenizer, [{"role": "user", "content": question}])
        batch = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = loaded.model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
        found.append(out[0, batch["input_ids"].shape[1]:].tolist())
    return found


def test_merged_export_loads_in_plain_transformers_and_generates_identically(identity_run, tmp_path):
    out = tmp_path / "merged"
    result = finetty("export", str(identity_run), "--merge", "--out", str(out), check=True)
    assert "exported the merged model" in result.stdout
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) or n.startswith("adapter_") for n in names)
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config and "auto_map" not in config

    questions = [q for q, _ in IDENTITY]
    plain = subprocess.run([sys.executable, "-c", PLAIN_TRANSFORMERS, str(out), json.dumps(questions)],
                           capture_output=True, text=True, timeout=300, check=True)
    loaded = json.loads(plain.stdout.strip().splitlines()[-1])
    assert loaded["finetty_imported"] is False
    expected = greedy(inference.load(identity_run), questions)
    assert loaded["tokens"] == expected
    tuned = inference.load(identity_run)
    assert [tuned.tokenizer.decode(t, skip_special_tokens=True) for t in loaded["tokens"]] == [a for _, a in IDENTITY]


def test_adapter_export_is_standard_peft_without_trainer_state(identity_run, tmp_path):
    from peft import PeftModel

    from finetty.core.model import loading as models

    result = export.export(identity_run, tmp_path / "adapter", checkpoint="20")
    names = set(result.files)
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "finetty-export.json"} <= names
    assert not names & {"optimizer.pt", "scheduler.pt", "trainer_state.json", "finetty-checkpoint.json"}
    assert not any(n.startswith("rng_state") for n in names) and not result.merged
    provenance = json.loads((tmp_path / "adapter" / "finetty-export.json").read_text())
    assert provenance["checkpoint"] == "step-000020" and provenance["merged"] is False

    base = models.load_model(inference.base_model_dir(identity_run))
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).eval()
    tokenizer = models.load_tokenizer(tmp_path / "adapter")
    plain = inference.Loaded(peft_model, tokenizer, "x", identity_run, None, "lora")
    assert greedy(plain, ["Who are you?"]) == greedy(inference.load(identity_run, "20"), ["Who are you?"])


def test_export_refuses_to_overwrite_and_bad_checkpoints(identity_run, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="not an empty folder"):
        export.export(identity_run, taken)
    assert (taken / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match="not a complete checkpoint"):
        export.export(identity_run, tmp_path / "x", checkpoint="../../final")
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.partial").exists()
    result = finetty("export", str(identity_run), "--out", str(taken))
    assert result.returncode == 2 and "export never overwrites" in result.stderr
    with pytest.raises(InputError, match="inside the folder being exported"):
        export.export(identity_run, identity_run / "final" / "copy")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export.export(identity_run, empty).path == empty and (empty / "adapter_config.json").is_file()


@pytest.mark.parametrize("method", ["prefix", "prompt", "adapter"])
def test_methods_that_cannot_merge_say_so_and_export_the_adapter(method, tmp_path_factory, demo_model, tmp_path):
    registry = load_plugins()
    if method not in registry.methods:
        pytest.skip(f"method {method} is not installed")
    assert registry.methods[method].mergeable is False
    run = results_runs.trained(method, tmp_path_factory)
    result = export.export(run, tmp_path / "out", merge=True)
    assert not result.merged and "cannot be merged" in result.notes[0]
    expected = {p.name for p in (run / "final").iterdir()} | {"finetty-export.json", "README.md"}
    assert set(result.files) == expected


def test_full_fine_tuning_exports_the_whole_model(tmp_path_factory, demo_model, tmp_path):
    run = results_runs.trained("full", tmp_path_factory)
    result = export.export(run, tmp_path / "out", merge=True)
    assert "already produces a whole model" in result.notes[0]
    assert {"config.json", "model.safetensors"} <= set(result.files)


@pytest.mark.parametrize("method", ["dora", "ia3", "qlora"])
def test_other_mergeable_methods_merge_to_the_same_outputs(method, tmp_path_factory, demo_model, tmp_path):
    """The merged model computes what base + adapter compute (for qlora: the adapter on the 4-bit base)."""
    import torch
    from transformers import AutoModelForCausalLM

    if method not in load_plugins().methods:
        pytest.skip(f"method {method} is not installed")
    run = results_runs.trained(method, tmp_path_factory)
    result = export.export(run, tmp_path / "merged", merge=True)
    assert result.merged
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    assert merged.dtype == torch.float32
    assert not any("lora" in n or "ia3" in n for n, _ in merged.named_parameters())
    tuned = inference.load(run)
    batch = tuned.tokenizer("<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n",
                            add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        want = tuned.model(**batch).logits.float()
        got = merged(**batch).logits.float()
    tolerance = 2e-2 if method == "qlora" else 1e-4  # 4-bit matmuls vs their dequantized weights
    assert torch.allclose(got, want, atol=tolerance, rtol=0), (got - want).abs().max()
    assert greedy(inference.Loaded(merged, tuned.tokenizer, "m", run, None, method), ["Who are you?"], 8) == \
        greedy(tuned, ["Who are you?"], 8)
