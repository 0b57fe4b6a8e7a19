"""The New run form as data: a recipe to the form's values and back, with no Textual in it.

The screen (``screens/new_run.py``) draws widgets from a :class:`FormState` and
reads one back from them; everything between a form and a recipe mapping
happens here, where a test can check it without a Pilot: which select holds
"a folder…" and which text field the folder, which training settings have a
field of their own and which go into "more train settings", how typed text is
read (``1e-4`` is a number, ``[q_proj, v_proj]`` a list), and which field a
validator's complaint points at. A field whose text cannot be read raises
:class:`FieldError`, naming the field.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from finetty.core.plugin.options import yaml_number
from finetty.core.recipe.sections import MODEL_OPTIONS

#: The value of the model and dataset selects that means "the path typed in the field below".
PATH = "__path__"

#: The training settings shown as fields (any other goes into "more train settings").
TRAIN_FIELDS = (
    ("learning_rate", "float", "peak learning rate"),
    ("max_steps", "int", "optimizer steps to train (-1: train num_train_epochs)"),
    ("num_train_epochs", "float", "passes over the data when max_steps is -1"),
    ("per_device_train_batch_size", "int", "examples (or packed rows) per step on each device"),
    ("gradient_accumulation_steps", "int", "steps whose gradients add up before each optimizer step"),
    ("warmup_steps", "int", "steps of linear learning-rate warm-up"),
    ("lr_scheduler_type", "str", "linear, cosine, constant, ..."),
    ("logging_steps", "int", "a step event (loss, rate) every this many steps"),
    ("save_steps", "int", "a checkpoint every this many steps"),
    ("save_total_limit", "int", "keep at most this many checkpoints"),
    ("max_length", "int", "longest example in tokens; longer ones are truncated or dropped"),
    ("val_size", "int|float", "held-out evaluation split: a fraction below 1 or a count of examples"),
    ("packing", "bool", "sft: pack several examples into each row of max_length tokens"),
    ("bf16", "bool", "train in bfloat16 (GPUs that support it)"),
    ("seed", "int", "random seed"),
)
TRAIN_KEYS = {name for name, _, _ in TRAIN_FIELDS}
#: The component kinds whose options the form builds from the plugins' descriptors.
COMPONENTS = ("method", "quantizer", "objective")
#: launch settings the form shows itself; the others of a starting recipe are kept as they were.
SHOWN_LAUNCH = ("num_processes", "distributed_type", "zero_stage")
#: The recipe keys the form has fields for; any other key of a starting recipe is carried through unchanged.
FORM_KEYS = ("model", "dataset", "trust_remote_code", "dataset_options", "format", "model_options",
             *(f"{kind}{suffix}" for kind in COMPONENTS for suffix in ("", "_options")), "train", "launch")
MODEL_OPTION_NAMES = tuple(o.name for o in MODEL_OPTIONS)


class FieldError(ValueError):
    """A field whose text is not a value: ``field`` is the widget id, ``problem`` what to say."""

    def __init__(self, field_id: str, problem: str):
        super().__init__(problem)
        self.field = field_id
        self.problem = problem


def to_text(value: Any) -> str:
    """A value as the person types it (YAML flow style for lists and mappings)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return yaml.safe_dump(value, default_flow_style=True).strip()
    return str(value)


def parse(text: str, types: str = "") -> Any:
    """What the person typed, read as YAML (``3``, ``true``, ``[q_proj, v_proj]``); ``1e-4`` is a number."""
    if not text.strip():
        return None
    return yaml_number(yaml.safe_load(text), types)


@dataclass(frozen=True)
class Field:
    """One typed field: its widget id, the recipe key it fills, and what it holds.

    ``text`` is what was typed (read with :func:`parse`), unless ``picked``:
    then ``value`` is the value chosen from a list (or given by a recipe).
    """

    id: str
    key: str
    type_: str = ""
    text: str = ""
    picked: bool = False
    value: Any = None

    def read(self) -> Any:
        if self.picked:
            return self.value
        try:
            return parse(self.text, self.type_)
        except yaml.YAMLError as exc:
            name = self.key.rpartition(".")[2]
            raise FieldError(self.id, f"{name}: {self.text!r} is not a value ({exc.__class__.__name__})") from None


