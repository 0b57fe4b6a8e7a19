"""Run directories built from a recorded ``events.jsonl`` (tests/fixtures/tui/finished): stable data for TUI tests.

The finished run is a real 60-step tiny-demo LoRA run (eval every 20 steps); the others are cut from it and
given the end a failed, stopped or lost run has; ``memory`` adds the monitor's memory and watermark events.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

FIXTURE = Path(__file__).parent / "fixtures" / "tui" / "finished"
GIB = 1024 ** 3


def recorded() -> list[dict]:
    return [json.loads(line) for line in (FIXTURE / "events.jsonl").read_text().splitlines() if line.strip()]


START = recorded()[0]["ts"]
FROZEN = recorded()[-1]["ts"] + 120.0
"""the tests' clock: two minutes after the recorded run finished"""


def write_run(runs: Path, name: str, events: list[dict], log: str | None = None) -> Path:
    run = runs / name
    run.mkdir(parents=True)
    shutil.copy(FIXTURE / "recipe.yaml", run / "recipe.yaml")
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    (run / "worker.log").write_text(log if log is not None else (FIXTURE / "worker.log").read_text())
    for event in events:
        if event["type"] == "checkpoint":
            folder = run / event["path"]
            folder.mkdir(parents=True, exist_ok=True)
            marker = folder / "finetty-checkpoint.json"
            marker.write_text(json.dumps({"step": event["step"]}))
            os.utime(marker, (event["ts"], event["ts"]))  # completed when the run said so: screens show its time
        if event["type"] == "run_finished":
            (run / "final").mkdir(exist_ok=True)
    return run


def upto(step: int) -> list[dict]:
    return [e for e in recorded() if e.get("step") is None or e["type"] == "run_started" or e["step"] <= step
            if e["type"] not in ("run_finished",)]


def memory_events(events: list[dict]) -> list[dict]:
    """A memory sample after every step event, one GPU of 24 GiB, crossing the 0.9 watermark at step 45."""
    out = []
    for event in events:
        out.append(event)
        if event["type"] == "step":
            step = event["step"]
            used = int((0.55 + 0.4 * step / 60) * 24 * GIB) if step != 45 else int(0.93 * 24 * GIB)
            out.append({"ts": event["ts"] + 0.01, "type": "memory", "step": step, "watermark": 0.9,
                        "gpus": [{"index": 0, "name": "NVIDIA L4", "used": used, "total": 24 * GIB, "util": 97.0,
                                  "process_used": used - GIB, "torch_allocated": used - 2 * GIB,
                                  "torch_reserved": used - GIB, "torch_peak": used - GIB // 2}],
                        "host": {"used": 9 * GIB, "total": 24 * GIB, "process_rss": 3 * GIB, "cpu_percent": 180.0}})
            if step == 45:
                out.append({"ts": event["ts"] + 0.02, "type": "watermark", "gpu": 0, "fraction": 0.93,
                            "watermark": 0.9, "state": "crossed", "policy": "checkpoint"})
            if step == 50:
                out.append({"ts": event["ts"] + 0.02, "type": "watermark", "gpu": 0, "fraction": 0.88,
                            "watermark": 0.9, "state": "recovered", "policy": "checkpoint"})
    return out


def make_runs(runs: Path) -> dict[str, Path]:
    """finished, failed, stopped and lost runs with fixed ids."""
    events = recorded()
    last_ts = events[-1]["ts"]
    made = {
        "finished": write_run(runs, "261122-110826-lora-f667", events),
        "failed": write_run(runs, "261122-100000-lora-0bad", upto(25) + [
            {"ts": last_ts, "type": "run_failed", "reason": "OutOfMemoryError: CUDA out of memory. Tried to allocate "
                                                            "2.00 GiB"}],
            log="Traceback (most recent call last):\n  File \"worker.py\", line 1, in train\n"
                "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n"),
        "stopped": write_run(runs, "261122-090000-lora-5709", upto(40) + [
            {"ts": last_ts, "type": "stopped", "step": 40, "checkpoint": "checkpoints/step-000040",
             "reason": "asked to stop (SIGTERM)"}]),
        "lost": write_run(runs, "261122-080000-lora-1057", upto(30), log="step 30\nKilled\n"),
    }
    return made


async def workers_done(app) -> None:
    """Wait for every worker the app has started; a cancelled one (replaced by an exclusive newer one) is done too."""
    from textual.worker import WorkerCancelled, WorkerFailed

    for worker in list(app.workers):
        try:
            await worker.wait()
        except (WorkerCancelled, WorkerFailed):
            pass


def with_broken_plugin(error: Exception):
    """The plugins as discovered, plus one named ``broken-example`` whose ``register_methods`` raises ``error``."""
    import types

    from finetty.core.plugin_api import hookimpl
    from finetty.core.plugin.registry import discover

    broken = types.ModuleType("broken_plugin")

    @hookimpl
    def register_methods(register):
        raise error

    broken.register_methods = register_methods
    return discover(extra=[("broken-example", broken)])
