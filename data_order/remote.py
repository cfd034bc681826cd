"""Plan and fetch only the data rows a branch needs: global batches of a released run, by byte ranges.

For Pythia's preshuffled repos (pythia.md §4.1-§4.3) nothing is downloaded whole. From
``document.idx`` (34 + 12 N + 8 D bytes; ~2.9 GB for Pythia's N = 146,432,000 rows) only the
header, the ``sizes`` (4 bytes) and ``pointers`` (8 bytes) entries of the needed rows and of the
first and last row are read: 12 bytes per row. Their pointers give the byte range of the rows in
the virtual ``.bin``, cut at the shard edges (the shards are a byte split of it, in file-name
order, pythia.md §4.2); ``checkpoints_cache.data_store`` fetches exactly those ranges into the
partial store, where ``document.idx`` is itself a sparse file with its fetched ranges recorded.
A later fetch of other rows extends the same copy. A branch from step 20000 for 2000 steps moves
2000 * 1024 * 2049 * 2 B = 8.4 GB of rows and 25 MB of index, not 600 GB and 2.9 GB.

Offline (``HF_HUB_OFFLINE=1``) everything works from what is in the partial store, and what is
missing is named span by span with the command that fetches it.

This module plans; all network I/O is in ``checkpoints_cache`` (DESIGN.md: data_order never opens
a connection itself).
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from checkpoints_cache import data_store, hub
from checkpoints_cache.errors import UserError
from checkpoints_cache.fetch import check_data_steps, human
from checkpoints_cache.registry import RunInfo

from .mmidx import DTYPE_CODES, HEADER, HEADER_SIZE, INDEX_NAME, MAGIC, DataOrderError, MMapIndexedDataset
from .row_check import row_range_validator

SHARD_RE = re.compile(r"^document-(\d{5})-of-(\d{5})\.bin$")
# Pythia's token dtype (pythia.md §4.3): used only to size a plan before the header is read.
ASSUMED_ITEMSIZE = 2

Span = tuple[int, int]  # [first, stop) of global batches


# -- spans ------------------------------------------------------------------------------------------
def merge_spans(spans: list[Span]) -> list[Span]:
    return [(a, b) for a, b in data_store.merge_ranges(spans)]


def spans_text(spans: list[Span], batch_size: int) -> str:
    """``batches 0..7 (rows 0..8191), batches 9..9 (rows 9216..10239)``."""
    return ", ".join(f"batches {a}..{b - 1} (rows {a * batch_size}..{b * batch_size - 1})" for a, b in spans)


def fetch_command(run_name: str, spans: list[Span], step: int | None = None, optimizer: bool = False) -> str:
    """The one command that fetches ``spans`` (and the weights at ``step``, and its NeoX optimizer state)
    of ``run_name``."""
    parts = [f"branchpoint fetch {run_name}"]
    if step is not None:
        parts.append(f"--step {step}")
    if optimizer:
        parts.append("--optimizer")
    parts += [f"--data-batches {a}..{b - 1}" for a, b in spans]
    return " ".join(parts)


def parse_batches(text: str) -> Span:
    """``A..B`` (inclusive) or ``A`` -> the span [A, B+1)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", str(text))
    if not m:
        raise UserError(f"--data-batches {text!r}: write FIRST..LAST (inclusive global batch numbers) or one number")
    a = int(m.group(1))
    b = int(m.group(2)) if m.group(2) is not None else a
    if b < a:
        raise UserError(f"--data-batches {text}: the last batch {b} is before the first {a}; write FIRST..LAST")
    return a, b + 1


# -- index arithmetic -------------------------------------------------------------------------------
def _index_ranges(rows: list[Span], n: int) -> list[tuple[int, int]]:
    """Byte ranges of ``document.idx`` holding the header and the sizes + pointers of ``rows``."""
    out = [(0, HEADER_SIZE)]
    for a, b in rows:
        out.append((HEADER_SIZE + 4 * a, HEADER_SIZE + 4 * b))
        out.append((HEADER_SIZE + 4 * n + 8 * a, HEADER_SIZE + 4 * n + 8 * b))
    return [(s, e) for s, e in data_store.merge_ranges(out)]


