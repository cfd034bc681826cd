"""The metric arithmetic against independent formulas (torch.nn.functional / numpy)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resume.compare.metrics import pair_sums, param_l2_distance, reference_block, token_blocks
from resume.compare.table import relative_distance


def _logits(seed: int, n: int = 40, v: int = 37) -> torch.Tensor:
    return torch.randn(n, v, generator=torch.Generator().manual_seed(seed)) * 3


def test_kl_loss_top1_match_independent_formulas():
    p, q = _logits(0), _logits(1)
    labels = torch.randint(0, p.shape[1], (p.shape[0],), generator=torch.Generator().manual_seed(2))
    s = pair_sums(reference_block(p, labels), q)
    ref = reference_block(p, labels)
    # KL(P || Q) summed over tokens: kl_div(input=log q, target=log p, log_target=True).
    kl = F.kl_div(F.log_softmax(q.double(), -1), F.log_softmax(p.double(), -1), log_target=True, reduction="sum")
    # float32 elementwise work, float64 per-token results (metrics.py): ~1e-7 relative
    assert float(s.kl_sum) == pytest.approx(float(kl), rel=1e-6)
    assert float(s.ce_sum) == pytest.approx(float(F.cross_entropy(q.double(), labels, reduction="sum")), rel=1e-6)
    assert float(ref.ce_sum) == pytest.approx(float(F.cross_entropy(p.double(), labels, reduction="sum")), rel=1e-6)
    assert int(s.agree) == int((p.argmax(-1) == q.argmax(-1)).sum())
    assert s.tokens == p.shape[0]
    assert float(s.kl_sum) > 0


def test_identical_logits_give_exact_zero_kl_and_equal_loss():
    p = _logits(3)
    labels = torch.randint(0, p.shape[1], (p.shape[0],))
    ref = reference_block(p, labels)
    s = pair_sums(ref, p.clone())
    assert float(s.kl_sum) == 0.0
    assert float(s.ce_sum) == float(ref.ce_sum)
    assert int(s.agree) == s.tokens


@pytest.mark.parametrize("vocab", [37, 4096])
def test_small_kls_keep_float64_accuracy(vocab: int):
    """From a large divergence down to 1e-12 nats per token the KL stays within 1e-4 of a float64
    computation (float32 path above KL_FLOAT64_BELOW, float64 below it); Δloss per token within 1e-7."""
    from resume.compare.metrics import KL_FLOAT64_BELOW

    g = torch.Generator().manual_seed(7)
    z = torch.randn(64, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (64,), generator=g)
    ref = reference_block(z, labels)
    lp = F.log_softmax(z.double(), -1)
    seen_paths = set()
    for eps in (1.0, 1e-1, 1e-2, 3e-3, 1e-3, 1e-4, 1e-5, 1e-6):
        q = z + torch.randn(64, vocab, generator=g) * eps
        lq = F.log_softmax(q.double(), -1)
        kl = float((lp.exp() * (lp - lq)).sum())
        s = pair_sums(ref, q)
        assert float(s.kl_sum) == pytest.approx(kl, rel=1e-4), eps
        ce = -lq.gather(1, labels[:, None]).squeeze(1)
        assert torch.allclose(s.ce, ce, rtol=0, atol=1e-6)
        seen_paths.add(kl / 64 < KL_FLOAT64_BELOW)
    assert seen_paths == {True, False}  # both paths were exercised


def test_token_blocks_split_and_sum_to_the_whole():
    logits = torch.randn(3, 5, 11)
    labels = torch.randint(0, 11, (3, 5))
    blocks = list(token_blocks(logits, labels, block_elements=11 * 4))
    assert [b[0].shape[0] for b in blocks] == [4, 4, 4, 3]
    whole = pair_sums(reference_block(logits.reshape(-1, 11), labels.reshape(-1)), logits.reshape(-1, 11) + 0.5 * torch.randn(15, 11))
    assert whole.tokens == 15


def test_param_distance_exact_and_shape_mismatch():
    a = [("w", torch.tensor([[1.0, 2.0], [3.0, 4.0]])), ("b", torch.tensor([0.5]))]
    b = [("w", torch.tensor([[1.0, 2.0], [3.0, 1.0]])), ("b", torch.tensor([-0.5]))]
    assert param_l2_distance(a, b).value == pytest.approx(np.sqrt(9 + 1), rel=1e-15)
    assert param_l2_distance(a, [(n, t.clone()) for n, t in a]).value == 0.0
    grown = [("w", torch.zeros(4, 2)), ("b", torch.zeros(1))]
    d = param_l2_distance(a, grown)
    assert d.value is None and "shape" in d.reason
    d = param_l2_distance(a, a + [("extra", torch.zeros(1))])
    assert d.value is None and "extra" in d.reason


def test_relative_distance_never_divides_by_zero():
    assert relative_distance(1.0, 4.0) == 0.25
    assert relative_distance(0.0, 0.0) == 0.0  # identical to the parent at the branch point
    assert relative_distance(0.3, 0.0) is None  # moved while the parent did not: undefined
    assert relative_distance(None, 1.0) is None
