"""Benchmark: `ensure_checkpoint` (verified fetch) vs `snapshot_download` on the same Hub stand-in.

Side by side in one process, alternating, each run into a fresh cache; the stand-in serves from a
separate process so the client's hashing does not slow the server. Reports medians and ratios:

  ours / snapshot_download              goal <= 1.02 (issue #3)
  ours / (snapshot_download + sha256)   the same guarantee done by hand after the library

and, for `--data-steps`, the bytes moved vs the bytes of the rows needed.

    python scripts/bench_fetch.py [--mb 128] [--repeats 5] [--rate MB_PER_S] [--out /tmp/fetch.md] [--append]
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "0"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

MODEL_REPO = "EleutherAI/pythia-70m-deduped"


def _serve(conn, mb: int, rate_mb_s: float) -> None:
    import numpy as np

    from tests.checkpoints_cache.hub_standin import HubStandin
    from tests.checkpoints_cache.repos import build_data_repo, data_rows

    hub = HubStandin().start()
    hub.rate_bytes_per_s = rate_mb_s * 1e6 if rate_mb_s else None
    rng = np.random.default_rng(0)
    weights = rng.integers(0, 256, size=mb * 1_000_000, dtype=np.uint8).tobytes()
    hub.add_commit("model", MODEL_REPO, "step1000", {"config.json": b'{"model_type": "gpt_neox"}\n',
                                                       "model.safetensors": weights})
    build_data_repo(hub, data_rows())
    conn.send(hub.url)
    while conn.recv() == "count":  # anything else: stop
        conn.send((len(hub.log), sum(r["bytes"] for r in hub.log)))
    hub.stop()


def _time(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): CPU time is the steadier number on a shared box."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=128, help="size of the weight file in MB")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rate", type=float, default=0, help="emulated link speed in MB/s (0 = loopback, CPU-bound)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "parts" / "fetch.md"))
    ap.add_argument("--append", action="store_true", help="add this run's section to --out instead of replacing it")
    args = ap.parse_args()

    parent, child = mp.get_context("fork").Pipe()
    server = mp.get_context("fork").Process(target=_serve, args=(child, args.mb, args.rate), daemon=True)
    server.start()
    endpoint = parent.recv()

    from huggingface_hub import snapshot_download

    from checkpoints_cache.fetch import ensure_checkpoint
    from checkpoints_cache.registry import resolve_run
    from data_order.remote import fetch_data_steps

    run = resolve_run("pythia-70m-deduped")
    work = Path(tempfile.mkdtemp(prefix="bench_fetch."))
    os.environ["BRANCHPOINT_HOME"] = str(work / "bp")
    files = ["config.json", "model.safetensors"]

    def baseline(i: int) -> None:
        snapshot_download(MODEL_REPO, revision="step1000", cache_dir=work / f"base{i}", endpoint=endpoint,
                          allow_patterns=files)

    def baseline_hashed(i: int) -> None:
        folder = Path(snapshot_download(MODEL_REPO, revision="step1000", cache_dir=work / f"bh{i}", endpoint=endpoint,
                                        allow_patterns=files))
        with open(folder / "model.safetensors", "rb") as f:
            hashlib.file_digest(f, "sha256")

    def ours(i: int) -> None:
        ensure_checkpoint(run, 1000, endpoint=endpoint, cache_dir=work / f"ours{i}", progress=False)

    times: dict[str, list[float]] = {"snapshot_download": [], "snapshot_download + sha256": [], "ensure_checkpoint": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    traffic: dict[str, tuple[int, int]] = {}  # requests and body bytes the server sent, per variant (one run)

    def served() -> tuple[int, int]:
        time.sleep(0.2)  # the stand-in logs a request after its last byte is sent: let it finish
        parent.send("count")
        return parent.recv()
    import contextlib
    import io

    for i in range(args.repeats + 1):  # first round warms up (imports, connections), not counted
        order = [("snapshot_download", baseline), ("ensure_checkpoint", ours), ("snapshot_download + sha256", baseline_hashed)]
        if i % 2:
            order.reverse()
        for name, fn in order:
            before = served()
            with contextlib.redirect_stderr(io.StringIO()):  # defect warnings of step1000: none, but keep quiet
                dt, dc = _time(lambda: fn(i))
            after = served()
            traffic[name] = (after[0] - before[0], after[1] - before[1])
            if i:
                times[name].append(dt)
                cpu[name].append(dc)
        for p in work.glob("*"):
            if p.name != "bp":
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(work / "bp" / "verified", ignore_errors=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    # Paired per-round ratios (same round = similar machine load) are steadier than ratios of medians.
    paired = [o / b for o, b in zip(times["ensure_checkpoint"], times["snapshot_download"])]
    q = statistics.quantiles(paired, n=4) if len(paired) >= 2 else [paired[0]] * 3
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    r_plain = med["ensure_checkpoint"] / med["snapshot_download"]
    r_hashed = med["ensure_checkpoint"] / med["snapshot_download + sha256"]

    # --data-steps: bytes moved vs bytes of the rows needed (B = 1024 rows of 2049 uint16 tokens).
    with contextlib.redirect_stderr(io.StringIO()):
        got = fetch_data_steps(run, 4, 2, endpoint=endpoint, cache_dir=work / "data", progress=False)
    idx_bytes = (got.folder / "document.idx").stat().st_size  # the logical size of the (sparse) partial index
    parent.send("stop")
    server.join(10)
    shutil.rmtree(work, ignore_errors=True)

    mbps = args.mb / med["ensure_checkpoint"]
    lines = [
        "# fetch benchmark (scripts/bench_fetch.py)",
        "",
        f"Machine: {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"huggingface_hub {__import__('huggingface_hub').__version__}, loopback Hub stand-in in a separate process.",
        f"One {args.mb} MB weight file + config.json, fresh cache per run, {args.repeats} alternating runs, medians; "
        + (f"server paced at {args.rate:g} MB/s (a network-like link)." if args.rate else "loopback at full speed (CPU-bound: server and client share the 2 cores)."),
        "",
        "| variant | median wall s | wall ratio | median CPU s | CPU ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
        *[f"| {label} | {med[k]:.3f} | {med[k] / med['snapshot_download']:.3f} | {mcpu[k]:.3f} | "
          f"{mcpu[k] / mcpu['snapshot_download']:.3f} |"
          for k, label in (("snapshot_download", "snapshot_download (no hash check)"),
                           ("snapshot_download + sha256", "snapshot_download + sha256 by hand"),
                           ("ensure_checkpoint", "ensure_checkpoint (sha256-verified while streaming)"))],
        "",
        f"Paired per-round ratio ensure_checkpoint / snapshot_download: median **{statistics.median(paired):.3f}** "
        f"(quartiles {q[0]:.3f} .. {q[2]:.3f}; goal <= 1.02).",
        "",
        f"Ratio of medians ensure_checkpoint / snapshot_download = **{r_plain:.3f}**; "
        f"ensure_checkpoint / (snapshot_download + sha256) = **{r_hashed:.3f}**; ensure_checkpoint moves {mbps:.0f} MB/s.",
        "",
        "HTTP traffic per fetch (deterministic): " + "; ".join(
            f"{k}: {n} requests, {b} body bytes" for k, (n, b) in traffic.items()) + ".",
        "",
        "## --data-steps: bytes moved vs rows needed",
        "",
        f"Batches 4..5 of a 21-shard preshuffled stand-in (B = 1024 rows x 2049 uint16 tokens): rows needed "
        f"{got.row_bytes} B, range payload moved {got.bytes_moved} B (ratio {got.bytes_moved / got.row_bytes:.3f}), "
        f"in {got.requests} Range GETs; of document.idx ({idx_bytes} B) only {got.index_bytes_moved} B by ranges "
        f"(header + 12 B per row: {got.index_bytes_moved / (got.rows.stop - got.rows.start):.2f} B per row needed).",
        "For the real Pythia: branching from step 20000 for 2000 steps needs 2000 x 1024 x 2049 x 2 B = "
        f"{2000 * 1024 * 2049 * 2 / 1e9:.2f} GB of rows and {2000 * 1024 * 12 / 1e6:.1f} MB of index, not the ~600 GB "
        "of all 21 shards and the 2.9 GB index.",
        "",
        "raw wall times (s): " + "; ".join(f"{k}: {', '.join(f'{t:.3f}' for t in v)}" for k, v in times.items()),
        "",
        "The box is shared by several engineers, so wall times scatter; CPU time (client process only, all "
        "threads) shows the cost of the verification itself.",
    ]
    text = "\n".join(lines) + "\n"
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.is_file():
        text = out.read_text() + "\n---\n\n" + "\n".join(lines[2:]) + "\n"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
