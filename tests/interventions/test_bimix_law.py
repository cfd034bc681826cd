"""The BiMix law: TRF fit recovers known coefficients; the optimal mixture matches Lagrange's answer."""

from __future__ import annotations

import numpy as np
import pytest

from checkpoints_cache.errors import UserError
from resume.interventions.bimix_law import DomainLaw, fit_domain, optimal_mixture


def test_law_is_the_product_form():
    law = DomainLaw(A=2.0, alpha=0.5, B=30.0, beta=0.5, C=1.5)
    # (2 / 0.25^0.5) · (30 / 100^0.5 + 1.5) = 4 · 4.5 = 18
    assert law(0.25, 100) == pytest.approx(18.0)


def test_fit_recovers_known_coefficients_in_the_a_equals_1_gauge():
    truth = DomainLaw(A=1.3, alpha=0.08, B=12.0, beta=0.45, C=2.1)
    r = np.repeat([0.1, 0.25, 0.5, 0.8], 6)
    s = np.tile([500, 1000, 2000, 4000, 8000, 16000], 4)
    fit = fit_domain(r, s, truth(r, s))
    assert fit.A == 1.0
    assert fit.alpha == pytest.approx(truth.alpha, rel=1e-5)
    assert fit.beta == pytest.approx(truth.beta, rel=1e-5)
    assert fit.B == pytest.approx(truth.A * truth.B, rel=1e-5)  # only A·B and A·C are identifiable
    assert fit.C == pytest.approx(truth.A * truth.C, rel=1e-5)
    # extrapolation to a later step, as the paper uses it
    assert fit(0.3, 64000) == pytest.approx(truth(0.3, 64000), rel=1e-6)


def test_optimal_mixture_matches_lagrange():
    # equal alpha: minimising Σ K_i r_i^-a on the simplex gives r_i ∝ K_i^(1/(a+1))
    laws = [DomainLaw(1.0, 0.5, 0.0, 0.5, c) for c in (1.0, 2.0, 4.0)]
    r = optimal_mixture(laws, step=1000)
    k = np.array([1.0, 2.0, 4.0]) ** (1 / 1.5)
    assert r == pytest.approx(k / k.sum(), abs=1e-5)
    assert r.sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "r, s, loss, match",
    [([0.5, 0.5, 0.5, 0.5], [1, 2, 3, 4], [3, 2, 1, 1], "distinct proportions"),
     ([0.2, 0.5], [1, 2], [3, 2], "distinct proportions"),
     ([0.2, 0.5, 0.2, 1.5], [1, 1, 2, 2], [3, 2, 2, 1], "proportions in"),
     ([0.2, 0.5], [1, 2, 3], [3, 2, 1], "equally long")],
)
def test_bad_fit_input(r, s, loss, match):
    with pytest.raises(UserError, match=match):
        fit_domain(r, s, loss)
