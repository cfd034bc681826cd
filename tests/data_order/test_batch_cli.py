"""`branchpoint batch`: exact arrays out, a readable summary, and one-line refusals with no file written."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from data_order.mmidx import shard_name, write_mmidx, write_sharded
from resume.cli import main

B, T = 4, 8


@pytest.fixture
def sharded(tmp_path, make_rows):
    rows = make_rows(6 * B, T + 1, seed=3)
    write_sharded(tmp_path / "pile", [rows], num_shards=4, shard_size=53)  # odd size: rows straddle shards
    return tmp_path / "pile", rows


def test_out_writes_exactly_the_stored_rows(tmp_path, sharded, capsys):
    folder, rows = sharded
    out = tmp_path / "b.npy"
    for k in (0, 3, 5):
        assert main(["batch", "--data", str(folder), "--batch-size", str(B), "--seq-len", str(T), "--step", str(k), "--out", str(out)]) == 0
        got = np.load(out)
        assert got.dtype == np.uint16 and got.shape == (B, T + 1)
        assert np.array_equal(got, rows[k * B : (k + 1) * B])
    text = capsys.readouterr().out
    assert f"wrote {out}: shape [4, 9], uint16, rows 20..23" in text
    assert "batch 5 = rows 20..23; first trained by the update that produces step6; a branch from step5 trains on it first" in text


def test_int32_prefix_keeps_its_dtype(tmp_path, make_rows):
    rows = make_rows(2 * B, T + 1, dtype=np.int32)
    write_mmidx(tmp_path / "d", list(rows), dtype=np.int32)
    out = tmp_path / "x" / "b.npy"  # parent created on demand
    assert main(["batch", "--data", str(tmp_path / "d"), "--batch-size", str(B), "--seq-len", str(T), "--step", "1", "--out", str(out)]) == 0
    got = np.load(out)
    assert got.dtype == np.int32 and np.array_equal(got, rows[B:])


def test_summary(sharded, capsys):
    folder, rows = sharded
    assert main(["batch", "--data", str(folder), "--batch-size", str(B), "--seq-len", str(T), "--step", "2"]) == 0
    out = capsys.readouterr().out
    assert "(4 shards; 24 rows of 9 uint16 tokens = 6 batches of 4)" in out
    assert "shape: [4, 9], dtype uint16" in out
    assert f"row 8: {' '.join(str(int(t)) for t in rows[8])} ..." in out
    assert "step semantics: batch 2 = rows 8..11; first trained by the update that produces step3" in out


def test_decode_with_and_without_tokenizer(tmp_path, sharded, capsys):
    folder, rows = sharded
    args = ["batch", "--data", str(folder), "--batch-size", str(B), "--seq-len", str(T), "--step", "0", "--decode"]
    assert main(args) == 0
    assert "decode: no tokenizer given" in capsys.readouterr().out
    assert main(args + ["--tokenizer", str(tmp_path / "nope")]) == 0
    assert "is not available offline" in capsys.readouterr().out
    # A real (tiny, local) tokenizer: every id decodes to "t<id>".
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(50277)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="t0"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tk).save_pretrained(tmp_path / "tok")
    assert main(args + ["--tokenizer", str(tmp_path / "tok")]) == 0
    out = capsys.readouterr().out
    assert f"row 0 text: {' '.join(f't{int(t)}' for t in rows[0])!r}" in out


def test_run_is_a_trajectory_dir(tmp_path, make_rows, capsys):
    rows = make_rows(3 * B, T + 1)
    traj = tmp_path / "traj"
    write_sharded(traj / "data", [rows], num_shards=2)
    (traj / "trajectory.json").write_text(json.dumps({"data_order": {"kind": "mmidx", "path": "data", "batch_size": B, "seq_len": T}}))
    out = tmp_path / "b.npy"
    assert main(["batch", str(traj), "--step", "2", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out), rows[2 * B :])
    assert main(["batch", str(traj), "--step", "1", "--batch-size", "8"]) == 2
    assert "contradicts" in capsys.readouterr().err


def _corrupt(kind: str, folder: Path) -> list[str]:
    """Break a good shard folder in one way; return extra CLI args (or overrides)."""
    idx = folder / "document.idx"
    if kind == "magic":
        _patch(idx, 0, b"XXXXXXXXX")
    elif kind == "version":
        _patch(idx, 9, struct.pack("<Q", 7))
    elif kind == "dtype":
        _patch(idx, 17, b"\x0c")
    elif kind == "short-bin":
        last = folder / shard_name("document", 3, 4)
        last.write_bytes(last.read_bytes()[:-4])
    elif kind == "missing-shard":
        (folder / shard_name("document", 1, 4)).unlink()
    elif kind == "missing-files":
        idx.unlink()
    return []


def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


BAD = {
    "magic": ([], "magic"),
    "version": ([], "version 7"),
    "dtype": ([], "dtype code 12"),
    "short-bin": ([], "truncated"),
    "missing-shard": ([], "missing shard document-00001-of-00003.bin"),
    "missing-files": ([], "holds no document.idx"),
    "seq-len": (["--seq-len", "9"], "use --seq-len 8"),
    "beyond": (["--step", "6"], "the last available step is 5"),
    "negative": (["--step", "-1"], "negative"),
    "no-batch-size": (["--batch-size", None], "--data needs --batch-size"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, sharded, capsys, kind):
    folder, _ = sharded
    _corrupt(kind, folder)
    args = {"--data": str(folder), "--batch-size": str(B), "--seq-len": str(T), "--step": "1"}
    extra, expect = BAD[kind]
    for flag, value in zip(extra[::2], extra[1::2]):
        if value is None:
            args.pop(flag)
        else:
            args[flag] = value
    out = tmp_path / "never.npy"
    argv = ["batch", *[x for kv in args.items() for x in kv], "--out", str(out)]
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and expect in err, err
    assert captured.out == ""
    assert not out.exists() and not list(tmp_path.glob(".never.npy*"))


def test_installed_command_exit_codes(tmp_path, sharded):
    folder, rows = sharded
    exe = Path(sys.executable).with_name("branchpoint")
    assert exe.exists(), "install the package (pip install -e .) to get the branchpoint command"
    out = tmp_path / "b.npy"
    base = [str(exe), "batch", "--data", str(folder), "--batch-size", str(B), "--seq-len", str(T)]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    ok = subprocess.run(base + ["--step", "4", "--out", str(out)], capture_output=True, text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert np.array_equal(np.load(out), rows[16:20])
    bad = subprocess.run(base + ["--step", "99"], capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "step 99 is beyond the data" in bad.stderr
    helped = subprocess.run([str(exe), "batch", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert helped.returncode == 0 and "example" in helped.stdout


def test_amber_run_says_the_order_is_not_recoverable(tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "dscache")  # keep ~/.cache clean
    traj = tmp_path / "amber"
    (traj / "chunks").mkdir(parents=True)
    # Tiny Amber-like layout: 3 steps per chunk, 2 rows per step, rows of 5 tokens; chunk 1 only.
    with open(traj / "chunks" / "train_001.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"token_ids": [100 * i + j for j in range(5)], "source": "c4"}) + "\n")
    order = {"kind": "amber", "path": "chunks", "batch_size": 2, "seq_len": 4, "steps_per_chunk": 3}
    (traj / "trajectory.json").write_text(json.dumps({"data_order": order}))
    out = tmp_path / "a.npy"
    assert main(["batch", str(traj), "--step", "5", "--out", str(out)]) == 0
    assert np.array_equal(np.load(out), [[400, 401, 402, 403, 404], [500, 501, 502, 503, 504]])
    text = capsys.readouterr().out
    assert "order of rows within a chunk is NOT recoverable" in text and "lines 4..5 of train_001.jsonl" in text
    assert main(["batch", str(traj), "--step", "3"]) == 0
    text = capsys.readouterr().out
    assert "NOT recoverable" in text and "exactness: chunk-exact, order within chunk unknown" in text
    assert any((tmp_path / "dscache").rglob("*.arrow"))
    assert main(["batch", str(traj), "--step", "6"]) == 2  # chunk 2 is not there
    assert "train_002.jsonl is not in" in capsys.readouterr().err


def test_out_that_is_a_directory(tmp_path, sharded, capsys):
    folder, _ = sharded
    assert main(["batch", "--data", str(folder), "--batch-size", str(B), "--seq-len", str(T), "--step", "1", "--out", str(tmp_path)]) == 2
    assert "is a directory; give a file name such as" in capsys.readouterr().err
