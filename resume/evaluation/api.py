"""``evaluate()``: lm-eval tasks on trajectories and their parent, with paired tests and noise bands.

Usage::

    from resume.evaluation.api import evaluate
    df = evaluate(["runs/lawa", "runs/control"], tasks=["toy_next_word"], include_path="tasks/")
    df[df.metric == "task/toy_next_word/acc"]

Semantics, decided where the issue leaves room:

- The parent is the branches' ``parent.run`` (or ``against``), evaluated at every step a branch is
  evaluated at. Without ``steps`` a branch is evaluated at every step where both it and the parent
  have a checkpoint (its branch step included); with ``steps``, at those, each of which must be a
  checkpoint of every run. Each branch's ``averaged/`` weights are evaluated too. Runs without a
  parent (and no ``against``) are evaluated alone, without paired tests.
- Seed runs are evaluated at the compared steps they have; with the parent they form the seed band.
- Control branches (intervention ``none``: the plain control and ``--repeat`` copies) form the
  repeated-control band when there are at least two.
- Outputs in ``out`` (default ``<first TRAJ>/eval``): ``comparison.csv``/``.parquet`` (tidy rows
  ``run, weights, step, metric, value``; ``metric = task/<task>/<metric>`` and
  ``task/<task>/<metric>_stderr``; the published series as ``weights = published``),
  ``paired.csv`` (paired tests, bands, verdicts per branch, metric and step),
  ``bands.csv``, ``eval_config.json`` (settings, seeds, task fingerprints, checkpoints),
  ``summary.md``, ``task_<task>.png/svg`` and ``samples/<task>/<run>__<weights>__step<S>.jsonl``
  (lm-eval's per-item log). ``cache/`` holds the results by checkpoint and task content, so a
  re-run only re-plots.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import describe_nearest
from resume.compare.cache import write_derived

from .analysis import Analysis, Measurement, analyze
from .bands import DEFAULT_WINDOW
from .lmeval import EvalSettings, LmEvalRunner, TaskScores, copy_samples
from .plots import TaskPlotSpec, write_task_figures
from .published import Published, read_published
from .stats import DEFAULT_ITERS, DEFAULT_LEVEL, DEFAULT_SEED
from .summary import published_section, settings_lines, significance_section, task_table
from .tasks import LoadedTasks, load_tasks, parse_task_list

DTYPES = ("float32", "float16", "bfloat16", "auto")
COLUMNS = ["run", "weights", "step", "metric", "value"]


@dataclass
class EvalSubject:
    label: str
    weights: str  # "trained" | "averaged"
    step: int
    path: Path


@dataclass
class TaskRun:
    rows: pd.DataFrame
    measurements: list[Measurement]
    scores: dict[tuple[str, str, int], dict[str, TaskScores]]
    tasks: LoadedTasks
    settings: EvalSettings
    evaluated: int
    samples: list[Path] = field(default_factory=list)


def check_settings(num_fewshot: int | None, limit: int | float | None, batch_size: int, dtype: str,
                   noise_window: int, bootstrap_iters: int) -> None:
    """One-line errors for bad flags, before anything is loaded."""
    if num_fewshot is not None and num_fewshot < 0:
        raise UserError(f"--num-fewshot {num_fewshot}: use 0 or more examples")
    if limit is not None and not limit > 0:
        raise UserError(f"--limit {limit}: use a positive number of documents per task (or a fraction < 1)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: use a positive integer (a pinned batch size: it changes the "
                        "numerics in the 3rd-4th decimal, lm-evaluation-harness#2211)")
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if noise_window < 0:
        raise UserError(f"--noise-window {noise_window}: use 0 (off) or the number of checkpoints (>= 2)")
    if bootstrap_iters < 1:
        raise UserError(f"--bootstrap-iters {bootstrap_iters}: use a positive number of resamples")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _rows(s: EvalSubject, scores: dict[str, TaskScores]) -> tuple[list[tuple], list[Measurement]]:
    rows, ms = [], []
    for task in sorted(scores):
        sc = scores[task]
        for metric in sorted(sc.metrics):
            name = f"task/{task}/{metric}"
            rows.append((s.label, s.weights, s.step, name, sc.metrics[metric]))
            if metric in sc.stderr:
                rows.append((s.label, s.weights, s.step, name + "_stderr", sc.stderr[metric]))
            stat = sc.statistic.get(metric)
            items = sc.items.get(metric) if stat else None
            ms.append(Measurement(s.label, s.weights, s.step, name, sc.metrics[metric],
                                  items=None if items is None else np.asarray(items),
                                  item_keys=sc.item_keys if items is not None else None, statistic=stat or "mean"))
    return rows, ms


def run_tasks(subjects: Sequence[EvalSubject], loaded: LoadedTasks, settings: EvalSettings, cache,
              tokenizer: str | None = None, out: Path | None = None, progress: bool = True) -> TaskRun:
    """Every subject through lm-eval (cached); tidy rows and measurements for the analysis.
    ``loaded``: ``tasks.load_tasks(...)``, done before anything is written (bad task names fail first)."""
    from tqdm.auto import tqdm

    runner = LmEvalRunner(loaded, settings, cache, tokenizer)
    from resume.engine import TOKENIZER_FILES

    cache.prefetch([s.path for s in subjects], extra=TOKENIZER_FILES)
    cache.flush()
    rows: list[tuple] = []
    ms: list[Measurement] = []
    scores: dict[tuple[str, str, int], dict[str, TaskScores]] = {}
    samples: list[Path] = []
    bar = tqdm(subjects, desc="eval: lm-eval per checkpoint", unit="ckpt", disable=not progress)
    try:
        for s in bar:
            bar.set_postfix_str(f"{s.label} step {s.step}" + ("" if s.weights == "trained" else f" {s.weights}"))
            sc = runner.run(s.path)
            scores[(s.label, s.weights, s.step)] = sc
            r, m = _rows(s, sc)
            rows += r
            ms += m
            if out is not None:
                samples += copy_samples(sc, out / "samples", f"{_safe(s.label)}__{s.weights}__step{s.step}")
    finally:
        bar.close()
        cache.flush()
    df = pd.DataFrame(rows, columns=COLUMNS).astype({"run": str, "weights": str, "step": "int64", "metric": str,
                                                      "value": "float64"})
    return TaskRun(df, ms, scores, loaded, settings, runner.evaluated, samples)


def check_steps(runs: Sequence[Any], steps: Sequence[int]) -> list[int]:
    """``--steps``: each must be a checkpoint of every run (one-line error with the nearest ones)."""
    steps = sorted(set(int(s) for s in steps))
    for run in runs:
        have = run.steps
        for s in steps:
            if s not in have:
                raise UserError(f"--steps {s}: {run.name} has no checkpoint at step {s}; nearest available: "
                                f"{describe_nearest(have, s)}")
    return steps


def write_frame(df: pd.DataFrame, out: Path, stem: str) -> None:
    from resume.compare.table import write_table

    write_table(df, out, stem)



def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate(trajs: Sequence[str | Path] | str | Path, tasks: Sequence[str] | str, *, against: str | None = None,
             steps: Sequence[int] | None = None, num_fewshot: int | None = None, limit: int | float | None = None,
             batch_size: int = 16, dtype: str = "float32", device: str | None = None,
             include_path: str | Path | None = None, out: str | Path | None = None,
             seed_runs: Sequence[str] | None = None, published: Sequence[str | Path] | str | Path | None = None,
             noise_window: int = DEFAULT_WINDOW, bootstrap_iters: int = DEFAULT_ITERS,
             bootstrap_seed: int = DEFAULT_SEED, tokenizer: str | None = None, progress: bool = True,
             figures: bool = True, stderr_iters: int = 100_000) -> pd.DataFrame:
    """Evaluate TRAJs (and their parent, at the same steps) on lm-eval tasks; see the module docstring.

    ``stderr_iters``: lm-eval's own bootstrap for the stderr of non-mean metrics (perplexity), its
    default 100000 as in Pythia's evals; the paired tests use ``bootstrap_iters``."""
    from resume.compare.cache import EvalCache
    from resume.compare.runs import open_run, parent_spec_of, seed_steps_of, shared_steps, unique_names

    if isinstance(trajs, (str, Path)):
        trajs = [trajs]
    if not trajs:
        raise UserError("no trajectory given; pass at least one TRAJ")
    names = parse_task_list(list(tasks) if not isinstance(tasks, str) else tasks)
    check_settings(num_fewshot, limit, batch_size, dtype, noise_window, bootstrap_iters)
    published = [published] if isinstance(published, (str, Path)) else list(published or [])
    runs = [open_run(t, progress=progress) for t in trajs]
    has_parent = against is not None or any(r.parent_spec for r in runs)
    parent = open_run(parent_spec_of(runs, against), progress=progress) if has_parent else None
    seeds = [open_run(s, progress=progress) for s in (seed_runs or [])]
    labels = unique_names(runs)
    parent_label = f"parent:{parent.name}" if parent else None
    seed_labels = [f"seed:{n}" for n in unique_names(seeds)] if seeds else []
    if seeds and parent is None:
        raise UserError("--seed-runs needs a parent to compare with: evaluate branches, or pass --against RUN")

    # Steps: given (checked on every run) or where each run and the parent both have a checkpoint.
    if steps:
        chosen = check_steps([*runs, *([parent] if parent else [])], steps)
        run_steps = {lab: chosen for lab in labels}
    else:
        run_steps = {lab: shared_steps(r, parent) if parent else r.steps for lab, r in zip(labels, runs)}
    all_steps = sorted(set().union(*run_steps.values()))
    seed_steps = seed_steps_of(seeds, seed_labels, all_steps)
    pub = None
    if published:  # parsed before any evaluation: a bad file fails fast
        pub = read_published(published, parent_name=(parent or runs[0]).name,
                             num_fewshot=num_fewshot if num_fewshot is not None else 0)
        for w in pub.warnings:
            print(f"warning: {w}", file=sys.stderr)

    if out is None:
        if runs[0].traj is None:
            raise UserError(f"{runs[0].spec} is not a local trajectory directory; pass --out DIR for the results")
        out = runs[0].traj.root / "eval"
    out = Path(out)
    cache = EvalCache(out / "cache")
    loaded = load_tasks(names, include_path, cache.file_hash)  # unknown or unreachable tasks fail before any write
    out.mkdir(parents=True, exist_ok=True)

    subjects: list[EvalSubject] = []
    if parent is not None:
        subjects += [EvalSubject(parent_label, "trained", st, parent.checkpoint(st)) for st in all_steps]
    for lab, r in zip(labels, runs):
        for st in run_steps[lab]:
            subjects.append(EvalSubject(lab, "trained", st, r.checkpoint(st)))
            avg = r.averaged(st)
            if avg is not None:
                subjects.append(EvalSubject(lab, "averaged", st, avg))
    for lab, s in zip(seed_labels, seeds):
        subjects += [EvalSubject(lab, "trained", st, s.checkpoint(st)) for st in seed_steps[lab]]

    settings = EvalSettings(num_fewshot=num_fewshot, limit=limit, batch_size=batch_size, dtype=dtype,
                            device=device or _default_device(), bootstrap_iters=stderr_iters)
    tr = run_tasks(subjects, loaded, settings, cache, tokenizer, out, progress)
    if pub is not None:
        keep = set(tr.tasks.leaves) | set(names)
        pub.rows = pub.rows[pub.rows.metric.str.split("/").str[1].isin(keep)].reset_index(drop=True)
    df = pd.concat([tr.rows, pub.rows] if pub is not None and not pub.rows.empty else [tr.rows], ignore_index=True)

    controls = [lab for lab, r in zip(labels, runs) if str(r.intervention.get("name", "none")) == "none"]
    analysis = analyze(tr.measurements, parent_label, labels, seed_labels, controls, window=noise_window,
                       iters=bootstrap_iters, seed=bootstrap_seed) if parent_label else Analysis()
    write_outputs(out, df, analysis, tr, subjects, published, pub, figures,
                  TaskPlotSpec(parent_label, labels, [r.branch_step for r in runs if r.branch_step is not None],
                               title=f"{', '.join(labels)}" + (f" vs {parent_label}" if parent_label else "")),
                  header=_header(labels, runs, parent_label, parent, run_steps, seed_labels),
                  significance=significance_section(analysis, bootstrap_iters, bootstrap_seed, DEFAULT_LEVEL,
                                                    noise_window, len(seed_labels), len(controls))
                  if parent_label else ["## Is the difference real?", "", "No parent: no paired test."],
                  runs_order=[*([parent_label] if parent_label else []), *labels, *seed_labels])
    return df


