"""finetty's benchmark suite: ratios against a plain transformers Trainer + PEFT script, same machine, same run.

    python bench/run.py            # ~10-15 minutes: 5 interleaved rounds of 30 steps
    python bench/run.py --quick    # ~2-3 minutes: 2 rounds of 10 steps

What it measures (medians over the rounds; the runs are interleaved A B C,
B C A, ... so load from anything else on the machine falls on all of them):

1. real (non-padding) tokens per second of LoRA SFT, after two warm-up steps:
   ``finetty train`` without and with ``train.packing`` against
   ``bench/plain_baseline.py`` on the same model, data and hyperparameters;
2. time from the command's start to the first optimizer step (finetty with
   its tokenization cache warm: a warm-up run fills it first), with the
   standby worker the previous launch left and without it (``finetty-cold``);
3. the TUI's first frame and key-to-repaint latency while a run trains, in a
   real pseudo-terminal (``bench/tui_latency.py``);
4. step time with the memory monitor on and off (``bench/monitor_cost.py``);
5. attaching to a run with 100,000 events: reading them and summarizing, and
   the app opened on that run until its monitor shows every step.

The workload (``bench/workload.py``) is built locally into the work folder:
a ~11M-parameter Llama-style model and 1000 alpaca records of 29-394 tokens.
Results are printed and written to ``<work>/results.json`` and ``<work>/results.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import monitor_cost  # noqa: E402
import tui_latency  # noqa: E402
import workload  # noqa: E402

WARM_STEPS = 2
RECIPE = """# finetty train bench/recipe.yaml (written by bench/run.py)
model: {model}
dataset: {data}
format: alpaca
method: lora
method_options: {{r: 16, lora_alpha: 32, lora_dropout: 0.0, target_modules: all-linear}}
train:
  learning_rate: 1.0e-3
  max_steps: 30
  logging_steps: 1
  save_steps: 100000
  per_device_train_batch_size: 4
  max_length: 512
  seed: 42
"""


def _env(work: Path, standby: bool = True) -> dict:
    env = dict(os.environ)
    env.update(FINETTY_HOME=str(work / "home"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1", FINETTY_STANDBY="1" if standby else "0")
    return env


@contextlib.contextmanager
def _suite_env(work: Path):
    """This process with the suite's environment (the standby's files are keyed by FINETTY_HOME)."""
    saved = dict(os.environ)
    os.environ.update(_env(work))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _standby_ready(work: Path, timeout: float = 60.0) -> bool:
    """Wait (a deadline) for the standby worker the last launch started, as a person's next command would find it."""
    from finetty.core.run import standby

    with _suite_env(work):
        deadline = time.monotonic() + timeout
        while not standby.ready():
            if standby.pid() is None or time.monotonic() > deadline:  # none is starting, or it takes too long
                return False
            time.sleep(0.2)
        return True


def _stop_standby(work: Path) -> None:
    from finetty.core.run import standby

    with _suite_env(work):
        standby.stop()


def _rate(points: list[tuple[float, int]]) -> float:
    """Real tokens per second over the steps after the warm-up ones: ``points`` are (time, tokens so far)."""
    (t0, n0), (t1, n1) = points[WARM_STEPS - 1], points[-1]
    return (n1 - n0) / (t1 - t0)


def run_finetty(work: Path, steps: int, packing: bool, standby: bool = True) -> dict:
    """``finetty train`` as a person runs it: with the standby worker the previous launch left (``standby``),
    or with ``FINETTY_STANDBY=0``, a cold process that imports everything itself."""
    warm = standby and _standby_ready(work)
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    before = set(runs.iterdir())
    command = [sys.executable, "-m", "finetty.core.cli", "train", str(work / "recipe.yaml"), "--runs-dir", str(runs),
               "--set", f"train.max_steps={steps}", "--set", f"train.packing={'true' if packing else 'false'}"]
    started = time.time()
    with open(work / "last-finetty.log", "w") as log:
        code = subprocess.call(command, env=_env(work, standby), stdout=log, stderr=subprocess.STDOUT, cwd=work)
    (run,) = set(runs.iterdir()) - before
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines() if line.strip()]
    steps_ = [e for e in events if e["type"] == "step"]
    if code != 0 or len(steps_) < steps:
        raise SystemExit(f"finetty run failed (exit {code}); see {run}/worker.log")
    first = {e["type"]: e["ts"] - started for e in reversed(events)}
    result = {"tokens_per_second": _rate([(e["ts"], e["tokens"]) for e in steps_]),
              "first_step": steps_[0]["ts"] - started,
              "phases": {k: round(first[k], 2) for k in ("worker_started", "data", "run_started") if k in first},
              "cached": "from the cache" in (run / "worker.log").read_text(),
              "standby": "from the standby" in (run / "worker.log").read_text()}
    if warm and not result["standby"]:
        raise SystemExit(f"the standby worker did not take the run; see {run}/worker.log")
    shutil.rmtree(run)
    return result


