"""Gstack: depthwise model growth by stacking (Du et al. 2024, arXiv 2405.15319), ``gstack:g=G``.

At the branch step the model of L layers becomes one of G·L layers with layer order
[0..L-1, 0..L-1, …] (whole-model stacking, App. A.3 Algorithm 1; official ``stackingpt.py`` with
``stacking_list = [0..5]×4``). Every new block is a copy of its source block *including* the block's
own norms; embeddings, the final norm and the LM head are copied unchanged (methods.md §3.2). The
result is a new model of a new config (``num_hidden_layers = G·L``), float32 on CPU, saved by the
engine as the branch's ``stepN``. GPT-NeoX (Pythia, ``gpt_neox.layers``) and Llama (LLM360,
``model.layers``) are supported.

After growth (methods.md §3.2, official ``pretrain/run_pretrain.py``): a fresh AdamW, and a fresh
schedule restarted at the branch step, TinyLlama-style (``get_lr`` of the official code base):
with i = n − N updates into the branch, K = the branch length and W the warmup,
    lr = peak·i/W                                        for i < W
    lr = min + ½(peak − min)(1 + cos(π·(i − W)/(K − W)))  otherwise.
Data continues at global batch N; nothing is replayed.

Choices where the paper is silent (recorded in ``describe()``):
- peak/min LR default to the parent's lr/min_lr (the paper used 3e-4 → 3e-5 for the grown 1.1B);
- warmup defaults to min(parent warmup, ceil(K/10)) so a short branch is not all warmup (the paper
  used 3000 steps of a ~50k-step run);
- ``noise`` (default 0; §5.2: 20 % was slightly better, more was worse) adds Gaussian noise with
  standard deviation ``noise × std(W)`` to every matrix (≥ 2-D tensor) of every stacked block,
  from a generator seeded with ``seed`` (default: the parent's seed); biases and norms stay exact.

The grown model has a different shape, so parameter distance to the parent is undefined; compare
with function metrics only (loss, KL, agreement).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from checkpoints_cache.errors import UserError

from .base import BranchContext
from .params import PARENT, DeclaredIntervention, Param

# Where each supported architecture keeps its decoder blocks (state_dict prefix).
LAYER_PREFIXES = {"gpt_neox": "gpt_neox.layers.", "llama": "model.layers."}


def layer_prefix(model: torch.nn.Module) -> str:
    model_type = getattr(model.config, "model_type", "?")
    if hasattr(model, "gpt_neox") and hasattr(model.gpt_neox, "layers"):
        return LAYER_PREFIXES["gpt_neox"]
    inner = getattr(model, "model", None)
    if inner is not None and hasattr(inner, "layers"):
        return LAYER_PREFIXES["llama"]
    raise UserError(f"gstack grows GPT-NeoX (Pythia) and Llama (LLM360) models; this model is {model_type!r}")


def grown_config(config: Any, g: int) -> Any:
    """A copy of ``config`` with G·L layers; per-layer lists (e.g. ``layer_types``) repeated G times."""
    num_layers = int(config.num_hidden_layers)
    new = copy.deepcopy(config)
    for key, value in list(vars(new).items()):
        if isinstance(value, (list, tuple)) and len(value) == num_layers and key.startswith("layer"):
            setattr(new, key, type(value)(list(value) * g))
    new.num_hidden_layers = num_layers * g
    return new


def source_key(key: str, prefix: str, num_layers: int) -> tuple[str, int | None]:
    """The small model's state_dict key a grown key copies, and the grown layer index (or None)."""
    if not key.startswith(prefix):
        return key, None
    index, _, rest = key[len(prefix):].partition(".")
    layer = int(index)
    return f"{prefix}{layer % num_layers}.{rest}", layer


