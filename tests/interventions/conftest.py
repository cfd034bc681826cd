"""Shared fixtures: the tiny toy trajectory (built once per session), a control branch, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from checkpoints_cache.recipe import Recipe
from resume.interventions.base import BranchContext

BRANCH_STEP = 32  # the tiny toy grid is 0,1,2,4,8,16,32,48,64: snapshots every 16 hit 32, 48, 64
BRANCH_LEN = 32


@pytest.fixture(scope="session")
def toy(tmp_path_factory) -> Path:
    from resume.toy import build_toy

    return build_toy(tmp_path_factory.mktemp("toy") / "toy", size="tiny", progress=False)


def run_branch(toy: Path, out: Path, spec: str, from_step: int = BRANCH_STEP, steps: int = BRANCH_LEN, **kw) -> Path:
    from resume.engine import branch

    return branch(toy, from_step, steps, intervention=spec, out=out, progress=False, **kw)


@pytest.fixture(scope="session")
def control(toy, tmp_path_factory) -> Path:
    return run_branch(toy, tmp_path_factory.mktemp("control") / "b", "none")


def weights(traj: Path, step: int, averaged: bool = False) -> dict[str, torch.Tensor]:
    d = Path(traj) / "checkpoints" / f"step{step}"
    if averaged:
        d = d / "averaged"
    return load_file(str(d / "model.safetensors"))


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def context(branch_step: int = 10, end_step: int = 20, grid=None, **recipe_changes) -> BranchContext:
    recipe = Recipe(lr=1e-3, min_lr=1e-4, warmup_iters=100, decay_iters=1000, train_iters=1000,
                    batch_size=8, seq_len=16).replace(**recipe_changes)
    return BranchContext(branch_step=branch_step, end_step=end_step, recipe=recipe,
                         parent_grid=list(grid or [0, 10, 20, 30]))


def tiny_neox(layers: int = 2, seed: int = 0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=128, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25)
    return GPTNeoXForCausalLM(cfg).float()


def tiny_llama(layers: int = 2, seed: int = 0, tie: bool = False):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    return LlamaForCausalLM(cfg).float()
