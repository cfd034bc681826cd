"""`compare` as a study: Δloss with its paired bootstrap over held-out sequences, task rows joining the
table, repeated controls as a noise band, the published series, the parent's training-loss overlay."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from .test_published import RES, pythia_json


@pytest.fixture(scope="module")
def study(toy_tiny, branches, toy_tasks, tmp_path_factory):
    from resume.compare.api import compare
    from resume.engine import branch

    root = tmp_path_factory.mktemp("study")
    reps = [branch(str(toy_tiny), 32, 32, intervention="none", out=root / f"ctl-rep{i}", repeat=(i, 2), progress=False)
            for i in (1, 2)]
    pub = root / "evals"
    for step in (32, 48, 64):
        pythia_json(pub / f"toy_step{step}.json", "toy-v1.1-tiny", step, 0,
                    {"toy_next_word": {"acc": 0.5 + step / 1000, "acc_stderr": 0.05}, **RES})
    curve = root / "wandb.csv"
    rows = [json.loads(line) for line in (toy_tiny / "metrics.jsonl").read_text().splitlines()]
    pd.DataFrame({"Step": [r["step"] for r in rows], "toy - train/lm_loss": [r["loss"] for r in rows],
                  "toy - train/lm_loss__MIN": [r["loss"] for r in rows]}).to_csv(curve, index=False)
    out = root / "compare"
    df = compare([branches["control"], branches["lawa"], *reps], out=out, eval_batches=2, progress=False,
                 tasks="toy_next_word", include_path=toy_tasks, published=[pub], parent_loss=curve,
                 bootstrap_iters=2000)
    return df, out, reps


def test_task_rows_join_the_comparison_table(study):
    df, out, _ = study
    assert list(df.columns) == ["run", "weights", "step", "metric", "value"]
    runs = set(df.run)
    assert {"parent:toy-tiny", "control", "lawa", "ctl-rep1", "ctl-rep2", "published:toy-v1.1-tiny"} == runs
    lawa = df[df.run == "lawa"]
    assert {"loss", "delta_loss", "kl", "task/toy_next_word/acc", "task/toy_next_word/acc_stderr"} <= set(lawa.metric)
    pub = df[df.weights == "published"]
    assert set(pub.metric) == {"task/toy_next_word/acc", "task/toy_next_word/acc_stderr"}  # piqa etc. dropped
    assert sorted(set(pub.step)) == [32, 48, 64]
    for f in ("comparison.csv", "paired.csv", "bands.csv", "task_toy_next_word.png", "loss.png", "summary.md"):
        assert (out / f).is_file(), f


def _row_losses(ckpt: Path, batches: list[np.ndarray]) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt).eval()
    out = []
    with torch.no_grad():
        for b in batches:
            ids = torch.from_numpy(b.astype(np.int64))
            logits = model(input_ids=ids[:, :-1]).logits.double()
            ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")  # [rows, T]
            out.append(ce.mean(dim=1).numpy())
    return np.concatenate(out)


def test_delta_loss_paired_bootstrap_over_sequences(study, toy_tiny, branches):
    from data_order.source import TokenRows
    from resume.evaluation.stats import paired_bootstrap

    df, out, _ = study
    es = json.loads((out / "eval_set.json").read_text())
    data = TokenRows(toy_tiny / "data", 8, 32)
    batches = [data.batch(k) for k in es["batch_indices"]]
    parent = _row_losses(toy_tiny / "checkpoints" / "step64", batches)
    lawa = _row_losses(branches["lawa"] / "checkpoints" / "step64", batches)
    ref = paired_bootstrap(parent, lawa, iters=2000, seed=1234)
    tests = pd.read_csv(out / "paired.csv")
    row = tests[(tests.run == "lawa") & (tests.step == 64) & (tests.metric == "loss")].iloc[0]
    assert row.test == "bootstrap" and row.n == 16  # 2 batches x 8 sequences
    assert row.delta == pytest.approx(ref.delta, rel=1e-5)
    assert (row.ci_low, row.ci_high) == (pytest.approx(ref.ci_low, rel=1e-4), pytest.approx(ref.ci_high, rel=1e-4))
    dl = df[(df.run == "lawa") & (df.step == 64) & (df.metric == "delta_loss")].value.iloc[0]
    assert row.delta == pytest.approx(dl, rel=1e-9)
    ctl = tests[(tests.run == "control") & (tests.metric == "loss")]
    assert (ctl.delta == 0).all() and (ctl.p_value == 1).all()


def test_repeated_controls_form_a_band_and_judge_the_branch(study):
    _, out, reps = study
    meta = json.loads((reps[0] / "trajectory.json").read_text())
    assert meta["repeat"] == {"index": 1, "of": 2, "vary": "order", "seed": 1}
    bands = pd.read_csv(out / "bands.csv")
    ctl = bands[(bands.metric == "loss") & (bands.band == "controls") & (bands.step == 64)].iloc[0]
    assert ctl.n == 3 and ctl.delta_low <= 0 <= ctl.delta_high
    assert 0 < max(-ctl.delta_low, ctl.delta_high) < 1e-3  # micro-batch order: floating-point noise only
    tests = pd.read_csv(out / "paired.csv")
    lawa = tests[(tests.run == "lawa") & (tests.metric == "loss") & (tests.step == 64)].iloc[0]
    assert lawa.controls_exceeded == True  # noqa: E712  (numpy bool from the CSV)
    summary = (out / "summary.md").read_text()
    assert "repeated controls: 3 control branches" in summary
    assert "| `lawa` | trained | `loss` | 64 | Δ = +" in summary and "**outside** ([" in summary


def test_published_series_and_parent_loss_are_noted(study):
    _, out, _ = study
    summary = (out / "summary.md").read_text()
    assert "## Published numbers" in summary and "`EleutherAI/toy-v1.1-tiny`" in summary
    assert "wandb.csv" in summary and "training loss" in summary