def run_plain(work: Path, model: Path, data: Path, steps: int, grouped: bool = False) -> dict:
    out = work / "plain.jsonl"
    command = [sys.executable, str(HERE / "plain_baseline.py"), str(model), str(data), str(out), "--steps", str(steps),
               "--work", str(work / "plain-out")] + (["--group-by-length"] if grouped else [])
    started = time.time()
    with open(work / "last-plain.log", "w") as log:
        code = subprocess.call(command, env=_env(work), stdout=log, stderr=subprocess.STDOUT, cwd=work)
    records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    if code != 0 or len(records) < steps:
        raise SystemExit(f"plain baseline failed (exit {code}); see {work / 'last-plain.log'}")
    return {"tokens_per_second": _rate([(r["ts"], r["tokens"]) for r in records]),
            "first_step": records[0]["ts"] - started}


def bench_training(work: Path, model: Path, data: Path, rounds: int, steps: int) -> dict:
    kinds = {"plain": lambda n: run_plain(work, model, data, n),
             "plain-grouped": lambda n: run_plain(work, model, data, n, grouped=True),
             "finetty": lambda n: run_finetty(work, n, packing=False),
             "finetty-packed": lambda n: run_finetty(work, n, packing=True),
             "finetty-cold": lambda n: run_finetty(work, n, packing=False, standby=False)}
    _stop_standby(work)  # one left by an earlier bench may predate the code measured now
    print("warm-up: one short run of each (fills finetty's tokenization cache and the page cache)", flush=True)
    for run in kinds.values():
        run(WARM_STEPS + 1)
    order = list(kinds)
    results = {name: [] for name in kinds}
    for r in range(rounds):
        for name in order[r % len(order):] + order[:r % len(order)]:
            _standby_ready(work)  # the standby the last run left has done its imports: nothing else uses the CPU
            result = kinds[name](steps)
            results[name].append(result)
            print(f"  round {r + 1}/{rounds} {name:15s} {result['tokens_per_second']:8.0f} real tok/s   "
                  f"first step {result['first_step']:5.1f} s", flush=True)
    return results


def bench_attach(work: Path, count: int = 100_000) -> dict:
    """Write a run with ``count`` events, then time (in a fresh process) reading and summarizing it."""
    run = work / "attach-run"
    if not (run / "events.jsonl").exists() or sum(1 for _ in open(run / "events.jsonl")) != count:
        run.mkdir(parents=True, exist_ok=True)
        (run / "recipe.yaml").write_text("model: tiny-demo\n")
        with open(run / "events.jsonl", "w") as handle:
            t = 1.7e9
            handle.write(json.dumps({"ts": t, "type": "worker_started", "pid": 1}) + "\n")
            handle.write(json.dumps({"ts": t, "type": "run_started", "step": 0, "total_steps": count,
                                     "recipe": {"model": "bench", "method": "lora"}}) + "\n")
            for step in range(1, count - 2):
                handle.write(json.dumps({"ts": t + step, "type": "step", "step": step, "epoch": step / 1000,
                                         "loss": 2.0 + 1.0 / step, "learning_rate": 1e-4, "grad_norm": 0.5,
                                         "tokens": step * 2048, "tokens_per_second": 2000.0,
                                         "elapsed": float(step)}) + "\n")
            handle.write(json.dumps({"ts": t + count, "type": "run_finished", "step": count - 3, "final": "final",
                                     "train_loss": 2.0, "tokens": count * 2048}) + "\n")
    code = (
        "import time, json, sys\n"
        "t0 = time.perf_counter()\n"
        "from pathlib import Path\n"
        "from finetty.core.run import events, rundir\n"
        "t1 = time.perf_counter()\n"
        f"run = Path({str(run)!r})\n"
        "found = events.EventReader(run).poll()\n"
        "t2 = time.perf_counter()\n"
        "summary = rundir.summarize(run, found)\n"
        "t3 = time.perf_counter()\n"
        "print(json.dumps({'import': t1 - t0, 'read': t2 - t1, 'summarize': t3 - t2, 'events': len(found),\n"
        "                  'status': summary.status}))\n"
    )
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], env=_env(work), capture_output=True, text=True, check=True)
        sample = json.loads(out.stdout)
        sample["process"] = time.perf_counter() - started
        samples.append(sample)
    shown = [_attach_in_app(work, run) for _ in range(3)]
    return {k: statistics.median(s[k] for s in samples) for k in ("import", "read", "summarize", "process")} | {
        "events": samples[0]["events"], "status": samples[0]["status"], "app": statistics.median(shown),
        "app_runs": shown}


