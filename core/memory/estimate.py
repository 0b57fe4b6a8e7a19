"""Pre-flight estimate of a recipe's peak GPU memory, from the model's config alone (no torch, no weights).

``estimate(recipe, gpus=None)`` returns an :class:`Estimate`: bytes per part
(weights by dtype and quantizer, gradients of the trainable parameters,
optimizer state, activations, margin), a verdict for each visible GPU against
its total and the recipe's watermark, and the changes that would make the run
fit. It reads ``config.json`` only: from the model folder, the local Hugging
Face cache, the tiny demo, or, for a few popular models not yet downloaded,
the values shipped in ``builtin_data/known_models.json``.

Weights, gradients and optimizer state count exactly the tensors PEFT,
bitsandbytes and the optimizer create (``tests/test_estimate.py`` builds the
tiny model and compares byte for byte, for full, lora, qlora and more);
activations follow the per-layer model in ``docs/memory.md``. The estimate
names no method or quantizer: each describes its own share through its
descriptor (``Method.trainable``, ``Quantizer.stored``,
``Objective.sequences_per_example``), so a third-party plugin is counted as a
built-in is.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetty.core.plugin.architecture import Architecture, Linear, Trainable

GIB = 2**30

#: Fixed part of the margin: the CUDA context, cuBLAS workspaces and the allocator's rounding
#: (torch's counters never see these; NVML does).
CONTEXT_BYTES = 512 * 2**20
#: Proportional part of the margin: allocator fragmentation and temporary buffers.
MARGIN_FRACTION = 0.05

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: Optimizers whose state is two 8-bit moments per parameter (bitsandbytes), by TrainingArguments name.
EIGHT_BIT_OPTIMS = ("adamw_bnb_8bit", "adamw_8bit", "paged_adamw_8bit", "lion_8bit", "paged_lion_8bit",
                    "paged_ademamix_8bit", "ademamix_8bit")
ONE_STATE_OPTIMS = ("lion_32bit", "paged_lion_32bit", "sgd", "adafactor", "rmsprop", "adagrad")
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes keeps 32-bit state for tensors smaller than this
BNB_BLOCK = 256
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

__all__ = ["Architecture", "Estimate", "Linear", "Spec", "compute", "estimate", "find_config", "gib"]


# -- finding the config ------------------------------------------------------------------------------

def _known() -> dict:
    from finetty.core.data.demo import builtin_data_file

    return json.loads(builtin_data_file("known_models.json").read_text(encoding="utf-8"))


def known_models() -> list[str]:
    data = _known()
    return sorted(list(data["models"]) + list(data["aliases"]))


def find_config(model: str, base_dir: Path | None = None) -> tuple[dict, str]:
    """The model's config.json as a dict, and where it came from (said in the output)."""
    from finetty.core.data import demo
    from finetty.core.model import loading as models
    from finetty.core.model import parent

    if parent.names_run(model, base_dir or Path.cwd()):  # a run's result: the architecture it was trained on
        from finetty.core import paths
        from finetty.core.plugin.registry import load_plugins

        model = parent.resolve(model, paths.runs_dir(), base_dir or Path.cwd(), load_plugins(), None, None,
                               check_base=False).base
    if model == demo.NAME:
        folder = demo.demo_dir()
        if (folder / "config.json").is_file():
            return models.read_config(folder), f"{demo.NAME} ({folder / 'config.json'})"
        return ({"model_type": "llama", **demo.MODEL_CONFIG},
                f"{demo.NAME}'s built-in config (not built yet; the built vocabulary is a little smaller)")
    try:
        folder = models.resolve(model, base_dir or Path.cwd(), check=False)
    except Exception:
        folder = None
    if folder is not None and (folder / "config.json").is_file():
        return models.read_config(folder), str(folder / "config.json")
    data = _known()
    key = data["aliases"].get(model, model)
    if key in data["models"]:
        return dict(data["models"][key]), (f"finetty's copy of {key}'s config: the model is not in the local cache "
                                           "(download it before training)")
    from finetty.core.errors import InputError

    raise InputError(None, f"model {model!r}", "has no config.json here: it is not a model folder, not in the local "
                     "Hugging Face cache and not one of the configs finetty ships",
                     f"download it first (finetty pull {model}: the model's files into the Hugging Face cache, "
                     f"where training finds them) or give a folder; "
                     f"known without download: {', '.join(known_models())}")


