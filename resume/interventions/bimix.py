"""BiMix entropy-driven data mixtures (Ge et al., arXiv 2405.14908 §4.2), ``bimix:entropy=…``.

For a data order whose rows carry domain labels (the toy corpus, Amber's ``source``, a user's
labelled data), each domain's entropy H_i is estimated from token counts on a deterministic sample
of its rows *after* the branch point (rows >= N·B):

- ``conditional`` (CE, the paper's best): H(X_{t+1} | X_t) = −Σ P(x, x')·log P(x' | x) from bigram
  counts within rows, in nats;
- ``shannon`` (SE): unigram entropy −Σ P(x)·log P(x), in nats.

Proportions r_i = softmax(H)_i = e^{H_i} / Σ_j e^{H_j} (Eqs. 12–13). Every global batch k >= N then
holds c_i rows of domain i, where the integer counts c_i are r·B rounded by largest remainder (ties
to the lower domain id) so they sum to B: the batch size is kept. Domain i's rows are read in data
order from a cursor at (k − N)·c_i into its list of rows >= N·B (held-out batches, where the data
order declares them, excluded), so the draw is deterministic and
never repeats a row; a domain that runs out is an error naming the last step the data supports.
Within a batch the rows are grouped by domain id (the loss is a mean over the batch, so the
grouping does not change the update).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from checkpoints_cache.errors import UserError

from .base import BranchContext
from .params import DeclaredIntervention, Param


def conditional_entropy(rows: np.ndarray) -> float:
    """H(X_{t+1} | X_t) in nats from the bigram counts of each row (pairs never cross rows)."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] < 2:
        return 0.0
    first = rows[:, :-1].ravel()
    second = rows[:, 1:].ravel()
    width = int(max(first.max(), second.max())) + 1
    pair_codes, joint = np.unique(first * width + second, return_counts=True)
    firsts, marginal = np.unique(first, return_counts=True)
    given = marginal[np.searchsorted(firsts, pair_codes // width)]  # count of x for each pair (x, x')
    p_joint = joint / joint.sum()
    return float(-(p_joint * np.log(joint / given)).sum())


def shannon_entropy(rows: np.ndarray) -> float:
    """Unigram entropy in nats over every token of the rows."""
    _, counts = np.unique(np.asarray(rows).ravel(), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


ENTROPY = {"conditional": conditional_entropy, "shannon": shannon_entropy}


def softmax(values: np.ndarray) -> np.ndarray:
    z = np.exp(values - values.max())
    return z / z.sum()


def largest_remainder(proportions: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, each floor(r·total) plus one for the largest remainders."""
    exact = np.asarray(proportions, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    left = int(total - counts.sum())
    order = np.lexsort((np.arange(len(exact)), -(exact - counts)))  # largest remainder, then lower id
    counts[order[:left]] += 1
    return counts


def sample_positions(n: int, k: int) -> np.ndarray:
    """``min(k, n)`` evenly spread positions in [0, n): deterministic and representative."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def heldout_start(ctx: BranchContext) -> int | None:
    """The first held-out global batch of the parent's data order, when it declares one (the toy)."""
    traj = ctx.extra.get("parent_trajectory")
    order = getattr(traj, "data_order", None) or ctx.extra.get("data_order") or {}
    span = order.get("heldout_batches")
    return int(span[0]) if span else None


class BiMix(DeclaredIntervention):
    name = "bimix"
    PARAMS = (
        Param("entropy", str, "conditional", "entropy estimator: conditional (CE, the paper's best) or shannon (SE)",
              choices=("conditional", "shannon")),
        Param("sample_rows", int, 256, "rows per domain (after the branch point) used to estimate its entropy",
              min=1),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.domain_ids: list[int] = []
        self.domain_rows: dict[int, np.ndarray] = {}
        self.entropies: dict[int, float] = {}
        self.proportions: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def setup(self, ctx: BranchContext) -> None:
        super().setup(ctx)
        if ctx.row_domains is None or ctx.take_rows is None:
            raise UserError(
                "bimix needs a data order whose rows carry domain labels (the toy run, LLM360/Amber); "
                "this parent has none"
            )
        labels = np.asarray(ctx.row_domains)
        batch = int(ctx.recipe.batch_size)
        start = ctx.branch_step * batch
        stop = min(len(labels), ctx.num_rows if ctx.num_rows is not None else len(labels))
        heldout = heldout_start(ctx)
        if heldout is not None:  # never train on the batches the comparison evaluates on
            stop = min(stop, heldout * batch)
        after = np.arange(start, stop, dtype=np.int64)
        if after.size == 0:
            raise UserError(f"bimix: the data order has no rows after step {ctx.branch_step} (rows >= {start})")
        after_labels = labels[after]
        self.domain_ids = sorted(int(d) for d in np.unique(after_labels))
        estimate = ENTROPY[self.params["entropy"]]
        for d in self.domain_ids:
            rows = after[after_labels == d]
            self.domain_rows[d] = rows
            sample = rows[sample_positions(len(rows), self.params["sample_rows"])]
            self.entropies[d] = estimate(np.asarray(ctx.take_rows(sample)))
        h = np.array([self.entropies[d] for d in self.domain_ids])
        r = softmax(h)
        counts = largest_remainder(r, batch)
        self.proportions = {d: float(p) for d, p in zip(self.domain_ids, r)}
        self.counts = {d: int(c) for d, c in zip(self.domain_ids, counts)}
        self.check_supply(ctx.end_step)

    def domain_name(self, d: int) -> str:
        names = self.ctx.domain_names
        return names[d] if names is not None and 0 <= d < len(names) else str(d)

    def last_supported_step(self) -> int:
        """The last checkpoint step every domain still has fresh rows for."""
        limits = [len(self.domain_rows[d]) // c for d, c in self.counts.items() if c > 0]
        return self.ctx.branch_step + min(limits)

    def check_supply(self, end_step: int) -> None:
        if end_step > self.last_supported_step():
            short = [
                self.domain_name(d) for d, c in self.counts.items()
                if c > 0 and (end_step - self.ctx.branch_step) * c > len(self.domain_rows[d])
            ]
            raise UserError(
                f"bimix: domain(s) {', '.join(short)} run out of rows after the branch point before step {end_step}; "
                f"this mixture supports branches up to step {self.last_supported_step()}"
            )

    def batch_row_indices(self, k: int, default: np.ndarray) -> np.ndarray:
        j = k - self.ctx.branch_step
        if j < 0:
            return default
        parts = []
        for d in self.domain_ids:
            c = self.counts[d]
            if c == 0:
                continue
            rows = self.domain_rows[d]
            if (j + 1) * c > len(rows):
                raise UserError(
                    f"bimix: domain {self.domain_name(d)} runs out of rows at global batch {k}; "
                    f"this mixture supports branches up to step {self.last_supported_step()}"
                )
            parts.append(rows[j * c:(j + 1) * c])
        out = np.concatenate(parts).astype(np.asarray(default).dtype, copy=False)
        if len(out) != len(default):  # counts sum to B by construction; guard a changed batch size
            raise ValueError(f"bimix drew {len(out)} rows for a batch of {len(default)}")
        return out

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.proportions:
            d["params"]["mixture"] = {
                self.domain_name(i): {
                    "entropy": self.entropies[i],
                    "proportion": self.proportions[i],
                    "rows_per_batch": self.counts[i],
                }
                for i in self.domain_ids
            }
        return d
