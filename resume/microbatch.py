"""``--micro-batch-size auto``: the largest micro-batch that divides the per-rank batch and fits.

On CPU the choice rests on an estimate, not a probe: a probe forward/backward of a released-size
model at sequence length 2048 takes seconds to minutes on a CPU, and RSS says little about what a
second micro-batch would add. The estimate (calibrated with ``scripts/bench_memory.py``, see
benchmarks/RESULTS.md) is, in bytes::

    static  = process baseline (python + torch + transformers, ~0.4 GB)
            + 16 * P            (fp32 weights, gradients, Adam's two moments)
            + 4 * P             (one more copy of the weights: loading, saving)
            + 3 * logits chunk  (resume/loss.py: forward and backward of one chunk of the LM head)
    per row = 1.5 * 4 * T * (L * (10 d + c * I) + 2 d)   (c = 2 for GPT-NeoX's MLP, 4 for gated ones)

The per-row term is what autograd saves for backward (measured with saved-tensor hooks: 10 d +
2 I floats per token and layer for GPT-NeoX, 10 d + 4 I for Llama; it matches the measured saved
bytes of the pythia-14m and -160m shapes to 1%), times 1.5 for the activation gradients and
temporaries alive during backward (the measured peak-RSS growth per row is 1.07x the saved bytes
for the 160m shape and 1.3x for the 14m one; benchmarks/RESULTS.md). It is compared with 85% of the memory
available now (``MemAvailable``, or the cgroup limit if lower), shared by the processes of this
machine.

On a GPU the choice rests on a probe: a forward/backward at the real sequence length of a model
built from the config on the device, at micro-batch 1 and 2 to measure the bytes per row, then at
the predicted choice to check it (stepping down on an out-of-memory error). GPU figures have not
been measured on this project's machines.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from checkpoints_cache.errors import UserError

PROCESS_BASE_BYTES = 450 << 20  # measured ru_maxrss after importing torch + transformers: 0.40 GB
BUDGET_FRACTION = 0.85


@dataclass
class MemoryEstimate:
    """Bytes one training process needs at micro-batch ``micro``: ``static + micro * per_row``."""

    micro: int
    params: int
    static: int
    per_row: int
    full_logits_per_row: int = 0  # the old full-logits loss only (scripts/bench_memory.py "before")

    @property
    def total(self) -> int:
        return self.static + self.micro * (self.per_row + self.full_logits_per_row)


@dataclass
class MicroBatchChoice:
    micro_batch_size: int
    accumulation: int
    mode: str  # "auto" | "given"
    reason: str  # what the choice rests on, in words (printed in the plan, kept in trajectory.json)
    estimate_bytes: int | None = None
    available_bytes: int | None = None
    seconds_per_micro_batch: float | None = None  # measured by the GPU probe
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"micro_batch_size": self.micro_batch_size, "accumulation": self.accumulation, "mode": self.mode,
                "reason": self.reason, "estimate_bytes": self.estimate_bytes, "available_bytes": self.available_bytes}


# -- the model's size ----------------------------------------------------------------------------
def hf_config(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    cfg = dict(config)
    model_type = cfg.pop("model_type")
    for key in ("transformers_version", "_name_or_path", "architectures"):
        cfg.pop(key, None)
    return AutoConfig.for_model(model_type, **cfg)


def param_count(config: dict[str, Any]) -> int:
    """Parameters of the model ``config`` describes (``resume.memory``: the model on the meta device), or
    the usual 12 L d^2 + 2 V d for a model class transformers does not ship."""
    from resume.memory import parameter_count

    n = parameter_count(config)
    if n is None:
        d, L, V = _dims(config)[:3]
        return 12 * L * d * d + 2 * V * d
    return n


def _dims(config: dict[str, Any]) -> tuple[int, int, int, int]:
    d = int(config.get("hidden_size") or config.get("n_embd"))
    layers = int(config.get("num_hidden_layers") or config.get("n_layer"))
    vocab = int(config["vocab_size"])
    inter = int(config.get("intermediate_size") or config.get("n_inner") or 4 * d)
    return d, layers, vocab, inter


def activation_bytes_per_row(config: dict[str, Any], seq_len: int, bytes_per_value: int = 4) -> int:
    """Bytes autograd saves for backward per sequence (see the module docstring)."""
    d, layers, _, inter = _dims(config)
    c = 2 if config.get("model_type") == "gpt_neox" else 4  # GELU MLP vs gated (SwiGLU) MLP
    return bytes_per_value * seq_len * (layers * (10 * d + c * inter) + 2 * d)


def cpu_estimate(config: dict[str, Any], micro: int, seq_len: int, *, full_logits: bool = False,
                 params: int | None = None) -> MemoryEstimate:
    from resume.loss import LOGITS_CHUNK_BYTES

    params = param_count(config) if params is None else params
    _, _, vocab, _ = _dims(config)
    static = PROCESS_BASE_BYTES + 20 * params + 3 * LOGITS_CHUNK_BYTES
    per_row = int(1.5 * activation_bytes_per_row(config, seq_len))
    # The old loss: fp32 logits, their float copy / log-softmax and its gradient, per row (measured 3.3x).
    logits = int(3.5 * 4 * seq_len * vocab) if full_logits else 0
    return MemoryEstimate(micro, params, static, per_row, logits)


def available_memory() -> int:
    """Bytes this process may still use: MemAvailable, or the cgroup's limit minus its usage if lower."""
    import psutil

    avail = int(psutil.virtual_memory().available)
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 1 << 60:
            avail = min(avail, int(limit) - usage)
        break
    return max(avail, 0)


