from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(target: list[str], extra_env: dict[str, str] | None = None, check: bool = True,
             processes: int = 2) -> subprocess.CompletedProcess:
    """``target`` (e.g. ``["-m", "resume", "branch", ...]``) under torchrun on CPU processes (gloo), offline."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(REPO), **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *target]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


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
