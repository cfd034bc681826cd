"""The NeoX importer against checkpoints written by our own writer (tests/neox/writer.py) and served by the stand-in:
bit-for-bit masters and moments for dp 1, 3 and 4, the counters, a release defect reported with both hashes,
and one clear line for every kind of bad input."""

from __future__ import annotations

import dataclasses
import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from checkpoints_cache.errors import UserError
from checkpoints_cache.neox_fetch import OPTIMIZER_META, OPTIMIZER_TENSORS, imported_dir, import_optimizer_state
from checkpoints_cache.registry import resolve_run

from .conftest import DEFECT_PARAM, HF_REPO, MAX_ELEMS, NEOX_REPO, SKIPPED, STEP, run_commands
from .writer import write_checkpoint


def _import(neox_env, run, step, out=None):
    return import_optimizer_state(run, step, out, endpoint=neox_env.endpoint, cache_dir=neox_env.cache, progress=False)


def _run_with_repo(repo: str):
    run = resolve_run("pythia-160m")
    return dataclasses.replace(run, optimizer_state={**run.optimizer_state, "repo_id": repo})


def _load(blob: bytes, tmp_path: Path, name: str = "shard.pt"):
    from checkpoints_cache.neox_ckpt import safe_load

    path = tmp_path / name
    path.write_bytes(blob)
    return safe_load(path)


