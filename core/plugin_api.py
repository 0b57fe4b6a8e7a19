"""The API a finetty plugin imports: ``from finetty.core.plugin_api import ...``.

This is the one module of core that plugins use. The descriptors, contexts and
the hook marker are defined in :mod:`finetty.core.plugin.api` (the plugin
room, which the recipe layer and the registry import); the helpers below reach
the training engine, so they import it inside the function, when a worker
calls them: importing this module imports no torch and no engine code.

Example::

    from finetty.core.plugin_api import Method, Option, hookimpl

    @hookimpl
    def register_methods(register):
        register(Method(name="freeze", summary="...", options=(...), apply=_apply))
"""

from __future__ import annotations

from typing import Any

from finetty.core.plugin.api import (
    API_VERSION,
    DATA_KINDS,
    METHOD_KINDS,
    ApplyFn,
    Architecture,
    DataFormat,
    DataKind,
    DequantizeFn,
    Linear,
    LoadFn,
    Method,
    MethodContext,
    MethodKind,
    Objective,
    Option,
    PrepareFn,
    QuantizationConfigFn,
    QuantizeFn,
    Quantizer,
    SaveFn,
    StoredFn,
    Trainable,
    TrainableFn,
    TrainerContext,
    hookimpl,
    peft_method,
)


def tokenize_conversation(tokenizer: Any, messages: list[dict[str, Any]], max_length: int,
                          train_on: str = "assistant") -> Any:
    """Token ids and labels for one conversation (see :mod:`finetty.core.data.tokenize`)."""
    from finetty.core.data.tokenize import tokenize_conversation as impl

    return impl(tokenizer, messages, max_length, train_on=train_on)


def trainer_class(base: Any = None) -> Any:
    """finetty's Trainer behaviour on top of ``base`` (default ``transformers.Trainer``).

    The returned class takes an extra ``method=`` keyword: model saves go
    through ``method.save`` and checkpoint resume through ``method.restore``
    when the method has them. Use it for any trainer an objective builds, e.g.
    ``trainer_class(trl.DPOTrainer)(model=..., args=..., method=ctx.method)``.
    """
    from finetty.core.train.trainer import trainer_class as impl

    return impl(base)


def sft_trainer(ctx: TrainerContext, train_on: str = "assistant") -> Any:
    """A plain ``transformers.Trainer`` over tokenized conversations or texts."""
    from finetty.core.train.sft_data import build_sft_trainer

    return build_sft_trainer(ctx, train_on=train_on)


__all__ = [
    "API_VERSION", "DATA_KINDS", "METHOD_KINDS", "ApplyFn", "Architecture", "DataFormat", "DataKind", "DequantizeFn",
    "Linear", "LoadFn", "Method", "MethodContext", "MethodKind", "Objective", "Option", "PrepareFn",
    "QuantizationConfigFn", "QuantizeFn", "Quantizer", "SaveFn", "StoredFn", "Trainable", "TrainableFn",
    "TrainerContext", "hookimpl", "peft_method", "sft_trainer", "tokenize_conversation", "trainer_class",
]
