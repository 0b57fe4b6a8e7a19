"""Results: evaluate a run's result against the base, export it, serve it. Nothing here loads a model.

``ResultsScreen(run_dir, checkpoint=None)`` has three tabs:

- **Eval** runs what ``finetty eval`` does in the model child process
  (``finetty.tui.child``): progress per model, then base against tuned on each
  metric, and the examples the tuned model got most wrong. The newest report
  in ``<run>/eval/`` is shown when the screen opens.
- **Export** writes the adapter, the merged model, or the GGUF file with its
  Ollama Modelfile (``finetty export --gguf``, with the quantisations it can
  make), in the same child, through the same functions as ``finetty export``,
  into a new folder.
- **Serve** starts ``finetty serve`` as a child process of its own, shows the
  URL it listens on and snippets to paste (``openai``, ``curl``); stopping it
  (or leaving the screen) sends it Ctrl-C.

The app process never imports torch: every model is in a child.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (Button, DataTable, Footer, Header, Input, ProgressBar, RadioButton, RadioSet, Select,
                             Static, TabbedContent, TabPane)

from finetty.core.results import gguf
from finetty.core.text import as_text, one_line

from ..child import Call, Child

#: What the Export tab offers: (key, label, the options the session's ``export`` operation gets for it: keyword
#: options of ``export.export``, or ``gguf`` for ``gguf.export_gguf``, as ``finetty export --gguf``; the GGUF kind
#: adds the quantisation chosen beside the folder).
EXPORT_KINDS = (
    ("adapter", "adapter, as trained", {}),
    ("merged", "merged into the base", {"merge": True}),
    ("gguf", "GGUF (llama.cpp, Ollama)", {"gguf": True}),
)
SERVING = re.compile(r"as model (?P<model>\S+) at (?P<url>https?://\S+)")


def newest_report(run_dir: Path) -> dict | None:
    """The newest ``finetty eval`` report of the run (``<run>/eval/*.json``), None when there is none."""
    folder = Path(run_dir) / "eval"
    reports = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    for path in reversed(reports):
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(report, dict) and isinstance(report.get("base"), dict):
            return {"report": report, "json": str(path)}
    return None


def snippets(url: str, model: str) -> dict[str, str]:
    """Ready-to-paste client code for a server at ``url`` (ending in ``/v1``) serving ``model``."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Who are you?"}]})
    return {
        "openai": (f"from openai import OpenAI\n"
                   f"client = OpenAI(base_url={json.dumps(url)}, api_key=\"unused\")\n"
                   f"reply = client.chat.completions.create(\n"
                   f"    model={json.dumps(model)}, messages=[{{\"role\": \"user\", \"content\": \"Who are you?\"}}])\n"
                   f"print(reply.choices[0].message.content)"),
        "curl": (f"curl {url}/chat/completions \\\n"
                 f"  -H 'Content-Type: application/json' \\\n"
                 f"  -d '{body}'"),
    }


class ResultsScreen(Screen):
    """Eval, export and serve for one run's result (``final/``, else its newest complete checkpoint)."""

    CSS_PATH = "results.tcss"
    SUB_TITLE = "results"
    BINDINGS = [
        Binding("escape", "back", "Back", id="results.back"),
        Binding("e", "eval", "Evaluate", id="results.eval", tooltip="score base and tuned on held-out prompts"),
        Binding("x", "export", "Export", id="results.export", tooltip="write the chosen export to the folder"),
        Binding("v", "serve", "Serve", id="results.serve", tooltip="start or stop an OpenAI-compatible server"),
    ]

    @dataclass
    class Progress(Message):
        """A reply from the child: ``job`` is ``eval`` or ``export``; ``reply`` is the protocol's object."""

        job: str
        reply: dict

    @dataclass
    class ServeLine(Message):
        """``finetty serve`` said something (``line``), or ended (``ended`` with its exit code)."""

        line: str | None = None
        ended: int | None = None

    def __init__(self, run_dir: Path, checkpoint: str | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.child = Child()
        self.jobs: dict[str, Call] = {}
        self.report: dict | None = None
        self.exported: dict | None = None
        self.server: subprocess.Popen | None = None
        self.serving: dict[str, str] | None = None
        self.serve_said = ""
        """the server's last line of output (the reason, when it ends before serving)"""
        self.kinds = list(EXPORT_KINDS)

    # -- layout -------------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="results-title")
        with TabbedContent(id="results-tabs"):
            with TabPane("Eval", id="tab-eval"):
                with Horizontal(classes="results-bar"):
                    yield Input(placeholder="all", id="eval-limit", type="integer",
                                tooltip="evaluate the first N examples only (empty: all of them)")
                    yield Button("Evaluate (e)", id="eval-start")
                    yield Static("", id="eval-status", classes="results-status")
                yield ProgressBar(id="eval-progress", show_eta=False)
                yield DataTable(id="eval-metrics", cursor_type="none", show_cursor=False)
                with VerticalScroll(id="eval-worst-box"):
                    yield Static(id="eval-worst")
            with TabPane("Export", id="tab-export"):
                with RadioSet(id="export-kind"):
                    for number, (key, label, _) in enumerate(self.kinds):
                        yield RadioButton(label, value=number == 0, id=f"export-{key}")
                with Horizontal(classes="results-bar"):
                    yield Input(id="export-out", tooltip="a new folder: export never overwrites")
                    yield Select([(quant, quant) for quant in gguf.QUANTS], value=gguf.DEFAULT_QUANT,
                                 allow_blank=False, id="export-quant",
                                 tooltip="the GGUF's tensor type, as finetty export --quant (k-quants need "
                                         "llama.cpp's llama-quantize)")
                    yield Button("Export (x)", id="export-start")
                yield Static("", id="export-status", classes="results-status")
                yield ProgressBar(id="export-progress", show_eta=False)
                with VerticalScroll(id="export-result-box"):
                    yield Static(id="export-result")
            with TabPane("Serve", id="tab-serve"):
                with Horizontal(classes="results-bar"):
                    yield Input("8000", id="serve-port", type="integer",
                                tooltip="the port on 127.0.0.1 (0 picks a free one)")
                    yield Button("Start (v)", id="serve-toggle")
                    yield Static("", id="serve-status", classes="results-status")
                with VerticalScroll(id="serve-snippets-box"):
                    yield Static(id="serve-snippets")
        yield Footer()

    def on_mount(self) -> None:
        from finetty.core.results import inference

        targets = inference.targets(self.run_dir)
        label = self.checkpoint or (targets[0] if targets else None)
        title = Text.assemble(("run ", "dim"), as_text(self.run_dir.name, "bold"), ("  ·  ", "dim"),
                              as_text(label or "no result yet"))
        self.query_one("#results-title", Static).update(title)
        self.query_one("#eval-limit", Input).border_title = "examples"
        self.query_one("#export-out", Input).border_title = "folder"
        self.query_one("#export-quant > SelectCurrent").border_title = "quant"  # (the Select draws no border)
        self.query_one("#serve-port", Input).border_title = "port"
        table = self.query_one("#eval-metrics", DataTable)
        table.add_columns("metric", "base", "tuned")
        for bar in ("#eval-progress", "#export-progress"):
            self.query_one(bar).display = False
        self._default_out()
        saved = newest_report(self.run_dir)
        if saved is not None:
            self._show_report(saved, fresh=False)
        else:
            self._set_status("eval", "no eval yet: e scores base and tuned on held-out prompts")
        self._set_status("serve", "not serving")
        self._show_snippets()
        if not targets:
            self._set_status("export", "the run has no result and no complete checkpoint yet")
        self.query_one("#results-tabs", TabbedContent).focus()

    def on_unmount(self) -> None:
        self._stop_server()
        self.child.close(timeout=1.0)

    # -- shared state -------------------------------------------------------------------------------

    def _set_status(self, tab: str, text: str, style: str = "") -> None:
        self.query_one(f"#{tab}-status", Static).update(as_text(text, style, one_line=True))

    def _kind(self) -> tuple[str, str, dict]:
        pressed = self.query_one("#export-kind", RadioSet).pressed_index
        return self.kinds[max(0, pressed)]

    def _exports_dir(self) -> Path:
        return Path(getattr(self.app, "base_dir", None) or Path.cwd()) / "exports"

    def _quant(self) -> str | None:
        """The GGUF quantisation chosen, when the GGUF kind is."""
        return str(self.query_one("#export-quant", Select).value) if self._kind()[2].get("gguf") else None

    def _default_out(self) -> None:
        """The folder named after the run and the kind (and the quantisation: one run's f16 and q8_0 files
        side by side); the quantisation is offered only for the GGUF kind."""
        quant = self._quant()
        self.query_one("#export-quant", Select).display = quant is not None
        name = f"{self.run_dir.name}-{self._kind()[0]}" + (f"-{quant}" if quant else "")
        self.query_one("#export-out", Input).value = str(self._exports_dir() / name)
        self.call_after_refresh(self._folder_end)  # (the new name's end is what differs)

    @on(RadioSet.Changed, "#export-kind")
    @on(Select.Changed, "#export-quant")
    def _kind_changed(self) -> None:
        self._default_out()

    @on(TabbedContent.TabActivated, "#results-tabs")
    def _tab_shown(self, event: TabbedContent.TabActivated) -> None:
        """A folder longer than its field shows its end: the run and the kind tell one export from another, the
        start is the working folder (filled while the tab was hidden, the field could not scroll then)."""
        if event.pane.id == "tab-export":
            self.call_after_refresh(self._folder_end)

    def _folder_end(self) -> None:
        field = self.query_one("#export-out", Input)
        end = len(field.value)
        field.cursor_position = 0  # (moving the cursor is what scrolls an Input; it is at the end already)
        field.cursor_position = end

    def _busy(self, job: str, busy: bool) -> None:
        self.query_one(f"#{job}-start", Button).disabled = busy
        bar = self.query_one(f"#{job}-progress", ProgressBar)
        bar.display = busy
        if busy:
            bar.update(total=None, progress=0)

    # -- eval ---------------------------------------------------------------------------------------

    def action_eval(self) -> None:
        self.query_one("#results-tabs", TabbedContent).active = "tab-eval"
        if "eval" in self.jobs:
            self.notify("an evaluation is already running", severity="warning")
            return
        limit = self.query_one("#eval-limit", Input).value.strip()
        if limit and int(limit) < 1:
            self.notify("examples: leave it empty for all, or give at least 1", severity="error")
            return
        self._busy("eval", True)
        self._set_status("eval", "loading the tuned model...")
        self._start("eval", run_dir=str(self.run_dir), checkpoint=self.checkpoint, limit=int(limit) if limit else None)

    @on(Button.Pressed, "#eval-start")
    def _eval_pressed(self) -> None:
        self.action_eval()

    def _start(self, job: str, **params: Any) -> None:
        self.jobs[job] = self.child.call(job, **params)
        self._follow(job, self.jobs[job])

    def _follow(self, job: str, call: Call) -> None:
        def follow() -> None:
            for reply in call:
                self.post_message(self.Progress(job, reply))

        self.run_worker(follow, thread=True, group=f"results-{job}", exit_on_error=False, name=f"follow {job}")

    @on(Progress)
    def _progress(self, message: Progress) -> None:
        reply, job = message.reply, message.job
        kind = reply.get("type")
        if kind in ("done", "error"):
            self.jobs.pop(job, None)
            self._busy(job, False)
        if kind == "error":
            self._set_status(job, f"{job} failed: {reply.get('error')}", "red")
            self.notify(one_line(reply.get("error")), title=f"{job} failed", severity="error")
        elif job == "eval" and kind == "progress":
            # the tuned model answers first, then the base: one bar over both
            done, total = int(reply["done"]), int(reply["total"])
            first = reply.get("model") != "base"
            self.query_one("#eval-progress", ProgressBar).update(total=2 * total,
                                                                 progress=done if first else total + done)
            self._set_status("eval", f"{'tuned' if first else 'base'}: {done}/{total} answered")
        elif job == "eval" and kind == "done":
            self._show_report(reply["result"], fresh=True)
        elif job == "export" and kind == "progress":
            self._set_status("export", f"exporting the {self._kind()[1]}...")
        elif job == "export" and kind == "done":
            self._show_export(reply["result"])

    def _show_report(self, found: dict, fresh: bool) -> None:
        from finetty.core.results import evaluate
        from finetty.core.results.session import worst_examples

        report = found["report"]
        self.report = report
        table = self.query_one("#eval-metrics", DataTable)
        table.clear()
        for name in evaluate.METRICS:
            table.add_row(name.replace("_", " "), evaluate.fmt(name, report["base"].get(name)),
                          evaluate.fmt(name, report["tuned"].get(name)))
        when = "" if fresh else " (the last eval)"
        self._set_status("eval", f"{report.get('examples')} examples, {report.get('checkpoint')}{when}: "
                                 f"{Path(found['json']).name}")
        worst = found.get("worst") or worst_examples(report.get("samples") or [])
        text = Text()
        if worst:
            text.append("the tuned model's worst answers\n", style="bold")
        for sample in worst:
            text.append("\n")
            text.append_text(as_text(sample.get("prompt", ""), "bold", one_line=True))
            for who in ("reference", "tuned", "base"):
                text.append(f"\n  {who:<9} ", style="dim")
                style = "green" if who == "tuned" and sample.get("tuned_exact") else ""
                text.append_text(as_text(sample.get(who, ""), style, one_line=True))
            text.append("\n")
        for note in report.get("notes") or []:
            text.append_text(as_text(f"\nnote: {note}", "yellow"))
        self.query_one("#eval-worst", Static).update(text)

    # -- export -------------------------------------------------------------------------------------

    def action_export(self) -> None:
        self.query_one("#results-tabs", TabbedContent).active = "tab-export"
        if "export" in self.jobs:
            self.notify("an export is already running", severity="warning")
            return
        out = self.query_one("#export-out", Input).value.strip()
        if not out:
            self.notify("name a new folder to export to", severity="error")
            return
        if Path(out).expanduser().parent == self._exports_dir():
            self._exports_dir().mkdir(exist_ok=True)  # the default place; any other folder must exist
        key, label, options = self._kind()
        quant = self._quant()
        if quant is not None:
            options = {**options, "quant": quant}
        self._busy("export", True)
        self._set_status("export", f"starting the export of the {label}...")
        self.query_one("#export-result", Static).update("")
        self._start("export", run_dir=str(self.run_dir), out=out, checkpoint=self.checkpoint, **options)

    @on(Button.Pressed, "#export-start")
    def _export_pressed(self) -> None:
        self.action_export()

    def _show_export(self, result: dict) -> None:
        self.exported = result
        converted = result.get("converted")
        if converted:  # a GGUF export: where the file is, and (below) the commands that run it
            self._set_status("export", f"wrote GGUF {converted.get('quant')} ({converted.get('architecture')}, "
                                       f"{converted.get('tensors')} tensors) of {result.get('label')} to "
                                       f"{converted.get('path')}", "green")
        else:
            what = "merged model" if result.get("merged") else "export"
            self._set_status("export", f"wrote the {what} of {result.get('label')} to {result.get('path')}", "green")
        text = Text()
        text.append("files: ", style="bold")
        text.append_text(as_text(", ".join(result.get("files") or []), one_line=True))
        for tool, command in result.get("how_to_run") or []:
            text.append(f"\n{tool + ':':<10} ", style="bold")
            text.append_text(as_text(command, one_line=True))
        for note in result.get("notes") or []:
            text.append_text(as_text(f"\nnote: {note}", "yellow"))
        for warning in result.get("warnings") or []:
            text.append_text(as_text(f"\nwarning: {warning}", "red"))
        self.query_one("#export-result", Static).update(text)

    # -- serve --------------------------------------------------------------------------------------

    def action_serve(self) -> None:
        self.query_one("#results-tabs", TabbedContent).active = "tab-serve"
        if self.server is not None:
            self._set_status("serve", "stopping...")
            self._stop_server()
            return
        port = self.query_one("#serve-port", Input).value.strip() or "8000"
        if not port.isdigit() or int(port) > 65535:
            self.notify("the port is a number from 0 to 65535", severity="error")
            return
        command = [sys.executable, "-m", "finetty.core.cli", "serve", str(self.run_dir), "--port", port]
        if self.checkpoint:
            command += ["--checkpoint", self.checkpoint]
        self.server = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace")
        self.query_one("#serve-toggle", Button).label = "Stop (v)"
        self._set_status("serve", "starting: loading the model...")
        self._watch_server(self.server)

    @on(Button.Pressed, "#serve-toggle")
    def _serve_pressed(self) -> None:
        self.action_serve()

    def _watch_server(self, process: subprocess.Popen) -> None:
        def watch() -> None:
            for line in process.stdout:
                if line.strip():
                    self.post_message(self.ServeLine(line=line.rstrip()))
            self.post_message(self.ServeLine(ended=process.wait()))

        threading.Thread(target=watch, name="finetty-serve-output", daemon=True).start()

    @on(ServeLine)
    def _serve_line(self, message: ServeLine) -> None:
        if message.ended is not None:
            failed = message.ended not in (0, -signal.SIGINT) and self.serving is None
            self.server, self.serving = None, None
            self.query_one("#serve-toggle", Button).label = "Start (v)"
            if failed:
                self._set_status("serve", f"finetty serve ended (exit code {message.ended}): "
                                          f"{self.serve_said}", "red")
            else:
                self._set_status("serve", "not serving")
            self._show_snippets()
            return
        found = SERVING.search(message.line or "")
        if found:
            url = found["url"].rstrip("/")
            self.serving = {"url": url if url.endswith("/v1") else url + "/v1", "model": found["model"]}
            self._set_status("serve", f"serving {self.serving['model']} at {self.serving['url']}", "green")
            self._show_snippets()
        else:
            self.serve_said = message.line or ""

    def _show_snippets(self) -> None:
        text = Text()
        if self.serving is None:
            text.append("v starts `finetty serve` for this run: an OpenAI-compatible API on 127.0.0.1, "
                        "for the openai client, llm, curl and others. Leaving this screen stops it.", style="dim")
        else:
            for name, code in snippets(self.serving["url"], self.serving["model"]).items():
                text.append(f"{name}\n", style="bold")
                text.append_text(as_text(code))
                text.append("\n\n")
        self.query_one("#serve-snippets", Static).update(text)

    def _stop_server(self) -> None:
        """Ctrl-C, as a person would press it: the server closes its connections and exits."""
        process = self.server
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def action_back(self) -> None:
        self.dismiss()