# -- the estimate ----------------------------------------------------------------------------------

@dataclass
class Spec:
    """The recipe's settings that move memory; suggestions vary these."""

    method: str
    method_options: dict
    quantizer: str
    quantizer_options: dict
    dtype: str  # the compute dtype: float32, bfloat16, float16
    micro_batch: int
    accumulation: int
    max_length: int
    gradient_checkpointing: bool
    optim: str
    objective: str
    processes: int = 1
    sharding: str = "none"  # none | grads+optimizer | all


@dataclass
class GpuVerdict:
    index: int
    name: str
    total: int
    fraction: float
    fits: bool
    under_watermark: bool

    def describe(self, watermark: float) -> str:
        state = ("fits" if self.under_watermark else
                 f"fits, but above the {watermark:.0%} watermark" if self.fits else "does not fit")
        return f"GPU {self.index} ({self.name}, {gib(self.total)}): {state} ({self.fraction:.0%} of it)"


@dataclass
class Suggestion:
    change: str  # what to set, e.g. "--set train.gradient_checkpointing=true"
    why: str
    total: int
    fits: bool | None  # None when there is no GPU to compare with


@dataclass
class Estimate:
    """Predicted peak GPU memory of one training process (bytes)."""

    model: str
    config_source: str
    parameters: int
    trainable_parameters: int
    weights: int
    weights_detail: dict[str, int]
    gradients: int
    optimizer: int
    activations: int
    activations_detail: dict[str, int]
    margin: int
    micro_batch: int
    accumulation: int
    max_length: int
    gradient_checkpointing: bool
    watermark: float
    exact_trainable: bool = True
    gpus: list[GpuVerdict] = field(default_factory=list)
    host_available: int | None = None
    """with no GPU, the host memory available now (the run then trains on the CPU)"""
    processes: int = 1
    suggestions: list[Suggestion] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.margin

    @property
    def host_total(self) -> int:
        """On the CPU, the same parts without the CUDA context, for every process of the run (the interpreter and
        its libraries not counted)."""
        return (self.total - CONTEXT_BYTES) * self.processes

    @property
    def host_fits(self) -> bool | None:
        return None if self.host_available is None else self.host_total <= self.host_available

    @property
    def fits_here(self) -> bool | None:
        """On this machine: the GPUs' verdict, or with none the host's; None when there is nothing to compare with."""
        return self.fits if self.gpus else self.host_fits

    @property
    def fits(self) -> bool | None:
        """True when every GPU the run uses keeps under the watermark; None without GPUs."""
        if not self.gpus:
            return None
        return all(v.under_watermark for v in self.gpus)

    def verdict(self) -> str:
        if not self.gpus:
            text = (f"needs about {gib(self.total)} per GPU ({gib(CONTEXT_BYTES)} of it the CUDA context); "
                    f"no GPU visible, so it trains on the CPU: about {gib(self.host_total)} of RAM for the model "
                    f"and its training state")
            if self.host_available is not None:
                text += (f", {gib(self.host_available)} available" if self.host_fits else
                         f", more than the {gib(self.host_available)} available")
            return text
        bad = [v for v in self.gpus if not v.under_watermark]
        if not bad:
            return f"fits: about {gib(self.total)} per GPU, under the {self.watermark:.0%} watermark"
        worst = max(bad, key=lambda v: v.fraction)
        what = "does not fit" if not worst.fits else f"is above the {self.watermark:.0%} watermark"
        return f"{what}: about {gib(self.total)} on GPU {worst.index} ({gib(worst.total)})"

    def summary(self) -> str:
        """One line for a form: the verdict, and the first change that would make it fit when it does not."""
        if not self.gpus:  # (short enough for one line at 80 columns)
            text = f"memory: no GPU visible; on the CPU about {gib(self.host_total)} of RAM"
            return text if self.host_fits is not False else f"{text}, more than the {gib(self.host_available)} free"
        text = f"memory: {self.verdict()}"
        if self.fits is False and self.suggestions:
            text += f"; try {self.suggestions[0].change}"
        return text

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["total"] = self.total
        data["fits"] = self.fits
        data["host_total"] = self.host_total
        data["fits_here"] = self.fits_here
        data["verdict"] = self.verdict()
        return data


