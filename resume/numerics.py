"""NeoX numerics: train a branch of a GPT-NeoX-trained parent the way GPT-NeoX trained it (``--numerics neox``).

Where HF's GPT-NeoX and branchpoint's engine differ from what GPT-NeoX ran (neox_fidelity.md "What differs"):

1. Rotary tables: DeepSpeed cast the whole module to the half precision, ``inv_freq`` included, and NeoX then
   built the angles in that dtype (positions ``type_as(inv_freq)``, the outer product, cos/sin); HF builds
   them in fp32. At fp16 the angles are off by up to 0.374 rad for 64-dim heads (§1).
   ``NeoXRotaryEmbedding`` replaces the model's rotary module with one that builds them as NeoX did.
2. GELU: ``bias-gelu-fusion`` made NeoX use the tanh approximation; the released config says ``gelu`` (erf).
   The MLP activations become transformers' ``gelu_pytorch_tanh`` (§2).
3. fp16: DeepSpeed's dynamic loss scaler (initial scale 2^12, window 1000, hysteresis 2, minimum 1) skips an
   update on overflow without stepping the LR schedule (§3). ``NeoXLossScaler`` is that scaler; the engine
   skips, consumes the batch and shifts the schedule (``TrainJob.loss_scaler``, ``schedule_offset``).

The patches touch no parameter and no persistent buffer, so checkpoints stay plain HF checkpoints;
``trajectory.json`` records the mode. ``hf`` is transformers' behaviour, unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable

import torch
from torch import nn

from checkpoints_cache.errors import UserError

NUMERICS_MODES = ("neox", "hf")
HALF_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def default_numerics(neox_family: bool) -> str:
    """``neox`` for parents trained by GPT-NeoX (the Pythia runs and their branches), ``hf`` otherwise."""
    return "neox" if neox_family else "hf"


def check_numerics(mode: str, model_type: str | None) -> None:
    if mode not in NUMERICS_MODES:
        raise UserError(f"--numerics {mode!r}: use one of {', '.join(NUMERICS_MODES)}")
    if mode == "neox" and model_type not in (None, "gpt_neox"):
        raise UserError(f"--numerics neox applies to GPT-NeoX models only; this parent is {model_type!r} (use --numerics hf)")


# -- 1. rotary tables as NeoX built them --------------------------------------------------------------------
def neox_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    """``1 / base^(arange(0, dim, 2) / dim)`` in fp32, as NeoX's RotaryEmbedding.__init__ computes it."""
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2).float() / rotary_dim))


