"""Starting a worker detached from the terminal, and sending it requests.

The worker runs in its own session (``start_new_session=True``), so closing
the terminal, the TUI or the SSH connection never stops it. The launcher
takes the run's lock first and hands the locked descriptor to the worker,
so the run is never without an owner between launch and start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from finetty.core import paths
from finetty.core.run import entry, rundir
from finetty.core.errors import InputError


def start_worker(run_dir: Path, resume: bool = False, changed: ResumeChange | None = None) -> int:
    """Start the worker for ``run_dir`` (or, for several processes, the supervisor that launches them); its pid.

    ``changed`` (a resume only, from :func:`resume_change`): the recipe is rewritten and the change recorded
    as a ``recipe_changed`` event while the lock is held, before the worker exists, so events.jsonl still has
    one writer at a time and the worker reads the new recipe.

    The standby worker takes the run when it can (see :mod:`finetty.core.run.standby`);
    otherwise a fresh process is spawned. Raises RunBusyError if a worker is live."""
    from finetty.core.run import standby
    from finetty.core.recipe.sections import is_distributed
    from finetty.core.recipe.recipe import from_run

    run_dir = Path(run_dir).resolve()  # the worker starts in run_dir: a relative path would not resolve there
    fd = rundir.acquire_lock(run_dir)
    try:
        # a worker.log planted as a link is refused here, before any process (a standby too) is handed the run
        os.close(paths.open_nofollow(run_dir / rundir.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
        if changed is not None and changed.changes:
            _apply_change(run_dir, changed)
        recipe = from_run(run_dir)
        pid = standby.hand_over(run_dir, fd, resume) if standby.enabled() and standby.serves(recipe) else None
        if pid is None:
            pid = _spawn(run_dir, fd, resume, distributed=is_distributed(recipe.launch))
    finally:
        os.close(fd)
    return pid


# -- resuming with changed keys (finetty train --resume RUN --set KEY=VALUE) --------------------------

#: Recipe keys a resume may change, with or without a sub-key: how long to train and how often to log, evaluate
#: and save, who is told, how memory is watched. None of them changes what the checkpoint's weights, optimizer
#: state or data order mean; every other key would make the resume train something else than the run did.
RESUME_KEYS = ("train.max_steps", "train.num_train_epochs", "train.save_steps", "train.logging_steps",
               "train.eval_steps", "train.save_total_limit", "notify", "monitor")


@dataclass
class ResumeChange:
    """A run's recipe with a resume's ``--set`` applied (notify URLs masked), and what changed."""

    recipe_text: str
    """the new recipe, notify URLs as given (:func:`_apply_change` keeps them outside the run and masks them)"""
    changes: dict
    """``{key: {"from": old, "to": new}}`` for each key whose value differs, notify URLs masked"""
    notify: bool = False
    """``--set notify=...`` was given: the run's kept notify URLs are replaced"""


def _why_fixed(key: str) -> str:
    top = key.split(".")[0]
    if top in ("model", "method", "method_options", "quantizer", "quantizer_options", "model_options",
               "trust_remote_code"):
        return "the checkpoint holds this model and method's weights; resuming with another would silently " \
               "train something else"
    if top in ("dataset", "dataset_options", "data_options", "format", "objective", "objective_options",
               "chat_template"):
        return "the checkpoint's position in the data and its loss belong to this data and objective; " \
               "resuming with others would silently train something else"
    if top == "launch":
        return "the checkpoint was written for this launch (processes, sharding); change it in a new run"
    return "the checkpoint's optimizer, schedule and data order were made with this value; only " \
           f"{', '.join(RESUME_KEYS)} may change on resume"


def resume_change(run_dir: Path, overrides: list[str], registry, runs: Path | None = None) -> ResumeChange:
    """The run's recipe with ``overrides`` applied, checked as a new recipe is; an InputError (exit 2, nothing
    written) names each key a resume may not change (:data:`RESUME_KEYS`) and why."""
    import yaml

    from finetty.core.errors import raise_all
    from finetty.core.recipe import notify_urls
    from finetty.core.recipe import recipe as recipe_mod

    refused = []
    for item in overrides:
        key = item.partition("=")[0].strip()
        if not any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_KEYS):
            refused.append(InputError("--set", key, f"cannot change when resuming run {run_dir.name}: "
                                      f"{_why_fixed(key)}",
                                      "drop it, or start a new run with it (finetty train RECIPE --set ...), or "
                                      f"train on top of this one (model: run:{run_dir.name})"))
    raise_all(refused)
    file = run_dir / rundir.RECIPE_FILE
    before = recipe_mod.from_run(run_dir)
    data, source = recipe_mod.parse_text(file.read_text(encoding="utf-8"), file)
    keys = {item.partition("=")[0].strip().split(".")[0] for item in overrides}
    if "notify" not in keys:
        data["notify"] = []  # the copy holds them masked; they were checked when the run was made
    recipe_mod.apply_overrides(data, overrides, source)
    checked = recipe_mod.validate(data, registry, source, run_dir, check_data=False, check_sources=False,
                                  runs=runs if runs is not None else run_dir.parent)
    after = recipe_mod.from_run(run_dir)
    for key in keys:
        setattr(after, key, getattr(checked, key))
    text = after.to_yaml()
    new = yaml.safe_load(notify_urls.split_recipe_text(text)[0] if "notify" in keys else text)
    changes = {}
    for item in overrides:
        path = item.partition("=")[0].strip().split(".")
        old_value, new_value = _lookup(before.to_dict(), path), _lookup(new, path)
        if old_value != new_value:
            changes[".".join(path)] = {"from": old_value, "to": new_value}
    return ResumeChange(text, changes, notify="notify" in keys)