def gib(value: int | float) -> str:
    """Bytes for people: GiB from 1 GiB up, else MiB, else KiB."""
    if value >= GIB:
        return f"{value / GIB:.1f} GiB"
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    return f"{value / 2**10:.1f} KiB"


def _spec(recipe) -> Spec:
    from finetty.core.model.loading import weights_dtype

    train = recipe.train
    launch = getattr(recipe, "launch", {}) or {}
    processes = int(launch.get("num_processes", 1) or 1)
    sharding = "none"
    if processes > 1:
        kind = launch.get("distributed_type", "ddp")
        if kind == "fsdp":
            strategy = str((launch.get("fsdp") or {}).get("fsdp_sharding_strategy", "FULL_SHARD")).upper()
            sharding = "grads+optimizer" if "GRAD_OP" in strategy else "none" if "NO_SHARD" in strategy else "all"
        elif kind == "deepspeed":
            sharding = "all" if int(launch.get("zero_stage", 2)) == 3 else "grads+optimizer"
    return Spec(method=recipe.method, method_options=dict(recipe.method_options or {}), quantizer=recipe.quantizer,
                quantizer_options=dict(recipe.quantizer_options or {}),
                dtype=weights_dtype(train, getattr(recipe, "model_options", None)),
                micro_batch=int(train.get("per_device_train_batch_size", 8)),
                accumulation=int(train.get("gradient_accumulation_steps", 1) or 1),
                max_length=int(train.get("max_length", 1024)),
                gradient_checkpointing=bool(train.get("gradient_checkpointing")),
                optim=str(train.get("optim") or "adamw_torch_fused").lower(), objective=recipe.objective,
                processes=processes, sharding=sharding)


def _registry(registry: Any = None) -> Any:
    from finetty.core.plugin.registry import load_plugins

    return registry if registry is not None else load_plugins()


def _trainable(arch: Architecture, spec: Spec, registry: Any) -> Trainable:
    """What the method trains, as its descriptor describes it (``Method.trainable``)."""
    method = registry.methods.get(spec.method)
    if method is None or method.trainable is None:
        return Trainable((), notes=(f"method {spec.method!r} does not describe what it trains "
                                    "(Method.trainable): its trainable parameters (and their gradients and "
                                    "optimizer state) are left out",))
    return method.trainable(arch, spec.method_options)


