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


class TableLookup:
    """The table as dicts (one pass), for the many single-value reads of the summary: a boolean
    pandas filter per cell costs milliseconds, several percent of a toy comparison."""

    def __init__(self, df: pd.DataFrame):
        self.values: dict[tuple[str, str, int, str], float] = {}
        self.series: dict[tuple[str, str, str], list[float]] = {}
        cols = [df[c].tolist() for c in ("run", "weights", "step", "metric", "value")]
        for run, weights, step, metric, value in zip(*cols):
            self.values.setdefault((run, weights, int(step), metric), float(value))
            self.series.setdefault((run, weights, metric), []).append(float(value))
        self.last = {}
        for run, weights, step, _ in self.values:
            self.last[(run, weights)] = max(step, self.last.get((run, weights), step))

    def value(self, label: str, weights: str, step: int, metric: str) -> float | None:
        return self.values.get((label, weights, step, metric))

    def max_abs(self, label: str, weights: str, metric: str) -> float | None:
        v = self.series.get((label, weights, metric))
        return None if not v else max(abs(x) for x in v)


def write_summary(df: pd.DataFrame, parent_label: str, parent_spec: str, runs: list[RunNote], eval_set: EvalSet,
                  figures: list[str], extra_notes: list[str], exactness: str | None = None,
                  sections: list[str] | None = None) -> str:
    """``exactness``: the data order's flag when it is not exact; ``sections``: Markdown lines placed
    before the notes (paired tests and bands, task scores)."""
    look = TableLookup(df)
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
            if (r.label, weights) not in look.last:
                continue
            last = look.last[(r.label, weights)]
            cells = [fmt(look.value(r.label, weights, last, "loss"))]
            for m in ("delta_loss", "kl", "top1_agreement", "param_distance"):
                v = look.value(r.label, weights, last, m)
                mx = look.max_abs(r.label, weights, m) if m != "top1_agreement" else None
                cells.append(fmt(v) + (f" ({fmt(mx)})" if mx is not None and m != "top1_agreement" else ""))
            lines.append(f"| `{r.label}` | {weights} | {last} | " + " | ".join(cells) + " |")
    if (parent_label, "trained") in look.last:
        last = look.last[(parent_label, "trained")]
        lines.append(f"| `{parent_label}` | trained | {last} | {fmt(look.value(parent_label, 'trained', last, 'loss'))} "
                     f"| 0 | 0 | 1 | 0 |")
    exact = []
    for r in runs:
        if r.role != "branch":
            continue
        vals = [look.series.get((r.label, "trained", m)) for m in ("delta_loss", "kl", "param_distance_abs")]
        top = look.series.get((r.label, "trained", "top1_agreement"))
        if all(v and all(x == 0 for x in v) for v in vals) and top and all(x == 1 for x in top):
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
    lines.append("- `kl` = mean over tokens of KL(parent ‖ model) = log E_p[e^(z−z_p)] − E_p[z−z_p] on the fp32 logits with float64 sums (recomputed from float64 log-softmax where the models nearly agree); `top1_agreement` = share of "
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
