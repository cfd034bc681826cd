"""The run a branch continues: a local trajectory directory or a released run from the registry.

One small adapter so the engine asks the same questions of both: which checkpoint steps exist,
where the weights of step N are (fetched through checkpoints_cache when needed), whether the full
optimizer state exists, what the recipe and the data order are.

For a released run, ``plan_release`` adds to the branch's plan what must come from the Hub (the
weights at N, the index entries and rows of the batches it trains on and replays) using metadata
only, and ``fetch_release`` then fetches exactly that into the HF cache and the partial data store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from checkpoints_cache.errors import UserError
from checkpoints_cache.recipe import Recipe
from checkpoints_cache.trajectory import Trajectory, describe_nearest

if TYPE_CHECKING:
    from checkpoints_cache.registry import RunInfo
    from resume.plan import BranchPlan


@dataclass
class ParentRun:
    spec: str  # what the branch records as parent.run: an absolute path or a registry name
    name: str
    steps: list[int]  # checkpoints that exist (a branch may start at any of them)
    grid: list[int]  # the run's declared checkpoint grid (where branches save)
    recipe: Recipe
    data_order: dict[str, Any] | None
    model_config: dict[str, Any]
    checkpoint_dir: Callable[[int], Path]
    optimizer_dir: Callable[[int], Path | None]
    warning_for: Callable[[int], str | None]
    trajectory: Trajectory | None = None
    neox_family: bool = False  # trained by GPT-NeoX (Pythia, or a branch that kept NeoX numerics)
    # The parent's own optimizer state in its NeoX checkpoints (the card's [optimizer_state] table):
    # ``neox_unavailable(step)`` says why it cannot be imported at ``step`` (None: it can),
    # ``import_optimizer(step)`` imports it (cached) and returns the folder.
    optimizer_source: dict[str, Any] | None = None
    neox_unavailable: Callable[[int], str | None] = lambda step: "the parent names no NeoX checkpoints"
    import_optimizer: Callable[[int], Path] | None = None
    branch_notes: list[str] = field(default_factory=list)
    info: "RunInfo | None" = None  # checkpoints_cache.registry.RunInfo for released runs
    fetched: dict[int, Path] = field(default_factory=dict)  # released runs: step -> snapshot folder in the HF cache

    @property
    def is_released(self) -> bool:
        """A run whose files live on the Hub (fetched into the caches), not a local directory."""
        return self.info is not None and self.trajectory is None

    def require_step(self, step: int) -> None:
        if step not in self.steps:
            near = self.info.describe_nearest(step) if self.info is not None else describe_nearest(self.steps, step)
            raise UserError(f"step {step} is not a checkpoint of {self.name}; nearest available: {near}")

    def revision(self, step: int) -> str:
        """The name of checkpoint ``step`` (``ckpt_012`` for Amber, ``step400`` for a trajectory)."""
        return self.info.revision(step) if self.info is not None else f"step{step}"

    def resolve_step(self, spec: int | str) -> tuple[int, str | None]:
        """(step, its revision name when ``spec`` named one): ``400``, ``"400"``, ``"ckpt_012"`` or ``"step400"``."""
        if isinstance(spec, int) or str(spec).strip().isdigit():
            return int(spec), None
        name = str(spec).strip()
        step = self.info.step_of_revision(name) if self.info is not None else (
            int(name[4:]) if name.startswith("step") and name[4:].isdigit() else None)
        if step is None:
            first, last = (self.revision(self.steps[0]), self.revision(self.steps[-1])) if self.steps else ("?", "?")
            raise UserError(f"--from-step {name!r} is neither a step number nor a checkpoint name of {self.name} "
                            f"(its checkpoints are {first} .. {last})")
        if step not in self.steps:
            raise UserError(f"--from-step {name} (step {step}) is not a checkpoint of {self.name}; its checkpoints are "
                            f"{self.revision(self.steps[0])} .. {self.revision(self.steps[-1])}")
        return step, name


def open_parent(spec: str | Path) -> ParentRun:
    """Resolve ``spec`` (trajectory dir or registry name) into a ``ParentRun``."""
    path = Path(spec)
    if str(spec).lower() in ("toy", "toy-small", "toy-tiny") and not path.exists():
        from checkpoints_cache.registry import TOY_ALIASES
        from resume.toy import ensure_toy

        size = TOY_ALIASES[str(spec).lower()]
        path = ensure_toy(Path(os.environ.get("BRANCHPOINT_TOY_DIR", "runs")) / f"toy-{size}", size=size)
    if Trajectory.is_trajectory(path):
        return _from_trajectory(Trajectory.open(path))
    if path.exists() and path.is_dir():
        Trajectory.open(path)  # raises the one-line "not a trajectory directory" error
    return _from_registry(str(spec))


def _from_trajectory(traj: Trajectory) -> ParentRun:
    data_order = dict(traj.data_order or {}) or None
    if data_order and data_order.get("path") and not Path(data_order["path"]).is_absolute():
        data_order["path"] = str((traj.root / data_order["path"]).resolve())
    domains = (data_order or {}).get("domains")
    if domains and domains.get("labels") and not Path(domains["labels"]).is_absolute():
        domains["labels"] = str((traj.root / domains["labels"]).resolve())
    steps = traj.steps
    return ParentRun(
        spec=str(traj.root.resolve()),
        name=traj.name,
        steps=steps,
        grid=traj.grid or steps,
        recipe=traj.recipe,
        data_order=data_order,
        model_config=traj.model_config,
        checkpoint_dir=traj.checkpoint_dir,
        optimizer_dir=traj.optimizer_dir,
        warning_for=lambda step: None,
        trajectory=traj,
        neox_family=(traj.meta.get("numerics") or {}).get("mode") == "neox",
    )


def _from_registry(spec: str) -> ParentRun:
    from checkpoints_cache.fetch import ensure_checkpoint, step_warnings
    from checkpoints_cache.neox_fetch import import_optimizer_state, unsupported_reason
    from checkpoints_cache.registry import resolve_run

    run = resolve_run(spec)
    if getattr(run, "trajectory", None) is not None:
        return _from_trajectory(run.trajectory)
    if run.branch_refusal:
        raise UserError(run.branch_refusal)
    if run.trust_remote_code_required:
        raise UserError(
            f"{run.name} needs trust_remote_code, which branchpoint does not enable for training; "
            "fetch and inspect it with `branchpoint fetch --trust-remote-code`"
        )
    fetched: dict[int, Path] = {}

    def checkpoint_dir(step: int) -> Path:
        if step not in fetched:
            fetched[step] = Path(ensure_checkpoint(run, step))
        return fetched[step]

    return ParentRun(
        spec=run.name,
        name=run.name,
        steps=list(run.steps),
        grid=list(run.steps),
        recipe=run.recipe,
        data_order=dict(run.data_order) if run.data_order else None,
        model_config=dict(run.architecture or {}),
        checkpoint_dir=checkpoint_dir,
        optimizer_dir=lambda step: None,  # the Hub releases carry weights only (ecosystem.md §0.3)
        warning_for=lambda step: "; ".join(w.removeprefix("warning: ") for w in step_warnings(run, step)) or None,
        neox_family=run.family == "pythia",
        optimizer_source=run.optimizer_state,
        neox_unavailable=lambda step: unsupported_reason(run, step),
        import_optimizer=lambda step: import_optimizer_state(run, step),
        branch_notes=list(run.branch_notes),
        info=run,
        fetched=fetched,
    )


def plan_release(parent: ParentRun, plan: "BranchPlan", step: int, spans: list[tuple[int, int]],
                 neox_optimizer: bool = False) -> Any:
    """Add the weights at ``step`` and the rows of global batches ``spans`` of a released run to
    ``plan`` (metadata only: revision lookups and file listings). Offline, what is missing from the
    caches (the NeoX optimizer state too, when ``neox_optimizer`` says the branch imports it) is one
    error naming every span and the command that fetches it all. Returns the rows plan (None when no
    rows are needed: an intervention training on rows of its own, without a reestimate)."""
    from checkpoints_cache import hub
    from checkpoints_cache.data_store import data_root
    from checkpoints_cache.fetch import plan_fetch
    from data_order.remote import fetch_command, plan_rows, spans_text

    info = parent.info
    assert info is not None
    weights_missing = False
    try:
        weights = plan_fetch(info, [step], read_indexes=False)
        for f in weights.files:
            plan.add("weights", f.size, f.cached, f"{f.repo_id}@{f.revision} {f.filename}", hub.hub_cache())
    except UserError:
        if not hub.is_offline():
            raise
        weights_missing = True  # named together with the missing rows below
    optimizer_missing = False
    if hub.is_offline() and neox_optimizer:
        from checkpoints_cache.neox_fetch import find_imported

        optimizer_missing = find_imported(info, step) is None
    if not spans:
        if weights_missing or optimizer_missing:
            what = " and ".join(w for w, m in ((f"the weights of {info.name} at step {step}", weights_missing),
                                               (f"its NeoX optimizer state at step {step}", optimizer_missing)) if m)
            raise UserError(f"offline (HF_HUB_OFFLINE=1) and the caches lack {what}; with network access run: "
                            f"{fetch_command(info.name, [], step, optimizer_missing)}")
        return None
    rows = plan_rows(info, spans)
    rows.check_extent()
    if rows.num_batches is not None:  # the data order's extent, for checks of later reads (compare's eval rows)
        parent.data_order = {**(parent.data_order or {}), "num_batches": rows.num_batches}
    if rows.offline and (rows.missing or weights_missing or optimizer_missing):
        raise rows.missing_error(step, weights_missing, optimizer_missing)
    where = data_root()
    idx_note = f"{rows.repo_id} document.idx: header + sizes/pointers of {rows.rows:,} rows (byte ranges)"
    if rows.index_bytes - rows.index_missing_bytes > 0:
        plan.add("index entries", rows.index_bytes - rows.index_missing_bytes, True, idx_note, where)
    if rows.index_missing_bytes:
        plan.add("index entries", rows.index_missing_bytes, False, idx_note, where)
    cached = rows.data_bytes - rows.data_missing_bytes
    missing_note = spans_text(rows.missing, rows.batch_size) if rows.missing else ""
    if cached:
        plan.add("data rows", cached, True, f"{rows.repo_id} of {spans_text(rows.spans, rows.batch_size)}"
                 + (f" (all but {missing_note})" if missing_note else ""), where)
    if rows.data_missing_bytes:
        plan.add("data rows", rows.data_missing_bytes, False, f"{rows.repo_id} {missing_note} (byte ranges of the shards)",
                 where)
    return rows


def fetch_release(parent: ParentRun, step: int, spans: list[tuple[int, int]], progress: bool = True) -> None:
    """Fetch the weights at ``step`` and the rows of ``spans`` (what ``plan_release`` planned); point the
    parent's data order at the partial copy."""
    from checkpoints_cache.fetch import ensure_checkpoint
    from data_order.remote import fetch_rows

    info = parent.info
    assert info is not None
    parent.fetched[step] = Path(ensure_checkpoint(info, step, progress=progress))
    if spans:
        got = fetch_rows(info, spans, progress=progress)
        parent.data_order = {**(parent.data_order or {}), "path": str(got.folder)}
