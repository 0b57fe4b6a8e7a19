"""Datasets: find them, read records with their place, map columns, detect the format, convert, mix.

One reader (:func:`read_data`) serves recipe validation, ``finetty data``, the
app's preview and the worker, so the data that was validated is the data that
trains. Local files are read here, record by record with their place (line,
record, row), without ``datasets`` or torch; only a cached hub dataset is read
through ``datasets``, in the worker. Every column of every record ends up
used, mapped, ignored (and reported) or refused: nothing is dropped in silence.
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from finetty.core.errors import InputError
from finetty.core.plugin.api import DATA_KINDS
from finetty.core.plugin.options import Option, nearest, resolve_options

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
            return f"{self.hub_id} (hub dataset)"
        return self.name if self.builtin else ", ".join(map(str, self.files))


def _datasets_cached(dataset_id: str) -> bool:
    """Whether the ``datasets`` library holds ``dataset_id`` already prepared (its own cache, not the hub's)."""
    ds_cache = Path(os.environ.get("HF_DATASETS_CACHE")
                    or Path(os.environ.get("HF_HOME", Path.home() / ".cache/huggingface")) / "datasets")
    prefix = dataset_id.replace("/", "___")
    return ds_cache.is_dir() and any(p.name.startswith(prefix) for p in ds_cache.iterdir())


def _hub_source(spec: str, recipe_file, place: str, subset: str | None, split: str | None) -> DataSource | None:
    """A hub dataset (``org/name``, ``org/name@revision``) from the hub cache: its data files for the subset
    and split, read by finetty's own readers like any local file; None when ``spec`` is no hub id."""
    from finetty.core.data import hub

    parsed = hub.parse_id(spec)
    if parsed is None:
        return None
    snapshot = hub.cached(hub.HubRef("dataset", *parsed))  # (the cache only: validation never waits on the network)
    if snapshot is None:
        if (subset, split) == (None, None) and _datasets_cached(parsed[0]):
            return DataSource(spec, hub_id=spec)  # prepared by `datasets` earlier: the worker reads it with it
        why = (", and HF_HUB_OFFLINE is set, so it cannot be downloaded" if hub.offline() else
               " yet")
        raise InputError(recipe_file, place, f"{spec!r} is not a built-in dataset, a file or folder, and not "
                         f"in the local Hugging Face cache{why}",
                         (f"unset HF_HUB_OFFLINE and run `finetty pull --dataset {spec}`" if hub.offline() else
                          f"`finetty train` downloads it before the run starts, or run `finetty pull --dataset "
                          f"{spec}`") + f"; built-ins: {', '.join(BUILTIN)}; paths are relative to the recipe's folder")
    files = hub.dataset_files(snapshot, DATA_SUFFIXES, subset, split or "train")
    if not files:
        raise InputError(recipe_file, place, f"hub dataset {spec!r} has no data files for "
                         + (f"subset {subset!r}, " if subset else "") + f"split {split or 'train'!r}",
                         "name a subset (a folder of the repository) and a split its file names carry, "
                         "for example {path: " + spec + ", subset: default, split: train}")
    kinds = {DATA_SUFFIXES[p.suffix.lower()] for p in files}
    if len(kinds) > 1:
        raise InputError(recipe_file, place, f"hub dataset {spec!r} mixes data file types ({', '.join(sorted(kinds))})",
                         "name a subset that holds one type of file")
    return DataSource(spec, files, hub_id=spec)


def resolve_source(spec: str, base_dir: Path, recipe_file: str | Path | None = None,
                   place: str = "key dataset", subset: str | None = None, split: str | None = None) -> DataSource:
    """Turn a recipe's ``dataset`` value into files: built-in, local, or a hub dataset's files in the hub cache."""
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
    found = _hub_source(spec, recipe_file, place, subset, split)
    if found is not None:
        return found
    raise InputError(recipe_file, place, f"{spec!r} is not a built-in dataset, a file or folder, "
                     "or a hub dataset in the local cache",
                     f"built-ins: {', '.join(BUILTIN)}; paths are relative to the recipe's folder")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(number, line)`` read as they are needed, so a file larger than memory can be streamed."""
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(path, None, f"cannot be read: {exc.strerror}", "check the file's permissions") from None
    with handle:
        for number, raw in enumerate(handle, 1):
            try:
                yield number, raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise InputError(path, f"line {number}", "is not valid UTF-8", "save the file as UTF-8") from None


def _starts_with_bracket(path: Path) -> bool:
    """Whether a .json file is one JSON list (read whole) rather than JSON lines (read line by line)."""
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(4096):
                stripped = chunk.lstrip()
                if stripped:
                    return stripped.startswith(b"[")
    except OSError as exc:
        raise InputError(path, None, f"cannot be read: {exc.strerror}", "check the file's permissions") from None
    return False


def _utf8_error_line(path: Path) -> int:
    """The first line of ``path`` that is not valid UTF-8 (a multi-byte character never spans a newline)."""
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 1


def _text_chunks(path: Path, size: int = 1 << 20) -> Iterator[str]:
    """``path`` as UTF-8 text, a chunk at a time (a character split between two reads is kept whole)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise InputError(path, None, f"cannot be read: {exc.strerror}", "check the file's permissions") from None
    with handle:
        while True:
            raw = handle.read(size)
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError:
                raise InputError(path, f"line {_utf8_error_line(path)}", "is not valid UTF-8",
                                 "save the file as UTF-8") from None
            if text:
                yield text
            if not raw:
                return


class _JsonList:
    """The records of a .json list, decoded one at a time from a sliding window of the file.

    ``json.loads`` of the whole file held it all (text and objects) in memory;
    here only the record being decoded and what follows it in the last read
    are held, so a list larger than memory streams like JSON lines do, with
    the same places (``record N``, and line and column for bad JSON).
    """

    def __init__(self, path: Path):
        self.path, self.chunks, self.decoder = path, _text_chunks(path), json.JSONDecoder()
        self.buf, self.pos, self.eof = "", 0, False
        self.base = 0          # offset in the file of buf[0]
        self.lines = 0         # newlines before buf[0]
        self.line_start = 0    # offset in the file where the line holding buf[0] starts

    def _fill(self) -> bool:
        """Read more of the file behind what is left to decode; False at its end."""
        if self.eof:
            return False
        chunk = next(self.chunks, None)
        if chunk is None:
            self.eof = True
            return False
        cut = self.pos
        newline = self.buf.rfind("\n", 0, cut)
        if newline >= 0:
            self.lines += self.buf.count("\n", 0, cut)
            self.line_start = self.base + newline + 1
        self.buf, self.pos, self.base = self.buf[cut:] + chunk, 0, self.base + cut
        return True

    def _where(self, at: int) -> str:
        newline = self.buf.rfind("\n", 0, at)
        line = self.lines + self.buf.count("\n", 0, at) + 1
        column = at - newline if newline >= 0 else self.base + at - self.line_start + 1
        return f"line {line}, column {column}"

    def _next_char(self) -> str:
        """The next character that is not white space ('' at the end of the file), left unread."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf) or not self._fill():
                return self.buf[self.pos: self.pos + 1]

    def _bad(self, message: str, at: int | None = None):
        return InputError(self.path, self._where(self.pos if at is None else at), f"is not valid JSON: {message}",
                          "a .json dataset is one list of objects")

    def __iter__(self) -> Iterator[tuple[Path, str, dict]]:
        if self._next_char() != "[":
            raise InputError(self.path, None, "is not a non-empty JSON list of records",
                             "a .json dataset is one list of objects; use .jsonl for one object a line")
        self.pos += 1
        if self._next_char() == "]":
            raise InputError(self.path, None, "is not a non-empty JSON list of records",
                             "a .json dataset is one list of objects; use .jsonl for one object a line")
        number = 0
        while True:
            if not self._next_char():
                raise self._bad("Expecting value")
            while True:
                try:
                    record, end = self.decoder.raw_decode(self.buf, self.pos)
                    break
                except json.JSONDecodeError as exc:
                    if not self._fill():  # (a record cut by the end of a read decodes once the rest is read)
                        raise self._bad(exc.msg, exc.pos) from None
            if not isinstance(record, dict):
                raise InputError(self.path, f"record {number}", f"is a JSON {type(record).__name__}",
                                 "every record must be an object")
            self.pos = end
            yield self.path, f"record {number}", record
            number += 1
            following = self._next_char()
            if following == "]":
                self.pos += 1
                if self._next_char():
                    raise self._bad("Extra data")
                return
            if following != ",":
                raise self._bad("Expecting ',' delimiter")
            self.pos += 1


def _parquet_records(path: Path) -> Iterator[tuple[Path, str, dict]]:
    """A parquet file's rows, a batch at a time (``iter_batches``: never the whole table in memory)."""
    def unreadable(exc):
        return InputError(path, None, f"is not a readable parquet file ({type(exc).__name__})",
                          "write it again, e.g. with pandas' DataFrame.to_parquet")

    try:
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=1024)
    except Exception as exc:
        raise unreadable(exc) from None
    number = 0
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:
            raise unreadable(exc) from None
        if batch is None:
            return
        for record in batch.to_pylist():
            yield path, f"row {number}", record
            number += 1


