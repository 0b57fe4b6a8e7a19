"""The Ollama ``Modelfile`` written beside a GGUF export: ``FROM``, the chat template in Ollama's Go
template syntax, and the stop strings.

Ollama does not run Jinja: its ``TEMPLATE`` is a Go ``text/template`` over
``.Messages`` (each with ``.Role`` and ``.Content``), and it always ends by
prompting the assistant. The run's template is matched against the named
templates finetty knows (:mod:`finetty.core.model.templates`) by what it
renders, not by its text: the tiny demo's own template, for one, is chatml
with tool-call and ``{% generation %}`` extras and renders every plain
conversation exactly as chatml does. A matched template gets its hand-written
Go translation (:data:`GO_TEMPLATES`); one that matches none is not guessed at:
the Modelfile then has no ``TEMPLATE``, says so in a comment that quotes the
Jinja, and the export prints the same warning (Ollama falls back to the
``tokenizer.chat_template`` stored in the GGUF file).

What the translations do not carry: tool calls and tool definitions (Ollama
has its own), and Jinja's ``| trim`` on message text (llama3, gemma): Go
templates have no trim, so a message with leading or trailing whitespace is
sent with it. A Jinja ``{{ bos_token }}`` is left to the runtime, which adds the
beginning-of-sequence token itself when the GGUF's ``tokenizer.ggml.add_bos_token`` says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from finetty.core.text import one_line

#: Conversations the run's template and each named one must render identically (with the generation
#: prompt, as Ollama always does) for the named one's translation to be used.
PROBES: list[list[dict]] = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Tell me a joke"}],
    [{"role": "system", "content": "You answer in French."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Bonjour."}, {"role": "user", "content": "Who are you?"}],
]

_CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
_QWEN2 = (
    "{{- if or (not .Messages) (ne (index .Messages 0).Role \"system\") }}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n"
    "{{ end }}" + _CHATML
)
_LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ if eq .Role \"tool\" }}ipython{{ else }}{{ .Role }}{{ end }}"
    "<|end_header_id|>\n\n"
    "{{ .Content }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
)
#: mistral and gemma fold a leading system message into the first turn after it, as their Jinja does.
_SYSTEM_FIRST = (
    "{{- $system := \"\" }}{{- $first := true }}\n"
    "{{- range $i, $m := .Messages }}\n"
    "{{- if and (eq $i 0) (eq $m.Role \"system\") }}{{ $system = printf \"%s\\n\\n\" $m.Content }}\n"
    "{{- else }}"
)
_MISTRAL = (
    _SYSTEM_FIRST +
    "{{ if eq $m.Role \"assistant\" }}{{ $m.Content }}EOS_TOKEN"
    "{{ else }}[INST] {{ if $first }}{{ $system }}{{ end }}{{ $m.Content }} [/INST]{{ end }}"
    "{{ $first = false }}\n"
    "{{- end }}\n"
    "{{- end }}"
)
_GEMMA = (
    _SYSTEM_FIRST +
    "<start_of_turn>{{ if eq $m.Role \"assistant\" }}model{{ else }}user{{ end }}\n"
    "{{ if $first }}{{ $system }}{{ end }}{{ $m.Content }}<end_of_turn>\n"
    "{{ $first = false }}\n"
    "{{- end }}\n"
    "{{- end }}<start_of_turn>model\n"
)
_PHI3 = (
    "{{- range .Messages }}<|{{ .Role }}|>\n"
    "{{ .Content }}<|end|>\n"
    "{{ end }}<|assistant|>\n"
)
_ALPACA = (
    "{{- $turns := .Messages }}\n"
    "{{- if and .Messages (eq (index .Messages 0).Role \"system\") }}{{ (index .Messages 0).Content }}\n\n"
    "{{ $turns = slice .Messages 1 }}\n"
    "{{- else }}Below is an instruction that describes a task. Write a response that appropriately completes "
    "the request.\n\n"
    "{{ end }}\n"
    "{{- range $turns }}\n"
    "{{- if eq .Role \"assistant\" }}### Response:\n{{ .Content }}EOS_TOKEN\n\n"
    "{{ else }}### Instruction:\n{{ .Content }}\n\n{{ end }}\n"
    "{{- end }}### Response:\n"
)
_VICUNA = (
    "{{- $turns := .Messages }}\n"
    "{{- if and .Messages (eq (index .Messages 0).Role \"system\") }}{{ (index .Messages 0).Content }} "
    "{{ $turns = slice .Messages 1 }}\n"
    "{{- else }}A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. {{ end }}\n"
    "{{- range $turns }}\n"
    "{{- if eq .Role \"assistant\" }}ASSISTANT: {{ .Content }}EOS_TOKEN {{ else }}USER: {{ .Content }} {{ end }}\n"
    "{{- end }}ASSISTANT:"
)

#: named template -> (Go template with ``EOS_TOKEN`` for the tokenizer's end-of-sequence text, stop strings)
GO_TEMPLATES: dict[str, tuple[str, tuple[str, ...]]] = {
    "chatml": (_CHATML, ("<|im_start|>", "<|im_end|>")),
    "qwen2": (_QWEN2, ("<|im_start|>", "<|im_end|>")),
    "llama3": (_LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
    "mistral": (_MISTRAL, ("[INST]", "[/INST]")),
    "gemma": (_GEMMA, ("<start_of_turn>", "<end_of_turn>")),
    "phi3": (_PHI3, ("<|end|>", "<|user|>", "<|assistant|>")),
    "alpaca": (_ALPACA, ("### Instruction:", "### Response:")),
    "vicuna": (_VICUNA, ("USER:", "ASSISTANT:")),
}


@dataclass
class Modelfile:
    text: str
    template: str | None
    """the named template whose Go translation is the ``TEMPLATE``; None when the run's was not translated"""
    stops: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _render(tokenizer, template: str, messages: list[dict]) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                             add_generation_prompt=True)
    except Exception:  # a template that refuses a probe (no system role, say) is simply not that one
        return None


