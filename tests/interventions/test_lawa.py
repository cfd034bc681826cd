"""LAWA: the snapshot grid, the run's window, the uniform mean, and the must-hold points on real
branches of the toy.

Tolerance for "the average equals the mean of the parent's checkpoints": the engine sums the
snapshots in float32 in step order and divides by n, so the branch's weights must equal the same
float32 arithmetic (done here in numpy) on the parent's saved checkpoints *bit for bit*, and lie
within 1e-6 (absolute; weights are O(0.1)) of the float64 mean.

The tiny toy's grid is 0, 1, 2, 4, 8, 16, 32, 48, 64 and the branches start at N = 32.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from checkpoints_cache.grids import PYTHIA_GRID
from resume.interventions.lawa import LAWA, parent_spacing

from .conftest import BRANCH_STEP, assert_identical, context, run_branch, tiny_neox, weights


def float32_mean(*tensors: torch.Tensor) -> torch.Tensor:
    """The independent arithmetic: sum in float32 in order, divide by the count (numpy, not torch)."""
    acc = tensors[0].numpy().astype(np.float32).copy()
    for t in tensors[1:]:
        acc = acc + t.numpy().astype(np.float32)
    return torch.from_numpy(acc / np.float32(len(tensors)))


def float64_mean(*tensors: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.mean([t.numpy().astype(np.float64) for t in tensors], axis=0))


def assert_mean_of(got: dict[str, torch.Tensor], parts: list[dict[str, torch.Tensor]]) -> None:
    assert got.keys() == parts[0].keys()
    for name, value in got.items():
        assert torch.equal(value, float32_mean(*(p[name] for p in parts))), name
        assert torch.allclose(value.double(), float64_mean(*(p[name] for p in parts)), rtol=0, atol=1e-6), name


# --- the snapshot grid ---------------------------------------------------------------------------


@pytest.mark.parametrize("n, spacing", [(0, 1), (256, 256), (512, 488), (1000, 1000), (64000, 1000), (143000, 1000)])
def test_default_every_is_the_parents_spacing_at_n(n, spacing):
    assert parent_spacing(list(PYTHIA_GRID), n, n + 2000) == spacing
    lawa = LAWA()
    lawa.setup(context(branch_step=n, end_step=n + 2000, grid=list(PYTHIA_GRID)))
    assert lawa.describe()["params"]["every"] == spacing


@pytest.mark.parametrize("n, expected", [(0, [1, 2, 4, 8, 16]), (256, [512, 1000, 2000, 3000]), (3000, [4000, 5000])])
def test_default_snapshots_land_on_the_parents_grid(n, expected):
    lawa = LAWA(window="branch", mode="eval")
    end = max(expected)
    lawa.setup(context(branch_step=n, end_step=end, grid=list(PYTHIA_GRID)))
    taken = [s for s in range(n + 1, end + 1) if lawa.is_snapshot_step(s)]
    assert taken == expected and set(taken) <= set(PYTHIA_GRID)


def test_default_grid_continues_past_the_parents_end_at_its_last_spacing():
    lawa = LAWA(window="branch")
    lawa.setup(context(branch_step=64, end_step=100, grid=[0, 1, 2, 4, 8, 16, 32, 48, 64]))
    assert [s for s in range(65, 101) if lawa.is_snapshot_step(s)] == [80, 96]


def test_explicit_every_takes_multiples_and_the_branch_step_counts_when_a_multiple():
    model = tiny_neox()
    lawa = LAWA(k=3, every=5, mode="eval", window="branch")
    lawa.setup(context(branch_step=10, end_step=30))
    lawa.on_load(model, lawa.ctx)
    for step in range(11, 31):
        lawa.after_step(model, step)
    assert lawa.snapshot_steps() == [20, 25, 30]  # 10, 15, 20, 25, 30 taken; latest k=3 kept

    other = LAWA(k=3, every=4, mode="eval", window="branch")
    other.setup(context(branch_step=10, end_step=30))
    other.on_load(model, other.ctx)  # 10 % 4 != 0: no snapshot at the branch step
    assert other.snapshot_steps() == []
    other.after_step(model, 12)
    assert other.snapshot_steps() == [12]


def test_window_run_steps_are_the_parents_latest_k_checkpoints_on_the_grid():
    lawa = LAWA(k=5)
    lawa.setup(context(branch_step=5000, end_step=6000, grid=list(PYTHIA_GRID)))
    assert lawa.window_steps() == [1000, 2000, 3000, 4000, 5000]
    lawa = LAWA(k=10, every=2000)
    lawa.setup(context(branch_step=5000, end_step=7000, grid=list(PYTHIA_GRID)))
    assert lawa.window_steps() == [0, 2000, 4000]  # the parent's checkpoints on the every grid, N not on it
    lawa = LAWA(k=4)
    lawa.setup(context(branch_step=256, end_step=1000, grid=list(PYTHIA_GRID)))
    assert lawa.window_steps() == [32, 64, 128, 256]  # the log-spaced region: the run's latest checkpoints


def test_replace_copies_the_mean_in_place_and_keeps_nothing_off_the_main_copy():
    model = tiny_neox()
    lawa = LAWA(k=2, every=1, mode="replace", window="branch", store="host")
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


def test_in_memory_state_round_trip_carries_snapshots():
    model = tiny_neox()
    lawa = LAWA(k=2, every=1, mode="eval", window="branch")
    lawa.setup(context(branch_step=0, end_step=5))
    lawa.on_load(model, lawa.ctx)
    lawa.after_step(model, 1)
    again = LAWA(k=2, every=1, mode="eval", window="branch")
    again.setup(context(branch_step=0, end_step=5))
    again.load_state_dict(lawa.state_dict())
    assert again.snapshot_steps() == [0, 1]
    assert_identical(again.average(), lawa.average())


# --- the must-hold points, on real branches --------------------------------------------------------


@pytest.fixture(scope="module")
def lawa_branches(toy, tmp_path_factory):
    base = tmp_path_factory.mktemp("lawa")
    return {
        "eval": run_branch(toy, base / "eval", "lawa:k=3,mode=eval"),  # default grid: the parent's checkpoints
        "eval_host": run_branch(toy, base / "eval_host", "lawa:k=3,mode=eval,store=host"),
        "replace": run_branch(toy, base / "replace", "lawa:k=3,every=16,mode=replace"),
        "k1": run_branch(toy, base / "k1", "lawa:k=1,every=16,mode=replace"),
        "branch_window": run_branch(toy, base / "branch_window", "lawa:k=3,every=16,mode=replace,window=branch"),
    }


def test_control_reproduces_the_parent(toy, control):
    for step in (32, 48, 64):
        assert_identical(weights(control, step), weights(toy, step))


def test_eval_window_is_the_mean_of_the_parents_latest_k_checkpoints(lawa_branches, toy, control):
    b = lawa_branches["eval"]
    p = {s: weights(toy, s) for s in (8, 16, 32, 48, 64)}
    # k = 3 on the parent's grid: at N = 32 the window is the parent's 8, 16, 32; then 16, 32, 48 and 32, 48, 64
    for step, steps in {32: (8, 16, 32), 48: (16, 32, 48), 64: (32, 48, 64)}.items():
        assert_mean_of(weights(b, step, averaged=True), [p[s] for s in steps])
    for step in (32, 48, 64):  # training untouched: the raw weights are the control's
        assert_identical(weights(b, step), weights(control, step))
    for step in (32, 48, 64):  # the host store is the same arithmetic as streaming the files
        assert_identical(weights(lawa_branches["eval_host"], step, averaged=True), weights(b, step, averaged=True))
    meta = json.loads((b / "trajectory.json").read_text())
    assert meta["intervention"]["params"] == {"k": 3, "every": 16, "mode": "eval", "window": "run", "store": "disk"}
    assert meta["intervention"]["resolved"]["window_at_branch"] == [8, 16, 32]
    assert meta["intervention"]["resolved"]["grid"] == "parent checkpoints"


def test_first_replacement_is_the_mean_of_the_parents_latest_k_checkpoints(lawa_branches, toy, control):
    b = lawa_branches["replace"]
    p = {s: weights(toy, s) for s in (0, 16, 32, 48)}
    assert_identical(weights(b, 32), p[32])  # the branch step itself is not replaced
    assert_mean_of(weights(b, 48), [p[16], p[32], p[48]])  # every=16: the window at N was 0, 16, 32
    assert any(not torch.equal(weights(b, 48)[n], weights(control, 48)[n]) for n in p[48])
    assert not (b / "checkpoints" / "step48" / "averaged").exists()  # replace mode writes no shadow
    # window=branch (the old behaviour): the first average holds only the branch's own snapshots
    assert_mean_of(weights(lawa_branches["branch_window"], 48), [p[32], p[48]])


def test_k1_replace_is_a_no_op(lawa_branches, control):
    for step in (32, 48, 64):
        assert_identical(weights(lawa_branches["k1"], step), weights(control, step))


def test_snapshots_are_files_written_once_and_the_state_names_them(lawa_branches):
    b = lawa_branches["replace"]
    saved = torch.load(b / "state" / "intervention.pt", weights_only=True)
    assert [(int(s), f) for s, f in saved["snapshot_files"]] == [
        (32, "step32.safetensors"), (48, "step48.safetensors"), (64, "step64.safetensors")]
    assert "snapshots" not in saved  # no tensors in the resumable state
    # step 0 left the window at 48 and no saved state names it any more; 16 is named by the state of
    # update 50, which stays until a second newer state is saved
    assert sorted(f.name for f in (b / "lawa").iterdir()) == [f"step{s}.safetensors" for s in (16, 32, 48, 64)]


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
        run_branch(toy, out, f"{plugin}:CrashAt50:k=3,every=16,mode=replace", save_every=4)
    # the kill left the state of update 48 behind; it names the window's files, written once
    assert json.loads((out / "state" / "train_state.json").read_text())["next_update"] == 48
    saved = torch.load(out / "state" / "intervention.pt", weights_only=True)
    assert [s for s, _ in saved["snapshot_files"]] == [16, 32, 48]
    stamp = {f.name: f.stat().st_mtime_ns for f in (out / "lawa").iterdir()}
    assert not (out / "checkpoints" / "step64").exists()
    run_branch(toy, out, "lawa:k=3,every=16,mode=replace", resume=True, save_every=4)
    for step in (48, 64):
        assert_identical(weights(out, step), weights(lawa_branches["replace"], step))
    assert (out / "lawa" / "step32.safetensors").stat().st_mtime_ns == stamp["step32.safetensors"]
    assert BRANCH_STEP == 32


def test_window_run_stops_at_the_first_checkpoint_the_parent_lacks(toy, tmp_path, capsys):
    """A branch used as parent holds no checkpoint before its own branch step: the window holds what exists."""
    first = run_branch(toy, tmp_path / "first", "none", from_step=48, steps=16)  # checkpoints 48, 64
    lawa = run_branch(first, tmp_path / "second", "lawa:k=4,mode=eval", from_step=64, steps=1)
    assert "warning: lawa window=run holds 2 of 4 checkpoints at the branch step" in capsys.readouterr().err
    meta = json.loads((lawa / "trajectory.json").read_text())
    assert meta["intervention"]["resolved"]["window_at_branch"] == [48, 64]
    assert_mean_of(weights(lawa, 64, averaged=True), [weights(first, 48), weights(first, 64)])


def test_a_window_that_cannot_be_filled_leaves_nothing_behind(toy, tmp_path):
    """A parent checkpoint of another architecture: a one-line error, and no branch folder."""
    import shutil

    from checkpoints_cache.errors import UserError
    from tests.interventions.conftest import tiny_neox

    parent = tmp_path / "parent"
    shutil.copytree(toy, parent)
    shutil.rmtree(parent / "checkpoints" / "step16")
    tiny_neox(layers=3).save_pretrained(parent / "checkpoints" / "step16")
    out = tmp_path / "b"
    with pytest.raises(UserError, match="does not match the branch's model"):
        run_branch(parent, out, "lawa:k=3,every=16")
    assert not out.exists()
