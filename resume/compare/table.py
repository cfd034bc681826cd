"""The tidy comparison table: one row per (run, weights, step, metric).

Metric definitions (all on the same held-out eval set, mean over its predicted tokens):

- ``loss``: cross-entropy in nats per token (every run, the parent included).
- ``delta_loss``: loss of the compared model minus the parent's loss at the same step.
- ``kl``: KL(parent || model) in nats per token, from both models' fp32 logits with float64 sums
  (from float64 log-softmax where the models nearly agree; ``metrics.pair_sums``).
- ``top1_agreement``: share of positions where the parent's most likely next token is also the
  model's most likely one (ties count as agreement).
- ``param_distance_abs``: ‖θ − θ_parent(S)‖₂ over all parameters.
- ``param_distance``: ‖θ − θ_parent(S)‖ / ‖θ_parent(S) − θ_parent(N)‖, how far the model is from the
  parent relative to how far the parent itself moved since the branch point N. Where the parent has
  not moved (S = N) the ratio is 0 if the model equals the parent exactly and left out otherwise
  (``param_distance_abs`` still says how far it is). Both distances are left out when the
  parameter shapes differ (a shape-changing intervention such as Gstack).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .cache import write_derived
from .evaluate import Results

COLUMNS = ["run", "weights", "step", "metric", "value"]
METRICS = ["loss", "delta_loss", "kl", "top1_agreement", "param_distance", "param_distance_abs"]


def relative_distance(abs_value: float | None, travel: float | None) -> float | None:
    if abs_value is None or travel is None:
        return None
    if travel > 0:
        return abs_value / travel
    return 0.0 if abs_value == 0 else None  # never divide by zero: 0/0 of identical weights is 0


def build_table(res: Results, parent_label: str, subjects: list[tuple[str, str, int]]) -> pd.DataFrame:
    """Rows for the parent (loss per step) and every compared (label, weights, step)."""
    rows: list[tuple[str, str, int, str, float]] = []
    for step in sorted(res.parent_loss):
        rows.append((parent_label, "trained", step, "loss", res.parent_loss[step]))
    for key in subjects:
        label, weights, step = key
        pair = res.pairs[key]
        values = {
            "loss": pair.loss,
            "delta_loss": pair.loss - pair.parent_loss,
            "kl": pair.kl,
            "top1_agreement": pair.top1_agreement,
        }
        dist, travel = res.distance.get(key), res.travel.get(key)
        abs_value = dist.value if dist is not None else None
        rel = relative_distance(abs_value, travel.value if travel is not None else None)
        if rel is not None:
            values["param_distance"] = rel
        if abs_value is not None:
            values["param_distance_abs"] = abs_value
        for metric in METRICS:
            if metric in values:
                rows.append((label, weights, step, metric, float(values[metric])))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"run": str, "weights": str, "step": "int64", "metric": str, "value": "float64"})


def write_table(df: pd.DataFrame, out: Path, stem: str = "comparison") -> list[Path]:
    """<stem>.csv (full float precision) and <stem>.parquet, each written atomically."""
    out = Path(out)
    csv = out / f"{stem}.csv"
    write_derived(csv, df.to_csv(index=False, float_format="%.17g"))
    parquet = out / f"{stem}.parquet"
    tmp = parquet.with_name(f".{parquet.name}.tmp")
    df.to_parquet(tmp, index=False)
    tmp.replace(parquet)
    return [csv, parquet]


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a comparison.csv / .parquet back with the table's dtypes."""
    path = Path(path)
    if path.suffix == ".parquet":
        df = pd.read_parquet(path)
    else:
        # The CSV holds 17 significant digits; Python's float() parses them back exactly, while
        # pandas' own float parser can be 1 ulp off depending on the version (seen with 3.0.6).
        df = pd.read_csv(path, dtype={"value": str})
        df["value"] = df["value"].map(float)
    return df.astype({"run": str, "weights": str, "step": "int64", "metric": str, "value": "float64"})


def pivot(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One metric as a wide table: index step, one column per (run, weights)."""
    sub = df[df.metric == metric]
    return sub.pivot_table(index="step", columns=["run", "weights"], values="value", aggfunc="first")
