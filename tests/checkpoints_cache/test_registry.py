"""The registry as data: names, grids, revision names, recipes, data-order sources, defects."""

from __future__ import annotations

import json

import pytest

from checkpoints_cache.errors import UserError
from checkpoints_cache.grids import step_of_revision
from checkpoints_cache.registry import known_runs, resolve_run


def test_pythia_grid_is_the_154_released_steps():
    run = resolve_run("pythia-160m-deduped")
    assert len(run.steps) == 154
    assert run.steps[:12] == [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    assert run.steps[-1] == 143000 and run.steps[-2] == 142000
    assert run.revision(0) == "step0" and run.revision(143000) == "step143000"


def test_every_suite_member_is_known():
    names = {r["name"] for r in known_runs()}
    for size in ("70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"):
        assert f"pythia-{size}" in names and f"pythia-{size}-deduped" in names
    assert {"pythia-14m", "pythia-31m", "amber", "k2", "crystal"} <= names
    assert {f"pythia-410m-seed{k}" for k in range(1, 10)} <= names
    assert {f"pythia-160m-data-seed{k}" for k in (1, 2, 3)} | {f"pythia-160m-weight-seed{k}" for k in (1, 2, 3)} <= names


@pytest.mark.parametrize("spec", ["EleutherAI/pythia-160m-deduped", "eleutherai/PYTHIA-160M-DEDUPED", " pythia-160m-deduped "])
def test_repo_ids_and_case_resolve_to_the_same_run(spec):
    run = resolve_run(spec)
    assert run.name == "pythia-160m-deduped" and run.repo_id == "EleutherAI/pythia-160m-deduped"


def test_off_grid_step_names_the_nearest_steps():
    run = resolve_run("pythia-160m")
    with pytest.raises(UserError, match=r"step 1500 .*nearest available: 1000 and 2000"):
        run.revision(1500)
    with pytest.raises(UserError, match=r"nearest available: 512 and 1000"):
        run.revision(700)
    with pytest.raises(UserError, match=r"nearest available: 143000"):
        run.revision(150000)


def test_unknown_run_names_close_matches():
    with pytest.raises(UserError, match=r"unknown run 'pythia-160m-dedup'; did you mean pythia-160m-deduped"):
        resolve_run("pythia-160m-dedup")
    with pytest.raises(UserError, match=r"branchpoint runs"):
        resolve_run("gpt-5")


def test_pythia_recipes_per_size():
    r = resolve_run("pythia-160m").recipe
    assert (r.lr, r.min_lr, r.warmup_iters, r.decay_iters) == (6e-4, 6e-5, 1430, 143000)
    assert r.schedule == "neox-cosine" and r.betas == (0.9, 0.95) and r.eps == 1e-8
    assert (r.weight_decay, r.grad_clip, r.batch_size, r.seq_len, r.precision) == (0.1, 1.0, 1024, 2048, "fp16")
    one_b = resolve_run("pythia-1b").recipe
    assert one_b.precision == "bf16" and one_b.lr == 2.5e-4 and one_b.min_lr == 2.5e-5
    assert resolve_run("pythia-12b").architecture["vocab_size"] == 50688
    assert resolve_run("pythia-6.9b").recipe.extra["init"] == "normal/scaled_normal"
    arch = resolve_run("pythia-410m").architecture
    assert (arch["num_hidden_layers"], arch["hidden_size"], arch["num_attention_heads"]) == (24, 1024, 16)
    assert arch["model_type"] == "gpt_neox" and arch["rotary_pct"] == 0.25 and arch["use_parallel_residual"] is True


def test_data_order_sources():
    assert resolve_run("pythia-160m-deduped").data_order["repo_id"] == "EleutherAI/pile-deduped-pythia-preshuffled"
    std = resolve_run("pythia-160m").data_order
    assert std["repo_id"] == "EleutherAI/pile-standard-pythia-preshuffled" and std["exactness"] == "exact"
    assert (std["batch_size"], std["seq_len"]) == (1024, 2048)
    # A seed changes the data shuffle too: no preshuffled rows exist for it.
    assert resolve_run("pythia-410m-seed3").data_order["exactness"] == "unknown"
    # Only the init differs for weight-seed runs: the standard order applies.
    assert resolve_run("pythia-160m-weight-seed2").data_order["repo_id"] == "EleutherAI/pile-standard-pythia-preshuffled"
    amber = resolve_run("LLM360/Amber").data_order
    assert amber["kind"] == "amber-chunks" and amber["exactness"] == "rows-of-chunk exact, order approximate"
    assert (amber["examples_per_chunk"], amber["steps_per_chunk"], amber["seed_base"], amber["order"]) == (
        1706976, 762, 11111, "seeded")


def test_amber_ckpt_names_and_steps():
    run = resolve_run("LLM360/Amber")
    assert run.steps[0] == 762 and run.steps[-1] == 274320 and len(run.steps) == 360
    assert run.revision(762) == "ckpt_000" and run.revision(274320) == "ckpt_359"
    assert step_of_revision("amber", "ckpt_100") == 101 * 762
    r = run.recipe
    assert (r.lr, r.min_lr, r.warmup_iters, r.schedule, r.batch_size) == (3e-4, 3e-5, 2000, "linear-warmup-cosine", 2240)
    with pytest.raises(UserError, match=r"nearest available: 762 and 1524 \(ckpt_000 and ckpt_001\)"):
        run.revision(1000)


def test_k2_and_crystal():
    k2 = resolve_run("LLM360/K2")
    assert k2.revision(941) == "ckpt_1" and k2.revision(941 * 360) == "ckpt_360"
    crystal = resolve_run("crystal")
    assert crystal.trust_remote_code_required and not resolve_run("amber").trust_remote_code_required
    assert crystal.revision(55500) == "CrystalCoder_phase1_checkpoint_055500"
    assert step_of_revision("crystal", "CrystalCoder_phase2_checkpoint_000100") == 79721 + 100


def test_known_defects_as_data():
    p28 = resolve_run("pythia-2.8b")
    assert [d.issue for d in p28.defects_at(1000)] == ["EleutherAI/pythia#205", "EleutherAI/pythia#195"]
    assert p28.defects_at(66000) == [] and [d.issue for d in p28.defects_at(140000)] == ["EleutherAI/pythia#205"]
    assert [d.issue for d in resolve_run("pythia-12b").defects_at(58000)] == ["EleutherAI/pythia#206"]
    assert [d.issue for d in resolve_run("pythia-410m-seed9").defects_at(40000)] == ["EleutherAI/pythia#202"]
    assert resolve_run("pythia-410m-seed9").defects_at(41000) == []
    assert "EleutherAI/pythia#203" in [d.issue for d in resolve_run("pythia-160m-weight-seed1").defects_at(1000)]
    assert "EleutherAI/pythia#83" in [d.issue for d in resolve_run("pythia-70m").defects_at(1)]
    assert resolve_run("pythia-2.8b-deduped").defects_at(1000) == []  # #205 is about the standard 2.8b
    assert not resolve_run("pythia-160m").has_optimizer_state(1000)


def test_a_trajectory_directory_is_a_run(tmp_path):
    traj = tmp_path / "traj"
    (traj / "checkpoints" / "step0").mkdir(parents=True)
    (traj / "checkpoints" / "step0" / "config.json").write_text("{}")
    (traj / "checkpoints" / "step8").mkdir(parents=True)
    (traj / "checkpoints" / "step8" / "config.json").write_text("{}")
    (traj / "optimizer" / "step8").mkdir(parents=True)
    (traj / "optimizer" / "step8" / "optimizer.pt").write_bytes(b"x")
    (traj / "data").mkdir()
    meta = {"name": "mine", "recipe": resolve_run("pythia-14m").recipe.to_dict(),
            "architecture": {"config": {"model_type": "gpt_neox", "hidden_size": 8}},
            "data_order": {"kind": "mmidx", "path": "data", "batch_size": 4, "seq_len": 8}}
    (traj / "trajectory.json").write_text(json.dumps(meta))
    run = resolve_run(str(traj))
    assert run.family == "local" and run.repo_id is None and run.steps == [0, 8]
    assert run.architecture["model_type"] == "gpt_neox" and run.recipe.lr == 1e-3
    assert run.data_order["path"] == str((traj / "data").resolve()) and run.data_order["batch_size"] == 4
    assert run.has_optimizer_state(8) and not run.has_optimizer_state(0)
    with pytest.raises(UserError, match="nearest available: 0 and 8"):
        run.revision(4)
    with pytest.raises(UserError, match="not a trajectory directory"):
        resolve_run(str(tmp_path))