def _header(labels, runs, parent_label, parent, run_steps, seed_labels) -> list[str]:
    from resume.compare.runs import steps_text
    from resume.compare.summary import describe_intervention

    what = labels[0] if len(labels) == 1 else f"{len(labels)} runs"
    lines = [f"# Task evaluation: {what}" + (f" vs `{parent_label}`" if parent_label else ""), ""]
    if parent is not None:
        lines.append(f"Parent: `{parent.spec}`, evaluated at every step a run is.")
    for lab, r in zip(labels, runs):
        at = f" from step {r.branch_step}" if r.branch_step is not None else ""
        lines.append(f"- `{lab}`: {describe_intervention(r.intervention)}{at}; steps {steps_text(run_steps[lab])}.")
    for lab in seed_labels:
        lines.append(f"- `{lab}`: seed run (for the seed band).")
    return lines


def write_outputs(out: Path, df: pd.DataFrame, analysis: Analysis, tr: TaskRun, subjects: Sequence[EvalSubject],
                  published_paths: Sequence[str | Path], pub: Published | None, figures: bool, spec: TaskPlotSpec,
                  header: list[str], significance: list[str], runs_order: list[str]) -> None:
    tests, bands = analysis.tests_table(), analysis.bands_table()
    write_frame(df, out, "comparison")
    write_derived(out / "paired.csv", tests.to_csv(index=False, float_format="%.17g"))
    write_derived(out / "bands.csv", bands.to_csv(index=False, float_format="%.17g"))
    record = tr.settings.record()
    write_derived(out / "eval_config.json", json.dumps({
        "settings": record,
        "tasks": {"requested": tr.tasks.names, "leaves": tr.tasks.fingerprints},
        "paired_tests": {"bootstrap_iters": tests_iters(analysis), "level": DEFAULT_LEVEL},
        "checkpoints": [{"run": s.label, "weights": s.weights, "step": s.step, "path": str(s.path)} for s in subjects],
        "published": [str(p) for p in published_paths],
        "simple_evaluate_calls": tr.evaluated,
    }, indent=2, sort_keys=True) + "\n")
    written = write_task_figures(df, bands, out, spec) if figures else []
    lines = list(header) + [""] + settings_lines(record, tr.tasks.names) + [""]
    lines += ["## Task scores", "", "At each run's last evaluated step, ± lm-eval's standard error:", ""]
    lines += task_table(df, [r for r in runs_order if r]) + [""]
    lines += significance + [""]
    lines += published_section(pub, [str(p) for p in published_paths])
    lines += ["", "## Files", "", "`comparison.csv`/`.parquet` (columns `run, weights, step, metric, value`; "
              "`metric = task/<task>/<metric>` and `…_stderr`), `paired.csv`, `bands.csv`, `eval_config.json`, "
              "`samples/` (lm-eval's per-item log), figures " + ", ".join(f"`{p.name}`" for p in written if p.suffix == ".png") + "."]
    write_derived(out / "summary.md", "\n".join(lines) + "\n")


def tests_iters(analysis: Analysis) -> int | None:
    its = {r.test.iters for r in analysis.results if r.test is not None}
    return next(iter(its)) if len(its) == 1 else None
