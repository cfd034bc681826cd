"""A user-supplied training-loss curve of the parent (a CSV with step and loss), overlaid on the loss
figure: the released runs' curves are not on the Hub (pythia#97, #145; users_and_suites.md §1.4).

Accepted columns: ``step`` and ``loss``; or a W&B export (``Step`` / ``_step`` / ``global_step``
and exactly one column whose name contains ``loss``, its ``__MIN``/``__MAX`` companions ignored).
Rows with an empty loss are dropped; steps must be integers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from checkpoints_cache.errors import UserError

STEP_COLUMNS = ("step", "_step", "global_step", "trainer/global_step", "iteration", "iter")


def read_loss_curve(path: str | Path) -> pd.DataFrame:
    """DataFrame ``step, loss`` sorted by step; a one-line UserError for anything else."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--parent-loss {path}: no such file; pass a CSV with columns step,loss (e.g. a W&B export)")
    try:
        raw = pd.read_csv(path)
    except Exception as e:  # pandas raises several types for malformed files
        raise UserError(f"--parent-loss {path}: not a readable CSV ({str(e).splitlines()[0][:120]})") from None
    lower = {c.lower().strip(): c for c in raw.columns}
    step_col = next((lower[c] for c in STEP_COLUMNS if c in lower), None)
    if "loss" in lower:
        loss_cols = [lower["loss"]]
    else:
        loss_cols = [c for c in raw.columns if "loss" in c.lower() and not c.endswith(("__MIN", "__MAX"))]
    if step_col is None or len(loss_cols) != 1:
        what = "no step column" if step_col is None else (f"{len(loss_cols)} loss columns {loss_cols}" if loss_cols
                                                             else "no loss column")
        raise UserError(f"--parent-loss {path}: {what} among {list(raw.columns)}; pass a CSV with columns step,loss")
    df = raw[[step_col, loss_cols[0]]].rename(columns={step_col: "step", loss_cols[0]: "loss"})
    df = df[pd.to_numeric(df["loss"], errors="coerce").notna()]
    steps = pd.to_numeric(df["step"], errors="coerce")
    if steps.isna().any() or (steps != steps.round()).any():
        raise UserError(f"--parent-loss {path}: the step column holds non-integer values; steps are optimizer steps")
    out = pd.DataFrame({"step": steps.astype("int64"), "loss": pd.to_numeric(df["loss"]).astype("float64")})
    if out.empty:
        raise UserError(f"--parent-loss {path}: no rows with a loss value")
    return out.sort_values("step").drop_duplicates("step", keep="last").reset_index(drop=True)
