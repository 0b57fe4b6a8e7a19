"""What the memory monitor costs a run: one sample, and step time with the sampler on vs off (docs/memory.md).

    python bench/monitor_cost.py [--rounds 3] [--steps 120]

1. Times ``Sampler.sample()`` (host memory and CPU through psutil, a ``memory``
   event written to a real events file; NVML too when a GPU is present).
2. Trains ``recipes/demo-lora.yaml`` in this process, alternating runs with the
   sampler on (its default 2 s timer plus a sample after every step) and off
   (never started), and compares the mean step time (median over runs) from the ``step``
   events. The tiny demo's steps are short, so this is the worst case for the
   per-step share.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sample_cost(n: int = 2000) -> float:
    from finetty.core.memory import monitor
    from finetty.core.run.events import EventWriter

    with tempfile.TemporaryDirectory() as folder:
        writer = EventWriter(Path(folder))
        sampler = monitor.Sampler(writer, None, interval_s=0.0)
        sampler.open()
        sampler.sample()
        t0 = time.perf_counter()
        for _ in range(n):
            sampler.sample()
        cost = (time.perf_counter() - t0) / n
        sampler.stop()
        writer.close()
    return cost


def step_times(run: Path) -> list[float]:
    import json

    steps = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if '"type": "step"' in line]
    elapsed = [e["elapsed"] for e in steps]
    return [b - a for a, b in zip(elapsed[5:], elapsed[6:])]  # skip the first steps (warm-up)


def one_run(steps: int, monitored: bool, runs: Path) -> tuple[float, int]:
    from finetty.core.memory import monitor
    from finetty.core.run import rundir
    from finetty.core.train import worker
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.run.events import EventWriter
    from finetty.core.plugin.registry import load_plugins

    registry = load_plugins()
    recipe = recipe_mod.load(REPO / "recipes/demo-lora.yaml", [f"train.max_steps={steps}", "train.logging_steps=1",
                                                              "train.save_steps=100000"], registry)
    run = rundir.create(runs, recipe.method, recipe.to_yaml())
    writer = EventWriter(run)
    original = monitor.start
    made = []

    def start(*args, **kwargs):
        sampler = original(*args, **kwargs) if monitored else monitor.Sampler(args[1], args[2])
        made.append(sampler)
        return sampler

    monitor.start = start
    try:
        worker.train(run, writer, worker.Requests(), resume=False)
    finally:
        monitor.start = original
        writer.close()
    return statistics.fmean(step_times(run)), made[0].samples


def measure(rounds: int = 3, steps: int = 120) -> dict:
    """Step time with the sampler on and off (alternating runs) and the cost of one sample."""
    os.environ.setdefault("FINETTY_HOME", tempfile.mkdtemp(prefix="finetty-bench-"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cost = sample_cost()
    on, off, samples = [], [], []
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(rounds):
            for monitored in ((False, True) if round_ % 2 == 0 else (True, False)):  # alternate who goes first
                mean_step, count = one_run(steps, monitored, Path(folder))
                (on if monitored else off).append(mean_step)
                if monitored:
                    samples.append(count)
    step_on, step_off = statistics.median(on), statistics.median(off)
    return {"sample_seconds": cost, "step_off": off, "step_on": on, "step_off_median": step_off,
            "step_on_median": step_on, "overhead": step_on / step_off - 1, "sample_share": cost / step_off,
            "samples_per_run": statistics.median(samples), "steps": steps, "rounds": rounds}


def describe(result: dict) -> str:
    return (f"one sample {result['sample_seconds'] * 1e6:.0f} us (host only without a GPU); mean step, sampler off "
            f"{result['step_off_median'] * 1e3:.1f} ms, on {result['step_on_median'] * 1e3:.1f} ms "
            f"({result['overhead'] * 100:+.2f}%, median of {result['rounds']} runs each of {result['steps']} steps, "
            f"{result['samples_per_run']:.0f} samples a run); one sample is {result['sample_share'] * 100:.2f}% "
            f"of a step")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=120)
    args = parser.parse_args()
    result = measure(args.rounds, args.steps)
    print("mean step per run, off:", " ".join(f"{t * 1e3:.1f}" for t in result["step_off"]), "ms; on:",
          " ".join(f"{t * 1e3:.1f}" for t in result["step_on"]), "ms")
    print(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
