"""Prefix tuning through PEFT: trained key/value vectors prepended at every layer."""

from __future__ import annotations

from finetty.core.plugin_api import Option, hookimpl, peft_method

PREFIX_OPTIONS = (
    Option("num_virtual_tokens", "int", 20, "how many virtual tokens are prepended at every layer",
           minimum=1, maximum=1024),
    Option("prefix_projection", "bool", False,
           "learn the prefix through a two-layer MLP (steadier training, more parameters while training)"),
    Option("encoder_hidden_size", "int", None, "hidden size of that MLP; empty: the model's hidden size",
           minimum=1, nullable=True),
)


def prefix_config(options: dict, ctx):
    from peft import PrefixTuningConfig

    values = {k: v for k, v in options.items() if v is not None}
    return PrefixTuningConfig(task_type="CAUSAL_LM", **values)


@hookimpl
def register_methods(register):
    register(peft_method("prefix", "Prefix tuning: trained key/value prefixes at every layer (PEFT)",
                         prefix_config, options=PREFIX_OPTIONS, mergeable=False))
