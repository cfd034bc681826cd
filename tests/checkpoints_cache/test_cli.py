"""The CLI end to end in subprocesses (HF_ENDPOINT / HF_HUB_OFFLINE set before huggingface_hub is imported)."""

from __future__ import annotations

import numpy as np

from .conftest import run_cli
from .repos import BATCH, RUN


def test_help_has_examples(env):
    for cmd in ("runs", "steps", "fetch", "audit"):
        r = run_cli(env, cmd, "--help")
        assert r.returncode == 0 and "example" in r.stdout, cmd


def test_runs_and_steps_offline(env):
    r = run_cli(env, "runs", offline=True)
    assert r.returncode == 0 and "pythia-160m-deduped" in r.stdout and "LLM360/Amber" in r.stdout
    r = run_cli(env, "steps", "pythia-160m", offline=True)
    lines = r.stdout.split()
    assert r.returncode == 0 and len(lines) == 154 and lines[:3] == ["0", "1", "2"] and lines[-1] == "143000"


def test_steps_remote_lists_only_branches_on_the_hub(env, hub):
    r = run_cli(env, "steps", RUN, "--remote")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "1", "2", "4", "8", "1000", "143000"]
    assert "147 grid step(s)" in r.stderr and hub.requests("GET", "/refs")


def test_errors_are_one_line_with_exit_2(env, hub):
    cases = [
        (("fetch", "pythia-160m", "--step", "1500", "--dry-run"), "nearest available: 1000 and 2000"),
        (("fetch", "pythia-160m-dedupd", "--step", "1000"), "did you mean pythia-160m-deduped"),
        (("fetch", RUN, "--step", "16"), "revision 'step16' of EleutherAI/pythia-70m-deduped does not exist on the Hub"),
        (("fetch", "crystal", "--step", "55500"), "pass --trust-remote-code"),
        (("fetch", "pythia-410m-seed3", "--step", "1000", "--data-steps", "2", "--dry-run"), "--data-steps needs"),
        (("fetch", "crystal", "--step", "55500", "--data-steps", "2"), "crystal cannot be branched"),
        (("steps", "pythia-160m", "--remote"), "repository EleutherAI/pythia-160m was not found"),
        (("steps", "crystal"), "known only from the Hub"),
    ]
    for args, message in cases:
        r = run_cli(env, *args)
        assert r.returncode == 2, (args, r.stderr)
        err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and message in err[0], (args, r.stderr)
        assert "Traceback" not in r.stderr


def test_dry_run_lists_files_and_bytes_and_moves_nothing(env, hub, world):
    r = run_cli(env, "fetch", RUN, "--step", "1000", "--data-steps", "2", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "model.safetensors" in r.stdout and "document.idx" in r.stdout and "rows 1024000..1026047" in r.stdout
    assert "total: " in r.stdout and "nothing was downloaded" in r.stdout
    assert hub.requests("GET", "/lfs-cdn/") == [] and not (env.cache / "models--EleutherAI--pythia-70m-deduped" / "blobs").exists()


def test_fetch_then_offline_fetch_and_batch(env, hub, world):
    r = run_cli(env, "fetch", RUN, "--step", "4", "--data-steps", "2")
    assert r.returncode == 0, r.stderr
    assert "rows 4096..6143" in r.stdout
    hub.log.clear()
    r = run_cli(env, "fetch", RUN, "--step", "4", offline=True)
    assert r.returncode == 0, r.stderr
    assert "offline" in r.stderr and hub.log == []
    out = env.home / "b5.npy"
    r = run_cli(env, "batch", RUN, "--step", "5", "--out", str(out), offline=True)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(np.load(out), world.rows[5 * BATCH:6 * BATCH])
    assert hub.log == []  # nothing reached the stand-in
    r = run_cli(env, "batch", RUN, "--step", "3", "--out", str(env.home / "b3.npy"), offline=True)
    assert r.returncode == 2 and "were not fetched" in r.stderr and not (env.home / "b3.npy").exists()
    r = run_cli(env, "fetch", RUN, "--step", "1000", offline=True)
    assert r.returncode == 2 and "is not in the cache" in r.stderr


def test_audit_reports_duplicates_missing_revisions_and_files(env, hub):
    r = run_cli(env, "audit", RUN, "--out", str(env.home / "audit.csv"))
    assert r.returncode == 0, r.stderr
    import pandas as pd

    df = pd.read_csv(env.home / "audit.csv")
    status = dict(zip(df["revision"], df["status"]))
    assert status["step0"] == status["step2"] == "duplicate"
    assert status["step8"] == "missing files" and status["step16"] == "missing revision"
    assert status["step1"] == status["step4"] == status["step1000"] == status["step143000"] == "ok"
    assert (df["status"] == "missing revision").sum() == 154 - 7
    assert "step2" in df.set_index("revision").loc["step0", "same_as"]
    assert not hub.requests("GET", "/lfs-cdn/")  # metadata only
    assert "duplicate" in r.stdout and "revisions checked" in r.stdout
    # fetch now warns about the flagged step
    r = run_cli(env, "fetch", RUN, "--step", "2", "--dry-run")
    assert "audit: duplicate" in r.stderr and "byte-identical to step0" in r.stderr


def test_not_enough_disk_refuses_before_anything_moves(env, hub):
    from .repos import add_oversized

    add_oversized(hub, "step2000")  # its listing claims a 10 PB model.safetensors
    try:
        for extra in (("--dry-run",), ()):
            r = run_cli(env, "fetch", RUN, "--step", "2000", *extra)
            assert r.returncode == 2 and "error: not enough disk: the fetch needs 10.00 PB" in r.stderr, r.stderr
        assert hub.requests("GET", "/lfs-cdn/") == [] and hub.requests("GET", "/resolve/") == []
    finally:
        repo = hub.repos[("model", "EleutherAI/pythia-70m-deduped")]
        repo.branches.pop("step2000")
        repo.fake_sizes.clear()
