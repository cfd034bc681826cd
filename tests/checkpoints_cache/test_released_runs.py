"""The remote path equals the local path: the tiny toy trajectory served as a release on the Hub stand-in.

Its checkpoints are ``stepN`` revisions of ``test/toy-tiny`` and its data order the dataset repo
``test/toy-tiny-data``, described by a run card the test writes (``toy-release``). In-process calls
point huggingface_hub at the stand-in (endpoint, cache) with monkeypatch; the CLI runs in
subprocesses with the environment set before import.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from checkpoints_cache.errors import UserError
from resume.cli import main as cli
from resume.engine import branch
from tests.engine.helpers import metrics, same_weights, weights

from .conftest import Env, run_cli
from .release import serve_trajectory, toml_card

NAME, MODEL, DATA = "toy-release", "test/toy-tiny", "test/toy-tiny-data"
B, ROW_BYTES = 8, 33 * 2  # the tiny toy: 8 rows of 32 + 1 uint16 tokens per global batch
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Release:
    traj: Path
    cards: Path  # the folder BRANCHPOINT_RUNS names
    card: dict
    sha: dict[str, str]  # data file -> sha256 (its /lfs-cdn/ path on the stand-in)


@pytest.fixture(scope="session")
def toy_release(world, toy_tiny, tmp_path_factory) -> Release:
    card = serve_trajectory(world.hub, toy_tiny, MODEL, DATA, NAME)
    cards = tmp_path_factory.mktemp("cards")
    (cards / f"{NAME}.toml").write_text(toml_card(card))
    data = toy_tiny / "data"
    sha = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.iterdir()
           if p.name == "document.idx" or p.suffix == ".bin"}
    return Release(toy_tiny, cards, card, sha)


@pytest.fixture
def online(env: Env, monkeypatch, toy_release) -> Env:
    """huggingface_hub in this process talks to the stand-in and caches into the test's HF cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", env.endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", env.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(env.cache))
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(toy_release.cards))
    return env


def _offline(monkeypatch, on: bool = True) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", on)


def _file_bytes(hub, release: Release, name: str) -> int:
    return sum(r["bytes"] for r in hub.requests("GET", f"/lfs-cdn/{release.sha[name]}"))


def _data_bytes(hub, release: Release) -> int:
    return sum(_file_bytes(hub, release, n) for n in release.sha if n.endswith(".bin"))


def _files_under(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file()] if path.exists() else []


def test_remote_branch_is_bit_identical_to_the_local_one_and_compares_the_same(online, hub, toy_release, toy_tiny, tmp_path):
    from resume.compare.api import compare

    remote = branch(NAME, 16, 16, optimizer_state="reestimate", out=tmp_path / "remote" / "b", progress=False)
    local = branch(toy_tiny, 16, 16, optimizer_state="reestimate", out=tmp_path / "local" / "b", progress=False)
    for s in (16, 32):
        assert same_weights(weights(remote, s), weights(local, s)), f"step {s}"
    assert metrics(remote) == metrics(local)  # every row: step, loss, lr, grad_norm, tokens, batch_rows
    meta = json.loads((remote / "trajectory.json").read_text())
    assert meta["parent"]["run"] == NAME and meta["parent"]["repo_id"] == MODEL
    assert meta["optimizer_state"]["reestimate_batches"] == [0, 16]
    assert meta["engine"]["micro_batch"]["mode"] == "auto" and meta["engine"]["micro_batch_size"] == B
    assert meta["plan"]["micro_batch_size"] == B and meta["plan"]["fetch_bytes"] > 0

    hub.log.clear()
    t_remote = compare([remote], progress=False, figures=False)  # fetches the parent's steps 16, 32 and eval rows
    t_local = compare([local], progress=False, figures=False)
    assert (online.cache / "models--test--toy-tiny" / "refs" / "step32").is_file()  # the parent's step 32, from the Hub
    assert _data_bytes(hub, toy_release) == 4 * B * ROW_BYTES  # the rows of the eval batches 32..35
    t_remote = t_remote.replace({"run": {f"parent:{NAME}": "parent"}})
    t_local = t_local.replace({"run": {"parent:toy-tiny": "parent"}})
    assert t_remote.equals(t_local) and len(t_remote) > 8


def test_default_optimizer_state_of_a_release_is_reestimate_with_its_batches_fetched(online, hub, toy_release, tmp_path, capsys):
    out = branch(NAME, 8, 2, out=tmp_path / "d", progress=False)
    meta = json.loads((out / "trajectory.json").read_text())["optimizer_state"]
    assert meta["mode"] == "reestimate" and meta["reestimate_batches"] == [0, 8]
    assert "publishes weights only" in meta["reason"]
    captured = capsys.readouterr()
    assert "starting Adam from zeros" not in captured.err
    assert captured.out.startswith(f"plan: branch {NAME} from step 8 for 2 updates")
    assert _data_bytes(hub, toy_release) == 10 * B * ROW_BYTES  # batches 0..9: 8 replayed + 2 trained


