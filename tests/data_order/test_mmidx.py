"""MMIDIDX writer and reader: byte layout, round trips, shards, and every malformed input."""

from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from data_order.mmidx import (
    CODE_OF_DTYPE,
    DTYPE_CODES,
    DataOrderError,
    MMapIndexedDataset,
    NotFetchedError,
    shard_name,
    write_mmidx,
    write_sharded,
)


def test_dtype_codes_match_the_spec():
    # reference/pythia.md §4.3: 1 u8, 2 i8, 3 i16, 4 i32, 5 i64, 6 f32, 7 f64, 8 u16
    expected = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float32", 7: "float64", 8: "uint16"}
    assert {c: d.name for c, d in DTYPE_CODES.items()} == expected
    assert CODE_OF_DTYPE[np.dtype(np.uint16)] == 8 and CODE_OF_DTYPE[np.dtype(np.int32)] == 4


def test_index_bytes_match_hand_computed_layout(tmp_path):
    items = [np.array([5, 6, 7], np.uint16), np.array([8], np.uint16), np.array([9, 10], np.uint16)]
    write_mmidx(tmp_path / "d", items, doc_lengths=[2, 1])
    expected = (
        b"MMIDIDX\x00\x00"
        + struct.pack("<Q", 1)  # version
        + struct.pack("<B", 8)  # uint16
        + struct.pack("<Q", 3)  # N items
        + struct.pack("<Q", 3)  # D doc_idx entries: [0, 2, 3]
        + struct.pack("<3i", 3, 1, 2)  # sizes
        + struct.pack("<3q", 0, 6, 8)  # pointers in bytes: exclusive cumsum(sizes) * 2
        + struct.pack("<3q", 0, 2, 3)  # doc_idx
    )
    assert (tmp_path / "d.idx").read_bytes() == expected
    assert len(expected) == 34 + 12 * 3 + 8 * 3
    assert (tmp_path / "d.bin").read_bytes() == struct.pack("<6H", 5, 6, 7, 8, 9, 10)
    ds = MMapIndexedDataset(tmp_path / "d")
    assert ds.doc_idx.tolist() == [0, 2, 3]
    assert ds.sizes.tolist() == [3, 1, 2] and ds.pointers.tolist() == [0, 6, 8]


def test_int32_round_trip_with_variable_items(tmp_path):
    rng = np.random.default_rng(1)
    items = [rng.integers(-(2**31), 2**31 - 1, size=n).astype(np.int32) for n in (1, 7, 0, 300, 2)]
    write_mmidx(tmp_path / "v", items, dtype=np.int32)
    ds = MMapIndexedDataset(tmp_path / "v")
    assert ds.dtype == np.int32 and len(ds) == 5
    for i, it in enumerate(items):
        got = ds.item(i)
        assert got.dtype == np.int32 and np.array_equal(got, it)
    assert ds.doc_idx.tolist() == [0, 1, 2, 3, 4, 5]  # one item per document by default
    header = (tmp_path / "v.idx").read_bytes()[:34]
    assert header[17] == 4  # dtype code int32


def test_rows_round_trip_single_and_extension_forms(tmp_path, rows_40x9):
    write_mmidx(tmp_path / "train", list(rows_40x9))
    for path in (tmp_path / "train", tmp_path / "train.idx", tmp_path / "train.bin"):
        ds = MMapIndexedDataset(path)
        assert not ds.is_sharded
        got = ds.rows(0, 40, 9)
        assert got.dtype == np.uint16 and np.array_equal(got, rows_40x9)
    assert np.array_equal(ds.rows(13, 17, 9), rows_40x9[13:17])
    assert np.array_equal(ds.take([39, 0, 13, 13], 9), rows_40x9[[39, 0, 13, 13]])
    assert ds.byte_range(2, 5) == (2 * 9 * 2, 3 * 9 * 2)


def test_block_items_write_the_same_bytes_as_row_items(tmp_path, rows_40x9):
    write_mmidx(tmp_path / "a", list(rows_40x9))
    write_mmidx(tmp_path / "b", [rows_40x9[:15], rows_40x9[15:]])
    for ext in (".idx", ".bin"):
        assert (tmp_path / f"a{ext}").read_bytes() == (tmp_path / f"b{ext}").read_bytes()


