"""Full fine-tuning: every weight of the model trains."""

from __future__ import annotations

from finetty.core.plugin_api import Method, hookimpl


def _apply(model, options, ctx):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _load(path, options, load_base):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


@hookimpl
def register_methods(register):
    register(Method(name="full", summary="Full fine-tuning: every weight trains; the result is a whole model",
                    apply=_apply, load=_load, freezes_base=False))
