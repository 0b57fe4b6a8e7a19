"""Direct preference optimisation through TRL's DPOTrainer, on prompt / chosen / rejected data.

The reference model is the base with the adapter disabled for methods that
freeze the base (PEFT adapters: TRL disables them; finetty's own bottleneck
adapters: the reference log-probabilities are computed once, adapters off,
before training), so no second copy of the model is held. Full fine-tuning
loads a frozen copy of the base as the reference, unless
``precompute_ref_log_probs`` is on. Step events carry TRL's metrics,
among them ``rewards/chosen``, ``rewards/rejected``, ``rewards/margins`` and
``rewards/accuracies``.
"""

from __future__ import annotations

from finetty.core.plugin_api import Objective, Option, hookimpl, trainer_class
from finetty.plugins.objectives.trl_common import pair_rows, trl_config

DPO_OPTIONS = (
    Option("beta", "float", 0.1, "strength of the pull towards the reference model (higher: stay closer)",
           minimum=0.0),
    Option("loss_type", "str", "sigmoid", "sigmoid: the DPO paper's loss; hinge: SLiC; ipo: IPO",
           choices=("sigmoid", "hinge", "ipo")),
    Option("label_smoothing", "float", 0.0, "assumed fraction of flipped preference labels (conservative DPO)",
           minimum=0.0, maximum=0.5),
    Option("precompute_ref_log_probs", "bool", False,
           "compute the reference log-probabilities once before training, so full fine-tuning holds no "
           "second model in memory"),
)

_CLASS = None


def _dpo_trainer_class():
    """TRL's DPOTrainer with finetty's saving, no model card in the checkpoint folder, and the
    reference computed with the method disabled when the model is not a PEFT model."""
    global _CLASS
    if _CLASS is None:
        import contextlib

        from trl import DPOTrainer

        class FinettyDPO(DPOTrainer):
            def __init__(self, *args, reference_context=None, **kwargs):
                self.reference_context = reference_context
                super().__init__(*args, **kwargs)

            def compute_ref_log_probs(self, model, inputs):
                context = contextlib.nullcontext()
                if self.ref_model is None and self.reference_context is not None:
                    context = self.reference_context(self.accelerator.unwrap_model(self.model))
                with context:
                    return super().compute_ref_log_probs(model, inputs)

            def create_model_card(self, *args, **kwargs):
                return None  # checkpoints hold what resume needs; recipe.yaml describes the run

        _CLASS = trainer_class(FinettyDPO)
    return _CLASS


def _training_arguments(args, options: dict, max_length: int, precompute: bool):
    """The run's TrainingArguments as TRL's DPOConfig, with the objective's options."""
    from trl import DPOConfig

    return trl_config(args, DPOConfig, beta=options["beta"], loss_type=[options["loss_type"]],
                      label_smoothing=options["label_smoothing"], max_length=max_length,
                      precompute_ref_log_probs=precompute)


def build_trainer(ctx):
    from datasets import Dataset

    model, method = ctx.model, ctx.method
    is_peft = hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
    # finetty's own adapters: the reference is the model with them switched off, computed before training
    own_adapter = method.freezes_base and method.disabled is not None and not is_peft
    precompute = ctx.options["precompute_ref_log_probs"] or own_adapter
    args = _training_arguments(ctx.args, ctx.options, ctx.max_length, precompute)
    train = Dataset.from_list(pair_rows(ctx.train_records, ctx, "dpo", "training"))
    evaluation = Dataset.from_list(pair_rows(ctx.eval_records, ctx, "dpo", "evaluation")) if ctx.eval_records else None
    trainer = _dpo_trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                                   processing_class=ctx.tokenizer, callbacks=ctx.callbacks, method=method,
                                   reference_context=method.disabled if own_adapter else None)
    if is_peft and "ref" in model.peft_config:
        # TRL keeps a copy of the starting adapter as the reference; for a new adapter that is the base,
        # which disabling the adapter gives without holding a copy (and without saving it beside the result)
        model.delete_adapter("ref")
    return trainer


@hookimpl
def register_objectives(register):
    register(Objective(name="dpo", summary="Direct preference optimisation on prompt / chosen / rejected pairs (TRL)",
                       accepts=("preference",), options=DPO_OPTIONS, build_trainer=build_trainer,
                       sequences_per_example=2, runtime_libraries=("trl", "peft")))
