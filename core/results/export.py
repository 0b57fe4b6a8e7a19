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

Every form gets a model card (``README.md``, :func:`model_card`) and names its
base the way it can be found again on another machine: the hub id when the
base came from the Hugging Face cache, else a path relative to the export
folder (:func:`base_reference`), never the trainer's absolute path. The export
goes where the person asked, not into the private run directory, so its files
get ordinary modes (0644, folders 0755) whatever the run's were.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from finetty.core.results import inference
from finetty.core import paths
from finetty.core.data import hub
from finetty.core.run import rundir
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.errors import InputError

#: What the Trainer saves for resuming; never part of a result.
TRAINER_STATE = {"optimizer.pt", "scheduler.pt", "scaler.pt", "trainer_state.json", "training_args.bin",
                 rundir.COMPLETE_MARKER}
PROVENANCE = "finetty-export.json"
CARD = "README.md"


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


@dataclass
class Target:
    """What an export reads (the run, its recipe and method, the checkpoint chosen) and where it writes."""
    run_dir: Path
    out: Path
    registry: object
    recipe: object
    method: object
    label: str
    source: Path
    notes: list[str]


def target(run_dir: Path, out: Path, checkpoint: str | None, registry=None) -> Target:
    """The checks every export starts with (folder form, GGUF): ``out`` new and outside the result it exports."""
    run_dir = Path(run_dir)
    out = check_out(out)
    registry = inference._registry(registry)
    recipe = recipe_mod.from_run(run_dir)
    method = inference._method(recipe, registry, run_dir)
    label, source, notes = inference.resolve_target(run_dir, checkpoint)
    if out.resolve().is_relative_to(source.resolve()):
        raise InputError("--out", str(out), f"is inside the folder being exported ({source})",
                         "export to a folder outside the run's result")
    return Target(run_dir, out, registry, recipe, method, label, source, notes)


