"""BiMix: entropy estimators on corpora with known entropies, proportions, deterministic batches."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from checkpoints_cache.errors import UserError
from resume.interventions.base import BranchContext
from resume.interventions.bimix import BiMix, conditional_entropy, largest_remainder, shannon_entropy

from .conftest import context, run_branch


def de_bruijn(k: int) -> list[int]:
    """A cyclic order-2 de Bruijn sequence over k symbols, with its first symbol appended: every
    ordered pair (x, x') occurs exactly once, so P(x, x') = 1/k² and H(X'|X) = ln k exactly."""
    # standard construction (concatenated Lyndon words) for n = 2
    a = [0] * (2 * k)
    seq = []

    def db(t: int, p: int) -> None:
        if t > 2:
            if 2 % p == 0:
                seq.extend(a[1:p + 1])
        else:
            a[t] = a[t - p]
            db(t + 1, p)
            for j in range(a[t - p] + 1, k):
                a[t] = j
                db(t + 1, t)

    db(1, 1)
    return seq + seq[:1]


def test_de_bruijn_helper_has_every_pair_once():
    s = de_bruijn(4)
    assert len(s) == 17
    assert sorted(zip(s[:-1], s[1:])) == [(x, y) for x in range(4) for y in range(4)]


def test_conditional_entropy_known_values():
    assert conditional_entropy(np.array([de_bruijn(4)])) == pytest.approx(math.log(4), abs=1e-12)
    assert conditional_entropy(np.array([de_bruijn(8)] * 3)) == pytest.approx(math.log(8), abs=1e-12)
    cycle = np.tile(np.arange(5), 7)[None, :]  # deterministic successor: H(X'|X) = 0
    assert conditional_entropy(cycle) == pytest.approx(0.0, abs=1e-12)
    # two-state chain from counts: x=0 -> {0: 1, 1: 1}, x=1 -> {0: 1}; H = (2/3)·ln 2
    assert conditional_entropy(np.array([[0, 0, 1, 0]])) == pytest.approx(2 / 3 * math.log(2), abs=1e-12)
    # pairs never cross rows: [0, 1] and [2, 3] give two deterministic pairs, not (1, 2)
    assert conditional_entropy(np.array([[0, 1], [2, 3]])) == 0.0


def test_shannon_entropy_known_values():
    assert shannon_entropy(np.tile(np.arange(5), 4)[None, :]) == pytest.approx(math.log(5), abs=1e-12)
    assert shannon_entropy(np.array([[7, 7, 7, 7]])) == 0.0
    assert shannon_entropy(np.array([[0, 0, 0, 1]])) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


@pytest.mark.parametrize(
    "r, total, counts",
    [([0.5, 0.3, 0.2], 8, [4, 2, 2]), ([1 / 13, 4 / 13, 8 / 13], 13, [1, 4, 8]), ([1 / 3] * 3, 8, [3, 3, 2]),
     ([0.01, 0.99], 4, [0, 4])],
)
def test_largest_remainder_sums_to_the_batch(r, total, counts):
    assert largest_remainder(np.array(r), total).tolist() == counts


# A corpus of three domains with exactly known conditional entropies: 0, ln 4, ln 8.
ROW_LEN = 65  # seq_len + 1


def known_corpus(rows_per_domain: int = 40):
    rows = {0: np.tile(np.arange(5), 13)[:ROW_LEN], 1: np.resize(de_bruijn(4)[:-1], ROW_LEN), 2: np.array(de_bruijn(8))}
    # the 16-cycle of de_bruijn(4) repeated to 65 tokens: 4 passes, every pair exactly 4 times
    labels = np.array([i % 3 for i in range(3 * rows_per_domain)], dtype=np.int64)
    data = np.stack([rows[int(d)] for d in labels])
    return labels, data


def corpus_context(labels, data, branch_step, end_step, batch_size=13):
    ctx = context(branch_step=branch_step, end_step=end_step, batch_size=batch_size, seq_len=ROW_LEN - 1)
    return BranchContext(
        branch_step=branch_step, end_step=end_step, recipe=ctx.recipe, parent_grid=[0], row_domains=labels,
        domain_names=["cycle", "db4", "db8"], take_rows=lambda idx: data[np.asarray(idx)], num_rows=len(labels),
    )


def test_proportions_are_the_softmax_of_known_entropies():
    labels, data = known_corpus()
    iv = BiMix()
    iv.setup(corpus_context(labels, data, branch_step=2, end_step=3))
    mix = iv.describe()["params"]["mixture"]
    assert mix["cycle"]["entropy"] == pytest.approx(0.0, abs=1e-12)
    assert mix["db4"]["entropy"] == pytest.approx(math.log(4), abs=1e-12)
    assert mix["db8"]["entropy"] == pytest.approx(math.log(8), abs=1e-12)
    # softmax(0, ln 4, ln 8) = (1, 4, 8) / 13, and B = 13 rows split exactly 1 / 4 / 8
    assert [mix[d]["proportion"] for d in ("cycle", "db4", "db8")] == pytest.approx([1 / 13, 4 / 13, 8 / 13])
    assert [mix[d]["rows_per_batch"] for d in ("cycle", "db4", "db8")] == [1, 4, 8]


def test_batches_are_drawn_by_domain_from_rows_after_the_branch_deterministically():
    labels, data = known_corpus()
    n = 2
    iv = BiMix()
    iv.setup(corpus_context(labels, data, branch_step=n, end_step=4))
    after = np.arange(n * 13, len(labels))
    per_domain = {d: after[labels[after] == d] for d in range(3)}
    default = np.arange(n * 13, (n + 1) * 13)
    first = iv.batch_row_indices(n, default)
    second = iv.batch_row_indices(n + 1, default + 13)
    expect_first = np.concatenate([per_domain[0][:1], per_domain[1][:4], per_domain[2][:8]])
    expect_second = np.concatenate([per_domain[0][1:2], per_domain[1][4:8], per_domain[2][8:16]])
    assert first.tolist() == expect_first.tolist()
    assert second.tolist() == expect_second.tolist()
    assert len(first) == 13 and not set(first) & set(second)  # batch size kept, no row reused
    assert (first >= n * 13).all()
    assert iv.batch_row_indices(n, default).tolist() == first.tolist()  # a pure function of k


def test_running_out_of_a_domain_with_repeat_error_is_a_clear_error():
    labels, data = known_corpus(rows_per_domain=40)
    # db8 gets 8 rows per batch; rows >= 2·13 hold 32 db8 rows (26, 29, ..., 119): 4 batches
    with pytest.raises(UserError, match=r"db8 run out .* before step 9; .* supports branches up to step 6 with"):
        BiMix(repeat="error").setup(corpus_context(labels, data, branch_step=2, end_step=9))
    iv = BiMix(repeat="error")
    iv.setup(corpus_context(labels, data, branch_step=2, end_step=6))
    assert len(iv.batch_row_indices(5, np.arange(65, 78))) == 13  # the last supported batch
    with pytest.raises(UserError, match="db8 runs out of rows at global batch 6"):
        iv.batch_row_indices(6, np.arange(78, 91))


def test_repeat_epoch_reshuffles_a_domain_deterministically_and_counts_it():
    labels, data = known_corpus(rows_per_domain=40)
    iv = BiMix()  # repeat=epoch
    iv.setup(corpus_context(labels, data, branch_step=2, end_step=9))
    after = np.arange(2 * 13, len(labels))
    db8 = after[labels[after] == 2]  # 32 rows: 4 batches of 8, then a second pass
    assert len(db8) == 32
    first_pass = np.concatenate([iv.batch_row_indices(k, np.arange(13))[5:] for k in range(2, 6)])
    assert first_pass.tolist() == db8.tolist()  # first pass: data order
    second = np.concatenate([iv.batch_row_indices(k, np.arange(13))[5:] for k in range(6, 10)])
    perm = np.random.default_rng([iv.params["seed"], 2, 1]).permutation(32)
    assert second.tolist() == db8[perm].tolist()  # then a pass in a permutation seeded by (seed, domain, pass)
    assert iv.metrics(6) == {"bimix_repeated_rows": 0, "bimix_epoch.cycle": 0, "bimix_epoch.db4": 0,
                             "bimix_epoch.db8": 0}
    assert iv.metrics(7)["bimix_repeated_rows"] == 8 and iv.metrics(7)["bimix_epoch.db8"] == 1
    again = BiMix()
    again.setup(corpus_context(labels, data, branch_step=2, end_step=9))
    assert all(again.batch_row_indices(k, np.arange(13)).tolist() == iv.batch_row_indices(k, np.arange(13)).tolist()
               for k in range(2, 12))


def test_parent_without_domain_labels_is_a_user_error():
    with pytest.raises(UserError, match="domain labels: give a labelled corpus"):
        BiMix().setup(context())


def test_bimix_branch_on_the_toy(toy, tmp_path):
    out = run_branch(toy, tmp_path / "bimix", "bimix:entropy=conditional", steps=4)
    meta = json.loads((out / "trajectory.json").read_text())
    mix = meta["intervention"]["params"]["mixture"]
    known = meta["data_order"]["domains"]["entropy"]  # the toy's exact entropy rates
    assert sorted(mix, key=lambda d: mix[d]["entropy"]) == sorted(known, key=known.get)
    assert sum(m["rows_per_batch"] for m in mix.values()) == meta["recipe"]["batch_size"]
    h = {d: m["entropy"] for d, m in mix.items()}
    z = sum(math.exp(v) for v in h.values())
    for d, m in mix.items():
        assert m["proportion"] == pytest.approx(math.exp(h[d]) / z, rel=1e-12)
    # the engine trained on exactly the rows the mixture draws (the metrics carry a hash of them)
    labels = np.load(toy / "data" / "row_domains.npy")
    batch = meta["recipe"]["batch_size"]
    heldout = meta["data_order"]["heldout_batches"][0]
    after = np.arange(32 * batch, heldout * batch)
    names = meta["data_order"]["domains"]["names"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for j, row in enumerate(rows):
        parts = []
        for d, name in enumerate(names):
            c = mix[name]["rows_per_batch"]
            parts.append(after[labels[after] == d][j * c:(j + 1) * c])
        expected = np.sort(np.concatenate(parts).astype(np.int64))
        assert row["batch_rows"] == hashlib.sha1(expected.tobytes()).hexdigest()[:16]


def test_bimix_on_the_toy_from_the_last_grid_steps_to_the_end(toy, tmp_path):
    """From step 48 to 64, the end of the toy's grid: the rows after 48 hold 16 batches of rows in all,
    fewer than the mixture asks of its high-entropy domain, which is repeated."""
    out = run_branch(toy, tmp_path / "bimix", "bimix", from_step=48, steps=16)
    meta = json.loads((out / "trajectory.json").read_text())
    assert meta["complete"] and meta["end_step"] == 64
    assert (out / "checkpoints" / "step64" / "model.safetensors").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(49, 65))
    assert meta["intervention"]["resolved"]["last_step_without_repeats"] < 64
    assert sum(r["bimix_repeated_rows"] for r in rows) > 0 and rows[0]["bimix_repeated_rows"] == 0
    mix = meta["intervention"]["params"]["mixture"]
    top = max(mix, key=lambda d: mix[d]["proportion"])
    assert rows[-1][f"bimix_epoch.{top}"] >= 1
    # the engine trained on exactly the rows the (pure) draw gives, repeats included
    from checkpoints_cache.recipe import Recipe
    from data_order.source import TokenRows

    labels = np.load(toy / "data" / "row_domains.npy")
    parent = json.loads((toy / "trajectory.json").read_text())
    iv = BiMix()
    iv.setup(BranchContext(branch_step=48, end_step=64, recipe=Recipe.from_dict(parent["recipe"]), parent_grid=[0],
                           row_domains=labels, domain_names=parent["data_order"]["domains"]["names"],
                           take_rows=TokenRows(toy / "data", 8, 32).take,
                           num_rows=len(labels), extra={"data_order": parent["data_order"]}))
    for r in rows:
        ids = np.sort(iv.batch_row_indices(r["step"] - 1, np.zeros(8, dtype=np.int64)).astype(np.int64))
        assert r["batch_rows"] == hashlib.sha1(ids.tobytes()).hexdigest()[:16]
        assert r["bimix_repeated_rows"] == iv.metrics(r["step"])["bimix_repeated_rows"]
