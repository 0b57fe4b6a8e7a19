"""Datasets: find them, read records with their place, detect the format, validate.

Nothing here imports ``datasets`` or torch: the CLI and the TUI validate with
it before a run exists. The worker loads through ``datasets`` in
:func:`load_records`.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from finetty.core.errors import InputError

BUILTIN = {
    "identity": ("identity.jsonl", "alpaca", "a few dozen questions teaching the model its name and maker"),
    "identity-preference": ("identity-preference.jsonl", "preference",
                            "the identity questions with a chosen and a rejected answer (for dpo)"),
    "tiny-corpus": ("tiny-corpus.txt", "text", "a few paragraphs of plain English (for cpt)"),
}
DATA_SUFFIXES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}


@dataclass
class DataSource:
    """Where a recipe's dataset lives."""

    name: str
    files: list[Path] = field(default_factory=list)
    hub_id: str | None = None
    builtin: bool = False

    @property
    def builder(self) -> str:
        return DATA_SUFFIXES[self.files[0].suffix.lower()] if self.files else "hub"

    def describe(self) -> str:
        if self.hub_id:
            return f"{self.hub_id} (cached hub dataset)"
        return self.name if self.builtin else ", ".join(map(str, self.files))


def _hub_cached(dataset_id: str) -> bool:
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface"))
               / "hub")
    ds_cache = Path(os.environ.get("HF_DATASETS_CACHE")
                    or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "datasets")
    if (hub / f"datasets--{dataset_id.replace('/', '--')}").is_dir():
        return True
    prefix = dataset_id.replace("/", "___")
    return ds_cache.is_dir() and any(p.name.startswith(prefix) for p in ds_cache.iterdir())


def resolve_source(spec: str, base_dir: Path, recipe_file: str | Path | None = None) -> DataSource:
    """Turn a recipe's ``dataset`` value into files or a cached hub id."""
    from finetty.core.data.demo import builtin_data_file

    if spec in BUILTIN:
        return DataSource(spec, [builtin_data_file(BUILTIN[spec][0])], builtin=True)
    path = Path(spec).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.is_file():
        if path.suffix.lower() not in DATA_SUFFIXES:
            raise InputError(path, None, f"is a {path.suffix or 'suffix-less'} file",
                             f"use one of {', '.join(sorted(DATA_SUFFIXES))}")
        return DataSource(spec, [path])
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not files:
            raise InputError(path, None, "holds no data files",
                             "put .jsonl, .json, .csv, .parquet or .txt files in it")
        kinds = {DATA_SUFFIXES[p.suffix.lower()] for p in files}
        if len(kinds) > 1:
            raise InputError(path, None, f"mixes data file types ({', '.join(sorted(kinds))})",
                             "keep one type of file per dataset folder")
        return DataSource(spec, files)
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1 and _hub_cached(spec):
        return DataSource(spec, hub_id=spec)
    raise InputError(recipe_file, "key dataset", f"{spec!r} is not a built-in dataset, a file or folder, "
                     "or a hub dataset in the local cache",
                     f"built-ins: {', '.join(BUILTIN)}; paths are relative to the recipe's folder")


def _fill(record: Any, values: dict) -> Any:
    class Keep(dict):
        def __missing__(self, key):
            return "{" + key + "}"

    if isinstance(record, str):
        return record.format_map(Keep(values))
    if isinstance(record, dict):
        return {k: _fill(v, values) for k, v in record.items()}
    if isinstance(record, list):
        return [_fill(v, values) for v in record]
    return record


