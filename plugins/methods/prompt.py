"""Prompt tuning through PEFT: trained embeddings of a few virtual tokens before the input."""

from __future__ import annotations

from finetty.core.plugin_api import Architecture, Option, Trainable, hookimpl, peft_method

PROMPT_OPTIONS = (
    Option("num_virtual_tokens", "int", 20, "how many virtual tokens are prepended to the input",
           minimum=1, maximum=1024),
    Option("init_text", "str", None,
           "start the virtual tokens from the embeddings of this text (tiled or cut to num_virtual_tokens); "
           "empty: random", nullable=True),
)


def prompt_config(options: dict, ctx):
    from peft import PromptTuningConfig, PromptTuningInit

    if options.get("init_text"):
        return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options["num_virtual_tokens"],
                                  prompt_tuning_init=PromptTuningInit.TEXT,
                                  prompt_tuning_init_text=options["init_text"],
                                  tokenizer_name_or_path=ctx.model_path)
    return PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=options["num_virtual_tokens"],
                              prompt_tuning_init=PromptTuningInit.RANDOM)


def prompt_trainable(arch: Architecture, options: dict) -> Trainable:
    """One embedding per virtual token."""
    return Trainable(((int(options.get("num_virtual_tokens", 20)) * arch.hidden, "float32"),),
                     notes=("prompt: trainable parameters approximated from the method's usual shapes",))


@hookimpl
def register_methods(register):
    register(peft_method("prompt", "Prompt tuning: trained embeddings of virtual tokens before the input (PEFT)",
                         prompt_config, options=PROMPT_OPTIONS, mergeable=False, trainable=prompt_trainable,
                         recommended={"train.learning_rate": 3.0e-2, "method_options.num_virtual_tokens": 16}))
    # (as recipes/demo-prompt.yaml; its init_text is the demo's own and is left to the person)
