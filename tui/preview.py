"""The New run screen's dataset preview, computed in a child process.

``python -m finetty.tui.preview`` reads a JSON request on stdin and writes one
JSON answer on stdout: the report ``finetty data`` prints, from the same code
(:func:`finetty.core.data.report.describe`): the format, the columns' fates,
the first records as the chat template renders them with the trained part
marked, and a token-length summary. It runs in its own
process because it loads a tokenizer (transformers): the app's process never
imports it, and an 8-second import never competes with the app for the GIL.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SAMPLES = 3


def mark(example: dict) -> str:
    """An example's rendered text with its trained part in ``[[...]]``, as ``finetty data`` prints it piped."""
    return "".join(f"[[{s['text']}]]" if s["trained"] else s["text"] for s in example["segments"])


def compute(request: dict) -> dict:
    """The report of :func:`finetty.core.data.report.describe` (what ``finetty data`` prints) for the form's data.

    Keys the screen reads: ``error`` (and ``refused`` when the data cannot
    train as asked, the launch's own refusal), ``format``, ``detected``, ``records``, ``lengths``
    and ``samples`` (rendered, trained part in brackets); ``report`` is the
    whole report, columns, warnings and mixture included.
    """
    from finetty.core.data import demo
    from finetty.core.data import reading as data
    from finetty.core.data.report import describe
    from finetty.core.errors import InputError
    from finetty.core.model import loading as models
    from finetty.core.plugin.registry import load_plugins

    registry = load_plugins()
    base = Path(request.get("base_dir") or ".")
    objective = registry.objectives.get(request.get("objective") or "sft")
    accepts = objective.accepts if objective else tuple(k for f in registry.data_formats.values() for k in [f.kind])
    max_length = int(request.get("max_length") or 1024)
    try:
        found = data.read_data(data.parse_dataset(request["dataset"], base), request.get("format") or "auto",
                               registry.data_formats, accepts, objective.name if objective else "?",
                               request.get("dataset_options") or {}, request.get("data_options") or {},
                               {n: o.accepts for n, o in registry.objectives.items()}, hub=True)
        model_path = models.resolve(request["model"], base)
        if model_path is None:
            model_path = demo.ensure_demo()
        tokenizer = models.load_tokenizer(model_path, bool(request.get("trust_remote_code")))
        report = describe(found, tokenizer, max_length, request.get("truncation") or "truncate", SAMPLES)
    except InputError as exc:  # the refusal a launch would give: the form's status shows it too
        return {"error": str(exc), "refused": True}
    except Exception as exc:  # a preview never takes the app down; the launch check gives the full story
        return {"error": f"{type(exc).__name__}: {exc}"}
    tokens = report["tokens"]
    return {
        "format": report["format"], "kind": report["kind"], "detected": report["detected"],
        "records": report["records"], "samples": [mark(e) for e in report["examples"]],
        "lengths": {"count": tokens["counted"], "min": tokens["min"], "median": tokens["median"],
                    "max": tokens["max"], "over": tokens["over"], "max_length": max_length, "all": tokens["all"]},
        "report": report,
    }


def main() -> int:
    request = json.loads(sys.stdin.read())
    print(json.dumps(compute(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
