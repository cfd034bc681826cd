"""Paired tests of a branch against its parent on the same items (task documents, held-out sequences).

Both models are scored on the same items, so the test is on the per-item differences, which is much
tighter than comparing two unpaired standard errors (users_and_suites.md §4.3).

- ``mcnemar_exact``: for 0/1 items (accuracy). ``n01`` items the parent gets right and the branch
  wrong, ``n10`` the reverse; under H0 (no difference) each discordant item goes either way with
  probability 1/2, so the two-sided exact p-value is ``min(1, 2 * P[Binomial(n01 + n10, 1/2) <=
  min(n01, n10)])`` (1 when there is no discordant item).
- ``paired_bootstrap``: resamples items with replacement, the same resample for both models. Draw
  ``b`` (b = 0 .. iters-1) is ``rng.integers(0, n, size=n)`` from ``np.random.default_rng(seed)``,
  drawn in that order. Δ* is the statistic of the branch minus that of the parent on the resample;
  the CI is the (1-level)/2 and (1+level)/2 percentiles of Δ* (numpy's linear interpolation), the
  standard error their std (ddof=1), and the p-value of H0: Δ = 0 is the shifted-bootstrap one,
  ``(1 + #{|Δ* - Δ| >= |Δ|}) / (iters + 1)`` (Efron & Tibshirani, §16.4).
- Statistics: ``mean`` (accuracy, per-sequence loss) and ``perplexity`` (lm-eval's loglikelihood
  tasks: items are log-likelihoods, the score is exp(-mean)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import numpy as np

STATISTICS = ("mean", "perplexity")
DEFAULT_ITERS = 10_000
DEFAULT_SEED = 1234
DEFAULT_LEVEL = 0.95
# Resamples drawn per numpy call: bounds memory (chunk x n indices) without changing the draws.
_CHUNK_ELEMENTS = 1 << 22
# Up to this many resample x item counts (32 MB) are kept and shared by all mean tests of one size.
_COUNTS_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class McNemar:
    n01: int  # the parent right, the branch wrong
    n10: int  # the parent wrong, the branch right
    p_value: float


@dataclass(frozen=True)
class PairedTest:
    """Branch minus parent on the same items."""

    test: str  # "mcnemar" (p from McNemar, CI from the bootstrap) or "bootstrap"
    statistic: str
    n: int
    delta: float
    ci_low: float
    ci_high: float
    p_value: float
    se: float
    iters: int
    seed: int
    level: float
    n01: int | None = None
    n10: int | None = None

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def _as_binary(values: np.ndarray) -> np.ndarray | None:
    return values.astype(bool) if np.isin(values, (0.0, 1.0)).all() else None


def mcnemar_exact(parent_correct: Sequence[float] | np.ndarray, branch_correct: Sequence[float] | np.ndarray) -> McNemar:
    """Exact (binomial) McNemar test on paired 0/1 outcomes."""
    from scipy.stats import binom

    a = np.asarray(parent_correct, dtype=float)
    b = np.asarray(branch_correct, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes differ in length: {a.shape} vs {b.shape}")
    ab, bb = _as_binary(a), _as_binary(b)
    if ab is None or bb is None:
        raise ValueError("McNemar's test needs 0/1 outcomes")
    n01 = int((ab & ~bb).sum())
    n10 = int((~ab & bb).sum())
    n = n01 + n10
    p = 1.0 if n == 0 else min(1.0, 2.0 * float(binom.cdf(min(n01, n10), n, 0.5)))
    return McNemar(n01, n10, p)


def _statistic(values: np.ndarray, statistic: str) -> np.ndarray | float:
    m = values.mean(axis=-1)
    return np.exp(-m) if statistic == "perplexity" else m


@functools.lru_cache(maxsize=4)
def _counts(n: int, iters: int, seed: int) -> np.ndarray:
    """How often each item is drawn in each resample: [iters, n] float64. For a mean, Δ* of resample b
    is counts[b] · d / n, one matrix-vector product for every test with the same n (the draws are
    the same for all of them)."""
    parts = []
    for idx in bootstrap_indices(n, iters, seed):
        k = idx.shape[0]
        flat = (idx + (np.arange(k) * n)[:, None]).ravel()  # resample b's items as b*n + i: one bincount
        parts.append(np.bincount(flat, minlength=k * n).reshape(k, n).astype(np.float64))
    return np.concatenate(parts)


def bootstrap_indices(n: int, iters: int, seed: int):
    """The resamples of ``paired_bootstrap``, in chunks of whole draws (see the module docstring)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < iters:
        k = min(chunk, iters - done)
        yield rng.integers(0, n, size=(k, n))
        done += k


