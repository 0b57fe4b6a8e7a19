"""Continued pre-training: next-token loss on plain text, packed into fixed-length blocks.

Every document is tokenized and ended with the end-of-sequence token; the
documents are concatenated and cut into blocks of ``block_size`` tokens, each
a training example with loss on every token (no padding, no wasted compute).
The tail shorter than a block is dropped, and the run is told how much.
"""

from __future__ import annotations

from finetty.core.plugin_api import Objective, Option, hookimpl, trainer_class

CPT_OPTIONS = (
    Option("block_size", "int", None, "tokens per training block; empty: the recipe's train.max_length",
           minimum=2, nullable=True),
    Option("add_eos", "bool", True, "end every document with the end-of-sequence token before packing"),
)


def pack(texts: list[str], tokenizer, block_size: int, add_eos: bool = True) -> tuple[list[list[int]], int]:
    """Token blocks of exactly ``block_size`` and the number of tokens left over.

    When the whole text is shorter than one block it becomes a single shorter block.
    """
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        stream.extend(ids)
        if add_eos and eos is not None:
            stream.append(eos)
    if not stream:
        raise ValueError("the dataset has no text to train on")
    if len(stream) < block_size:
        return [stream], 0
    count = len(stream) // block_size
    return [stream[i * block_size:(i + 1) * block_size] for i in range(count)], len(stream) - count * block_size


def streamed_blocks(texts, tokenizer, block_size: int, add_eos: bool = True):
    """A torch ``IterableDataset`` of the blocks :func:`pack` makes, packed as ``texts`` are read.

    For ``data_options.streaming``: each pass reads the texts again and
    yields the same blocks, in the same order, that :func:`pack` makes of the
    whole list (the tail that fills no block is left out; a text shorter than
    one block in all is one shorter block), without holding more than a block.
    """
    import torch

    eos = tokenizer.eos_token_id

    class Blocks(torch.utils.data.IterableDataset):
        def __iter__(self):
            stream, blocks = [], 0
            for text in texts:
                stream.extend(tokenizer(text, add_special_tokens=True)["input_ids"])
                if add_eos and eos is not None:
                    stream.append(eos)
                while len(stream) >= block_size:
                    block, stream = stream[:block_size], stream[block_size:]
                    blocks += 1
                    yield {"input_ids": block, "attention_mask": [1] * block_size, "labels": list(block)}
            if not blocks and stream:
                yield {"input_ids": stream, "attention_mask": [1] * len(stream), "labels": list(stream)}

    return Blocks()


def build_trainer(ctx):
    from datasets import Dataset
    from transformers import DataCollatorForSeq2Seq

    size = ctx.options["block_size"] or ctx.max_length
    collator = DataCollatorForSeq2Seq(ctx.tokenizer, padding=True, label_pad_token_id=-100)
    if not isinstance(ctx.train_records, list):  # data_options.streaming: texts read as training goes
        return trainer_class()(model=ctx.model, args=ctx.args,
                               train_dataset=streamed_blocks(ctx.train_records, ctx.tokenizer, size,
                                                             ctx.options["add_eos"]),
                               data_collator=collator, processing_class=ctx.tokenizer, callbacks=ctx.callbacks,
                               method=ctx.method)

    def dataset(texts, name):
        blocks, rest = pack(texts, ctx.tokenizer, size, ctx.options["add_eos"])
        if rest:
            ctx.report(f"cpt: {name} text packed into {len(blocks)} blocks of {size} tokens; "
                       f"the last {rest} tokens did not fill a block and were left out")
        return Dataset.from_list([{"input_ids": b, "attention_mask": [1] * len(b), "labels": list(b)}
                                  for b in blocks])

    train = dataset(ctx.train_records, "training")
    evaluation = dataset(ctx.eval_records, "evaluation") if ctx.eval_records else None
    return trainer_class()(model=ctx.model, args=ctx.args, train_dataset=train, eval_dataset=evaluation,
                           data_collator=collator, processing_class=ctx.tokenizer, callbacks=ctx.callbacks,
                           method=ctx.method)


@hookimpl
def register_objectives(register):
    register(Objective(name="cpt", summary="Continued pre-training: causal LM loss on plain text packed into blocks",
                       accepts=("text",), options=CPT_OPTIONS, build_trainer=build_trainer,
                       runtime_libraries=()))
