"""Noise bands: the checkpoint-noise window and std, the seed IQR, the repeated-control range, verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from resume.evaluation.analysis import Measurement, analyze
from resume.evaluation.bands import checkpoint_noise, control_band, seed_band, verdict, window_steps


def test_checkpoint_noise_window_and_std():
    values = {0: 5.0, 16: 4.0, 32: 3.5, 48: 3.25, 64: 3.0}
    assert window_steps(list(values), 32, 3) == [16, 32, 48]
    assert window_steps(list(values), 64, 3) == [32, 48, 64]  # the last step: the three before it
    assert window_steps([10, 20, 30, 40], 25, 2) == [20, 30]  # ties go to the earlier step
    b = checkpoint_noise(32, values, 3)
    # around the least-squares line through (16, 4.0), (32, 3.5), (48, 3.25): slope -0.0234375, residuals
    # +1/24, -1/12, +1/24 (they sum to 0), one degree of freedom
    resid = np.array([1 / 24, -1 / 12, 1 / 24])
    sd = float(np.sqrt((resid ** 2).sum() / 1))
    assert b.kind == "checkpoint" and b.n == 3 and b.center == 3.5
    assert (b.delta_low, b.delta_high) == (pytest.approx(-sd), pytest.approx(sd))
    assert (b.low, b.high) == (pytest.approx(3.5 - sd), pytest.approx(3.5 + sd))
    assert b.exceeded(1.01 * sd) and not b.exceeded(0.99 * sd) and b.exceeded(-1.01 * sd)
    assert checkpoint_noise(32, {32: 1.0}, 3) is None  # one checkpoint: no spread
    two = checkpoint_noise(48, {32: 1.0, 48: 2.0}, 3)
    assert two.delta_high == pytest.approx(float(np.std([1.0, 2.0], ddof=1)))  # two points: the plain std
    flat = checkpoint_noise(48, {32: 1.0, 48: 2.0, 64: 3.0}, 3)
    assert flat.delta_high == pytest.approx(0.0, abs=1e-12)  # a straight trend is no noise
    assert checkpoint_noise(32, values, 0) is None and checkpoint_noise(40, values, 3) is None


def test_seed_band_is_median_and_iqr():
    b = seed_band(48, [1.0, 2.0, 4.0, 8.0, 16.0])
    assert (b.low, b.center, b.high) == (2.0, 4.0, 8.0)
    assert (b.delta_low, b.delta_high) == (-6.0, 6.0) and b.n == 5
    assert seed_band(48, [1.0]) is None


def test_control_band_is_the_range_of_the_controls():
    b = control_band(64, 3.0, [0.0, 0.002, -0.001])
    assert (b.delta_low, b.delta_high) == (-0.001, 0.002) and b.low == pytest.approx(2.999)
    assert b.exceeded(0.003) and not b.exceeded(0.001)
    assert control_band(64, 3.0, [0.0]) is None


def test_verdicts():
    ck = checkpoint_noise(48, {32: 1.0, 48: 1.1, 80: 1.5}, 2)  # the two nearest, 32 and 48: σ = 0.0707
    assert verdict(0.5, 0.001, [ck]) == "differs beyond noise"
    assert verdict(0.05, 0.001, [ck]).startswith("significant (p < 0.05) but within noise (checkpoint)")
    assert verdict(0.5, 0.2, [ck]).startswith("no significant difference")
    assert verdict(0.5, 0.001, []).endswith("no noise band available")


def test_analyze_pairs_items_bands_and_controls():
    rng = np.random.default_rng(0)
    base = {s: rng.normal(3.0 - s / 100, 0.2, size=40) for s in (32, 48, 64)}
    ms = []
    for s, rows in base.items():
        ms.append(Measurement("parent:p", "trained", s, "loss", rows.mean(), items=rows))
        for name, shift in (("ctl1", 0.0), ("ctl2", 1e-4), ("lawa", 0.05)):
            r = rows + shift + (rng.normal(0, 1e-3, 40) if name == "lawa" else 0)
            ms.append(Measurement(name, "trained", s, "loss", r.mean(), items=r))
    res = analyze(ms, "parent:p", ["ctl1", "ctl2", "lawa"], controls=["ctl1", "ctl2"], iters=500)
    lawa = next(r for r in res.results if r.run == "lawa" and r.step == 64)
    assert lawa.test is not None and lawa.test.p_value < 0.01
    kinds = {b.kind for b in lawa.bands}
    assert kinds == {"checkpoint", "controls"}  # no seed runs given
    parent64 = next(m for m in ms if m.run == "parent:p" and m.step == 64)
    lawa64 = next(m for m in ms if m.run == "lawa" and m.step == 64)
    assert lawa.delta == pytest.approx(lawa64.items.mean() - parent64.items.mean(), rel=1e-12)
    ctl = next(r for r in res.results if r.run == "ctl1" and r.step == 64)
    assert {b.kind for b in ctl.bands} == {"checkpoint"}  # a control is not judged against the controls
    table = res.tests_table()
    assert set(table.run) == {"ctl1", "ctl2", "lawa"} and (table.test == "bootstrap").all()
    assert len(res.bands_table()[res.bands_table().band == "controls"]) == 3
