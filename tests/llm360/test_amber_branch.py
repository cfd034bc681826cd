"""`branch` of an Amber-shaped release end to end: plan, chunk fetched and converted once, both orders, compare.

One seeded branch from ``ckpt_001`` (default optimizer state: reestimate from the chunks before it) with
``compare`` against the released ``ckpt_002``, and one file-order branch that must reuse the chunk store.
Rows are checked against an independent reading of the JSONL (json + NumPy's global RNG, conftest).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from resume.engine import _rows_hash

from .conftest import AMBER, B, amber_batch

EXACT = "rows-of-chunk exact, order approximate"


@pytest.fixture(scope="module")
def runs(scenario):
    for name in ("seeded", "file"):
        assert scenario[name]["rc"] == 0, scenario[name]["stderr"][-3000:]
    return {"env": scenario["env"], "seeded": scenario["seeded"], "file": scenario["file"]}


def _metrics(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_plan_names_the_chunk_the_step_and_the_flag(runs):
    out = runs["seeded"]["stdout"]
    assert out.startswith("plan: branch amber-tiny from ckpt_001 (step 6) for 3 updates, to step 9 (ckpt_002)")
    assert "from-step: ckpt_001 is step 6 of amber-tiny" in out
    assert "test/amber-tiny-data train/train_002.jsonl (chunk 2, training position 2; train batches 6..8)" in out
    assert "optimizer: reestimate" in out and "fetched whole" in out and "--optimizer-state fresh skips it" in out
    assert "compare: held-out batches 9.. lie in train/train_003.jsonl" in out
    assert "order: seeded: chunk 2" in out and "np.random.seed(11111), draw 3 of np.random.permutation(13)" in out
    # The approximate-order flag: in the plan, in branch's output, in the trajectory, in compare's summary.
    plan_end = out.index("branch written to")
    assert f"exactness: {EXACT}" in out[:plan_end] and f"exactness: {EXACT} (recorded in" in out[plan_end:]
    meta = json.loads((runs["env"].root / "seeded" / "trajectory.json").read_text())
    assert meta["exactness"] == EXACT and meta["data_order"]["exactness"] == EXACT
    summary = (runs["env"].root / "seeded" / "compare" / "summary.md").read_text()
    assert f"**Data order exactness: {EXACT}.**" in summary
    assert f"exactness: {EXACT}" in runs["file"]["stdout"]


def test_chunk_2_is_fetched_once_and_the_second_branch_reuses_its_store(runs):
    heads = [r for r in runs["seeded"]["log"] if r["method"] == "HEAD" and r["path"].endswith("train/train_002.jsonl")]
    assert len(heads) == 1  # one verified download of the chunk
    assert not [r for r in runs["file"]["log"] if "train_00" in r["path"] or "/lfs-cdn/" in r["path"]]
    assert "train/train_002.jsonl: reusing the token store" in runs["file"]["stderr"]
    assert runs["seeded"]["stderr"].count("train/train_002.jsonl: converted the token store") == 1
    assert "converted" not in runs["file"]["stderr"]
    stores = list((runs["env"].bp_home / "data" / "chunks" / "datasets--test--amber-tiny-data").glob("sha256-*"))
    assert len(stores) == 4  # chunks 0, 1 (reestimate), 2 (train), 3 (compare's held-out batches): one store each


@pytest.mark.parametrize("which,order", [("seeded", "seeded"), ("file", "file")])
def test_rows_trained_on_match_an_independent_reading(runs, which, order):
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    branch = runs["env"].root / which
    rows = _metrics(branch)
    assert [r["step"] for r in rows] == [7, 8, 9]
    for r in rows:
        assert r["batch_rows"] == _rows_hash(amber_batch(r["step"] - 1, order)[1]), r["step"]
    meta = json.loads((branch / "trajectory.json").read_text())
    assert meta["data_order"]["order"] == order and meta["data_order"]["chunks"]["2"]["rows"] == AMBER["E"]
    # The first update's loss is the step-6 weights' loss on exactly the independently read rows of batch 6.
    model = AutoModelForCausalLM.from_pretrained(branch / "checkpoints" / "step6", dtype=torch.float32)
    tokens = torch.from_numpy(amber_batch(6, order)[0]).long()
    with torch.no_grad():
        logits = model(input_ids=tokens[:, :-1]).logits
    loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tokens[:, 1:].reshape(-1))
    assert rows[0]["loss"] == pytest.approx(float(loss), rel=1e-5)
    if order == "seeded":  # reestimate ran on chunks 0 and 1 and left the weights exactly at ckpt_001's
        assert meta["optimizer_state"]["mode"] == "reestimate" and meta["optimizer_state"]["reestimate_batches"] == [0, 6]


def test_amber_recipe_and_lr_convention_in_the_run(runs):
    rows = _metrics(runs["env"].root / "seeded")
    from resume.schedule import linear_warmup_cosine

    # update n uses lr(n): the row of step 7 is update 6
    assert [r["lr"] for r in rows] == pytest.approx([linear_warmup_cosine(n, 1e-3, 1e-4, 2, 15) for n in (6, 7, 8)])
    meta = json.loads((runs["env"].root / "seeded" / "trajectory.json").read_text())
    assert meta["recipe"]["weight_decay_scope"] == "all" and meta["steps"] == [3, 6, 9, 12, 15]


def test_compare_runs_against_the_released_ckpt_002(runs):
    out = runs["env"].root / "seeded" / "compare"
    df = pd.read_csv(out / "comparison.csv")
    parent = df[df.run == "parent:amber-tiny"]
    assert sorted(parent.step.unique()) == [6, 9] and sorted(df[df.run == "seeded"].step.unique()) == [6, 9]
    assert [r for r in runs["seeded"]["log"] if r["path"] == "/api/models/test/amber-tiny/revision/ckpt_002"]
    eval_set = json.loads((out / "eval_set.json").read_text())
    expected = np.concatenate([amber_batch(k)[1] for k in (9, 10)])  # chunk 3, held out from ckpt_002 whatever the order
    assert eval_set["batch_indices"] == [9, 10] and eval_set["row_ids"] == expected.tolist()
    assert "train/train_003.jsonl" in eval_set["data"]


def test_batch_reads_the_store_offline(runs, monkeypatch, capsys, tmp_path):
    from resume.cli import main

    runs["env"].install(monkeypatch)
    npy = tmp_path / "b7.npy"
    assert main(["batch", "amber-tiny", "--step", "7", "--out", str(npy)]) == 0
    assert np.array_equal(np.load(npy), amber_batch(7)[0])
    assert main(["batch", "amber-tiny", "--step", "7"]) == 0
    text = capsys.readouterr().out
    first = int(amber_batch(7)[1][0])
    assert f"row {first} (chunk 2 line {first - 2 * AMBER['E']})" in text and f"exactness: {EXACT}" in text
    assert main(["batch", "amber-tiny", "--step", "13"]) == 2  # chunk 4 was never fetched
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "chunk(s) 4 (train/train_004.jsonl)" in err and "`branchpoint fetch amber-tiny --step 12 --data-steps 1`" in err


@pytest.mark.parametrize("spec,check", [
    ("lawa:k=2,every=1,mode=replace", lambda meta, root: meta["intervention"]["name"] == "lawa"),
    ("anytime:schedule=constant,ema=2", lambda meta, root: (root / "checkpoints" / "step11" / "averaged").is_dir()),
    ("gstack:g=2", lambda meta, root: meta["architecture"]["config"]["num_hidden_layers"] == 4),
    ("bimix:entropy=conditional,sample_rows=4",
     lambda meta, root: set(meta["intervention"]["params"]["mixture"]) <= {"arxiv", "c4", "github"}),
])
def test_llama_interventions_on_the_amber_branch(runs, monkeypatch, tmp_path, spec, check):
    """Branch of the branch (a local Llama trajectory on chunk data): every intervention runs through the engine."""
    from resume.branching import branch

    runs["env"].install(monkeypatch)
    steps = 1 if spec.startswith("bimix") else 2
    out = branch(runs["env"].root / "seeded", 9, steps, intervention=spec, out=tmp_path / "b", progress=False)
    meta = json.loads((out / "trajectory.json").read_text())
    assert meta["complete"] and meta["exactness"] == EXACT and check(meta, out)
    assert meta["data_order"]["chunks"].keys() >= {"3"}  # batches 9.. are in chunk 3 (fetched by compare)
    assert len(_metrics(out)) == steps and B == meta["recipe"]["batch_size"]
