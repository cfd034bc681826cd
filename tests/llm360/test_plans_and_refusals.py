"""The released Amber and K2 cards: `branch --dry-run` plans (offline), and bad input as one line each."""

from __future__ import annotations

import pytest

from resume.cli import main

AMBER_FLAG = "exactness: rows-of-chunk exact, order approximate"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_amber_done_when_plan(capsys):
    # `branchpoint branch amber --from-step ckpt_100 --steps 762` -- the plan, offline (HF_HUB_OFFLINE=1 in tests).
    assert main(["branch", "amber", "--from-step", "ckpt_100", "--steps", "762", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: branch amber from ckpt_100 (step 76962) for 762 updates, to step 77724 (ckpt_101)")
    assert "from-step: ckpt_100 is step 76962 of amber" in out
    assert "LLM360/AmberDatasets train/train_101.jsonl (chunk 101, training position 101; train batches 76962..77723)" in out
    assert "train/train_100.jsonl (chunk 100, training position 100; reestimate batches 76872..76961)" in out
    assert "optimizer: reestimate" in out and "the seeded permutation scatters them over the whole file" in out
    assert "compare: held-out batches 77724.. lie in train/train_102.jsonl" in out
    assert "np.random.seed(11111), draw 102 of np.random.permutation(1706976), first 1706880 kept" in out
    assert AMBER_FLAG in out and "unpublished restart history" in out
    assert "memory: 6.74B parameters" in out and "at least 2 GPU(s) of 80 GB" in out
    assert "weights: LLM360/Amber@ckpt_100" in out and "dry run: nothing was fetched" in out


def test_k2_plan_says_a_65b_branch_needs_many_gpus(capsys):
    assert main(["branch", "k2", "--from-step", "ckpt_160", "--steps", "10", "--dry-run", "--no-compare"]) == 0
    out = capsys.readouterr().out
    assert "plan: branch k2 from ckpt_160 (step 150560)" in out
    # position 160 holds chunk 161: chunk 160 was moved to the end after the first loss spike
    assert "LLM360/K2Datasets chunk_161.jsonl (chunk 161, training position 160; train batches 150560..150569)" in out
    assert "chunk_159.jsonl (chunk 159, training position 159; reestimate batches 150470..150559)" in out
    assert "exactness: exact if the released chunks are the shuffled files" in out
    assert "memory: 65.29B parameters" in out and "at least 14 GPU(s) of 80 GB" in out
    assert "this branch only runs on many GPUs" in out and "compare:" not in out


@pytest.mark.parametrize("args,message", [
    (["branch", "amber", "--from-step", "1000", "--steps", "10"],
     "step 1000 is not a checkpoint of amber; nearest available: 762 and 1524 (ckpt_000 and ckpt_001)"),
    (["branch", "amber", "--from-step", "ckpt_360", "--steps", "10"],
     "--from-step ckpt_360 (step 275082) is not a checkpoint of amber; its checkpoints are ckpt_000 .. ckpt_359"),
    (["branch", "amber", "--from-step", "chkpt_10", "--steps", "10"],
     "--from-step 'chkpt_10' is neither a step number nor a checkpoint name of amber (its checkpoints are ckpt_000"),
    (["branch", "k2", "--from-step", "941000", "--steps", "1"],
     "nearest available: 338760 (ckpt_360)"),
    (["branch", "amber", "--from-step", "ckpt_359", "--steps", "10"],
     "needs batches 274320..274329 but the release has 274320 global batches (360 chunks)"),
    (["branch", "pythia-160m", "--from-step", "1000", "--steps", "10", "--order", "file"],
     "--order file: only runs whose data are released as chunk files (LLM360 Amber, K2) have a choice of order"),
])
def test_bad_steps_and_orders_are_one_line(capsys, args, message):
    assert main(args) == 2
    assert message in _one_error_line(capsys)


@pytest.mark.parametrize("args", [
    ["branch", "crystal", "--from-step", "55500", "--steps", "10"],
    ["batch", "crystal", "--step", "55500"],
    ["fetch", "crystal", "--step", "55500", "--data-steps", "2", "--dry-run"],
])
def test_crystal_stays_refused(capsys, args):
    assert main(args) == 2
    line = _one_error_line(capsys)
    assert "crystal cannot be branched" in line
    for reason in ("HDF5 mixtures", "Cerebras ModelZoo loader semantics", "muP", "trust_remote_code"):
        assert reason in line


def test_crystal_card_says_why():
    from checkpoints_cache.registry import resolve_run

    run = resolve_run("crystal")
    assert "HDF5" in run.data_order["not_branchable"] and any("not branchable" in n for n in run.notes)
