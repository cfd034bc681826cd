"""Shared fixtures: the tiny toy trajectory is built once per test session (a few seconds)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def toy_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny toy trajectory (read-only: copy it before changing anything in it)."""
    from resume.toy import build_toy

    return build_toy(tmp_path_factory.mktemp("toy") / "toy-tiny", size="tiny", progress=False)
