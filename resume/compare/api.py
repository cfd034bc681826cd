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

import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from checkpoints_cache.errors import UserError
from checkpoints_cache.locks import output_lock
from checkpoints_cache.trajectory import check_output_dir, clean_orphans
from data_order.chunked import is_chunked
from resume.evaluation.analysis import Measurement, analyze
from resume.evaluation.api import EvalSubject, check_settings, run_tasks
from resume.evaluation.bands import DEFAULT_WINDOW
from resume.evaluation.lmeval import EvalSettings
from resume.evaluation.plots import TaskPlotSpec, write_task_figures
from resume.evaluation.published import read_published
from resume.evaluation.stats import DEFAULT_ITERS, DEFAULT_LEVEL, DEFAULT_SEED
from resume.evaluation.summary import published_section, settings_lines, significance_section, task_table
from resume.evaluation.tasks import load_tasks, parse_task_list

from .cache import EvalCache, write_derived
from .evalset import build_eval_set
from .evaluate import Evaluator, Subject
from .against import warn_other_data_order
from .parent_loss import read_loss_curve
from .plots import PlotSpec, write_figures
from .preflight import check_device
from .runs import RunRef, open_run, parent_spec_of, seed_steps_of, shared_steps, unique_names, wanted_eval_batches
from .summary import RunNote, describe_intervention, write_summary
from .table import build_table, write_table


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


def loss_measurements(res, parent_label: str, order: list[tuple[str, str, int]]) -> list[Measurement]:
    """Held-out loss per model and step, with its per-sequence losses (for the paired bootstrap)."""
    ms = [Measurement(parent_label, "trained", step, "loss", loss, items=np.asarray(res.parent_rows[step]))
          for step, loss in sorted(res.parent_loss.items())]
    for key in order:
        pair = res.pairs[key]
        ms.append(Measurement(key[0], key[1], key[2], "loss", pair.loss, items=np.asarray(pair.rows)))
    return ms


def compare(trajs: list[str | Path], against: str | None = None, eval_batches: int = 4,
            eval_batch_indices: list[int] | None = None, out: str | Path | None = None,
            seed_runs: list[str] | None = None, progress: bool = True, *, device: str | None = None,
            figures: bool = True, tasks: list[str] | str | None = None, num_fewshot: int | None = None,
            limit: int | float | None = None, batch_size: int = 16, dtype: str = "float32",
            include_path: str | Path | None = None, tokenizer: str | None = None,
            published: list[str | Path] | str | Path | None = None, parent_loss: str | Path | None = None,
            noise_window: int = DEFAULT_WINDOW, bootstrap_iters: int = DEFAULT_ITERS,
            stderr_iters: int = 100_000) -> pd.DataFrame:
    """Compare branches with their parent; returns the tidy table and writes everything to ``out``.

    ``out`` defaults to ``<first TRAJ>/compare/``. Files: ``comparison.csv``, ``comparison.parquet``,
    ``eval_set.json``, ``summary.md``, ``paired.csv`` (the paired bootstrap of Δloss over held-out
    sequences, and of task scores, with the noise bands and a verdict per branch, metric and step),
    ``bands.csv``, figures ``{loss,delta_loss,kl,param_distance,top1_agreement,overview}.{png,svg}``
    (unless ``figures=False``), and ``cache/`` (evaluations keyed by checkpoint and eval-set content).
    ``device``: torch device for the evaluation (default: cuda if available).

    ``tasks``: lm-eval tasks evaluated on the same checkpoints (``resume.evaluation``; flags as
    ``branchpoint eval``): rows ``task/<task>/<metric>`` join the table, with ``task_<task>.png``
    figures and lm-eval's per-item ``samples/``. ``published``: the parent's released eval JSONs, a
    reference series (``weights = published``). ``parent_loss``: a CSV of the parent's training
    loss (step, loss), overlaid on the loss figure. ``stderr_iters``: lm-eval's own bootstrap for the
    stderr of perplexity-like task metrics.
    ``out`` is locked for the whole comparison (one writer per output).
    """
    with contextlib.ExitStack() as hold:
        return _compare(hold, trajs, against=against, eval_batches=eval_batches, eval_batch_indices=eval_batch_indices,
                        out=out, seed_runs=seed_runs, progress=progress, device=device, figures=figures, tasks=tasks,
                        num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, dtype=dtype,
                        include_path=include_path, tokenizer=tokenizer, published=published, parent_loss=parent_loss,
                        noise_window=noise_window, bootstrap_iters=bootstrap_iters, stderr_iters=stderr_iters)


