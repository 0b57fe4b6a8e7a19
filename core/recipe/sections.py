"""Option tables of the recipe sections the engine reads: ``model_options``, ``launch`` and ``monitor``.

They live here, beside the ``train`` table (:mod:`.train_args`), so the recipe
validator sees every option a recipe may set without importing the engine that
acts on them (:mod:`finetty.core.train.distributed`,
:mod:`finetty.core.memory.monitor`).
"""

from __future__ import annotations

from finetty.core.plugin.options import Option

#: torch_dtype -> the train: precision flag whose machine check it shares (float32 and auto need none).
DTYPE_PRECISION = {"bfloat16": "bf16", "float16": "fp16"}

MODEL_OPTIONS = (
    Option("attn_implementation", "str", None, "attention kernel: sdpa, eager, flash_attention_2, flash_attention_3 "
           "(both need a CUDA GPU and the flash-attn package), or a kernels-hub id such as "
           "kernels-community/flash-attn2 (needs the kernels package); empty: the model's default (sdpa where "
           "it supports it)", nullable=True),
    Option("torch_dtype", "str", "auto", "the dtype the base model's weights are loaded in; auto: the precision "
           "train: computes in (bfloat16 with bf16, float16 with fp16, else float32)",
           choices=("auto", "bfloat16", "float16", "float32")),
)

LAUNCH_OPTIONS = (
    Option("num_processes", "int", 1, "processes in all (usually one per GPU, on every machine together)",
           minimum=1),
    Option("num_machines", "int", 1, "machines taking part", minimum=1),
    Option("machine_rank", "int", 0, "this machine's rank (0 is the main machine, which writes the run)",
           minimum=0),
    Option("main_process_ip", "str", None, "address of machine 0, for more than one machine", nullable=True),
    Option("main_process_port", "int", 0, "port on machine 0 for the rendezvous (0: pick a free one)",
           minimum=0, maximum=65535),
    Option("mixed_precision", "str", "no", "accelerate's mixed precision", choices=("no", "fp16", "bf16")),
    Option("distributed_type", "str", "ddp", "DDP, FSDP, or DeepSpeed ZeRO", choices=("ddp", "fsdp", "deepspeed")),
    Option("zero_stage", "int", 2, "DeepSpeed ZeRO stage", choices=(2, 3)),
    Option("deepspeed_config", "str", None, "a DeepSpeed JSON config file (overrides zero_stage)",
           nullable=True),
    Option("fsdp", "dict", {}, "accelerate FSDP settings, e.g. {fsdp_sharding_strategy: FULL_SHARD, "
           "fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP}"),
)


def is_distributed(launch: dict | None) -> bool:
    """True when the run goes through accelerate's launcher: several processes or machines, or FSDP/DeepSpeed asked
    for even on one process (FSDP on one GPU shards nothing but can offload; trained without its launcher it would
    silently be a plain run)."""
    launch = launch or {}
    return (int(launch.get("num_processes", 1)) > 1 or int(launch.get("num_machines", 1)) > 1
            or launch.get("distributed_type", "ddp") in ("fsdp", "deepspeed"))


POLICIES = ("warn", "checkpoint", "stop", "shrink")

MONITOR_OPTIONS = (
    Option("interval_s", "float", 2.0, "seconds between memory samples (each optimizer step is sampled too)",
           minimum=0.05, maximum=3600),
    Option("watermark", "float", 0.9, "fraction of each GPU's memory (0 < x <= 1) that counts as too full",
           minimum=0.0, maximum=1.0),
    Option("on_watermark", "str", "warn", "what crossing the watermark does: warn; checkpoint (save one now); "
           "stop (checkpoint and stop); shrink (checkpoint, then continue with half the micro-batch and twice "
           "the gradient accumulation)", choices=POLICIES),
)
