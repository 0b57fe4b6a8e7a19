"""LoRA through PEFT: low-rank adapters on the chosen linear layers."""

from __future__ import annotations

from finetty.core.plugin_api import Architecture, Option, Trainable, hookimpl, peft_method

LORA_OPTIONS = (
    Option("r", "int", 8, "rank of the low-rank update", minimum=1, maximum=4096),
    Option("lora_alpha", "int|float", 16, "scaling numerator: the update is scaled by lora_alpha / r", minimum=0),
    Option("lora_dropout", "float", 0.0, "dropout on the adapter input during training", minimum=0.0, maximum=1.0),
    Option("target_modules", "str|list", "all-linear",
           "modules to adapt: 'all-linear' or a list of module names such as [q_proj, v_proj]"),
    Option("bias", "str", "none", "which biases train", choices=("none", "all", "lora_only")),
    Option("use_rslora", "bool", False, "rank-stabilised scaling lora_alpha / sqrt(r)"),
    Option("modules_to_save", "list", None, "extra modules trained in full and saved, e.g. [lm_head]",
           nullable=True),
)


def lora_config(options: dict, ctx, **extra):
    from peft import LoraConfig

    return LoraConfig(task_type="CAUSAL_LM", **options, **extra)


def lora_trainable(arch: Architecture, options: dict, dora: bool = False) -> Trainable:
    """The tensors PEFT creates: A (r x in) and B (out x r) per adapted linear, in float32 on any base dtype
    (autocast_adapter_dtype), plus DoRA's magnitude per output, trained biases and modules_to_save."""
    r = int(options.get("r", 8))
    targets = arch.targets(options.get("target_modules", "all-linear"))
    tensors: list = []
    notes = []
    for linear in targets:
        tensors += [(r * linear.inputs, "float32"), (linear.outputs * r, "float32")]
        if dora:
            tensors.append((linear.outputs, "float32"))
    bias = options.get("bias", "none")
    biased = arch.linears() if bias == "all" else targets if bias == "lora_only" else []
    tensors += [(linear.outputs, "base") for linear in biased if linear.bias]
    for name in options.get("modules_to_save") or []:
        if name in ("lm_head", "embed_tokens"):
            tensors.append((arch.vocab * arch.hidden, "base"))
        else:
            notes.append(f"modules_to_save {name!r} is not modelled")
    if not targets:
        notes.append("target_modules matches no module of this model")
    # held for the backward pass, per token of one layer: the float32 low-rank intermediate of each adapted
    # module, and with dropout the dropped float32 copy of its input plus its mask
    layer = [linear for linear in targets if linear.name.startswith("model.layers.0.")]
    activations = sum(4 * r for _ in layer)
    if float(options.get("lora_dropout", 0) or 0) > 0:
        activations += sum((4 + 1) * linear.inputs for linear in layer)
    return Trainable(tuple(tensors), exact=arch.known_layout, notes=tuple(notes), activation_bytes=activations)


#: what recipes/demo-lora.yaml trains with (also dora's and qlora's, which share lora's options)
DEMO_RECOMMENDED = {"train.learning_rate": 3.0e-3, "method_options.r": 16, "method_options.lora_alpha": 32}


@hookimpl
def register_methods(register):
    register(peft_method("lora", "LoRA: low-rank adapters on linear layers (PEFT)", lora_config,
                         options=LORA_OPTIONS, trainable=lora_trainable, recommended=DEMO_RECOMMENDED))