def _compare(hold: contextlib.ExitStack, trajs: list[str | Path], *, against: str | None, eval_batches: int,
             eval_batch_indices: list[int] | None, out: str | Path | None, seed_runs: list[str] | None,
             progress: bool, device: str | None, figures: bool, tasks: list[str] | str | None,
             num_fewshot: int | None, limit: int | float | None, batch_size: int, dtype: str,
             include_path: str | Path | None, tokenizer: str | None,
             published: list[str | Path] | str | Path | None, parent_loss: str | Path | None,
             noise_window: int, bootstrap_iters: int, stderr_iters: int) -> pd.DataFrame:
    torch_device = check_device(device)  # before any work: an unknown or absent device is one line
    if isinstance(trajs, (str, Path)):
        trajs = [trajs]  # one trajectory given bare
    if not trajs:
        raise UserError("no trajectory given; pass at least one TRAJ (a branch directory)")
    task_names = parse_task_list(tasks) if tasks else []
    check_settings(num_fewshot, limit, batch_size, dtype, noise_window, bootstrap_iters)
    curve = read_loss_curve(parent_loss) if parent_loss is not None else None
    published = [published] if isinstance(published, (str, Path)) else list(published or [])
    branches = [open_run(t, progress=progress) for t in trajs]
    parent = open_run(parent_spec_of(branches, against), progress=progress)
    if against is not None:
        warn_other_data_order(branches, parent)
    seeds = [open_run(s, progress=progress) for s in (seed_runs or [])]

    labels = unique_names(branches)
    parent_label = f"parent:{parent.name}"
    seed_labels = [f"seed:{n}" for n in unique_names(seeds)] if seeds else []

    shared = {lab: shared_steps(b, parent) for lab, b in zip(labels, branches)}
    vocab = None
    for lab, b in zip(labels, branches):
        vocab = _check_vocab(b, parent, shared[lab][0])
    all_steps = sorted(set().union(*shared.values()))
    ref_step = {lab: (b.branch_step if b.branch_step in shared[lab] else shared[lab][0]) for lab, b in zip(labels, branches)}
    seed_ref = min(ref_step.values())
    seed_steps = seed_steps_of(seeds, seed_labels, all_steps)
    for lab, s in zip(seed_labels, seeds):
        _check_vocab(s, parent, seed_steps[lab][0])

    # Held-out batches from the parent's data order (a branch's points at the same data).
    ends = [b.end_step for b in branches if b.end_step is not None]
    trained_through = max([all_steps[-1], *ends])
    if parent.is_released:  # its partial copy may lack the held-out rows: fetch them first
        parent.ensure_batches(wanted_eval_batches(trained_through, eval_batches, eval_batch_indices))
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
    check_output_dir(out)
    hold.enter_context(output_lock(out))
    clean_orphans(out)  # temporaries of a killed comparison (we hold the lock)
    cache = EvalCache(out / "cache")
    loaded = load_tasks(task_names, include_path, cache.file_hash) if task_names else None  # fail before any write
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

    pub = None
    if published:  # parsed before any evaluation: a bad file fails fast
        pub = read_published(published, parent_name=parent.name, num_fewshot=num_fewshot if num_fewshot is not None else 0)
        for w in pub.warnings:
            print(f"warning: {w}", file=sys.stderr)

    evaluator = Evaluator(parent, eval_set, cache, vocab, device=torch_device, progress=progress)
    res = evaluator.run(subjects_by_step)
    df = build_table(res, parent_label, order)
    measurements = loss_measurements(res, parent_label, order)
    task_run = None
    if loaded is not None:  # the same checkpoints through lm-eval
        ev_subjects = [EvalSubject(parent_label, "trained", st, parent.checkpoint(st)) for st in all_steps]
        ev_subjects += [EvalSubject(x.label, x.weights, x.step, x.path) for st in all_steps for x in subjects_by_step[st]]
        settings = EvalSettings(num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, dtype=dtype,
                                device=str(evaluator.device), bootstrap_iters=stderr_iters)
        task_run = run_tasks(ev_subjects, loaded, settings, cache, tokenizer, out, progress)
        df = pd.concat([df, task_run.rows], ignore_index=True)
        measurements += task_run.measurements
    if pub is not None:
        if task_run is not None:
            keep = set(task_run.tasks.leaves) | set(task_names)
            pub.rows = pub.rows[pub.rows.metric.str.split("/").str[1].isin(keep)].reset_index(drop=True)
        df = pd.concat([df, pub.rows], ignore_index=True)
    controls = [lab for lab, b in zip(labels, branches) if str(b.intervention.get("name", "none")) == "none"]
    analysis = analyze(measurements, parent_label, labels, seed_labels, controls, window=noise_window,
                       iters=bootstrap_iters)

    # Outputs: table, eval set, figures, summary.
    write_table(df, out)
    write_derived(out / "paired.csv", analysis.tests_table().to_csv(index=False, float_format="%.17g"))
    write_derived(out / "bands.csv", analysis.bands_table().to_csv(index=False, float_format="%.17g"))
    write_derived(out / "eval_set.json", json.dumps(eval_set.to_json(), indent=2, sort_keys=True) + "\n")
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
                            for lab, b in zip(labels, branches) if b.traj is not None and b.parent_spec},
                    bands=analysis.bands_table(), parent_curve=curve,
                    parent_curve_label=f"parent training loss ({Path(parent_loss).name}; training batches, not the eval set)"
                    if parent_loss is not None else "")
    written = write_figures(df, out, spec) if figures else []
    if figures and (task_run is not None or pub is not None):
        written += write_task_figures(df, analysis.bands_table(), out,
                                      TaskPlotSpec(parent_label, labels, spec.branch_steps, spec.legend,
                                                   f"{what} vs {parent_label}"))

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
    if curve is not None:
        extra.append(f"the loss figure overlays the parent's training loss from `{parent_loss}` ({len(curve)} points, "
                     f"steps {int(curve.step.min())}..{int(curve.step.max())}; drawn over the compared steps): a "
                     "training loss on the training batches, not the held-out loss of the eval set.")
    sections = significance_section(analysis, bootstrap_iters, DEFAULT_SEED, DEFAULT_LEVEL, noise_window,
                                    len(seed_labels), len(controls))
    if task_run is not None:
        sections = ["## Task scores", "", *settings_lines(task_run.settings.record(), task_run.tasks.names), "",
                    "At each run's last compared step, ± lm-eval's standard error:", "",
                    *task_table(df, [parent_label, *labels, *seed_labels]), "", *sections]
    sections += ["", *published_section(pub, [str(p) for p in published])] if pub is not None else []
    md = write_summary(df, parent_label, parent.spec, notes, eval_set,
                       sorted({p.name for p in written if p.suffix == ".png"}), extra,
                       exactness=None if exactness in (None, "exact") else str(exactness), sections=sections)
    write_derived(out / "summary.md", md)
    return df