def _line_records(path: Path, kind: str) -> Iterator[tuple[Path, str, dict]]:
    """Text, CSV and JSON-lines records, one line at a time."""
    seen = False
    lines = _lines(path)
    if kind == "csv":
        numbers: list[int] = []
        filled: list[bool] = []

        def texts():
            for number, line in lines:
                numbers.append(number)
                if not filled and line.strip():
                    filled.append(True)
                yield line

        for row in csv.DictReader(texts()):
            if None in row:
                raise InputError(path, f"line {numbers[-1]}", "has more values than the header has columns",
                                 "quote values that contain commas")
            yield path, f"line {numbers[-1]}", dict(row)
        seen = bool(filled)
    else:
        for number, line in lines:
            if not line.strip():
                continue
            seen = True
            if kind == "text":
                yield path, f"line {number}", {"text": line}
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
    if not seen:
        raise InputError(path, None, "is empty", "add at least one record")


def iter_records(source: DataSource, options: dict | None = None) -> Iterator[tuple[Path, str, dict]]:
    """Yield ``(file, place, record)`` for every record, raising InputError at the first unreadable one.

    Every kind is read as it is consumed, so a dataset larger than memory
    streams (``data_options.streaming``) through this same reader: text, CSV
    and JSON lines a line at a time, a .json list a record at a time, parquet
    a batch of rows at a time.
    """
    if source.hub_id and not source.files:
        raise InputError(None, "key dataset", "datasets prepared by the datasets library are read by the worker",
                         None)
    for path in source.files:
        kind = DATA_SUFFIXES[path.suffix.lower()]
        if kind == "parquet":
            yield from _parquet_records(path)
        elif kind == "json" and path.suffix.lower() == ".json" and _starts_with_bracket(path):
            yield from _JsonList(path)
        else:
            yield from _line_records(path, kind)


