"""Figures of task scores: one per task (``task_<name>.png/svg``), one panel per metric, score vs
step for the parent and the branches, with the noise bands and the published reference series.

Drawn from the tidy tables alone (``comparison.csv`` and ``bands.csv``), so a re-plot needs no
model; matplotlib's object API with the Agg canvas, as in ``resume.compare.plots``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from resume.compare.plots import save_figure

PUBLISHED_NOTE = ("Published: the parent's released evaluation (lm-eval v0.3 in gpt-neox, other prompts and task "
                  "versions): compare its trend, not its level, with this harness's own evaluation of the parent.")
BAND_STYLE = {"seed": ("0.55", 0.25, "seed band (median, IQR)"),
              "checkpoint": ("tab:cyan", 0.18, "checkpoint noise (parent ± σ)"),
              "controls": ("tab:green", 0.18, "repeated controls (range)")}


@dataclass
class TaskPlotSpec:
    parent_label: str | None
    runs: list[str]  # compared runs in display order (branches)
    branch_steps: list[int] = field(default_factory=list)
    legend: dict[str, str] = field(default_factory=dict)
    title: str = ""


def task_metrics(df: pd.DataFrame) -> dict[str, list[str]]:
    """task name -> its metric names ('acc', 'acc_norm', ...) present in the table."""
    out: dict[str, list[str]] = {}
    for m in sorted(set(df.metric)):
        parts = m.split("/")
        if len(parts) != 3 or parts[0] != "task" or parts[2].endswith("_stderr"):
            continue
        out.setdefault(parts[1], []).append(parts[2])
    return out


def _stderr(df: pd.DataFrame, run: str, weights: str, metric: str) -> pd.Series:
    sub = df[(df.run == run) & (df.weights == weights) & (df.metric == metric + "_stderr")]
    return sub.set_index("step")["value"]


def _line(ax, df, run, weights, metric, label, dodge: float = 0.0, **kw) -> None:
    """One series with lm-eval's stderr as error bars, shifted by ``dodge`` steps so that the bars of
    runs with equal scores (a control and its parent) stay apart."""
    sub = df[(df.run == run) & (df.weights == weights) & (df.metric == metric)].sort_values("step")
    if sub.empty:
        return
    err = _stderr(df, run, weights, metric).reindex(sub.step).to_numpy()
    ax.errorbar(sub.step + dodge, sub.value, yerr=None if pd.isna(err).all() else err, label=label, capsize=2,
                elinewidth=0.8, **kw)


def _draw(ax, df: pd.DataFrame, bands: pd.DataFrame, metric: str, spec: TaskPlotSpec, colors: dict[str, str]) -> None:
    b = bands[bands.metric == metric] if not bands.empty else bands
    for kind, (color, alpha, label) in BAND_STYLE.items():
        sub = b[b.band == kind].sort_values("step") if not b.empty else b
        if sub.empty:
            continue
        ax.fill_between(sub.step, sub.low, sub.high, color=color, alpha=alpha, lw=0, label=label, zorder=0)
        if kind == "seed":
            ax.plot(sub.step, sub.center, color="0.45", ls=":", lw=1, zorder=1)
    pubs = sorted({r for r in df.run if r.startswith("published:")})
    series = ([(spec.parent_label, "trained")] if spec.parent_label else []) + \
        [(r, w) for r in spec.runs for w in ("trained", "averaged")] + [(p, "published") for p in pubs]
    present = [k for k in series if ((df.run == k[0]) & (df.weights == k[1]) & (df.metric == metric)).any()]
    steps = df[df.metric == metric].step
    unit = 0.008 * (float(steps.max() - steps.min()) or 1.0)
    dodge = {k: (i - (len(present) - 1) / 2) * unit for i, k in enumerate(present)}
    if spec.parent_label:
        _line(ax, df, spec.parent_label, "trained", metric, spec.parent_label, dodge.get((spec.parent_label, "trained"), 0),
              color="black", lw=3.5, alpha=0.4, marker="o", ms=3, zorder=2)
    for run in spec.runs:
        for weights, style in (("trained", "-"), ("averaged", "--")):
            name = spec.legend.get(run, run)
            _line(ax, df, run, weights, metric, name if weights == "trained" else f"{name}, averaged weights",
                  dodge.get((run, weights), 0), color=colors[run], ls=style, marker="o" if weights == "trained" else "s",
                  ms=3, lw=1.4, zorder=3)
    for pub in pubs:
        _line(ax, df, pub, "published", metric, f"{pub} (released evals, lm-eval v0.3)", dodge.get((pub, "published"), 0),
              color="tab:red", ls="none", marker="x", ms=6, zorder=4)
    for i, n in enumerate(sorted(set(spec.branch_steps))):
        ax.axvline(n, color="tab:red", ls=":", lw=1.0, label="branch step" if i == 0 else None)
    ax.set_xlabel("training step")
    ax.set_ylabel(metric.split("/")[-1])
    ax.grid(True, alpha=0.3)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def write_task_figures(df: pd.DataFrame, bands: pd.DataFrame, out: str | Path, spec: TaskPlotSpec) -> list[Path]:
    """``task_<name>.png/svg`` per task in the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    colors = {r: palette[i % len(palette)] for i, r in enumerate(spec.runs)}
    written: list[Path] = []
    for task, metrics in task_metrics(df).items():
        cols = min(3, len(metrics))
        rows = -(-len(metrics) // cols)
        fig = Figure(figsize=(5.2 * cols, 3.8 * rows + 0.9))
        axes = fig.subplots(rows, cols, squeeze=False)
        for ax, m in zip(axes.flat, metrics):
            _draw(ax, df, bands, f"task/{task}/{m}", spec, colors)
            ax.set_title(m, fontsize=10)
        for ax in list(axes.flat)[len(metrics):]:
            ax.set_axis_off()
        handles: dict[str, object] = {}
        for ax in axes.flat:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=min(3, max(1, len(handles))), fontsize=8, frameon=False)
        fig.suptitle(f"{task}" + (f": {spec.title}" if spec.title else ""), fontsize=11)
        top = 0.95
        if any(r.startswith("published:") for r in df.run):
            fig.text(0.5, 0.935, PUBLISHED_NOTE, ha="center", va="top", fontsize=7, color="0.3")
            top = 0.9
        fig.tight_layout(rect=(0, 0, 1, top))
        written += save_figure(fig, out, f"task_{_safe(task)}")
    return written
