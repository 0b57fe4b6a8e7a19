"""Trainer callbacks that connect a run to its directory: events, complete checkpoints, requests.

- :class:`EventsCallback` turns the Trainer's logs into ``step`` / ``eval`` events.
- :class:`CheckpointCallback` makes each checkpoint complete before it is visible:
  the Trainer writes into ``checkpoints/.staging/``, then a marker file is
  written and the folder renamed to ``checkpoints/step-NNNNNN``.
- :class:`RequestsCallback` turns stop / checkpoint-now requests (signals) into
  Trainer control flags at the next step boundary.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import time
from pathlib import Path

from transformers import TrainerCallback

from finetty.core.run import rundir
from finetty.core.train.distributed import barrier, global_sum, share_flags

STAGING = ".staging"

#: Test-only fault injection (see docs/reliability.md). ``FINETTY_FAULT=NAME@STEP`` (or just ``NAME`` for
#: every save) makes the checkpoint save at that step fail on purpose:
#: ``kill-before-publish`` SIGKILLs the worker after the complete-marker is written and before the rename;
#: ``enospc-on-save`` raises OSError(ENOSPC) where the marker would be written, as a full disk does;
#: ``sigkill-after-step`` SIGKILLs the worker once that optimizer step has ended and been logged (a kill
#: between checkpoints, at a step of the test's choosing rather than whenever a poll notices it).
FAULT_ENV = "FINETTY_FAULT"


def fault_point(name: str, step: int) -> bool:
    """True when ``$FINETTY_FAULT`` asks for fault ``name`` at ``step``; never set outside tests."""
    spec = os.environ.get(FAULT_ENV, "")
    wanted, _, at = spec.partition("@")
    return wanted == name and (not at or at == str(step))


class EventsCallback(TrainerCallback):
    def __init__(self, events, token_counter, extra_started: dict):
        self.events = events
        self.tokens = token_counter
        self.extra_started = extra_started
        self.last_time = None
        self.last_tokens = 0
        self.t0 = time.time()

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.emit("run_started", step=state.global_step, total_steps=state.max_steps,
                         num_train_epochs=args.num_train_epochs, **self.extra_started)
        self.last_time = time.time()
        self.last_tokens = self.tokens.base

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        if any(k.startswith("eval_") for k in logs):
            metrics = {k[5:]: v for k, v in logs.items() if k.startswith("eval_")}
            self.events.emit("eval", step=state.global_step, source="trainer", loss=metrics.pop("loss", None),
                             metrics=metrics, epoch=state.epoch)
            return
        if "loss" not in logs:
            return  # the final train summary; run_finished carries it
        now = time.time()
        tokens = self.tokens.global_total(args.world_size)
        dt = max(now - (self.last_time or now), 1e-9)
        event = dict(step=state.global_step, epoch=round(state.epoch or 0.0, 4), loss=logs.pop("loss"),
                     learning_rate=logs.pop("learning_rate", None), grad_norm=logs.pop("grad_norm", None),
                     tokens=tokens, tokens_per_second=round((tokens - self.last_tokens) / dt, 1),
                     elapsed=round(now - self.t0, 3))
        event.update({k: v for k, v in logs.items() if isinstance(v, (int, float))})
        self.events.emit("step", **event)
        self.last_time, self.last_tokens = now, tokens


class CheckpointCallback(TrainerCallback):
    """Marks and publishes checkpoints atomically; keeps at most ``keep`` of them."""

    def __init__(self, run_dir: Path, events, keep: int | None, tokens=None):
        self.run_dir = run_dir
        self.tokens = tokens
        self.events = events
        self.keep = keep
        self.folder = run_dir / rundir.CHECKPOINTS

    @property
    def staging(self) -> Path:
        return self.folder / STAGING

    def cleanup_incomplete(self) -> list[str]:
        """Remove what a killed worker left half-written; returns what was removed."""
        removed = []
        if self.staging.exists():
            removed += [p.name for p in self.staging.iterdir()]
            shutil.rmtree(self.staging)
        complete = {p for _, p in rundir.complete_checkpoints(self.run_dir)}
        if self.folder.is_dir():
            for path in self.folder.iterdir():
                if path.name.startswith("step-") and path not in complete:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path.name)
        return removed

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every rank has written its part (its RNG state) before the folder is published
        tokens = self.tokens.global_total(args.world_size) if self.tokens else None
        if not state.is_world_process_zero:
            return
        written = self.staging / f"checkpoint-{state.global_step}"
        if not written.is_dir():
            return
        (written / "training_args.bin").unlink(missing_ok=True)  # a pickle nothing reads; recipe.yaml says it all
        marker = {"step": state.global_step, "epoch": state.epoch, "saved_at": time.time(),
                  "tokens": tokens,
                  "files": rundir.describe_files(written)}  # each file's size and sha256: resume verifies them
        if fault_point("enospc-on-save", state.global_step):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(written / rundir.COMPLETE_MARKER))
        with open(written / rundir.COMPLETE_MARKER, "w") as handle:
            json.dump(marker, handle)
            handle.flush()
            os.fsync(handle.fileno())
        if fault_point("kill-before-publish", state.global_step):
            os.kill(os.getpid(), signal.SIGKILL)
        target = self.folder / rundir.checkpoint_name(state.global_step)
        if target.exists():
            shutil.rmtree(target)
        os.rename(written, target)
        self.events.emit("checkpoint", step=state.global_step, path=str(target.relative_to(self.run_dir)))
        self._rotate()

    def _rotate(self) -> None:
        done = rundir.complete_checkpoints(self.run_dir)
        if self.keep and len(done) > self.keep:
            for _, path in done[: len(done) - self.keep]:
                # unmark first, so a kill mid-delete leaves an incomplete folder, never a broken "complete" one
                (path / rundir.COMPLETE_MARKER).unlink(missing_ok=True)
                shutil.rmtree(path, ignore_errors=True)


class RequestsCallback(TrainerCallback):
    """Acts on stop and checkpoint requests at the next optimizer step."""

    def __init__(self, requests):
        self.requests = requests

    def on_step_begin(self, args, state, control, **kwargs):
        if fault_point("sigkill-after-step", state.global_step):  # step N is logged and saved; N+1 begins
            os.kill(os.getpid(), signal.SIGKILL)

    def on_step_end(self, args, state, control, **kwargs):
        if args.world_size > 1:  # requests reach rank 0; every rank must act on them at the same step
            self.requests.stop, self.requests.checkpoint = share_flags(self.requests.stop, self.requests.checkpoint)
        if self.requests.checkpoint:
            self.requests.checkpoint = False
            control.should_save = True
        if self.requests.stop:
            control.should_save = True
            control.should_training_stop = True
        return control


class TokenCounter:
    """Counts the non-padding tokens trained on, on the CPU side of the collator (no device sync).

    ``base`` is what earlier workers of the run counted (restored on resume);
    ``local`` what this process has counted; :meth:`global_total` sums every rank.
    """

    def __init__(self):
        self.base = 0
        self.local = 0

    @property
    def total(self) -> int:
        return self.base + self.local

    def global_total(self, world_size: int) -> int:
        return self.base + (global_sum(self.local) if world_size > 1 else self.local)

    def wrap(self, collator):
        def collate(features):
            batch = collator(features)
            mask = batch.get("attention_mask")
            # TRL's pairwise collators (ORPO, CPO) carry each whole sequence under chosen_ and rejected_
            pairs = [batch[k] for k in ("chosen_attention_mask", "rejected_attention_mask") if k in batch]
            if mask is not None:
                self.local += int(mask.sum())
            elif pairs:
                self.local += sum(int(m.sum()) for m in pairs)
            else:
                self.local += int(batch["input_ids"].numel())
            return batch

        return collate