def _hub_records(source: DataSource) -> Iterator[tuple[Path, str, dict]]:
    """A cached hub dataset's rows through ``datasets`` (the worker's side: validation skips hub data)."""
    import datasets

    for number, record in enumerate(datasets.load_dataset(source.hub_id, split="train")):
        yield Path(source.hub_id), f"row {number}", record


# -- what a recipe's `dataset` names -----------------------------------------------------------------

#: LLaMA-Factory's column names (``dataset_info.json`` ``columns``) -> the fields finetty's formats read,
#: for its two layouts. A file's own column is renamed to the field before a format sees the record.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "tools": "tools", "chosen": "chosen", "rejected": "rejected",
                  "kto_tag": "kto_tag", "images": "images", "videos": "videos", "audios": "audios"}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system", "tools": "tools", "chosen": "chosen",
                    "rejected": "rejected", "kto_tag": "kto_tag", "images": "images", "videos": "videos",
                    "audios": "audios"}
#: LLaMA-Factory's ``tags``: which keys of a turn hold the role and the text, and what each role is called.
TAG_KEYS = {"role_tag": "from", "content_tag": "value"}
ROLE_TAGS = {"user_tag": "human", "assistant_tag": "gpt", "observation_tag": "observation",
             "function_tag": "function_call", "system_tag": "system"}
#: Columns whose meaning finetty knows and a text format cannot honour: training without them is not
#: the training the data asks for, so they are refused unless a format reads them or the recipe drops them.
REFUSED_COLUMNS = {"images": "holds images", "videos": "holds videos", "audios": "holds audio"}
KTO_COLUMNS = ("label", "kto_tag")
ENTRY_KEYS = {"path": "a file, folder, built-in name, hub id (org/name[@revision]) or dataset_info.json#name",
              "format": "auto or a data format's name", "formatting": "LLaMA-Factory's alpaca or sharegpt",
              "columns": "LLaMA-Factory's column mapping", "tags": "LLaMA-Factory's role and content tags",
              "ranking": "true: chosen/rejected pairs", "weight": "its share of the mixture",
              "samples": "how many examples to take from it", "system": "a default system prompt",
              "ignore_columns": "columns dropped on purpose",
              "subset": "a hub dataset's subset (a folder of its repository)",
              "split": "a hub dataset's split (default train)"}
#: The recipe's ``data_options``: one declaration for the validator (:func:`check_data_options`),
#: ``finetty plugins --options`` and the app.
DATA_OPTIONS = (
    Option("ignore_columns", "list", [], "columns dropped on purpose, in every dataset"),
    Option("system", "str", None, "the system prompt of conversations that have none", nullable=True),
    Option("seed", "int", None, "the seed that samples mixtures (default: train.seed)", nullable=True),
    Option("streaming", "bool", False, "read the data as training goes, for data larger than memory "
           "(needs train.max_steps)"),
    Option("fill", "bool|list", True, "which of the data's {{name}} / {name} fields dataset_options fill: "
           "true: every one (a {{name}} without a value is refused); false: none, the data's braces "
           "(Jinja, templates) train as written; [name, author]: only those"),
)
#: The kinds of data ``data_options.streaming`` reads as training goes (sft and cpt take them as they come;
#: the preference trainers want the whole set).
STREAMED_KINDS = ("conversation", "text")
#: With streaming, validation and `finetty data` read this many records of each dataset.
STREAM_HEAD = 1000


@dataclass
class DataEntry:
    """One dataset of a recipe, with how to read it."""

    source: DataSource
    format: str = "auto"
    formatting: str = "alpaca"
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    ranking: bool = False
    weight: float | None = None
    samples: int | None = None
    system: str | None = None
    ignore_columns: tuple = ()
    place: str = "key dataset"

    def rename(self) -> dict:
        """The file's column -> the field a format reads."""
        table = SHAREGPT_COLUMNS if self.formatting == "sharegpt" else ALPACA_COLUMNS
        return {column: table[name] for name, column in self.columns.items() if table[name] != column}


