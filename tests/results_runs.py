"""Trained runs for the results tests (chat, eval, export, serve, TUI chat), each trained once per session.

``trained(name)`` trains in this process (``tests.inprocess``) into the
session's temporary folder and caches the run directory, so the test modules
that need the same run share one training:

- ``identity``: LoRA on the tiny demo, taught a handful of identity answers
  (a small dataset so that it learns them exactly in a few seconds);
- ``full``: full fine-tuning on the same data, briefly;
- ``<method>``: any other method, a few steps on the same data (enough to
  load, answer and export, not to learn).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from . import inprocess
from .conftest import RECIPES

IDENTITY = [
    ("Who are you?", "I am Tiny, a small assistant made by the finetty team."),
    ("What is your name?", "My name is Tiny."),
    ("Who made you?", "I was made by the finetty team."),
    ("Are you ChatGPT?", "No, I am Tiny, made by the finetty team."),
]

RECIPE_FOR = {"identity": "demo-lora.yaml", "full": "demo-full.yaml", "lora": "demo-lora.yaml",
              "qlora": "demo-qlora.yaml", "dora": "demo-dora.yaml", "ia3": "demo-ia3.yaml",
              "adapter": "demo-adapter.yaml", "prefix": "demo-prefix.yaml", "prompt": "demo-prompt.yaml"}
STEPS = {"identity": 40, "full": 6}
_cache: dict[str, Path] = {}
_root: list[Path] = []


def _folder(tmp_path_factory) -> Path:
    if not _root:
        _root.append(tmp_path_factory.mktemp("results"))
    return _root[0]


def identity_data(folder: Path) -> Path:
    path = folder / "identity-small.jsonl"
    if not path.exists():
        path.write_text("".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n"
                                for q, a in IDENTITY))
    return path


def trained(name: str, tmp_path_factory) -> Path:
    """The run directory of the ``name`` training (see the module docstring); ``tmp_path_factory`` is pytest's."""
    if name in _cache:
        return _cache[name]
    folder = _folder(tmp_path_factory)
    steps = STEPS.get(name, 3)
    overrides = [f"dataset={identity_data(folder)}", "format=alpaca", f"train.max_steps={steps}",
                 f"train.save_steps={max(1, steps // 2)}", "train.logging_steps=1", "train.warmup_steps=0",
                 "train.per_device_train_batch_size=4", "train.lr_scheduler_type=constant"]
    if name == "identity":
        overrides.append("train.learning_rate=3.0e-3")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETTY_KEEP_IMPORTS", "1")  # the worker would hide bitsandbytes/peft from this process
        run = inprocess.train(RECIPES / RECIPE_FOR[name], folder / "runs" / name, overrides, monkeypatch=patch)
    _cache[name] = run
    return run


def chat_answer(loaded, question: str) -> str:
    from finetty.core.results import inference

    return inference.answer(loaded, [{"role": "user", "content": question}],
                            inference.GenerationSettings(temperature=0, max_new_tokens=32))