@torch.no_grad()
def grow_depthwise(model: torch.nn.Module, g: int, noise: float = 0.0, seed: int = 0) -> torch.nn.Module:
    """The stacked model: layer i of the result is a copy of layer i mod L of ``model``."""
    prefix = layer_prefix(model)
    num_layers = int(model.config.num_hidden_layers)
    config = grown_config(model.config, g)
    grown = type(model)(config).to(device="cpu", dtype=torch.float32)
    small = model.state_dict()
    generator = torch.Generator().manual_seed(int(seed))
    new_state = {}
    for key, target in grown.state_dict().items():
        src, layer = source_key(key, prefix, num_layers)
        if src not in small:
            raise UserError(f"gstack cannot map {key!r}: the loaded model has no {src!r}")
        value = small[src].detach().to("cpu", torch.float32).clone()
        if value.shape != target.shape:
            raise UserError(f"gstack shape mismatch for {key!r}: {tuple(value.shape)} vs {tuple(target.shape)}")
        if noise > 0 and layer is not None and value.dim() >= 2:
            value += noise * value.std() * torch.randn(value.shape, generator=generator)
        new_state[key] = value
    grown.load_state_dict(new_state, strict=True)
    return grown


def restarted_cosine_lr(i: int, length: int, warmup: int, peak: float, floor: float) -> float:
    """Fresh warmup + cosine over the branch (i = updates into the branch, length = K)."""
    if warmup > 0 and i < warmup:
        return peak * i / warmup
    if length <= warmup:
        return peak
    ratio = min(1.0, (i - warmup) / (length - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * ratio))


class Gstack(DeclaredIntervention):
    name = "gstack"
    PARAMS = (
        Param("g", int, 4, "growth factor: layers [0..L-1] stacked g times (paper: g=4)", min=1, max=64),
        Param("noise", float, 0.0, "relative Gaussian noise on stacked block matrices (paper §5.2: 0.2)",
              min=0.0, max=1.0),
        Param("seed", int, PARENT, "noise seed (default: the parent's seed)", min=0),
        Param("lr", float, PARENT, "peak LR of the restarted schedule (default: the parent's peak)",
              min=0.0, min_exclusive=True),
        Param("min_lr", float, PARENT, "cosine floor (default: the parent's min_lr)", min=0.0),
        Param("warmup", int, PARENT, "warmup steps (default: min(parent warmup, ceil(K/10)))", min=0),
    )

    def setup(self, ctx: BranchContext) -> None:
        super().setup(ctx)
        p = self.params
        length = ctx.end_step - ctx.branch_step
        if p["seed"] is None:
            p["seed"] = int(ctx.recipe.seed)
        if p["lr"] is None:
            p["lr"] = float(ctx.recipe.lr)
        if p["min_lr"] is None:
            p["min_lr"] = min(float(ctx.recipe.min_lr), p["lr"])
        if p["warmup"] is None:
            p["warmup"] = min(int(ctx.recipe.warmup_iters), math.ceil(length / 10))
        if p["min_lr"] > p["lr"]:
            raise UserError(f"gstack min_lr={p['min_lr']} is above lr={p['lr']}; pass min_lr <= lr")

    def on_load(self, model: Any, ctx: BranchContext) -> Any:
        return grow_depthwise(model, self.params["g"], self.params["noise"], self.params["seed"])

    def fresh_optimizer(self) -> bool:
        return True  # new shapes; the official code starts a fresh AdamW after growth

    def lr(self, n: int, parent_lr: float) -> float:
        p = self.params
        return restarted_cosine_lr(n - self.ctx.branch_step, self.ctx.end_step - self.ctx.branch_step,
                                   p["warmup"], p["lr"], p["min_lr"])


def growth_tokens(target_params: float, budget_flops: float) -> float:
    """The paper's growth timing d (tokens): log10 d = 0.88·log10 N + 163.27/log10 C − 5.74 (Eq. 2)."""
    if target_params <= 0 or budget_flops <= 1:
        raise UserError("gstack-plan needs target params > 0 and a budget > 1 FLOP")
    return 10 ** (0.88 * math.log10(target_params) + 163.27 / math.log10(budget_flops) - 5.74)
