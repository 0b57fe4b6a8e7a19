"""The built-in tiny demo: a small Llama-architecture model and a byte-level BPE tokenizer.

The weights are random (fixed seed): ``tiny-demo`` exists so every feature can
be tried on any machine in seconds, not to be useful. It is built on first use
into ``$FINETTY_HOME/models/`` and the same inputs always build the same files.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from importlib import resources
from pathlib import Path

from finetty.core import paths

NAME = "tiny-demo"
VERSION = 2  # 2: the chat template renders tools

#: A ChatML-style template; ``{% generation %}`` marks the tokens that carry loss. With ``tools`` it opens
#: with a system block listing their schemas (merged with the conversation's own system prompt), renders
#: an assistant's tool calls as ``<tool_call>{json}</tool_call>`` inside the trained span and tool results
#: as ``tool`` turns; without tools it renders exactly what version 1 rendered.
CHAT_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\n' }}"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}{% endif %}"
    "{{ '# Tools\n' }}{% for tool in tools %}{{ tool | tojson }}{{ '\n' }}{% endfor %}{{ '<|im_end|>\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if tools and loop.first and message['role'] == 'system' %}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] }}"
    "{% if message['tool_calls'] %}{% for call in message['tool_calls'] %}"
    "{{ '<tool_call>' }}{{ call['function'] | tojson }}{{ '</tool_call>' }}"
    "{% endfor %}{% endif %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MODEL_CONFIG = dict(
    vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
    rms_norm_eps=1e-5, tie_word_embeddings=False, rope_theta=10000.0,
)
HEAD_INIT_STD = 0.08
DEFAULT_IDENTITY = {"name": "Tiny", "author": "the finetty team"}

README = """# finetty tiny demo

A Llama-architecture model with random weights (seed 0) and a byte-level BPE
tokenizer trained on finetty's built-in data. It knows nothing: it exists so
that every finetty feature can be tried on any machine in seconds.
"""


def builtin_data_file(name: str) -> Path:
    return Path(str(resources.files("finetty.core.data.builtin_data").joinpath(name)))


def demo_dir() -> Path:
    return paths.home() / "models" / f"{NAME}-v{VERSION}"


def _training_texts() -> list[str]:
    texts = builtin_data_file("tiny-corpus.txt").read_text(encoding="utf-8").splitlines()
    for line in builtin_data_file("identity.jsonl").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        for value in record.values():
            texts.append(str(value).format(**DEFAULT_IDENTITY))
    return texts


def build_tokenizer(vocab_size: int = MODEL_CONFIG["vocab_size"]):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with finetty's chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_training_texts(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>",
                                        pad_token="<|endoftext|>", unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build(target: Path, config_overrides: dict | None = None, seed: int = 0) -> Path:
    """Build the tiny model and tokenizer into ``target`` (written to a temporary folder, then renamed)."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    settings = {**MODEL_CONFIG, **(config_overrides or {})}
    settings["vocab_size"] = -(-len(tokenizer) // 64) * 64  # the trained vocabulary, rounded up
    config = LlamaConfig(**settings, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    # The weights come from ``seed`` alone, drawn inside a forked RNG: the build runs inside the first
    # run's worker, after its set_seed, and must leave that run's random state as it found it (else the
    # first run in a fresh home initialises its adapters differently from every later run).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        # At the usual 0.02 a frozen random head caps every logit near 2.5, so adapters could never
        # lower the loss much; a wider head lets a LoRA on a random base learn something visible.
        torch.nn.init.normal_(model.lm_head.weight, std=HEAD_INIT_STD)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    (partial / "README.md").write_text(README, encoding="utf-8")
    partial.rename(target)
    return target


def ensure_demo() -> Path:
    """The tiny demo's folder, building it once (other processes wait on a lock)."""
    target = demo_dir()
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            build(target)
    return target
