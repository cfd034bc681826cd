"""Benchmark: read global batch k straight from Pythia-style shards vs a plain numpy memmap.

Generates a multi-GB MMIDIDX dataset twice: as one ``.bin`` (the baseline: a numpy memmap slice
copy of the same bytes, what an unsharded file would give) and as 21 byte-split shards read
through ``MMapIndexedDataset`` / ``TokenRows`` (rows straddle shard edges). Reads of random
global batches alternate between the two in the same process; each read is checked to return
identical arrays. Two page-cache regimes: "cached" (the files sit in the page cache) and "cold"
(the touched files are evicted with posix_fadvise(DONTNEED) before every read). Reports GB/s,
the ratio (goal >= 0.9) and the cost for small vs large k (it must not grow with k).
The generated data is deleted afterwards unless --keep.

example: python scripts/bench_data_order.py --size-gb 2 --reads 60
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_order.mmidx import MMapIndexedDataset, write_mmidx, write_sharded  # noqa: E402
from data_order.source import TokenRows  # noqa: E402
from data_order.steps import batch_rows  # noqa: E402


def generate(root: Path, size_gb: float, batch_size: int, row_len: int, num_shards: int) -> tuple[Path, Path, int]:
    from tqdm import tqdm

    row_bytes = row_len * 2
    num_batches = max(2, int(size_gb * 1e9) // (row_bytes * batch_size))
    rng = np.random.default_rng(0)

    def blocks():
        for _ in tqdm(range(num_batches), desc="generate", unit="batch", leave=False):
            yield rng.integers(0, 50277, size=(batch_size, row_len), dtype=np.uint16)

    single = root / "single" / "document"
    write_mmidx(single, blocks())
    mm = np.memmap(single.with_suffix(".bin"), dtype=np.uint16, mode="r").reshape(-1, row_len)
    per = 64  # re-split the same bytes into shards, in blocks of 64 batches
    shards = root / "shards"
    write_sharded(
        shards,
        (mm[i : i + per * batch_size] for i in range(0, len(mm), per * batch_size)),
        num_shards=num_shards,
    )
    del mm
    os.sync()
    return single, shards, num_batches


def warm(paths: list[Path]) -> None:
    """Read every file once so the page cache holds it (shards split by copy_file_range may not be cached)."""
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def evict(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def measure(single: Path, shards: Path, num_batches: int, batch_size: int, row_len: int, reads: int, regime: str, seed: int):
    """Per-read seconds for (sharded, baseline) at random k, interleaved; also returns the ks.

    Regimes: "cached" (all files in the page cache), "cold data" (data files evicted before each
    read, the index kept cached) and "cold all" (the index evicted too). Cold reads open fresh
    readers (a page mapped into this process cannot be evicted); opening is not timed.
    """
    data_files = [single.with_suffix(".bin"), *sorted(shards.glob("*.bin"))]
    index = [shards / "document.idx"]
    cold = regime.startswith("cold")
    evicted = data_files + (index if regime == "cold all" else [])
    # Repopulate the page cache the same way for every file: how a file was written (big
    # sequential writes vs copy_file_range) changes its page-cache folio sizes, hence the
    # number of page faults a memmap read takes, which would bias the comparison.
    evict(data_files + index)
    warm(data_files + index)
    readers = {}

    def open_readers():
        # "cached, same file": the indexed reader over the baseline's own file isolates the reader's overhead
        readers["shard"] = TokenRows(single if regime == "cached, same file" else shards, batch_size, row_len - 1)
        readers["base"] = np.memmap(single.with_suffix(".bin"), dtype=np.uint16, mode="r")

    open_readers()
    rng = np.random.default_rng(seed)
    # Half the reads at small k (first 10% of batches), half at large k (last 10%).
    tenth = max(1, num_batches // 10)
    ks = np.concatenate([rng.integers(0, tenth, reads // 2), rng.integers(num_batches - tenth, num_batches, reads - reads // 2)])
    rng.shuffle(ks)
    t_shard, t_base = [], []
    for i, k in enumerate(ks):
        r = batch_rows(int(k), batch_size)
        fns = {
            "shard": lambda: readers["shard"].batch(int(k)),
            "base": lambda: np.array(readers["base"][r.start * row_len : r.stop * row_len]).reshape(batch_size, row_len),
        }
        order = ["shard", "base"] if i % 2 == 0 else ["base", "shard"]
        out = {}
        for name in order:
            if cold:
                readers.clear()  # unmaps: np.memmap releases its mapping with the last reference
                evict(evicted)
                if regime == "cold data":
                    warm(index)
                open_readers()
            t0 = time.perf_counter()
            out[name] = fns[name]()
            (t_shard if name == "shard" else t_base).append(time.perf_counter() - t0)
        assert np.array_equal(out["shard"], out["base"]), f"batch {k} differs between shards and baseline"
    if regime == "cached" and sys.platform.startswith("linux"):
        huge = (pmd_mapped_fraction(data_files[1:]), pmd_mapped_fraction(data_files[:1]))
        print(f"huge-page mapped share after the cached reads: shards {huge[0]:.0%}, baseline {huge[1]:.0%}")
        measure.huge = huge
    return np.array(t_shard), np.array(t_base), ks, tenth


def pmd_mapped_fraction(paths: list[Path]) -> float:
    """Share of this process's mapped pages of ``paths`` that are mapped as 2 MB huge pages (smaps)."""
    names = {str(p) for p in paths}
    rss = pmd = 0
    current = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if len(head) >= 6 and "-" in head[0]:
                current = head[-1] in names
            elif current and head[0] == "Rss:":
                rss += int(head[1])
            elif current and head[0] == "FilePmdMapped:":
                pmd += int(head[1])
    return pmd / rss if rss else 0.0


