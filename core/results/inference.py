"""Inference on a run's result: load the base plus ``final/`` or any complete checkpoint, and stream answers.

``load(run_dir, checkpoint)`` rebuilds the tuned model through its method
plugin's ``Method.load(path, options, load_base)`` (every method, on a base
stored as in training: quantized by the recipe's quantizer plugin, in the
recipe's compute dtype) with the tokenizer saved beside the weights, so the
chat template is the one the run trained with. ``load_base(run_dir)`` is the
untouched base, prompted the same way, for side-by-side comparison.

``generate(loaded, sequences)`` answers several prompts in one left-padded
``model.generate`` call, each with its own settings, stop strings and
streaming callback; eval batches through it, the API server's scheduler
steps every waiting request through it together, and ``Generation`` (one
streamed answer for chat) is a batch of one, so all three answer alike.
``Generation``'s ``stop()`` ends it early. Nothing here imports torch or transformers
at module level: the TUI imports this module and loads models in a worker
thread.
"""

from __future__ import annotations

import copy
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

from finetty.core.data import demo
from finetty.core.model import loading as models
from finetty.core.model import parent
from finetty.core.run import rundir
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.errors import InputError
from finetty.core.run.events import read_all

FINAL = rundir.FINAL


@dataclass
class GenerationSettings:
    """How answers are generated. ``None`` keeps the model's own ``generation_config`` value.

    ``temperature`` 0 means greedy decoding; above 0, sampling with that
    temperature (and ``top_p`` when given).
    """

    temperature: float | None = None
    top_p: float | None = None
    max_new_tokens: int = 256
    repetition_penalty: float | None = None
    system_prompt: str | None = None
    seed: int | None = None
    """the sampling seed of this answer alone (None: drawn from torch's global generator)"""
    stop: tuple[str, ...] = ()
    """strings that end the answer where they first appear (not included in it)"""

    def generation_config(self, base: Any, eos_ids: list[int], pad_id: int | None) -> Any:
        """A copy of the model's ``GenerationConfig`` with these settings applied."""
        config = copy.deepcopy(base)
        config.max_new_tokens = self.max_new_tokens
        config.max_length = None
        if self.temperature is not None:
            config.do_sample = self.temperature > 0
            if config.do_sample:
                config.temperature = self.temperature
        if self.top_p is not None and config.do_sample:
            config.top_p = self.top_p
        if not config.do_sample:  # greedy: sampling knobs would only draw warnings
            config.temperature, config.top_p, config.top_k = 1.0, 1.0, 50
        if self.repetition_penalty is not None:
            config.repetition_penalty = self.repetition_penalty
        config.eos_token_id = eos_ids or config.eos_token_id
        if pad_id is not None:
            config.pad_token_id = pad_id
        return config

    def describe(self) -> str:
        parts = []
        if self.temperature is not None:
            parts.append("greedy" if self.temperature <= 0 else f"temperature {self.temperature:g}")
        if self.top_p is not None:
            parts.append(f"top_p {self.top_p:g}")
        if self.repetition_penalty is not None:
            parts.append(f"repetition_penalty {self.repetition_penalty:g}")
        parts.append(f"max_new_tokens {self.max_new_tokens}")
        return ", ".join(parts)


@dataclass
class Loaded:
    """A model ready to answer, with the tokenizer (and chat template) to prompt it with."""

    model: Any
    tokenizer: Any
    label: str
    """``final``, ``step-000040``, or ``base``"""
    run_dir: Path
    source: Path | None
    """the folder the trained weights came from; None for the base"""
    method: str
    notes: list[str] = field(default_factory=list)
    """things to tell the person (template differences, fallbacks)"""
    lock: threading.Lock = field(default_factory=threading.Lock)
    """held by whoever generates, when several threads share the model (the API server)"""

    @property
    def model_id(self) -> str:
        return self.run_dir.name if self.label == FINAL else f"{self.run_dir.name}:{self.label}"


# -- which weights ---------------------------------------------------------------------------------

def targets(run_dir: Path) -> list[str]:
    """What can be loaded: ``final`` (when the run finished) and its complete checkpoints, newest first."""
    found = [FINAL] if (run_dir / FINAL).is_dir() else []
    return found + [path.name for _, path in reversed(rundir.complete_checkpoints(run_dir))]


