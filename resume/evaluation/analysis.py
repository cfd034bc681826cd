"""Paired tests and noise bands over a set of measurements (held-out loss, task scores).

A ``Measurement`` is one number of one model at one step (``run, weights, step, metric``), with its
per-item values where they exist (per-sequence losses, lm-eval's per-document scores). ``analyze``
pairs every branch's measurement with the parent's at the same step and metric, runs the paired
test (``stats.paired_test``), builds the bands available at that step (``bands``) and gives a
verdict. Its tables:

- ``tests`` (``paired.csv``): ``run, weights, step, metric, n, delta, ci_low, ci_high, se,
  p_value, test, n01, n10`` plus, per band kind, ``<kind>_low, <kind>_high, <kind>_exceeded``
  (the Δ interval of the band and whether Δ is outside it) and ``verdict``.
- ``bands`` (``bands.csv``): ``metric, step, band, n, center, low, high, delta_low, delta_high``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from . import bands as B
from .stats import DEFAULT_ITERS, DEFAULT_LEVEL, DEFAULT_SEED, PairedTest, format_delta, paired_test

TEST_COLUMNS = ["run", "weights", "step", "metric", "n", "delta", "ci_low", "ci_high", "se", "p_value", "test",
                "n01", "n10"]
BAND_COLUMNS = ["metric", "step", "band", "n", "center", "low", "high", "delta_low", "delta_high"]


@dataclass
class Measurement:
    run: str
    weights: str  # "trained" | "averaged" | "published"
    step: int
    metric: str  # "loss" or "task/<name>/<metric>"
    value: float
    items: np.ndarray | None = None  # per-item values whose statistic is ``value``
    item_keys: Sequence[str] | None = None  # identities of the items (None: aligned by position)
    statistic: str = "mean"  # how items make the value: "mean" | "perplexity"


@dataclass
class Result:
    """One branch (weights) x metric x step: Δ, its paired test, the bands, the verdict."""

    run: str
    weights: str
    step: int
    metric: str
    delta: float
    test: PairedTest | None
    bands: list[B.Band]
    verdict: str
    note: str = ""

    def delta_text(self) -> str:
        """'Δ = +0.0123 ± 0.0045 (95% CI [+0.0078, +0.0168]), p = 0.0012' (or why there is no test)."""
        if self.test is not None:
            return format_delta(self.test)
        return f"Δ = {self.delta:+.4g} (no paired test{': ' + self.note if self.note else ''})"

    def line(self) -> str:
        """One line: 'run metric step: Δ = … ± … (95% CI […]), p = …; outside the seed band, … → verdict'."""
        head = f"`{self.run}`" + ("" if self.weights == "trained" else f" ({self.weights})") + \
            f" `{self.metric}` at step {self.step}: " + self.delta_text()
        if self.bands:
            parts = [("outside" if b.exceeded(self.delta) else "inside") + " the " + b.describe for b in self.bands]
            head += "; " + ", ".join(parts)
        else:
            head += "; no noise band available"
        return f"{head} → **{self.verdict}**"


@dataclass
class Analysis:
    results: list[Result] = field(default_factory=list)
    bands: dict[tuple[str, int], list[B.Band]] = field(default_factory=dict)  # (metric, step) -> bands

    def tests_table(self) -> pd.DataFrame:
        rows = []
        for r in self.results:
            t = r.test
            row = {"run": r.run, "weights": r.weights, "step": r.step, "metric": r.metric,
                   "n": t.n if t else np.nan, "delta": r.delta,
                   "ci_low": t.ci_low if t else np.nan, "ci_high": t.ci_high if t else np.nan,
                   "se": t.se if t else np.nan, "p_value": t.p_value if t else np.nan,
                   "test": t.test if t else "none",
                   "n01": t.n01 if t and t.n01 is not None else np.nan,
                   "n10": t.n10 if t and t.n10 is not None else np.nan}
            for kind in B.KINDS:
                band = next((b for b in r.bands if b.kind == kind), None)
                row[f"{kind}_low"] = band.delta_low if band else np.nan
                row[f"{kind}_high"] = band.delta_high if band else np.nan
                row[f"{kind}_exceeded"] = band.exceeded(r.delta) if band else None
            row["verdict"] = r.verdict
            rows.append(row)
        cols = TEST_COLUMNS + [f"{k}_{x}" for k in B.KINDS for x in ("low", "high", "exceeded")] + ["verdict"]
        return pd.DataFrame(rows, columns=cols)

    def bands_table(self) -> pd.DataFrame:
        rows = [(m, s, b.kind, b.n, b.center, b.low, b.high, b.delta_low, b.delta_high)
                for (m, s), bs in sorted(self.bands.items()) for b in bs]
        return pd.DataFrame(rows, columns=BAND_COLUMNS)

    def last(self) -> list[Result]:
        """Each (run, weights, metric) at its last compared step."""
        best: dict[tuple[str, str, str], Result] = {}
        for r in self.results:
            k = (r.run, r.weights, r.metric)
            if k not in best or r.step > best[k].step:
                best[k] = r
        return list(best.values())


def _aligned(parent: Measurement, other: Measurement) -> tuple[np.ndarray, np.ndarray] | str:
    """The two item vectors in the same item order, or why they cannot be paired."""
    if parent.items is None or other.items is None:
        return "no per-item values"
    if parent.statistic != other.statistic:
        return "different statistics"
    a, b = np.asarray(parent.items, dtype=float), np.asarray(other.items, dtype=float)
    if parent.item_keys is None or other.item_keys is None:
        return (a, b) if a.shape == b.shape else f"{a.size} vs {b.size} items"
    pos = {k: i for i, k in enumerate(other.item_keys)}
    common = [(i, pos[k]) for i, k in enumerate(parent.item_keys) if k in pos]
    if len(common) != len(parent.item_keys) or len(common) != len(other.item_keys):
        return f"different items ({len(parent.item_keys)} vs {len(other.item_keys)}, {len(common)} shared)"
    ia, ib = zip(*common)
    return a[list(ia)], b[list(ib)]


def analyze(measurements: Sequence[Measurement], parent: str, branches: Sequence[str], seeds: Sequence[str] = (),
            controls: Sequence[str] = (), window: int = B.DEFAULT_WINDOW, iters: int = DEFAULT_ITERS,
            seed: int = DEFAULT_SEED, level: float = DEFAULT_LEVEL, alpha: float = 0.05) -> Analysis:
    """Paired tests, bands and verdicts for every branch measurement that has a parent one."""
    by_key = {(m.run, m.weights, m.step, m.metric): m for m in measurements}
    metrics = sorted({m.metric for m in measurements if m.run == parent})
    out = Analysis()
    for metric in metrics:
        parent_values = {m.step: m.value for m in measurements if m.run == parent and m.metric == metric
                         and m.weights == "trained"}
        for step in sorted(parent_values):
            p = by_key[(parent, "trained", step, metric)]
            seed_vals = [by_key[(s, "trained", step, metric)].value for s in seeds if (s, "trained", step, metric) in by_key]
            ctrl = {c: by_key[(c, "trained", step, metric)].value - p.value for c in controls
                    if (c, "trained", step, metric) in by_key}
            common = [b for b in (B.seed_band(step, [p.value, *seed_vals]) if seed_vals else None,
                                  B.checkpoint_noise(step, parent_values, window)) if b is not None]
            all_controls = B.control_band(step, p.value, list(ctrl.values()))
            out.bands[(metric, step)] = common + ([all_controls] if all_controls else [])
            for run in branches:
                for weights in ("trained", "averaged"):
                    m = by_key.get((run, weights, step, metric))
                    if m is None:
                        continue
                    delta = m.value - p.value
                    pair = _aligned(p, m)
                    test, note = None, ""
                    if isinstance(pair, str):
                        note = pair
                    else:
                        test = paired_test(pair[0], pair[1], statistic=m.statistic, iters=iters, seed=seed, level=level)
                        delta = test.delta
                    # A control is judged against the seed and checkpoint bands only (its own Δ is one of the controls').
                    bands = list(common) if run in controls else out.bands[(metric, step)]
                    out.results.append(Result(run, weights, step, metric, delta, test, bands,
                                              B.verdict(delta, test.p_value if test else None, bands, alpha), note))
    return out
