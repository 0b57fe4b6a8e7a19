"""Conversations to token ids and labels, with loss on the assistant's tokens.

The chat template renders the whole conversation once; each assistant reply's
character span is found by rendering the conversation up to that reply (with
and without it), and tokens inside those spans carry labels. This works with
any template that renders prefixes stably, which is how chat templates are
written; when one does not, the conversation trains on every token and the
caller is told.

A conversation with tool schemas is ``{"messages", "tools"}``: the schemas go
to the template as ``tools=`` on every render, assistant tool calls are
assistant messages (so they carry loss) and tool results are ``tool``
messages (so they do not).
"""

from __future__ import annotations

IGNORE = -100


class TemplateUnstable(Exception):
    """The chat template does not render conversation prefixes as prefixes."""


PROBE_TOOL = "finetty_schema_probe"


class TemplateCannotRenderTools(ValueError):
    """The chat template drops tool schemas or tool calls: training on it would teach calls without schemas."""


def split_tools(conversation) -> tuple[list, list | None]:
    """``(messages, tools)`` of a normalized conversation (a message list, or ``{"messages", "tools"}``)."""
    if isinstance(conversation, dict):
        return conversation["messages"], conversation.get("tools") or None
    return conversation, None


def _render(tokenizer, messages, generation_prompt: bool, tools: list | None = None) -> str:
    extra = {"tools": tools} if tools else {}
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt, **extra)


def check_renders_tools(tokenizer) -> None:
    """Raise :class:`TemplateCannotRenderTools` unless the template shows a tool's schema and a call to it."""
    tools = [{"type": "function", "function": {"name": PROBE_TOOL, "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    messages = [{"role": "user", "content": "call it"},
                {"role": "assistant", "content": "",
                 "tool_calls": [{"type": "function", "function": {"name": "finetty_call_probe", "arguments": {}}}]}]
    try:
        text = _render(tokenizer, messages, False, tools)
    except Exception as exc:
        raise TemplateCannotRenderTools(f"the chat template fails on tool calls ({exc})") from None
    missing = [what for what, name in (("tool schemas", PROBE_TOOL), ("tool calls", "finetty_call_probe"))
               if name not in text]
    if missing:
        raise TemplateCannotRenderTools(f"the chat template does not render {' or '.join(missing)}")


def template_mentions_tools(template: str | None) -> bool:
    """A cheap reading of a template's source, before any tokenizer is loaded: does it use tools and tool calls?"""
    return bool(template) and "tools" in template and "tool_call" in template


def chat_template_of(folder) -> str | None:
    """A model folder's chat template source (``chat_template.jinja`` or ``tokenizer_config.json``), if any."""
    import json
    from pathlib import Path

    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        template = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template")
    except (OSError, ValueError):
        return None
    if isinstance(template, list):  # named templates: [{"name", "template"}]
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return template if isinstance(template, str) else None


def assistant_spans(tokenizer, messages: list, tools: list | None = None) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of every assistant reply (text or tool calls) in it."""
    text = _render(tokenizer, messages, False, tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], True, tools)
        through = _render(tokenizer, messages[: i + 1], False, tools)
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise TemplateUnstable
        spans.append((len(before), len(through)))
    return text, spans


def tokenize_conversation(tokenizer, conversation, max_length: int, train_on: str = "assistant") -> dict:
    """``{"input_ids", "labels", "truncated", "fallback"}`` for one conversation.

    ``train_on="all"`` puts loss on every token. ``truncated`` says the
    conversation was cut to ``max_length``; ``fallback`` that the template
    forced training on every token.
    """
    messages, tools = split_tools(conversation)
    fallback = False
    try:
        text, spans = assistant_spans(tokenizer, messages, tools)
    except TemplateUnstable:
        text, spans, fallback = _render(tokenizer, messages, False, tools), [], True
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


def tokenize_examples(examples: list, tokenizer, max_length: int, truncation: str, train_on: str,
                      report) -> list[dict]:
    """Tokenize normalized examples; over-length ones are truncated or dropped per ``truncation``."""
    rows, truncated, dropped, fallback, empty = [], 0, 0, 0, 0
    if any(isinstance(e, dict) and e.get("tools") for e in examples):
        check_renders_tools(tokenizer)
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
