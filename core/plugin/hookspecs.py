"""finetty's hook specifications: the whole contract between finetty and a plugin.

Four hooks, one per kind of thing a plugin can add. Each is called once per
process, when the plugins are loaded (:func:`finetty.core.plugin.registry.load_plugins`),
with keyword arguments only; an implementation may accept fewer arguments
than the specification lists, and arguments will be added, never renamed.

Each hook receives ``register``, a callable taking one descriptor from
:mod:`finetty.core.plugin.api`, and ``api_version``
(:data:`finetty.core.plugin.api.API_VERSION`), which most plugins leave out of
their signature. A descriptor whose name is already taken, whose options are
invalid or which lacks a function it must carry is reported in ``finetty
plugins`` and skipped; the plugin's other components stay (it is listed as
partial).
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

from finetty.core.plugin.api import DataFormat, Method, Objective, Quantizer

hookspec = pluggy.HookspecMarker("finetty")


@hookspec
def register_methods(register: Callable[[Method], None], api_version: str) -> None:
    """Register methods: what is trained (full, lora, qlora, ...).

    :param register: call ``register(Method(...))`` once per method.
    :param api_version: the plugin API's version (leave it out of the signature unless you need it).
    :return: nothing.

    Example::

        @hookimpl
        def register_methods(register):
            register(peft_method("lora", "Low-rank adapters", make_lora_config, options=(...)))
    """


@hookspec
def register_quantizers(register: Callable[[Quantizer], None], api_version: str) -> None:
    """Register quantizers: how the base model's weights are stored.

    :param register: call ``register(Quantizer(...))`` once per quantizer.
    :param api_version: the plugin API's version (leave it out of the signature unless you need it).
    :return: nothing.

    Example::

        @hookimpl
        def register_quantizers(register):
            register(Quantizer("bnb-8bit", "8-bit bitsandbytes", config=make_8bit_config,
                               supports=("peft",)))
    """


@hookspec
def register_objectives(register: Callable[[Objective], None], api_version: str) -> None:
    """Register objectives: what loss is trained (sft, dpo, cpt, ...).

    :param register: call ``register(Objective(...))`` once per objective.
    :param api_version: the plugin API's version (leave it out of the signature unless you need it).
    :return: nothing.

    Example::

        @hookimpl
        def register_objectives(register):
            register(Objective("sft", "Supervised fine-tuning", accepts=("conversation",),
                               build_trainer=sft_trainer))
    """


@hookspec
def register_data_formats(register: Callable[[DataFormat], None], api_version: str) -> None:
    """Register dataset formats: how records are laid out (alpaca, sharegpt, ...).

    :param register: call ``register(DataFormat(...))`` once per format.
    :param api_version: the plugin API's version (leave it out of the signature unless you need it).
    :return: nothing.

    Example::

        @hookimpl
        def register_data_formats(register):
            register(DataFormat("text", "Plain text", kind="text",
                                detect=lambda r: "text" in r, convert=lambda r: r["text"]))
    """
