"""Runs to compare: local trajectory directories or registry runs, seen through one small interface.

A branch names its parent in ``trajectory.json`` (``parent.run``: an absolute path or a registry
name). Registry runs are resolved through ``checkpoints_cache.registry.resolve_run``; their
checkpoints at the compared steps are fetched with ``checkpoints_cache.fetch.ensure_checkpoint`` and
the rows of the held-out batches with ``data_order.remote.fetch_rows`` (``ensure_batches``), so
comparing with a released parent needs no manual fetch. Local directories are read directly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import Trajectory


@dataclass
class RunRef:
    """One run as the comparator needs it: checkpoints by step, data order, branch metadata."""

    spec: str  # what the user (or trajectory.json) wrote
    name: str
    traj: Trajectory | None  # local trajectory directory, if any
    info: Any = None  # checkpoints_cache.registry.RunInfo for registry runs
    progress: bool = True

    @property
    def steps(self) -> list[int]:
        """Steps with a checkpoint: on disk for local runs, the released grid for registry runs."""
        if self.traj is not None:
            return self.traj.steps
        return sorted(int(s) for s in self.info.steps)

    def checkpoint(self, step: int) -> Path:
        if self.traj is not None:
            return self.traj.checkpoint_dir(step)
        from checkpoints_cache.fetch import ensure_checkpoint

        return Path(ensure_checkpoint(self.info, step, progress=self.progress))

    @property
    def is_released(self) -> bool:
        return self.traj is None and self.info is not None and getattr(self.info, "repo_id", None) is not None

    def ensure_batches(self, batches: list[int]) -> None:
        """Fetch the rows of global ``batches`` a released run's partial copy lacks (offline: name them);
        batches past the end of the data order are left for the eval set to refuse."""
        order = getattr(self.info, "data_order", None) or {}
        if not self.is_released or order.get("kind") != "mmidx" or not batches:
            return
        from data_order.remote import fetch_rows, plan_rows

        plan = plan_rows(self.info, [(b, b + 1) for b in batches])
        nb = plan.num_batches
        missing = [(a, b if nb is None else min(b, nb)) for a, b in plan.missing if nb is None or a < nb]
        folder = fetch_rows(self.info, missing, progress=self.progress).folder if missing else plan.folder
        if folder is not None:
            self.info.data_order = {**order, "path": str(folder)}

    def averaged(self, step: int) -> Path | None:
        return self.traj.averaged_dir(step) if self.traj is not None else None

    @property
    def parent_spec(self) -> str | None:
        parent = self.traj.parent if self.traj is not None else None
        if not parent or not parent.get("run"):
            return None
        run = str(parent["run"])
        # A relative path in trajectory.json is relative to the branch directory.
        if not Path(run).is_absolute() and (self.traj.root / run / "trajectory.json").is_file():
            return str(self.traj.root / run)
        return run

    @property
    def branch_step(self) -> int | None:
        return self.traj.branch_step if self.traj is not None else None

    @property
    def end_step(self) -> int | None:
        if self.traj is not None and self.traj.meta.get("end_step") is not None:
            return int(self.traj.meta["end_step"])
        steps = self.steps
        return steps[-1] if steps else None

    @property
    def intervention(self) -> dict[str, Any]:
        if self.traj is None:
            return {"name": "none", "params": {}}
        return self.traj.intervention

    @property
    def data_order(self) -> dict[str, Any] | None:
        """The run's data-order reference with ``path`` made absolute (None when it has none)."""
        d = self.traj.data_order if self.traj is not None else getattr(self.info, "data_order", None)
        if not d:
            return None
        d = dict(d)
        if d.get("path") and self.traj is not None and not Path(d["path"]).is_absolute():
            d["path"] = str(self.traj.root / d["path"])
        return d

    def vocab_size(self, step: int) -> int | None:
        cfg = json.loads((self.checkpoint(step) / "config.json").read_text())
        v = cfg.get("vocab_size")
        return None if v is None else int(v)


def open_run(spec: str | Path, progress: bool = True) -> RunRef:
    """A trajectory directory or a registry name -> RunRef; anything else is a one-line UserError."""
    spec = str(spec)
    path = Path(spec)
    if path.exists():
        traj = Trajectory.open(path)  # raises "not a trajectory directory" for other folders
        return RunRef(spec=spec, name=traj.name, traj=traj, progress=progress)
    try:
        from checkpoints_cache.registry import resolve_run
    except ModuleNotFoundError:
        Trajectory.open(path)  # no registry available: the error for a missing directory
        raise  # unreachable: open() raised
    info = resolve_run(spec)
    traj = getattr(info, "trajectory", None)
    return RunRef(spec=spec, name=str(getattr(info, "name", spec)), traj=traj, info=info, progress=progress)


def wanted_eval_batches(trained_through: int, eval_batches: int, indices: list[int] | None) -> list[int]:
    """The batches ``evalset.build_eval_set`` will read (its default rule: the K right after training)."""
    return [int(k) for k in indices] if indices is not None else list(range(trained_through, trained_through + max(eval_batches, 0)))


def unique_names(runs: list[RunRef]) -> list[str]:
    """Run labels for the table: the trajectory names, made unique with the directory when they clash."""
    names = [r.name for r in runs]
    out = []
    for r, n in zip(runs, names):
        if names.count(n) > 1 and r.traj is not None:
            n = f"{n}@{r.traj.root.name}" if r.traj.root.name != n else f"{n}@{r.traj.root.parent.name}"
        out.append(n)
    # Still clashing (same name and same folder name): number them.
    seen: dict[str, int] = {}
    result = []
    for n in out:
        seen[n] = seen.get(n, 0) + 1
        result.append(n if out.count(n) == 1 else f"{n}#{seen[n]}")
    return result


def steps_text(steps: list[int]) -> str:
    if not steps:
        return "none"
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"


def same_run(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.realpath(pa) == os.path.realpath(pb)
    return a == b


def parent_spec_of(branches: list[RunRef], against: str | None) -> str:
    """The run to compare with: ``against``, else the parent all branches name (one-line errors)."""
    if against is not None:
        return str(against)
    specs = [(b, b.parent_spec) for b in branches]
    orphans = [b.spec for b, p in specs if p is None]
    if orphans:
        raise UserError(f"{orphans[0]} has no parent in its trajectory.json; pass --against RUN to name the run to compare with")
    first = specs[0][1]
    for b, p in specs[1:]:
        if not same_run(p, first):
            raise UserError(f"{b.spec} branches from {p!r} but {specs[0][0].spec} from {first!r}; "
                            "compare branches of one parent at a time, or pass --against RUN")
    return first


def shared_steps(run: RunRef, parent: RunRef) -> list[int]:
    """Steps where both have a checkpoint (a one-line error when there is none)."""
    shared = sorted(set(run.steps) & set(parent.steps))
    if not shared:
        raise UserError(
            f"{run.spec} (steps {steps_text(run.steps)}) and {parent.spec} (steps {steps_text(parent.steps)}) "
            "share no checkpoint step; compare runs that have checkpoints at the same steps"
        )
    return shared


def seed_steps_of(seeds: list[RunRef], labels: list[str], steps: list[int]) -> dict[str, list[int]]:
    """label -> the compared steps each seed run has (a one-line error for one that has none)."""
    out = {}
    for lab, s in zip(labels, seeds):
        have = sorted(set(s.steps) & set(steps))
        if not have:
            raise UserError(f"seed run {s.spec} (steps {steps_text(s.steps)}) has none of the compared steps "
                            f"{steps_text(steps)}; pass a seed run with checkpoints at those steps")
        out[lab] = have
    return out
