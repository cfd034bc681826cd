"""Temporaries of a run killed with kill -9 are removed when it is resumed or restarted; files get the
usual permissions; progress bars are live on a terminal and a line per ~10 % in a log."""

from __future__ import annotations

import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

from resume.cli import main as cli
from resume.engine import branch
from tests.engine.helpers import metrics, same_weights, weights

from .helpers import REPO, child_env

# The real CLI in a child that blocks in the middle of writing a file named HANG_FILE inside a temporary
# folder (the HANG_AT-th such write), after READY appears; the test then kills it with SIGKILL.
HANGER = textwrap.dedent(
    """
    import os, pathlib, sys, time
    import safetensors.torch, torch
    seen = {"n": 0}
    def hang_if_due(path):
        p = pathlib.Path(str(path))
        if p.name == os.environ["HANG_FILE"] and p.parent.name.endswith(".tmp"):
            seen["n"] += 1
            if seen["n"] == int(os.environ["HANG_AT"]):
                p.write_bytes(b"half of a file")
                pathlib.Path(os.environ["READY"]).write_text("x")
                time.sleep(600)
    save, save_file = torch.save, safetensors.torch.save_file
    def torch_save(obj, f, *a, **k):
        hang_if_due(f)
        return save(obj, f, *a, **k)
    def st_save_file(tensors, filename, *a, **k):
        hang_if_due(filename)
        return save_file(tensors, filename, *a, **k)
    torch.save, safetensors.torch.save_file = torch_save, st_save_file
    from resume.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def kill9_while_writing(args: list[str], hang_file: str, hang_at: int, tmp: Path) -> None:
    ready = tmp / "ready"
    env = child_env(HANG_FILE=hang_file, HANG_AT=str(hang_at), READY=str(ready))
    proc = subprocess.Popen([sys.executable, "-c", HANGER, *args], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # a real kill -9, in the middle of a write
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


def _temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))]


def test_a_resumed_branch_removes_what_the_killed_run_left_and_ends_bit_exact(toy_tiny: Path, tmp_path: Path):
    out = tmp_path / "killed"
    args = ["branch", str(toy_tiny), "--from-step", "16", "--steps", "8", "--optimizer-state", "exact",
            "--save-every", "2", "--out", str(out), "--no-compare"]
    kill9_while_writing(args, "optimizer.pt", hang_at=3, tmp=tmp_path)  # the 3rd state save: after update 20
    left = _temporaries(out)
    assert any(p.name.startswith(".state.") for p in left), left  # a half-written state folder
    assert cli([*args, "--resume"]) == 0
    assert _temporaries(out) == []
    reference = branch(toy_tiny, 16, 8, out=tmp_path / "ref", optimizer_state="exact", progress=False)
    assert same_weights(weights(out, 24), weights(reference, 24))
    assert [r["step"] for r in metrics(out)] == list(range(17, 25))


def test_a_restarted_toy_removes_the_killed_build(tmp_path: Path):
    out = tmp_path / "toy"
    kill9_while_writing(["toy", "--size", "tiny", "--out", str(out)], "model.safetensors", hang_at=2, tmp=tmp_path)
    assert not out.exists() and [p.name for p in _temporaries(tmp_path) if p.name.startswith(".toy.")]
    assert cli(["toy", "--size", "tiny", "--out", str(out)]) == 0
    assert _temporaries(tmp_path) == [] and (out / "trajectory.json").is_file()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_outputs_have_the_usual_permissions(toy_tiny: Path, tmp_path: Path):
    mask = _umask()
    out = branch(toy_tiny, 16, 2, out=tmp_path / "b", optimizer_state="exact", progress=False, save_every=1)
    for root in (toy_tiny, out):
        for p in root.rglob("*"):
            mode = stat.S_IMODE(p.stat().st_mode)
            want = (0o777 if p.is_dir() else 0o666) & ~mask
            assert mode == want, (p, oct(mode), oct(want))
    assert (out / "state" / "optimizer.pt").is_file() and (toy_tiny / "data").is_dir()


def test_toy_reuses_a_complete_toy_and_names_size_or_seed_on_a_mismatch(toy_tiny: Path, capsys):
    before = (toy_tiny / "trajectory.json").stat().st_mtime_ns
    assert cli(["toy", "--size", "tiny", "--out", str(toy_tiny)]) == 0
    captured = capsys.readouterr()
    assert "is complete" in captured.out and "error" not in captured.err
    assert (toy_tiny / "trajectory.json").stat().st_mtime_ns == before
    for extra, named in ((["--size", "small"], "pass --size tiny"), (["--size", "tiny", "--seed", "7"], "pass --seed 1234")):
        assert cli(["toy", "--out", str(toy_tiny), *extra]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and named in err[0], err


def test_progress_is_a_line_per_tenth_in_a_log_and_live_on_a_terminal(toy_tiny: Path, tmp_path: Path, capsys):
    import pty

    from checkpoints_cache.progress import mode, progress_bar

    branch(toy_tiny, 16, 20, out=tmp_path / "b", optimizer_state="exact", progress=True)
    err = capsys.readouterr().err  # not a terminal: a log
    lines = [line for line in err.splitlines() if line.startswith("train 16->36")]
    assert 10 <= len(lines) <= 12 and "\r" not in err, lines  # start, each 10 %, the end
    assert lines[-1].startswith("train 16->36: 100%")

    master, slave = pty.openpty()
    with os.fdopen(slave, "w") as tty:
        assert mode(tty) == "terminal"
        bar = progress_bar(total=5, desc="live", file=tty, mininterval=0)
        for _ in range(5):
            bar.update(1)
        bar.close()
        tty.flush()
        shown = b""
        while select.select([master], [], [], 0.5)[0]:  # everything written so far
            shown += os.read(master, 65536)
        shown = shown.decode()
    os.close(master)
    assert "\r" in shown and shown.count("live") >= 5  # redrawn in place


def test_no_widget_warning_in_a_notebook_without_ipywidgets(monkeypatch):
    import types

    from checkpoints_cache import progress

    class ZMQInteractiveShell:  # what get_ipython() returns in a Jupyter kernel
        pass

    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: ZMQInteractiveShell()))
    monkeypatch.setattr(progress, "_widgets_available", lambda: False)
    progress._classes.cache_clear()
    try:
        assert progress.mode() == "notebook"
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # tqdm.auto would warn "IProgress not found"
            bar = progress.progress_bar(total=3, desc="nb")
            bar.update(3)
            bar.close()
    finally:
        progress._classes.cache_clear()


def test_cleanup_keeps_the_only_copy_left_between_two_renames(tmp_path: Path):
    """Killed between atomic_dir's renames (final -> .final.old, tmp -> final): the old copy is restored."""
    from checkpoints_cache.trajectory import clean_orphans

    out = tmp_path / "b"
    (out / ".state.old").mkdir(parents=True)
    (out / ".state.old" / "train_state.json").write_text("{}")
    (out / ".state.k2j4.tmp").mkdir()
    (out / "checkpoints" / ".step8.x1y2.tmp").mkdir(parents=True)
    (out / ".metrics.jsonl.ab12.tmp").write_text("torn")
    (out / "checkpoints" / "step4").mkdir()
    removed = clean_orphans(out)
    assert sorted(p.name for p in removed) == [".metrics.jsonl.ab12.tmp", ".state.k2j4.tmp", ".step8.x1y2.tmp"]
    assert (out / "state" / "train_state.json").is_file() and (out / "checkpoints" / "step4").is_dir()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "state"]
