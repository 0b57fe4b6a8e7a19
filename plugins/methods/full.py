"""Full fine-tuning: every weight of the model trains."""

from __future__ import annotations

from finetty.core.plugin_api import Architecture, Method, Trainable, hookimpl


def _apply(model, options, ctx):
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def _trainable(arch: Architecture, options: dict) -> Trainable:
    """Every parameter of the base, in its dtype."""
    return Trainable(tuple((n, "base") for n in arch.parameter_tensors()), exact=arch.known_layout)


def _load(path, options, load_base):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


@hookimpl
def register_methods(register):
    register(Method(name="full", summary="Full fine-tuning: every weight trains; the result is a whole model",
                    apply=_apply, load=_load, freezes_base=False, kind="whole", runtime_libraries=(),
                    trainable=_trainable, recommended={"train.learning_rate": 1.0e-3}))  # recipes/demo-full.yaml
