"""Run ``branchpoint`` in a real child process and read its one error line."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Takes the lock of argv[1] and holds it until killed; argv[2] is written once the lock is held.
HOLDER = """
import pathlib, sys, time
from checkpoints_cache.locks import output_lock
with output_lock(sys.argv[1]):
    pathlib.Path(sys.argv[2]).write_text("held")
    time.sleep(600)
"""


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "BRANCHPOINT_"))}
    env.update({"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", **extra})  # threads as the parent (bit-exact comparisons)
    return env


def bp(*args: str, env: dict[str, str] | None = None, timeout: int = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "resume", *map(str, args)], cwd=REPO, env=env or child_env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def one_error(r: subprocess.CompletedProcess, rc: int) -> str:
    """The single ``error:`` line of a failed run (asserting its exit status, and no traceback)."""
    err = error_lines(r.stderr)
    assert r.returncode == rc and len(err) == 1 and "Traceback" not in r.stderr, (r.returncode, r.stderr[-3000:])
    return err[0]


def hold_lock(path: Path, tmp: Path) -> subprocess.Popen:
    """A real second process holding the lock of ``path`` (wait until it does)."""
    ready = tmp / f"held-{path.name}"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), str(ready)], cwd=REPO, env=child_env())
    deadline = time.time() + 120
    while not ready.exists():
        assert proc.poll() is None, "the lock holder died"
        assert time.time() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    return proc
