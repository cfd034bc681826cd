"""LAWA: latest weight averaging (Sanyal et al. 2023; Kaddour 2022),
``lawa:k=K,every=E,mode=replace|eval,window=run|branch,store=disk|host``.

The window holds the latest k checkpoints *of the run* on the snapshot grid, and the average is
their uniform mean (methods.md §1.1: uniform mean, k = 5 in the official code; Kaddour's
θ_E = (1/k)·Σ θ_{E−k+1..E}, §1.2):

- snapshot grid: with ``every=E``, the steps t with t % E == 0; by default (no ``every``), the
  parent's own checkpoint steps (Pythia: 1000, 2000, ...; in the log-spaced region 128, 256, 512,
  1000, ...), continued past the parent's last checkpoint at its last spacing, so snapshots always
  land on grid steps. The resolved ``every`` records the parent's spacing at N (the gap to its next
  checkpoint) and ``grid`` says which rule was used.
- ``window=run`` (default): at the branch step N the window is filled with the parent's latest k
  checkpoints at or before N that lie on the snapshot grid (read through the run's card, i.e.
  fetched into the HF cache when the parent is a released run), so the first average after N is
  already over k checkpoints, as the seed text asks ("take the last M ≈ 10 checkpoints"). Where
  the parent lacks one (a branch used as parent holds none before its own branch step), the window
  stops there and a warning says how many it holds.
  ``window=branch``: the window starts empty; the branch step counts when it is on the grid.
- After N, the raw training weights at every grid step are added; the oldest leaves the window.

Modes:
- ``replace`` (what users asked for, issue #5): at each snapshot step after N, the average is
  copied into the training weights (in place, dtype kept) and training continues with the
  optimizer state untouched; ``checkpoints/stepS`` then holds the replaced weights. The branch step
  itself is not replaced: the branch starts from the parent's weights at N. Differs from both
  papers, whose averages never feed back into training (methods.md §1.2, checklist 1).
- ``eval`` (what the paper's code does): training is untouched; the average is written to
  ``checkpoints/stepS/averaged/`` at every saved step (at N: the mean of the parent's window).

Memory and disk (several processes: only the main process holds snapshots; a replacement reaches
the other ranks by broadcast): every snapshot is written once to ``TRAJ/lawa/stepS.safetensors``
and the resumable state names those files. Under ``--sharding fsdp`` every rank snapshots and
averages its own shards (``TRAJ/lawa/stepS/rank{R}.safetensors``) and replaces its own shards: no
broadcast, and no gather but for ``averaged/`` at a saved step. ``store=disk`` (default) keeps nothing in memory and
streams the files when averaging; ``store=host`` also keeps the k snapshots in host memory.
"""

from __future__ import annotations

import sys
from typing import Any

from checkpoints_cache.errors import UserError

from .base import BranchContext
from .params import PARENT, DeclaredIntervention, Param
from .snapshots import STORES, SnapshotWindow
from .weights import (
    Weights,
    broadcast_parameters,
    checkpoint_weights,
    copy_into,
    cpu_snapshot,
    full_state_dict,
    holds_copies,
    is_main_process,
    shard_rows,
)

SNAPSHOT_DIR = "lawa"

SUMMARY = (
    "LAWA: uniform mean of the run's latest k checkpoints on the snapshot grid (the parent's checkpoints "
    "by default; every=E for multiples of E). window=run fills the window at N with the parent's own "
    "checkpoints, so the first average after N is over k; mode=eval writes it to averaged/ as the paper's "
    "offline code does, mode=replace (not in the papers) copies it into the training weights at each "
    "snapshot step, optimizer state untouched."
)


def parent_spacing(grid: list[int], step: int, end_step: int) -> int:
    """The parent's checkpoint spacing at ``step``: the gap to its next checkpoint (Pythia: 1000;
    in the log-spaced region the next gap, e.g. 256 at N = 256 and 1 at N = 0); past the last
    checkpoint, the last gap."""
    grid = sorted(set(grid))
    later = [s for s in grid if s > step]
    if later:
        return later[0] - step
    earlier = [s for s in grid if s < step]
    if earlier:
        return step - earlier[-1] if step in grid else max(1, step - earlier[-1])
    return max(1, end_step - step)


