"""Simple preference optimisation (SimPO) through TRL's CPOTrainer with ``loss_type="simpo"``.

SimPO needs no reference model: the reward is the answer's average
log-probability per token scaled by ``beta``, and the loss asks the chosen
reward to beat the rejected one by the margin ``gamma``. ``cpo_alpha`` adds
the chosen answer's next-token loss (0, the paper's setting: pure SimPO).
Step events carry TRL's ``rewards/*`` metrics.
"""

from __future__ import annotations

from finetty.plugins.objectives.trl_common import pairwise_trainer, trl_classes, trl_config
from finetty.core.plugin_api import Objective, Option, hookimpl

SIMPO_OPTIONS = (
    Option("beta", "float", 2.0, "scale of the length-normalised reward (the SimPO paper uses 2 to 2.5)",
           minimum=0.0),
    Option("gamma", "float", 0.5, "target reward margin between the chosen and the rejected answer",
           minimum=0.0),
    Option("cpo_alpha", "float", 0.0, "weight of the chosen answer's next-token loss added to SimPO's "
           "(0: pure SimPO; 1: CPO-SimPO)", minimum=0.0),
    Option("label_smoothing", "float", 0.0, "assumed fraction of flipped preference labels",
           minimum=0.0, maximum=0.5),
)


def build_trainer(ctx):
    trainer_cls, config_cls = trl_classes("cpo", "CPOTrainer", "CPOConfig")
    options = ctx.options
    args = trl_config(ctx.args, config_cls, loss_type="simpo", beta=options["beta"], simpo_gamma=options["gamma"],
                      cpo_alpha=options["cpo_alpha"], label_smoothing=options["label_smoothing"],
                      max_length=ctx.max_length)
    return pairwise_trainer(ctx, trainer_cls, args, "simpo")


@hookimpl
def register_objectives(register):
    register(Objective(name="simpo", summary="Simple preference optimisation: length-normalised reward margin, "
                                             "no reference model (TRL CPOTrainer)",
                       accepts=("preference",), options=SIMPO_OPTIONS, build_trainer=build_trainer,
                       sequences_per_example=2, runtime_libraries=("trl", "peft")))
