"""How much memory training a model needs, from its config alone (for plans: "a 65B branch needs many GPUs").

The parameter count comes from instantiating the transformers model on the meta device (accelerate's
``init_empty_weights``: no memory, exact for any architecture). Training holds, per parameter, fp32
weights, fp32 gradients and AdamW's two fp32 moments: 16 bytes (bf16 autocast keeps fp32 master
weights, as the parents did: Amber bf16-mixed, K2 Megatron bf16 with fp32 main params). Activations
come on top and depend on micro-batch and checkpointing, so the GPU count is a lower bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

BYTES_PER_PARAM = 16  # fp32 weight + gradient + AdamW exp_avg + exp_avg_sq
GPU_BYTES = 80e9  # an 80 GB accelerator (A100/H100 80GB)


@lru_cache(maxsize=16)
def _count(config_json: str) -> int:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = dict(json.loads(config_json))
    model_type = cfg.pop("model_type")
    cfg.pop("architectures", None)
    config = AutoConfig.for_model(model_type, **cfg)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return int(sum(p.numel() for p in model.parameters()))


def parameter_count(model_config: dict[str, Any]) -> int | None:
    """Parameters of the model ``model_config`` (HF config keys) describes, or None if transformers cannot build it."""
    if not model_config.get("model_type"):
        return None
    try:
        return _count(json.dumps(model_config, sort_keys=True, default=str))
    except Exception:  # an architecture transformers does not know (or remote code): no estimate
        return None


@dataclass(frozen=True)
class MemoryEstimate:
    params: int
    train_bytes: int  # weights + gradients + AdamW moments, fp32

    @property
    def min_gpus(self) -> int:
        return max(1, math.ceil(self.train_bytes / GPU_BYTES))

    def line(self) -> str:
        from checkpoints_cache.fetch import human

        where = _this_machine()
        many = " -- this branch only runs on many GPUs" if self.min_gpus >= 8 else ""
        return (f"memory: {_count_text(self.params)} parameters; training state {human(self.train_bytes)} (fp32 weights, "
                f"gradients and AdamW moments, {BYTES_PER_PARAM} B/parameter) plus activations: at least "
                f"{self.min_gpus} GPU(s) of 80 GB with the state sharded (FSDP){many}; {where}")


def _count_text(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n:,}"


def estimate(model_config: dict[str, Any]) -> MemoryEstimate | None:
    n = parameter_count(model_config)
    return None if n is None else MemoryEstimate(n, n * BYTES_PER_PARAM)


def _this_machine() -> str:
    import torch

    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        gb = torch.cuda.get_device_properties(0).total_memory / 1e9
        return f"this machine has {n} GPU(s) of {gb:.0f} GB"
    return "this machine has no GPU"
