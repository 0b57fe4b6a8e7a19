"""Prefix tuning through PEFT: trained key/value vectors prepended at every layer."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from finetty.core.plugin_api import Architecture, Option, Trainable, hookimpl, peft_method

PREFIX_OPTIONS = (
    Option("num_virtual_tokens", "int", 20, "how many virtual tokens are prepended at every layer",
           minimum=1, maximum=1024),
    Option("prefix_projection", "bool", False,
           "learn the prefix through a two-layer MLP (steadier training, more parameters while training)"),
    Option("encoder_hidden_size", "int", None, "hidden size of that MLP; empty: the model's hidden size",
           minimum=1, nullable=True),
)


def prefix_config(options: dict, ctx):
    from peft import PrefixTuningConfig

    values = {k: v for k, v in options.items() if v is not None}
    return PrefixTuningConfig(task_type="CAUSAL_LM", **values)


def generate_with_prefix(model):
    """Make ``model.generate`` use the trained prefix (a work-around, not a pin: kept for peft <= 0.21 on
    transformers 5.x, harmless where the two agree).

    transformers 5 renamed the generation cache argument ``past_key_values`` to ``cache``; peft 0.21's
    ``prepare_inputs_for_generation`` still puts the prefix under ``past_key_values`` beside the ``cache``
    generate passes, and the model keeps ``cache`` and drops the prefix ("Both `past_key_values` and `cache`
    are set ... ignoring"): every answer was the untrained base's. Here the prefix goes into generate's own
    cache at the first step (so later steps attend to it as training did), and is never passed twice.
    Training and plain forward calls are untouched: there peft's ``past_key_values`` is the only cache.
    """
    original = model.prepare_inputs_for_generation

    def prepare_inputs_for_generation(*args, **kwargs):
        inputs = original(*args, **kwargs)
        cache = inputs.get("cache")
        prefix = inputs.get("past_key_values")
        if cache is None or prefix is None or prefix is cache:
            return inputs
        del inputs["past_key_values"]
        if cache.get_seq_length() == 0:  # the first step: the prefix fills the cache, as in training
            for index, layer in enumerate(prefix.layers):
                cache.update(layer.keys, layer.values, index)
        return inputs

    model.prepare_inputs_for_generation = prepare_inputs_for_generation
    return model


def prefix_trainable(arch: Architecture, options: dict) -> Trainable:
    """A key and a value per virtual token and layer, plus the projection MLP when it is on."""
    tokens, h, layers = int(options.get("num_virtual_tokens", 20)), arch.hidden, arch.layers
    tensors: list = [(tokens * layers * 2 * arch.kv_heads * arch.head_dim, "float32")]
    if options.get("prefix_projection"):
        width = int(options.get("encoder_hidden_size") or h)
        tensors += [(tokens * h, "float32"), (h * width + width, "float32"),
                    (width * layers * 2 * h + layers * 2 * h, "float32")]
    return Trainable(tuple(tensors), notes=("prefix: trainable parameters approximated from the method's usual "
                                            "shapes",))


_PEFT = peft_method("prefix", "Prefix tuning: trained key/value prefixes at every layer (PEFT)",
                    prefix_config, options=PREFIX_OPTIONS, mergeable=False, trainable=prefix_trainable,
                    # as recipes/demo-prefix.yaml: at LoRA's 3e-3 and without the projection it learned nothing
                    recommended={"train.learning_rate": 1.0e-2, "method_options.num_virtual_tokens": 16,
                                 "method_options.prefix_projection": True})


#: The prefix encoder's own weights (embedding, and the projection MLP when it is on), beside PEFT's files.
ENCODER_FILE = "prefix_encoder.safetensors"


def _save(model, folder):
    """PEFT's files, plus the encoder's trainable weights, so a checkpoint can be trained on from.

    With ``prefix_projection`` PEFT saves only the prefix the MLP computes
    (what generation needs, shaped per layer); the MLP and the embedding it
    reads are not in it, and resuming from a checkpoint failed on the shape
    (and could not have restored what the optimizer was moving anyway).
    """
    from safetensors.torch import save_file

    model.save_pretrained(folder)
    encoder = model.prompt_encoder[model.active_adapter]
    save_file({k: v.detach().contiguous() for k, v in encoder.state_dict().items()}, str(Path(folder) / ENCODER_FILE))


def _restore(model, folder):
    """The encoder's weights from a checkpoint written by :func:`_save` (else PEFT's prefix, no projection)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / ENCODER_FILE).is_file():
        model.prompt_encoder[model.active_adapter].load_state_dict(load_file(str(folder / ENCODER_FILE)))
    else:
        set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")))


def _apply(model, options, ctx):
    return generate_with_prefix(_PEFT.apply(model, options, ctx))


def _load(path, options, load_base):
    return generate_with_prefix(_PEFT.load(path, options, load_base))


@hookimpl
def register_methods(register):
    register(dataclasses.replace(_PEFT, apply=_apply, load=_load, save=_save, restore=_restore))
