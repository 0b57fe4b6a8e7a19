"""bitsandbytes quantizers: the base stored in 4 bits (NF4 / FP4) or 8 bits (LLM.int8()).

A quantized base cannot itself be trained, so these support PEFT adapter
methods only (``supports=("peft",)``: lora, qlora, dora, ia3, ...); ``method:
full`` with a quantizer is refused when the recipe is validated. The base is
prepared with PEFT's ``prepare_model_for_kbit_training`` (which leaves every
unquantized parameter in float32), and ``dequantize`` gives plain weights back
for ``finetty export --merge``.
"""

from __future__ import annotations

from finetty.core.plugin_api import Linear, Option, Quantizer, hookimpl

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


def prepare(model, gradient_checkpointing: bool):
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)


def dequantize(model, compute_dtype: str):
    import torch

    return model.dequantize(dtype=getattr(torch, compute_dtype))


def _skipped(linear: Linear, options: dict) -> bool:
    return any(linear.name == s or linear.name.endswith("." + s) for s in options.get("skip_modules") or [])


def four_bit_stored(linear: Linear, options: dict) -> dict[str, int] | None:
    """Two weights a byte, and the constants of blocks of 64 (8-bit absmax with its own absmax per 256 blocks,
    the 8-bit and 4-bit codes and an offset when nested; else float32 absmax)."""
    if _skipped(linear, options):
        return None
    numel = linear.inputs * linear.outputs
    blocks = -(-numel // 64)
    if options.get("double_quant", True):
        constants = blocks + 4 * -(-blocks // 256) + 256 * 4 + 16 * 4 + 4
    else:
        constants = 4 * blocks + 16 * 4
    return {f"4-bit {options.get('quant_type', 'nf4')}": -(-numel // 2), "quantization constants": constants}


def eight_bit_stored(linear: Linear, options: dict) -> dict[str, int] | None:
    """int8 weights and a float32 scale per output row."""
    if _skipped(linear, options):
        return None
    return {"int8": linear.inputs * linear.outputs, "quantization constants": 4 * linear.outputs}


@hookimpl
def register_quantizers(register):
    common = dict(supports=("peft",), prepare=prepare, dequantize=dequantize, float32_rest=True,
                  runtime_libraries=("bitsandbytes", "peft"))
    register(Quantizer(name="bnb-4bit", summary="bitsandbytes 4-bit base (NF4 / FP4, double quantization)",
                       config=four_bit_config, options=FOUR_BIT_OPTIONS, stored=four_bit_stored, **common))
    register(Quantizer(name="bnb-8bit", summary="bitsandbytes 8-bit base (LLM.int8())",
                       config=eight_bit_config, options=EIGHT_BIT_OPTIONS, stored=eight_bit_stored, **common))
