"""The GPU smoke check (issue 17): every GPU-only path of finetty once, on a real CUDA device, in minutes.

``python bench/gpu_smoke.py [--work DIR] [--keep]``

Nothing is downloaded: a tiny Llama and a tiny Qwen2-shaped model are built
from a config with the demo tokenizer (``finetty.core.data.demo``). Training
goes through ``python -m finetty.core.cli train RECIPE --runs-dir DIR`` exactly
as a user runs it, and every number is read from the run's ``events.jsonl``.
Each check prints one line, ``PASS name: detail``, ``FAIL name: detail`` or
``SKIP name: reason``; one check failing (or raising) never stops the others.
Exit 0 only when nothing failed. With no CUDA device it prints one line and
exits 0, so the suite can run it on CPU machines (tests/test_gpu_smoke.py).

The CUDA out-of-memory check makes the memory really run out: after two
optimizer steps (and a checkpoint), a ``sitecustomize`` on the worker's
``PYTHONPATH`` caps it with ``torch.cuda.set_per_process_memory_fraction`` a
little above what a small micro-batch needs, while it trains a micro-batch
sixteen times larger.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

NO_CUDA = "gpu_smoke: skipped, no CUDA device (torch.cuda.is_available() is False)"
STEPS = 30
MIB = 1024 ** 2

RESULTS: list[tuple[str, str, str]] = []


class Skip(Exception):
    """A check that cannot run here (a package missing); its message is the reason."""


def report(status: str, name: str, detail: str) -> None:
    RESULTS.append((status, name, detail))
    print(f"{status} {name}: {detail}", flush=True)


def check(name: str, function, *args) -> None:
    """Run one check; its return value is the PASS detail, an AssertionError the FAIL, Skip the SKIP."""
    started = time.monotonic()
    try:
        detail = function(*args)
    except Skip as exc:
        report("SKIP", name, str(exc))
    except AssertionError as exc:
        report("FAIL", name, f"{exc} ({time.monotonic() - started:.0f}s)")
    except Exception as exc:
        report("FAIL", name, f"{type(exc).__name__}: {exc} ({time.monotonic() - started:.0f}s)")
        traceback.print_exc(file=sys.stderr)
    else:
        report("PASS", name, f"{detail} ({time.monotonic() - started:.0f}s)")


# -- models, recipes, runs --------------------------------------------------------------------------


def build_models(work: Path) -> dict[str, Path]:
    """A tiny Llama (the demo's own builder) and a tiny Qwen2 with the same tokenizer, saved under ``work``."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from finetty.core.data import demo

    llama = demo.build(work / "tiny-llama")
    tokenizer = demo.build_tokenizer()
    settings = {k: v for k, v in demo.MODEL_CONFIG.items() if k != "vocab_size"}
    config = Qwen2Config(**settings, vocab_size=-(-len(tokenizer) // 64) * 64, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    torch.nn.init.normal_(model.lm_head.weight, std=demo.HEAD_INIT_STD)
    qwen = work / "tiny-qwen2"
    model.save_pretrained(qwen, safe_serialization=True)
    tokenizer.save_pretrained(qwen)
    return {"llama": llama, "qwen2": qwen}


def recipe_text(model: Path, method: str = "lora", train: dict | None = None, **sections) -> str:
    """A recipe as YAML (JSON is YAML): the identity dataset, ``method``, and ``train`` over the defaults."""
    recipe = {"model": str(model), "dataset": "identity",
              "dataset_options": {"name": "Tiny", "author": "the finetty team"},
              "method": method, "objective": "sft",
              "train": {"learning_rate": 3e-3, "max_steps": STEPS, "per_device_train_batch_size": 8,
                        "warmup_steps": 2, "logging_steps": 1, "save_steps": 1000, "max_length": 256,
                        "seed": 42, **(train or {})}}
    if method in ("lora", "qlora"):
        recipe["method_options"] = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
    if "dataset" in sections:
        del recipe["dataset_options"]  # the identity dataset's own options
    recipe.update(sections)
    return json.dumps(recipe, indent=2)


def long_dataset(work: Path) -> Path:
    """256 alpaca examples of about 900 tokens each, so a micro-batch's memory grows with its rows."""
    import random

    words = "the model learns a name and a maker from short questions and long answers".split()
    rng = random.Random(0)
    path = work / "long.jsonl"
    with path.open("w", encoding="utf-8") as handle:
        for n in range(256):
            text = " ".join(rng.choice(words) for _ in range(900))
            handle.write(json.dumps({"instruction": f"Say something long, number {n}.", "output": text}) + "\n")
    return path


class Runner:
    """Writes recipes and runs the CLI on them, each run in its own runs folder under ``work``."""

    def __init__(self, work: Path, models: dict[str, Path]):
        self.work = work
        self.models = models
        self.count = 0

    def folder(self, label: str) -> Path:
        self.count += 1
        folder = self.work / f"{self.count:02d}-{label}"
        folder.mkdir(parents=True)
        return folder

    def cli(self, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "finetty.core.cli", *args], capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    def train(self, label: str, text: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, Path | None]:
        """``finetty train`` on ``text``; returns the process and its run directory (None if none was made)."""
        folder = self.folder(label)
        recipe = folder / "recipe.yaml"
        recipe.write_text(text, encoding="utf-8")
        runs = folder / "runs"
        done = self.cli("train", str(recipe), "--runs-dir", str(runs), env=env)
        made = [p for p in runs.iterdir() if (p / "events.jsonl").exists()] if runs.exists() else []
        return done, (made[0] if made else None)


def events(run: Path) -> list[dict]:
    from finetty.core.run.events import read_all

    return read_all(run)


def losses(run: Path) -> dict[int, float]:
    return {e["step"]: e["loss"] for e in events(run) if e["type"] == "step" and e.get("loss") is not None}


def finished(done: subprocess.CompletedProcess, run: Path | None) -> list[dict]:
    """The run's events, after asserting that it ran to ``run_finished``."""
    tail = (done.stderr or done.stdout or "").strip().splitlines()[-3:]
    assert run is not None, f"no run directory (exit {done.returncode}): {' | '.join(tail)}"
    found = events(run)
    failed = [e for e in found if e["type"] == "run_failed"]
    assert not failed, f"run_failed: {failed[-1].get('reason')}"
    assert done.returncode == 0 and any(e["type"] == "run_finished" for e in found), \
        f"exit {done.returncode}, no run_finished: {' | '.join(tail)}"
    return found


def falling(run: Path) -> str:
    found = losses(run)
    assert len(found) >= 4, f"only {len(found)} step losses"
    steps = sorted(found)
    first = sum(found[s] for s in steps[:3]) / 3
    last = sum(found[s] for s in steps[-3:]) / 3
    assert math.isfinite(last) and last < first * 0.9, f"loss did not fall: {first:.3f} -> {last:.3f}"
    return f"loss {first:.3f} -> {last:.3f} over {steps[-1]} steps"


def peak_reserved(found: list[dict]) -> int:
    """The highest ``torch_reserved`` (else ``torch_peak``) any memory event saw: what torch's allocator held."""
    peak = 0
    for event in found:
        if event["type"] == "memory":
            for reading in event.get("gpus", []):
                peak = max(peak, reading.get("torch_reserved") or 0, reading.get("torch_peak") or 0)
    return peak


def peak_process(found: list[dict]) -> tuple[int, str]:
    """The run's measured peak as the estimate counts it (the CUDA context included): NVML's per-process
    memory when NVML can see this run's processes, else torch's reserved plus the estimate's context bytes."""
    from finetty.core.memory.estimate import CONTEXT_BYTES

    nvml = max((r.get("process_used") or 0 for e in found if e["type"] == "memory" for r in e.get("gpus", [])),
               default=0)
    if nvml:
        return nvml, "NVML process"
    return peak_reserved(found) + CONTEXT_BYTES, "torch reserved + context"


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# -- the checks -------------------------------------------------------------------------------------


def check_nvml(runner: Runner) -> str:
    """NVML's used memory must grow by about what torch reserves when a tensor is allocated."""
    import torch

    from finetty.core.memory import gpu

    nvml = gpu.Nvml().open()
    try:
        index = nvml.indexes[0]
        torch.zeros(1, device="cuda")  # the CUDA context exists before the first reading: NVML counts it, torch not
        torch.cuda.synchronize()
        before, reserved_before = nvml.read_one(index), torch.cuda.memory_reserved()
        block = torch.empty(1024 * MIB, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
        after = nvml.read_one(index, {os.getpid()})
        reserved = torch.cuda.memory_reserved()
        grown, added = after.used - before.used, reserved - reserved_before
        del block
        torch.cuda.empty_cache()
    finally:
        nvml.close()
    assert after.total > 0 and after.used <= after.total, f"NVML total {after.total}, used {after.used}"
    assert abs(grown - added) <= 64 * MIB, \
        f"NVML grew {grown / MIB:.0f} MiB while torch reserved {added / MIB:.0f} MiB more"
    # 0 as well as None: inside a container NVML often lists no process of ours (another pid namespace)
    own = f"{after.process_used / MIB:.0f} MiB" if after.process_used else "unknown (no process visible to NVML)"
    assert not after.process_used or after.process_used >= reserved, \
        f"NVML says this process uses {own}, below torch's reserved {reserved / MIB:.0f} MiB"
    return (f"{after.name}: NVML grew {grown / MIB:.0f} MiB for torch's {added / MIB:.0f} MiB more reserved; "
            f"process {own}; total {after.total / MIB:.0f} MiB")


def check_watermark_sampler(runner: Runner) -> str:
    """A Sampler with a watermark just under the real usage crosses it, and its policy reaches the requests."""
    import torch

    from finetty.core.memory import gpu
    from finetty.core.memory.monitor import Sampler

    class Events:
        def __init__(self):
            self.seen = []

        def emit(self, type, **fields):
            self.seen.append({"type": type, **fields})

    class Requests:
        checkpoint = False
        stop = False
        signal_name = None

    block = torch.empty(512 * MIB, dtype=torch.uint8, device="cuda")
    torch.cuda.synchronize()
    reading = gpu.devices()[0]
    written, requests = Events(), Requests()
    sampler = Sampler(written, requests, watermark=max(reading.fraction * 0.5, 0.001), policy="checkpoint")
    sampler.open()
    try:
        event = sampler.sample()
    finally:
        sampler.stop()
        del block
        torch.cuda.empty_cache()
    crossed = [e for e in written.seen if e["type"] == "watermark" and e["state"] == "crossed"]
    assert crossed, f"no watermark event at {reading.fraction:.2%} used (events: {[e['type'] for e in written.seen]})"
    assert requests.checkpoint, "the checkpoint policy did not ask for a checkpoint"
    torch_reserved = event["gpus"][0]["torch_reserved"]
    assert torch_reserved and torch_reserved >= 512 * MIB, f"memory event torch_reserved {torch_reserved}"
    return f"crossed at {crossed[0]['fraction']:.2%} over {crossed[0]['watermark']:.2%}; checkpoint requested"


def check_watermark_run(runner: Runner) -> str:
    """In a real run, ``monitor.on_watermark: checkpoint`` under a tiny watermark saves a checkpoint mid-run."""
    text = recipe_text(runner.models["llama"], train={"max_steps": 10},
                       monitor={"watermark": 0.001, "on_watermark": "checkpoint", "interval_s": 0.5})
    done, run = runner.train("watermark", text)
    found = finished(done, run)
    crossed = [e for e in found if e["type"] == "watermark" and e["state"] == "crossed"]
    assert crossed, "no watermark crossed event"
    from finetty.core.run import rundir

    kept = rundir.complete_checkpoints(run)
    assert kept, "the checkpoint policy saved no checkpoint (save_steps was 1000)"
    return f"crossed at step {crossed[0].get('step')}, checkpoints {[p.name for _, p in kept]}"


CAP_HOOK = """\
import os

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook


def _cap(optimizer, args, kwargs):
    global _steps
    _steps += 1
    if _steps == _after:
        torch.cuda.empty_cache()  # else the blocks already cached would be reused under the cap
        torch.cuda.set_per_process_memory_fraction(
            min(1.0, _bytes / torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory))


_steps, _after = 0, int(os.environ["FINETTY_SMOKE_CAP_AFTER"])
_bytes = int(os.environ["FINETTY_SMOKE_CUDA_CAP"])
if torch.cuda.is_available():
    register_optimizer_step_post_hook(_cap)
"""


def _oom_env(runner: Runner, cap_bytes: int, after_steps: int) -> dict:
    """A PYTHONPATH whose sitecustomize caps each process's CUDA memory at ``cap_bytes`` once it has made
    ``after_steps`` optimizer steps, so a run keeps its early checkpoint and then really runs out."""
    folder = runner.folder("oom-cap")
    (folder / "sitecustomize.py").write_text(CAP_HOOK, encoding="utf-8")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p)
    return {"PYTHONPATH": path, "FINETTY_SMOKE_CUDA_CAP": str(cap_bytes), "FINETTY_SMOKE_CAP_AFTER": str(after_steps)}


def check_oom(runner: Runner) -> str:
    """A real CUDA OOM after a checkpoint: a clear failure that keeps it, then auto-shrink that finishes."""
    from finetty.core.run import rundir

    # micro-batch 4 of rows near max_length is measured first; the cap is set from its peak
    data = {"dataset": str(long_dataset(runner.work)), "format": "alpaca"}
    base = {"max_length": 1024, "max_steps": 3, "per_device_train_batch_size": 4}
    done, run = runner.train("oom-measure", recipe_text(runner.models["llama"], "full", train=base, **data))
    small = peak_reserved(finished(done, run))
    assert small > 0, "the measuring run wrote no torch memory readings"
    cap = int(small * 2.5)
    env = _oom_env(runner, cap, after_steps=2)  # steps 1 and 2 uncapped, step 2 checkpointed, step 3 capped
    big = {**base, "per_device_train_batch_size": 64, "max_steps": 5, "save_steps": 2}
    done, run = runner.train("oom-fail", recipe_text(runner.models["llama"], "full", train=big, **data), env)
    assert run is not None and done.returncode != 0, \
        f"micro-batch 64 under a {cap / MIB:.0f} MiB cap exited {done.returncode}"
    failed = [e for e in events(run) if e["type"] == "run_failed"]
    assert failed and "CUDA out of memory at step 3" in failed[-1]["reason"], f"run_failed: {failed}"
    reason = failed[-1]["reason"]
    assert "peak unknown" not in reason, reason
    kept = [p.name for _, p in rundir.complete_checkpoints(run)]
    assert kept == ["step-000002"] and "step-000002) is intact" in reason, f"checkpoints {kept}: {reason}"
    shrunk = {**big, "auto_shrink_batch": True}
    done, run = runner.train("oom-shrink", recipe_text(runner.models["llama"], "full", train=shrunk, **data), env)
    found = finished(done, run)
    shrinks = [e for e in found if e["type"] == "shrink"]
    assert shrinks, "auto_shrink_batch finished without a shrink event"
    return (f"cap {cap / MIB:.0f} MiB from step 3 (micro-batch 4 peaked at {small / MIB:.0f} MiB): micro-batch 64 "
            f"failed keeping {kept[0]}: {reason[:160]!r}; auto-shrink {len(shrinks)}x then finished")


def check_bnb(runner: Runner, bits: int) -> str:
    if not have("bitsandbytes"):
        raise Skip("bitsandbytes is not installed")
    if bits == 4:
        text = recipe_text(runner.models["llama"], "qlora",
                           quantizer_options={"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"})
    else:
        text = recipe_text(runner.models["llama"], "lora", quantizer="bnb-8bit")
    done, run = runner.train(f"bnb{bits}", text)
    finished(done, run)
    return falling(run)


def check_bf16(runner: Runner) -> str:
    import torch

    if not torch.cuda.is_bf16_supported():
        raise Skip(f"{torch.cuda.get_device_name()} has no bf16")
    done, run = runner.train("bf16", recipe_text(runner.models["qwen2"], train={"bf16": True}))
    finished(done, run)
    return "qwen2 " + falling(run)


def check_packing(runner: Runner, attention: str) -> str:
    """The first step's loss, packed and unpacked, over one batch holding every example, must agree.

    Step 1's loss is logged before any update and averages over the same
    tokens either way (packing drops each example's first label, which
    unpacked never predicts), so only the attention layout differs.
    """
    if attention == "flash_attention_2" and not have("flash_attn"):
        raise Skip("flash-attn is not installed")
    everything = 64  # the identity dataset has 40 examples: one batch, packed or not
    first = {}
    for packing in (False, True):
        train = {"max_steps": 1, "packing": packing, "per_device_train_batch_size": everything}
        extra = {}
        if attention != "sdpa":
            train["bf16"] = True  # flash-attention runs in half precision only
            extra["model_options"] = {"attn_implementation": attention}
        done, run = runner.train(f"{attention}-packing-{packing}", recipe_text(runner.models["llama"], train=train,
                                                                               **extra))
        if run is None and done.returncode == 2 and extra:
            refusal = (done.stderr or done.stdout).strip().splitlines()[-1:]
            raise Skip(f"the recipe validator refuses model_options.attn_implementation: {' '.join(refusal)}")
        finished(done, run)
        first[packing] = losses(run)[1]
    gap = abs(first[True] - first[False])
    tolerance = 2e-2 if attention != "sdpa" else 2e-3
    assert gap <= tolerance * abs(first[False]), \
        f"first loss unpacked {first[False]:.5f}, packed {first[True]:.5f} (tolerance {tolerance:.0%})"
    return f"first loss unpacked {first[False]:.5f}, packed {first[True]:.5f}"


def check_estimate(runner: Runner) -> str:
    """``finetty estimate`` against the peak the run measured: the ratio must stay within 0.5..3."""
    quant = {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
    ratios = []
    for method in ("lora", "qlora", "full"):
        if method == "qlora" and not have("bitsandbytes"):
            ratios.append("qlora skipped (no bitsandbytes)")
            continue
        extra = {"quantizer_options": quant} if method == "qlora" else {}
        text = recipe_text(runner.models["llama"], method, train={"max_steps": 6}, **extra)
        done, run = runner.train(f"estimate-{method}", text)
        measured, how = peak_process(finished(done, run))
        estimated = runner.cli("estimate", str(run.parent.parent / "recipe.yaml"), "--json")
        assert estimated.stdout.strip(), f"estimate printed nothing: {estimated.stderr.strip()[-200:]}"
        total = json.loads(estimated.stdout)["total"]
        assert measured > 0, f"{method}: no measured peak in the memory events"
        ratio = total / measured
        assert 0.5 <= ratio <= 3.0, f"{method}: estimate {total / MIB:.0f} MiB vs measured {measured / MIB:.0f} MiB"
        ratios.append(f"{method} {total / MIB:.0f}/{measured / MIB:.0f} MiB ({how}) = {ratio:.2f}")
    return "estimate/measured: " + ", ".join(ratios)


def check_fsdp(runner: Runner) -> str:
    text = recipe_text(runner.models["llama"], "full", train={"max_steps": 10},
                       launch={"num_processes": 1, "distributed_type": "fsdp"})
    done, run = runner.train("fsdp", text)
    finished(done, run)
    return falling(run)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=None, help="a folder for models and runs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args()

    import torch

    if not torch.cuda.is_available():
        print(NO_CUDA, flush=True)
        return 0
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="finetty-gpu-smoke-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("FINETTY_HOME", str(work / "home"))
    started = time.monotonic()
    try:
        runner = Runner(work, build_models(work))
        print(f"gpu_smoke: {torch.cuda.get_device_name()}, torch {torch.__version__}, work {work}", flush=True)
        check("nvml", check_nvml, runner)
        check("watermark-sampler", check_watermark_sampler, runner)
        check("watermark-run", check_watermark_run, runner)
        check("oom", check_oom, runner)
        check("bnb-4bit-lora", check_bnb, runner, 4)
        check("bnb-8bit-lora", check_bnb, runner, 8)
        check("bf16", check_bf16, runner)
        check("packing-sdpa", check_packing, runner, "sdpa")
        check("packing-flash-attn", check_packing, runner, "flash_attention_2")
        check("estimate", check_estimate, runner)
        check("fsdp-1gpu", check_fsdp, runner)
    finally:
        if not args.keep and not args.work:
            shutil.rmtree(work, ignore_errors=True)
    failed = [name for status, name, _ in RESULTS if status == "FAIL"]
    counts = {s: sum(1 for r in RESULTS if r[0] == s) for s in ("PASS", "FAIL", "SKIP")}
    print(f"gpu_smoke: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {time.monotonic() - started:.0f}s" + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
