"""Gstack: layer-by-layer stacking on GPT-NeoX and Llama, parameter counts, noise, schedule, plan."""

from __future__ import annotations

import json
import math

import pytest
import torch

from checkpoints_cache.errors import UserError
from resume.interventions.gstack import Gstack, grow_depthwise, growth_tokens, restarted_cosine_lr

from .conftest import context, run_branch, tiny_llama, tiny_neox, weights

ARCHS = {
    "gpt_neox": (tiny_neox, "gpt_neox.layers."),
    "llama": (tiny_llama, "model.layers."),
}


def split(sd: dict[str, torch.Tensor], prefix: str):
    """(per-layer {index: {rest: tensor}}, non-layer {key: tensor})."""
    layers: dict[int, dict[str, torch.Tensor]] = {}
    other = {}
    for k, v in sd.items():
        if k.startswith(prefix):
            i, _, rest = k[len(prefix):].partition(".")
            layers.setdefault(int(i), {})[rest] = v
        else:
            other[k] = v
    return layers, other


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("g", [2, 4])
def test_layers_repeat_in_order_and_everything_else_is_copied(arch, g):
    make, prefix = ARCHS[arch]
    small = make(layers=3)
    grown = grow_depthwise(small, g)
    assert grown.config.num_hidden_layers == 3 * g
    assert type(grown) is type(small)
    small_layers, small_other = split(small.state_dict(), prefix)
    grown_layers, grown_other = split(grown.state_dict(), prefix)
    assert sorted(grown_layers) == list(range(3 * g))
    for i, block in grown_layers.items():  # order [0, 1, 2, 0, 1, 2, ...], norms included
        assert block.keys() == small_layers[i % 3].keys()
        for rest, value in block.items():
            assert torch.equal(value, small_layers[i % 3][rest]), (i, rest)
    assert any("norm" in rest for rest in grown_layers[0])  # block-internal norms travel with the block
    assert grown_other.keys() == small_other.keys()  # embeddings, final norm, LM head
    for k, v in grown_other.items():
        assert torch.equal(v, small_other[k]), k
    # copies, not shared storage: training one copy must not move another
    assert grown_layers[0][next(iter(grown_layers[0]))].data_ptr() != grown_layers[3][next(iter(grown_layers[3]))].data_ptr()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_parameter_count(arch):
    make, prefix = ARCHS[arch]
    small = make(layers=2)
    per_layer = sum(p.numel() for n, p in small.named_parameters() if n.startswith(prefix))
    rest = sum(p.numel() for n, p in small.named_parameters() if not n.startswith(prefix))
    grown = grow_depthwise(small, 4)
    assert sum(p.numel() for p in grown.parameters()) == rest + 4 * per_layer
    # the non-embedding growth factor is exactly g (the paper's definition of g)
    assert sum(p.numel() for n, p in grown.named_parameters() if n.startswith(prefix)) == 4 * per_layer


def test_tied_llama_stays_tied_and_grown_model_runs():
    small = tiny_llama(layers=2, tie=True)
    grown = grow_depthwise(small, 2)
    assert grown.lm_head.weight.data_ptr() == grown.model.embed_tokens.weight.data_ptr()
    out = grown(input_ids=torch.tensor([[1, 2, 3, 4]])).logits
    assert out.shape == (1, 4, 128) and torch.isfinite(out).all()


@pytest.mark.parametrize("variance, expected", [("small", 2 / (5 * 32)), ("depth", 1 / (32 * 4 ** 2))])
def test_noise_is_the_papers_mix_with_the_stated_variance_on_every_matrix(variance, expected):
    small = tiny_neox(layers=2)  # d = 32; grown to l = 4 layers
    clean = grow_depthwise(small, 2).state_dict()
    a = grow_depthwise(small, 2, noise=0.2, seed=7, noise_var=variance).state_dict()
    b = grow_depthwise(small, 2, noise=0.2, seed=7, noise_var=variance).state_dict()
    c = grow_depthwise(small, 2, noise=0.2, seed=8, noise_var=variance).state_dict()
    matrices = [k for k, v in clean.items() if v.dim() >= 2 and not k.endswith("masked_bias")]
    assert "gpt_neox.embed_in.weight" in matrices and "lm_head.weight" in matrices
    # ε = (W' − 0.8·W) / 0.2 on every matrix, embeddings and head included: N(0, σ²) with the paper's σ²
    eps = torch.cat([((a[k] - 0.8 * clean[k]) / 0.2).flatten() for k in matrices])
    assert eps.numel() > 40_000
    assert float(eps.var()) == pytest.approx(expected, rel=0.03)  # sampling error of the variance ~0.7 %
    assert abs(float(eps.mean())) < 4 * math.sqrt(expected / eps.numel())
    for k in ("gpt_neox.embed_in.weight", "lm_head.weight", "gpt_neox.layers.3.mlp.dense_h_to_4h.weight"):
        assert not torch.equal(a[k], clean[k]), k  # perturbed
    for k, v in clean.items():
        if v.dim() < 2:  # biases and norms: exact copies
            assert torch.equal(a[k], v), k
    assert all(torch.equal(a[k], b[k]) for k in matrices)  # seeded
    assert not torch.equal(a["gpt_neox.embed_in.weight"], c["gpt_neox.embed_in.weight"])
    # stacked copies get their own noise: layer 2 is no longer equal to layer 0
    key = "attention.query_key_value.weight"
    assert not torch.equal(a[f"gpt_neox.layers.2.{key}"], a[f"gpt_neox.layers.0.{key}"])


