"""Tokenized datasets cached by content, so a second run with the same inputs skips tokenizing.

The key is a SHA-256 over everything that decides the tokens: the tokenizer
(its full serialized definition, special tokens and chat template), the
normalized records, ``max_length``, ``truncation``, ``train_on``, ``packing``
and the source of finetty's tokenizing code. An entry is one ``.npz`` file
in ``$FINETTY_HOME/cache/tokenized/``: the rows flattened into integer
arrays with offsets, plus the messages tokenizing reported (as JSON text).
No pickle is written or read (``allow_pickle=False``).

Writers write a temporary file in the same folder and rename it into place,
so concurrent runs never see half an entry; the last rename wins and every
writer wrote the same content. An entry that cannot be read is treated as
missing and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

from finetty.core import paths

#: Bump when the layout of an entry changes.
FORMAT = 1
#: Row fields, in the order they are stored.
FIELDS = ("input_ids", "labels", "position_ids")
#: finetty's modules whose code decides the tokens; their source is part of the key.
CODE = ("data/tokenize.py", "train/sft_data.py", "data/packing.py")


def folder() -> Path:
    return paths.home() / "cache" / "tokenized"


def _tokenizer_identity(tokenizer) -> bytes:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    facts = {"class": type(tokenizer).__name__, "special": tokenizer.special_tokens_map,
             "pad": tokenizer.pad_token_id, "eos": tokenizer.eos_token_id,
             "padding_side": getattr(tokenizer, "padding_side", None),
             "template": getattr(tokenizer, "chat_template", None)}
    return definition.encode() + json.dumps(facts, sort_keys=True, default=str).encode()


def _code_identity() -> bytes:
    package = resources.files("finetty.core")
    return b"".join(package.joinpath(*name.split("/")).read_bytes() for name in CODE)


def key(tokenizer, records: list, *, max_length: int, truncation: str, train_on: str, packing: bool) -> str:
    """The cache key of tokenizing ``records`` with these settings (hex SHA-256)."""
    digest = hashlib.sha256()
    digest.update(f"finetty-tokenized-v{FORMAT}\n".encode())
    digest.update(_code_identity())
    digest.update(_tokenizer_identity(tokenizer))
    digest.update(json.dumps({"max_length": max_length, "truncation": truncation, "train_on": train_on,
                              "packing": bool(packing)}, sort_keys=True).encode())
    for record in records:
        digest.update(json.dumps(record, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def path_for(cache_key: str) -> Path:
    return folder() / f"{cache_key}.npz"


def load(cache_key: str) -> tuple[list[dict], list[str]] | None:
    """``(rows, reports)`` stored under ``cache_key``, or None when there is no readable entry."""
    import numpy as np

    path = path_for(cache_key)
    try:
        with np.load(path, allow_pickle=False) as entry:
            meta = json.loads(str(entry["meta"]))
            if meta.get("format") != FORMAT:
                return None
            offsets = entry["offsets"].tolist()
            columns = {name: entry[name].tolist() for name in meta["fields"]}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    rows = [{name: values[a:b] for name, values in columns.items()} for a, b in zip(offsets, offsets[1:])]
    return rows, list(meta["reports"])


def save(cache_key: str, rows: list[dict], reports: list[str]) -> Path | None:
    """Store ``rows`` (dicts of equal-length int lists) under ``cache_key``; None if the cache is not writable."""
    import numpy as np

    fields = [name for name in FIELDS if rows and name in rows[0]]
    lengths = [len(row["input_ids"]) for row in rows]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    arrays = {name: np.fromiter((v for row in rows for v in row[name]), dtype=np.int32, count=int(offsets[-1]))
              for name in fields}
    meta = json.dumps({"format": FORMAT, "fields": fields, "reports": list(reports), "rows": len(rows)})
    target = path_for(cache_key)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{cache_key[:16]}.", suffix=".partial", dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as out:
                np.savez(out, meta=np.array(meta), offsets=offsets, **arrays)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError:
        return None
    return target
