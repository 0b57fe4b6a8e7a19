"""Running out of GPU memory: a clear failure, or a smaller micro-batch and a resume in the same worker.

:func:`train` wraps ``trainer.train``. A CUDA out-of-memory error ends the run
with an :class:`OutOfMemoryFailure` whose one-line reason says where it
happened (step and phase), the peak against the total, and what to change
(from :mod:`finetty.core.memory.estimate`). With ``train.auto_shrink_batch: true``
it instead halves ``per_device_train_batch_size`` and doubles
``gradient_accumulation_steps`` (same effective batch), resumes from the last
complete checkpoint (or from the initial weights when there is none yet)
with the same data position, and writes a ``shrink`` event; at micro-batch 1
it gives up with a reason. The ``shrink`` watermark policy comes through here
too: the monitor has the trainer checkpoint and stop, then this restarts it.

Test-only: ``FINETTY_TEST_OOM=STEP[:ROWS]`` makes the model's forward raise
``torch.OutOfMemoryError`` during optimizer step STEP whenever a micro-batch
has more than ROWS rows (default 0: always). It is read only here, by
:func:`install_test_oom`; never set it outside tests.
"""

from __future__ import annotations

import copy
import gc
import os
import shutil
from pathlib import Path

from finetty.core.run import rundir

TEST_OOM_ENV = "FINETTY_TEST_OOM"


class OutOfMemoryFailure(Exception):
    """The run ran out of GPU memory; ``str()`` is the whole one-line reason for ``run_failed``."""


