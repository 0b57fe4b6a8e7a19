"""What the objectives built on TRL's preference trainers share: their config and their rows.

TRL's trainers each take their own ``TrainingArguments`` subclass (KTOConfig,
ORPOConfig, CPOConfig); the worker builds plain ``TrainingArguments`` from the
recipe, so :func:`trl_config` copies every field across and adds the
objective's own. Rows are conversational (lists of ``{role, content}``), so
TRL renders them with the tokenizer's chat template, the one the run trains
with.
"""

from __future__ import annotations


def trl_config(args, config_class, **extra):
    """``config_class`` (a TRL config) holding every TrainingArguments field of ``args``, ``extra`` over them."""
    import dataclasses
    import enum

    from transformers import TrainingArguments

    values = {}
    for f in dataclasses.fields(TrainingArguments):
        if f.init and not f.name.startswith("_"):
            value = getattr(args, f.name)
            values[f.name] = value.value if isinstance(value, enum.Enum) else value
    values.pop("accelerator_config", None)  # rebuilt by the config from its defaults
    return config_class(**{**values, "dataset_num_proc": None, **extra})


def prompt_messages(prompt) -> list:
    """A record's prompt as chat messages (text becomes one user message)."""
    return prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]


def answer_messages(answer) -> list:
    """An answer as the assistant's messages (text becomes one assistant message)."""
    return answer if isinstance(answer, list) else [{"role": "assistant", "content": answer}]


def token_length(tokenizer, messages: list) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def keep_within(rows: list[dict], answers: tuple[str, ...], ctx, objective: str, name: str) -> list[dict]:
    """``rows`` without those longer than max_length when the recipe says ``truncation: drop``.

    TRL truncates the rest itself; dropped rows are reported as a warning, and
    nothing left is an error naming the limit.
    """
    if ctx.truncation != "drop":
        return rows
    kept = [row for row in rows
            if max(token_length(ctx.tokenizer, row["prompt"] + row[a]) for a in answers) <= ctx.max_length]
    if len(kept) < len(rows):
        ctx.report(f"{objective}: {len(rows) - len(kept)} of {len(rows)} {name} examples were longer than "
                   f"max_length={ctx.max_length} and were dropped")
    if not kept:
        raise ValueError(f"no {name} example is left after dropping those longer than max_length={ctx.max_length}")
    return kept


def pair_rows(records: list, ctx, objective: str, name: str) -> list[dict]:
    """Preference records (``{prompt, chosen, rejected}``) as TRL's conversational pairs."""
    rows = [{"prompt": prompt_messages(r["prompt"]), "chosen": answer_messages(r["chosen"]),
             "rejected": answer_messages(r["rejected"])} for r in records]
    return keep_within(rows, ("chosen", "rejected"), ctx, objective, name)


def trl_classes(module: str, trainer: str, config: str):
    """``(Trainer, Config)`` from ``trl.experimental.<module>`` (TRL 0.25 on), else from ``trl`` (before)."""
    import importlib

    try:
        found = importlib.import_module(f"trl.experimental.{module}")
    except ImportError:
        found = importlib.import_module("trl")
    return getattr(found, trainer), getattr(found, config)


def pairwise_trainer(ctx, trainer_cls, args, objective: str):
    """A TRL trainer that needs no reference model (ORPO, CPO/SimPO) over the run's preference pairs."""
    from datasets import Dataset

    from finetty.core.plugin_api import trainer_class

    train = Dataset.from_list(pair_rows(ctx.train_records, ctx, objective, "training"))
    evaluation = (Dataset.from_list(pair_rows(ctx.eval_records, ctx, objective, "evaluation"))
                  if ctx.eval_records else None)
    return trainer_class(no_model_card(trainer_cls))(
        model=ctx.model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=ctx.tokenizer,
        callbacks=ctx.callbacks, method=ctx.method)


def no_model_card(trainer_cls):
    """``trainer_cls`` without the model card TRL writes into every checkpoint folder (recipe.yaml says it all)."""

    class WithoutCard(trainer_cls):
        def create_model_card(self, *args, **kwargs):
            return None

    WithoutCard.__name__ = trainer_cls.__name__
    return WithoutCard
