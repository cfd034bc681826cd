"""Plan and fetch only the data rows a branch needs: global batches N .. N+K-1 of a released run.

For Pythia's preshuffled repos (pythia.md §4.1-§4.3): fetch ``document.idx`` whole, read the byte
range of rows [N*B, (N+K)*B) from it, cut that range of the virtual ``.bin`` at the shard edges
(the shards are a byte split of it, in file-name order, pythia.md §4.2), and let
``checkpoints_cache.data_store`` fetch exactly those byte ranges into the partial store.
Branching from step 20000 for 2000 steps moves 2000 * 1024 * 2049 * 2 B = 8.4 GB, not 600 GB.

This module plans; all network I/O is in ``checkpoints_cache`` (DESIGN.md: data_order never opens
a connection itself).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from checkpoints_cache import data_store, hub
from checkpoints_cache.errors import UserError
from checkpoints_cache.fetch import check_data_steps
from checkpoints_cache.registry import RunInfo

from .mmidx import DTYPE_CODES, HEADER, HEADER_SIZE, INDEX_NAME, MAGIC, DataOrderError, MMapIndexedDataset
from .row_check import row_range_validator
from .steps import batch_rows

SHARD_RE = re.compile(r"^document-(\d{5})-of-(\d{5})\.bin$")


@dataclass
class DataFetch:
    folder: Path
    rows: range
    row_bytes: int  # bytes of the needed rows
    bytes_moved: int  # range payload moved by this call (0 when everything was already there)
    requests: int


def _index_arrays(idx_path: Path) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """(dtype, sizes, pointers) from an MMIDIDX index alone (the shards need not exist yet)."""
    with open(idx_path, "rb") as f:
        magic, _version, code, n, _d = HEADER.unpack(f.read(HEADER_SIZE))
    if magic != MAGIC or code not in DTYPE_CODES:
        raise DataOrderError(f"{idx_path} is not an MMIDIDX index (magic {magic!r}, dtype code {code})")
    buf = np.memmap(idx_path, dtype=np.uint8, mode="r")
    sizes = np.frombuffer(buf, dtype="<i4", count=n, offset=HEADER_SIZE)
    pointers = np.frombuffer(buf, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
    return DTYPE_CODES[code], sizes, pointers


def shard_layout(names_sizes: dict[str, int]) -> list[tuple[str, int, int]]:
    """[(shard file, start in the virtual .bin, size)] in shard order."""
    shards = sorted((int(m.group(1)), name, size) for name, size in names_sizes.items() if (m := SHARD_RE.match(name)))
    if not shards or [i for i, _, _ in shards] != list(range(len(shards))):
        raise DataOrderError(f"the repo's shards are not document-00000-of-NNNNN.bin .. without gaps: {sorted(names_sizes)[:5]}")
    out, start = [], 0
    for _, name, size in shards:
        out.append((name, start, size))
        start += size
    return out


def split_at_shards(offset: int, nbytes: int, layout: list[tuple[str, int, int]]) -> dict[str, list[tuple[int, int]]]:
    """{shard: [(start, end)]} in-shard byte ranges covering virtual bytes [offset, offset+nbytes)."""
    out: dict[str, list[tuple[int, int]]] = {}
    end = offset + nbytes
    for name, start, size in layout:
        lo, hi = max(offset, start), min(end, start + size)
        if lo < hi:
            out.setdefault(name, []).append((lo - start, hi - start))
    if sum(e - s for rs in out.values() for s, e in rs) != nbytes:
        raise DataOrderError(f"bytes {offset}..{end - 1} run past the end of the shards ({layout[-1][1] + layout[-1][2]} bytes)")
    return out


def fetch_data_steps(
    run: RunInfo, step: int, k: int, *, endpoint: str | None = None, cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None, progress: bool = True,
) -> DataFetch:
    """Fetch the rows of global batches ``step .. step+k-1`` of ``run`` (a branch from ``step`` trains
    on batch ``step`` first, DESIGN.md "Step semantics") into the partial data store."""
    order = check_data_steps(run, k)
    repo, revision = order["repo_id"], order.get("revision", "main")
    b, t = int(order["batch_size"]), int(order["seq_len"])
    rows = range(batch_rows(step, b).start, batch_rows(step + k - 1, b).stop)

    if hub.is_offline():
        folder = data_store.existing_partial_dir(repo, revision, root=root)
        if folder is None:
            raise UserError(f"no data of {repo} was fetched yet and offline mode is on (HF_HUB_OFFLINE=1); fetch with network access first")
        _check_rows(folder, rows, t)  # raises NotFetchedError naming the missing rows
        print(f"offline: rows {rows.start}..{rows.stop - 1} of {repo} already in {folder}", file=sys.stderr)
        return DataFetch(folder, rows, 0, 0, 0)

    commit = hub.resolve_commit(repo, revision, repo_type="dataset", endpoint=endpoint)
    files = hub.list_files(repo, commit, repo_type="dataset", endpoint=endpoint)
    if INDEX_NAME not in files:
        raise UserError(f"{repo}@{revision} has no {INDEX_NAME}; is it a preshuffled MMIDIDX repo?")
    layout = shard_layout({n: f.size for n, f in files.items() if SHARD_RE.match(n)})
    got = data_store.fetch_ranges(repo, {}, revision=revision, commit=commit, whole_files=[INDEX_NAME],
                                  endpoint=endpoint, cache_dir=cache_dir, root=root, progress=progress)
    dtype, sizes, pointers = _index_arrays(got.folder / INDEX_NAME)
    if rows.stop > len(sizes):
        last_step = len(sizes) // b - 1
        raise UserError(f"batches {step}..{step + k - 1} need rows up to {rows.stop - 1} but {repo} has {len(sizes)} rows "
                        f"(last whole batch: {last_step})")
    bad = np.flatnonzero(sizes[rows.start:rows.stop] != t + 1)
    if bad.size:
        raise DataOrderError(f"row {rows.start + int(bad[0])} of {repo} has {int(sizes[rows.start + bad[0]])} tokens, not {t + 1}")
    offset = int(pointers[rows.start])
    nbytes = int(sizes[rows.start:rows.stop].sum(dtype=np.int64)) * dtype.itemsize
    wanted = split_at_shards(offset, nbytes, layout)
    # Every range is checked before it is recorded: row lengths, token ids < the run's vocabulary.
    validate = row_range_validator(layout, dtype, sizes, pointers, t + 1, (run.architecture or {}).get("vocab_size"),
                                   fetched=lambda: data_store.read_fetched(got.folder))
    moved = data_store.fetch_ranges(repo, wanted, revision=revision, commit=commit, endpoint=endpoint,
                                    cache_dir=cache_dir, root=root, progress=progress, validate=validate)
    _check_rows(moved.folder, rows, t)
    return DataFetch(moved.folder, rows, nbytes, moved.bytes_received, moved.requests)


def _check_rows(folder: Path, rows: range, seq_len: int) -> None:
    """Read the first and last needed row through the reader the trainer uses (cheap sanity check)."""
    ds = MMapIndexedDataset(folder)
    ds.rows(rows.start, rows.start + 1, seq_len + 1)
    ds.rows(rows.stop - 1, rows.stop, seq_len + 1)
