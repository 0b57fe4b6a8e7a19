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


def token_length(tokenizer, messages: list, generation_prompt: bool = False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def _too_long(row: dict, answers: tuple[str, ...], ctx, max_completion: int | None) -> bool:
    """Whether TRL will cut ``row``: the prompt with any answer over max_length, or an answer over
    ``max_completion`` (the objective's max_completion_length, where it has one)."""
    prompt = token_length(ctx.tokenizer, row["prompt"], generation_prompt=True) if max_completion else 0
    for answer in answers:
        full = token_length(ctx.tokenizer, row["prompt"] + row[answer])
        if full > ctx.max_length or (max_completion and full - prompt > max_completion):
            return True
    return False


def keep_within(rows: list[dict], answers: tuple[str, ...], ctx, objective: str, name: str,
                what: str = "examples", max_completion: int | None = None) -> list[dict]:
    """``rows``, those longer than the limits counted and reported (as sft reports its truncation), and
    dropped when the recipe says ``truncation: drop``.

    TRL truncates the rest itself (``max_length``, ``max_completion_length``)
    without a word, so a pair whose rejected answer lost its end trained in
    silence; here every such row is counted, and the run gets a warning.
    Nothing left after dropping is an error naming the limit.
    """
    over = [_too_long(row, answers, ctx, max_completion) for row in rows]
    limit = f"max_length={ctx.max_length}" + (f" (answers: max_completion_length={max_completion})"
                                              if max_completion else "")
    count = sum(over)
    if ctx.truncation != "drop":
        if count:
            ctx.report(f"{objective}: {count} of {len(rows)} {name} {what} were longer than {limit} "
                       "and were truncated")
        return rows
    kept = [row for row, long in zip(rows, over, strict=True) if not long]
    if count:
        ctx.report(f"{objective}: {count} of {len(rows)} {name} {what} were longer than {limit} and were dropped")
    if not kept:
        raise ValueError(f"no {name} example is left after dropping those longer than {limit}")
    return kept


def pair_rows(records: list, ctx, objective: str, name: str, max_completion: int | None = None) -> list[dict]:
    """Preference records (``{prompt, chosen, rejected}``) as TRL's conversational pairs, over-length pairs
    counted (and dropped under ``truncation: drop``) by :func:`keep_within`."""
    rows = [{"prompt": prompt_messages(r["prompt"]), "chosen": answer_messages(r["chosen"]),
             "rejected": answer_messages(r["rejected"])} for r in records]
    return keep_within(rows, ("chosen", "rejected"), ctx, objective, name, "pairs", max_completion)


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

    limit = getattr(args, "max_completion_length", None)
    train = Dataset.from_list(pair_rows(ctx.train_records, ctx, objective, "training", limit))
    evaluation = (Dataset.from_list(pair_rows(ctx.eval_records, ctx, objective, "evaluation", limit))
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
