"""Benchmark: converting an LLM360 chunk (JSON lines of token ids) into the token store, and reading a batch.

Side by side, interleaved rounds, on a generated Amber-shaped chunk (rows of 2049 LLaMA token ids and a
``source``, in subset order):

- conversion: ``data_order.chunk_store.convert_chunk`` (datasets' streaming JSON reader -> MMIDIDX + labels)
  against (a) ``pyarrow.json.read_json`` of the whole file into memory + a raw ``tofile`` (the fastest direct
  library path; it holds the whole chunk in RAM: ~28 GB of int64 for a real 20.8 GB chunk), and (b) ``json.loads``
  line by line + ``tofile`` (the naive loop);
- one seeded global batch: ``ChunkRows.batch`` from the store against amber-train's own way
  (``main_utils.load_jsonl_examples``: scan the JSONL, ``json.loads`` the lines the permutation picks);
- the seeded permutation: seconds per ``np.random.permutation(1706976)`` draw (chunk k replays k + 1).

    python scripts/bench_chunk_store.py --rows 4480 --rounds 3
    python scripts/bench_chunk_store.py --one convert --file /tmp/chunk.jsonl   # one method, for whole-process timing
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROW_LEN, VOCAB, BATCH = 2049, 32000, 2240
SOURCES = ("arxiv", "book", "c4", "refinedweb", "starcoder", "stackexchange", "wikipedia")


def make_chunk(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    per = -(-rows // len(SOURCES))
    with open(path, "w") as f:
        for i in range(rows):
            ids = rng.integers(0, VOCAB, ROW_LEN)
            f.write(json.dumps({"token_ids": ids.tolist(), "source": SOURCES[i // per]}) + "\n")


def convert_store(src: Path, out: Path) -> None:
    from data_order.chunk_store import convert_chunk

    convert_chunk(src, out / "store", row_len=ROW_LEN, vocab_size=VOCAB, progress=False)


def convert_pyarrow(src: Path, out: Path) -> None:
    import pyarrow.compute as pc
    import pyarrow.json as pj

    table = pj.read_json(src)
    flat = pc.list_flatten(table.column("token_ids").combine_chunks()).to_numpy()
    out.mkdir(parents=True, exist_ok=True)
    flat.astype(np.uint16).tofile(out / "tokens.bin")


def convert_json(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(src) as f, open(out / "tokens.bin", "wb") as g:
        for line in f:
            np.asarray(json.loads(line)["token_ids"], dtype=np.uint16).tofile(g)


METHODS = {"convert": convert_store, "pyarrow": convert_pyarrow, "json": convert_json}


def batch_store(store_dir: Path, rows: int):
    from data_order.chunk_store import ChunkStore
    from data_order.chunked import ChunkLayout, ChunkRows

    layout = ChunkLayout.from_order({"kind": "amber-chunks", "repo_id": "bench/x", "chunk_file": "train_{k:03d}.jsonl",
                                     "examples_per_chunk": rows, "steps_per_chunk": rows // BATCH,
                                     "batch_size": BATCH, "seq_len": ROW_LEN - 1, "seed_base": 11111})
    data = ChunkRows(layout, {0: ChunkStore.open(store_dir)})
    data.layout.lines(0)  # the permutation, computed once per process (not part of the read)
    return lambda: data.batch(0)


def batch_jsonl(src: Path, rows: int):
    perm = np.random.RandomState(11111).permutation(rows)[:BATCH]

    def read():  # amber-train main_utils.load_jsonl_examples, for the rows of one step
        want = {int(i): None for i in perm}
        with open(src) as f:
            for i, line in enumerate(f):
                if i in want:
                    want[i] = json.loads(line)["token_ids"]
        return np.array([want[int(i)] for i in perm], dtype=np.uint16)

    return read


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=4480, help="rows of the generated chunk (default 2 steps of 2240)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--one", choices=sorted(METHODS), help="run one conversion method once on --file and exit")
    p.add_argument("--file", type=Path)
    args = p.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as d:
            METHODS[args.one](args.file, Path(d) / "out")
        return 0

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        src = d / "train_000.jsonl"
        make_chunk(src, args.rows)
        mb = src.stat().st_size / 1e6
        times: dict[str, list[float]] = {m: [] for m in METHODS}
        for r in range(args.rounds + 1):  # round 0 warms the imports and the page cache
            for name, fn in METHODS.items():
                out = d / f"{name}-{r}"
                t0 = time.perf_counter()
                fn(src, out)
                if r:
                    times[name].append(time.perf_counter() - t0)
        med = {m: statistics.median(v) for m, v in times.items()}
        print(f"chunk: {args.rows} rows x {ROW_LEN} tokens, {mb:.1f} MB of JSON lines; {args.rounds} interleaved rounds")
        for m in METHODS:
            print(f"convert {m:8s}: median {med[m]:.2f} s = {mb / med[m]:.1f} MB/s")
        print(f"ratio convert/pyarrow {med['convert'] / med['pyarrow']:.2f}, convert/json {med['convert'] / med['json']:.2f}")

        store_read, jsonl_read = batch_store(d / "convert-1" / "store", args.rows), batch_jsonl(src, args.rows)
        assert np.array_equal(store_read(), jsonl_read())  # same rows, same order
        rt = {"store": [], "jsonl": []}
        for _ in range(args.rounds):
            for name, fn in (("store", store_read), ("jsonl", jsonl_read)):
                t0 = time.perf_counter()
                fn()
                rt[name].append(time.perf_counter() - t0)
        s, j = statistics.median(rt["store"]), statistics.median(rt["jsonl"])
        print(f"one seeded batch of {BATCH} rows: store {s * 1e3:.1f} ms, JSONL scan {j * 1e3:.1f} ms, ratio {j / s:.0f}x")

    rng = np.random.RandomState(11111)
    t0 = time.perf_counter()
    for _ in range(3):
        rng.permutation(1_706_976)
    print(f"seeded permutation: {(time.perf_counter() - t0) / 3:.3f} s per draw of 1,706,976 (chunk k replays k + 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
