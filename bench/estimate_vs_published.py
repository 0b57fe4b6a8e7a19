"""finetty's memory estimate next to published peak-memory measurements (the table in docs/memory.md).

    python bench/estimate_vs_published.py

The measurements are LitGPT's (config_hub/finetune/README.md in Lightning-AI/litgpt:
bf16-true, Alpaca 2k, max_seq_length 512, one A10G 24 GB, peak = torch.cuda.max_memory_allocated in GB of 1e9).
Each row estimates the same model, method, rank, targets, micro-batch and length. The margin is left out
(LitGPT reports torch's peak, which does not see the CUDA context). Two columns: finetty's estimate of
the run as finetty (transformers + PEFT) would do it, and the same with LitGPT's own choices (adapters in
bf16, no float32 upcast of a quantized base's other weights, loss computed in chunks of 128 positions).
"""

from __future__ import annotations

import dataclasses

from finetty.core.memory.estimate import Architecture, Spec, compute

TINYLLAMA = {"model_type": "llama", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
             "num_attention_heads": 32, "num_key_value_heads": 4, "vocab_size": 32000}


def config(name: str) -> dict:
    from finetty.core.memory.estimate import _known

    data = _known()
    return TINYLLAMA if name == "TinyLlama-1.1B" else data["models"][data["aliases"].get(name, name)]


LORA = {"r": 32, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
#: (model, method, micro-batch, measured GB or None for OOM on 24 GB, LitGPT config)
ROWS = [
    ("meta-llama/Llama-2-7b-hf", "lora", 2, 19.77, "llama-2-7b/lora.yaml"),
    ("meta-llama/Llama-2-7b-hf", "qlora", 2, 13.68, "llama-2-7b/qlora.yaml"),
    ("mistralai/Mistral-7B-v0.1", "lora", 2, 20.66, "mistral-7b/lora.yaml"),
    ("mistralai/Mistral-7B-v0.1", "qlora", 2, 14.29, "mistral-7b/qlora.yaml"),
    ("meta-llama/Llama-3.1-8B", "lora", 1, 19.73, "llama-3.1-8b/lora.yaml"),
    ("meta-llama/Llama-3.1-8B", "qlora", 2, 17.41, "llama-3.1-8b/qlora.yaml"),
    ("meta-llama/Llama-3.1-8B", "full", 4, None, "llama-3.1-8b/full.yaml"),
    ("TinyLlama-1.1B", "full", 4, 14.10, "tiny-llama/full.yaml"),
]


def litgpt_like(arch: Architecture, spec: Spec) -> int:
    """The same estimate with LitGPT's choices: bf16 adapters and base, logits in chunks of 128 positions."""
    parts = compute(arch, spec)
    total = parts["weights"] + parts["gradients"] + parts["optimizer"] + parts["activations"]
    adapters = parts["weights_detail"].get("adapters (float32)", 0)
    upcast = parts["weights_detail"].get("float32", 0) if spec.quantizer != "none" else 0
    total -= adapters // 2 + upcast // 2  # bf16 adapters, bf16 embeddings/head/norms
    if spec.method != "full":
        total -= parts["gradients"] // 2 + (parts["optimizer"] - 4 * len(arch.linears())) // 2
    logits = parts["activations_detail"]["logits"]
    total -= logits - logits * 128 // spec.max_length  # one chunk of 128 positions at a time
    return total


def main() -> int:
    print("| model | method | micro-batch x length | measured (LitGPT) | finetty estimate | error "
          "| with LitGPT's choices | error |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, method, micro, measured, source in ROWS:
        arch = Architecture.from_config(config(model))
        spec = Spec(method=method, method_options=dict(LORA) if method != "full" else {},
                    quantizer="bnb-4bit" if method == "qlora" else "none",
                    quantizer_options={"double_quant": False, "quant_type": "nf4"}, dtype="bfloat16",
                    micro_batch=micro, accumulation=1, max_length=512, gradient_checkpointing=False,
                    optim="adamw_torch", objective="sft")
        parts = compute(arch, spec)
        ours = parts["total"] - parts["margin"]
        like = litgpt_like(arch, dataclasses.replace(spec))
        if measured is None:
            print(f"| {model} | {method} | {micro} x 512 | OOM on 24 GB ({source}) | {ours / 1e9:.1f} GB | "
                  f"{'agrees' if ours > 24e9 else 'DISAGREES'} | {like / 1e9:.1f} GB | "
                  f"{'agrees' if like > 24e9 else 'DISAGREES'} |")
            continue
        print(f"| {model} | {method} | {micro} x 512 | {measured:.2f} GB ({source}) | {ours / 1e9:.2f} GB | "
              f"{(ours / 1e9 / measured - 1) * 100:+.0f}% | {like / 1e9:.2f} GB | {(like / 1e9 / measured - 1) * 100:+.0f}% |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
