"""RUN -> data order: trajectory directories, and the registry hook of checkpoints_cache."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest

from data_order.mmidx import DataOrderError, write_mmidx
from data_order.resolve import DataSpec, resolve_data
from data_order.source import TokenRows


def _traj(tmp_path, order):
    traj = tmp_path / "traj"
    traj.mkdir()
    (traj / "trajectory.json").write_text(json.dumps({"name": "t", "data_order": order}))
    return traj


def test_trajectory_dir_resolves_relative_path(tmp_path, make_rows):
    traj = _traj(tmp_path, {"kind": "mmidx", "path": "data/document", "batch_size": 2, "seq_len": 3, "exactness": "exact"})
    rows = make_rows(4, 4)
    write_mmidx(traj / "data" / "document", list(rows))
    spec = resolve_data(str(traj))
    assert (spec.path, spec.batch_size, spec.seq_len) == (str(traj / "data" / "document"), 2, 3)
    assert np.array_equal(TokenRows(*spec).batch(1), rows[2:])


@pytest.mark.parametrize(
    "order,match",
    [(None, "declares no data order"), ({"kind": "jsonl", "path": "x", "batch_size": 1, "seq_len": 1}, "kind 'jsonl'"),
     ({"kind": "mmidx", "path": "data"}, "lacks batch_size, seq_len")],
)
def test_bad_trajectory_data_orders(tmp_path, order, match):
    with pytest.raises(DataOrderError, match=match):
        resolve_data(str(_traj(tmp_path, order)))


def test_plain_directory_and_unknown_name(tmp_path, monkeypatch):
    with pytest.raises(DataOrderError, match="not a trajectory"):
        resolve_data(str(tmp_path))
    monkeypatch.setitem(sys.modules, "checkpoints_cache.registry", None)  # as if the module did not exist
    with pytest.raises(DataOrderError):
        resolve_data("no-such-run")


def test_registry_hook_is_used_when_present(tmp_path, monkeypatch):
    # The contract with checkpoints_cache: resolve_run(spec).data_order with kind/path/batch_size/seq_len/exactness.
    registry = types.ModuleType("checkpoints_cache.registry")
    registry.resolve_run = lambda spec: types.SimpleNamespace(
        data_order={"kind": "mmidx", "path": str(tmp_path / "pile"), "batch_size": 1024, "seq_len": 2048, "exactness": "exact"}
    )
    monkeypatch.setitem(sys.modules, "checkpoints_cache.registry", registry)
    spec = resolve_data("pythia-160m-deduped")
    assert spec == DataSpec(str(tmp_path / "pile"), 1024, 2048, "mmidx", "exact", "run pythia-160m-deduped")
    assert tuple(spec) == (str(tmp_path / "pile"), 1024, 2048)


def test_registry_run_without_fetched_data_says_how_to_fetch(monkeypatch):
    registry = types.ModuleType("checkpoints_cache.registry")
    registry.resolve_run = lambda spec: types.SimpleNamespace(
        repo_id="EleutherAI/pythia-70m",
        data_order={"kind": "mmidx", "path": None, "batch_size": 1024, "seq_len": 2048, "exactness": "exact"},
    )
    monkeypatch.setitem(sys.modules, "checkpoints_cache.registry", registry)
    with pytest.raises(DataOrderError, match=r"not in the local cache; run `branchpoint fetch pythia-70m --step N"):
        resolve_data("pythia-70m")
    registry.resolve_run = lambda spec: types.SimpleNamespace(
        repo_id="LLM360/K2", data_order={"kind": "k2-chunks", "path": None, "batch_size": 2040, "seq_len": 2048}
    )
    spec = resolve_data("k2")  # a chunk release: rows come from converted chunk stores, not from a path
    assert (spec.kind, spec.batch_size, spec.order["kind"]) == ("k2-chunks", 2040, "k2-chunks")
