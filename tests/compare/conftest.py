"""Branches of the tiny toy shared by the comparison tests (built once per session, ~1 s each)."""

from __future__ import annotations

from pathlib import Path

import os

import pytest

# LAWA with k=2, every=16 from step 32 of the tiny toy (grid 32, 48, 64): at step 48 the training
# weights (replace) or the averaged weights (eval) are exactly mean(parent step32, parent step48).
LAWA_REPLACE = "lawa:k=2,every=16,mode=replace"
LAWA_EVAL = "lawa:k=2,every=16,mode=eval"


@pytest.fixture(scope="session", autouse=True)
def _hash_memo_in_tmp(tmp_path_factory: pytest.TempPathFactory):
    """Keep compare's machine-wide file-hash memo out of the home directory during tests."""
    old = os.environ.get("BRANCHPOINT_CACHE")
    os.environ["BRANCHPOINT_CACHE"] = str(tmp_path_factory.mktemp("hash-memo"))
    yield
    if old is None:
        os.environ.pop("BRANCHPOINT_CACHE", None)
    else:
        os.environ["BRANCHPOINT_CACHE"] = old


@pytest.fixture(scope="session")
def branches(toy_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from resume.engine import branch

    root = tmp_path_factory.mktemp("branches")
    out = {}
    for name, spec in (("control", "none"), ("lawa", LAWA_REPLACE), ("lawa_eval", LAWA_EVAL)):
        out[name] = branch(str(toy_tiny), 32, 32, intervention=spec, out=root / name, progress=False)
    return out


@pytest.fixture(scope="session")
def compared(branches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One comparison of all three branches with the toy (their parent): (table, out dir)."""
    from resume.compare.api import compare

    out = tmp_path_factory.mktemp("compare") / "out"
    df = compare([branches["control"], branches["lawa"], branches["lawa_eval"]], out=out, progress=False)
    return df, out