def is_oom(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ == "OutOfMemoryError" or "CUDA out of memory" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def phase(exc: BaseException) -> str:
    """Where in a step the error came from, read off the traceback."""
    names = []
    tb = exc.__traceback__
    while tb is not None:
        names.append((tb.tb_frame.f_code.co_name, tb.tb_frame.f_globals.get("__name__", "")))
        tb = tb.tb_next
    if any(name in ("evaluate", "evaluation_loop", "prediction_step") for name, _ in names):
        return "evaluation"
    if any(name == "_save_checkpoint" or name.startswith("_save") for name, _ in names):
        return "checkpoint save"
    if any(module.startswith("torch.optim") or name == "optimizer_step" for name, module in names):
        return "optimizer step"
    if any(name == "backward" for name, _ in names):
        return "backward pass"
    return "forward pass"


def smaller(micro: int) -> int:
    """Half the micro-batch when even, else its largest divisor below half (so the effective batch stays whole)."""
    return max(d for d in range(1, micro // 2 + 1) if micro % d == 0)


def _peak(sampler) -> str:
    """The peak against the total, from torch when CUDA runs, else from the monitor's NVML readings."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        peak = torch.cuda.max_memory_allocated(device)
        total = torch.cuda.get_device_properties(device).total_memory
        return f"peak {peak / 2**30:.1f} GiB of {total / 2**30:.1f} GiB on cuda:{device}"
    if sampler is not None and sampler.peaks:
        index = max(sampler.peaks, key=lambda i: sampler.peaks[i] / max(sampler.last[i].total, 1))
        reading = sampler.last[index]
        return (f"peak {sampler.peaks[index] / 2**30:.1f} GiB of {reading.total / 2**30:.1f} GiB on GPU {index} "
                f"({reading.name})")
    return "peak unknown (no CUDA device)"


def _advice(recipe, sampler) -> str:
    try:
        from finetty.core.memory import estimate as estimate_mod
        from finetty.core.memory.gpu import GpuReading

        gpus = None
        if sampler is not None and sampler.last:
            gpus = list(sampler.last.values())
        elif not _cuda():
            gpus = []
        else:
            import torch

            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            gpus = [GpuReading(torch.cuda.current_device(), props.name, 0, props.total_memory, None, None)]
        found = estimate_mod.estimate(recipe, gpus=gpus)
        hints = [s.change.replace("--set ", "") for s in found.suggestions if s.fits][:2] or \
                [s.change.replace("--set ", "") for s in found.suggestions][:2]
        text = f"the estimate for this recipe is {estimate_mod.gib(found.total)}"
        if hints:
            text += "; try " + " or ".join(hints)
        return text
    except Exception as exc:  # advice must never hide the failure itself
        return f"(no estimate: {type(exc).__name__})"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def describe(exc: BaseException, trainer, recipe, sampler, run_dir: Path) -> str:
    step = trainer.state.global_step + 1
    args = trainer.args
    latest = rundir.latest_checkpoint(run_dir)
    keep = (f"the last complete checkpoint ({latest.name}) is intact: `finetty train --resume {run_dir.name}`"
            if latest else "no checkpoint was written yet")
    return (f"CUDA out of memory at step {step} ({phase(exc)}), micro-batch {args.per_device_train_batch_size} "
            f"x up to {recipe.train.get('max_length')} tokens: {_peak(sampler)}; {_advice(recipe, sampler)}, "
            f"or train.auto_shrink_batch=true; {keep}")


class InitialWeights:
    """The trainable parameters as they were before step 1, kept on the host so a shrink before the first
    checkpoint can start over from them. Taken only when auto-shrink is on."""

    def __init__(self, model):
        self.saved = {name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters()
                      if p.requires_grad}

    def restore(self, model) -> None:
        import torch

        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self.saved:
                    p.copy_(self.saved[name].to(p.device))


def install_test_oom(model):
    """Test-only (``$FINETTY_TEST_OOM``): a callback and forward hook that raise OutOfMemoryError; None when unset."""
    spec = os.environ.get(TEST_OOM_ENV)
    if not spec:
        return None
    import torch
    from transformers import TrainerCallback

    step_text, _, rows_text = spec.partition(":")
    at, limit = int(step_text), int(rows_text or 0)
    armed = {"on": False}

    class InjectOom(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            armed["on"] = state.global_step + 1 == at

        def on_step_end(self, args, state, control, **kwargs):
            armed["on"] = False

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        rows = ids.shape[0] if ids is not None else 0
        if armed["on"] and rows > limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by "
                                         f"{TEST_OOM_ENV}={spec} at a micro-batch of {rows} rows)")

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return InjectOom()


def _release(trainer) -> None:
    """Let go of everything the failed attempt held on the GPU."""
    try:
        trainer.accelerator.free_memory()
    except Exception:
        pass
    trainer.optimizer = None
    trainer.lr_scheduler = None
    try:
        trainer.model.zero_grad(set_to_none=True)
    except Exception:
        pass
    gc.collect()
    if _cuda():
        import torch

        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def train(trainer, *, resume_from, rebuild, recipe, run_dir: Path, events, requests, sampler, tokens=None,
          started: dict | None = None):
    """``trainer.train`` that survives running out of memory when the recipe allows; returns (trainer, result).

    ``rebuild(args)`` builds a new trainer over the same model and data with
    other TrainingArguments.
    """
    from finetty.core.memory import monitor

    auto = bool(recipe.train.get("auto_shrink_batch"))
    model = trainer.model
    initial = InitialWeights(model) if auto and resume_from is None else None
    extra = [monitor.callback(sampler)]
    injector = install_test_oom(model)
    if injector is not None:
        extra.append(injector)
    checkpoint = resume_from
    while True:
        for cb in extra:
            trainer.add_callback(cb)
        sampler.micro_batch = trainer.args.per_device_train_batch_size
        cause = None
        try:
            result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        except BaseException as exc:
            if not is_oom(exc):
                raise
            reason = describe(exc, trainer, recipe, sampler, run_dir)
            if not auto:
                raise OutOfMemoryFailure(reason) from exc
            if trainer.args.per_device_train_batch_size <= 1:
                raise OutOfMemoryFailure(f"{reason}; auto_shrink_batch gave up: the micro-batch is already 1") \
                    from exc
            cause = f"out of memory at step {trainer.state.global_step + 1} ({phase(exc)})"
            del exc
        else:
            if not (sampler.shrink_pending and requests.signal_name is None):
                return trainer, result
            sampler.shrink_pending = False
            requests.stop = False
            cause = f"the {sampler.watermark:.0%} memory watermark was crossed (monitor.on_watermark: shrink)"
        trainer = _shrink(trainer, cause, rebuild, run_dir, events, tokens, started, initial, model)
        checkpoint = rundir.latest_checkpoint(run_dir)


def _shrink(trainer, cause, rebuild, run_dir, events, tokens, started, initial, model):
    old_micro = trainer.args.per_device_train_batch_size
    old_accumulation = trainer.args.gradient_accumulation_steps
    micro = smaller(old_micro)
    accumulation = old_accumulation * (old_micro // micro)
    args = copy.copy(trainer.args)
    args.per_device_train_batch_size = micro
    args.gradient_accumulation_steps = accumulation
    _release(trainer)
    del trainer
    shutil.rmtree(run_dir / rundir.CHECKPOINTS / ".staging", ignore_errors=True)
    checkpoint = rundir.latest_checkpoint(run_dir)
    if checkpoint is None:
        if initial is None:
            raise OutOfMemoryFailure(f"{cause}: cannot shrink the batch, there is no checkpoint to resume from")
        initial.restore(model)
    if tokens is not None:
        tokens.base, tokens.local = rundir.tokens_at(checkpoint), 0
    if started is not None:
        started["resumed_from"] = str(checkpoint.relative_to(run_dir)) if checkpoint else None
    where = checkpoint.name if checkpoint else "the initial weights (step 0)"
    events.emit("shrink", step=rundir.complete_checkpoints(run_dir)[-1][0] if checkpoint else 0, reason=cause,
                micro_batch=micro, gradient_accumulation_steps=accumulation, previous_micro_batch=old_micro,
                previous_gradient_accumulation_steps=old_accumulation,
                checkpoint=str(checkpoint.relative_to(run_dir)) if checkpoint else None)
    events.emit("warning", message=f"{cause}: micro-batch {old_micro} -> {micro}, gradient accumulation "
                                   f"{old_accumulation} -> {accumulation} (same effective batch); resuming from {where}")
    return rebuild(args)