@pytest.mark.parametrize("shard_size", [1, 17, 18, 19, 101, 137, 700])
def test_odd_shard_sizes_rows_straddle_edges(tmp_path, rows_40x9, shard_size):
    total = rows_40x9.nbytes  # 720
    num = min(21, total // shard_size)  # shards 0..N-2 of shard_size, the last gets the rest
    folder = tmp_path / "s"
    write_sharded(folder, [rows_40x9], num_shards=num, shard_size=shard_size)
    names = sorted(p.name for p in folder.glob("*.bin"))
    assert names == [shard_name("document", i, num) for i in range(num)]
    sizes = [os.path.getsize(folder / n) for n in names]
    assert sizes[:-1] == [shard_size] * (num - 1) and sum(sizes) == total
    # The concatenated shards are exactly the single-file .bin (what unshard_memmap.py would rebuild).
    write_mmidx(tmp_path / "one", list(rows_40x9))
    assert b"".join((folder / n).read_bytes() for n in names) == (tmp_path / "one.bin").read_bytes()
    assert (folder / "document.idx").read_bytes() == (tmp_path / "one.idx").read_bytes()
    ds = MMapIndexedDataset(folder)
    for start, stop in [(0, 40), (0, 1), (3, 4), (5, 23), (39, 40)]:
        assert np.array_equal(ds.rows(start, stop, 9), rows_40x9[start:stop])
    assert np.array_equal(ds.take(np.arange(39, -1, -1), 9), rows_40x9[::-1])
    for i in (0, 7, 39):
        assert np.array_equal(ds.item(i), rows_40x9[i])


def test_shard_spans_cover_a_straddling_row(tmp_path, rows_40x9):
    write_sharded(tmp_path / "s", [rows_40x9], num_shards=5, shard_size=137)
    ds = MMapIndexedDataset(tmp_path / "s")
    offset, nbytes = ds.byte_range(7, 9)  # bytes 126..161
    assert (offset, nbytes) == (126, 36)
    assert ds.shard_spans(offset, nbytes) == [
        ("document-00000-of-00004.bin", 126, 11),
        ("document-00001-of-00004.bin", 0, 25),
    ]


def test_default_sharding_is_pythia_like(tmp_path, make_rows):
    rows = make_rows(100, 33)  # 6600 bytes over 21 shards
    write_sharded(tmp_path / "p", [rows])
    names = sorted(p.name for p in (tmp_path / "p").glob("*.bin"))
    assert names[0] == "document-00000-of-00020.bin" and names[-1] == "document-00020-of-00020.bin" and len(names) == 21
    sizes = [os.path.getsize(tmp_path / "p" / n) for n in names]
    assert len(set(sizes[:-1])) == 1 and 0 < sizes[-1] <= sizes[0] and sum(sizes) == rows.nbytes
    assert np.array_equal(MMapIndexedDataset(tmp_path / "p").rows(0, 100, 33), rows)
    assert not list((tmp_path / "p").glob("*.tmp"))  # no temporary leftovers


def test_document_bin_in_a_folder(tmp_path, rows_40x9):
    write_mmidx(tmp_path / "f" / "document", list(rows_40x9))
    ds = MMapIndexedDataset(tmp_path / "f")
    assert np.array_equal(ds.rows(0, 40, 9), rows_40x9)


def test_int64_pointer_arithmetic_beyond_2gb(tmp_path):
    # 4 items of 2^30 uint16 tokens = 8 GiB virtual .bin: any int32 sum of sizes overflows
    # (pythia commit 52a1523). The .bin is a sparse file, so nothing is really written.
    from data_order.mmidx import _write_index

    n = 2**30
    _write_index(tmp_path / "big.idx", np.dtype("<u2"), np.array([n] * 4), np.arange(5))
    with open(tmp_path / "big.bin", "wb") as f:
        f.truncate(4 * n * 2)
    ds = MMapIndexedDataset(tmp_path / "big")
    assert ds.pointers.tolist() == [0, 2 * n, 4 * n, 6 * n]
    assert ds.byte_range(0, 4) == (0, 8 * n)
    assert ds.byte_range(3, 4) == (6 * n, 2 * n)


# -- bad input ----------------------------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


@pytest.fixture
def good(tmp_path, rows_40x9):
    write_mmidx(tmp_path / "g", list(rows_40x9))
    return tmp_path / "g"


def _patch(path, offset, data: bytes):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_wrong_magic(good):
    _patch(good.with_suffix(".idx"), 0, b"NOTMMIDX!")
    with pytest.raises(DataOrderError) as e:
        MMapIndexedDataset(good)
    assert "magic" in _one_line(e)


def test_wrong_version(good):
    _patch(good.with_suffix(".idx"), 9, struct.pack("<Q", 2))
    with pytest.raises(DataOrderError, match="version 2") as e:
        MMapIndexedDataset(good)
    _one_line(e)


@pytest.mark.parametrize("code", [0, 9, 255])
def test_unknown_dtype_code(good, code):
    _patch(good.with_suffix(".idx"), 17, bytes([code]))
    with pytest.raises(DataOrderError, match=f"dtype code {code}") as e:
        MMapIndexedDataset(good)
    _one_line(e)


@pytest.mark.parametrize("keep", [0, 20, 34, 100])
def test_truncated_index(good, keep):
    idx = good.with_suffix(".idx")
    idx.write_bytes(idx.read_bytes()[:keep])
    with pytest.raises(DataOrderError) as e:
        MMapIndexedDataset(good)
    _one_line(e)


def test_bin_shorter_than_index_says(good):
    b = good.with_suffix(".bin")
    b.write_bytes(b.read_bytes()[:-1])
    with pytest.raises(DataOrderError, match="truncated") as e:
        MMapIndexedDataset(good)
    assert "720" in _one_line(e)


def test_truncated_last_shard(tmp_path, rows_40x9):
    write_sharded(tmp_path / "s", [rows_40x9], num_shards=4)
    last = tmp_path / "s" / shard_name("document", 3, 4)
    last.write_bytes(last.read_bytes()[:-2])
    with pytest.raises(DataOrderError, match="truncated"):
        MMapIndexedDataset(tmp_path / "s")


def test_truncated_middle_shard(tmp_path, rows_40x9):
    write_sharded(tmp_path / "s", [rows_40x9], num_shards=4)
    mid = tmp_path / "s" / shard_name("document", 1, 4)
    mid.write_bytes(mid.read_bytes()[:-2])
    with pytest.raises(DataOrderError, match="document-00001-of-00003.bin") as e:
        MMapIndexedDataset(tmp_path / "s")
    _one_line(e)


def test_missing_shard(tmp_path, rows_40x9):
    write_sharded(tmp_path / "s", [rows_40x9], num_shards=4)
    (tmp_path / "s" / shard_name("document", 2, 4)).unlink()
    with pytest.raises(DataOrderError, match="missing shard document-00002-of-00003.bin") as e:
        MMapIndexedDataset(tmp_path / "s")
    _one_line(e)


def test_missing_files(tmp_path, good):
    with pytest.raises(DataOrderError, match="no index file"):
        MMapIndexedDataset(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataOrderError, match="holds no document.idx"):
        MMapIndexedDataset(tmp_path / "empty")
    good.with_suffix(".bin").unlink()
    with pytest.raises(DataOrderError, match="no data"):
        MMapIndexedDataset(good)


def test_row_size_mismatch(tmp_path, rows_40x9):
    items = list(rows_40x9)
    items[21] = items[21][:8]
    write_sharded(tmp_path / "s", items, num_shards=3)
    ds = MMapIndexedDataset(tmp_path / "s")
    assert np.array_equal(ds.rows(0, 21, 9), rows_40x9[:21])
    with pytest.raises(DataOrderError, match="item 21 .* has 8 tokens, not 9") as e:
        ds.rows(16, 24, 9)
    _one_line(e)
    with pytest.raises(DataOrderError, match="item 21"):
        ds.take([3, 21], 9)
    with pytest.raises(DataOrderError, match="has 9 tokens, not 10"):
        ds.rows(0, 4, 10)


def test_out_of_range_reads(good):
    ds = MMapIndexedDataset(good)
    for call in (lambda: ds.rows(38, 41, 9), lambda: ds.rows(-1, 2, 9), lambda: ds.item(40), lambda: ds.take([40], 9)):
        with pytest.raises(DataOrderError, match="0..39"):
            call()


def test_values_must_fit_dtype(tmp_path):
    with pytest.raises(DataOrderError, match="int32"):
        write_mmidx(tmp_path / "x", [np.array([70000])], dtype=np.uint16)
    assert not list(tmp_path.iterdir())  # nothing half-written


# -- partial folders (fetched_ranges.json) -------------------------------------------------------


def _partial_copy(src, dst, keep: dict[str, list[tuple[int, int]]], drop: set[str] = frozenset()):
    """A sparse copy of a shard folder holding only the ``keep`` byte ranges, as fetch writes it."""
    dst.mkdir()
    (dst / "document.idx").write_bytes((src / "document.idx").read_bytes())
    for p in src.glob("*.bin"):
        if p.name in drop:
            continue
        data = p.read_bytes()
        with open(dst / p.name, "wb") as f:
            f.truncate(len(data))
            for a, b in keep.get(p.name, []):
                f.seek(a)
                f.write(data[a:b])
    (dst / "fetched_ranges.json").write_text(json.dumps({k: [list(r) for r in v] for k, v in keep.items()}))


def test_partial_folder_reads_fetched_rows_and_refuses_others(tmp_path, rows_40x9):
    write_sharded(tmp_path / "full", [rows_40x9], num_shards=5, shard_size=137)
    full = MMapIndexedDataset(tmp_path / "full")
    # Fetch rows 8..15 (bytes 144..288): they span shards 1 and 2 (137..274, 274..411).
    off, n = full.byte_range(8, 16)
    keep: dict[str, list[tuple[int, int]]] = {}
    for name, o, k in full.shard_spans(off, n):
        keep.setdefault(name, []).append((o, o + k))
    drop = {shard_name("document", i, 5) for i in (0, 3, 4)}  # never fetched, absent on disk
    _partial_copy(tmp_path / "full", tmp_path / "part", keep, drop)
    ds = MMapIndexedDataset(tmp_path / "part")
    assert ds.is_partial
    assert np.array_equal(ds.rows(8, 16, 9), rows_40x9[8:16])
    assert np.array_equal(ds.take([15, 8], 9), rows_40x9[[15, 8]])
    with pytest.raises(NotFetchedError) as e:
        ds.rows(12, 20, 9)
    msg = _one_line(e)
    assert msg.startswith("rows 16..19 of ") and "branchpoint fetch RUN --step N --data-steps K" in msg
    with pytest.raises(NotFetchedError, match="rows 0..0 "):
        ds.item(0)  # its shard is absent on disk


def test_partial_folder_gap_inside_a_shard(tmp_path, rows_40x9):
    write_sharded(tmp_path / "full", [rows_40x9], num_shards=1)
    name = shard_name("document", 0, 1)
    row = 18  # bytes per row
    _partial_copy(tmp_path / "full", tmp_path / "part", {name: [(0, 4 * row), (6 * row, 10 * row)]})
    ds = MMapIndexedDataset(tmp_path / "part")
    assert np.array_equal(ds.rows(6, 10, 9), rows_40x9[6:10])
    with pytest.raises(NotFetchedError, match="rows 4..5 "):
        ds.rows(2, 8, 9)


def test_corrupt_pointer_is_refused(good):
    # pointers of 40 items start at 34 + 4*40; make item 5's pointer wrong.
    _patch(good.with_suffix(".idx"), 34 + 4 * 40 + 8 * 5, struct.pack("<q", 7))
    ds = MMapIndexedDataset(good)
    assert ds.rows(0, 5, 9).shape == (5, 9)
    with pytest.raises(DataOrderError, match="index is corrupt") as e:
        ds.rows(0, 6, 9)
    _one_line(e)


def test_default_shard_size_when_ceil_would_leave_empty_shards(tmp_path):
    # 90 bytes over 21 shards: ceil(90/21)=5 would fill only 18 shards, so shards 0..19 get 4 bytes, the last 10.
    write_sharded(tmp_path / "s", [np.arange(45, dtype=np.uint16)], num_shards=21)
    sizes = [os.path.getsize(tmp_path / "s" / shard_name("document", i, 21)) for i in range(21)]
    assert sizes == [4] * 20 + [10]
    assert np.array_equal(MMapIndexedDataset(tmp_path / "s").item(0), np.arange(45))


def test_shard_size_too_large_is_refused_and_nothing_written(tmp_path, rows_40x9):
    with pytest.raises(DataOrderError, match="shard_size=400 with num_shards=3"):
        write_sharded(tmp_path / "s", [rows_40x9], num_shards=3, shard_size=400)
    assert list((tmp_path / "s").iterdir()) == []
