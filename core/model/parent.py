"""A run's result as the model a new run starts from: training on top of a run (SFT, then DPO).

A recipe's ``model`` may name a run instead of a model:

- ``run:ID``: the run's result, ``final/`` (the run must have finished);
- ``run:ID@step-000040`` (or ``run:ID@40``): one of its complete checkpoints; ``run:ID@final``: ``final/``;
- ``run:latest``: the newest finished run of the runs directory; ``run:latest:lora/sft``: the newest finished
  run that trained that method with that objective (as ``finetty runs`` lists them), ``run:latest:lora`` with
  any objective;
- a run's folder, its ``final/`` or one of its checkpoint folders, by path (with or without ``run:``).

How the new run starts from it (:attr:`Parent.mode`):

- ``continue``: the parent trained a PEFT adapter and the new run trains the same method on the same
  quantizer: the adapter is loaded trainable (``PeftModel.from_pretrained(..., is_trainable=True)``) and
  trained further. Its own options (rank, targets) stay those it was made with.
- ``merge``: the parent's PEFT adapter is merged into its base (``merge_and_unload``) and the new method
  applies on top. The merged model is written to ``<new run>/base/``: the new run's result is an adapter on
  that folder, which chat, eval and export load as its base, with or without finetty.
- ``whole``: the parent trained whole weights, so its result is a complete model: the new run's base.

Everything here is read from the parent's run directory (its ``recipe.yaml``, ``final/`` and checkpoints),
never from its events, so a recipe is checked before any run exists. Heavy imports stay inside the
functions the worker calls.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from finetty.core import paths
from finetty.core.data import demo
from finetty.core.errors import InputError
from finetty.core.model import loading
from finetty.core.plugin.options import nearest

PREFIX = "run:"
LATEST = "latest"
MERGED_BASE = "base"
"""the folder of a ``merge`` run that holds its parent merged into its base: the base of its own result"""
MODES = ("continue", "merge", "whole")
ADAPTER_CONFIG = "adapter_config.json"
_MAX_DEPTH = 32  # a chain of runs deeper than this is a loop (a run folder copied into its own ancestry)


@dataclass(frozen=True)
class Parent:
    """The run a new run starts from, and how."""

    run: str
    """the parent's id (its folder's name)"""
    path: Path
    """the parent's run folder"""
    checkpoint: str
    """``final`` or a checkpoint folder's name (``step-000040``)"""
    source: Path
    """the folder of the parent's result that is used (``final/`` or the checkpoint)"""
    method: str
    objective: str
    quantizer: str
    quantizer_options: dict
    method_options: dict
    """the options the parent's method ran with (an adapter trained further keeps them)"""
    train: dict
    """the parent's ``train`` section (its compute dtype loads its base as it trained)"""
    base: str
    """the model folder the parent's result applies to (``tiny-demo`` for the built-in demo); for ``whole``
    the result itself"""
    mode: str | None
    """one of :data:`MODES`; None when the new run's method is not known (an invalid recipe)"""

    @property
    def spec(self) -> str:
        """The spelling the resolved recipe records: absolute, so the worker and a resume find the same run."""
        return f"{PREFIX}{self.path}@{self.checkpoint}"

    @property
    def base_dir(self) -> Path:
        return demo.demo_dir() if self.base == demo.NAME else Path(self.base)

    def tokenizer_dir(self, model_dir: Path | None) -> Path | None:
        """The parent's own tokenizer (the chat template it trained with), else the model's."""
        files = (*loading.TOKENIZER_FILES, "tokenizer_config.json")
        return self.source if any((self.source / name).is_file() for name in files) else model_dir

    def describe(self, method: str) -> str:
        """One line for the run's output: what was done with the parent's result."""
        where = f"run {self.run} ({self.checkpoint})"
        if self.mode == "continue":
            return f"training the {self.method} adapter of {where} further"
        if self.mode == "merge":
            return (f"merged the {self.method} adapter of {where} into its base ({MERGED_BASE}/); "
                    f"{method} trains on top")
        return f"starting from the {self.method} weights of {where}"

    def record(self, method: str) -> dict:
        """What the run's ``run_started`` event and summary keep of its parent (docs/events.md)."""
        return {"run": self.run, "checkpoint": self.checkpoint, "path": str(self.path), "mode": self.mode,
                "method": self.method, "objective": self.objective, "message": self.describe(method)}


