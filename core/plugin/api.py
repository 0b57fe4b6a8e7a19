"""What a plugin registers: descriptors, contexts and the hook marker.

Plugins import these through :mod:`finetty.core.plugin_api`, which re-exports
them with the helpers that reach the engine.

A plugin is a module listed under the ``finetty`` entry-point group. It
implements one or more of the hooks in :mod:`finetty.core.plugin.hookspecs` with
``@hookimpl`` and, in each, calls ``register(...)`` with frozen descriptors
that say what they are (name, one-line summary, typed options) and carry the
functions the worker calls. Plugin modules must not import torch,
transformers or peft at module level: do it inside those functions.

Example::

    from finetty.core.plugin_api import Method, Option, hookimpl

    @hookimpl
    def register_methods(register):
        register(Method(name="freeze", summary="...", options=(...), apply=_apply))

Built-ins live in ``plugins/`` and use exactly this module, nothing else of core.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pluggy

from finetty.core.plugin.options import Option

hookimpl = pluggy.HookimplMarker("finetty")

#: The kinds of data a format produces and an objective consumes.
DATA_KINDS = ("conversation", "preference", "text", "kto")


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know when it wraps the model."""

    quantizer: str
    gradient_checkpointing: bool
    model_type: str
    model_path: str = ""
    """the base model's folder (e.g. for a tokenizer a method initialises from)"""


@dataclass(frozen=True)
class Method:
    """What is trained.

    ``apply(model, options, ctx)`` returns the model to train (a ``PeftModel``,
    the model itself, or the model with modules added). ``save(model, dir)``
    writes the result in a format loadable without finetty (default:
    ``model.save_pretrained``). ``load(path, options, load_base)`` rebuilds a
    model for inference from a saved directory; ``load_base()`` loads the base.
    ``quantizers`` lists the quantizers it accepts (``"none"`` always means a
    plain base); ``implies_quantizer`` is set for names like ``qlora``.
    ``freezes_base`` is true when only added weights train, so the base with
    the method disabled can serve as a reference model.

    Optional, for methods whose saved weights the stock ``Trainer`` cannot
    read back: ``restore(model, dir)`` loads what ``save`` wrote into the live
    model (checkpoint resume), and ``disabled(model)`` returns a context
    manager inside which the model computes as its untouched base (used as
    the reference model, e.g. by dpo). PEFT models need neither.
    """

    name: str
    summary: str
    apply: Callable[[Any, dict, MethodContext], Any]
    load: Callable[[Path, dict, Callable[[], Any]], Any]
    options: tuple[Option, ...] = ()
    save: Callable[[Any, Path], None] | None = None
    quantizers: tuple[str, ...] = ("none",)
    implies_quantizer: str | None = None
    freezes_base: bool = True
    mergeable: bool = False
    restore: Callable[[Any, Path], None] | None = None
    disabled: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Quantizer:
    """How the base model's weights are stored.

    ``config(options, compute_dtype)`` returns a transformers quantization
    config (e.g. ``BitsAndBytesConfig``) or None; ``compute_dtype`` is the
    recipe's (``float32``, ``bfloat16`` or ``float16``).
    """

    name: str
    summary: str
    config: Callable[[dict, str], Any]
    options: tuple[Option, ...] = ()


@dataclass(frozen=True)
class TrainerContext:
    """Everything an objective needs to build its trainer.

    ``train_records`` / ``eval_records`` are normalized examples of the kinds
    the objective accepts (see :class:`DataFormat`); ``args`` is the
    ``transformers.TrainingArguments``; ``callbacks`` must be passed to the
    trainer; ``max_length`` and ``truncation`` come from the recipe; ``report``
    writes a ``warning`` event with a message.
    """

    model: Any
    tokenizer: Any
    train_records: list
    eval_records: list | None
    args: Any
    callbacks: list
    options: dict
    method: Method
    max_length: int
    truncation: str
    report: Callable[[str], None]
    packing: bool = False


@dataclass(frozen=True)
class Objective:
    """What loss is trained: builds a ``transformers.Trainer`` (or subclass)."""

    name: str
    summary: str
    accepts: tuple[str, ...]
    build_trainer: Callable[[TrainerContext], Any]
    options: tuple[Option, ...] = ()


@dataclass(frozen=True)
class DataFormat:
    """A layout of dataset records.

    ``detect(record)`` says whether a record looks like this format;
    ``convert(record)`` turns one into the normalized ``kind``: a
    ``conversation`` is a list of ``{"role", "content"}`` dicts, a
    ``preference`` is ``{"prompt": [messages], "chosen": str, "rejected": str}``
    and ``text`` is a string. ``convert`` raises ``ValueError`` with a message
    naming the field and what was expected.
    """

    name: str
    summary: str
    kind: str
    detect: Callable[[dict], bool]
    convert: Callable[[dict], Any]
    fields: str = ""

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data format {self.name!r}: kind {self.kind!r} is not one of {DATA_KINDS}")


def peft_method(
    name: str,
    summary: str,
    make_config: Callable[[dict, MethodContext], Any],
    options: tuple[Option, ...] = (),
    quantizers: tuple[str, ...] = ("none",),
    implies_quantizer: str | None = None,
    mergeable: bool = True,
) -> Method:
    """A :class:`Method` for any adapter PEFT implements.

    ``make_config(options, ctx)`` returns the ``peft.PeftConfig``; the base is
    prepared for k-bit training when it is quantized.
    """

    def apply(model: Any, values: dict, ctx: MethodContext) -> Any:
        from peft import get_peft_model, prepare_model_for_kbit_training

        if ctx.quantizer != "none":
            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=ctx.gradient_checkpointing)
        return get_peft_model(model, make_config(values, ctx))

    def load(path: Path, values: dict, load_base: Callable[[], Any]) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base(), str(path))

    return Method(name=name, summary=summary, apply=apply, load=load, options=options,
                  quantizers=quantizers, implies_quantizer=implies_quantizer, mergeable=mergeable,
                  disabled=lambda model: model.disable_adapter())


__all__ = [
    "DATA_KINDS", "DataFormat", "Method", "MethodContext", "Objective", "Option", "Quantizer",
    "TrainerContext", "hookimpl", "peft_method",
]
