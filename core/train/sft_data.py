"""Supervised fine-tuning data and trainer: tokenize (cached by content), then pack or group by length.

- ``train.packing: true``: examples are packed into rows of up to
  ``max_length`` tokens and a batch is one padding-free sequence in which no
  example attends to another (:mod:`finetty.core.data.packing`).
- Otherwise batches are padded per batch, and examples of similar length are
  batched together (``LengthGroupedSampler``: random groups of 50 batches,
  sorted by length within each group) unless the recipe picks another
  ``train_sampling_strategy`` than the default ``random``.

Tokenized rows are cached in ``$FINETTY_HOME/cache/tokenized`` by a hash of
everything that decides them (:mod:`finetty.core.data.cache`).
"""

from __future__ import annotations

import sys

from finetty.core.data import cache as data_cache
from finetty.core.data.tokenize import IGNORE, tokenize_examples


def prepare_rows(examples: list, tokenizer, max_length: int, truncation: str, train_on: str, packing: bool,
                 report) -> list[dict]:
    """Tokenized (and, with ``packing``, packed) rows, from the cache when the same inputs were seen before."""
    from finetty.core.data.packing import pack_examples

    cache_key = data_cache.key(tokenizer, examples, max_length=max_length, truncation=truncation,
                               train_on=train_on, packing=packing)
    cached = data_cache.load(cache_key)
    if cached is not None:
        rows, reports = cached
        print(f"finetty: {len(rows)} tokenized rows from the cache ({cache_key[:12]})", flush=True)
    else:
        reports = []
        rows = tokenize_examples(examples, tokenizer, max_length, truncation, train_on, reports.append)
        if packing:
            rows = pack_examples(rows, max_length)
        data_cache.save(cache_key, rows, reports)
    for message in reports:
        report(message)
    return rows


def _refuse_prompt_learning(model) -> None:
    for config in (getattr(model, "peft_config", None) or {}).values():
        if getattr(config, "is_prompt_learning", False):
            raise ValueError("train.packing cannot be used with prompt or prefix tuning (their virtual tokens "
                             "sit in front of the whole row); set train.packing: false")


def _trainer_class():
    from finetty.core.train.trainer import FinettyTrainer

    class SFTTrainer(FinettyTrainer):
        """finetty's Trainer with length-grouped sampling (unpacked) or packed attention (packed)."""

        def __init__(self, *args, lengths=None, packed=False, **kwargs):
            self.lengths = lengths
            self.packed = packed
            self._checked = False
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            if self.packed or self.lengths is None or self.args.train_sampling_strategy != "random":
                return super()._get_train_sampler(train_dataset)
            return self.length_grouped_sampler(self.lengths)  # (seeded per epoch: a resume draws the same order)

        def compute_loss(self, model, inputs, *args, **kwargs):
            if not self.packed:
                return super().compute_loss(model, inputs, *args, **kwargs)
            from finetty.core.data.packing import check_boundaries_seen

            loss = super().compute_loss(model, {**inputs, "use_cache": False}, *args, **kwargs)
            if not self._checked:
                check_boundaries_seen(model)
                self._checked = True
            return loss

        def train(self, *args, **kwargs):
            if not self.packed:
                return super().train(*args, **kwargs)
            from finetty.core.data.packing import use_packed_attention

            model = self.model
            base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
            previous = use_packed_attention(model)
            try:
                return super().train(*args, **kwargs)
            finally:
                if previous is not None:
                    base.set_attn_implementation(previous)

    return SFTTrainer


def _streamed_rows(ctx, train_on: str):
    """A torch ``IterableDataset`` that tokenizes ``data_options.streaming`` examples as the trainer asks for them.

    Over-length examples are truncated or dropped per ``truncation`` and
    examples left with nothing to learn are skipped, as :func:`tokenize_examples`
    does for a list; nothing is cached, packed or grouped by length, since the
    whole dataset is never held.
    """
    import torch

    from finetty.core.data.tokenize import check_renders_tools, tokenize_conversation, tokenize_text

    class Rows(torch.utils.data.IterableDataset):
        def __iter__(self):
            checked = False
            for example in ctx.train_records:
                if isinstance(example, str):
                    row = tokenize_text(ctx.tokenizer, example, ctx.max_length)
                else:
                    if not checked and isinstance(example, dict) and example.get("tools"):
                        check_renders_tools(ctx.tokenizer)
                        checked = True
                    row = tokenize_conversation(ctx.tokenizer, example, ctx.max_length, train_on=train_on)
                if row["truncated"] and ctx.truncation == "drop":
                    continue
                if all(label == IGNORE for label in row["labels"]):
                    continue
                yield {"input_ids": row["input_ids"], "labels": row["labels"]}

    return Rows()


def build_sft_trainer(ctx, train_on: str = "assistant"):
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    from finetty.core.data.packing import PackedCollator

    packing = bool(getattr(ctx, "packing", False))
    if packing:
        _refuse_prompt_learning(ctx.model)
    if not isinstance(ctx.train_records, list):  # data_options.streaming: an iterable read as training goes
        collator = DataCollatorForSeq2Seq(ctx.tokenizer, padding=True, label_pad_token_id=IGNORE)
        return _trainer_class()(model=ctx.model, args=ctx.args, train_dataset=_streamed_rows(ctx, train_on),
                                data_collator=collator, processing_class=ctx.tokenizer, callbacks=ctx.callbacks,
                                method=ctx.method, lengths=None, packed=False)

    def prepare(examples):
        rows = prepare_rows(examples, ctx.tokenizer, ctx.max_length, ctx.truncation, train_on, packing, ctx.report)
        columns = {name: [row[name] for row in rows] for name in rows[0]}
        return Dataset.from_dict(columns), [len(row["input_ids"]) for row in rows]

    train, lengths = prepare(ctx.train_records)
    evaluation = prepare(ctx.eval_records)[0] if ctx.eval_records else None
    if packing:
        collator = PackedCollator()
        fill = sum(lengths) / (len(lengths) * ctx.max_length)
        print(f"finetty: packed into {len(lengths)} rows of up to {ctx.max_length} tokens ({fill:.0%} full)",
              file=sys.stdout, flush=True)
    else:
        collator = DataCollatorForSeq2Seq(ctx.tokenizer, padding=True, label_pad_token_id=IGNORE)
    return _trainer_class()(model=ctx.model, args=ctx.args, train_dataset=train, eval_dataset=evaluation,
                            data_collator=collator, processing_class=ctx.tokenizer, callbacks=ctx.callbacks,
                            method=ctx.method, lengths=None if packing else lengths, packed=packing)
