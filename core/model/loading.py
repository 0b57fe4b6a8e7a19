"""Models: resolve a recipe's ``model`` to a folder, check it without loading, load it in the worker."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

from finetty.core.data import demo, hub
from finetty.core.errors import InputError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")


def cached_hub_models() -> list[str]:
    """Model ids with a snapshot in the local Hugging Face cache."""
    return hub.cached_repos("model")


def resolve(spec: str, base_dir: Path, recipe_file=None, check: bool = True) -> Path | None:
    """The model folder for ``spec``; None for ``tiny-demo`` before it is built (the worker builds it)."""
    if spec == demo.NAME:
        target = demo.demo_dir()
        return target if target.exists() else None
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.exists():
        if check:
            check_folder(path)
        return path
    hub_id = hub.parse_id(spec)
    if hub_id is not None:
        ref = hub.HubRef("model", *hub_id)
        snapshot = hub.cached(ref)  # (the cache only: validation never waits on the network)
        if snapshot is not None:
            if check:
                check_folder(snapshot)
            return snapshot
        if hub.offline():
            raise InputError(recipe_file, "key model", f"{spec!r} is not in the local Hugging Face cache "
                             f"({hub.cache_dir()}), and HF_HUB_OFFLINE is set, so it cannot be downloaded",
                             f"unset HF_HUB_OFFLINE and run `finetty pull {spec}` (or `finetty train`, which "
                             "downloads it before the run starts)")
        raise InputError(recipe_file, "key model", f"{spec!r} is not downloaded yet (no folder of that name, and "
                         "not in the local Hugging Face cache)", f"`finetty train` downloads it before the run "
                         f"starts, or run `finetty pull {spec}`; a local folder is a path (./{spec})")
    raise InputError(recipe_file, "key model", f"{spec!r} is not {demo.NAME!r}, a model folder, "
                     "or a hub id (org/name, org/name@revision)", "give a model folder's path or a hub id")


def _check_safetensors(path: Path) -> None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
            if len(head) < 8:
                raise ValueError("too short")
            (length,) = struct.unpack("<Q", head)
            if length > 100_000_000 or length > path.stat().st_size - 8:
                raise ValueError("header length out of range")
            header = json.loads(handle.read(length))
            if not isinstance(header, dict):
                raise ValueError("header is not an object")
    except (OSError, ValueError, struct.error) as exc:
        raise InputError(path, None, f"is not a valid safetensors file ({exc})",
                         "download or save the weights again") from None


def check_folder(path: Path) -> None:
    """A model folder holds a readable config, safetensors weights and a tokenizer."""
    if not path.is_dir():
        raise InputError(path, None, "is not a folder", "a model is a folder with config.json, weights and a tokenizer")
    config = path / "config.json"
    if not config.is_file():
        raise InputError(path, None, "has no config.json", "point model at a Hugging Face model folder")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(config, None, f"is not valid JSON ({exc})", "download or save the model again") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise InputError(config, "key model_type", "is missing", "a transformers config names its model_type")
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        if list(path.glob("*.bin")) or list(path.glob("*.pt")):
            raise InputError(path, None, "holds only pickled weights (.bin/.pt), which finetty does not load",
                             "convert them to safetensors")
        raise InputError(path, None, "holds no *.safetensors weights", "save the model with safe_serialization")
    for weight in weights:
        _check_safetensors(weight)
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise InputError(path, None, "has no tokenizer (tokenizer.json, tokenizer.model or vocab.json)",
                         "save the tokenizer into the model folder")


def weight_shapes(path: Path) -> dict[str, list[int]]:
    """``{tensor name: shape}`` of a model folder's safetensors, read from their headers (no weights loaded)."""
    shapes: dict[str, list[int]] = {}
    for weight in sorted(path.glob("*.safetensors")):
        with open(weight, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        shapes.update({name: list(info.get("shape", [])) for name, info in header.items()
                       if name != "__metadata__" and isinstance(info, dict)})
    return shapes


def read_config(path: Path) -> dict:
    return json.loads((path / "config.json").read_text(encoding="utf-8"))


def compute_dtype(recipe_train: dict) -> str:
    if recipe_train.get("bf16"):
        return "bfloat16"
    if recipe_train.get("fp16"):
        return "float16"
    return "float32"


def weights_dtype(recipe_train: dict, model_options: dict | None) -> str:
    """The dtype the base's weights load in: ``model_options.torch_dtype``, where auto is the compute dtype."""
    wanted = (model_options or {}).get("torch_dtype") or "auto"
    return compute_dtype(recipe_train) if wanted == "auto" else wanted


def load_tokenizer(path: Path, trust_remote_code: bool = False, chat_template: str | None = None):
    """The model's tokenizer; ``chat_template`` (a recipe's: a template name or a Jinja file) replaces its own."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if chat_template:
        from finetty.core.model import templates

        tokenizer.chat_template = templates.source_of(chat_template)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: Path, dtype: str = "float32", quantization_config=None, trust_remote_code: bool = False,
               device_map=None, attn_implementation: str | None = None):
    """Load a causal LM from a folder (safetensors only).

    ``attn_implementation`` (a recipe's ``model_options``, checked against the
    machine by the validator): sdpa, eager, flash_attention_2/3 or a kernels-hub
    id; None leaves transformers' choice (sdpa where the model supports it).
    """
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=trust_remote_code)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        # a quantized base is placed whole on this rank's GPU (PEFT / bitsandbytes' way for DDP)
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = device_map or ({"": local_rank} if torch.cuda.is_available() else {"": "cpu"})
    elif device_map is not None:
        kwargs["device_map"] = device_map
    return AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
