"""``branchpoint fetch RUN --step N``: weights (+ the data rows a branch needs) into the local caches."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  branchpoint fetch pythia-160m-deduped --step 20000 --dry-run
  branchpoint fetch pythia-160m-deduped --step 20000 --data-steps 2000
  branchpoint fetch EleutherAI/pythia-70m --step 1000 --step 2000

Weights and config go through huggingface_hub into the standard HF cache (HF_HOME / HF_HUB_CACHE),
every LFS file checked against the Hub's sha256. --data-steps K fetches only the rows of global
batches N..N+K-1 (a branch from stepN trains on batch N first): document.idx plus byte ranges of
the preshuffled shards, into $HF_HOME/branchpoint/data. --dry-run lists files and bytes and
checks the free disk space; nothing moves. With HF_HUB_OFFLINE=1 it checks the cache only.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fetch", help="download checkpoint N (and its data rows) into the cache, verified",
        description="Download the weights of checkpoint N, and optionally the data rows of the next K batches.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="registry name, Hub repo id, or trajectory directory")
    p.add_argument("--step", type=int, action="append", required=True, metavar="N", help="checkpoint step (repeatable)")
    p.add_argument("--data-steps", type=int, metavar="K", help="also fetch the rows of global batches N..N+K-1")
    p.add_argument("--dry-run", action="store_true", help="list files and total bytes; download nothing")
    p.add_argument("--trust-remote-code", action="store_true", help="allow runs whose model class is code in the repo (Crystal)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.fetch import ensure_checkpoint, human, plan_fetch, step_warnings
    from checkpoints_cache.registry import resolve_run

    info = resolve_run(args.run)
    steps = list(dict.fromkeys(args.step))
    plan = plan_fetch(info, steps, args.data_steps, trust_remote_code=args.trust_remote_code)
    if args.dry_run:
        for s in steps:
            for line in step_warnings(info, s):
                print(line, file=sys.stderr)
        for line in plan.lines():
            print(line)
        plan.check_disk()
        print("dry run: nothing was downloaded; enough free disk for this fetch")
        return 0
    plan.check_disk()  # refuse before anything moves
    progress = not args.no_progress
    for s in steps:
        path = ensure_checkpoint(info, s, progress=progress, trust_remote_code=args.trust_remote_code)
        print(f"step {s}: {path}")
    if args.data_steps and info.is_local:
        where = (info.data_order or {}).get("path") or "nowhere (the trajectory declares no data order)"
        print(f"data: {info.name} is a local trajectory; its data order is already on disk: {where}")
    elif args.data_steps:
        from data_order.remote import fetch_data_steps

        for s in steps:
            got = fetch_data_steps(info, s, args.data_steps, progress=progress)
            print(f"data: batches {s}..{s + args.data_steps - 1} = rows {got.rows.start}..{got.rows.stop - 1} "
                  f"({human(got.row_bytes)}; moved {human(got.bytes_moved)} now) in {got.folder}")
    return 0