def test_fixture_follows_the_writer_rules(neox_world, tmp_path):
    """Several interleaved pieces per rank, a 0-length piece at dp 4, trimmed views over full storage, and
    the pickled names of 2022's DeeperSpeed and numpy 1.x."""
    written = {dp: write_checkpoint(neox_world.state, dp, MAX_ELEMS) for dp in (1, 3, 4)}
    for dp, w in written.items():
        assert all(len(w.pieces[r][0]) > 1 for r in range(dp)), dp  # several comm intervals in the decay group
    assert any(0 in lengths for r in range(4) for lengths in written[4].pieces[r])  # an all-padding piece
    assert not any(0 in lengths for r in range(3) for lengths in written[3].pieces[r])
    blob = written[4].files["zero_pp_rank_3_mp_rank_00_optim_states.pt"]
    pkl = next(zipfile.ZipFile(io.BytesIO(blob)).read(n) for n in zipfile.ZipFile(io.BytesIO(blob)).namelist()
               if n.endswith("data.pkl"))
    assert b"deepspeed.runtime.fp16.loss_scaler\nDynamicLossScaler" in pkl
    ms = zipfile.ZipFile(io.BytesIO(written[4].files["mp_rank_00_model_states.pt"]))
    assert b"numpy.core.multiarray\n_reconstruct" in ms.read(next(n for n in ms.namelist() if n.endswith("data.pkl")))
    shard = _load(blob, tmp_path)["optimizer_state_dict"]
    empty = [t for t in shard["local_sub_partitions_of_fp32_groups"][0] if t.numel() == 0]
    assert empty and all(t.untyped_storage().nbytes() > 0 for t in empty)  # a view of a full padded storage
    sizes = {len(w.files[f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"]) for r in range(4) for w in [written[4]]}
    assert max(sizes) - min(sizes) < 64  # every shard stores its whole padded storage (neox_ckpt.md §6.2)


@pytest.mark.parametrize("dp", [1, 3, 4])
def test_import_reproduces_masters_and_moments_bit_for_bit(neox_world, neox_env, tmp_path, dp):
    out = _import(neox_env, _run_with_repo(f"test/neox-dp{dp}"), STEP, tmp_path / "adam")
    tensors = load_file(out / OPTIMIZER_TENSORS)
    names = list(neox_world.state.master)
    assert sorted(tensors) == sorted(f"{n}.{k}" for n in names for k in ("master", "exp_avg", "exp_avg_sq"))
    assert "lm_head.weight.master" in tensors  # the live transformers name, not the file's embed_out
    for n in names:
        for key, want in (("master", neox_world.state.master), ("exp_avg", neox_world.state.exp_avg),
                          ("exp_avg_sq", neox_world.state.exp_avg_sq)):
            got = tensors[f"{n}.{key}"]
            assert got.dtype == torch.float32 and got.shape == want[n].shape
            assert torch.equal(got.view(torch.int32), want[n].contiguous().view(torch.int32)), (dp, n, key)
    meta = json.loads((out / OPTIMIZER_META).read_text())
    assert (meta["iteration"], meta["num_iters"], meta["skipped_steps"], meta["adam_step"]) == (STEP, STEP - SKIPPED,
                                                                                              SKIPPED, STEP - SKIPPED + 1)
    assert meta["loss_scale"]["cur_scale"] == 2048.0 and meta["loss_scale"]["cur_hysteresis"] == 1
    assert meta["loss_scale"]["scale_window"] == 1000 and meta["loss_scale"]["cur_iter"] == STEP
    commit = neox_world.hub.repos[("model", f"test/neox-dp{dp}")].branches[f"step{STEP}"]
    assert meta["source"] == {"kind": "neox-zero1", "repo_id": f"test/neox-dp{dp}", "revision": f"step{STEP}",
                              "commit": commit}
    assert meta["dp_world_size"] == dp and meta["release_defects"] == []
    assert 0 < meta["checks"]["moments"]["max_abs_m_over_sqrt_v"] <= meta["checks"]["moments"]["bound"] < 1.166


def test_a_rank_major_join_would_scramble_the_fixture(neox_world, tmp_path):
    """The fixture discriminates: joining each rank's pieces rank by rank (the stage-2 recipe) gives other masters."""
    w = write_checkpoint(neox_world.state, 4, MAX_ELEMS)
    loaded = [_load(w.files[f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"], tmp_path, f"{r}.pt") for r in range(4)]
    rank_major = torch.cat([p for st in loaded for p in st["optimizer_state_dict"]["local_sub_partitions_of_fp32_groups"][0]])
    interval_major = torch.cat([loaded[r]["optimizer_state_dict"]["local_sub_partitions_of_fp32_groups"][0][c]
                                for c in range(len(w.pieces[0][0])) for r in range(4)])
    assert rank_major.shape == interval_major.shape and not torch.equal(rank_major, interval_major)
    first = neox_world.state.master["gpt_neox.embed_in.weight"].reshape(-1)
    assert torch.equal(interval_major[: first.numel()], first)


def test_import_goes_to_the_cache_and_is_reused(neox_world, neox_env):
    run = resolve_run("pythia-160m")
    out = _import(neox_env, run, STEP)
    assert out == imported_dir("pythia-160m", STEP) and (out / OPTIMIZER_TENSORS).is_file()
    neox_world.hub.log.clear()
    assert _import(neox_env, run, STEP) == out and neox_world.hub.log == []  # found in the cache: no request


def test_release_defect_is_reported_with_both_hashes(neox_world, neox_env, tmp_path, capsys):
    from checkpoints_cache.neox_ckpt import tensor_sha256

    out = _import(neox_env, resolve_run("pythia-160m"), 512, tmp_path / "d")
    meta = json.loads((out / OPTIMIZER_META).read_text())
    master = neox_world.state.master[DEFECT_PARAM]
    (defect,) = meta["release_defects"]
    assert defect["param"] == DEFECT_PARAM and defect["hf"] == f"{HF_REPO}@step512"
    assert defect["master_sha256"] == tensor_sha256(master.half())
    assert defect["hf_sha256"] == tensor_sha256(master.flip(0).half())
    err = capsys.readouterr().err
    assert "release defect" in err and defect["hf_sha256"][:16] in err and defect["master_sha256"][:16] in err
    assert torch.equal(load_file(out / OPTIMIZER_TENSORS)[f"{DEFECT_PARAM}.master"], master)  # masters kept
    assert meta["checks"]["weights"]["equal"] == meta["checks"]["weights"]["parameters"] - 1


@pytest.mark.parametrize("step, message", [
    (1, f"zero_pp_rank_2_mp_rank_00_optim_states.pt is missing from {NEOX_REPO}@step1 (dp_world_size 4"),
    (2, "zero_pp_rank_1_mp_rank_00_optim_states.pt: its loss scaler is at iteration 5"),
    (4, "zero_pp_rank_0_mp_rank_00_optim_states.pt is truncated or not a torch checkpoint"),
    (8, "ZeRO stage 0"),
    (16, "is a modern DeepSpeed ZeRO shard"),
    (64, "is model-parallel (mp 2)"),
    (128, "unexpected optimizer_state_dict keys (unknown clip_grad)"),
    (256, "mp_rank_00_model_states.pt is at iteration 128 (global_steps 128), not step 256"),
    (1000, "zero_pp_rank_1_mp_rank_00_optim_states.pt: its fp32 masters disagree with the fp16 weights of step 1000"),
    (2000, "zero_pp_rank_0_mp_rank_00_optim_states.pt holds a pickled object outside the allow-list (argparse.Namespace)"),
])
def test_bad_input_is_one_clear_line(neox_world, neox_env, step, message):
    with pytest.raises(UserError) as e:
        _import(neox_env, resolve_run("pythia-160m"), step)
    text = str(e.value)
    assert message in text and "\n" not in text, text
    assert not imported_dir("pythia-160m", step).exists()  # nothing half-written


def test_steps_without_neox_state_are_refused_before_any_download(neox_env):
    with pytest.raises(UserError, match=r"neox-ckpt-pythia-70m-deduped-v1 holds the NeoX optimizer state of "
                                        r"pythia-70m-deduped only at step\(s\) 143000, not at step 1000"):
        _import(neox_env, resolve_run("pythia-70m-deduped"), 1000)
    with pytest.raises(UserError, match="pythia-410m names no NeoX checkpoint repo"):
        _import(neox_env, resolve_run("pythia-410m"), 1000)


def test_fetch_optimizer_cli(neox_world, neox_env, tmp_path):
    plan, ok, out, bad = run_commands(
        neox_env,
        ["fetch", "pythia-160m", "--step", str(STEP), "--optimizer", "--dry-run"],
        ["fetch", "pythia-160m", "--step", str(STEP), "--optimizer", "--no-progress"],
        ["fetch", "pythia-160m", "--step", str(STEP), "--optimizer", "--out", str(tmp_path / "x"), "--no-progress"],
        ["fetch", "pythia-160m", "--step", "1000", "--optimizer", "--no-progress"],
    )
    assert plan.returncode == 0 and "nothing was downloaded" in plan.stdout, plan.stderr
    assert f"{NEOX_REPO}@step{STEP}  zero_pp_rank_2_mp_rank_00_optim_states.pt" in plan.stdout
    assert "mp_rank_00_model_states.pt" in plan.stdout and "layer_" not in plan.stdout  # no layer files
    assert ok.returncode == 0, ok.stderr
    cached = neox_env.bp_home / "optimizer" / "pythia-160m" / f"step{STEP}"
    assert f"optimizer step {STEP}: {cached / OPTIMIZER_TENSORS}" in ok.stdout and "num_iters 30" in ok.stdout
    assert out.returncode == 0, out.stderr
    assert load_file(tmp_path / "x" / OPTIMIZER_TENSORS).keys() == load_file(cached / OPTIMIZER_TENSORS).keys()
    err = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(err) == 1, bad.stderr
    assert "zero_pp_rank_1_mp_rank_00_optim_states.pt: its fp32 masters disagree" in err[0] and "Traceback" not in bad.stderr


def test_value_checks_catch_misaligned_and_broken_moments(neox_world, tmp_path):
    from checkpoints_cache.neox_ckpt import Counters, NeoXCheckpointError, check_shard_format, check_values, read_zero1

    w = write_checkpoint(neox_world.state, 3, MAX_ELEMS)
    shards = []
    for r in range(3):
        name = f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"
        st = _load(w.files[name], tmp_path, name)
        check_shard_format(st, name)
        shards.append((name, st))
    zero = read_zero1(shards)
    counters = Counters(STEP, STEP, SKIPPED, STEP - SKIPPED, 3, 1, {}, {})
    report = check_values(zero, (0.9, 0.95), counters)
    assert 0 < report["max_abs_m_over_sqrt_v"] < report["bound"]
    name = "0.word_embeddings.weight"
    good = zero.exp_avg[name].clone()
    zero.exp_avg[name] = good.flip(0)  # moments paired with the wrong elements
    with pytest.raises(NeoXCheckpointError, match=r"exp_avg of 0.word_embeddings.weight breaks \|m\| <= 1.165 sqrt\(v\)"):
        check_values(zero, (0.9, 0.95), counters)
    zero.exp_avg[name] = good
    zero.exp_avg_sq[name][0, 0] = -1.0
    with pytest.raises(NeoXCheckpointError, match="exp_avg_sq of 0.word_embeddings.weight has 1 negative values"):
        check_values(zero, (0.9, 0.95), counters)
    zero.exp_avg_sq[name][0, 0] = float("nan")
    with pytest.raises(NeoXCheckpointError, match="exp_avg_sq of 0.word_embeddings.weight has 1 non-finite values"):
        check_values(zero, (0.9, 0.95), counters)
