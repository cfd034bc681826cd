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

Noise (``noise=α``, default 0; paper App. I.2 as quoted in issue #12, §5.2: α = 0.2 was slightly better, more was worse):
every matrix of the grown model, embeddings and LM head included, becomes W ← (1 − α)·W + α·ε with
ε ~ N(0, σ²), ``noise_var=small`` σ² = 2/(5d) (small_init) or ``noise_var=depth`` σ² = 1/(d·l²), d the
hidden size and l the grown model's number of layers (the paper names l without saying which
model's; we read it as the grown one), drawn from a generator seeded with ``seed`` (default: the
parent's seed). Biases and norms (1-D tensors) stay exact.

Optimizer after growth (``decay=``): ``all`` (default) decays every tensor, as the official code's
``AdamW(model.parameters(), weight_decay=…)``; ``matrices`` keeps the parent's recipe of no decay on
biases and norms.

Choices where the paper is silent (recorded in ``describe()``):
- peak/min LR default to the parent's lr/min_lr (the paper used 3e-4 → 3e-5 for the grown 1.1B);
- warmup defaults to min(parent warmup, ceil(K/10)) so a short branch is not all warmup (the paper
  used 3000 steps of a ~50k-step run).

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


NOISE_VARIANCES = ("small", "depth")


def noise_std(variance: str, hidden: int, layers: int) -> float:
    """σ of the App. I.2 noise: sqrt(2/(5d)) (``small``) or sqrt(1/(d·l²)) (``depth``)."""
    if variance == "small":
        return math.sqrt(2.0 / (5.0 * hidden))
    if variance == "depth":
        return math.sqrt(1.0 / (hidden * layers ** 2))
    raise ValueError(f"unknown noise variance {variance!r}; use one of {NOISE_VARIANCES}")


@torch.no_grad()
def perturb_matrices_(model: torch.nn.Module, alpha: float, std: float, seed: int) -> None:
    """W ← (1 − α)·W + α·ε, ε ~ N(0, std²), on every ≥ 2-D parameter (tied ones once), in
    ``named_parameters`` order from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(int(seed))
    for _, p in model.named_parameters():
        if p.dim() >= 2:
            eps = torch.randn(p.shape, generator=generator, dtype=torch.float32) * std
            p.mul_(1.0 - alpha).add_(eps.to(p.dtype), alpha=alpha)


@torch.no_grad()
def grow_depthwise(model: torch.nn.Module, g: int, noise: float = 0.0, seed: int = 0,
                   noise_var: str = "small") -> torch.nn.Module:
    """The stacked model: layer i of the result is a copy of layer i mod L of ``model``, then the
    App. I.2 noise on every matrix when ``noise`` > 0."""
    prefix = layer_prefix(model)
    num_layers = int(model.config.num_hidden_layers)
    config = grown_config(model.config, g)
    grown = type(model)(config).to(device="cpu", dtype=torch.float32)
    small = model.state_dict()
    new_state = {}
    for key, target in grown.state_dict().items():
        src, _ = source_key(key, prefix, num_layers)
        if src not in small:
            raise UserError(f"gstack cannot map {key!r}: the loaded model has no {src!r}")
        value = small[src].detach().to("cpu", torch.float32).clone()
        if value.shape != target.shape:
            raise UserError(f"gstack shape mismatch for {key!r}: {tuple(value.shape)} vs {tuple(target.shape)}")
        new_state[key] = value
    grown.load_state_dict(new_state, strict=True)
    if noise > 0:
        std = noise_std(noise_var, int(config.hidden_size), int(config.num_hidden_layers))
        perturb_matrices_(grown, noise, std, seed)
    return grown


def decay_every_tensor(optimizer: Any, weight_decay: float) -> None:
    """The official code's ``AdamW(model.parameters())``: the same weight decay on every group."""
    for group in optimizer.param_groups:
        group["weight_decay"] = float(weight_decay)


def restarted_cosine_lr(i: int, length: int, warmup: int, peak: float, floor: float) -> float:
    """Fresh warmup + cosine over the branch (i = updates into the branch, length = K)."""
    if warmup > 0 and i < warmup:
        return peak * i / warmup
    if length <= warmup:
        return peak
    ratio = min(1.0, (i - warmup) / (length - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * ratio))


SUMMARY = (
    "gstack: the paper's depthwise G_stack at the branch step (layers [0..L-1] repeated g times, block norms "
    "with their blocks, embeddings, final norm and head copied), a fresh AdamW decaying every tensor as the "
    "official code (decay=matrices keeps the parent's no-decay groups) and a restarted warmup + cosine, data "
    "continuing at batch N. noise=a is App. I.2: W <- (1-a)W + a*eps on every matrix, embeddings included, "
    "eps ~ N(0, 2/(5d)) or N(0, 1/(d l^2)) (noise_var=small|depth), seeded. Silent in the paper, chosen here: "
    "peak/min LR = the parent's, warmup = min(parent warmup, K/10)."
)


class Gstack(DeclaredIntervention):
    name = "gstack"
    SUMMARY = SUMMARY
    PARAMS = (
        Param("g", int, 4, "growth factor: layers [0..L-1] stacked g times (paper: g=4)", min=1, max=64),
        Param("noise", float, 0.0, "App. I.2 noise weight α: W ← (1−α)W + α·ε on every matrix (paper §5.2: 0.2)",
              min=0.0, max=1.0),
        Param("noise_var", str, "small", "variance of ε: small = 2/(5d), depth = 1/(d·l²) (l: grown layers)",
              choices=NOISE_VARIANCES),
        Param("seed", int, PARENT, "noise seed (default: the parent's seed)", min=0),
        Param("decay", str, "all", "weight decay after growth on all tensors (the official code) or matrices only "
              "(the parent's groups)", choices=("all", "matrices")),
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
        self.weight_decay = float(ctx.recipe.weight_decay)

    def on_load(self, model: Any, ctx: BranchContext) -> Any:
        p = self.params
        return grow_depthwise(model, p["g"], p["noise"], p["seed"], p["noise_var"])

    def fresh_optimizer(self) -> bool:
        return True  # new shapes; the official code starts a fresh AdamW after growth

    def configure_optimizer(self, optimizer: Any) -> None:
        if self.params["decay"] == "all":
            decay_every_tensor(optimizer, self.weight_decay)

    def lr(self, n: int, parent_lr: float) -> float:
        p = self.params
        return restarted_cosine_lr(n - self.ctx.branch_step, self.ctx.end_step - self.ctx.branch_step,
                                   p["warmup"], p["lr"], p["min_lr"])


def growth_tokens(target_params: float, budget_flops: float) -> float:
    """The paper's growth timing d (tokens): log10 d = 0.88·log10 N + 163.27/log10 C − 5.74 (Eq. 2)."""
    if target_params <= 0 or budget_flops <= 1:
        raise UserError("gstack-plan needs target params > 0 and a budget > 1 FLOP")
    return 10 ** (0.88 * math.log10(target_params) + 163.27 / math.log10(budget_flops) - 5.74)
