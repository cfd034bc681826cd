"""The comparison shared by the compare tests (the toy and its branches are in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def compared(branches: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    """One comparison of all three branches with the toy (their parent): (table, out dir)."""
    from resume.compare.api import compare

    out = tmp_path_factory.mktemp("compare") / "out"
    df = compare([branches["control"], branches["lawa"], branches["lawa_eval"]], out=out, progress=False)
    return df, out
