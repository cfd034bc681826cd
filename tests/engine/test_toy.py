"""The toy trajectory: rebuilt bit for bit, reachable as `toy`, its corpus entropies as declared."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from checkpoints_cache.trajectory import Trajectory
from resume.cli import main as cli
from resume.toy import DOMAINS, TOY_SIZES, build_toy, make_corpus


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_rebuild_is_bit_identical(toy_tiny: Path, tmp_path: Path):
    again = build_toy(tmp_path / "again", size="tiny", progress=False)
    a, b = tree_digest(toy_tiny), tree_digest(again)
    assert a.keys() == b.keys() and a == b
    assert "optimizer/step48/optimizer.pt" in a and "checkpoints/step48/model.safetensors" in a


def test_corpus_domains_and_entropies():
    size = TOY_SIZES["small"]  # enough transitions for a plug-in entropy estimate of the 64-way domain
    rows, labels, facts = make_corpus(size, 1234)
    assert rows.shape == ((size.train_iters + size.heldout_batches) * size.batch_size, size.seq_len + 1)
    assert rows.dtype == np.uint16 and rows.min() >= 2 and rows.max() < size.vocab
    counts = np.bincount(labels, minlength=len(DOMAINS))
    assert list(counts) == [facts["rows_per_domain"][d.name] for d in DOMAINS]
    # empirical conditional entropy of each domain's rows agrees with the chain's entropy rate
    for i, d in enumerate(DOMAINS):
        r = rows[labels == i].astype(np.int64)
        pairs = np.zeros((size.vocab, size.vocab))
        np.add.at(pairs, (r[:, :-1].ravel(), r[:, 1:].ravel()), 1)
        p = pairs / pairs.sum()
        cond = p / np.maximum(p.sum(axis=1, keepdims=True), 1e-300)
        h = -(p[p > 0] * np.log(cond[p > 0])).sum()
        assert abs(h - facts["entropy"][d.name]) < 0.05 * max(1.0, facts["entropy"][d.name]), (d.name, h)
    assert facts["entropy_floor"] == sum(facts["entropy"][d.name] * counts[i] / counts.sum() for i, d in enumerate(DOMAINS))


def test_toy_alias_for_steps_and_branch(toy_tiny: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("BRANCHPOINT_TOY_DIR", str(toy_tiny.parent))
    assert cli(["steps", "toy-tiny"]) == 0
    assert capsys.readouterr().out.split() == ["0", "1", "2", "4", "8", "16", "32", "48", "64"]
    assert cli(["branch", "toy-tiny", "--from-step", "48", "--steps", "2", "--out", str(tmp_path / "b"), "--no-compare"]) == 0
    assert Trajectory.open(tmp_path / "b").steps == [48, 50]
    capsys.readouterr()
    monkeypatch.setenv("BRANCHPOINT_TOY_DIR", str(tmp_path / "nowhere"))
    assert cli(["steps", "toy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "branchpoint toy --size small" in err[0]


def test_seed_variant_same_corpus_other_order_and_init(toy_tiny: Path, tmp_path: Path):
    from data_order.source import TokenRows

    variant = build_toy(tmp_path / "seed7", size="tiny", seed=7, progress=False)
    a = TokenRows(toy_tiny / "data", 8, 32)
    b = TokenRows(variant / "data", 8, 32)
    ra, rb = a.rows(0, a.num_rows), b.rows(0, b.num_rows)
    assert not np.array_equal(ra, rb)  # another shuffle ...
    key = lambda r: sorted(map(bytes, r))  # noqa: E731
    assert key(ra) == key(rb)  # ... of the very same rows
    from tests.engine.helpers import same_weights, weights

    assert not same_weights(weights(toy_tiny, 0), weights(variant, 0))  # another init
    assert Trajectory.open(variant).meta["seeds"] == {"corpus": 1234, "shuffle": 7, "init": 7, "recipe": 7}
