"""``branchpoint demo``: the README's main job, offline, on the embedded toy trajectory.

Builds the small toy if missing, branches it from a mid-trajectory step twice (the control and
LAWA in replace mode), and compares both with the parent: table, figures and summary in OUT/compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_LAWA = "lawa:k=5,every=10,mode=replace"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: toy trajectory -> control + LAWA branches -> comparison (offline, minutes)",
        description="Build the small toy trajectory (if missing), branch it at a mid-trajectory step with the control "
        "(no intervention) and with LAWA, and compare both with the parent on held-out batches. Reruns reuse what "
        "is complete.",
        epilog="example: branchpoint demo --out out/demo   # then open out/demo/compare/summary.md",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="out/demo", help="where the branches and the comparison go (default: out/demo)")
    p.add_argument("--toy", default="runs/toy-small", help="the toy trajectory to use or build (default: runs/toy-small)")
    p.add_argument("--size", default="small", metavar="SIZE", help="toy size to build if missing: small (default) or tiny")
    p.add_argument("--from-step", type=int, default=400, metavar="N", help="branch step (default: 400, mid-run)")
    p.add_argument("--steps", type=int, default=200, metavar="K", help="updates per branch (default: 200)")
    p.add_argument("--intervention", default=DEFAULT_LAWA, metavar="SPEC", help=f"the treated branch (default: {DEFAULT_LAWA})")
    p.add_argument("--eval-batches", type=int, default=4, metavar="K", help="held-out global batches (default: 4)")
    p.set_defaults(func=run)


def _branch_once(toy: Path, out: Path, step: int, steps: int, spec: str) -> Path:
    from checkpoints_cache.trajectory import Trajectory
    from resume.engine import branch

    if Trajectory.is_trajectory(out) and Trajectory.open(out).meta.get("complete"):
        print(f"reusing the complete branch {out}")
        return out
    return branch(toy, step, steps, intervention=spec, out=out, resume=out.exists())


def run(args: argparse.Namespace) -> int:
    from resume.compare.api import compare
    from resume.toy import ensure_toy

    out = Path(args.out)
    toy = ensure_toy(args.toy, size=args.size)
    print(f"toy trajectory: {toy}")
    control = _branch_once(toy, out / "control", args.from_step, args.steps, "none")
    treated = _branch_once(toy, out / "lawa", args.from_step, args.steps, args.intervention)
    table = compare([control, treated], eval_batches=args.eval_batches, out=out / "compare")
    print(f"comparison: {len(table)} rows in {out / 'compare' / 'comparison.csv'}")
    print(f"figures and summary: {out / 'compare'} (summary.md)")
    return 0
