"""QLoRA: LoRA on a base stored in 4 bits (bitsandbytes NF4), prepared for k-bit training.

The same as ``method: lora`` with ``quantizer: bnb-4bit``; offered under its
own name because people look for it by that name. The 4-bit settings (quant
type, double quantization, compute dtype) are the quantizer's options.
"""

from __future__ import annotations

from finetty.core.plugin_api import hookimpl, peft_method
from finetty.plugins.methods.lora import DEMO_RECOMMENDED, LORA_OPTIONS, lora_config, lora_trainable


@hookimpl
def register_methods(register):
    register(peft_method("qlora", "QLoRA: LoRA adapters on a 4-bit (NF4) base; implies quantizer bnb-4bit",
                         lora_config, options=LORA_OPTIONS, implies_quantizer="bnb-4bit",
                         trainable=lora_trainable, recommended=DEMO_RECOMMENDED))
