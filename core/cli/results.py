"""Commands on a run's result: ``chat``, ``eval``, ``export`` and ``serve``.

Nothing heavy is imported at module level (the CLI imports this at start-up);
models load inside the commands.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from finetty.core import paths
from finetty.core.run import rundir
from finetty.core.errors import InputError
from finetty.core.text import as_markup, clean

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not at least 1")
    return value


def _add_run(parser, checkpoint: bool = True) -> None:
    parser.add_argument("run", help="a run id or a run directory")
    if checkpoint:
        parser.add_argument("--checkpoint", metavar="STEP", default=None,
                            help="a complete checkpoint (40, step-000040, latest) instead of final/")


def _add_generation(parser, max_new_tokens: int = 256) -> None:
    parser.add_argument("--temperature", type=float, default=None,
                        help="0 = greedy; above 0 samples (default: the model's generation config)")
    parser.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold, 0-1")
    parser.add_argument("--max-new-tokens", type=_positive_int, default=max_new_tokens,
                        help=f"longest answer in tokens (default {max_new_tokens})")
    parser.add_argument("--repetition-penalty", type=float, default=None, help="above 1 discourages repeats")
    parser.add_argument("--system", default=None, metavar="TEXT", help="a system prompt")


def _settings(args):
    from finetty.core.results.inference import GenerationSettings

    if args.temperature is not None and args.temperature < 0:
        raise InputError("--temperature", str(args.temperature), "is negative", "0 (greedy) or more")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise InputError("--top-p", str(args.top_p), "is not in (0, 1]", "for example 0.9")
    if args.repetition_penalty is not None and args.repetition_penalty <= 0:
        raise InputError("--repetition-penalty", str(args.repetition_penalty), "is not positive",
                         "1 is neutral; 1.1 discourages repeats")
    return GenerationSettings(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                              repetition_penalty=args.repetition_penalty, system_prompt=args.system)


def _run(args) -> Path:
    return rundir.find(args.run, paths.runs_dir(args.runs_dir))


def _quiet_libraries() -> None:
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    for name in ("transformers", "peft", "bitsandbytes", "accelerate"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _notes(loaded) -> None:
    for note in loaded.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)


# -- chat ------------------------------------------------------------------------------------------

def _stream_answer(generation) -> str:
    """Print an answer as it streams; Ctrl-C stops this answer only."""
    try:
        for piece in generation:
            sys.stdout.write(clean(piece))  # what a model writes is data: no escape reaches the terminal
            sys.stdout.flush()
    except KeyboardInterrupt:
        generation.stop()
        sys.stdout.write(" [stopped]")
    sys.stdout.write("\n")
    sys.stdout.flush()
    return generation.text


def cmd_chat(args) -> int:
    from finetty.core.results import inference

    run_dir = _run(args)
    settings = _settings(args)
    inference.resolve_target(run_dir, args.checkpoint)  # a bad --checkpoint fails before anything loads
    _quiet_libraries()
    tuned = inference.load(run_dir, args.checkpoint)
    _notes(tuned)
    models = [tuned]
    if args.compare:
        models.insert(0, inference.load_base(run_dir, tokenizer=tuned.tokenizer))
    histories: dict[str, list[dict]] = {m.label: [] for m in models}

    def ask(text: str) -> None:
        for loaded in models:
            history = histories[loaded.label]
            history.append({"role": "user", "content": text})
            if len(models) > 1:
                console.print(f"[bold]{as_markup(loaded.label)}:[/] ", end="")
            reply = _stream_answer(inference.Generation(loaded, history, settings))
            history.append({"role": "assistant", "content": reply})

    if args.prompt is not None:
        ask(args.prompt)
        return 0
    names = " and ".join(m.label for m in models)
    err.print(f"chatting with run [bold]{as_markup(run_dir.name)}[/] ({as_markup(names)}); {settings.describe()}. "
              "/clear forgets the conversation, /exit (or Ctrl-D) leaves, Ctrl-C stops an answer.")
    while True:
        try:
            text = input("you> ")
        except (EOFError, KeyboardInterrupt):
            sys.stdout.write("\n")
            return 0
        command = text.strip()
        if not command:
            continue
        if command in ("/exit", "/quit"):
            return 0
        if command == "/clear":
            for history in histories.values():
                history.clear()
            err.print("conversation cleared")
            continue
        ask(text)


# -- eval ------------------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    from finetty.core.results import evaluate
    from finetty.core.results import inference

    run_dir = _run(args)
    inference.resolve_target(run_dir, args.checkpoint)
    _quiet_libraries()

    def progress(label: str, done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            err.print(f"  {label}: {done}/{total} answered")

    report = evaluate.evaluate(run_dir, data=args.data, checkpoint=args.checkpoint,
                               max_new_tokens=args.max_new_tokens, limit=args.limit, progress=progress,
                               batch_size=args.batch_size)
    json_path, md_path = evaluate.write_report(run_dir, report)
    table = Table("metric", "base", f"tuned ({report.checkpoint})", box=None, pad_edge=False, padding=(0, 2))
    for name in evaluate.METRICS:
        table.add_row(name.replace("_", " "), evaluate.fmt(name, report.base.get(name)),
                      evaluate.fmt(name, report.tuned.get(name)))
    console.print(f"run [bold]{as_markup(report.run)}[/], {report.examples} examples from {as_markup(report.data)}")
    console.print(table)
    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    console.print(f"report: {as_markup(md_path)} (and {as_markup(json_path.name)})")
    if not evaluate.record_event(run_dir, report, json_path):
        err.print("[yellow]note:[/] a worker is training this run, so no eval event was added to its "
                  "events.jsonl (the worker is its only writer); the report is written")
    return 0


# -- export ----------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    from finetty.core.results import export

    run_dir = _run(args)
    if args.out is None and not args.push_to_hub:
        raise InputError("finetty export", "--out", "is missing", "give --out DIR, or --push-to-hub ORG/NAME")
    if args.private and not args.push_to_hub:
        raise InputError("--private", None, "applies only to a push", "add --push-to-hub ORG/NAME")
    if args.push_to_hub:
        return _export_and_push(args, run_dir)
    out = export.check_out(Path(args.out))
    from finetty.core.results import inference

    inference.resolve_target(run_dir, args.checkpoint)
    if args.gguf or args.quant is not None:
        return _export_gguf(args, run_dir, out)
    _quiet_libraries()
    result = export.export(run_dir, out, checkpoint=args.checkpoint, merge=args.merge)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    what = "merged model" if result.merged else ("whole model" if result.whole_model else "adapter")
    console.print(f"exported the {what} of run [bold]{as_markup(run_dir.name)}[/] ({as_markup(result.label)}) to "
                  f"{as_markup(result.path)}")
    console.print(f"  {as_markup(', '.join(result.files))}")
    if result.merged or result.whole_model:
        console.print(f"  load it with AutoModelForCausalLM.from_pretrained({as_markup(repr(str(result.path)))})")
    else:
        console.print("  load it with peft.AutoPeftModelForCausalLM.from_pretrained(...) onto the base"
                      if (result.path / "adapter_config.json").exists() else
                      "  load it onto the base with the method's own loader")
    return 0


def _export_gguf(args, run_dir: Path, out: Path) -> int:
    from finetty.core.results import gguf

    if not args.gguf:
        raise InputError("--quant", args.quant, "applies only to a GGUF export", "add --gguf")
    quant = gguf.check_quant(args.quant)  # a quantisation finetty cannot make is refused before anything loads
    _quiet_libraries()
    result = gguf.export_gguf(run_dir, out, checkpoint=args.checkpoint, quant=quant)
    for note in result.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for warning in result.warnings:
        err.print(f"[bold red]warning:[/] {escape(warning)}", soft_wrap=True)
    converted = result.converted
    console.print(f"exported run [bold]{as_markup(run_dir.name)}[/] ({as_markup(result.label)}) merged into its base "
                  f"as GGUF {converted.quant} ({converted.architecture}, {converted.tensors} tensors, "
                  f"{converted.vocab_size} tokens) to {as_markup(result.path)}")
    console.print(f"  {as_markup(', '.join(result.files))}")
    for tool, command in gguf.how_to_run(result):
        console.print(f"  {tool + ':':<10} {as_markup(command)}")
    return 0


def _export_and_push(args, run_dir: Path) -> int:
    """Export as ``finetty export`` does (into ``--out``, or a temporary folder) and upload the folder, model
    card included, to the Hub (``HF_TOKEN``, ``HF_ENDPOINT``)."""
    import tempfile

    from finetty.core.data import hub
    from finetty.core.results import export, inference

    if args.gguf or args.quant is not None:
        raise InputError("--push-to-hub", args.push_to_hub, "pushes the Hugging Face export (adapter or merged "
                         "model), not a GGUF file", "drop --gguf, or upload the GGUF folder yourself")
    if hub.parse_id(args.push_to_hub) is None or "@" in args.push_to_hub:
        raise InputError("--push-to-hub", args.push_to_hub, "is not a hub repo id", "give org/name")
    if hub.offline():  # (before _quiet_libraries makes the process offline for loading)
        raise InputError("--push-to-hub", args.push_to_hub, "cannot be pushed while HF_HUB_OFFLINE is set",
                         "unset HF_HUB_OFFLINE")
    inference.resolve_target(run_dir, args.checkpoint)
    with tempfile.TemporaryDirectory(prefix="finetty-push-") as scratch:
        out = export.check_out(Path(args.out) if args.out else Path(scratch) / run_dir.name)
        result = export.export(run_dir, out, checkpoint=args.checkpoint, merge=args.merge)
        for note in result.notes:
            err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
        url = hub.push(result.path, args.push_to_hub, private=args.private,
                       message=f"finetty export of run {run_dir.name} ({result.label})")
        what = "merged model" if result.merged else ("whole model" if result.whole_model else "adapter")
        console.print(f"pushed the {what} of run [bold]{as_markup(run_dir.name)}[/] ({as_markup(result.label)}) "
                      f"to {as_markup(url)}" + (" (private)" if args.private else ""))
        console.print(f"  {as_markup(', '.join(result.files))}")
    return 0


# -- serve -----------------------------------------------------------------------------------------

def cmd_serve(args) -> int:
    from finetty.core.results import inference
    from finetty.core.results import serve

    run_dir = _run(args)
    serve.check_binding(args.host, args.api_key)
    inference.resolve_target(run_dir, args.checkpoint)
    _quiet_libraries()
    loaded = inference.load(run_dir, args.checkpoint)
    _notes(loaded)
    try:
        server = serve.APIServer(loaded, args.host, args.port, api_key=args.api_key,
                                 max_tokens=args.max_new_tokens, verbose=True, max_batch=args.max_batch)
    except OSError as exc:
        raise InputError("--port", str(args.port), f"cannot be bound on {args.host}: {exc.strerror}",
                         "pick another port with --port") from None
    console.print(f"serving run [bold]{as_markup(run_dir.name)}[/] as model [bold]{as_markup(loaded.model_id)}[/] at "
                  f"{server.url}/v1 (Ctrl-C stops)", soft_wrap=True)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopped")
    finally:
        server.server_close()
    return 0


def add_commands(add) -> None:
    chat = add("chat", cmd_chat, "chat with a run's result (or a checkpoint), optionally beside the base")
    _add_run(chat)
    chat.add_argument("--prompt", default=None, metavar="TEXT", help="answer this one prompt and exit")
    chat.add_argument("--compare", action="store_true", help="the base answers too, first, for comparison")
    _add_generation(chat)

    evaluation = add("eval", cmd_eval, "score a run's result against the base: exact match, ROUGE-L, BLEU, "
                                       "perplexity")
    _add_run(evaluation)
    evaluation.add_argument("--data", default=None, metavar="DATASET",
                            help="a dataset (file, folder or built-in name); default: the run's held-out split, "
                                 "else its training data")
    evaluation.add_argument("--max-new-tokens", type=_positive_int, default=None,
                            help="longest answer (default: the longest reference + 16, at most 256)")
    evaluation.add_argument("--limit", type=_positive_int, default=None, help="evaluate the first N examples only")
    evaluation.add_argument("--batch-size", type=_positive_int, default=16,
                            help="prompts answered together in one left-padded batch (default 16)")

    exporting = add("export", cmd_export, "export a run's adapter, or the model merged with it, for use "
                                          "without finetty")
    _add_run(exporting)
    exporting.add_argument("--out", default=None, metavar="DIR",
                           help="a new folder to write (needed unless --push-to-hub)")
    exporting.add_argument("--push-to-hub", default=None, metavar="ORG/NAME",
                           help="upload the export (model card included) to this Hugging Face repo, created if "
                                "missing; HF_TOKEN and HF_ENDPOINT are honoured")
    exporting.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    exporting.add_argument("--gguf", action="store_true",
                           help="merge and write one GGUF file for llama.cpp, with an Ollama Modelfile "
                                "(Llama and Qwen2 architectures)")
    exporting.add_argument("--quant", default=None, metavar="TYPE",
                           help="the GGUF's tensor type: f16 (default), bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1; "
                                "k-quants need llama.cpp's llama-quantize")
    exporting.add_argument("--merge", action="store_true",
                           help="merge the adapter into the base (a quantized base is dequantized first)")

    serving = add("serve", cmd_serve, "serve a run's result as an OpenAI-compatible API")
    _add_run(serving)
    serving.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need "
                                                            "--api-key)")
    serving.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    serving.add_argument("--api-key", default=os.environ.get("FINETTY_API_KEY") or None, metavar="KEY",
                         help="require 'Authorization: Bearer KEY' on every request (default: $FINETTY_API_KEY, "
                              "which keeps the key out of the process list)")
    serving.add_argument("--max-new-tokens", type=_positive_int, default=512,
                         help="answer length when a request gives no max_tokens (default 512)")
    serving.add_argument("--max-batch", type=_positive_int, default=16,
                         help="most requests answered together in one batch; more wait for the next (default 16)")
