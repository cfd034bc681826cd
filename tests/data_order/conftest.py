"""Tiny generated MMIDIDX datasets for the data_order tests (nothing is committed, nothing is fetched)."""

from __future__ import annotations

import numpy as np
import pytest


def _make_rows(num_rows: int, row_len: int, dtype=np.uint16, seed: int = 0) -> np.ndarray:
    """Random rows, so any misplaced byte shows up."""
    rng = np.random.default_rng(seed)
    hi = 50277 if np.dtype(dtype) == np.uint16 else 2**31 - 1
    return rng.integers(0, hi, size=(num_rows, row_len)).astype(dtype)


@pytest.fixture
def make_rows():
    return _make_rows


@pytest.fixture
def rows_40x9() -> np.ndarray:
    return _make_rows(40, 9)
