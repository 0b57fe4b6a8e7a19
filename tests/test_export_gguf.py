"""``finetty export RUN --gguf``: one GGUF file that gguf's own reader opens with every tensor of the merged
model (dequantized back to its weights), the tokenizer's vocabulary and the chat template the run trained
with; an Ollama Modelfile whose TEMPLATE is that template in Go syntax; quantisations finetty cannot make
are refused, with why, before anything is written."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from finetty.core.errors import InputError
from finetty.core.model import templates
from finetty.core.results import export, ollama
from finetty.core.results import gguf as gguf_export

from .conftest import finetty

CHATML_GO = ("{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
             "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def run_copy(identity_run, tmp_path_factory):
    """The identity run copied (exports read it; one test edits its recipe in its own copy)."""
    target = tmp_path_factory.mktemp("gguf") / identity_run.name
    shutil.copytree(identity_run, target)
    return target


@pytest.fixture(scope="module")
def merged(run_copy, tmp_path_factory):
    """The run merged into its base by the ordinary export: the weights the GGUF must hold."""
    from safetensors.numpy import load_file

    out = tmp_path_factory.mktemp("merged") / "merged"
    export.export(run_copy, out, merge=True)
    weights = {}
    for file in out.glob("*.safetensors"):
        weights.update(load_file(str(file)))
    return out, weights


def _reader(path):
    import gguf

    return gguf.GGUFReader(str(path))


def _field(reader, key):
    return reader.fields[key].contents()


def _unpermute(weights, n_head):
    """The inverse of llama.cpp's q/k row permutation (interleaved pairs back to rotate-half halves)."""
    return (weights.reshape(n_head, weights.shape[0] // n_head // 2, 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _dequantized(reader) -> dict[str, np.ndarray]:
    import gguf

    return {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(n) for n in reversed(t.shape)])
            for t in reader.tensors}


def _as_gguf_names(weights: dict, n_layer: int) -> dict[str, np.ndarray]:
    import gguf

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    found = {}
    for name, value in weights.items():
        found[names.get_name(name, try_suffixes=(".weight", ".bias"))] = value.astype(np.float32)
    return found


def _compare(reader, weights, config, atol_of):
    n_head, n_head_kv = config["num_attention_heads"], config["num_key_value_heads"]
    expected = _as_gguf_names(weights, config["num_hidden_layers"])
    found = _dequantized(reader)
    assert set(found) == set(expected)
    for name, value in found.items():
        if name.endswith("attn_q.weight"):
            value = _unpermute(value, n_head)
        elif name.endswith("attn_k.weight"):
            value = _unpermute(value, n_head_kv)
        want = expected[name]
        assert value.shape == want.shape, name
        np.testing.assert_allclose(value, want, atol=atol_of(want), rtol=0, err_msg=name)


def test_gguf_f16_export_holds_the_merged_model_vocabulary_and_trained_template(run_copy, merged, tmp_path):
    import json

    import gguf
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from finetty.core.model import loading as models

    merged_dir, weights = merged
    out = tmp_path / "gguf"
    result = finetty("export", str(run_copy), "--gguf", "--out", str(out), check=True)
    assert "as GGUF f16" in result.stdout and "ollama create NAME -f" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "finetty-export.json", "model.gguf"]
    assert all(p.stat().st_mode & 0o777 == 0o644 for p in out.iterdir())

    reader = _reader(out / "model.gguf")
    config = json.loads((merged_dir / "config.json").read_text())
    assert len(reader.tensors) == len(weights)
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "llama.block_count") == config["num_hidden_layers"]
    assert _field(reader, "llama.context_length") == config["max_position_embeddings"]
    assert _field(reader, "llama.attention.head_count_kv") == config["num_key_value_heads"]
    assert {t.tensor_type for t in reader.tensors} == {gguf.GGMLQuantizationType.F16, gguf.GGMLQuantizationType.F32}

    tokenizer = models.load_tokenizer(run_copy / "final")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == config["vocab_size"] == _field(reader, "llama.vocab_size")
    assert tokens[:len(tokenizer)] == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert all(t.startswith("[PAD") for t in tokens[len(tokenizer):])
    assert set(types[len(tokenizer):]) <= {gguf.TokenType.UNUSED}
    assert types[tokenizer.convert_tokens_to_ids("<|im_end|>")] == gguf.TokenType.CONTROL
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert len(_field(reader, "tokenizer.ggml.merges")) > 0
    assert _field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert _field(reader, "tokenizer.ggml.add_bos_token") is False  # the demo tokenizer adds no BOS
    # the trained template, its training-only {% generation %} marker made plain Jinja, rendering alike
    stored = _field(reader, "tokenizer.chat_template")
    assert "{% generation %}" in tokenizer.chat_template and "generation %}" not in stored
    ImmutableSandboxedEnvironment().parse(stored)  # plain Jinja (as llama.cpp's runtimes have) takes it
    assert stored == tokenizer.chat_template.replace("{% generation %}", "{% if true %}").replace(
        "{% endgeneration %}", "{% endif %}")
    for messages in ollama.PROBES:
        assert templates.render(stored, messages, add_generation_prompt=True) == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)

    # f16 holds every merged weight to f16 precision
    _compare(reader, weights, config, lambda want: np.abs(want).max() * 1e-3)

    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./model.gguf\n" in modelfile
    assert f'TEMPLATE """{CHATML_GO}"""' in modelfile
    assert 'PARAMETER stop "<|im_end|>"' in modelfile
    card = (out / "README.md").read_text()
    assert "ollama create NAME -f Modelfile" in card and "## GGUF" in card
    provenance = json.loads((out / "finetty-export.json").read_text())
    assert provenance["quant"] == "f16" and provenance["ollama_template"] == "chatml"


