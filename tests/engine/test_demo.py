"""The README's main job (`branchpoint demo`), on the tiny toy: branches, table, figures, summary."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from resume.cli import main as cli


def test_demo_leaves_table_figures_and_summary(toy_tiny: Path, tmp_path: Path):
    out = tmp_path / "demo"
    argv = ["demo", "--toy", str(toy_tiny), "--size", "tiny", "--from-step", "32", "--steps", "32",
            "--intervention", "lawa:k=2,every=16,mode=replace", "--out", str(out)]
    assert cli(argv) == 0
    table = pd.read_csv(out / "compare" / "comparison.csv")
    assert list(table.columns) == ["run", "weights", "step", "metric", "value"]
    control = table[table.run == "control"].set_index(["step", "metric"])["value"]
    for step in (32, 48, 64):
        assert control[(step, "kl")] == 0 and control[(step, "delta_loss")] == 0
        assert control[(step, "top1_agreement")] == 1 and control[(step, "param_distance")] == 0
    lawa = table[table.run == "lawa"].set_index(["step", "metric"])["value"]
    assert lawa[(64, "kl")] > 0 and lawa[(64, "param_distance")] > 0
    for name in ("overview.png", "loss.png", "kl.png", "summary.md"):
        assert (out / "compare" / name).stat().st_size > 1000
    # the loss figure and the summary show the corpus's entropy floor over the eval rows
    import json

    import numpy as np

    meta = json.loads((toy_tiny / "trajectory.json").read_text())["data_order"]
    ev = json.loads((out / "compare" / "eval_set.json").read_text())
    labels = np.load(toy_tiny / meta["domains"]["labels"])
    rows = np.concatenate([np.arange(k * 8, (k + 1) * 8) for k in ev["batch_indices"]])
    rates = np.array([meta["domains"]["entropy"][n] for n in meta["domains"]["names"]])
    assert f"entropy floor of the eval rows: {rates[labels[rows]].mean():.4f}" in (out / "compare" / "summary.md").read_text()
    assert cli(argv) == 0  # a rerun reuses the complete branches
