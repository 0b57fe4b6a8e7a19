"""Train in this process (no subprocess, torch imported once) into a real run directory.

``train(recipe, runs, overrides, before_save=...)`` validates the recipe like
``finetty train`` does, creates the run directory and calls the worker's
``train``; ``before_save(trainer)`` runs right before ``final/`` is written,
so a test can look at the trained model in memory.
"""

from __future__ import annotations

from pathlib import Path

from finetty.core.model import loading as models
from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.run import rundir
from finetty.core.run.events import EventWriter
from finetty.core.train import worker

from .conftest import events as run_events

PROMPTS = ("Who are you?", "What is your name?", "Who made you?")


def train(recipe: Path | None, runs: Path, overrides: list[str] = (), *, monkeypatch, before_save=None,
          registry=None) -> Path:
    """Validate ``recipe`` with ``overrides``, create its run directory under ``runs`` and train in process;
    ``monkeypatch`` (pytest's) swaps the worker's final save for one that calls ``before_save`` first."""
    registry = registry or load_plugins()
    resolved = recipe_mod.load(recipe, list(overrides), registry, runs=runs)  # (model: run:ID is looked up in runs)
    run_dir = rundir.create(runs, resolved.method, resolved.to_yaml())
    writer = EventWriter(run_dir)
    original = worker._save_final

    def save_final(trainer, method, tokenizer, folder):
        if before_save is not None:
            before_save(trainer)
        original(trainer, method, tokenizer, folder)

    with monkeypatch.context() as patch:
        patch.setattr(worker, "_save_final", save_final)
        patch.setattr(worker, "load_plugins", lambda: registry)
        try:
            code = worker.train(run_dir, writer, worker.Requests(), resume=False)
        finally:
            writer.close()
    assert code == 0
    return run_dir


def greedy(model, tokenizer, prompts=PROMPTS, new_tokens: int = 12) -> list[list[int]]:
    """Greedy continuations of chat prompts, as token ids."""
    import torch

    model.eval()
    found = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
        batch = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        found.append(out[0, batch["input_ids"].shape[1]:].tolist())
    return found


def load_result(run_dir: Path, registry=None):
    """The run's ``final/`` loaded through its method's ``load``, on a base stored as in training."""
    registry = registry or load_plugins()
    resolved = recipe_mod.from_run(run_dir)
    method = registry.methods[resolved.method]
    model_dir = Path(next(e for e in run_events(run_dir) if e["type"] == "run_started")["model_dir"])
    dtype = models.compute_dtype(resolved.train)
    quantization = None
    if resolved.quantizer != "none":
        quantizer = registry.quantizers[resolved.quantizer]
        quantization = quantizer.config(resolved.quantizer_options, dtype)

    def load_base():
        return models.load_model(model_dir, dtype, quantization)

    model = method.load(run_dir / rundir.FINAL, resolved.method_options, load_base)
    return model, models.load_tokenizer(run_dir / rundir.FINAL)
