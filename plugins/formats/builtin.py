"""The built-in dataset formats: alpaca, sharegpt, messages, text and preference."""

from __future__ import annotations

from finetty.core.plugin_api import DataFormat, hookimpl

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "observation": "tool", "function_call": "assistant"}


def _text(record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise ValueError(f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be text, not {type(value).__name__}")
    return value


def _check_conversation(messages: list, field: str) -> list:
    if not messages:
        raise ValueError(f"field {field!r} holds no messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"field {field!r} has no assistant message to learn from")
    return messages


def _alpaca(record: dict) -> list:
    instruction = _text(record, "instruction")
    extra = _text(record, "input", required=False)
    output = _text(record, "output")
    messages = []
    if record.get("system"):
        messages.append({"role": "system", "content": _text(record, "system")})
    history = record.get("history") or []
    if not isinstance(history, list):
        raise ValueError("field 'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"field 'history' item {i} must be a [question, answer] pair of texts")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra else instruction
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return messages


def _sharegpt(record: dict) -> list:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ValueError("field 'conversations' must be a list of {from, value} turns")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise ValueError(f"field 'conversations' turn {i} must have 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"])
        if role is None:
            raise ValueError(f"field 'conversations' turn {i}: role {turn['from']!r} is not one of "
                             f"{', '.join(SHAREGPT_ROLES)}")
        if not isinstance(turn["value"], str):
            raise ValueError(f"field 'conversations' turn {i}: 'value' must be text")
        messages.append({"role": role, "content": turn["value"]})
    return _check_conversation(messages, "conversations")


def _messages(record: dict) -> list:
    turns = record.get("messages")
    if not isinstance(turns, list):
        raise ValueError("field 'messages' must be a list of {role, content} messages")
    messages = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise ValueError(f"field 'messages' item {i} must have 'role' and 'content'")
        if turn["role"] not in ROLES:
            raise ValueError(f"field 'messages' item {i}: role {turn['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(turn["content"], str):
            raise ValueError(f"field 'messages' item {i}: 'content' must be text")
        messages.append({"role": turn["role"], "content": turn["content"]})
    return _check_conversation(messages, "messages")


def _text_record(record: dict) -> str:
    text = _text(record, "text")
    if not text.strip():
        raise ValueError("field 'text' is empty")
    return text


def _answer(record: dict, key: str) -> str:
    value = record.get(key)
    if isinstance(value, list):  # a conversation: take the last assistant message
        msgs = _messages({"messages": value})
        return [m for m in msgs if m["role"] == "assistant"][-1]["content"]
    return _text(record, key)


def _preference(record: dict) -> dict:
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        prompt_messages = [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        prompt_messages = [dict(role=m.get("role"), content=m.get("content")) for m in prompt
                           if isinstance(m, dict)]
        if len(prompt_messages) != len(prompt) or any(m["role"] not in ROLES for m in prompt_messages):
            raise ValueError("field 'prompt' must be text or a list of {role, content} messages")
    else:
        raise ValueError("field 'prompt' is missing" if prompt is None else "field 'prompt' must be text")
    if record.get("system"):
        prompt_messages.insert(0, {"role": "system", "content": _text(record, "system")})
    return {"prompt": prompt_messages, "chosen": _answer(record, "chosen"), "rejected": _answer(record, "rejected")}


FORMATS = (
    DataFormat("alpaca", "instruction / input / output records (optional system, history)", "conversation",
               detect=lambda r: "instruction" in r and "output" in r, convert=_alpaca,
               fields="instruction, input, output"),
    DataFormat("sharegpt", "conversations: a list of {from, value} turns", "conversation",
               detect=lambda r: "conversations" in r, convert=_sharegpt, fields="conversations"),
    DataFormat("messages", "messages: a list of {role, content} messages (OpenAI style)", "conversation",
               detect=lambda r: "messages" in r, convert=_messages, fields="messages"),
    DataFormat("preference", "prompt / chosen / rejected pairs for preference objectives", "preference",
               detect=lambda r: "chosen" in r and "rejected" in r, convert=_preference,
               fields="prompt, chosen, rejected"),
    DataFormat("text", "plain text records in a 'text' field", "text",
               detect=lambda r: "text" in r, convert=_text_record, fields="text"),
)


@hookimpl
def register_data_formats(register):
    for data_format in FORMATS:
        register(data_format)
