"""Padding-free packing for supervised fine-tuning.

Tokenized examples are packed into rows of at most ``max_length`` tokens
(best-fit decreasing, deterministic), so a batch of B rows carries about
B x max_length real tokens. The collator flattens a batch into one sequence
with no padding at all and marks where each example starts:

- ``position_ids`` restart at 0 for every example (rotary embeddings see each
  example's own positions);
- ``cu_seq_lens_q/k`` and ``max_length_q/k`` give the example boundaries, as
  transformers' flash-attention path reads them (varlen kernels on a GPU);
- the first label of every example is ignored, so the last token of one
  example never learns to predict the first token of the next (unpacked, the
  first label is never used either: nothing comes before it).

No example attends to another; :func:`packed_path` chooses how, once per run:

- ``varlen``: the model's attention is flash-attention (flash_attention_2/3,
  or a kernels-hub flash kernel) and its kernel is installed. transformers
  hands ``cu_seq_lens`` to flash-attention's varlen kernel, which keeps the
  examples apart itself; the model is left as it is.
- ``split-sdpa``: anything else (sdpa, eager, or a flash implementation whose
  kernel is missing). transformers would build one block-diagonal mask over
  the whole flattened batch and pay for attention across all of it; instead
  :func:`use_packed_attention` switches the model to ``finetty_packed_sdpa``,
  which runs causal sdpa once per example, so attention costs what it costs
  unpacked and the mask is never built.
"""

from __future__ import annotations

import bisect
import importlib.util

IGNORE = -100
ATTENTION = "finetty_packed_sdpa"
#: Implementations that read packed boundaries themselves, and the module each one's kernel comes from.
NATIVE = {"flash_attention_2": "flash_attn", "flash_attention_3": "flash_attn_interface",
          "flash_attention_4": "flash_attn"}
VARLEN, SPLIT_SDPA = "varlen", "split-sdpa"
#: Implementations :func:`use_packed_attention` replaces by :data:`ATTENTION` while training.
REPLACED = ("sdpa", "eager")


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices grouped into rows of total length at most ``capacity`` (best-fit decreasing).

    Each row keeps its examples in ascending index order; rows come out in
    the order they were opened (longest examples first). Deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row number), sorted
    for index in order:
        size = lengths[index]
        if size > capacity:
            raise ValueError(f"example {index} has {size} tokens, more than a row holds ({capacity})")
        at = bisect.bisect_left(free, (size, -1))
        if at < len(free):
            room, row = free.pop(at)
        else:
            room, row = capacity, len(rows)
            rows.append([])
        rows[row].append(index)
        if room - size > 0:
            bisect.insort(free, (room - size, row))
    return [sorted(row) for row in rows]


def pack_examples(rows: list[dict], capacity: int) -> list[dict]:
    """Tokenized examples (``input_ids``, ``labels``) packed into rows with restarting ``position_ids``."""
    packed = []
    for group in pack_rows([len(r["input_ids"]) for r in rows], capacity):
        input_ids, labels, position_ids = [], [], []
        for index in group:
            ids = rows[index]["input_ids"]
            input_ids.extend(ids)
            labels.append(IGNORE)
            labels.extend(rows[index]["labels"][1:])
            position_ids.extend(range(len(ids)))
        packed.append({"input_ids": input_ids, "labels": labels, "position_ids": position_ids})
    return packed


class PackedCollator:
    """Flattens packed rows into one padding-free sequence with example boundaries."""

    def __call__(self, features: list[dict]) -> dict:
        import torch

        input_ids, labels, positions, starts = [], [], [], [0]
        for f in features:
            input_ids.extend(f["input_ids"])
            labels.extend(f["labels"])
            positions.extend(f["position_ids"])
        for i, p in enumerate(positions[1:], 1):
            if p == 0:
                starts.append(i)
        starts.append(len(positions))
        longest = max(b - a for a, b in zip(starts, starts[1:]))
        cu = torch.tensor(starts, dtype=torch.int32)
        return {"input_ids": torch.tensor([input_ids], dtype=torch.long),
                "labels": torch.tensor([labels], dtype=torch.long),
                "position_ids": torch.tensor([positions], dtype=torch.long),
                "cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": longest, "max_length_k": longest}


def packed_sdpa_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                        cu_seq_lens_q=None, is_causal=None, **kwargs):
    """Attention for a flattened packed batch: causal sdpa within each example, nothing across.

    Without ``cu_seq_lens_q`` (an unpacked batch) this is transformers' sdpa.
    Shapes as transformers' attention functions: query ``[1, heads, tokens,
    dim]`` in, ``([1, tokens, heads, dim], None)`` out.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    PACKED_CALLS.append(int(cu_seq_lens_q.numel()) - 1)
    if len(PACKED_CALLS) > 64:
        del PACKED_CALLS[:-1]
    gqa = query.shape[1] != key.shape[1]  # grouped key/value heads: sdpa shares them without copying them
    bounds = cu_seq_lens_q.tolist()
    sizes = [b - a for a, b in zip(bounds, bounds[1:])]
    dropout = dropout if module.training else 0.0
    # split, not one slice per example: its backward is a single concatenation, where each slice's backward
    # would write its gradient into a zeroed tensor the size of the whole batch
    outputs = [torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling,
                                                                is_causal=True, enable_gqa=gqa)
               for q, k, v in zip(query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2))]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


#: Example counts of the recent packed attention calls (how :func:`check_boundaries_seen` knows they arrived).
PACKED_CALLS: list[int] = []


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION, packed_sdpa_forward)


def flash_kernel_present(implementation: str) -> bool:
    """True when ``implementation`` is a flash-attention whose kernel is installed (looked up, not imported).

    A kernels-hub flash kernel (``kernels-community/flash-attn2``) was fetched
    when the model loaded with it, so the kernels package is all it needs.
    """
    module = NATIVE.get(implementation) or ("kernels" if "/" in implementation and "flash" in implementation
                                            else None)
    return module is not None and _found(module)


def _found(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def packed_path(implementation: str | None) -> str:
    """How packed examples are kept apart under ``implementation``: :data:`VARLEN` or :data:`SPLIT_SDPA`.

    Raises ValueError for an attention that does neither (a custom kernel that reads no boundaries).
    """
    if implementation == ATTENTION or implementation in REPLACED:
        return SPLIT_SDPA
    if implementation and "flash" in implementation:
        return VARLEN if flash_kernel_present(implementation) else SPLIT_SDPA
    raise ValueError(f"train.packing needs sdpa, eager or flash attention; this model uses {implementation!r} "
                     f"(set train.packing: false)")


def use_packed_attention(model) -> str | None:
    """Make ``model`` keep packed examples apart; returns the implementation to restore afterwards.

    Raises ValueError when its attention cannot.
    """
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model  # PEFT
    current = getattr(base.config, "_attn_implementation", None)
    if current == ATTENTION or packed_path(current) == VARLEN:
        return None
    _register()
    base.set_attn_implementation(ATTENTION)
    if base.config._attn_implementation != ATTENTION:
        raise ValueError(f"train.packing: {type(base).__name__} cannot switch its attention implementation "
                         f"(set train.packing: false)")
    return current


def check_boundaries_seen(model) -> None:
    """After a packed forward: raise if the model's attention never received the example boundaries."""
    base = model.get_base_model() if callable(getattr(model, "get_base_model", None)) else model
    if getattr(base.config, "_attn_implementation", None) == ATTENTION and not PACKED_CALLS:
        raise ValueError(f"train.packing: {type(base).__name__}'s attention does not receive the packed example "
                         f"boundaries, so examples would attend to each other (set train.packing: false)")
