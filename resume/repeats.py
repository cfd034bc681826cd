"""Repeated branches (``branch --repeat R``): the same branch with another micro-batch order or
data-order seed, to measure the engine's own noise floor (the repeated-control band of
``resume.evaluation.bands``; users_and_suites.md §2, paper 9 ran several repeats per condition).

- ``order``: each global batch keeps its rows, in another order (so other micro-batches and another
  summation order): floating-point noise only; on CPU, where a control is bit-exact, it is tiny.
- ``data``: the rows of the branch's batches N .. N+K-1 are shuffled among those batches (a
  data-order seed): each update trains on other rows of the same stretch of the parent's order.

The permutation is a pure function of (seed, batch), so ``--resume`` continues it exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from checkpoints_cache.errors import UserError

MODES = ("order", "data")


@dataclass(frozen=True)
class RowOrder:
    mode: str
    seed: int
    first_batch: int  # N
    stop_batch: int  # N + K
    batch_size: int

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"--repeat-vary {self.mode!r}: use order (micro-batch order) or data (data-order seed)")

    def describe(self) -> dict:
        return {"vary": self.mode, "seed": self.seed}

    @functools.cached_property
    def _perm(self) -> np.ndarray:
        lo, hi = self.first_batch * self.batch_size, self.stop_batch * self.batch_size
        return np.random.default_rng([self.seed, self.first_batch, self.stop_batch]).permutation(hi - lo) + lo

    def __call__(self, n: int, rows: np.ndarray) -> np.ndarray:
        if self.mode == "order":
            return rows[np.random.default_rng([self.seed, n]).permutation(rows.size)]
        lo, hi = self.first_batch * self.batch_size, self.stop_batch * self.batch_size
        perm = self._perm
        inside = (rows >= lo) & (rows < hi)  # rows an intervention picked outside the stretch stay as they are
        out = rows.copy()
        out[inside] = perm[rows[inside] - lo]
        return out