def test_gguf_q8_0_export_dequantizes_to_the_merged_weights(run_copy, merged, tmp_path):
    import json

    import gguf

    merged_dir, weights = merged
    result = gguf_export.export_gguf(run_copy, tmp_path / "q8", quant="q8_0")
    reader = _reader(result.converted.path)
    assert result.converted.quant == "q8_0" and len(reader.tensors) == len(weights) == result.converted.tensors
    kinds = {t.name: t.tensor_type for t in reader.tensors}
    assert kinds["token_embd.weight"] == kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q8_0
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    assert _field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_Q8_0
    config = json.loads((merged_dir / "config.json").read_text())
    # q8_0: one scale per 32 values, 127 steps either side
    _compare(reader, weights, config, lambda want: np.abs(want).max() / 127)


def test_llama_rope_of_the_permuted_weights_scores_as_transformers_does(run_copy, merged, tmp_path):
    """llama.cpp's ``llama`` rotates adjacent pairs, transformers rotates halves: with the permuted q/k
    weights llama.cpp's rotation gives the attention scores transformers' gives with the originals."""
    import json

    merged_dir, weights = merged
    config = json.loads((merged_dir / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    reader = _reader(gguf_export.convert(merged_dir, tmp_path / "f32.gguf", "f32").path)
    tensors = _dequantized(reader)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, config["hidden_size"])).astype(np.float32)
    inv = 10000.0 ** (-np.arange(0, head_dim, 2) / head_dim)
    angles = np.arange(6)[:, None] * inv[None, :]  # (positions, head_dim/2)
    cos, sin = np.cos(angles), np.sin(angles)

    def halves(v):  # transformers: rotate_half on (x[:d/2], x[d/2:])
        a, b = v[..., :head_dim // 2], v[..., head_dim // 2:]
        return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)

    def pairs(v):  # llama.cpp LLAMA_ROPE_TYPE_NORM: (x[2i], x[2i+1])
        a, b = v[..., 0::2], v[..., 1::2]
        out = np.empty_like(v)
        out[..., 0::2], out[..., 1::2] = a * cos - b * sin, b * cos + a * sin
        return out

    def scores(q_w, k_w, rotate):
        q = (x @ q_w.T).reshape(6, n_head, head_dim).transpose(1, 0, 2)
        k = (x @ k_w.T).reshape(6, n_kv, head_dim).transpose(1, 0, 2)
        q, k = rotate(q), rotate(k)
        k = np.repeat(k, n_head // n_kv, axis=0)
        return q @ k.transpose(0, 2, 1)

    hf = scores(weights["model.layers.0.self_attn.q_proj.weight"], weights["model.layers.0.self_attn.k_proj.weight"],
                halves)
    cpp = scores(tensors["blk.0.attn_q.weight"], tensors["blk.0.attn_k.weight"], pairs)
    np.testing.assert_allclose(cpp, hf, rtol=1e-4, atol=1e-4)


def test_refused_quantisations_say_why_and_write_nothing(run_copy, tmp_path):
    out = tmp_path / "never"
    result = finetty("export", str(run_copy), "--gguf", "--quant", "q4_k_m", "--out", str(out))
    assert result.returncode == 2
    assert "llama-quantize" in result.stderr and "q4_k_m" in result.stderr and "Traceback" not in result.stderr
    result = finetty("export", str(run_copy), "--gguf", "--quant", "q8_1", "--out", str(out))
    assert result.returncode == 2 and "did you mean" in result.stderr
    result = finetty("export", str(run_copy), "--quant", "q8_0", "--out", str(out))
    assert result.returncode == 2 and "--gguf" in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    for quant in ("f16", "q8_0", "q4_0", "bf16"):
        assert gguf_export.check_quant(quant.upper()) == quant


def test_a_method_that_cannot_merge_is_refused_before_anything_is_written(run_copy, tmp_path):
    run = tmp_path / run_copy.name
    shutil.copytree(run_copy, run)
    recipe = run / "recipe.yaml"
    recipe.write_text(recipe.read_text().replace("method: lora", "method: prefix").replace(
        "method_options:", "method_options_unused:"))
    with pytest.raises(InputError, match="cannot be merged"):
        gguf_export.export_gguf(run, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["GPT2LMHeadModel"]}')
    with pytest.raises(InputError, match="GPT2LMHeadModel cannot be exported to GGUF") as caught:
        gguf_export.check_architecture(tmp_path)
    assert "LlamaForCausalLM" in str(caught.value)


def test_every_named_template_is_recognised_and_a_custom_one_is_not_guessed(demo_model):
    from finetty.core.model import loading as models

    tokenizer = models.load_tokenizer(demo_model)
    for name in ollama.GO_TEMPLATES:
        assert ollama.identify(tokenizer, templates.TEMPLATES[name]) == name
    assert ollama.identify(tokenizer, templates.TEMPLATES["qwen"]) == "qwen2"
    # the demo's own template (chatml plus tools and {% generation %}) renders plain chats as chatml does
    assert ollama.identify(tokenizer, tokenizer.chat_template) == "chatml"

    custom = "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}\n{% endfor %}<<assistant>> "
    made = ollama.modelfile(tokenizer, custom, "model.gguf")
    assert made.template is None
    assert not any(line.startswith("TEMPLATE") for line in made.text.splitlines())
    assert "NOT TRANSLATED" in made.text and "#   {% for m in messages %}<<{{ m['role'] }}>>" in made.text
    assert made.warnings and "custom Jinja template" in made.warnings[0]

    mistral = ollama.modelfile(tokenizer, templates.TEMPLATES["mistral"], "model.gguf")
    assert "{{ $m.Content }}<|im_end|>" in mistral.text  # the tokenizer's end-of-sequence text after an answer
    assert 'PARAMETER stop "[INST]"' in mistral.text and 'PARAMETER stop "<|im_end|>"' in mistral.text


GO_RENDERER = Path(__file__).parent / "fixtures" / "gotemplate"


def test_go_templates_render_what_the_jinja_templates_render(demo_model, tmp_path):
    """Each Modelfile TEMPLATE, run by Go's own text/template (the engine Ollama uses), writes exactly what
    its Jinja original writes for the same conversation; needs a Go toolchain (skipped without one)."""
    import json
    import os
    import subprocess

    from finetty.core.model import loading as models

    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain to run text/template")
    binary = tmp_path / "render"
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=GO_RENDERER, check=True, timeout=300,
                   env={**os.environ, "GOFLAGS": "-mod=mod", "GOCACHE": str(tmp_path / "gocache"),
                        "GOPATH": str(tmp_path / "gopath")})
    tokenizer = models.load_tokenizer(demo_model)
    conversations = ollama.PROBES + [
        [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"}, {"role": "assistant", "content": "a1"},
         {"role": "user", "content": "u2"}, {"role": "assistant", "content": "a2"}, {"role": "user", "content": "u3"}],
    ]
    for name, (go_template, _) in ollama.GO_TEMPLATES.items():
        go_template = go_template.replace("EOS_TOKEN", tokenizer.eos_token)
        for messages in conversations:
            expected = tokenizer.apply_chat_template(messages, chat_template=templates.TEMPLATES[name],
                                                     tokenize=False, add_generation_prompt=True)
            request = {"Template": go_template,
                       "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
            rendered = subprocess.run([str(binary)], input=json.dumps(request), capture_output=True, text=True,
                                      check=True, timeout=60).stdout
            assert rendered == expected, (name, messages)


def test_a_qwen2_model_keeps_its_biases_and_unpermuted_weights(demo_model, tmp_path):
    """Qwen2 (NEOX rotation in llama.cpp) goes in as it is: q/k/v biases included, no row permutation, and a
    tied head left to llama.cpp (no output tensor)."""
    import gguf
    import torch
    from safetensors.numpy import load_file
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from finetty.core.model import loading as models

    tokenizer = models.load_tokenizer(demo_model)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    folder = tmp_path / "qwen2"
    Qwen2ForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = load_file(str(folder / "model.safetensors"))

    converted = gguf_export.convert(folder, tmp_path / "qwen2.gguf", "f32")
    reader = _reader(converted.path)
    assert converted.architecture == "qwen2" and _field(reader, "general.architecture") == "qwen2"
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, 2)
    expected = {names.get_name(k, try_suffixes=(".weight", ".bias")): v for k, v in weights.items()}
    found = _dequantized(reader)
    assert "blk.0.attn_q.bias" in found and "output.weight" not in found and set(found) == set(expected)
    for name, value in found.items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)

    q4 = gguf_export.convert(folder, tmp_path / "qwen2-q4.gguf", "q4_0")
    kinds = {t.name: t.tensor_type for t in _reader(q4.path).tensors}
    assert kinds["blk.1.ffn_up.weight"] == gguf.GGMLQuantizationType.Q4_0
    assert kinds["blk.1.attn_k.bias"] == gguf.GGMLQuantizationType.F32
    # rows of 80 do not fill 32-value blocks: f16 instead, as llama.cpp's converter does, and the export says so
    assert kinds["blk.1.ffn_down.weight"] == gguf.GGMLQuantizationType.F16
    assert any("stored as f16" in note and "blk.0.ffn_down.weight" in note for note in q4.notes)