@dataclass
class FormState:
    """What the New run form holds, field by field (select values, typed text, option fields)."""

    model: Any = "tiny-demo"
    model_path: str = ""
    dataset: Any = "identity"
    dataset_path: str = ""
    trust_remote_code: bool = False
    dataset_options: str = ""
    format: str = "auto"
    components: dict[str, Any] = field(default_factory=dict)
    """the chosen method, quantizer and objective by kind"""
    fields: list[Field] = field(default_factory=list)
    """the option fields of the chosen components (``method_options.r``) and the training fields (``train.seed``)"""
    train_more: str = ""
    processes: int = 1
    engine: str = "ddp"
    launch: dict = field(default_factory=dict)
    """launch settings of the starting recipe that the form does not show"""
    extra: dict = field(default_factory=dict)
    """the starting recipe's keys the form has no field for (``chat_template``, ``notify``, a ``model_options``
    name it does not show...), carried unchanged into the recipe it launches or saves: a form that dropped them
    would train something other than the recipe it was opened with"""


def _mapping(field_id: str, raw: str) -> dict:
    try:
        value = yaml.safe_load(raw) if raw.strip() else {}
    except yaml.YAMLError:
        raise FieldError(field_id, "is not a YAML mapping such as {key: value}") from None
    if not isinstance(value, dict):
        raise FieldError(field_id, f"must be a mapping such as {{key: value}}, not {raw!r}")
    return value


def to_recipe(state: FormState) -> dict:
    """The form as a recipe mapping; raises :class:`FieldError` naming the first field that is not a value."""
    out: dict[str, Any] = {
        "model": state.model_path.strip() if state.model == PATH else state.model,
        "dataset": state.dataset_path.strip() if state.dataset == PATH else state.dataset,
    }
    if state.trust_remote_code:
        out["trust_remote_code"] = True
    out["dataset_options"] = _mapping("dataset_options", state.dataset_options)
    out["format"] = state.format
    values = {f.key: (f, f.read()) for f in state.fields}
    defaults = {f"model_options.{o.name}": o.default for o in MODEL_OPTIONS}
    model_options = {key.partition(".")[2]: value for key, (_, value) in values.items()
                     if key in defaults and value not in (None, defaults[key])}
    model_options = {**(state.extra.get("model_options") or {}), **model_options}
    if model_options:  # (the defaults are left out: a saved recipe says only what was chosen)
        out["model_options"] = model_options
    for kind in COMPONENTS:
        out[kind] = state.components.get(kind)
        out[f"{kind}_options"] = {key.partition(".")[2]: value for key, (_, value) in values.items()
                                  if key.startswith(f"{kind}_options.")}
    train = _mapping("train-more", state.train_more)
    for key, (f, value) in values.items():
        if key.startswith("train.") and value is not None and not (f.type_ == "bool" and value is False):
            train[key.partition(".")[2]] = value
    out["train"] = train
    launch = {k: v for k, v in state.launch.items() if k not in SHOWN_LAUNCH}
    if state.processes > 1:
        kind, _, stage = state.engine.partition("-")
        launch.update(num_processes=state.processes, distributed_type=kind)
        if stage:
            launch["zero_stage"] = int(stage)
    if launch:
        out["launch"] = launch
    out.update((key, copy.deepcopy(value)) for key, value in state.extra.items() if key != "model_options")
    return out


def extra_keys(recipe: dict) -> dict:
    """The keys of ``recipe`` the form has no field for: other top-level keys whole, and the ``model_options``
    names it does not show (under ``model_options``)."""
    extra = {key: copy.deepcopy(value) for key, value in recipe.items() if key not in FORM_KEYS}
    hidden = {name: value for name, value in (recipe.get("model_options") or {}).items()
              if name not in MODEL_OPTION_NAMES}
    if hidden:
        extra["model_options"] = copy.deepcopy(hidden)
    return extra


def extra_line(extra: dict) -> str:
    """``also from the recipe: chat_template, notify, model_options.device_map`` (empty when there is nothing)."""
    names = [key for key in extra if key != "model_options"]
    names += [f"model_options.{name}" for name in extra.get("model_options") or {}]
    return "also from the recipe: " + ", ".join(names) if names else ""


def uncarried(recipe: dict, shown: dict[str, set[str]]) -> list[str]:
    """The component option keys of ``recipe`` with no field in the form (``shown``: the option names each
    component kind shows), as ``method_options.name``: the form cannot carry them, so it refuses them."""
    return [f"{kind}_options.{name}" for kind in COMPONENTS
            for name in (recipe.get(f"{kind}_options") or {}) if name not in shown.get(kind, set())]


def engine_value(launch: dict) -> str:
    """The form's engine choice for a recipe's launch settings (DeepSpeed's ZeRO stage after a dash)."""
    kind = launch.get("distributed_type", "ddp")
    return f"deepspeed-{launch.get('zero_stage', 2)}" if kind == "deepspeed" else kind


