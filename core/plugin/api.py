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

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pluggy

from finetty.core.plugin.architecture import Architecture, Linear, Trainable
from finetty.core.plugin.options import Option

hookimpl = pluggy.HookimplMarker("finetty")

#: The plugin API's version, given to every hook as ``api_version``: it goes up when a descriptor gains a field
#: or a hook an argument, so a plugin written for several versions can tell which one it runs against.
API_VERSION = "3"

#: The kinds of data a format produces and an objective consumes.
DATA_KINDS = ("conversation", "preference", "text", "kto")
DataKind = Literal["conversation", "preference", "text", "kto"]

#: What a method trains, which decides what it can train on and what its result is:
#: ``whole``: the base's own weights (the result is a whole model; a quantized base cannot be trained);
#: ``peft``: a PEFT adapter on a frozen base; ``modules``: modules of its own added to a frozen base.
METHOD_KINDS = ("whole", "peft", "modules")
MethodKind = Literal["whole", "peft", "modules"]


@dataclass(frozen=True)
class MethodContext:
    """What a method may need to know when it wraps the model."""

    quantizer: str
    gradient_checkpointing: bool
    model_type: str
    model_path: str = ""
    """the base model's folder (e.g. for a tokenizer a method initialises from)"""


class ApplyFn(Protocol):
    def __call__(self, model: Any, options: dict[str, Any], ctx: MethodContext, /) -> Any: ...


class LoadFn(Protocol):
    def __call__(self, path: Path, options: dict[str, Any], load_base: Callable[[], Any], /) -> Any: ...


class SaveFn(Protocol):
    def __call__(self, model: Any, folder: Path, /) -> None: ...


class TrainableFn(Protocol):
    def __call__(self, arch: Architecture, options: dict[str, Any], /) -> Trainable: ...


