"""Every intervention from the CLI on the toy, and the README's plugin example through the engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from resume.cli import main

from .conftest import run_branch, weights

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "my_intervention.py"


@pytest.mark.parametrize(
    "spec, name",
    [
        ("lawa:k=2,every=1,mode=eval", "lawa"),
        ("anytime:schedule=wsd,ema=25", "anytime"),
        ("gstack:g=2,noise=0.2", "gstack"),
        ("bimix:entropy=shannon", "bimix"),
        (f"{EXAMPLE}:ShrinkPerturb:shrink=0.9", "shrink-perturb"),
    ],
)
def test_every_intervention_runs_from_the_cli(toy, tmp_path, capsys, spec, name):
    out = tmp_path / "b"
    rc = main(["branch", str(toy), "--from-step", "32", "--steps", "2", "--intervention", spec,
               "--out", str(out), "--no-compare"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "trajectory.json").read_text())
    assert meta["intervention"]["name"] == name and meta["complete"] is True
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [33, 34]
    assert (out / "checkpoints" / "step34" / "model.safetensors").is_file()


def test_bad_spec_from_the_cli_is_one_line_and_writes_nothing(toy, tmp_path, capsys):
    out = tmp_path / "b"
    rc = main(["branch", str(toy), "--from-step", "32", "--steps", "2", "--intervention", "lawa:k=0",
               "--out", str(out), "--no-compare"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: bad value k=0 for intervention lawa") and err.count("\n") == 1
    assert not out.exists()


def test_plugin_example_shrinks_the_branch_point_exactly(toy, tmp_path):
    out = run_branch(toy, tmp_path / "sp", f"{EXAMPLE}:ShrinkPerturb:shrink=0.5,noise=0", steps=2)
    parent, start = weights(toy, 32), weights(out, 32)
    for name, value in parent.items():
        assert torch.equal(start[name], value * 0.5), name  # x·0.5 is exact in float32
    meta = json.loads((out / "trajectory.json").read_text())
    assert meta["intervention"] == {"name": "shrink-perturb", "params": {"shrink": 0.5, "noise": 0.0, "seed": 0}}


def test_plugin_example_noise_has_the_requested_scale(toy, tmp_path):
    out = run_branch(toy, tmp_path / "sp", f"{EXAMPLE}:ShrinkPerturb:shrink=1,noise=0.01,seed=3", steps=1)
    parent, start = weights(toy, 32), weights(out, 32)
    diff = torch.cat([(start[n] - parent[n]).flatten() for n in parent])
    assert 0.0095 < float(diff.std()) < 0.0105 and abs(float(diff.mean())) < 1e-3
