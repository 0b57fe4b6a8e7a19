"""The New run screen's dataset preview, computed in a child process.

``python -m finetty.tui.preview`` reads a JSON request on stdin and writes one
JSON answer on stdout: the detected format, the first records as the model's
chat template renders them, and a token-length summary. It runs in its own
process because it loads a tokenizer (transformers): the app's process never
imports it, and an 8-second import never competes with the app for the GIL.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

SAMPLES = 3
MOST_RECORDS = 20000


def render(tokenizer, kind: str, example) -> str:
    """One normalized example as the model will see it."""
    def chat(messages: list) -> str:
        if getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(messages, tokenize=False)
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    if kind == "conversation":
        return chat(example)
    if kind == "preference":
        prompt = example["prompt"]
        return (chat(prompt + [{"role": "assistant", "content": example["chosen"]}])
                + "\n[rejected] " + str(example["rejected"]))
    return str(example)


def compute(request: dict) -> dict:
    from finetty.core.data import reading as data
    from finetty.core.data import demo
    from finetty.core.model import loading as models
    from finetty.core.errors import InputError
    from finetty.core.plugin.registry import load_plugins

    registry = load_plugins()
    base = Path(request.get("base_dir") or ".")
    objective = registry.objectives.get(request.get("objective") or "sft")
    accepts = objective.accepts if objective else ("conversation", "preference", "text")
    max_length = int(request.get("max_length") or 1024)
    try:
        source = data.resolve_source(request["dataset"], base)
        summary = None
        if not source.hub_id:
            summary = data.validate_records(source, request.get("format") or "auto", registry.data_formats, accepts,
                                            objective.name if objective else "?", request.get("dataset_options"))
        examples, data_format = data.load_records(source, request.get("format") or "auto", registry.data_formats,
                                                  request.get("dataset_options"))
        model_path = models.resolve(request["model"], base)
        if model_path is None:
            model_path = demo.ensure_demo()
        tokenizer = models.load_tokenizer(model_path, bool(request.get("trust_remote_code")))
    except InputError as exc:
        return {"error": str(exc)}
    except Exception as exc:  # a preview never takes the app down; the launch check gives the full story
        return {"error": f"{type(exc).__name__}: {exc}"}
    lengths = []
    for example in examples[:MOST_RECORDS]:
        text = render(tokenizer, data_format.kind, example)
        lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    return {
        "format": data_format.name,
        "kind": data_format.kind,
        "detected": (request.get("format") or "auto") == "auto",
        "records": summary.records if summary else len(examples),
        "samples": [render(tokenizer, data_format.kind, e) for e in examples[:SAMPLES]],
        "lengths": {
            "count": len(lengths), "min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
            "over": sum(1 for n in lengths if n > max_length), "max_length": max_length,
            "all": len(examples) <= MOST_RECORDS,
        },
    }


def main() -> int:
    request = json.loads(sys.stdin.read())
    print(json.dumps(compute(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
