"""LAWA's window: the latest k raw-weight snapshots, held once, written once.

Held by the main process only (the other ranks of a DDP run hold none: their weights are the
same). Every snapshot is written once, as ``<root>/step{S}.safetensors``, when it is taken; the
resumable state refers to those files by name instead of carrying the tensors (before, every save
rewrote all k snapshots). With ``store="host"`` the main process also keeps the k snapshots in
memory (fast averages); with ``store="disk"`` nothing stays in memory and an average streams the
files tensor by tensor (``weights.uniform_mean_of_files``; the same arithmetic, bit for bit).

Without a root directory (an intervention used on its own, outside a branch) the window lives in
memory and the state carries the tensors.

Sharded training (``--sharding fsdp``): a snapshot taken of the sharded model is written by every
rank, each its own rows, as ``<root>/step{S}/rank{R}.safetensors`` (no gather); with ``store="host"``
each rank keeps its shards in memory. Snapshots taken before sharding (the window at the branch step)
stay whole files written by the main process. Averages read only this rank's rows of either kind,
so a window saved on W ranks reads back on any other number of ranks.

Files that left the window are deleted once no saved state can still refer to them (the two
latest ``state()`` calls: the rolling state on disk is the latest one or, if writing it was
interrupted, the one before).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Any, Callable

from .weights import (
    SnapshotReader,
    Weights,
    is_main_process,
    load_weights,
    nbytes,
    save_shards,
    save_weights,
    uniform_mean,
    uniform_mean_of_files,
)

STORES = ("disk", "host")


def snapshot_name(step: int) -> str:
    return f"step{step}.safetensors"


class SnapshotWindow:
    def __init__(self, k: int, root: Path | None, store: str = "disk"):
        if store not in STORES:
            raise ValueError(f"store {store!r}: use one of {STORES}")
        self.k = int(k)
        self.root = None if root is None else Path(root)
        self.store = store
        self.steps: deque[int] = deque()
        self.memory: dict[int, Weights] = {}  # step -> weights, on the main process (host store, or no root)
        self.main = is_main_process()
        self._referenced: deque[set[int]] = deque(maxlen=2)

    # -- what is held -------------------------------------------------------------------------------
    @property
    def in_memory(self) -> bool:
        return self.root is None or self.store == "host"

    def path(self, step: int) -> Path:
        """The snapshot's file, or its folder of per-rank shards (sharded training)."""
        assert self.root is not None
        folder = self.root / f"step{step}"
        return folder if folder.is_dir() else self.root / snapshot_name(step)

    def __len__(self) -> int:
        return len(self.steps)

    def held_bytes(self) -> int:
        """Bytes of snapshot tensors this process holds in memory."""
        return sum(nbytes(w) for w in self.memory.values())

    # -- adding -------------------------------------------------------------------------------------
    def add(self, step: int, take: Callable[[], Weights], shards: "tuple[dict, dict, int, int] | None" = None) -> None:
        """Take the snapshot of ``step`` (``take()`` is called on the main process only). ``shards``: the
        model is sharded and ``take()`` returns this rank's shards, called on every rank: (rows, shapes,
        rank, world) of them (``weights.shard_rows``)."""
        from resume.sharding import active

        if self.steps and step <= self.steps[-1]:
            if step == self.steps[-1]:
                return
            raise ValueError(f"snapshot steps must increase: {step} after {self.steps[-1]}")
        self.steps.append(step)
        if shards is not None:
            weights = take()
            if self.root is not None:
                rows, shapes, rank, world = shards
                save_shards(self.root / f"step{step}", weights, rows, shapes, rank, world)
                import torch.distributed as dist

                dist.barrier()  # every rank's shard is on disk before any rank reads the snapshot
            if self.in_memory:
                self.memory[step] = weights
        elif self.main:
            weights = take()
            if self.root is not None:
                save_weights(self.path(step), weights)
            # a whole snapshot of a branch about to be sharded is read back by rows (each rank its own)
            if self.in_memory and (self.root is None or active() != "fsdp"):
                self.memory[step] = weights
        while len(self.steps) > self.k:
            old = self.steps.popleft()
            self.memory.pop(old, None)
        self._prune()

    # -- the average ---------------------------------------------------------------------------------
    def mean(self, rows: dict[str, tuple[int, int]] | None = None) -> Weights:
        """Uniform mean of the window in step order (main process only; with ``rows``, every rank of a
        sharded model, each over its own rows)."""
        if not self.steps:
            raise ValueError("the LAWA window is empty")
        if self.in_memory:
            for s in self.steps:
                if s not in self.memory:  # after a resume (or taken before sharding): read the file once
                    self.memory[s] = _read(self.path(s), rows)
            return uniform_mean(self.memory[s] for s in self.steps)
        return uniform_mean_of_files([self.path(s) for s in self.steps], rows)

    def snapshots(self) -> list[tuple[int, Weights]]:
        """(step, weights) of the window, loaded where they are on disk (for inspection and tests)."""
        return [(s, self.memory[s] if s in self.memory else _read(self.path(s))) for s in self.steps]

    # -- resumable state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        if self.root is None:
            return {"snapshots": [(s, self.memory[s]) for s in self.steps]}
        self._referenced.append(set(self.steps))
        self._prune()
        return {"snapshot_files": [(s, snapshot_name(s)) for s in self.steps]}

    def load(self, state: dict[str, Any]) -> None:
        self.steps.clear()
        self.memory.clear()
        if "snapshot_files" in state and self.root is not None:
            for step, _ in state["snapshot_files"]:
                self.steps.append(int(step))
            self._referenced.append(set(self.steps))
        for step, weights in state.get("snapshots", []):  # in-memory windows (and states of older versions)
            self.steps.append(int(step))
            if self.main:
                self.memory[int(step)] = {n: t.to("cpu") for n, t in weights.items()}
                if self.root is not None:
                    save_weights(self.path(int(step)), self.memory[int(step)])
        while len(self.steps) > self.k:
            self.memory.pop(self.steps.popleft(), None)
        if not self.in_memory:
            self.memory.clear()

    def discard_files(self) -> None:
        """Remove the snapshot folder (and the branch folder if that leaves it empty)."""
        import shutil

        if self.root is None or not self.main:
            return
        shutil.rmtree(self.root, ignore_errors=True)
        parent = self.root.parent
        if parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()

    def _prune(self) -> None:
        """Delete snapshot files no longer in the window nor named by a recent saved state."""
        if self.root is None or not self.main or not self.root.is_dir():
            return
        import shutil

        keep = set(self.steps).union(*self._referenced) if self._referenced else set(self.steps)
        for f in self.root.glob("step*"):
            step = f.name[len("step"):].removesuffix(".safetensors")
            if step.isdigit() and int(step) not in keep:
                if f.is_dir():
                    shutil.rmtree(f, ignore_errors=True)
                else:
                    f.unlink(missing_ok=True)


def _read(path: Path, rows: dict[str, tuple[int, int]] | None = None) -> Weights:
    """A snapshot's tensors (only ``rows`` of the named ones, where given)."""
    if rows is None and path.is_file():
        return load_weights(path)
    reader = SnapshotReader(path)
    return {n: reader.get(n, (rows or {}).get(n)) for n in reader.keys()}
