"""Anytime schedules and the EMA: formulas at chosen steps against hand arithmetic, and on the toy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from resume.interventions.anytime import Anytime, anytime_lr, ema_beta

from .conftest import assert_identical, context, run_branch, tiny_neox, weights

# Hand values: lr = 1e-3, W = 100, alpha = 1000.
LR, W, ALPHA = 1e-3, 100, 1000.0


@pytest.mark.parametrize(
    "schedule, t, expected",
    [
        ("constant", 0, 1e-4),  # warmup starts at 0.1·lr
        ("constant", 50, 5.5e-4),  # 1e-3·(0.1 + 0.9·50/100)
        ("constant", 99, 1e-3 * (0.1 + 0.9 * 0.99)),
        ("constant", 100, 1e-3),
        ("constant", 10_000, 1e-3),
        ("invsqrt", 50, 5.5e-4),  # same warmup
        ("invsqrt", 100, 1e-3),  # sqrt(1000/1000): continuous at the end of warmup
        ("invsqrt", 1100, 1e-3 * math.sqrt(0.5)),  # sqrt(1000/2000) = 7.0710678e-4
        ("invsqrt", 4100, 4.47213595499958e-4),  # sqrt(1000/5000)
    ],
)
def test_schedule_values(schedule, t, expected):
    assert anytime_lr(schedule, t, LR, W, ALPHA, branch_step=0, end_step=20_000) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    "t, expected",
    [(200, 1e-3), (250, 5.5e-4), (299, 1e-3 * (1 - 0.9 * 99 / 100)), (300, 1e-4)],
)
def test_wsd_cooldown_is_linear_from_lr_at_the_branch_to_a_tenth_at_the_end(t, expected):
    # branch N=200, K=100: lr·(1 − 0.9·(t − N)/K); the last update (t=299) is one step short of 0.1·lr
    assert anytime_lr("wsd", t, LR, W, ALPHA, branch_step=200, end_step=300) == pytest.approx(expected, rel=1e-12)


def test_ema_beta_values():
    assert ema_beta(25, 24) == pytest.approx(0.5)  # 0.5^(25/25): half-life of one step at t+1 = 25
    assert ema_beta(25, 99) == pytest.approx(0.5 ** 0.25)
    assert ema_beta(1, 1) == pytest.approx(math.sqrt(0.5))
    assert ema_beta(0, 1000) == 0.0  # F = 0: the last iterate


def test_ema_update_matches_the_formula_on_the_old_average():
    model = tiny_neox()
    iv = Anytime(ema=25)
    iv.setup(context(branch_step=10, end_step=20))
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    iv.on_load(model, iv.ctx)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(-2.0)
    iv.after_step(model, 11)
    beta = 0.5 ** (25 / 12)  # S = 11 is the step reached
    for n, p in model.named_parameters():
        expected = beta * start[n].double() + (1 - beta) * p.detach().double()
        assert torch.allclose(iv.ema_weights[n].double(), expected, rtol=0, atol=1e-6), n
        assert iv.ema_weights[n].dtype == torch.float32 and iv.ema_weights[n].device.type == "cpu"


@pytest.fixture(scope="module")
def ema_branches(toy, tmp_path_factory):
    base = tmp_path_factory.mktemp("anytime")
    return {
        # from step 0 for 2 updates: checkpoints 0, 1, 2 all saved, so every EMA step can be redone
        "ema1": run_branch(toy, base / "ema1", "anytime:schedule=constant,ema=1", from_step=0, steps=2),
        "inv25": run_branch(toy, base / "inv25", "anytime:schedule=invsqrt,ema=25", steps=16),
        "inv0": run_branch(toy, base / "inv0", "anytime:schedule=invsqrt,ema=0", steps=16),
    }


def test_ema_on_saved_checkpoints(ema_branches):
    b = ema_branches["ema1"]
    w = {s: weights(b, s) for s in (0, 1, 2)}
    b1, b2 = 0.5 ** (1 / 2), 0.5 ** (1 / 3)  # β_S = 0.5^(F/(S+1)) with F = 1
    avg1 = {n: b1 * w[0][n].double() + (1 - b1) * w[1][n].double() for n in w[0]}
    avg2 = {n: b2 * avg1[n] + (1 - b2) * w[2][n].double() for n in w[0]}
    assert_identical(weights(b, 0, averaged=True), w[0])  # starts from the loaded weights
    for step, expected in ((1, avg1), (2, avg2)):
        got = weights(b, step, averaged=True)
        for n in expected:
            assert torch.allclose(got[n].double(), expected[n], rtol=0, atol=1e-6), (step, n)


def test_branch_lr_follows_the_schedule_and_defaults_come_from_the_parent(ema_branches, toy):
    parent = json.loads((toy / "trajectory.json").read_text())["recipe"]
    meta = json.loads((ema_branches["inv25"] / "trajectory.json").read_text())
    params = meta["intervention"]["params"]
    assert params["lr"] == parent["lr"] and params["warmup"] == parent["warmup_iters"]
    assert params["alpha"] == pytest.approx(51200 / 5000 * parent["warmup_iters"])
    rows = [json.loads(line) for line in (ema_branches["inv25"] / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        t = row["step"] - 1  # updates before this one
        assert row["lr"] == pytest.approx(
            params["lr"] * math.sqrt(params["alpha"] / (t - params["warmup"] + params["alpha"])), rel=1e-12
        )


def test_training_uses_the_raw_iterate(ema_branches):
    # the EMA label changes only the shadow: raw weights identical, averaged differ; F = 0 is the iterate
    for step in (32, 48):
        assert_identical(weights(ema_branches["inv25"], step), weights(ema_branches["inv0"], step))
        assert_identical(weights(ema_branches["inv0"], step, averaged=True), weights(ema_branches["inv0"], step))
    raw, avg = weights(ema_branches["inv25"], 48), weights(ema_branches["inv25"], 48, averaged=True)
    assert any(not torch.equal(raw[n], avg[n]) for n in raw)
