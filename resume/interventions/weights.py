"""Weight copies kept off the accelerator, their averages, and writing them back.

Shared by LAWA (uniform mean of snapshots) and the anytime EMA. A "weights" mapping is
``{parameter name: CPU tensor}`` over the model's floating-point parameters (``named_parameters``
names, which are also ``state_dict`` keys; tied parameters appear once).
"""

from __future__ import annotations

from typing import Iterable

import torch

Weights = dict[str, torch.Tensor]


def float_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


@torch.no_grad()
def cpu_snapshot(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Weights:
    """A CPU copy of every float parameter (in its own dtype unless ``dtype`` is given)."""
    return {
        n: p.detach().to("cpu", dtype=dtype or p.dtype, copy=True) for n, p in float_params(model)
    }


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision sums lose bits quickly; sum in float32 (float64 stays float64).
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def uniform_mean(snapshots: Iterable[Weights]) -> Weights:
    """(1/n)·Σ snapshots, summed in float32 in the given order, returned in each tensor's dtype.

    The mean of a single snapshot is that snapshot bit for bit (x/1 == x), which is what makes
    LAWA with k=1 an exact no-op.
    """
    snaps = list(snapshots)
    if not snaps:
        raise ValueError("uniform_mean of no snapshots")
    n = len(snaps)
    out: Weights = {}
    for name, first in snaps[0].items():
        acc = first.to(accumulation_dtype(first.dtype), copy=True)
        for s in snaps[1:]:
            acc.add_(s[name].to(acc.dtype))
        acc.div_(n)
        out[name] = acc.to(first.dtype)
    return out


@torch.no_grad()
def copy_into(model: torch.nn.Module, weights: Weights) -> None:
    """Overwrite the model's parameters in place (device and dtype of each parameter kept)."""
    for name, p in float_params(model):
        if name in weights:
            p.copy_(weights[name].to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def full_state_dict(model: torch.nn.Module, weights: Weights) -> dict[str, torch.Tensor]:
    """The model's complete CPU state_dict with its parameters replaced by ``weights``.

    Tied parameters (e.g. an LM head tied to the embedding) get the same replaced tensor under
    every key that aliases them, so the result loads into a fresh model of the same config.
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        src = name_of.get(id(value))
        if src is not None and src in weights:
            out[key] = weights[src].to(device="cpu", dtype=value.dtype)
        else:
            out[key] = value.detach().to("cpu", copy=True)
    return out
