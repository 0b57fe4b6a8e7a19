"""Model work in a child process, spoken to in JSON lines: how the app runs anything on a model.

The app never imports torch (README): chat, eval and export run here, in
``python -m finetty.core.results.session``, and stream their results back.

The protocol, one JSON object a line:

- a request on stdin: ``{"id": 7, "op": "generate", ...parameters}``;
- any number of replies on stdout carrying the request's id, for example
  ``{"id": 7, "type": "token", "text": "Hel"}`` or ``{"id": 7, "type": "progress", ...}``;
- then exactly one last reply: ``{"id": 7, "type": "done", "result": {...}}`` or
  ``{"id": 7, "type": "error", "error": "one line for a person"}``;
- ``{"op": "cancel", "target": 7}`` asks request 7 to end early (a generation
  stops and says so in its result; an eval ends with an error "cancelled").

Requests run concurrently, one thread each (the base and the tuned model answer
side by side). Closing stdin ends the session. The protocol owns the real
stdout: anything a library prints goes to stderr instead, so a stray ``print``
can never corrupt a reply. ``serve(operations)`` is the loop itself, so another
child (the New run screen's dataset preview) speaks the same protocol with its
own operations.
"""

from __future__ import annotations

import difflib
import gc
import json
import os
import sys
import threading
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, TextIO

from finetty.core.errors import InputError

MODULE = "finetty.core.results.session"
WORST = 5


class Cancelled(Exception):
    """Raised inside an operation whose request was cancelled."""


class Reply:
    """The channel of one request: ``send`` intermediate replies; ``cancelled`` is set by a ``cancel`` request."""

    def __init__(self, request_id: Any, write: Callable[[dict], None]):
        self.id = request_id
        self._write = write
        self.cancelled = threading.Event()
        self._on_cancel: list[Callable[[], None]] = []

    def send(self, type: str, **fields: Any) -> None:
        self._write({"id": self.id, "type": type, **fields})

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the request is cancelled (at once, if it already was)."""
        self._on_cancel.append(callback)
        if self.cancelled.is_set():
            callback()

    def cancel(self) -> None:
        self.cancelled.set()
        for callback in list(self._on_cancel):
            callback()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled()


Operation = Callable[[dict, Reply], Any]
"""``operation(params, reply)``: the value it returns is the ``done`` reply's ``result``."""


def describe(exc: BaseException) -> str:
    """One line for a person: an ``InputError`` is already written for one; anything else gets its type."""
    if isinstance(exc, InputError):
        return str(exc)
    if isinstance(exc, Cancelled):
        return "cancelled"
    return f"{type(exc).__name__}: {exc}"