def test_dry_run_prints_the_plan_writes_nothing_and_moves_no_file_bytes(online, hub, toy_release, tmp_path):
    out = tmp_path / "never"
    r = run_cli(online, "branch", NAME, "--from-step", "16", "--steps", "16", "--out", str(out), "--dry-run",
                extra_env={"BRANCHPOINT_RUNS": str(toy_release.cards)})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"plan: branch {NAME} from step 16 for 16 updates (none) -> {out}"
    text = r.stdout
    for what in ("weights", "index entries", "data rows", "to fetch:", "disk:", "optimizer state: reestimate",
                 "tokens: 4,096 to train", "compute:", "FLOPs", "micro-batch: 8 x 1", "time: ~", "matmul probe"):
        assert what in text, what
    assert lines[-1] == "dry run: nothing was fetched, converted or trained"
    moved = [q for q in hub.log if q["bytes"] and not q["path"].startswith("/api/")]
    assert moved == [] and not hub.requests("GET", "/resolve/") and not hub.requests("GET", "/lfs-cdn/")
    assert not out.exists() and _files_under(online.cache) == [] and _files_under(online.bp_home) == []

    plan = branch(NAME, 16, 16, out=out, dry_run=True, show_plan=False)  # the same plan, as data
    kinds: dict[tuple[str, bool], int] = {}
    for i in plan.items:
        kinds[(i.kind, i.cached)] = kinds.get((i.kind, i.cached), 0) + i.bytes
    rows = 32 * B  # batches 0..31: 16 replayed + 16 trained
    ckpt = toy_release.traj / "checkpoints" / "step16"
    assert kinds[("weights", False)] == sum((ckpt / n).stat().st_size for n in ("config.json", "model.safetensors"))
    assert kinds[("data rows", False)] == rows * ROW_BYTES
    assert kinds[("index entries", False)] == 34 + 12 * (rows + 1)  # header, entries of rows 0..255 and of row N-1
    assert plan.tokens == 16 * B * 32 and plan.reestimate_tokens == 16 * B * 32 and plan.flops > 0
    assert not out.exists() and _files_under(online.cache) == []


def test_index_and_data_bytes_stay_within_the_bounds_and_a_later_branch_extends_the_copy(online, hub, toy_release, tmp_path):
    branch(NAME, 32, 16, out=tmp_path / "a", progress=False)  # reestimate: batches 0..31, train 32..47
    rows = 48 * B
    idx = _file_bytes(hub, toy_release, "document.idx")
    assert idx == 34 + 12 * (rows + 1) <= 12 * rows + 64 * 1024  # header, rows 0..383, row N-1
    assert idx < (toy_release.traj / "data" / "document.idx").stat().st_size  # not the whole index
    data = _data_bytes(hub, toy_release)
    assert data == rows * ROW_BYTES <= 1.01 * rows * ROW_BYTES + 64 * 1024
    data_gets = [q for n, sha in toy_release.sha.items() for q in hub.requests("GET", f"/lfs-cdn/{sha}")]
    assert data_gets and all(q["range"] for q in data_gets)  # no data-order file is fetched whole

    hub.log.clear()
    branch(NAME, 48, 16, out=tmp_path / "b", progress=False)  # needs batches 16..63: only 48..63 are new
    new = 16 * B
    assert _file_bytes(hub, toy_release, "document.idx") == 12 * new
    assert _data_bytes(hub, toy_release) == new * ROW_BYTES


def test_a_dropped_transfer_in_the_middle_of_the_rows_is_resumed(online, hub, toy_release, toy_tiny, tmp_path):
    shard = "document-00001-of-00002.bin"  # the middle shard: rows of batches ~27..53 of the 80
    hub.inject("drop", f"/lfs-cdn/{toy_release.sha[shard]}")
    remote = branch(NAME, 32, 16, optimizer_state="reestimate", out=tmp_path / "r", progress=False)
    gets = [q for q in hub.requests("GET", f"/lfs-cdn/{toy_release.sha[shard]}")]
    assert len(gets) == 2  # the dropped one and its continuation
    start = int(gets[0]["range"].removeprefix("bytes=").split("-")[0])
    assert int(gets[1]["range"].removeprefix("bytes=").split("-")[0]) == start + gets[0]["bytes"]
    local = branch(toy_tiny, 32, 16, optimizer_state="reestimate", out=tmp_path / "l", progress=False)
    assert same_weights(weights(remote, 48), weights(local, 48)) and metrics(remote) == metrics(local)


