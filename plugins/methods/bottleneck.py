"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2020) as plain torch modules.

Each adapter is ``h + up(act(down(h)))`` applied to a sublayer's output, with
``up`` initialised to zero so the untrained model computes exactly what the
base computes. Adapters are attached to every decoder layer as child modules
(``finetty_adapter_attn`` / ``finetty_adapter_mlp``) and run by forward hooks
on the layer's attention and feed-forward blocks, so the base's own module
names and weights stay untouched.

- ``houlsby``: an adapter after the attention block and one after the feed-forward block.
- ``pfeiffer``: one adapter, after the feed-forward block.

Only adapter weights are saved (:data:`WEIGHTS_FILE`, safetensors) with a
small JSON config (:data:`CONFIG_FILE`). This module imports torch; the
plugin module imports it only when a model is being built.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from torch import nn

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
FORMAT = "finetty-bottleneck"
FORMAT_VERSION = 1
PREFIX = "finetty_adapter_"
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
FEED_FORWARD_NAMES = ("mlp", "feed_forward", "ffn")
NON_LINEARITIES = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
PLACEMENTS = {"houlsby": ("attn", "mlp"), "pfeiffer": ("mlp",)}


class Bottleneck(nn.Module):
    """``h + up(act(down(dropout(h))))``; ``up`` starts at zero, so the adapter starts as the identity."""

    def __init__(self, hidden_size: int, bottleneck_size: int, non_linearity: str, dropout: float = 0.0):
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = NON_LINEARITIES[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return hidden
        x = self.dropout(hidden.to(self.down.weight.dtype))
        return hidden + self.up(self.act(self.down(x))).to(hidden.dtype)


def decoder_layers(model: nn.Module) -> list[tuple[nn.Module, nn.Module, nn.Module]]:
    """``(layer, attention, feed_forward)`` for every decoder layer of a transformers causal LM."""
    for module in model.modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        found = []
        for layer in module:
            attention = next((getattr(layer, n) for n in ATTENTION_NAMES if isinstance(getattr(layer, n, None),
                                                                                      nn.Module)), None)
            feed_forward = next((getattr(layer, n) for n in FEED_FORWARD_NAMES if isinstance(getattr(layer, n, None),
                                                                                            nn.Module)), None)
            if attention is None or feed_forward is None:
                break
            found.append((layer, attention, feed_forward))
        else:
            return found
    raise ValueError(f"{type(model).__name__}: no list of decoder layers with attention "
                     f"({'/'.join(ATTENTION_NAMES)}) and feed-forward ({'/'.join(FEED_FORWARD_NAMES)}) blocks")


def _hook(adapter: Bottleneck):
    def run(module, inputs, output):
        if isinstance(output, tuple):
            return (adapter(output[0]),) + tuple(output[1:])
        return adapter(output)

    return run


def _hidden_size(model: nn.Module) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    return int(config.hidden_size)


def attach(model: nn.Module, placement: str, reduction_factor: int, non_linearity: str,
           dropout: float = 0.0) -> dict:
    """Freeze the base and add adapters to every decoder layer; returns the saved config."""
    hidden = _hidden_size(model)
    size = max(1, hidden // reduction_factor)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    layers = decoder_layers(model)
    for layer, attention, feed_forward in layers:
        device = next(feed_forward.parameters()).device
        for where in PLACEMENTS[placement]:
            adapter = Bottleneck(hidden, size, non_linearity, dropout).to(device)
            layer.add_module(PREFIX + where, adapter)
            (attention if where == "attn" else feed_forward).register_forward_hook(_hook(adapter))
    config = {"format": FORMAT, "version": FORMAT_VERSION, "placement": placement,
              "reduction_factor": reduction_factor, "non_linearity": non_linearity, "dropout": dropout,
              "hidden_size": hidden, "bottleneck_size": size, "num_layers": len(layers),
              "base_model_name_or_path": getattr(model.config, "_name_or_path", "")}
    model.finetty_bottleneck_config = config
    return config


def adapters(model: nn.Module) -> list[Bottleneck]:
    return [m for m in model.modules() if isinstance(m, Bottleneck)]


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter weights only, by their names in the model."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if PREFIX in name}


def save(model: nn.Module, folder) -> None:
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = getattr(model, "finetty_bottleneck_config", None)
    if config is None:
        raise ValueError("the model has no bottleneck adapters to save")
    save_file(adapter_state(model), str(folder / WEIGHTS_FILE), metadata={"format": FORMAT})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_config(folder) -> dict:
    path = Path(folder) / CONFIG_FILE
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a finetty bottleneck adapter config")
    if config.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} was written by a newer finetty (format version {config['version']})")
    return config


def restore(model: nn.Module, folder) -> None:
    """Load saved adapter weights into a model that already has the adapters attached."""
    from safetensors.torch import load_file

    tensors = load_file(str(Path(folder) / WEIGHTS_FILE))
    own = dict(model.named_parameters())
    expected = {name for name in own if PREFIX in name}
    if set(tensors) != expected:
        missing, extra = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
        raise ValueError(f"{folder}: adapter weights do not match the model "
                         f"(missing {missing[:3]}, unexpected {extra[:3]})")
    with torch.no_grad():
        for name, tensor in tensors.items():
            own[name].copy_(tensor.to(own[name].dtype))


def load(folder, base: nn.Module) -> nn.Module:
    """Attach the saved adapters to ``base`` and load their weights; returns the model in eval mode."""
    config = read_config(folder)
    attach(base, config["placement"], config["reduction_factor"], config["non_linearity"], config["dropout"])
    restore(base, folder)
    return base.eval()


@contextlib.contextmanager
def disabled(model: nn.Module):
    """Inside, the model computes as its base (every adapter is the identity)."""
    found = adapters(model)
    states = [a.enabled for a in found]
    for adapter in found:
        adapter.enabled = False
    try:
        yield model
    finally:
        for adapter, state in zip(found, states):
            adapter.enabled = state