def test_noise_on_a_tied_embedding_is_drawn_once_and_stays_tied():
    grown = grow_depthwise(tiny_llama(layers=2, tie=True), 2, noise=0.2, seed=1)
    assert grown.lm_head.weight.data_ptr() == grown.model.embed_tokens.weight.data_ptr()


def test_unsupported_architecture_is_a_user_error():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=16))
    with pytest.raises(UserError, match="GPT-NeoX .* and Llama"):
        grow_depthwise(model, 2)


def test_restarted_schedule_values():
    # K = 100, W = 10, peak 1e-3, floor 1e-4
    assert restarted_cosine_lr(0, 100, 10, 1e-3, 1e-4) == 0.0
    assert restarted_cosine_lr(5, 100, 10, 1e-3, 1e-4) == pytest.approx(5e-4)
    assert restarted_cosine_lr(10, 100, 10, 1e-3, 1e-4) == pytest.approx(1e-3)
    assert restarted_cosine_lr(55, 100, 10, 1e-3, 1e-4) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way
    assert restarted_cosine_lr(100, 100, 10, 1e-3, 1e-4) == pytest.approx(1e-4)
    iv = Gstack(g=2, warmup=10)
    iv.setup(context(branch_step=500, end_step=600, lr=1e-3, min_lr=1e-4))
    assert iv.lr(505, parent_lr=123.0) == pytest.approx(5e-4)  # counted from the branch step
    assert iv.fresh_optimizer() is True


@pytest.mark.parametrize(
    "n, d, expected",
    [(7e9, 2e12, "11.11"), (8e9, 15e12, "6.58"), (13e9, 2e12, "15.84"), (70e9, 2e12, "42.48")],
)
def test_growth_timing_reproduces_the_readme_llama_examples(n, d, expected):
    assert f"{growth_tokens(n, 6 * n * d) / 1e9:.2f}" == expected


def test_gstack_branch_on_the_toy(toy, tmp_path):
    out = run_branch(toy, tmp_path / "gstack", "gstack:g=2", steps=4)
    meta = json.loads((out / "trajectory.json").read_text())
    assert meta["architecture"]["config"]["num_hidden_layers"] == 4
    assert meta["optimizer_state"]["mode"] == "fresh"
    assert meta["intervention"]["params"]["g"] == 2
    parent, grown = weights(toy, 32), weights(out, 32)  # stepN of the branch = the grown model
    for key, value in grown.items():
        if key.startswith("gpt_neox.layers."):
            i, _, rest = key[len("gpt_neox.layers."):].partition(".")
            key = f"gpt_neox.layers.{int(i) % 2}.{rest}"
        assert torch.equal(value, parent[key])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [33, 34, 35, 36]
    warmup = meta["intervention"]["params"]["warmup"]
    assert warmup == min(json.loads((toy / "trajectory.json").read_text())["recipe"]["warmup_iters"], math.ceil(4 / 10))
    assert all(math.isfinite(r["loss"]) for r in rows)
    # decay=all (default, the official AdamW(model.parameters())): every group decays at the parent's 0.1
    opt = torch.load(out / "optimizer" / "step36" / "optimizer.pt", weights_only=True)
    assert [g["weight_decay"] for g in opt["param_groups"]] == [0.1, 0.1]


def test_gstack_decay_matrices_keeps_the_parents_groups(toy, tmp_path):
    out = run_branch(toy, tmp_path / "gstack", "gstack:g=2,decay=matrices", steps=1)
    opt = torch.load(out / "optimizer" / "step33" / "optimizer.pt", weights_only=True)
    assert [g["weight_decay"] for g in opt["param_groups"]] == [0.1, 0.0]