def divisors(n: int) -> list[int]:
    return [b for b in range(1, n + 1) if n % b == 0]


def _per_rank(batch_size: int, world_size: int) -> int:
    if batch_size % world_size:
        raise UserError(f"global batch {batch_size} cannot be split over {world_size} processes; use a world size "
                        f"that divides it ({', '.join(map(str, divisors(batch_size)[:8]))}, ...)")
    return batch_size // world_size


def _size(n: int) -> str:
    from checkpoints_cache.fetch import human

    return human(n)


def parse_micro_batch(value: str | int | None) -> int | None:
    """``auto`` (or None) -> None; a positive integer -> itself; anything else: a one-line error."""
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        b = int(str(value))
    except ValueError:
        raise UserError(f"--micro-batch-size {value!r}: use auto or a positive integer that divides the batch") from None
    if b <= 0:
        raise UserError(f"--micro-batch-size {b}: use auto or a positive integer that divides the batch")
    return b


def choose_micro_batch(
    requested: int | None, config: dict[str, Any], batch_size: int, world_size: int, seq_len: int, *,
    device: str = "cpu", available: int | None = None, local_processes: int | None = None,
    probe: Callable[[int], int] | None = None,
) -> MicroBatchChoice:
    """The micro-batch a run uses: ``requested`` if it divides the per-rank batch and fits, else the
    largest that fits (``requested`` None = auto). One clear UserError when nothing fits."""
    per_rank = _per_rank(batch_size, world_size)
    if requested is not None and per_rank % requested:
        fits = [b for b in divisors(per_rank)]
        raise UserError(
            f"--micro-batch-size {requested} must divide the global batch {batch_size} over {world_size} process(es) "
            f"({per_rank} rows each); use one of {', '.join(map(str, fits[-8:]))} or auto"
        )
    if device != "cpu" and probe is not None:
        return _choose_by_probe(requested, per_rank, probe, available)
    params = param_count(config)
    local = local_processes or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    avail = (available_memory() if available is None else available) // max(local, 1)
    budget = int(BUDGET_FRACTION * avail)
    est = {b: cpu_estimate(config, b, seq_len, params=params) for b in divisors(per_rank)}
    fitting = [b for b, e in est.items() if e.total <= budget]
    basis = (f"CPU estimate: {_size(est[1].static)} for weights, gradients, Adam moments and the loss chunk, plus "
             f"{_size(est[1].per_row)} per row of {seq_len} tokens, against {int(BUDGET_FRACTION * 100)}% of the "
             f"{_size(avail)} available" + (f" to each of {local} processes" if local > 1 else ""))
    if requested is not None:
        e = est[requested]
        if e.total > budget:
            best = f"the largest that fits is {max(fitting)} (auto picks it)" if fitting else "not even 1 fits"
            raise UserError(
                f"--micro-batch-size {requested} needs about {_size(e.total)} on this machine but {_size(avail)} is available "
                f"({basis}); {best}"
            )
        return MicroBatchChoice(requested, per_rank // requested, "given", f"as given; fits the {basis}", e.total, avail)
    if not fitting:
        raise UserError(
            f"even micro-batch 1 needs about {_size(est[1].total)} but {_size(avail)} is available on this machine "
            f"({basis}); use a machine with more memory or a GPU"
        )
    b = max(fitting)
    return MicroBatchChoice(b, per_rank // b, "auto", f"largest divisor of {per_rank} rows that fits; {basis}",
                            est[b].total, avail)


def _choose_by_probe(requested: int | None, per_rank: int, probe: Callable[[int], int], total: int | None) -> MicroBatchChoice:
    """``probe(b)`` runs one forward/backward at micro-batch b and returns the peak bytes, or raises
    MemoryError when it does not fit. Predict from b = 1 and 2, check the prediction, step down."""
    cands = divisors(per_rank)
    if requested is not None:
        try:
            peak = probe(requested)
        except MemoryError:
            raise UserError(f"--micro-batch-size {requested} does not fit this GPU (a probe forward/backward ran out of "
                            "memory); use a smaller one or auto") from None
        return MicroBatchChoice(requested, per_rank // requested, "given", "as given; a probe forward/backward fits",
                                peak, total)
    try:
        p1 = probe(1)
    except MemoryError:
        raise UserError("even micro-batch 1 does not fit this GPU (the probe forward/backward ran out of memory); "
                        "use a GPU with more memory or FSDP over several") from None
    p2 = p1
    if per_rank >= 2:
        try:
            p2 = probe(2)
        except MemoryError:
            return MicroBatchChoice(1, per_rank, "auto", "probe: micro-batch 2 ran out of memory", p1, total)
    per_row = max(p2 - p1, 1)
    limit = int(BUDGET_FRACTION * total) if total else None
    predicted = [b for b in cands if limit is None or p1 + (b - 1) * per_row <= limit] or [1]
    for b in sorted(predicted, reverse=True):
        try:
            peak = probe(b) if b > 2 else (p2 if b == 2 else p1)
        except MemoryError:
            continue
        return MicroBatchChoice(b, per_rank // b, "auto",
                                f"GPU probe at the real sequence length: {_size(p1)} at 1 row, {_size(per_row)} more per row; "
                                f"{b} rows peaked at {_size(peak)}", peak, total)
    return MicroBatchChoice(1, per_rank, "auto", "GPU probe: only micro-batch 1 fits", p1, total)


def gpu_probe(config: dict[str, Any], seq_len: int, precision: str, device: str = "cuda") -> Callable[[int], int]:
    """A ``probe(b)`` for ``_choose_by_probe``: forward/backward of the model ``config`` describes (random
    weights, fp32 master copy, autocast to ``precision``) at micro-batch b; peak allocated bytes
    including the 8 bytes per parameter Adam's moments will take. Raises MemoryError on OOM."""
    import torch
    from transformers import AutoModelForCausalLM

    from resume.loss import CausalLMLoss

    model = AutoModelForCausalLM.from_config(hf_config(config)).to(device)
    wrapper = CausalLMLoss(model)
    params = sum(p.numel() for p in model.parameters())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    vocab = _dims(config)[2]

    def probe(b: int) -> int:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            rows = torch.randint(0, vocab, (b, seq_len + 1), device=device)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = wrapper(rows[:, :-1], rows[:, 1:])
            loss.backward()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() + 8 * params
        except torch.cuda.OutOfMemoryError:
            raise MemoryError(f"micro-batch {b}") from None
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
        return peak

    return probe
