"""Generation agrees with training, for every method: after a short run, greedy answers through
``finetty chat``, ``finetty eval`` and ``finetty serve`` are the trained model's own argmax continuation.

The reference is computed on the model in memory at the end of training (the worker's ``trainer.model``,
before anything is saved), by plain forward passes over the whole sequence, one new token at a time: no
``generate``, no KV cache, no reload. That is the computation the loss was trained through, so a generation
path that drops what was learned (prefix tuning on transformers 5 / peft 0.21 answered as the untrained base,
and the method tests, comparing a reload with the same broken ``generate``, did not notice) fails here. The
base's continuation is computed the same way and must differ, so the answers are driven by the training.
Eval and serve answer all the prompts at once (a left-padded batch; concurrent requests), so batching is
checked against the single-sequence reference too.
"""

from __future__ import annotations

import argparse
import json
import threading

import pytest

from finetty.core.plugin import registry as plugin_registry
from finetty.core.results import evaluate, inference, serve

from . import inprocess
from .conftest import RECIPES, REPO, finetty, own_plugin_names
from .results_runs import IDENTITY, identity_data

EXAMPLE = REPO / "examples" / "finetty-plugin-example"
NEW_TOKENS = 10
STEPS = 8
#: method -> its demo recipe (the example plugin's for freeze-layers)
RECIPES_FOR = {"full": RECIPES / "demo-full.yaml", "lora": RECIPES / "demo-lora.yaml",
               "qlora": RECIPES / "demo-qlora.yaml", "dora": RECIPES / "demo-dora.yaml",
               "ia3": RECIPES / "demo-ia3.yaml", "adapter": RECIPES / "demo-adapter.yaml",
               "prefix": RECIPES / "demo-prefix.yaml", "prompt": RECIPES / "demo-prompt.yaml",
               "freeze-layers": EXAMPLE / "recipe-demo.yaml"}
QUESTIONS = [question for question, _ in IDENTITY]


def continuation(model, tokenizer, question: str, new_tokens: int = NEW_TOKENS) -> str:
    """The argmax continuation of a chat prompt by full forward passes (the training computation)."""
    import torch

    prompt, special = inference.render(tokenizer, [{"role": "user", "content": question}])
    ids = tokenizer(prompt, add_special_tokens=special)["input_ids"]
    eos = {tokenizer.eos_token_id, *([model.generation_config.eos_token_id]
                                     if isinstance(model.generation_config.eos_token_id, int) else
                                     model.generation_config.eos_token_id or [])}
    new: list[int] = []
    model.eval()
    with torch.no_grad():
        for _ in range(new_tokens):
            token = int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax())
            if token in eos:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True)


@pytest.fixture(scope="module")
def plugins():
    """finetty's own plugins and the installed example plugin (freeze-layers)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FINETTY_LOAD_PLUGINS", own_plugin_names() + ",freeze-layers")
        found = plugin_registry.load_plugins(refresh=True)
        yield found
    plugin_registry.load_plugins(refresh=True)


@pytest.mark.slow
@pytest.mark.parametrize("method", list(RECIPES_FOR))
def test_chat_eval_and_serve_answer_with_what_training_taught(method, plugins, tmp_path, demo_model, monkeypatch):
    if method not in plugins.methods:
        pytest.skip(f"method {method} is not installed (pip install -e examples/finetty-plugin-example)")
    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", own_plugin_names() + ",freeze-layers")
    monkeypatch.setenv("FINETTY_KEEP_IMPORTS", "1")
    learned: dict[str, str] = {}

    def before_save(trainer):
        for question in QUESTIONS:
            learned[question] = continuation(trainer.model, trainer.processing_class, question)

    overrides = [f"dataset={identity_data(tmp_path)}", "format=alpaca", f"train.max_steps={STEPS}",
                 f"train.save_steps={STEPS}", "train.logging_steps=1", "train.warmup_steps=0",
                 "train.per_device_train_batch_size=4", "train.lr_scheduler_type=constant"]
    run = inprocess.train(RECIPES_FOR[method], tmp_path / "runs", overrides, monkeypatch=monkeypatch,
                          before_save=before_save, registry=plugins)

    base = inference.load_base(run, plugins)
    untrained = {question: continuation(base.model, base.tokenizer, question) for question in QUESTIONS}
    assert learned != untrained, f"{method}: {STEPS} steps changed no answer, so this test would prove nothing"
    del base

    # finetty eval: the tuned model and the base each answer every prompt in one left-padded batch
    data = tmp_path / "questions.jsonl"
    data.write_text("".join(json.dumps({"instruction": q, "input": "", "output": "-"}) + "\n" for q in QUESTIONS))
    report = evaluate.evaluate(run, data=str(data), registry=plugins, max_new_tokens=NEW_TOKENS)
    assert [s["tuned"] for s in report.samples] == [learned[q].strip() for q in QUESTIONS]
    assert [s["base"] for s in report.samples] == [untrained[q].strip() for q in QUESTIONS]

    # finetty chat --prompt (the command's own function, in this process)
    from finetty.core.cli import results as results_cli

    tuned = inference.load(run, registry=plugins)
    chats = []
    for question in QUESTIONS[:2]:
        args = argparse.Namespace(run=str(run), runs_dir=None, checkpoint=None, prompt=question, compare=False,
                                  temperature=0.0, top_p=None, max_new_tokens=NEW_TOKENS, repetition_penalty=None,
                                  system=None)
        chats.append(_stdout(results_cli.cmd_chat, args))
    assert chats == [learned[q] + "\n" for q in QUESTIONS[:2]]

    # finetty serve, with the openai client: every prompt at once, answered in one batch
    import openai

    server = serve.APIServer(tuned, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        assert server.wait_started()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        answers: dict[str, str] = {}

        def ask(question):
            reply = client.chat.completions.create(model=tuned.model_id, temperature=0, max_tokens=NEW_TOKENS,
                                                   messages=[{"role": "user", "content": question}])
            answers[question] = reply.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(q,)) for q in QUESTIONS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert answers == learned
        assert server.scheduler.stats["largest_batch"] > 1, "the concurrent requests were batched"
    finally:
        server.shutdown()
        server.server_close()


def _stdout(command, args) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert command(args) == 0
    return out.getvalue()


def test_finetty_chat_after_prefix_tuning_answers_as_trained_not_as_the_base(tmp_path, demo_model, monkeypatch):
    """The real command, on the method that answered as its untrained base."""
    monkeypatch.setenv("FINETTY_KEEP_IMPORTS", "1")
    learned: dict[str, str] = {}

    def before_save(trainer):
        learned["answer"] = continuation(trainer.model, trainer.processing_class, QUESTIONS[0])

    run = inprocess.train(RECIPES / "demo-prefix.yaml", tmp_path / "runs",
                          [f"dataset={identity_data(tmp_path)}", "format=alpaca", "train.max_steps=6",
                           "train.save_steps=6", "train.warmup_steps=0", "train.lr_scheduler_type=constant",
                           "train.per_device_train_batch_size=4"], monkeypatch=monkeypatch, before_save=before_save)
    result = finetty("chat", str(run), "--prompt", QUESTIONS[0], "--compare", "--temperature", "0",
                     "--max-new-tokens", str(NEW_TOKENS), check=True)
    lines = result.stdout.splitlines()
    base, final = lines[0].removeprefix("base: "), lines[-1].removeprefix("final: ")
    assert final == learned["answer"]
    assert final != base, "prefix tuning's answer changed with training"
