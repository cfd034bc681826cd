"""compare() on real branches of the tiny toy: exact zeros for the control, real divergence for LAWA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from resume.compare.api import compare
from resume.compare.table import COLUMNS, METRICS, read_table

STEPS = [32, 48, 64]  # tiny toy grid steps in [32, 64]: the branch step and the parent's grid after it
FIGURES = ["loss", "delta_loss", "kl", "param_distance", "top1_agreement", "overview"]


def value(df: pd.DataFrame, run: str, metric: str, step: int, weights: str = "trained") -> float:
    sel = df[(df.run == run) & (df.weights == weights) & (df.metric == metric) & (df.step == step)]
    assert len(sel) == 1, (run, weights, metric, step)
    return float(sel.value.iloc[0])


def weights(traj: Path, step: int, sub: str = "") -> dict[str, np.ndarray]:
    path = traj / "checkpoints" / f"step{step}" / sub / "model.safetensors"
    return {k: v.double().numpy() for k, v in load_file(path).items() if "rotary" not in k}


def l2(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


def test_table_schema_and_files(compared):
    df, out = compared
    assert list(df.columns) == COLUMNS
    assert df.dtypes.to_dict() == {"run": object, "weights": object, "step": np.int64, "metric": object, "value": np.float64} or \
        [str(t) for t in df.dtypes] in (["object", "object", "int64", "object", "float64"], ["str", "str", "int64", "str", "float64"])
    assert set(df.weights) == {"trained", "averaged"}
    assert set(df.metric) <= set(METRICS)
    assert set(df.run) == {"parent:toy-tiny", "control", "lawa", "lawa_eval"}
    assert sorted(set(df.step)) == STEPS
    assert not df.duplicated(["run", "weights", "step", "metric"]).any()
    # The parent has its loss at every compared step and nothing else.
    parent = df[df.run == "parent:toy-tiny"]
    assert set(parent.metric) == {"loss"} and sorted(parent.step) == STEPS
    # CSV and Parquet hold the same table, values bit for bit.
    for name in ("comparison.csv", "comparison.parquet"):
        back = read_table(out / name)
        assert list(back.columns) == COLUMNS
        assert np.array_equal(back.value.to_numpy(), df.value.to_numpy())
        assert (back.run.to_numpy() == df.run.to_numpy()).all()
    for stem in FIGURES:
        png, svg = out / f"{stem}.png", out / f"{stem}.svg"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert b"<svg" in svg.read_bytes()[:2000] and svg.stat().st_size > 10_000
    summary = (out / "summary.md").read_text()
    assert "[64, 65, 66, 67]" in summary and "`control`" in summary and "Exactly the parent" in summary
    es = json.loads((out / "eval_set.json").read_text())
    assert es["batch_indices"] == [64, 65, 66, 67]  # the 4 batches right after the last compared step
    assert es["rows"][0] == [64 * 8, 65 * 8] and es["tokens"] == 4 * 8 * 32 and es["overlaps_training"] == []


def test_control_is_exactly_zero_at_every_step(compared):
    df, _ = compared
    for step in STEPS:
        assert value(df, "control", "delta_loss", step) == 0.0
        assert value(df, "control", "kl", step) == 0.0
        assert value(df, "control", "param_distance", step) == 0.0
        assert value(df, "control", "param_distance_abs", step) == 0.0
        assert value(df, "control", "top1_agreement", step) == 1.0
        assert value(df, "control", "loss", step) == value(df, "parent:toy-tiny", "loss", step)


def test_lawa_replace_diverges_and_matches_independent_arithmetic(compared, branches, toy_tiny):
    df, _ = compared
    # At the branch step the LAWA branch is still the parent.
    assert value(df, "lawa", "kl", 32) == 0.0 and value(df, "lawa", "param_distance", 32) == 0.0
    for step in (48, 64):
        assert value(df, "lawa", "kl", step) > 0
        assert value(df, "lawa", "param_distance", step) > 0
        assert value(df, "lawa", "top1_agreement", step) < 1
    # Parameter distances against numpy on the saved weights.
    for step in (48, 64):
        b, p, p0 = weights(branches["lawa"], step), weights(toy_tiny, step), weights(toy_tiny, 32)
        assert value(df, "lawa", "param_distance_abs", step) == pytest.approx(l2(b, p), rel=1e-9)
        assert value(df, "lawa", "param_distance", step) == pytest.approx(l2(b, p) / l2(p, p0), rel=1e-9)
    # k=2 replace at 48 = mean(parent 32, parent 48): exactly half the parent's travel (float32 mean).
    assert value(df, "lawa", "param_distance", 48) == pytest.approx(0.5, abs=1e-6)


def test_averaged_weights_compared_separately(compared):
    df, _ = compared
    # LAWA eval mode: training untouched (= control), averaged weights = mean of the last k snapshots.
    for step in STEPS:
        assert value(df, "lawa_eval", "kl", step) == 0.0
        assert value(df, "lawa_eval", "param_distance", step) == 0.0
    assert value(df, "lawa_eval", "kl", 32, "averaged") == 0.0  # one snapshot: the parent itself
    assert value(df, "lawa_eval", "kl", 48, "averaged") > 0
    assert value(df, "lawa_eval", "param_distance", 48, "averaged") == pytest.approx(0.5, abs=1e-6)
    # The averaged weights of eval mode at 48 are the replace branch's training weights at 48.
    assert value(df, "lawa_eval", "kl", 48, "averaged") == pytest.approx(value(df, "lawa", "kl", 48), rel=1e-9)


def test_kl_and_loss_match_an_independent_computation(compared, branches, toy_tiny):
    """KL, loss and top-1 from plain torch on the same logits (same device, one forward per batch
    as compare does, so the logits are the same bits): agreement to float64 rounding."""
    from transformers import AutoModelForCausalLM
    from data_order.source import TokenRows

    df, _ = compared
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # compare's default device
    data = TokenRows(toy_tiny / "data", 8, 32)
    batches = [torch.from_numpy(data.batch(k).astype(np.int64)).to(device) for k in (64, 65, 66, 67)]
    for step in (48, 64):
        p = AutoModelForCausalLM.from_pretrained(toy_tiny / "checkpoints" / f"step{step}").to(device).eval()
        q = AutoModelForCausalLM.from_pretrained(branches["lawa"] / "checkpoints" / f"step{step}").to(device).eval()
        kl = ce = agree = n = 0.0
        with torch.no_grad():
            for ids in batches:  # the eval set: the 4 batches after step 64
                lp = F.log_softmax(p(input_ids=ids[:, :-1]).logits.double(), -1)
                q_logits = q(input_ids=ids[:, :-1]).logits
                lq = F.log_softmax(q_logits.double(), -1)
                kl += float(F.kl_div(lq, lp, log_target=True, reduction="sum"))  # KL(parent || branch)
                # the training loss formula: cross-entropy of row[1:] given row[:-1]
                ce += float(F.cross_entropy(q_logits.reshape(-1, q_logits.shape[-1]).double(), ids[:, 1:].reshape(-1),
                                            reduction="sum"))
                agree += float((lp.argmax(-1) == lq.argmax(-1)).sum())
                n += ids[:, 1:].numel()
        assert value(df, "lawa", "kl", step) == pytest.approx(kl / n, rel=1e-6)  # float32 elementwise (metrics.py)
        assert value(df, "lawa", "loss", step) == pytest.approx(ce / n, rel=1e-6)
        assert value(df, "lawa", "top1_agreement", step) == pytest.approx(agree / n, abs=1e-12)


def test_a_run_compared_with_itself_is_zero(toy_tiny, tmp_path):
    df = compare([toy_tiny], against=str(toy_tiny), out=tmp_path / "self", eval_batches=2, progress=False, figures=False)
    steps = sorted(set(df.step))
    assert steps[0] == 0 and steps[-1] == 64 and len(steps) >= 9  # the whole grid
    run = df[df.run == "toy-tiny"]
    assert (run[run.metric.isin(["delta_loss", "kl", "param_distance_abs"])].value == 0).all()
    assert (run[run.metric == "top1_agreement"].value == 1).all()
    # param_distance is measured from step 0 (no branch step); it is defined (0) at every step.
    assert sorted(run[run.metric == "param_distance"].step) == steps
    assert (run[run.metric == "param_distance"].value == 0).all()


def test_cache_makes_a_rerun_load_no_model_and_follows_content(branches, tmp_path, monkeypatch):
    import resume.compare.evaluate as ev

    ctl = tmp_path / "control"
    shutil.copytree(branches["control"], ctl)
    out = tmp_path / "cmp"
    first = compare([ctl], out=out, eval_batches=2, progress=False, figures=False)

    def no_loading(*a, **k):
        raise AssertionError("a cached comparison must not load any model")

    with monkeypatch.context() as m:
        m.setattr(ev, "load_model", no_loading)
        again = compare([ctl], out=out, eval_batches=2, progress=False)  # with figures: a re-plot
    pd.testing.assert_frame_equal(first, again)
    assert (out / "overview.png").stat().st_size > 10_000

    # Change the branch's weights at step 64: the cache key follows the content, so it re-evaluates.
    path = ctl / "checkpoints" / "step64" / "model.safetensors"
    tensors = load_file(path)
    key = "embed_out.weight"
    tensors[key] = tensors[key] + 0.01
    save_file(tensors, str(path), metadata={"format": "pt"})
    changed = compare([ctl], out=out, eval_batches=2, progress=False, figures=False)
    assert value(changed, "control", "kl", 64) > 0
    assert value(changed, "control", "param_distance_abs", 64) == pytest.approx(0.01 * np.sqrt(tensors[key].numel()), rel=1e-5)
    assert value(changed, "control", "kl", 48) == 0.0


def test_seed_runs_add_rows_and_a_band(branches, tmp_path):
    from resume.toy import build_toy

    seed = build_toy(tmp_path / "toy-seed7", size="tiny", seed=7, progress=False)
    out = tmp_path / "cmp"
    df = compare([branches["lawa"]], seed_runs=[str(seed)], out=out, eval_batches=2, progress=False)
    label = "seed:toy-tiny-seed7"
    assert sorted(df[df.run == label].step.unique()) == STEPS
    for step in STEPS:
        assert value(df, label, "kl", step) > 0  # another init and data order: a different model
        assert value(df, label, "delta_loss", step) != 0
    assert "seed:toy-tiny-seed7" in (out / "summary.md").read_text()
    assert (out / "overview.png").stat().st_size > 10_000


def test_shape_changing_branch_omits_param_distance_and_says_so(toy_tiny, tmp_path):
    from resume.engine import branch

    grown = branch(str(toy_tiny), 32, 16, intervention="gstack:g=2", out=tmp_path / "gstack", progress=False)
    out = tmp_path / "cmp"
    df = compare([grown], out=out, eval_batches=1, progress=False, figures=False)
    run = df[df.run == "gstack"]
    assert sorted(run.step.unique()) == [32, 48]
    assert not run.metric.isin(["param_distance", "param_distance_abs"]).any()
    assert set(run.metric) == {"loss", "delta_loss", "kl", "top1_agreement"}
    assert (run[run.metric == "kl"].value >= 0).all()
    summary = (out / "summary.md").read_text()
    assert "parameter distance left out" in summary and "Gstack" in summary