def resolve_target(run_dir: Path, checkpoint: str | None) -> tuple[str, Path, list[str]]:
    """``(label, folder, notes)`` for ``--checkpoint``: None (final/, else the newest checkpoint), ``final``,
    ``latest``, a step number (``40``) or a checkpoint name (``step-000040``). Only complete checkpoints count."""
    complete = rundir.complete_checkpoints(run_dir)
    final = run_dir / FINAL
    if checkpoint is None:
        if final.is_dir():
            return FINAL, final, []
        if complete:
            step, path = complete[-1]
            return path.name, path, [f"run {run_dir.name} has no final/ result yet: using its newest complete "
                                     f"checkpoint {path.name}"]
        raise InputError(None, f"run {run_dir.name}", "has no result to load: no final/ and no complete checkpoint",
                         "wait for its first checkpoint, or see `finetty runs`")
    text = str(checkpoint).strip()
    if text == FINAL:
        if final.is_dir():
            return FINAL, final, []
        raise InputError("--checkpoint", text, f"run {run_dir.name} has no final/ result (it did not finish)",
                         _available(run_dir))
    if text == "latest" and complete:
        return complete[-1][1].name, complete[-1][1], []
    digits = text[len("step-"):] if text.startswith("step-") else text
    if digits.isdigit():
        for step, path in complete:
            if step == int(digits):
                return path.name, path, []
    raise InputError("--checkpoint", text, f"is not a complete checkpoint of run {run_dir.name}",
                     _available(run_dir))


def _available(run_dir: Path) -> str:
    names = targets(run_dir)
    return f"available: {', '.join(names)}" if names else "the run has no complete checkpoint yet"


def _run_started(run_dir: Path) -> dict:
    return next((e for e in reversed(read_all(run_dir)) if e.get("type") == "run_started"), {})


def base_model_dir(run_dir: Path, recipe: recipe_mod.Recipe | None = None) -> Path:
    """The base model's folder: the one the worker recorded, else the recipe's model resolved again."""
    recorded = _run_started(run_dir).get("model_dir")
    if recorded and (Path(recorded) / "config.json").is_file():
        return Path(recorded)
    recipe = recipe or recipe_mod.from_run(run_dir)
    if parent.names_run(recipe.model, run_dir):  # a run on top of a run: the base its parent chain leads to
        found = parent.base_of(run_dir, _registry())
        return demo.ensure_demo() if found == demo.NAME else Path(found)
    if recipe.model == demo.NAME:
        return demo.ensure_demo()
    return models.resolve(recipe.model, run_dir, check=False)


# -- loading ---------------------------------------------------------------------------------------

def _registry(registry=None):
    from finetty.core.plugin.registry import load_plugins

    return registry or load_plugins()


def _method(recipe, registry, run_dir: Path | None = None):
    """The run's method; when it is missing, the refusal names the package the run recorded it came from."""
    method = registry.methods.get(recipe.method)
    if method is None:
        place = f"method {recipe.method!r}"
        why = registry.unavailable("method", recipe.method, rundir.recorded_plugins(run_dir) if run_dir else ())
        raise InputError(None, place, why.removeprefix(place).strip(),
                         "install the plugin that provides it (see `finetty plugins`)")
    return method


def quantizer_of(recipe, registry) -> Any:
    """The recipe's quantizer descriptor (None for a plain base)."""
    if recipe.quantizer in (None, "none"):
        return None
    quantizer = registry.quantizers.get(recipe.quantizer)
    if quantizer is None:
        raise InputError(None, f"quantizer {recipe.quantizer!r}", "is not available",
                         "install the plugin that provides it (see `finetty plugins`)")
    return quantizer


def quantization_config(recipe, registry) -> Any:
    """The recipe's quantizer plugin's transformers config (None for a plain base or a quantizer without one)."""
    quantizer = quantizer_of(recipe, registry)
    if quantizer is None or quantizer.config is None:
        return None
    return quantizer.config(recipe.quantizer_options, models.compute_dtype(recipe.train))


