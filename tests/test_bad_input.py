"""Bad recipes, datasets and model folders: exit code 2, one message naming file, place and fix, no run made."""

from pathlib import Path

import pytest

from .conftest import finetty

GOOD_ROW = '{"instruction": "hi", "output": "hello"}\n'

# (name, files to write, recipe text, what the message must contain)
CASES = [
    ("yaml-syntax", {}, "model: tiny-demo\ntrain: {max_steps: 3\n", ["recipe.yaml", "line", "not valid YAML"]),
    ("top-level-list", {}, "- model\n- lora\n", ["recipe.yaml", "top level", "mapping"]),
    ("unknown-key", {}, "model: tiny-demo\nmethd: lora\n", ["line 2", "methd", "did you mean 'method'"]),
    ("unknown-train-key", {}, "train:\n  learning_rat: 0.1\n", ["line 2", "train.learning_rat", "'learning_rate'"]),
    ("wrong-type", {}, "train:\n  max_steps: ten\n", ["line 2", "train.max_steps", "must be a int"]),
    ("out-of-range", {}, "train:\n  learning_rate: -1.0\n", ["train.learning_rate", "greater than 0"]),
    ("bad-method-option", {}, "method_options: {r: 0}\n", ["method_options.r", "at least 1"]),
    ("unknown-method-option", {}, "method_options: {rank: 8}\n", ["method_options.rank", "known options: r,"]),
    ("unknown-method", {}, "method: lorra\n", ["line 1", "key method", "did you mean 'lora'"]),
    ("unknown-quantizer", {}, "quantizer: gguf\n", ["key quantizer", "not a known quantizer"]),
    ("full-on-quantized", {}, "method: full\nquantizer: none\ntrain: {output_dir: /tmp/x}\n",
     ["train.output_dir", "set by finetty"]),
    ("missing-dataset-file", {}, "dataset: nowhere.jsonl\n", ["key dataset", "not a built-in dataset"]),
    ("invalid-jsonl-line", {"d.jsonl": GOOD_ROW + '{"instruction": "x", "output": \n'}, "dataset: d.jsonl\n",
     ["d.jsonl", "line 2", "not valid JSON"]),
    ("empty-file", {"d.jsonl": ""}, "dataset: d.jsonl\n", ["d.jsonl", "is empty"]),
    ("empty-json-list", {"d.json": "[]"}, "dataset: d.json\n", ["d.json", "non-empty JSON list"]),
    ("missing-field", {"d.jsonl": GOOD_ROW + '{"instruction": "no answer", "outptu": "x"}\n'},
     "dataset: d.jsonl\nformat: alpaca\n", ["d.jsonl", "line 2", "'output' is missing"]),
    ("columns-match-no-format", {"d.jsonl": '{"question": "a", "answer": "b"}\n'}, "dataset: d.jsonl\n",
     ["d.jsonl", "line 1", "match no known format", "instruction"]),
    ("invalid-role", {"d.jsonl": '{"messages": [{"role": "bot", "content": "x"}]}\n'}, "dataset: d.jsonl\n",
     ["d.jsonl", "line 1", "role 'bot'"]),
    ("non-utf8", {"d.jsonl": GOOD_ROW.encode() + b'{"instruction": "caf\xe9", "output": "x"}\n'},
     "dataset: d.jsonl\n", ["d.jsonl", "line 2", "UTF-8"]),
    ("wrong-format-for-objective", {"d.jsonl": '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'},
     "dataset: d.jsonl\nobjective: sft\n", ["d.jsonl", "preference", "cannot train on"]),
    ("folder-without-data", {"data/readme.md": "nothing"}, "dataset: data\n", ["data", "holds no data files"]),
    ("model-without-config", {"m/model.safetensors": "x"}, "model: m\n", ["m", "no config.json"]),
    ("model-corrupt-safetensors", {"m/config.json": '{"model_type": "llama"}', "m/model.safetensors": "garbage!!"},
     "model: m\n", ["model.safetensors", "not a valid safetensors file"]),
    ("model-without-tokenizer", {"m/config.json": '{"model_type": "llama"}',
                                 "m/model.safetensors": b"\x02\x00\x00\x00\x00\x00\x00\x00{}"},
     "model: m\n", ["m", "has no tokenizer"]),
    ("recipe-not-utf8", {}, b"model: caf\xe9\n", ["recipe.yaml", "UTF-8"]),
]


@pytest.mark.parametrize("name,files,recipe,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_a_run_exists(tmp_path: Path, name, files, recipe, expected):
    for rel, content in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_bytes(recipe if isinstance(recipe, bytes) else recipe.encode())
    runs = tmp_path / "runs"
    out = finetty("train", str(recipe_path), "--runs-dir", str(runs))
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    message = " ".join(out.stderr.split())
    assert message.startswith("error:") and len(out.stderr.strip().splitlines()) <= 3, out.stderr
    for fragment in expected:
        assert fragment in message, (fragment, message)
    assert not runs.exists(), "no run directory for bad input"


def test_bad_set_override(tmp_path):
    out = finetty("train", "recipes/demo-lora.yaml", "--set", "train.max_steps", "--runs-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "--set" in out.stderr and "key.path=value" in out.stderr


def test_missing_recipe_file(tmp_path):
    out = finetty("train", str(tmp_path / "nope.yaml"), "--runs-dir", str(tmp_path / "r"))
    assert out.returncode == 2 and "nope.yaml" in out.stderr and "does not exist" in out.stderr


def test_unknown_run(tmp_path):
    out = finetty("stop", "no-such-run", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "no-such-run" in out.stderr
