"""Bad input gets one clear line (UserError / `error: ...` + exit 2); the CLI writes the same outputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints_cache.errors import UserError
from resume.cli import main
from resume.compare.api import compare


def _fake_parent(toy: Path, root: Path, steps: list[int], vocab: int | None = None) -> Path:
    """A trajectory dir like the toy's with checkpoints only at ``steps`` (another vocabulary if asked)."""
    root.mkdir(parents=True)
    shutil.copy(toy / "trajectory.json", root / "trajectory.json")
    for s in steps:
        dst = root / "checkpoints" / f"step{s}"
        if vocab is None:
            shutil.copytree(toy / "checkpoints" / f"step{s}", dst)
        else:
            from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

            cfg = GPTNeoXConfig.from_pretrained(toy / "checkpoints" / f"step{s}")
            cfg.vocab_size = vocab
            GPTNeoXForCausalLM(cfg).save_pretrained(dst)
    return root


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_not_a_trajectory(tmp_path):
    with pytest.raises(UserError) as e:
        compare([tmp_path], progress=False)
    assert "is not a trajectory directory" in _one_line(e)


def test_run_without_parent_needs_against(toy_tiny, tmp_path):
    with pytest.raises(UserError) as e:
        compare([toy_tiny], out=tmp_path / "x", progress=False)
    assert "no parent" in _one_line(e) and "--against" in str(e.value)


def test_no_shared_steps(toy_tiny, branches, tmp_path):
    other = _fake_parent(toy_tiny, tmp_path / "early", [1, 2])
    with pytest.raises(UserError) as e:
        compare([branches["control"]], against=str(other), out=tmp_path / "x", progress=False)
    msg = _one_line(e)
    assert "share no checkpoint step" in msg and "32, 48, 64" in msg and "1, 2" in msg


def test_mismatched_vocabularies(toy_tiny, branches, tmp_path):
    other = _fake_parent(toy_tiny, tmp_path / "vocab64", [32], vocab=64)
    with pytest.raises(UserError) as e:
        compare([branches["control"]], against=str(other), out=tmp_path / "x", progress=False)
    msg = _one_line(e)
    assert "vocabularies differ" in msg and "128" in msg and "64" in msg


def test_branches_of_different_parents(toy_tiny, branches, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(branches["control"], odd)
    meta = json.loads((odd / "trajectory.json").read_text())
    meta["parent"]["run"] = str(_fake_parent(toy_tiny, tmp_path / "other", [32]))
    (odd / "trajectory.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as e:
        compare([branches["control"], odd], out=tmp_path / "x", progress=False)
    assert "one parent at a time" in _one_line(e)


def test_eval_batches_beyond_the_data(branches, tmp_path):
    with pytest.raises(UserError) as e:
        compare([branches["control"]], eval_batches=17, out=tmp_path / "x", progress=False)
    msg = _one_line(e)
    assert "80 batches" in msg and "at most 16" in msg
    assert not (tmp_path / "x").exists()  # nothing written
    with pytest.raises(UserError) as e:
        compare([branches["control"]], eval_batch_indices=[3, 80], out=tmp_path / "x", progress=False)
    assert "eval batch 80" in _one_line(e)


def test_user_chosen_batches_that_were_trained_on_are_flagged(compared, branches):
    _, out = compared  # reuse its cache: only the eval set differs
    compare([branches["control"]], eval_batch_indices=[10, 70], out=out / "chosen", progress=False, figures=False)
    es = json.loads((out / "chosen" / "eval_set.json").read_text())
    assert es["batch_indices"] == [10, 70] and es["overlaps_training"] == [10]
    assert "**Warning:** batches [10]" in (out / "chosen" / "summary.md").read_text()


def test_cli_writes_the_comparison(compared, branches, capsys):
    _, out = compared  # same out as the fixture: evaluations come from its cache
    rc = main(["compare", str(branches["control"]), str(branches["lawa"]), str(branches["lawa_eval"]),
               "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "lawa" in printed and "comparison written to" in printed
    assert (out / "comparison.csv").is_file() and (out / "overview.png").is_file()


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not a trajectory directory" in err[0]


def test_installed_command_exit_code(tmp_path):
    exe = Path(sys.executable).with_name("branchpoint")
    r = subprocess.run([str(exe), "compare", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
    h = subprocess.run([str(exe), "compare", "--help"], capture_output=True, text=True, timeout=120)
    assert h.returncode == 0 and "example" in h.stdout and "--seed-runs" in h.stdout
