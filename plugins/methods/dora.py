"""DoRA through PEFT: LoRA with the weight split into magnitude and direction (``use_dora``)."""

from __future__ import annotations

from finetty.core.plugin_api import hookimpl, peft_method
from finetty.plugins.methods.lora import DEMO_RECOMMENDED, LORA_OPTIONS, lora_config, lora_trainable


def dora_config(options: dict, ctx):
    return lora_config(options, ctx, use_dora=True)


@hookimpl
def register_methods(register):
    register(peft_method("dora", "DoRA: LoRA with a learned magnitude per output (PEFT use_dora)", dora_config,
                         options=LORA_OPTIONS, trainable=lambda arch, options: lora_trainable(arch, options, dora=True),
                         recommended=DEMO_RECOMMENDED))
