"""The tokenization cache: same inputs, same rows without tokenizing again; any change, a new entry."""

import json
import multiprocessing

import pytest

from finetty.core.data import cache as data_cache
from finetty.core.train import sft_data

CONVERSATIONS = [[{"role": "user", "content": f"question {i} " * (i % 7 + 1) * 4},
                  {"role": "assistant", "content": f"answer {i} " * (i % 5 + 1)}] for i in range(30)]


@pytest.fixture
def tokenizer(demo_model):
    from finetty.core.model.loading import load_tokenizer

    return load_tokenizer(demo_model)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(data_cache, "folder", lambda: tmp_path / "cache" / "tokenized")


def _prepare(tokenizer, records=CONVERSATIONS, max_length=64, train_on="assistant", packing=False):
    reports = []
    rows = sft_data.prepare_rows(records, tokenizer, max_length, "truncate", train_on, packing, reports.append)
    return rows, reports


@pytest.mark.parametrize("packing", [False, True])
def test_a_second_prepare_reads_the_cache_instead_of_tokenizing(tokenizer, monkeypatch, packing):
    rows, reports = _prepare(tokenizer, packing=packing)
    assert any("truncated" in r for r in reports)  # max_length=64 cuts the longest conversations
    assert len(list(data_cache.folder().glob("*.npz"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(sft_data, "tokenize_examples", no_tokenizing)
    again, replayed = _prepare(tokenizer, packing=packing)
    assert again == rows and replayed == reports  # same rows, and the run is told the same things


def test_every_input_that_decides_the_tokens_is_in_the_key(tokenizer):
    def key(tok=tokenizer, records=CONVERSATIONS, **changes):
        settings = dict(max_length=64, truncation="truncate", train_on="assistant", packing=False) | changes
        return data_cache.key(tok, records, **settings)

    edited = [list(c) for c in CONVERSATIONS]
    edited[3] = [edited[3][0], {"role": "assistant", "content": "another answer"}]
    other_template = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    other_template.chat_template = tokenizer.chat_template.replace("<|im_start|>", "<|im_start|> ")
    variants = [key(), key(max_length=65), key(truncation="drop"), key(train_on="all"), key(packing=True),
                key(records=edited), key(records=CONVERSATIONS[:-1]), key(tok=other_template)]
    assert len(set(variants)) == len(variants)
    assert key() == key()


def test_an_unreadable_entry_is_ignored_and_rewritten(tokenizer):
    rows, _ = _prepare(tokenizer)
    (entry,) = data_cache.folder().glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])
    assert data_cache.load(entry.stem) is None
    again, _ = _prepare(tokenizer)
    assert again == rows and data_cache.load(entry.stem)[0] == rows


def test_entries_hold_no_pickle(tokenizer):
    import numpy as np

    _prepare(tokenizer, packing=True)
    (entry,) = data_cache.folder().glob("*.npz")
    with np.load(entry, allow_pickle=False) as stored:  # would raise on any object array
        assert set(stored.files) == {"meta", "offsets", "input_ids", "labels", "position_ids"}
        assert json.loads(str(stored["meta"]))["format"] == data_cache.FORMAT


def _write_many(rows, count):
    for _ in range(count):
        data_cache.save("a" * 64, rows, ["note"])


def test_concurrent_writers_leave_one_whole_entry(tmp_path):
    rows = [{"input_ids": list(range(i, i + 200)), "labels": list(range(200))} for i in range(200)]
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_many, args=(rows, 15)) for _ in range(3)]
    for w in writers:
        w.start()
    seen = 0
    while any(w.is_alive() for w in writers):
        loaded = data_cache.load("a" * 64)
        if loaded is not None:  # whenever an entry is visible, it is whole
            assert loaded == (rows, ["note"])
            seen += 1
    for w in writers:
        w.join()
        assert w.exitcode == 0
    assert data_cache.load("a" * 64) == (rows, ["note"])
    assert [p.name for p in data_cache.folder().iterdir()] == ["a" * 64 + ".npz"]  # no temporary files left
