"""Named chat templates for the recipe's ``chat_template:`` key, and reading one from a Jinja file.

A base model often ships without a chat template; conversations cannot be
trained on it until the recipe says how turns are laid out. ``chat_template``
takes one of the names below or the path of a Jinja file. The worker sets the
template on the tokenizer before any data is rendered, and the tokenizer is
saved with every checkpoint and with ``final/``, so chat, eval and serve
render prompts exactly as training did.

Every template renders ``messages`` (``system``, ``user``, ``assistant``
and, where the family has one, ``tool`` turns) and honours
``add_generation_prompt``. They render conversation prefixes as prefixes,
which is what finetty's assistant-only loss relies on
(:mod:`finetty.core.data.tokenize`). The layouts follow each family's
published template; where the family has no system turn (mistral, gemma) the
system prompt opens the first user turn, as their own templates do.

Pure Python: validation parses the Jinja with ``jinja2`` (a dependency of
transformers) and imports no torch.
"""

from __future__ import annotations

from pathlib import Path

from finetty.core.errors import InputError

_CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_QWEN2 = (
    "{% if messages and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}" + _CHATML
)

_LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{ '<|start_header_id|>' + role + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

#: mistral and gemma have no system turn: the system prompt opens the first user turn.
_SYSTEM_INTO_FIRST_USER = (
    "{% if messages and messages[0]['role'] == 'system' %}"
    "{% set system = messages[0]['content'] + '\n\n' %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
)

_MISTRAL = (
    "{{ bos_token }}" + _SYSTEM_INTO_FIRST_USER +
    "{% for message in turns %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ '[INST] ' + (system if loop.first else '') + message['content'] + ' [/INST]' }}"
    "{% endif %}"
    "{% endfor %}"
)

_GEMMA = (
    "{{ bos_token }}" + _SYSTEM_INTO_FIRST_USER +
    "{% for message in turns %}"
    "{% set role = 'model' if message['role'] == 'assistant' else 'user' %}"
    "{{ '<start_of_turn>' + role + '\n' + (system if loop.first else '') + message['content'] | trim"
    " + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)

_PHI3 = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_ALPACA = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\n\n' }}"
    "{% set turns = messages[1:] %}"
    "{% else %}{{ 'Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n' }}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% else %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}"
)

_VICUNA = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + ' ' }}"
    "{% set turns = messages[1:] %}"
    "{% else %}{{ 'A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user\\'s questions. ' }}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}"
    "{% if message['role'] == 'assistant' %}{{ 'ASSISTANT: ' + message['content'] + eos_token + ' ' }}"
    "{% else %}{{ 'USER: ' + message['content'] + ' ' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: name -> Jinja source. ``qwen`` is LLaMA-Factory's name for qwen2's layout.
TEMPLATES: dict[str, str] = {
    "chatml": _CHATML, "qwen2": _QWEN2, "qwen": _QWEN2, "llama3": _LLAMA3, "mistral": _MISTRAL,
    "gemma": _GEMMA, "phi3": _PHI3, "alpaca": _ALPACA, "vicuna": _VICUNA,
}


def _environment():
    """A sandboxed Jinja environment that knows transformers' ``{% generation %}`` tag (parsed, not acted on)."""
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.Scope(body, lineno=lineno)

    return ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                         extensions=[Generation, loopcontrols])


def render(template: str, messages: list[dict], add_generation_prompt: bool = False,
           bos_token: str = "", eos_token: str = "") -> str:
    """``template`` rendered the way ``tokenizer.apply_chat_template(..., tokenize=False)`` renders it."""
    return _environment().from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                       bos_token=bos_token, eos_token=eos_token)


def is_named(value: str) -> bool:
    return value in TEMPLATES


def template_path(value: str, base_dir: Path) -> Path:
    """Where a ``chat_template`` that is not a name points (relative to the recipe's folder)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else base_dir / path


def check(value: str, base_dir: Path, source, place: str) -> str:
    """The recipe's ``chat_template`` value resolved (a name, or an absolute path), or an InputError.

    A file must exist, be UTF-8 and parse as Jinja; a syntax error names the
    file and the line.
    """
    if is_named(value):
        return value
    path = template_path(value, base_dir)
    names = ", ".join(sorted(TEMPLATES))
    if not path.is_file():
        if "/" not in value and "." not in value:
            from finetty.core.plugin.options import nearest

            close = nearest(value, list(TEMPLATES))
            raise InputError(source, place, f"{value!r} is not a named chat template or a Jinja file",
                             f"did you mean {close!r}?" if close else f"names: {names}; or a path to a .jinja file")
        raise InputError(source, place, f"{value!r} is not a named chat template and no such file exists",
                         f"names: {names}; a file path is relative to the recipe's folder")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, None, f"cannot be read as UTF-8 text ({exc})", "save the template as UTF-8") from None
    from jinja2 import TemplateSyntaxError

    try:
        _environment().parse(text)
    except TemplateSyntaxError as exc:
        raise InputError(path, f"line {exc.lineno}", f"is not a valid Jinja template: {exc.message}",
                         "fix the template there; transformers renders it with Jinja2") from None
    return str(path.resolve())


def source_of(value: str) -> str:
    """The Jinja text of a resolved ``chat_template`` value (a name, or a file path)."""
    if is_named(value):
        return TEMPLATES[value]
    return Path(value).read_text(encoding="utf-8")