def summarize(label: str, ts: np.ndarray, tb: np.ndarray, ks: np.ndarray, tenth: int, nbytes: int) -> dict:
    small = ks < tenth
    gbs = lambda t: nbytes / statistics.median(t) / 1e9  # noqa: E731
    return {
        "regime": label,
        "sharded_gbs": gbs(ts),
        "base_gbs": gbs(tb),
        "ratio": statistics.median(tb) / statistics.median(ts),
        "ratio_paired": float(np.median(tb / ts)),
        "shard_small_ms": 1e3 * statistics.median(ts[small]),
        "shard_large_ms": 1e3 * statistics.median(ts[~small]),
        "base_small_ms": 1e3 * statistics.median(tb[small]),
        "base_large_ms": 1e3 * statistics.median(tb[~small]),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="example: python scripts/bench_data_order.py --size-gb 2")
    ap.add_argument("--size-gb", type=float, default=2.0, help="size of the generated dataset (default 2 GB)")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--row-len", type=int, default=2049)
    ap.add_argument("--num-shards", type=int, default=21)
    ap.add_argument("--reads", type=int, default=60, help="random batch reads per regime and reader")
    ap.add_argument("--dir", type=Path, default=None, help="where to generate (default: a temp dir)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_data_order.md"), help="Markdown result (copy it into benchmarks/RESULTS.md)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench_data_order.", dir=args.dir))
    try:
        t0 = time.perf_counter()
        single, shards, num_batches = generate(root, args.size_gb, args.batch_size, args.row_len, args.num_shards)
        gen_s = time.perf_counter() - t0
        total = num_batches * args.batch_size * args.row_len * 2
        ds = MMapIndexedDataset(shards)
        shard_sizes = sorted({p.stat().st_size for p in shards.glob("*.bin")})
        nbytes = args.batch_size * args.row_len * 2
        results = []
        for label in ("cached", "cached, same file", "cold data", "cold all"):
            ts, tb, ks, tenth = measure(single, shards, num_batches, args.batch_size, args.row_len, args.reads, label, seed=1)
            results.append(summarize(label, ts, tb, ks, tenth, nbytes))
        lines = [
            "# data_order: reading global batch k from 21 shards vs a plain numpy memmap",
            "",
            f"Machine: {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}, numpy {np.__version__}, "
            f"{platform.system()} {platform.machine()}; torch 2.13 CPU venv. Command: "
            f"`python scripts/bench_data_order.py --size-gb {args.size_gb} --reads {args.reads}`.",
            "",
            f"Data: {total / 1e9:.2f} GB of uint16 rows of {args.row_len} tokens, {num_batches} global batches of "
            f"{args.batch_size} rows ({nbytes / 1e6:.2f} MB each), split into {len(ds.shard_files)} shards "
            f"(sizes {', '.join(str(s) for s in shard_sizes)} bytes; rows straddle shard edges). Generation took {gen_s:.0f} s.",
            "",
            "Baseline: `np.array(memmap[k*B*L:(k+1)*B*L])` on one unsharded `.bin` with the same bytes. Sharded: "
            "`TokenRows(folder, B, T).batch(k)` (index lookup, row-size and pointer checks, one copy per shard touched). "
            f"{args.reads} random k per regime, half in the first 10% of batches and half in the last 10%, reads "
            "interleaved (alternating which reader goes first); every pair of results checked identical. "
            "'cached': every file evicted, then read once with read() so that all sit in the page cache alike. 'cold data': the data files (single .bin and shards) are "
            "evicted with posix_fadvise(DONTNEED) before each read, the index stays cached. 'cold all': the index "
            "(document.idx) is evicted too, which only the indexed reader needs (the baseline computes offsets by arithmetic). "
            "'cached, same file': the indexed reader (TokenRows) over the unsharded prefix, i.e. the very file the "
            "baseline maps, so page-cache layout is identical and the ratio is the reader's own overhead.",
            "",
            "| regime | TokenRows GB/s | baseline GB/s | ratio (median times) | ratio (median of paired) | TokenRows ms small k / large k | baseline ms small k / large k |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in results:
            lines.append(
                f"| {r['regime']} | {r['sharded_gbs']:.2f} | {r['base_gbs']:.2f} | {r['ratio']:.2f} | {r['ratio_paired']:.2f} | "
                f"{r['shard_small_ms']:.2f} / {r['shard_large_ms']:.2f} | {r['base_small_ms']:.2f} / {r['base_large_ms']:.2f} |"
            )
        huge = getattr(measure, "huge", None)
        lines += [
            "",
            "Note on the 'cached' row: a memmap read of cached pages costs mostly page faults, and how many depends on "
            "the page-cache folio sizes the kernel picked for each file (large folios get mapped as 2 MB huge pages, "
            "FilePmdMapped in /proc/self/smaps), which varies with the file's history and is no property of the reader. "
            + (f"In this run {huge[0]:.0%} of the shard pages and {huge[1]:.0%} of the baseline pages were huge-page mapped. " if huge else "")
            + "Cold reads: the reader announces each read (madvise WILLNEED on the index entries and the data range, "
            "skipped when mincore shows the range cached), so the kernel reads a batch in one go instead of fault by fault.",
            "",
            "Ratio = baseline time / indexed-reader time (1.0 = as fast as the plain memmap; goal >= 0.9). "
            "Cost vs k: a read touches only its own B rows of the index and its bytes, so small and large k cost the same.",
            "",
        ]
        text = "\n".join(lines)
        print(text)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
