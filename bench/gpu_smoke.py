"""The GPU smoke check (issue 17): every GPU-only path of finetty once, on a real CUDA device, in minutes.

``python bench/gpu_smoke.py [--work DIR] [--keep]``

Nothing is downloaded: a tiny Llama and a tiny Qwen2-shaped model are built
from a config with the demo tokenizer (``finetty.core.data.demo``). Training
goes through ``python -m finetty.core.cli train RECIPE --runs-dir DIR`` exactly
as a user runs it, and every number is read from the run's ``events.jsonl``.
Each check prints one line, ``PASS name: detail``, ``FAIL name: detail`` or
``SKIP name: reason``; one check failing (or raising) never stops the others.
A SKIP is for an optional package that is not installed (bitsandbytes,
flash-attn) or a GPU without bf16, and says so. Exit 0 only when nothing
failed, the whole within ten minutes (over that is a ``FAIL time`` line).
With no CUDA device it prints one line and exits 0, so the suite can run it
on CPU machines; tests/test_gpu_smoke.py also validates every recipe the
checks train (:func:`smoke_recipes`) as on a GPU, so a renamed recipe key
fails on a CPU first.

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
#: the whole check must fit a first GPU session: ten minutes
BUDGET_S = 600
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
    if path.is_file():
        return path
    with path.open("w", encoding="utf-8") as handle:
        for n in range(256):
            text = " ".join(rng.choice(words) for _ in range(900))
            handle.write(json.dumps({"instruction": f"Say something long, number {n}.", "output": text}) + "\n")
    return path


QUANT = {"quant_type": "nf4", "double_quant": True, "compute_dtype": "bfloat16"}
ESTIMATED = ("lora", "qlora", "full")
#: more rows than the identity dataset has examples (40): one batch holds them all, packed or not
EVERYTHING = 64


def watermark_recipe(models: dict) -> str:
    return recipe_text(models["llama"], train={"max_steps": 10},
                       monitor={"watermark": 0.001, "on_watermark": "checkpoint", "interval_s": 0.5})


def oom_recipes(models: dict, data: Path) -> dict[str, str]:
    """Micro-batch 4 (measured), micro-batch 64 under the cap (fails), the same with auto-shrink (finishes)."""
    source = {"dataset": str(data), "format": "alpaca"}
    base = {"max_length": 1024, "max_steps": 3, "per_device_train_batch_size": 4}
    big = {**base, "per_device_train_batch_size": 64, "max_steps": 5, "save_steps": 2}
    return {"oom-measure": recipe_text(models["llama"], "full", train=base, **source),
            "oom-fail": recipe_text(models["llama"], "full", train=big, **source),
            "oom-shrink": recipe_text(models["llama"], "full", train={**big, "auto_shrink_batch": True}, **source)}


def bnb_recipe(models: dict, bits: int) -> str:
    if bits == 4:
        return recipe_text(models["llama"], "qlora", quantizer_options=QUANT)
    return recipe_text(models["llama"], "lora", quantizer="bnb-8bit")


def bf16_recipe(models: dict) -> str:
    return recipe_text(models["qwen2"], train={"bf16": True})


def packing_recipe(models: dict, attention: str) -> str:
    """The packed recipe the packing check loads its model and data from (flash-attention computes in bf16)."""
    train = {"max_steps": 1, "packing": True, "per_device_train_batch_size": EVERYTHING}
    if attention != "sdpa":
        train["bf16"] = True
    return recipe_text(models["llama"], train=train, model_options={"attn_implementation": attention})


def estimate_recipe(models: dict, method: str) -> str:
    extra = {"quantizer_options": QUANT} if method == "qlora" else {}
    return recipe_text(models["llama"], method, train={"max_steps": 6}, **extra)


def fsdp_recipe(models: dict) -> str:
    return recipe_text(models["llama"], "full", train={"max_steps": 10},
                       launch={"num_processes": 1, "distributed_type": "fsdp"})


def smoke_recipes(models: dict, work: Path) -> dict[str, str]:
    """Every recipe the checks train or load, by label: tests/test_gpu_smoke.py validates each on a CPU machine,
    so a renamed key fails there and not on the first GPU."""
    recipes = {"watermark": watermark_recipe(models), **oom_recipes(models, long_dataset(work))}
    recipes.update({f"bnb{bits}": bnb_recipe(models, bits) for bits in (4, 8)})
    recipes["bf16"] = bf16_recipe(models)
    recipes.update({f"packing-{attention}": packing_recipe(models, attention)
                    for attention in ("sdpa", "flash_attention_2")})
    recipes.update({f"estimate-{method}": estimate_recipe(models, method) for method in ESTIMATED})
    recipes["fsdp"] = fsdp_recipe(models)
    return recipes


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
    done, run = runner.train("watermark", watermark_recipe(runner.models))
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
    recipes = oom_recipes(runner.models, long_dataset(runner.work))
    done, run = runner.train("oom-measure", recipes["oom-measure"])
    small = peak_reserved(finished(done, run))
    assert small > 0, "the measuring run wrote no torch memory readings"
    cap = int(small * 2.5)
    env = _oom_env(runner, cap, after_steps=2)  # steps 1 and 2 uncapped, step 2 checkpointed, step 3 capped
    done, run = runner.train("oom-fail", recipes["oom-fail"], env)
    assert run is not None and done.returncode != 0, \
        f"micro-batch 64 under a {cap / MIB:.0f} MiB cap exited {done.returncode}"
    failed = [e for e in events(run) if e["type"] == "run_failed"]
    assert failed and "CUDA out of memory at step 3" in failed[-1]["reason"], f"run_failed: {failed}"
    reason = failed[-1]["reason"]
    assert "peak unknown" not in reason, reason
    kept = [p.name for _, p in rundir.complete_checkpoints(run)]
    assert kept == ["step-000002"] and "step-000002) is intact" in reason, f"checkpoints {kept}: {reason}"
    done, run = runner.train("oom-shrink", recipes["oom-shrink"], env)
    found = finished(done, run)
    shrinks = [e for e in found if e["type"] == "shrink"]
    assert shrinks, "auto_shrink_batch finished without a shrink event"
    return (f"cap {cap / MIB:.0f} MiB from step 3 (micro-batch 4 peaked at {small / MIB:.0f} MiB): micro-batch 64 "
            f"failed keeping {kept[0]}: {reason[:160]!r}; auto-shrink {len(shrinks)}x then finished")


def check_bnb(runner: Runner, bits: int) -> str:
    if not have("bitsandbytes"):
        raise Skip("bitsandbytes is not installed")
    done, run = runner.train(f"bnb{bits}", bnb_recipe(runner.models, bits))
    finished(done, run)
    return falling(run)


def check_bf16(runner: Runner) -> str:
    import torch

    if not torch.cuda.is_bf16_supported():
        raise Skip(f"{torch.cuda.get_device_name()} has no bf16")
    done, run = runner.train("bf16", bf16_recipe(runner.models))
    finished(done, run)
    return "qwen2 " + falling(run)


def _per_example_losses(model, rows: list[dict], packed: bool, max_length: int, device: str) -> list[float]:
    """Each example's mean next-token loss (its first label never counts: nothing precedes it unpacked, and
    packing ignores it), computed one example at a time, or from one packed forward over all of them."""
    import torch

    from finetty.core.data.packing import PackedCollator, pack_examples, pack_rows

    def token_losses(logits, labels):
        return torch.nn.functional.cross_entropy(logits[0, :-1].float(), labels[0, 1:], ignore_index=-100,
                                                 reduction="none")

    means = [0.0] * len(rows)
    with torch.no_grad():
        if not packed:
            for n, row in enumerate(rows):
                ids = torch.tensor([row["input_ids"]], device=device)
                labels = torch.tensor([row["labels"]], device=device)
                lost = token_losses(model(input_ids=ids, use_cache=False).logits, labels)
                means[n] = (lost.sum() / (labels[0, 1:] != -100).sum()).item()
            return means
        order = [index for group in pack_rows([len(r["input_ids"]) for r in rows], max_length) for index in group]
        batch = PackedCollator()(pack_examples(rows, max_length))
        starts = batch["cu_seq_lens_q"].tolist()
        assert len(starts) - 1 == len(rows), f"{len(starts) - 1} packed examples for {len(rows)}"
        inputs = {k: (v.to(device) if hasattr(v, "to") else v) for k, v in batch.items() if k != "labels"}
        labels = batch["labels"].to(device)
        lost = token_losses(model(**inputs, use_cache=False).logits, labels)
        counted = labels[0, 1:] != -100
        for index, a, b in zip(order, starts[:-1], starts[1:], strict=True):
            # labels a+1..b-1 belong to this example; the logits at t predict label t+1, so lost[a..b-2]
            means[index] = (lost[a:b - 1].sum() / counted[a:b - 1].sum()).item()
    return means


def packed_and_alone(recipe_file: Path, device: str) -> tuple[str, list[float], list[float], list[float] | None]:
    """``(packed path, per-example losses alone, the same packed, alone again under sdpa)`` for a packing
    recipe's model and data, loaded as the worker loads them (its ``model_options.attn_implementation``
    included). The last is None under sdpa itself; under another kernel it measures how far two correct
    kernels round apart in the run's dtype, the noise a packed loss may differ by."""
    from finetty.core.data import packing as packing_mod
    from finetty.core.data import reading as data_mod
    from finetty.core.data.tokenize import tokenize_examples
    from finetty.core.model import loading as models
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    registry = load_plugins()
    recipe = recipe_mod.load(recipe_file, [], registry)
    entries = data_mod.parse_dataset(recipe.dataset, Path.cwd())
    found = data_mod.read_data(entries, recipe.format, registry.data_formats,
                               registry.objectives[recipe.objective].accepts, recipe.objective,
                               recipe.dataset_options, recipe.data_options, seed=recipe.train.get("seed", 42),
                               train=recipe.train)
    model_dir = Path(recipe.model)
    tokenizer = models.load_tokenizer(model_dir, recipe.trust_remote_code, recipe.chat_template)
    max_length = recipe.train["max_length"]
    rows = tokenize_examples(found.examples, tokenizer, max_length, recipe.train["truncation"],
                             recipe.objective_options.get("train_on", "assistant"), lambda message: None)
    model = models.load_model(model_dir, models.weights_dtype(recipe.train, recipe.model_options),
                              attn_implementation=recipe.model_options["attn_implementation"]).to(device).eval()
    path = packing_mod.packed_path(model.config._attn_implementation)
    alone = _per_example_losses(model, rows, packed=False, max_length=max_length, device=device)
    implementation = model.config._attn_implementation
    rounding = None
    if implementation not in packing_mod.REPLACED:
        model.set_attn_implementation("sdpa")
        rounding = _per_example_losses(model, rows, packed=False, max_length=max_length, device=device)
        model.set_attn_implementation(implementation)
    packing_mod.use_packed_attention(model)  # split sdpa: finetty's attention; varlen: the model as it is
    together = _per_example_losses(model, rows, packed=True, max_length=max_length, device=device)
    if path == packing_mod.SPLIT_SDPA:
        packing_mod.check_boundaries_seen(model)
    return path, alone, together, rounding


