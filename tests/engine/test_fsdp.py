"""FSDP2 (``--sharding fsdp``) on two CPU processes (gloo): the same rows and, within 1e-6 relative,
the same weights as plain DDP after 10 updates of a toy control branch; the optimizer and resumable
state really are sharded (the DCP files hold one chunk of every Adam moment per rank, so a silent
fallback to DDP fails); checkpoints load with ``from_pretrained`` in one process; kill -9 + --resume
ends bit for bit as the uninterrupted sharded run (resumed through ``accelerate launch --config_file
examples/accelerate/fsdp2.yaml``); a state saved on 2 processes resumes resharded on 4, a DDP
state under FSDP; LAWA replace, the anytime EMA and Gstack under FSDP match DDP; bad launches are
refused with one line before any work.

Cost (~90 s on 2 cores): seven launches of one branch each, plus one that runs seven branches back to
back (``sharded_runs.py``: the DDP control, and LAWA, anytime and Gstack under DDP and under FSDP),
shared by the tests of this file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from resume.cli import main as cli
from tests.engine.helpers import REPO, distance, free_port, metrics, norm, same_weights, torchrun, weights
from tests.engine.test_resume_kill import KILLER

FROM, STEPS, END = 48, 10, 58
BOUND = 1e-6  # the bound: FSDP vs DDP, relative distance of the weights after 10 updates
LAWA = "lawa:k=2,every=2,mode=replace"
ANYTIME = "anytime:ema=25"
GSTACK = "gstack:g=2"

# KILLER: the CLI in a child that SIGKILLs itself after the metrics line of update KILL_AT; under torchrun
# rank 0 dies that way and torchrun stops the other rank

def branch_args(toy: Path, out: Path, *extra: str) -> list[str]:
    return ["branch", str(toy), "--from-step", str(FROM), "--steps", str(STEPS), "--micro-batch-size", "4",
            "--save-every", "3", "--out", str(out), "--no-compare", *extra]


@pytest.fixture(scope="module")
def runs(toy_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fsdp")
    # the README's CPU line: torchrun ... -m resume branch ... --sharding fsdp
    torchrun(["-m", "resume", *branch_args(toy_tiny, root / "fsdp", "--sharding", "fsdp")])
    items = ["ddp=none:none", f"ddp_lawa=none:{LAWA}", f"fsdp_lawa=fsdp:{LAWA}", f"ddp_any=none:{ANYTIME}",
             f"fsdp_any=fsdp:{ANYTIME}", f"ddp_gstack=none:{GSTACK}", f"fsdp_gstack=fsdp:{GSTACK}"]
    torchrun([str(REPO / "tests" / "engine" / "sharded_runs.py"), str(toy_tiny), str(FROM), str(STEPS), str(root), *items])
    return {p.name: p for p in root.iterdir() if p.is_dir()}


def rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return distance(a, b) / norm(b)


def test_fsdp_matches_ddp_after_10_updates_with_the_same_rows(runs):
    fsdp, ddp = runs["fsdp"], runs["ddp"]
    assert [r["batch_rows"] for r in metrics(fsdp)] == [r["batch_rows"] for r in metrics(ddp)]
    assert [r["step"] for r in metrics(fsdp)] == list(range(FROM + 1, END + 1))
    d = rel(weights(fsdp, END), weights(ddp, END))
    print(f"FSDP vs DDP (2 CPU processes) after {STEPS} updates: relative distance {d:.2e}")
    assert d <= BOUND
    assert same_weights(weights(fsdp, FROM), weights(ddp, FROM))  # step N: the parent's weights, gathered
    meta = json.loads((fsdp / "trajectory.json").read_text())
    assert meta["engine"]["sharding"] == "fsdp" and meta["engine"]["world_size"] == 2


@pytest.mark.parametrize("where", ["state/dcp", f"optimizer/step{END}"])
def test_the_adam_moments_are_saved_as_per_rank_chunks(runs, where):
    """Each rank wrote its own rows of every Adam moment: 2 chunks that split dim 0 in halves. A run that
    fell back to DDP writes optimizer.pt whole (or, through DCP, one chunk per tensor) and fails here."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = runs["fsdp"] / where
    assert sorted(p.name for p in folder.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    from resume.fsdp import adam_moment_chunks

    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(runs["fsdp"] / "checkpoints" / f"step{END}"))
    for name, p in model.named_parameters():
        for moment in ("exp_avg", "exp_avg_sq"):
            got = adam_moment_chunks(folder, name, moment)
            half = -(-p.shape[0] // 2)
            rest = tuple(p.shape[1:])
            assert sorted(got) == [((0,) + (0,) * len(rest), (half,) + rest),
                                   ((half,) + (0,) * len(rest), (p.shape[0] - half,) + rest)], name
    assert not (runs["fsdp"] / "state" / "optimizer.pt").exists()
    assert (runs["ddp"] / "state" / "optimizer.pt").is_file() and not (runs["ddp"] / "state" / "dcp").exists()


def test_sharded_checkpoints_load_with_from_pretrained_in_one_process(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = runs["fsdp"] / "checkpoints" / f"step{END}"
    model = AutoModelForCausalLM.from_pretrained(folder)
    saved = weights(runs["fsdp"], END)
    state = model.state_dict()
    assert len(state) == len(saved)
    for k, v in saved.items():  # transformers 5 loads GPT-NeoX's embed_out as lm_head
        assert torch.equal(state[k if k in state else k.replace("embed_out", "lm_head")], v), k
    assert AutoTokenizer.from_pretrained(folder) is not None  # the parent's tokenizer travels with it
    # a branch of the FSDP branch in one process reads its DCP optimizer state (consolidated)
    from resume.branching import _load_optimizer_dir
    from checkpoints_cache.recipe import Recipe

    recipe = Recipe.from_dict(json.loads((runs["fsdp"] / "trajectory.json").read_text())["recipe"])
    opt = _load_optimizer_dir(runs["fsdp"] / "optimizer" / f"step{END}", model, recipe)
    ddp_opt = torch.load(runs["ddp"] / "optimizer" / f"step{END}" / "optimizer.pt", weights_only=True)
    assert opt["state"].keys() == ddp_opt["state"].keys()
    for i, entry in ddp_opt["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            a, b = opt["state"][i][key], entry[key]
            assert a.shape == b.shape
            assert float((a.double() - b.double()).norm()) <= BOUND * max(float(b.double().norm()), 1e-30)


def test_kill9_then_resume_is_bit_exact_under_fsdp(runs, toy_tiny, tmp_path):
    out = tmp_path / "killed"
    args = branch_args(toy_tiny, out, "--sharding", "fsdp")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = torchrun([str(script), *args], {"KILL_AT": "56"}, check=False)
    assert proc.returncode != 0 and "SIGKILL" in proc.stderr, proc.stderr[-2000:]
    state = json.loads((out / "state" / "train_state.json").read_text())
    assert state["next_update"] == 54 and state["sharding"] == "fsdp"  # saves every 3: 51, 54 < 56
    assert not (out / "checkpoints" / f"step{END}").exists()

    # resumed by the launch line: accelerate launch with the FSDP2 config, no --sharding (the
    # config's environment says fsdp)
    resume = [a for a in args if a not in ("--sharding", "fsdp")] + ["--resume"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "examples" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
                           "--main_process_port", str(free_port()), "-m", "resume", *resume],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((out / "trajectory.json").read_text())["engine"]["sharding"] == "fsdp"
    assert same_weights(weights(out, END), weights(runs["fsdp"], END))
    rows, ref = metrics(out), metrics(runs["fsdp"])
    assert [r["step"] for r in rows] == list(range(FROM + 1, END + 1))  # no duplicate, no gap, no torn line
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref]


def test_a_state_saved_on_2_processes_resumes_resharded_on_4(runs, toy_tiny, tmp_path):
    """The stretch: DCP reshards model and optimizer onto another world size; the rows stay the same, the
    fp32 reduction order does not (within the 1e-5 floor of tests/engine/test_two_processes.py)."""
    out = tmp_path / "killed"
    args = branch_args(toy_tiny, out, "--sharding", "fsdp")
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    assert torchrun([str(script), *args], {"KILL_AT": "56"}, check=False).returncode != 0
    resume = [a for a in args if a not in ("--micro-batch-size", "4")] + ["--resume"]  # auto: 2 rows per process
    proc = torchrun(["-m", "resume", *resume], processes=4)
    assert "resuming on 4 processes a state saved on 2" in proc.stderr
    assert [r["batch_rows"] for r in metrics(out)] == [r["batch_rows"] for r in metrics(runs["fsdp"])]
    d = rel(weights(out, END), weights(runs["fsdp"], END))
    print(f"killed on 2 processes, resumed on 4 (FSDP): relative distance {d:.2e} to the uninterrupted run")
    assert d <= 1e-5


def test_a_ddp_state_resumes_under_fsdp(runs, toy_tiny, tmp_path):
    """A whole (DDP) resumable state, EMA included, continues sharded: every rank slices its rows of the
    moments and of the EMA; the end is the uninterrupted DDP run's (here bit for bit)."""
    out = tmp_path / "killed"
    args = branch_args(toy_tiny, out, "--intervention", ANYTIME)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    assert torchrun([str(script), *args], {"KILL_AT": "56"}, check=False).returncode != 0
    assert (out / "state" / "optimizer.pt").is_file()  # whole
    torchrun(["-m", "resume", *args, "--resume", "--sharding", "fsdp"])
    for sub in ("", "averaged"):
        d = rel(weights(out, END, sub), weights(runs["ddp_any"], END, sub))
        assert d <= BOUND, sub


@pytest.mark.parametrize("name", ["lawa", "any", "gstack"])
def test_interventions_under_fsdp_match_ddp(runs, name):
    fsdp, ddp = runs[f"fsdp_{name}"], runs[f"ddp_{name}"]
    assert [r["batch_rows"] for r in metrics(fsdp)] == [r["batch_rows"] for r in metrics(ddp)]
    d = rel(weights(fsdp, END), weights(ddp, END))
    print(f"{name} under FSDP vs DDP after {STEPS} updates: relative distance {d:.2e}")
    assert d <= BOUND
    assert not same_weights(weights(fsdp, END), weights(runs["fsdp"], END))  # the intervention acted
    if name == "any":  # the EMA: each rank its own shards, gathered only to write averaged/
        for step in (FROM, END):
            d = rel(weights(fsdp, step, "averaged"), weights(ddp, step, "averaged"))
            assert d <= BOUND, step
        assert not same_weights(weights(fsdp, END, "averaged"), weights(fsdp, END))
    if name == "lawa":  # snapshots of sharded weights: one file of its own rows per rank, none gathered
        snaps = sorted(p.name for p in (fsdp / "lawa").iterdir() if p.is_dir())
        assert snaps and all(sorted(f.name for f in (fsdp / "lawa" / s).iterdir()) ==
                             ["rank0.safetensors", "rank1.safetensors"] for s in snaps)


# -- bad input: one line, before any work -------------------------------------------------------------------
def _cli_error(capsys, argv: list[str]) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_world_size_that_does_not_divide_the_global_batch(toy_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    line = _cli_error(capsys, ["branch", str(toy_tiny), "--from-step", "48", "--steps", "2", "--sharding", "fsdp",
                               "--out", str(tmp_path / "b"), "--no-compare"])
    assert "3 processes" in line and "global batch of 8" in line and "1, 2, 4, 8" in line
    assert not (tmp_path / "b").exists()


def test_fsdp_on_one_process_is_refused(toy_tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    line = _cli_error(capsys, ["branch", str(toy_tiny), "--from-step", "48", "--steps", "2", "--sharding", "fsdp",
                               "--out", str(tmp_path / "b"), "--no-compare"])
    assert "--sharding fsdp needs several processes" in line and "torchrun --nproc_per_node 2" in line
    assert not (tmp_path / "b").exists()


def test_intervention_that_cannot_run_sharded(toy_tiny, tmp_path, capsys, monkeypatch):
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent('''
        from resume.interventions.base import Intervention

        class Nudge(Intervention):
            name = "nudge"
            def after_step(self, model, step):
                for p in model.parameters():
                    p.data.mul_(0.999)
    '''))
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = _cli_error(capsys, ["branch", str(toy_tiny), "--from-step", "48", "--steps", "2", "--sharding", "fsdp",
                               "--intervention", f"{plugin}:Nudge", "--out", str(tmp_path / "b"), "--no-compare"])
    assert "nudge cannot run with --sharding fsdp" in line and "SHARDING" in line and "use --sharding none" in line
    assert not (tmp_path / "b").exists()


def test_resume_on_another_world_size_with_sharded_intervention_state(runs, toy_tiny, tmp_path, capsys, monkeypatch):
    """The EMA's per-rank shards cannot be redistributed: a state saved on 2 processes resumes on 2 only."""
    out = tmp_path / "any"
    shutil.copytree(runs["fsdp_any"], out)
    meta = json.loads((out / "trajectory.json").read_text())
    meta["complete"] = False  # as a killed run leaves it
    (out / "trajectory.json").write_text(json.dumps(meta))
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    monkeypatch.setenv("WORLD_SIZE", "4")
    line = _cli_error(capsys, ["branch", str(toy_tiny), "--from-step", str(FROM), "--steps", str(STEPS),
                               "--intervention", ANYTIME, "--micro-batch-size", "2", "--sharding", "fsdp",
                               "--resume", "--out", str(out), "--no-compare"])
    assert "saved it and this launch has 4" in line and "resume it on 2 processes" in line
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before


def test_resume_with_another_sharding_is_refused():
    from checkpoints_cache.errors import UserError
    from resume.sharding import check_resume

    info = {"sharding": "fsdp", "world_size": 2}
    with pytest.raises(UserError, match="written with --sharding fsdp on 2 processes; continue it with --sharding fsdp"):
        check_resume(info, "none", 2, False)
    with pytest.raises(UserError, match="resume it on 2 processes"):
        check_resume({"sharding": "deepspeed", "world_size": 2}, "deepspeed", 4, False)
    note = check_resume(info, "fsdp", 4, False)  # model + optimizer reshard: allowed, said plainly
    assert note and "reshard" in note
    assert check_resume({"world_size": 2}, "fsdp", 4, False) is None  # a whole (DDP) state: unsharded or FSDP
    with pytest.raises(UserError, match="DeepSpeed resumes only its own checkpoints"):
        check_resume({"world_size": 2}, "deepspeed", 2, False)


def test_sharding_defaults_to_the_launch_environment():
    from resume.sharding import resolve_sharding

    assert resolve_sharding(None, {}) == "none"
    assert resolve_sharding(None, {"ACCELERATE_USE_FSDP": "true"}) == "fsdp"
    assert resolve_sharding(None, {"ACCELERATE_USE_DEEPSPEED": "true"}) == "deepspeed"
    assert resolve_sharding("none", {"ACCELERATE_USE_FSDP": "true"}) == "none"


def test_example_accelerate_configs():
    import yaml

    folder = REPO / "examples" / "accelerate"
    fsdp = yaml.safe_load((folder / "fsdp2.yaml").read_text())
    assert fsdp["distributed_type"] == "FSDP" and fsdp["fsdp_config"]["fsdp_version"] == 2
    assert fsdp["fsdp_config"]["fsdp_reshard_after_forward"] is True  # full sharding
    multi = yaml.safe_load((folder / "fsdp2_multinode.yaml").read_text())
    assert multi["num_machines"] == 2 and multi["num_processes"] % multi["num_machines"] == 0
    for stage in (2, 3):
        ds = yaml.safe_load((folder / f"deepspeed_zero{stage}.yaml").read_text())
        assert ds["distributed_type"] == "DEEPSPEED" and ds["deepspeed_config"]["zero_stage"] == stage


def test_deepspeed_without_the_package_is_one_line(toy_tiny, tmp_path, capsys, monkeypatch):
    from resume.sharding import deepspeed_available

    if deepspeed_available():
        pytest.skip("deepspeed is installed here: the missing-package line does not apply")
    monkeypatch.setenv("WORLD_SIZE", "2")
    line = _cli_error(capsys, ["branch", str(toy_tiny), "--from-step", "48", "--steps", "2", "--sharding",
                               "deepspeed", "--out", str(tmp_path / "b"), "--no-compare"])
    assert "needs the deepspeed package" in line and "pip install deepspeed" in line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="DeepSpeed ZeRO through accelerate needs CUDA GPUs "
                    "(and the deepspeed package); this machine has neither, so DeepSpeed is not run here")
def test_deepspeed_zero2_branch(toy_tiny, tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed")
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(REPO / "examples" / "accelerate" / "deepspeed_zero2.yaml"), "--num_processes", "2",
                           "-m", "resume", *branch_args(toy_tiny, tmp_path / "ds", "--sharding", "deepspeed",
                                                        "--optimizer-state", "fresh")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "ds" / "checkpoints" / f"step{END}" / "model.safetensors").is_file()
