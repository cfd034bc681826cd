"""LLM360 Amber: ckpt_k <-> train_k.jsonl <-> steps [762k, 762(k+1)), and reading a chunk via datasets."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_order import amber
from data_order.mmidx import DataOrderError


def test_constants_from_llm360_reference():
    assert (amber.STEPS_PER_CHUNK, amber.ROWS_PER_STEP, amber.ROW_LEN, amber.N_CHUNKS) == (762, 2240, 2049, 360)
    assert amber.STEPS_PER_CHUNK == amber.TRAIN_EXAMPLES_PER_CHUNK // amber.ROWS_PER_STEP
    assert amber.TOTAL_STEPS == 274_320
    assert amber.WITHIN_CHUNK_ORDER_RECOVERABLE is False


def test_checkpoint_chunk_step_mapping():
    assert amber.revision_name(0) == "ckpt_000" and amber.revision_name(359) == "ckpt_359"
    assert amber.parse_revision("ckpt_042") == 42
    assert amber.chunk_file(7) == "train/train_007.jsonl"
    assert amber.chunk_steps(0) == range(0, 762)
    assert amber.chunk_steps(5) == range(3810, 4572)
    assert amber.checkpoint_step(0) == 762  # ckpt_000 is after the first chunk, not the initialization
    assert amber.checkpoint_step(359) == 274_320
    for k in (0, 1, 100, 359):
        steps = amber.chunk_steps(k)
        # Chunk k's batches lead exactly to ckpt_k.
        assert amber.checkpoint_step(k) == steps.stop
        assert amber.checkpoint_at_step(steps.stop) == k
        assert amber.chunk_of_batch(steps.start) == amber.chunk_of_batch(steps.stop - 1) == k
    # A branch from ckpt_k (step 762(k+1)) trains on chunk k+1 first.
    assert amber.chunk_of_batch(amber.checkpoint_step(3)) == 4
    assert amber.checkpoint_at_step(0) is None and amber.checkpoint_at_step(763) is None
    for bad in (lambda: amber.revision_name(360), lambda: amber.parse_revision("step1000"),
                lambda: amber.chunk_of_batch(274_320), lambda: amber.chunk_of_batch(-1)):
        with pytest.raises(DataOrderError):
            bad()


def _write_chunk(path, num_rows, row_len, offset=0):
    with open(path, "w") as f:
        for i in range(num_rows):
            f.write(json.dumps({"token_ids": [offset + i * 1000 + j for j in range(row_len)], "source": "arxiv"}) + "\n")


def test_read_step_of_a_tiny_chunk_through_datasets(tmp_path):
    # chunk 2 of a tiny layout: 3 steps per chunk, 4 rows per step, rows of 6 tokens.
    path = tmp_path / "train_002.jsonl"
    _write_chunk(path, 12, 6)
    with pytest.warns(amber.AmberOrderWarning, match="NOT recoverable"):
        got = amber.read_amber_step(path, 7, cache_dir=tmp_path / "cache", rows_per_step=4, steps_per_chunk=3, row_len=6)
    assert got.chunk == 2 and got.step == 7 and got.step_in_chunk == 1 and got.file_rows == range(4, 8)
    assert got.order_recoverable is False and "NOT recoverable" in got.warning
    expected = np.array([[i * 1000 + j for j in range(6)] for i in range(4, 8)])
    assert np.array_equal(got.tokens, expected)
    assert any((tmp_path / "cache").rglob("*.arrow"))  # went through datasets' memory-mapped Arrow cache
    with pytest.raises(DataOrderError, match="step 9 is not in chunk 2, which holds steps 6..8"):
        amber.read_amber_step(path, 9, cache_dir=tmp_path / "cache", rows_per_step=4, steps_per_chunk=3, row_len=6, warn=False)
    with pytest.raises(DataOrderError, match="not 7"):
        amber.read_amber_step(path, 6, cache_dir=tmp_path / "cache", rows_per_step=4, steps_per_chunk=3, row_len=7, warn=False)


def test_truncated_and_missing_chunks(tmp_path):
    path = tmp_path / "train_000.jsonl"
    _write_chunk(path, 5, 6)
    with pytest.raises(DataOrderError, match="has 5 rows, fewer than the 8"):
        amber.read_amber_step(path, 1, cache_dir=tmp_path / "c", rows_per_step=4, steps_per_chunk=3, row_len=6, warn=False)
    with pytest.raises(DataOrderError, match="does not exist"):
        amber.read_amber_step(tmp_path / "train_001.jsonl", 762, cache_dir=tmp_path / "c", warn=False)
