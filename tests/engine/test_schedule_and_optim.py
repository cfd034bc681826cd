"""The NeoX and LLM360 LR functions at their corner cases, and which parameters weight decay touches."""

from __future__ import annotations

import math

import pytest

from checkpoints_cache.recipe import Recipe
from resume.optim import build_optimizer, is_no_decay
from resume.schedule import linear_warmup_cosine, lr_at, neox_cosine

PYTHIA_160M = dict(lr=6e-4, min_lr=6e-5, warmup=1430, decay_iters=143000)  # pythia.md §2.2


def test_first_update_has_lr_zero():
    assert neox_cosine(0, **PYTHIA_160M) == 0.0


def test_warmup_is_linear_and_ends_at_peak():
    assert neox_cosine(1, **PYTHIA_160M) == pytest.approx(6e-4 / 1430, rel=1e-12)
    assert neox_cosine(715, **PYTHIA_160M) == pytest.approx(3e-4, rel=1e-12)
    assert neox_cosine(1430, **PYTHIA_160M) == 6e-4  # n <= W is still warmup: exactly the peak


def test_cosine_uses_denominator_E_not_E_minus_W():
    n = 1431
    expected = 6e-4 / 2 * (math.cos(math.pi * (n - 1430) / 143000) + 1)
    assert neox_cosine(n, **PYTHIA_160M) == pytest.approx(expected, rel=1e-15)
    n = 50000
    expected = 6e-4 / 2 * (math.cos(math.pi * (n - 1430) / 143000) + 1)
    assert neox_cosine(n, **PYTHIA_160M) == pytest.approx(expected, rel=1e-15)


def test_floor_at_min_lr_from_about_step_115139():
    # pythia.md §2.3 (derived): lr reaches min_lr at n ~ 115,139 and stays there.
    assert neox_cosine(115_000, **PYTHIA_160M) > 6e-5
    assert neox_cosine(115_200, **PYTHIA_160M) == 6e-5
    assert neox_cosine(142_999, **PYTHIA_160M) == 6e-5
    assert neox_cosine(200_000, **PYTHIA_160M) == 6e-5


def test_lr_at_dispatches_on_the_recipe():
    r = Recipe(lr=1e-3, min_lr=1e-4, warmup_iters=10, decay_iters=100, train_iters=100)
    assert lr_at(r, 0) == 0.0 and lr_at(r, 10) == 1e-3
    r2 = r.replace(schedule="linear-warmup-cosine")
    assert lr_at(r2, 0) == 0.0 and lr_at(r2, 9) == pytest.approx(9e-4) and lr_at(r2, 10) == 1e-3
    assert lr_at(r2, 100) == pytest.approx(1e-4) and lr_at(r2, 1000) == pytest.approx(1e-4)
    assert linear_warmup_cosine(55, 1e-3, 1e-4, 10, 100) == pytest.approx(5.5e-4)


@pytest.mark.parametrize("run,peak,floor,total", [("amber", 3e-4, 3e-5, 274_320), ("k2", 1.5e-4, 1.5e-5, 338_760)])
def test_llm360_warmup_boundary(run, peak, floor, total):
    """Update n uses lr(n) with warmup lr*n/W (amber-train main.py sets the LR from the step before incrementing it,
    main_utils.py warms up with lr*step/W; K2's Megatron scheduler has num_steps = n*B at update n): lr 0 first."""
    from checkpoints_cache.registry import resolve_run

    r = resolve_run(run).recipe
    assert (r.schedule, r.warmup_iters, r.decay_iters) == ("linear-warmup-cosine", 2000, total)
    assert lr_at(r, 0) == 0.0
    assert lr_at(r, 1) == pytest.approx(peak / 2000, rel=1e-12)
    assert lr_at(r, 1999) == pytest.approx(peak * 1999 / 2000, rel=1e-12)
    assert lr_at(r, 2000) == pytest.approx(peak, rel=1e-15)  # the boundary: the peak, from either side's formula
    ratio = 1 / (total - 2000)
    assert lr_at(r, 2001) == pytest.approx(floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * ratio)), rel=1e-15)
    assert lr_at(r, 2001) < peak
    assert lr_at(r, total) == pytest.approx(floor, rel=1e-12) and lr_at(r, total + 5) == pytest.approx(floor, rel=1e-12)


def test_weight_decay_scope_all_decays_norms_too():
    from transformers import LlamaConfig, LlamaForCausalLM

    from checkpoints_cache.errors import UserError

    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=16))
    recipe = Recipe(lr=1e-3, min_lr=1e-4, warmup_iters=1, decay_iters=10, train_iters=10, weight_decay=0.1)
    decay, no_decay = build_optimizer(model, recipe.replace(weight_decay_scope="all")).param_groups
    assert len(decay["params"]) == len(list(model.parameters())) and not no_decay["params"]  # Amber: one group
    decay, no_decay = build_optimizer(model, recipe).param_groups  # "matrices" (NeoX, Megatron): norms excluded
    assert len(no_decay["params"]) == 3 and all(p.ndim == 1 for p in no_decay["params"])
    with pytest.raises(UserError, match="weight_decay_scope 'norms' is unknown"):
        build_optimizer(model, recipe.replace(weight_decay_scope="norms"))


def test_no_decay_on_biases_and_norms():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64,
                                             tie_word_embeddings=False))
    recipe = Recipe(lr=1e-3, min_lr=1e-4, warmup_iters=1, decay_iters=10, train_iters=10, weight_decay=0.1)
    opt = build_optimizer(model, recipe)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    undecayed = {names[id(p)] for p in no_decay["params"]}
    assert all(n.endswith(".weight") and "layernorm" not in n and "layer_norm" not in n for n in decayed)
    assert all(n.endswith(".bias") or "norm" in n for n in undecayed)
    assert "gpt_neox.final_layer_norm.weight" in undecayed
    assert "gpt_neox.layers.0.attention.query_key_value.bias" in undecayed
    assert "gpt_neox.layers.0.attention.query_key_value.weight" in decayed
    assert "lm_head.weight" in decayed  # Pythia's embed_out (untied)
    assert len(decayed) + len(undecayed) == len(list(model.parameters()))
    assert is_no_decay("model.layers.0.input_layernorm.weight", model.lm_head.weight)  # Llama RMSNorm names