def check_packing(runner: Runner, attention: str) -> str:
    """Per-example losses of one packed forward over every identity example equal those of each example alone.

    The model and its data come from a recipe with ``model_options.attn_implementation: attention`` (the
    validator checks it against this machine), through finetty's own loading, tokenizing and packing; for
    sdpa the packed forward runs finetty's split sdpa, for flash_attention_2 flash-attention's varlen kernel
    (:func:`finetty.core.data.packing.packed_path`). An example that saw another one, or a boundary off by a
    token, changes that example's loss. A one-step ``finetty train`` of the same recipe must finish too.
    """
    if attention == "flash_attention_2" and not have("flash_attn"):
        raise Skip("flash-attn is not installed")
    from finetty.core.data import packing as packing_mod

    done, run = runner.train(f"packing-{attention}", packing_recipe(runner.models, attention))
    finished(done, run)
    path, alone, together, rounding = packed_and_alone(run.parent.parent / "recipe.yaml", "cuda")
    expected = packing_mod.SPLIT_SDPA if attention == "sdpa" else packing_mod.VARLEN
    assert path == expected, f"packing took the {path} path under {attention}, not {expected}"
    gaps = relative_gaps(alone, together)
    # float32 sdpa agrees to rounding; a half-precision kernel may differ by what two correct kernels differ by.
    # An example that sees its neighbour in the row moves its loss by about 1e-2 (the tiny random model), so
    # the mean gap is held near the noise, well below that.
    worst_allowed, mean_allowed = 1e-4, 1e-4
    noise = ""
    if rounding is not None:
        floor = relative_gaps(alone, rounding)
        worst_allowed = max(3 * max(floor), 5e-3)
        mean_allowed = max(3 * sum(floor) / len(floor), 2e-3)
        noise = f"; {attention} vs sdpa alone: worst {max(floor):.1e}, mean {sum(floor) / len(floor):.1e}"
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    mean = sum(gaps) / len(gaps)
    summary = (f"{len(alone)} examples, {path} path: relative gap packed vs alone worst {gaps[worst]:.1e} "
               f"(example {worst}: {alone[worst]:.5f} alone, {together[worst]:.5f} packed), mean {mean:.1e}{noise}")
    assert gaps[worst] <= worst_allowed and mean <= mean_allowed, \
        f"{summary} (allowed: worst {worst_allowed:.0e}, mean {mean_allowed:.0e})"
    return summary + "; finetty train finished"