def base_loader(run_dir: Path, recipe, registry, dequantize: bool = False):
    """A function loading the base as the worker did (same dtype, same quantizer).

    ``dequantize`` turns a quantized base back into plain linear layers in the
    recipe's compute dtype through the quantizer's own ``dequantize`` (for
    merging QLoRA adapters)."""
    model_dir = base_model_dir(run_dir, recipe)
    dtype = models.compute_dtype(recipe.train)
    quantizer = quantizer_of(recipe, registry)
    quantization = quantization_config(recipe, registry)
    if dequantize and quantizer is not None and quantizer.dequantize is None:
        raise InputError(None, f"quantizer {quantizer.name!r}", "offers no dequantize step, so an adapter trained "
                         "on it cannot be merged into plain weights", "export without --merge")

    def load_base():
        model = models.load_model(model_dir, models.weights_dtype(recipe.train, getattr(recipe, "model_options", None)),
                                  quantization, recipe.trust_remote_code)
        if quantizer is not None and quantizer.quantize is not None:
            model = quantizer.quantize(model, recipe.quantizer_options, dtype)
        if quantizer is not None and dequantize:
            assert quantizer.dequantize is not None  # (refused above)
            model = quantizer.dequantize(model, dtype)
        return model

    return load_base


def _tokenizer_folder(source: Path | None, base_dir: Path) -> Path:
    # a saved result's own tokenizer (its vocabulary, or at least its config: the chat template it trained with)
    files = (*models.TOKENIZER_FILES, "tokenizer_config.json")
    if source is not None and any((source / name).is_file() for name in files):
        return source
    return base_dir


def _template_notes(tokenizer, base_dir: Path, source: Path, trust_remote_code: bool) -> list[str]:
    notes = []
    if (source / "tokenizer_config.json").is_file() or (source / "tokenizer.json").is_file():
        try:
            base_template = models.load_tokenizer(base_dir, trust_remote_code).chat_template
        except Exception:
            base_template = None
        if tokenizer.chat_template and base_template != tokenizer.chat_template:
            notes.append(f"the chat template this run trained with (saved in {source.name}/) differs from the "
                         f"base tokenizer's own{'' if base_template else ' (it has none)'}; using the training one")
    else:
        notes.append(f"{source.name}/ holds no tokenizer: using the base model's (and its chat template)")
    if not tokenizer.chat_template:
        notes.append("the tokenizer has no chat template: prompts are plain 'role: text' lines")
    return notes


def _place(model):
    """Onto the GPU when there is one (a quantized model is already placed)."""
    import torch

    if torch.cuda.is_available() and not getattr(model, "is_quantized", False) \
            and not getattr(getattr(model, "base_model", None), "is_quantized", False):
        try:
            if next(model.parameters()).device.type == "cpu":
                model = model.to("cuda")
        except StopIteration:
            pass
    return model.eval()


def load(run_dir: Path, checkpoint: str | None = None, registry=None) -> Loaded:
    """The tuned model: the base plus ``final/`` or a complete checkpoint, through its method's ``load``."""
    run_dir = Path(run_dir)
    registry = _registry(registry)
    recipe = recipe_mod.from_run(run_dir)
    method = _method(recipe, registry, run_dir)
    label, source, notes = resolve_target(run_dir, checkpoint)
    base_dir = base_model_dir(run_dir, recipe)
    model = method.load(source, recipe.method_options, base_loader(run_dir, recipe, registry))
    tokenizer = models.load_tokenizer(_tokenizer_folder(source, base_dir), recipe.trust_remote_code)
    notes += _template_notes(tokenizer, base_dir, source, recipe.trust_remote_code)
    return Loaded(_place(model), tokenizer, label, run_dir, source, recipe.method, notes)


def load_base(run_dir: Path, registry=None, tokenizer=None) -> Loaded:
    """The untouched base, stored as in training, prompted with the training template (``tokenizer``, else the
    one saved with the run's result, else the base's own)."""
    run_dir = Path(run_dir)
    registry = _registry(registry)
    recipe = recipe_mod.from_run(run_dir)
    base_dir = base_model_dir(run_dir, recipe)
    if tokenizer is None:
        names = targets(run_dir)
        source = (run_dir / FINAL if names[0] == FINAL else run_dir / rundir.CHECKPOINTS / names[0]) if names else None
        tokenizer = models.load_tokenizer(_tokenizer_folder(source, base_dir), recipe.trust_remote_code)
    model = base_loader(run_dir, recipe, registry)()
    return Loaded(_place(model), tokenizer, "base", run_dir, None, recipe.method)


# -- prompting and generating ----------------------------------------------------------------------

