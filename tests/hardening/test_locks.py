"""One writer per output: a real second process is refused with one line naming the holder's PID, and a
lock left by a process killed with kill -9 is taken over without any cleanup."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from checkpoints_cache.locks import lock_path
from resume.cli import main as cli
from resume.engine import branch
from tests.engine.helpers import metrics

from .helpers import REPO, child_env, error_lines, hold_lock


def _refused(capsys, argv: list[str], pid: int) -> str:
    assert cli(argv) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"another branchpoint process, PID {pid}" in err[0], err
    return err[0]


def test_every_output_refuses_a_second_writer(toy_tiny: Path, tmp_path: Path, capsys):
    parent_branch = branch(toy_tiny, 16, 2, out=tmp_path / "b", optimizer_state="exact", progress=False)
    targets = {name: tmp_path / name for name in ("branch", "toy", "compare", "demo")}
    holders = {name: hold_lock(path, tmp_path) for name, path in targets.items()}
    try:
        _refused(capsys, ["branch", str(toy_tiny), "--from-step", "16", "--steps", "2", "--out", str(targets["branch"]),
                          "--no-compare"], holders["branch"].pid)
        line = _refused(capsys, ["toy", "--size", "tiny", "--out", str(targets["toy"])], holders["toy"].pid)
        assert "python -c" in line or "branchpoint" in line  # names the holder's command too
        _refused(capsys, ["compare", str(parent_branch), "--out", str(targets["compare"])], holders["compare"].pid)
        _refused(capsys, ["demo", "--toy", str(toy_tiny), "--size", "tiny", "--from-step", "32", "--steps", "16",
                          "--out", str(targets["demo"])], holders["demo"].pid)
        # nothing was written by the refused runs
        assert not any(p.exists() for p in targets.values())
    finally:
        for h in holders.values():
            h.kill()
            h.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(toy_tiny: Path, tmp_path: Path):
    out = tmp_path / "taken-over"
    holder = hold_lock(out, tmp_path)
    holder.send_signal(signal.SIGKILL)  # kill -9: no chance to release or remove anything
    holder.wait()
    assert json.loads(lock_path(out).read_text())["pid"] == holder.pid  # the stale lock file is still there
    assert branch(toy_tiny, 16, 2, out=out, optimizer_state="exact", progress=False) == out
    assert [r["step"] for r in metrics(out)] == [17, 18]
    assert not lock_path(out).exists()  # released and removed at the end


def test_two_branches_started_together_on_one_out(toy_tiny: Path, tmp_path: Path):
    """The race of the issue: both used to pass the empty-directory check and write into one folder."""
    out = tmp_path / "race"
    args = ["branch", str(toy_tiny), "--from-step", "16", "--steps", "8", "--no-compare", "--out", str(out)]
    cmds = [[*args, "--intervention", "none"], [*args, "--intervention", "lawa:k=2,every=4"]]
    procs = [subprocess.Popen([sys.executable, "-m", "resume", *c], cwd=REPO, env=child_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in cmds]
    results = [(p, *p.communicate(timeout=300)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2], [(p.returncode, err[-2000:]) for p, _, err in results]
    winner = next(p for p, _, _ in results if p.returncode == 0)
    loser_err = next(err for p, _, err in results if p.returncode == 2)
    err = [line for line in loser_err.splitlines() if line.startswith("error:")]
    assert len(err) == 1, loser_err
    # The loser either met the live lock (naming the winner) or came after it and found a complete branch.
    assert f"PID {winner.pid}" in err[0] or "already exists" in err[0], err[0]
    rows = metrics(out)
    assert [r["step"] for r in rows] == list(range(17, 25))  # one run's rows, once
    meta = json.loads((out / "trajectory.json").read_text())
    won = cmds[procs.index(winner)]
    assert meta["intervention"]["name"] == ("none" if won[-1] == "none" else "lawa") and meta["complete"]
