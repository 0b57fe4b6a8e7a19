"""``finetty serve`` under load: 8 concurrent streams against one stream, on the demo run.

``python bench/serve_concurrency.py [--run RUN] [--streams 8] [--rounds 3] [--max-tokens 64]``

Without ``--run`` it trains the demo run first (``recipes/demo-lora.yaml``, 40
steps) into a private FINETTY_HOME. It starts ``finetty serve`` in a child
process and, with the official ``openai`` client, times one streaming request
alone and then ``--streams`` streaming requests sent at once (each its own
thread and connection), over ``--rounds`` rounds. The prompts are ones the
demo did not learn, so every answer runs to ``--max-tokens``: equal work per
stream. Reported: the medians and the ratio (N streams' total time over one
stream's; N would mean no sharing at all, 1 perfect sharing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_batch import demo_run  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
PROMPTS = ["Write a poem about the sea.", "List ten colours.", "Explain rain to a child.", "Tell me a story.",
           "Describe a city at night.", "What is a river?", "Name some birds.", "Count to twenty in words."]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", default=None)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="finetty-serve-bench-"))
    env = {**os.environ, "FINETTY_HOME": os.environ.get("FINETTY_HOME", str(home)), "HF_HUB_OFFLINE": "1",
           "FINETTY_API_KEY": "", "FINETTY_STANDBY": "0"}
    run = Path(args.run) if args.run else demo_run(home)
    process = subprocess.Popen([sys.executable, "-m", "finetty.core.cli", "serve", str(run), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO)
    try:
        line = process.stdout.readline()
        url = line.split(" at ")[1].split()[0]
        import openai

        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        tokens: list[int] = []

        def stream(prompt: str) -> None:
            chunks = client.chat.completions.create(
                model=run.name, messages=[{"role": "user", "content": prompt}], temperature=0, stream=True,
                max_tokens=args.max_tokens, stream_options={"include_usage": True})
            tokens.append(next(c.usage.completion_tokens for c in chunks if c.usage))

        def timed(count: int) -> float:
            threads = [threading.Thread(target=stream, args=(PROMPTS[i % len(PROMPTS)],)) for i in range(count)]
            start = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            return time.perf_counter() - start

        timed(1)  # warm-up: the first request pays for lazy initialisation
        one, many = [], []
        for _ in range(args.rounds):
            one.append(timed(1))
            many.append(timed(args.streams))
        single, together = statistics.median(one), statistics.median(many)
        print(f"run {run.name}; {args.max_tokens} new tokens a stream (produced: min {min(tokens)}, "
              f"max {max(tokens)})")
        print(f"1 stream: {' '.join(f'{t:.2f}' for t in one)} s (median {single:.2f} s)")
        print(f"{args.streams} concurrent streams: {' '.join(f'{t:.2f}' for t in many)} s (median {together:.2f} s)")
        print(f"ratio: {together / single:.2f} ({args.streams} streams take {together / single:.2f}x one stream's "
              f"time; {args.streams}x would be one at a time)")
    finally:
        process.terminate()
        process.wait(timeout=60)


if __name__ == "__main__":
    main()
