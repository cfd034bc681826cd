"""``--numerics neox``: rotary tables and tanh GELU against values computed by hand, DeepSpeed's loss-scaler rules,
and the fp16 skip semantics on a toy branch (the overflow is real, emulated on CPU through the same code path)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints_cache.trajectory import Trajectory
from resume.engine import branch
from resume.numerics import NeoXLossScaler, apply_numerics, neox_inv_freq, neox_rotary_tables, tanh_gelu
from resume.schedule import lr_at
from tests.engine.helpers import metrics, same_weights, weights


def _hand_angle_fp16(pos: int, j: int, dim: int) -> np.float16:
    """NeoX under DeepSpeed fp16: inv_freq and the position cast to fp16, their product rounded to fp16."""
    inv = np.float16(1.0 / (10000.0 ** (np.float32(j) / np.float32(dim))))
    return np.float16(np.float16(pos) * inv)


def test_rotary_tables_are_built_in_half_precision_as_neox_did():
    dim = 16  # 25% of a 64-dim head
    inv = neox_inv_freq(dim, 10000.0)
    pos = torch.arange(2048)
    cos, sin = neox_rotary_tables(pos, inv, torch.float16)
    assert cos.dtype == torch.float16 and cos.shape == (2048, dim)
    for p, j in [(1, 2), (777, 4), (2047, 2), (2047, 14), (1500, 6)]:
        angle = _hand_angle_fp16(p, j, dim)
        i = j // 2
        assert cos[p, i].item() == float(np.float16(math.cos(float(angle)))), (p, j)
        assert sin[p, i + dim // 2].item() == float(np.float16(math.sin(float(angle)))), (p, j)
    # the size of the difference from HF's fp32 tables (neox_fidelity.md §1): 0.374 rad, 0.353 in cos
    exact = pos.double()[:, None] * inv.double()[None]
    angle16 = pos.half()[:, None] * inv.half()[None]
    assert (angle16.double() - exact).abs().max().item() == pytest.approx(0.374, abs=5e-4)
    assert (cos[:, : dim // 2].double() - exact.cos()).abs().max().item() == pytest.approx(0.353, abs=5e-4)
    inv128 = neox_inv_freq(32, 10000.0)
    worst = ((pos.half()[:, None] * inv128.half()[None]).double() - pos.double()[:, None] * inv128.double()[None])
    assert worst.abs().max().item() == pytest.approx(0.824, abs=5e-4)  # heads of 128 and more
    bf_cos, _ = neox_rotary_tables(pos, inv, torch.bfloat16)
    assert bf_cos.dtype == torch.bfloat16 and bf_cos[300, 0].item() == float(torch.tensor(300.0).bfloat16().float().cos().bfloat16())


def test_tanh_gelu_against_the_formula():
    gelu = tanh_gelu()
    for x in (-3.0, -0.5, 0.0, 0.7, 1.0, 2.5):
        want = 0.5 * x * (1 + math.tanh(0.79788456 * x * (1 + 0.044715 * x * x)))  # NeoX's fused bias-GELU
        assert gelu(torch.tensor([x], dtype=torch.float64)).item() == pytest.approx(want, abs=1e-8), x
    assert gelu(torch.tensor([1.0], dtype=torch.float64)).item() == pytest.approx(0.8411919906082768, abs=1e-12)
    xs = torch.linspace(-8, 8, 160001, dtype=torch.float64)
    gap = (gelu(xs) - torch.nn.functional.gelu(xs)).abs().max().item()
    assert gap == pytest.approx(4.73e-4, abs=5e-6)  # neox_fidelity.md §2


def test_apply_numerics_patches_gelu_and_rotary_only():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=1,
                           intermediate_size=128, max_position_embeddings=64, rotary_pct=0.25)
    hf = GPTNeoXForCausalLM(config)
    neox = GPTNeoXForCausalLM(config)
    neox.load_state_dict(hf.state_dict())
    before = {k: v.clone() for k, v in neox.state_dict().items()}
    apply_numerics(neox, "neox", "fp16")
    assert neox.state_dict().keys() == before.keys() and all(torch.equal(neox.state_dict()[k], v) for k, v in before.items())
    assert all(type(layer.mlp.act).__name__ == "GELUTanh" for layer in neox.gpt_neox.layers)
    x = torch.zeros(1, 48)
    pos = torch.arange(48)[None]
    cos, sin = neox.gpt_neox.rotary_emb(x, pos)
    want_cos, _ = neox_rotary_tables(pos, neox_inv_freq(16, 10000.0), torch.float16)
    assert torch.equal(cos, want_cos.float())
    ids = torch.randint(0, 64, (1, 48))
    with torch.no_grad():
        diff = (neox(input_ids=ids).logits - hf(input_ids=ids).logits).abs().max().item()
    assert 0 < diff < 0.1  # a slightly different function, as the parent trained with
    assert apply_numerics(hf, "hf", "fp16") is hf and type(hf.gpt_neox.layers[0].mlp.act).__name__ == "GELUActivation"


def test_loss_scaler_follows_deepspeed_rules():
    s = NeoXLossScaler()  # Pythia: 2^12, window 1000, hysteresis 2, min 1
    s.update_scale(True)  # first overflow uses up the hysteresis
    assert (s.cur_scale, s.cur_hysteresis, s.last_overflow_iter) == (4096.0, 1, 0)
    s.update_scale(True)
    assert s.cur_scale == 2048.0 and s.cur_hysteresis == 1
    for _ in range(999):
        s.update_scale(False)
    assert s.cur_scale == 2048.0  # (cur_iter - last_overflow_iter) % 1000 == 0 at the 1000th clean iteration
    s.update_scale(False)
    assert (s.cur_scale, s.cur_hysteresis, s.cur_iter) == (4096.0, 2, 1002)
    low = NeoXLossScaler(cur_scale=1.0, cur_hysteresis=1)
    low.update_scale(True)
    assert low.cur_scale == 1.0  # never below min_scale
    assert NeoXLossScaler.from_state({"cur_scale": 8.0, "delayed_shift": 2, "dynamic": True}).cur_hysteresis == 2
    imported = {"cur_scale": 2048.0, "cur_iter": 32, "last_overflow_iter": 7, "scale_factor": 2.0, "scale_window": 1000,
                "min_scale": 1, "delayed_shift": 2, "cur_hysteresis": 1, "consecutive_hysteresis": False,
                "raise_error_at_min_scale": True, "dynamic": True, "overflow": False, "dynamic_loss_scale": True}
    s = NeoXLossScaler.from_state(imported)  # an optimizer.json loss_scale: the branch's scaler starts from it
    assert (s.cur_scale, s.cur_iter, s.last_overflow_iter, s.cur_hysteresis) == (2048.0, 32, 7, 1)


def _parent_with_scaler(toy: Path, tmp: Path, step: int, scale: float) -> Path:
    """A copy of the toy whose saved state at ``step`` carries a loss scaler at ``scale`` (as a branch of an
    fp16 NeoX parent saves it)."""
    parent = tmp / "parent"
    shutil.copytree(toy, parent)
    info_path = parent / "optimizer" / f"step{step}" / "train_state.json"
    info = json.loads(info_path.read_text())
    info["loss_scaler"] = NeoXLossScaler(cur_scale=scale, cur_iter=step).state_dict()
    info_path.write_text(json.dumps(info))
    return parent


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one mixed-precision setting per process; this test needs fp16 after fp32 ones."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_fp16_overflow_skips_the_update_consumes_the_batch_and_holds_the_schedule(toy_tiny, tmp_path,
                                                                                 fresh_accelerate_state):
    """An fp16 branch with NeoX numerics on CPU: the loss scaler runs through the engine's code path on fp32
    arithmetic, where a scale of 2^128 overflows for real (inf in fp32) and 2^127 does not."""
    parent = _parent_with_scaler(toy_tiny, tmp_path, 32, 2.0**128)
    recipe = Trajectory.open(parent).recipe

    out = branch(parent, 32, 2, out=tmp_path / "two", numerics="neox", precision="fp16", progress=False)
    rows = metrics(out)
    assert [r["skipped"] for r in rows] == [True, True]  # overflow, hysteresis; overflow, halve
    assert same_weights(weights(out, 34), weights(toy_tiny, 32))  # no update happened ...
    first = torch.load(out / "optimizer" / "step32" / "optimizer.pt", weights_only=True)["state"]
    last = torch.load(out / "optimizer" / "step34" / "optimizer.pt", weights_only=True)["state"]
    assert all(torch.equal(first[i][k], last[i][k]) for i in first for k in ("exp_avg", "exp_avg_sq", "step"))
    meta = Trajectory.open(out).meta
    assert meta["branch_skipped_steps"] == 2 and meta["skipped_steps"] == 2 and meta["schedule_offset"] == 0
    scaler = json.loads((out / "optimizer" / "step34" / "train_state.json").read_text())["loss_scaler"]
    assert (scaler["cur_scale"], scaler["cur_hysteresis"], scaler["last_overflow_iter"]) == (2.0**127, 1, 33)
    assert json.loads((out / "optimizer" / "step34" / "train_state.json").read_text())["schedule_offset"] == 2

    out = branch(parent, 32, 8, out=tmp_path / "eight", numerics="neox", precision="fp16", progress=False)
    rows = metrics(out)
    assert [r["skipped"] for r in rows] == [True, True] + [False] * 6
    parent_rows = {r["step"]: r for r in metrics(toy_tiny)}
    assert [r["batch_rows"] for r in rows] == [parent_rows[s]["batch_rows"] for s in range(33, 41)]  # consumed
    # the schedule does not advance on a skip: update 32 + k uses the schedule at 32 + k - (skips before it)
    assert [r["lr"] for r in rows] == [lr_at(recipe, n) for n in (32, 32, 32, 33, 34, 35, 36, 37)]
    assert rows[0]["grad_norm"] is None and all(math.isfinite(r["grad_norm"]) for r in rows[2:])
    assert [r["loss_scale"] for r in rows] == [2.0**128, 2.0**128] + [2.0**127] * 6
    meta = Trajectory.open(out).meta
    assert meta["branch_skipped_steps"] == 2 and meta["skipped_steps"] == 2
    assert meta["numerics"]["mode"] == "neox" and meta["numerics"]["loss_scaler"]["cur_scale"] == 2.0**128

    # interrupted after update 38 (last save at 36), then --resume: the skip count, the schedule offset and the
    # scaler come back from the saved state, and the run ends where the uninterrupted one did
    import resume.engine as engine

    append = engine._append_metrics

    def append_then_stop(path, row):
        append(path, row)
        if row["step"] == 38:
            raise KeyboardInterrupt

    engine._append_metrics = append_then_stop
    kwargs = dict(out=tmp_path / "resumed", numerics="neox", precision="fp16", save_every=3, progress=False)
    try:
        with pytest.raises(KeyboardInterrupt):
            branch(parent, 32, 8, **kwargs)
    finally:
        engine._append_metrics = append
    saved = json.loads((tmp_path / "resumed" / "state" / "train_state.json").read_text())
    assert (saved["next_update"], saved["schedule_offset"], saved["loss_scaler"]["cur_scale"]) == (36, 2, 2.0**127)
    resumed = branch(parent, 32, 8, resume=True, **kwargs)
    assert same_weights(weights(resumed, 40), weights(out, 40))
    assert metrics(resumed) == rows and Trajectory.open(resumed).meta["skipped_steps"] == 2


def test_numerics_default_and_refusals(toy_tiny, tmp_path):
    from checkpoints_cache.errors import UserError

    out = branch(toy_tiny, 32, 1, out=tmp_path / "hf", progress=False)
    assert Trajectory.open(out).meta["numerics"] == {"mode": "hf"}  # the toy was not trained by GPT-NeoX
    with pytest.raises(UserError, match="--numerics 'fast': use one of neox, hf"):
        branch(toy_tiny, 32, 1, out=tmp_path / "bad", numerics="fast", progress=False)
    assert not (tmp_path / "bad").exists()
