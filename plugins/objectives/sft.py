"""Supervised fine-tuning: next-token loss on the assistant's tokens."""

from __future__ import annotations

from finetty.core.plugin_api import Objective, Option, hookimpl, sft_trainer

SFT_OPTIONS = (
    Option("train_on", "str", "assistant", "which tokens carry loss: the assistant's replies or every token",
           choices=("assistant", "all")),
)


@hookimpl
def register_objectives(register):
    register(Objective(name="sft", summary="Supervised fine-tuning on conversations (loss on assistant tokens)",
                       accepts=("conversation", "text"), options=SFT_OPTIONS, runtime_libraries=(),
                       build_trainer=lambda ctx: sft_trainer(ctx, train_on=ctx.options["train_on"])))
