"""The data half of a run, shown without training: what `finetty data` prints and the app's preview shows.

:func:`describe` takes what :func:`finetty.core.data.reading.read_data` found
and a loaded tokenizer, tokenizes every example the way training will (the
same :mod:`finetty.core.data.tokenize` functions) and reports the format and
why, every column's fate, record counts, truncation against ``max_length``
(a preference pair by the longer of its two sequences, as TRL cuts each),
token-length statistics, and examples rendered through the chat template
with the trained characters marked. Both clients call this one function, so
the preview and the command cannot disagree.
"""

from __future__ import annotations

import statistics

from finetty.core.data.tokenize import IGNORE, assistant_spans, split_tools, tokenize_conversation, tokenize_text

#: Beyond this many examples the token statistics are of the first ones (the report says so).
MOST_EXAMPLES = 20000


def as_conversation(example, kind: str):
    """What training renders for one example: a conversation (message list or with tools), or text."""
    if kind == "preference":
        return example["prompt"] + [{"role": "assistant", "content": example["chosen"]}]
    if kind == "kto":
        return example["prompt"] + [{"role": "assistant", "content": example["completion"]}]
    return example


def sequences(example, kind: str) -> list:
    """Every sequence training sees for one example: a preference pair's prompt with each of its answers
    (TRL truncates each to max_length, so a long rejected answer is cut as a long chosen one is)."""
    if kind == "preference":
        return [example["prompt"] + [{"role": "assistant", "content": example[answer]}]
                for answer in ("chosen", "rejected")]
    return [as_conversation(example, kind)]


def segments(tokenizer, example, kind: str) -> list[tuple[str, bool]]:
    """The rendered example as ``(text, trained)`` pieces, in order."""
    conversation = as_conversation(example, kind)
    if isinstance(conversation, str):
        return [(conversation, True)]
    messages, tools = split_tools(conversation)
    if not getattr(tokenizer, "chat_template", None):
        return [("\n".join(f"{m['role']}: {m['content']}" for m in messages), False)]
    text, spans = assistant_spans(tokenizer, messages, tools)
    pieces, at = [], 0
    for start, end in spans:
        if start > at:
            pieces.append((text[at:start], False))
        pieces.append((text[start:end], True))
        at = end
    if at < len(text):
        pieces.append((text[at:], False))
    return pieces


def describe(found, tokenizer, max_length: int, truncation: str = "truncate", show: int = 2,
             train_on: str = "assistant") -> dict:
    """One JSON-ready report of the data (see the module's docstring); ``found`` is a ``DataResult``."""
    lengths, truncated, empty = [], 0, 0
    for example in found.examples[:MOST_EXAMPLES]:
        longest, cut = 0, False
        for number, conversation in enumerate(sequences(example, found.kind)):
            if isinstance(conversation, str):
                row = tokenize_text(tokenizer, conversation, max_length)
            else:
                row = tokenize_conversation(tokenizer, conversation, max_length, train_on=train_on)
            cut = cut or row["truncated"]
            longest = max(longest, _full_length(tokenizer, conversation) if row["truncated"]
                          else len(row["input_ids"]))
            if number == 0 and all(label == IGNORE for label in row["labels"]):
                empty += 1
        truncated += cut
        lengths.append(longest)
    skipped = {}
    if empty:
        skipped["no trained tokens left after truncation"] = empty
    if truncated and truncation == "drop":
        skipped[f"longer than max_length={max_length} (truncation: drop)"] = truncated
    examples = []
    for example in found.examples[:show]:
        pieces = segments(tokenizer, example, found.kind)
        item = {"text": "".join(text for text, _ in pieces),
                "trained": "\n".join(text for text, trained in pieces if trained),
                "segments": [{"text": text, "trained": trained} for text, trained in pieces]}
        if found.kind == "preference":
            item["rejected"] = example["rejected"]
        if found.kind == "kto":
            item["label"] = example["label"]
        examples.append(item)
    return {
        "format": found.format, "kind": found.kind, "detected": found.detected, "why": found.why,
        "columns": dict(found.columns), "carried": dict(found.carried), "mapped": dict(found.mapped),
        "records": found.records, "examples_total": len(found.examples),
        "skipped": skipped, "truncated": 0 if truncation == "drop" else truncated,
        "dropped": truncated if truncation == "drop" else 0,
        "tokens": {"min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
                   "max_length": max_length, "over": truncated, "counted": len(lengths),
                   "all": len(found.examples) <= MOST_EXAMPLES},
        "mixture": list(found.mixture), "warnings": found.warnings(), "tools": found.tools,
        "examples": examples,
    }


def _full_length(tokenizer, conversation) -> int:
    """The untruncated token count of an over-length example (what the statistics should show)."""
    if isinstance(conversation, str):
        return len(tokenizer(conversation, add_special_tokens=False)["input_ids"]) + 1
    row = tokenize_conversation(tokenizer, conversation, 10**9)
    return len(row["input_ids"])
