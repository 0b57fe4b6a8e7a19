"""The benchmark workload, built locally and deterministically: a Llama-style model and alpaca data.

- ``data.jsonl``: 1000 alpaca records whose chat-rendered lengths spread
  from about 20 to 400 tokens (instruction, optional input, output; words
  drawn from a fixed vocabulary with a fixed seed).
- ``model/``: a Llama-architecture model (~12M parameters, random weights,
  seed 0) with a byte-level BPE tokenizer trained on that data and the tiny
  demo's ChatML template.

Both are written once into the work folder and reused.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

RECORDS = 1000
MODEL_CONFIG = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=10, num_attention_heads=8,
                    num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5,
                    tie_word_embeddings=False, rope_theta=10000.0)
VOCAB = 8192

SYLLABLES = ["ka", "lo", "mi", "ne", "ra", "to", "shi", "vu", "pe", "dan", "gor", "bel", "tin", "sor", "qua", "zel",
             "mar", "fen", "lis", "ho", "tra", "wen", "cu", "pri", "sta", "el", "on", "ar", "is", "um"]


def _words(rng: random.Random, count: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.choice((1, 1, 2, 2, 3)))) for _ in range(count)]


def _sentence(rng: random.Random, vocabulary: list[str], words: int) -> str:
    text = " ".join(rng.choice(vocabulary) for _ in range(words))
    return text[:1].upper() + text[1:] + "."


def records(seed: int = 0, count: int = RECORDS) -> list[dict]:
    """``count`` alpaca records; total words spread uniformly so rendered lengths run ~20..400 tokens."""
    rng = random.Random(seed)
    vocabulary = _words(rng, 3000)
    out = []
    for _ in range(count):
        total = rng.randint(8, 370)  # words; ~1.1 tokens a word with the trained tokenizer, plus the template
        instruction_words = max(3, total // 5)
        input_words = total // 5 if rng.random() < 0.4 else 0
        output_words = max(2, total - instruction_words - input_words)
        out.append({"instruction": _sentence(rng, vocabulary, instruction_words),
                    "input": _sentence(rng, vocabulary, input_words) if input_words else "",
                    "output": _sentence(rng, vocabulary, output_words)})
    return out


def build(work: Path) -> tuple[Path, Path]:
    """``(model folder, data file)`` under ``work``, built on first use."""
    work.mkdir(parents=True, exist_ok=True)
    data_file = work / "data.jsonl"
    if not data_file.exists():
        partial = work / "data.jsonl.partial"
        with open(partial, "w", encoding="utf-8") as handle:
            for record in records():
                handle.write(json.dumps(record) + "\n")
        partial.rename(data_file)
    model_dir = work / "model"
    if not (model_dir / "config.json").exists():
        _build_model(model_dir, data_file)
    return model_dir, data_file


def _build_model(target: Path, data_file: Path) -> None:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from finetty.core.data.demo import CHAT_TEMPLATE, SPECIAL_TOKENS

    texts = []
    for line in data_file.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        texts += [record["instruction"], record["input"], record["output"]]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        unk_token=None)
    tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(**MODEL_CONFIG, vocab_size=-(-len(tokenizer) // 64) * 64, bos_token_id=None,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(target)


def parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                count = 1
                for n in handle.get_slice(key).get_shape():
                    count *= n
                total += count
    return total
