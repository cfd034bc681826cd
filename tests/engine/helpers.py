from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file


def weights(traj: Path, step: int, sub: str = "") -> dict[str, torch.Tensor]:
    d = Path(traj) / "checkpoints" / f"step{step}"
    if sub:
        d = d / sub
    return load_file(d / "model.safetensors")


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)))


def norm(a: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in a.values())))


def metrics(traj: Path) -> list[dict]:
    return [json.loads(line) for line in (Path(traj) / "metrics.jsonl").read_text().splitlines() if line.strip()]
