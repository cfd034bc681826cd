"""Resumable training state: weights, optimizer, RNG, intervention state and the data cursor.

Saved atomically (temporary directory + rename) to ``TRAJ/state/`` every S updates, so a killed
branch rerun with ``--resume`` continues from the last save and ends with the same weights as an
uninterrupted run. Everything is loadable without unpickling arbitrary objects: weights are
safetensors, tensors go through ``torch.load(weights_only=True)``, the rest is JSON.

An FSDP run (``--sharding fsdp``) saves its state sharded: ``dcp/`` (model + optimizer,
``torch.distributed.checkpoint``, read back on any world size), ``config.json``, one
``intervention.rank{R}.pt`` per rank (its own shards of the intervention's copies) and the same
``train_state.json`` with ``"sharding": "fsdp"`` and the world size that wrote it.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from checkpoints_cache.corrupt import reading_checkpoint
from checkpoints_cache.trajectory import atomic_dir

STATE_DIR = "state"
TRAIN_STATE = "train_state.json"
OPTIMIZER_FILE = "optimizer.pt"
INTERVENTION_FILE = "intervention.pt"
SCALER_FILE = "scaler.pt"


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))


@dataclass
class SavedState:
    """What ``load_state`` returns; ``next_update`` is the data cursor: the index of the next update."""

    path: Path
    next_update: int
    train_state: dict[str, Any]

    def _load(self, name: str) -> Any:
        with reading_checkpoint(self.path / name):  # a damaged state file is named, with what to do
            return torch.load(self.path / name, map_location="cpu", weights_only=True)

    def optimizer_state(self) -> dict[str, Any]:
        return self._load(OPTIMIZER_FILE)

    @property
    def sharding(self) -> str:
        return str(self.train_state.get("sharding", "none"))

    def intervention_state(self, rank: int | None = None) -> dict[str, Any]:
        """The intervention's state (of rank ``rank``, for a sharded state)."""
        name = INTERVENTION_FILE if rank is None or self.sharding == "none" else rank_file(INTERVENTION_FILE, rank)
        return self._load(name) if (self.path / name).exists() else {}

    def intervention_holds_tensors(self) -> bool:
        """Whether the (rank 0) intervention state holds tensors: per-rank shards, for a sharded state."""
        return _has_tensors(self.intervention_state(0))

    def scaler_state(self) -> dict[str, Any] | None:
        return self._load(SCALER_FILE) if (self.path / SCALER_FILE).exists() else None


def write_training_state(
    directory: Path,
    *,
    model: Any,
    optimizer_state: dict[str, Any],
    next_update: int,
    extra: dict[str, Any],
    intervention_state: dict[str, Any] | None = None,
    scaler_state: dict[str, Any] | None = None,
    with_weights: bool = True,
) -> None:
    """Write one complete state directory atomically (``directory`` appears only when complete)."""
    need = tensor_bytes(optimizer_state) + tensor_bytes(intervention_state or {})
    if with_weights:
        need += tensor_bytes(model.state_dict())
    with atomic_dir(directory, need=need) as tmp:
        if with_weights:
            model.save_pretrained(tmp, safe_serialization=True)
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        if intervention_state:
            torch.save(intervention_state, tmp / INTERVENTION_FILE)
        if scaler_state is not None:
            torch.save(scaler_state, tmp / SCALER_FILE)
        info = {"next_update": int(next_update), "step": int(next_update), "rng": rng_state(), **extra}
        (tmp / TRAIN_STATE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def rank_file(name: str, rank: int) -> str:
    stem, _, ext = name.rpartition(".")
    return f"{stem}.rank{rank}.{ext}"


def _has_tensors(obj: Any) -> bool:
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, dict):
        return any(_has_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensors(v) for v in obj)
    return False


def write_sharded_state(
    tmp: Path, *, model: Any, next_update: int, rank: int, extra: dict[str, Any],
    intervention_state: dict[str, Any] | None = None, scaler_state: dict[str, Any] | None = None,
) -> None:
    """The non-DCP part of a sharded state, into the shared temporary folder ``tmp`` (every rank calls it;
    the DCP part is ``resume.fsdp.save_sharded``): this rank's intervention state, and on rank 0 the
    model's config, the scaler and ``train_state.json``."""
    if intervention_state:
        torch.save(intervention_state, tmp / rank_file(INTERVENTION_FILE, rank))
    if rank != 0:
        return
    model.config.save_pretrained(tmp)
    if scaler_state is not None:
        torch.save(scaler_state, tmp / SCALER_FILE)
    info = {"next_update": int(next_update), "step": int(next_update), "rng": rng_state(), **extra}
    (tmp / TRAIN_STATE).write_text(json.dumps(info, indent=1, sort_keys=True) + "\n")


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a (nested) state dict: what writing it needs on disk, about."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def load_state(directory: Path) -> SavedState | None:
    """The saved state in ``directory`` if it is complete, else None."""
    directory = Path(directory)
    meta = directory / TRAIN_STATE
    # resume.fsdp.DCP_DIR / resume.deepspeed_zero.DS_DIR
    sharded = (directory / "dcp" / ".metadata").is_file() or (directory / "deepspeed").is_dir()
    if not meta.is_file() or not ((directory / OPTIMIZER_FILE).is_file() or sharded):
        return None
    with reading_checkpoint(meta):
        info = json.loads(meta.read_text())
    return SavedState(path=directory, next_update=int(info["next_update"]), train_state=info)
