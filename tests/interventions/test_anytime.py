"""Anytime schedules and the EMA: formulas at chosen steps against hand arithmetic, and on the toy."""

from __future__ import annotations

import json
import math

import pytest
import torch

from resume.interventions.anytime import Anytime, anytime_lr, ema_beta

from .conftest import assert_identical, context, run_branch, tiny_neox, weights  # noqa: F401

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
    [(200, 1e-3), (250, 1e-3 * (1 - 0.9 * 50 / 99)), (298, 1e-3 * (1 - 0.9 * 98 / 99)), (299, 1e-4)],
)
def test_wsd_cooldown_is_linear_from_lr_on_the_first_update_to_a_tenth_on_the_last(t, expected):
    # branch N=200, K=100: the official LinearDecay evaluated at t+1 = 201..300 with t_start 201, t_max 300
    assert anytime_lr("wsd", t, LR, W, ALPHA, branch_step=200, end_step=300) == pytest.approx(expected, rel=1e-12)
    assert anytime_lr("wsd", 299, LR, W, ALPHA, branch_step=200, end_step=300) == LR * 0.1  # exactly
    assert anytime_lr("wsd", 200, LR, W, ALPHA, branch_step=200, end_step=201) == LR * 0.1  # K = 1: eta_min


def test_rewarm_goes_linearly_from_the_parents_lr_to_the_schedule():
    from resume.interventions.anytime import rewarmed_lr

    # parent LR at N = 2e-4, schedule 1e-3, R = 4: 2e-4, 4e-4, 6e-4, 8e-4, then the schedule
    got = [rewarmed_lr(1e-3, t, 100, 4, 2e-4) for t in range(100, 106)]
    assert got == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3, 1e-3], rel=1e-12)
    assert rewarmed_lr(1e-3, 100, 100, 0, 2e-4) == 1e-3  # rewarm=0: the jump
    iv = Anytime()
    iv.setup(context(branch_step=500, end_step=700, warmup_iters=100))
    assert iv.params["rewarm"] == 20  # min(parent warmup 100, ceil(200 / 10))
    assert iv.lr(500, parent_lr=3e-4) == 3e-4  # continuous at N: the parent's LR
    assert iv.lr(510, parent_lr=3e-4) == pytest.approx(3e-4 + (iv.params["lr"] - 3e-4) / 2, rel=1e-12)
    assert iv.lr(520, parent_lr=3e-4) == pytest.approx(iv.params["lr"], rel=1e-12)


def test_the_emas_start_is_recorded_with_its_weight_at_the_end():
    iv = Anytime(ema=25)
    iv.setup(context(branch_step=64_000, end_step=66_000))
    resolved = iv.describe()["resolved"]
    assert resolved["ema_start_step"] == 64_000
    weight = math.prod(0.5 ** (25 / (s + 1)) for s in range(64_001, 66_001))  # the betas of updates reaching S
    assert resolved["ema_weight_on_start_at_end"] == pytest.approx(weight, rel=1e-9)
    assert round(weight, 2) == 0.59  # the figure


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
    from resume.schedule import lr_at
    from checkpoints_cache.recipe import Recipe

    parent = json.loads((toy / "trajectory.json").read_text())["recipe"]
    meta = json.loads((ema_branches["inv25"] / "trajectory.json").read_text())
    params = meta["intervention"]["params"]
    assert params["lr"] == parent["lr"] and params["warmup"] == parent["warmup_iters"]
    assert params["alpha"] == pytest.approx(51200 / 5000 * parent["warmup_iters"])
    assert params["wd"] == parent["weight_decay"]
    assert params["rewarm"] == min(parent["warmup_iters"], math.ceil(16 / 10)) == 1
    p = lr_at(Recipe.from_dict(parent), 32)
    rows = [json.loads(line) for line in (ema_branches["inv25"] / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == pytest.approx(p, rel=1e-12)  # the first update: the parent's LR at N (re-warmup)
    for row in rows[1:]:
        t = row["step"] - 1  # updates before this one
        assert row["lr"] == pytest.approx(
            params["lr"] * math.sqrt(params["alpha"] / (t - params["warmup"] + params["alpha"])), rel=1e-12
        )


def test_wsd_branch_ends_exactly_at_a_tenth_and_wd0_reaches_the_optimizer(toy, tmp_path):
    out = run_branch(toy, tmp_path / "wsd", "anytime:schedule=wsd,rewarm=0,wd=0", steps=16)
    meta = json.loads((out / "trajectory.json").read_text())
    lr = meta["intervention"]["params"]["lr"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["lr"] == lr and rows[-1]["lr"] == lr * 0.1  # the official LinearDecay's end value, exactly
    for i, row in enumerate(rows):
        assert row["lr"] == pytest.approx(lr * (1 - 0.9 * i / 15), rel=1e-12)
    opt = torch.load(out / "optimizer" / "step48" / "optimizer.pt", weights_only=True)
    assert [g["weight_decay"] for g in opt["param_groups"]] == [0.0, 0.0]
    parent_opt = torch.load(toy / "optimizer" / "step48" / "optimizer.pt", weights_only=True)
    assert [g["weight_decay"] for g in parent_opt["param_groups"]] == [0.1, 0.0]


def test_training_uses_the_raw_iterate(ema_branches):
    # the EMA label changes only the shadow: raw weights identical, averaged differ; F = 0 is the iterate
    for step in (32, 48):
        assert_identical(weights(ema_branches["inv25"], step), weights(ema_branches["inv0"], step))
        assert_identical(weights(ema_branches["inv0"], step, averaged=True), weights(ema_branches["inv0"], step))
    raw, avg = weights(ema_branches["inv25"], 48), weights(ema_branches["inv25"], 48, averaged=True)
    assert any(not torch.equal(raw[n], avg[n]) for n in raw)
