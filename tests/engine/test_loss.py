"""The chunked loss equals the full cross-entropy, and never builds a full [tokens, vocab] tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from resume.loss import CausalLMLoss, logits_chunk_tokens

VOCAB, B, T = 1000, 3, 20


def _gpt_neox():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(0)
    return GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=64, max_position_embeddings=64, rotary_pct=0.25,
                                            tie_word_embeddings=False))


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=4, intermediate_size=64, max_position_embeddings=64))


def _gstack():
    from resume.interventions.gstack import grow_depthwise

    return grow_depthwise(_gpt_neox(), 2)


def _batch():
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    return rows[:, :-1], rows[:, 1:]


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make", [_gpt_neox, _llama, _gstack], ids=["gpt_neox", "llama", "gstack-grown"])
def test_chunked_loss_and_grads_equal_the_full_cross_entropy(make):
    inputs, labels = _batch()
    model = make().double()  # the reference in float64, to see how far each fp32 computation is from it
    ref = F.cross_entropy(model(input_ids=inputs).logits.reshape(-1, VOCAB), labels.reshape(-1))
    ref.backward()
    g_ref = _grads(model)
    model = model.float()

    model.zero_grad()
    full = F.cross_entropy(model(input_ids=inputs).logits.float().reshape(-1, VOCAB), labels.reshape(-1))
    full.backward()
    g_full = _grads(model)

    model.zero_grad()
    wrapper = CausalLMLoss(model, chunk_tokens=7)  # 60 tokens -> 9 chunks, the last one short
    chunked = wrapper(inputs, labels)
    chunked.backward()
    g_chunk = _grads(model)

    assert abs(chunked.item() - full.item()) <= 1e-6 * abs(full.item())
    assert g_chunk.keys() == g_full.keys() == g_ref.keys()
    for name in g_ref:
        scale = g_ref[name].abs().max().item() + 1e-30
        err_full = (g_full[name].double() - g_ref[name]).abs().max().item() / scale
        err_chunk = (g_chunk[name].double() - g_ref[name]).abs().max().item() / scale
        # the fp32 floor: the chunked gradient is as close to the float64 truth as the full one (to rounding)
        assert err_chunk <= max(4 * err_full, 1e-6), (name, err_chunk, err_full)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_of_the_full_logits_exists_in_forward_or_backward():
    inputs, labels = _batch()
    model = _gpt_neox()
    wrapper = CausalLMLoss(model, chunk_tokens=8)
    with _LargestTensor() as probe:
        wrapper(inputs, labels).backward()
    weights = max(p.numel() for p in model.parameters())  # the [V, d] embeddings: 32000 < B*T*V = 60000
    assert probe.largest <= max(8 * VOCAB, weights) < B * T * VOCAB  # one chunk's logits at most, never B*T*V
    with _LargestTensor() as full:
        F.cross_entropy(model(input_ids=inputs).logits.reshape(-1, VOCAB), labels.reshape(-1)).backward()
    assert full.largest >= B * T * VOCAB


def test_chunk_size_follows_the_vocabulary():
    assert logits_chunk_tokens(50304) == (128 << 20) // (4 * 50304) == 667
    assert CausalLMLoss(_gpt_neox()).chunk_tokens == (128 << 20) // (4 * VOCAB)


def test_a_head_with_bias_ignored_labels_and_autocast_match_the_reference():
    from resume.loss import chunked_cross_entropy

    torch.manual_seed(3)
    head = torch.nn.Linear(16, 50)
    hidden = torch.randn(23, 16, requires_grad=True)
    labels = torch.randint(0, 50, (23,))
    labels[[2, 7, 8]] = -100  # ignored positions count neither in the sum nor in the mean
    ref = F.cross_entropy(head(hidden), labels)
    g_ref = torch.autograd.grad(ref, [hidden, head.weight, head.bias])
    got = chunked_cross_entropy(head, hidden, labels, chunk_tokens=5)
    g_got = torch.autograd.grad(got, [hidden, head.weight, head.bias])
    assert abs(got.item() - ref.item()) <= 1e-6 * ref.item()
    for a, b in zip(g_got, g_ref):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    # under bf16 autocast the head's matmuls run in bf16 (as nn.Linear's would), the softmax in fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref16 = F.cross_entropy(head(hidden).float(), labels)
        got16 = chunked_cross_entropy(head, hidden, labels, chunk_tokens=5)
    g16_ref = torch.autograd.grad(ref16, [hidden, head.weight])
    g16_got = torch.autograd.grad(got16, [hidden, head.weight])
    assert got16.dtype == torch.float32 and abs(got16.item() - ref16.item()) <= 1e-3 * ref16.item()
    for a, b in zip(g16_got, g16_ref):
        assert a.dtype == b.dtype and torch.allclose(a, b, rtol=2e-2, atol=2e-3)
