"""New run: a form generated from the plugins' own option descriptions, checked by the recipe validator."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, Footer, Header, Input, Label, Select, Static
from textual.worker import get_current_worker

from finetty.core.data import demo
from finetty.core.data import reading as data_mod
from finetty.core.model import loading as models
from finetty.core.recipe.sections import MODEL_OPTIONS
from finetty.core.text import as_text, clean, one_line

from ..form import (
    PATH,
    TRAIN_FIELDS,
    TRAIN_KEYS,
    FieldError,
    FormState,
    extra_line,
    field_for,
    field_values,
    from_recipe,
    recommend,
    recommendation_notice,
    to_recipe,
    to_text,
    uncarried,
    widget_for,
    with_train_more,
)
from ..widgets.option_field import OptionField
from ..widgets.path_input import PathSuggester
from ..widgets.picker import Picker
from .confirm import ConfirmScreen

#: What the form opens with: the first-minute demo (as recipes/demo-lora.yaml).
STARTER: dict[str, Any] = {
    "model": "tiny-demo",
    "dataset": "identity",
    "dataset_options": {"name": "Tiny", "author": "the finetty team"},
    "format": "auto",
    "method": "lora",
    "method_options": {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"},
    "quantizer": "none",
    "objective": "sft",
    "train": {"learning_rate": 3.0e-3, "max_steps": 120, "per_device_train_batch_size": 8, "warmup_steps": 5,
              "lr_scheduler_type": "cosine", "logging_steps": 5, "save_steps": 40, "save_total_limit": 2,
              "max_length": 256, "seed": 42},
}

#: The distributed engines the form offers: (label, value); the value is launch.distributed_type, with
#: DeepSpeed's ZeRO stage after a dash.
ENGINES = (("ddp  (a full copy of the model on each GPU)", "ddp"),
           ("fsdp  (weights, gradients, optimizer sharded)", "fsdp"),
           ("deepspeed ZeRO-2  (gradients, optimizer sharded)", "deepspeed-2"),
           ("deepspeed ZeRO-3  (weights sharded too)", "deepspeed-3"))


def process_choices(gpus: int) -> list[tuple[str, int]]:
    """How many training processes to offer: one per GPU found (all of them, or fewer), or 1-2 on the CPU."""
    if gpus <= 0:
        return [("1  (no GPU found: the CPU)", 1), ("2  (CPU processes, gloo)", 2)]

    def label(n: int) -> str:
        return "every GPU found" if n == gpus else "one GPU" if n == 1 else f"{n} of {gpus} GPUs"

    return [(f"{n}  ({label(n)})", n) for n in sorted({1, gpus} | {n for n in (2, 4, 8) if n < gpus})]


#: What the model and dataset pickers say beside them until the cache scan has filled them.
SCANNING = "scanning…"

DEFAULT_HINT = "Tab/shift+Tab: next/previous field · Enter: open a picker · ctrl+l: launch"


def hub_datasets() -> list[str]:
    """Dataset ids with a copy in the local Hugging Face hub cache."""
    from finetty.core.data import hub

    return hub.cached_repos("dataset")


def local_data_files(folder: Path) -> list[str]:
    try:
        return sorted(p.name for p in folder.iterdir()
                      if p.is_file() and p.suffix.lower() in data_mod.DATA_SUFFIXES and not p.name.startswith("."))
    except OSError:
        return []


class PromptScreen(ModalScreen[str | None]):
    """Ask for one line of text (Enter accepts, Escape cancels)."""

    DEFAULT_CSS = """
    PromptScreen { align: center middle; }
    PromptScreen > Vertical { width: 70; max-width: 96%; height: auto; border: thick $primary; padding: 1 2;
                              background: $surface; }
    """
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="prompt.cancel")]

    def __init__(self, question: str, default: str = ""):
        super().__init__()
        self.question, self.default = question, default

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.question)
            yield Input(self.default, id="prompt-input", suggester=PathSuggester((".yaml", ".yml")))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or None)

    def action_cancel(self) -> None:
        self.dismiss(None)


class NewRunScreen(Screen):
    """Model, dataset, method, quantizer, objective, training settings; launch, queue or save as a recipe."""

    CSS_PATH = "new_run.tcss"
    SUB_TITLE = "new run"
    BINDINGS = [
        Binding("ctrl+l,f5", "launch", "Launch", id="new_run.launch", priority=True,
                tooltip="start the run now in a detached worker"),
        Binding("ctrl+o,f6", "queue", "Queue", id="new_run.queue", priority=True,
                tooltip="start it when nothing else trains (the queue goes on after the app closes)"),
        Binding("ctrl+s,f7", "save", "Save recipe", id="new_run.save", priority=True),
        Binding("escape", "app.back", "Back", id="new_run.back"),
    ]

    def __init__(self, recipe: dict | None = None, base_dir: Path | None = None):
        super().__init__()
        self.start = copy.deepcopy(recipe or STARTER)
        self.base_dir = base_dir or Path.cwd()
        self.recipe = None
        self.problem: str | None = None
        self.preview_key: str | None = None
        self._timer = None
        self._built: dict[str, Any] = {}
        self._given: dict[str, Any] = {}
        """field values as the form last set them (see :func:`finetty.tui.form.recommend`)"""
        self.data_problem: str | None = None
        """the preview's complaint about the data of ``preview_key`` (the status line shows it too)"""
        self.extra: dict = {}
        """the starting recipe's keys the form has no field for: carried unchanged (see FormState.extra)"""
        self.missing: list = []
        """``(HubRef, place)`` of the form's hub model and dataset that the cache lacks: launching downloads them"""
        self.uncarried: list[str] = []
        """the starting recipe's option keys the form cannot carry: the form refuses until another choice drops
        them (a form that dropped them in silence would train something other than the recipe)"""

    # -- building the form ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        registry = self.app.registry
        start = self.start
        models_list = [("tiny-demo  (built-in demo, random weights)", demo.NAME)]
        sets = [(f"{name}  (built-in: {info[2]})", name) for name, info in data_mod.BUILTIN.items()]
        # (the hub cache and the data files here are scanned by a worker after the first frame: see _scan)
        state = from_recipe({"model": demo.NAME, **start}, {v for _, v in models_list}, {v for _, v in sets})
        models_list.append(("a model folder…", PATH))
        sets.append(("a file or folder…", PATH))
        values = {f.key: f.value for f in state.fields}
        self.extra = state.extra
        yield Header()
        yield Static(id="form-status")
        with VerticalScroll(id="form"):
            also = extra_line(self.extra)
            yield Static(Text(clean(also), style="italic"), id="form-extra", classes="notice")
            yield Static("Model", classes="section")
            yield self._row("model", Picker(models_list, value=state.model, allow_blank=False, id="model",
                                            compact=True, title="model"),
                            Static(SCANNING, id="model-scanning", classes="scanning"))
            yield self._row("folder", Input(state.model_path, id="model-path", compact=True,
                                            placeholder="path to a model folder (→ completes)",
                                            suggester=PathSuggester(base=self.base_dir)), row_id="model-path-row")
            yield Static(id="model-download", classes="download")
            yield OptionField("trust_remote_code", "trust remote code", "bool", False,
                              "run Python code that ships with the model folder (asked again at launch; "
                              "only for code you trust)", value=state.trust_remote_code,
                              id="trust_remote_code")
            for option in MODEL_OPTIONS:  # how the model loads: the recipe's model_options
                yield OptionField(f"model_options.{option.name}", option.name, option.type, option.default,
                                  option.help, option.choices, value=values.get(f"model_options.{option.name}"),
                                  id=f"opt-model-{option.name}")

            yield Static("Data", classes="section")
            yield self._row("dataset", Picker(sets, value=state.dataset, allow_blank=False, id="dataset",
                                              compact=True, title="dataset"),
                            Static(SCANNING, id="dataset-scanning", classes="scanning"))
            yield self._row("path", Input(state.dataset_path, id="dataset-path", compact=True,
                                          placeholder="path to a .jsonl/.json/.csv/.parquet/.txt file or folder",
                                          suggester=PathSuggester(tuple(data_mod.DATA_SUFFIXES), self.base_dir)),
                            row_id="dataset-path-row")
            yield Static(id="dataset-download", classes="download")
            yield self._row("dataset options", Input(state.dataset_options,
                                                     id="dataset_options", compact=True,
                                                     tooltip="{name: value}: fills {{name}} fields in any dataset"))
            formats = [("auto  (detect from the first record)", "auto")]
            formats += [(f"{n}  ({f.summary})", n) for n, f in registry.data_formats.items()]
            yield self._row("format", Picker(formats, value=state.format, allow_blank=False,
                                             id="format", compact=True, title="data format"))
            with Vertical(id="preview"):
                yield Static(Text("preview: waiting for a valid form", style="dim"), id="preview-text")

            for kind, key, none in (("method", "method", False), ("quantizer", "quantizer", True),
                                    ("objective", "objective", False)):
                yield Static(kind.capitalize(), classes="section")
                components = registry.components[kind]
                choices = [("none  (a plain base)", "none")] if none else []
                choices += [(f"{n}  ({c.summary})", n) for n, c in components.items()]
                value = state.components.get(key) or ("none" if none else next(iter(components), None))
                if value not in {v for _, v in choices}:
                    value = choices[0][1] if choices else None
                yield self._row(kind, Picker(choices, value=value, allow_blank=False, id=key, compact=True,
                                                title=kind))
                if key == "method":
                    yield Static(id="method-notice", classes="notice")
                yield Vertical(id=f"{key}-options", classes="options")

            yield Static("Training", classes="section")
            for name, type_, help_text in TRAIN_FIELDS:
                yield OptionField(f"train.{name}", name, type_, None, help_text, value=values.get(f"train.{name}"),
                                  id=f"train-{name}")
            yield self._row("more train settings", Input(state.train_more, id="train-more", compact=True,
                            placeholder="{weight_decay: 0.01, optim: adamw_torch}",
                            tooltip="any other TrainingArguments field, as a YAML mapping"))

            yield Static("Devices", classes="section")
            gpus = len(self._gpus())
            choices = process_choices(gpus)
            wanted = state.processes
            if wanted not in {n for _, n in choices}:
                choices.append((f"{wanted}  (from the recipe)", wanted))
            yield self._row("processes", Picker(choices, value=wanted, allow_blank=False, id="launch-processes",
                                                compact=True, title="training processes"))
            engines = ENGINES if gpus else ENGINES[:1]  # FSDP and DeepSpeed need GPUs; CPU processes use DDP
            engine = state.engine
            if engine not in [value for _, value in engines]:
                engine = "ddp"
            yield self._row("distributed", Picker(engines, value=engine, allow_blank=False, id="launch-engine",
                                                  compact=True, disabled=wanted <= 1, title="distributed engine"))
        yield Static(Text(DEFAULT_HINT, style="dim"), id="form-hint", classes="hint")
        with Horizontal(id="form-buttons"):
            yield Button("Launch ⏎", id="launch", variant="success", compact=True)
            yield Button("Queue ^o", id="queue", compact=True)
            yield Button("Save recipe ^s", id="save", compact=True)
        yield Footer()

    @staticmethod
    def _gpus() -> list:
        """The GPUs NVML sees (none here without a driver); read without torch."""
        from finetty.core.memory.estimate import visible_gpus

        return visible_gpus()

    def _row(self, label: str, widget, *more, row_id: str | None = None) -> Horizontal:
        return Horizontal(Label(label), widget, *more, classes="field", id=row_id)

    @work(thread=True, exclusive=True, exit_on_error=False, group="scan")
    def _scan(self) -> None:
        """List the hub cache's models and datasets and the data files here, off the main loop (a large cache
        or a slow disk takes seconds, and the form is usable meanwhile: its pickers say "scanning…")."""
        found = {"models": [], "files": [], "datasets": []}
        try:
            found["models"] = models.cached_hub_models()
            found["files"] = local_data_files(self.base_dir)
            found["datasets"] = hub_datasets()
        finally:  # (a failed scan still ends the "scanning…": the built-ins and the path fields are there)
            self.app.call_from_thread(self._fill_pickers, found)

    def _fill_pickers(self, found: dict) -> None:
        """The scanned choices into the model and dataset pickers; a model or dataset the starting recipe named
        that the scan found moves from its path field into the picker (unless the person changed the path)."""
        models_list = [("tiny-demo  (built-in demo, random weights)", demo.NAME)]
        models_list += [(as_text(name, one_line=True), name) for name in found["models"]]  # (folder names)
        models_list.append(("a model folder…", PATH))
        sets = [(f"{name}  (built-in: {info[2]})", name) for name, info in data_mod.BUILTIN.items()]
        sets += [(as_text(f"{name}  (file here)", one_line=True), name) for name in found["files"]]
        sets += [(as_text(f"{name}  (hub cache)", one_line=True), name) for name in found["datasets"]]
        sets.append(("a file or folder…", PATH))
        for key, choices in (("model", models_list), ("dataset", sets)):
            picker = self.query_one(f"#{key}", Picker)
            picker.set_choices(choices)
            path = self.query_one(f"#{key}-path", Input)
            wanted = self.start.get(key)
            if picker.value == PATH and path.value == str(wanted) and wanted in {v for _, v in choices}:
                picker.value = wanted
                path.value = ""
            self.query_one(f"#{key}-scanning").display = False

    async def on_mount(self) -> None:
        self.app.warm_standby()  # the heavy imports start now, in a process of their own, while the form is filled in
        self._scan()
        for key in ("method", "quantizer", "objective"):
            await self._build_options(key, self.start.get(f"{key}_options") or {})
        self._sync_path_rows()
        self.query_one("#method-notice").display = False
        self.query_one("#form-extra").display = bool(self.extra)
        for line in self.query(".download"):
            line.display = False
        shown = {key: {f.id.removeprefix(f"opt-{key}-") for f in self.query_one(f"#{key}-options").query(OptionField)}
                 for key in ("method", "quantizer", "objective")}
        self.uncarried = uncarried(self.start, shown)
        self._given = field_values(self.form_state())
        self.query_one("#launch", Button).focus()
        self.call_after_refresh(self._validate)

    async def _build_options(self, key: str, values: dict) -> None:
        box = self.query_one(f"#{key}-options", Vertical)
        await box.remove_children()
        name = self.query_one(f"#{key}", Select).value
        self._built[key] = name
        component = self.app.registry.components[key].get(name) if name not in (None, "none") else None
        fields = [OptionField(f"{key}_options.{o.name}", o.name, o.type, o.default, o.help, o.choices,
                              value=values.get(o.name), id=f"opt-{key}-{o.name}")
                  for o in getattr(component, "options", ())]
        if fields:
            await box.mount_all(fields)

    def _sync_path_rows(self) -> None:
        self.query_one("#model-path-row").display = self.query_one("#model", Select).value == PATH
        self.query_one("#dataset-path-row").display = self.query_one("#dataset", Select).value == PATH
        method = self.app.registry.methods.get(self.query_one("#method", Select).value)
        quantizer = self.query_one("#quantizer", Select)
        if method is not None and method.implies_quantizer:
            quantizer.value = method.implies_quantizer
            quantizer.disabled = True
        else:
            quantizer.disabled = False

    # -- reading the form ------------------------------------------------------------------------------

    def form_state(self) -> FormState:
        """What the widgets hold now (see :mod:`finetty.tui.form`)."""
        def text(widget_id: str) -> str:
            return self.query_one(f"#{widget_id}", Input).value

        processes = self.query_one("#launch-processes", Select).value
        return FormState(
            model=self.query_one("#model", Select).value, model_path=text("model-path"),
            dataset=self.query_one("#dataset", Select).value, dataset_path=text("dataset-path"),
            trust_remote_code=self.query_one("#trust_remote_code", OptionField).field().read() is True,
            dataset_options=text("dataset_options"), format=self.query_one("#format", Select).value,
            components={key: self.query_one(f"#{key}", Select).value for key in ("method", "quantizer", "objective")},
            fields=[f.field() for f in self.query(OptionField) if f.id != "trust_remote_code"],
            train_more=text("train-more"), processes=processes if isinstance(processes, int) else 1,
            engine=str(self.query_one("#launch-engine", Select).value),
            launch=dict(self.start.get("launch") or {}), extra=self.extra)

    def form(self) -> dict:
        """The form as a recipe mapping (raises FieldError naming the field whose text is not a value)."""
        return to_recipe(self.form_state())

    def _mark(self, field_key: str | None) -> None:
        for widget in self.query(".-invalid"):
            widget.remove_class("-invalid")
        for field in self.query(OptionField):
            field.mark(False)
        self._mark_widget(widget_for(field_key, self.form_state_or_empty()))

    def _mark_widget(self, widget_id: str | None) -> None:
        if not widget_id:
            return
        for widget in self.query(f"#{widget_id}"):
            if isinstance(widget, OptionField):
                widget.mark(True)
            else:
                widget.add_class("-invalid")

    def form_state_or_empty(self) -> FormState:
        """The form's state for deciding which widget to mark: only the model and dataset selects matter."""
        return FormState(model=self.query_one("#model", Select).value, dataset=self.query_one("#dataset", Select).value)

    # -- validation as you type -----------------------------------------------------------------------

    @on(Input.Changed)
    @on(Select.Changed)
    async def _changed(self, event) -> None:
        control = event.control
        if isinstance(control, Select) and control.id == "method" and control.value != self._built.get("method"):
            await self._choose_method(control.value)
        elif isinstance(control, Select) and control.id in ("quantizer", "objective") \
                and control.value != self._built.get(control.id):
            await self._build_options(control.id, {})
            self._given.update({key: value for key, value in field_values(self.form_state()).items()
                                if key.startswith(f"{control.id}_options.")})
        if isinstance(control, Select) and control.id in ("model", "dataset", "method"):
            self._sync_path_rows()
        if isinstance(control, Select) and control.id == "launch-processes":
            self.query_one("#launch-engine", Select).disabled = not (isinstance(control.value, int)
                                                                     and control.value > 1)
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(0.2, self._validate)

    async def _choose_method(self, name: str) -> None:
        """Build the method's option fields and load its recommended settings into the fields the person left
        as the form set them; the notice line under the method says what was loaded and what was kept."""
        method = self.app.registry.methods.get(name)
        load, kept = recommend(dict(method.recommended) if method else {}, field_values(self.form_state()),
                               self._given)
        await self._build_options("method", {key.partition(".")[2]: value for key, value in load.items()
                                             if key.startswith("method_options.")})
        more = {}
        for key, value in load.items():
            section, _, setting = key.partition(".")
            if section != "train":
                continue
            if setting not in TRAIN_KEYS:
                more[setting] = value
                continue
            editor = self.query_one(f"#train-{setting}-editor")
            editor.value = value if isinstance(editor, Select) else to_text(value)
        if more:
            box = self.query_one("#train-more", Input)
            try:
                box.value = with_train_more(box.value, more)
            except FieldError:
                pass  # (unreadable text is the person's: field_values counted it as changed)
        self._given.update({key: value for key, value in field_values(self.form_state()).items()
                            if key in load or key.startswith("method_options.")})  # what was kept stays the person's
        notice = self.query_one("#method-notice", Static)
        text = recommendation_notice(name, load, kept)
        notice.update(Text(one_line(text), style="italic"))
        notice.display = bool(text)

    def _validate(self) -> None:
        kept = [key for key in self.uncarried
                if self.query_one(f"#{key.partition('_')[0]}", Select).value == self.start.get(key.partition("_")[0])]
        if kept:
            self._show_problem(f"the recipe's {', '.join(kept)} has no field in this form (the chosen component "
                               "declares no such option), so it cannot be carried: fix the recipe, or choose "
                               "another component", None)
            return
        try:
            data = self.form()
        except FieldError as exc:
            self._show_problem(exc.problem, None)
            self._mark_widget(exc.field)
            return
        self._check(data)

    @work(thread=True, exclusive=True, exit_on_error=False, group="validate")
    def _check(self, data: dict) -> None:
        from finetty.core.data import hub
        from finetty.core.errors import InputError
        from finetty.core.recipe import recipe as recipe_mod

        missing = [(ref, place) for ref, place in hub.recipe_refs(data["model"], data["dataset"], self.base_dir,
                                                                  code=bool(data.get("trust_remote_code")))
                   if hub.cached(ref) is None]
        # validating would say "not in the cache": launching downloads it instead (offline, the validator's
        # refusal says why it cannot be downloaded, and marks the field)
        if missing and not hub.offline():
            self.app.call_from_thread(self._show_missing, missing)
            return
        try:
            recipe = recipe_mod.validate(copy.deepcopy(data), self.app.registry, recipe_mod.parse_text('', None)[1],
                                         self.base_dir, check_data=False, runs=self.app.runs)
        except InputError as exc:
            self.app.call_from_thread(self._show_problem, f"{exc.problem}" + (f" ({exc.fix})" if exc.fix else ""),
                                      field_for(exc.place))
            return
        estimate = self._estimate(recipe)
        self.app.call_from_thread(self._show_valid, recipe, data, estimate)

    @staticmethod
    def _estimate(recipe) -> Text:
        """The pre-flight memory estimate (reads config.json only: no torch), coloured by its verdict."""
        from finetty.core.memory.estimate import estimate

        try:
            result = estimate(recipe)
        except Exception as exc:  # an estimate is advice: never block the form on it
            return Text(f"memory estimate unavailable: {exc}", style="dim")
        style = {True: "green", False: "bold red", None: "dim"}[result.fits_here]
        return Text(result.summary(), style=style)

    def _show_problem(self, problem: str, field_key: str | None) -> None:
        self.recipe = None
        self.problem = problem
        status = Text("✗ ", style="bold red")
        status.append(clean(problem))
        self.query_one("#form-status", Static).update(status)
        self._mark(field_key)
        self.query_one("#launch", Button).disabled = True
        self.query_one("#queue", Button).disabled = True

    def _show_missing(self, missing: list) -> None:
        """The form names hub repositories the cache lacks: launching (or queueing) downloads them first."""
        self.recipe = None
        self.problem = None
        self.missing = missing
        self._mark(None)
        names = ", ".join(f"{ref.describe()} ({ref.kind})" for ref, _ in missing)
        status = Text("⬇ ", style="bold yellow")
        status.append(one_line(f"{names} not in the hub cache: Launch or Queue downloads it first"))
        self.query_one("#form-status", Static).update(status)
        for ref, _ in missing:
            line = self.query_one(f"#{ref.kind}-download", Static)
            line.update(Text(one_line(f"{ref.describe()}: downloads from the Hub at launch"), style="dim"))
            line.display = True
        downloading = any(w.group == "download" and w.is_running for w in self.workers)
        self.query_one("#launch", Button).disabled = downloading
        self.query_one("#queue", Button).disabled = downloading

    def _show_valid(self, recipe, data: dict, estimate: Text) -> None:
        self.recipe = recipe
        self.problem = None
        self.missing = []
        for line in self.query(".download"):
            line.display = bool(str(line.render()).startswith("✓"))  # (a finished download says so until launch)
        self._mark(None)
        status = Text("✓ ", style="bold green")
        steps = recipe.train.get("max_steps")
        status.append(one_line(f"{recipe.method}/{recipe.objective} on {Path(recipe.model).name} with "
                               f"{Path(recipe.dataset).name}")
                      + (f", {steps} steps" if isinstance(steps, int) and steps > 0 else ""))
        status.append("\n")
        status.append_text(estimate)
        self.query_one("#form-status", Static).update(status)
        self.query_one("#launch", Button).disabled = False
        self.query_one("#queue", Button).disabled = False
        request = {"model": data["model"], "dataset": data["dataset"], "format": data["format"],
                   "dataset_options": recipe.dataset_options, "objective": recipe.objective,
                   "max_length": recipe.train.get("max_length"), "trust_remote_code": recipe.trust_remote_code,
                   "base_dir": str(self.base_dir)}
        key = json.dumps(request, sort_keys=True, default=str)
        if key != self.preview_key:
            self.preview_key = key
            self.data_problem = None
            self.query_one("#preview-text", Static).update(Text("preview: reading the data and the tokenizer…",
                                                                style="dim"))
            self.preview(request, key)
        elif self.data_problem:
            self._show_problem(f"data: {self.data_problem}", None)

    # -- preview -----------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="preview")
    def preview(self, request: dict, key: str = "") -> None:
        worker = get_current_worker()
        compute = getattr(self.app, "preview", None)
        if compute is not None:
            answer = compute(request)
            if not worker.is_cancelled:
                self.app.call_from_thread(self._show_preview, answer, key)
            return
        process = subprocess.Popen([sys.executable, "-m", "finetty.tui.preview"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        process.stdin.write(json.dumps(request))
        process.stdin.close()
        while True:
            try:
                process.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if worker.is_cancelled:
                    process.kill()
                    process.wait()
                    return
        out = process.stdout.read()
        err = process.stderr.read()
        try:
            answer = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = {"error": (err.strip().splitlines() or ["the preview process failed"])[-1]}
        if not worker.is_cancelled:
            self.app.call_from_thread(self._show_preview, answer, key)

    def _show_preview(self, answer: dict, key: str = "") -> None:
        """The preview; a complaint about the data is the form's status too (✗, nothing launches), so the two
        lines never disagree (the status once said ✓ over a preview saying the data cannot train)."""
        text = Text()
        if answer.get("error"):
            text.append("data: ", style="bold")
            text.append(clean(answer["error"]), style="red")
            if answer.get("refused") and key == self.preview_key:
                self.data_problem = one_line(answer["error"])
                if self.recipe is not None:
                    self._show_problem(f"data: {self.data_problem}", None)
        else:
            text.append(one_line(f"{answer['records']} records, format {answer['format']}"), style="bold")
            text.append(" (detected)" if answer.get("detected") else " (chosen)")
            lengths = answer["lengths"]
            sampled = "" if lengths["all"] else f" (the first {lengths['count']})"
            text.append(f"\ntokens{sampled}: min {lengths['min']} · median {lengths['median']:g} · "
                        f"max {lengths['max']}; ")
            text.append(f"{lengths['over']} over max_length {lengths['max_length']}",
                        style="yellow" if lengths["over"] else "green")
            for warning in (answer.get("report") or {}).get("warnings", []):  # ignored columns, the mixture
                text.append("\nwarning: ", style="yellow")
                text.append(clean(warning))
            for number, sample in enumerate(answer["samples"], 1):
                text.append(f"\n── record {number} ──\n", style="dim")
                text.append(clean(sample.strip()))  # a record is data: no escape reaches the terminal
        self.query_one("#preview-text", Static).update(text)

    # -- launch, queue, save --------------------------------------------------------------------------

    @on(Button.Pressed, "#launch")
    def action_launch(self) -> None:
        self._submit("launch")

    @on(Button.Pressed, "#queue")
    def action_queue(self) -> None:
        self._submit("queue")

    def _submit(self, how: str) -> None:
        download = self.recipe is None and bool(self.missing)
        if self.recipe is None and not download:
            self.notify(self.problem or "the form is being checked", title="Not ready", severity="error")
            return
        try:
            data = self.form()
        except FieldError as exc:
            self.notify(exc.problem, severity="error")
            return

        def go() -> None:
            self.query_one("#launch", Button).disabled = True
            self.query_one("#queue", Button).disabled = True
            if download:
                self._download(data, list(self.missing), how)
            else:
                self._start(data, how)

        if not (data.get("trust_remote_code") if download else self.recipe.trust_remote_code):
            go()
            return

        def answered(yes: bool | None) -> None:
            if yes:
                go()

        self.app.push_screen(ConfirmScreen(
            f"{data['model']} will run with trust_remote_code: the Python code that ships with the model "
            f"runs in the worker, with your permissions.\nOnly go on if you trust where it came from.",
            yes="Launch" if how == "launch" else "Queue"), answered)

    @work(thread=True, exclusive=True, exit_on_error=False, group="launch")
    def _start(self, data: dict, how: str) -> None:
        from finetty.core.errors import InputError, RunBusyError
        from finetty.core.recipe import recipe as recipe_mod
        from finetty.core.run import launch, queue, rundir

        runs = self.app.runs
        try:
            stacked = None
            if how == "queue":  # (model: run:latest... stays unresolved until the entry starts, as in the CLI)
                draft = recipe_mod.validate(copy.deepcopy(data), self.app.registry, recipe_mod.parse_text('', None)[1],
                                            self.base_dir, check_sources=False)
                stacked = queue.stacking(runs, draft, self.app.registry)
            recipe = recipe_mod.validate({**copy.deepcopy(data), **(stacked.changes if stacked else {})},
                                         self.app.registry, recipe_mod.parse_text('', None)[1],
                                         self.base_dir, check_data=True, runs=self.app.runs)
            if how == "queue":
                entry = queue.add(runs, recipe, stacked)
                queue.ensure_runner(runs)
                self.app.call_from_thread(self._started, None, f"queued {entry.id}: it starts when nothing "
                                                                f"else trains")
                return
            run_dir = rundir.create(runs, recipe.method, recipe.to_yaml())
            launch.start_worker(run_dir)  # the standby worker takes it when it can
        except (InputError, RunBusyError, OSError) as exc:
            self.app.call_from_thread(self._failed, exc)
            return
        self.app.call_from_thread(self._started, run_dir, f"started {run_dir.name}")

    @work(thread=True, exclusive=True, exit_on_error=False, group="download")
    def _download(self, data: dict, missing: list, how: str) -> None:
        """Each missing hub repository downloaded by ``finetty pull --progress-json`` in a child process (the app
        never imports what a download needs beyond huggingface_hub's cache API, and a stuck transfer cannot stall
        it), its progress on the line under the field; then the launch goes on as if the cache had held them."""
        worker = get_current_worker()
        for ref, _place in missing:
            command = [sys.executable, "-m", "finetty.core.cli", "pull", ref.describe(), "--progress-json"]
            command += ["--dataset"] if ref.kind == "dataset" else []
            command += ["--code"] if ref.code else []
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       cwd=self.base_dir)
            refusal, other = None, ""
            for line in process.stdout:
                if worker.is_cancelled:
                    process.kill()
                    process.wait()
                    return
                try:
                    message = json.loads(line)
                except ValueError:
                    other = line.strip() or other  # (a traceback's last line, if the child failed otherwise)
                    continue
                if not isinstance(message, dict):
                    continue
                if "error" in message:
                    refusal = message
                elif not message.get("done"):
                    self.app.call_from_thread(self._show_download, ref.kind, message)
            process.wait()
            if refusal is not None or process.returncode != 0:
                said = str(refusal["error"]) if refusal else (other or f"finetty pull exited {process.returncode}")
                self.app.call_from_thread(self._download_failed, ref.kind, said)
                return
            self.app.call_from_thread(self._download_done, ref)
        self.app.call_from_thread(self._downloaded, data, how)

    def _show_download(self, kind: str, progress: dict) -> None:
        from rich.filesize import decimal

        done, total = int(progress.get("bytes_done") or 0), int(progress.get("bytes_total") or 0)
        text = Text("⬇ ", style="bold")
        text.append(one_line(progress.get("repo", "")))
        text.append(f": {decimal(done)}" + (f" of {decimal(total)} ({100 * done // total}%)" if total else ""))
        if progress.get("files_total"):
            text.append(f" · {progress.get('files_done', 0)}/{progress['files_total']} files", style="dim")
        line = self.query_one(f"#{kind}-download", Static)
        line.update(text)
        line.display = True

    def _download_done(self, ref) -> None:
        line = self.query_one(f"#{ref.kind}-download", Static)
        line.update(Text("✓ " + one_line(f"{ref.describe()}: in the hub cache"), style="green"))
        line.display = True

    def _download_failed(self, kind: str, said: str) -> None:
        """The refusal (gated, offline, unknown) as the field's error: the line under it and the status say it."""
        line = self.query_one(f"#{kind}-download", Static)
        line.update(Text("✗ " + clean(said), style="red"))
        line.display = True
        self._show_problem(said, kind)
        self.notify(clean(said), title="Not downloaded", severity="error")

    def _downloaded(self, data: dict, how: str) -> None:
        self.missing = []
        self._start(data, how)

    def _failed(self, exc: Exception) -> None:
        from finetty.core.errors import InputError

        self.query_one("#launch", Button).disabled = False
        self.query_one("#queue", Button).disabled = False
        if isinstance(exc, InputError):
            self._show_problem(str(exc), field_for(exc.place))
        self.notify(str(exc), title="Not started", severity="error")

    def _started(self, run_dir: Path | None, message: str) -> None:
        self.notify(message)
        app = self.app
        app.action_back()
        app.refresh_runs()
        if run_dir is not None:
            app.open_monitor(run_dir)

    def action_save(self) -> None:
        try:
            data = self.form()
        except FieldError as exc:
            self.notify(exc.problem, severity="error")
            return
        default = f"{data['method']}-{Path(str(data['model'])).name}.yaml"

        def chosen(path: str | None) -> None:
            if path:
                self._save(data, path)

        self.app.push_screen(PromptScreen("Save the form as a recipe (runs with `finetty train FILE`):", default),
                             chosen)

    def _save(self, data: dict, path_text: str) -> None:
        path = Path(path_text).expanduser()
        path = path if path.is_absolute() else self.base_dir / path
        if path.exists():
            self.notify(f"{path} exists: choose another name", severity="error")
            return
        body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=None)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(f"# finetty train {path_text}\n{body}", encoding="utf-8")
            tmp.rename(path)
        except OSError as exc:
            self.notify(f"cannot write {path}: {exc.strerror}", severity="error")
            return
        self.notify(f"saved {path}; run it with `finetty train {path_text}`")

    # -- the help line follows the focus ---------------------------------------------------------------

    def on_descendant_focus(self, event) -> None:
        widget = event.widget
        help_text = getattr(widget, "tooltip", None)
        parent = widget.parent
        if isinstance(parent, OptionField):
            help_text = parent.help_text
        hint = self.query_one("#form-hint", Static)
        hint.update(Text(str(help_text) if help_text else DEFAULT_HINT, style="dim"))
