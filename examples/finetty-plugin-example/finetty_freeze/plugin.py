"""The ``freeze-layers`` method: train the last N decoder layers (and the final norm), freeze the rest.

A cheap middle ground between adapters and full fine-tuning: the lower layers
(general features) stay as they are, the upper layers adapt. The result is a
whole model saved with ``save_pretrained``, so it loads without finetty.

Only :mod:`finetty.core.plugin_api` is imported from finetty, and torch /
transformers only inside functions, so ``finetty plugins`` and the TUI can
discover this plugin without importing torch.
"""

from __future__ import annotations

from finetty.core.plugin_api import Method, Option, hookimpl

OPTIONS = (
    Option("last_layers", "int", 2, "how many of the top decoder layers train", minimum=1),
    Option("train_norm", "bool", True, "also train the final layer norm"),
    Option("train_lm_head", "bool", False, "also train the output projection (lm_head)"),
)


def decoder_layers(model):
    """The model's list of decoder layers (``model.model.layers`` on Llama, Qwen, Mistral, ...)."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith(("layers", ".h", "blocks")) and len(module):
            return module
    raise ValueError(f"{type(model).__name__} has no list of decoder layers (layers / h / blocks)")


def apply(model, options, ctx):
    layers = decoder_layers(model)
    count = options["last_layers"]
    if count > len(layers):
        raise ValueError(f"last_layers={count}, but the model has only {len(layers)} decoder layers")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trained = list(layers[len(layers) - count:])
    if options["train_norm"]:
        norm = getattr(model.get_decoder(), "norm", None)
        if norm is not None:
            trained.append(norm)
    if options["train_lm_head"]:
        trained.append(model.get_output_embeddings())
    for module in trained:
        for parameter in module.parameters():
            parameter.requires_grad_(True)
    if ctx.gradient_checkpointing:
        model.enable_input_require_grads()  # frozen embeddings must still pass gradients through checkpoints
    return model


def load(path, options, load_base):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path))


@hookimpl
def register_methods(register):
    register(Method(name="freeze-layers", summary="Train only the last N decoder layers; the rest stays frozen",
                    apply=apply, load=load, options=OPTIONS, freezes_base=False, mergeable=False))
