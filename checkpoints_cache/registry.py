"""Which runs exist: registry names of released runs, or local trajectory directories.

``resolve_run(spec)`` turns ``pythia-160m-deduped``, ``EleutherAI/pythia-160m-deduped``,
``LLM360/Amber`` or a path to a trajectory directory into a ``RunInfo``: step grid, revision
names, recipe, architecture, data-order source, known defects. The released runs are rows of data
in ``runs_table.py``; nothing here talks to the network.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from . import data_store
from .defects import Defect, defects_for
from .errors import UserError
from .grids import PER_CHUNK_SCHEMES, REVISION_OF, step_of_revision
from .recipe import Recipe
from .runs_table import all_rows
from .trajectory import Trajectory, describe_nearest


@dataclass
class RunInfo:
    """Everything branchpoint knows about one run without downloading it."""

    name: str
    repo_id: str | None  # None for local trajectories
    family: str  # "pythia" | "amber" | "k2" | "crystal" | "local"
    steps: list[int]  # the checkpoint grid (local: the steps on disk)
    recipe: Recipe
    architecture: dict[str, Any]
    data_order: dict[str, Any] | None
    defects: list[Defect] = field(default_factory=list)
    trust_remote_code_required: bool = False
    trajectory: Trajectory | None = None
    scheme: str = "stepN"  # revision naming: "stepN" | "amber" | "k2" | "crystal"
    notes: list[str] = field(default_factory=list)
    # Where the run's own optimizer state lives (the card's [optimizer_state] table, verbatim): for Pythia the
    # NeoX checkpoints, {"kind": "neox-zero1", "repo_id", "revision": "step{N}" | a branch, "step", ...}.
    optimizer_state: dict[str, Any] | None = None
    branch_notes: list[str] = field(default_factory=list)  # printed by `branch` (e.g. an unsettled LR schedule)

    def check_step(self, step: int) -> None:
        """Raise a UserError naming the nearest available steps if ``step`` is not on the grid."""
        if self.family == "crystal" and not self.steps:
            return  # grid known only from the Hub; a missing branch is reported when fetching
        if step not in self.steps:
            raise UserError(
                f"step {step} is not a checkpoint of {self.name}; nearest available: "
                f"{self.describe_nearest(step)} (`branchpoint steps {self.name}` lists all)"
            )

    def describe_nearest(self, step: int) -> str:
        """``762 and 1524 (ckpt_000 and ckpt_001)``: the neighbouring grid steps, with their branch names
        where those are not just ``stepN``."""
        near = describe_nearest(self.steps, step)
        if self.scheme == "stepN" or self.family == "local" or near == "none":
            return near
        names = " and ".join(self._revision(int(s)) for s in near.split(" and "))
        return f"{near} ({names})"

    def _steps_per_ckpt(self) -> int | None:
        per = (self.data_order or {}).get("steps_per_chunk")
        return int(per) if per else None

    def _revision(self, step: int) -> str:
        if self.scheme in PER_CHUNK_SCHEMES and self._steps_per_ckpt():
            return REVISION_OF[self.scheme](step, self._steps_per_ckpt())
        return REVISION_OF[self.scheme](step)

    def revision(self, step: int) -> str:
        """The Hub branch holding checkpoint ``step`` (``step1000``, ``ckpt_001``, ...)."""
        self.check_step(step)
        if self.family == "local":
            return f"step{step}"
        return self._revision(step)

    def step_of_revision(self, name: str) -> int | None:
        """The step a branch name of this run stands for (``ckpt_012`` -> 9906 for Amber), or None."""
        if self.family == "local":
            return step_of_revision("stepN", name)
        return step_of_revision(self.scheme, name, self._steps_per_ckpt())

    @property
    def branch_refusal(self) -> str | None:
        """Why this run cannot be branched (the card's ``[data_order] not_branchable``), or None."""
        reason = (self.data_order or {}).get("not_branchable")
        return f"{self.name} cannot be branched: {reason}" if reason else None

    def has_optimizer_state(self, step: int) -> bool:
        # Released HF repos hold weights only (pythia.md §3, llm360.md §2).
        return self.trajectory is not None and self.trajectory.has_optimizer_state(step)

    def defects_at(self, step: int) -> list[Defect]:
        return [d for d in self.defects if d.affects(self.name, self.family, step)]

    @property
    def is_local(self) -> bool:
        return self.family == "local"


@lru_cache(maxsize=1)
def _rows() -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in all_rows()}


