"""Shared fixtures: the tiny toy trajectory is built once per test session (a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# LAWA with k=2, every=16 from step 32 of the tiny toy (grid 32, 48, 64): at step 48 the training
# weights (replace) or the averaged weights (eval) are exactly mean(parent step32, parent step48).
LAWA_REPLACE = "lawa:k=2,every=16,mode=replace"
LAWA_EVAL = "lawa:k=2,every=16,mode=eval,window=branch"  # one snapshot at N: the averaged step N is the parent


@pytest.fixture(scope="session", autouse=True)
def _hash_memo_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Keep compare's machine-wide file-hash memo (and lm-eval's task index) out of the home directory."""
    old = os.environ.get("BRANCHPOINT_CACHE")
    os.environ["BRANCHPOINT_CACHE"] = str(tmp_path_factory.mktemp("hash-memo"))
    yield
    if old is None:
        os.environ.pop("BRANCHPOINT_CACHE", None)
    else:
        os.environ["BRANCHPOINT_CACHE"] = old


@pytest.fixture(scope="session")
def toy_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny toy trajectory (read-only: copy it before changing anything in it)."""
    from resume.toy import build_toy

    return build_toy(tmp_path_factory.mktemp("toy") / "toy-tiny", size="tiny", progress=False)


@pytest.fixture(scope="session")
def branches(toy_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Branches of the tiny toy from step 32 for 32 steps (~1 s each): control, LAWA replace, LAWA eval."""
    from resume.engine import branch

    root = tmp_path_factory.mktemp("branches")
    out = {}
    for name, spec in (("control", "none"), ("lawa", LAWA_REPLACE), ("lawa_eval", LAWA_EVAL)):
        out[name] = branch(str(toy_tiny), 32, 32, intervention=spec, out=root / name, progress=False)
    return out
