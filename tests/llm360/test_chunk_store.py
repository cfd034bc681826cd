"""Chunk files -> token store (converted once, with labels) and the verified whole-file fetch from the stand-in."""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from data_order.chunk_store import convert_chunk, ensure_store, lookup_store
from data_order.chunked import ChunkLayout, ChunkRows, ensure_chunks, plan_chunks
from data_order.mmidx import DataOrderError

from .conftest import B, SOURCES, amber_batch, amber_card_text, amber_chunk, amber_lines, jsonl


@pytest.fixture(autouse=True)
def _quiet_datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "dscache")


def _write(path, records) -> None:
    path.write_bytes(jsonl(records) if records and isinstance(records[0], dict) else "".join(records).encode())


def test_conversion_keeps_every_row_and_its_source(tmp_path):
    src = tmp_path / "train_002.jsonl"
    _write(src, amber_chunk(2))
    store = convert_chunk(src, tmp_path / "store", row_len=9, vocab_size=64, progress=False)
    expected = np.array([json.loads(line)["token_ids"] for line in src.read_text().splitlines()])
    assert store.rows == 13 and store.row_len == 9 and store.dataset.dtype == np.uint16
    assert np.array_equal(store.take(np.arange(13)), expected)
    assert np.array_equal(store.take(np.array([12, 0, 5])), expected[[12, 0, 5]])
    assert store.label_names == ["arxiv", "c4", "github"]
    assert [store.label_names[i] for i in store.labels] == SOURCES
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_a_second_ensure_reuses_the_store(tmp_path):
    src = tmp_path / "train_002.jsonl"
    _write(src, amber_chunk(2))
    kw = dict(repo_id="org/data", filename="train/train_002.jsonl", key="sha256-abc", row_len=9, vocab_size=64,
              root=tmp_path / "root", progress=False)
    first, converted = ensure_store(src, **kw)
    stamp = (first.folder / "tokens.bin").stat().st_mtime_ns
    again, converted_again = ensure_store(src, **kw)
    assert converted and not converted_again and again.folder == first.folder
    assert (again.folder / "tokens.bin").stat().st_mtime_ns == stamp
    # Offline lookups find it by revision and file name through the index.
    assert lookup_store("org/data", "train/train_002.jsonl", root=tmp_path / "root").folder == first.folder
    assert lookup_store("org/data", "train/train_003.jsonl", root=tmp_path / "root") is None


@pytest.mark.parametrize("records,message", [
    ([{"text": "hello", "source": "c4"}] * 3,
     r"^train_007.jsonl has no 'token_ids' field \(its fields: text, source\)"),
    ([{"token_ids": list(range(9)), "source": "c4"}] * 2 + [{"token_ids": list(range(7)), "source": "c4"}],
     r"^line 3 of train_007.jsonl has 7 tokens, not 9 \(seq_len 8 \+ 1"),
    ([{"token_ids": list(range(9)), "source": "c4"}, {"source": "c4"}],
     r"^line 2 of train_007.jsonl has no 'token_ids'"),
    ([{"token_ids": [1] * 8 + [70], "source": "c4"}], r"token ids 1..70 .* do not fit the vocabulary size 64"),
    (['{"token_ids": [1, 2, 3', "\n"], r"^cannot read train_007.jsonl as JSON lines"),
])
def test_bad_chunks_are_one_line_and_leave_nothing(tmp_path, records, message):
    src = tmp_path / "train_007.jsonl"
    _write(src, records)
    with pytest.raises(DataOrderError, match=message) as e:
        convert_chunk(src, tmp_path / "store", row_len=9, vocab_size=64, progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "store").exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_fetch_whole_verified_then_convert_once(llm360_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("BRANCHPOINT_RETRY_BASE_S", "0.01")
    llm360_hub.log.clear()
    layout = ChunkLayout.from_order({**tomllib.loads(amber_card_text())["data_order"], "vocab_size": 64})
    kw = dict(endpoint=llm360_hub.url, cache_dir=tmp_path / "hub", root=tmp_path / "data")
    needs = plan_chunks(layout, {"train": (6, 9)}, **kw)
    assert [(n.chunk, n.filename, n.purposes) for n in needs] == [(2, "train/train_002.jsonl", {"train": (6, 9)})]
    assert needs[0].remote.hash_kind == "sha256" and needs[0].store is None and not needs[0].cached
    llm360_hub.inject("corrupt", "/lfs-cdn/")  # the first download arrives corrupt: removed, fetched again
    stores = ensure_chunks(layout, needs, progress=False, **kw)
    data = ChunkRows(layout, stores)
    for step in (6, 7, 8):
        assert np.array_equal(data.batch(step), amber_batch(step)[0])
    assert len(llm360_hub.requests("GET", "/lfs-cdn/")) == 2
    # One domain label per row of the training order (what BiMix reads): the `source` of each row's line.
    names = data.domain_names
    assert [names[i] for i in data.row_domains[24:36]] == [SOURCES[line] for line in amber_lines(2)]
    # Planned again: the store is found by the file's content hash; nothing is downloaded.
    llm360_hub.log.clear()
    again = plan_chunks(layout, {"train": (6, 9)}, **kw)
    assert again[0].store is not None and again[0].store.folder == stores[2].folder
    ensure_chunks(layout, again, progress=False, **kw)
    assert not llm360_hub.requests("GET", "/lfs-cdn/") and not llm360_hub.requests("HEAD", "train_002")
    with pytest.raises(DataOrderError, match=r"release has 15 global batches \(5 chunks\); the last one is batch 14"):
        plan_chunks(layout, {"train": (14, 16)}, **kw)
    assert data.num_batches == 9 and B * 9 == data.num_rows


@pytest.mark.parametrize("batches,message", [
    ((6, 7), r"^line 5 of train_002.jsonl has no 'token_ids'"),
    ((9, 10), r"^line 7 of train_003.jsonl has 7 tokens, not 9"),
])
def test_a_broken_release_is_one_line_and_no_store(llm360_hub, tmp_path, monkeypatch, batches, message):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    layout = ChunkLayout.from_order({**tomllib.loads(amber_card_text())["data_order"], "revision": "broken"})
    kw = dict(endpoint=llm360_hub.url, cache_dir=tmp_path / "hub", root=tmp_path / "data")
    with pytest.raises(DataOrderError, match=message) as e:
        ensure_chunks(layout, plan_chunks(layout, {"train": batches}, **kw), progress=False, **kw)
    assert "\n" not in str(e.value)
    assert not list((tmp_path / "data").rglob("store.json")) and not list((tmp_path / "data").rglob("*.tmp"))
