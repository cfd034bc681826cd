"""Step semantics (DESIGN.md): stepN consumed batches 0..N-1; a branch from stepN trains on batch N first."""

from __future__ import annotations

import numpy as np
import pytest

from data_order.mmidx import DataOrderError, write_mmidx
from data_order.source import TokenRows
from data_order.steps import (
    accumulation_steps,
    batch_for_update,
    batch_rows,
    consumed_batches,
    describe_batch,
    first_batch_after,
    rank_microbatches,
)


def test_batch_rows_pythia_numbers():
    assert batch_rows(0, 1024) == range(0, 1024)
    assert batch_rows(1000, 1024) == range(1_024_000, 1_025_024)
    # The last Pythia batch (trained by the update producing step143000) ends at row 146,432,000.
    assert batch_rows(142_999, 1024).stop == 146_432_000


def test_off_by_one_between_checkpoints_and_batches():
    assert consumed_batches(0) == range(0)  # step0 is the initialization: nothing consumed
    assert list(consumed_batches(3)) == [0, 1, 2]
    assert first_batch_after(3) == 3  # not 2, not 4
    assert batch_for_update(4) == 3  # the update that produces step4 trains on batch 3
    for n in (1, 2, 100, 143000):
        # stepN+1 = stepN after one more update, on exactly the first batch not yet consumed.
        assert batch_for_update(n + 1) == first_batch_after(n) == len(consumed_batches(n))
        assert set(consumed_batches(n + 1)) - set(consumed_batches(n)) == {first_batch_after(n)}
    with pytest.raises(DataOrderError, match="initialization"):
        batch_for_update(0)


@pytest.mark.parametrize("fn", [lambda: batch_rows(-1, 4), lambda: consumed_batches(-2), lambda: first_batch_after(-1),
                                lambda: batch_for_update(-1)])
def test_negative_steps_are_refused(fn):
    with pytest.raises(DataOrderError, match="negative"):
        fn()


def test_describe_batch_line():
    assert describe_batch(5, 1024) == (
        "batch 5 = rows 5120..6143; first trained by the update that produces step6; a branch from step5 trains on it first"
    )


def test_accumulation_steps():
    assert accumulation_steps(1024, 32, 32) == 1  # pythia-160m: 32 x 1 x 32 GPUs (pythia.md §2.2)
    assert accumulation_steps(1024, 1, 8) == 128
    with pytest.raises(DataOrderError, match="not divisible") as e:
        accumulation_steps(1024, 3, 8)
    assert "\n" not in str(e.value)
    for bad in ((0, 1, 1), (8, 0, 1), (8, 1, 0)):
        with pytest.raises(DataOrderError, match="positive"):
            accumulation_steps(*bad)


@pytest.mark.parametrize("b", [1, 2, 4])
@pytest.mark.parametrize("world", [1, 2, 4])
def test_per_rank_slicing_rebuilds_the_global_batch(tmp_path, make_rows, world, b):
    B, T = 16, 7
    rows = make_rows(5 * B, T + 1)
    write_mmidx(tmp_path / "d", list(rows))
    data = TokenRows(tmp_path / "d", B, T)
    k = 3
    seen = []
    per_step = []  # rows processed together at each accumulation step, ranks in order
    for a in range(accumulation_steps(B, world, b)):
        step_rows = []
        for r in range(world):
            mb = rank_microbatches(k, B, world, r, b)[a]
            assert len(mb) == b
            step_rows.append(data.rows(mb.start, mb.stop))
            seen.extend(mb)
        per_step.append(np.concatenate(step_rows))
    assert sorted(seen) == list(batch_rows(k, B)) and len(seen) == B  # a partition of the batch
    assert np.array_equal(np.concatenate(per_step), data.batch(k))  # same global batch, same order, any W


def test_rank_layout_is_the_documented_one():
    # accumulation step a, rank r: rows k*B + (a*W + r)*b ... + b
    assert rank_microbatches(2, 16, 2, 1, 4) == [range(36, 40), range(44, 48)]
    assert rank_microbatches(0, 8, 4, 3, 2) == [range(6, 8)]
    with pytest.raises(DataOrderError, match="rank 2 is outside world size 2"):
        rank_microbatches(0, 8, 2, 2, 2)
    with pytest.raises(DataOrderError, match="not divisible"):
        rank_microbatches(0, 12, 4, 0, 2)
