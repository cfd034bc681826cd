"""AdamW with the parent's hyperparameters, weight decay only on matrices (not biases or norms)."""

from __future__ import annotations

import torch
from torch import nn

from checkpoints_cache.recipe import Recipe


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and LayerNorm/RMSNorm parameters get no weight decay
    (neox@v1.0 megatron/model/utils.py::get_params_for_weight_decay_optimization; pythia.md §2.1)."""
    lname = name.lower()
    return param.ndim < 2 or lname.endswith(".bias") or "norm" in lname or "ln_" in lname


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if is_no_decay(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """Decoupled AdamW as apex FusedAdam(adam_w_mode=True) in NeoX (pythia.md §2.1). The LR is set
    by the engine before every update, so the initial value here is irrelevant."""
    return torch.optim.AdamW(
        param_groups(model, recipe.weight_decay),
        lr=0.0,
        betas=tuple(recipe.betas),
        eps=recipe.eps,
        weight_decay=recipe.weight_decay,
    )
