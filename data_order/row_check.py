"""Sanity checks of fetched data rows, run on each byte range before it is recorded as fetched.

A range of a preshuffled shard has no published hash (the Hub's LFS sha256 covers whole 30 GB
shards), so what can be checked is what the index and the run's architecture say every row must
be (pythia.md §4.3): the rows overlapping the range have the run's row length (seq_len + 1
tokens) in ``document.idx``, and every token id in the range is below the run's vocabulary size.
Damage that keeps token ids in range (a flipped low bit, a swapped block of valid ids) cannot be
detected this way; the README says so.

``row_range_validator(...)`` builds the callback ``checkpoints_cache.data_store.fetch_ranges``
takes as ``validate``. A token straddling a shard edge (shards are a byte split of one virtual
``.bin``, so its two bytes can sit in two files) is checked with the range that holds its last
byte, reading the first byte from the previous shard when that part is already recorded.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

CHUNK_BYTES = 64 << 20  # bytes checked at a time: bounded memory for multi-GB ranges


def _pread(path: Path, offset: int, n: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, n, offset)
    finally:
        os.close(fd)


def _covered(ranges: list[list[int]], start: int, end: int) -> bool:
    return any(a <= start and end <= b for a, b in ranges)


def row_range_validator(
    layout: list[tuple[str, int, int]],
    dtype: np.dtype,
    sizes: np.ndarray,
    pointers: np.ndarray,
    row_len: int,
    vocab_size: int | None,
    fetched: Callable[[], dict[str, list[list[int]]]] = lambda: {},
) -> Callable[[str, int, int, Path], str | None]:
    """The ``validate`` callback for the shards of one MMIDIDX dataset.

    ``layout``: [(shard, start in the virtual .bin, size)] (``data_order.remote.shard_layout``);
    ``dtype``/``sizes``/``pointers``: from ``document.idx``; ``fetched()`` returns the ranges
    already recorded (to reach the first byte of a token that straddles a shard edge).
    """
    dtype = np.dtype(dtype)
    item = dtype.itemsize
    where = {name: (start, size, i) for i, (name, start, size) in enumerate(layout)}
    sizes = np.asarray(sizes)
    pointers = np.asarray(pointers)

    def check(name: str, s: int, e: int, path: Path) -> str | None:
        if name not in where or e <= s:
            return None
        vstart, shard_size, i = where[name]
        vs, ve = vstart + s, vstart + e
        # Rows overlapping the range: their lengths, from the index.
        r0 = max(int(np.searchsorted(pointers, vs, side="right")) - 1, 0)
        r1 = max(int(np.searchsorted(pointers, ve - 1, side="right")) - 1, r0)
        bad = np.flatnonzero(sizes[r0:r1 + 1] != row_len)
        if bad.size:
            r = r0 + int(bad[0])
            return f"row {r} has {int(sizes[r])} tokens in document.idx, not {row_len}"
        if not vocab_size:
            return None
        # Token ids: whole tokens in [vs, ve), plus the one straddling the range's start if its head is on disk.
        head = b""
        lead = vs % item  # bytes of the first token that lie before the range
        pos = s + (item - lead) % item  # in this shard: the first token wholly inside the range
        if lead and s >= lead and _covered(fetched().get(name, []), s - lead, s):
            pos = s - lead  # its head is earlier in this shard, already recorded
        elif lead and s == 0 and i > 0 and layout[i - 1][2] >= lead:
            prev, psize = layout[i - 1][0], layout[i - 1][2]
            if _covered(fetched().get(prev, []), psize - lead, psize):
                head = _pread(path.with_name(prev), psize - lead, lead)  # its head ends the previous shard
                pos = -lead
        mm = np.memmap(path, dtype=np.uint8, mode="r")
        try:
            chunk_tokens = max(CHUNK_BYTES // item, 1)
            while pos + item <= e:
                stop = min(pos + chunk_tokens * item, e - (e - pos) % item)
                if pos < 0:  # the straddling token alone, joined from its two shards
                    stop = pos + item
                    tokens = np.frombuffer(head + bytes(mm[0:stop]), dtype=dtype)
                else:
                    tokens = mm[pos:stop].view(dtype)  # no copy
                head = b""
                if tokens.size and int(tokens.max()) >= vocab_size:  # one pass; locate only on failure
                    over = np.flatnonzero(tokens >= vocab_size)
                    voff = vstart + pos + int(over[0]) * item
                    row = int(np.searchsorted(pointers, voff, side="right")) - 1
                    return (f"{over.size} token id(s) >= the vocabulary size {vocab_size} (first: {int(tokens[over[0]])} "
                            f"in row {row})")
                pos = stop
        finally:
            del mm
        return None

    return check
