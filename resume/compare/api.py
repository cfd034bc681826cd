"""``compare()``: evaluate branches against their parent and write the table, figures and summary.

Usage::

    from resume.compare.api import compare
    df = compare(["runs/branch-lawa", "runs/branch-control"])   # parent from trajectory.json
    df[df.metric == "kl"]

Semantics, decided where the issue leaves room:

- The parent is ``parent.run`` of the branches' ``trajectory.json`` (all must share it) unless
  ``against`` names another run. A run without a parent needs ``against``; a run compared with
  itself gives exact zeros.
- A branch is compared at the steps where both it and the parent have a checkpoint, the branch
  step N included. Each branch's ``averaged/`` weights are compared too (``weights=averaged``),
  always against the parent's trained weights at the same step.
- Parameter distance is measured from the branch step N (from the first compared step when the run
  has no branch step, e.g. a run compared with another run).
- Seed runs are compared with the parent exactly like branches (rows ``seed:<name>``) at the
  compared steps they have; their spread is the noise band of the figures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import atomic_write_json, atomic_write_text
from data_order.chunked import is_chunked

from .cache import EvalCache
from .evalset import build_eval_set
from .evaluate import Evaluator, Subject
from .plots import PlotSpec, write_figures
from .runs import RunRef, open_run, unique_names
from .summary import RunNote, describe_intervention, write_summary
from .table import build_table, write_table


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "none"
    return ", ".join(map(str, steps)) if len(steps) <= 8 else f"{steps[0]}..{steps[-1]} ({len(steps)} steps)"


def _same_run(a: str, b: str) -> bool:
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists():
        return os.path.realpath(pa) == os.path.realpath(pb)
    return a == b


def _parent_spec(branches: list[RunRef], against: str | None) -> str:
    if against is not None:
        return str(against)
    specs = [(b, b.parent_spec) for b in branches]
    orphans = [b.spec for b, p in specs if p is None]
    if orphans:
        raise UserError(f"{orphans[0]} has no parent in its trajectory.json; pass --against RUN to name the run to compare with")
    first = specs[0][1]
    for b, p in specs[1:]:
        if not _same_run(p, first):
            raise UserError(f"{b.spec} branches from {p!r} but {specs[0][0].spec} from {first!r}; "
                            "compare branches of one parent at a time, or pass --against RUN")
    return first


def _shared_steps(run: RunRef, parent: RunRef) -> list[int]:
    shared = sorted(set(run.steps) & set(parent.steps))
    if not shared:
        raise UserError(
            f"{run.spec} (steps {_steps_text(run.steps)}) and {parent.spec} (steps {_steps_text(parent.steps)}) "
            "share no checkpoint step; compare runs that have checkpoints at the same steps"
        )
    return shared


def _check_vocab(run: RunRef, parent: RunRef, step: int) -> int:
    v_run, v_parent = run.vocab_size(step), parent.vocab_size(step)
    if v_run != v_parent:
        raise UserError(
            f"vocabularies differ: {run.spec} has vocab_size {v_run}, {parent.spec} has {v_parent}; "
            "KL and top-1 agreement need the same tokenizer, compare runs of one model family"
        )
    return int(v_parent)


def _short(intervention: dict) -> str:
    name = str(intervention.get("name", "none"))
    return "control" if name == "none" else name


def eval_entropy_floor(data_order: dict | None, root: Path | None, eval_set) -> float | None:
    """Mean declared entropy rate over the eval rows, when the data order labels rows by domain and
    declares each domain's entropy (the toy corpus: exact conditional entropy of its Markov chains)."""
    import numpy as np

    domains = (data_order or {}).get("domains") or {}
    entropy, names, labels_path = domains.get("entropy"), domains.get("names"), domains.get("labels")
    if not (entropy and names and labels_path):
        return None
    path = Path(labels_path)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        return None
    labels = np.load(path, mmap_mode="r")
    b = eval_set.batch_size
    rows = np.concatenate([np.arange(k * b, (k + 1) * b) for k in eval_set.batch_indices])
    rates = np.array([entropy[n] for n in names])
    return float(rates[np.asarray(labels[rows])].mean())


