"""Anytime pretraining (Meterez et al. 2026, arXiv 2602.03702): horizon-free LR + EMA of the weights.

``anytime:schedule=constant|invsqrt|wsd,lr=…,warmup=…,alpha=…,ema=F``

LR (methods.md §2.2; official ``olmo/optim.py``), with t = n = the number of updates before the
current one, counted from the parent's step 0 (issue #5's convention; the official trainer
evaluates its scheduler at the already-incremented ``global_step``, i.e. at t + 1):

- warmup (t < W): lr·(0.1 + 0.9·t/W)                          (``_linear_warmup``, alpha=0.1)
- ``constant``:   lr                                           (``ConstantWithWarmupScheduler``)
- ``invsqrt``:    lr·sqrt(alpha / (t − W + alpha))             (``InvSqrtWithWarmup``, offset=alpha)
- ``wsd``:        lr·(1 − 0.9·(t − N)/K) for the branch's updates t = N … N+K−1: a linear cooldown
                  from lr at the branch step towards 0.1·lr at N+K (``LinearDecay`` with alpha_f=0.1,
                  t_start = the first update, t_max = N+K; like the official code it has no warmup).

EMA (methods.md §2.1; official ``olmo/train.py`` class ``EMA``): after every update,
w̄ ← β·w̄ + (1 − β)·θ with β = 0.5^(F/(S+1)), where S is the global step the update reached (the
official trainer increments ``global_step`` before ``train_step`` and passes it to ``EMA.update``);
F = 0 means β = 0 (the last iterate), as special-cased in the official code. The EMA starts from
the loaded weights at the branch step and is kept in float32 over all float parameters. Where it
lives (``ema_device``): by default (``auto``) next to the weights when they are on an accelerator, as
the official code's shadow models are, and on CPU otherwise; ``ema_device=cpu`` forces it off the
accelerator at the price of a device-to-host copy of every parameter after every update
(benchmarks/RESULTS.md: +63 % step time for pythia-160m on an H100 vs +0.26 % on the
device). It is written to ``checkpoints/stepS/averaged/``; training always uses the raw iterate.

Defaults: lr and warmup = the parent's peak LR and warmup; alpha = 51200/5000 × warmup (the paper's
Figure 2 offset relative to its 5000-step warmup, scaled to the run); ema = 25 (Figure 2).
Not changed by this intervention: weight decay (the paper used 0; the branch keeps the parent's).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import BranchContext
from .params import PARENT, DeclaredIntervention, Param
from .weights import Weights, cpu_snapshot, float_params, full_state_dict

PAPER_ALPHA = 51200.0  # Figure 2's inv-sqrt offset (methods.md §2.2)
PAPER_WARMUP = 5000.0  # the paper's warmup for that figure
WSD_FLOOR = 0.1  # cooldown ends at 10 % of the peak (official LinearDecay alpha_f)
WARMUP_START = 0.1  # warmup starts at 10 % of the peak (official _linear_warmup alpha)


def warmup_lr(lr: float, t: int, warmup: int) -> float:
    return lr * (WARMUP_START + (1.0 - WARMUP_START) * min(t, warmup) / warmup)


def anytime_lr(schedule: str, t: int, lr: float, warmup: int, alpha: float, branch_step: int, end_step: int) -> float:
    """The LR of the update with t updates before it (pure function; see the module docstring)."""
    if schedule == "wsd":
        length = max(1, end_step - branch_step)
        return lr * (1.0 - (1.0 - WSD_FLOOR) * (t - branch_step) / length)
    if warmup > 0 and t < warmup:
        return warmup_lr(lr, t, warmup)
    if schedule == "constant":
        return lr
    if schedule == "invsqrt":
        return lr * math.sqrt(alpha / (t - warmup + alpha))
    raise ValueError(f"unknown schedule {schedule!r}")


def ema_beta(ema: float, step: int) -> float:
    """β_S = 0.5^(F/(S+1)), the weight on the old average after the update reaching step S."""
    return 0.0 if ema == 0 else 0.5 ** (ema / (step + 1))


class Anytime(DeclaredIntervention):
    name = "anytime"
    PARAMS = (
        Param("schedule", str, "constant", "horizon-free schedule, or wsd: linear cooldown to 10% over the branch",
              choices=("constant", "invsqrt", "wsd")),
        Param("lr", float, PARENT, "peak LR (default: the parent's peak LR)", min=0.0, min_exclusive=True),
        Param("warmup", int, PARENT, "warmup steps from 0.1·lr to lr (default: the parent's warmup)", min=0),
        Param("alpha", float, PARENT, "invsqrt offset (default: 51200/5000 × warmup, the paper's ratio)",
              min=0.0, min_exclusive=True),
        Param("ema", float, 25.0, "EMA label F: β_t = 0.5^(F/(t+1)); 0 = last iterate", min=0.0),
        Param("ema_device", str, "auto", "where the float32 EMA lives: auto (next to the weights when they are on an "
              "accelerator, else CPU), cpu (always off the accelerator), model (always next to the weights)",
              choices=("auto", "cpu", "model")),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.ema_weights: Weights | None = None
        self.ema_step: int | None = None  # the step the EMA is current at

    def setup(self, ctx: BranchContext) -> None:
        super().setup(ctx)
        p = self.params
        if p["lr"] is None:
            p["lr"] = float(ctx.recipe.lr)
        if p["warmup"] is None:
            p["warmup"] = int(ctx.recipe.warmup_iters)
        if p["alpha"] is None:
            p["alpha"] = PAPER_ALPHA / PAPER_WARMUP * max(int(p["warmup"]), 1)

    def lr(self, n: int, parent_lr: float) -> float:
        p = self.params
        return anytime_lr(p["schedule"], n, p["lr"], p["warmup"], p["alpha"], self.ctx.branch_step, self.ctx.end_step)

    def on_load(self, model: Any, ctx: BranchContext) -> Any:
        self.ema_weights = cpu_snapshot(model, dtype=torch.float32)
        self.ema_step = ctx.branch_step
        return model

    @torch.no_grad()
    def after_step(self, model: Any, step: int) -> None:
        if self.ema_weights is None:  # on_load not called (e.g. a direct test): start from now
            self.ema_weights = cpu_snapshot(model, dtype=torch.float32)
            self.ema_step = step
            return
        beta = ema_beta(self.params["ema"], step)
        names = list(self.ema_weights)
        current = dict(float_params(model))
        for n in names:  # move the shadow next to the weights once, where asked (no per-step transfer)
            target = self.ema_device_for(current[n].device)
            if self.ema_weights[n].device != target:
                self.ema_weights[n] = self.ema_weights[n].to(target)
        avg = [self.ema_weights[n] for n in names]
        new = [current[n].detach().to(avg[i].device, torch.float32) for i, n in enumerate(names)]
        torch._foreach_mul_(avg, beta)
        torch._foreach_add_(avg, new, alpha=1.0 - beta)
        self.ema_step = step

    def ema_device_for(self, param_device: torch.device) -> torch.device:
        mode = self.params["ema_device"]
        if mode == "model" or (mode == "auto" and param_device.type != "cpu"):
            return param_device
        return torch.device("cpu")

    def extra_weights(self, model: Any, step: int) -> dict[str, dict[str, Any]]:
        if self.ema_weights is None:
            return {}
        return {"averaged": full_state_dict(model, self.ema_weights)}

    def state_dict(self) -> dict[str, Any]:
        ema = None if self.ema_weights is None else {n: t.to("cpu") for n, t in self.ema_weights.items()}
        return {"ema": ema, "ema_step": self.ema_step, "params": dict(self.params)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state.get("ema")
        self.ema_weights = None if ema is None else {n: t.to("cpu", torch.float32) for n, t in ema.items()}
        self.ema_step = state.get("ema_step")
