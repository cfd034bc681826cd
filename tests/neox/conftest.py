"""Fixtures: NeoX checkpoints written from the tiny toy's real step-32 state, served by a loopback Hub stand-in.

The toy (tests/conftest.py::toy_tiny) carries the true fp32 weights and AdamW moments of every checkpoint;
step 32 is written as a released Pythia step would be: an HF repo with the fp16 cast of the weights and a
``neox-ckpt`` repo whose ZeRO-1 shards hold the fp32 masters and the moments (tests/neox/writer.py). A stand-in
of our own serves them, so the shared one of tests/checkpoints_cache keeps its repos.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.checkpoints_cache.hub_standin import HubStandin

from .writer import NeoXState, write_checkpoint

STEP = 32
HF_REPO = "EleutherAI/pythia-160m"  # a registry card with a per-step NeoX repo
NEOX_REPO = "EleutherAI/neox-ckpt-pythia-160m"
MAX_ELEMS = 500  # reduce_bucket_size of the fixture: several comm intervals per group (5e8 in Pythia)
SKIPPED = 2  # the fixture's parent skipped two fp16 updates before step 32
SCALER = {"cur_scale": 2048.0, "last_overflow_iter": 7, "cur_hysteresis": 1}  # 4096 -> hysteresis -> 2048
DEFECT_PARAM = "gpt_neox.layers.0.mlp.dense_4h_to_h.weight"
# card of a tiny Pythia-like run whose data, weights and NeoX state all live on the stand-in (branch tests)
CARD_RUN = "pythia-toy-neox"
CARD_HF, CARD_NEOX, CARD_DATA = "EleutherAI/pythia-toy-neox", "EleutherAI/neox-ckpt-pythia-toy", "EleutherAI/toy-preshuffled"


@dataclass
class NeoXWorld:
    hub: HubStandin
    state: NeoXState  # what the NeoX files hold (by HF name)
    config: dict
    recipe: dict
    grid: list[int]
    card: dict


def toy_step_state(toy: Path, step: int) -> tuple[NeoXState, dict, dict]:
    """The toy's true fp32 weights and AdamW moments at ``step``, by HF parameter name."""
    from transformers import AutoModelForCausalLM

    from checkpoints_cache.trajectory import Trajectory
    from resume.optim import build_optimizer

    traj = Trajectory.open(toy)
    model = AutoModelForCausalLM.from_pretrained(traj.checkpoint_dir(step), dtype=torch.float32)
    opt = build_optimizer(model, traj.recipe)
    opt.load_state_dict(torch.load(traj.optimizer_dir(step) / "optimizer.pt", weights_only=True))
    params = dict(model.named_parameters())
    cfg = model.config
    state = NeoXState(
        master={n: p.detach().clone() for n, p in params.items()},
        exp_avg={n: opt.state[p]["exp_avg"].clone() for n, p in params.items()},
        exp_avg_sq={n: opt.state[p]["exp_avg_sq"].clone() for n, p in params.items()},
        num_layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size, heads=cfg.num_attention_heads,
        vocab=cfg.vocab_size, max_positions=cfg.max_position_embeddings, iteration=step, skipped_steps=SKIPPED,
        scaler=dict(SCALER), rotary_dim=int(cfg.hidden_size // cfg.num_attention_heads * 0.25),
    )
    return state, cfg.to_dict(), traj.meta["recipe"]


def hf_files(state: NeoXState, replace: dict[str, torch.Tensor] | None = None) -> dict[str, bytes]:
    """A release's HF checkpoint: the fp16 cast of the masters, saved by transformers (``embed_out`` in the file)."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(vocab_size=state.vocab, hidden_size=state.hidden_size, num_hidden_layers=state.num_layers,
                           num_attention_heads=state.heads, intermediate_size=4 * state.hidden_size,
                           max_position_embeddings=state.max_positions, rotary_pct=0.25, use_parallel_residual=True,
                           tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    model = GPTNeoXForCausalLM(config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(state.master[n])
    model = model.half()
    if replace:
        with torch.no_grad():
            for n, t in replace.items():
                dict(model.named_parameters())[n].copy_(t)
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir() if p.is_file()}


def _variant(state: NeoXState, step: int, **changes) -> NeoXState:
    return dataclasses.replace(state, iteration=step, skipped_steps=changes.pop("skipped_steps", 0), **changes)


def _bad_branches(state: NeoXState) -> dict[str, dict[str, bytes]]:
    """Branches of the NeoX repo that the importer must refuse, one fault each (steps of the Pythia grid)."""
    out = {}
    files = write_checkpoint(_variant(state, 1), 4, MAX_ELEMS).files
    out["step1"] = {k: v for k, v in files.items() if k != "zero_pp_rank_2_mp_rank_00_optim_states.pt"}  # missing
    files = write_checkpoint(_variant(state, 2), 3, MAX_ELEMS).files
    other = write_checkpoint(_variant(state, 5), 3, MAX_ELEMS).files  # the same run three updates later
    out["step2"] = {**files, "zero_pp_rank_1_mp_rank_00_optim_states.pt": other["zero_pp_rank_1_mp_rank_00_optim_states.pt"]}
    files = write_checkpoint(_variant(state, 4), 3, MAX_ELEMS).files
    blob = files["zero_pp_rank_0_mp_rank_00_optim_states.pt"]
    out["step4"] = {**files, "zero_pp_rank_0_mp_rank_00_optim_states.pt": blob[: len(blob) // 2]}  # truncated upload
    # ZeRO stage 0 (14M/31M): the FP16_Optimizer state inside mp_rank_00, no optimizer shards, weights in 'module'
    stage0 = write_checkpoint(_variant(state, 8), 1, MAX_ELEMS, model_states_hook=lambda sd: {
        **sd, "module": {"sequential.0.word_embeddings.weight": torch.zeros(2, 2)},
        "optimizer": {"fp32_groups_flat": [torch.zeros(4)], "dynamic_loss_scale": True, "cur_scale": 4096.0,
                      "optimizer_state_dict": {"state": {}, "param_groups": []}}}).files
    out["step8"] = {k: v for k, v in stage0.items() if "optim_states" not in k}

    def modern(rank: int, shard: dict) -> dict:  # DeepSpeed >= 0.4 stage_1_and_2 keys
        osd = dict(shard["optimizer_state_dict"])
        osd["single_partition_of_fp32_groups"] = osd.pop("local_sub_partitions_of_fp32_groups")
        osd["ds_version"] = "0.9.5"
        return {"optimizer_state_dict": osd, "ds_config": {}, "ds_version": "0.9.5"}

    out["step16"] = write_checkpoint(_variant(state, 16), 2, MAX_ELEMS, shard_hook=modern).files
    files = write_checkpoint(_variant(state, 64), 2, MAX_ELEMS).files
    out["step64"] = {**files, "mp_rank_01_model_states.pt": files["mp_rank_00_model_states.pt"],
                     "zero_pp_rank_0_mp_rank_01_optim_states.pt": files["zero_pp_rank_0_mp_rank_00_optim_states.pt"]}
    out["step128"] = write_checkpoint(_variant(state, 128), 2, MAX_ELEMS, shard_hook=lambda r, sd: {
        **sd, "optimizer_state_dict": {**sd["optimizer_state_dict"], "clip_grad": 1.0}}).files  # unknown key
    out["step256"] = write_checkpoint(_variant(state, 128), 2, MAX_ELEMS).files  # mp_rank file of step 128
    out["step2000"] = write_checkpoint(_variant(state, 2000), 2, MAX_ELEMS, shard_hook=lambda r, sd: {
        **sd, "optimizer_state_dict": {**sd["optimizer_state_dict"], "loss_scaler": argparse.Namespace(cur_scale=1.0)}}
    ).files  # an object no allow-list admits
    return out


def _perturb_rank(state: NeoXState, step: int, rank: int, dp: int) -> dict[str, bytes]:
    """A branch whose shard of ``rank`` holds other masters under an identical loss scaler: only the weight
    check can tell."""
    good = write_checkpoint(_variant(state, step), dp, MAX_ELEMS).files
    other = dataclasses.replace(_variant(state, step), master={n: t * 1.01 for n, t in state.master.items()})
    bad = write_checkpoint(other, dp, MAX_ELEMS).files
    name = f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt"
    return {**good, name: bad[name]}


def _toy_data_files(toy: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (toy / "data").iterdir() if p.name.startswith("document")}


@pytest.fixture(scope="session")
def neox_world(toy_tiny: Path) -> NeoXWorld:
    hub = HubStandin().start()
    state, config, recipe = toy_step_state(toy_tiny, STEP)
    good = write_checkpoint(state, 3, MAX_ELEMS).files
    hub.add_commit("model", NEOX_REPO, f"step{STEP}", good)
    for branch, files in _bad_branches(state).items():
        hub.add_commit("model", NEOX_REPO, branch, files)
    hub.add_commit("model", NEOX_REPO, "step512", write_checkpoint(_variant(state, 512), 3, MAX_ELEMS).files)
    hub.add_commit("model", NEOX_REPO, "step1000", _perturb_rank(state, 1000, rank=1, dp=3))
    for dp in (1, 3, 4):  # one repo per data-parallel degree (the dp of a run is fixed)
        hub.add_commit("model", f"test/neox-dp{dp}", f"step{STEP}", write_checkpoint(state, dp, MAX_ELEMS).files)
    release = hf_files(state)
    for branch in (f"step{STEP}", "step1000"):
        hub.add_commit("model", HF_REPO, branch, release)
    # pythia#205/#206 style: the release's file holds another tensor for one parameter
    hub.add_commit("model", HF_REPO, "step512", hf_files(state, {DEFECT_PARAM: state.master[DEFECT_PARAM].flip(0)}))

    # the card of a tiny Pythia-like run: its HF weights, NeoX state and preshuffled data all on the stand-in
    grid = json.loads((toy_tiny / "trajectory.json").read_text())["steps"]
    hub.add_commit("model", CARD_HF, f"step{STEP}", release)
    hub.add_commit("model", CARD_NEOX, f"step{STEP}", good)
    hub.add_commit("dataset", CARD_DATA, "main", _toy_data_files(toy_tiny))
    card = {
        "name": CARD_RUN, "repo_id": CARD_HF, "family": "pythia", "scheme": "stepN", "grid": grid,
        "recipe": {**recipe, "precision": "fp16"},  # a released Pythia trained in fp16
        "architecture": {k: config[k] for k in ("model_type", "num_hidden_layers", "hidden_size",
                                                "num_attention_heads", "vocab_size", "max_position_embeddings")},
        "data_order": {"kind": "mmidx", "repo_id": CARD_DATA, "repo_type": "dataset", "revision": "main",
                       "batch_size": recipe["batch_size"], "seq_len": recipe["seq_len"], "exactness": "exact"},
        "optimizer_state": {"kind": "neox-zero1", "repo_id": CARD_NEOX, "revision": "step{N}", "model_parallel": 1},
    }
    yield NeoXWorld(hub, state, config, recipe, grid, card)
    hub.stop()


@dataclass
class Env:
    endpoint: str
    home: Path
    cache: Path
    bp_home: Path

    def vars(self, offline: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BRANCHPOINT_"))}
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=str(self.home), HF_HUB_CACHE=str(self.cache),
                   BRANCHPOINT_HOME=str(self.bp_home), HF_HUB_OFFLINE="1" if offline else "0",
                   BRANCHPOINT_RETRY_BASE_S="0.01", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1",
                   OMP_NUM_THREADS="1")
        return env


@pytest.fixture
def neox_env(neox_world: NeoXWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """A fresh HF cache and branchpoint home; in-process calls go online against the stand-in."""
    from huggingface_hub import constants

    e = Env(neox_world.hub.url, tmp_path / "hf", tmp_path / "hf" / "hub", tmp_path / "hf" / "branchpoint")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("BRANCHPOINT_HOME", str(e.bp_home))
    monkeypatch.setenv("BRANCHPOINT_RETRY_BASE_S", "0.01")
    neox_world.hub.faults.clear()
    return e


# Several `branchpoint` commands in one process (imports cost seconds on a busy machine), with one more run
# card when given (a user card of a tiny run, through BRANCHPOINT_RUNS), each command's exit status and output
# kept apart.
_COMMANDS = """
import contextlib, io, json, os, sys
from resume.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
print(json.dumps(results))
"""


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_commands(env: Env, *commands: list[str], card: dict | None = None, timeout: int = 300) -> list[Result]:
    """Run ``branchpoint`` commands in one subprocess (environment set before huggingface_hub is imported)."""
    e = env.vars()
    if card:
        from ..checkpoints_cache.release import toml_card

        path = env.home / "cards" / f"{card['name']}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(toml_card(card))
        e["BRANCHPOINT_RUNS"] = str(path)
    p = subprocess.run([sys.executable, "-c", _COMMANDS, json.dumps([list(c) for c in commands])], env=e,
                       capture_output=True, text=True, timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))
    assert p.returncode == 0, p.stderr[-3000:]
    return [Result(r["rc"], r["stdout"], r["stderr"]) for r in json.loads(p.stdout.strip().splitlines()[-1])]
