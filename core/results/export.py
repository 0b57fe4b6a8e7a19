"""``finetty export``: take a run's result elsewhere, loadable without finetty.

- Adapter form (the default): the trained files exactly as the method saved
  them (for PEFT methods the standard ``adapter_config.json`` +
  ``adapter_model.safetensors`` layout; for ``full`` the whole model), with the
  tokenizer and its chat template, minus the trainer's resume state
  (optimizer, scheduler, RNG, trainer state).
- ``merge=True``: the adapter folded into the base (``merge_and_unload``), saved
  as safetensors with the tokenizer and the generation config, loadable by
  ``AutoModelForCausalLM.from_pretrained``. A quantized base (QLoRA, 8-bit) is
  first dequantized into the recipe's compute dtype, so the merged weights are
  the ones the adapter was trained against (the quantizer's ``dequantize``;
  one without it cannot be merged). Methods that cannot be merged
  (``Method.mergeable`` is false: prefix, prompt, bottleneck adapters) are
  exported in adapter form, and the result says so.

The export is written into ``DIR.partial`` and renamed to ``DIR`` at the end,
so an interrupted export never leaves a half-written ``DIR``. Only regular
files with safe names are copied (no symlinks, no ``..``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from finetty.core.results import inference
from finetty.core import paths
from finetty.core.run import rundir
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.errors import InputError

#: What the Trainer saves for resuming; never part of a result.
TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                 rundir.COMPLETE_MARKER}
PROVENANCE = "finetty-export.json"


@dataclass
class ExportResult:
    path: Path
    merged: bool
    label: str
    method: str
    whole_model: bool = False
    """the result is a whole model whether merged or not (the method trained the base's own weights)"""
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _is_trainer_state(name: str) -> bool:
    return name in TRAINER_STATE or (name.startswith("rng_state") and name.endswith(".pth"))


def _copy_tree(source: Path, target: Path) -> list[str]:
    """Copy the result's files (not the trainer's resume state); refuse links and unsafe names."""
    copied = []
    for entry in sorted(source.iterdir()):
        if _is_trainer_state(entry.name) or entry.name.startswith("."):
            continue
        if entry.is_symlink() or not paths.is_safe_name(entry.name):
            raise InputError(source, entry.name, "is a link or has an unsafe name; export copies only plain files",
                             "remove it from the folder")
        if entry.is_dir():
            (target / entry.name).mkdir()
            copied += [f"{entry.name}/{name}" for name in _copy_tree(entry, target / entry.name)]
        elif entry.is_file():
            shutil.copyfile(entry, target / entry.name)
            copied.append(entry.name)
    return copied


def check_out(out: Path) -> Path:
    """The export folder: new, or an existing empty folder; its parent must exist."""
    out = Path(out).expanduser()
    if out.name in ("", ".", "..") or out.name.endswith(".partial"):
        raise InputError("--out", str(out), "does not end in a usable folder name",
                         "name a new folder, e.g. --out exported/tiny-merged")
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise InputError("--out", str(out), "already exists and is not an empty folder",
                         "choose a new folder (export never overwrites)")
    if not out.parent.is_dir():
        raise InputError("--out", str(out), f"is in {out.parent}, which does not exist", "create it first")
    return out


def export(run_dir: Path, out: Path, checkpoint: str | None = None, merge: bool = False,
           registry=None) -> ExportResult:
    run_dir = Path(run_dir)
    out = check_out(out)
    registry = inference._registry(registry)
    recipe = recipe_mod.from_run(run_dir)
    method = inference._method(recipe, registry, run_dir)
    label, source, notes = inference.resolve_target(run_dir, checkpoint)
    if out.resolve().is_relative_to(source.resolve()):
        raise InputError("--out", str(out), f"is inside the folder being exported ({source})",
                         "export to a folder outside the run's result")
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        merged = False
        if merge and method.whole_model:
            notes.append(f"method {method.name} already produces a whole model: exported as is (nothing to merge)")
            files = _copy_tree(source, partial)
        elif merge and not method.mergeable:
            notes.append(f"method {method.name!r} cannot be merged into the base (its weights are not a change "
                         "to the base's weights): exported in adapter form; load it onto the base to use it")
            files = _copy_tree(source, partial)
        elif merge:
            files = _merge(run_dir, recipe, registry, method, source, partial)
            merged = True
        else:
            files = _copy_tree(source, partial)
        provenance = {"run": run_dir.name, "checkpoint": label, "method": method.name, "merged": merged,
                      "base_model": str(inference.base_model_dir(run_dir, recipe)), "quantizer": recipe.quantizer,
                      "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (partial / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # (checked empty above)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return ExportResult(out, merged, label, method.name, whole_model=method.whole_model,
                        files=sorted(files + [PROVENANCE]), notes=notes)


def _merge(run_dir: Path, recipe, registry, method, source: Path, target: Path) -> list[str]:
    """Base (dequantized if stored quantized) + adapter -> one plain model in ``target``."""
    from finetty.core.model import loading as models

    load_base = inference.base_loader(run_dir, recipe, registry, dequantize=True)
    model = method.load(source, recipe.method_options, load_base)
    if not hasattr(model, "merge_and_unload"):
        raise ValueError(f"method plugin {method.name!r} says it is mergeable, but the model its load returns "
                         "has no merge_and_unload; export without --merge")
    merged = model.merge_and_unload()
    config = merged.config
    if getattr(config, "quantization_config", None) is not None:  # (dequantize removes it; be sure)
        del config.quantization_config
    merged.save_pretrained(str(target), safe_serialization=True)
    base_dir = inference.base_model_dir(run_dir, recipe)
    tokenizer = models.load_tokenizer(inference._tokenizer_folder(source, base_dir), recipe.trust_remote_code)
    tokenizer.save_pretrained(str(target))
    if not (target / "generation_config.json").is_file() and merged.generation_config is not None:
        merged.generation_config.save_pretrained(str(target))
    return sorted(p.name for p in target.iterdir())
