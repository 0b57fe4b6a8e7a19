"""The event contract: every event type a run's ``events.jsonl`` holds, with its fields and their types.

``events.jsonl`` is the only interface between a running job and everything
that reads it (``finetty runs``, ``attach``, the app, ``finetty eval``), so its
shape is declared here, once: one ``TypedDict`` per event type, registered in
:data:`EVENT_TYPES`. docs/events.md is checked against this module by a test,
and another test trains a real run and checks every event it wrote.

Two rules, one for each side:

- Writers write every required field of their type (``NotRequired`` marks a
  field only some writers have, or one added after runs were recorded).
- Readers check the type of every declared field that is present, and that
  there is a ``type`` (:func:`problem`), skip an event that contradicts its declaration exactly
  as they skip a torn line, and count it; they ignore unknown types and
  unknown fields, so an old reader reads a newer run. A missing field is read
  as unknown (``event.get``), never as an error, so a run recorded before a
  field existed still reads.

A ``float`` field accepts a JSON integer (``1`` for ``1.0``); no number field
accepts a boolean.
"""

import types
import typing
from typing import Any, Literal, NotRequired, TypedDict


class Event(TypedDict):
    """What every event has."""

    ts: float
    """unix seconds, to the millisecond"""
    type: str


class WorkerStarted(Event):
    """A worker process began (a fresh run or a resume); written before anything can fail."""

    pid: int
    resume: bool


class Data(Event):
    """The dataset as the worker read it."""

    dataset: str
    format: str
    detected: bool
    records: int
    train_records: int
    eval_records: int


class Download(Event):
    """A model or dataset the run takes from the Hugging Face hub cache, where ``finetty train`` (or ``finetty
    pull``) downloaded it before the run started; written once per repo when training is set up."""

    kind: Literal["model", "dataset"]
    repo: str
    """the hub id, ``org/name``"""
    revision: str
    """the revision the recipe asked for (``main`` unless it pinned one with ``org/name@revision``)"""
    commit: str
    """the commit that revision resolved to: the snapshot the run trained on"""
    files: int
    bytes: int


class Warning(Event):  # noqa: A001 (the event type's own name)
    """Something the person should know; the run goes on."""

    message: str


class RunStarted(Event):
    """Training begins (again after a resume or a batch shrink); the resolved recipe and the machine."""

    step: int
    total_steps: int
    num_train_epochs: float
    recipe: dict
    versions: dict
    device: str
    world_size: int
    distributed_type: str | None
    trainable_parameters: int
    total_parameters: int
    model_dir: str
    pid: int
    resumed_from: str | None
    """the checkpoint folder, relative to the run, or null for a start from step 0"""
    plugins: NotRequired[list]
    """the distribution and version of every plugin component the run uses"""
    parent: NotRequired[dict]
    """a run on top of a run (``model: run:ID``): its ``run`` id, ``checkpoint``, ``path``, ``mode`` (continue,
    merge or whole), ``method``, ``objective`` and a one-line ``message``"""


class Step(Event):
    """One logged optimizer step. Any further numeric log of the objective (DPO's rewards, ...) rides along."""

    step: int
    epoch: float
    loss: float
    learning_rate: float | None
    grad_norm: float | None
    tokens: int
    """non-padding tokens trained on so far, over every process and every worker of the run"""
    tokens_per_second: float
    elapsed: float
    """seconds since this worker started training"""


class Eval(Event):
    """An evaluation: the Trainer's during training (``source: trainer``) or ``finetty eval``'s after it.

    Both have ``step``, ``source``, ``loss`` (the evaluated model's loss, or
    null where none was measured) and ``metrics`` (every other number measured
    for that model). ``finetty eval`` adds what it compared against."""

    step: int
    source: NotRequired[Literal["trainer", "finetty eval"]]
    """absent in runs recorded before the two shapes were one: read as ``trainer``"""
    loss: NotRequired[float | None]
    metrics: NotRequired[dict]
    epoch: NotRequired[float | None]
    checkpoint: NotRequired[str]
    """finetty eval: the checkpoint folder name, or ``final``"""
    data: NotRequired[str]
    examples: NotRequired[int]
    base: NotRequired[dict]
    """finetty eval: the same metrics for the base model"""
    report: NotRequired[str]
    """finetty eval: the report's path, relative to the run"""


class Checkpoint(Event):
    """A complete checkpoint was published."""

    step: int
    path: str
    """relative to the run: ``checkpoints/step-000040``"""


class Memory(Event):
    """A memory sample (see :mod:`finetty.core.memory.monitor` for the members of ``gpus`` and ``host``)."""

    step: int | None
    watermark: float
    gpus: list
    host: dict


class Watermark(Event):
    """A GPU crossed the memory watermark, or fell back under it."""

    gpu: int
    fraction: float
    watermark: float
    state: Literal["crossed", "recovered"]
    policy: str
    step: int | None
    used: int
    total: int


