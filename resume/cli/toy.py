"""``branchpoint toy``: build the embedded toy trajectory (offline, seconds to a couple of minutes)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "toy",
        help="build the embedded toy trajectory (a tiny Pythia trained from step 0)",
        description="Train a tiny GPT-NeoX with the Pythia recipe scaled down on a generated corpus and write it "
        "as a trajectory directory: checkpoints at 0, log-spaced and grid steps, the preshuffled data order "
        "(document.idx + shards) and the full optimizer state at every checkpoint. A complete toy of the same size "
        "and seed already at --out is reused as it is.",
        epilog="example: branchpoint toy --out runs/toy-small --size small   # run again: reuses the complete toy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=None, help="trajectory directory to write (default: runs/toy-SIZE)")
    p.add_argument("--size", default="small", metavar="SIZE", help="tiny (tests, seconds) or small (the demo, default)")
    p.add_argument("--seed", type=int, default=1234, help="init and data-shuffle seed: another seed is a seed variant of the same corpus, as the PolyPythias")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resume.toy import build_toy, existing_toy

    out = args.out or f"runs/toy-{args.size}" + ("" if args.seed == 1234 else f"-seed{args.seed}")
    path = existing_toy(out, args.size, args.seed)  # the complete toy of this size and seed: nothing to do
    if path is not None:
        print(f"toy trajectory {path} is complete ({args.size}, seed {args.seed})")
    else:
        path = build_toy(out, size=args.size, seed=args.seed)
        print(f"toy trajectory written to {path}")
    print(f"next: branchpoint steps {path}  |  branchpoint branch {path} --from-step N --steps K")
    return 0
