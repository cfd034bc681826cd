"""Megatron / GPT-NeoX ``MMIDIDX`` datasets: ``.idx`` + ``.bin``, single file or Pythia's shards.

Byte layout of the ``.idx`` (``reference/pythia.md`` §4.3, same as ``neox@v1.0``
``megatron/data/indexed_dataset.py``), all little-endian::

    0   9 bytes  magic b"MMIDIDX\\x00\\x00"
    9   <Q       version, must be 1
    17  <B       dtype code (DTYPE_CODES)
    18  <Q       N = number of items
    26  <Q       D = number of doc_idx entries
    34  int32[N] sizes     (tokens per item)
        int64[N] pointers  (byte offset of each item in the .bin)
        int64[D] doc_idx   (item index where each document starts, starting with 0)

The ``.bin`` is the raw concatenation of the items. Pythia's preshuffled repos split that one
virtual ``.bin`` into 21 byte-chunks ``document-00000-of-00020.bin`` … (``utils/unshard_memmap.py``:
every shard has the size of shard 0 except the last), so an item can straddle two shard files.
:class:`MMapIndexedDataset` reads straight from the shards; nothing is ever unsharded.

A folder fetched only in part (``checkpoints_cache`` fetch with ``--data-steps``) carries
``fetched_ranges.json`` = ``{"<shard file>": [[start, end], ...]}``: the listed byte ranges are
the only ones written in its sparse shard files; reading anything else is refused. When the
manifest lists ``document.idx`` too, the index itself is such a sparse file (header, the entries
of rows 0 and N-1 and of the rows fetched): rows whose entries were not fetched are refused the
same way.
"""

from __future__ import annotations

import bisect
import contextlib
import ctypes
import json
import mmap
import os
import re
import struct
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import atomic_file, usual_mode

MAGIC = b"MMIDIDX\x00\x00"
VERSION = 1
HEADER = struct.Struct("<9sQBQQ")  # magic, version, dtype code, N, D
HEADER_SIZE = HEADER.size  # 34

# dtype code -> numpy dtype (reference/pythia.md §4.3); explicit little-endian like the files.
DTYPE_CODES: dict[int, np.dtype] = {
    1: np.dtype("u1"),
    2: np.dtype("i1"),
    3: np.dtype("<i2"),
    4: np.dtype("<i4"),
    5: np.dtype("<i8"),
    6: np.dtype("<f4"),
    7: np.dtype("<f8"),
    8: np.dtype("<u2"),
}
CODE_OF_DTYPE: dict[np.dtype, int] = {dt: code for code, dt in DTYPE_CODES.items()}

INDEX_NAME = "document.idx"  # the index inside a folder of shards, as in Pythia's repos
MANIFEST_NAME = "fetched_ranges.json"
SHARD_RE = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<last>\d{5})\.bin$")
FETCH_HINT = "run `branchpoint fetch RUN --step N --data-steps K`"


class DataOrderError(UserError):
    """A data-order file or request is unusable; the message names the value and the fix."""


class NotFetchedError(DataOrderError):
    """Rows of a partial folder lie outside the byte ranges that were fetched. ``spans`` lists every
    missing run of rows as half-open ``(first, stop)``; the message names them all."""

    def __init__(self, prefix: str, first_row: int, last_row: int, hint: str = FETCH_HINT,
                 spans: list[tuple[int, int]] | None = None):
        self.prefix, self.first_row, self.last_row = prefix, first_row, last_row
        self.spans = spans or [(first_row, last_row + 1)]
        what = ", ".join(f"{a}..{b - 1}" for a, b in self.spans)
        super().__init__(f"rows {what} of {prefix} were not fetched; {hint}")


