"""The built-in dataset formats: preference, kto, alpaca, sharegpt, messages and text.

Each reads the column names LLaMA-Factory's ``dataset_info.json`` maps to
(finetty's data layer renames a file's own columns and role tags to these
before ``convert`` sees a record), so one format serves both vocabularies.

A conversation with tool schemas converts to ``{"messages": [...], "tools":
[...]}``; without, to the plain message list. Assistant tool calls are
``tool_calls`` on an assistant message (OpenAI's shape), tool results are
``tool`` messages: the chat template renders both, and the loss covers the
calls, not the results. Formats are listed preference and kto first, so a
record that carries ``chosen``/``rejected`` or a KTO label reads as such
rather than as the plain conversation inside it.
"""

from __future__ import annotations

import json

from finetty.core.plugin_api import DataFormat, hookimpl

ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant", "tool": "tool", "observation": "tool", "function_call": "assistant"}
KTO_LABELS = ("label", "kto_tag")


def _text(record: dict, key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None:
        if required:
            raise ValueError(f"field {key!r} is missing")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be text, not {type(value).__name__}")
    return value


def _tools(record: dict) -> list | None:
    """The ``tools`` column (a JSON list of function schemas, as text or as a list) as template tool specs."""
    value = record.get("tools")
    if value in (None, "", []):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"field 'tools' is not valid JSON: {exc.msg}") from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ValueError("field 'tools' must be a JSON list of function schemas")
    specs = []
    for i, tool in enumerate(value):
        schema = tool.get("function") if tool.get("type") == "function" else tool
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise ValueError(f"field 'tools' item {i} has no function 'name'")
        specs.append({"type": "function", "function": schema})
    return specs


def _calls(value, where: str) -> list:
    """A ``function_call`` turn's value (one ``{name, arguments}`` object or a list, as JSON text) as tool calls."""
    try:
        found = json.loads(value) if isinstance(value, str) else value
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: a function_call is JSON {{\"name\", \"arguments\"}}, not valid JSON "
                         f"({exc.msg})") from None
    found = found if isinstance(found, list) else [found]
    calls = []
    for call in found:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ValueError(f"{where}: a function_call needs a 'name' and 'arguments'")
        arguments = call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass
        calls.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return calls


def _with_system(record: dict, messages: list) -> list:
    system = _text(record, "system", required=False)
    if system and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _conversation(record: dict, messages: list, field: str):
    if not messages:
        raise ValueError(f"field {field!r} holds no messages")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"field {field!r} has no assistant message to learn from")
    messages = _with_system(record, messages)
    tools = _tools(record)
    return {"messages": messages, "tools": tools} if tools else messages


