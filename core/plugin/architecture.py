"""A decoder's shapes read from its config.json, and what a plugin tells the memory estimate.

The estimate (:mod:`finetty.core.memory.estimate`) never loads weights: it
walks these shapes. Methods and quantizers describe their own cost against
them (``Method.trainable``, ``Quantizer.stored``), so a third-party plugin is
estimated the way a built-in is; that is why the shapes live in the plugin room
(plugins import them through :mod:`finetty.core.plugin_api`) and not in the
estimate. Pure Python: no torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

#: ``base``: the parameter has the base model's compute dtype; ``float32``: always four bytes.
TensorDtype = Literal["base", "float32"]


@dataclass(frozen=True)
class Linear:
    """One linear layer of the decoder."""

    name: str
    """full module name as transformers names it, e.g. ``model.layers.3.self_attn.q_proj``"""
    inputs: int
    outputs: int
    bias: bool


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs from a config.json (Llama-style layout; see ``known_layout``)."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    fused: bool = False  # phi3: qkv_proj and gate_up_proj
    known_layout: bool = True
    """False when the config's model_type is not one whose module layout is known exactly"""

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Architecture:
        text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
        assert isinstance(text, dict)
        model_type = str(config.get("model_type", "unknown"))
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        head_dim = text.get("head_dim") or hidden // heads
        attention_bias = bool(text.get("attention_bias", False))
        return cls(
            model_type=model_type, hidden=hidden, intermediate=int(text.get("intermediate_size") or 4 * hidden),
            layers=int(text["num_hidden_layers"]), heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads), head_dim=int(head_dim),
            vocab=int(text["vocab_size"]),
            tied=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            qkv_bias=attention_bias or model_type == "qwen2", o_bias=attention_bias,
            mlp_bias=bool(text.get("mlp_bias", False)), qk_norm=model_type in ("qwen3", "olmo2"),
            fused=model_type == "phi3",
            known_layout=model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "phi3", "olmo2"),
        )

    def linears(self) -> list[Linear]:
        """Every linear layer of the decoder (lm_head excluded), named as transformers names them."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        found = []
        for n in range(self.layers):
            attn, mlp = f"model.layers.{n}.self_attn", f"model.layers.{n}.mlp"
            if self.fused:
                found += [Linear(f"{attn}.qkv_proj", h, q + 2 * kv, self.qkv_bias),
                          Linear(f"{attn}.o_proj", q, h, self.o_bias),
                          Linear(f"{mlp}.gate_up_proj", h, 2 * i, self.mlp_bias),
                          Linear(f"{mlp}.down_proj", i, h, self.mlp_bias)]
            else:
                found += [Linear(f"{attn}.q_proj", h, q, self.qkv_bias),
                          Linear(f"{attn}.k_proj", h, kv, self.qkv_bias),
                          Linear(f"{attn}.v_proj", h, kv, self.qkv_bias),
                          Linear(f"{attn}.o_proj", q, h, self.o_bias),
                          Linear(f"{mlp}.gate_proj", h, i, self.mlp_bias),
                          Linear(f"{mlp}.up_proj", h, i, self.mlp_bias),
                          Linear(f"{mlp}.down_proj", i, h, self.mlp_bias)]
        return found

    def norm_tensors(self) -> list[int]:
        """Element counts of every norm weight: two per layer, the final one, and q/k norms where the model has them."""
        found = [self.hidden] * (self.layers * 2 + 1)
        if self.qk_norm:
            found += [self.head_dim] * (self.layers * 2)
        return found

    def other_parameters(self) -> dict[str, int]:
        """Element counts of what is not a decoder linear: embeddings, head, norms."""
        parts = {"model.embed_tokens": self.vocab * self.hidden, "norms": sum(self.norm_tensors())}
        if not self.tied:
            parts["lm_head"] = self.vocab * self.hidden
        return parts

    def parameter_tensors(self) -> list[int]:
        """Element counts of every parameter tensor of the model, one entry per tensor."""
        linears = self.linears()
        found = [x.inputs * x.outputs for x in linears] + [x.outputs for x in linears if x.bias]
        found += [self.vocab * self.hidden] * (1 if self.tied else 2)
        return found + self.norm_tensors()

    def targets(self, target_modules: Any) -> list[Linear]:
        """The linears PEFT adapts for ``target_modules``: ``all-linear``, a regex, or a list of name suffixes."""
        candidates = self.linears() + [Linear("lm_head", self.hidden, self.vocab, False)]
        if target_modules == "all-linear":
            return self.linears()
        if isinstance(target_modules, str):
            return [x for x in candidates if re.fullmatch(target_modules, x.name)]
        wanted = [str(t) for t in target_modules or []]
        return [x for x in candidates if x.name in wanted or any(x.name.endswith("." + t) for t in wanted)]

    @property
    def rotary_buffer_bytes(self) -> int:
        return 2 * (self.head_dim // 2) * 4  # inv_freq and original_inv_freq, float32

    @property
    def parameters(self) -> int:
        return sum(self.parameter_tensors())


@dataclass(frozen=True)
class Trainable:
    """What a method trains, as the estimate counts it: a method's ``trainable(arch, options)`` returns one.

    Gradients and optimizer state follow from the tensors (each gets a
    gradient of its own size, and the optimizer's state per tensor).
    """

    tensors: tuple[tuple[int, TensorDtype], ...]
    """one ``(elements, dtype)`` per trainable tensor"""
    exact: bool = False
    """True when the tensors are exactly the ones the method creates (the tests compare byte for byte)"""
    notes: tuple[str, ...] = ()
    """said under the estimate, e.g. what was approximated"""
    activation_bytes: int = 0
    """bytes per token and decoder layer the method adds to what the backward pass keeps"""

    @property
    def parameters(self) -> int:
        return sum(n for n, _ in self.tensors)


__all__ = ["Architecture", "Linear", "TensorDtype", "Trainable"]
