"""Fixtures: one Hub stand-in per test session (repos generated once), a fresh cache per test.

In-process tests pass ``endpoint=`` / ``cache_dir=`` explicitly and switch huggingface_hub's
offline constant off (the suite sets HF_HUB_OFFLINE=1 before import, so nothing reaches a real
network); CLI tests start ``branchpoint`` in a subprocess with the environment set before import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from .hub_standin import HubStandin
from .repos import build_data_repo, build_model_repo, data_rows


@dataclass
class World:
    hub: HubStandin
    branches: dict[str, dict[str, bytes]]
    rows: np.ndarray
    data_files: dict[str, bytes]


@pytest.fixture(scope="session")
def world() -> World:
    hub = HubStandin().start()
    branches = build_model_repo(hub)
    rows = data_rows()
    data_files = build_data_repo(hub, rows)
    yield World(hub, branches, rows, data_files)
    hub.stop()


@pytest.fixture
def hub(world: World) -> HubStandin:
    """The stand-in with an empty log and no pending faults."""
    world.hub.log.clear()
    world.hub.faults.clear()
    yield world.hub
    world.hub.faults.clear()


@dataclass
class Env:
    endpoint: str
    home: Path  # HF_HOME
    cache: Path  # HF_HUB_CACHE
    bp_home: Path  # BRANCHPOINT_HOME

    def vars(self, offline: bool = False) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BRANCHPOINT_"))}
        env.update(HF_ENDPOINT=self.endpoint, HF_HOME=str(self.home), HF_HUB_CACHE=str(self.cache),
                   BRANCHPOINT_HOME=str(self.bp_home), HF_HUB_OFFLINE="1" if offline else "0",
                   BRANCHPOINT_RETRY_BASE_S="0.01", HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_TELEMETRY="1")
        return env


@pytest.fixture
def env(hub: HubStandin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    """Fresh HF_HOME / cache / branchpoint home; in-process calls go online against the stand-in."""
    from huggingface_hub import constants

    e = Env(hub.url, tmp_path / "hf", tmp_path / "hf" / "hub", tmp_path / "hf" / "branchpoint")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("BRANCHPOINT_HOME", str(e.bp_home))
    monkeypatch.setenv("BRANCHPOINT_RETRY_BASE_S", "0.01")
    return e


def run_cli(env: Env, *args: str, offline: bool = False, timeout: int = 120,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``branchpoint ARGS`` in a subprocess with the stand-in as HF_ENDPOINT (set before import)."""
    return subprocess.run([sys.executable, "-m", "resume", *args], env={**env.vars(offline), **(extra_env or {})},
                          capture_output=True, text=True, timeout=timeout, cwd=str(Path(__file__).resolve().parents[2]))
