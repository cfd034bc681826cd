"""Fetched data is verified where it can be: each range before it is recorded (row lengths, token ids
< the run's vocabulary), a file fetched whole against its LFS sha256; damaged bytes are fetched once
more, then refused with nothing recorded. Faults come from the Hub stand-in ("corrupt" XORs the first
16 bytes of a response body with 0xFF)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from checkpoints_cache.data_store import RANGES, CorruptRangeError, fetch_ranges, read_fetched
from checkpoints_cache.registry import resolve_run
from data_order.mmidx import MMapIndexedDataset

from .conftest import run_cli
from .repos import BATCH, DATA_REPO, ROW, RUN

VOCAB = 50304  # pythia-70m-deduped's vocab_size in the registry (pythia.md §1.3)


def _fetch(env, step, k):
    from data_order.remote import fetch_data_steps

    return fetch_data_steps(resolve_run(RUN), step, k, endpoint=env.endpoint, cache_dir=env.cache, progress=False)


def _corrupt_data(hub, world, times: int = 1) -> None:
    """Damage the first Range GET(s) of every shard: the data rows (document.idx is read by ranges too, so a
    fault on any /lfs-cdn/ path would hit its entries first -- they have a check of their own)."""
    import hashlib

    for name, data in world.data_files.items():
        if name.endswith(".bin"):
            hub.inject("corrupt", f"/lfs-cdn/{hashlib.sha256(data).hexdigest()}", times=times)


def _flipped_over_vocab(world, row: int) -> int:
    """How many of the 8 tokens the stand-in's corruption hits at the start of ``row`` leave the vocabulary."""
    return int((65535 - world.rows[row, :8].astype(np.int64) >= VOCAB).sum())


def test_a_damaged_range_is_fetched_again_and_the_stored_rows_equal_the_served_ones(env, hub, world, capfd):
    assert resolve_run(RUN).architecture["vocab_size"] == VOCAB
    _fetch(env, 0, 1)
    assert _flipped_over_vocab(world, 3 * BATCH) >= 1  # the damage is of the detectable kind
    _corrupt_data(hub, world)
    got = _fetch(env, 3, 1)
    assert "token id(s) >= the vocabulary size 50304" in capfd.readouterr().err
    ds = MMapIndexedDataset(got.folder)
    np.testing.assert_array_equal(ds.rows(3 * BATCH, 4 * BATCH, ROW), world.rows[3 * BATCH:4 * BATCH])


def test_a_range_damaged_twice_is_refused_and_not_recorded(env, hub, world):
    _fetch(env, 0, 1)
    folder_before = read_fetched(_fetch(env, 0, 1).folder)
    assert _flipped_over_vocab(world, 5 * BATCH) >= 1
    _corrupt_data(hub, world, times=2)
    with pytest.raises(CorruptRangeError, match=r"arrived damaged twice \(\d+ token id\(s\) >= the vocabulary size 50304"):
        _fetch(env, 5, 1)
    folder = _fetch(env, 0, 1).folder
    shards = lambda fetched: {k: v for k, v in fetched.items() if k != "document.idx"}  # noqa: E731
    # nothing of batch 5's rows was recorded (its index entries were, once checked: they arrived intact)
    assert shards(read_fetched(folder)) == shards(folder_before)
    with pytest.raises(Exception, match="were not fetched"):
        MMapIndexedDataset(folder).rows(5 * BATCH, 5 * BATCH + 1, ROW)


def test_the_cli_refuses_damaged_rows_with_one_line(env, hub, world):
    r = run_cli(env, "fetch", RUN, "--step", "4", "--data-steps", "1")  # index + batch 4
    assert r.returncode == 0, r.stderr
    assert _flipped_over_vocab(world, 5 * BATCH) >= 1
    _corrupt_data(hub, world, times=2)
    r = run_cli(env, "fetch", RUN, "--step", "4", "--data-steps", "2")  # only batch 5 is new
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(err) == 1 and "arrived damaged twice" in err[0], r.stderr
    assert "Traceback" not in r.stderr


def test_a_shard_fetched_whole_is_checked_against_its_lfs_sha256(env, hub, world):
    shards = sorted(n for n in world.data_files if n.endswith(".bin"))
    name, other = shards[3], shards[4]
    size = len(world.data_files[name])
    hub.inject("corrupt", "/lfs-cdn/")  # no row check here: only the sha256 can catch it
    got = fetch_ranges(DATA_REPO, {name: [(0, size)]}, endpoint=env.endpoint, cache_dir=env.cache, progress=False)
    assert (got.folder / name).read_bytes() == world.data_files[name]
    assert read_fetched(got.folder)[name] == [[0, size]]
    manifest = json.loads((got.folder / "manifest.json").read_text())
    assert manifest["files"][name]["sha256"]

    hub.inject("corrupt", "/lfs-cdn/", times=2)
    with pytest.raises(CorruptRangeError, match="does not match the Hub's sha256"):
        fetch_ranges(DATA_REPO, {other: [(0, len(world.data_files[other]))]}, endpoint=env.endpoint,
                     cache_dir=env.cache, progress=False)
    assert other not in json.loads((got.folder / RANGES).read_text())


