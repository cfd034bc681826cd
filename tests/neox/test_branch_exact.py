"""``branch RUN --from-step N`` on a Pythia card with a NeoX repo: it imports the state itself, starts from the fp32
masters, loads the moments by name, sets Adam's step and the schedule position from the counters, with NeoX
numerics; and how the optimizer mode and its refusals read for the registry's Pythia cards."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from checkpoints_cache.errors import UserError
from checkpoints_cache.recipe import Recipe
from resume.branching import choose_optimizer_mode
from resume.interventions.base import Control
from resume.parent import open_parent
from resume.schedule import lr_at

from .conftest import CARD_RUN, SKIPPED, STEP, run_commands

K = 6


def test_branch_from_a_card_with_neox_state_starts_where_the_parent_was(neox_world, neox_env, tmp_path):
    from transformers import AutoModelForCausalLM

    from resume.optim import build_optimizer

    out = tmp_path / "exact"
    data, br = run_commands(
        neox_env,
        ["fetch", CARD_RUN, "--step", str(STEP), "--data-steps", str(K), "--no-progress"],
        ["branch", CARD_RUN, "--from-step", str(STEP), "--steps", str(K), "--out", str(out), "--no-compare"],
        card=neox_world.card,
    )
    assert data.returncode == 0, data.stderr
    assert br.returncode == 0, br.stderr
    assert f"optimizer: NeoX state of step {STEP}" in br.stderr and f"num_iters {STEP - SKIPPED}" in br.stderr
    meta = json.loads((out / "trajectory.json").read_text())
    opt = meta["optimizer_state"]
    assert opt["mode"] == "exact" and "NeoX checkpoint" in opt["reason"]  # exact is the default here
    assert opt["source"]["repo_id"] == neox_world.card["optimizer_state"]["repo_id"]
    assert (opt["num_iters"], opt["skipped_steps"], opt["adam_step"]) == (STEP - SKIPPED, SKIPPED, STEP - SKIPPED + 1)
    assert meta["schedule_offset"] == SKIPPED and meta["skipped_steps"] == SKIPPED and meta["branch_skipped_steps"] == 0
    assert meta["numerics"] == {"mode": "neox", "rotary_tables": "fp16", "gelu": "tanh", "loss_scaler": None}

    # the branch's own stepN holds the fp32 masters, not the fp16 release
    saved = load_file(out / "checkpoints" / f"step{STEP}" / "model.safetensors")
    model = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / f"step{STEP}", dtype=torch.float32)
    state = neox_world.state
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), state.master[n]), n
    assert any(not torch.equal(t.half().float(), t) for t in saved.values())  # fp32 masters are not fp16 values

    # the moments by name, as the engine loads them (its own group order), and Adam's step = num_iters + 1
    recipe = Recipe.from_dict(neox_world.card["recipe"])
    adam = build_optimizer(model, recipe)
    adam.load_state_dict(torch.load(out / "optimizer" / f"step{STEP}" / "optimizer.pt", weights_only=True))
    for n, p in model.named_parameters():
        s = adam.state[p]
        assert torch.equal(s["exp_avg"], state.exp_avg[n]) and torch.equal(s["exp_avg_sq"], state.exp_avg_sq[n]), n
        assert float(s["step"]) == STEP - SKIPPED + 1
    info = json.loads((out / "optimizer" / f"step{STEP}" / "train_state.json").read_text())
    assert info["schedule_offset"] == SKIPPED

    # the next update's LR is the NeoX schedule at num_iters, not at N
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [lr_at(recipe, STEP - SKIPPED + k) for k in range(K)]
    assert rows[0]["lr"] != lr_at(recipe, STEP) and "skipped" not in rows[0]  # fp32 on CPU: no loss scaler


def test_optimizer_mode_for_registry_pythia_cards():
    iv = Control()
    run = open_parent("pythia-160m")
    assert run.neox_family and run.optimizer_source["repo_id"] == "EleutherAI/neox-ckpt-pythia-160m"
    mode, reason = choose_optimizer_mode(None, run, 4000, None, iv)
    assert mode == "exact" and "EleutherAI/neox-ckpt-pythia-160m" in reason
    with pytest.raises(UserError, match=r"no optimizer state at step 1000 \(EleutherAI/neox-ckpt-pythia-70m-deduped-v1 "
                                        r"holds the NeoX optimizer state of pythia-70m-deduped only at step\(s\) 143000"):
        choose_optimizer_mode("exact", open_parent("pythia-70m-deduped"), 1000, None, iv)
    assert choose_optimizer_mode("exact", open_parent("pythia-70m-deduped"), 143000, None, iv)[0] == "exact"
    with pytest.raises(UserError, match=r"model-parallel \(mp 4\)"):
        choose_optimizer_mode("exact", open_parent("pythia-12b-deduped"), 1000, None, iv)
    with pytest.raises(UserError, match="no optimizer state at step 1000; use"):
        choose_optimizer_mode("exact", open_parent("pythia-410m"), 1000, None, iv)