def conversation(history: list[dict], settings: GenerationSettings) -> list[dict]:
    """The messages sent to the model: the system prompt (if any) then the history."""
    if settings.system_prompt:
        return [{"role": "system", "content": settings.system_prompt}, *history]
    return list(history)


def render(tokenizer, messages: list[dict]) -> tuple[str, bool]:
    """The prompt text for ``messages``, ending where the assistant's answer begins, and whether the
    tokenizer's special tokens still need adding (only for the plain fallback)."""
    if tokenizer.chat_template:
        try:
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True), False
        except Exception:
            if not (messages and messages[0]["role"] == "system"):
                raise
            # a template without a system role: fold the system prompt into the first user message
            system, rest = messages[0]["content"], [dict(m) for m in messages[1:]]
            first = next((m for m in rest if m["role"] == "user"), None)
            if first is None:
                raise
            first["content"] = f"{system}\n\n{first['content']}"
            return tokenizer.apply_chat_template(rest, tokenize=False, add_generation_prompt=True), False
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:", True


def _eos_ids(model, tokenizer) -> list[int]:
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured]) + [tokenizer.eos_token_id]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def _device(model):
    try:
        return next(model.parameters()).device
    except StopIteration:
        return "cpu"


def context_length(loaded: Loaded) -> int | None:
    """The longest sequence the model was built for (``max_position_embeddings`` or its kin), if it says."""
    config = getattr(loaded.model, "config", None)
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


class PromptTooLong(ValueError):
    """The prompt does not fit the model's context; both lengths in tokens."""

    def __init__(self, prompt_tokens: int, context: int):
        super().__init__(f"the prompt is {prompt_tokens} tokens, longer than the model's context of {context} "
                         "tokens")
        self.prompt_tokens, self.context = prompt_tokens, context


class Sequence:
    """One answer being generated, in a batch with others: the prompt's ids, its own settings, and its state.

    Built by :func:`sequence`; :func:`generate` fills it. ``on_text(piece)`` is called (from the generating
    thread) with each new piece of the answer, held back while it might be the start of a ``stop`` string;
    ``on_done()`` once at the end. ``cancel()`` (any thread) ends it at the next step.
    """

    def __init__(self, prompt_ids: list[int], settings: GenerationSettings, on_text=None, on_done=None):
        self.prompt_ids = prompt_ids
        self.settings = settings
        self.on_text, self.on_done = on_text, on_done
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.cancelled = threading.Event()
        self.interrupted = False
        """True when ``cancel()`` ended it before it was done"""
        self.finished = threading.Event()
        self.max_new_tokens = settings.max_new_tokens

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.ids)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def cancel(self) -> None:
        self.cancelled.set()

    def _emit(self, upto: int) -> None:
        if upto > self.sent:
            piece, self.sent = self.text[self.sent:upto], upto
            if self.on_text is not None:
                self.on_text(piece)

    def _take(self, token: int, tokenizer, eos: list[int]) -> None:
        """Add one generated token: end on end-of-turn, a stop string, or the length limit."""
        if token in eos:
            self._finish("stop")
            return
        self.ids.append(token)
        self.text = tokenizer.decode(self.ids, skip_special_tokens=True)
        stops = [s for s in (self.settings.stop or ()) if s]
        hits = [i for i in (self.text.find(s, max(0, self.sent - len(s))) for s in stops) if i >= 0]
        if hits:
            self.text = self.text[:min(hits)]
            self._finish("stop")
            return
        if len(self.ids) >= self.max_new_tokens:
            self._finish("length")
            return
        safe = len(self.text)
        if self.text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            safe = len(self.text.rstrip("\ufffd"))
        for stop in stops:  # hold back a tail that may grow into a stop string
            for size in range(min(len(stop) - 1, safe), 0, -1):
                if self.text[safe - size:safe] == stop[:size]:
                    safe -= size
                    break
        self._emit(safe)

    def _finish(self, reason: str) -> None:
        if self.finish_reason is None:
            self.finish_reason = reason
            self._emit(len(self.text))


def prompt_ids(loaded: Loaded, messages: list[dict] | None = None, text: str | None = None,
               settings: GenerationSettings | None = None) -> list[int]:
    """The token ids of a chat prompt (``messages``, rendered with the chat template) or of raw ``text``."""
    tokenizer = loaded.tokenizer
    if messages is not None:
        prompt, special = render(tokenizer, conversation(messages, settings or GenerationSettings()))
    else:
        prompt, special = text or "", True
    return tokenizer(prompt, add_special_tokens=special)["input_ids"]


