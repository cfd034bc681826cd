"""The divergence metrics, as sums over tokens so that chunks and batches add up exactly.

Speed with float64 accuracy where it matters. The elementwise work over the vocabulary is float32
(one exp per element for the parent, one expm1 per element for each compared model, no log), and
only per-token results and the final reductions are float64. With d = z_q − z_p (the logit
difference, exact when the models are close), c = E_p[d] and u = d − c:

    KL(p ‖ q) = log E_p[e^u] − E_p[u] = log1p(E_p[expm1(u)]) − E_p[u]
    loss_q − loss_p (per token) = log1p(E_p[expm1(u)]) − u[label]

expm1 keeps the relative precision of small u, so nothing of size 1 is subtracted; the float32
error of a block's KL sum is about 4·ε·sqrt(2/mean KL) relative (ε = 6e-8): 1e-4 at a mean KL of
1e-5 per token. Below that (near-identical models: a control on a GPU, one LAWA replacement) the
block is recomputed in float64 from the same logits (``KL_FLOAT64_BELOW``), whose cancellation
error is ~1e-15 nats per token. Bitwise-equal logits are detected first and give exactly 0 KL and
exactly the parent's loss. The parent's own loss is log-sum-exp (float32 exp, float64 sum) minus
the label's logit: ~1e-7 relative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

# Elements (tokens x vocab) per token block: 1 MB float32 temporaries stay in cache and are reused by the
# allocator (huge temporaries cost page faults: 5x slower at Pythia's 50304 columns; 5 tokens per block).
BLOCK_ELEMENTS = 1 << 18
PARAM_CHUNK = 1 << 16  # parameters per float64 chunk of the distance computation
# On a GPU, small blocks would be launch-bound; its memory has no such page-fault cost.
BLOCK_ELEMENTS_GPU = 1 << 24
# A block whose float32 mean KL per token is below this is recomputed in float64 (see the docstring).
KL_FLOAT64_BELOW = 1e-5


def block_elements_for(device: torch.device) -> int:
    return BLOCK_ELEMENTS if device.type == "cpu" else BLOCK_ELEMENTS_GPU


@dataclass
class ReferenceBlock:
    """The parent's side of one token block: computed once, reused for every compared model."""

    logits: torch.Tensor  # float32 [n, V], the parent's logits (a view, not a copy)
    e: torch.Tensor  # float32 [n, V]: exp(z - max z), the unnormalised probabilities
    s: torch.Tensor  # float32 [n]: sum of e, so p = e / s
    top1: torch.Tensor  # int64 [n] argmax of the parent's logits
    labels: torch.Tensor  # int64 [n] next tokens
    ce: torch.Tensor  # float64 [n]: -log p(label) per token
    _exact: tuple[torch.Tensor, torch.Tensor] | None = None  # float64 (p, sum p log p), on first need

    @property
    def ce_sum(self) -> torch.Tensor:
        return self.ce.sum()

    def exact(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._exact is None:
            logp = torch.log_softmax(self.logits, dim=-1, dtype=torch.float64)
            p = logp.exp()
            self._exact = (p, torch.linalg.vecdot(p, logp))
        return self._exact


@dataclass
class PairSums:
    """Token sums of one compared model against the reference on the eval set.

    The sums stay 0-dim tensors on the evaluation device until ``means()``: converting each
    block's sum to a Python number would make a GPU wait after every block. ``ce`` holds the
    per-token losses of the last block (for per-sequence sums).
    """

    tokens: int = 0
    ce_sum: float | torch.Tensor = 0.0  # the compared model's own cross-entropy
    kl_sum: float | torch.Tensor = 0.0  # KL(reference || model), nats
    agree: int | torch.Tensor = 0  # positions where the parent's top-1 is also the model's
    ce: torch.Tensor | None = None

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


def _gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return x.gather(1, idx.unsqueeze(1)).squeeze(1)


def reference_block(logits: torch.Tensor, labels: torch.Tensor) -> ReferenceBlock:
    """The parent's side of a [n, V] block of float logits."""
    z = logits.float()
    top1 = argmax_rows(z)
    mx = _gather(z, top1)
    e = torch.exp(z - mx.unsqueeze(1))
    s = e.sum(dim=-1)
    ce = (mx.double() + s.double().log()) - _gather(z, labels).double()  # log-sum-exp − z[label]
    return ReferenceBlock(logits=z, e=e, s=s, top1=top1, labels=labels, ce=ce)


def _pair_exact(ref: ReferenceBlock, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL per token, loss per token) in float64 from log-softmax: the near-identical case."""
    p, neg_entropy = ref.exact()
    logq = torch.log_softmax(z_q, dim=-1, dtype=torch.float64)
    return neg_entropy - torch.linalg.vecdot(p, logq), -_gather(logq, ref.labels)


def pair_sums(ref: ReferenceBlock, logits: torch.Tensor) -> PairSums:
    """Loss, KL(ref || model) and top-1 agreement sums of a [n, V] block against the reference.

    Top-1 agreement counts positions where the parent's most likely token is also a most likely
    token of the model (its logit equals the model's max; ties, vanishingly rare in float logits,
    count as agreement). Comparing values instead of a second argmax is ~10x cheaper on CPU.
    """
    z_q = logits.float()
    n = int(ref.labels.numel())
    if torch.equal(z_q, ref.logits):  # the same function: exact zeros, no float work
        ce = ref.ce.clone()
        return PairSums(tokens=n, ce_sum=ce.sum(), kl_sum=torch.zeros((), dtype=torch.float64, device=ce.device),
                        agree=torch.tensor(n, device=ce.device), ce=ce)
    agree = (_gather(z_q, ref.top1) == z_q.amax(dim=-1)).sum()
    u = z_q - ref.logits
    s64 = ref.s.double()
    c = torch.linalg.vecdot(ref.e, u) / ref.s  # ~E_p[d]
    u -= c.unsqueeze(1)
    eu = torch.linalg.vecdot(ref.e, u).double() / s64  # E_p[u], ~0
    u_label = _gather(u, ref.labels).double()
    torch.expm1(u, out=u)
    log_ratio = torch.log1p(torch.linalg.vecdot(ref.e, u).double() / s64)  # log E_p[e^u]
    kl = log_ratio - eu
    ce = ref.ce + log_ratio - u_label
    if float(kl.sum()) < KL_FLOAT64_BELOW * n:
        kl, ce = _pair_exact(ref, z_q)
    return PairSums(tokens=n, ce_sum=ce.sum(), kl_sum=kl.sum(), agree=agree, ce=ce)


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
        # Differences in the weights' own precision (exact for close weights, 1 ulp otherwise),
        # squared and summed in float64, in chunks small enough to stay in cache (a whole-model
        # float64 copy would cost page faults: ~15x slower at Pythia sizes).
        chunk = PARAM_CHUNK if x.device.type == "cpu" else max(x.numel(), 1)
        for i in range(0, x.numel(), chunk):
            d = (x[i : i + chunk] - y[i : i + chunk]).double()
            total += float(torch.dot(d, d))
        numel += x.numel()
    return ParamNorm(total**0.5, numel=numel)
