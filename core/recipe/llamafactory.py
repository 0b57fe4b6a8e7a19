"""LLaMA-Factory's training YAML in finetty's vocabulary: the importer's translation and the validator's hints.

One table, :data:`KEY_HINTS`, says where each LLaMA-Factory key lives in a
finetty recipe. The recipe validator uses it to answer a key from that
vocabulary (``lora_rank: 8`` at the top level) with the finetty key to use;
:func:`translate` uses it, with the value conversions below, to turn a whole
LLaMA-Factory file into a recipe (``finetty import llamafactory``). What has
no equivalent is listed, never dropped in silence.

Pure Python; nothing here imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from finetty.core.errors import InputError
from finetty.core.text import one_line

#: LLaMA-Factory key -> the finetty key that holds it (the hint a recipe with the foreign key gets).
KEY_HINTS = {
    "model_name_or_path": "model",
    "stage": "objective",
    "finetuning_type": "method",
    "lora_rank": "method_options.r",
    "lora_alpha": "method_options.lora_alpha",
    "lora_dropout": "method_options.lora_dropout",
    "lora_target": "method_options.target_modules",
    "additional_target": "method_options.modules_to_save",
    "use_rslora": "method_options.use_rslora",
    "use_dora": "method: dora",
    "quantization_bit": "quantizer (bnb-4bit or bnb-8bit), or method: qlora",
    "template": "chat_template",
    "cutoff_len": "train.max_length",
    "val_size": "train.val_size",
    "packing": "train.packing",
    "dataset_dir": "dataset (a path, or dataset_info.json#name)",
    "pref_beta": "objective_options.beta",
    "pref_loss": "objective (dpo, orpo, simpo) and objective_options.loss_type",
    "simpo_gamma": "objective_options.gamma",
    "kto_chosen_weight": "objective_options.desirable_weight",
    "kto_rejected_weight": "objective_options.undesirable_weight",
}

#: stage -> objective. rm and ppo have no finetty objective.
STAGES = {"sft": "sft", "pt": "cpt", "dpo": "dpo", "kto": "kto", "orpo": "orpo", "simpo": "simpo"}
#: pref_loss (stage dpo) -> (objective, its loss_type or None).
PREF_LOSSES = {"sigmoid": ("dpo", "sigmoid"), "hinge": ("dpo", "hinge"), "ipo": ("dpo", "ipo"),
               "orpo": ("orpo", None), "simpo": ("simpo", None)}
#: finetuning_type with LoRA options -> finetty method (without, with use_dora).
ADAPTER_TYPES = {"lora": {False: "lora", True: "dora"}}
#: finetuning_type that trains every weight -> finetty method.
WHOLE_TYPES = {"full": "full"}
#: method -> {quantization_bit: (method, quantizer or None when the method implies it)}.
QUANTIZED = {"lora": {4: ("qlora", None), 8: ("lora", "bnb-8bit")},
             "dora": {4: ("dora", "bnb-4bit"), 8: ("dora", "bnb-8bit")}}
ALL_LINEAR = "all-linear"
#: LLaMA-Factory template name -> finetty's named chat template.
TEMPLATE_NAMES = {"chatml": "chatml", "llama3": "llama3", "qwen": "qwen2", "qwen2": "qwen2", "mistral": "mistral",
                  "gemma": "gemma", "phi": "phi3", "phi3": "phi3", "alpaca": "alpaca", "vicuna": "vicuna"}
#: Keys that steer LLaMA-Factory itself and mean nothing to a finetty run (listed as such, not as lost).
ITS_OWN = {"do_train", "do_eval", "do_predict", "plot_loss", "overwrite_cache", "overwrite_output_dir",
           "preprocessing_num_workers", "output_dir", "resume_from_checkpoint", "flash_attn", "max_samples",
           "ddp_timeout", "save_only_model", "logging_dir", "tokenized_path", "streaming", "mix_strategy",
           "quantization_method", "deepspeed", "eval_dataset", "infer_backend", "export_dir"}


def hint(key: str) -> str | None:
    """The finetty key for a key from LLaMA-Factory's (or transformers') vocabulary, as a fix for the validator."""
    if key in KEY_HINTS:
        return f"finetty calls it {KEY_HINTS[key]}"
    from finetty.core.recipe.sections import MODEL_OPTIONS

    if key in {o.name for o in MODEL_OPTIONS}:
        return f"how the model loads goes under model_options: (model_options.{key})"
    from finetty.core.recipe.train_args import training_argument_fields

    if key in training_argument_fields():
        return f"training settings go under train: (train.{key})"
    return None


def _split(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v).strip() for v in value if str(v).strip()]
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _dataset(names: list[str], info: Path, out_dir: Path, file: Path) -> str | list[str]:
    """``path/dataset_info.json#name`` for each name, the path relative to the written recipe's folder."""
    if not info.is_file():
        raise InputError(file, "key dataset", f"names datasets ({', '.join(names)}) of a dataset_info.json that "
                         f"is not at {info}", "give its path with --dataset-info PATH")
    relative = Path(os.path.relpath(info.resolve(), out_dir.resolve())).as_posix()
    found = [f"{relative}#{name}" for name in names]
    return found[0] if len(found) == 1 else found


