"""The ``train:`` section: transformers' TrainingArguments fields plus finetty's own.

TrainingArguments' field names and annotated types are read from the
installed transformers' source with ``ast`` (importing it costs seconds and
pulls in torch), so validation stays instant and always matches the
installed version.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from typing import Any

from finetty.core.plugin.options import Option

#: finetty's own keys in ``train:``, next to TrainingArguments'.
FINETTY_TRAIN_OPTIONS = (
    Option("max_length", "int", 1024, "longest example in tokens; longer ones are truncated or dropped",
           minimum=8),
    Option("truncation", "str", "truncate", "what happens to examples longer than max_length",
           choices=("truncate", "drop")),
    Option("val_size", "int|float", 0, "held-out evaluation split: a fraction below 1 or a count of examples",
           minimum=0),
    Option("packing", "bool", False, "sft: pack several examples into each row of max_length tokens, padding-free, "
           "none attending to another (a batch is per_device_train_batch_size such rows)"),
    Option("auto_shrink_batch", "bool", False, "on CUDA out of memory: halve per_device_train_batch_size, double "
           "gradient_accumulation_steps (same effective batch) and resume from the last checkpoint; gives up at 1"),
)

#: finetty's defaults where TrainingArguments' suit a detached worker badly.
TRAIN_DEFAULTS = {
    "learning_rate": 2.0e-4, "logging_steps": 10, "save_steps": 500, "save_total_limit": 3, "seed": 42,
    "report_to": "none", "per_device_train_batch_size": 8, "lr_scheduler_type": "linear",
}

#: Keys finetty sets itself; a recipe may not.
RESERVED = {
    "output_dir": "finetty writes checkpoints into the run directory",
    "logging_dir": "finetty logs into the run directory",
    "resume_from_checkpoint": "use `finetty train --resume RUN`",
    "overwrite_output_dir": "every run gets a fresh directory",
    "push_to_hub": "export the result with `finetty export` instead",
    "hub_model_id": "export the result with `finetty export` instead",
    "hub_token": "never put tokens in a recipe",
    "save_safetensors": "finetty always saves safetensors",
    "disable_tqdm": "finetty shows its own progress",
    "include_num_input_tokens_seen": "finetty counts tokens itself",
    "load_best_model_at_end": "finetty keeps its own checkpoints; pick one with --checkpoint",
    "save_strategy": "finetty saves every save_steps",
}

RANGES = {
    "learning_rate": (0.0, None, False), "num_train_epochs": (0.0, None, False),
    "per_device_train_batch_size": (1, None, True), "per_device_eval_batch_size": (1, None, True),
    "gradient_accumulation_steps": (1, None, True), "logging_steps": (0.0, None, False),
    "save_steps": (0.0, None, False), "eval_steps": (0.0, None, False), "save_total_limit": (1, None, True),
    "warmup_ratio": (0.0, 1.0, True), "weight_decay": (0.0, None, True), "max_grad_norm": (0.0, None, True),
    "warmup_steps": (0, None, True), "dataloader_num_workers": (0, None, True),
}


def _names(node: ast.AST) -> set[str]:
    """Type names in an annotation: ``int | None`` -> {int, None}; ``Optional[str]`` -> {str, None}."""
    if isinstance(node, ast.Constant) and node.value is None:
        return {"None"}
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _names(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, ast.Attribute):
        return {node.attr}
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _names(node.left) | _names(node.right)
    if isinstance(node, ast.Subscript):
        outer = _names(node.value)
        if outer & {"Optional", "Union"}:
            inner = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
            found = set().union(*(_names(n) for n in inner))
            return found | ({"None"} if "Optional" in outer else set())
        return outer & {"list", "dict", "List", "Dict"} or {"object"}
    return {"object"}


@functools.lru_cache(maxsize=1)
def training_argument_fields() -> dict[str, set[str]]:
    """``{field name: {type names}}`` of the installed ``transformers.TrainingArguments``."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or not spec.submodule_search_locations:
        return {}
    # once transformers is imported, its lazy module may list Path objects here
    source = os.path.join(str(next(iter(spec.submodule_search_locations))), "training_args.py")
    tree = ast.parse(open(source, encoding="utf-8").read())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "TrainingArguments":
            return {stmt.target.id: _names(stmt.annotation) for stmt in node.body
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)
                    and not stmt.target.id.startswith("_")}
    return {}


def check_value(key: str, value: Any, types: set[str]) -> str | None:
    """Why ``value`` does not fit a TrainingArguments field, or None."""
    if value is None:
        return None if "None" in types or "object" in types else "must not be empty"
    py = {"int": int, "float": (int, float), "bool": bool, "str": str, "dict": dict, "Dict": dict,
          "list": list, "List": list}
    known = [py[t] for t in types if t in py]
    loose = types - set(py) - {"None"}
    if isinstance(value, bool) and "bool" not in types and not loose:
        return f"must be a {' or '.join(sorted(types - {'None'}))}, not {value!r}"
    if known and not loose and not any(isinstance(value, t) for t in known):
        wanted = " or ".join(sorted(types - {"None"}))
        return f"must be {'an' if wanted[0] in 'aeiou' else 'a'} {wanted}, not {type(value).__name__} {value!r}"
    if loose and not isinstance(value, (str, int, float, bool, list, dict)):
        return f"has an unsupported type {type(value).__name__}"
    if key in RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        low, high, inclusive = RANGES[key]
        if low is not None and (value < low or (not inclusive and value == low)):
            return f"must be {'at least' if inclusive else 'greater than'} {low}, not {value}"
        if high is not None and value > high:
            return f"must be at most {high}, not {value}"
    if key == "max_steps" and isinstance(value, int) and (value == 0 or value < -1):
        return f"must be positive (or -1 to train num_train_epochs), not {value}"
    return None
