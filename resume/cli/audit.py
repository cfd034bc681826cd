"""``branchpoint audit RUN``: duplicate / missing checkpoints from Hub metadata only."""

from __future__ import annotations

import argparse

EPILOG = """\
example:
  branchpoint audit pythia-2.8b
  branchpoint audit EleutherAI/pythia-160m --out audit.csv

Reads only metadata (branches and file listings with LFS sha256), never weights. A step is
"duplicate" when a weight file is byte-identical to another branch's (pythia#205-style uploads),
"missing revision" when its branch does not exist, "missing files" when config or weights are
absent. Findings are remembered so that `fetch` and `branch` warn about flagged steps.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "audit", help="find duplicate / missing checkpoints from Hub metadata",
        description="Audit a released run's checkpoints from Hub metadata only (no weight downloads).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="registry name or Hub repo id")
    p.add_argument("--out", metavar="FILE.csv", help="also write the full table as CSV")
    p.add_argument("--all", action="store_true", help="print every step, not only the flagged ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.audit import audit
    from checkpoints_cache.registry import resolve_run
    from checkpoints_cache.trajectory import atomic_write_text

    info = resolve_run(args.run)
    df = audit(info)
    flagged = df[df["status"] != "ok"]
    shown = df if args.all else flagged
    cols = ["step", "revision", "status", "detail", "known_defects"]
    if len(shown):
        print(shown[cols].to_string(index=False))
    counts = df["status"].value_counts().to_dict()
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    print(f"{info.name}: {len(df)} revisions checked: {summary}")
    if args.out:
        atomic_write_text(args.out, df.to_csv(index=False))
    return 0