def serve(operations: dict[str, Operation], stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Answer requests from ``stdin`` until it closes (see the module docstring)."""
    if stdout is None:
        # the protocol keeps the real stdout; fd 1 (print, C libraries) goes to stderr from here on
        stdout = os.fdopen(os.dup(1), "w", encoding="utf-8")
        os.dup2(2, 1)
        sys.stdout = sys.stderr
    stdin = stdin or sys.stdin
    lock = threading.Lock()
    open_requests: dict[Any, Reply] = {}

    def write(message: dict) -> None:
        line = json.dumps(message, ensure_ascii=False, default=str)
        with lock:
            stdout.write(line + "\n")
            stdout.flush()

    def run(operation: Operation, params: dict, reply: Reply) -> None:
        try:
            result = operation(params, reply)
        except BaseException as exc:  # every request ends with exactly one last reply
            if not isinstance(exc, (InputError, Cancelled)):
                traceback.print_exc(file=sys.stderr)
            reply.send("error", error=describe(exc))
        else:
            reply.send("done", result=result)
        finally:
            open_requests.pop(reply.id, None)

    threads = []
    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, KeyError, TypeError):
            write({"id": None, "type": "error", "error": f"not a request: {line.strip()[:200]!r}"})
            continue
        if op == "cancel":
            target = open_requests.get(request.get("target"))
            if target is not None:
                target.cancel()
            continue
        reply = Reply(request.get("id"), write)
        operation = operations.get(op)
        if operation is None:
            reply.send("error", error=f"unknown operation {op!r}; known: {', '.join(sorted(operations))}")
            continue
        open_requests[reply.id] = reply
        params = {k: v for k, v in request.items() if k not in ("id", "op")}
        thread = threading.Thread(target=run, args=(operation, params, reply), name=f"session-{op}", daemon=True)
        thread.start()
        threads.append(thread)
    for reply in list(open_requests.values()):  # nobody is left to read the answers
        reply.cancel()
    for thread in threads:
        thread.join(timeout=5)
    return 0


# -- the model operations --------------------------------------------------------------------------

def worst_examples(samples: list[dict], count: int = WORST) -> list[dict]:
    """The eval samples the tuned model got most wrong: wrong answers first, least like the reference first.

    Likeness is ``difflib``'s ratio of the normalized texts, cheap enough to
    compute for a report read from disk as well as for a fresh one."""
    from finetty.core.results.evaluate import normalize

    def likeness(sample: dict) -> float:
        return difflib.SequenceMatcher(None, normalize(str(sample.get("tuned") or "")),
                                       normalize(str(sample.get("reference") or ""))).ratio()

    ranked = sorted(samples, key=lambda s: (bool(s.get("tuned_exact")), likeness(s)))
    return [{**sample, "likeness": round(likeness(sample), 3)} for sample in ranked[:count]]


class ModelSession:
    """The models one app screen works with (``tuned`` and ``base``), and the operations on them."""

    def __init__(self):
        self.models: dict[str, Any] = {}
        self.loading = threading.Lock()

    def operations(self) -> dict[str, Operation]:
        return {"load": self.load, "generate": self.generate, "eval": self.eval, "export": self.export}

    def load(self, params: dict, reply: Reply) -> dict:
        """``{which: tuned|base, run_dir, checkpoint}`` -> ``{label, notes, model_id}``; replaces a loaded one."""
        from finetty.core.results import inference

        which, run_dir = params.get("which", "tuned"), Path(params["run_dir"])
        # one load at a time: two threads importing transformers at once can see half-initialized modules,
        # and the base asked for while the tuned model loads gets the tuned model's tokenizer (its template)
        with self.loading:
            if self.models.pop(which, None) is not None:  # never two copies of one model in memory
                gc.collect()
            tuned = self.models.get("tuned")
            if which == "tuned":
                loaded = inference.load(run_dir, params.get("checkpoint"))
            else:
                loaded = inference.load_base(run_dir, tokenizer=tuned.tokenizer if tuned else None)
            reply.check()
            self.models[which] = loaded
        return {"label": loaded.label, "notes": loaded.notes, "model_id": loaded.model_id}

    def generate(self, params: dict, reply: Reply) -> dict:
        """``{which, messages, settings}``: ``token`` replies as the answer streams, then the whole answer."""
        from finetty.core.results import inference

        which = params.get("which", "tuned")
        loaded = self.models.get(which)
        if loaded is None:
            raise InputError(None, f"the {which} model", "is not loaded", "load it first")
        settings = inference.GenerationSettings(**(params.get("settings") or {}))
        generation = inference.Generation(loaded, list(params["messages"]), settings)
        reply.on_cancel(generation.stop)
        for piece in generation:
            reply.send("token", text=piece)
        reason = "stopped" if generation.stopped.is_set() else (generation.finish_reason or "stop")
        return {"text": generation.text, "reason": reason, "prompt_tokens": generation.prompt_tokens,
                "completion_tokens": generation.completion_tokens}

    def eval(self, params: dict, reply: Reply) -> dict:
        """What ``finetty eval`` does (score base and tuned, write the report, add the event), with progress."""
        from finetty.core.results import evaluate

        run_dir = Path(params["run_dir"])

        def progress(label: str, done: int, total: int) -> None:
            reply.check()
            reply.send("progress", model=label, done=done, total=total)

        with self.loading:  # (one model-loading job at a time, see load)
            report = evaluate.evaluate(run_dir, data=params.get("data"), checkpoint=params.get("checkpoint"),
                                       max_new_tokens=params.get("max_new_tokens"), limit=params.get("limit"),
                                       progress=progress)
        json_path, md_path = evaluate.write_report(run_dir, report)
        recorded = evaluate.record_event(run_dir, report, json_path)
        return {"report": report.to_dict(), "json": str(json_path), "markdown": str(md_path), "recorded": recorded,
                "worst": worst_examples(report.samples)}

    def export(self, params: dict, reply: Reply) -> dict:
        """``{run_dir, out, checkpoint, ...}``: ``finetty export``'s own function; its keyword options pass through.
        ``gguf: true`` (with ``quant``) is ``finetty export --gguf``'s function instead, and its result carries the
        commands that run the file (``how_to_run``: the CLI prints the same)."""
        from finetty.core.results import export, gguf

        options = {k: v for k, v in params.items() if k not in ("run_dir", "out", "gguf")}
        write = gguf.export_gguf if params.get("gguf") else export.export
        with self.loading:  # (one model-loading job at a time, see load)
            reply.send("progress", stage="exporting")
            result = write(Path(params["run_dir"]), Path(params["out"]), **options)
        found = json.loads(json.dumps(asdict(result), default=str))  # (Paths, nested ones too, as strings)
        if params.get("gguf"):
            found["how_to_run"] = gguf.how_to_run(result)
        return found


def main() -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as the CLI's commands on a result: nothing downloads
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return serve(ModelSession().operations())


if __name__ == "__main__":
    sys.exit(main())