def identify(tokenizer, chat_template: str | None) -> str | None:
    """The named template that renders every probe conversation exactly as ``chat_template`` does."""
    from finetty.core.model import templates

    if not chat_template:
        return None
    expected = [_render(tokenizer, chat_template, probe) for probe in PROBES]
    if any(text is None for text in expected):
        return None
    for name in GO_TEMPLATES:
        if [_render(tokenizer, templates.TEMPLATES[name], probe) for probe in PROBES] == expected:
            return name
    return None


def _quoted(text: str) -> str:
    """A Modelfile string value (Ollama reads a Go-style double-quoted string)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _eos_literal(eos: str) -> str:
    """The end-of-sequence text inside a Go template: as is, or printed from a string when it holds ``{{``."""
    if "{{" in eos or "}}" in eos:
        return "{{ " + _quoted(eos) + " }}"
    return eos


def modelfile(tokenizer, chat_template: str | None, gguf_name: str) -> Modelfile:
    """The Modelfile for ``gguf_name`` (beside it), with ``chat_template`` (the run's) in Ollama's syntax."""
    name = identify(tokenizer, chat_template)
    eos = tokenizer.eos_token or ""
    lines = ["# Ollama Modelfile written by finetty export --gguf.",
             "# Create and run the model with:  ollama create NAME -f Modelfile  &&  ollama run NAME",
             f"FROM ./{gguf_name}", ""]
    warnings: list[str] = []
    stops: list[str] = []
    if name is not None:
        go, stops = GO_TEMPLATES[name]
        stops = list(stops)
        go = go.replace("EOS_TOKEN", _eos_literal(eos))
        if '"""' in go:
            raise ValueError("the translated template holds a triple quote, which a Modelfile cannot quote")
        lines += [f"# The run's chat template, translated from Jinja ({name} layout; tool calls and Jinja's",
                  "# '| trim' are not carried over).", f'TEMPLATE """{go}"""', ""]
    else:
        reason = ("the run has no chat template" if not chat_template else
                  "the run's chat template is a custom Jinja template that renders differently from every "
                  "template finetty can translate")
        warnings.append(f"{reason}: the Modelfile has no TEMPLATE, so Ollama will guess one from the GGUF's "
                        "tokenizer.chat_template; write a TEMPLATE in Go template syntax by hand if it guesses "
                        "wrong")
        lines += [f"# NOT TRANSLATED: {reason}.", "# This Modelfile has no TEMPLATE: Ollama guesses one from the "
                  "GGUF's tokenizer.chat_template.", "# Write a TEMPLATE (Go text/template over .Messages) by hand "
                  "if it guesses wrong."]
        if chat_template:
            lines.append("# The run's Jinja template, for reference:")
            lines += [f"#   {one_line(line)}" for line in chat_template.splitlines()]
        lines.append("")
    if eos and eos not in stops:
        stops.append(eos)
    lines += [f"PARAMETER stop {_quoted(stop)}" for stop in stops]
    return Modelfile("\n".join(lines) + "\n", name, stops, warnings)
