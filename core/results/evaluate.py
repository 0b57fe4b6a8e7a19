"""``finetty eval``: the base and the tuned model answer the same held-out prompts, side by side.

For every conversation the model answers the prompt (everything before the
last assistant message, greedy decoding) and the answer is scored against
that message:

- **exact match**: the answer equals the reference after trimming, collapsing
  whitespace and ignoring case (the fraction of examples);
- **ROUGE-L**: the mean F-measure of the longest common subsequence of words
  (``rouge-score``), 0 to 1;
- **BLEU**: corpus BLEU (``sacrebleu``), 0 to 100;
- **perplexity**: ``exp`` of the mean loss per token over the assistant's tokens
  (every token for plain text), as in training.

The data is ``--data`` if given; otherwise the run's held-out split when it
trained with ``val_size`` (the same split the worker made), else the run's
own training data (said so in the report). The report goes to
``<run>/eval/<checkpoint>-<time>.json`` and ``.md``; an ``eval`` event
(``source: finetty eval``) is appended to ``events.jsonl`` while holding the
run's lock, so it never races a live worker (whose events it would be).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from finetty.core.data import reading as data_mod
from finetty.core.results import inference
from finetty.core.run import rundir
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.errors import RunBusyError
from finetty.core.run.events import EventWriter, read_all

REPORTS = "eval"
METRICS = ("exact_match", "rouge_l", "bleu", "perplexity")
SAMPLES_IN_MARKDOWN = 10
BATCH_SIZE = 16
"""prompts answered together; the tiny demo and 7B models alike fit 16 short answers beside the weights"""


@dataclass
class Example:
    """One held-out example: the prompt, the reference answer, and the whole conversation (for perplexity)."""

    prompt: list[dict] | None
    reference: str | None
    messages: list[dict] | None = None
    text: str | None = None


@dataclass
class Report:
    run: str
    checkpoint: str
    step: int | None
    method: str
    data: str
    examples: int
    max_new_tokens: int
    base: dict = field(default_factory=dict)
    tuned: dict = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# -- data ------------------------------------------------------------------------------------------

def to_example(item: Any) -> Example:
    """A normalized record (conversation, preference or text) as an evaluation example."""
    if isinstance(item, str):
        return Example(None, None, text=item)
    if isinstance(item, dict):  # a preference (the one kind that is a mapping): the chosen answer is the reference
        prompt = list(item["prompt"])
        return Example(prompt, item["chosen"], prompt + [{"role": "assistant", "content": item["chosen"]}])
    messages = list(item)
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return Example(None, None, messages=messages)
    return Example(messages[:last], messages[last]["content"], messages[: last + 1])


def examples_for(run_dir: Path, recipe, registry, data: str | None) -> tuple[list[Example], str]:
    """The examples to evaluate on and a description of where they came from."""
    if data:
        source = data_mod.resolve_source(data, Path.cwd(), "--data")
        records, found = data_mod.load_records(source, "auto", registry.data_formats, recipe.dataset_options)
        return [to_example(r) for r in records], f"{source.describe()} ({found.name})"
    source = data_mod.resolve_source(recipe.dataset, run_dir)
    records, found = data_mod.load_records(source, recipe.format, registry.data_formats, recipe.dataset_options)
    val_size = recipe.train.get("val_size")
    if val_size:
        from finetty.core.train.worker import _split  # the very split the worker made

        _, held = _split(records, val_size, recipe.train.get("seed", 42))
        return [to_example(r) for r in held], f"{source.describe()}: the held-out split (val_size {val_size})"
    return ([to_example(r) for r in records],
            f"{source.describe()}: the run's training data (it held nothing out; --data picks other data)")


# -- metrics ---------------------------------------------------------------------------------------

def normalize(text: str) -> str:
    return " ".join(text.split()).casefold()


def exact_match(answers: list[str], references: list[str]) -> float:
    return sum(normalize(a) == normalize(r) for a, r in zip(answers, references)) / max(1, len(references))


def rouge_l(answers: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    scores = [scorer.score(r, a)["rougeL"].fmeasure for a, r in zip(answers, references)]
    return sum(scores) / max(1, len(scores))


def bleu(answers: list[str], references: list[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(answers, [references]).score) if references else 0.0


def perplexity(loaded: inference.Loaded, examples: list[Example], max_length: int) -> float | None:
    """exp(mean token loss) over the assistant's tokens (every token of plain text)."""
    import torch

    from finetty.core.data.tokenize import IGNORE, tokenize_conversation, tokenize_text

    total, count = 0.0, 0
    model, tokenizer = loaded.model, loaded.tokenizer
    device = inference._device(model)
    for example in examples:
        if example.text is not None:
            row = tokenize_text(tokenizer, example.text, max_length)
        elif example.messages and tokenizer.chat_template:
            row = tokenize_conversation(tokenizer, example.messages, max_length)
        else:
            continue
        ids = torch.tensor([row["input_ids"]], device=device)
        labels = torch.tensor([row["labels"]], device=device)
        if int((labels[:, 1:] != IGNORE).sum()) == 0:
            continue
        with torch.inference_mode():
            logits = model(input_ids=ids).logits
        # PEFT prompt learning puts virtual tokens first: score only the real positions (the last ones)
        logits = logits[:, -ids.shape[1]:, :].float()
        loss = torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=IGNORE,
                                                 reduction="sum")
        total += float(loss)
        count += int((labels[0, 1:] != IGNORE).sum())
    return math.exp(total / count) if count else None


