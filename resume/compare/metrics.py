"""The divergence metrics, as sums over tokens so that chunks and batches add up exactly.

Every metric is computed from float64 log-probabilities (the models' float32 logits are converted
first). Per token, KL(p || q) = sum p log p - sum p log q: the first sum is computed once per
parent block and the second with the same kernel on the compared model's log q, so bitwise-equal
logits give bitwise-equal sums and exactly 0 KL (and exactly equal losses). In float64 the
cancellation costs ~1e-15 nats per token, far below any divergence worth reporting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

# Elements (tokens x vocab) per float64 token block: 2 MB temporaries stay in cache and are reused by the
# allocator (huge temporaries cost page faults: 5x slower at Pythia's 50304 columns; 5 tokens per block).
BLOCK_ELEMENTS = 1 << 18
PARAM_CHUNK = 1 << 16  # parameters per float64 chunk of the distance computation
# On a GPU, small blocks would be launch-bound; its memory has no such page-fault cost.
BLOCK_ELEMENTS_GPU = 1 << 24


def block_elements_for(device: torch.device) -> int:
    return BLOCK_ELEMENTS if device.type == "cpu" else BLOCK_ELEMENTS_GPU


@dataclass
class ReferenceBlock:
    """The parent's side of one token block: computed once, reused for every compared model."""

    p: torch.Tensor  # float64 [n, V] probabilities (exp(logp))
    neg_entropy: torch.Tensor  # float64 [n]: sum_v p log p per token
    top1: torch.Tensor  # int64 [n] argmax of the parent's logits
    labels: torch.Tensor  # int64 [n] next tokens
    ce_sum: torch.Tensor  # 0-dim float64: sum over the block's tokens of -log p(label)


@dataclass
class PairSums:
    """Token sums of one compared model against the reference on the eval set.

    The sums stay 0-dim tensors on the evaluation device until ``means()``: converting each
    block's sum to a Python number would make a GPU wait after every block.
    """

    tokens: int = 0
    ce_sum: float | torch.Tensor = 0.0  # the compared model's own cross-entropy
    kl_sum: float | torch.Tensor = 0.0  # KL(reference || model), nats
    agree: int | torch.Tensor = 0  # positions where the parent's top-1 is also the model's

    def add(self, other: "PairSums") -> None:
        self.tokens += other.tokens
        self.ce_sum += other.ce_sum
        self.kl_sum += other.kl_sum
        self.agree += other.agree

    def means(self) -> dict[str, float]:
        n = max(self.tokens, 1)
        return {"loss": float(self.ce_sum) / n, "kl": float(self.kl_sum) / n, "top1_agreement": float(self.agree) / n}


@dataclass
class LossSums:
    tokens: int = 0
    ce_sum: float | torch.Tensor = 0.0

    @property
    def loss(self) -> float:
        return float(self.ce_sum) / max(self.tokens, 1)


def token_blocks(logits: torch.Tensor, labels: torch.Tensor, block_elements: int = BLOCK_ELEMENTS) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Flatten [rows, T, V] logits and [rows, T] labels into token blocks of bounded size."""
    vocab = logits.shape[-1]
    flat = logits.reshape(-1, vocab)
    flat_labels = labels.reshape(-1)
    step = max(1, block_elements // vocab)
    for i in range(0, flat.shape[0], step):
        yield flat[i : i + step], flat_labels[i : i + step]


def argmax_rows(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise argmax; on CPU through numpy, whose SIMD argmax is ~10x faster than torch's here.
    Both return the first maximal index, so the result is identical."""
    if logits.device.type == "cpu" and logits.dtype in (torch.float32, torch.float64):
        return torch.from_numpy(logits.detach().numpy().argmax(axis=-1))
    return logits.argmax(dim=-1)


def reference_block(logits: torch.Tensor, labels: torch.Tensor) -> ReferenceBlock:
    """The parent's side of a [n, V] block of float logits (float64 probabilities)."""
    logp = torch.log_softmax(logits, dim=-1, dtype=torch.float64)
    p = torch.softmax(logits, dim=-1, dtype=torch.float64)
    ce = -logp.gather(1, labels.unsqueeze(1)).sum()
    return ReferenceBlock(p=p, neg_entropy=torch.linalg.vecdot(p, logp), top1=argmax_rows(logits),
                          labels=labels, ce_sum=ce)


def pair_sums(ref: ReferenceBlock, logits: torch.Tensor) -> PairSums:
    """Loss, KL(ref || model) and top-1 agreement sums of a [n, V] block against the reference.

    Top-1 agreement counts positions where the parent's most likely token is also a most likely
    token of the model (its logit equals the model's max; ties, vanishingly rare in float logits,
    count as agreement). Comparing values instead of a second argmax is ~10x cheaper on CPU.
    """
    logq = torch.log_softmax(logits, dim=-1, dtype=torch.float64)
    ce = -logq.gather(1, ref.labels.unsqueeze(1)).sum()
    kl = (ref.neg_entropy - torch.linalg.vecdot(ref.p, logq)).sum()  # same kernel as neg_entropy: 0 if equal
    agree = (logits.gather(1, ref.top1.unsqueeze(1)).squeeze(1) == logits.amax(dim=-1)).sum()
    return PairSums(tokens=int(ref.labels.numel()), ce_sum=ce, kl_sum=kl, agree=agree)


@dataclass
class ParamNorm:
    """‖a − b‖₂ over all parameters, or why it is undefined."""

    value: float | None
    reason: str = ""  # set when value is None (e.g. a shape-changing intervention)
    numel: int = 0
    mismatched: list[str] = field(default_factory=list)


def param_l2_distance(a: Sequence[tuple[str, torch.Tensor]], b: Sequence[tuple[str, torch.Tensor]]) -> ParamNorm:
    """Euclidean distance between two models' parameters (float64 accumulation).

    Defined only when both have the same parameter names and shapes; otherwise ``value`` is None
    and ``reason`` says why (Gstack grows the depth, so the branch has more layers than its parent).
    Identical tensors give exactly 0.0.
    """
    da, db = dict(a), dict(b)
    if da.keys() != db.keys():
        only = sorted(set(da) ^ set(db))
        return ParamNorm(None, f"different parameter sets ({len(da)} vs {len(db)} tensors, e.g. {only[0]})", mismatched=only)
    bad = [k for k in da if da[k].shape != db[k].shape]
    if bad:
        return ParamNorm(None, f"different shapes, e.g. {bad[0]}: {tuple(da[bad[0]].shape)} vs {tuple(db[bad[0]].shape)}", mismatched=bad)
    total = 0.0
    numel = 0
    for k in sorted(da):
        x, y = da[k].detach().reshape(-1), db[k].detach().reshape(-1).to(da[k].device)
        # Exact float64 differences, in chunks small enough to stay in cache (a whole-model
        # float64 copy would cost page faults: ~15x slower at Pythia sizes).
        chunk = PARAM_CHUNK if x.device.type == "cpu" else max(x.numel(), 1)
        for i in range(0, x.numel(), chunk):
            d = x[i : i + chunk].double() - y[i : i + chunk].double()
            total += float(torch.dot(d, d))
        numel += x.numel()
    return ParamNorm(total**0.5, numel=numel)
