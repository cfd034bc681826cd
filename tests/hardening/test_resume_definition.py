"""--resume continues a branch only under its own definition: parent, step, end, intervention and its
resolved parameters, optimizer-state mode, recipe, precision. Anything else is one line saying what
differs, and the branch's files and provenance stay as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from resume.branch_definition import BranchDefinition
from resume.branching import check_branch
from resume.cli import main as cli
from resume.engine import branch
from tests.engine.helpers import metrics

from .helpers import error_lines

ARGS = ["--from-step", "16", "--steps", "4", "--no-compare"]


@pytest.fixture(scope="module")
def done(toy_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete control branch, 16 -> 20 (read-only: copy it before changing it)."""
    return branch(toy_tiny, 16, 4, out=tmp_path_factory.mktemp("def") / "control", optimizer_state="exact",
                  progress=False)


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / src.name
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("extra, differs", [
    (["--intervention", "lawa:k=2,every=4"], "its intervention is none, not lawa:every=4,k=2,mode=replace"),
    (["--optimizer-state", "fresh"], "its optimizer state is exact, not fresh"),
    (["--steps", "6"], "it runs from step 16 to 20, not 16 to 22"),
    (["--numerics", "neox"], "it was trained with --numerics hf, not neox"),
])
def test_resume_with_another_definition_is_refused(toy_tiny, done, tmp_path, capsys, extra, differs):
    out = _copy(done, tmp_path)
    before = (out / "trajectory.json").read_text(), (out / "metrics.jsonl").read_text()
    argv = ["branch", str(toy_tiny), *ARGS, "--out", str(out), "--resume", *extra]
    assert cli(argv) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and differs in err[0] and "another --out" in err[0], err
    assert ((out / "trajectory.json").read_text(), (out / "metrics.jsonl").read_text()) == before


def test_a_changed_recipe_or_parent_is_named(toy_tiny, done, tmp_path, capsys):
    out = _copy(done, tmp_path)
    meta = json.loads((out / "trajectory.json").read_text())
    meta["recipe"]["lr"] = 1e-3
    (out / "trajectory.json").write_text(json.dumps(meta))
    assert cli(["branch", str(toy_tiny), *ARGS, "--out", str(out), "--resume"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "its recipe differs: lr=0.001 (not 0.003)" in err[0], err

    (tmp_path / "elsewhere").mkdir()
    other_parent = _copy(toy_tiny, tmp_path / "elsewhere")  # the same run, copied: another parent all the same
    meta["recipe"]["lr"] = 3e-3
    (out / "trajectory.json").write_text(json.dumps(meta))
    assert cli(["branch", str(other_parent), *ARGS, "--out", str(out), "--resume"]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"its parent is {toy_tiny.resolve()}, not {other_parent.resolve()}" in err[0], err


def test_resume_of_a_complete_branch_with_its_own_arguments_trains_nothing(toy_tiny, done, tmp_path, capsys):
    out = _copy(done, tmp_path)
    before = metrics(out)
    assert cli(["branch", str(toy_tiny), *ARGS, "--out", str(out), "--resume"]) == 0  # mode defaults to the recorded one
    assert "already complete" in capsys.readouterr().err
    assert metrics(out) == before


@pytest.mark.parametrize("spec", ["lawa:k=2", "anytime:schedule=constant,ema=4", "bimix:entropy=conditional",
                                  "gstack:g=2"])
def test_every_builtin_intervention_resumes_under_its_recorded_definition(toy_tiny, tmp_path, spec):
    """Parent-derived parameters (LAWA's every, anytime's lr/warmup/alpha, ...) resolve the same way on resume."""
    out = branch(toy_tiny, 16, 2, out=tmp_path / "b", intervention=spec, progress=False)
    recorded = BranchDefinition.of_trajectory(out)
    wanted = check_branch(toy_tiny, 16, 2, intervention=spec, optimizer_state=recorded.optimizer_state, out=out)
    assert wanted.differences(recorded) == []
    assert branch(toy_tiny, 16, 2, out=out, intervention=spec, resume=True, progress=False) == out
