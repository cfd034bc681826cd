"""Control fidelity, optimizer-state modes and refusals of ``branchpoint branch`` on the tiny toy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import Trajectory
from resume.branching import reestimate_count
from resume.cli import main as cli
from resume.engine import branch
from tests.engine.helpers import distance, metrics, same_weights, weights


def test_toy_layout_like_a_release(toy_tiny: Path):
    traj = Trajectory.open(toy_tiny)
    assert traj.steps == [0, 1, 2, 4, 8, 16, 32, 48, 64] == traj.grid
    assert all(traj.has_optimizer_state(s) for s in traj.steps)
    assert sorted(p.name for p in (toy_tiny / "data").iterdir() if p.suffix in (".idx", ".bin")) == [
        "document-00000-of-00002.bin", "document-00001-of-00002.bin", "document-00002-of-00002.bin", "document.idx"]
    rows = metrics(toy_tiny)
    assert [r["step"] for r in rows] == list(range(1, 65))
    assert rows[0]["lr"] == 0.0  # NeoX: the first update has lr 0 ...
    assert same_weights(weights(toy_tiny, 0), weights(toy_tiny, 1))  # ... so step1 == step0 (pythia#83)
    assert not same_weights(weights(toy_tiny, 1), weights(toy_tiny, 2))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.5  # it learns
    domains = traj.data_order["domains"]
    h = domains["entropy"]
    assert h["structured"] < h["prose"] < h["noise"]  # clearly different entropies


def test_control_branch_reproduces_the_parent_bit_for_bit(toy_tiny: Path, tmp_path: Path):
    out = branch(toy_tiny, 16, 48, out=tmp_path / "control", progress=False)
    traj = Trajectory.open(out)
    assert traj.steps == [16, 32, 48, 64]
    for s in traj.steps:
        assert same_weights(weights(out, s), weights(toy_tiny, s)), f"step {s} differs"
    parent = {r["step"]: r for r in metrics(toy_tiny)}
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(17, 65))
    for r in rows:  # loss of batch step-1 and lr at step-1, equal to the parent's to the last bit
        assert r["loss"] == parent[r["step"]]["loss"] and r["lr"] == parent[r["step"]]["lr"]
        assert r["batch_rows"] == parent[r["step"]]["batch_rows"]
    meta = traj.meta
    assert meta["parent"] == {"run": str(toy_tiny.resolve()), "step": 16}
    assert meta["optimizer_state"]["mode"] == "exact"
    assert meta["intervention"] == {"name": "none", "params": {}}
    assert meta["complete"] is True and meta["recipe"] == json.loads((toy_tiny / "trajectory.json").read_text())["recipe"]
    assert {"torch", "transformers", "accelerate"} <= set(meta["versions"])


def test_reestimate_diverges_less_than_fresh(toy_tiny: Path, tmp_path: Path):
    assert reestimate_count(0.95, 100_000) == 90 and reestimate_count(0.95, 32) == 32 and reestimate_count(0.95, 0) == 0
    dist = {}
    for mode in ("reestimate", "fresh"):
        out = branch(toy_tiny, 32, 16, optimizer_state=mode, out=tmp_path / mode, progress=False)
        assert Trajectory.open(out).meta["optimizer_state"]["mode"] == mode
        # the branch's own step32 is the parent's weights: reestimation runs at lr 0
        assert same_weights(weights(out, 32), weights(toy_tiny, 32))
        dist[mode] = distance(weights(out, 48), weights(toy_tiny, 48))
    moved = distance(weights(toy_tiny, 48), weights(toy_tiny, 32))
    print(f"distance to parent step48 / parent movement 32->48: reestimate {dist['reestimate'] / moved:.4f}, "
          f"fresh {dist['fresh'] / moved:.4f}")
    assert 0 < dist["reestimate"] < 0.5 * dist["fresh"]


def test_default_mode_without_saved_state_is_reestimate(toy_tiny: Path, tmp_path: Path):
    parent = tmp_path / "no-opt"
    shutil.copytree(toy_tiny, parent)
    shutil.rmtree(parent / "optimizer")
    with pytest.raises(UserError, match="no optimizer state at step 32"):
        branch(parent, 32, 4, optimizer_state="exact", out=tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()  # nothing half-written
    out = branch(parent, 32, 4, out=tmp_path / "y", progress=False)
    assert Trajectory.open(out).meta["optimizer_state"]["mode"] == "reestimate"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--from-step", "40", "--steps", "4"], "step 40 is not a checkpoint of toy-tiny; nearest available: 32 and 48"),
        (["--from-step", "32", "--steps", "0"], "--steps 0: the number of updates must be a positive integer"),
        (["--from-step", "32", "--steps", "-3"], "--steps -3"),
        (["--from-step", "32", "--steps", "4", "--optimizer-state", "warm"], "--optimizer-state 'warm': use one of exact, reestimate, fresh"),
        (["--from-step", "32", "--steps", "500"], "holds 80 global batches"),
        (["--from-step", "32", "--steps", "4", "--micro-batch-size", "3"], "--micro-batch-size 3 must divide the global batch 8"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(toy_tiny: Path, tmp_path: Path, capsys, argv, message):
    out = tmp_path / "b"
    rc = cli(["branch", str(toy_tiny), *argv, "--out", str(out), "--no-compare"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


def test_existing_output_is_refused(toy_tiny: Path, tmp_path: Path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = cli(["branch", str(toy_tiny), "--from-step", "32", "--steps", "2", "--out", str(out), "--no-compare"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "already exists; pass --resume" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_not_a_trajectory_is_refused(tmp_path: Path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "x").write_text("")
    rc = cli(["branch", str(tmp_path / "empty"), "--from-step", "0", "--steps", "2", "--no-compare"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "is not a trajectory directory" in err[0]


def test_partly_fetched_data_decides_the_optimizer_mode_and_refuses_early(toy_tiny: Path, tmp_path: Path, capsys):
    """A release whose data was fetched only for the branch (`fetch --data-steps`): reestimate needs the
    batches before N, so the default falls back to fresh with a warning; a range not fetched is refused
    before anything is written."""
    from data_order.mmidx import MMapIndexedDataset

    parent = tmp_path / "partial"
    shutil.copytree(toy_tiny, parent)
    shutil.rmtree(parent / "optimizer")
    ds = MMapIndexedDataset(parent / "data")
    offset, nbytes = ds.byte_range(48 * 8, 80 * 8)  # batches 48..79 only
    manifest = {}
    for name, off, n in ds.shard_spans(offset, nbytes):
        manifest.setdefault(name, []).append([off, off + n])
    (parent / "data" / "fetched_ranges.json").write_text(json.dumps(manifest))

    out = branch(parent, 48, 8, out=tmp_path / "ok", progress=False)
    meta = Trajectory.open(out).meta["optimizer_state"]
    assert meta["mode"] == "fresh" and "batches 0..47" in meta["reason"]
    assert "starting Adam from zeros" in capsys.readouterr().err
    with pytest.raises(UserError, match="not fetched.*--step 32 --data-steps"):
        branch(parent, 32, 8, out=tmp_path / "no", progress=False)
    assert not (tmp_path / "no").exists()
