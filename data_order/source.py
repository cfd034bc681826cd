"""Training rows of a run: global batch ``k`` -> the ``[B, T+1]`` token array it was trained on."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .mmidx import DataOrderError, MMapIndexedDataset, NotFetchedError
from .steps import batch_rows


class TokenRows:
    """Rows of ``seq_len + 1`` tokens (inputs ``row[:-1]``, labels ``row[1:]``) in training order.

    ``path`` is anything :class:`MMapIndexedDataset` opens. Pythia: ``batch_size=1024``,
    ``seq_len=2048`` (rows of 2049 tokens; reference/pythia.md §4.3).
    """

    def __init__(self, path: str | os.PathLike | MMapIndexedDataset, batch_size: int, seq_len: int,
                 run: str | None = None):
        if int(batch_size) != batch_size or batch_size < 1:
            raise DataOrderError(f"batch size {batch_size} must be a positive number of rows (Pythia: 1024)")
        if int(seq_len) != seq_len or seq_len < 1:
            raise DataOrderError(f"seq len {seq_len} must be a positive number of tokens (Pythia: 2048)")
        self.dataset = path if isinstance(path, MMapIndexedDataset) else MMapIndexedDataset(path)
        self.batch_size = int(batch_size)
        self.seq_len = int(seq_len)
        self.row_len = self.seq_len + 1
        self.run = run  # the registry name, for the fetch command in "not fetched" errors
        if len(self.dataset) and int(self.dataset.sizes[0]) != self.row_len:
            n = int(self.dataset.sizes[0])
            raise DataOrderError(
                f"rows of {self.dataset.prefix} have {n} tokens but --seq-len {seq_len} expects {self.row_len}; "
                f"use --seq-len {n - 1}"
            )

    @property
    def dtype(self) -> np.dtype:
        return self.dataset.dtype

    @property
    def num_rows(self) -> int:
        return len(self.dataset)

    @property
    def num_batches(self) -> int:
        """Whole global batches in the data (a trailing partial batch is never trained on)."""
        return self.num_rows // self.batch_size

    def batch_range(self, k: int) -> range:
        """Rows of batch ``k``, checked against the data's extent."""
        rows = batch_rows(k, self.batch_size)
        if k >= self.num_batches:
            last = (
                f"the last available step is {self.num_batches - 1}"
                if self.num_batches
                else f"it holds fewer rows than one batch of {self.batch_size}"
            )
            raise DataOrderError(
                f"step {k} is beyond the data: {self.dataset.prefix} has {self.num_rows} rows = "
                f"{self.num_batches} batches of {self.batch_size}; {last}"
            )
        return rows

    def batch(self, k: int) -> np.ndarray:
        """Global batch ``k`` (trained by the update ``stepk -> stepk+1``) as ``[B, T+1]``."""
        rows = self.batch_range(k)
        return self.rows(rows.start, rows.stop)

    def rows(self, start: int, stop: int) -> np.ndarray:
        try:
            return self.dataset.rows(start, stop, self.row_len)
        except NotFetchedError as e:
            raise self._not_fetched(e) from None

    def check_fetched(self, first_batch: int, stop_batch: int) -> None:
        """Raise (naming the fetch command) unless global batches [first_batch, stop_batch) are on disk."""
        try:
            self.dataset.check_fetched(first_batch * self.batch_size, stop_batch * self.batch_size)
        except NotFetchedError as e:
            raise self._not_fetched(e) from None

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows at arbitrary indices (in that order), e.g. for data-mixture interventions."""
        try:
            return self.dataset.take(indices, self.row_len)
        except NotFetchedError as e:
            raise self._not_fetched(e) from None

    def _not_fetched(self, e: NotFetchedError) -> NotFetchedError:
        """Say which batches to fetch (every missing span), now that the batch size is known."""
        b = self.batch_size
        batches: list[list[int]] = []
        for first, stop in e.spans:
            lo, hi = first // b, -(-stop // b)
            if batches and lo <= batches[-1][1]:
                batches[-1][1] = max(batches[-1][1], hi)
            else:
                batches.append([lo, hi])
        flags = " ".join(f"--data-batches {lo}..{hi - 1}" for lo, hi in batches)
        hint = f"run `branchpoint fetch {self.run or 'RUN'} {flags}`"
        if len(batches) == 1:
            lo, hi = batches[0]
            hint += f" (or `--step {lo} --data-steps {hi - lo}` if step {lo} is a checkpoint whose weights you want too)"
        return NotFetchedError(e.prefix, e.first_row, e.last_row, hint, spans=e.spans)

    def __repr__(self) -> str:
        return f"TokenRows({self.dataset.prefix!r}, batch_size={self.batch_size}, seq_len={self.seq_len})"