def _with_skeleton(rows: list[Span], n: int) -> list[Span]:
    # Rows 0 and N-1 as well: the reader checks the row length on row 0 and the data size on row N-1.
    return merge_spans(rows + [(0, 1), (n - 1, n)])


def _row_spans(spans: list[Span], batch_size: int) -> list[Span]:
    return merge_spans([(a * batch_size, b * batch_size) for a, b in spans])


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


def _covered(ranges: list[list[int]], start: int, end: int) -> bool:
    return not data_store.subtract_ranges([[start, end]], ranges)


# -- the partial copy as it is on disk --------------------------------------------------------------
@dataclass
class LocalCopy:
    """What the partial store holds of a data-order repo (no network)."""

    folder: Path | None
    fetched: dict[str, list[list[int]]] = field(default_factory=dict)
    index_complete: bool = False  # document.idx downloaded whole (older fetches)
    num_rows: int | None = None
    itemsize: int = ASSUMED_ITEMSIZE

    @classmethod
    def open(cls, folder: Path | None) -> "LocalCopy":
        if folder is None or not (folder / INDEX_NAME).exists():
            return cls(folder, data_store.read_fetched(folder) if folder else {})
        fetched = data_store.read_fetched(folder)
        complete = INDEX_NAME not in fetched
        copy = cls(folder, fetched, complete)
        if complete or _covered(fetched.get(INDEX_NAME, []), 0, HEADER_SIZE):
            dtype, n = read_header(folder / INDEX_NAME)
            copy.num_rows, copy.itemsize = n, dtype.itemsize
        return copy

    def has_index_entries(self, rows: list[Span]) -> bool:
        if self.num_rows is None:
            return False
        if self.index_complete:
            return True
        have = self.fetched.get(INDEX_NAME, [])
        return all(_covered(have, s, e) for s, e in _index_ranges(rows, self.num_rows))

    def index_bytes_missing(self, rows: list[Span], n_hint: int | None = None) -> int:
        """Index bytes still to fetch for ``rows`` (header, entries of rows 0 and N-1 included); ``n_hint``
        is the row count to assume while the header is not here yet."""
        if self.index_complete:
            return 0
        n = self.num_rows or n_hint
        if n is None:  # nothing known: the header plus 12 bytes per row and for rows 0 and N-1
            return HEADER_SIZE + 12 * (sum(b - a for a, b in merge_spans(rows)) + 2)
        wanted = _index_ranges(_with_skeleton(rows, n), n)
        return sum(e - s for s, e in data_store.subtract_ranges(wanted, self.fetched.get(INDEX_NAME, [])))

    def missing_rows(self, rows: list[Span]) -> list[Span]:
        """Row spans whose index entries or data bytes are not on disk."""
        if self.folder is None or self.num_rows is None:
            return merge_spans(rows)
        try:
            ds = MMapIndexedDataset(self.folder)
        except DataOrderError:  # the header is here but no row yet
            return merge_spans(rows)
        out: list[Span] = []
        for a, b in merge_spans(rows):
            out += ds.missing_row_spans(a, min(b, self.num_rows))
            if b > self.num_rows:
                out.append((max(a, self.num_rows), b))
        return merge_spans(out)


