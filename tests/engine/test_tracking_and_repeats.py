"""branch --log-with (tensorboard event files read back) and --repeat (micro-batch order / data seed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from checkpoints_cache.errors import UserError
from resume.cli import main
from resume.repeats import RowOrder
from resume.tracking import flat_config, parse_log_with


def test_tensorboard_logs_every_metrics_row_and_the_definition(toy_tiny: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    assert main(["branch", str(toy_tiny), "--from-step", "48", "--steps", "8", "--intervention", "lawa:k=2,every=4",
                 "--out", str(out), "--log-with", "tensorboard", "--no-compare"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ea = EventAccumulator(str(out / "tracking" / "tb"))
    ea.Reload()
    assert set(ea.Tags()["scalars"]) == {"loss", "lr", "grad_norm", "tokens"}
    for key in ("loss", "lr", "grad_norm", "tokens"):
        events = ea.Scalars(key)
        assert [e.step for e in events] == [r["step"] for r in rows] == list(range(49, 57))
        assert np.array_equal(np.float32([e.value for e in events]), np.float32([r[key] for r in rows]))
    import yaml

    hparams = yaml.safe_load(next((out / "tracking" / "tb").glob("*/hparams.yml")).read_text())
    meta = json.loads((out / "trajectory.json").read_text())
    assert hparams["intervention/name"] == "lawa" and hparams["parent/step"] == 48
    assert hparams["recipe/lr"] == meta["recipe"]["lr"] and hparams["branch_step"] == 48


def test_no_tracker_no_change(branches):
    assert not (branches["control"] / "tracking").exists()


def test_log_with_errors_and_config_flattening():
    assert parse_log_with(None) == [] and parse_log_with("tensorboard") == ["tensorboard"]
    assert "tensorboard" in parse_log_with("all")
    with pytest.raises(UserError, match="use tensorboard, wandb, trackio or all"):
        parse_log_with("mlflow")
    assert flat_config({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": {}}) == {"a/b": 1, "a/c": "[1, 2]", "d": "null", "e": "{}"}


def test_row_orders():
    rows = np.arange(40, 48)
    order = RowOrder("order", 1, 5, 8, 8)
    a, b = order(5, rows), order(5, rows)
    assert np.array_equal(a, b) and sorted(a) == list(rows) and not np.array_equal(a, rows)
    assert not np.array_equal(RowOrder("order", 2, 5, 8, 8)(5, rows), a)
    data = RowOrder("data", 1, 5, 8, 8)
    seen = np.concatenate([data(n, np.arange(n * 8, (n + 1) * 8)) for n in (5, 6, 7)])
    assert sorted(seen) == list(range(40, 64)) and not np.array_equal(seen, np.arange(40, 64))
    assert list(data(5, np.array([3, 100]))) == [3, 100]  # rows outside the stretch are left alone
    with pytest.raises(UserError, match="--repeat-vary"):
        RowOrder("shuffle", 1, 0, 1, 8)


def test_repeat_cli_order_keeps_each_batch_s_rows(toy_tiny: Path, tmp_path: Path):
    out = tmp_path / "ctl"
    assert main(["branch", str(toy_tiny), "--from-step", "48", "--steps", "4", "--intervention", "none",
                 "--repeat", "2", "--out", str(out), "--no-compare"]) == 0
    parent = {r["step"]: r for r in map(json.loads, (toy_tiny / "metrics.jsonl").read_text().splitlines())}
    for i in (1, 2):
        rep = Path(f"{out}-rep{i}")
        assert json.loads((rep / "trajectory.json").read_text())["repeat"]["index"] == i
        rows = [json.loads(line) for line in (rep / "metrics.jsonl").read_text().splitlines()]
        assert [r["batch_rows"] for r in rows] == [parent[r["step"]]["batch_rows"] for r in rows]  # same rows per batch
    data = tmp_path / "dat"
    assert main(["branch", str(toy_tiny), "--from-step", "48", "--steps", "4", "--repeat", "1", "--repeat-vary", "data",
                 "--out", str(data), "--no-compare"]) == 0
    rows = [json.loads(line) for line in Path(f"{data}-rep1", "metrics.jsonl").read_text().splitlines()]
    assert any(r["batch_rows"] != parent[r["step"]]["batch_rows"] for r in rows)
