"""Paired tests against hand-computed values on fixed inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from resume.evaluation.stats import (format_delta, mcnemar_exact, paired_bootstrap, paired_test)


def binomial_p(n01: int, n10: int) -> float:
    """Two-sided exact McNemar by integer arithmetic: 2 * P[Bin(n, 1/2) <= min], capped at 1."""
    n, k = n01 + n10, min(n01, n10)
    return 1.0 if n == 0 else min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_mcnemar_counts_and_exact_p():
    parent = [1, 1, 1, 0, 0, 1, 0, 1, 1, 1]
    branch = [1, 0, 0, 0, 1, 1, 0, 0, 1, 0]
    m = mcnemar_exact(parent, branch)
    # discordant pairs by hand: parent right / branch wrong at items 1, 2, 7, 9; the reverse at item 4
    assert (m.n01, m.n10) == (4, 1)
    assert m.p_value == pytest.approx(2 * (1 + 5) / 32, rel=1e-12) == binomial_p(4, 1)  # 0.375
    assert mcnemar_exact(parent, parent).p_value == 1.0  # no discordant item
    big = mcnemar_exact([1] * 30 + [0] * 70, [0] * 30 + [0] * 70)
    assert (big.n01, big.n10) == (30, 0) and big.p_value == pytest.approx(2 / 2**30, rel=1e-9)
    with pytest.raises(ValueError):
        mcnemar_exact([0.5, 1], [1, 0])


def _reference_bootstrap(x, y, iters, seed, stat):
    """The documented draws, one resample at a time."""
    rng = np.random.default_rng(seed)
    n = len(x)
    out = []
    for _ in range(iters):
        idx = rng.integers(0, n, size=n)
        out.append(stat(y[idx]) - stat(x[idx]))
    return np.array(out)


@pytest.mark.parametrize("statistic", ["mean", "perplexity"])
def test_paired_bootstrap_matches_the_documented_draws(statistic):
    g = np.random.default_rng(3)
    x = g.normal(-2.0, 0.3, size=57)
    y = x + g.normal(0.05, 0.1, size=57)
    stat = (lambda v: v.mean()) if statistic == "mean" else (lambda v: math.exp(-v.mean()))
    t = paired_bootstrap(x, y, iters=500, seed=11, statistic=statistic)
    ref = _reference_bootstrap(x, y, 500, 11, stat)
    assert t.delta == pytest.approx(stat(y) - stat(x), rel=1e-12)
    lo, hi = np.percentile(ref, [2.5, 97.5])
    assert (t.ci_low, t.ci_high) == (pytest.approx(lo, rel=1e-12), pytest.approx(hi, rel=1e-12))
    assert t.se == pytest.approx(ref.std(ddof=1), rel=1e-12)
    assert t.p_value == pytest.approx((1 + (np.abs(ref - t.delta) >= abs(t.delta)).sum()) / 501, rel=1e-12)
    assert t.n == 57 and t.iters == 500 and t.seed == 11


def test_bootstrap_chunks_do_not_change_the_draws(monkeypatch):
    import resume.evaluation.stats as S

    x, y = np.arange(40.0), np.arange(40.0)[::-1].copy()
    whole = paired_bootstrap(x, y, iters=300, seed=5)
    monkeypatch.setattr(S, "_CHUNK_ELEMENTS", 40 * 7)  # 7 resamples per numpy call
    assert paired_bootstrap(x, y, iters=300, seed=5) == whole


def test_paired_test_uses_mcnemar_for_accuracy_and_the_bootstrap_otherwise():
    parent = np.array([1, 1, 0, 1, 0, 1, 1, 0] * 8, dtype=float)
    branch = parent.copy()
    branch[:6] = 1 - branch[:6]  # items 0..5 flip: 2 become right, 4 become wrong
    t = paired_test(parent, branch, iters=200, seed=0)
    assert t.test == "mcnemar" and (t.n01, t.n10) == (4, 2)
    assert t.p_value == pytest.approx(binomial_p(4, 2), rel=1e-12)
    assert t.delta == pytest.approx(-2 / 64, rel=1e-12) and t.ci_low <= t.delta <= t.ci_high
    loss = paired_test(parent + 0.5, branch + 0.25, iters=200, seed=0)
    assert loss.test == "bootstrap" and loss.n01 is None
    same = paired_test(parent, parent, iters=50)
    assert same.delta == 0 and same.p_value == 1.0 and same.ci_low == same.ci_high == 0


def test_format_delta():
    t = paired_test([0.0] * 10 + [1.0] * 10, [1.0] * 10 + [1.0] * 10, iters=1000, seed=1)
    text = format_delta(t)
    assert text.startswith("Δ = +0.5 ± ") and "(95% CI [" in text and "]), p = " in text
    boot = paired_bootstrap(np.zeros(30), np.ones(30) + np.linspace(0, 0.1, 30), iters=99)
    assert format_delta(boot).endswith("p ≤ 0.01")  # no resample as extreme: the bootstrap's floor 1/(B+1)