def covered_mask(ranges: Sequence[Sequence[int]], lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For each [lo, hi) byte span: is it inside one of ``ranges`` (sorted, merged, end exclusive)?"""
    if not len(ranges):
        return np.zeros(np.shape(lo), dtype=bool)
    starts = np.fromiter((a for a, _ in ranges), dtype=np.int64)
    ends = np.fromiter((b for _, b in ranges), dtype=np.int64)
    i = np.searchsorted(starts, lo, side="right") - 1
    return (i >= 0) & (ends[np.maximum(i, 0)] >= hi)


def mask_spans(missing: np.ndarray, offset: int) -> list[tuple[int, int]]:
    """Runs of True in ``missing`` as half-open ``(offset + first, offset + stop)`` spans."""
    if not missing.any():
        return []
    padded = np.concatenate([[False], missing, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(offset + int(a), offset + int(b)) for a, b in zip(edges[::2], edges[1::2])]


def shard_name(base: str, index: int, num_shards: int) -> str:
    """``document-00003-of-00020.bin``: the number after "of" is the last index, as on the Hub."""
    return f"{base}-{index:05d}-of-{num_shards - 1:05d}.bin"


def _canonical_dtype(dtype: np.dtype | type | str) -> np.dtype:
    dt = np.dtype(dtype).newbyteorder("<") if np.dtype(dtype).itemsize > 1 else np.dtype(dtype)
    if dt not in CODE_OF_DTYPE:
        names = ", ".join(f"{c}={d.name}" for c, d in DTYPE_CODES.items())
        raise DataOrderError(f"dtype {np.dtype(dtype).name} has no MMIDIDX code; use one of {names}")
    return dt


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def _index_bytes_header(dtype: np.dtype, n: int, d: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, CODE_OF_DTYPE[dtype], n, d)


def _write_index(path: Path, dtype: np.dtype, sizes: np.ndarray, doc_idx: np.ndarray) -> None:
    """Write ``path`` atomically from item sizes; pointers are derived here (int64 cumsum)."""
    sizes = np.asarray(sizes, dtype="<i4")
    pointers = np.zeros(len(sizes), dtype="<i8")
    if len(sizes) > 1:
        np.cumsum(sizes[:-1], dtype="<i8", out=pointers[1:])
    pointers *= dtype.itemsize
    with atomic_file(path) as f:
        f.write(_index_bytes_header(dtype, len(sizes), len(doc_idx)))
        f.write(sizes.tobytes())
        f.write(pointers.tobytes())
        f.write(np.asarray(doc_idx, dtype="<i8").tobytes())


def _doc_idx(num_items: int, doc_lengths: Iterable[int] | None) -> np.ndarray:
    """[0, end of doc 1, end of doc 2, ...] as the NeoX builder's ``end_document`` appends it."""
    if doc_lengths is None:
        return np.arange(num_items + 1, dtype="<i8")
    lengths = np.fromiter((int(x) for x in doc_lengths), dtype=np.int64)
    if (lengths < 0).any() or lengths.sum() != num_items:
        raise DataOrderError(
            f"doc_lengths sum to {int(lengths.sum())} items but {num_items} items were written; "
            "give the number of items of each document, summing to the item count"
        )
    return np.concatenate([[0], np.cumsum(lengths)]).astype("<i8")


def _check_fits(arr: np.ndarray, dtype: np.dtype) -> None:
    if arr.size and np.issubdtype(arr.dtype, np.integer) and np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        lo, hi = arr.min(), arr.max()
        if lo < info.min or hi > info.max:
            raise DataOrderError(f"token values {lo}..{hi} do not fit {dtype.name}; pick a wider dtype such as int32")


def _stream_items(items: Iterable[np.ndarray], dtype: np.dtype, out) -> list[int]:
    """Write each item's bytes with ``out`` (a callable taking bytes); return the item sizes."""
    sizes: list[int] = []
    for item in items:
        arr = np.asarray(item)
        if arr.ndim not in (1, 2):
            raise DataOrderError(f"an item has shape {arr.shape}; items must be 1-D token arrays (or 2-D blocks of rows)")
        _check_fits(arr, dtype)
        out(np.ascontiguousarray(arr, dtype=dtype).tobytes())
        if arr.ndim == 2:  # a block of equal-length rows: many items in one write
            sizes.extend([arr.shape[1]] * arr.shape[0])
        else:
            sizes.append(int(arr.size))
    return sizes


def write_mmidx(
    prefix: str | os.PathLike,
    items: Iterable[np.ndarray],
    dtype: np.dtype | type | str = np.uint16,
    doc_lengths: Iterable[int] | None = None,
) -> None:
    """Write ``prefix.bin`` and ``prefix.idx`` (temp names, then renamed: ``.bin`` first, ``.idx`` last).

    ``items`` are 1-D token arrays (one dataset item each) or 2-D blocks of equal-length items.
    ``doc_lengths`` gives the number of items in each document (default: one item per document).
    """
    dt = _canonical_dtype(dtype)
    prefix = Path(prefix)
    with atomic_file(prefix.with_name(prefix.name + ".bin")) as f:
        sizes = _stream_items(items, dt, f.write)
    _write_index(prefix.with_name(prefix.name + ".idx"), dt, np.asarray(sizes), _doc_idx(len(sizes), doc_lengths))


def _plan_shard_size(total: int, num_shards: int) -> int:
    """Shard size S with shards 0..N-2 of S bytes and the last of total-(N-1)·S >= 0 bytes."""
    if num_shards == 1:
        return max(total, 1)
    size = -(-total // num_shards)  # ceil: the last shard is then the shorter one
    if (num_shards - 1) * size > total:
        size = total // (num_shards - 1)
    if size < 1:
        raise DataOrderError(f"{total} bytes of data are too few for {num_shards} shards; use num_shards=1")
    return size


def write_sharded(
    folder: str | os.PathLike,
    items: Iterable[np.ndarray],
    dtype: np.dtype | type | str = np.uint16,
    num_shards: int = 21,
    shard_size: int | None = None,
    doc_lengths: Iterable[int] | None = None,
    base: str = "document",
) -> None:
    """Write ``folder/document.idx`` + ``document-0000i-of-000NN.bin`` like Pythia's preshuffled repos.

    The shards are a byte split of the one virtual ``.bin``: shards 0..N-2 hold ``shard_size``
    bytes each (default: ceil(total / num_shards)), the last holds the rest. With an explicit
    ``shard_size`` (any byte count, odd ones included, so items straddle shard edges) the last
    shard must not come out negative; ``num_shards`` is then the exact number of files.
    """
    if num_shards < 1:
        raise DataOrderError(f"num_shards={num_shards}; use at least 1")
    dt = _canonical_dtype(dtype)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = [shard_name(base, i, num_shards) for i in range(num_shards)]
    # Stream into one temporary virtual .bin, then split it by byte ranges; the split copies in
    # the kernel (copy_file_range) and lets the default shard size depend on the total.
    tmp_fd, tmp_bin = tempfile.mkstemp(prefix=f".{base}.", suffix=".bin.tmp", dir=folder)
    tmp_shards: list[str] = []
    try:
        with os.fdopen(tmp_fd, "wb") as f:
            sizes = _stream_items(items, dt, f.write)
        total = os.path.getsize(tmp_bin)
        size = _plan_shard_size(total, num_shards) if shard_size is None else int(shard_size)
        if size < 1 or (num_shards - 1) * size > total:
            raise DataOrderError(
                f"shard_size={shard_size} with num_shards={num_shards} needs at least {(num_shards - 1) * max(size, 1)} "
                f"bytes but the data has {total}; use a shard_size of at most {total // max(num_shards - 1, 1)}"
            )
        with open(tmp_bin, "rb") as src:
            for i, name in enumerate(names):
                start = i * size
                length = size if i < num_shards - 1 else total - start
                fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
                tmp_shards.append(tmp)
                with os.fdopen(fd, "wb") as dst:
                    _copy_range(src, dst, start, length)
                    dst.flush()
                    os.fsync(dst.fileno())
        for tmp, name in zip(tmp_shards, names):
            os.chmod(tmp, usual_mode(False))  # mkstemp makes 0600
            os.replace(tmp, folder / name)
        tmp_shards.clear()
        _write_index(folder / f"{base}.idx", dt, np.asarray(sizes), _doc_idx(len(sizes), doc_lengths))
    finally:
        for tmp in [tmp_bin, *tmp_shards]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _copy_range(src, dst, offset: int, length: int) -> None:
    done = 0
    while done < length:
        try:
            n = os.copy_file_range(src.fileno(), dst.fileno(), length - done, offset + done)
        except (AttributeError, OSError):  # not Linux, or a filesystem without it
            src.seek(offset + done)
            n = dst.write(src.read(min(length - done, 64 << 20)))
        if n == 0:
            raise DataOrderError(f"short read while splitting shards at byte {offset + done}")
        done += n


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def _load_libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _load_libc()
_SAMPLE_FROM = 1 << 16  # ranges this large are checked for residency before advising


def _looks_cached(addr: int, start: int, length: int) -> bool:
    """True if the first and last pages of the range (mapped at ``addr``) are in the page cache (mincore)."""
    if _LIBC is None:
        return False
    page, vec = mmap.PAGESIZE, ctypes.create_string_buffer(1)
    for off in (start, start + length - 1):  # readahead of a previous read may cover the start only
        if _LIBC.mincore(addr + off - off % page, 1, vec) != 0 or not vec.raw[0] & 1:
            return False
    return True


def _willneed(mm: np.memmap, start: int, length: int, addr: int = 0) -> None:
    """Ask the kernel to read a byte range of a memmap ahead, asynchronously.

    A cold memmap read faults page by page (read-around of ~128 KB each): announcing the whole
    range first makes it one large read (2x faster cold in scripts/bench_data_order.py). For a
    range already in the page cache the advice costs ~70 us per 4 MB for nothing, so large
    ranges are sampled with mincore first. Best effort: any failure leaves a plain memmap read.
    """
    m = getattr(mm, "_mmap", None)
    if m is None or length <= 0:
        return
    if length >= _SAMPLE_FROM and _looks_cached(addr or mm.ctypes.data, start, length):
        return
    a = start - start % mmap.PAGESIZE
    with contextlib.suppress(AttributeError, OSError, ValueError):
        m.madvise(mmap.MADV_WILLNEED, a, min(start + length, len(m)) - a)


@dataclass(frozen=True)
class _Shard:
    name: str
    path: Path
    start: int  # byte offset of the shard's first byte in the virtual .bin
    size: int  # logical size in bytes
    present: bool


def _resolve_prefix(path: str | os.PathLike) -> tuple[Path, str]:
    """(index file, display name) for a prefix, a prefix with extension, or a shard folder."""
    p = Path(path)
    if p.is_dir():
        idx = p / INDEX_NAME
        if idx.is_file():
            return idx, str(p)
        others = sorted(p.glob("*.idx"))
        if len(others) == 1:
            return others[0], str(p)
        raise DataOrderError(
            f"folder {p} holds no {INDEX_NAME}; pass a folder with {INDEX_NAME} + document-XXXXX-of-YYYYY.bin "
            "shards, or a .idx/.bin prefix without extension"
        )
    if p.suffix in (".idx", ".bin") and not p.with_name(p.name + ".idx").exists():
        p = p.with_suffix("")
    idx = p.with_name(p.name + ".idx")
    if not idx.is_file():
        raise DataOrderError(
            f"no index file {idx}; pass a .idx/.bin prefix without extension or a folder holding {INDEX_NAME}"
        )
    return idx, str(p)


class MMapIndexedDataset:
    """Memory-mapped reader of an ``MMIDIDX`` dataset: one ``.bin`` or Pythia-style shards.

    ``path`` is a prefix (``data/train`` for ``data/train.idx`` + ``data/train.bin``) or a folder
    holding ``document.idx`` and ``document.bin`` or ``document-XXXXX-of-YYYYY.bin`` shards.
    Only the header is parsed eagerly; sizes/pointers/doc_idx are views into the mapped index.
    """

    def __init__(self, path: str | os.PathLike):
        self.index_path, self.prefix = _resolve_prefix(path)
        self._parse_index()
        self._shards = self._find_data()
        self._by_name = {s.name: s for s in self._shards}
        self._starts = [s.start for s in self._shards]
        self._maps: dict[str, tuple[np.memmap, np.ndarray, int]] = {}
        self._check_data_size()

    # -- index ----------------------------------------------------------------------------------
    _index_fetched: list[tuple[int, int]] | None = None  # byte ranges of a partial index (None: whole)

    def _parse_index(self) -> None:
        path = self.index_path
        file_size = path.stat().st_size
        if file_size < HEADER_SIZE:
            raise DataOrderError(f"index {path} has {file_size} bytes, fewer than the {HEADER_SIZE}-byte MMIDIDX header")
        with open(path, "rb") as f:
            magic, version, code, n, d = HEADER.unpack(f.read(HEADER_SIZE))
        if magic != MAGIC:
            raise DataOrderError(f"index {path} starts with {magic!r}, not the MMIDIDX magic {MAGIC!r}; is it a Megatron .idx?")
        if version != VERSION:
            raise DataOrderError(f"index {path} has version {version}; only MMIDIDX version {VERSION} is supported")
        if code not in DTYPE_CODES:
            raise DataOrderError(
                f"index {path} has dtype code {code}; known codes are "
                + ", ".join(f"{c} ({d.name})" for c, d in DTYPE_CODES.items())
            )
        expected = HEADER_SIZE + 12 * n + 8 * d
        if file_size != expected:
            raise DataOrderError(
                f"index {path} has {file_size} bytes but its header ({n} items, {d} doc_idx entries) needs {expected}; "
                "the file is truncated or not an MMIDIDX index"
            )
        self.dtype: np.dtype = DTYPE_CODES[code]
        self._n, self._d = int(n), int(d)
        buf = np.memmap(path, dtype=np.uint8, mode="r")  # never empty: the header is there
        self._index_map = buf
        self.sizes: np.ndarray = np.frombuffer(buf, dtype="<i4", count=n, offset=HEADER_SIZE)
        self.pointers: np.ndarray = np.frombuffer(buf, dtype="<i8", count=n, offset=HEADER_SIZE + 4 * n)
        self.doc_idx: np.ndarray = np.frombuffer(buf, dtype="<i8", count=d, offset=HEADER_SIZE + 12 * n)

    @property
    def data_nbytes(self) -> int:
        """Bytes of the virtual ``.bin`` the index refers to (int64 arithmetic, pythia 52a1523)."""
        if self._n == 0:
            return 0
        return int(self.pointers[-1]) + int(self.sizes[-1]) * self.dtype.itemsize

    # -- data files -----------------------------------------------------------------------------
    def _find_data(self) -> list[_Shard]:
        base = self.index_path.with_suffix("")
        single = base.with_name(base.name + ".bin")
        folder = base.parent
        manifest_path = folder / MANIFEST_NAME
        self._fetched: dict[str, list[tuple[int, int]]] | None = None
        if manifest_path.is_file():
            try:
                raw = json.loads(manifest_path.read_text())
                self._fetched = {str(k): sorted((int(a), int(b)) for a, b in v) for k, v in raw.items()}
            except (ValueError, TypeError, AttributeError) as e:
                raise DataOrderError(f"{manifest_path} is not a valid fetched-ranges manifest ({e}); {FETCH_HINT} again") from None
            self._index_fetched = self._fetched.pop(self.index_path.name, None)
        if single.is_file():
            size = single.stat().st_size
            return [_Shard(single.name, single, 0, size, True)]
        pattern = re.compile(rf"^{re.escape(base.name)}-(\d{{5}})-of-(\d{{5}})\.bin$")
        found: dict[int, tuple[str, int]] = {}
        names = [p.name for p in folder.iterdir()] + list(self._fetched or {})
        lasts = set()
        for name in names:
            m = pattern.match(name)
            if m:
                found[int(m.group(1))] = (name, int(m.group(2)))
                lasts.add(int(m.group(2)))
        if not found and self._fetched is not None:
            raise DataOrderError(f"no data rows of {self.prefix} were fetched yet; {FETCH_HINT}")
        if not found:
            raise DataOrderError(
                f"no data for index {self.index_path}: neither {single.name} nor {base.name}-XXXXX-of-YYYYY.bin shards exist"
            )
        if len(lasts) != 1:
            raise DataOrderError(f"shards of {self.prefix} disagree on the shard count (-of-{sorted(lasts)}); keep one set")
        num = lasts.pop() + 1
        shards_present = {i: (folder / found[i][0]).is_file() for i in found}
        missing = [shard_name(base.name, i, num) for i in range(num) if not shards_present.get(i, False)]
        if missing and self._fetched is None:
            raise DataOrderError(
                f"missing shard {missing[0]} in {folder} ({len(missing)} of {num} missing); "
                f"download all {num} files {shard_name(base.name, 0, num)} .. {shard_name(base.name, num - 1, num)}"
            )
        sizes = {i: (folder / found[i][0]).stat().st_size for i in found if shards_present[i]}
        shard_size = self._infer_shard_size(sizes, num)
        shards = []
        for i in range(num):
            name = shard_name(base.name, i, num)
            start = i * shard_size
            logical = shard_size if i < num - 1 else max(self.data_nbytes - start, sizes.get(i, 0))
            if i in sizes and i < num - 1 and sizes[i] != shard_size:
                raise DataOrderError(
                    f"shard {name} has {sizes[i]} bytes but the shards before the last must all have {shard_size}; "
                    "the shard is truncated or from another dataset"
                )
            shards.append(_Shard(name, folder / name, start, sizes.get(i, logical), i in sizes))
        return shards

    def _infer_shard_size(self, sizes: dict[int, int], num: int) -> int:
        """Size of shards 0..N-2 (unshard_memmap: the size of shard 0), from whichever shard is on disk."""
        if num == 1:
            return max(self.data_nbytes, sizes.get(0, 0))
        for i in sorted(sizes):
            if i < num - 1:
                return sizes[i]
        if num - 1 in sizes:  # only the last shard is here: derive S from the total
            return (self.data_nbytes - sizes[num - 1]) // (num - 1)
        return -(-self.data_nbytes // num)

    def _check_data_size(self) -> None:
        have = self._logical_total()
        need = self.data_nbytes
        if have < need:
            where = self._shards[0].path if len(self._shards) == 1 else f"the {len(self._shards)} shards in {self._shards[0].path.parent}"
            raise DataOrderError(
                f"{where} hold {have} bytes but index {self.index_path} needs {need}; the data is truncated "
                "(re-download it, or pass the matching .idx)"
            )

    def _logical_total(self) -> int:
        last = self._shards[-1]  # shards before the last all have the checked shard size
        return last.start + last.size

    @property
    def is_sharded(self) -> bool:
        return len(self._shards) > 1 or self._shards[0].name != self.index_path.with_suffix(".bin").name

    @property
    def is_partial(self) -> bool:
        return self._fetched is not None

    @property
    def shard_files(self) -> list[str]:
        return [s.name for s in self._shards]

    # -- item access ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._n

    def _check_range(self, start: int, stop: int) -> None:
        if not (0 <= start <= stop <= self._n):
            raise DataOrderError(f"items {start}..{stop - 1} are outside {self.prefix}, which has items 0..{self._n - 1}")

    def byte_range(self, start: int, stop: int) -> tuple[int, int]:
        """(offset, nbytes) of items [start, stop) in the virtual ``.bin``."""
        self._check_range(start, stop)
        self._require_index(np.arange(start, stop))
        if start == stop:
            return (int(self.pointers[start]) if start < self._n else self.data_nbytes), 0
        nbytes = int(self.sizes[start:stop].sum(dtype=np.int64)) * self.dtype.itemsize
        return int(self.pointers[start]), nbytes

    def shard_spans(self, offset: int, nbytes: int) -> list[tuple[str, int, int]]:
        """The (shard file, offset in shard, nbytes) pieces of a byte range of the virtual ``.bin``."""
        spans = []
        end = offset + nbytes
        first = max(bisect.bisect_right(self._starts, offset) - 1, 0)
        for s in self._shards[first:]:
            if s.start >= end:
                break
            lo, hi = max(offset, s.start), min(end, s.start + s.size)
            if lo < hi:
                spans.append((s.name, lo - s.start, hi - lo))
        covered = sum(n for _, _, n in spans)
        if covered != nbytes:
            raise DataOrderError(f"bytes {offset}..{end - 1} run past the end of the data of {self.prefix} ({self._logical_total()} bytes)")
        return spans

    def _map(self, shard: _Shard) -> tuple[np.memmap, np.ndarray, int]:
        """(memmap, plain ndarray view, address): the view slices without np.memmap's per-slice overhead."""
        m = self._maps.get(shard.name)
        if m is None:
            mm = np.memmap(shard.path, dtype=np.uint8, mode="r")
            m = self._maps[shard.name] = (mm, mm.view(np.ndarray), mm.ctypes.data)
        return m

    def _read_bytes(self, offset: int, nbytes: int, out: np.ndarray, first_item: int, advise: bool = True) -> None:
        """Copy virtual-bin bytes [offset, offset+nbytes) into the uint8 buffer ``out``: one copy per shard."""
        pos, pieces = 0, []
        for name, off, n in self.shard_spans(offset, nbytes):
            shard = self._by_name[name]
            if self._fetched is not None:
                self._require_fetched(shard, off, n, first_item)
            pieces.append((self._map(shard), off, n))
        for (mm, _, addr), off, n in pieces if advise else ():
            _willneed(mm, off, n, addr)
        for (_, view, _), off, n in pieces:
            out[pos : pos + n] = view[off : off + n]
            pos += n

    def check_fetched(self, start: int, stop: int) -> None:
        """Raise NotFetchedError naming every missing span if items [start, stop) are not all on disk
        (partial folders), without reading them."""
        if self._fetched is None or stop <= start:
            return
        self._check_range(start, stop)
        spans = self.missing_row_spans(start, stop)
        if spans:
            raise NotFetchedError(self.prefix, spans[0][0], spans[-1][1] - 1, spans=spans)

    def _missing_mask(self, rows: np.ndarray) -> np.ndarray:
        """For each item index: are its index entries or its bytes missing from this partial folder?"""
        missing = ~self._index_mask(rows)
        ok = np.flatnonzero(~missing)
        if ok.size and self._fetched is not None:
            lo = self.pointers[rows[ok]].astype(np.int64)
            hi = lo + self.sizes[rows[ok]].astype(np.int64) * self.dtype.itemsize
            missing[ok] = ~covered_mask(self._virtual_fetched(), lo, hi)
        return missing

    def _index_mask(self, rows: np.ndarray) -> np.ndarray:
        if self._index_fetched is None:
            return np.ones(rows.shape, dtype=bool)
        r = rows.astype(np.int64)
        sizes_at, pointers_at = HEADER_SIZE + 4 * r, HEADER_SIZE + 4 * self._n + 8 * r
        have = self._index_fetched
        return covered_mask(have, sizes_at, sizes_at + 4) & covered_mask(have, pointers_at, pointers_at + 8)

    def _require_index(self, rows: np.ndarray) -> None:
        if self._index_fetched is None or not rows.size:
            return
        self._raise_missing(rows, ~self._index_mask(rows))

    def _raise_missing(self, rows: np.ndarray, missing: np.ndarray) -> None:
        if missing.any():
            bad = np.unique(rows[missing])
            spans = mask_spans(np.isin(np.arange(bad[0], bad[-1] + 1), bad), int(bad[0]))
            raise NotFetchedError(self.prefix, spans[0][0], spans[-1][1] - 1, spans=spans)

    def _virtual_fetched(self) -> list[list[int]]:
        """The fetched byte ranges of the shards as ranges of the virtual ``.bin``, merged."""
        if getattr(self, "_virtual", None) is None:
            pieces = sorted([s.start + a, s.start + b] for s in self._shards if s.present
                            for a, b in (self._fetched or {}).get(s.name, []))
            merged: list[list[int]] = []
            for a, b in pieces:
                if merged and a <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], b)
                else:
                    merged.append([a, b])
            self._virtual = merged
        return self._virtual

    def missing_row_spans(self, start: int, stop: int) -> list[tuple[int, int]]:
        """Every run of items in [start, stop) a partial folder lacks (index entries or bytes)."""
        if self._fetched is None or stop <= start:
            return []
        return mask_spans(self._missing_mask(np.arange(start, stop, dtype=np.int64)), start)

    def _require_fetched(self, shard: _Shard, off: int, n: int, first_item: int) -> None:
        ranges = self._fetched.get(shard.name, []) if shard.present else []
        gaps, cur = [], off
        for a, b in ranges:
            if b <= cur:
                continue
            if a > cur:
                gaps.append((cur, min(a, off + n)))
            cur = max(cur, b)
            if cur >= off + n:
                break
        if cur < off + n:
            gaps.append((cur, off + n))
        gaps = [(a, b) for a, b in gaps if a < b]
        if gaps:
            lo, hi = shard.start + gaps[0][0], shard.start + gaps[-1][1] - 1  # virtual byte offsets
            rows = np.searchsorted(self.pointers, [lo, hi], side="right") - 1
            raise NotFetchedError(self.prefix, max(int(rows[0]), first_item), int(rows[1]))

    def item(self, i: int) -> np.ndarray:
        """Item ``i`` as a new array of the stored dtype."""
        if not (0 <= i < self._n):
            raise DataOrderError(f"item {i} is outside {self.prefix}, which has items 0..{self._n - 1}")
        self._require_index(np.array([i]))
        offset, nbytes = int(self.pointers[i]), int(self.sizes[i]) * self.dtype.itemsize
        buf = np.empty(nbytes, dtype=np.uint8)
        self._read_bytes(offset, nbytes, buf, i)
        return buf.view(self.dtype)

    def _check_row_sizes(self, sizes: np.ndarray, first: int, row_len: int) -> None:
        bad = np.flatnonzero(sizes != row_len)
        if bad.size:
            i = first + int(bad[0])
            raise DataOrderError(
                f"item {i} of {self.prefix} has {int(sizes[bad[0]])} tokens, not {row_len}; "
                f"rows must be --seq-len+1 tokens (--seq-len {int(sizes[bad[0]]) - 1} fits that item)"
            )

    def rows(self, start: int, stop: int, row_len: int) -> np.ndarray:
        """Items [start, stop) as a ``[stop-start, row_len]`` array; every item must have row_len tokens."""
        self._check_range(start, stop)
        if self._fetched is not None:
            self.check_fetched(start, stop)  # names every missing span before anything is read
        n = stop - start
        _willneed(self._index_map, HEADER_SIZE + 4 * start, 4 * n)  # sizes and pointers lie apart
        _willneed(self._index_map, HEADER_SIZE + 4 * self._n + 8 * start, 8 * n)
        sizes = self.sizes[start:stop]
        if (sizes != row_len).any():
            self._check_row_sizes(sizes, start, row_len)
        row_bytes = row_len * self.dtype.itemsize
        offset = int(self.pointers[start]) if n else 0
        nbytes = n * row_bytes
        # Rows of one size lie back to back in any index the NeoX builder wrote; what is read is
        # [pointers[start], +nbytes), so its last pointer must agree (catches a corrupt index cheaply).
        if n and int(self.pointers[stop - 1]) != offset + (n - 1) * row_bytes:
            raise DataOrderError(
                f"items {start}..{stop - 1} of {self.prefix} do not lie back to back in the .bin (pointer of item "
                f"{stop - 1} is {int(self.pointers[stop - 1])}, expected {offset + (n - 1) * row_bytes}); the index is corrupt"
            )
        buf = np.empty(nbytes, dtype=np.uint8)
        self._read_bytes(offset, nbytes, buf, start)
        return buf.view(self.dtype).reshape(stop - start, row_len)

    def take(self, indices: Sequence[int] | np.ndarray, row_len: int) -> np.ndarray:
        """Items at arbitrary ``indices`` (in that order) as a ``[len(indices), row_len]`` array."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self._n):
            bad = int(idx[(idx < 0) | (idx >= self._n)][0])
            raise DataOrderError(f"item {bad} is outside {self.prefix}, which has items 0..{self._n - 1}")
        if self._fetched is not None and idx.size:
            self._raise_missing(idx, self._missing_mask(idx))
        sizes = self.sizes[idx]
        bad = np.flatnonzero(sizes != row_len)
        if bad.size:
            self._check_row_sizes(sizes[bad[:1]], int(idx[bad[0]]), row_len)
        row_bytes = row_len * self.dtype.itemsize
        out = np.empty((idx.size, row_bytes), dtype=np.uint8)
        for j, i in enumerate(idx):
            self._read_bytes(int(self.pointers[i]), row_bytes, out[j], int(i), advise=False)
        return out.view(self.dtype).reshape(idx.size, row_len)

    def __repr__(self) -> str:
        kind = f"{len(self._shards)} shards" if self.is_sharded else "single .bin"
        return f"MMapIndexedDataset({self.prefix!r}, {self._n} items, {self.dtype.name}, {kind})"