def sequence(loaded: Loaded, messages: list[dict] | None = None, settings: GenerationSettings | None = None,
             text: str | None = None, on_text=None, on_done=None) -> Sequence:
    """A :class:`Sequence` for a chat (``messages``) or a plain completion (``text``); PromptTooLong when the
    prompt leaves no room in the model's context (the answer is cut to the room there is)."""
    settings = settings or GenerationSettings()
    ids = prompt_ids(loaded, messages, text, settings)
    context = context_length(loaded)
    if context is not None and len(ids) >= context:
        raise PromptTooLong(len(ids), context)
    found = Sequence(ids, settings, on_text, on_done)
    if context is not None:
        found.max_new_tokens = max(1, min(settings.max_new_tokens, context - len(ids)))
    return found


def _seed() -> int:
    import torch

    return int(torch.randint(0, 2**62, (), dtype=torch.int64))  # from torch's global generator: manual_seed holds


def generate(loaded: Loaded, sequences: list[Sequence]) -> None:
    """Generate every sequence's answer in one left-padded batch through ``model.generate`` (so every method's
    own generation path, PEFT prompt learning included, and one KV cache serve the whole batch).

    The batch decodes greedily; each sequence's own settings are applied by a logits processor on its row
    (repetition penalty, then temperature, top-k and top-p sampling with the sequence's own seeded generator,
    whose pick becomes the row's only candidate), and a stopping criterion ends each row on its own (end of
    turn, a stop string, its length limit, or ``cancel()``). A sequence's answer therefore does not depend on
    what it is batched with. Errors are stored on every sequence (``error``); ``on_done`` is always called.
    """
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
    from transformers.generation.streamers import BaseStreamer

    model, tokenizer = loaded.model, loaded.tokenizer
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    rows = []
    for seq in sequences:
        config = seq.settings.generation_config(model.generation_config, eos, pad)
        generator = None
        if config.do_sample:
            generator = torch.Generator().manual_seed(seq.settings.seed if seq.settings.seed is not None
                                                      else _seed())
        rows.append((config, generator))

    class PerRow(LogitsProcessor):
        def __call__(self, input_ids, scores):
            scores = scores.float()
            for row, (config, generator) in enumerate(rows):
                if sequences[row].done:
                    continue
                logits = scores[row]
                penalty = config.repetition_penalty
                if penalty not in (None, 1.0):
                    seen = input_ids[row][-(len(sequences[row].ids) + sequences[row].prompt_tokens):]
                    picked = logits.gather(0, seen)
                    logits = logits.scatter(0, seen, torch.where(picked < 0, picked * penalty, picked / penalty))
                if generator is not None:
                    logits = logits / max(config.temperature or 1.0, 1e-5)
                    if config.top_k:
                        kth = torch.topk(logits, min(config.top_k, logits.shape[-1])).values[-1]
                        logits = logits.masked_fill(logits < kth, float("-inf"))
                    if config.top_p is not None and config.top_p < 1.0:
                        ordered, order = torch.sort(logits, descending=True)
                        cumulative = ordered.softmax(-1).cumsum(-1)
                        drop = cumulative - ordered.softmax(-1) > config.top_p
                        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
                    probabilities = logits.softmax(-1).cpu()
                    choice = int(torch.multinomial(probabilities, 1, generator=generator))
                    logits = torch.full_like(logits, float("-inf"))
                    logits[choice] = 0.0
                scores[row] = logits
            return scores

    class Collect(BaseStreamer):
        first = True

        def put(self, value):
            if self.first:  # the prompt
                self.first = False
                return
            for row, token in enumerate(value.view(-1).tolist()):
                if not sequences[row].done:
                    sequences[row]._take(token, tokenizer, eos)

        def end(self):
            pass

    class Ended(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            for seq in sequences:
                if seq.cancelled.is_set() and not seq.done:
                    seq.interrupted = True
                    seq._finish("stop")
            return torch.tensor([seq.done for seq in sequences], dtype=torch.bool, device=input_ids.device)

    try:
        width = max(seq.prompt_tokens for seq in sequences)
        ids = torch.full((len(sequences), width), pad, dtype=torch.long)
        mask = torch.zeros((len(sequences), width), dtype=torch.long)
        for row, seq in enumerate(sequences):  # left padding: every answer starts at the same column
            if seq.prompt_ids:
                ids[row, width - seq.prompt_tokens:] = torch.tensor(seq.prompt_ids)
                mask[row, width - seq.prompt_tokens:] = 1
        config = copy.deepcopy(model.generation_config)
        config.do_sample, config.temperature, config.top_p, config.top_k = False, 1.0, 1.0, 50
        config.repetition_penalty = 1.0
        config.max_new_tokens, config.max_length = max(seq.max_new_tokens for seq in sequences), None
        config.eos_token_id, config.pad_token_id = eos or config.eos_token_id, pad
        device = _device(model)
        with loaded.lock, torch.inference_mode():
            if any(not seq.cancelled.is_set() for seq in sequences):
                model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                               logits_processor=LogitsProcessorList([PerRow()]), streamer=Collect(),
                               stopping_criteria=StoppingCriteriaList([Ended()]))
        for seq in sequences:
            if seq.cancelled.is_set() and not seq.done:  # cancelled before it started
                seq.interrupted = True
            seq._finish("length" if len(seq.ids) >= seq.max_new_tokens and not seq.interrupted else "stop")
    except BaseException as exc:
        for seq in sequences:
            seq.error = exc
            if seq.finish_reason is None:
                seq.finish_reason = "error"
        if not isinstance(exc, Exception):
            raise
    finally:
        for seq in sequences:
            seq.finished.set()
            if seq.on_done is not None:
                seq.on_done()