# -- planning (metadata only) -----------------------------------------------------------------------
@dataclass
class RowsPlan:
    """What fetching the global batches ``spans`` of a run's data order involves; moves no file bytes."""

    run: str
    repo_id: str
    revision: str
    commit: str | None  # None offline
    batch_size: int
    seq_len: int
    spans: list[Span]
    num_rows: int | None  # rows in the data order (header if cached, else from the file sizes)
    rows: int  # rows needed
    data_bytes: int  # bytes of those rows
    data_missing_bytes: int
    index_bytes: int  # index bytes needed (header + 12 per row + rows 0 and N-1)
    index_missing_bytes: int
    missing: list[Span]  # batch spans not (completely) on disk
    folder: Path | None
    offline: bool

    @property
    def num_batches(self) -> int | None:
        return None if self.num_rows is None else self.num_rows // self.batch_size

    def check_extent(self) -> None:
        """UserError if a needed batch lies past the end of the data order."""
        nb = self.num_batches
        if nb is None:
            return
        last = max(b for _, b in self.spans)
        if last > nb:
            raise UserError(
                f"batches up to {last - 1} are needed but the data order of {self.run} ({self.repo_id}) holds "
                f"{self.num_rows} rows = {nb} global batches of {self.batch_size} (last batch {nb - 1})"
            )

    def missing_error(self, step: int | None = None, weights_missing: bool = False,
                      optimizer_missing: bool = False) -> UserError:
        """One line naming every missing span (and the weights and NeoX optimizer state, if missing) and
        the command that fetches them all."""
        what = [f"the weights of {self.run} at step {step}"] if weights_missing else []
        if optimizer_missing:
            what.append(f"its NeoX optimizer state at step {step}")
        if self.missing:
            what.append(f"{spans_text(self.missing, self.batch_size)} of {self.repo_id}")
        with_step = step if weights_missing or optimizer_missing else None
        return UserError(
            f"offline (HF_HUB_OFFLINE=1) and the caches lack {' and '.join(what)}; with network access run: "
            f"{fetch_command(self.run, self.missing, with_step, optimizer_missing)}"
        )


def _order_of(run: RunInfo) -> dict:
    return check_data_steps(run, 1, what="fetching the data rows")