class Shrink(Event):
    """Out of memory (or the watermark's shrink policy): the run goes on from a checkpoint with a smaller micro-batch."""

    step: int
    reason: str
    micro_batch: int
    gradient_accumulation_steps: int
    previous_micro_batch: int
    previous_gradient_accumulation_steps: int
    checkpoint: str | None


class RecipeChanged(Event):
    """A resume with ``--set`` changed the run's recipe (how long it trains, how often it saves, who is told):
    written by ``finetty train --resume`` under the run's lock, before the worker starts."""

    changes: dict
    checkpoint: str | None


class Stopped(Event):
    """The worker stopped on request after saving a checkpoint; the run can be resumed."""

    step: int
    checkpoint: str | None
    reason: str


class RunFinished(Event):
    """Training ended and ``final/`` is written."""

    step: int
    final: str
    train_loss: float
    runtime: float | None
    tokens: int


class RunFailed(Event):
    """The run cannot go on; ``reason`` is one line. The last complete checkpoint stays usable."""

    reason: str


#: Every event type, by its ``type``.
EVENT_TYPES: dict[str, type] = {
    "worker_started": WorkerStarted, "download": Download, "data": Data, "warning": Warning, "run_started": RunStarted,
    "step": Step, "eval": Eval, "checkpoint": Checkpoint, "memory": Memory, "watermark": Watermark,
    "shrink": Shrink, "recipe_changed": RecipeChanged, "stopped": Stopped, "run_finished": RunFinished, "run_failed": RunFailed,
}

#: The events that end a worker's run, and the status each leaves.
TERMINAL = {"run_finished": "finished", "run_failed": "failed", "stopped": "stopped"}


# -- checking an event against its declaration ----------------------------------------------------

class _Field(typing.NamedTuple):
    name: str
    kinds: frozenset
    """the exact types JSON gives for it (``bool`` is not ``int`` here: ``type(True) is bool``)"""
    values: frozenset | None
    """a Literal's allowed values"""


def _kinds(hint: Any) -> tuple[frozenset, frozenset | None]:
    origin = typing.get_origin(hint)
    if origin in (typing.Required, typing.NotRequired):
        return _kinds(typing.get_args(hint)[0])
    if origin is Literal:
        values = typing.get_args(hint)
        return frozenset(type(v) for v in values), frozenset(values)
    if origin in (typing.Union, types.UnionType):
        parts = [_kinds(arg) for arg in typing.get_args(hint)]
        kinds = frozenset().union(*(k for k, _ in parts))
        if any(v is not None for _, v in parts):
            values = frozenset().union(*(v if v is not None else k for k, v in parts))
            return kinds, values
        return kinds, None
    if hint is float:
        return frozenset({int, float}), None
    if hint is type(None):
        return frozenset({type(None)}), None
    return frozenset({origin or hint}), None


def _compile(declaration: type) -> tuple[tuple[_Field, ...], frozenset[str]]:
    hints = typing.get_type_hints(declaration)
    return (tuple(_Field(name, *_kinds(hint)) for name, hint in hints.items()),
            frozenset(declaration.__required_keys__))


_BASE, _BASE_REQUIRED = _compile(Event)
_CHECKS = {name: _compile(declaration) for name, declaration in EVENT_TYPES.items()}


def problem(event: Any, strict: bool = False) -> str | None:
    """What is wrong with ``event`` against the contract, or None.

    Readers call it as is: ``type`` must be there, and every declared field that
    is present must have its type. ``strict`` (for writers' tests) also asks for
    ``ts`` and every required field of the type. (Called for every line read: a
    million-event history is checked in about a second.)"""
    if type(event) is not dict:
        return "not a JSON object"
    kind = event.get("type")
    if type(kind) is not str:
        return "no 'type'"
    fields, required = _CHECKS.get(kind) or (_BASE, _BASE_REQUIRED)
    if strict:
        for name in _BASE_REQUIRED | required:
            if name not in event:
                return f"no {name!r}"
    for field in fields:
        value = event.get(field.name, _ABSENT)
        if value is _ABSENT:
            continue
        if type(value) not in field.kinds or (field.values is not None and value not in field.values):
            return f"{kind} field {field.name!r} is {type(value).__name__} {value!r:.40}"
    return None


_ABSENT = object()


def describe(declaration: type) -> list[tuple[str, str, bool, str]]:
    """(field, type as written, required, its note) for each field a type adds to :class:`Event`: docs/events.md."""
    import ast
    import inspect

    found = []
    body = ast.parse(inspect.getsource(declaration)).body[0].body  # type: ignore[attr-defined]
    for node, after in zip(body, body[1:] + [None]):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        text = ast.unparse(node.annotation)
        for wrapper in ("NotRequired[", "Required["):
            if text.startswith(wrapper):
                text = text[len(wrapper):-1]
        note = after.value.value if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) else ""
        found.append((node.target.id, text, node.target.id in declaration.__required_keys__, str(note)))
    return found
