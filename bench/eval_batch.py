"""``finetty eval`` at batch speed: the same evaluation answered one prompt at a time and in batches.

``python bench/eval_batch.py [--run RUN] [--rounds 3] [--batch-size 16]``

Without ``--run`` it trains the demo run first (``recipes/demo-lora.yaml``,
the built-in ``identity`` dataset, 40 steps) into a private FINETTY_HOME. Then
it loads the tuned model and the base once and times ``evaluate.score`` (the
whole answering pass of ``finetty eval``: greedy answers to every example and
the metrics) at batch size 1 (one prompt at a time, as before) and at
``--batch-size``, interleaved over ``--rounds`` rounds; it reports medians and
the ratio, and checks that both produced the same answers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def demo_run(home: Path) -> Path:
    runs = home / "runs"
    subprocess.run([sys.executable, "-m", "finetty.core.cli", "train", str(REPO / "recipes" / "demo-lora.yaml"),
                    "--runs-dir", str(runs), "--set", "train.max_steps=40", "--set", "train.save_steps=40"],
                   check=True, capture_output=True, env={**os.environ, "FINETTY_HOME": str(home),
                                                         "FINETTY_STANDBY": "0"})
    return next(p for p in runs.iterdir() if (p / "final").is_dir())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None, help="a finished run directory (default: train the demo run)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="finetty-eval-bench-"))
    os.environ.setdefault("FINETTY_HOME", str(home))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    run = Path(args.run) if args.run else demo_run(home)

    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.results import evaluate, inference

    from finetty.core.plugin.registry import load_plugins

    registry = load_plugins()
    recipe = recipe_mod.from_run(run)
    examples, described = evaluate.examples_for(run, recipe, registry, None)
    tuned = inference.load(run, registry=registry)
    base = inference.load_base(run, registry, tokenizer=tuned.tokenizer)
    tokens = evaluate._default_max_new_tokens(tuned.tokenizer, examples)
    max_length = int(recipe.train.get("max_length") or 1024)
    times: dict[int, list[float]] = {1: [], args.batch_size: []}
    answers: dict[int, list] = {}
    for round_ in range(args.rounds):
        for size in ((1, args.batch_size) if round_ % 2 == 0 else (args.batch_size, 1)):
            start = time.perf_counter()
            found = [evaluate.score(model, examples, tokens, max_length, batch_size=size)[1]
                     for model in (tuned, base)]
            times[size].append(time.perf_counter() - start)
            answers[size] = found
    one, batched = statistics.median(times[1]), statistics.median(times[args.batch_size])
    same = answers[1] == answers[args.batch_size]
    print(f"run {run.name}: {len(examples)} examples from {described}; up to {tokens} new tokens; tuned and base")
    print(f"one prompt at a time: {' '.join(f'{t:.2f}' for t in times[1])} s (median {one:.2f} s)")
    print(f"batches of {args.batch_size}: {' '.join(f'{t:.2f}' for t in times[args.batch_size])} s "
          f"(median {batched:.2f} s)")
    print(f"speed-up: {one / batched:.2f}x; same answers: {same}")
    if not same:
        for a, b in zip(answers[1][0] + answers[1][1], answers[args.batch_size][0] + answers[args.batch_size][1]):
            if a != b:
                print(f"  differs: {a!r} vs {b!r}")
                break


if __name__ == "__main__":
    main()
