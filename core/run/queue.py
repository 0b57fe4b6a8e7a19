"""The run queue: recipes lined up to train one after another, headless.

The queue belongs to a runs directory and lives in ``<runs>/queue.json``;
every change happens under an ``flock`` on ``<runs>/queue.lock``, waited for at
most :data:`LOCK_TIMEOUT` seconds (a holder that keeps it longer is named, pid
and command, instead of hanging), and every file is owner-only. An entry
holds an already validated recipe; its run directory is created only when it
starts, so a queued run is never mistaken for a lost one.

A recipe that trains on top of ``model: run:latest[:what]`` keeps that spec
unresolved (:func:`stacking`): queued after a recipe that trains ``what``, it
starts from the run that entry leaves, not from whichever run was newest when
it was queued (SFT then DPO, queued one after the other).

:func:`advance` starts the first entry when no worker in the runs directory is
live (the GPUs are free): the run before it has finished, failed or stopped.
:func:`run_forever` calls it until the queue is empty and its last run has
ended, then sends the notifications (:mod:`finetty.core.run.notify`); it is what
``finetty queue run`` does, and :func:`ensure_runner` starts it as a detached
process of its own (one per runs directory, kept single by a second lock), so
the queue keeps going after the app that filled it is closed or the SSH
connection drops.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from finetty.core import paths
from finetty.core.errors import RunBusyError
from finetty.core.run import rundir

QUEUE_FILE = "queue.json"
QUEUE_LOCK = "queue.lock"
RUNNER_LOCK = "queue-runner.lock"
RUNNER_LOG = "queue-runner.log"
LOCK_TIMEOUT = 15.0
"""seconds a queue operation waits for another one to finish (starting a run under the lock takes a few)"""


@dataclass
class Entry:
    """One queued job: its resolved recipe and what to show for it."""

    id: str
    recipe: str
    model: str
    method: str
    dataset: str
    added: float
    objective: str = "sft"
    """(queues written before the objective was shown hold none: they trained sft, the default)"""
    after: str | None = None
    """the earlier entry whose run this one trains on top of (its model is ``run:latest...``)"""
    parent_run: str | None = None
    """the run it starts from: the run ``after`` became when it started, or the live run it was queued after;
    None with no ``after``: ``run:latest...`` is resolved against the finished runs when it starts"""


@dataclass
class QueueState:
    """What ``queue.json`` holds."""

    entries: list[Entry] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    """run ids the queue started, oldest first"""
    last_error: str | None = None
    """why the last entry could not start (it was dropped)"""
    ran: dict[str, str] = field(default_factory=dict)
    """entry id -> the run id it started as (what a stacked entry's ``after`` became)"""


def _read(runs: Path) -> QueueState:
    try:
        data = json.loads((runs / QUEUE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return QueueState()
    entries = []
    for item in data.get("entries", []):
        try:
            entries.append(Entry(**{k: item[k] for k in Entry.__dataclass_fields__ if k in item}))
        except (KeyError, TypeError):
            continue
    ran = data.get("ran")
    return QueueState(entries, list(data.get("started", [])), data.get("last_error"),
                      dict(ran) if isinstance(ran, dict) else {})


def _write(runs: Path, state: QueueState) -> None:
    tmp = runs / (QUEUE_FILE + ".tmp")
    with os.fdopen(paths.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "w", encoding="utf-8") as handle:
        handle.write(json.dumps(asdict(state), indent=1))
    tmp.replace(runs / QUEUE_FILE)


def _holder(fd: int) -> str:
    """Who holds a queue lock, from the pid and start time it wrote: ``pid 123 (finetty queue add ...)``."""
    fields = os.pread(fd, 256, 0).decode("ascii", "replace").split()
    if not fields or not fields[0].isdigit():
        return "a process that has not written its pid"
    pid = int(fields[0])
    import psutil

    try:
        process = psutil.Process(pid)
        command = " ".join(process.cmdline())[:120] or process.name()
        return f"pid {pid} ({command}) of user {process.username()}"
    except (psutil.Error, OSError, KeyError):
        return f"pid {pid}"


@contextmanager
def _locked(runs: Path, timeout: float | None = None) -> Iterator[QueueState]:
    """The queue, read under its lock and written back when the block ends without error.

    Waits at most ``timeout`` seconds (default :data:`LOCK_TIMEOUT`) for the lock, then raises
    :class:`RunBusyError` naming the holder: a stuck or hostile holder never hangs a command."""
    paths.make_private_dir(runs)
    fd = paths.open_nofollow(runs / QUEUE_LOCK, os.O_RDWR | os.O_CREAT)
    timeout = LOCK_TIMEOUT if timeout is None else timeout
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunBusyError(f"the queue of {runs} has been locked for {timeout:g} s by {_holder(fd)}; "
                                       f"nothing was changed: try again, or end that process if it is stuck") from None
                time.sleep(0.05)
        rundir.record_holder(fd)
        state = _read(runs)
        yield state
        _write(runs, state)
    finally:
        os.close(fd)  # (the next holder writes its own pid over this one's)


def read(runs: Path) -> QueueState:
    """The queue as it is now (a consistent snapshot; no lock needed to read a renamed file)."""
    return _read(runs)


@dataclass(frozen=True)
class Stacking:
    """How a queued recipe with ``model: run:latest[:what]`` is checked now and resolved when it starts."""

    spec: str
    """the model as written, kept in the queued recipe"""
    after: str | None
    """the queued entry whose run it will train on top of"""
    parent_run: str | None
    """the live run it will train on top of (queued while that run trains)"""
    changes: dict
    """recipe keys to check it with now, in place of the run that does not exist yet: that run's own base
    (``model``) and chat template; empty when a finished run stands in"""


def _recipe_of(text: str) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None
    return data if isinstance(data, dict) else {}


def _run_recipe(runs: Path, run_id: str) -> dict:
    try:
        return _recipe_of((runs / run_id / rundir.RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError):
        return {}


def _stand_in(runs: Path, data: dict, entry: Entry | None, entries: list[Entry]) -> dict:
    """``model`` and ``chat_template`` to check a recipe with that trains on top of a run of ``data`` not yet
    finished: the model that run stands on (followed down a chain of queued stages)."""
    from finetty.core.model import parent

    template = data.get("chat_template")
    for _ in range(len(entries) + 2):  # (each step goes one queued stage down; a loop is cut)
        model = data.get("model")
        if entry is None or parent.latest(model) is None:
            break
        if entry.parent_run:
            data, entry = _run_recipe(runs, entry.parent_run), None
        else:
            entry = next((e for e in entries if e.id == entry.after), None)
            if entry is None:
                break
            data = _recipe_of(entry.recipe)
        template = template or data.get("chat_template")
    changes = {"model": data.get("model")}
    if template:
        changes["chat_template"] = template
    return changes


def _changes(draft, stand_in: dict) -> dict:
    """The stand-in keys for ``draft``: a chat template the recipe names itself is its own, never replaced."""
    if draft.chat_template:
        stand_in.pop("chat_template", None)
    return stand_in


def stacking(runs: Path, draft, registry, file=None) -> Stacking | None:
    """For a recipe whose model is ``run:latest[:what]`` (``draft``: checked without its sources), what it will
    train on top of once queued; None for any other model (checked and resolved now, as ``finetty train`` does).

    The newest stage that trains ``what`` wins: a queued entry, else a live run (the queue waits for it), else
    the newest finished run; with none of them it is refused, naming why. Starting from a stage that has not
    run yet is checked as starting from a finished one would be (:func:`finetty.core.model.parent.planned_mode`).
    """
    from finetty.core.errors import InputError
    from finetty.core.model import parent

    found = parent.latest(draft.model)
    if found is None:
        return None
    what, _ = found
    state = read(runs)
    for entry in reversed(state.entries):
        if parent.trains(what, entry.method, entry.objective):
            data = _recipe_of(entry.recipe)
            parent.planned_mode(data, f"{entry.id} (queued)", registry, draft.method, draft.quantizer, file)
            return Stacking(draft.model, entry.id, None, _changes(draft, _stand_in(runs, data, entry, state.entries)))
    for run_id in sorted(live_runs(runs), reverse=True):
        data = _run_recipe(runs, run_id)
        if parent.trains(what, str(data.get("method") or "?"), str(data.get("objective") or "sft")):
            parent.planned_mode(data, run_id, registry, draft.method, draft.quantizer, file)
            return Stacking(draft.model, None, run_id, _changes(draft, _stand_in(runs, data, None, state.entries)))
    if parent.newest(runs, what) is None:
        kind = f" that trained {what}" if what else ""
        raise InputError(file, "key model", f"{draft.model} names the newest run{kind}, and there is no finished "
                         f"run{kind} in {runs}, none training now and none queued",
                         "queue the recipe that trains it first (for example finetty queue add "
                         "recipes/demo-lora.yaml), or name a run: run:ID as `finetty runs` lists it")
    return Stacking(draft.model, None, None, {})


def add(runs: Path, recipe, stacked: Stacking | None = None) -> Entry:
    """Queue a validated :class:`~finetty.core.recipe.recipe.Recipe`; returns its entry.

    With ``stacked`` (:func:`stacking`), the recipe keeps its ``run:latest...`` model, resolved when it starts."""
    from dataclasses import replace

    if stacked is not None:
        # (a chat template that only stood in for the parent's own is not kept: the parent's tokenizer has it)
        recipe = replace(recipe, model=stacked.spec,
                         **({"chat_template": None} if "chat_template" in stacked.changes else {}))
    entry = Entry(id=f"q-{secrets.token_hex(3)}", recipe=recipe.to_yaml(), model=str(recipe.model),
                  method=str(recipe.method), dataset=str(recipe.dataset), added=round(time.time(), 3),
                  objective=str(recipe.objective), after=stacked.after if stacked else None,
                  parent_run=stacked.parent_run if stacked else None)
    with _locked(runs) as state:
        state.entries.append(entry)
    return entry


def remove(runs: Path, entry_id: str) -> bool:
    with _locked(runs) as state:
        before = len(state.entries)
        state.entries = [e for e in state.entries if e.id != entry_id]
        return len(state.entries) != before


def move(runs: Path, entry_id: str, delta: int) -> int | None:
    """Move an entry ``delta`` places (negative: earlier); returns its new index, None if absent."""
    with _locked(runs) as state:
        ids = [e.id for e in state.entries]
        if entry_id not in ids:
            return None
        index = ids.index(entry_id)
        target = max(0, min(len(ids) - 1, index + delta))
        state.entries.insert(target, state.entries.pop(index))
        return target


def clear(runs: Path) -> int:
    with _locked(runs) as state:
        count = len(state.entries)
        state.entries = []
        return count


def live_runs(runs: Path) -> list[str]:
    """Ids of runs whose worker is alive."""
    if not runs.is_dir():
        return []
    return [p.name for p in runs.iterdir() if (p / rundir.RECIPE_FILE).is_file() and rundir.is_live(p)]


def _pin_parent(entry: Entry, data: dict) -> None:
    """A stacked entry's ``run:latest...`` as the run it was queued after (checked by the recipe's validation:
    a stage that failed left no result, and this one is dropped saying so); left for validation to resolve
    against the newest finished run when it was queued after none."""
    from finetty.core.errors import InputError
    from finetty.core.model import parent

    found = parent.latest(data.get("model"))
    if found is None or not (entry.after or entry.parent_run):
        return
    if not entry.parent_run:
        raise InputError(None, "key model", f"it trains on top of the run of queue entry {entry.after}, which never "
                         "started (it was removed, dropped, or moved after this one)",
                         "queue the stages again, in order")
    data["model"] = f"{parent.PREFIX}{entry.parent_run}" + (f"@{found[1]}" if found[1] else "")


def _start(runs: Path, entry: Entry) -> Path:
    """Check the entry's recipe again (files may have moved since) and start its worker."""
    from finetty.core.run import launch
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.plugin.registry import load_plugins

    data, source = recipe_mod.parse_text(entry.recipe, None)
    _pin_parent(entry, data)
    recipe = recipe_mod.validate(data, load_plugins(), source, Path.cwd(), runs=runs)
    run_dir = rundir.create(runs, recipe.method, recipe.to_yaml())
    launch.start_worker(run_dir)
    return run_dir


def advance(runs: Path, start: Callable[[Path, Entry], Path] = _start,
            say: Callable[[str], None] = lambda _: None) -> Path | None:
    """Start the next queued run if no worker is live; returns its run directory, else None.

    An entry that cannot start (its recipe no longer validates) is dropped, the
    reason kept in ``last_error`` and sent to the notify URLs (no worker will
    ever tell of it); the next one is tried. ``say`` hears what could not be sent."""
    from finetty.core.errors import InputError, RunBusyError
    from finetty.core.run import notify

    dropped: list[tuple[str, Entry]] = []
    run_dir = None
    with _locked(runs) as state:
        while state.entries and not live_runs(runs):
            entry = state.entries.pop(0)
            try:
                run_dir = start(runs, entry)
            except (InputError, RunBusyError, OSError) as exc:
                dropped.append((f"{entry.id} ({entry.method} on {entry.model}) did not start: {exc}", entry))
                state.last_error = "; ".join(reason for reason, _ in dropped)
                continue
            state.started.append(run_dir.name)
            state.ran[entry.id] = run_dir.name
            for later in state.entries:  # (the stages queued to train on top of it start from this run)
                if later.after == entry.id:
                    later.parent_run = run_dir.name
            state.last_error = "; ".join(reason for reason, _ in dropped) or None
            break
    for reason, entry in dropped:  # (outside the lock: a slow endpoint never holds up the queue's commands)
        notify.queue_dropped(runs, reason, entry.recipe, say)
    return run_dir


def run_forever(runs: Path, poll: float = 2.0, say: Callable[[str], None] = lambda _: None) -> int:
    """Start queued runs one after another until the queue is empty and the last run has ended; returns how
    many started.

    The runner stays until its last run ends (a recipe queued meanwhile is
    started too), then tells the notify URLs how each run ended
    (:func:`finetty.core.run.notify.queue_finished`): with the app closed, that
    message is how a person learns that the night's queue is done. Only one
    runner works a runs directory at a time; a second returns 0 at once."""
    from finetty.core.run import notify

    paths.make_private_dir(runs)
    with os.fdopen(paths.open_nofollow(runs / RUNNER_LOCK, os.O_RDWR | os.O_CREAT), "r+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another queue runner is already working this runs directory")
            return 0
        rundir.record_holder(lock.fileno())
        mine: list[Path] = []
        said = None
        while True:
            try:
                run_dir = advance(runs, say=say)
            except RunBusyError as exc:  # another queue command held the lock too long: say so, try again
                say(str(exc))
                time.sleep(poll)
                continue
            if run_dir is not None:
                mine.append(run_dir)
                say(f"started {run_dir.name}")
                continue
            state = read(runs)
            if state.last_error and state.last_error != said:
                said = state.last_error
                say(said)
            if not state.entries and not any(rundir.is_live(run) for run in mine):
                notify.queue_finished(runs, mine, say)
                return len(mine)
            time.sleep(poll)


def runner_alive(runs: Path) -> bool:
    return rundir.is_locked(runs / RUNNER_LOCK)


def ensure_runner(runs: Path) -> subprocess.Popen | None:
    """Start a detached ``finetty queue run`` for ``runs`` unless one is working it already."""
    if runner_alive(runs) or not read(runs).entries:
        return None
    paths.make_private_dir(runs)
    with os.fdopen(paths.open_nofollow(runs / RUNNER_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "finetty.core.cli", "queue", "run", "--runs-dir", str(runs)],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)
