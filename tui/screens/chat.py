"""The chat screen: talk to a run's result, or to the base and the tuned model side by side.

``ChatScreen(run_dir, checkpoint=None)``. Models load and answers generate in
a child process (``finetty.tui.child``: the app never imports torch); thread
workers read its replies and post them as messages, and tokens are appended to
the answer being streamed. What is sent while a model loads (or answers)
waits in a queue and goes as soon as the model is free. Keys:
Enter sends, Escape stops the answer (or leaves the screen when nothing is
generating), Ctrl+L clears the conversation, Ctrl+B toggles compare (the
base answers the same prompt in a pane beside the tuned one), Ctrl+O picks
another checkpoint. Temperature, top-p, max new tokens, repetition penalty
and a system prompt are set in the settings row.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Checkbox, Footer, Input, Label, Select, Static

from finetty.core.results import inference
from finetty.core.text import as_text

from ..child import Call, Child, ChildError
from ..widgets.chat_pane import ChatMessage, ChatPane

PANES = ("base", "tuned")


@dataclass
class LoadedModel:
    """A model loaded in the child process: what the screen knows of it."""

    label: str
    model_id: str = ""
    notes: list[str] = field(default_factory=list)


class ChatScreen(Screen):
    """Chat with ``run_dir``'s ``final/`` (or ``checkpoint``); compare with the base."""

    CSS_PATH = "chat.tcss"
    BINDINGS = [
        Binding("escape", "stop", "Stop / back", id="chat.stop"),
        Binding("ctrl+l", "clear", "Clear", id="chat.clear"),
        Binding("ctrl+b", "toggle_compare", "Compare", id="chat.compare"),
        Binding("ctrl+o", "pick_checkpoint", "Checkpoint", id="chat.checkpoint"),
    ]

    @dataclass
    class Loaded(Message):
        """A model finished loading (``which`` is ``base`` or ``tuned``)."""

        which: str
        loaded: LoadedModel

    @dataclass
    class LoadFailed(Message):
        which: str
        reason: str

    @dataclass
    class Token(Message):
        """A piece of an answer being streamed into pane ``which``."""

        which: str
        text: str

    @dataclass
    class Finished(Message):
        """An answer ended: ``reason`` is ``stop``, ``length``, ``stopped`` or ``error``."""

        which: str
        text: str
        reason: str
        error: str | None = None

    def __init__(self, run_dir: Path, checkpoint: str | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.checkpoint = checkpoint
        self.models: dict[str, LoadedModel] = {}
        self.loading_models: set[str] = set()
        self.histories: dict[str, list[dict]] = {name: [] for name in PANES}
        self.generations: dict[str, Call] = {}
        self.streaming: dict[str, ChatMessage] = {}
        self.waiting: list[tuple[str, inference.GenerationSettings]] = []
        """messages sent while the model was loading or answering, sent in order when it is free"""
        self.compare = False
        self.child = Child()

    # -- layout -----------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        options = [(name, name) for name in inference.targets(self.run_dir)]
        with Horizontal(id="chat-bar"):
            yield Label(f"run {self.run_dir.name}", id="chat-run")
            yield Select(options, prompt="checkpoint", id="chat-checkpoint", allow_blank=True)
            yield Checkbox("base too", id="chat-compare",
                           tooltip="compare: the same prompt to the base model, its answer beside the tuned one")
            yield Static("", id="chat-status")
        # the border titles are short so that all five read whole at 80 columns; tooltips say the rest
        with Horizontal(id="chat-settings"):
            yield Input(placeholder="default", id="chat-temperature", type="number",
                        tooltip="temperature: 0 = greedy; empty = the model's generation config")
            yield Input(placeholder="default", id="chat-top-p", type="number",
                        tooltip="top-p (nucleus sampling), above 0 and at most 1; empty = the model's")
            yield Input("256", placeholder="256", id="chat-max-new-tokens", type="integer",
                        tooltip="the most tokens one answer may have")
            yield Input(placeholder="default", id="chat-repetition-penalty", type="number",
                        tooltip="repetition penalty (1 = none); empty = the model's")
            yield Input(placeholder="none", id="chat-system", tooltip="a system prompt for the conversation")
        yield Static("", id="chat-notes")
        with Horizontal(id="chat-panes"):
            yield ChatPane("base", id="pane-base")
            yield ChatPane("tuned", id="pane-tuned")
        yield Input(placeholder="Ask something (Enter sends)", id="chat-input")
        yield Footer(compact=True)  # every key whole at 80 columns

    def on_mount(self) -> None:
        for name, title in (("temperature", "temp"), ("top-p", "top-p"), ("max-new-tokens", "tokens"),
                            ("repetition-penalty", "rep. pen."), ("system", "system")):
            self.query_one(f"#chat-{name}", Input).border_title = title
        self.query_one("#pane-base").display = False
        self.query_one("#chat-input", Input).focus()
        self._load("tuned", self.checkpoint)

    def on_unmount(self) -> None:
        self.child.close(timeout=1.0)  # it stops what it generates for nobody, and frees the models

    # -- state shown ------------------------------------------------------------------------------

    def _status(self) -> None:
        if self.loading_models:
            text = "loading " + " and ".join(sorted(self.loading_models)) + "..."
            if self.waiting:
                text += f" ({len(self.waiting)} message{'s' if len(self.waiting) > 1 else ''} sent when ready)"
        elif self.generations:
            text = "answering... (Escape stops)"
        elif "tuned" in self.models:
            text = "ready"
        else:
            text = "no model"
        self.query_one("#chat-status", Static).update(text)

    def _pane(self, which: str) -> ChatPane:
        return self.query_one(f"#pane-{which}", ChatPane)

    def _active(self) -> list[str]:
        return ["base", "tuned"] if self.compare else ["tuned"]

    # -- loading ----------------------------------------------------------------------------------

    def _load(self, which: str, checkpoint: str | None = None) -> None:
        self.loading_models.add(which)
        self._status()
        if which == "tuned":
            self._load_tuned(checkpoint)
        else:
            self._load_base()

    @work(thread=True, exclusive=True, group="chat-load-tuned", exit_on_error=False)
    def _load_tuned(self, checkpoint: str | None) -> None:
        self._load_in_child("tuned", checkpoint)

    @work(thread=True, exclusive=True, group="chat-load-base", exit_on_error=False)
    def _load_base(self) -> None:
        self._load_in_child("base", None)

    def _load_in_child(self, which: str, checkpoint: str | None) -> None:
        try:
            result = self.child.call("load", which=which, run_dir=str(self.run_dir), checkpoint=checkpoint).wait()
        except ChildError as exc:
            self.post_message(self.LoadFailed(which, str(exc)))
            return
        self.post_message(self.Loaded(which, LoadedModel(result["label"], result.get("model_id", ""),
                                                         list(result.get("notes") or []))))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        self.loading_models.discard(message.which)
        self.models[message.which] = message.loaded
        if message.which == "tuned":
            loaded = message.loaded
            self.checkpoint = loaded.label
            self._pane("tuned").set_title(f"tuned · {loaded.label}")
            select = self.query_one("#chat-checkpoint", Select)
            with select.prevent(Select.Changed):
                select.value = loaded.label
            self.query_one("#chat-notes", Static).update(as_text("\n".join(loaded.notes)))
            self.query_one("#chat-notes").display = bool(loaded.notes)
        self._status()
        self._send_waiting()

    @on(LoadFailed)
    def _load_failed(self, message: LoadFailed) -> None:
        self.loading_models.discard(message.which)
        self.notify(message.reason, title=f"could not load the {message.which} model", severity="error")
        if message.which == "base":
            self._set_compare(False)
            self._send_waiting()
        elif self.waiting:
            self._pane("tuned").add("note", f"not sent (the model did not load): "
                                            f"{'; '.join(text for text, _ in self.waiting)}")
            self.waiting.clear()
        self._status()

    # -- sending and streaming --------------------------------------------------------------------

    def _settings(self) -> inference.GenerationSettings | None:
        def number(name: str, kind=float):
            text = self.query_one(f"#chat-{name}", Input).value.strip()
            return kind(text) if text else None

        try:
            settings = inference.GenerationSettings(
                temperature=number("temperature"), top_p=number("top-p"),
                max_new_tokens=number("max-new-tokens", int) or 256,
                repetition_penalty=number("repetition-penalty"),
                system_prompt=self.query_one("#chat-system", Input).value.strip() or None)
        except ValueError as exc:
            self.notify(f"a generation setting is not a number: {exc}", severity="error")
            return None
        problems = []
        if settings.temperature is not None and settings.temperature < 0:
            problems.append("temperature must be 0 (greedy) or more")
        if settings.top_p is not None and not 0 < settings.top_p <= 1:
            problems.append("top-p must be above 0 and at most 1")
        if settings.max_new_tokens < 1:
            problems.append("max new tokens must be at least 1")
        if settings.repetition_penalty is not None and settings.repetition_penalty <= 0:
            problems.append("repetition penalty must be above 0")
        if problems:
            self.notify("; ".join(problems), severity="error")
            return None
        return settings

    @on(Input.Submitted, "#chat-input")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        if not text:
            return
        settings = self._settings()
        if settings is None:
            return
        event.input.value = ""
        if self.loading_models or self.generations or "tuned" not in self.models:
            self.waiting.append((text, settings))
            self._pane("tuned").add("note", f"waiting for the model {'to answer' if self.generations else 'to load'}:"
                                            f" {text}")
            self._status()
            return
        self.send(text, settings)

    def _send_waiting(self) -> None:
        """Send the oldest message typed while the model was busy, once every model it needs is free."""
        if self.waiting and not self.loading_models and not self.generations and "tuned" in self.models:
            text, settings = self.waiting.pop(0)
            self.send(text, settings)

    def send(self, text: str, settings: inference.GenerationSettings | None = None) -> None:
        """Ask ``text`` of the tuned model (and of the base, when comparing); answers stream in."""
        settings = settings or inference.GenerationSettings()
        for which in self._active():
            history = self.histories[which]
            history.append({"role": "user", "content": text})
            pane = self._pane(which)
            pane.add("user", text)
            self.streaming[which] = pane.add("assistant", streaming=True)
            try:
                call = self.child.call("generate", which=which, messages=list(history), settings=asdict(settings))
            except ChildError as exc:
                self.post_message(self.Finished(which, "", "error", str(exc)))
                continue
            self.generations[which] = call
            self._generate(which, call)
        self._status()

    def _generate(self, which: str, call: Call) -> None:
        self.run_worker(lambda: self._stream(which, call), thread=True, group=f"chat-generate-{which}",
                        exclusive=True, exit_on_error=False, name=f"generate {which}")

    def _stream(self, which: str, call: Call) -> None:
        text = ""
        for reply in call:
            if reply["type"] == "token":
                text += reply["text"]
                self.post_message(self.Token(which, reply["text"]))
            elif reply["type"] == "done":
                self.post_message(self.Finished(which, reply["result"]["text"], reply["result"]["reason"]))
            elif reply["type"] == "error":
                self.post_message(self.Finished(which, text, "error", reply["error"]))

    @on(Token)
    def _token(self, message: Token) -> None:
        target = self.streaming.get(message.which)
        if target is not None:
            target.append(message.text)
            self._pane(message.which).follow()

    @on(Finished)
    def _finished(self, message: Finished) -> None:
        self.generations.pop(message.which, None)
        target = self.streaming.pop(message.which, None)
        suffix = {"stopped": " [stopped]", "length": " [max new tokens]"}.get(message.reason, "")
        if message.reason == "error":
            suffix = f" [failed: {message.error}]"
        if target is not None:
            target.finish(suffix)
        self.histories[message.which].append({"role": "assistant", "content": message.text})
        self._status()
        if not self.generations:
            self.query_one("#chat-input", Input).focus()
            self._send_waiting()

    # -- actions ----------------------------------------------------------------------------------

    def action_stop(self) -> None:
        """Stop the answers being generated; with none, leave the screen (when there is one to go back to)."""
        if self.generations:
            for generation in self.generations.values():
                generation.stop()
        elif len(self.app.screen_stack) > 1 and self.app.screen is self:
            self.dismiss()

    def action_clear(self) -> None:
        self.waiting.clear()
        for generation in self.generations.values():
            generation.stop()
        for which in PANES:
            self.histories[which].clear()
            self._pane(which).clear()
        self.streaming.clear()

    def action_toggle_compare(self) -> None:
        checkbox = self.query_one("#chat-compare", Checkbox)
        checkbox.value = not checkbox.value

    def action_pick_checkpoint(self) -> None:
        select = self.query_one("#chat-checkpoint", Select)
        with select.prevent(Select.Changed):  # a running training may have added checkpoints
            select.set_options([(name, name) for name in inference.targets(self.run_dir)])
            if self.checkpoint in inference.targets(self.run_dir):
                select.value = self.checkpoint
        select.focus()
        select.expanded = True

    @on(Checkbox.Changed, "#chat-compare")
    def _compare_changed(self, event: Checkbox.Changed) -> None:
        self._set_compare(event.value)

    def _set_compare(self, on_: bool) -> None:
        self.compare = on_
        checkbox = self.query_one("#chat-compare", Checkbox)
        if checkbox.value != on_:
            with checkbox.prevent(Checkbox.Changed):
                checkbox.value = on_
        self._pane("base").display = on_
        if on_ and "base" not in self.models and "base" not in self.loading_models:
            self._load("base")

    @on(Select.Changed, "#chat-checkpoint")
    def _checkpoint_changed(self, event: Select.Changed) -> None:
        if event.value is Select.BLANK or event.value == self.checkpoint:
            return
        for generation in self.generations.values():
            generation.stop()
        self.models.pop("tuned", None)
        self._pane("tuned").add("note", f"switched to {event.value}")
        self._load("tuned", str(event.value))
