"""Anytime pretraining (Meterez et al. 2026, arXiv 2602.03702): horizon-free LR + EMA of the weights.

``anytime:schedule=constant|invsqrt|wsd,lr=…,warmup=…,alpha=…,ema=F,rewarm=R,wd=…``

LR (methods.md §2.2; official ``olmo/optim.py``), with t = n = the number of updates before the
current one, counted from the parent's step 0 (issue #5's convention; the official trainer
evaluates its scheduler at the already-incremented ``global_step``, i.e. at t + 1):

- warmup (t < W): lr·(0.1 + 0.9·t/W)                          (``_linear_warmup``, alpha=0.1)
- ``constant``:   lr                                           (``ConstantWithWarmupScheduler``)
- ``invsqrt``:    lr·sqrt(alpha / (t − W + alpha))             (``InvSqrtWithWarmup``, offset=alpha)
- ``wsd``:        lr·(1 − 0.9·(t − N)/(K − 1)) for the branch's updates t = N … N+K−1: a linear
                  cooldown from lr on the first update to exactly 0.1·lr on the last, as the official
                  ``LinearDecay`` (alpha_f=0.1, t_start = the first step it is evaluated at, t_max = the
                  end: evaluated at t + 1 = N+1 … N+K it gives lr … 0.1·lr); no warmup, like the official.

Re-warmup (``rewarm=R``, not in the paper, whose runs start from scratch): a branch from step N of
a parent that is in its cosine decay would otherwise jump from the parent's current LR to the
anytime LR (toy: 1.57e-3 -> 3e-3). Over the first R updates of the branch the LR goes linearly from
the parent's LR to the schedule: lr_t = p_t + (s_t − p_t)·(t − N)/R, p_t the parent's LR at t (the
engine's, skipped steps included), s_t the schedule above: the first update has exactly the parent's
LR at N; from update N+R on it is s_t. Default: min(parent warmup, ceil(K/10))
(the same rule as Gstack's restarted warmup); ``rewarm=0`` jumps.

Weight decay (``wd=``): the decay of the matrices (biases and norms stay undecayed). Default: the
parent's (Pythia: 0.1); the paper's runs use 0 (methods.md §2.3), one key away: ``wd=0``.

EMA (methods.md §2.1; official ``olmo/train.py`` class ``EMA``): after every update,
w̄ ← β·w̄ + (1 − β)·θ with β = 0.5^(F/(S+1)), where S is the global step the update reached (the
official trainer increments ``global_step`` before ``train_step`` and passes it to ``EMA.update``);
F = 0 means β = 0 (the last iterate), as special-cased in the official code. **The EMA starts at
θ_N**, the weights at the branch step (the official EMA starts at step 0 of a run from scratch):
after K updates its weight on θ_N is Π_{S=N+1..N+K} β_S = 0.5^(F·Σ 1/(S+1)) (N = 64k, K = 2k,
F = 25: 0.59), recorded in the trajectory as ``resolved.ema_weight_on_start_at_end``. It is kept in
float32 over all float parameters, by the main process only (under ``--sharding fsdp``: by every rank,
its own shards, gathered only to write ``averaged/``). Where it lives (``ema_device``): by
default (``auto``) next to the weights when they are on an accelerator, as the official code's
shadow models are, and on CPU otherwise; ``ema_device=cpu`` forces it off the accelerator at the
price of a device-to-host copy of every parameter after every update (benchmarks/RESULTS.md: +63 %
step time for pythia-160m on an H100 vs +0.26 % on the device). It is written to
``checkpoints/stepS/averaged/``; training always uses the raw iterate.

Defaults: lr and warmup = the parent's peak LR and warmup; alpha = 51200/5000 × warmup (the paper's
Figure 2 offset relative to its 5000-step warmup, scaled to the run); ema = 25 (Figure 2).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from checkpoints_cache.errors import UserError

from .base import BranchContext
from .params import PARENT, DeclaredIntervention, Param
from .weights import Weights, cpu_snapshot, ema_update_, float_params, full_state_dict, holds_copies, localize_, move_

PAPER_ALPHA = 51200.0  # Figure 2's inv-sqrt offset (methods.md §2.2)
PAPER_WARMUP = 5000.0  # the paper's warmup for that figure
WSD_FLOOR = 0.1  # cooldown ends at 10 % of the peak (official LinearDecay alpha_f)
WARMUP_START = 0.1  # warmup starts at 10 % of the peak (official _linear_warmup alpha)

SUMMARY = (
    "anytime: the paper's horizon-free LR (constant or inverse-sqrt after a 0.1->1 warmup; wsd = the official "
    "LinearDecay from lr on the first update to exactly 0.1*lr on the last) and the EMA beta_t = 0.5^(F/(t+1)) "
    "in averaged/. Differs from the paper where a branch must: the EMA starts at the branch step's weights "
    "theta_N (its weight on theta_N at the end is recorded), the LR re-warms from the parent's LR at N over "
    "rewarm updates (default min(parent warmup, K/10); rewarm=0 jumps), and weight decay stays the parent's "
    "unless wd= (the paper: wd=0)."
)


def warmup_lr(lr: float, t: int, warmup: int) -> float:
    return lr * (WARMUP_START + (1.0 - WARMUP_START) * min(t, warmup) / warmup)


def anytime_lr(schedule: str, t: int, lr: float, warmup: int, alpha: float, branch_step: int, end_step: int) -> float:
    """The LR of the update with t updates before it, before any re-warmup (pure function)."""
    if schedule == "wsd":
        length = end_step - branch_step
        if length <= 1 or t >= end_step - 1:
            return lr * WSD_FLOOR  # the official LinearDecay returns eta_min at t_max
        return lr * (1.0 - (1.0 - WSD_FLOOR) * (t - branch_step) / (length - 1))
    if warmup > 0 and t < warmup:
        return warmup_lr(lr, t, warmup)
    if schedule == "constant":
        return lr
    if schedule == "invsqrt":
        return lr * math.sqrt(alpha / (t - warmup + alpha))
    raise ValueError(f"unknown schedule {schedule!r}")


def rewarmed_lr(scheduled: float, t: int, branch_step: int, rewarm: int, parent_lr: float) -> float:
    """Linear blend from the parent's LR to the schedule over the branch's first ``rewarm`` updates."""
    i = t - branch_step
    if rewarm <= 0 or i >= rewarm:
        return scheduled
    return parent_lr + (scheduled - parent_lr) * i / rewarm


def ema_beta(ema: float, step: int) -> float:
    """β_S = 0.5^(F/(S+1)), the weight on the old average after the update reaching step S."""
    return 0.0 if ema == 0 else 0.5 ** (ema / (step + 1))


def ema_weight_on_start(ema: float, branch_step: int, end_step: int) -> float:
    """Π_{S=N+1..N+K} β_S: the weight the EMA at the end still puts on θ_N."""
    if ema == 0:
        return 0.0 if end_step > branch_step else 1.0
    exponent = sum(ema / (s + 1) for s in range(branch_step + 1, end_step + 1))
    return 0.5 ** exponent


def set_matrix_weight_decay(optimizer: Any, wd: float) -> None:
    """Weight decay ``wd`` on every param group holding a matrix (the decay group of
    ``resume.optim.param_groups``); groups of biases and norms only keep theirs (0)."""
    for group in optimizer.param_groups:
        if any(p.ndim >= 2 for p in group["params"]):
            group["weight_decay"] = float(wd)


class Anytime(DeclaredIntervention):
    name = "anytime"
    SUMMARY = SUMMARY
    SHARDING = ("none", "fsdp")  # the EMA reads the weights: not reachable in DeepSpeed's ZeRO partitions
    PARAMS = (
        Param("schedule", str, "constant", "constant | invsqrt (horizon-free), or wsd: linear cooldown to exactly "
              "0.1·lr on the last update", choices=("constant", "invsqrt", "wsd")),
        Param("lr", float, PARENT, "peak LR (default: the parent's peak LR)", min=0.0, min_exclusive=True),
        Param("warmup", int, PARENT, "warmup steps from 0.1·lr to lr, counted from step 0 (default: the parent's "
              "warmup)", min=0),
        Param("alpha", float, PARENT, "invsqrt offset (default: 51200/5000 × warmup, the paper's ratio)",
              min=0.0, min_exclusive=True),
        Param("ema", float, 25.0, "EMA label F: β_t = 0.5^(F/(t+1)); 0 = last iterate; it starts at the branch "
              "step's weights θ_N", min=0.0),
        Param("rewarm", int, PARENT, "updates of linear re-warmup from the parent's LR at N to the schedule "
              "(default: min(parent warmup, ceil(K/10)); 0 = jump)", min=0),
        Param("wd", float, PARENT, "weight decay of the matrices (default: the parent's; the paper: 0)", min=0.0),
        Param("ema_device", str, "auto", "where the float32 EMA lives: auto (next to the weights when they are on an "
              "accelerator, else CPU), cpu (always off the accelerator), model (always next to the weights)",
              choices=("auto", "cpu", "model")),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.ema_weights: Weights | None = None
        self.ema_step: int | None = None  # the step the EMA is current at
        self._pairs: tuple[Any, list[torch.Tensor], list[torch.Tensor]] | None = None  # (model, EMA, params)

    def setup(self, ctx: BranchContext) -> None:
        super().setup(ctx)
        p = self.params
        if p["lr"] is None:
            p["lr"] = float(ctx.recipe.lr)
        if p["warmup"] is None:
            p["warmup"] = int(ctx.recipe.warmup_iters)
        if p["alpha"] is None:
            p["alpha"] = PAPER_ALPHA / PAPER_WARMUP * max(int(p["warmup"]), 1)
        length = ctx.end_step - ctx.branch_step
        if p["rewarm"] is None:
            p["rewarm"] = min(int(ctx.recipe.warmup_iters), math.ceil(length / 10))
        if p["rewarm"] > length:
            raise UserError(f"anytime rewarm={p['rewarm']} is longer than the branch ({length} updates); "
                            f"use rewarm <= {length}")
        if p["wd"] is None:
            p["wd"] = float(ctx.recipe.weight_decay)

    def lr(self, n: int, parent_lr: float) -> float:
        p = self.params
        s = anytime_lr(p["schedule"], n, p["lr"], p["warmup"], p["alpha"], self.ctx.branch_step, self.ctx.end_step)
        return rewarmed_lr(s, n, self.ctx.branch_step, p["rewarm"], parent_lr)

    def configure_optimizer(self, optimizer: Any) -> None:
        set_matrix_weight_decay(optimizer, self.params["wd"])

    # -- the EMA (main process only: the other ranks hold the same weights and write nothing; sharded:
    # every rank its own shards) --------------------------------------------------------------------------
    def on_load(self, model: Any, ctx: BranchContext) -> Any:
        if holds_copies():
            self.ema_weights = cpu_snapshot(model, dtype=torch.float32)
            self._pairs = None
        self.ema_step = ctx.branch_step
        return model

    @torch.no_grad()
    def after_step(self, model: Any, step: int) -> None:
        if not holds_copies():
            self.ema_step = step
            return
        if self.ema_weights is None:  # on_load not called (e.g. a direct test): start from now
            self.ema_weights = cpu_snapshot(model, dtype=torch.float32)
            self.ema_step = step
            return
        if self._pairs is None or self._pairs[0] is not model:
            # once per model: move the shadow next to the weights where asked (no per-step transfer)
            # and pair each EMA tensor with its parameter (named_parameters costs more than the update)
            current = dict(float_params(model))
            localize_(self.ema_weights, current)  # taken before sharding: keep this rank's rows only
            move_(self.ema_weights, {n: self.ema_device_for(current[n].device) for n in self.ema_weights})
            names = list(self.ema_weights)
            self._pairs = (model, [self.ema_weights[n] for n in names], [current[n] for n in names])
        ema_update_(self._pairs[1], self._pairs[2], ema_beta(self.params["ema"], step))
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

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if hasattr(self, "ctx"):
            d["resolved"] = {
                "ema_start_step": self.ctx.branch_step,
                "ema_weight_on_start_at_end": ema_weight_on_start(self.params["ema"], self.ctx.branch_step,
                                                                  self.ctx.end_step),
            }
        return d

    def state_dict(self) -> dict[str, Any]:
        ema = None if self.ema_weights is None else {n: t.to("cpu") for n, t in self.ema_weights.items()}
        return {"ema": ema, "ema_step": self.ema_step, "params": dict(self.params)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ema = state.get("ema")
        keep = ema is not None and holds_copies()
        self.ema_weights = {n: t.to("cpu", torch.float32) for n, t in ema.items()} if keep else None
        self._pairs = None
        self.ema_step = state.get("ema_step")
