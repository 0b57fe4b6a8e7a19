"""Recipes: YAML, one job each; validated against the plugins' option descriptions.

``load(path, overrides)`` reads a recipe, applies ``--set key.path=value``
overrides, checks every key and value, resolves relative paths against the
recipe's folder and fills in defaults. Every problem is an
:class:`~finetty.core.errors.InputError` naming the file, the line and key,
and what is expected.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from finetty.core.data import reading as data_mod
from finetty.core import paths
from finetty.core.model import loading as models
from finetty.core.model import parent
from finetty.core.errors import InputError, InputErrors, raise_all
from finetty.core.plugin.options import nearest, resolve_options, yaml_number
from finetty.core.plugin.registry import Registry
from finetty.core.recipe import notify_urls
from finetty.core.recipe.train_args import FINETTY_TRAIN_OPTIONS, RESERVED, TRAIN_DEFAULTS, check_value, training_argument_fields


@dataclass
class Recipe:
    """One fine-tuning job."""

    model: str = "tiny-demo"
    """built-in name (tiny-demo), a local model folder, or a hub id (org/name, org/name@revision: `finetty
    train` downloads it into the Hugging Face cache first)"""
    dataset: Any = "identity"
    """built-in name, a local file or folder (json, jsonl, csv, parquet, txt), a hub dataset id (with subset:, split:),
    path/dataset_info.json#name, a mapping with path: and how to read it (format, columns, tags, weight,
    samples, system, ignore_columns), or a list of those to mix (see finetty.core.data.reading)"""
    dataset_options: dict = field(default_factory=dict)
    """values that fill the {{name}} and {name} fields of any dataset (identity: name, author)"""
    data_options: dict = field(default_factory=dict)
    """ignore_columns, a default system prompt, the mixture's seed (finetty.core.data.reading.DATA_OPTIONS)"""
    format: str = "auto"
    """auto, or a data format plugin's name (alpaca, sharegpt, messages, text, preference)"""
    method: str = "lora"
    """a method plugin's name: what is trained"""
    method_options: dict = field(default_factory=dict)
    """the method's options (see `finetty plugins --options`)"""
    quantizer: str = "none"
    """none, or a quantizer plugin's name: how the base model is stored"""
    quantizer_options: dict = field(default_factory=dict)
    """the quantizer's options"""
    objective: str = "sft"
    """an objective plugin's name: what loss is trained"""
    objective_options: dict = field(default_factory=dict)
    """the objective's options"""
    train: dict = field(default_factory=dict)
    """transformers TrainingArguments fields, plus max_length, truncation and val_size"""
    chat_template: str | None = None
    """how conversations are laid out for the model: a named template (chatml, llama3, qwen2, mistral, gemma,
    phi3, alpaca, vicuna) or a Jinja file; empty: the model's own (see finetty.core.model.templates)"""
    trust_remote_code: bool = False
    """run the model repository's own Python code; off unless you trust its author"""
    model_options: dict = field(default_factory=dict)
    """how the model is loaded: attn_implementation, torch_dtype (see finetty.core.recipe.sections.MODEL_OPTIONS)"""
    launch: dict = field(default_factory=dict)
    """processes, machines and distributed type (see finetty.core.recipe.sections.LAUNCH_OPTIONS)"""
    monitor: dict = field(default_factory=dict)
    """GPU memory monitor: interval_s, watermark, on_watermark (see finetty.core.memory.monitor.MONITOR_OPTIONS)"""
    notify: list = field(default_factory=list)
    """Apprise URLs (ntfy://topic, mailto://..., discord://...) told when the run finishes, fails, crosses the
    memory watermark or runs out of memory, besides config.yaml's; the run directory holds them masked
    (see finetty.core.recipe.notify_urls and finetty.core.run.notify)"""

    def to_dict(self) -> dict:
        return asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


TOP_LEVEL = {f.name: f for f in fields(Recipe)}
KIND_KEYS = {"method": "method", "quantizer": "quantizer", "objective": "objective"}