def known_runs() -> list[dict[str, Any]]:
    """The registry rows, in table order (for ``branchpoint runs``)."""
    return list(_rows().values())


def _aliases() -> dict[str, str]:
    """Lower-cased spellings -> registry name: the name itself and the repo id."""
    out: dict[str, str] = {}
    for name, row in _rows().items():
        out[name.lower()] = name
        out[row["repo_id"].lower()] = name
    out["llm360/crystal"] = "crystal"  # the repo was renamed from CrystalCoder (llm360.md §1.3)
    return out


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.startswith(".") or Path(spec).exists()


# Data released as chunk files (LLM360): data_order.chunked converts them; the token dtype follows the vocabulary.
CHUNK_KINDS = ("amber-chunks", "k2-chunks")


def _data_order_with_path(order: dict[str, Any], architecture: dict[str, Any] | None = None) -> dict[str, Any]:
    order = dict(order)
    order["path"] = None
    if order.get("kind") == "mmidx" and order.get("repo_id"):
        found = data_store.existing_partial_dir(order["repo_id"], order.get("revision", "main"))
        order["path"] = str(found) if found else None
    if order.get("kind") in CHUNK_KINDS and (architecture or {}).get("vocab_size"):
        order.setdefault("vocab_size", int(architecture["vocab_size"]))
    return order


def _from_row(row: dict[str, Any]) -> RunInfo:
    return RunInfo(
        name=row["name"],
        repo_id=row["repo_id"],
        family=row["family"],
        steps=list(row["grid"]),
        recipe=Recipe.from_dict(row["recipe"]),
        architecture=dict(row["architecture"]),
        data_order=_data_order_with_path(row["data_order"], row.get("architecture")),
        defects=defects_for(row["name"], row["family"]),
        trust_remote_code_required=bool(row.get("trust_remote_code", False)),
        scheme=row["scheme"],
        notes=list(row.get("notes", [])),
        optimizer_state=dict(row["optimizer_state"]) if row.get("optimizer_state") else None,
        branch_notes=list(row.get("branch_notes", [])),
    )


def _from_trajectory(path: str) -> RunInfo:
    traj = Trajectory.open(path)
    config = traj.model_config
    arch = {"model_type": config.get("model_type"), **config}
    order = traj.data_order
    if order is not None:
        order = dict(order)
        order.setdefault("kind", "mmidx")
        order.setdefault("exactness", "exact")
        rel = order.get("path")
        if rel:
            p = Path(rel)
            order["path"] = str(p if p.is_absolute() else (traj.root / p).resolve())
        elif traj.data_dir.is_dir():
            order["path"] = str(traj.data_dir.resolve())
        else:
            order["path"] = None
    return RunInfo(
        name=traj.name, repo_id=None, family="local", steps=traj.steps, recipe=traj.recipe, architecture=arch,
        data_order=order, trajectory=traj,
    )


# `toy` names the embedded toy trajectory (DESIGN.md, CLI contract) at its default place,
# runs/toy-<size> under the working directory (or $BRANCHPOINT_TOY_DIR): `branchpoint toy` builds it.
TOY_ALIASES = {"toy": "small", "toy-small": "small", "toy-tiny": "tiny"}


def toy_dir(spec: str) -> Path:
    """Where the toy named ``spec`` lives; raises a one-line hint when it is not built yet."""
    size = TOY_ALIASES[spec.lower()]
    path = Path(os.environ.get("BRANCHPOINT_TOY_DIR", "runs")) / f"toy-{size}"
    if not (path / "trajectory.json").is_file():
        raise UserError(f"the toy trajectory {spec!r} is not built yet; run `branchpoint toy --size {size}` (writes {path})")
    return path


def resolve_run(spec: str) -> RunInfo:
    """A registry name / repo id (case-insensitive) or a trajectory directory -> RunInfo."""
    spec = str(spec).strip()
    if spec.lower() in TOY_ALIASES and not _looks_like_path(spec):
        return _from_trajectory(str(toy_dir(spec)))
    aliases = _aliases()
    name = aliases.get(spec.lower())
    if name is not None:
        return _from_row(_rows()[name])
    if _looks_like_path(spec):
        return _from_trajectory(spec)
    close = difflib.get_close_matches(spec.lower(), list(aliases), n=3, cutoff=0.6)
    suggestion = ", ".join(dict.fromkeys(aliases[c] for c in close)) if close else None
    hint = f"did you mean {suggestion}?" if suggestion else "`branchpoint runs` lists the known runs"
    raise UserError(f"unknown run {spec!r}; {hint} (a trajectory directory path also works)")