@dataclass(frozen=True)
class Method:
    """What is trained.

    ``apply(model, options, ctx)`` returns the model to train (a ``PeftModel``,
    the model itself, or the model with modules added). ``save(model, dir)``
    writes the result in a format loadable without finetty (default:
    ``model.save_pretrained``). ``load(path, options, load_base)`` rebuilds a
    model for inference from a saved directory; ``load_base()`` loads the base.

    ``kind`` (one of :data:`METHOD_KINDS`) says what trains: a quantizer lists
    the kinds it supports, so a method never names quantizers. Left out, it is
    ``whole`` when ``freezes_base`` is false, else ``modules``.
    ``implies_quantizer`` is set for names like ``qlora``. ``freezes_base`` is
    true when only added weights train, so the base with the method disabled
    can serve as a reference model.

    ``runtime_libraries`` names the heavy libraries (import names) the worker
    needs for this method, so it can hide the others (``()``: none beyond
    torch and transformers; None: unknown, nothing is hidden).
    ``trainable(arch, options)`` describes what the method trains for the
    memory estimate (see :class:`Trainable`); without it the estimate says the
    method is not modelled.

    ``recommended`` maps recipe keys (``train.learning_rate``,
    ``method_options.prefix_projection``) to the values the method trains
    well with, where those differ from the training defaults or the options'
    own defaults (prefix tuning wants ten times LoRA's learning rate and its
    projection on). The New run form loads them when the method is chosen,
    except where the person changed the field, and says so: a method switched
    in the form otherwise kept the previous method's settings and learned
    nothing. Recipes are never changed by it.

    Optional, for methods whose saved weights the stock ``Trainer`` cannot
    read back: ``restore(model, dir)`` loads what ``save`` wrote into the live
    model (checkpoint resume), and ``disabled(model)`` returns a context
    manager inside which the model computes as its untouched base (used as
    the reference model, e.g. by dpo). PEFT models need neither.
    """

    name: str
    summary: str
    apply: ApplyFn
    load: LoadFn
    options: tuple[Option, ...] = ()
    save: SaveFn | None = None
    implies_quantizer: str | None = None
    freezes_base: bool = True
    mergeable: bool = False
    restore: SaveFn | None = None
    disabled: Callable[[Any], AbstractContextManager[Any]] | None = None
    kind: MethodKind | None = None
    runtime_libraries: tuple[str, ...] | None = None
    trainable: TrainableFn | None = None
    recommended: dict[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", "modules" if self.freezes_base else "whole")
        elif self.kind not in METHOD_KINDS:
            raise ValueError(f"method {self.name!r}: kind {self.kind!r} is not one of {METHOD_KINDS}")
        # options of another type are the registry's to report (it names the plugin): only names are read here
        names = {name for name in (getattr(option, "name", None) for option in self.options) if isinstance(name, str)}
        for key in self.recommended:
            section, _, name = key.partition(".")
            if not name or section not in ("train", "method_options") or (section == "method_options"
                                                                         and name not in names):
                raise ValueError(f"method {self.name!r}: recommended key {key!r} is neither train.NAME nor "
                                 f"method_options.NAME of one of its options ({', '.join(sorted(names)) or 'none'})")

    @property
    def whole_model(self) -> bool:
        """True when the result is a whole model (nothing to merge; it loads without the base)."""
        return self.kind == "whole"

    def trainable_parameters(self, arch: Architecture, options: dict[str, Any]) -> int | None:
        """How many parameters the method trains on ``arch``; None when it does not say."""
        return None if self.trainable is None else self.trainable(arch, options).parameters


class QuantizationConfigFn(Protocol):
    def __call__(self, options: dict[str, Any], compute_dtype: str, /) -> Any: ...


class QuantizeFn(Protocol):
    def __call__(self, model: Any, options: dict[str, Any], compute_dtype: str, /) -> Any: ...


class PrepareFn(Protocol):
    def __call__(self, model: Any, gradient_checkpointing: bool, /) -> Any: ...


class DequantizeFn(Protocol):
    def __call__(self, model: Any, compute_dtype: str, /) -> Any: ...


class StoredFn(Protocol):
    def __call__(self, linear: Linear, options: dict[str, Any], /) -> dict[str, int] | None: ...


@dataclass(frozen=True)
class Quantizer:
    """How the base model's weights are stored.

    The base is quantized in one of two ways (at least one must be given):
    ``config(options, compute_dtype)`` returns a transformers quantization
    config (e.g. ``BitsAndBytesConfig``) that ``from_pretrained`` applies, and
    ``quantize(model, options, compute_dtype)`` transforms the loaded model
    (for storage transformers does not know). ``compute_dtype`` is the
    recipe's (``float32``, ``bfloat16`` or ``float16``).

    ``supports`` lists the method kinds (:data:`METHOD_KINDS`) that can train
    on this base. ``prepare(model, gradient_checkpointing)`` readies the stored
    base before the method wraps it (bitsandbytes: PEFT's
    ``prepare_model_for_kbit_training``). ``dequantize(model, compute_dtype)``
    turns the stored base back into plain weights, so ``finetty export
    --merge`` can fold an adapter into it; without it merging is refused.

    For the memory estimate: ``stored(linear, options)`` returns the bytes one
    decoder linear's weight takes, by label (``{"int8": ..., "quantization
    constants": ...}``), or None when that layer stays unquantized;
    ``float32_rest`` says that ``prepare`` leaves every other parameter in
    float32. ``runtime_libraries`` as for :class:`Method`.
    """

    name: str
    summary: str
    config: QuantizationConfigFn | None = None
    options: tuple[Option, ...] = ()
    supports: tuple[MethodKind, ...] = ("peft",)
    quantize: QuantizeFn | None = None
    prepare: PrepareFn | None = None
    dequantize: DequantizeFn | None = None
    stored: StoredFn | None = None
    float32_rest: bool = False
    runtime_libraries: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        wrong = [k for k in self.supports if k not in METHOD_KINDS]
        if wrong:
            raise ValueError(f"quantizer {self.name!r}: supports {wrong} are not method kinds {METHOD_KINDS}")


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
    train_records: list[Any]
    eval_records: list[Any] | None
    args: Any
    callbacks: list[Any]
    options: dict[str, Any]
    method: Method
    max_length: int
    truncation: str
    report: Callable[[str], None]
    packing: bool = False


@dataclass(frozen=True)
class Objective:
    """What loss is trained: ``build_trainer(ctx)`` builds a ``transformers.Trainer`` (or subclass).

    ``accepts`` lists the data kinds it trains on; ``runtime_libraries`` as for
    :class:`Method` (None: unknown, the worker hides nothing);
    ``sequences_per_example`` is how many sequences one example puts through
    the model in a step (2 for a chosen and a rejected answer), for the memory
    estimate's activations.
    """

    name: str
    summary: str
    accepts: tuple[DataKind, ...]
    build_trainer: Callable[[TrainerContext], Any]
    options: tuple[Option, ...] = ()
    runtime_libraries: tuple[str, ...] | None = None
    sequences_per_example: int = 1

    def __post_init__(self) -> None:
        wrong = [k for k in self.accepts if k not in DATA_KINDS]
        if wrong:
            raise ValueError(f"objective {self.name!r}: accepts {wrong}, which are not data kinds {DATA_KINDS}")


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
    kind: DataKind
    detect: Callable[[dict[str, Any]], bool]
    convert: Callable[[dict[str, Any]], Any]
    fields: str = ""

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data format {self.name!r}: kind {self.kind!r} is not one of {DATA_KINDS}")


#: Every descriptor type, for the registry's checks.
Descriptor = Method | Quantizer | Objective | DataFormat


def peft_method(
    name: str,
    summary: str,
    make_config: Callable[[dict[str, Any], MethodContext], Any],
    options: tuple[Option, ...] = (),
    implies_quantizer: str | None = None,
    mergeable: bool = True,
    trainable: TrainableFn | None = None,
    recommended: dict[str, Any] | None = None,
) -> Method:
    """A :class:`Method` of kind ``peft`` for any adapter PEFT implements.

    ``make_config(options, ctx)`` returns the ``peft.PeftConfig``; a quantized
    base has already been prepared by its quantizer. ``trainable`` describes
    the adapter's tensors for the memory estimate; ``recommended`` is
    :attr:`Method.recommended`.
    """

    def apply(model: Any, values: dict[str, Any], ctx: MethodContext) -> Any:
        from peft import get_peft_model

        return get_peft_model(model, make_config(values, ctx))

    def load(path: Path, values: dict[str, Any], load_base: Callable[[], Any]) -> Any:
        from peft import PeftModel

        return PeftModel.from_pretrained(load_base(), str(path))

    return Method(name=name, summary=summary, apply=apply, load=load, options=options, kind="peft",
                  implies_quantizer=implies_quantizer, mergeable=mergeable, runtime_libraries=("peft",),
                  trainable=trainable, disabled=lambda model: model.disable_adapter(),
                  recommended=dict(recommended or {}))


__all__ = [
    "API_VERSION", "DATA_KINDS", "METHOD_KINDS", "Architecture", "DataFormat", "DataKind", "Descriptor", "Linear",
    "Method", "MethodContext", "MethodKind", "Objective", "Option", "Quantizer", "Trainable", "TrainerContext",
    "hookimpl", "peft_method",
]
