"""Markdown sections of ``summary.md``: task scores, "is the difference real?", published numbers."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd

from .analysis import Analysis
from .published import HARNESS, Published


def fmt(x: float | None) -> str:
    if x is None or pd.isna(x):
        return "—"
    return "0" if x == 0 else f"{x:.4g}"


def task_table(df: pd.DataFrame, runs: Sequence[str]) -> list[str]:
    """Each run's task scores (± lm-eval's stderr) at its last evaluated step."""
    from resume.compare.summary import TableLookup

    look = TableLookup(df)
    metrics = sorted({m for (_, w, _, m) in look.values if m.startswith("task/") and not m.endswith("_stderr")
                      and w != "published"})
    if not metrics:
        return []
    last: dict[tuple[str, str], int] = {}
    for (run, weights, step, m) in look.values:
        if m in metrics:
            last[(run, weights)] = max(step, last.get((run, weights), step))
    lines = ["| run | weights | step | " + " | ".join(f"`{m[5:]}`" for m in metrics) + " |",
             "| --- | --- | ---: |" + " ---: |" * len(metrics)]
    for run in runs:
        for weights in ("trained", "averaged"):
            if (run, weights) not in last:
                continue
            step = last[(run, weights)]
            cells = []
            for m in metrics:
                v, e = look.value(run, weights, step, m), look.value(run, weights, step, m + "_stderr")
                cells.append(fmt(v) + (f" ± {fmt(e)}" if e is not None else ""))
            lines.append(f"| `{run}` | {weights} | {step} | " + " | ".join(cells) + " |")
    return lines


def significance_section(analysis: Analysis, iters: int, seed: int, level: float, window: int,
                         seed_runs: int, controls: int, alpha: float = 0.05) -> list[str]:
    lines = ["## Is the difference real?", ""]
    lines.append(
        "Paired tests of each branch against the parent at the same step, on the same items: McNemar's exact "
        "(binomial) test for 0/1 scores (accuracy) with a paired bootstrap CI of the score difference; a paired "
        "bootstrap over items otherwise (held-out loss: over sequences, of the per-sequence loss difference). "
        f"{iters} resamples, seed {seed}, {100 * level:g}% CI; ± is the CI's half-width. A difference is called "
        f"real (\"differs beyond noise\") when p < {alpha:g} and Δ lies outside every available noise band.")
    lines.append("")
    avail = []
    avail.append(f"seed band: {seed_runs} seed run(s) and the parent, median and IQR, exceeded when |Δ| > IQR"
                 if seed_runs else "seed band: none (pass `--seed-runs RUN ...`, e.g. PolyPythias `pythia-160m-seed1`)")
    avail.append(f"checkpoint noise: σ of the parent's metric around its own linear trend over its {window} evaluated "
                 "checkpoints nearest to the step (the step included), exceeded when |Δ| > σ" if window >= 2
                 else "checkpoint noise: off (--noise-window < 2)")
    avail.append(f"repeated controls: {controls} control branches, exceeded when Δ is outside their Δ range"
                 if controls >= 2 else "repeated controls: none (make them with `branchpoint branch RUN --intervention none "
                 "--repeat R`; at least two control branches are needed)")
    lines += [f"- {a}" for a in avail]
    lines += ["", "At each branch's last compared step (every step: `paired.csv`; the bands: `bands.csv`); a band cell "
              "says whether Δ is outside (beyond) or inside it:", ""]
    last = sorted(analysis.last(), key=lambda r: (r.metric != "loss", r.metric, r.run, r.weights))
    if not last:
        lines.append("No branch measurement has a parent measurement at the same step.")
        return lines
    lines.append("| run | weights | metric | step | Δ vs parent | seed band | checkpoint noise | repeated controls | verdict |")
    lines.append("| --- | --- | --- | ---: | --- | --- | --- | --- | --- |")
    for r in last:
        cells = []
        for kind in ("seed", "checkpoint", "controls"):
            b = next((b for b in r.bands if b.kind == kind), None)
            if b is None:
                cells.append("—")
                continue
            width = f"IQR {b.delta_high:.3g}" if kind == "seed" else (
                f"σ {b.delta_high:.3g}" if kind == "checkpoint" else f"[{b.delta_low:.3g}, {b.delta_high:.3g}]")
            cells.append(("**outside**" if b.exceeded(r.delta) else "inside") + f" ({width})")
        lines.append(f"| `{r.run}` | {r.weights} | `{r.metric}` | {r.step} | {r.delta_text()} | " + " | ".join(cells)
                     + f" | {r.verdict} |")
    return lines


def published_section(pub: Published | None, paths: Sequence[str]) -> list[str]:
    if pub is None:
        return []
    lines = ["## Published numbers", ""]
    lines.append(f"{pub.files} file(s) from {', '.join(f'`{p}`' for p in paths)}: {HARNESS}, num_fewshot "
                 f"{pub.num_fewshot if pub.num_fewshot is not None else 'any'}; models "
                 f"{', '.join(f'`{m}`' for m in pub.models) or 'none'}; {len(pub.rows)} rows "
                 "(`weights = published` in the table).")
    lines.append("They come from an older harness with other prompts and task versions (pythia#118, "
                 "lm-evaluation-harness#2211): drawn as a labelled reference series next to this evaluation of the "
                 "parent, never used in a Δ.")
    for w in pub.warnings:
        lines.append(f"- warning: {w}")
    return lines


def settings_lines(record: dict[str, Any], tasks: Sequence[str]) -> list[str]:
    seeds = record.get("seeds", {})
    shots = record.get("num_fewshot") if record.get("num_fewshot") is not None else "each task's default"
    return [f"lm-eval {record.get('lm_eval_version')} (`simple_evaluate`, `HFLM` on each checkpoint folder): tasks "
            f"{', '.join(f'`{t}`' for t in tasks)}; num_fewshot {shots}, limit "
            f"{record.get('limit')}, batch size {record.get('batch_size')}, dtype {record.get('dtype')}, device "
            f"{record.get('device')}; seeds " + ", ".join(f"{k} {v}" for k, v in seeds.items()) + "."]
