"""Kahneman-Tversky optimisation through TRL's KTOTrainer: unpaired answers labelled desirable or not.

KTO needs no pairs: each example is a prompt, one completion and a label
(true: desirable). It trains on ``kto`` records (``{prompt, completion,
label}``) and on preference pairs, which it unpairs (the chosen answer is a
desirable example, the rejected one an undesirable example), so the same
``identity-preference`` data trains dpo and kto. As with dpo, the reference is
the base with the adapter switched off for methods that freeze the base, and a
frozen copy of the base for full fine-tuning unless
``precompute_ref_log_probs`` is on. Step events carry TRL's ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins`` and ``kl``.
"""

from __future__ import annotations

from finetty.plugins.objectives.trl_common import (answer_messages, keep_within, no_model_card, prompt_messages,
                                                   trl_config)
from finetty.core.plugin_api import Objective, Option, hookimpl, trainer_class

KTO_OPTIONS = (
    Option("beta", "float", 0.1, "strength of the pull towards the reference model (higher: stay closer)",
           minimum=0.0),
    Option("loss_type", "str", "kto", "kto: the KTO paper's loss; apo_zero_unpaired: unpaired APO-zero",
           choices=("kto", "apo_zero_unpaired")),
    Option("desirable_weight", "float", 1.0, "weight of the desirable examples' loss (raise it when they are "
           "fewer than the undesirable ones)", minimum=0.0),
    Option("undesirable_weight", "float", 1.0, "weight of the undesirable examples' loss", minimum=0.0),
    Option("precompute_ref_log_probs", "bool", False,
           "compute the reference log-probabilities once before training, so full fine-tuning holds no "
           "second model in memory"),
)

_CLASS = None


def _kto_trainer_class():
    """TRL's KTOTrainer with finetty's saving, and the reference computed with the method disabled when the
    model is one of finetty's own adapters rather than a PEFT model."""
    global _CLASS
    if _CLASS is None:
        import contextlib

        from trl import KTOTrainer

        class FinettyKTO(no_model_card(KTOTrainer)):
            def __init__(self, *args, reference_context=None, **kwargs):
                self.reference_context = reference_context
                super().__init__(*args, **kwargs)

            def compute_ref_log_probs(self, model, inputs):
                context = contextlib.nullcontext()
                if self.ref_model is None and self.reference_context is not None:
                    context = self.reference_context(self.accelerator.unwrap_model(self.model))
                with context:
                    return super().compute_ref_log_probs(model, inputs)

        _CLASS = trainer_class(FinettyKTO)
    return _CLASS


def unpaired_rows(records: list) -> list[dict]:
    """TRL's unpaired rows: a kto record as it is, a preference pair as a desirable and an undesirable example."""
    rows = []
    for record in records:
        prompt = prompt_messages(record["prompt"])
        if "chosen" in record:
            rows.append({"prompt": prompt, "completion": answer_messages(record["chosen"]), "label": True})
            rows.append({"prompt": prompt, "completion": answer_messages(record["rejected"]), "label": False})
        else:
            rows.append({"prompt": prompt, "completion": answer_messages(record["completion"]),
                         "label": bool(record["label"])})
    return rows


def build_trainer(ctx):
    import random

    from datasets import Dataset
    from trl import KTOConfig

    model, method = ctx.model, ctx.method
    is_peft = hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
    own_adapter = method.freezes_base and method.disabled is not None and not is_peft
    options = ctx.options
    args = trl_config(ctx.args, KTOConfig, beta=options["beta"], loss_type=options["loss_type"],
                      desirable_weight=options["desirable_weight"], undesirable_weight=options["undesirable_weight"],
                      max_length=ctx.max_length,
                      # the KL estimate pairs each example with its neighbour in a fixed-order batch
                      train_sampling_strategy="sequential" if options["loss_type"] == "kto" else "random",
                      precompute_ref_log_probs=options["precompute_ref_log_probs"] or own_adapter)

    def dataset(records, name):
        rows = keep_within(unpaired_rows(records), ("completion",), ctx, "kto", name)
        # batches are read in order (see train_sampling_strategy): shuffle once, with the run's seed
        random.Random(ctx.args.seed).shuffle(rows)
        labels = {row["label"] for row in rows}
        if len(labels) < 2:
            ctx.report(f"kto: every {name} example is {'desirable' if True in labels else 'undesirable'}; "
                       f"KTO learns most from both kinds")
        return Dataset.from_list(rows)

    train = dataset(ctx.train_records, "training")
    evaluation = dataset(ctx.eval_records, "evaluation") if ctx.eval_records else None
    trainer = _kto_trainer_class()(model=model, args=args, train_dataset=train, eval_dataset=evaluation,
                                   processing_class=ctx.tokenizer, callbacks=ctx.callbacks, method=method,
                                   reference_context=method.disabled if own_adapter else None)
    if is_peft and "ref" in model.peft_config:
        # a new adapter's starting copy is the base itself: disabling the adapter gives it without a copy
        model.delete_adapter("ref")
    return trainer


@hookimpl
def register_objectives(register):
    register(Objective(name="kto", summary="Kahneman-Tversky optimisation on answers labelled desirable or not, "
                                           "or on preference pairs unpaired (TRL)",
                       accepts=("kto", "preference"), options=KTO_OPTIONS, build_trainer=build_trainer,
                       sequences_per_example=2, runtime_libraries=("trl", "peft")))
