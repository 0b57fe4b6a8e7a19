"""Odds-ratio preference optimisation through TRL's ORPOTrainer, on prompt / chosen / rejected pairs.

ORPO needs no reference model: the loss is the chosen answer's next-token loss
plus ``beta`` times a log-odds-ratio term that pushes the chosen answer's odds
above the rejected one's, so SFT and preference alignment happen in one stage
and no second copy of the model is held for any method. Step events carry
TRL's ``rewards/*``, ``log_odds_ratio`` and ``nll_loss``.
"""

from __future__ import annotations

from finetty.plugins.objectives.trl_common import pairwise_trainer, trl_classes, trl_config
from finetty.core.plugin_api import Objective, Option, hookimpl

ORPO_OPTIONS = (
    Option("beta", "float", 0.1, "weight of the odds-ratio term against the chosen answer's next-token loss "
           "(the paper's lambda)", minimum=0.0),
    Option("max_completion_length", "int", None, "longest answer in tokens; empty: no limit besides max_length",
           minimum=1, nullable=True),
)


def build_trainer(ctx):
    trainer_cls, config_cls = trl_classes("orpo", "ORPOTrainer", "ORPOConfig")
    args = trl_config(ctx.args, config_cls, beta=ctx.options["beta"], max_length=ctx.max_length,
                      max_completion_length=ctx.options["max_completion_length"])
    return pairwise_trainer(ctx, trainer_cls, args, "orpo")


@hookimpl
def register_objectives(register):
    register(Objective(name="orpo", summary="Odds-ratio preference optimisation: SFT and preference in one stage, "
                                            "no reference model (TRL)",
                       accepts=("preference",), options=ORPO_OPTIONS, build_trainer=build_trainer,
                       sequences_per_example=2, runtime_libraries=("trl", "peft")))