class LAWA(DeclaredIntervention):
    name = "lawa"
    SUMMARY = SUMMARY
    SHARDING = ("none", "fsdp")  # ZeRO partitions are DeepSpeed's own: not reachable here
    PARAMS = (
        Param("k", int, 5, "number of latest checkpoints averaged (official code: 5)", min=1),
        Param("every", int, PARENT, "snapshot at steps divisible by E (default: at the parent's checkpoint steps; "
              "E then records its spacing at N)", min=1),
        Param("mode", str, "replace", "replace: the average replaces the training weights at each snapshot step; "
              "eval: written to averaged/ only (the paper)", choices=("replace", "eval")),
        Param("window", str, "run", "run: the window starts with the parent's latest k checkpoints at or before N; "
              "branch: it starts empty at N", choices=("run", "branch")),
        Param("store", str, "disk", "where the main process keeps the window: disk (files written once, streamed "
              "when averaging) or host (also in memory)", choices=STORES),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.follow_parent_grid = self.params["every"] is None
        self.window = SnapshotWindow(self.params["k"], None, self.params["store"])
        self.window_at_branch: list[int] = []  # the parent's checkpoints that filled the window at N

    # -- the snapshot grid --------------------------------------------------------------------------
    def setup(self, ctx: BranchContext) -> None:
        super().setup(ctx)
        grid = sorted(set(int(s) for s in ctx.parent_grid)) or [ctx.branch_step]
        self.grid = set(grid)
        self.last_grid = grid[-1]
        self.last_gap = (grid[-1] - grid[-2]) if len(grid) >= 2 else parent_spacing(grid, ctx.branch_step, ctx.end_step)
        if self.params["every"] is None:
            self.params["every"] = parent_spacing(grid, ctx.branch_step, ctx.end_step)
        root = None if ctx.out_dir is None else ctx.out_dir / SNAPSHOT_DIR
        self.window = SnapshotWindow(self.params["k"], root, self.params["store"])
        if self.params["window"] == "run" and not self.window_steps() and is_main_process():
            print(f"warning: lawa window=run: the parent has no checkpoint at or before step {ctx.branch_step} on the "
                  f"snapshot grid (every={self.every}); the window starts empty", file=sys.stderr)

    @property
    def every(self) -> int:
        return int(self.params["every"])

    def is_snapshot_step(self, step: int) -> bool:
        if self.follow_parent_grid:
            if step in self.grid:
                return True
            return step > self.last_grid and (step - self.last_grid) % max(1, self.last_gap) == 0
        return step % self.every == 0

    def window_steps(self) -> list[int]:
        """The parent's checkpoint steps that fill the window at N (window=run), oldest first."""
        n = self.ctx.branch_step
        candidates = [s for s in sorted(self.grid) if s <= n and self.is_snapshot_step(s)]
        return candidates[-self.params["k"]:]

    # -- hooks ----------------------------------------------------------------------------------------
    def on_load(self, model: Any, ctx: BranchContext) -> Any:
        if self.window:
            return model  # already filled (resumed)
        if self.params["window"] == "branch":
            if self.is_snapshot_step(ctx.branch_step):
                self.window.add(ctx.branch_step, lambda: cpu_snapshot(model))
            return model
        steps = self.window_steps()
        dirs: dict[int, Any] = {}
        for s in reversed(steps):  # newest first; stop at the first checkpoint the parent lacks
            if s != ctx.branch_step and is_main_process():
                try:
                    if ctx.parent_checkpoint is None:
                        raise UserError("this branch context gives no access to the parent's checkpoints")
                    dirs[s] = ctx.parent_checkpoint(s)
                except UserError as e:
                    print(f"warning: lawa window=run holds {len(self.window_at_branch)} of {len(steps)} "
                          f"checkpoints at the branch step: {e}", file=sys.stderr)
                    break
            self.window_at_branch.insert(0, s)
        fresh = self.window.root is not None and not self.window.root.exists()
        try:
            for s in self.window_at_branch:
                if s == ctx.branch_step:
                    self.window.add(s, lambda: cpu_snapshot(model))
                else:
                    self.window.add(s, lambda s=s: checkpoint_weights(dirs[s], model))
        except BaseException:
            if fresh:  # nothing half-written: the branch directory is created only once this succeeded
                self.window.discard_files()
            raise
        return model

    def average(self, model: Any = None) -> Weights:
        """The window's mean; of a sharded ``model``, this rank's rows of it."""
        return self.window.mean(None if model is None else shard_rows(model))

    def after_step(self, model: Any, step: int) -> None:
        if not self.is_snapshot_step(step):
            return
        rows = shard_rows(model)
        shards = None
        if rows is not None:
            import torch.distributed as dist

            shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
            shards = (rows, shapes, dist.get_rank(), dist.get_world_size())
        self.window.add(step, lambda: cpu_snapshot(model), shards=shards)
        if self.params["mode"] == "replace" and self.params["k"] > 1:
            if holds_copies():
                copy_into(model, self.average(model))  # a window of one: the mean is the weights themselves
            broadcast_parameters(model)

    def extra_weights(self, model: Any, step: int) -> dict[str, dict[str, Any]]:
        if self.params["mode"] != "eval" or not self.window:
            return {}
        return {"averaged": full_state_dict(model, self.average(model))}

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if hasattr(self, "ctx"):
            d["resolved"] = {
                "grid": "parent checkpoints" if self.follow_parent_grid else f"multiples of {self.every}",
                "window_at_branch": list(self.window_at_branch),
                "snapshot_dir": SNAPSHOT_DIR,
            }
        return d

    # -- inspection and state -------------------------------------------------------------------------
    @property
    def snapshots(self) -> list[tuple[int, Weights]]:
        return self.window.snapshots()

    def snapshot_steps(self) -> list[int]:
        return list(self.window.steps)

    def state_dict(self) -> dict[str, Any]:
        return {**self.window.state(), "every": self.params["every"], "window_at_branch": self.window_at_branch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.window.load(state)
        if state.get("every") is not None:
            self.params["every"] = int(state["every"])
        self.window_at_branch = [int(s) for s in state.get("window_at_branch", [])]
