"""IA3 through PEFT: learned vectors that rescale keys, values and feed-forward activations."""

from __future__ import annotations

from finetty.core.plugin_api import Architecture, Option, Trainable, hookimpl, peft_method

IA3_OPTIONS = (
    Option("target_modules", "str|list", None,
           "modules whose outputs are rescaled, e.g. [k_proj, v_proj, down_proj]; empty: PEFT's choice for the "
           "architecture", nullable=True),
    Option("feedforward_modules", "str|list", None,
           "which of target_modules are feed-forward (their inputs are rescaled); empty: PEFT's choice",
           nullable=True),
    Option("init_ia3_weights", "bool", True, "start every scale at 1, so the untrained model is unchanged"),
    Option("modules_to_save", "list", None, "extra modules trained in full and saved, e.g. [lm_head]",
           nullable=True),
)


def ia3_config(options: dict, ctx):
    from peft import IA3Config

    values = {k: v for k, v in options.items() if v is not None}
    return IA3Config(task_type="CAUSAL_LM", **values)


def ia3_trainable(arch: Architecture, options: dict) -> Trainable:
    """Approximately: PEFT's default for Llama-style models scales k, v and down_proj's input in every layer."""
    kv = arch.kv_heads * arch.head_dim
    return Trainable(((kv, "float32"), (kv, "float32"), (arch.intermediate, "float32")) * arch.layers,
                     notes=("ia3: trainable parameters approximated from the method's usual shapes",))


@hookimpl
def register_methods(register):
    register(peft_method("ia3", "IA3: learned rescaling of keys, values and feed-forward activations (PEFT)",
                         ia3_config, options=IA3_OPTIONS, trainable=ia3_trainable,
                         recommended={"train.learning_rate": 1.0e-1}))  # as recipes/demo-ia3.yaml: scales move slowly
