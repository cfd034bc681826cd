"""`compare --against RUN` warns on stderr when RUN saw another data order or has another seed than the
branch's parent; the branch's own parent (or a copy of it) gives no warning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from resume.cli import main as cli
from resume.compare.against import warn_other_data_order
from resume.compare.runs import open_run
from resume.engine import branch


@pytest.fixture(scope="module")
def setup(toy_tiny: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("against")
    b = branch(toy_tiny, 16, 2, out=root / "b", optimizer_state="exact", progress=False)
    copy = root / "copy"
    shutil.copytree(toy_tiny, copy)
    seed = root / "seed7"
    shutil.copytree(toy_tiny, seed)
    meta = json.loads((seed / "trajectory.json").read_text())
    meta["recipe"]["seed"] = 7
    (seed / "trajectory.json").write_text(json.dumps(meta))
    order = root / "reshuffled"
    shutil.copytree(toy_tiny, order)
    shard = sorted((order / "data").glob("*.bin"))[0]
    data = bytearray(shard.read_bytes())
    data[:64] = bytes(reversed(data[:64]))  # another order of the same tokens
    shard.write_bytes(bytes(data))
    return b, toy_tiny, copy, seed, order


def test_which_runs_warn(setup, capsys):
    b, parent, copy, seed, order = setup
    branch_ref = open_run(b)
    assert warn_other_data_order([branch_ref], open_run(parent)) == []
    assert warn_other_data_order([branch_ref], open_run(copy)) == []  # the same data in another folder
    (line,) = warn_other_data_order([branch_ref], open_run(seed))
    assert "another seed (7, the branch's parent has 1234)" in line and "not branch vs parent" in line
    (line,) = warn_other_data_order([branch_ref], open_run(order))
    assert "another data order" in line and "seed" not in line.split(" than ")[0]
    capsys.readouterr()


def test_compare_prints_the_warning_on_stderr(setup, tmp_path, capsys):
    b, _, _, seed, _ = setup
    assert cli(["compare", str(b), "--against", str(seed), "--eval-batches", "1", "--out", str(tmp_path / "c")]) == 0
    captured = capsys.readouterr()
    assert "warning: --against" in captured.err and "another seed" in captured.err
    assert "warning" not in captured.out