def _optimizer_bytes(tensors: list[tuple[int, int]], optim: str) -> int:
    if optim in EIGHT_BIT_OPTIMS or "8bit" in optim:
        total = 0
        for numel, size in tensors:
            if numel < BNB_MIN_8BIT_SIZE:
                total += 2 * numel * 4
            else:  # two uint8 moments, a float32 absmax per block of 256 each
                total += 2 * numel + 2 * 4 * -(-numel // BNB_BLOCK)
        return total + 2 * 256 * 4  # the two quantization maps
    if optim.startswith("sgd"):
        return 0
    states = 1 if any(optim.startswith(o) for o in ONE_STATE_OPTIMS) else 2
    if optim.startswith("adafactor"):
        return sum(math.isqrt(n) * 2 * 4 if n > 1 else 4 for n, _ in tensors)
    # torch Adam/AdamW: exp_avg and exp_avg_sq in the parameter's dtype, plus a float32 step per tensor
    return sum(states * numel * size + 4 for numel, size in tensors)


def _activations(arch: Architecture, spec: Spec, trainable: Trainable, registry: Any) -> dict[str, int]:
    """Bytes held for the backward pass at the peak (see docs/memory.md for the model and its source)."""
    p = DTYPE_BYTES[spec.dtype]
    objective = registry.objectives.get(spec.objective)
    rows = spec.micro_batch * (objective.sequences_per_example if objective is not None else 1)
    tokens = rows * spec.max_length
    h, kv, i = arch.hidden, arch.kv_heads * arch.head_dim, arch.intermediate
    q = arch.heads * arch.head_dim
    # per token and layer: two norm inputs (h each) and their outputs feeding the projections (h each),
    # q/k/v into attention (q + 2 kv), attention output (q), SwiGLU: gate and up outputs (i each),
    # SiLU output (i), the product into down_proj (i)
    per_layer = p * (2 * h + 2 * h + q + 2 * kv + q + 4 * i)
    per_layer += trainable.activation_bytes
    # the head: logits in the compute dtype, their float32 copy for the loss and log-softmax's output
    logits = (p + 8) * tokens * arch.vocab
    if spec.gradient_checkpointing:
        # one input per layer is kept; the backward pass first goes through the head (logits alive),
        # then recomputes one layer at a time after the head's buffers are freed: the peak is the larger
        kept = p * h * arch.layers * tokens
        recomputed = per_layer * tokens
        return {"layers": kept + max(0, recomputed - logits), "logits": logits}
    return {"layers": per_layer * arch.layers * tokens, "logits": logits}


def compute(arch: Architecture, spec: Spec, registry: Any = None) -> dict:
    """The byte counts of every part, for one process; the method and quantizer describe their own share."""
    registry = _registry(registry)
    base = DTYPE_BYTES[spec.dtype]
    notes: list[str] = []
    quantizer = registry.quantizers.get(spec.quantizer) if spec.quantizer != "none" else None
    stored: dict[str, dict[str, int]] = {}
    if quantizer is not None and quantizer.stored is None:
        notes.append(f"quantizer {spec.quantizer!r} does not describe its storage (Quantizer.stored): its layers "
                     f"are counted in {spec.dtype}")
    elif quantizer is not None:
        for l in arch.linears():
            found = quantizer.stored(l, spec.quantizer_options)
            if found is not None:
                stored[l.name] = found
    detail: dict[str, int] = {}
    # e.g. prepare_model_for_kbit_training upcasts every 16-bit parameter of a quantized base to float32
    upcast = bool(stored) and quantizer is not None and quantizer.float32_rest
    plain = 4 if upcast else base
    plain_name = "float32" if upcast else spec.dtype

    def add(key: str, amount: int) -> None:
        detail[key] = detail.get(key, 0) + amount

    for l in arch.linears():
        if l.name in stored:
            for key, amount in stored[l.name].items():
                add(key, amount)
        else:
            add(plain_name, l.inputs * l.outputs * plain)
        if l.bias:
            add(plain_name, l.outputs * plain)
    for numel in arch.other_parameters().values():
        add(plain_name, numel * plain)
    add("buffers", arch.rotary_buffer_bytes)
    described = _trainable(arch, spec, registry)
    notes += described.notes
    tensors = [(n, 4 if dtype == "float32" else base) for n, dtype in described.tensors]
    trainable_bytes = sum(n * s for n, s in tensors)
    method = registry.methods.get(spec.method)
    if not (method is not None and method.whole_model) and trainable_bytes:
        # added weights; a whole-model method trains the base's own, already counted
        add("adapters (float32)" if all(s == 4 for _, s in tensors) else "adapters", trainable_bytes)
    weights = sum(detail.values())
    gradients = trainable_bytes
    optimizer = _optimizer_bytes(tensors, spec.optim)
    if spec.sharding == "all":
        weights //= spec.processes
    if spec.sharding in ("all", "grads+optimizer"):
        gradients //= spec.processes
        optimizer //= spec.processes
    activations = _activations(arch, spec, described, registry)
    act = sum(activations.values())
    margin = CONTEXT_BYTES + int(MARGIN_FRACTION * (weights + gradients + optimizer + act))
    return dict(weights=weights, weights_detail=detail, gradients=gradients, optimizer=optimizer,
                activations=act, activations_detail=activations, margin=margin, trainable=described.parameters,
                exact=described.exact, notes=notes,
                total=weights + gradients + optimizer + act + margin)


_GPU_CACHE: tuple[float, list] | None = None


def visible_gpus(max_age: float = 30.0) -> list:
    """The visible GPUs' readings, cached for ``max_age`` seconds (the New run screen asks often)."""
    global _GPU_CACHE
    now = time.monotonic()
    if _GPU_CACHE is None or now - _GPU_CACHE[0] > max_age:
        from finetty.core.memory import gpu

        _GPU_CACHE = (now, gpu.devices())
    return _GPU_CACHE[1]


def _host_available() -> int | None:
    from finetty.core.memory import gpu

    try:
        reading = gpu.host()
        return reading.total - reading.used
    except Exception:  # an estimate is advice: no reading, no comparison
        return None


def _verdicts(total: int, gpus: list, watermark: float, processes: int) -> list[GpuVerdict]:
    used = gpus[:max(1, processes)] if processes <= len(gpus) else gpus
    return [GpuVerdict(index=g.index, name=g.name, total=g.total, fraction=total / g.total if g.total else 1.0,
                       fits=total <= g.total, under_watermark=total <= watermark * g.total) for g in used]


def _defaults(component: Any) -> dict:
    return {o.name: o.default for o in component.options}


def _lighter_storage(arch: Architecture, spec: Spec, registry: Any) -> tuple[str, str, Spec] | None:
    """On a plain base, the change that stores it in the fewest bytes, read from the descriptors: for a method
    that trains the base's own weights, a method offered with a quantizer (``implies_quantizer``, as qlora is);
    for any other, the quantizer that supports the method's kind and stores the least."""
    method = registry.methods.get(spec.method)
    if spec.quantizer != "none" or method is None:
        return None
    options: list[tuple[str, str, Spec]] = []
    if method.whole_model:
        for other in registry.methods.values():
            quantizer = registry.quantizers.get(other.implies_quantizer or "")
            if quantizer is not None and other.trainable is not None and quantizer.stored is not None:
                options.append((f"--set method={other.name}",
                                f"train {other.name} on a {quantizer.name} base instead of every weight",
                                dataclasses.replace(spec, method=other.name, method_options=_defaults(other),
                                                    quantizer=quantizer.name,
                                                    quantizer_options=_defaults(quantizer))))
    else:
        for quantizer in registry.quantizers.values():
            if method.kind in quantizer.supports and quantizer.stored is not None:
                options.append((f"--set quantizer={quantizer.name}", f"store the base as {quantizer.summary}",
                                dataclasses.replace(spec, quantizer=quantizer.name,
                                                    quantizer_options=_defaults(quantizer))))
    if not options:
        return None
    return min(options, key=lambda o: compute(arch, o[2], registry)["total"])


def _variants(arch: Architecture, spec: Spec, registry: Any) -> list[tuple[str, str, Spec]]:
    """Single changes that lower memory: (--set text, why, changed spec)."""
    found = []
    if not spec.gradient_checkpointing:
        found.append(("--set train.gradient_checkpointing=true", "recompute activations in the backward pass "
                      "(about a third slower)", dataclasses.replace(spec, gradient_checkpointing=True)))
    lighter = _lighter_storage(arch, spec, registry)
    if lighter is not None:
        found.append(lighter)
    method = registry.methods.get(spec.method)
    if method is not None and method.whole_model and "8bit" not in spec.optim:
        found.append(("--set train.optim=paged_adamw_8bit", "keep the optimizer's moments in 8 bits",
                      dataclasses.replace(spec, optim="paged_adamw_8bit")))
    micro = spec.micro_batch
    while micro > 1:
        smaller = _smaller_batch(micro)
        accumulation = spec.accumulation * (spec.micro_batch // smaller)
        found.append((f"--set train.per_device_train_batch_size={smaller} "
                      f"--set train.gradient_accumulation_steps={accumulation}",
                      "a smaller micro-batch with more accumulation (same effective batch)",
                      dataclasses.replace(spec, micro_batch=smaller, accumulation=accumulation)))
        micro = smaller
    length = spec.max_length
    while length > 256:
        length //= 2
        found.append((f"--set train.max_length={length}", "shorter examples (longer ones are truncated or dropped)",
                      dataclasses.replace(spec, max_length=length)))
    return found


def _smaller_batch(micro: int) -> int:
    """The next micro-batch down that divides this one: half when even, else its largest divisor below half."""
    return max(d for d in range(1, micro // 2 + 1) if micro % d == 0)


def _suggest(arch: Architecture, spec: Spec, gpus: list, watermark: float, registry: Any) -> list[Suggestion]:
    limit = watermark * min(g.total for g in gpus) if gpus else None
    made = []
    seen_kinds = set()
    for change, why, variant in _variants(arch, spec, registry):
        kind = change.split("=")[0]
        total = compute(arch, variant, registry)["total"]
        fits = None if limit is None else total <= limit
        if kind in seen_kinds:
            continue  # the first (mildest) change of each kind that fits, else the strongest
        if fits or fits is None and kind not in seen_kinds:
            seen_kinds.add(kind)
            made.append(Suggestion(change, why, total, fits))
    if limit is not None and not any(s.fits for s in made):
        # nothing alone is enough: everything together
        strongest = dataclasses.replace(spec, gradient_checkpointing=True, micro_batch=1,
                                        accumulation=spec.accumulation * spec.micro_batch)
        changes = ["--set train.gradient_checkpointing=true", "--set train.per_device_train_batch_size=1",
                   f"--set train.gradient_accumulation_steps={spec.accumulation * spec.micro_batch}"]
        lighter = _lighter_storage(arch, spec, registry)
        if lighter is not None:
            change, _, variant = lighter
            strongest = dataclasses.replace(strongest, method=variant.method, method_options=variant.method_options,
                                            quantizer=variant.quantizer,
                                            quantizer_options=variant.quantizer_options)
            changes.insert(0, change)
        total = compute(arch, strongest, registry)["total"]
        made.append(Suggestion(" ".join(changes), "all of these together", total, total <= limit))
    made.sort(key=lambda s: (not s.fits, -s.total if s.fits else s.total))
    return made


def estimate(recipe, gpus: list | None = None, base_dir: Path | None = None,
             host_available: int | None = None, registry: Any = None) -> Estimate:
    """Predict ``recipe``'s peak memory per GPU; ``gpus`` (readings with index, name, total) default to the visible ones.

    With no GPU the run trains on the CPU: the verdict is then about host memory,
    against ``host_available`` bytes (default: what the host has available now).
    Light: no torch, no weights; reads config.json only. ``registry``: the
    plugins whose descriptors describe the method and quantizer (default: the
    loaded ones).
    """
    registry = _registry(registry)
    config, source = find_config(recipe.model, base_dir)
    arch = Architecture.from_config(config)
    spec = _spec(recipe)
    parts = compute(arch, spec, registry)
    monitor = getattr(recipe, "monitor", None) or {}
    watermark = float(monitor.get("watermark", 0.9))
    gpus = visible_gpus() if gpus is None else list(gpus)
    notes = list(parts["notes"])
    if not arch.known_layout:
        notes.append(f"model_type {arch.model_type!r} is estimated with a Llama-style layout")
    if spec.processes > 1:
        notes.append(f"{spec.processes} processes; per-GPU figures"
                     + (f" with {spec.sharding} sharded" if spec.sharding != "none" else " (each holds a full copy)"))
    if "paged" in spec.optim:
        notes.append(f"{spec.optim} keeps its state in paged memory that can move to the host under pressure")
    result = Estimate(model=recipe.model, config_source=source, parameters=arch.parameters,
                      trainable_parameters=parts["trainable"], weights=parts["weights"],
                      weights_detail=parts["weights_detail"], gradients=parts["gradients"],
                      optimizer=parts["optimizer"], activations=parts["activations"],
                      activations_detail=parts["activations_detail"], margin=parts["margin"],
                      micro_batch=spec.micro_batch, accumulation=spec.accumulation, max_length=spec.max_length,
                      gradient_checkpointing=spec.gradient_checkpointing, watermark=watermark,
                      exact_trainable=parts["exact"], notes=notes, processes=spec.processes)
    result.gpus = _verdicts(result.total, gpus, watermark, spec.processes)
    if not gpus:
        result.host_available = _host_available() if host_available is None else host_available
    if not result.fits:
        result.suggestions = _suggest(arch, spec, result.gpus and gpus, watermark, registry)
    return result
