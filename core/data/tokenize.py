"""Conversations to token ids and labels, with loss on the assistant's tokens.

The chat template renders the whole conversation once; each assistant reply's
character span is found by rendering the conversation up to that reply (with
and without it), and tokens inside those spans carry labels. This works with
any template that renders prefixes stably, which is how chat templates are
written; when one does not, the conversation trains on every token and the
caller is told.
"""

from __future__ import annotations

IGNORE = -100


class TemplateUnstable(Exception):
    """The chat template does not render conversation prefixes as prefixes."""


def _render(tokenizer, messages, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer, messages: list) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant reply in it."""
    text = _render(tokenizer, messages, False)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True)
        through = _render(tokenizer, messages[: i + 1], False)
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise TemplateUnstable
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(tokenizer, messages: list, max_length: int, train_on: str = "assistant") -> dict:
    """``{"input_ids", "labels", "truncated", "fallback"}`` for one conversation.

    ``train_on="all"`` puts loss on every token. ``truncated`` says the
    conversation was cut to ``max_length``; ``fallback`` that the template
    forced training on every token.
    """
    fallback = False
    try:
        text, spans = assistant_spans(tokenizer, messages)
    except TemplateUnstable:
        text, spans, fallback = _render(tokenizer, messages, False), [], True
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    if train_on == "all" or fallback:
        labels = list(ids)
    else:
        labels = [tok if any(s <= start < e for s, e in spans) else IGNORE
                  for tok, (start, _) in zip(ids, encoded["offset_mapping"])]
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": labels[:max_length], "truncated": truncated,
            "fallback": fallback}


def tokenize_text(tokenizer, text: str, max_length: int) -> dict:
    """Plain text, loss on every token, ending with the end-of-sequence token."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    truncated = len(ids) > max_length
    return {"input_ids": ids[:max_length], "labels": list(ids[:max_length]), "truncated": truncated,
            "fallback": False}
