"""Benchmark: the check every fetched byte range gets before it is recorded (``data_order.row_check``).

Side by side on the same shard file, alternating, page cache warm (as right after the range was
written): the validator (row lengths from the index, every token id < the vocabulary) against the
baseline of a plain pass over the same bytes (``np.memmap`` max, what any check must at least do)
and against sha256 of the same bytes (what a whole-file check costs). Reports medians and ratios.

    python scripts/bench_row_check.py [--mb 256] [--repeats 5] [--out /tmp/row_check.md]
"""

from __future__ import annotations

import argparse
import hashlib
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROW = 2049  # Pythia rows: 2049 uint16 tokens (pythia.md §4.3)
VOCAB = 50304  # Pythia's padded vocabulary (pythia.md §1.3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()

    from data_order.mmidx import write_sharded
    from data_order.remote import _index_arrays, shard_layout
    from data_order.row_check import row_range_validator

    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        rows = max(1, args.mb * 1_000_000 // (ROW * 2))
        data = np.random.default_rng(0).integers(0, VOCAB, size=(rows, ROW), dtype=np.uint16)
        write_sharded(folder, iter(data), dtype=np.uint16, num_shards=1)
        del data
        name = next(p.name for p in folder.glob("*.bin"))
        path = folder / name
        size = path.stat().st_size
        layout = shard_layout({name: size})
        dtype, sizes, pointers = _index_arrays(folder / "document.idx")
        check = row_range_validator(layout, dtype, sizes, pointers, ROW, VOCAB)

        def plain() -> None:
            mm = np.memmap(path, dtype=np.uint16, mode="r")
            int(mm.max())
            del mm

        def validate() -> None:
            assert check(name, 0, size, path) is None

        def sha() -> None:
            with open(path, "rb") as f:
                hashlib.file_digest(f, "sha256")

        plain()  # warm the page cache
        times: dict[str, list[float]] = {"plain memmap pass": [], "row check": [], "sha256": []}
        for _ in range(args.repeats):
            for label, fn in (("plain memmap pass", plain), ("row check", validate), ("sha256", sha)):
                t = time.perf_counter()
                fn()
                times[label].append(time.perf_counter() - t)

    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["plain memmap pass"]
    lines = [
        f"## row check of a fetched range (`scripts/bench_row_check.py`)",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}, "
        f"numpy {np.__version__}; one {size / 1e6:.0f} MB shard of {ROW}-token uint16 rows, page cache warm, "
        f"{args.repeats} alternating repeats, medians.",
        "",
        "| pass over the range | median s | GB/s | ratio to the plain pass |",
        "| --- | --- | --- | --- |",
    ]
    for k, v in med.items():
        lines.append(f"| {k} | {v:.3f} | {size / v / 1e9:.2f} | {v / base:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
