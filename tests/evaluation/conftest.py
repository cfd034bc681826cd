"""The toy's text tasks (local YAMLs over generated jsonl) and one evaluation shared by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# lm-eval computes the stderr of perplexity-like metrics with a bootstrap in a multiprocessing pool;
# a pool per checkpoint costs more than the whole toy evaluation.
os.environ.setdefault("DISABLE_MULTIPROC", "1")

STEPS = [48, 64]


@pytest.fixture(scope="session")
def toy_tasks(toy_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from resume.evaluation.toy_task import write_toy_tasks

    return write_toy_tasks(toy_tiny, tmp_path_factory.mktemp("toy-tasks"), docs=48)


@pytest.fixture(scope="session")
def evaluated(branches: dict[str, Path], toy_tasks: Path, tmp_path_factory: pytest.TempPathFactory):
    """`branchpoint eval control lawa_eval` at steps 48 and 64 on both toy tasks: (table, out dir)."""
    from resume.evaluation.api import evaluate

    out = tmp_path_factory.mktemp("eval") / "out"
    df = evaluate([branches["control"], branches["lawa_eval"]], ["toy_next_word", "toy_continuation"],
                  include_path=toy_tasks, steps=STEPS, out=out, progress=False, stderr_iters=1000,
                  bootstrap_iters=2000)
    return df, out
