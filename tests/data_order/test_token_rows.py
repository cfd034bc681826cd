"""TokenRows: global batch k of a dataset, sharded or not, and its refusals."""

from __future__ import annotations

import numpy as np
import pytest

from data_order.mmidx import DataOrderError, NotFetchedError, write_mmidx, write_sharded
from data_order.source import TokenRows


@pytest.mark.parametrize("sharded", [False, True])
def test_every_batch_is_exactly_its_rows(tmp_path, make_rows, sharded):
    B, T = 6, 10
    rows = make_rows(7 * B + 4, T + 1)  # 7 whole batches and a partial one that is never trained on
    if sharded:
        write_sharded(tmp_path / "d", [rows], num_shards=5, shard_size=rows.nbytes // 5 - 3)
    else:
        write_mmidx(tmp_path / "d", [rows])
    data = TokenRows(tmp_path / "d", B, T)
    assert (data.num_rows, data.num_batches, data.row_len) == (46, 7, 11)
    for k in range(7):
        got = data.batch(k)
        assert got.shape == (B, T + 1) and got.dtype == np.uint16
        assert np.array_equal(got, rows[k * B : (k + 1) * B])
    assert np.array_equal(data.take([45, 0]), rows[[45, 0]])
    with pytest.raises(DataOrderError, match="step 7 is beyond the data.*the last available step is 6") as e:
        data.batch(7)
    assert "\n" not in str(e.value)
    with pytest.raises(DataOrderError, match="negative"):
        data.batch(-1)


def test_seq_len_mismatch_names_the_fitting_value(tmp_path, make_rows):
    write_mmidx(tmp_path / "d", [make_rows(8, 2049)])
    with pytest.raises(DataOrderError, match="have 2049 tokens but --seq-len 2049 expects 2050; use --seq-len 2048"):
        TokenRows(tmp_path / "d", 4, 2049)
    with pytest.raises(DataOrderError, match="positive"):
        TokenRows(tmp_path / "d", 0, 2048)


def test_not_fetched_error_names_the_steps_to_fetch(tmp_path, make_rows):
    import json

    B = 4
    rows = make_rows(6 * B, 5)
    write_sharded(tmp_path / "full", [rows], num_shards=1)
    part = tmp_path / "part"
    part.mkdir()
    (part / "document.idx").write_bytes((tmp_path / "full" / "document.idx").read_bytes())
    name = "document-00000-of-00000.bin"
    data = (tmp_path / "full" / name).read_bytes()
    lo, hi = 2 * B * 10, 4 * B * 10  # batches 2 and 3 (rows of 5 uint16 = 10 bytes)
    with open(part / name, "wb") as f:
        f.truncate(len(data))
        f.seek(lo)
        f.write(data[lo:hi])
    (part / "fetched_ranges.json").write_text(json.dumps({name: [[lo, hi]]}))
    tr = TokenRows(part, B, 4)
    assert np.array_equal(tr.batch(3), rows[12:16])
    with pytest.raises(NotFetchedError, match=r"rows 16\.\.23 .*--step 4 --data-steps 2"):
        tr.rows(12, 24)
