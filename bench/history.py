"""A long history: what listing, attaching to and showing a run of many events costs (issue 19, item 11).

``python bench/history.py [--events 1000000] [--work DIR]`` writes a finished run of that many events
(a run, in a fresh FINETTY_HOME under DIR, of step events shaped as the worker writes them), then times
fresh processes, each measured alone, with its peak resident memory (``ru_maxrss`` of that child, from
``wait4``):

- ``finetty runs`` with no history index: the events are folded once, in chunks, and the index written;
- ``finetty runs`` again: the index and the events after it;
- ``finetty attach RUN`` (from the index);
- the app (headless, 100x30) until the Runs list shows the run's row with its last step.

The numbers go to docs/benchmarks.md ("A long history"); nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN = "260101-000000-lora-sft-long"


def write_history(run: Path, count: int) -> int:
    """A finished run of ``count`` events; returns the size of its events.jsonl in bytes."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "recipe.yaml").write_text("model: tiny-demo\nmethod: lora\n")
    t = 1.7e9
    steps = count - 3
    with open(run / "events.jsonl", "w") as handle:
        handle.write(json.dumps({"ts": t, "type": "worker_started", "pid": 1, "resume": False}) + "\n")
        handle.write(json.dumps({"ts": t, "type": "run_started", "step": 0, "total_steps": steps,
                                 "recipe": {"model": "tiny-demo", "method": "lora"}}) + "\n")
        for step in range(1, steps + 1):
            handle.write(json.dumps({"ts": round(t + step * 0.5, 3), "type": "step", "step": step,
                                     "epoch": round(step / 1000, 4), "loss": 2.0 + 1.0 / step, "learning_rate": 1e-4,
                                     "grad_norm": 0.5, "tokens": step * 2048, "tokens_per_second": 4096.0,
                                     "elapsed": step * 0.5}) + "\n")
        handle.write(json.dumps({"ts": t + steps * 0.5 + 1, "type": "run_finished", "step": steps, "final": "final",
                                 "train_loss": 2.0, "runtime": steps * 0.5, "tokens": steps * 2048}) + "\n")
    return (run / "events.jsonl").stat().st_size


def timed(cmd: list[str], env: dict) -> tuple[float, float, str]:
    """Seconds, peak RSS in MiB and stdout of ``cmd`` run alone in a fresh process."""
    started = time.perf_counter()
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    took = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    return took, usage.ru_maxrss / 1024, out


APP = """
import asyncio, sys, time
from pathlib import Path
from finetty.tui.app import FinettyApp
from textual.widgets import DataTable
runs, name, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
async def main():
    app = FinettyApp(runs=runs, first_run=False, notify_write=lambda text: None)
    async with app.run_test(size=(100, 30)) as pilot:
        while True:
            try:
                table = app.screen.query_one("#runs-table", DataTable)
                row = [str(cell) for cell in table.get_row(name)]
            except Exception:
                row = []
            if any(step in cell for cell in row):
                print("shown", row)
                return
            await pilot.pause(0.01)
asyncio.run(main())
"""


def measure(count: int, work: Path, repeat: int = 3) -> dict:
    home = work / "home"
    run = home / "runs" / RUN
    size = write_history(run, count)
    (run / "summary.json").unlink(missing_ok=True)
    env = dict(os.environ, FINETTY_HOME=str(home), FINETTY_STANDBY="0", HF_HUB_OFFLINE="1", COLUMNS="200")
    finetty = [sys.executable, "-m", "finetty.core.cli"]
    result = {"events": count, "bytes": size}
    took, rss, out = timed(finetty + ["runs"], env)
    assert f"{count - 3}/{count - 3}" in out and "finished" in out, out
    result["runs_no_index"] = (took, rss)
    assert count < 10_000 or (run / "summary.json").exists(), "finetty runs wrote no index back"
    samples = [timed(finetty + ["runs"], env) for _ in range(repeat)]
    result["runs"] = (statistics.median(s[0] for s in samples), max(s[1] for s in samples))
    samples = [timed(finetty + ["attach", RUN], env) for _ in range(repeat)]
    assert "finished at step" in samples[0][2], samples[0][2]
    result["attach"] = (statistics.median(s[0] for s in samples), max(s[1] for s in samples))
    samples = [timed([sys.executable, "-c", APP, str(home / "runs"), RUN, str(count - 3)], env) for _ in range(repeat)]
    result["app_row"] = (statistics.median(s[0] for s in samples), max(s[1] for s in samples))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="finetty-history-"))
    # the same commands on a 10-event run: what a fresh process costs here whatever the history
    for result in (measure(10, work / "small"), measure(args.events, work / "long")):
        print(f"{result['events']:,} events, {result['bytes'] / 2**20:.1f} MiB of events.jsonl")
        for key, what in (("runs_no_index", "finetty runs, no index yet (folds every event, writes the index)"),
                          ("runs", "finetty runs (the index, then the events after it)"),
                          ("attach", "finetty attach (from the index)"),
                          ("app_row", "the app, until the Runs list shows the run's last step")):
            took, rss = result[key]
            print(f"  {what}: {took:.2f} s, peak RSS {rss:.0f} MiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