def score(loaded: inference.Loaded, examples: list[Example], max_new_tokens: int, max_length: int,
          progress: Callable[[str, int, int], None] | None = None,
          batch_size: int = BATCH_SIZE) -> tuple[dict, list[str]]:
    """The metrics of one model over ``examples`` and its answers (one per example with a prompt), answered
    ``batch_size`` prompts at a time in left-padded batches (``inference.answers``, the path chat and serve
    take, so a batch answers as each prompt alone would)."""
    settings = inference.GenerationSettings(temperature=0, max_new_tokens=max_new_tokens)
    answered = [e for e in examples if e.prompt is not None and e.reference is not None]
    answers: list[str] = []
    for start in range(0, len(answered), batch_size):
        batch = [e.prompt for e in answered[start:start + batch_size]]
        answers += [a.strip() for a in inference.answers(loaded, batch, settings, batch_size)]
        if progress:
            progress(loaded.label, len(answers), len(answered))
    references = [e.reference.strip() for e in answered]
    metrics: dict[str, Any] = {"exact_match": None, "rouge_l": None, "bleu": None}
    if answered:
        metrics = {"exact_match": exact_match(answers, references), "rouge_l": rouge_l(answers, references),
                   "bleu": bleu(answers, references)}
    metrics["perplexity"] = perplexity(loaded, examples, max_length)
    return metrics, answers


def _free(loaded: inference.Loaded) -> None:
    import gc

    loaded.model = None
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _default_max_new_tokens(tokenizer, examples: list[Example]) -> int:
    longest = max((len(tokenizer(e.reference, add_special_tokens=False)["input_ids"])
                   for e in examples if e.reference), default=64)
    return min(256, longest + 16)


def _step(run_dir: Path, label: str) -> int | None:
    if label.startswith("step-"):
        return int(label[len("step-"):])
    return next((e.get("step") for e in reversed(read_all(run_dir)) if e.get("type") == "run_finished"), None)


