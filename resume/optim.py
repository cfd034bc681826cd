"""AdamW with the parent's hyperparameters; weight decay on the parameters the parent's recipe decayed."""

from __future__ import annotations

import torch
from torch import nn

from checkpoints_cache.errors import UserError
from checkpoints_cache.recipe import Recipe

# Recipe.weight_decay_scope values:
# - "matrices": no decay on biases and norms -- neox@v1.0 get_params_for_weight_decay_optimization
#   (pythia.md §2.1) and Megatron's get_param_groups ("do not regularize biases nor Norm parameters",
#   k2-train megatron/optimizer/__init__.py @869fbb9);
# - "all": every parameter decays -- amber-train main.py @64bc595 builds
#   torch.optim.AdamW(model.parameters(), weight_decay=0.1), one group, RMSNorm weights included.
WEIGHT_DECAY_SCOPES = ("matrices", "all")


def is_no_decay(name: str, param: torch.Tensor) -> bool:
    """Biases and LayerNorm/RMSNorm parameters get no weight decay
    (neox@v1.0 megatron/model/utils.py::get_params_for_weight_decay_optimization; pythia.md §2.1)."""
    lname = name.lower()
    return param.ndim < 2 or lname.endswith(".bias") or "norm" in lname or "ln_" in lname


def param_groups(model: nn.Module, weight_decay: float, scope: str = "matrices") -> list[dict]:
    if scope not in WEIGHT_DECAY_SCOPES:
        raise UserError(f"recipe weight_decay_scope {scope!r} is unknown; use one of {', '.join(WEIGHT_DECAY_SCOPES)}")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if scope == "matrices" and is_no_decay(name, p) else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.AdamW:
    """Decoupled AdamW as apex FusedAdam(adam_w_mode=True) in NeoX (pythia.md §2.1) and torch AdamW in Amber.
    The LR is set by the engine before every update, so the initial value here is irrelevant."""
    return torch.optim.AdamW(
        param_groups(model, recipe.weight_decay, recipe.weight_decay_scope),
        lr=0.0,
        betas=tuple(recipe.betas),
        eps=recipe.eps,
        weight_decay=recipe.weight_decay,
    )


def adamw_state_by_name(model: nn.Module, recipe: Recipe, tensors: dict[str, torch.Tensor], step: int) -> dict:
    """An AdamW ``state_dict`` for ``build_optimizer(model, recipe)`` whose moments come from ``tensors``
    (``{name}.exp_avg`` / ``{name}.exp_avg_sq`` by ``named_parameters()`` name), laid out in this engine's
    group order (HF's parameter order differs from NeoX's groups: neox_ckpt.md §7), with Adam's ``step``."""
    optimizer = build_optimizer(model, recipe)
    sd = optimizer.state_dict()
    name_of = {id(p): n for n, p in model.named_parameters()}
    state, index = {}, 0
    for group in optimizer.param_groups:
        for p in group["params"]:
            name = name_of[id(p)]
            entry = {"step": torch.tensor(float(step))}
            for key in ("exp_avg", "exp_avg_sq"):
                t = tensors.get(f"{name}.{key}")
                if t is None:
                    raise KeyError(f"no {name}.{key} in the imported optimizer state")
                if tuple(t.shape) != tuple(p.shape):
                    raise ValueError(f"{name}.{key} has shape {list(t.shape)}, the parameter {list(p.shape)}")
                entry[key] = t.to(dtype=torch.float32).clone()
            state[index] = entry
            index += 1
    sd["state"] = state
    return sd


@torch.no_grad()
def load_masters(model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Overwrite every parameter with its fp32 master ``{name}.master`` (strict: all of them, same shapes)."""
    params = dict(model.named_parameters())
    have = {k.removesuffix(".master") for k in tensors if k.endswith(".master")}
    if have != set(params):
        missing, extra = sorted(set(params) - have), sorted(have - set(params))
        raise ValueError(f"the fp32 masters do not match the model: missing {missing[:3]}, extra {extra[:3]}")
    for name, p in params.items():
        t = tensors[f"{name}.master"]
        if tuple(t.shape) != tuple(p.shape):
            raise ValueError(f"{name}.master has shape {list(t.shape)}, the parameter {list(p.shape)}")
        p.copy_(t)
