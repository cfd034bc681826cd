"""--micro-batch-size auto: the memory estimate behind the CPU choice, the choice, and its refusals."""

from __future__ import annotations

import pytest
import torch

from checkpoints_cache.errors import UserError
from resume.loss import CausalLMLoss
from resume.microbatch import (
    _choose_by_probe,
    activation_bytes_per_row,
    choose_micro_batch,
    cpu_estimate,
    param_count,
    parse_micro_batch,
)

P14 = {"model_type": "gpt_neox", "vocab_size": 50304, "hidden_size": 128, "num_hidden_layers": 6,
       "num_attention_heads": 4, "intermediate_size": 512, "max_position_embeddings": 2048, "rotary_pct": 0.25,
       "tie_word_embeddings": False}


def _saved_bytes(model, seq_len: int) -> int:
    """Bytes autograd saves for backward in one forward of one row (weights excluded)."""
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    rows = torch.randint(0, model.config.vocab_size, (1, seq_len + 1))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        CausalLMLoss(model, chunk_tokens=16)(rows[:, :-1], rows[:, 1:])
    return total


@pytest.mark.parametrize("model_type", ["gpt_neox", "llama"])
def test_the_activation_formula_matches_what_autograd_saves(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = {"model_type": model_type, "vocab_size": 500, "hidden_size": 64, "num_hidden_layers": 3,
           "num_attention_heads": 4, "intermediate_size": 256, "max_position_embeddings": 256}
    if model_type == "llama":
        cfg["num_key_value_heads"] = 4
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg))
    measured = _saved_bytes(model, 256)
    predicted = activation_bytes_per_row(cfg, 256)
    assert 0.9 * measured <= predicted <= 1.1 * measured, (measured, predicted)
    assert param_count(cfg) == sum(p.numel() for p in model.parameters())


def test_auto_picks_the_largest_divisor_that_fits_and_refuses_clearly():
    gib = 1 << 30
    est = {b: cpu_estimate(P14, b, 2048).total for b in (1, 2, 4, 8, 16)}
    avail = int(est[4] / 0.85) + 1  # room for 4 rows of 2048 tokens, not 8
    c = choose_micro_batch(None, P14, 16, 1, 2048, available=avail)
    assert (c.micro_batch_size, c.accumulation, c.mode) == (4, 4, "auto") and "CPU estimate" in c.reason
    assert choose_micro_batch(None, P14, 16, 1, 2048, available=64 * gib).micro_batch_size == 16
    # two processes on this machine share it: each gets half, and its per-rank batch is 8
    two = choose_micro_batch(None, P14, 16, 2, 2048, available=2 * avail, local_processes=2)
    assert (two.micro_batch_size, two.accumulation) == (4, 2)
    assert choose_micro_batch(2, P14, 16, 1, 2048, available=avail).mode == "given"
    with pytest.raises(UserError, match=r"--micro-batch-size 8 needs about .* the largest that fits is 4 \(auto picks it\)"):
        choose_micro_batch(8, P14, 16, 1, 2048, available=avail)
    with pytest.raises(UserError, match=r"--micro-batch-size 3 must divide the global batch 16 over 1 process"):
        choose_micro_batch(3, P14, 16, 1, 2048, available=avail)
    with pytest.raises(UserError, match=r"even micro-batch 1 needs about"):
        choose_micro_batch(None, P14, 16, 1, 2048, available=100 << 20)
    assert parse_micro_batch("auto") is None and parse_micro_batch("8") == 8
    with pytest.raises(UserError, match=r"--micro-batch-size 'big': use auto or a positive integer"):
        parse_micro_batch("big")


def test_the_gpu_search_predicts_from_two_probes_and_steps_down_on_out_of_memory():
    gib = 1 << 30
    calls = []

    def probe(b: int) -> int:  # a device of 12 GiB: 1 GiB fixed + 1 GiB per row, but 8 rows fragment and fail
        calls.append(b)
        if b >= 8:
            raise MemoryError(b)
        return gib + b * gib

    c = _choose_by_probe(None, 16, probe, 12 * gib)
    assert calls == [1, 2, 8, 4] and c.micro_batch_size == 4 and c.accumulation == 4
    with pytest.raises(UserError, match="--micro-batch-size 8 does not fit this GPU"):
        _choose_by_probe(8, 16, probe, 12 * gib)