def evaluate(run_dir: Path, data: str | None = None, checkpoint: str | None = None, registry=None,
             max_new_tokens: int | None = None, limit: int | None = None,
             progress: Callable[[str, int, int], None] | None = None, batch_size: int = BATCH_SIZE) -> Report:
    """Score the tuned model, then the base (one model in memory at a time), on the same examples."""
    run_dir = Path(run_dir)
    registry = inference._registry(registry)
    recipe = recipe_mod.from_run(run_dir)
    inference.resolve_target(run_dir, checkpoint)  # a bad --checkpoint fails before anything loads
    examples, described = examples_for(run_dir, recipe, registry, data)
    if limit:
        examples = examples[:limit]
    max_length = int(recipe.train.get("max_length") or 1024)
    tuned = inference.load(run_dir, checkpoint, registry)
    tokens = max_new_tokens or _default_max_new_tokens(tuned.tokenizer, examples)
    tuned_metrics, tuned_answers = score(tuned, examples, tokens, max_length, progress, batch_size)
    tokenizer, label, notes = tuned.tokenizer, tuned.label, list(tuned.notes)
    _free(tuned)
    base = inference.load_base(run_dir, registry, tokenizer=tokenizer)
    base_metrics, base_answers = score(base, examples, tokens, max_length, progress, batch_size)
    _free(base)
    answered = [e for e in examples if e.prompt is not None and e.reference is not None]
    samples = [{"prompt": e.prompt[-1]["content"] if e.prompt else "", "reference": e.reference,
                "base": b, "tuned": t, "base_exact": normalize(b) == normalize(e.reference),
                "tuned_exact": normalize(t) == normalize(e.reference)}
               for e, b, t in zip(answered, base_answers, tuned_answers)]
    return Report(run=run_dir.name, checkpoint=label, step=_step(run_dir, label), method=recipe.method,
                  data=described, examples=len(examples), max_new_tokens=tokens, base=base_metrics,
                  tuned=tuned_metrics, samples=samples, notes=notes)


# -- the report ------------------------------------------------------------------------------------

def fmt(name: str, value: Any) -> str:
    if value is None:
        return "-"
    if name in ("exact_match", "rouge_l"):
        return f"{value * 100:.1f}%" if name == "exact_match" else f"{value:.3f}"
    if name == "bleu":
        return f"{value:.1f}"
    return f"{value:.3g}" if value < 1000 else f"{value:.3e}"


def markdown(report: Report) -> str:
    lines = [f"# Evaluation of run {report.run} ({report.checkpoint})", "",
             f"- method: {report.method}", f"- data: {report.data}", f"- examples: {report.examples}",
             f"- decoding: greedy, up to {report.max_new_tokens} new tokens",
             f"- created: {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(report.created))}", "",
             "| metric | base | tuned |", "| --- | --- | --- |"]
    for name in METRICS:
        lines.append(f"| {name.replace('_', ' ')} | {fmt(name, report.base.get(name))} | "
                     f"{fmt(name, report.tuned.get(name))} |")
    if report.notes:
        lines += ["", *[f"> {note}" for note in report.notes]]
    if report.samples:
        lines += ["", f"## Samples (first {min(SAMPLES_IN_MARKDOWN, len(report.samples))})", ""]
        for sample in report.samples[:SAMPLES_IN_MARKDOWN]:
            lines += [f"**Prompt:** {sample['prompt']}", "", f"- reference: {sample['reference']}",
                      f"- base: {sample['base']}", f"- tuned: {sample['tuned']}", ""]
    return "\n".join(lines).rstrip() + "\n"


def _write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def write_report(run_dir: Path, report: Report) -> tuple[Path, Path]:
    """``<run>/eval/<checkpoint>-<time>.json`` and ``.md`` (each written whole, then renamed)."""
    folder = Path(run_dir) / REPORTS
    folder.mkdir(exist_ok=True)
    stem = f"{report.checkpoint}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(report.created))}"
    json_path, md_path = folder / f"{stem}.json", folder / f"{stem}.md"
    _write(json_path, json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
    _write(md_path, markdown(report))
    return json_path, md_path


def record_event(run_dir: Path, report: Report, report_path: Path) -> bool:
    """Append the ``eval`` event under the run's lock; False (nothing written) while a worker is live."""
    if rundir.is_live(Path(run_dir)):
        return False
    try:
        fd = rundir.acquire_lock(Path(run_dir))
    except RunBusyError:
        return False
    try:
        writer = EventWriter(run_dir)
        try:
            writer.emit("eval", step=report.step, source="finetty eval", loss=None,
                        metrics={k: report.tuned.get(k) for k in METRICS}, checkpoint=report.checkpoint,
                        data=report.data, examples=report.examples,
                        base={k: report.base.get(k) for k in METRICS},
                        report=str(report_path.relative_to(run_dir)))
        finally:
            writer.close()
    finally:
        os.close(fd)
    return True
