"""LoRA through PEFT: low-rank adapters on the chosen linear layers."""

from __future__ import annotations

from finetty.core.plugin_api import Option, hookimpl, peft_method

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


@hookimpl
def register_methods(register):
    register(peft_method("lora", "LoRA: low-rank adapters on linear layers (PEFT)", lora_config,
                         options=LORA_OPTIONS, quantizers=("none", "bnb-4bit", "bnb-8bit")))
