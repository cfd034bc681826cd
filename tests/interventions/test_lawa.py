"""LAWA: snapshot rule, uniform mean, and the issue's must-hold points on real branches of the toy.

Tolerance for "the replacement equals the mean of the parent's checkpoints": the engine sums the
snapshots in float32 in step order and divides by n, so the branch's weights must equal the same
float32 arithmetic on the parent's saved checkpoints *bit for bit*, and lie within 1e-6 (absolute;
weights are O(0.1)) of the float64 mean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from resume.interventions.lawa import LAWA

from .conftest import BRANCH_STEP, assert_identical, context, run_branch, tiny_neox, weights


def float32_mean(*tensors: torch.Tensor) -> torch.Tensor:
    """The independent arithmetic: sum in float32 in order, divide by the count (numpy, not torch)."""
    acc = tensors[0].numpy().astype(np.float32).copy()
    for t in tensors[1:]:
        acc = acc + t.numpy().astype(np.float32)
    return torch.from_numpy(acc / np.float32(len(tensors)))


def float64_mean(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.mean([t.numpy().astype(np.float64) for t in tensors], axis=0))


# --- the hooks on their own -------------------------------------------------------------------


def test_snapshot_rule_branch_step_counts_when_a_multiple():
    model = tiny_neox()
    lawa = LAWA(k=3, every=5, mode="eval")
    lawa.setup(context(branch_step=10, end_step=30))
    lawa.on_load(model, lawa.ctx)
    for step in range(11, 31):
        lawa.after_step(model, step)
    assert lawa.snapshot_steps() == [20, 25, 30]  # 10, 15, 20, 25, 30 taken; latest k=3 kept

    other = LAWA(k=3, every=4, mode="eval")
    other.setup(context(branch_step=10, end_step=30))
    other.on_load(model, other.ctx)  # 10 % 4 != 0: no snapshot at the branch step
    assert other.snapshot_steps() == []
    other.after_step(model, 12)
    assert other.snapshot_steps() == [12]


def test_snapshots_live_on_cpu_and_replace_copies_the_mean_in_place():
    model = tiny_neox()
    lawa = LAWA(k=2, every=1, mode="replace")
    lawa.setup(context(branch_step=0, end_step=5))
    lawa.on_load(model, lawa.ctx)
    first = {n: p.detach().clone() for n, p in model.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    params_before = [p for p in model.parameters()]
    lawa.after_step(model, 1)
    assert all(t.device.type == "cpu" for _, w in lawa.snapshots for t in w.values())
    assert [p for p in model.parameters()] == params_before  # same Parameter objects: in place
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), float32_mean(first[n], first[n] + 1.0))


def test_state_dict_round_trip_carries_snapshots():
    model = tiny_neox()
    lawa = LAWA(k=2, every=1, mode="eval")
    lawa.setup(context(branch_step=0, end_step=5))
    lawa.on_load(model, lawa.ctx)
    lawa.after_step(model, 1)
    again = LAWA(k=2, every=1, mode="eval")
    again.setup(context(branch_step=0, end_step=5))
    again.load_state_dict(lawa.state_dict())
    assert again.snapshot_steps() == [0, 1]
    assert_identical(again.average(), lawa.average())


# --- the must-hold points, on real branches ----------------------------------------------------


@pytest.fixture(scope="module")
def lawa_branches(toy, tmp_path_factory):
    base = tmp_path_factory.mktemp("lawa")
    return {
        "eval": run_branch(toy, base / "eval", "lawa:k=5,every=16,mode=eval"),
        "k1": run_branch(toy, base / "k1", "lawa:k=1,every=16,mode=replace"),
        "replace": run_branch(toy, base / "replace", "lawa:k=2,every=16,mode=replace"),
    }


def test_control_reproduces_the_parent(toy, control):
    for step in (32, 48, 64):
        assert_identical(weights(control, step), weights(toy, step))


def test_eval_mode_leaves_training_weights_bit_identical_to_control(lawa_branches, control):
    for step in (32, 48, 64):
        assert_identical(weights(lawa_branches["eval"], step), weights(control, step))


def test_eval_mode_writes_the_mean_of_the_parents_checkpoints(lawa_branches, toy):
    b = lawa_branches["eval"]
    p = {s: weights(toy, s) for s in (32, 48, 64)}
    expect = {48: (32, 48), 64: (32, 48, 64)}  # every=16 from N=32: snapshots at 32, 48, 64; k=5
    for step, steps in expect.items():
        avg = weights(b, step, averaged=True)
        for name, value in avg.items():
            assert torch.equal(value, float32_mean(*(p[s][name] for s in steps))), (step, name)
            assert torch.allclose(value.double(), float64_mean(*(p[s][name] for s in steps)), rtol=0, atol=1e-6)
    assert_identical(weights(b, 32, averaged=True), p[32])  # at N the average is the loaded weights


def test_k1_replace_is_a_no_op(lawa_branches, control):
    for step in (32, 48, 64):
        assert_identical(weights(lawa_branches["k1"], step), weights(control, step))


def test_first_replacement_equals_the_mean_of_the_parents_checkpoints(lawa_branches, toy, control):
    b = lawa_branches["replace"]
    p32, p48 = weights(toy, 32), weights(toy, 48)
    replaced = weights(b, 48)
    for name, value in replaced.items():
        assert torch.equal(value, float32_mean(p32[name], p48[name])), name
        assert torch.allclose(value.double(), float64_mean(p32[name], p48[name]), rtol=0, atol=1e-6)
    # and it really changed the run: step48 differs from the control's, the loss path after it too
    assert any(not torch.equal(replaced[n], weights(control, 48)[n]) for n in replaced)
    assert not (b / "checkpoints" / "step48" / "averaged").exists()  # replace mode writes no shadow


def test_trajectory_records_the_full_parameters(lawa_branches):
    import json

    meta = json.loads((lawa_branches["replace"] / "trajectory.json").read_text())
    assert meta["intervention"] == {"name": "lawa", "params": {"k": 2, "every": 16, "mode": "replace"}}
    assert meta["branch_step"] == BRANCH_STEP


CRASHING = '''
from resume.interventions.lawa import LAWA

class CrashAt50(LAWA):
    """LAWA that dies once after update 50, like a killed job."""
    def after_step(self, model, step):
        super().after_step(model, step)
        if step == 50:
            raise KeyboardInterrupt
'''


def test_resumed_replace_branch_ends_identical(toy, tmp_path, lawa_branches):
    plugin = tmp_path / "crash.py"
    plugin.write_text(CRASHING)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run_branch(toy, out, f"{plugin}:CrashAt50:k=2,every=16,mode=replace", save_every=4)
    import json

    # the kill left the state of update 48 behind, snapshots (32, 48) included
    assert json.loads((out / "state" / "train_state.json").read_text())["next_update"] == 48
    saved = torch.load(out / "state" / "intervention.pt", weights_only=True)
    assert [s for s, _ in saved["snapshots"]] == [32, 48]
    assert not (out / "checkpoints" / "step64").exists()
    run_branch(toy, out, "lawa:k=2,every=16,mode=replace", resume=True, save_every=4)
    for step in (48, 64):
        assert_identical(weights(out, step), weights(lawa_branches["replace"], step))