def iter_records(source: DataSource, options: dict | None = None) -> Iterator[tuple[Path, str, dict]]:
    """Yield ``(file, place, record)`` for every record, raising InputError at the first unreadable one."""
    if source.hub_id:
        raise InputError(None, "key dataset", "cached hub datasets are read by the worker", None)
    for path in source.files:
        kind = DATA_SUFFIXES[path.suffix.lower()]
        try:
            raw = path.read_bytes()
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise InputError(path, f"line {line}", "is not valid UTF-8", "save the file as UTF-8") from None
        except OSError as exc:
            raise InputError(path, None, f"cannot be read: {exc.strerror}", "check the file's permissions") from None
        if kind == "parquet":
            yield from _parquet_records(path)
            continue
        if not text.strip():
            raise InputError(path, None, "is empty", "add at least one record")
        if kind == "text":
            for number, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    yield path, f"line {number}", {"text": line}
        elif kind == "csv":
            reader = csv.DictReader(text.splitlines())
            for number, row in enumerate(reader, 2):
                if None in row:
                    raise InputError(path, f"line {number}", "has more values than the header has columns",
                                     "quote values that contain commas")
                yield path, f"line {number}", dict(row)
        elif path.suffix.lower() == ".jsonl" or (not text.lstrip().startswith("[")):
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise InputError(path, f"line {number}, column {exc.colno}", f"is not valid JSON: {exc.msg}",
                                     "each line must be one JSON object") from None
                if not isinstance(record, dict):
                    raise InputError(path, f"line {number}", f"holds a JSON {type(record).__name__}",
                                     "each line must be one JSON object")
                yield path, f"line {number}", record
        else:
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise InputError(path, f"line {exc.lineno}, column {exc.colno}", f"is not valid JSON: {exc.msg}",
                                 "a .json dataset is one list of objects") from None
            if not isinstance(data, list) or not data:
                raise InputError(path, None, "is not a non-empty JSON list of records",
                                 "a .json dataset is one list of objects; use .jsonl for one object a line")
            for number, record in enumerate(data):
                if not isinstance(record, dict):
                    raise InputError(path, f"record {number}", f"is a JSON {type(record).__name__}",
                                     "every record must be an object")
                yield path, f"record {number}", record


def _parquet_records(path: Path) -> Iterator[tuple[Path, str, dict]]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:
        raise InputError(path, None, f"is not a readable parquet file ({type(exc).__name__})",
                         "write it again, e.g. with pandas' DataFrame.to_parquet") from None
    for number, record in enumerate(table.to_pylist()):
        yield path, f"row {number}", record


@dataclass
class DataSummary:
    """What validation found: the format, the data kind, how many records."""

    format: str
    kind: str
    records: int
    detected: bool


def detect_format(record: dict, formats: dict) -> Any | None:
    for data_format in formats.values():
        try:
            if data_format.detect(record):
                return data_format
        except Exception:
            continue
    return None


def _format_for(fmt: str, first: dict, formats: dict, where: tuple[Path, str]) -> tuple[Any, bool]:
    if fmt != "auto":
        return formats[fmt], False
    found = detect_format(first, formats)
    if found is None:
        columns = ", ".join(sorted(map(str, first))) or "none"
        known = "; ".join(f"{f.name}: {f.fields}" for f in formats.values() if f.fields)
        raise InputError(where[0], where[1], f"has columns ({columns}) that match no known format",
                         f"expected one of {known}")
    return found, True


def validate_records(source: DataSource, fmt: str, formats: dict, accepts: tuple[str, ...],
                     objective: str, options: dict | None = None, recipe_file: Any = None) -> DataSummary:
    """Read every record and convert it with the chosen format; the first bad one raises InputError."""
    data_format = None
    detected = False
    count = 0
    for path, place, record in iter_records(source):
        if source.builtin:
            record = _fill(record, options or {})
        if data_format is None:
            data_format, detected = _format_for(fmt, record, formats, (path, place))
            if data_format.kind not in accepts:
                raise InputError(path, None, f"is {data_format.name} data ({data_format.kind}), which objective "
                                 f"{objective!r} cannot train on",
                                 f"{objective!r} takes {' or '.join(accepts)} data")
        try:
            data_format.convert(record)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            article = "an" if data_format.name[:1] in "aeiou" else "a"
            raise InputError(path, place, f"{exc}", f"{article} {data_format.name} record has {data_format.fields}"
                             if data_format.fields else f"see what {article} {data_format.name} record holds: "
                             "`finetty plugins`") from None
        count += 1
    if count == 0:
        raise InputError(source.files[0] if source.files else recipe_file, None, "holds no records",
                         "add at least one record")
    return DataSummary(data_format.name, data_format.kind, count, detected)


def load_records(source: DataSource, fmt: str, formats: dict, options: dict | None = None) -> tuple[list, Any]:
    """In the worker: load through ``datasets`` and convert every record. Returns (examples, format)."""
    import datasets

    if source.hub_id:
        table = datasets.load_dataset(source.hub_id, split="train")
    else:
        table = datasets.load_dataset(source.builder, data_files=[str(p) for p in source.files], split="train")
    rows = table.to_list()
    if source.builtin:
        rows = [_fill(r, options or {}) for r in rows]
    rows = [{k: v for k, v in r.items() if v is not None} for r in rows]
    if not rows:
        raise ValueError(f"dataset {source.describe()} holds no records")
    data_format = formats[fmt] if fmt != "auto" else detect_format(rows[0], formats)
    if data_format is None:
        raise ValueError(f"dataset {source.describe()}: columns {sorted(rows[0])} match no known format")
    return [data_format.convert(r) for r in rows], data_format
