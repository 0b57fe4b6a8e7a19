"""The training worker: one process per run, started detached, talking only through the run directory.

``python -m finetty.core.train.worker RUN_DIR [--resume] [--lock-fd N]`` reads the
resolved ``recipe.yaml``, trains, and writes ``events.jsonl``, complete
checkpoints and ``final/``. SIGTERM (or SIGINT) asks it to checkpoint and stop;
SIGUSR1 asks for a checkpoint now. It holds the run's lock (inherited from
the launcher as ``--lock-fd``) for as long as it lives.

The flow reads top to bottom: set up the model, the data and the trainer,
train, save the result, clean up.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import random
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from finetty.core import paths
from finetty.core.errors import describe
from finetty.core.data import reading as data_mod
from finetty.core.data import demo
from finetty.core.train import distributed
from finetty.core.train import logs
from finetty.core.train import heartbeat
from finetty.core.train import tracking
from finetty.core.model import loading as models
from finetty.core.model import parent as parent_mod
from finetty.core.memory import monitor
from finetty.core.memory import oom
from finetty.core.run import rundir
from finetty.core.run import standby
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.run.events import EventWriter
from finetty.core.plugin.api import MethodContext, TrainerContext
from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe.train_args import FINETTY_TRAIN_OPTIONS

FINETTY_TRAIN_KEYS = {o.name for o in FINETTY_TRAIN_OPTIONS}


@dataclass
class Requests:
    """What a UI asked of the worker, set from signal handlers."""

    stop: bool = False
    checkpoint: bool = False
    signal_name: str | None = None


class NullWriter:
    """What ranks other than 0 write events to: nothing (rank 0 is the run's one writer)."""

    def emit(self, type_: str, **fields) -> dict:
        return {"type": type_, **fields}

    def close(self) -> None:
        pass


class RunFailure(Exception):
    """The run cannot go on; ``str()`` is the whole one-line reason (no traceback is printed for it)."""


class PluginFailure(RunFailure):
    """A plugin raised; the reason names it."""


def _install_signal_handlers(requests: Requests) -> None:
    def stop(signum, frame):
        requests.stop = True
        requests.signal_name = signal.Signals(signum).name

    def checkpoint(signum, frame):
        requests.checkpoint = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, checkpoint)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in ("finetty", "torch", "transformers", "peft", "accelerate", "datasets", "trl", "bitsandbytes"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def _device() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda ({torch.cuda.device_count()}x {torch.cuda.get_device_name(0)})"
    return "cpu"


def _check_engine(recipe) -> None:
    """FSDP and DeepSpeed need an accelerator (accelerate refuses them on the CPU); say so in one line."""
    kind = recipe.launch.get("distributed_type", "ddp")
    if kind == "ddp":  # fsdp and deepspeed go through accelerate's launcher even on one process (is_distributed)
        return
    import torch

    probe = getattr(getattr(torch, "accelerator", None), "is_available", None)  # torch >= 2.6
    if not (probe() if probe else torch.cuda.is_available()):
        raise RunFailure(f"launch.distributed_type {kind} needs GPUs (accelerate runs {kind} on CUDA, XPU, NPU "
                         f"and the like) and this machine has none visible; use distributed_type: ddp for "
                         f"processes on the CPU")


def _plugin_call(kind: str, name: str, fn, *args):
    """Call a plugin function; an exception becomes a failure naming the plugin."""
    try:
        return fn(*args)
    except Exception as exc:
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        raise PluginFailure(f"{kind} plugin {name!r} failed: {type(exc).__name__}: {first}") from exc


def _split(examples: list, val_size, seed: int) -> tuple[list, list | None]:
    if not val_size:
        return examples, None
    count = int(round(len(examples) * val_size)) if isinstance(val_size, float) else int(val_size)
    count = max(1, min(count, len(examples) - 1))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [examples[i] for i in sorted(held)]


def _setup_parent(recipe, registry, run_dir: Path):
    """A run on top of a run (``model: run:ID``, :mod:`finetty.core.model.parent`): the parent, and the folder
    the model loads from; for ``merge``, the parent's adapter merged into its base, written once into this
    run's ``base/`` (by rank 0; the other ranks wait for it). None for a run on a model."""
    if not parent_mod.names_run(recipe.model, run_dir):
        return None
    link = parent_mod.resolve(recipe.model, run_dir.parent, run_dir, registry, recipe.method, recipe.quantizer)
    if link.base == demo.NAME:
        demo.ensure_demo()
    model_dir = link.source if link.mode == "whole" else link.base_dir
    if link.mode == "merge":
        target = run_dir / parent_mod.MERGED_BASE
        if distributed.rank() == 0:
            model_dir = parent_mod.merged_base(link, registry, target, recipe.trust_remote_code)
        else:
            while not (target / "config.json").is_file():
                time.sleep(0.5)  # (another process writes it; no event to await across ranks)
            model_dir = target
    print(f"finetty: {link.describe(recipe.method)}", flush=True)
    return link, model_dir


def _setup_model(recipe, registry, events, stacked=None):
    """The model to train; ``stacked`` is :func:`_setup_parent`'s answer for a run on top of a run."""
    if stacked is not None:
        link, model_dir = stacked
    else:
        link, model_dir = None, (demo.ensure_demo() if recipe.model == demo.NAME
                                 else models.resolve(recipe.model, Path.cwd()))
    # the recipe's chat template, if any, is saved with the tokenizer in every checkpoint and in final/
    tokenizer = models.load_tokenizer(link.tokenizer_dir(model_dir) if link else model_dir, recipe.trust_remote_code,
                                      recipe.chat_template)
    dtype = models.compute_dtype(recipe.train)
    quantization = None
    quantizer = registry.quantizers[recipe.quantizer] if recipe.quantizer != "none" else None
    if quantizer is not None and quantizer.config is not None:
        quantization = _plugin_call("quantizer", quantizer.name, quantizer.config, recipe.quantizer_options, dtype)
    model_options = getattr(recipe, "model_options", None) or {}
    model = models.load_model(model_dir, models.weights_dtype(recipe.train, model_options), quantization,
                              recipe.trust_remote_code, attn_implementation=model_options.get("attn_implementation"))
    checkpointing = bool(recipe.train.get("gradient_checkpointing"))
    if quantizer is not None and quantizer.quantize is not None:
        model = _plugin_call("quantizer", quantizer.name, quantizer.quantize, model, recipe.quantizer_options, dtype)
    if quantizer is not None and quantizer.prepare is not None:
        model = _plugin_call("quantizer", quantizer.name, quantizer.prepare, model, checkpointing)
    method = registry.methods[recipe.method]
    context = MethodContext(quantizer=recipe.quantizer, gradient_checkpointing=checkpointing,
                            model_type=model.config.model_type, model_path=str(model_dir))
    if link is not None and link.mode == "continue":  # the parent's adapter, trained further
        model = parent_mod.continued(model, link)
    else:
        model = _plugin_call("method", method.name, method.apply, model, recipe.method_options, context)
    return model_dir, tokenizer, model, method


def _setup_data(recipe, registry, events):
    """The recipe's data through the same reader that validated it; ignored columns and the mixture reported.

    With ``data_options.streaming`` the examples are an iterable that reads
    the files as training goes; the counts reported are of their first records.
    """
    data_options = getattr(recipe, "data_options", None) or {}
    entries = data_mod.parse_dataset(recipe.dataset, Path.cwd())
    arguments = (entries, recipe.format, registry.data_formats, registry.objectives[recipe.objective].accepts,
                 recipe.objective, recipe.dataset_options, data_options)
    seed = recipe.train.get("seed", 42)
    if data_options.get("streaming"):
        examples, found = data_mod.stream_examples(*arguments, train=recipe.train, seed=seed)
        messages = [*found.warnings(), f"streaming: examples are read as training goes; the counts are of the "
                                       f"first {data_mod.STREAM_HEAD} records of each dataset"]
    else:
        found = data_mod.read_data(*arguments, hub=True, seed=seed, train=recipe.train)
        examples, messages = found.examples, found.warnings()
    for message in messages:
        print(f"finetty: warning: {message}", flush=True)
        events.emit("warning", message=message)
    train, evaluation = _split(examples, recipe.train.get("val_size"), seed)
    count = len(found.examples)
    events.emit("data", dataset=", ".join(m["dataset"] for m in found.mixture), format=found.format,
                detected=found.detected, records=count, train_records=count - len(evaluation or []),
                eval_records=len(evaluation or []))
    return train, evaluation


def _training_arguments(recipe, run_dir: Path, has_eval: bool):
    from transformers import TrainingArguments

    settings = {k: v for k, v in recipe.train.items() if k not in FINETTY_TRAIN_KEYS}
    settings.pop("save_total_limit", None)  # finetty rotates its own complete checkpoints
    settings.setdefault("logging_first_step", True)
    settings.setdefault("run_name", run_dir.name)  # the name report_to integrations show (not the staging folder's)
    if has_eval:
        settings.setdefault("eval_strategy", "steps")
    return TrainingArguments(output_dir=str(run_dir / rundir.CHECKPOINTS / ".staging"), save_strategy="steps",
                             disable_tqdm=True, **settings)


def _count_parameters(model) -> tuple[int, int]:
    trainable = total = 0
    for parameter in model.parameters():
        count = parameter.numel()
        if hasattr(parameter, "quant_state") or parameter.__class__.__name__ == "Params4bit":
            count *= 2  # 4-bit parameters pack two weights in a byte
        total += count
        trainable += count if parameter.requires_grad else 0
    return trainable, total


def _skip_unneeded_imports(recipe, registry) -> list[str]:
    """Hide bitsandbytes and peft from this process when no component of the run needs them.

    Each method, objective and quantizer names its ``runtime_libraries``
    (None: unknown, so nothing is hidden); a bitsandbytes optimizer needs
    bitsandbytes whatever the components say.

    transformers and peft import them whenever they are installed; bitsandbytes
    pulls in torch._dynamo and inductor (about a second), peft two seconds more.

    ``sys.modules[name] = None`` makes ``importlib.util.find_spec`` report the
    package missing, so transformers and peft skip their optional imports of
    it. ``FINETTY_KEEP_IMPORTS=1`` turns this off.
    """
    if os.environ.get("FINETTY_KEEP_IMPORTS") == "1":
        return []
    components = [registry.get("method", recipe.method), registry.get("objective", recipe.objective)]
    if recipe.quantizer != "none":
        components.append(registry.get("quantizer", recipe.quantizer))
    declared = [getattr(c, "runtime_libraries", None) for c in components]
    if any(d is None for d in declared):
        return []
    needed = {name for d in declared for name in d}
    if recipe_mod.needs_bitsandbytes(dataclasses.replace(recipe, quantizer="none")):
        needed.add("bitsandbytes")
    skip = [name for name in ("bitsandbytes", "peft") if name not in needed]
    for name in skip:
        if name not in sys.modules:
            sys.modules[name] = None
    return skip


def train(run_dir: Path, events: EventWriter, requests: Requests, resume: bool, own_process: bool = False) -> int:
    """Train the run in ``run_dir``; its exit code.

    ``own_process``: this process exists for the run (``main``), so the
    libraries no component uses may be hidden for a faster start; a caller
    that trains inside a longer-lived process (the tests) keeps them, since
    transformers caches what it found missing for the life of the process.
    The ``report_to`` integrations write under ``run_dir`` (:mod:`.tracking`).
    """
    with tracking.environment(run_dir, recipe_mod.from_run(run_dir).train.get("report_to")):
        return _train(run_dir, events, requests, resume, own_process)


def _record_hub_sources(recipe, events) -> None:
    """One ``download`` event for each model or dataset the run takes from the Hugging Face cache (fetched
    there before the worker started, by ``finetty train`` or ``finetty pull``): the commit it trained on."""
    from finetty.core.data import hub

    for ref, _ in hub.recipe_refs(recipe.model, recipe.dataset, Path.cwd()):
        folder = hub.cached(ref)
        if folder is not None:
            events.emit("download", **hub.snapshot_facts(ref.kind, ref.describe(), folder))


def _train(run_dir: Path, events: EventWriter, requests: Requests, resume: bool, own_process: bool) -> int:
    recipe = recipe_mod.from_run(run_dir)
    registry = load_plugins()
    recorded = rundir.recorded_plugins(run_dir)
    for kind, name in _components(recipe):
        if registry.get(kind, name) is None:
            raise PluginFailure(registry.unavailable(kind, name, recorded))
    if own_process and not parent_mod.names_run(recipe.model, run_dir):  # (a parent's adapter may need peft)
        _skip_unneeded_imports(recipe, registry)
    _check_engine(recipe)
    from finetty.core.train.callbacks import CheckpointCallback, EventsCallback, RequestsCallback, TokenCounter

    tokens = TokenCounter()
    checkpoints = CheckpointCallback(run_dir, events, recipe.train.get("save_total_limit"), tokens)
    # one process cleans up: ranks doing it at once race each other over the same folders
    removed = checkpoints.cleanup_incomplete() if distributed.rank() == 0 else []
    if removed:
        events.emit("warning", message=f"removed incomplete checkpoint data left by a killed worker: "
                                       f"{', '.join(removed)}")
    # the newest checkpoint whose files match their recorded sizes and hashes; damaged newer ones are named
    # and moved aside (by one process: ranks renaming at once would race), never deleted
    resume_from = rundir.intact_checkpoint(run_dir, move_aside=distributed.rank() == 0,
                                           report=lambda message: events.emit("warning", message=message)) \
        if resume else None
    if resume and resume_from is None:
        events.emit("warning", message="no complete checkpoint yet: starting from step 0")

    _record_hub_sources(recipe, events)
    import transformers

    transformers.set_seed(recipe.train.get("seed", 42))
    stacked = _setup_parent(recipe, registry, run_dir)
    if stacked and stacked[0].mode == "continue" and stacked[0].method_options != recipe.method_options:
        events.emit("warning", message=f"method_options are those of the adapter trained further "
                                       f"({stacked[0].method_options}), not the recipe's")
    model_dir, tokenizer, model, method = _setup_model(recipe, registry, events, stacked)
    train_records, eval_records = _setup_data(recipe, registry, events)
    args = _training_arguments(recipe, run_dir, bool(eval_records))
    trainable, total = _count_parameters(model)
    started = dict(recipe=recipe.to_dict(), versions=_versions(), device=_device(), world_size=args.world_size,
                   distributed_type=recipe.launch.get("distributed_type") if args.world_size > 1 else None,
                   trainable_parameters=trainable, total_parameters=total, model_dir=str(model_dir), pid=os.getpid(),
                   plugins=registry.used_by(_components(recipe)),
                   resumed_from=str(resume_from.relative_to(run_dir)) if resume_from else None,
                   **({"parent": stacked[0].record(recipe.method)} if stacked else {}))
    callbacks = [EventsCallback(events, tokens, started), checkpoints, RequestsCallback(requests)]
    objective = registry.objectives[recipe.objective]
    context = TrainerContext(model=model, tokenizer=tokenizer, train_records=train_records,
                             eval_records=eval_records, args=args, callbacks=callbacks,
                             options=recipe.objective_options, method=method,
                             max_length=recipe.train["max_length"], truncation=recipe.train["truncation"],
                             packing=bool(recipe.train.get("packing")),
                             report=lambda message: events.emit("warning", message=message))
    trainer = _plugin_call("objective", objective.name, objective.build_trainer, context)
    trainer.data_collator = tokens.wrap(trainer.data_collator)
    if resume_from is not None:
        tokens.base = rundir.tokens_at(resume_from)

    def rebuild(new_args):  # the same model and data with other TrainingArguments (a smaller micro-batch)
        again = _plugin_call("objective", objective.name, objective.build_trainer,
                             dataclasses.replace(context, args=new_args))
        again.data_collator = tokens.wrap(again.data_collator)
        return again

    sampler = monitor.start(recipe, events, requests, model)  # GPU/host memory events; never fails the run
    try:
        trainer, result = oom.train(trainer, resume_from=resume_from, rebuild=rebuild, recipe=recipe,
                                    run_dir=run_dir, events=events, requests=requests, sampler=sampler,
                                    tokens=tokens, started=started)
    finally:
        sampler.stop()
    step = trainer.state.global_step
    trained_tokens = tokens.global_total(args.world_size)
    if requests.stop:
        latest = rundir.latest_checkpoint(run_dir)
        events.emit("stopped", step=step, checkpoint=str(latest.relative_to(run_dir)) if latest else None,
                    reason=f"stop requested ({requests.signal_name})")
        return 0
    _save_final(trainer, method, tokenizer, run_dir)
    events.emit("run_finished", step=step, final=rundir.FINAL, train_loss=result.training_loss,
                runtime=result.metrics.get("train_runtime"), tokens=trained_tokens)
    return 0


def _components(recipe) -> list[tuple[str, str]]:
    """The (kind, name) of every plugin component the run uses."""
    found = [("method", recipe.method), ("objective", recipe.objective)]
    return found + ([("quantizer", recipe.quantizer)] if recipe.quantizer != "none" else [])


def _save_final(trainer, method, tokenizer, run_dir: Path) -> None:
    target = run_dir / rundir.FINAL
    partial = run_dir / (rundir.FINAL + ".partial")
    main = trainer.args.should_save
    if main:
        shutil.rmtree(partial, ignore_errors=True)
    state = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if state is not None:
        state.set_state_dict_type("FULL_STATE_DICT")  # final/ is one consolidated model
    trainer.save_model(str(partial))  # every rank takes part (FSDP gathers); the main one writes
    distributed.barrier()
    if not main:
        return
    tokenizer.save_pretrained(str(partial))
    (partial / "training_args.bin").unlink(missing_ok=True)  # a pickle; the recipe is in recipe.yaml
    if target.exists():
        shutil.rmtree(target)
    os.rename(partial, target)


def _chain(exc: BaseException):
    """The exception and the ones it was raised from or during."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


#: How libraries say "disk full" without an OSError: safetensors (Rust's StorageFull), torch.save's writer.
FULL_DISK_WORDS = ("No space left on device", "StorageFull", "Disk quota exceeded")


def _disk_full(exc: BaseException, run_dir: Path) -> OSError | None:
    """The full-disk error in ``exc``'s chain, if that is what it is (as an OSError naming the file)."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno in (errno.ENOSPC, errno.EDQUOT):
            return link
        text = str(link)
        if any(words in text for words in FULL_DISK_WORDS):
            return OSError(errno.ENOSPC, text, None)
        if "file write failed" in text:  # torch.save's writer says no more; a nearly empty disk says why
            try:
                if shutil.disk_usage(run_dir).free < 64 * 2**20:
                    return OSError(errno.ENOSPC, text, None)
            except OSError:
                pass
    return None


def _plugin_modules(registry) -> dict[str, object]:
    """Module name (and, for third-party plugins, top-level package) -> the PluginInfo that owns it."""
    from dataclasses import fields as dataclass_fields
    from importlib.metadata import entry_points

    owned: dict[str, object] = {}
    by_name = {info.name: info for info in registry.plugins if info.error is None}
    for ep in entry_points(group="finetty"):
        if ep.name in by_name:
            owned[ep.module] = by_name[ep.name]
    for (kind, name), info in registry.owners.items():
        component = registry.get(kind, name)
        for f in dataclass_fields(component):
            module = getattr(getattr(component, f.name), "__module__", None)
            if isinstance(module, str) and not module.startswith("finetty.core"):
                owned.setdefault(module, info)
    for module, info in list(owned.items()):
        top = module.split(".")[0]
        if top != "finetty":
            owned.setdefault(top, info)
    return owned


def _plugin_in_traceback(exc: BaseException):
    """The loaded plugin whose code raised ``exc`` (innermost plugin frame), or None."""
    try:
        owned = _plugin_modules(load_plugins())  # (already loaded by train(): cached)
    except Exception:
        return None
    for link in _chain(exc):
        found = None
        tb = link.__traceback__
        while tb is not None:
            module = tb.tb_frame.f_globals.get("__name__", "")
            info = owned.get(module) or owned.get(module.split(".")[0])
            if info is not None:
                found = info
            tb = tb.tb_next
        if found is not None:
            return found
    return None


def _failure_reason(exc: BaseException, run_dir: Path) -> str:
    """The one line of ``run_failed``: what broke, and for a full disk or a plugin, where and who."""
    if isinstance(exc, oom.OutOfMemoryFailure):
        return str(exc)  # where, the peak against the total, and what to change
    full = _disk_full(exc, run_dir)
    if full is not None:
        where = Path(full.filename) if full.filename else run_dir / rundir.CHECKPOINTS
        try:
            free = shutil.disk_usage(run_dir).free / 2**20
            room = f"{free:.0f} MiB free there now"
        except OSError:
            room = "free space unknown"
        return (f"the disk is full: no space left writing {where} ({room}); earlier checkpoints are intact: "
                f"free some space, then `finetty train --resume {run_dir.name}`")
    if not isinstance(exc, (RunFailure, KeyboardInterrupt)):
        plugin = _plugin_in_traceback(exc)
        if plugin is not None:
            kinds = "/".join(sorted({kind for kind, _ in plugin.provides})) or "plugin"
            return f"{kinds} plugin {plugin.name!r} ({plugin.distribution}) raised during training: {describe(exc, with_type=not isinstance(exc, RunFailure))}"
    return describe(exc, with_type=not isinstance(exc, RunFailure))


class DiskReserve:
    """A preallocated file in the run directory, released when the disk is full so the failure can be told.

    At 0 bytes free the worker could otherwise write neither its traceback nor ``run_failed``, nor
    even remove ``.staging`` (a directory unlinked is fine, but the event about it is not), and the
    run showed as lost. The reserve is taken at start (``posix_fallocate``: real blocks, not a hole)
    and given back on a full disk and at every exit."""

    NAME = ".disk-reserve"
    SIZE = 4 * 2**20

    def __init__(self, run_dir: Path):
        self.path = run_dir / self.NAME
        try:
            fd = paths.open_nofollow(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        except OSError:
            self.path = None
            return
        try:
            os.posix_fallocate(fd, 0, self.SIZE)
        except OSError:  # a full disk already, or a filesystem without it: run without a reserve
            pass
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.path is not None:
            try:
                self.path.unlink(missing_ok=True)
            except OSError:
                pass
            self.path = None


def _remove_staging(run_dir: Path) -> None:
    """A failed worker's half-written checkpoint is never used; remove it now (a full disk needs the room)."""
    shutil.rmtree(run_dir / rundir.CHECKPOINTS / ".staging", ignore_errors=True)  # callbacks.STAGING


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetty-worker")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--lock-fd", type=int, default=None)
    args = parser.parse_args(argv)
    os.umask(0o077)  # everything this run writes (events, checkpoints, final/) is owner-only
    launched_with = dict(os.environ)  # before this process sets its defaults below
    run_dir = args.run_dir.resolve()
    supervised = distributed.world_size() > 1 or os.environ.get("FINETTY_SUPERVISED") == "1"
    requests = Requests()
    _install_signal_handlers(requests)  # before the pid is published: a stop request must never kill us
    if supervised:
        # the supervisor holds the lock; rank 0 says whom to signal
        sys.stdout = distributed.RankPrefix(sys.stdout, f"[rank {distributed.rank()}] ")
        sys.stderr = distributed.RankPrefix(sys.stderr, f"[rank {distributed.rank()}] ")
        if distributed.rank() == 0:
            rundir.write_holder(run_dir)
    lock_fd = None
    if not supervised:
        lock_fd = args.lock_fd if args.lock_fd is not None else rundir.acquire_lock(run_dir)
        rundir.record_holder(lock_fd)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logs.quiet_libraries()  # worker.log: finetty's lines, each warning once, errors (FINETTY_LIBRARY_LOGS=1 keeps all)
    events = EventWriter(run_dir) if distributed.rank() == 0 else NullWriter()
    if distributed.rank() == 0:  # the end, a failure, the watermark and OOM reach a person with no app open
        from finetty.core.run import notify

        events = notify.watch(events, run_dir)
    events.emit("worker_started", pid=os.getpid(), resume=args.resume)
    reserve = DiskReserve(run_dir) if distributed.rank() == 0 else None
    exposed = paths.home_warning()
    if exposed:
        events.emit("warning", message=exposed)
    beat = heartbeat.start(run_dir, lambda: {"stop_requested": requests.stop}) if distributed.rank() == 0 else None
    try:
        return train(run_dir, events, requests, args.resume, own_process=True)
    except BaseException as exc:
        if reserve is not None and _disk_full(exc, run_dir) is not None:
            reserve.release()  # the room to say why: the traceback, staging's removal and run_failed all need it
        if not isinstance(exc, RunFailure):
            traceback.print_exc()
        reason = _failure_reason(exc, run_dir)
        if supervised:  # the supervisor writes the one run_failed, naming the rank that died first
            distributed.record_rank_failure(run_dir, reason)
        else:
            _remove_staging(run_dir)
            events.emit("run_failed", reason=reason)
        return 1
    finally:
        if reserve is not None:
            reserve.release()
        sys.stdout.flush()
        sys.stderr.flush()
        events.close()
        if beat is not None:
            beat.stop()  # (after the final event: the index covers it)
        if lock_fd is not None:
            os.close(lock_fd)  # the final event is written: free the run now, not after the slow interpreter exit
        if not supervised and standby.enabled():
            standby.ensure(launched_with)  # warm for the next launch, now that this run no longer needs the CPU


if __name__ == "__main__":
    sys.exit(main())
