"""``data_options.streaming`` for every file kind: parquet, a .json list and plain text for cpt stream too.

Each kind goes through the one reader (:func:`finetty.core.data.reading.iter_records`),
which reads every kind as it is consumed; a streamed run must train on what
the whole read trains on. With sequential sampling both runs see the data
in file order, so their first losses agree.
"""

from __future__ import annotations

import json

import pytest

from finetty.core.data import reading
from finetty.core.data.demo import builtin_data_file
from finetty.core.errors import InputError

from . import inprocess
from .conftest import RECIPES, losses

pytestmark = pytest.mark.slow

SAME_ORDER = ["train.max_steps=2", "train.logging_steps=1", "train.save_steps=100",
              "train.train_sampling_strategy=sequential"]


def identity_records() -> list[dict]:
    lines = builtin_data_file("identity.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def write(kind: str, folder):
    """The identity questions as a parquet file or one .json list (the built-in is JSON lines)."""
    records = identity_records()
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = folder / "identity.parquet"
        pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)  # several batches to stream
    else:
        path = folder / "identity.json"
        path.write_text(json.dumps(records, indent=1))
    return path


def first_losses(recipe, runs, overrides, monkeypatch) -> list[float]:
    run = inprocess.train(recipe, runs, [*SAME_ORDER, *overrides], monkeypatch=monkeypatch)
    found = losses(run)
    return [found[1], found[2]]


@pytest.mark.parametrize("kind", ["parquet", "json-list", "text-cpt"])
def test_each_kind_streams_and_trains_like_the_whole_read(kind, tmp_path, demo_model, monkeypatch):
    if kind == "text-cpt":
        recipe, dataset = RECIPES / "demo-cpt.yaml", []  # tiny-corpus: a .txt file
    else:
        recipe, dataset = RECIPES / "demo-lora.yaml", [f"dataset={write(kind.split('-')[0], tmp_path)}"]
    whole = first_losses(recipe, tmp_path / "whole", dataset, monkeypatch)
    streamed = first_losses(recipe, tmp_path / "streamed", [*dataset, "data_options.streaming=true"], monkeypatch)
    assert streamed == pytest.approx(whole, abs=1e-4)


def test_a_json_list_is_read_a_record_at_a_time(tmp_path):
    """The records before a fault are read before it is found: nothing waits for the whole file."""
    records = identity_records()
    text = json.dumps(records)
    path = tmp_path / "cut.json"
    path.write_text(text[: len(text) // 2])
    seen = []
    with pytest.raises(InputError, match="is not valid JSON"):
        for _, place, record in reading.iter_records(reading.resolve_source(str(path), tmp_path)):
            seen.append((place, record))
    assert len(seen) >= 3 and seen[2] == ("record 2", records[2])


def test_parquet_streams_batch_by_batch(tmp_path, monkeypatch):
    """Rows come from ``iter_batches`` (never the whole table), in order, whatever the row groups."""
    import pyarrow.parquet as pq

    monkeypatch.setattr(pq, "read_table", None)  # a whole-table read would fail here
    path = write("parquet", tmp_path)
    rows = list(reading.iter_records(reading.resolve_source(str(path), tmp_path)))
    assert [record for _, _, record in rows] == identity_records()
    assert rows[-1][1] == f"row {len(rows) - 1}"