def answers(loaded: Loaded, conversations: list[list[dict]], settings: GenerationSettings | None = None,
            batch_size: int = 16) -> list[str]:
    """The whole answers to many conversations, ``batch_size`` at a time (each batch one ``generate``)."""
    settings = settings or GenerationSettings()
    found: list[str] = []
    for start in range(0, len(conversations), batch_size):
        batch = [sequence(loaded, messages, settings) for messages in conversations[start:start + batch_size]]
        generate(loaded, batch)
        for seq in batch:
            if seq.error is not None:
                raise seq.error
            found.append(seq.text)
    return found


class Generation:
    """One streamed answer. Iterate for text pieces; ``stop()`` (any thread) ends it early.

    A batch of one for :func:`generate`, the same path eval and the API server take. After iteration:
    ``text``, ``prompt_tokens``, ``completion_tokens`` and ``finish_reason`` (``stop``: end of turn, a stop
    string, or stopped; ``length``: hit ``max_new_tokens``).
    """

    def __init__(self, loaded: Loaded, messages: list[dict], settings: GenerationSettings | None = None):
        self.loaded = loaded
        self.settings = settings or GenerationSettings()
        self.messages = conversation(messages, self.settings)
        self.text = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.stopped = threading.Event()
        self.error: BaseException | None = None
        self._started = False

    def stop(self) -> None:
        self.stopped.set()

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("a Generation is iterated once")
        self._started = True
        import queue

        pieces: queue.Queue = queue.Queue()
        done = object()
        seq = sequence(self.loaded, self.messages, replace(self.settings, system_prompt=None),
                       on_text=pieces.put, on_done=lambda: pieces.put(done))
        seq.cancelled = self.stopped
        self.prompt_tokens = seq.prompt_tokens
        thread = threading.Thread(target=generate, args=(self.loaded, [seq]), name="finetty-generate",
                                  daemon=True)
        thread.start()
        finished = False
        try:
            while (piece := pieces.get()) is not done:
                self.text += piece
                yield piece
            finished = True
        finally:
            if not finished:  # the reader went away (closed, or raised): stop generating for nobody
                self.stopped.set()
            thread.join()
        if seq.error is not None:
            self.error = seq.error
            raise seq.error
        self.completion_tokens = seq.completion_tokens
        self.finish_reason = seq.finish_reason

    def run(self) -> str:
        """Generate to the end; the whole answer."""
        for _ in self:
            pass
        return self.text


def answer(loaded: Loaded, messages: list[dict], settings: GenerationSettings | None = None) -> str:
    """The whole answer to ``messages`` (no streaming)."""
    return Generation(loaded, messages, settings).run()