def _lookup(data, path: list[str]):
    for part in path:
        data = data.get(part) if isinstance(data, dict) else None
    return data


def _apply_change(run_dir: Path, changed: ResumeChange) -> None:
    """Rewrite recipe.yaml (written then renamed, never through a link) and record the change as an event."""
    from finetty.core.run import notify
    from finetty.core.run.events import EventWriter

    latest = rundir.latest_checkpoint(run_dir)
    # only now, under the lock: a resume refused because a worker is live leaves the kept URLs as they were
    text = notify.keep_secrets(run_dir, changed.recipe_text) if changed.notify else changed.recipe_text
    tmp = run_dir / (rundir.RECIPE_FILE + ".tmp")
    tmp.unlink(missing_ok=True)
    with os.fdopen(paths.open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w", encoding="utf-8") as handle:
        handle.write(text)
    tmp.replace(run_dir / rundir.RECIPE_FILE)
    writer = EventWriter(run_dir)
    try:
        writer.emit("recipe_changed", changes=changed.changes,
                    checkpoint=str(latest.relative_to(run_dir)) if latest else None)
    finally:
        writer.close()


def _spawn(run_dir: Path, fd: int, resume: bool, distributed: bool) -> int:
    module = entry.SUPERVISOR_MODULE if distributed else entry.WORKER_MODULE
    cmd = [sys.executable, "-m", module, str(run_dir), "--lock-fd", str(fd)]
    if resume:
        cmd.append("--resume")
    # owner-only, never through a link planted as worker.log; the worker creates everything else 0600/0700
    log_fd = paths.open_nofollow(run_dir / rundir.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(log_fd, "ab") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True, pass_fds=(fd,), close_fds=True, cwd=str(run_dir),
                                   umask=0o077)
    if not distributed:  # (a supervisor's rank 0 writes its own pid)
        rundir.record_holder(fd, process.pid)  # at once: a stop or a second launch names it from now on
    return process.pid


def _signal(run_dir: Path, signum: int) -> int:
    if not rundir.is_live(run_dir):
        raise InputError(None, f"run {run_dir.name}", "has no live worker",
                         f"resume it with `finetty train --resume {run_dir.name}`")
    pid, why = rundir.live_holder(run_dir)  # the pid with its start time: never a reused pid's new owner
    if not pid:
        raise InputError(None, f"run {run_dir.name}", f"has a held lock, but {why}; nothing was signalled",
                         "try again in a moment; if it stays so, see `finetty runs`")
    os.kill(pid, signum)
    return pid


def request_stop(run_dir: Path) -> int:
    """Ask the worker to checkpoint and stop (SIGTERM); returns its pid."""
    return _signal(run_dir, signal.SIGTERM)


@dataclass
class StopOutcome:
    """What became of a stop request (:func:`await_stop`)."""

    outcome: str
    """``ended`` (a final event came), ``exited`` (the worker went without one), ``acknowledged`` (it took the
    request and is finishing its step and checkpoint), ``stalled`` (it has not run for ``stalled_for`` seconds),
    ``busy`` (it beats but has not taken the request: inside one long operation) or ``silent`` (no heartbeat to
    tell)"""
    end: dict | None = None
    stalled_for: float | None = None


def await_stop(run_dir: Path, pid: int, offset: int, timeout: float = 10.0, poll: float = 0.1) -> StopOutcome:
    """Watch a run after a stop request to its worker ``pid`` for at most ``timeout`` seconds; say what happened.

    ``offset`` is the size of events.jsonl when the request was sent (only later events answer it). The worker
    answers with a ``stopped`` event once its step ends and the checkpoint is saved; before that, its heartbeat
    says it took the request (``stop_requested``). A worker that never answers is reported as such, never as
    stopped."""
    from finetty.core.run.events import TERMINAL, EventReader
    from finetty.core.run.status import stall_after

    reader = EventReader(run_dir, offset)
    deadline = time.monotonic() + timeout
    acknowledged = False
    while True:
        ends = [e for e in reader.poll() if e["type"] in TERMINAL]
        if ends:
            return StopOutcome("ended", ends[-1])
        if not rundir.is_live(run_dir):
            ends = [e for e in reader.poll() if e["type"] in TERMINAL]  # the final event may have just landed
            return StopOutcome("ended", ends[-1]) if ends else StopOutcome("exited")
        beat = rundir.heartbeat(run_dir)
        if beat is not None and beat[0].get("pid") == pid and beat[0].get("stop_requested"):
            acknowledged = True
        if time.monotonic() >= deadline:
            break
        time.sleep(poll)
    if acknowledged:
        return StopOutcome("acknowledged")
    if beat is None:
        return StopOutcome("silent")
    if beat[1] > max(3.0, min(timeout, stall_after())):  # several missed beats (one a second)
        return StopOutcome("stalled", stalled_for=beat[1])
    return StopOutcome("busy")


def request_checkpoint(run_dir: Path) -> int:
    """Ask the worker to save a checkpoint now and go on (SIGUSR1); returns its pid."""
    return _signal(run_dir, signal.SIGUSR1)


# -- which process of a run this is (the launcher sets these for every rank) ---------------------

def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))
