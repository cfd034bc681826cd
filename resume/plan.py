"""What a branch will do, shown before anything is downloaded or trained: ``BranchPlan``.

The plan lists what will be fetched (weights, index entries, data rows: bytes, and what is
already cached), the disk it needs, the tokens to train (and to replay for a reestimated
optimizer), the FLOPs, the micro-batch and accumulation chosen, and a wall-time estimate with what
it rests on. ``branch --dry-run`` prints it and stops. Others add items with ``plan.add(kind,
bytes, cached, note)`` (e.g. optimizer-state imports) or lines with ``plan.notes.append``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from checkpoints_cache.fetch import check_free_disk, free_disk, human


@dataclass
class PlanItem:
    kind: str  # "weights" | "index entries" | "data rows" | ...
    bytes: int
    cached: bool  # already on this machine (HF cache, partial data store, or a local trajectory)
    note: str = ""  # what exactly: repo@revision file, batches a..b, ...
    where: Path | None = None  # where it lands (for the disk check)


@dataclass
class BranchPlan:
    run: str
    from_step: int
    steps: int
    out: Path
    intervention: str
    items: list[PlanItem] = field(default_factory=list)
    optimizer_mode: str = "fresh"
    optimizer_reason: str = ""
    reestimate: range | None = None
    micro_batch_size: int = 1
    accumulation: int = 1
    world_size: int = 1
    micro_batch_mode: str = "auto"
    micro_batch_reason: str = ""
    batch_size: int = 1
    seq_len: int = 1
    params: int = 0
    flops_per_token: float = 0.0
    output_bytes: int = 0  # what the branch itself writes under --out
    wall_seconds: float | None = None
    wall_basis: str = ""
    notes: list[str] = field(default_factory=list)

    def add(self, kind: str, nbytes: int, cached: bool, note: str = "", where: Path | None = None) -> PlanItem:
        item = PlanItem(kind, int(nbytes), bool(cached), note, where)
        self.items.append(item)
        return item

    # -- totals ---------------------------------------------------------------------------------
    @property
    def fetch_bytes(self) -> int:
        return sum(i.bytes for i in self.items if not i.cached)

    @property
    def cached_bytes(self) -> int:
        return sum(i.bytes for i in self.items if i.cached)

    @property
    def tokens(self) -> int:
        """Tokens trained: K updates x global batch x sequence length."""
        return self.steps * self.batch_size * self.seq_len

    @property
    def reestimate_tokens(self) -> int:
        return (len(self.reestimate) if self.reestimate else 0) * self.batch_size * self.seq_len

    @property
    def flops(self) -> float:
        return self.flops_per_token * (self.tokens + self.reestimate_tokens)

    def disk_needs(self) -> list[tuple[Path, int]]:
        needs = [(i.where, i.bytes) for i in self.items if not i.cached and i.where is not None]
        return needs + [(self.out, self.output_bytes)]

    def check_disk(self) -> None:
        """Refuse before anything is fetched or written when the caches or --out lack room (the error a
        write that ran out of room gives: one line, exit status 1)."""
        check_free_disk(self.disk_needs(), what="the branch", as_write_failure=True)

    def disk_line(self) -> str:
        places = {}
        for where, need in self.disk_needs():
            if need > 0:
                places[where] = places.get(where, 0) + need
        parts = []
        for where, need in places.items():
            free = free_disk(where)
            parts.append(f"{human(need)} at {where} ({human(free)} free{'' if need <= free else ', NOT ENOUGH'})")
        return "; ".join(parts) if parts else "nothing"

    # -- text -----------------------------------------------------------------------------------
    def lines(self) -> list[str]:
        k = self.steps
        out = [f"plan: branch {self.run} from step {self.from_step} for {k} update{'s' if k != 1 else ''} "
               f"({self.intervention}) -> {self.out}"]
        for i in self.items:
            state = "cached" if i.cached else "to fetch"
            out.append(f"  {i.kind:<14} {human(i.bytes):>10}  {state:<8}  {i.note}")
        out.append(f"  to fetch: {human(self.fetch_bytes)}; already here: {human(self.cached_bytes)}")
        if self.reestimate:
            re = f"batches {self.reestimate.start}..{self.reestimate.stop - 1} replayed at lr 0"
        else:
            re = ""
        out.append(f"  optimizer state: {self.optimizer_mode} ({self.optimizer_reason}{'; ' + re if re else ''})")
        return out + self.compute_lines()

    def compute_lines(self) -> list[str]:
        """Disk, tokens, FLOPs, micro-batch and time (what a chunk release's own plan is followed by)."""
        k = self.steps
        out = [f"  disk: {self.disk_line()} (the branch writes ~{human(self.output_bytes)}: checkpoints, "
               "optimizer state, resumable state)"]
        tok = (f"  tokens: {self.tokens:,} to train ({k} x {self.batch_size} rows x {self.seq_len})")
        if self.reestimate_tokens:
            tok += f" + {self.reestimate_tokens:,} replayed to reestimate Adam's moments"
        out.append(tok)
        out.append(f"  compute: {self.flops:.3g} FLOPs ({self.flops_per_token:.3g} per token: 6 x {self.params:,} "
                   "parameters less the input embedding, + attention; PaLM app. B)")
        out.append(f"  micro-batch: {self.micro_batch_size} x {self.accumulation} accumulation step"
                   f"{'s' if self.accumulation != 1 else ''} on {self.world_size} process"
                   f"{'es' if self.world_size != 1 else ''} ({self.micro_batch_mode}: {self.micro_batch_reason})")
        if self.wall_seconds is not None:
            out.append(f"  time: ~{_duration(self.wall_seconds)} ({self.wall_basis})")
        out.extend(f"  note: {n}" for n in self.notes)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": [{"kind": i.kind, "bytes": i.bytes, "cached": i.cached, "note": i.note} for i in self.items],
            "fetch_bytes": self.fetch_bytes,
            "tokens": self.tokens,
            "reestimate_tokens": self.reestimate_tokens,
            "flops": self.flops,
            "micro_batch_size": self.micro_batch_size,
            "accumulation": self.accumulation,
            "micro_batch": {"mode": self.micro_batch_mode, "reason": self.micro_batch_reason},
            "wall_seconds_estimate": self.wall_seconds,
            "wall_basis": self.wall_basis,
        }


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 86400 * 3:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