def neox_rotary_tables(positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the rotary angles computed in ``dtype`` as NeoX did under DeepSpeed fp16/bf16
    (neox_fidelity.md §1): positions and ``inv_freq`` in ``dtype``, their product rounded to ``dtype``,
    cos/sin of that angle rounded to ``dtype``. Shapes: positions [..., T] -> [..., T, rotary_dim]."""
    t = positions.to(dtype)
    freqs = t[..., None] * inv_freq.to(device=positions.device, dtype=dtype)  # the 'i,j->ij' einsum, in half
    emb = torch.cat((freqs, freqs), dim=-1)
    # cos/sin of a half tensor are evaluated in fp32 and rounded (as CUDA's half kernels do): do it explicitly
    return emb.float().cos().to(dtype), emb.float().sin().to(dtype)


class NeoXRotaryEmbedding(nn.Module):
    """Drop-in for ``GPTNeoXRotaryEmbedding`` (same forward signature and outputs) with NeoX's half-precision
    tables. ``inv_freq`` is a non-persistent buffer: checkpoints are unchanged."""

    def __init__(self, config: Any, dtype: torch.dtype):
        super().__init__()
        rope = getattr(config, "rope_parameters", None) or {}
        if rope.get("rope_type", "default") != "default":
            raise UserError(f"--numerics neox: rope type {rope.get('rope_type')!r} is not NeoX's rotary embedding")
        head = config.hidden_size // config.num_attention_heads
        pct = rope.get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0))
        base = rope.get("rope_theta", getattr(config, "rotary_emb_base", 10000))
        self.rotary_dim = int(head * pct)
        self.dtype_half = dtype
        self.register_buffer("inv_freq", neox_inv_freq(self.rotary_dim, float(base)), persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = neox_rotary_tables(position_ids, self.inv_freq, self.dtype_half)
        return cos.to(x.dtype), sin.to(x.dtype)


# -- 2. tanh GELU -------------------------------------------------------------------------------------------
def tanh_gelu() -> nn.Module:
    """The tanh-approximate GELU of NeoX's fused bias-GELU (0.5 x (1 + tanh(0.79788456 x (1 + 0.044715 x^2))),
    neox_fidelity.md §2): transformers' ``gelu_pytorch_tanh``, whose sqrt(2/pi) differs from NeoX's truncated
    constant by 1e-9 relative, far below half precision."""
    from transformers.activations import ACT2FN

    return ACT2FN["gelu_pytorch_tanh"]


def apply_numerics(model: nn.Module, mode: str, precision: str) -> nn.Module:
    """Patch ``model`` in place for ``mode``; ``precision`` is the parent's training precision (the rotary
    tables are built in it even when the branch computes in fp32 on CPU). Returns the model."""
    check_numerics(mode, getattr(model.config, "model_type", None))
    if mode == "hf":
        return model
    from transformers.models.gpt_neox.modeling_gpt_neox import GPTNeoXMLP

    for module in model.modules():
        if isinstance(module, GPTNeoXMLP):
            module.act = tanh_gelu()
    half = HALF_DTYPES.get(precision)
    base = getattr(model, "gpt_neox", None)
    if half is not None and base is not None:  # fp32 parents built fp32 tables, as HF does
        device = base.rotary_emb.inv_freq.device
        base.rotary_emb = NeoXRotaryEmbedding(model.config, half).to(device)
    return model


def describe_numerics(mode: str, precision: str, scaler: "NeoXLossScaler | None") -> dict[str, Any]:
    """What trajectory.json records about the numerics of a branch."""
    if mode == "hf":
        return {"mode": "hf"}
    half = precision if precision in HALF_DTYPES else None
    return {"mode": "neox", "rotary_tables": half or "fp32", "gelu": "tanh",
            "loss_scaler": scaler.state_dict() if scaler is not None else None}


# -- 3. DeepSpeed's dynamic loss scaler ----------------------------------------------------------------------
@dataclass
class NeoXLossScaler:
    """``deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler`` as Pythia ran it: the Pythia ymls set
    ``loss_scale 0`` (dynamic), ``initial_scale_power 12``, ``loss_scale_window 1000``, ``hysteresis 2``,
    ``min_loss_scale 1`` (pythia.md §2.1, neox_fidelity.md §3). On overflow the update is skipped; the
    scale halves only once the hysteresis is used up; after ``scale_window`` clean iterations it doubles."""

    cur_scale: float = 2.0**12
    cur_iter: int = 0
    last_overflow_iter: int = -1
    scale_factor: float = 2.0
    scale_window: int = 1000
    min_scale: float = 1.0
    delayed_shift: int = 2  # hysteresis
    cur_hysteresis: int = 2
    consecutive_hysteresis: bool = False

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> "NeoXLossScaler":
        """From a saved state or an imported ``optimizer.json`` ``loss_scale`` (extra keys ignored)."""
        if not state:
            return cls()
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in state.items() if k in known}
        if "cur_hysteresis" not in kwargs and "delayed_shift" in kwargs:
            kwargs["cur_hysteresis"] = kwargs["delayed_shift"]
        return cls(**kwargs)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            if hasattr(self, k):
                setattr(self, k, v)

    @property
    def loss_scale(self) -> float:
        return float(self.cur_scale)

    def unscale_and_check(self, params: Iterable[torch.Tensor]) -> bool:
        """Divide the gradients by the scale and say whether any is inf/NaN -- the overflow that makes
        DeepSpeed skip the update. (DeepSpeed multiplies by 1/scale: the same for its power-of-two scales,
        and division stays exact where 1/scale would be subnormal.)"""
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return False
        sharded = [hasattr(g, "to_local") for g in grads]
        grads = [g.to_local() if s else g for g, s in zip(grads, sharded)]  # FSDP: this rank's shards
        for g in grads:
            g.div_(self.loss_scale)
        overflow = ~torch.stack([torch.isfinite(g).all() for g in grads]).all()
        if any(sharded):  # an overflow on any rank's shard skips the update everywhere, as in DeepSpeed
            flag = overflow.to(grads[0].device, torch.int32)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            overflow = flag > 0
        return bool(overflow)

    def update_scale(self, overflow: bool) -> None:
        """DynamicLossScaler.update_scale (DeeperSpeed deepspeed/runtime/fp16/loss_scaler.py)."""
        if overflow:
            if self.delayed_shift == 1 or self.cur_hysteresis == 1:
                self.cur_scale = max(self.cur_scale / self.scale_factor, self.min_scale)
            else:
                self.cur_hysteresis -= 1
            self.last_overflow_iter = self.cur_iter
        else:
            if self.consecutive_hysteresis:
                self.cur_hysteresis = self.delayed_shift
            if (self.cur_iter - self.last_overflow_iter) % self.scale_window == 0:
                if not self.consecutive_hysteresis:
                    self.cur_hysteresis = self.delayed_shift
                self.cur_scale *= self.scale_factor
        self.cur_iter += 1