def _info_entry(spec: str, base_dir: Path, recipe_file, place: str) -> dict:
    """``path/dataset_info.json#name``: that entry of a LLaMA-Factory dataset list, as a finetty entry."""
    info_name, _, name = spec.rpartition("#")
    info = Path(info_name).expanduser()
    info = info if info.is_absolute() else base_dir / info
    try:
        table = json.loads(info.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(recipe_file, place, f"{info_name!r} does not exist",
                         "give the path of a dataset_info.json, relative to the recipe's folder") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(info, None, f"is not valid JSON ({exc})", "a dataset_info.json is one JSON object") from None
    if not isinstance(table, dict) or not isinstance(table.get(name), dict):
        names = ", ".join(sorted(table)) if isinstance(table, dict) else "none"
        close = nearest(name, list(table)) if isinstance(table, dict) else None
        raise InputError(info, f"key {name}", "is not a dataset in it",
                         f"did you mean {close!r}?" if close else f"its datasets: {names}")
    entry = table[name]
    if "file_name" not in entry:
        other = next((k for k in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url") if k in entry), None)
        raise InputError(info, f"key {name}", "names no local file_name" + (f" (it has {other})" if other else ""),
                         "download the data and set file_name, or give the cached hub id as dataset:")
    known = {"file_name", "formatting", "ranking", "columns", "tags", "split", "num_samples", "subset", "folder"}
    unknown = sorted(set(entry) - known)
    if unknown:
        raise InputError(info, f"key {name}.{unknown[0]}", "is not something finetty reads from dataset_info.json",
                         f"finetty reads {', '.join(sorted(known - {'split', 'subset', 'folder'}))}")
    out = {"path": str(info.parent / entry["file_name"]), "formatting": entry.get("formatting", "alpaca"),
           "ranking": entry.get("ranking", False), "columns": entry.get("columns") or {},
           "tags": entry.get("tags") or {}}
    if entry.get("num_samples"):
        out["samples"] = entry["num_samples"]
    return out


def _entry(value: Any, base_dir: Path, recipe_file, place: str) -> DataEntry:
    if isinstance(value, str):
        value = {"path": value}
    if not isinstance(value, dict):
        raise InputError(recipe_file, place, f"must be a dataset name or path, or a mapping with path:, not "
                         f"{type(value).__name__}", "for example dataset: data.jsonl")
    unknown = [k for k in value if k not in ENTRY_KEYS]
    if unknown:
        close = nearest(str(unknown[0]), list(ENTRY_KEYS))
        raise InputError(recipe_file, f"{place}.{unknown[0]}", f"{unknown[0]!r} is not a dataset key",
                         f"did you mean {close!r}?" if close else f"keys: {', '.join(ENTRY_KEYS)}")
    path = value.get("path")
    if not isinstance(path, str) or not path.strip():
        raise InputError(recipe_file, f"{place}.path", "is missing", "name the dataset's file, folder or built-in")
    if "#" in path:
        value = {**_info_entry(path.strip(), base_dir, recipe_file, place),
                 **{k: v for k, v in value.items() if k != "path"}}
        path = value["path"]
    for key in ("subset", "split"):
        if value.get(key) is not None and not isinstance(value[key], str):
            raise InputError(recipe_file, f"{place}.{key}", f"{key} {value[key]!r} is not a name", ENTRY_KEYS[key])
    entry = DataEntry(resolve_source(path.strip(), base_dir, recipe_file, place, value.get("subset"),
                                     value.get("split")), place=place)
    checks = {"format": str, "formatting": str, "columns": dict, "tags": dict, "ranking": bool,
              "weight": (int, float), "samples": int, "system": str, "ignore_columns": list}
    for key, kind in checks.items():
        given = value.get(key)
        if given is not None and (not isinstance(given, kind) or (isinstance(given, bool) and kind != bool)):
            what = kind.__name__ if isinstance(kind, type) else "a number"
            raise InputError(recipe_file, f"{place}.{key}", f"{key} {given!r} is not {what}", ENTRY_KEYS[key])
    if value.get("formatting", "alpaca") not in ("alpaca", "sharegpt"):
        raise InputError(recipe_file, f"{place}.formatting", f"{value['formatting']!r} is not alpaca or sharegpt",
                         "LLaMA-Factory's two layouts; finetty's own format names go under format:")
    formatting = value.get("formatting") or ("sharegpt" if "messages" in value.get("columns", {})
                                             or value.get("tags") else "alpaca")
    table = SHAREGPT_COLUMNS if formatting == "sharegpt" else ALPACA_COLUMNS
    for name in value.get("columns", {}):
        if name not in table:
            close = nearest(str(name), list(table))
            raise InputError(recipe_file, f"{place}.columns.{name}", f"{name!r} is not one of the {formatting} column names",
                             f"did you mean {close!r}?" if close else f"{formatting} columns: {', '.join(table)}")
    for name in value.get("tags", {}):
        if name not in TAG_KEYS and name not in ROLE_TAGS:
            close = nearest(str(name), list(TAG_KEYS) + list(ROLE_TAGS))
            raise InputError(recipe_file, f"{place}.tags.{name}", f"{name!r} is not a tag name",
                             f"did you mean {close!r}?" if close else f"tags: {', '.join([*TAG_KEYS, *ROLE_TAGS])}")
    if value.get("weight") is not None and not value["weight"] > 0:
        raise InputError(recipe_file, f"{place}.weight", f"weight {value['weight']} is not above 0",
                         "a weight is a positive share, for example 1 or 0.5")
    if value.get("samples") is not None and value["samples"] < 1:
        raise InputError(recipe_file, f"{place}.samples", f"samples {value['samples']} is below 1",
                         "how many examples to take from this dataset")
    entry.format = value.get("format", "auto")
    if value.get("ranking") and entry.format == "auto":
        entry.format = "preference"
    entry.formatting, entry.columns, entry.tags = formatting, dict(value.get("columns", {})), dict(value.get("tags", {}))
    entry.ranking, entry.weight, entry.samples = bool(value.get("ranking")), value.get("weight"), value.get("samples")
    entry.system, entry.ignore_columns = value.get("system"), tuple(value.get("ignore_columns") or ())
    return entry


def parse_dataset(value: Any, base_dir: Path, recipe_file=None, place: str = "key dataset") -> list[DataEntry]:
    """A recipe's ``dataset``: a name or path, a mapping with ``path:`` and how to read it, or a list of those.

    ``place`` is where ``dataset`` is in the recipe (``line 3, key dataset``).
    """
    if isinstance(value, list):
        if not value:
            raise InputError(recipe_file, place, "is an empty list", "name at least one dataset")
        return [_entry(item, base_dir, recipe_file, f"{place}[{i}]") for i, item in enumerate(value)]
    return [_entry(value, base_dir, recipe_file, place)]


def resolved_dataset(value: Any, base_dir: Path) -> Any:
    """The recipe's ``dataset`` with every path made absolute, so the worker reads it from its run directory."""
    def absolute(spec: str) -> str:
        head, hash_, name = spec.partition("#")
        path = Path(head).expanduser()
        if not path.is_absolute() and (base_dir / path).exists():
            return str((base_dir / path).resolve()) + hash_ + name
        return spec

    if isinstance(value, str):
        return absolute(value.strip())
    if isinstance(value, dict):
        return {**value, "path": absolute(str(value.get("path", "")).strip())}
    return [resolved_dataset(item, base_dir) for item in value]


def check_data_options(value: Any, recipe_file=None) -> dict:
    """The recipe's ``data_options`` checked against :data:`DATA_OPTIONS`; the keys it gives, as given."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(recipe_file, "key data_options", f"must be a mapping, not {type(value).__name__}",
                         "for example data_options: {ignore_columns: [id]}")
    for key, problem, fix in resolve_options(DATA_OPTIONS, value)[1]:
        if problem == "is not a known option":
            raise InputError(recipe_file, f"key data_options.{key}", f"{key!r} is not a data option", fix)
        raise InputError(recipe_file, f"key data_options.{key}", f"{key} {problem}", fix)
    names = value.get("fill")
    if isinstance(names, list):
        bad = next((n for n in names if not isinstance(n, str) or not re.fullmatch(r"[A-Za-z_]\w*", n)), None)
        if bad is not None:
            raise InputError(recipe_file, "key data_options.fill", f"{bad!r} is not a field name",
                             "list names as they appear between the braces, for example [name, author]")
    return dict(value)


# -- reading: one reader for validation, `finetty data`, the preview and the worker ---------------------

_DOUBLE = re.compile(r"\{\{\s*([A-Za-z_]\w*)\s*\}\}")
_SINGLE = re.compile(r"\{([A-Za-z_]\w*)\}")


def fill_fields(value: Any, options: dict, where: tuple, only: bool | list = True) -> Any:
    """``{{name}}`` (LLaMA-Factory's identity.json) and ``{name}`` (finetty's) filled from ``dataset_options``.

    A ``{{name}}`` with no value is refused: trained literally, it would teach
    the model to say "{{name}}". A single-brace ``{name}`` with no value is
    left alone, since braces are common in real text (code, JSON). ``only``
    is ``data_options.fill``: ``False`` fills nothing (data that holds
    Jinja or other templates trains as written), a list fills those names and
    leaves every other brace as it is.
    """
    if only is False:
        return value
    if isinstance(value, str):
        def double(match):
            name = match.group(1)
            if isinstance(only, list) and name not in only:
                return match.group(0)
            if name not in options:
                raise InputError(where[0], where[1], f"holds {{{{{name}}}}}, which dataset_options does not fill",
                                 f"give it a value: dataset_options: {{{name}: ...}}; or, to train the braces as "
                                 "written (Jinja text), data_options: {fill: false}")
            return str(options[name])

        def single(match):
            name = match.group(1)
            wanted = name in options and (not isinstance(only, list) or name in only)
            return str(options[name]) if wanted else match.group(0)

        return _SINGLE.sub(single, _DOUBLE.sub(double, value))
    if isinstance(value, dict):
        return {k: fill_fields(v, options, where, only) for k, v in value.items()}
    if isinstance(value, list):
        return [fill_fields(v, options, where, only) for v in value]
    return value


class _Tracked(dict):
    """A record that remembers which of its columns a format's ``convert`` looked at: those are used."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: set = set()

    def get(self, key, default=None):
        if key in self.keys():
            self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        found = super().__contains__(key)
        if found:
            self.read.add(key)
        return found


def _map_turns(turns: Any, entry: DataEntry) -> Any:
    role_key, content_key = (entry.tags.get(k, v) for k, v in TAG_KEYS.items())
    roles = {entry.tags[k]: v for k, v in ROLE_TAGS.items() if k in entry.tags}

    def one(turn):
        if not isinstance(turn, dict) or role_key not in turn:
            return turn
        return {"from": roles.get(turn[role_key], turn[role_key]), "value": turn.get(content_key)}

    if isinstance(turns, list):
        return [one(t) for t in turns]
    return one(turns)


def _mapped(record: dict, entry: DataEntry) -> tuple[dict, dict]:
    """The record with its columns and tags renamed to the fields formats read; and column -> field."""
    rename = entry.rename()
    out = {rename.get(k, k): v for k, v in record.items()}
    if entry.tags:
        for key in ("conversations", "chosen", "rejected"):
            if key in out:
                out[key] = _map_turns(out[key], entry)
    return out, rename


def _with_default_system(example: Any, kind: str, system: str | None) -> Any:
    if not system:
        return example

    def add(messages: list) -> list:
        return messages if messages and messages[0]["role"] == "system" else \
            [{"role": "system", "content": system}, *messages]

    if kind == "conversation":
        if isinstance(example, dict):
            return {**example, "messages": add(example["messages"])}
        return add(example)
    if kind in ("preference", "kto"):
        return {**example, "prompt": add(example["prompt"])}
    return example


def uses_tools(example: Any) -> bool:
    """Whether a normalized conversation carries tool schemas, tool calls or tool results."""
    if isinstance(example, dict) and "messages" in example:
        return bool(example.get("tools")) or uses_tools(example["messages"])
    if isinstance(example, dict):  # a preference or kto record: the tools are in its prompt
        return uses_tools(example.get("prompt") or [])
    return isinstance(example, list) and any(m.get("tool_calls") or m.get("role") == "tool" for m in example)


@dataclass
class DataResult:
    """What reading found: the examples and everything `finetty data` and the run report about them."""

    format: str
    kind: str
    detected: bool
    why: str
    records: int
    examples: list
    columns: dict = field(default_factory=dict)
    """column -> used, mapped, ignored or refused"""
    carried: dict = field(default_factory=dict)
    """column -> how many records carry it"""
    mapped: dict = field(default_factory=dict)
    """the file's column -> the field it was read as"""
    mixture: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    formats: list = field(default_factory=list)

    @property
    def tools(self) -> bool:
        return any(uses_tools(e) for e in self.examples)

    def warnings(self) -> list[str]:
        """One line per ignored column (with how many records carry it), and the mixture when there is one."""
        lines = [f"column {name!r} is ignored: {self.carried[name]} of {self.records} records carry it "
                 "(map it, or list it in data_options.ignore_columns to drop it on purpose)"
                 for name, fate in self.columns.items() if fate == "ignored"]
        if len(self.mixture) > 1:
            lines.append("mixture: " + ", ".join(f"{m['examples']} examples from {m['dataset']}" for m in self.mixture))
        return lines


def _detect(records: list, formats: dict) -> tuple[Any, str]:
    """The first format (preference and kto first) that claims every one of the first records."""
    sample = records[:20]
    for data_format in formats.values():
        try:
            if all(data_format.detect(r) for _, _, r in sample):
                columns = ", ".join(sorted({k for _, _, r in sample for k in r}))
                return data_format, f"every one of the first {len(sample)} records has its columns ({columns})"
        except Exception:
            continue
    for data_format in formats.values():
        try:
            if data_format.detect(sample[0][2]):
                return data_format, f"the first record has its columns ({', '.join(sorted(sample[0][2]))})"
        except Exception:
            continue
    path, place, first = sample[0]
    columns = ", ".join(sorted(map(str, first))) or "none"
    known = "; ".join(f"{f.name}: {f.fields}" for f in formats.values() if f.fields)
    raise InputError(path, place, f"has columns ({columns}) that match no known format",
                     f"expected one of {known}; or name your columns in the recipe, for example "
                     "dataset: {path: FILE, columns: {prompt: question, response: answer}}")


def _refuse_kind(data_format, accepts, objective: str, objectives: dict, where: tuple, column: str | None):
    able = [name for name, kinds in objectives.items() if data_format.kind in kinds]
    take = f"use objective: {' or '.join(able)}" if able else f"use an objective that takes {data_format.kind} data"
    if data_format.kind == "kto" and column:
        raise InputError(where[0], where[1], f"column {column!r} labels each answer desirable or undesirable "
                         f"(kto data); objective {objective!r} would train the undesirable answers as targets",
                         f"{take}, which trains on the labels, or drop the column on purpose: "
                         f"data_options: {{ignore_columns: [{column}]}}")
    raise InputError(where[0], None, f"is {data_format.name} data ({data_format.kind}), which objective "
                     f"{objective!r} cannot train on", f"{objective!r} takes {' or '.join(accepts)} data; "
                     f"for {data_format.kind} data {take}")


def _raw_rows(entry: DataEntry, ctx: dict, limit: int | None = None) -> Iterator[tuple[Path, str, dict]]:
    """An entry's records with null columns dropped and ``{{name}}`` fields filled (as data_options.fill
    says), as they are read."""
    only = ctx["data_options"].get("fill", True)
    reader = _hub_records(entry.source) if entry.source.hub_id and not entry.source.files else \
        iter_records(entry.source)
    for count, (path, place, record) in enumerate(reader):
        if limit is not None and count >= limit:
            return
        record = {k: v for k, v in record.items() if v is not None}
        yield path, place, fill_fields(record, ctx["options"], (path, place), only)


def _mapped_row(record: dict, entry: DataEntry, ignore: set) -> dict:
    return _mapped({k: v for k, v in record.items() if k not in ignore}, entry)[0]


def _convert(data_format, entry: DataEntry, path: Path, place: str, record: dict, ctx: dict) -> tuple[Any, set]:
    """One mapped record converted by its format; a column the format left unread that cannot be ignored
    (images, a KTO label) is refused here. Returns the example and the columns the format read."""
    rename = entry.rename()
    tracked = _Tracked(record)
    try:
        example = data_format.convert(tracked)
    except (ValueError, TypeError, KeyError, AttributeError, StopIteration) as exc:
        article = "an" if data_format.name[:1] in "aeiou" else "a"
        raise InputError(path, place, f"{exc}", f"{article} {data_format.name} record has {data_format.fields}"
                         if data_format.fields else f"see what {article} {data_format.name} record holds: "
                         "`finetty plugins`") from None
    for column in set(record) - tracked.read:
        original = next((c for c, f in rename.items() if f == column), column)
        if column in REFUSED_COLUMNS:
            raise InputError(path, place, f"column {original!r} {REFUSED_COLUMNS[column]}, which the "
                             f"{data_format.name} format cannot train on: its <{column[:-1]}> markers would train "
                             "as plain text",
                             f"use a data format plugin that reads {column}, or drop the column on purpose: "
                             f"data_options: {{ignore_columns: [{original}]}}")
        if column in KTO_COLUMNS and data_format.kind in ("conversation", "preference"):
            kto = next((f for f in ctx["formats"].values() if f.kind == "kto"), data_format)
            _refuse_kind(kto, ctx["accepts"], ctx["objective"], ctx["objectives"], (path, place), original)
    system = entry.system or ctx["data_options"].get("system")
    return _with_default_system(example, data_format.kind, system), tracked.read


def _read_entry(entry: DataEntry, fmt: str, ctx: dict, recipe_file, limit: int | None) -> DataResult:
    ignore = set(entry.ignore_columns) | set(ctx["data_options"].get("ignore_columns") or ())
    formats = ctx["formats"]
    rows = list(_raw_rows(entry, ctx, limit))
    if not rows:
        raise InputError(entry.source.files[0] if entry.source.files else recipe_file, None, "holds no records",
                         "add at least one record")
    carried: dict = {}
    for _, _, record in rows:
        for column in record:
            carried[column] = carried.get(column, 0) + 1
    mapped_rows = [(path, place, _mapped_row(record, entry, ignore)) for path, place, record in rows]
    rename = entry.rename()
    chosen_format = fmt if entry.format == "auto" else entry.format
    if chosen_format != "auto":
        if chosen_format not in formats:
            close = nearest(chosen_format, list(formats))
            raise InputError(recipe_file, f"{entry.place}.format", f"{chosen_format!r} is not a known data format",
                             f"did you mean {close!r}?" if close else f"auto or one of {', '.join(formats)}")
        data_format, detected, why = formats[chosen_format], False, "given in the recipe"
    else:
        data_format, why = _detect(mapped_rows, formats)
        detected = True
    if entry.ranking and data_format.kind != "preference":
        raise InputError(recipe_file, entry.place, "is marked ranking (chosen/rejected pairs), read as "
                         f"{data_format.name} data", "read it with format: preference")
    if data_format.kind not in ctx["accepts"]:
        label = next((c for c in KTO_COLUMNS if c in mapped_rows[0][2]), None)
        _refuse_kind(data_format, ctx["accepts"], ctx["objective"], ctx["objectives"], mapped_rows[0][:2], label)
    read: set = set()
    examples = []
    for path, place, record in mapped_rows:
        example, seen = _convert(data_format, entry, path, place, record, ctx)
        read |= seen
        examples.append(example)
    fates = {}
    for column in carried:
        if column in ignore:
            fates[column] = "ignored on purpose"
        elif rename.get(column, column) in read:
            fates[column] = "mapped" if column in rename else "used"
        else:
            fates[column] = "ignored"
    return DataResult(data_format.name, data_format.kind, detected, why, len(rows), examples, fates, carried,
                      dict(rename), formats=[data_format])


def _sample(examples: list, count: int, rng) -> list:
    """``count`` examples: whole copies while more are asked than there are, then a seeded sample, in order."""
    whole, rest = divmod(count, len(examples))
    return examples * whole + [examples[i] for i in sorted(rng.sample(range(len(examples)), rest))]


def read_data(entries: list[DataEntry], fmt: str, formats: dict, accepts: tuple, objective: str,
              options: dict | None = None, data_options: dict | None = None, objectives: dict | None = None,
              recipe_file=None, hub: bool = False, seed: int = 42, train: dict | None = None) -> DataResult | None:
    """Read every dataset of a recipe, convert each record, apply the mixture; bad input raises InputError.

    This is the one reader: recipe validation, ``finetty data``, the app's
    preview and the worker all call it, so validated data is the data that
    trains. Cached hub datasets are read through ``datasets`` only with
    ``hub=True`` (the worker); validation skips them (returns None when every
    dataset is one). ``objectives`` (name -> accepted kinds) lets a refusal
    name the objective that would train the data. With ``data_options.streaming``
    only the first :data:`STREAM_HEAD` records of each dataset are read here (the
    worker streams the rest with :func:`stream_examples`); ``train`` (the
    recipe's training settings) is checked for what streaming needs.
    """
    import random

    data_options = data_options or {}
    streaming = bool(data_options.get("streaming"))
    if streaming:
        check_streaming(train or {}, recipe_file)
    ctx = {"formats": formats, "accepts": accepts, "objective": objective, "objectives": objectives or {},
           "options": options or {}, "data_options": data_options}
    results = []
    for entry in entries:
        if entry.source.hub_id and not entry.source.files and not hub:
            continue
        found = _read_entry(entry, fmt, ctx, recipe_file, STREAM_HEAD if streaming else None)
        if streaming and found.kind not in STREAMED_KINDS:
            raise InputError(recipe_file, "key data_options.streaming", f"streams conversations and plain text, "
                             f"and {entry.source.describe()} is {found.kind} data", "drop streaming: true")
        results.append((entry, found))
    if not results:
        return None
    if len(results) == 1 and not results[0][0].samples:
        entry, only = results[0]
        only.mixture = [{"dataset": entry.source.describe(), "format": only.format, "records": only.records,
                         "examples": len(only.examples), "weight": 1.0}]
        return only
    rng = random.Random(data_options.get("seed", seed))
    total = sum(len(r.examples) for _, r in results)
    weights = [e.weight if e.weight is not None else 1.0 for e, _ in results]
    weighted = any(e.weight is not None for e, _ in results)
    examples, mixture, columns, carried, mapped = [], [], {}, {}, {}
    for (entry, found), weight in zip(results, weights):
        if entry.samples:
            count = entry.samples
        elif weighted:
            count = max(1, round(total * weight / sum(weights)))
        else:
            count = len(found.examples)
        taken = _sample(found.examples, count, rng)
        examples += taken
        mixture.append({"dataset": entry.source.describe(), "format": found.format, "records": found.records,
                        "examples": len(taken), "weight": round(weight / sum(weights), 4)})
        for column, fate in found.columns.items():
            columns[column] = fate if columns.get(column) in (None, "ignored") else columns[column]
            carried[column] = carried.get(column, 0) + found.carried[column]
        mapped.update(found.mapped)
    names = list(dict.fromkeys(r.format for _, r in results))
    kinds = list(dict.fromkeys(r.kind for _, r in results))
    return DataResult(" + ".join(names), kinds[0] if len(kinds) == 1 else "mixed", all(r.detected for _, r in results),
                      "; ".join(f"{m['dataset']}: {r.why}" for m, (_, r) in zip(mixture, results)),
                      sum(r.records for _, r in results), examples, columns, carried, mapped, mixture,
                      formats=[f for _, r in results for f in r.formats])


def check_streaming(train: dict, recipe_file=None) -> None:
    """Streaming has no length to count epochs by, no whole set to hold out or pack: say so before a run."""
    if not isinstance(train.get("max_steps"), int) or train.get("max_steps", -1) <= 0:
        raise InputError(recipe_file, "key train.max_steps", "is needed with data_options.streaming: a streamed "
                         "dataset has no length to count epochs by", "set train.max_steps, for example 1000")
    for key, why in (("val_size", "a held-out split"), ("packing", "packing")):
        if train.get(key):
            raise InputError(recipe_file, f"key train.{key}", f"{why} needs the whole dataset, which "
                             "data_options.streaming does not hold", f"drop train.{key} or streaming")


class ExampleStream:
    """The worker's examples under ``data_options.streaming``: each pass reads the files again, record by record.

    Records go through the same mapping, field filling, conversion and
    refusals as :func:`read_data`, with the format it found in each dataset's
    first records. Several datasets are interleaved at random by their weights
    (seeded) until each is read through.
    """

    def __init__(self, entries: list[DataEntry], found: list, ctx: dict, seed: int):
        self.entries, self.found, self.ctx, self.seed, self.passes = entries, found, ctx, seed, 0

    def _one(self, entry: DataEntry, data_format) -> Iterator[Any]:
        ignore = set(entry.ignore_columns) | set(self.ctx["data_options"].get("ignore_columns") or ())
        rows = _raw_rows(entry, self.ctx, entry.samples)
        for path, place, record in rows:
            yield _convert(data_format, entry, path, place, _mapped_row(record, entry, ignore), self.ctx)[0]

    def __iter__(self) -> Iterator[Any]:
        import random

        rng = random.Random(self.seed + self.passes)
        self.passes += 1
        streams = [self._one(e, f) for e, f in zip(self.entries, self.found)]
        weights = [e.weight if e.weight is not None else 1.0 for e in self.entries]
        while streams:
            at = rng.choices(range(len(streams)), weights=weights)[0]
            try:
                yield next(streams[at])
            except StopIteration:
                del streams[at], weights[at]


def stream_examples(entries: list[DataEntry], fmt: str, formats: dict, accepts: tuple, objective: str,
                    options: dict | None, data_options: dict, train: dict, seed: int = 42) -> tuple[ExampleStream,
                                                                                                   DataResult]:
    """The streamed examples and what reading each dataset's first records found (for the run's report)."""
    head = read_data(entries, fmt, formats, accepts, objective, options, data_options, hub=True, seed=seed,
                     train=train)
    ctx = {"formats": formats, "accepts": accepts, "objective": objective, "objectives": {},
           "options": options or {}, "data_options": data_options}
    return ExampleStream(entries, head.formats, ctx, seed), head


# -- the older single-dataset entry points, on the one reader ------------------------------------------

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


def validate_records(source: DataSource, fmt: str, formats: dict, accepts: tuple[str, ...],
                     objective: str, options: dict | None = None, recipe_file: Any = None) -> DataSummary:
    """Read every record of one dataset and convert it with the chosen format; the first bad one raises."""
    found = read_data([DataEntry(source)], fmt, formats, accepts, objective, options, recipe_file=recipe_file)
    return DataSummary(found.format, found.kind, found.records, found.detected)


def load_records(source: DataSource, fmt: str, formats: dict, options: dict | None = None) -> tuple[list, Any]:
    """Every record of one dataset converted (hub datasets too). Returns (examples, format)."""
    found = read_data([DataEntry(source)], fmt, formats, DATA_KINDS, "?", options, hub=True)
    return found.examples, found.formats[0]
