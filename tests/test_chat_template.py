"""chat_template: named templates render every role and the generation prompt; a base model without a template
is refused for conversations, trains with ``chat_template: chatml``, and the template travels with every
checkpoint and the result, so ``finetty chat`` prompts the model exactly as training rendered it."""

from __future__ import annotations

import pytest

from finetty.core.errors import InputError
from finetty.core.model import templates
from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.run import rundir

from . import inprocess
from .conftest import RECIPES, finetty, losses
from .no_template_model import without_template

REQUIRED = ("chatml", "llama3", "qwen2", "mistral", "gemma", "phi3", "alpaca", "vicuna")
CONVERSATION = [{"role": "system", "content": "SYS-TEXT"}, {"role": "user", "content": "USER-ONE"},
                {"role": "assistant", "content": "BOT-ONE"}, {"role": "user", "content": "USER-TWO"}]


@pytest.mark.parametrize("name", REQUIRED)
def test_named_templates_render_every_role_and_the_generation_prompt(name):
    tokens = dict(bos_token="<s>", eos_token="</s>")
    prompt = templates.render(templates.TEMPLATES[name], CONVERSATION, add_generation_prompt=True, **tokens)
    bare = templates.render(templates.TEMPLATES[name], CONVERSATION, add_generation_prompt=False, **tokens)
    full = templates.render(templates.TEMPLATES[name], CONVERSATION + [{"role": "assistant", "content": "BOT-TWO"}],
                            **tokens)
    positions = [prompt.index(text) for text in ("SYS-TEXT", "USER-ONE", "BOT-ONE", "USER-TWO")]
    assert positions == sorted(positions), prompt
    # the answer continues the prompt: assistant-only loss finds each reply's span by rendering prefixes
    assert full.startswith(prompt) and full[len(prompt):].lstrip().startswith("BOT-TWO"), (prompt, full)
    if name != "mistral":  # mistral's prompt already ends at [/INST], where the answer begins
        assert len(prompt) > len(bare)


def test_the_template_is_used_through_transformers_as_written(demo_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(demo_model))
    for name in REQUIRED:
        tokenizer.chat_template = templates.TEMPLATES[name]
        ours = templates.render(templates.TEMPLATES[name], CONVERSATION, add_generation_prompt=True,
                                bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token)
        assert tokenizer.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True) == ours, name


@pytest.mark.slow
def test_a_base_without_a_template_trains_with_chatml_and_chat_uses_it(demo_model, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    base = without_template(demo_model, tmp_path / "base")
    with pytest.raises(InputError) as refused:
        recipe_mod.load(RECIPES / "demo-lora.yaml", [f"model={base}"], load_plugins())
    assert "has no chat template" in refused.value.problem and "chat_template" in refused.value.fix

    run = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path / "runs",
                          [f"model={base}", "chat_template=chatml", "train.max_steps=12", "train.logging_steps=1",
                           "train.save_steps=6", "train.warmup_steps=0"], monkeypatch=monkeypatch)
    loss = losses(run)
    assert sum(loss[s] for s in (10, 11, 12)) < sum(loss[s] for s in (1, 2, 3)), loss
    chatml = templates.TEMPLATES["chatml"]
    for folder in (run / "checkpoints" / "step-000006", run / "checkpoints" / "step-000012", run / rundir.FINAL):
        assert AutoTokenizer.from_pretrained(str(folder)).chat_template == chatml, folder
    assert AutoTokenizer.from_pretrained(str(base)).chat_template is None  # the base model is left as it was

    from finetty.core.results import inference

    loaded = inference.load(run)
    question = [{"role": "user", "content": "Who are you?"}]
    text, _ = inference.render(loaded.tokenizer, question)
    assert text == templates.render(chatml, question, add_generation_prompt=True)
    model, tokenizer = inprocess.load_result(run)
    expected = tokenizer.decode(inprocess.greedy(model, tokenizer, ("Who are you?",), new_tokens=6)[0],
                                skip_special_tokens=True)
    out = finetty("chat", str(run), "--prompt", "Who are you?", "--max-new-tokens", "6")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected.strip(), (out.stdout, expected)