def _alpaca_prompt(record: dict) -> list:
    instruction = _text(record, "instruction")
    extra = _text(record, "input", required=False)
    messages = []
    history = record.get("history") or []
    if not isinstance(history, list):
        raise ValueError("field 'history' must be a list of [question, answer] pairs")
    for i, pair in enumerate(history):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError(f"field 'history' item {i} must be a [question, answer] pair of texts")
        messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages.append({"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction})
    return messages


def _alpaca(record: dict):
    output = _text(record, "output")
    return _conversation(record, _alpaca_prompt(record) + [{"role": "assistant", "content": output}], "output")


def _turn(turn, i: int, field: str) -> dict:
    """One sharegpt ``{from, value}`` turn as a message."""
    if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
        raise ValueError(f"field {field!r} turn {i} must have 'from' and 'value'")
    role = SHAREGPT_ROLES.get(turn["from"])
    if role is None:
        raise ValueError(f"field {field!r} turn {i}: role {turn['from']!r} is not one of {', '.join(SHAREGPT_ROLES)}")
    if turn["from"] == "function_call":
        return {"role": "assistant", "content": "",
                "tool_calls": _calls(turn["value"], f"field {field!r} turn {i}")}
    if not isinstance(turn["value"], str):
        raise ValueError(f"field {field!r} turn {i}: 'value' must be text")
    return {"role": role, "content": turn["value"]}


def _sharegpt_turns(record: dict) -> list:
    turns = record.get("conversations")
    if not isinstance(turns, list):
        raise ValueError("field 'conversations' must be a list of {from, value} turns")
    return [_turn(turn, i, "conversations") for i, turn in enumerate(turns)]


def _sharegpt(record: dict):
    return _conversation(record, _sharegpt_turns(record), "conversations")


def _message(turn, i: int, field: str) -> dict:
    """One OpenAI-style message, with ``tool_calls`` on an assistant message and ``tool`` results."""
    if not isinstance(turn, dict) or "role" not in turn or ("content" not in turn and "tool_calls" not in turn):
        raise ValueError(f"field {field!r} item {i} must have 'role' and 'content'")
    if turn["role"] not in ROLES:
        raise ValueError(f"field {field!r} item {i}: role {turn['role']!r} is not one of {', '.join(ROLES)}")
    content = turn.get("content")
    content = "" if content is None and turn.get("tool_calls") else content
    if not isinstance(content, str):
        raise ValueError(f"field {field!r} item {i}: 'content' must be text")
    message = {"role": turn["role"], "content": content}
    if turn.get("tool_calls"):
        if turn["role"] != "assistant" or not isinstance(turn["tool_calls"], list):
            raise ValueError(f"field {field!r} item {i}: 'tool_calls' is a list on an assistant message")
        message["tool_calls"] = [call for raw in turn["tool_calls"]
                                 for call in _calls(raw.get("function", raw) if isinstance(raw, dict) else raw,
                                                    f"field {field!r} item {i}")]
    for key in ("tool_call_id", "name"):
        if turn["role"] == "tool" and isinstance(turn.get(key), str):
            message[key] = turn[key]
    return message


def _message_list(record: dict) -> list:
    turns = record.get("messages")
    if not isinstance(turns, list):
        raise ValueError("field 'messages' must be a list of {role, content} messages")
    return [_message(turn, i, "messages") for i, turn in enumerate(turns)]


def _messages(record: dict):
    return _conversation(record, _message_list(record), "messages")


def _text_record(record: dict) -> str:
    text = _text(record, "text")
    if not text.strip():
        raise ValueError("field 'text' is empty")
    return text


def _answer(record: dict, key: str) -> str:
    """A preference answer: text, one message (``{from, value}`` or ``{role, content}``), or a conversation."""
    value = record.get(key)
    if isinstance(value, dict):
        message = _turn(value, 0, key) if "from" in value else _message(value, 0, key)
        if message["role"] != "assistant":
            raise ValueError(f"field {key!r} must be the assistant's message, not the {message['role']}'s")
        return message["content"]
    if isinstance(value, list):  # a conversation: take the last assistant message
        msgs = [_message(m, i, key) for i, m in enumerate(value)]
        answers = [m for m in msgs if m["role"] == "assistant"]
        if not answers:
            raise ValueError(f"field {key!r} has no assistant message")
        return answers[-1]["content"]
    return _text(record, key)


def _prompt(record: dict) -> list:
    """The prompt of a preference or KTO record, in any of the layouts they are stored in."""
    if "conversations" in record:
        messages = _sharegpt_turns(record)
    elif "messages" in record:
        messages = _message_list(record)
    elif "instruction" in record:
        messages = _alpaca_prompt(record)
    else:
        prompt = record.get("prompt")
        if isinstance(prompt, str):
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, list):
            messages = [_message(m, i, "prompt") for i, m in enumerate(prompt)]
        else:
            raise ValueError("field 'prompt' is missing" if prompt is None else "field 'prompt' must be text")
    if not messages:
        raise ValueError("the prompt holds no messages")
    return _with_system(record, messages)


def _preference(record: dict) -> dict:
    return {"prompt": _prompt(record), "chosen": _answer(record, "chosen"), "rejected": _answer(record, "rejected")}


def _kto(record: dict) -> dict:
    """``{prompt, completion, label}``: the last assistant reply is the completion a label judges."""
    key = next((k for k in KTO_LABELS if k in record), None)
    if key is None:
        raise ValueError("field 'label' (or 'kto_tag') is missing")
    label = record[key]
    if isinstance(label, str) and label.lower() in ("true", "false"):
        label = label.lower() == "true"
    if not isinstance(label, bool):
        raise ValueError(f"field {key!r} must be true (desirable) or false (undesirable), not {label!r}")
    if "completion" in record or "output" in record:
        prompt = _prompt(record)
        completion = _text(record, "completion" if "completion" in record else "output")
    else:
        messages = _prompt(record)
        if messages[-1]["role"] != "assistant":
            raise ValueError("a KTO conversation must end with the assistant's answer that the label judges")
        prompt, completion = messages[:-1], messages[-1]["content"]
    return {"prompt": prompt, "completion": completion, "label": label}


FORMATS = (
    DataFormat("preference", "prompt / chosen / rejected pairs for preference objectives (also sharegpt, "
               "messages or alpaca prompts with chosen/rejected)", "preference",
               detect=lambda r: "chosen" in r and "rejected" in r, convert=_preference,
               fields="prompt, chosen, rejected"),
    DataFormat("kto", "answers labelled desirable or undesirable (label or kto_tag) for kto", "kto",
               detect=lambda r: any(k in r for k in KTO_LABELS) and "text" not in r, convert=_kto,
               fields="prompt, completion, label"),
    DataFormat("alpaca", "instruction / input / output records (optional system, history)", "conversation",
               detect=lambda r: "instruction" in r and "output" in r, convert=_alpaca,
               fields="instruction, input, output"),
    DataFormat("sharegpt", "conversations: a list of {from, value} turns (optional system, tools)", "conversation",
               detect=lambda r: "conversations" in r, convert=_sharegpt, fields="conversations"),
    DataFormat("messages", "messages: a list of {role, content} messages (OpenAI style, tool_calls)", "conversation",
               detect=lambda r: "messages" in r, convert=_messages, fields="messages"),
    DataFormat("text", "plain text records in a 'text' field", "text",
               detect=lambda r: "text" in r, convert=_text_record, fields="text"),
)


@hookimpl
def register_data_formats(register):
    for data_format in FORMATS:
        register(data_format)