def plan_rows(run: RunInfo, spans: list[Span], *, endpoint: str | None = None, root: str | os.PathLike | None = None,
              files: dict | None = None) -> RowsPlan:
    """Plan fetching global batches ``spans`` (half-open [a, b)) of ``run``'s data order.

    Online: one revision lookup and one file listing (sizes), no file bytes. Offline: the partial
    store only."""
    order = _order_of(run)
    repo, revision = order["repo_id"], order.get("revision", "main")
    b_size, t = int(order["batch_size"]), int(order["seq_len"])
    spans = merge_spans(spans)
    offline = hub.is_offline()
    commit = None
    if offline:
        folder = data_store.existing_partial_dir(repo, revision, root=root)
    else:
        commit = hub.resolve_commit(repo, revision, repo_type="dataset", endpoint=endpoint)
        files = files or hub.list_files(repo, commit, repo_type="dataset", endpoint=endpoint)
        if INDEX_NAME not in files:
            raise UserError(f"{repo}@{revision} has no {INDEX_NAME}; is it a preshuffled MMIDIDX repo?")
        folder = data_store.store_folder(repo, root=root) / commit
        folder = folder if (folder / data_store.MANIFEST).is_file() else None
    local = LocalCopy.open(folder)
    num_rows = local.num_rows
    if num_rows is None and files is not None:
        num_rows = _rows_from_sizes(files, t)
    rows = _row_spans(spans, b_size)
    n_rows = sum(e - s for s, e in rows)
    row_bytes = (t + 1) * local.itemsize
    missing_rows = local.missing_rows(rows)
    missing = merge_spans([(a // b_size, -(-e // b_size)) for a, e in missing_rows])
    index_total = LocalCopy(None).index_bytes_missing(rows, num_rows)
    return RowsPlan(
        run=run.name, repo_id=repo, revision=revision, commit=commit, batch_size=b_size, seq_len=t, spans=spans,
        num_rows=num_rows, rows=n_rows, data_bytes=n_rows * row_bytes,
        data_missing_bytes=sum(e - s for s, e in missing_rows) * row_bytes,
        index_bytes=0 if local.index_complete else index_total,
        index_missing_bytes=local.index_bytes_missing(rows, num_rows),
        missing=missing, folder=folder, offline=offline,
    )


def _rows_from_sizes(files: dict, seq_len: int) -> int | None:
    """Rows of a preshuffled repo from its file sizes alone: the shards hold N rows of seq_len + 1
    tokens, and the index has 34 + 12 N + 8 D bytes for some D >= 1 (checked)."""
    shard_bytes = sum(f.size for n, f in files.items() if SHARD_RE.match(n))
    row = (seq_len + 1) * ASSUMED_ITEMSIZE
    if not shard_bytes or shard_bytes % row:
        return None
    n = shard_bytes // row
    rest = files[INDEX_NAME].size - HEADER_SIZE - 12 * n
    return n if rest >= 8 and rest % 8 == 0 else None


# -- fetching ---------------------------------------------------------------------------------------
@dataclass
class DataFetch:
    folder: Path
    rows: range  # first needed row .. last needed row + 1
    row_bytes: int  # bytes of the needed rows
    bytes_moved: int  # data-row payload moved by this call (0 when everything was already there)
    requests: int
    index_bytes_moved: int = 0
    spans: list[Span] = field(default_factory=list)


def fetch_rows(
    run: RunInfo, spans: list[Span], *, endpoint: str | None = None, cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None, progress: bool = True,
) -> DataFetch:
    """Fetch the rows of global batches ``spans`` of ``run`` into the partial store (index entries by
    range, then the rows' bytes); offline, check they are all there and name what is missing."""
    order = _order_of(run)
    repo, revision = order["repo_id"], order.get("revision", "main")
    b_size, t = int(order["batch_size"]), int(order["seq_len"])
    spans = merge_spans(spans)
    rows = _row_spans(spans, b_size)
    overall = range(rows[0][0], rows[-1][1])

    if hub.is_offline():
        plan = plan_rows(run, spans, root=root)
        if plan.folder is None or plan.missing:
            raise plan.missing_error()
        plan.check_extent()
        print(f"offline: {spans_text(spans, b_size)} of {repo} already in {plan.folder}", file=sys.stderr)
        return DataFetch(plan.folder, overall, plan.data_bytes, 0, 0, 0, spans)

    commit = hub.resolve_commit(repo, revision, repo_type="dataset", endpoint=endpoint)
    files = hub.list_files(repo, commit, repo_type="dataset", endpoint=endpoint)
    if INDEX_NAME not in files:
        raise UserError(f"{repo}@{revision} has no {INDEX_NAME}; is it a preshuffled MMIDIDX repo?")
    layout = shard_layout({n: f.size for n, f in files.items() if SHARD_RE.match(n)})

    def get(wanted: dict[str, list[tuple[int, int]]], progress: bool = progress, validate=None) -> data_store.RangeFetch:
        return data_store.fetch_ranges(repo, wanted, revision=revision, commit=commit, endpoint=endpoint,
                                       cache_dir=cache_dir, root=root, progress=progress, validate=validate)

    folder = data_store.store_folder(repo, root=root) / commit
    local = LocalCopy.open(folder if (folder / data_store.MANIFEST).is_file() else None)
    index_moved = 0
    total = layout[-1][1] + layout[-1][2]
    if local.num_rows is None:  # 1. the header: N and the token dtype
        index_moved += get({INDEX_NAME: [(0, HEADER_SIZE)]}, progress=False, validate=_header_check).bytes_received
        local = LocalCopy.open(folder)
    n = int(local.num_rows)
    if rows[-1][1] > n:
        raise UserError(f"batches up to {spans[-1][1] - 1} need rows up to {rows[-1][1] - 1} but {repo} has {n} rows "
                        f"(last whole batch: {n // b_size - 1})")
    if not local.index_complete:  # 2. sizes + pointers of the needed rows, by range (checked before recorded)
        check = _index_validator(n, rows, t + 1, local.itemsize, total)
        index_moved += get({INDEX_NAME: _index_ranges(_with_skeleton(rows, n), n)}, validate=check).bytes_received
    dtype, sizes, pointers = index_entries(folder / INDEX_NAME)
    wanted: dict[str, list[tuple[int, int]]] = {}
    nbytes = 0
    for a, e in rows:  # 3. the rows' bytes, cut at the shard edges
        _check_entries(sizes[a:e], pointers[a:e], dtype.itemsize, a, t, repo)
        offset, size = int(pointers[a]), int(sizes[a:e].sum(dtype=np.int64)) * dtype.itemsize
        nbytes += size
        for name, rs in split_at_shards(offset, size, layout).items():
            wanted.setdefault(name, []).extend(rs)
    # Every range is checked before it is recorded: row lengths, token ids < the run's vocabulary.
    validate = _rows_validator(layout, dtype, sizes, pointers, rows, t + 1, (run.architecture or {}).get("vocab_size"),
                               fetched=lambda: data_store.read_fetched(folder))
    moved = data_store.fetch_ranges(repo, wanted, revision=revision, commit=commit, endpoint=endpoint,
                                    cache_dir=cache_dir, root=root, progress=progress, validate=validate)
    ds = MMapIndexedDataset(folder)
    missing = [r for a, e in rows for r in ds.missing_row_spans(a, e)]
    if missing:  # a range recorded but unreadable would be a bug in the store; say so plainly
        raise DataOrderError(f"rows {missing[0][0]}..{missing[0][1] - 1} of {repo} are still missing after the fetch")
    return DataFetch(folder, overall, nbytes, moved.bytes_received, moved.requests, index_moved, spans)


def read_header(idx_path: Path) -> tuple[np.dtype, int]:
    """(token dtype, number of rows N) from the 34-byte MMIDIDX header."""
    with open(idx_path, "rb") as f:
        magic, _version, code, n, _d = HEADER.unpack(f.read(HEADER_SIZE))
    if magic != MAGIC or code not in DTYPE_CODES:
        raise DataOrderError(f"{idx_path} is not an MMIDIDX index (magic {magic!r}, dtype code {code}); "
                             f"delete {idx_path.parent} and fetch again")
    return DTYPE_CODES[code], int(n)


def _header_check(name: str, s: int, e: int, path: Path) -> str | None:
    """The 34-byte MMIDIDX header: magic, version 1, a known token dtype (pythia.md §4.3)."""
    if name != INDEX_NAME or s > 0 or e < HEADER_SIZE:
        return None
    with open(path, "rb") as f:
        magic, version, code, _n, _d = HEADER.unpack(f.read(HEADER_SIZE))
    if magic != MAGIC or version != 1 or code not in DTYPE_CODES:
        return f"the first {HEADER_SIZE} bytes are not an MMIDIDX header (magic {magic!r}, version {version}, dtype {code})"
    return None


def _index_validator(n: int, rows: list[Span], row_len: int, itemsize: int,
                     total_bytes: int) -> Callable[[str, int, int, Path], str | None]:
    """The range check of ``document.idx`` entries before they are recorded (as the rows' own check):
    the needed rows' sizes are ``row_len``, their pointers lie back to back, row 0 starts at 0 and
    every pointer lies inside the shards."""
    step = row_len * itemsize

    def needed(r0: int, r1: int) -> np.ndarray:
        mask = np.zeros(r1 - r0, dtype=bool)
        for a, b in rows:
            lo, hi = max(a, r0), min(b, r1)
            if lo < hi:
                mask[lo - r0:hi - r0] = True
        return mask

    def check(name: str, s: int, e: int, path: Path) -> str | None:
        if name != INDEX_NAME or e <= s:
            return None
        buf = np.memmap(path, dtype=np.uint8, mode="r")
        if s < HEADER_SIZE <= e:
            magic, version, code, count, _d = HEADER.unpack(bytes(buf[:HEADER_SIZE]))
            if magic != MAGIC or version != 1 or code not in DTYPE_CODES or count != n:
                return f"the header is not an MMIDIDX header of {n} rows"
        lo, hi = max(s, HEADER_SIZE), min(e, HEADER_SIZE + 4 * n)  # sizes
        if lo < hi:
            r0 = (lo - HEADER_SIZE) // 4
            sizes = np.frombuffer(bytes(buf[lo:hi]), dtype="<i4")
            bad = np.flatnonzero((sizes != row_len) & needed(r0, r0 + sizes.size))
            if bad.size:
                return f"row {r0 + int(bad[0])} has {int(sizes[bad[0]])} tokens in the index, not {row_len}"
        lo, hi = max(s, HEADER_SIZE + 4 * n), min(e, HEADER_SIZE + 12 * n)  # pointers
        if lo < hi:
            r0 = (lo - HEADER_SIZE - 4 * n) // 8
            ptr = np.frombuffer(bytes(buf[lo:hi]), dtype="<i8")
            mask = needed(r0, r0 + ptr.size)
            if ((ptr < 0) | (ptr >= total_bytes)).any() or (r0 == 0 and ptr[0] != 0):
                return f"a pointer of rows {r0}..{r0 + ptr.size - 1} lies outside the {total_bytes} bytes of the shards"
            both = mask[1:] & mask[:-1]
            if (np.diff(ptr)[both] != step).any():
                return f"the pointers of rows {r0}..{r0 + ptr.size - 1} do not step by {step} bytes"
        return None

    return check


def index_entries(idx_path: Path) -> tuple[np.dtype, np.ndarray, np.ndarray]:
    """(dtype, sizes, pointers) of an MMIDIDX index, read in place (a sparse partial copy included:
    entries not fetched read as zeros, so only look at fetched rows)."""
    dtype, n = read_header(idx_path)
    buf = np.memmap(idx_path, dtype=np.uint8, mode="r")
    sizes = np.frombuffer(buf, dtype="<i4", count=n, offset=HEADER_SIZE)
    pointers = np.frombuffer(buf, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
    return dtype, sizes, pointers


def _rows_validator(layout: list[tuple[str, int, int]], dtype: np.dtype, sizes: np.ndarray, pointers: np.ndarray,
                    rows: list[Span], row_len: int, vocab: int | None, fetched) -> Callable[[str, int, int, Path], str | None]:
    """``data_order.row_check``'s range check, given only the index entries of ``rows`` (a partial index
    holds zeros elsewhere, which its search over the pointers must not see): one check per row span,
    its row numbers shifted back to the data order's."""
    starts = {name: start for name, start, _ in layout}
    checks = []
    for a, e in rows:
        lo = int(pointers[a])
        hi = int(pointers[e - 1]) + int(sizes[e - 1]) * dtype.itemsize
        checks.append((a, lo, hi, row_range_validator(layout, dtype, sizes[a:e], pointers[a:e], row_len, vocab, fetched)))

    def check(name: str, s: int, e: int, path: Path) -> str | None:
        v = starts.get(name, 0) + s
        for a, lo, hi, fn in checks:
            if lo <= v < hi:
                problem = fn(name, s, e, path)
                return re.sub(r"\brow (\d+)", lambda m: f"row {int(m.group(1)) + a}", problem) if problem else None
        return None

    return check


_index_arrays = index_entries  # the name data_order.row_check's tests use


def _check_entries(sizes: np.ndarray, ptr: np.ndarray, itemsize: int, a: int, seq_len: int, repo: str) -> None:
    """The fetched index entries of rows a, a+1, ...: every row seq_len + 1 tokens, back to back."""
    bad = np.flatnonzero(sizes != seq_len + 1)
    if bad.size:
        raise DataOrderError(f"row {a + int(bad[0])} of {repo} has {int(sizes[bad[0]])} tokens, not {seq_len + 1}")
    step = (seq_len + 1) * itemsize
    if ptr.size > 1 and not np.all(np.diff(ptr) == step):
        i = a + int(np.flatnonzero(np.diff(ptr) != step)[0])
        raise DataOrderError(f"rows {i} and {i + 1} of {repo} do not lie back to back in the .bin; the index is corrupt")


def fetch_data_steps(
    run: RunInfo, step: int, k: int, *, endpoint: str | None = None, cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None, progress: bool = True,
) -> DataFetch:
    """Fetch the rows of global batches ``step .. step+k-1`` of ``run`` (a branch from ``step`` trains
    on batch ``step`` first, DESIGN.md "Step semantics") into the partial data store."""
    check_data_steps(run, k)
    return fetch_rows(run, [(step, step + k)], endpoint=endpoint, cache_dir=cache_dir, root=root, progress=progress)


def plan_lines(plan: RowsPlan) -> list[str]:
    """Human lines for ``fetch --dry-run``."""
    cached_rows = plan.data_bytes - plan.data_missing_bytes
    out = [f"{plan.repo_id}  {INDEX_NAME}: header + sizes/pointers of {plan.rows} rows  {human(plan.index_bytes)}  "
           f"({human(plan.index_missing_bytes)} to fetch, by byte ranges)",
           f"{plan.repo_id}  {spans_text(plan.spans, plan.batch_size)}  {human(plan.data_bytes)}  "
           f"({human(plan.data_missing_bytes)} to fetch, {human(cached_rows)} cached; byte ranges of the shards)"]
    if plan.num_batches is not None and max(b for _, b in plan.spans) > plan.num_batches:
        out.append(f"note: the data order holds {plan.num_batches} batches only; a real fetch stops with an error")
    return out