def translate(data: dict, file: Path, dataset_info: Path | None, out_dir: Path) -> tuple[dict, list[str]]:
    """A LLaMA-Factory training config as a finetty recipe mapping, and a line for each key not translated.

    ``out_dir`` is where the recipe will be written (relative paths in it are
    relative to that folder, as finetty reads them).
    """
    from finetty.core.recipe.train_args import RESERVED, training_argument_fields

    if not isinstance(data, dict):
        raise InputError(file, "top level", f"is a YAML {type(data).__name__}",
                         "a LLaMA-Factory config is a mapping of keys such as model_name_or_path:, stage:")
    if "model_name_or_path" not in data:
        raise InputError(file, "key model_name_or_path", "is missing", "the model to fine-tune")
    left: list[str] = []
    recipe: dict[str, Any] = {"model": str(data["model_name_or_path"])}
    method_options: dict[str, Any] = {}
    objective_options: dict[str, Any] = {}
    train: dict[str, Any] = {}

    stage = str(data.get("stage", "sft"))
    if stage not in STAGES:
        raise InputError(file, "key stage", f"stage {stage!r} has no finetty objective",
                         f"finetty trains {', '.join(STAGES)}")
    objective = STAGES[stage]
    if "pref_loss" in data:
        loss = str(data["pref_loss"])
        if loss in PREF_LOSSES and objective == STAGES["dpo"]:
            objective, loss_type = PREF_LOSSES[loss]
            if loss_type:
                objective_options["loss_type"] = loss_type
        else:
            left.append(f"pref_loss: {loss} (finetty's dpo takes sigmoid, hinge or ipo; orpo and simpo are "
                        f"objectives of their own)")
    recipe["objective"] = objective
    for key, option in (("pref_beta", "beta"), ("simpo_gamma", "gamma"), ("kto_chosen_weight", "desirable_weight"),
                        ("kto_rejected_weight", "undesirable_weight")):
        if key in data:
            objective_options[option] = data[key]

    kind = str(data.get("finetuning_type", "lora"))
    bits = data.get("quantization_bit")
    if kind in ADAPTER_TYPES:
        method = ADAPTER_TYPES[kind][bool(data.get("use_dora"))]
        rank = data.get("lora_rank", 8)
        method_options["r"] = rank
        method_options["lora_alpha"] = data.get("lora_alpha", rank * 2)  # LLaMA-Factory's default: twice the rank
        if "lora_dropout" in data:
            method_options["lora_dropout"] = data["lora_dropout"]
        targets = _split(data.get("lora_target", "all"))
        # LLaMA-Factory's "all" is PEFT's "all-linear"; PEFT itself would read "all" as a module name
        method_options["target_modules"] = ALL_LINEAR if targets in (["all"], []) else targets
        if "additional_target" in data:
            method_options["modules_to_save"] = _split(data["additional_target"])
        if data.get("use_rslora"):
            method_options["use_rslora"] = True
    elif kind in WHOLE_TYPES:
        method = WHOLE_TYPES[kind]
    else:
        method = ADAPTER_TYPES["lora"][False]
        left.append(f"finetuning_type: {kind} (no built-in equivalent; the recipe trains {method} instead; the "
                    f"example plugin examples/finetty-plugin-example adds freeze-layers)")
    if bits not in (None, "", "none"):
        try:
            method, quantizer = QUANTIZED[method][int(bits)]
        except (KeyError, ValueError, TypeError):
            left.append(f"quantization_bit: {bits} (finetty stores an adapter method's base in 4 or 8 bits)")
        else:
            if quantizer:
                recipe["quantizer"] = quantizer
    recipe["method"] = method
    if method_options:
        recipe["method_options"] = method_options
    if objective_options:
        recipe["objective_options"] = objective_options

    if "dataset" in data:
        names = _split(data["dataset"])
        info = dataset_info or (file.parent / str(data.get("dataset_dir", "data")) / "dataset_info.json")
        recipe["dataset"] = _dataset(names, info, out_dir, file)
    if "template" in data:
        name = str(data["template"])
        if name in TEMPLATE_NAMES:
            recipe["chat_template"] = TEMPLATE_NAMES[name]
        else:
            left.append(f"template: {name} (no finetty template of that name; the model's own template is used, "
                        f"or set chat_template: to a name or a Jinja file)")
    if data.get("trust_remote_code"):
        recipe["trust_remote_code"] = True
    if "cutoff_len" in data:
        train["max_length"] = data["cutoff_len"]
    if "val_size" in data:
        train["val_size"] = data["val_size"]
    if data.get("packing") or data.get("neat_packing"):
        train["packing"] = True

    known = training_argument_fields()
    done = {"model_name_or_path", "stage", "pref_loss", "pref_beta", "simpo_gamma", "kto_chosen_weight",
            "kto_rejected_weight", "finetuning_type", "quantization_bit", "lora_rank", "lora_alpha", "lora_dropout",
            "lora_target", "additional_target", "use_rslora", "use_dora", "dataset", "dataset_dir", "template",
            "trust_remote_code", "cutoff_len", "val_size", "packing", "neat_packing"}
    for key, value in data.items():
        if key in done:
            continue
        if key == "warmup_ratio" and key not in known:  # transformers 5 reads a fraction from warmup_steps
            train["warmup_steps"] = value
        elif key in known and key not in RESERVED and key not in ITS_OWN:
            if value is not None:
                train[key] = value
        elif key in ITS_OWN or key in RESERVED:
            left.append(f"{key}: {value} (LLaMA-Factory's own setting: "
                        f"{RESERVED.get(key, 'finetty does this its own way')})")
        else:
            left.append(f"{key}: {value} (no finetty equivalent)")
    if train:
        recipe["train"] = train
    return recipe, left


def import_file(path: Path, dataset_info: Path | None, out: Path | None) -> tuple[str, list[str]]:
    """The recipe YAML text for a LLaMA-Factory config file, and what was not translated."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(path, None, "does not exist", "give the path of a LLaMA-Factory training .yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot be read as UTF-8 text ({exc})", "give a readable .yaml file") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(path, f"line {mark.line + 1}" if mark else None, "is not valid YAML",
                         "check the indentation and quoting there") from None
    out_dir = (out.parent if out is not None else Path.cwd())
    recipe, left = translate(data, path, dataset_info, out_dir)
    target = out.name if out is not None else "RECIPE.yaml"
    header = [f"# finetty train {one_line(target)}",
              f"# imported from {one_line(path)} by `finetty import llamafactory`"]
    if left:
        header.append("# not translated:")
        header += [f"#   {one_line(line)}" for line in left]  # one comment line each, no control characters
    body = yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)
    return "\n".join(header) + "\n" + body, left
