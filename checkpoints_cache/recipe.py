"""A run's training recipe as plain data (what a branch must reproduce).

Recipes of released runs live in the registry; local trajectories carry theirs in
``trajectory.json``. The LR as a function of the step is computed from this data in
``resume.schedule``; nothing here trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Recipe:
    """Optimizer, schedule, batch and precision of a pretraining run."""

    lr: float  # peak learning rate
    min_lr: float  # floor of the decay
    warmup_iters: int  # W
    decay_iters: int  # E: the cosine's denominator (NeoX: lr-decay-iters)
    train_iters: int  # planned length of the run
    # "neox-cosine": NeoX v1.0 AnnealingLR (pythia.md §2.3): lr = 0 on the first update.
    # "linear-warmup-cosine": lr*n/W for n < W, then cosine to min_lr over [W, E] (Amber, K2;
    # resume.schedule cites both training codes): lr = 0 on the first update too.
    schedule: str = "neox-cosine"
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.1  # decoupled (AdamW)
    grad_clip: float = 1.0
    batch_size: int = 1024  # rows per global batch
    seq_len: int = 2048  # input tokens per row; stored rows hold seq_len + 1 tokens
    precision: str = "fp16"  # fp16 | bf16 | fp32: the parent's; the engine uses fp32 on CPU
    seed: int = 1234
    extra: dict[str, Any] = field(default_factory=dict)
    # Which parameters weight decay touches (resume.optim.WEIGHT_DECAY_SCOPES): "matrices" = not biases or
    # norms (NeoX, Megatron/K2); "all" = every parameter (Amber: torch AdamW over model.parameters()).
    weight_decay_scope: str = "matrices"

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "betas" in kwargs:
            kwargs["betas"] = tuple(kwargs["betas"])
        return cls(**kwargs)

    def replace(self, **changes: Any) -> "Recipe":
        return dataclasses.replace(self, **changes)