def relative_gaps(reference: list[float], other: list[float]) -> list[float]:
    return [abs(a - b) / max(abs(a), 1e-6) for a, b in zip(reference, other, strict=True)]


def check_estimate(runner: Runner) -> str:
    """``finetty estimate`` against the peak the run measured: the ratio must stay within 0.5..3."""
    ratios = []
    for method in ESTIMATED:
        if method == "qlora" and not have("bitsandbytes"):
            ratios.append("qlora skipped (no bitsandbytes)")
            continue
        done, run = runner.train(f"estimate-{method}", estimate_recipe(runner.models, method))
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
    """``launch.distributed_type: fsdp`` on one GPU trains through accelerate's launcher, its loss falling.

    A run under the launcher's supervisor writes its ranks' output to worker.log
    with a ``[rank N]`` prefix; a run that never saw the launcher trained as a
    plain single process and proved nothing about FSDP, so that is a failure.
    """
    done, run = runner.train("fsdp", fsdp_recipe(runner.models))
    found = finished(done, run)
    log = (run / "worker.log").read_text(encoding="utf-8", errors="replace")
    assert "[rank 0] " in log, ("the run trained as one plain process, not through accelerate's FSDP launcher "
                                "(a run goes through the launcher only when is_distributed(launch) is true)")
    started = [e for e in found if e["type"] == "run_started"]
    return f"{falling(run)}; world size {started[-1].get('world_size') if started else '?'}"


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
    # every run in a worker of its own: a standby worker, started before the OOM check's PYTHONPATH, would
    # train without its memory cap, and NVML's per-process reading must be the run's alone
    os.environ["FINETTY_STANDBY"] = "0"
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
    took = time.monotonic() - started
    if took > BUDGET_S:
        report("FAIL", "time", f"the checks took {took:.0f}s, over the {BUDGET_S}s budget")
    failed = [name for status, name, _ in RESULTS if status == "FAIL"]
    counts = {s: sum(1 for r in RESULTS if r[0] == s) for s in ("PASS", "FAIL", "SKIP")}
    print(f"gpu_smoke: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {time.monotonic() - started:.0f}s" + (f" (failed: {', '.join(failed)})" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