def from_recipe(recipe: dict, known_models: set[str], known_datasets: set[str]) -> FormState:
    """The form's values for a recipe mapping; a model or dataset not in the pickers goes to its path field.

    The component option fields are given by value: the screen builds them from
    the plugins' descriptors, which know each option's type and choices.
    """
    model = recipe.get("model", "tiny-demo")
    dataset = recipe.get("dataset", "identity")
    train = dict(recipe.get("train") or {})
    types = {name: type_ for name, type_, _ in TRAIN_FIELDS}
    fields = [Field(f"train-{name}", f"train.{name}", types[name], picked=True, value=train[name])
              for name in types if name in train]
    for kind in (*COMPONENTS, "model"):
        fields += [Field(f"opt-{kind}-{name}", f"{kind}_options.{name}", picked=True, value=value)
                   for name, value in (recipe.get(f"{kind}_options") or {}).items()
                   if kind != "model" or name in MODEL_OPTION_NAMES]
    more = {k: v for k, v in train.items() if k not in TRAIN_KEYS}
    launch = dict(recipe.get("launch") or {})
    return FormState(
        model=model if model in known_models else PATH, model_path="" if model in known_models else str(model),
        dataset=dataset if dataset in known_datasets else PATH,
        dataset_path="" if dataset in known_datasets else str(dataset),
        trust_remote_code=bool(recipe.get("trust_remote_code")),
        dataset_options=to_text(recipe.get("dataset_options") or {}),
        format=recipe.get("format", "auto"),
        components={kind: recipe.get(kind) for kind in COMPONENTS},
        fields=fields, train_more=to_text(more) if more else "",
        processes=int(launch.get("num_processes", 1) or 1), engine=engine_value(launch), launch=launch,
        extra=extra_keys(recipe))


def field_for(place: str | None) -> str | None:
    """The recipe key a validator's ``place`` points at (``key train.max_steps`` -> ``train.max_steps``)."""
    match = re.search(r"key ([\w.-]+)", place or "")
    return match.group(1) if match else None


def widget_for(key: str | None, state: FormState) -> str | None:
    """The id of the widget that holds recipe key ``key`` in this form (None: no field to mark)."""
    if not key:
        return None
    if key.startswith(("train.", "method_options.", "quantizer_options.", "objective_options.", "model_options.")):
        head, _, name = key.partition(".")
        name = name.split(".")[0]
        if head == "train":
            return f"train-{name}" if name in TRAIN_KEYS else "train-more"
        return f"opt-{head.removesuffix('_options')}-{name}"
    if key == "model":
        return "model-path" if state.model == PATH else "model"
    if key == "dataset":
        return "dataset-path" if state.dataset == PATH else "dataset"
    return key


def field_values(state: FormState) -> dict[str, Any]:
    """Every typed field's value by recipe key (``train.learning_rate``, ``method_options.r``), train-more's keys
    included; a field whose text is not a value reads as that text, so it never equals a value the form set."""
    values: dict[str, Any] = {}
    for f in state.fields:
        try:
            values[f.key] = f.read()
        except FieldError:
            values[f.key] = ("unreadable", f.text)
    try:
        more = _mapping("train-more", state.train_more)
    except FieldError:
        more = {}
        values["train.*"] = ("unreadable", state.train_more)
    for name, value in more.items():
        values.setdefault(f"train.{name}", value)
    return values


def recommend(recommended: dict[str, Any], now: dict[str, Any],
              given: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """Which of a newly chosen method's recommended values the form loads: ``(load, kept)``.

    ``now`` is :func:`field_values` of the form as it is, ``given`` the same as
    the form last set it (from the starting recipe, or a method's
    recommendations): a field whose value differs was changed by the person,
    and keeps it (listed in ``kept``). The method's own options are fields made
    afresh for it, so their recommendations always load.
    """
    load: dict[str, Any] = {}
    kept: list[str] = []
    for key, value in recommended.items():
        if key.startswith("method_options.") or now.get(key) == given.get(key):
            load[key] = value
        elif now.get(key) != value:
            kept.append(key)
    return load, kept


def with_train_more(text: str, values: dict[str, Any]) -> str:
    """The "more train settings" text with ``values`` (train setting name -> value) set in its mapping."""
    more = _mapping("train-more", text)
    more.update(values)
    return to_text(more) if more else ""


def recommendation_notice(method: str, load: dict[str, Any], kept: list[str]) -> str:
    """``prefix: learning_rate 0.01, prefix_projection true from the method's recommendations; kept your ...``."""
    def short(key: str) -> str:
        return key.partition(".")[2]

    parts = []
    if load:
        parts.append(", ".join(f"{short(key)} {to_text(value)}" for key, value in load.items())
                     + " from the method's recommendations")
    if kept:
        parts.append("kept your " + ", ".join(short(key) for key in kept))
    return f"{method}: " + "; ".join(parts) if parts else ""
