"""Bottleneck adapters (Houlsby / Pfeiffer): finetty's own method; the base stays frozen.

PEFT does not offer these and the ``adapters`` package pins an old
transformers, so the modules live in :mod:`finetty.plugins.methods.bottleneck`
(imported only when a model is built). The result in ``final/`` is the
adapter weights (``bottleneck_adapter.safetensors``) and a small JSON config
(``bottleneck_config.json``); loading them onto the base gives the same outputs.
"""

from __future__ import annotations

from finetty.core.plugin_api import Architecture, Method, Option, Trainable, hookimpl

ADAPTER_OPTIONS = (
    Option("placement", "str", "houlsby",
           "houlsby: after the attention and the feed-forward block of every layer; pfeiffer: after the "
           "feed-forward block only", choices=("houlsby", "pfeiffer")),
    Option("reduction_factor", "int", 16, "hidden size / bottleneck size (16 on a 4096-wide model: 256)",
           minimum=1, maximum=4096),
    Option("non_linearity", "str", "relu", "activation inside the bottleneck",
           choices=("relu", "gelu", "silu", "tanh")),
    Option("dropout", "float", 0.0, "dropout on the adapter input during training", minimum=0.0, maximum=1.0),
)


def _apply(model, options, ctx):
    from finetty.plugins.methods import bottleneck

    bottleneck.attach(model, options["placement"], options["reduction_factor"], options["non_linearity"],
                      options["dropout"])
    if ctx.gradient_checkpointing:
        model.enable_input_require_grads()  # the frozen embeddings must pass gradients through checkpoints
    return model


def _save(model, folder):
    from finetty.plugins.methods import bottleneck

    bottleneck.save(model, folder)


def _restore(model, folder):
    from finetty.plugins.methods import bottleneck

    bottleneck.restore(model, folder)


def _load(path, options, load_base):
    from finetty.plugins.methods import bottleneck

    return bottleneck.load(path, load_base())


def _disabled(model):
    from finetty.plugins.methods import bottleneck

    return bottleneck.disabled(model)


def _trainable(arch: Architecture, options: dict) -> Trainable:
    """Down and up projections with biases, one or two adapters per layer (as :func:`bottleneck.attach` builds)."""
    h = arch.hidden
    width = max(1, h // int(options.get("reduction_factor", 16)))
    per = ((h * width, "float32"), (width, "float32"), (width * h, "float32"), (h, "float32"))
    count = arch.layers * (2 if options.get("placement", "houlsby") == "houlsby" else 1)
    return Trainable(per * count, exact=arch.known_layout)


@hookimpl
def register_methods(register):
    register(Method(name="adapter", summary="Bottleneck adapters (Houlsby / Pfeiffer) in every layer; base frozen",
                    apply=_apply, load=_load, save=_save, restore=_restore, disabled=_disabled,
                    options=ADAPTER_OPTIONS, kind="modules",
                    runtime_libraries=(), trainable=_trainable,
                    recommended={"train.learning_rate": 1.0e-2, "method_options.reduction_factor": 2,
                                 "method_options.non_linearity": "gelu"}))  # as recipes/demo-adapter.yaml
