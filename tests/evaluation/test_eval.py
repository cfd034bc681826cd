"""`branchpoint eval` end to end on a local task of our own: lm-eval's own scores, per-item logs,
paired tests from those logs, the content cache, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from resume.cli import main
from resume.compare.table import COLUMNS, read_table

from .conftest import STEPS


def _value(df: pd.DataFrame, run: str, weights: str, step: int, metric: str) -> float:
    sel = df[(df.run == run) & (df.weights == weights) & (df.step == step) & (df.metric == metric)]
    assert len(sel) == 1, (run, weights, step, metric)
    return float(sel.value.iloc[0])


def _samples(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_scores_equal_simple_evaluate_called_directly(evaluated, branches, toy_tasks):
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    df, _ = evaluated
    ckpt = branches["lawa_eval"] / "checkpoints" / "step64" / "averaged"
    lm = HFLM(pretrained=str(ckpt), dtype="float32", batch_size=16, device="cpu")
    out = lm_eval.simple_evaluate(model=lm, tasks=["toy_next_word", "toy_continuation"], bootstrap_iters=1000,
                                  task_manager=TaskManager(include_path=str(toy_tasks), include_defaults=False))
    res = out["results"]
    for task, metric in (("toy_next_word", "acc"), ("toy_next_word", "acc_norm"), ("toy_continuation", "perplexity"),
                         ("toy_continuation", "acc")):
        name = f"task/{task}/{metric}"
        assert _value(df, "lawa_eval", "averaged", 64, name) == res[task][f"{metric},none"]
        assert _value(df, "lawa_eval", "averaged", 64, name + "_stderr") == res[task][f"{metric}_stderr,none"]


def test_table_rows_files_and_summary(evaluated):
    df, out = evaluated
    assert list(df.columns) == COLUMNS
    back = read_table(out / "comparison.csv")
    assert np.array_equal(back.value.to_numpy(), df.value.to_numpy())
    runs = {(r, w) for r, w in zip(df.run, df.weights)}
    assert runs == {("parent:toy-tiny", "trained"), ("control", "trained"), ("lawa_eval", "trained"),
                    ("lawa_eval", "averaged")}
    assert sorted(set(df.step)) == STEPS
    assert set(df.metric) == {f"task/{t}/{m}{s}" for t, ms in (("toy_next_word", ("acc", "acc_norm")),
                                                                ("toy_continuation", ("perplexity", "acc")))
                              for m in ms for s in ("", "_stderr")}
    # the control reproduces its parent exactly, and LAWA's average differs from it
    for m in ("task/toy_next_word/acc", "task/toy_continuation/perplexity"):
        assert _value(df, "control", "trained", 64, m) == _value(df, "parent:toy-tiny", "trained", 64, m)
    assert _value(df, "lawa_eval", "averaged", 64, "task/toy_continuation/perplexity") != \
        _value(df, "parent:toy-tiny", "trained", 64, "task/toy_continuation/perplexity")
    cfg = json.loads((out / "eval_config.json").read_text())
    s = cfg["settings"]
    assert (s["batch_size"], s["dtype"], s["num_fewshot"]) == (16, "float32", None)
    assert s["seeds"] == {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
    assert set(cfg["tasks"]["leaves"]) == {"toy_next_word", "toy_continuation"}
    summary = (out / "summary.md").read_text()
    assert "Δ = " in summary and "p = " in summary and "checkpoint noise" in summary
    assert "`lawa_eval` | averaged | `task/toy_continuation/perplexity` | 64 |" in summary
    for task in ("toy_next_word", "toy_continuation"):
        assert (out / f"task_{task}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(list((out / "samples" / task).glob("*.jsonl"))) == 8


def test_paired_tests_come_from_the_per_item_logs(evaluated):
    df, out = evaluated
    tests = pd.read_csv(out / "paired.csv")
    parent = _samples(out / "samples" / "toy_continuation" / "parent_toy-tiny__trained__step64.jsonl")
    avg = _samples(out / "samples" / "toy_continuation" / "lawa_eval__averaged__step64.jsonl")
    assert [s["doc_id"] for s in parent] == [s["doc_id"] for s in avg] == list(range(48))
    a = np.array([s["acc"] for s in parent])
    b = np.array([s["acc"] for s in avg])
    row = tests[(tests.run == "lawa_eval") & (tests.weights == "averaged") & (tests.step == 64)
                & (tests.metric == "task/toy_continuation/acc")].iloc[0]
    assert row.test == "mcnemar" and (row.n01, row.n10) == (((a == 1) & (b == 0)).sum(), ((a == 0) & (b == 1)).sum())
    assert row.delta == pytest.approx(b.mean() - a.mean(), abs=1e-12)
    ppl = tests[(tests.run == "lawa_eval") & (tests.weights == "averaged") & (tests.step == 64)
                & (tests.metric == "task/toy_continuation/perplexity")].iloc[0]
    lp, lq = np.array([s["perplexity"] for s in parent]), np.array([s["perplexity"] for s in avg])
    assert ppl.test == "bootstrap" and ppl.delta == pytest.approx(np.exp(-lq.mean()) - np.exp(-lp.mean()), rel=1e-9)
    assert ppl.delta == pytest.approx(_value(df, "lawa_eval", "averaged", 64, "task/toy_continuation/perplexity")
                                      - _value(df, "parent:toy-tiny", "trained", 64, "task/toy_continuation/perplexity"), rel=1e-9)
    ctl = tests[(tests.run == "control") & (tests.metric == "task/toy_next_word/acc")]
    assert (ctl.delta == 0).all() and (ctl.p_value == 1).all()
    assert ctl.verdict.str.startswith("no significant difference").all()


def test_rerun_only_replots_and_task_data_is_part_of_the_key(evaluated, branches, toy_tasks, tmp_path):
    from resume.evaluation.api import evaluate

    df, out = evaluated
    (out / "task_toy_next_word.png").unlink()
    again = evaluate([branches["control"], branches["lawa_eval"]], ["toy_next_word", "toy_continuation"],
                     include_path=toy_tasks, steps=STEPS, out=out, progress=False, stderr_iters=1000, bootstrap_iters=2000)
    assert json.loads((out / "eval_config.json").read_text())["simple_evaluate_calls"] == 0
    assert (out / "task_toy_next_word.png").is_file()
    pd.testing.assert_frame_equal(again, df)
    # Another task file content: evaluated again (only what changed).
    tasks2 = tmp_path / "tasks"
    shutil.copytree(toy_tasks, tasks2)
    data = tasks2 / "toy_next_word.jsonl"
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[:-1]) + "\n")  # one document fewer
    yaml = tasks2 / "toy_next_word.yaml"
    yaml.write_text(yaml.read_text().replace(str((toy_tasks / "toy_next_word.jsonl").resolve()), str(data.resolve())))
    out2 = tmp_path / "out2"
    shutil.copytree(out, out2)
    evaluate([branches["control"]], ["toy_next_word"], include_path=tasks2, steps=[64], out=out2, progress=False)
    assert json.loads((out2 / "eval_config.json").read_text())["simple_evaluate_calls"] == 1  # parent = control
    assert len(_samples(out2 / "samples" / "toy_next_word" / "control__trained__step64.jsonl")) == 47


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_bad_input_one_clear_line(branches, toy_tasks, tmp_path, capsys):
    base = ["eval", str(branches["control"]), "--include-path", str(toy_tasks), "--out", str(tmp_path / "o"),
            "--no-progress"]
    assert main(base + ["--tasks", "toy_next_wrd"]) == 2
    msg = _one_line_error(capsys)
    assert "unknown task 'toy_next_wrd'" in msg and "toy_next_word" in msg
    assert main(base + ["--tasks", "toy_next_word", "--steps", "50"]) == 2
    msg = _one_line_error(capsys)
    assert "--steps 50" in msg and "no checkpoint at step 50" in msg and "48 and 64" in msg
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"results": {"x": {"acc,none": 1.0}}, "configs": {}}))
    assert main(base + ["--tasks", "toy_next_word", "--published", str(bad)]) == 2
    assert "not a Pythia lm-eval v0.3 results JSON" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()  # nothing written before the inputs are checked


def test_task_that_needs_the_network_while_offline(branches, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "hub_task.yaml").write_text(
        "task: hub_task\ndataset_path: someorg/not_cached_anywhere\ntest_split: test\noutput_type: multiple_choice\n"
        "doc_to_text: '{{q}}'\ndoc_to_choice: '{{choices}}'\ndoc_to_target: label\nmetric_list:\n  - metric: acc\n")
    rc = main(["eval", str(branches["control"]), "--tasks", "hub_task", "--include-path", str(tmp_path / "tasks"),
               "--steps", "64", "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    msg = _one_line_error(capsys)
    assert "someorg/not_cached_anywhere" in msg and "HF_DATASETS_CACHE" in msg and "offline" in msg