def _attach_in_app(work: Path, run: Path) -> float:
    """Seconds from a fresh process's start until the app, opened on ``run``, shows its monitor with every step
    folded in and drawn (headless, 80x24: Textual renders as it would to a terminal)."""
    code = (
        "import asyncio, time\n"
        "t0 = time.perf_counter()\n"
        "from pathlib import Path\n"
        "from finetty.tui.app import FinettyApp\n"
        "from finetty.tui.screens.monitor import MonitorScreen\n"
        f"run = Path({str(run)!r})\n"
        "async def main():\n"
        "    app = FinettyApp(runs=run.parent, open_run=run, first_run=False, notify_write=lambda text: None)\n"
        "    async with app.run_test(size=(80, 24)) as pilot:\n"
        "        while not (isinstance(app.screen, MonitorScreen) and app.screen.history.status == 'finished'):\n"
        "            await pilot.pause(0.01)\n"
        "        await pilot.pause()\n"
        "        print(time.perf_counter() - t0, app.screen.history.summary.step)\n"
        "asyncio.run(main())\n"
    )
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=_env(work), capture_output=True, text=True, check=True)
    step = out.stdout.split()[-1]
    if int(step) < 99_000:
        raise SystemExit(f"the monitor showed step {step} of the 100,000-event run")
    return time.perf_counter() - started


def _monitor(rounds: int, steps: int, work: Path) -> dict:
    """bench/monitor_cost.py in a fresh process (it trains in-process), with this suite's environment."""
    out = subprocess.run([sys.executable, "-c", "import json, sys; sys.path.insert(0, sys.argv[1]); import monitor_cost; "
                          f"print('RESULT', json.dumps(monitor_cost.measure({rounds}, {steps})))", str(HERE)],
                         env=_env(work), capture_output=True, text=True, check=True)
    (line,) = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    return json.loads(line[len("RESULT "):])


def machine() -> dict:
    from importlib.metadata import version

    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("finetty", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes"):
        try:
            versions[name] = version(name)
        except Exception:
            versions[name] = None
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu, "cores": os.cpu_count(),
            "memory_gib": round(memory, 1), "python": platform.python_version(), "os": platform.platform(),
            "versions": versions}


def _bar(value: float, scale: float, width: int = 40) -> str:
    cells = value / scale * width
    full = int(cells)
    return "█" * full + (" ▏▎▍▌▋▊▉"[int((cells - full) * 8)] if cells - full >= 0.125 else "")