@dataclass
class _Source:
    """The recipe's file and a map from key paths to line numbers."""

    file: Path | None
    lines: dict[tuple, int] = field(default_factory=dict)
    overridden: set = field(default_factory=set)

    def place(self, *key: str) -> str:
        if any(tuple(key[:n]) in self.overridden for n in range(1, len(key) + 1)):
            return f"--set {'.'.join(key)}"
        line = None
        for n in range(len(key), 0, -1):
            line = self.lines.get(tuple(key[:n]))
            if line:
                break
        where = f"key {'.'.join(key)}"
        return f"line {line}, {where}" if line else where

    def error(self, key: tuple, problem: str, fix: str | None = None) -> InputError:
        return InputError(self.file, self.place(*key), problem, fix)


def _line_map(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    lines: dict[tuple, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = prefix + (str(key_node.value),)
            lines[key] = key_node.start_mark.line + 1
            lines.update(_line_map(value_node, key))
    return lines


def parse_text(text: str, file: Path | None) -> tuple[dict, _Source]:
    """YAML text to a mapping plus its line map."""
    source = _Source(file)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        place = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise InputError(file, place, f"is not valid YAML: {exc.problem or exc.context}",
                         "check the indentation and quoting there") from None
    except yaml.YAMLError as exc:
        raise InputError(file, None, f"is not valid YAML: {exc}", "save it as plain UTF-8 YAML text") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InputError(file, "top level", f"is a YAML {type(data).__name__}",
                         "a recipe is a mapping of keys such as model:, dataset:, method:")
    source.lines = _line_map(node) if node is not None else {}
    return data, source


def apply_overrides(data: dict, overrides: list[str], source: _Source | None = None) -> dict:
    """``key.path=value`` pairs; values are YAML (``3``, ``true``, ``[a, b]``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise InputError("--set", repr(item), "is not key.path=value", "for example --set train.max_steps=50")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        if source is not None:
            source.overridden.add(tuple(parts))
        target = data
        for part in parts[:-1]:
            existing = target.get(part)
            if existing is None:
                existing = target[part] = {}
            if not isinstance(existing, dict):
                raise InputError("--set", key, f"{part!r} is not a mapping",
                                 f"set {part} itself (--set {part}=VALUE) or a key under a mapping")
            target = existing
        target[parts[-1]] = value
    return data


def _check_kind(kind: str, name: Any, registry: Registry, source: _Source, allow_none: bool = False) -> None:
    if allow_none and name == "none":
        return
    if not isinstance(name, str) or registry.get(kind, name) is None:
        broken = registry.failure_for(kind, str(name))
        if broken is not None:
            raise source.error((KIND_KEYS[kind],), f"{kind} {name!r} comes from plugin {broken.name!r}, "
                               f"which failed to load: {broken.error}", "fix or reinstall that plugin")
        known = registry.names(kind) + (["none"] if allow_none else [])
        close = nearest(str(name), known)
        raise source.error((KIND_KEYS[kind],), f"{name!r} is not a known {kind}",
                           f"did you mean {close!r}?" if close else f"known: {', '.join(known)}")


def _check_options(key: str, descriptor: Any, given: Any, source: _Source) -> dict:
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise source.error((key,), f"must be a mapping of option: value, not {type(given).__name__}",
                           "for example {r: 16}; `finetty plugins --options` lists the options")
    values, problems = resolve_options(getattr(descriptor, "options", ()), given)
    raise_all([source.error((key, option), f"{option} {problem}", fix) for option, problem, fix in problems])
    return values


def _check_train(train: Any, source: _Source) -> dict:
    if train is None:
        train = {}
    if not isinstance(train, dict):
        raise source.error(("train",), f"must be a mapping, not {type(train).__name__}",
                           "for example train: {max_steps: 100, learning_rate: 2.0e-4}")
    known = training_argument_fields()
    ours = {o.name: o for o in FINETTY_TRAIN_OPTIONS}
    resolved = {**TRAIN_DEFAULTS, **{o.name: o.default for o in FINETTY_TRAIN_OPTIONS}}
    problems = []
    for key, value in train.items():
        key = str(key)
        if key in RESERVED:
            problems.append(source.error(("train", key), f"{key} is set by finetty", RESERVED[key]))
            continue
        if key in ours:
            problem = ours[key].check(value)
            if problem:
                problems.append(source.error(("train", key), f"{key} {problem}", ours[key].help))
                continue
        elif key in known:
            value = yaml_number(value, "|".join(sorted(known[key])))
            problem = check_value(key, value, known[key])
            if problem:
                problems.append(source.error(("train", key), f"{key} {problem}",
                                             f"see transformers' TrainingArguments for what {key} takes"))
                continue
        else:
            close = nearest(key, list(known) + list(ours))
            problems.append(source.error(("train", key), f"{key!r} is not a training setting",
                                         f"did you mean {close!r}?" if close else
                                         "see transformers' TrainingArguments"))
            continue
        resolved[key] = value
    raise_all(problems)
    if resolved.get("bf16") and resolved.get("fp16"):
        raise source.error(("train", "bf16"), "bf16 and fp16 are both on", "choose one")
    val = resolved["val_size"]
    if isinstance(val, float) and not val < 1:
        raise source.error(("train", "val_size"), f"val_size {val} is a fraction of 1 or more",
                           "use a fraction below 1 or a whole number of examples")
    return resolved


def _check_launch(launch: Any, source: _Source) -> dict:
    from finetty.core.recipe.sections import LAUNCH_OPTIONS

    values = _check_options("launch", SimpleNamespace(options=LAUNCH_OPTIONS), launch, source)
    if values["num_processes"] < values["num_machines"]:
        raise source.error(("launch", "num_processes"), "counts processes on all machines together, so it "
                           f"cannot be below num_machines ({values['num_machines']})")
    if values["num_machines"] > 1 and not values["main_process_ip"]:
        raise source.error(("launch", "main_process_ip"), "is needed when more than one machine takes part",
                           "give machine 0's address")
    if values["machine_rank"] >= values["num_machines"]:
        raise source.error(("launch", "machine_rank"), f"must be below num_machines ({values['num_machines']})",
                           "machines count from 0")
    return values


def _check_monitor(monitor: Any, recipe: Recipe, source: _Source) -> dict:
    from finetty.core.recipe.sections import MONITOR_OPTIONS

    values = _check_options("monitor", SimpleNamespace(options=MONITOR_OPTIONS), monitor, source)
    if not 0 < values["watermark"] <= 1:
        raise source.error(("monitor", "watermark"), f"watermark {values['watermark']} is not a fraction in (0, 1]",
                           "for example 0.9: 90% of each GPU's memory")
    processes = recipe.launch.get("num_processes", 1)
    if processes > 1 and values["on_watermark"] == "shrink":
        raise source.error(("monitor", "on_watermark"), f"shrink works in a single process, not {processes}",
                           "use warn, checkpoint or stop with launch.num_processes > 1")
    if processes > 1 and recipe.train.get("auto_shrink_batch"):
        raise source.error(("train", "auto_shrink_batch"), f"works in a single process, not {processes}",
                           "leave it off with launch.num_processes > 1")
    return values


def _check_tools_template(recipe: Recipe, base_dir: Path, source: _Source, folder: Path | None = None) -> None:
    """Tool-calling data needs a chat template that renders tool schemas and calls; read before anything loads.

    ``folder``: where the tokenizer is, when the model is a run (its result's own tokenizer)."""
    from finetty.core.data import demo
    from finetty.core.data.tokenize import chat_template_of, template_mentions_tools

    folder = folder or models.resolve(recipe.model, base_dir, source.file, check=False)
    if getattr(recipe, "chat_template", None):  # the recipe's own template wins over the model's
        from finetty.core.model import templates

        template = templates.source_of(recipe.chat_template)
    else:
        template = demo.CHAT_TEMPLATE if recipe.model == demo.NAME else chat_template_of(folder) if folder else None
    if not template_mentions_tools(template):
        raise source.error(("model",), f"the chat template of {recipe.model!r} does not render tools, and the "
                           "dataset has tool schemas or tool calls: the model would learn calls without schemas",
                           "use a model whose chat template renders tools (tools, tool_calls), or drop the tools")


def _unknown_key(key: str, source: _Source) -> InputError:
    """A key that is not finetty's: another tool's name for one of ours gets that key, else the nearest."""
    from finetty.core.recipe.llamafactory import hint

    fix = hint(key)
    if fix is None:
        close = nearest(key, list(TOP_LEVEL))
        fix = f"did you mean {close!r}?" if close else f"keys: {', '.join(TOP_LEVEL)}"
    return source.error((key,), f"{key!r} is not a recipe key", fix)


class _Problems(list):
    """The InputErrors met so far: validation goes on past a problem and reports them all at the end."""

    def attempt(self, check, *args, **kwargs):
        """``(True, check(...))``, or ``(False, None)`` with its InputError (each of an InputErrors') kept."""
        try:
            return True, check(*args, **kwargs)
        except InputErrors as exc:
            self.extend(exc.errors)
        except InputError as exc:
            self.append(exc)
        return False, None


def _check_quantizer(method: Any, recipe: Recipe, registry: Registry, source: _Source) -> None:
    if method.implies_quantizer:
        if recipe.quantizer not in ("none", method.implies_quantizer):
            raise source.error(("quantizer",), f"method {method.name!r} always uses {method.implies_quantizer!r}, "
                               f"not {recipe.quantizer!r}", "drop the quantizer key or use method: lora")
        recipe.quantizer = method.implies_quantizer
    _check_kind("quantizer", recipe.quantizer, registry, source, allow_none=True)
    stored = registry.quantizers.get(recipe.quantizer)
    if stored is not None and method.kind not in stored.supports:  # (the quantizer says what can train on it)
        able = [m.name for m in registry.methods.values()
                if m.kind in stored.supports and m.implies_quantizer in (None, stored.name)]
        why = (": it updates the base's own weights, and quantized weights cannot be trained" if method.whole_model
               else f": quantizer {stored.name!r} supports {' and '.join(stored.supports)} methods, and "
                    f"{method.name!r} is a {method.kind} method")
        fits = [q.name for q in registry.quantizers.values() if method.kind in q.supports]
        raise source.error(("quantizer",), f"method {method.name!r} cannot train on a {recipe.quantizer!r} base{why}",
                           f"use quantizer: {' or '.join(['none'] + fits)} with {method.name!r}"
                           + (f", or a method that trains adapters on a {recipe.quantizer!r} base: {', '.join(able)}"
                              if able else ""))


def _check_target_modules(recipe: Recipe, model_dir: Path | None, source: _Source) -> None:
    """``target_modules`` that match no module of the model (``all`` for ``all-linear``) fail in the worker,
    after the model has loaded; the safetensors headers name every weight, so say it now, with the real names."""
    targets = recipe.method_options.get("target_modules")
    if model_dir is None or targets is None or targets == "all-linear":
        return
    shapes = models.weight_shapes(model_dir)
    vocab = models.read_config(model_dir).get("vocab_size")
    modules = [name[: -len(".weight")] for name, shape in shapes.items() if name.endswith(".weight")
               and len(shape) == 2]
    if isinstance(targets, str):
        try:
            hit = any(re.fullmatch(targets, m) for m in modules)
        except re.error as exc:
            raise source.error(("method_options", "target_modules"), f"{targets!r} is not a valid regular "
                               f"expression ({exc})", "give 'all-linear', a list of names, or a valid regex") from None
    else:
        hit = any(m == str(t) or m.endswith("." + str(t)) for t in targets for m in modules)
    if hit:
        return
    # linear layers: 2-D weights that are not the embedding or the output head (their rows are the vocabulary)
    names = sorted({m.rsplit(".", 1)[-1] for m, (rows, cols) in
                    ((m, shapes[m + ".weight"]) for m in modules) if vocab not in (rows, cols)})
    shown = ", ".join(names) if names else "none found"
    raise source.error(("method_options", "target_modules"), f"{targets!r} matches no module of the model "
                       f"(its linear layers: {shown})",
                       "use all-linear, or a list of those names such as [" + ", ".join(names[:2]) + "]")


def _check_precision(train: dict, source: _Source, dtype: str = "auto") -> None:
    """bf16 / fp16 the machine cannot run fail inside TrainingArguments or accelerate; say so before a run exists.

    ``dtype`` (``model_options.torch_dtype``) bfloat16 or float16 meets the
    same rule as bf16 or fp16. torch is imported only when one of them is on.
    """
    from finetty.core.recipe.sections import DTYPE_PRECISION

    wanted = [(("train", k), f"{k} is on", k) for k in ("bf16", "fp16") if train.get(k)][:1]
    if dtype in DTYPE_PRECISION:
        wanted.append((("model_options", "torch_dtype"), f"torch_dtype is {dtype}", DTYPE_PRECISION[dtype]))
    if not wanted:
        return
    import torch

    probe = getattr(getattr(torch, "accelerator", None), "is_available", None)  # torch >= 2.6
    accelerator = probe() if probe else torch.cuda.is_available()
    for place, what, key in wanted:
        if torch.cuda.is_available() and key == "bf16" and not torch.cuda.is_bf16_supported():
            raise source.error(place, f"{what}, and this GPU ({torch.cuda.get_device_name(0)}) cannot "
                               "compute in bfloat16", "use fp16 / float16 instead, or leave bf16 off")
        if accelerator:
            continue
        if key == "fp16":
            raise source.error(place, f"{what}, and this machine has no GPU: float16 mixed precision runs on a GPU "
                               "only", "leave fp16 off on the CPU, or use bf16: true with use_cpu: true")
        if not train.get("use_cpu"):
            raise source.error(place, f"{what}, and this machine has no GPU: transformers trains in bfloat16 on the "
                               "CPU only when told to", "add use_cpu: true under train:, or leave bf16 off")


def _check_model_options(given: Any, source: _Source) -> dict:
    from finetty.core.recipe.sections import MODEL_OPTIONS

    return _check_options("model_options", SimpleNamespace(options=MODEL_OPTIONS), given, source)


def _check_machine(recipe: Recipe, source: _Source) -> None:
    """What the recipe asks of this machine's software and hardware (see :mod:`finetty.core.recipe.machine`)."""
    from finetty.core.recipe import machine

    found = []
    attention = recipe.model_options.get("attn_implementation")
    if attention:
        from finetty.core.recipe.sections import DTYPE_PRECISION

        half = bool(recipe.train.get("bf16") or recipe.train.get("fp16")) or \
            recipe.model_options.get("torch_dtype") in DTYPE_PRECISION
        found.append((("model_options", "attn_implementation"), machine.attention_problem(attention, half)))
    if recipe.train.get("use_liger_kernel"):
        found.append((("train", "use_liger_kernel"), machine.liger_problem()))
    found += [(("train", "report_to"), problem) for problem in machine.report_to_problems(recipe.train.get("report_to"))]
    raise_all([source.error(place, *problem) for place, problem in found if problem])


def _check_config_notify() -> None:
    """config.yaml's notify URLs reach every run: a bad one is refused with the recipe, before a run exists."""
    from finetty.core.recipe import config

    notify_urls.check(config.read_config().get(notify_urls.KEY), config.config_file(), f"key {notify_urls.KEY}")


def _check_chat_template(recipe: Recipe, model_dir: Path | None, kind: str, source: _Source) -> None:
    """Conversations are rendered through a chat template; a base model without one fails in the worker."""
    from finetty.core.data.tokenize import chat_template_of
    from finetty.core.model import templates

    if recipe.chat_template or model_dir is None or kind == "text" or chat_template_of(model_dir):
        return
    names = ", ".join(sorted(templates.TEMPLATES))
    raise source.error(("model",), f"model {Path(recipe.model).name!r} has no chat template, and the recipe "
                       f"trains on {kind} data, which is rendered through one",
                       f"add chat_template: chatml (or {names}, or the path of a Jinja file) to the recipe")


def _stacked_model_dir(found: parent.Parent) -> Path | None:
    """The folder whose weights a run on top of ``found`` starts from (its module names, its tokenizer); None
    where there is nothing to check yet (the demo not built) or nothing to target (an adapter trained further)."""
    if found.mode == "whole":
        return found.source
    folder = found.base_dir
    return folder if found.mode != "continue" and (folder / "config.json").is_file() else None


def validate(data: dict, registry: Registry, source: _Source, base_dir: Path, check_data: bool = True,
             check_sources: bool = True, runs: Path | None = None) -> Recipe:
    """Check every key of a parsed recipe and return it resolved, with defaults filled in.

    ``runs``: the runs directory a ``model: run:ID`` is looked up in (default ``$FINETTY_HOME/runs``).

    Every problem is collected and reported together (:class:`InputErrors`);
    a check that depends on an earlier one (a method's options on the method)
    is skipped when that one failed, so each problem is reported once.
    """
    problems = _Problems()
    problems.extend(_unknown_key(str(key), source) for key in data if key not in TOP_LEVEL)
    recipe = Recipe()
    given = {}
    for key in ("model", "format", "method", "quantizer", "objective"):
        value = data.get(key, getattr(recipe, key))
        given[key] = isinstance(value, str) and bool(value.strip())
        if not given[key]:
            problems.append(source.error((key,), f"{key} must be a name or path, not {value!r}",
                                         f"for example {key}: {getattr(Recipe, key)}"))
            continue
        setattr(recipe, key, value.strip())
    trust = data.get("trust_remote_code", False)
    if not isinstance(trust, bool):
        problems.append(source.error(("trust_remote_code",), f"must be true or false, not {trust!r}",
                                     "write true or false without quotes; leave it out to keep it off"))
    else:
        recipe.trust_remote_code = trust
    model_options_ok, model_options = problems.attempt(_check_model_options, data.get("model_options"), source)
    recipe.model_options = model_options or {}
    recipe.dataset = data.get("dataset", recipe.dataset)
    dataset_ok = isinstance(recipe.dataset, (str, dict, list)) and recipe.dataset not in ("", [], {})
    if not dataset_ok:
        problems.append(source.error(("dataset",), f"dataset must be a name or path, not {recipe.dataset!r}",
                                     "for example dataset: identity, or a list of datasets to mix"))
    template = data.get("chat_template")
    if template is not None:
        from finetty.core.model import templates

        if not isinstance(template, str) or not template.strip():
            problems.append(source.error(("chat_template",), f"must be a template name or a file path, not "
                                         f"{template!r}", "for example chat_template: chatml"))
        else:
            ok, resolved = problems.attempt(templates.check, template.strip(), base_dir, source.file,
                                            source.place("chat_template"))
            recipe.chat_template = resolved if ok else None

    method_ok = given["method"] and problems.attempt(_check_kind, "method", recipe.method, registry, source)[0]
    objective_ok = given["objective"] and problems.attempt(_check_kind, "objective", recipe.objective, registry,
                                                           source)[0]
    method = registry.methods[recipe.method] if method_ok else None
    quantizer_ok = method_ok and given["quantizer"] and problems.attempt(_check_quantizer, method, recipe, registry,
                                                                         source)[0]
    if method_ok:
        recipe.method_options = problems.attempt(_check_options, "method_options", method,
                                                 data.get("method_options"), source)[1] or {}
    if quantizer_ok:
        quantizer = registry.quantizers.get(recipe.quantizer)
        recipe.quantizer_options = problems.attempt(_check_options, "quantizer_options", quantizer,
                                                    data.get("quantizer_options"), source)[1] or {}
    objective = registry.objectives[recipe.objective] if objective_ok else None
    if objective_ok:
        recipe.objective_options = problems.attempt(_check_options, "objective_options", objective,
                                                    data.get("objective_options"), source)[1] or {}
    options = data.get("dataset_options") or {}
    if not isinstance(options, dict):
        problems.append(source.error(("dataset_options",), f"must be a mapping, not {type(options).__name__}",
                                     "for example dataset_options: {name: Ada, author: me}"))
    else:
        recipe.dataset_options = options
    recipe.data_options = problems.attempt(data_mod.check_data_options, data.get("data_options"), source.file)[1] \
        or {}
    train_ok, train = problems.attempt(_check_train, data.get("train"), source)
    recipe.train = train if train_ok else {**TRAIN_DEFAULTS, **{o.name: o.default for o in FINETTY_TRAIN_OPTIONS}}
    launch_ok, launch = problems.attempt(_check_launch, data.get("launch"), source)
    recipe.launch = launch if launch_ok else {}
    if launch_ok and train_ok:
        recipe.monitor = problems.attempt(_check_monitor, data.get("monitor"), recipe, source)[1] or {}
    recipe.notify = problems.attempt(notify_urls.check, data.get("notify"), source.file,
                                     source.place("notify"))[1] or []
    problems.attempt(_check_config_notify)

    format_ok = not given["format"] or recipe.format == "auto" or recipe.format in registry.data_formats
    if not format_ok:
        broken = registry.failure_for("data format", recipe.format)
        close = nearest(recipe.format, registry.names("data format"))
        problems.append(source.error(("format",), f"{recipe.format!r} is not a known data format"
                                     + (f" (plugin {broken.name!r} failed: {broken.error})" if broken else ""),
                                     f"did you mean {close!r}?" if close else
                                     f"auto or one of {', '.join(registry.names('data format'))}"))
    if not check_sources:  # `finetty estimate`: the model and data need not be downloaded yet
        raise_all(problems)
        return recipe
    if train_ok:
        problems.attempt(_check_precision, recipe.train, source,
                         recipe.model_options.get("torch_dtype", "auto") if model_options_ok else "auto")
        if model_options_ok:
            problems.attempt(_check_machine, recipe, source)
    stacked = given["model"] and parent.names_run(recipe.model, base_dir)
    if stacked:  # a run's result (model: run:ID): its base, checked against this recipe's method
        model_ok, link = problems.attempt(parent.resolve, recipe.model, runs or paths.runs_dir(), base_dir, registry,
                                           recipe.method if method_ok else None,
                                           recipe.quantizer if quantizer_ok else None, source.file,
                                           source.place("model"))
        recipe.model = link.spec if model_ok else recipe.model
        model_dir = _stacked_model_dir(link) if model_ok else None
        template_dir = link.tokenizer_dir(model_dir) if model_ok else None
    else:
        model_ok, model_dir = (problems.attempt(models.resolve, recipe.model, base_dir, source.file)
                               if given["model"] else (False, None))
        template_dir = model_dir
    if model_ok and not stacked:
        local = Path(recipe.model).expanduser()
        local = local if local.is_absolute() else base_dir / local
        if recipe.model != "tiny-demo" and local.exists():
            recipe.model = str(local.resolve())
    if model_ok and method_ok:
        problems.attempt(_check_target_modules, recipe, model_dir, source)
    kind = None
    if dataset_ok:
        parsed, entries = problems.attempt(data_mod.parse_dataset, recipe.dataset, base_dir, source.file)
        if parsed:
            recipe.dataset = data_mod.resolved_dataset(recipe.dataset, base_dir)
        if parsed and check_data and objective_ok and format_ok and train_ok:
            read, found = problems.attempt(
                data_mod.read_data, entries, recipe.format, registry.data_formats, objective.accepts, objective.name,
                recipe.dataset_options, recipe.data_options, {n: o.accepts for n, o in registry.objectives.items()},
                source.file, seed=recipe.train.get("seed", 42), train=recipe.train)
            if read and found is not None:
                kind = found.kind
                if found.tools and model_ok:
                    problems.attempt(_check_tools_template, recipe, base_dir, source, template_dir if stacked else None)
    if kind is None and objective_ok and "text" not in objective.accepts:
        kind = " or ".join(objective.accepts)  # not read (a hub dataset): what the objective trains on
    if kind is not None and model_ok:
        problems.attempt(_check_chat_template, recipe, template_dir, kind, source)
    raise_all(problems)
    return recipe


def load(path: str | Path | None, overrides: list[str] | None, registry: Registry, check_data: bool = True,
         check_sources: bool = True, runs: Path | None = None) -> Recipe:
    """Read, override, validate. ``path=None`` starts from the defaults (the tiny demo with LoRA)."""
    if path is None:
        data, source, base_dir = {}, _Source(None), Path.cwd()
    else:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise InputError(file, None, "does not exist", "give the path of a recipe .yaml file") from None
        except UnicodeDecodeError:
            raise InputError(file, None, "is not UTF-8 text", "save the recipe as UTF-8") from None
        except OSError as exc:
            raise InputError(file, None, f"cannot be read: {exc.strerror}",
                             "give the path of a readable recipe .yaml file") from None
        data, source = parse_text(text, file)
        base_dir = file.resolve().parent
    apply_overrides(data, overrides or [], source)
    return validate(data, registry, source, base_dir, check_data=check_data, check_sources=check_sources,
                    runs=runs)


def from_run(run_dir: Path) -> Recipe:
    """The resolved recipe a run was started with."""
    data = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8")) or {}
    recipe = Recipe()
    for key, value in data.items():
        if key in TOP_LEVEL:
            setattr(recipe, key, value)
    return recipe


def needs_bitsandbytes(recipe: Recipe) -> bool:
    """True when the run stores its base through a quantizer or uses a bitsandbytes (8-bit or paged) optimizer."""
    optim = str(recipe.train.get("optim", "")).lower()
    return recipe.quantizer != "none" or any(word in optim for word in ("bnb", "8bit", "paged"))
