"""Supervised fine-tuning data and trainer: tokenize, truncate or drop, pad per batch."""

from __future__ import annotations

from .tokenize import IGNORE, tokenize_conversation, tokenize_text


def tokenize_examples(examples: list, tokenizer, max_length: int, truncation: str, train_on: str,
                      report) -> list[dict]:
    """Tokenize normalized examples; over-length ones are truncated or dropped per ``truncation``."""
    rows, truncated, dropped, fallback, empty = [], 0, 0, 0, 0
    for example in examples:
        if isinstance(example, str):
            row = tokenize_text(tokenizer, example, max_length)
        else:
            row = tokenize_conversation(tokenizer, example, max_length, train_on=train_on)
        fallback += row.pop("fallback")
        if row.pop("truncated"):
            if truncation == "drop":
                dropped += 1
                continue
            truncated += 1
        if all(label == IGNORE for label in row["labels"]):
            empty += 1
            continue
        rows.append(row)
    if truncated:
        report(f"{truncated} of {len(examples)} examples were longer than max_length={max_length} and were truncated")
    if dropped:
        report(f"{dropped} of {len(examples)} examples were longer than max_length={max_length} and were dropped")
    if empty:
        report(f"{empty} examples had no tokens to learn from after truncation and were skipped")
    if fallback:
        report(f"the chat template does not render prefixes stably; {fallback} conversations train on every token")
    if not rows:
        raise ValueError(f"no example is left to train on after tokenizing (max_length={max_length})")
    return rows


def build_sft_trainer(ctx, train_on: str = "assistant"):
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from .trainer import FinettyTrainer

    def prepare(examples):
        rows = tokenize_examples(examples, ctx.tokenizer, ctx.max_length, ctx.truncation, train_on, ctx.report)
        return Dataset.from_list(rows)

    train = prepare(ctx.train_records)
    evaluation = prepare(ctx.eval_records) if ctx.eval_records else None
    collator = DataCollatorForSeq2Seq(ctx.tokenizer, padding=True, label_pad_token_id=IGNORE)
    return FinettyTrainer(model=ctx.model, args=ctx.args, train_dataset=train, eval_dataset=evaluation,
                          data_collator=collator, processing_class=ctx.tokenizer, callbacks=ctx.callbacks,
                          method=ctx.method)
