"""Every argument is checked before the first update (and before the toy is built): branch's own and those
of the comparison it runs at the end; every branch of demo. demo writes only where it may, and reuses a
branch only when its whole definition matches."""

from __future__ import annotations

import argparse
import json

import pytest

from resume.branching import check_branch
from resume.cli import main as cli
from resume.cli.demo import _train_once, add_parser

from .helpers import error_lines


def _fails_fast(capsys, argv: list[str], message: str) -> str:
    assert cli(argv) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0], err
    return err[0]


@pytest.mark.parametrize("extra, message", [
    (["--eval-batches", "0"], "--eval-batches 0 must be at least 1 (or pass --no-compare)"),
    (["--eval-batches", "20"], "the comparison at the end would fail"),
    (["--intervention", "gstack:lr=0.001,min_lr=0.01"], "gstack min_lr=0.01 is above lr=0.001"),
    (["--out", "{file}"], "is a file, not a directory"),
])
def test_branch_refuses_before_training(toy_tiny, tmp_path, capsys, extra, message):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    out = tmp_path / "b"
    extra = [str(a_file) if x == "{file}" else x for x in extra]
    argv = ["branch", str(toy_tiny), "--from-step", "48", "--steps", "16", "--out", str(out), *extra]
    _fails_fast(capsys, argv, message)
    assert not out.exists() and a_file.read_text() == "mine"


DEMO = ["demo", "--size", "tiny", "--from-step", "32", "--steps", "8"]


@pytest.mark.parametrize("extra, message", [
    (["--intervention", "bogus"], "unknown intervention 'bogus'"),
    (["--intervention", "lawa:k=0"], "lawa"),
    (["--eval-batches", "0"], "--eval-batches 0 must be at least 1"),
    (["--steps", "0"], "--steps 0"),
    (["--from-step", "33"], "--from-step 33 is not a checkpoint of the tiny toy; nearest available: 32 and 48"),
    (["--steps", "60"], "needs global batches up to 95, but the tiny toy has 80"),
])
def test_demo_checks_everything_before_building_the_toy(tmp_path, capsys, extra, message):
    toy, out = tmp_path / "toy", tmp_path / "demo"
    _fails_fast(capsys, [*DEMO, "--toy", str(toy), "--out", str(out), *extra], message)
    assert not toy.exists() and not out.exists()


def test_demo_checks_both_branches_before_either_trains(toy_tiny, tmp_path, capsys):
    out = tmp_path / "demo"
    _fails_fast(capsys, [*DEMO, "--toy", str(toy_tiny), "--out", str(out), "--intervention", "gstack:lr=0.001,min_lr=0.01"],
                "gstack min_lr=0.01 is above lr=0.001")
    assert not (out / "control").exists()  # the control did not train first


def test_demo_names_size_when_the_toy_is_of_another_size(toy_tiny, tmp_path, capsys):
    line = _fails_fast(capsys, ["demo", "--toy", str(toy_tiny), "--out", str(tmp_path / "d")], "--size tiny")
    assert "choose another --toy" in line and "--out" not in line


def test_demo_refuses_a_non_empty_folder_it_did_not_create(toy_tiny, tmp_path, capsys):
    mine = tmp_path / "my-folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    _fails_fast(capsys, [*DEMO, "--toy", str(toy_tiny), "--out", str(mine)], "non-empty folder that demo did not create")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


def test_demo_reuses_a_branch_only_when_its_definition_matches(toy_tiny, tmp_path, capsys):
    out = tmp_path / "demo"
    base = [*DEMO, "--toy", str(toy_tiny), "--out", str(out), "--eval-batches", "1", "--intervention", "lawa:k=2,every=4"]
    assert cli(base) == 0
    capsys.readouterr()
    # other --steps and another intervention: both branches are trained again, none is reused
    new = [*base[:-1], "lawa:k=3,every=4", "--steps", "4"]
    assert cli(new) == 0
    captured = capsys.readouterr()
    assert "reusing" not in captured.out and captured.err.count("holds another branch") == 2
    # the same arguments again: each branch is reused as it is (checked here without re-plotting)
    sub = argparse.ArgumentParser().add_subparsers()
    add_parser(sub)
    args = sub.choices["demo"].parse_args(new[1:])
    stamp = (out / "lawa" / "metrics.jsonl").stat().st_mtime_ns
    wanted = check_branch(toy_tiny, 32, 4, intervention="lawa:k=3,every=4", out=out / "lawa")
    assert _train_once(toy_tiny, out / "lawa", args, "lawa:k=3,every=4", wanted) == out / "lawa"
    assert "reusing the complete branch" in capsys.readouterr().out
    assert (out / "lawa" / "metrics.jsonl").stat().st_mtime_ns == stamp
    for name, k in (("control", None), ("lawa", 3)):
        meta = json.loads((out / name / "trajectory.json").read_text())
        assert meta["end_step"] == 36 and meta["complete"]
        if k is not None:
            assert meta["intervention"]["params"]["k"] == k
    eval_set = json.loads((out / "compare" / "eval_set.json").read_text())
    assert eval_set["trained_through_step"] == 36  # the comparison is of the new branches