# -- FLOPs and time --------------------------------------------------------------------------------
def flops_per_token(config: dict[str, Any], params: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 N + 12 L d T (PaLM appendix B, as scripts/bench_engine.py), N the
    parameters without the input embedding (a lookup, no multiply)."""
    d = int(config.get("hidden_size") or config.get("n_embd"))
    layers = int(config.get("num_hidden_layers") or config.get("n_layer"))
    vocab = int(config["vocab_size"])
    return 6.0 * (params - vocab * d) + 12.0 * layers * d * seq_len


# Share of the matmul probe's rate one training update reaches (forward + backward + AdamW): an
# assumption, checked against the engine benchmarks on this project's CPU (benchmarks/RESULTS.md).
UPDATE_EFFICIENCY = {"cpu": 0.5, "cuda": 0.4}


@lru_cache(maxsize=4)
def matmul_rate(device: str = "cpu", dtype_name: str = "float32") -> float:
    """FLOP/s of a square matmul on ``device``, measured for ~0.2 s."""
    import torch

    dtype = getattr(torch, dtype_name)
    n = 1024 if device == "cpu" else 4096
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm up
    if device != "cpu":
        torch.cuda.synchronize()
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.2:
        a @ b
        count += 1
    if device != "cpu":
        torch.cuda.synchronize()
    return 2.0 * n ** 3 * count / (time.perf_counter() - t0)


def estimate_wall(plan: BranchPlan, device: str, precision: str) -> None:
    """Fill ``plan.wall_seconds`` from a matmul probe on this device and the assumed efficiency."""
    dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32") if device != "cpu" else "float32"
    rate = matmul_rate(device, dtype)
    eff = UPDATE_EFFICIENCY["cpu" if device == "cpu" else "cuda"]
    plan.wall_seconds = plan.flops / (rate * eff * max(plan.world_size, 1))
    plan.wall_basis = (f"a {dtype} matmul probe measured {rate / 1e9:.0f} GFLOP/s on this {device}; training is assumed "
                       f"to run at {int(eff * 100)}% of it on each of {plan.world_size} process"
                       f"{'es' if plan.world_size != 1 else ''}; downloads not included")
