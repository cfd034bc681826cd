"""Failures are one line: environment errors (network, disk full, read-only, a path that is a file, an
absent device) exit 1 with one line and no traceback unless BRANCHPOINT_DEBUG=1; a damaged checkpoint
file is named with what to do. Disk-full and read-only cases run in a real small or read-only tmpfs
(a private mount namespace, `unshare -rm`), or under a file-size limit where mounting is not allowed."""

from __future__ import annotations

import errno
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from resume.cli import environment_error_line
from resume.cli import main as cli
from resume.engine import branch

from .helpers import REPO, child_env, error_lines, one_error

DOWN = "http://127.0.0.1:9"  # the discard port: connection refused


@pytest.fixture(scope="module")
def small_branch(toy_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return branch(toy_tiny, 16, 2, out=tmp_path_factory.mktemp("fail") / "b", optimizer_state="exact", progress=False)


def test_network_down_is_one_line_and_debug_shows_the_traceback(small_branch: Path, tmp_path: Path, capsys,
                                                                  monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", DOWN)  # HfApi reads it when built
    monkeypatch.setenv("BRANCHPOINT_HOME", str(tmp_path / "bp"))
    monkeypatch.setenv("BRANCHPOINT_RETRY_BASE_S", "0.001")
    for args in (["fetch", "pythia-70m-deduped", "--step", "1000", "--dry-run"], ["audit", "pythia-70m-deduped"],
                 ["compare", str(small_branch), "--against", "pythia-70m-deduped", "--out", str(tmp_path / "c")]):
        assert cli(args) == 1, args
        err = capsys.readouterr().err
        lines = error_lines(err)
        assert len(lines) == 1 and f"cannot reach the Hub at {DOWN}" in lines[0] and "HF_HUB_OFFLINE=1" in lines[0], err
        assert "Traceback" not in err
    monkeypatch.setenv("BRANCHPOINT_DEBUG", "1")
    assert cli(["audit", "pythia-70m-deduped"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ConnectError" in err and len(error_lines(err)) == 1


# -- disk full / read-only, in a real filesystem ----------------------------------------------------------------
def _in_tmpfs(mount: Path, args: list[str], size_kb: int = 0, read_only: bool = False) -> subprocess.CompletedProcess | None:
    """``branchpoint ARGS`` in a private mount namespace where ``mount`` is a tmpfs (None: not allowed here)."""
    if shutil.which("unshare") is None:
        return None
    mount.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kb}k" if size_kb else "size=1m"
    script = f'mount -t tmpfs -o {opts} none "$1" || exit 97; mkdir "$1/sub"; '
    if read_only:
        script += 'mount -o remount,ro "$1" || exit 97; '
    script += 'shift; exec "$@"'
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(mount), sys.executable, "-m", "resume", *args],
                       cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    if r.returncode == 97 or "unshare failed" in r.stderr or "Operation not permitted" in r.stderr[:500]:
        return None
    return r


def _with_file_size_limit(args: list[str], limit: int) -> subprocess.CompletedProcess:
    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run([sys.executable, "-m", "resume", *args], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=300, preexec_fn=limit_writes)


def _no_temporaries(root: Path) -> None:
    left = [p for p in root.rglob(".*") if p.name.endswith((".tmp", ".old"))] if root.exists() else []
    assert not left, left


def test_disk_full_is_one_line_with_the_bytes_needed_and_nothing_half_written(toy_tiny: Path, tmp_path: Path):
    mount = tmp_path / "small"
    r = _in_tmpfs(mount, ["branch", str(toy_tiny), "--from-step", "16", "--steps", "4", "--no-compare",
                          "--out", str(mount / "sub" / "b")], size_kb=200)
    if r is not None:
        line = one_error(r, 1)
        assert "no space left on the device writing" in line and "the write needs about" in line and "free" in line
        return  # the tmpfs and what the branch left in it are gone with the mount namespace
    # No mount namespace here: a file-size limit makes the same write fail (EFBIG).
    out = tmp_path / "limited"
    r = _with_file_size_limit(["branch", str(toy_tiny), "--from-step", "16", "--steps", "4", "--no-compare",
                               "--out", str(out)], limit=64 * 1024)
    line = one_error(r, 1)
    assert "file-size limit" in line and "the write needs about" in line
    _no_temporaries(out)
    assert not (out / "checkpoints" / "step16").exists()  # no half-written checkpoint


def test_a_write_that_does_not_fit_names_the_real_path_and_leaves_nothing(tmp_path: Path):
    """Nested atomic folders (a checkpoint inside the toy's temporary folder): the error names where the
    user asked for the output, and every temporary is removed."""
    from checkpoints_cache.disk import DiskFullError
    from checkpoints_cache.trajectory import atomic_dir

    out = tmp_path / "toy"
    with pytest.raises(DiskFullError) as info:
        with atomic_dir(out) as tmp:
            with atomic_dir(tmp / "checkpoints" / "step0", need=1234) as inner:
                (inner / "model.safetensors").write_bytes(b"x")
                raise OSError(errno.ENOSPC, "No space left on device", str(inner / "model.safetensors"))
    assert info.value.path == out / "checkpoints" / "step0" / "model.safetensors"
    assert str(out / "checkpoints" / "step0" / "model.safetensors") in str(info.value) and "1.23 KB" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_read_only_filesystem_is_one_line(toy_tiny: Path, tmp_path: Path):
    mount = tmp_path / "ro"
    r = _in_tmpfs(mount, ["branch", str(toy_tiny), "--from-step", "16", "--steps", "2", "--no-compare",
                          "--out", str(mount / "sub" / "b")], read_only=True)
    if r is None:
        pytest.skip("no private mount namespace here (unshare -rm), so no read-only filesystem to test on")
    line = one_error(r, 1)
    assert "the file system is read-only" in line and str(mount / "sub") in line


def test_an_output_folder_of_its_own_in_a_read_only_parent_is_locked_from_inside(toy_tiny: Path, tmp_path: Path):
    """The lock file normally sits next to the output; where only the output folder is writable it goes inside."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here: cannot build a read-only parent with a writable folder in it")
    mount = tmp_path / "shared"
    mount.mkdir()
    script = ('mount -t tmpfs -o size=1m none "$1" || exit 97; mkdir "$1/mine"; mount -o remount,ro "$1" || exit 97; '
              'mount -t tmpfs -o size=4m none "$1/mine" || exit 97; shift; "$@"; rc=$?; ls -a "$0"; exit $rc')
    args = ["branch", str(toy_tiny), "--from-step", "16", "--steps", "2", "--no-compare", "--out", str(mount / "mine")]
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script, str(mount / "mine"), str(mount), sys.executable, "-m",
                        "resume", *args], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    if r.returncode == 97 or "Operation not permitted" in r.stderr[:500]:
        pytest.skip("no private mount namespace here (unshare -rm)")
    assert r.returncode == 0, r.stderr[-3000:]
    listing = r.stdout.split()
    assert "trajectory.json" in listing and ".branchpoint.lock" not in listing  # released and removed


# -- arguments that name an impossible place or device ---------------------------------------------------------
def test_an_out_that_is_a_file_is_refused(small_branch: Path, tmp_path: Path, capsys):
    a_file = tmp_path / "a-file"
    a_file.write_text("mine")
    for argv in (["toy", "--size", "tiny", "--out", str(a_file)], ["compare", str(small_branch), "--out", str(a_file)],
                 ["demo", "--size", "tiny", "--out", str(a_file / "below")]):
        assert cli(argv) == 2, argv
        err = error_lines(capsys.readouterr().err)
        assert len(err) == 1 and "is a file, not a directory" in err[0], (argv, err)
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("device, message", [
    ("tpu", "--device 'tpu' is not a torch device"),
    ("cuda", "CUDA is not available on this machine"),
    ("meta", "branchpoint evaluates on cpu, cuda or mps, not meta"),
])
def test_an_unavailable_device_is_refused_before_any_work(small_branch: Path, tmp_path: Path, capsys, device, message):
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli(["compare", str(small_branch), "--device", device, "--out", str(tmp_path / "c")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "c").exists()


# -- damaged checkpoints ----------------------------------------------------------------------------------------
def test_a_truncated_checkpoint_is_named_with_what_to_do(toy_tiny: Path, small_branch: Path, tmp_path: Path, capsys):
    parent = tmp_path / "parent"
    shutil.copytree(toy_tiny, parent)
    weights = parent / "checkpoints" / "step16" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    out = tmp_path / "b"
    assert cli(["branch", str(parent), "--from-step", "16", "--steps", "2", "--no-compare", "--out", str(out)]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and f"{weights} is corrupt or truncated" in err[0], err
    assert f"delete the step {parent / 'checkpoints' / 'step16'}" in err[0]
    assert not out.exists()

    damaged = tmp_path / "damaged-branch"
    shutil.copytree(small_branch, damaged)
    (damaged / "checkpoints" / "step16" / "model.safetensors").write_bytes(b"\0" * 100)
    assert cli(["compare", str(damaged), "--out", str(tmp_path / "c")]) == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err) == 1 and "step16/model.safetensors is corrupt or truncated" in err[0], err


def test_the_handler_names_each_kind_of_environment_error():
    from checkpoints_cache.disk import DiskFullError

    cases = [
        (OSError(errno.ENOSPC, "No space left on device", "/data/x"), "no space left on the device writing /data/x"),
        (DiskFullError("/data/y", 2_000_000, 10), "the write needs about 2.00 MB, 10 B free"),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"), "no space left"),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x"), "cannot write /ro/x: the file system is read-only"),
        (PermissionError(errno.EACCES, "Permission denied", "/root/x"), "permission denied for /root/x"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/f/x"), "/f/x: a part of this path is a file"),
        (ConnectionResetError(104, "Connection reset by peer"), "cannot reach the Hub"),
        (AssertionError("Torch not compiled with CUDA enabled"), "the requested device is not available here"),
    ]
    for exc, expected in cases:
        line = environment_error_line(exc)
        assert line is not None and expected in line, (exc, line)
    wrapped = RuntimeError("outer")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device", "/inner")
    assert "/inner" in environment_error_line(wrapped)
    assert environment_error_line(KeyError("a real bug")) is None  # bugs keep their traceback


def test_what_to_do_about_a_damaged_file_depends_on_where_it_lives(tmp_path: Path):
    from checkpoints_cache.corrupt import fix_hint

    repo = tmp_path / "hub" / "models--EleutherAI--pythia-70m-deduped"
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "step1000").write_text("abc123")
    assert "`branchpoint fetch EleutherAI/pythia-70m-deduped --step 1000`" in fix_hint(snap / "model.safetensors")
    traj = tmp_path / "run"
    (traj / "checkpoints" / "step8").mkdir(parents=True)
    (traj / "trajectory.json").write_text("{}")
    hint = fix_hint(traj / "checkpoints" / "step8" / "model.safetensors")
    assert f"delete the step {traj / 'checkpoints' / 'step8'} (and {traj / 'optimizer' / 'step8'})" in hint
    assert f"delete {traj / 'state'} and rerun with --resume" in fix_hint(traj / "state" / "optimizer.pt")