def test_offline_with_everything_cached_works_without_the_hub(online, hub, toy_release, tmp_path, monkeypatch):
    first = branch(NAME, 16, 8, out=tmp_path / "online", progress=False)
    _offline(monkeypatch)
    hub.log.clear()
    again = branch(NAME, 16, 8, out=tmp_path / "offline", progress=False)
    assert hub.log == []
    assert metrics(again) == metrics(first) and same_weights(weights(again, 24), weights(first, 24))


def test_offline_with_rows_missing_names_every_span_and_the_exact_command(online, hub, toy_release, tmp_path, monkeypatch):
    from checkpoints_cache.registry import resolve_run
    from data_order.remote import fetch_rows

    fetch_rows(resolve_run(NAME), [(4, 8)], progress=False)  # some rows, no weights
    _offline(monkeypatch)
    out = tmp_path / "b"
    with pytest.raises(UserError) as e:
        branch(NAME, 16, 16, out=out, progress=False)  # reestimate needs 0..15, training 16..31
    msg = str(e.value)
    assert "batches 0..3 (rows 0..31)" in msg and "batches 8..31 (rows 64..255)" in msg
    assert f"the weights of {NAME} at step 16" in msg and "\n" not in msg
    command = msg.split("with network access run: ")[1]
    assert command == f"branchpoint fetch {NAME} --step 16 --data-batches 0..3 --data-batches 8..31"
    assert not out.exists()

    _offline(monkeypatch, False)
    assert cli(shlex.split(command)[1:] + ["--no-progress"]) == 0  # the command as printed fetches what was missing
    _offline(monkeypatch)
    hub.log.clear()
    assert branch(NAME, 16, 16, out=out, progress=False) == out and hub.log == []


BAD_INPUT = [
    (["toy-releas", "--from-step", "16", "--steps", "4"], "unknown run 'toy-releas'; did you mean toy-release?"),
    ([NAME, "--from-step", "20", "--steps", "4"], "step 20 is not a checkpoint of toy-release; nearest available: 16 and 32"),
    ([NAME, "--from-step", "64", "--steps", "20"], "holds 640 rows = 80 global batches of 8 (last batch 79)"),
    ([NAME, "--from-step", "16", "--steps", "4", "--micro-batch-size", "3"], "--micro-batch-size 3 must divide the global batch 8"),
    ([NAME, "--from-step", "16", "--steps", "4", "--micro-batch-size", "0"], "--micro-batch-size 0: use auto or a positive"),
    ([NAME, "--from-step", "16", "--steps", "4", "--dry-run", "--resume"], "--dry-run writes nothing and --resume continues"),
]