def names_run(spec: object, base_dir: Path) -> bool:
    """True when a recipe's ``model`` names a run (``run:...``, or the path of a run folder or of its result)."""
    if not isinstance(spec, str) or not spec.strip():
        return False
    if spec.startswith(PREFIX):
        return True
    return _run_of_path(_local(spec, base_dir)) is not None


def _local(spec: str, base_dir: Path) -> Path:
    path = Path(spec).expanduser()
    return path if path.is_absolute() else Path(base_dir) / path


def _run_of_path(path: Path) -> tuple[Path, str | None] | None:
    """``(run folder, checkpoint)`` for a run folder, its ``final/`` or one of its checkpoint folders."""
    if (path / paths.RUN_RECIPE).is_file():
        return path, None
    if path.name == paths.RUN_FINAL and (path.parent / paths.RUN_RECIPE).is_file():
        return path.parent, paths.RUN_FINAL
    if path.parent.name == paths.RUN_CHECKPOINTS and (path.parent.parent / paths.RUN_RECIPE).is_file():
        return path.parent.parent, path.name
    return None


def _recipe(run: Path) -> dict:
    try:
        data = yaml.safe_load((run / paths.RUN_RECIPE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        data = None
    return data if isinstance(data, dict) else {}


def _what(data: dict) -> tuple[str, str]:
    return str(data.get("method") or "?"), str(data.get("objective") or "sft")


def _checkpoints(run: Path) -> list[str]:
    """The run's complete checkpoints (those with the completeness marker), oldest first."""
    folder = run / paths.RUN_CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith("step-") and (p / paths.CHECKPOINT_MARKER).is_file())


def latest(spec: object) -> tuple[str | None, str | None] | None:
    """``(what, checkpoint)`` of a ``run:latest[:what][@checkpoint]`` spec (``("lora/sft", None)``), else None.

    The queue keeps such a spec unresolved until its entry starts: "latest" then means the run just before."""
    if not isinstance(spec, str) or not spec.strip().startswith(PREFIX + LATEST):
        return None
    who, sep, checkpoint = spec.strip()[len(PREFIX):].rpartition("@")
    if not sep:
        who, checkpoint = spec.strip()[len(PREFIX):], None
    if who != LATEST and not who.startswith(LATEST + ":"):
        return None
    return who[len(LATEST) + 1:] or None, checkpoint


def trains(what: str | None, method: str, objective: str) -> bool:
    """True when a run of ``method``/``objective`` is what ``run:latest:WHAT`` looks for (any run for None)."""
    return what in (None, method, f"{method}/{objective}")


def planned_mode(data: dict, name: str, registry, method: str | None, quantizer: str | None, file=None,
                 place: str | None = "key model") -> str | None:
    """How a run of ``method`` on ``quantizer`` would start from a run of the recipe ``data`` that has not run
    yet (a queued entry, called ``name``): the same checks and refusals as for a finished parent."""
    return _mode(data, name, registry, method, quantizer, file, place)


def newest(runs: Path, what: str | None) -> Path | None:
    """The newest finished run (the latest ``final/``), of method/objective ``what`` when given; None if none."""
    found = []
    for run in runs.iterdir() if runs.is_dir() else ():
        final = run / paths.RUN_FINAL
        if not ((run / paths.RUN_RECIPE).is_file() and final.is_dir()):
            continue
        if trains(what, *_what(_recipe(run))):
            found.append((final.stat().st_mtime, run.name, run))
    return max(found)[2] if found else None


def _latest(runs: Path, what: str | None, file, place) -> Path:
    found = newest(runs, what)
    if found is not None:
        return found
    kind = f" that trained {what}" if what else ""
    raise InputError(file, place, f"there is no finished run{kind} in {runs}",
                     "train one first (for example finetty train recipes/demo-lora.yaml), or name a run: "
                     "run:ID as `finetty runs` lists it")


def _locate(spec: str, runs: Path, base_dir: Path, file, place) -> tuple[Path, str | None, str]:
    """``(run folder, checkpoint or None, how the run was named)``."""
    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    who, sep, checkpoint = body.rpartition("@")
    if not sep:
        who, checkpoint = body, None
    if who == LATEST or who.startswith(LATEST + ":"):
        return _latest(runs, who[len(LATEST) + 1:] or None, file, place), checkpoint, who
    if spec.startswith(PREFIX) and paths.is_safe_name(who):
        if (runs / who / paths.RUN_RECIPE).is_file():
            return runs / who, checkpoint, who
        ids = sorted(p.name for p in runs.iterdir() if (p / paths.RUN_RECIPE).is_file()) if runs.is_dir() else []
        close = nearest(who, ids)
        raise InputError(file, place, f"{who!r} is not a run in {runs}",
                         f"did you mean run:{close}?" if close else
                         "give a run id as `finetty runs --runs-dir FOLDER` lists it, or the run's folder")
    found = _run_of_path(_local(who, base_dir))
    if found is None:
        raise InputError(file, place, f"{who!r} is not a run folder (no {paths.RUN_RECIPE} there), nor its "
                         f"{paths.RUN_FINAL}/ or a checkpoint folder of one",
                         "give a run id (run:ID), a run's folder, or a model folder")
    run, named = found
    return run, checkpoint or named, who if "/" in who else f"./{who}"  # (a bare name would read as a run id)


def _source(run: Path, checkpoint: str | None, named: str, file, place) -> tuple[str, Path]:
    """``(checkpoint label, folder)`` of the result used: ``final/`` unless a checkpoint is named."""
    steps = _checkpoints(run)
    if checkpoint in (None, "", paths.RUN_FINAL):
        if (run / paths.RUN_FINAL).is_dir():
            return paths.RUN_FINAL, run / paths.RUN_FINAL
        raise InputError(file, place, f"run {run.name!r} has not finished: it has no {paths.RUN_FINAL}/ result",
                         f"name one of its checkpoints, e.g. run:{named}@{steps[-1]}" if steps else
                         f"it has no complete checkpoint either: let it finish, or resume it "
                         f"(finetty train --resume {run.name})")
    label = f"step-{int(checkpoint):06d}" if checkpoint.isdigit() else checkpoint
    if label in steps:
        return label, run / paths.RUN_CHECKPOINTS / label
    raise InputError(file, place, f"run {run.name!r} has no complete checkpoint {checkpoint!r}",
                     f"available: {', '.join(steps)}" if steps else
                     f"it has no complete checkpoint; use its result: run:{named}")


def _mode(data: dict, name: str, registry, method: str | None, quantizer: str | None, file, place) -> str | None:
    """How a run of ``method`` on ``quantizer`` starts from the parent (see the module docstring), or a refusal."""
    parent_method, _ = _what(data)
    parent_quantizer = str(data.get("quantizer") or "none")
    found = registry.methods.get(parent_method)
    if found is None:
        raise InputError(file, place, f"run {name!r} trained with method {parent_method!r}, which is not "
                         "installed, so its result cannot be loaded", "install the plugin that provides it "
                         "(see `finetty plugins`)")
    if found.whole_model:
        return "whole"
    if method is None:
        return None
    if found.kind == "peft" and method == parent_method and (quantizer or "none") == parent_quantizer:
        return "continue"
    if found.kind != "peft":
        raise InputError(file, place, f"run {name!r} trained {parent_method!r}, which adds modules of its own "
                         f"that can neither be merged into the base nor loaded for more training",
                         f"train on its base instead (model: {data.get('model')})")
    if not found.mergeable:
        raise InputError(file, place, f"run {name!r} trained a {parent_method!r} adapter, which cannot be "
                         f"merged into its base, and this recipe trains {method!r}",
                         f"use method: {parent_method}"
                         + (f" with quantizer: {parent_quantizer}" if parent_quantizer != "none" else "")
                         + f" to train that adapter further, or train on its base (model: {data.get('model')})")
    if parent_quantizer != "none":
        stored = registry.quantizers.get(parent_quantizer)
        if stored is None or stored.dequantize is None:
            raise InputError(file, place, f"run {name!r} trained its {parent_method!r} adapter on a "
                             f"{parent_quantizer!r} base, which offers no dequantize step, so it cannot be merged "
                             f"for {method!r} to train on top", f"use method: {parent_method} with quantizer: "
                             f"{parent_quantizer} to train that adapter further")
    return "merge"


def base_of(run: Path, registry, depth: int = 0) -> str:
    """The model folder a run's result applies to (``tiny-demo`` for the built-in demo), read from its recipe.

    For a run that itself started from a run: its parent's base (``continue``), its own merged
    ``base/`` (``merge``), or its parent's result (``whole``)."""
    data = _recipe(run)
    model = str(data.get("model") or demo.NAME)
    if model == demo.NAME:
        return demo.NAME
    if names_run(model, run):
        if depth >= _MAX_DEPTH:
            raise InputError(run / paths.RUN_RECIPE, "key model", "names a chain of runs that loops back on itself",
                             "start one of them from a model folder")
        method = str(data.get("method") or "?")
        found = resolve(model, run.parent, run, registry, method, str(data.get("quantizer") or "none"),
                        check_base=False, depth=depth + 1)
        if found.mode == "merge":
            return str(run / MERGED_BASE)
        return str(found.source) if found.mode == "whole" else found.base
    path = Path(model).expanduser()
    if path.is_absolute():
        return str(path)
    try:
        return str(loading.resolve(model, run, check=False))
    except InputError:
        return model  # a hub model no longer in the cache: reported as missing by the caller


def resolve(spec: str, runs: Path, base_dir: Path, registry, method: str | None, quantizer: str | None,
            recipe_file=None, place: str | None = "key model", check_base: bool = True, depth: int = 0) -> Parent:
    """The parent a recipe's ``model`` names, checked: it exists, its result is there, its base is there, and
    ``method`` on ``quantizer`` can start from it. Every refusal is an :class:`InputError` naming the fix.

    ``runs`` is the runs directory ``run:ID`` and ``run:latest`` look in; ``base_dir`` the recipe's folder
    (relative paths)."""
    runs = Path(runs)
    run, checkpoint, named = _locate(spec.strip(), runs, Path(base_dir), recipe_file, place)
    run = run.resolve()
    label, source = _source(run, checkpoint, named, recipe_file, place)
    data = _recipe(run)
    mode = _mode(data, run.name, registry, method, quantizer, recipe_file, place)
    base = str(source) if mode == "whole" else base_of(run, registry, depth)
    found = Parent(run=run.name, path=run, checkpoint=label, source=source, method=_what(data)[0],
                   objective=_what(data)[1], quantizer=str(data.get("quantizer") or "none"),
                   quantizer_options=dict(data.get("quantizer_options") or {}),
                   method_options=dict(data.get("method_options") or {}), train=dict(data.get("train") or {}),
                   base=base, mode=mode)
    if not check_base:
        return found
    if mode == "whole":
        loading.check_folder(source)
    elif not (source / ADAPTER_CONFIG).is_file():
        raise InputError(recipe_file, place, f"{source} holds no adapter ({ADAPTER_CONFIG}) of run "
                         f"{run.name!r}", "name another checkpoint of the run, or its final result")
    elif base != demo.NAME and not (Path(base) / "config.json").is_file():
        raise InputError(recipe_file, place, f"the base model of run {run.name!r} ({base}) is missing",
                         "put that model folder back or download it again, or train on another model")
    return found


# -- in the worker ---------------------------------------------------------------------------------

def merged_base(found: Parent, registry, target: Path, trust_remote_code: bool = False) -> Path:
    """The parent's adapter merged into its base, saved (weights and the parent's tokenizer) to ``target``.

    Written under a temporary name and renamed, so a resumed run reuses a complete one and never a half.
    The base loads as the parent trained on it (its compute dtype, its quantizer, dequantized to merge)."""
    if (target / "config.json").is_file():
        return target
    from peft import PeftModel

    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    dtype = loading.compute_dtype(found.train)
    stored = registry.quantizers.get(found.quantizer) if found.quantizer != "none" else None
    config = stored.config(found.quantizer_options, dtype) if stored is not None and stored.config else None
    model = loading.load_model(found.base_dir, "float32" if config is None and dtype == "float32" else dtype, config,
                               trust_remote_code)
    if stored is not None:
        if stored.quantize is not None:
            model = stored.quantize(model, found.quantizer_options, dtype)
        model = stored.dequantize(model, dtype)
    model = PeftModel.from_pretrained(model, str(found.source)).merge_and_unload()
    model.save_pretrained(str(partial))
    loading.load_tokenizer(found.tokenizer_dir(found.base_dir), trust_remote_code).save_pretrained(str(partial))
    os.rename(partial, target)
    return target


def continued(model, found: Parent):
    """The parent's PEFT adapter on ``model`` (the base as the parent trained on it), trainable."""
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(found.source), is_trainable=True)
