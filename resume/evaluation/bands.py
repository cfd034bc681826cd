"""Noise bands: how large a branch − parent difference is without any intervention.

Each band gives an interval of Δ (branch − parent at one step, in the metric's own units) that noise
alone produces, and the interval drawn on the figures. A difference "exceeds" a band when Δ lies
outside the Δ interval.

- ``seed``: the metric over the seed runs and the parent (itself one seed of the recipe) at the
  step, drawn as the median and the inter-quartile range, as the PolyPythias paper does
  (users_and_suites.md §2, paper 8). Δ interval: ±IQR (for normal noise the IQR, 1.35σ, is about
  the typical difference between two seeds, 1.13σ).
- ``checkpoint``: the spread σ of the parent's own metric over the ``window`` checkpoints nearest
  to the step, the step itself included (ties: the earlier one), as in "Signal and Noise" (paper
  10, noise = the std over a run's last checkpoints). Mid-training the metric also moves with
  training, so σ is taken around the parent's own linear trend over the window (residual std,
  ``n - 2`` degrees of freedom; with two checkpoints, their plain std): checkpoint-to-checkpoint
  jitter, not progress. Drawn as parent ± σ; Δ interval ±σ.
- ``controls``: Δ of the repeated control branches (``branch --intervention none --repeat R``, and
  the plain control) at the step: the engine's own noise floor (micro-batch order, data-order seed).
  Δ interval [min, max] of the controls' Δ; needs at least two controls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

KINDS = ("seed", "checkpoint", "controls")
DEFAULT_WINDOW = 3


@dataclass(frozen=True)
class Band:
    kind: str
    step: int
    n: int  # members
    center: float  # drawn: seed median, parent value, parent value + median control Δ
    low: float  # drawn interval, in the metric's units
    high: float
    delta_low: float  # what noise alone gives for Δ
    delta_high: float

    def exceeded(self, delta: float) -> bool:
        return delta < self.delta_low or delta > self.delta_high

    @property
    def describe(self) -> str:
        if self.kind == "seed":
            return f"seed band (IQR {self.delta_high:.3g}, {self.n} runs)"
        if self.kind == "checkpoint":
            return f"checkpoint noise (σ {self.delta_high:.3g} over {self.n} checkpoints)"
        return f"repeated controls (Δ in [{self.delta_low:.3g}, {self.delta_high:.3g}], {self.n} runs)"


def seed_band(step: int, values: Sequence[float]) -> Band | None:
    """Median and IQR over the seed runs' values and the parent's (one list); None if < 2 values."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size < 2:
        return None
    q1, med, q3 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    w = q3 - q1
    return Band("seed", step, int(v.size), med, q1, q3, -w, w)


def window_steps(steps: Sequence[int], step: int, window: int = DEFAULT_WINDOW) -> list[int]:
    """The ``window`` steps of ``steps`` nearest to ``step`` (``step`` first; ties: the earlier)."""
    ranked = sorted(set(int(s) for s in steps), key=lambda s: (abs(s - step), s))
    return sorted(ranked[:window])


def detrended_std(steps: Sequence[int], values: Sequence[float]) -> float:
    """Residual std around the least-squares line (n - 2 dof); the plain std (ddof=1) for two points."""
    x, y = np.asarray(steps, dtype=float), np.asarray(values, dtype=float)
    if y.size < 3:
        return float(y.std(ddof=1))
    slope, intercept = np.polyfit(x - x.mean(), y, 1)
    r = y - (slope * (x - x.mean()) + intercept)
    return float(np.sqrt((r ** 2).sum() / (y.size - 2)))


def checkpoint_noise(step: int, parent_values: Mapping[int, float], window: int = DEFAULT_WINDOW) -> Band | None:
    """The parent's checkpoint-to-checkpoint noise over the ``window`` checkpoints nearest to ``step``."""
    if step not in parent_values or window < 2:
        return None
    chosen = window_steps(list(parent_values), step, window)
    if len(chosen) < 2:
        return None
    sd = detrended_std(chosen, [parent_values[s] for s in chosen])
    center = float(parent_values[step])
    return Band("checkpoint", step, len(chosen), center, center - sd, center + sd, -sd, sd)


def control_band(step: int, parent_value: float, control_deltas: Sequence[float]) -> Band | None:
    """[min, max] of the control branches' Δ at the step; None with fewer than two controls."""
    d = np.asarray([x for x in control_deltas if x is not None and np.isfinite(x)], dtype=float)
    if d.size < 2:
        return None
    lo, hi = float(d.min()), float(d.max())
    return Band("controls", step, int(d.size), parent_value + float(np.median(d)), parent_value + lo,
                parent_value + hi, lo, hi)


def verdict(delta: float, p_value: float | None, bands: Sequence[Band], alpha: float = 0.05) -> str:
    """One phrase: does the difference exceed noise? Needs p < alpha and Δ outside every band given."""
    inside = [b.kind for b in bands if not b.exceeded(delta)]
    if p_value is None:
        if not bands:
            return "no paired test and no noise band: undecided"
        return "beyond every available band (no paired test)" if not inside else f"within noise ({', '.join(inside)})"
    if p_value >= alpha:
        return f"no significant difference (p ≥ {alpha:g})"
    if not bands:
        return f"significant (p < {alpha:g}); no noise band available"
    if inside:
        return f"significant (p < {alpha:g}) but within noise ({', '.join(inside)})"
    return "differs beyond noise"