@contextmanager
def writing(out: Path):
    """Yield ``out.partial`` to write an export into; on success it gets ordinary file modes and becomes ``out``
    (a folder :func:`check_out` found empty or missing), on any failure it is removed: never half an export."""
    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        yield partial
        _ordinary_modes(partial)
        if out.exists():
            out.rmdir()  # (checked empty by check_out)
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def export(run_dir: Path, out: Path, checkpoint: str | None = None, merge: bool = False,
           registry=None) -> ExportResult:
    found = target(run_dir, out, checkpoint, registry)
    run_dir, out, registry, recipe, method = found.run_dir, found.out, found.registry, found.recipe, found.method
    label, source, notes = found.label, found.source, found.notes
    with writing(out) as partial:
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
        base, base_note = base_reference(inference.base_model_dir(run_dir, recipe), out)
        provenance = {"run": run_dir.name, "checkpoint": label, "method": method.name, "merged": merged,
                      "base_model": base, "quantizer": recipe.quantizer,
                      "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (partial / PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        _point_adapter_at(partial, base)
        (partial / CARD).write_text(model_card(run_dir, recipe, method, label, merged, base, base_note),
                                    encoding="utf-8")
        files = sorted(set(files) | {CARD})
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


# -- the model card, the base's name, the file modes ----------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def base_reference(base_dir: Path, out: Path) -> tuple[str, str | None]:
    """``(reference, note)``: how the export names its base. A base from the Hugging Face cache
    (``.../models--org--name/snapshots/<rev>``) is named by its hub id (``org/name``), which loads anywhere;
    any other base by its path relative to the export folder (an absolute path would name a folder on the
    machine that trained it and leak its layout), with a note saying where it was."""
    base_dir = Path(base_dir).resolve()
    repo_id = hub.repo_id_of(base_dir)
    if repo_id is not None and repo_id.count("/") == 1:
        return repo_id, None
    relative = os.path.relpath(base_dir, Path(out).expanduser().resolve())
    return relative, (f"the base model did not come from the Hugging Face Hub: {_line(relative)} is its path "
                      f"relative to this folder; on the machine that trained it, it was {_line(base_dir)}. "
                      "Elsewhere, copy it there or point `base_model_name_or_path` at your copy.")


def _point_adapter_at(folder: Path, base: str) -> None:
    """Name the base as the card does: ``adapter_config.json``'s ``base_model_name_or_path`` (PEFT wrote the
    trainer's absolute path) and ``config.json``'s ``_name_or_path`` where transformers wrote one (4.x writes
    the folder the base was loaded from; 5.x leaves it out)."""
    for name, key in (("adapter_config.json", "base_model_name_or_path"), ("config.json", "_name_or_path")):
        config_path = folder / name
        if not config_path.is_file():
            continue
        config = json.loads(config_path.read_text(encoding="utf-8"))
        if key not in config and name == "config.json":
            continue
        config[key] = base
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _ordinary_modes(folder: Path) -> None:
    """0755 folders and 0644 files, set explicitly: otherwise the exporting process's umask decides, and
    finetty keeps run directories private (0600/0700); an export goes where the person asked, to be shared."""
    os.chmod(folder, 0o755)
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
        for name in names:
            os.chmod(os.path.join(root, name), 0o644)


def _line(value) -> str:
    """One line of untrusted text for the card's body: no control characters, in a code span that its own
    backticks cannot close."""
    text = _CONTROL.sub(" ", str(value)).strip()
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    padding = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{padding}{text}{padding}{ticks}"


def _number(value) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return _line(value)
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _run_facts(run_dir: Path, label: str) -> dict:
    """What the events say about the exported result: its data, its step, the loss of its last logged step,
    the run's mean train loss (``run_finished``, final/ only) and the eval scores up to its step."""
    from finetty.core.run import events as events_mod

    facts: dict = {"data": None, "step": None, "loss": None, "mean_loss": None, "evals": []}
    digits = label[len("step-"):] if label.startswith("step-") else ""
    at_step = int(digits) if label != rundir.FINAL and digits.isdigit() else None
    for event in events_mod.read_all(run_dir):
        kind, step = event.get("type"), event.get("step")
        if at_step is not None and isinstance(step, int) and step > at_step:
            continue
        if kind == "data":
            facts["data"] = event
        elif kind == "step":
            facts["step"], facts["loss"] = step, event.get("loss")
        elif kind == "run_finished" and at_step is None:
            facts["step"], facts["mean_loss"] = step, event.get("train_loss")
        elif kind == "eval":
            facts["evals"].append(event)
    if at_step is not None:
        facts["step"] = at_step
    return facts


def model_card(run_dir: Path, recipe, method, label: str, merged: bool, base: str, base_note: str | None) -> str:
    """A Hugging Face model card: YAML front matter (``yaml.safe_dump``, so names from files cannot break it)
    and a body saying what was trained on what, how far, how well, and with which recipe."""
    import yaml

    whole = merged or method.whole_model
    front = {"base_model": base, "library_name": "transformers" if whole else "peft",
             "tags": ["finetty", recipe.method, recipe.objective]}
    facts = _run_facts(run_dir, label)
    form = "merged into the base" if merged else ("whole model" if method.whole_model else "adapter")
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {_line(run_dir.name)}", "",
             f"Fine-tuned with finetty ({form}; {_line(label)}).", "",
             "## Training", "",
             f"- base model: {_line(base)}"]
    if base_note:
        lines.append(f"  - note: {_CONTROL.sub(' ', base_note)}")
    lines.append(f"- method: {_line(recipe.method)}")
    for key, value in sorted((recipe.method_options or {}).items()):
        lines.append(f"  - {_line(key)}: {_line(json.dumps(value))}")
    if recipe.quantizer and recipe.quantizer != "none":
        lines.append(f"- quantizer: {_line(recipe.quantizer)}")
    lines.append(f"- objective: {_line(recipe.objective)}")
    for key, value in sorted((getattr(recipe, "objective_options", None) or {}).items()):
        lines.append(f"  - {_line(key)}: {_line(json.dumps(value))}")
    data = facts["data"] or {}
    described = f"- data: {_line(data.get('dataset', recipe.dataset))}"
    if data.get("format"):
        described += f" (format {_line(data['format'])})"
    if data.get("records") is not None:
        described += f", {_number(data['records'])} records ({_number(data.get('train_records'))} train, " \
                     f"{_number(data.get('eval_records'))} eval)"
    lines += [described,
              f"- steps: {_number(facts['step']) if facts['step'] is not None else 'unknown'}",
              f"- final train loss: {_number(facts['loss']) if facts['loss'] is not None else 'not recorded'}"]
    if facts["mean_loss"] is not None:
        lines.append(f"- mean train loss over the run: {_number(facts['mean_loss'])}")
    if facts["evals"]:
        lines += ["", "## Evaluation", "", "| step | source | loss | scores |", "| --- | --- | --- | --- |"]
        for event in facts["evals"]:
            scores = ", ".join(f"{_CONTROL.sub(' ', str(k))}={_number(v)}"
                               for k, v in sorted((event.get("metrics") or {}).items()) if v is not None)
            cells = [_number(event.get("step")), _line(event.get("source", "")),
                     _number(event.get("loss")) if event.get("loss") is not None else "",
                     scores.replace("|", "\\|")]
            lines.append("| " + " | ".join(cells) + " |")
    recipe_text = (run_dir / rundir.RECIPE_FILE).read_text(encoding="utf-8")
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", recipe_text)), default=0) + 1)
    lines += ["", "## Recipe", "", f"{fence}yaml", recipe_text.rstrip("\n"), fence, ""]
    return "\n".join(lines)
