"""Figures of a comparison, drawn from the tidy table alone (so a re-plot needs no model).

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch, so it is
safe inside notebooks and headless CI). Each figure is written as PNG and SVG, atomically.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# (metric, y label, title); param_distance has no seed band: a seed changes the init (pythia.md
# §1.1, "A seed changes both the init and the data shuffle"), so its weight-space distance is no
# noise floor for a branch that shares the parent's weights.
PANELS = {
    "loss": ("eval loss (nats/token)", "Held-out loss"),
    "delta_loss": ("Δ loss vs parent (nats/token)", "Loss difference (model − parent)"),
    "kl": ("KL(parent ‖ model) (nats/token)", "Output divergence"),
    "param_distance": ("‖θ − θ_parent‖ / ‖θ_parent − θ_parent(N)‖", "Parameter distance (relative)"),
    "top1_agreement": ("share of positions", "Top-1 agreement with parent"),
}
BANDED = {"loss", "delta_loss", "kl", "top1_agreement"}
# The value the parent itself has for each divergence metric (a member of the seed band).
PARENT_VALUE = {"delta_loss": 0.0, "kl": 0.0, "top1_agreement": 1.0}


@dataclass
class PlotSpec:
    parent_label: str
    branch_steps: list[int]
    runs: list[str]  # compared runs in display order (branches; seeds excluded)
    seed_labels: list[str] = field(default_factory=list)
    title: str = ""
    legend: dict[str, str] = field(default_factory=dict)  # run -> legend text (e.g. with its intervention)
    loss_floor: float | None = None  # the eval set's entropy floor, where the corpus declares it (the toy)
    bands: pd.DataFrame | None = None  # resume.evaluation's bands table (loss: seed IQR, checkpoint noise, controls)
    parent_curve: pd.DataFrame | None = None  # the parent's training loss (step, loss) from --parent-loss
    parent_curve_label: str = "parent training loss"


# Noise bands of the loss (and, as Δ intervals, of Δloss): colour, alpha, legend.
BAND_STYLE = {"seed": ("0.55", 0.25, "seed band (median, IQR)"),
              "checkpoint": ("tab:cyan", 0.18, "checkpoint noise (parent ± σ)"),
              "controls": ("tab:green", 0.18, "repeated controls (range)")}


def _draw_bands(ax, bands: pd.DataFrame, delta: bool) -> None:
    """The loss bands as drawn (``low..high``), or for Δloss the Δ each band allows (``delta_low..delta_high``)."""
    sub = bands[bands.metric == "loss"]
    for kind, (color, alpha, label) in BAND_STYLE.items():
        b = sub[sub.band == kind].sort_values("step")
        if b.empty:
            continue
        lo, hi = (b.delta_low, b.delta_high) if delta else (b.low, b.high)
        ax.fill_between(b.step, lo, hi, color=color, alpha=alpha, lw=0, zorder=0,
                        label=label if not delta else label.replace("(parent ± σ)", "(± σ)").replace("(median, IQR)", "(± IQR)"))
        if kind == "seed" and not delta:
            ax.plot(b.step, b.center, color="0.45", ls=":", lw=1, zorder=1)


def _draw(ax, df: pd.DataFrame, metric: str, spec: PlotSpec, colors: dict[str, str], floor: bool = False) -> None:
    ylabel, title = PANELS[metric]
    sub = df[df.metric == metric]
    has_bands = spec.bands is not None and not spec.bands.empty and metric in ("loss", "delta_loss")
    if has_bands:
        _draw_bands(ax, spec.bands, delta=metric == "delta_loss")
    elif metric in BANDED and spec.seed_labels:
        band = sub[sub.run.isin(spec.seed_labels)].pivot_table(index="step", columns="run", values="value")
        if not band.empty:
            if metric == "loss":
                parent = sub[sub.run == spec.parent_label].set_index("step")["value"]
                band = band.join(parent.rename("parent"), how="left")
            else:
                band["parent"] = PARENT_VALUE[metric]
            ax.fill_between(band.index, band.min(axis=1), band.max(axis=1), color="0.6", alpha=0.3, lw=0,
                            label=f"seed spread ({len(spec.seed_labels)} seed run{'s' if len(spec.seed_labels) > 1 else ''})")
    if metric == "loss":
        parent = sub[sub.run == spec.parent_label].sort_values("step")
        # Wide and pale under the branches, so a control that coincides with it stays visible.
        ax.plot(parent.step, parent.value, color="black", alpha=0.35, lw=4.0, zorder=1, label=spec.parent_label)
        if spec.parent_curve is not None and not parent.empty:
            # The user's curve over the compared steps only (plus one point each side): a whole-run
            # curve would squash the branch's steps into a corner.
            c = spec.parent_curve
            lo, hi = parent.step.min(), parent.step.max()
            inside = c[(c.step >= lo) & (c.step <= hi)].index
            keep = sorted(set(inside) | {i for i in (inside.min() - 1, inside.max() + 1) if 0 <= i < len(c)}) \
                if len(inside) else list(c.index)
            c = c.loc[keep]
            ax.plot(c.step, c.loss, color="0.25", lw=1.0, alpha=0.8, zorder=2, label=spec.parent_curve_label)
        if floor and spec.loss_floor is not None:
            ax.axhline(spec.loss_floor, color="0.35", ls="--", lw=1.0,
                       label=f"entropy floor of the eval rows ({spec.loss_floor:.3f})")
    elif metric in PARENT_VALUE:
        ax.axhline(PARENT_VALUE[metric], color="black", lw=0.8, alpha=0.6)
    for run in spec.runs:
        for weights, style in (("trained", "-"), ("averaged", "--")):
            line = sub[(sub.run == run) & (sub.weights == weights)].sort_values("step")
            if line.empty:
                continue
            name = spec.legend.get(run, run)
            label = name if weights == "trained" else f"{name}, averaged weights"
            ax.plot(line.step, line.value, style, color=colors[run], marker="o" if weights == "trained" else "s",
                    ms=3, lw=1.4, zorder=3, label=label)
    for i, n in enumerate(sorted(set(spec.branch_steps))):
        ax.axvline(n, color="tab:red", ls=":", lw=1.2, label="branch step" if i == 0 else None)
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)


def _colors(runs: list[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    return {r: palette[i % len(palette)] for i, r in enumerate(runs)}


def save_figure(fig: Figure, out: Path, stem: str) -> list[Path]:
    FigureCanvasAgg(fig)
    paths = []
    for ext in ("png", "svg"):
        final = out / f"{stem}.{ext}"
        tmp = out / f".{stem}.{ext}.tmp"
        fig.savefig(tmp, format=ext, dpi=130, bbox_inches="tight")
        os.replace(tmp, final)
        paths.append(final)
    return paths


def write_figures(df: pd.DataFrame, out: str | Path, spec: PlotSpec) -> list[Path]:
    """One figure per metric family plus ``overview`` (loss, Δloss, KL, parameter distance)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    colors = _colors(spec.runs)
    written: list[Path] = []
    present = set(df.metric)
    for metric in PANELS:
        if metric not in present:
            continue
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.add_subplot()
        _draw(ax, df, metric, spec, colors, floor=True)
        # Below the axes: never on top of the curves, whatever the label lengths.
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        if spec.title:
            fig.suptitle(spec.title, fontsize=9, color="0.3")
        written += save_figure(fig, out, metric)
    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2)
    for ax, metric in zip(axes.flat, ["loss", "delta_loss", "kl", "param_distance"]):
        if metric in present:
            _draw(ax, df, metric, spec, colors)
        else:
            ax.set_axis_off()
            ax.text(0.5, 0.5, f"{metric}: not defined for these runs\n(see summary.md)", ha="center", va="center")
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="upper center", ncol=min(3, len(labels)), fontsize=9,
               bbox_to_anchor=(0.5, 0.0), frameon=False)
    fig.suptitle(spec.title or "Branch vs parent", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    written += save_figure(fig, out, "overview")
    return written
