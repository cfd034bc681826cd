"""BiMix's bivariate data-mixing law: fit across branches and the loss-minimising mixture.

Per domain i (Ge et al., arXiv 2405.14908, Eq. 3; methods.md §4.1 — a *product* form):

    L_i(r_i, s) = (A_i / r_i^α_i) · (B_i / s^β_i + C_i)

with r_i the domain's proportion and s the training step. L depends on A only through A·B and A·C,
so A, B, C are fixed only up to a common factor; ``fit_domain`` reports the gauge A = 1. Fitting
uses SciPy's Trust Region Reflective least squares on relative residuals (the paper fits with TRF);
``optimal_mixture`` minimises Σ_i L_i(r_i, s) on the simplex (Eqs. 15–16) with SLSQP.

Typical use with branches: run a few ``bimix`` (or other) mixtures from the same step N, evaluate
each domain's loss at several steps, then fit one law per domain on the tuples ⟨r_i, s, L_i⟩.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from checkpoints_cache.errors import UserError


@dataclass(frozen=True)
class DomainLaw:
    """L(r, s) = (A / r^alpha) · (B / s^beta + C) for one domain."""

    A: float
    alpha: float
    B: float
    beta: float
    C: float

    def __call__(self, r: np.ndarray | float, s: np.ndarray | float) -> np.ndarray:
        r = np.asarray(r, dtype=np.float64)
        s = np.asarray(s, dtype=np.float64)
        return self.A / r ** self.alpha * (self.B / s ** self.beta + self.C)


def fit_domain(r: Sequence[float], s: Sequence[float], loss: Sequence[float]) -> DomainLaw:
    """The law through the tuples ⟨r, s, L⟩ of one domain (at least 2 mixtures × 2 steps)."""
    from scipy.optimize import least_squares

    r, s, loss = (np.asarray(x, dtype=np.float64) for x in (r, s, loss))
    if not (r.shape == s.shape == loss.shape) or r.ndim != 1:
        raise UserError("fit_domain needs equally long 1-D sequences r, s, loss")
    if len(np.unique(r)) < 2 or len(np.unique(s)) < 2 or r.size < 4:
        raise UserError(f"fit_domain needs >= 2 distinct proportions and >= 2 steps (got {len(np.unique(r))} and "
                        f"{len(np.unique(s))}); the law has 4 free coefficients")
    if (r <= 0).any() or (r > 1).any() or (s <= 0).any() or (loss <= 0).any():
        raise UserError("fit_domain needs proportions in (0, 1], steps > 0 and losses > 0")

    def residuals(x: np.ndarray) -> np.ndarray:
        alpha, b, beta, c = x
        return DomainLaw(1.0, alpha, b, beta, c)(r, s) / loss - 1.0

    x0 = np.array([0.1, max(loss.max() - loss.min(), 1e-3) * s.min() ** 0.5, 0.5, loss.min()])
    fit = least_squares(residuals, x0, method="trf", bounds=([0.0, 0.0, 0.0, 0.0], [10.0, np.inf, 5.0, np.inf]),
                        x_scale="jac", xtol=1e-12, ftol=1e-12, gtol=1e-12, max_nfev=20000)
    alpha, b, beta, c = (float(v) for v in fit.x)
    return DomainLaw(1.0, alpha, b, beta, c)


def optimal_mixture(laws: Sequence[DomainLaw], step: float) -> np.ndarray:
    """Proportions r on the simplex minimising Σ_i L_i(r_i, step)."""
    from scipy.optimize import minimize

    m = len(laws)
    if m == 0:
        raise UserError("optimal_mixture needs at least one domain law")

    def total(r: np.ndarray) -> float:
        return float(sum(law(ri, step) for law, ri in zip(laws, r)))

    res = minimize(total, np.full(m, 1.0 / m), method="SLSQP", bounds=[(1e-6, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda r: r.sum() - 1.0}],
                   options={"ftol": 1e-14, "maxiter": 1000})
    r = np.clip(res.x, 0.0, None)
    return r / r.sum()