def test_a_full_fine_tune_exports_its_own_weights(tmp_path_factory, demo_model, tmp_path):
    """``full`` trains the base's own weights: nothing to merge, the GGUF holds final/'s weights."""
    import json

    from safetensors.numpy import load_file

    from . import results_runs

    run = results_runs.trained("full", tmp_path_factory)
    result = gguf_export.export_gguf(run, tmp_path / "full")
    weights = load_file(str(run / "final" / "model.safetensors"))
    config = json.loads((run / "final" / "config.json").read_text())
    reader = _reader(result.converted.path)
    assert result.method == "full" and len(reader.tensors) == len(weights)
    _compare(reader, weights, config, lambda want: np.abs(want).max() * 1e-3)
    card = (tmp_path / "full" / "README.md").read_text()
    assert "whole model" in card and "is the fine-tuned model, in GGUF (f16)" in card


def test_a_sentencepiece_style_tokenizer_becomes_llamas_vocabulary_with_scores(tmp_path):
    """A Llama-2-style tokenizer (BPE with byte fallback, ``▁`` for spaces) is written as llama.cpp's ``llama``
    vocabulary: every token, a score each, BOS added as the tokenizer adds it."""
    import gguf
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    core.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    core.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    core.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                      decoders.Strip(" ", 1, 0)])
    alphabet = [f"<0x{b:02X}>" for b in range(256)]
    core.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 20, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", *alphabet], show_progress=False))
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    folder = tmp_path / "spm"
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)

    reader = _reader(gguf_export.convert(folder, tmp_path / "spm.gguf", "f16").path)
    assert _field(reader, "tokenizer.ggml.model") == "llama"
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert tokens == tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    assert len(_field(reader, "tokenizer.ggml.scores")) == len(tokens)
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[tokenizer.convert_tokens_to_ids("<0x41>")] == gguf.TokenType.BYTE
    assert types[tokenizer.convert_tokens_to_ids("</s>")] == gguf.TokenType.CONTROL
    assert _field(reader, "tokenizer.ggml.add_bos_token") is True
    assert _field(reader, "tokenizer.ggml.bos_token_id") == 1
