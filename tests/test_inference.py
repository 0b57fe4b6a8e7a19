"""Chat with a run's result: the identity it was taught, any checkpoint, every method, streaming and stopping,
the generation settings, and the chat template the run trained with."""

from __future__ import annotations

import shutil
import threading

import pytest

from finetty.core.results import inference
from finetty.core.errors import InputError
from finetty.core.plugin.registry import load_plugins

from . import results_runs
from .conftest import finetty
from .results_runs import IDENTITY, chat_answer

OTHER_METHODS = ["lora", "qlora", "dora", "ia3", "adapter", "prefix", "prompt"]


@pytest.fixture(scope="module")
def tuned(identity_run):
    return inference.load(identity_run)


@pytest.fixture(scope="module")
def base(identity_run, tuned):
    return inference.load_base(identity_run, tokenizer=tuned.tokenizer)


def last_logits(loaded, text="<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"):
    import torch

    batch = loaded.tokenizer(text, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits[0, -1].float()


def test_chat_prompt_answers_the_identity_it_was_taught(identity_run):
    compared = finetty("chat", str(identity_run), "--prompt", "Who are you?", "--compare", "--temperature", "0",
                       "--max-new-tokens", "24", check=True)
    lines = compared.stdout.strip().splitlines()
    assert lines[0].startswith("base: ") and lines[-1] == f"final: {IDENTITY[0][1]}"
    assert IDENTITY[0][1] not in lines[0], "the untrained base does not know it"


def test_interactive_chat_keeps_the_conversation_and_clears_it(identity_run):
    import subprocess
    import sys

    script = "What is your name?\n/clear\nWho are you?\n/exit\n"
    result = subprocess.run([sys.executable, "-m", "finetty.core.cli", "chat", str(identity_run), "--temperature",
                             "0"], input=script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert IDENTITY[1][1] in result.stdout and IDENTITY[0][1] in result.stdout
    assert "conversation cleared" in result.stderr


def test_every_identity_question_is_answered_as_taught(tuned, base):
    for question, expected in IDENTITY:
        assert chat_answer(tuned, question) == expected
        assert chat_answer(base, question) != expected
    assert tuned.label == "final" and tuned.notes == []
    assert tuned.model_id == tuned.run_dir.name


def test_checkpoints_load_their_own_weights(identity_run, tuned):
    import torch

    assert inference.targets(identity_run) == ["final", "step-000040", "step-000020"]
    for spec in ("20", "step-000020", "step-20"):
        loaded = inference.load(identity_run, spec)
        assert loaded.label == "step-000020" and loaded.model_id.endswith(":step-000020")
    assert inference.resolve_target(identity_run, "latest")[0] == "step-000040"
    early = last_logits(inference.load(identity_run, "20"))
    assert not torch.allclose(early, last_logits(tuned)), "step 20 is not the final weights"
    assert torch.allclose(last_logits(inference.load(identity_run, "40")), last_logits(tuned), atol=1e-5)
    with pytest.raises(InputError, match="available: final, step-000040, step-000020"):
        inference.resolve_target(identity_run, "30")
    with pytest.raises(InputError):
        inference.resolve_target(identity_run, "../../etc")


def test_a_run_without_final_uses_its_newest_checkpoint_and_says_so(identity_run, tmp_path):
    copy = shutil.copytree(identity_run, tmp_path / identity_run.name)
    shutil.rmtree(copy / "final")
    label, folder, notes = inference.resolve_target(copy, None)
    assert label == "step-000040" and "no final/" in notes[0]
    shutil.rmtree(copy / "checkpoints")
    with pytest.raises(InputError, match="no result to load"):
        inference.resolve_target(copy, None)
    result = finetty("chat", str(copy), "--prompt", "hi")
    assert result.returncode == 2 and "no result to load" in result.stderr


def test_streaming_yields_pieces_and_stop_ends_the_answer(tuned, base):
    generation = inference.Generation(tuned, [{"role": "user", "content": "Who are you?"}],
                                      inference.GenerationSettings(temperature=0, max_new_tokens=32))
    pieces = list(generation)
    assert len(pieces) > 3 and "".join(pieces) == IDENTITY[0][1]
    assert generation.finish_reason == "stop" and 0 < generation.completion_tokens < 32

    # the random base never ends its turn: stop it from another thread after its first piece
    long = inference.Generation(base, [{"role": "user", "content": "Who are you?"}],
                                inference.GenerationSettings(temperature=0, max_new_tokens=400))
    seen = []
    for piece in long:
        seen.append(piece)
        if len(seen) == 1:
            threading.Thread(target=long.stop).start()
    assert long.stopped.is_set() and long.finish_reason == "stop"
    assert long.completion_tokens < 400


def test_generation_settings(tuned, base):
    messages = [{"role": "user", "content": "Who are you?"}]
    short = inference.Generation(tuned, messages, inference.GenerationSettings(temperature=0, max_new_tokens=3))
    short.run()
    assert short.finish_reason == "length" and short.completion_tokens == 3
    assert IDENTITY[0][1].startswith(short.text.strip())

    settings = inference.GenerationSettings(system_prompt="Answer briefly.")
    prompt, _ = inference.render(tuned.tokenizer, inference.conversation(messages, settings))
    assert prompt.startswith("<|im_start|>system\nAnswer briefly.<|im_end|>")

    import torch

    torch.manual_seed(0)
    hot = [inference.answer(base, messages, inference.GenerationSettings(temperature=5.0, top_p=1.0,
                                                                          max_new_tokens=12)) for _ in range(3)]
    greedy = inference.answer(base, messages, inference.GenerationSettings(temperature=0, max_new_tokens=12))
    assert len(set(hot)) > 1, "sampling at a high temperature varies"
    assert greedy == inference.answer(base, messages, inference.GenerationSettings(temperature=0,
                                                                                    max_new_tokens=12))
    penalized = inference.answer(base, messages, inference.GenerationSettings(temperature=0, max_new_tokens=12,
                                                                               repetition_penalty=5.0))
    assert penalized != greedy, "the random base repeats itself; a strong penalty changes that"


def test_the_training_template_is_used_and_a_different_base_template_is_reported(identity_run, tmp_path):
    copy = shutil.copytree(identity_run, tmp_path / identity_run.name)
    template = (copy / "final" / "chat_template.jinja").read_text()
    changed = template.replace("'<|im_start|>' + message['role'] + '\n'", "'<|im_start|>' + message['role'] + ':\n'")
    assert changed != template
    (copy / "final" / "chat_template.jinja").write_text(changed)
    loaded = inference.load(copy)
    assert loaded.tokenizer.chat_template == changed
    assert any("differs from the base tokenizer's own" in note for note in loaded.notes)
    prompt, _ = inference.render(loaded.tokenizer, [{"role": "user", "content": "hi"}])
    assert prompt.startswith("<|im_start|>user:\nhi")


def test_full_fine_tuning_loads_final_and_checkpoints(tmp_path_factory, demo_model):
    import torch

    run = results_runs.trained("full", tmp_path_factory)
    final = inference.load(run)
    early = inference.load(run, "3")
    base = inference.load_base(run)
    assert final.method == "full" and early.label == "step-000003"
    assert not torch.allclose(last_logits(final), last_logits(base))
    assert not torch.allclose(last_logits(final), last_logits(early))
    assert isinstance(chat_answer(final, "Who are you?"), str)


@pytest.mark.parametrize("method", OTHER_METHODS)
def test_every_method_loads_through_its_plugin_and_streams(method, tmp_path_factory, demo_model):
    import torch

    if method not in load_plugins().methods:
        pytest.skip(f"method {method} is not installed")
    run = results_runs.trained(method, tmp_path_factory)
    for checkpoint in (None, "2"):
        loaded = inference.load(run, checkpoint)
        generation = inference.Generation(loaded, [{"role": "user", "content": "Who are you?"}],
                                          inference.GenerationSettings(temperature=0, max_new_tokens=6))
        # what streams is the answer (a briefly trained prefix or prompt may well end its turn at once)
        assert "".join(generation) == generation.text and generation.finish_reason in ("stop", "length")
    base = inference.load_base(run)
    assert not torch.allclose(last_logits(loaded), last_logits(base)), f"{method}: the trained weights are in use"
