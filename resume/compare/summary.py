"""The short Markdown summary of a comparison: eval set, headline numbers, notes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from .evalset import EvalSet


@dataclass
class RunNote:
    label: str
    role: str  # "branch" | "seed"
    spec: str
    intervention: str
    branch_step: int | None
    steps: list[int]
    notes: list[str] = field(default_factory=list)


def fmt(x: float | None) -> str:
    if x is None or pd.isna(x):
        return "—"
    if x == 0:
        return "0"
    return f"{x:.4g}"


def _value(df: pd.DataFrame, label: str, weights: str, step: int, metric: str) -> float | None:
    sel = df[(df.run == label) & (df.weights == weights) & (df.step == step) & (df.metric == metric)]
    return None if sel.empty else float(sel.value.iloc[0])


def _max_abs(df: pd.DataFrame, label: str, weights: str, metric: str) -> float | None:
    sel = df[(df.run == label) & (df.weights == weights) & (df.metric == metric)]
    return None if sel.empty else float(sel.value.abs().max())


def write_summary(df: pd.DataFrame, parent_label: str, parent_spec: str, runs: list[RunNote], eval_set: EvalSet,
                  figures: list[str], extra_notes: list[str], exactness: str | None = None,
                  sections: list[str] | None = None) -> str:
    """``exactness``: the data order's flag when it is not exact; ``sections``: Markdown lines placed
    before the notes (paired tests and bands, task scores)."""
    lines = [f"# Comparison with `{parent_label}`", ""]
    if exactness:  # the data order is not known exactly (LLM360 chunks): first thing a reader sees
        lines += [f"> **Data order exactness: {exactness}.** The branches trained on the parent's data as far as the "
                  "release allows; read differences from the parent with that in mind.", ""]
    lines.append(f"Parent: `{parent_spec}`.")
    for r in runs:
        if r.role == "branch":
            at = f"from step {r.branch_step}" if r.branch_step is not None else "(no branch step)"
            lines.append(f"- `{r.label}`: {r.intervention} {at}; compared at steps {', '.join(map(str, r.steps))}.")
    seeds = [r for r in runs if r.role == "seed"]
    lines += ["", "## Eval set", ""]
    es = eval_set
    lines.append(
        f"{len(es.batch_indices)} global batch(es) {es.batch_indices} of `{es.data_path}` "
        f"(batch size {es.batch_size}, {es.seq_len} tokens per row): {es.tokens} predicted tokens; {es.rule}. "
        f"Content sha256 `{es.fingerprint[:16]}…` (full record in `eval_set.json`)."
    )
    if es.overlap_with_training():
        lines.append(f"**Warning:** batches {es.overlap_with_training()} were trained on by compared checkpoints "
                     f"(steps after them); the eval set is not held out for those.")
    lines.append("Branches whose intervention picks its own rows (data mixtures) may have trained on held-out rows.")
    lines += ["", "## Headline numbers", ""]
    lines.append("At each model's last compared step (max |·| over all compared steps in parentheses). "
                 "Loss and KL in nats per token.")
    lines.append("")
    lines.append("| run | weights | step | loss | Δloss | KL(parent‖run) | top-1 agreement | param distance (rel.) |")
    lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        for weights in ("trained", "averaged"):
            sub = df[(df.run == r.label) & (df.weights == weights)]
            if sub.empty:
                continue
            last = int(sub.step.max())
            cells = [fmt(_value(df, r.label, weights, last, "loss"))]
            for m in ("delta_loss", "kl", "top1_agreement", "param_distance"):
                v = _value(df, r.label, weights, last, m)
                mx = _max_abs(df, r.label, weights, m) if m != "top1_agreement" else None
                cells.append(fmt(v) + (f" ({fmt(mx)})" if mx is not None and m != "top1_agreement" else ""))
            lines.append(f"| `{r.label}` | {weights} | {last} | " + " | ".join(cells) + " |")
    parent_last = df[df.run == parent_label]
    if not parent_last.empty:
        last = int(parent_last.step.max())
        lines.append(f"| `{parent_label}` | trained | {last} | {fmt(_value(df, parent_label, 'trained', last, 'loss'))} "
                     f"| 0 | 0 | 1 | 0 |")
    exact = []
    for r in runs:
        if r.role != "branch":
            continue
        sub = df[(df.run == r.label) & (df.weights == "trained")]
        vals = {m: sub[sub.metric == m].value for m in ("delta_loss", "kl", "param_distance_abs")}
        top = sub[sub.metric == "top1_agreement"].value
        if all(len(v) and (v == 0).all() for v in vals.values()) and len(top) and (top == 1).all():
            exact.append(r.label)
    if exact:
        lines += ["", "Exactly the parent (Δloss = KL = parameter distance = 0, top-1 agreement = 1 at every "
                  f"compared step): {', '.join(f'`{x}`' for x in exact)}."]
    lines += ["", "## Seed-to-seed variation", ""]
    if seeds:
        lines.append(f"Seed runs {', '.join(f'`{s.label}`' for s in seeds)} were evaluated like branches (rows "
                     "`seed:<name>` in the table); the loss figure shades their median and inter-quartile range "
                     "(with the parent), the Δloss figure ±IQR, and the KL / top-1 figures the range of the seed runs. "
                     "A seed changes both the initialization and the data order (pythia.md §1.1), so their parameter "
                     "distance is in the table but not drawn as a band.")
    else:
        lines.append("No seed runs given: no noise band. Pass `--seed-runs RUN ...` (other seeds of the same recipe, "
                     "e.g. PolyPythias `pythia-160m-seed1`, or `branchpoint toy --seed S`) to judge divergence "
                     "against seed-to-seed variation.")
    if sections:
        lines += ["", *sections]
    lines += ["", "## Notes", ""]
    lines.append("- `kl` = mean over tokens of KL(parent ‖ model) from float64 log-softmax; `top1_agreement` = share of "
                 "positions where the parent's most likely token is also the model's; `delta_loss` = model − parent at the same step.")
    lines.append("- `param_distance` = ‖θ − θ_parent(S)‖ / ‖θ_parent(S) − θ_parent(N)‖. At the branch step N the "
                 "parent has not moved: the ratio is 0 when the model equals the parent exactly and left out "
                 "otherwise; `param_distance_abs` (‖θ − θ_parent(S)‖) is always given where shapes match.")
    for r in runs:
        for n in r.notes:
            lines.append(f"- `{r.label}`: {n}")
    for n in extra_notes:
        lines.append(f"- {n}")
    lines += ["", "## Files", "", "`comparison.csv` / `comparison.parquet` (columns `run, weights, step, metric, value`), "
              "`paired.csv` (paired tests, bands and verdicts per branch, metric and step), `bands.csv`, "
              "`eval_set.json`, figures " + ", ".join(f"`{f}`" for f in figures) + "."]
    if "overview.png" in figures:
        lines += ["", "![overview](overview.png)"]
    return "\n".join(lines) + "\n"


def describe_intervention(iv: dict[str, Any]) -> str:
    name = iv.get("name", "none")
    params = iv.get("params") or {}
    if name == "none":
        return "control (`none`)"
    inner = ",".join(f"{k}={v}" for k, v in params.items())
    return f"`{name}:{inner}`" if inner else f"`{name}`"
