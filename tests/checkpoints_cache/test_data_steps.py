"""--data-steps: only the byte ranges of batches N..N+K-1 move, and the trainer's reader gets exactly those rows."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from checkpoints_cache.data_store import RANGES, merge_ranges, subtract_ranges
from checkpoints_cache.errors import UserError
from checkpoints_cache.registry import resolve_run
from data_order.mmidx import HEADER_SIZE, MMapIndexedDataset, NotFetchedError

from .repos import BATCH, DATA_REPO, ROW, RUN


def _fetch(env, step, k):
    from data_order.remote import fetch_data_steps

    return fetch_data_steps(resolve_run(RUN), step, k, endpoint=env.endpoint, cache_dir=env.cache, progress=False)


def _virtual_ranges(hub, world) -> list[list[int]]:
    """The Range headers the stand-in saw, mapped back to byte ranges of the virtual .bin."""
    names = sorted(n for n in world.data_files if n.endswith(".bin"))
    starts, pos = {}, 0
    for n in names:
        starts[hashlib.sha256(world.data_files[n]).hexdigest()] = pos
        pos += len(world.data_files[n])
    out = []
    for r in hub.requests("GET", "/lfs-cdn/"):
        sha = r["path"].rsplit("/", 1)[1]
        if r["range"] and sha in starts:
            a, b = r["range"].removeprefix("bytes=").split("-")
            out.append([starts[sha] + int(a), starts[sha] + int(b) + 1])
    return merge_ranges(out)


def test_only_the_rows_of_the_needed_batches_are_requested(env, hub, world):
    got = _fetch(env, 4, 2)  # a branch from step4 for 2 steps trains on batches 4 and 5
    first, stop = 4 * BATCH, 6 * BATCH
    assert got.rows == range(first, stop)
    row_bytes = ROW * 2
    assert got.row_bytes == got.bytes_moved == (stop - first) * row_bytes
    assert _virtual_ranges(hub, world) == [[first * row_bytes, stop * row_bytes]]
    # nothing is fetched whole: the index by ranges too, header + 12 bytes per row (+ rows 0 and N-1)
    assert [r for r in hub.requests("GET", "/lfs-cdn/") if r["range"] is None] == []
    idx_sha = hashlib.sha256(world.data_files["document.idx"]).hexdigest()
    idx_bytes = sum(r["bytes"] for r in hub.requests("GET", f"/lfs-cdn/{idx_sha}"))
    assert idx_bytes == got.index_bytes_moved == 34 + 12 * (stop - first) + 2 * 12
    assert idx_bytes <= 12 * (stop - first) + 64 * 1024 < len(world.data_files["document.idx"])
    # straddling rows: the range crosses shard edges
    assert len([r for r in hub.requests("GET", "/lfs-cdn/") if r["range"]]) >= 3


def test_partial_folder_reads_back_exactly_the_stored_rows(env, hub, world):
    got = _fetch(env, 4, 2)
    ds = MMapIndexedDataset(got.folder)
    assert ds.is_partial
    np.testing.assert_array_equal(ds.rows(4 * BATCH, 6 * BATCH, ROW), world.rows[4 * BATCH:6 * BATCH])
    with pytest.raises(NotFetchedError, match=r"rows 4095\.\.4095 .* were not fetched"):
        ds.rows(4 * BATCH - 1, 4 * BATCH, ROW)
    fetched = json.loads((got.folder / RANGES).read_text())
    assert all(isinstance(a, int) for rs in fetched.values() for r in rs for a in r)
    # the registry now points the run's data order at the folder
    assert resolve_run(RUN).data_order["path"] == str(got.folder)
    manifest = json.loads((got.folder / "manifest.json").read_text())
    assert manifest["repo_id"] == DATA_REPO and manifest["commit"] == got.folder.name


def test_fetching_again_moves_nothing_and_extending_moves_only_the_new_rows(env, hub, world):
    _fetch(env, 4, 2)
    hub.log.clear()
    again = _fetch(env, 4, 2)
    assert again.bytes_moved == 0 and _virtual_ranges(hub, world) == []
    hub.log.clear()
    more = _fetch(env, 5, 2)  # batches 5, 6: only batch 6 is new
    assert more.bytes_moved == BATCH * ROW * 2
    assert _virtual_ranges(hub, world) == [[6 * BATCH * ROW * 2, 7 * BATCH * ROW * 2]]
    ds = MMapIndexedDataset(more.folder)
    np.testing.assert_array_equal(ds.rows(4 * BATCH, 7 * BATCH, ROW), world.rows[4 * BATCH:7 * BATCH])


def test_dropped_range_resumes_from_the_last_byte_written(env, hub, world):
    got_before = _fetch(env, 0, 1)  # caches the index
    np.testing.assert_array_equal(MMapIndexedDataset(got_before.folder).rows(0, BATCH, ROW), world.rows[:BATCH])
    hub.log.clear()
    hub.faults.clear()
    hub.inject("drop", "/lfs-cdn/")  # now the index is cached: the drop hits a Range GET
    got = _fetch(env, 2, 1)
    ranged = [r for r in hub.requests("GET", "/lfs-cdn/") if r["range"]]
    first = ranged[0]
    a = int(first["range"].removeprefix("bytes=").split("-")[0])
    resumed = [r for r in ranged[1:] if r["path"] == first["path"]]
    assert resumed and int(resumed[0]["range"].removeprefix("bytes=").split("-")[0]) == a + first["bytes"]
    assert got.bytes_moved == BATCH * ROW * 2
    np.testing.assert_array_equal(MMapIndexedDataset(got.folder).rows(2 * BATCH, 3 * BATCH, ROW), world.rows[2 * BATCH:3 * BATCH])


def test_one_server_error_on_a_range_is_retried(env, hub, world):
    hub.inject("500", "/lfs-cdn/")
    got = _fetch(env, 1, 1)
    np.testing.assert_array_equal(MMapIndexedDataset(got.folder).rows(BATCH, 2 * BATCH, ROW), world.rows[BATCH:2 * BATCH])


def test_a_server_that_ignores_range_is_refused_not_downloaded_whole(env, hub, world):
    _fetch(env, 0, 1)  # index cached
    hub.inject("ignore-range", "/lfs-cdn/")
    with pytest.raises(UserError, match=r"got HTTP 200 \(the server ignored the Range header\)"):
        _fetch(env, 3, 1)


def test_batches_beyond_the_data_name_the_last_batch(env, hub):
    with pytest.raises(UserError, match=r"has 7268 rows \(last whole batch: 6\)"):
        _fetch(env, 6, 2)


def test_runs_without_preshuffled_rows_are_refused(env):
    from data_order.remote import fetch_data_steps

    with pytest.raises(UserError, match=r"amber-chunks"):
        fetch_data_steps(resolve_run("amber"), 762, 1, endpoint=env.endpoint)
    with pytest.raises(UserError, match=r"unknown"):
        fetch_data_steps(resolve_run("pythia-410m-seed3"), 1000, 1, endpoint=env.endpoint)


def test_range_arithmetic():
    assert merge_ranges([[5, 9], [0, 2], [2, 4], [8, 12], [20, 20]]) == [[0, 4], [5, 12]]
    assert subtract_ranges([[0, 10], [20, 30]], [[2, 4], [8, 25]]) == [[0, 2], [4, 8], [25, 30]]
    assert subtract_ranges([[0, 10]], [[0, 10]]) == []
    assert HEADER_SIZE == 34


def test_a_copy_with_the_whole_index_from_an_older_fetch_is_used_and_extended(env, hub, world):
    from checkpoints_cache.data_store import fetch_ranges

    # the layout older fetches left: document.idx downloaded whole and linked into the folder
    old = fetch_ranges(DATA_REPO, {}, whole_files=["document.idx"], endpoint=env.endpoint, cache_dir=env.cache,
                       progress=False)
    assert (old.folder / "document.idx").is_symlink()
    hub.log.clear()
    got = _fetch(env, 1, 2)
    idx_sha = hashlib.sha256(world.data_files["document.idx"]).hexdigest()
    assert hub.requests("GET", f"/lfs-cdn/{idx_sha}") == []  # nothing of the index is fetched again
    assert got.folder == old.folder and got.bytes_moved == 2 * BATCH * ROW * 2
    np.testing.assert_array_equal(MMapIndexedDataset(got.folder).rows(BATCH, 3 * BATCH, ROW), world.rows[BATCH:3 * BATCH])


def test_missing_rows_of_a_partial_copy_are_named_span_by_span(env, hub, world):
    _fetch(env, 1, 1)
    _fetch(env, 4, 1)
    ds = MMapIndexedDataset(_fetch(env, 1, 1).folder)
    with pytest.raises(NotFetchedError) as e:
        ds.check_fetched(0, 6 * BATCH)
    assert e.value.spans == [(0, BATCH), (2 * BATCH, 4 * BATCH), (5 * BATCH, 6 * BATCH)]
    assert f"rows 0..{BATCH - 1}, {2 * BATCH}..{4 * BATCH - 1}, {5 * BATCH}..{6 * BATCH - 1} of" in str(e.value)
    from data_order.source import TokenRows

    with pytest.raises(NotFetchedError, match=rf"`branchpoint fetch {RUN} --data-batches 0..0 --data-batches 2..3 "
                                              r"--data-batches 5..5`"):
        TokenRows(ds, BATCH, ROW - 1, run=RUN).check_fetched(0, 6)


def test_fetch_commands_and_batch_spans_round_trip():
    from data_order.remote import fetch_command, parse_batches, spans_text

    assert fetch_command("pythia-160m", [(4000, 4010)], 4000, optimizer=True) == \
        "branchpoint fetch pythia-160m --step 4000 --optimizer --data-batches 4000..4009"
    assert fetch_command("pythia-410m", [(0, 4), (9, 10)]) == \
        "branchpoint fetch pythia-410m --data-batches 0..3 --data-batches 9..9"
    assert [parse_batches(x) for x in ("0..3", "9", " 7 .. 8 ")] == [(0, 4), (9, 10), (7, 9)]
    assert spans_text([(0, 1), (4, 6)], 1024) == "batches 0..0 (rows 0..1023), batches 4..5 (rows 4096..6143)"
    for bad in ("3..1", "a..b", "-1"):
        with pytest.raises(UserError, match="--data-batches"):
            parse_batches(bad)