def report(results: dict) -> str:
    train = results["training"]
    med = {name: {k: statistics.median(r[k] for r in runs) for k in ("tokens_per_second", "first_step")}
           for name, runs in train.items()}
    plain = med["plain"]
    lines = [f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, "
             f"{results['machine']['memory_gib']} GiB; {results['machine']['date']}",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in results["machine"]["versions"].items() if v),
             f"Workload: {results['workload']}",
             "", "| | real tokens/s (median) | vs plain | target | first step (s) | vs plain | target |",
             "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
    targets = {"finetty": ">= 1.0x", "finetty-packed": ">= 1.5x"}
    for name in ("plain", "plain-grouped", "finetty", "finetty-packed", "finetty-cold"):
        m = med[name]
        ratio = m["tokens_per_second"] / plain["tokens_per_second"]
        first = m["first_step"] / plain["first_step"]
        lines.append(f"| {name} | {m['tokens_per_second']:.0f} | {ratio:.2f}x | {targets.get(name, '')} | "
                     f"{m['first_step']:.1f} | {first:.2f}x | {'<= 0.6x' if name.startswith('finetty') else ''} |")
    grouped = med["finetty"]["tokens_per_second"] / med["plain-grouped"]["tokens_per_second"]
    lines.append(f"\nfinetty unpacked vs plain with the same length grouping: {grouped:.2f}x")
    scale = max(m["tokens_per_second"] for m in med.values())
    lines += ["", "Real tokens per second (median of the rounds):", "```"]
    lines += [f"{name:15s} {_bar(m['tokens_per_second'], scale)} {m['tokens_per_second']:.0f}"
              for name, m in med.items()]
    scale = max(m["first_step"] for m in med.values())
    lines += ["", "Seconds from the command to the first optimizer step (median):"]
    lines += [f"{name:15s} {_bar(m['first_step'], scale)} {m['first_step']:.1f}" for name, m in med.items()]
    lines += ["```"]
    lines.append("finetty and finetty-packed are served by the standby worker the previous launch left "
                 f"({sum(r.get('standby', False) for r in train['finetty'] + train['finetty-packed'])} of "
                 f"{len(train['finetty']) + len(train['finetty-packed'])} runs); finetty-cold has FINETTY_STANDBY=0.")
    for name in ("finetty", "finetty-cold"):
        phases = [r["phases"] for r in train[name] if r.get("phases")]
        if phases:
            p = {k: statistics.median(x[k] for x in phases if k in x) for k in phases[0]}
            lines.append(f"{name}'s path to the first step (median seconds since the command started): "
                         + ", ".join(f"{k} {v:.2f}" for k, v in p.items())
                         + f", first step {med[name]['first_step']:.2f}")
    a = results["attach"]
    lines += ["", f"Attach, {a['events']} events: import {a['import']:.2f} s, read {a['read']:.2f} s, "
                  f"summarize {a['summarize']:.2f} s; whole fresh process {a['process']:.2f} s (median of 5); "
                  f"the app opened on the run, from its process's start to the monitor drawn with every step: "
                  f"{a['app']:.2f} s (median of 3)"]
    t = results["tui"]
    lines += [f"TUI: first frame {t['first_frame_median'] * 1e3:.0f} ms (median of {len(t['first_frame'])} fresh "
              f"launches; target < 500 ms); key to repaint while a run trains: median {t['latency_median'] * 1e3:.1f} ms, "
              f"p95 {t['latency_p95'] * 1e3:.1f} ms over {len(t['latencies'])} keys (target p95 < 100 ms)",
              f"TUI launch (New run open 8 s, ctrl+l) to the first optimizer step: cold worker "
              f"{t['launch_cold_median']:.2f} s, standby worker {t['launch_standby_median']:.2f} s (medians)",
              f"Monitor: {monitor_cost.describe(results['monitor'])} (target < 1%)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 rounds of 10 steps (~2-3 minutes)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "finetty-bench")
    args = parser.parse_args(argv)
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (10 if args.quick else 30)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    model, data = workload.build(work / "workload")
    (work / "recipe.yaml").write_text(RECIPE.format(model=model, data=data))
    results = {"machine": machine(),
               "workload": f"Llama-style, {workload.parameters(model) / 1e6:.1f}M parameters; {workload.RECORDS} "
                           f"alpaca records of ~29-394 tokens; LoRA r=16 all-linear; batch 4; max_length 512; "
                           f"{rounds} rounds of {steps} steps"}
    try:
        results["training"] = bench_training(work, model, data, rounds, steps)
    finally:
        _stop_standby(work)
    results["attach"] = bench_attach(work)
    print("the terminal app: first frame, and key to repaint while a run trains", flush=True)
    results["tui"] = tui_latency.measure(launches=3 if args.quick else 5, keys=30 if args.quick else 60,
                                         work=work / "tui")
    print("the memory monitor: step time with the sampler on and off", flush=True)
    results["monitor"] = _monitor(rounds=2 if args.quick else 3, steps=60 if args.quick else 120, work=work)
    text = report(results)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    (work / "results.md").write_text(text + "\n")
    print("\n" + text)
    print(f"\nwritten: {work / 'results.json'}, {work / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