def test_a_token_straddling_a_shard_edge_is_checked(tmp_path):
    """Shards are a byte split of one .bin: with an odd shard size a token's two bytes sit in two files,
    and the row validator joins them (the low byte from the previous shard, once that is recorded)."""
    from data_order.mmidx import write_sharded
    from data_order.remote import _index_arrays, shard_layout
    from data_order.row_check import row_range_validator

    rows = np.arange(40, dtype=np.uint16).reshape(8, 5) % 90  # 8 rows of 5 tokens, ids < 90
    write_sharded(tmp_path, iter(rows), dtype=np.uint16, num_shards=4, shard_size=21)
    names = sorted(p.name for p in tmp_path.glob("*.bin"))
    layout = shard_layout({n: (tmp_path / n).stat().st_size for n in names})
    dtype, sizes, pointers = _index_arrays(tmp_path / "document.idx")
    fetched = {n: [[0, (tmp_path / n).stat().st_size]] for n in names}
    check = row_range_validator(layout, dtype, sizes, pointers, 5, 90, fetched=lambda: fetched)
    name, start, size = layout[1]
    assert start == 21  # shard 1 starts with the high byte of token 10
    assert all(check(n, 0, sz, tmp_path / n) is None for n, _, sz in layout)
    with open(tmp_path / name, "r+b") as f:  # the high byte of the straddling token: now >= 0xFF00
        f.write(b"\xff")
    assert "1 token id(s) >= the vocabulary size 90 (first: 65290 in row 2)" in check(name, 0, size, tmp_path / name)
    assert check(name, 1, size, tmp_path / name) is None  # the range without that byte is fine
    fetched[layout[0][0]] = [[0, 10]]  # the low byte not recorded yet: the token cannot be joined, skip it
    assert check(name, 0, size, tmp_path / name) is None
    assert "row 0 has 5 tokens in document.idx, not 6" in row_range_validator(
        layout, dtype, sizes, pointers, 6, 90)(names[0], 0, 4, tmp_path / names[0])


def test_a_second_fetch_into_the_same_data_cache_is_refused(env, hub, tmp_path):
    """The partial data cache of a dataset has one writer; HF-cache downloads keep huggingface_hub's locks."""
    from checkpoints_cache.data_store import store_folder
    from checkpoints_cache.locks import OutputLockedError
    from tests.hardening.helpers import hold_lock

    holder = hold_lock(store_folder(DATA_REPO), tmp_path)
    try:
        with pytest.raises(OutputLockedError, match=f"PID {holder.pid}.*wait for that fetch to finish"):
            _fetch(env, 0, 1)
    finally:
        holder.kill()
        holder.wait()
    assert _fetch(env, 0, 1).rows == range(0, BATCH)  # the holder is gone: its lock is taken over


def test_the_validation_callback_runs_before_a_range_is_recorded(env, hub, world):
    """fetch_ranges(validate=...): called once the bytes are on disk and before fetched_ranges.json names
    them; a failure (a reason, False, or ValueError) fetches the range once more, a second one refuses it."""
    shards = sorted(n for n in world.data_files if n.endswith(".bin"))
    name, rng = shards[1], (100, 5000)
    seen = []

    def flaky(file, start, end, path):
        recorded = read_fetched(path.parent).get(file, [])
        seen.append((file, start, end, path.read_bytes()[start:end] == world.data_files[file][start:end], recorded))
        return False if len(seen) == 1 else None

    got = fetch_ranges(DATA_REPO, {name: [rng]}, endpoint=env.endpoint, cache_dir=env.cache, progress=False,
                       validate=flaky)
    assert [(f, s, e, same, rec) for f, s, e, same, rec in seen] == [(name, 100, 5000, True, []), (name, 100, 5000, True, [])]
    assert read_fetched(got.folder)[name] == [[100, 5000]]
    assert len([r for r in hub.requests("GET", "/lfs-cdn/") if r["range"] == "bytes=100-4999"]) == 2  # fetched again

    def always_bad(file, start, end, path):
        raise ValueError("row 3 looks wrong")

    with pytest.raises(CorruptRangeError, match=r"bytes 6000-6999 arrived damaged twice \(row 3 looks wrong\)"):
        fetch_ranges(DATA_REPO, {name: [(6000, 7000)]}, endpoint=env.endpoint, cache_dir=env.cache, progress=False,
                     validate=always_bad)
    assert read_fetched(got.folder)[name] == [[100, 5000]]


def test_damaged_index_entries_are_fetched_again_or_refused(env, hub, world):
    """document.idx is read by ranges: its entries are checked too (sizes = the row length, pointers back to
    back) before they are recorded; damaged once, fetched again; damaged twice, refused with nothing recorded."""
    import hashlib

    idx = f"/lfs-cdn/{hashlib.sha256(world.data_files['document.idx']).hexdigest()}"
    _fetch(env, 0, 1)  # the header and row 0's entries
    hub.inject("corrupt", idx)
    got = _fetch(env, 3, 1)
    np.testing.assert_array_equal(MMapIndexedDataset(got.folder).rows(3 * BATCH, 4 * BATCH, ROW),
                                  world.rows[3 * BATCH:4 * BATCH])
    before = read_fetched(got.folder)
    hub.inject("corrupt", idx, times=2)
    with pytest.raises(CorruptRangeError, match=r"document.idx bytes \d+-\d+ arrived damaged twice \(row \d+ has -?\d+ "
                                                r"tokens in the index, not 2049\)"):
        _fetch(env, 5, 1)
    assert read_fetched(got.folder) == before  # nothing of batch 5 (entries or rows) was recorded
