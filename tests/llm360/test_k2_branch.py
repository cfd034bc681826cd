"""A K2-shaped release: `fetch --data-steps`, `batch` and `branch` follow the card's chunk order, read sequentially."""

from __future__ import annotations

import json

import numpy as np

from resume.engine import _rows_hash

from .conftest import K2, k2_batch

FLAG = "exact if the released chunks are the shuffled files"


def test_k2_fetch_batch_and_branch(scenario, tmp_path, monkeypatch, capsys):
    env = scenario["env"]
    # Batches 6..7 are training position 3 = chunk 3: `fetch --data-steps` fetches and converts that chunk.
    got = scenario["k2-fetch"]
    assert got["rc"] == 0, got["stderr"][-2000:]
    assert "data: chunk 3 (chunk_3.jsonl): token store" in got["stdout"] and f"exactness: {FLAG}" in got["stdout"]
    assert [r for r in got["log"] if r["method"] == "HEAD" and r["path"].endswith("/chunk_3.jsonl")]

    # Branch from ckpt_2 (step 4): position 2 holds chunk 1 (the card moved it), the reestimate batches 0..3
    # come from positions 0 and 1 = chunks 0 and 2.
    run = scenario["k2"]
    assert run["rc"] == 0, run["stderr"][-3000:]
    assert "chunk_1.jsonl (chunk 1, training position 2; train batches 4..5)" in run["stdout"]
    assert "chunk_2.jsonl (chunk 2, training position 1; reestimate batches 2..3)" in run["stdout"]
    assert f"exactness: {FLAG}" in run["stdout"] and "order: sequential: chunk_1.jsonl" in run["stdout"]
    out = env.root / "k2"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["batch_rows"] for r in rows] == [_rows_hash(k2_batch(s)[1]) for s in (4, 5)]
    meta = json.loads((out / "trajectory.json").read_text())
    assert meta["exactness"].startswith(FLAG) and sorted(meta["data_order"]["chunks"]) == ["0", "1", "2"]
    assert meta["recipe"]["weight_decay_scope"] == "matrices"  # Megatron: no decay on norms

    # batch reads the converted stores offline, in the same sequential order.
    from resume.cli import main

    env.install(monkeypatch)
    capsys.readouterr()
    for step in (4, 7):
        npy = tmp_path / f"b{step}.npy"
        assert main(["batch", "k2-tiny", "--step", str(step), "--out", str(npy)]) == 0
        assert np.array_equal(np.load(npy), k2_batch(step)[0]), step
    assert main(["batch", "k2-tiny", "--step", "7"]) == 0
    text = capsys.readouterr().out
    assert "chunk_3.jsonl (chunk 3, training position 3)" in text and f"exactness: {FLAG}" in text
    assert K2["order"][3] == 3