def compare(trajs: list[str | Path], against: str | None = None, eval_batches: int = 4,
            eval_batch_indices: list[int] | None = None, out: str | Path | None = None,
            seed_runs: list[str] | None = None, progress: bool = True, *, device: str | None = None,
            figures: bool = True) -> pd.DataFrame:
    """Compare branches with their parent; returns the tidy table and writes everything to ``out``.

    ``out`` defaults to ``<first TRAJ>/compare/``. Files: ``comparison.csv``, ``comparison.parquet``,
    ``eval_set.json``, ``summary.md``, figures ``{loss,delta_loss,kl,param_distance,top1_agreement,
    overview}.{png,svg}`` (unless ``figures=False``), and ``cache/`` (evaluations keyed by checkpoint
    and eval-set content). ``device``: torch device for the evaluation (default: cuda if available).
    """
    import torch

    if isinstance(trajs, (str, Path)):
        trajs = [trajs]  # one trajectory given bare
    if not trajs:
        raise UserError("no trajectory given; pass at least one TRAJ (a branch directory)")
    branches = [open_run(t, progress=progress) for t in trajs]
    parent = open_run(_parent_spec(branches, against), progress=progress)
    seeds = [open_run(s, progress=progress) for s in (seed_runs or [])]

    labels = unique_names(branches)
    parent_label = f"parent:{parent.name}"
    seed_labels = [f"seed:{n}" for n in unique_names(seeds)] if seeds else []

    shared = {lab: _shared_steps(b, parent) for lab, b in zip(labels, branches)}
    vocab = None
    for lab, b in zip(labels, branches):
        vocab = _check_vocab(b, parent, shared[lab][0])
    all_steps = sorted(set().union(*shared.values()))
    ref_step = {lab: (b.branch_step if b.branch_step in shared[lab] else shared[lab][0]) for lab, b in zip(labels, branches)}
    seed_ref = min(ref_step.values())
    seed_steps = {}
    for lab, s in zip(seed_labels, seeds):
        steps = sorted(set(s.steps) & set(all_steps))
        if not steps:
            raise UserError(f"seed run {s.spec} (steps {_steps_text(s.steps)}) has none of the compared steps "
                            f"{_steps_text(all_steps)}; pass a seed run with checkpoints at those steps")
        _check_vocab(s, parent, steps[0])
        seed_steps[lab] = steps

    # Held-out batches from the parent's data order (a branch's points at the same data).
    ends = [b.end_step for b in branches if b.end_step is not None]
    trained_through = max([all_steps[-1], *ends])
    has_rows = [r for r in (parent, *branches) if (r.data_order or {}).get("path")]
    # A chunk release (LLM360) is read from the first branch's record: it names the order the branch used.
    chunked = [r for r in (*branches, parent) if is_chunked(r.data_order)]
    data_owner = chunked[0] if chunked else has_rows[0] if has_rows else parent
    eval_set = build_eval_set(data_owner.data_order, data_owner.spec, trained_through, eval_batches, eval_batch_indices,
                              progress=progress)

    if out is None:
        if branches[0].traj is None:
            raise UserError(f"{branches[0].spec} is not a local trajectory directory; pass --out DIR for the results")
        out = branches[0].traj.root / "compare"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    subjects_by_step: dict[int, list[Subject]] = {s: [] for s in all_steps}
    order: list[tuple[str, str, int]] = []
    for lab, b in zip(labels, branches):
        for step in shared[lab]:
            subjects_by_step[step].append(Subject(lab, "trained", step, b.checkpoint(step), ref_step[lab]))
            avg = b.averaged(step)
            if avg is not None:
                subjects_by_step[step].append(Subject(lab, "averaged", step, avg, ref_step[lab]))
    for lab, s in zip(seed_labels, seeds):
        for step in seed_steps[lab]:
            subjects_by_step[step].append(Subject(lab, "trained", step, s.checkpoint(step), seed_ref))
    for lab in [*labels, *seed_labels]:
        for weights in ("trained", "averaged"):
            for step in all_steps:
                if any(x.label == lab and x.weights == weights for x in subjects_by_step[step]):
                    order.append((lab, weights, step))

    evaluator = Evaluator(parent, eval_set, EvalCache(out / "cache"), vocab,
                          device=torch.device(device) if device else None, progress=progress)
    res = evaluator.run(subjects_by_step)
    df = build_table(res, parent_label, order)

    # Outputs: table, eval set, figures, summary.
    write_table(df, out)
    atomic_write_json(out / "eval_set.json", eval_set.to_json())
    floor = eval_entropy_floor(data_owner.data_order, data_owner.traj.root if data_owner.traj else None, eval_set)
    if floor is not None:
        extra_floor = [f"entropy floor of the eval rows: {floor:.4f} nats/token (the corpus's declared per-domain "
                       "conditional entropy rates, averaged over the eval rows' domains; no model can go below it)."]
    else:
        extra_floor = []
    what = labels[0] if len(labels) == 1 else f"{len(labels)} runs"
    title = f"{what} vs {parent_label}, {eval_set.tokens} held-out tokens"
    spec = PlotSpec(parent_label=parent_label, branch_steps=[b.branch_step for b in branches if b.branch_step is not None],
                    runs=labels, seed_labels=seed_labels, title=title, loss_floor=floor,
                    legend={lab: lab if _short(b.intervention) in lab else f"{lab} ({_short(b.intervention)})"
                            for lab, b in zip(labels, branches) if b.traj is not None and b.parent_spec})
    written = write_figures(df, out, spec) if figures else []

    notes: list[RunNote] = []
    for lab, b in zip(labels, branches):
        note = RunNote(lab, "branch", b.spec, describe_intervention(b.intervention), b.branch_step, shared[lab])
        reasons = {res.distance[k].reason for k in res.distance if k[0] == lab and res.distance[k].value is None}
        if reasons:
            note.notes.append("parameter distance left out: the parameters do not match the parent's "
                              f"({sorted(reasons)[0]}), e.g. a shape-changing intervention such as Gstack.")
        if b.branch_step is not None and b.branch_step not in shared[lab]:
            note.notes.append(f"the parent has no checkpoint at the branch step {b.branch_step}; parameter distance "
                              f"is measured from step {ref_step[lab]}.")
        notes.append(note)
    for lab, s in zip(seed_labels, seeds):
        notes.append(RunNote(lab, "seed", s.spec, "seed run", None, seed_steps[lab]))
    extra = list(extra_floor)
    if not any(b.branch_step is not None for b in branches):
        extra.append(f"no branch step recorded: parameter distance is measured from step {seed_ref}.")
    exactness = (data_owner.data_order or {}).get("exactness")
    md = write_summary(df, parent_label, parent.spec, notes, eval_set,
                       sorted({p.name for p in written if p.suffix == ".png"}), extra,
                       exactness=None if exactness in (None, "exact") else str(exactness))
    atomic_write_text(out / "summary.md", md)
    return df
