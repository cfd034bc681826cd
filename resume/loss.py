"""The training loss without the full logits: next-token cross-entropy chunked over tokens.

A Pythia-vocabulary micro-batch row has 2048 x 50304 fp32 logits = 412 MB; ``F.cross_entropy`` on
the full logits keeps them (and their log-softmax) alive until backward, so the peak grows with
B*T*V. ``CausalLMLoss`` runs the model's body to the last hidden state and then, chunk by chunk
of tokens, the LM head and the cross-entropy (``_ChunkedLinearCrossEntropy``): forward keeps
only each token's log-sum-exp; backward recomputes a chunk's logits, turns them into
softmax - one-hot in place and multiplies back through the head. The peak then holds the logits
of one chunk (``logits_chunk_tokens``), whatever the micro-batch. (Doing the same with
``torch.utils.checkpoint`` around ``F.linear`` + ``F.cross_entropy`` per chunk gives the same
numbers but runs log-softmax, its backward and NLL's scatter as separate passes over the chunk:
its backward took 1.6x as long on the pythia-14m shape on this project's CPU.)

The engine ``accelerator.prepare``s this wrapper (not the bare model), so DDP/FSDP hooks fire on
its forward. It works for any transformers causal LM whose logits are the output embedding applied
to the base model's last hidden state: GPT-NeoX (Pythia), Llama (LLM360 Amber/K2), and the models
Gstack grows from them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from checkpoints_cache.errors import UserError

# fp32 logits of one chunk: 128 MiB (667 tokens of a 50304 vocabulary). Forward holds two such
# buffers (logits and log-sum-exp's temporary), backward one or two (the softmax, in place, and a
# half-precision copy under autocast). A toy micro-batch (256 tokens x 128) is a single chunk.
LOGITS_CHUNK_BYTES = 128 << 20
IGNORE_INDEX = -100

# Config attributes of models whose logits are not just head(hidden): they would need their own loss.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_logits_scale")


def logits_chunk_tokens(vocab_size: int, budget_bytes: int = LOGITS_CHUNK_BYTES) -> int:
    """Tokens per chunk so that one chunk's fp32 logits take at most ``budget_bytes``."""
    return max(1, budget_bytes // (4 * int(vocab_size)))


def base_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(the body producing the last hidden state, the LM head) of a transformers causal LM."""
    config = getattr(model, "config", None)
    for attr in _LOGIT_TRANSFORMS:
        value = getattr(config, attr, None)
        if value not in (None, 0, 1, 1.0, False):
            raise UserError(
                f"{getattr(config, 'model_type', type(model).__name__)} transforms its logits ({attr}={value}); "
                "branchpoint's chunked loss supports models whose logits are the head applied to the last hidden state"
            )
    head = model.get_output_embeddings()
    body = getattr(model, "base_model", None)
    if body is None or body is model:
        body = getattr(model, "model", None)
    if head is None or body is None or not hasattr(head, "weight"):
        raise UserError(f"{type(model).__name__} has no separate body and LM head; branchpoint trains causal LMs "
                        "such as GPTNeoXForCausalLM and LlamaForCausalLM")
    return body, head


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    """sum over tokens of CE(hidden @ W^T + b, labels) / count, chunk by chunk of ``chunk`` tokens.

    Autocast (bf16/fp16 on GPU) applies to the head's matmuls as it would to ``nn.Linear``: forward
    runs under the caller's autocast, backward re-enters the same autocast state; the softmax and
    the sums are fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, chunk: int, count):
        device = hidden.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), device)
        valid = labels != IGNORE_INDEX
        safe = labels.clamp(min=0)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        lse = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[s:s + chunk], weight, bias).float()
            lse[s:s + chunk] = torch.logsumexp(logits, dim=-1)
            target = logits.gather(1, safe[s:s + chunk, None]).squeeze(1)
            total += ((lse[s:s + chunk] - target) * valid[s:s + chunk]).sum()
        ctx.save_for_backward(hidden, weight, bias, safe, valid, lse, count)
        ctx.chunk = chunk
        return total / count

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, safe, valid, lse, count = ctx.saved_tensors
        enabled, dtype, device = ctx.autocast
        chunk = ctx.chunk
        d_hidden = torch.empty_like(hidden)
        d_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        d_bias = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        scale = (grad / count).to(torch.float32)
        with torch.autocast(device, dtype=dtype, enabled=enabled):
            for s in range(0, hidden.shape[0], chunk):
                h = hidden[s:s + chunk]
                p = F.linear(h, weight, bias).float().sub_(lse[s:s + chunk, None]).exp_()  # softmax
                rows = torch.arange(p.shape[0], device=p.device)
                p[rows, safe[s:s + chunk]] -= 1.0
                p.mul_((scale * valid[s:s + chunk])[:, None])  # d loss / d logits
                d_hidden[s:s + chunk] = (p @ weight).to(hidden.dtype)
                d_weight += (p.t() @ h).float()
                if d_bias is not None:
                    d_bias += p.sum(0)
        return (d_hidden, d_weight.to(weight.dtype), None if d_bias is None else d_bias.to(bias.dtype),
                None, None, None)


def chunked_cross_entropy(head: nn.Module, hidden: torch.Tensor, labels: torch.Tensor, chunk_tokens: int) -> torch.Tensor:
    """Mean cross-entropy of ``head(hidden)`` against ``labels`` ([N, d] and [N]), chunk by chunk.

    Equal to ``F.cross_entropy(head(hidden).float(), labels)`` up to the order of the fp32 sums. A
    micro-batch whose logits fit one chunk (the toy's) takes exactly that plain path: the same ops
    as a bare PyTorch loop, with at most one chunk of logits alive."""
    if hidden.shape[0] <= chunk_tokens:
        return F.cross_entropy(head(hidden).float(), labels, ignore_index=IGNORE_INDEX)
    count = (labels != IGNORE_INDEX).sum().clamp(min=1).to(torch.float32)
    return _ChunkedLinearCrossEntropy.apply(hidden, head.weight, getattr(head, "bias", None), labels,
                                            int(chunk_tokens), count)


class CausalLMLoss(nn.Module):
    """``forward(input_ids, labels)`` -> mean next-token loss of ``model``, never materialising the
    full fp32 logits (``labels`` are the targets already shifted: row[1:] for inputs row[:-1])."""

    def __init__(self, model: nn.Module, chunk_tokens: int | None = None):
        super().__init__()
        self.model = model
        base_and_head(model)  # refuse unsupported models now, not in the first forward
        vocab = model.get_output_embeddings().weight.shape[0]
        self.chunk_tokens = int(chunk_tokens or logits_chunk_tokens(vocab))

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        body, head = base_and_head(self.model)
        hidden = body(input_ids=input_ids, use_cache=False)[0]
        return chunked_cross_entropy(head, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1), self.chunk_tokens)

    def describe(self) -> dict[str, Any]:
        return {"loss": "chunked cross-entropy (resume/loss.py)", "logits_chunk_tokens": self.chunk_tokens}