def paired_bootstrap(parent: Sequence[float] | np.ndarray, branch: Sequence[float] | np.ndarray,
                     iters: int = DEFAULT_ITERS, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL,
                     statistic: str = "mean") -> PairedTest:
    """Paired bootstrap of statistic(branch) - statistic(parent) over items (module docstring)."""
    if statistic not in STATISTICS:
        raise ValueError(f"statistic {statistic!r}: use one of {', '.join(STATISTICS)}")
    x = np.asarray(parent, dtype=np.float64)
    y = np.asarray(branch, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"paired items differ in shape: {x.shape} vs {y.shape}")
    n = int(x.size)
    if n == 0:
        raise ValueError("no items to compare")
    if iters < 1:
        raise ValueError(f"bootstrap iterations {iters} must be at least 1")
    delta = float(_statistic(y, statistic) - _statistic(x, statistic))
    diff = y - x
    if statistic == "mean" and iters * n <= _COUNTS_ELEMENTS:
        stars = _counts(n, iters, seed) @ diff / n
    else:
        parts = []
        for idx in bootstrap_indices(n, iters, seed):
            if statistic == "mean":
                parts.append(diff[idx].mean(axis=1))  # mean of the paired differences: one gather
            else:
                parts.append(_statistic(y[idx], statistic) - _statistic(x[idx], statistic))
        stars = np.concatenate(parts)
    lo, hi = np.percentile(stars, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    extreme = int((np.abs(stars - delta) >= abs(delta)).sum())
    p = (1 + extreme) / (iters + 1)
    se = float(stars.std(ddof=1)) if iters > 1 else 0.0
    return PairedTest("bootstrap", statistic, n, delta, float(lo), float(hi), min(1.0, p), se, iters, seed, level)


def paired_test(parent: Sequence[float] | np.ndarray, branch: Sequence[float] | np.ndarray, statistic: str = "mean",
                iters: int = DEFAULT_ITERS, seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL) -> PairedTest:
    """McNemar + bootstrap CI for 0/1 items with a mean statistic (accuracy); the bootstrap alone otherwise."""
    boot = paired_bootstrap(parent, branch, iters=iters, seed=seed, level=level, statistic=statistic)
    x, y = np.asarray(parent, dtype=float), np.asarray(branch, dtype=float)
    if statistic == "mean" and _as_binary(x) is not None and _as_binary(y) is not None:
        mc = mcnemar_exact(x, y)
        return PairedTest("mcnemar", statistic, boot.n, boot.delta, boot.ci_low, boot.ci_high, mc.p_value, boot.se,
                          iters, seed, level, mc.n01, mc.n10)
    return boot


def fmt_signed(x: float) -> str:
    if x == 0:
        return "0"
    return f"{x:+.4g}"


def fmt_p(p: float) -> str:
    return f"{p:.2g}"


def format_delta(t: PairedTest) -> str:
    """'Δ = +0.0123 ± 0.0045 (95% CI [+0.0078, +0.0168]), p = 0.0012' (± is the CI's half-width; a
    bootstrap p at its floor 1/(iters+1), no resample as extreme, reads 'p ≤ …')."""
    pct = f"{100 * t.level:g}%"
    floor = t.test == "bootstrap" and t.p_value <= 1 / (t.iters + 1) * (1 + 1e-9)
    p = fmt_p(t.p_value)
    if floor:
        return (f"Δ = {fmt_signed(t.delta)} ± {t.half_width:.2g} ({pct} CI [{fmt_signed(t.ci_low)}, "
                f"{fmt_signed(t.ci_high)}]), p ≤ {p}")
    if t.ci_low == t.ci_high:
        return f"Δ = {fmt_signed(t.delta)} ± 0 ({pct} CI [{fmt_signed(t.ci_low)}, {fmt_signed(t.ci_high)}]), p = {p}"
    return (f"Δ = {fmt_signed(t.delta)} ± {t.half_width:.2g} ({pct} CI [{fmt_signed(t.ci_low)}, "
            f"{fmt_signed(t.ci_high)}]), p = {p}")

