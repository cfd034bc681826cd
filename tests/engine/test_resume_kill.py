"""kill -9 in the middle of a branch, then --resume: the same final weights as an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from resume.cli import main as cli
from resume.engine import branch
from tests.engine.helpers import metrics, same_weights, weights

REPO = Path(__file__).resolve().parents[2]

# Runs the real CLI in a child process that SIGKILLs itself right after the metrics line of
# update KILL_AT is written: a deterministic kill -9 at a point between two saves.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import resume.engine as engine
    append = engine._append_metrics
    def append_then_die(path, row):
        append(path, row)
        if row["step"] == int(os.environ["KILL_AT"]):
            with open(path, "a") as f:
                f.write('{"step": 99, "lo')  # a torn line, as a kill during a write leaves
            os.kill(os.getpid(), signal.SIGKILL)
    engine._append_metrics = append_then_die
    from resume.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def run_killed(args: list[str], kill_at: int) -> subprocess.CompletedProcess:
    env = {"KILL_AT": str(kill_at), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    if "OMP_NUM_THREADS" in os.environ:  # the same thread count as this process: CPU sums depend on it
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]
    return subprocess.run([sys.executable, "-c", KILLER, *args], cwd=REPO, env=env, capture_output=True, text=True)


def test_kill9_then_resume_ends_with_the_same_weights(toy_tiny: Path, tmp_path: Path):
    reference = branch(toy_tiny, 16, 30, out=tmp_path / "ref", optimizer_state="fresh", progress=False)

    out = tmp_path / "killed"
    args = ["branch", str(toy_tiny), "--from-step", "16", "--steps", "30", "--optimizer-state", "fresh",
            "--save-every", "7", "--out", str(out), "--no-compare"]
    proc = run_killed(args, kill_at=40)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    state = json.loads((out / "state" / "train_state.json").read_text())
    assert state["next_update"] == 35  # saves at multiples of 7 and at the grid steps: ..., 28, 32, 35 < 40
    assert not (out / "checkpoints" / "step46").exists()

    assert cli([*args, "--resume"]) == 0
    for s in (32, 46):
        assert same_weights(weights(out, s), weights(reference, s)), f"step {s}"
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(17, 47))  # no duplicate, no gap, no torn line
    ref_rows = metrics(reference)
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


def test_resume_of_a_run_killed_before_its_first_save_starts_at_the_branch_point(toy_tiny: Path, tmp_path: Path):
    out = tmp_path / "early"
    args = ["branch", str(toy_tiny), "--from-step", "32", "--steps", "6", "--optimizer-state", "exact",
            "--save-every", "100", "--out", str(out), "--no-compare"]
    proc = run_killed(args, kill_at=34)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "state").exists()
    assert cli([*args, "--resume"]) == 0
    reference = branch(toy_tiny, 32, 6, out=tmp_path / "ref", optimizer_state="exact", progress=False)
    assert same_weights(weights(out, 38), weights(reference, 38))
    assert [r["step"] for r in metrics(out)] == list(range(33, 39))