@pytest.mark.parametrize("argv, message", BAD_INPUT, ids=[m[:40] for _, m in BAD_INPUT])
def test_bad_input_is_one_line_and_writes_nothing(online, hub, tmp_path, capsys, argv, message):
    out = tmp_path / "b"
    rc = cli(["branch", *argv, "--out", str(out), "--no-compare"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists() and _files_under(online.cache) == [] and not hub.requests("GET", "/lfs-cdn/")


def test_a_micro_batch_that_cannot_fit_is_one_line_not_an_oom(online, hub, tmp_path, capsys, monkeypatch):
    import resume.microbatch as mb

    monkeypatch.setattr(mb, "available_memory", lambda: 600 << 20)  # a machine with 600 MB free
    for extra, message in ((["--micro-batch-size", "8"], "--micro-batch-size 8 needs about "),
                           ([], "even micro-batch 1 needs about ")):
        rc = cli(["branch", NAME, "--from-step", "16", "--steps", "4", "--out", str(tmp_path / "b"), *extra])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and message in err[0] and "available" in err[0], err
    assert not (tmp_path / "b").exists() and _files_under(online.cache) == []


def test_a_bad_card_names_file_and_key(online, tmp_path, capsys, monkeypatch, toy_release):
    bad = tmp_path / "bad.toml"
    bad.write_text(toml_card({**toy_release.card, "name": "bad-run", "grid": [0, 8, 4]}))
    monkeypatch.setenv("BRANCHPOINT_RUNS", str(bad))
    rc = cli(["branch", "bad-run", "--from-step", "8", "--steps", "1", "--out", str(tmp_path / "b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err == [f"error: run card {bad}: top level grid: not increasing at position 2 (8 then 4); "
                               "list each checkpoint step once, in increasing order"]
    assert not (tmp_path / "b").exists()


# -- a pythia-14m-shaped release: vocab 50304, seq 2048, global batch 16 --------------------------------
# The real 14m is 6 layers x 128; this one keeps what makes the memory point (the 50304 vocabulary, 2048
# tokens, 16 rows) and shrinks the body to 2 layers x 64 so one update takes seconds on 2 CPU cores.
P14_NAME, P14_MODEL, P14_DATA = "pythia-14m-shape", "test/pythia-14m-shape", "test/pile-14m-shape"
P14_BATCH, P14_SEQ, P14_VOCAB = 16, 2048, 50304


@pytest.fixture(scope="session")
def p14_release(world, tmp_path_factory):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from data_order.mmidx import write_sharded

    from .repos import _read_folder

    config = GPTNeoXConfig(vocab_size=P14_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=256, max_position_embeddings=P14_SEQ, rotary_pct=0.25, rotary_emb_base=10000,
                           use_parallel_residual=True, tie_word_embeddings=False, layer_norm_eps=1e-5, hidden_act="gelu",
                           attention_dropout=0.0, hidden_dropout=0.0, bos_token_id=0, eos_token_id=0)
    config.architectures = ["GPTNeoXForCausalLM"]
    base = tmp_path_factory.mktemp("p14")
    for step in (0, 1):
        torch.manual_seed(step)
        GPTNeoXForCausalLM(config).save_pretrained(base / f"step{step}")
        world.hub.add_commit("model", P14_MODEL, f"step{step}", _read_folder(base / f"step{step}"))
    rows = np.random.default_rng(14).integers(0, 50277, size=(3 * P14_BATCH, P14_SEQ + 1), dtype=np.uint16)
    write_sharded(base / "data", iter(rows), dtype=np.uint16, num_shards=3)
    world.hub.add_commit("dataset", P14_DATA, "main", _read_folder(base / "data"))
    from checkpoints_cache.registry import resolve_run

    card = dict(resolve_run("pythia-14m").card)  # the bundled card, shrunk where stated above
    card.update(name=P14_NAME, repo_id=P14_MODEL, grid=[0, 1], defects=[], notes=["pythia-14m-shaped test release"])
    card["recipe"] = {**card["recipe"], "batch_size": P14_BATCH}
    card["architecture"] = {**card["architecture"], "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
                            "intermediate_size": 256}
    card["data_order"] = {**card["data_order"], "repo_id": P14_DATA, "batch_size": P14_BATCH, "exactness": "exact"}
    cards = tmp_path_factory.mktemp("p14cards")
    (cards / f"{P14_NAME}.toml").write_text(toml_card(card))
    return cards, rows, base / "step0"  # the step-0 folder holds the bytes the stand-in serves


PEAK_RSS = textwrap.dedent(
    """
    import resource, sys
    from resume.cli import main
    rc = main(sys.argv[1:])
    print(f"PEAK_RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}", file=sys.stderr)
    sys.exit(rc)
    """
)


def _full_cross_entropy(step0: Path, rows: np.ndarray) -> float:
    """An independent loss: F.cross_entropy on the full fp32 logits, one row at a time (412 MB each)."""
    from transformers import GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM.from_pretrained(step0, dtype=torch.float32).eval()
    batch = torch.from_numpy(rows.astype(np.int64))
    with torch.no_grad():
        per_row = [torch.nn.functional.cross_entropy(model(input_ids=x[None, :-1]).logits[0].float(), x[1:]) for x in batch]
    return float(torch.stack(per_row).double().mean())


def test_a_pythia_14m_shaped_release_branches_one_update_with_the_default_micro_batch(online, p14_release, tmp_path):
    cards, rows, step0 = p14_release
    out = tmp_path / "b14"
    env = {**online.vars(), "BRANCHPOINT_RUNS": str(cards), "OMP_NUM_THREADS": "1"}
    # --numerics hf: the reference below is plain transformers (a Pythia card defaults to NeoX's tanh GELU)
    proc = subprocess.Popen([sys.executable, "-c", PEAK_RSS, "branch", P14_NAME, "--from-step", "0", "--steps", "1",
                             "--out", str(out), "--no-compare", "--save-every", "1000", "--numerics", "hf"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        expected = _full_cross_entropy(step0, rows[:P14_BATCH])  # meanwhile, on the other core
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    peak = int(stderr.rsplit("PEAK_RSS ", 1)[1].split()[0])
    meta = json.loads((out / "trajectory.json").read_text())
    micro = meta["engine"]["micro_batch_size"]
    print(f"pythia-14m-shaped branch (vocab {P14_VOCAB}, seq {P14_SEQ}, batch {P14_BATCH}): micro-batch {micro} "
          f"({meta['engine']['micro_batch']['mode']}), peak RSS {peak / 2**30:.2f} GiB")
    assert meta["engine"]["micro_batch"]["mode"] == "auto" and P14_BATCH % micro == 0
    assert f"micro-batch: {micro} x {P14_BATCH // micro}" in stdout  # the plan said so before training
    assert peak < 6.6e9  # the batch's full fp32 logits alone would be 16 x 2048 x 50304 x 4 B = 6.6 GB
    logged = metrics(out)[0]
    assert logged["step"] == 1 and abs(logged["loss"] - expected) <= 1e-5 * expected
