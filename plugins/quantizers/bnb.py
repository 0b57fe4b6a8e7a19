"""bitsandbytes quantizers: the base stored in 4 bits (NF4 / FP4) or 8 bits (LLM.int8()).

A quantized base cannot itself be trained, so only adapter methods (lora,
qlora, dora, ia3) accept these; ``method: full`` with a quantizer is refused
when the recipe is validated.
"""

from __future__ import annotations

from finetty.core.plugin_api import Option, Quantizer, hookimpl

DTYPES = ("auto", "float32", "bfloat16", "float16")

FOUR_BIT_OPTIONS = (
    Option("quant_type", "str", "nf4", "nf4 (normal-float, the QLoRA paper's choice) or fp4",
           choices=("nf4", "fp4")),
    Option("double_quant", "bool", True, "quantize the quantization constants too (saves ~0.4 bit per weight)"),
    Option("compute_dtype", "str", "auto",
           "dtype the 4-bit weights are dequantized to for each matmul; auto: the recipe's (bf16/fp16/float32)",
           choices=DTYPES),
    Option("skip_modules", "list", None, "module names left unquantized, e.g. [lm_head]", nullable=True),
)

EIGHT_BIT_OPTIONS = (
    Option("threshold", "float", 6.0, "LLM.int8() outlier threshold: activations above it stay in 16 bits",
           minimum=0.0),
    Option("skip_modules", "list", None, "module names left unquantized, e.g. [lm_head]", nullable=True),
)


def _dtype(name: str, recipe_dtype: str):
    import torch

    return getattr(torch, recipe_dtype if name == "auto" else name)


def four_bit_config(options: dict, compute_dtype: str):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=options["quant_type"],
                              bnb_4bit_use_double_quant=options["double_quant"],
                              bnb_4bit_compute_dtype=_dtype(options["compute_dtype"], compute_dtype),
                              llm_int8_skip_modules=options["skip_modules"])


def eight_bit_config(options: dict, compute_dtype: str):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True, llm_int8_threshold=options["threshold"],
                              llm_int8_skip_modules=options["skip_modules"])


@hookimpl
def register_quantizers(register):
    register(Quantizer(name="bnb-4bit", summary="bitsandbytes 4-bit base (NF4 / FP4, double quantization)",
                       config=four_bit_config, options=FOUR_BIT_OPTIONS))
    register(Quantizer(name="bnb-8bit", summary="bitsandbytes 8-bit base (LLM.int8())",
                       config=eight_bit_config, options=EIGHT_BIT_OPTIONS))
