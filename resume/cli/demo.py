"""``branchpoint demo``: the README's main job, offline, on the embedded toy trajectory.

Builds the small toy if missing, branches it from a mid-trajectory step twice (the control and
LAWA in replace mode), and compares both with the parent: table, figures and summary in OUT/compare.

Every argument of both branches and of the comparison is checked before the toy is built or a
branch trains. A rerun reuses a branch only when its whole definition (parent, steps,
intervention and resolved parameters, optimizer state, recipe) matches the request; a branch of
another definition is trained again. OUT is locked for the run, and demo writes only into a
folder it created (marked by ``.branchpoint-demo.json``), never into a non-empty folder of yours.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from pathlib import Path

DEFAULT_LAWA = "lawa:k=5,mode=replace"  # the window: the toy's latest 5 checkpoints (every 50 steps)
MARKER = ".branchpoint-demo.json"
CONTROL = "control"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the main job: toy trajectory -> control + LAWA branches -> comparison (offline, minutes)",
        description="Build the small toy trajectory (if missing), branch it at a mid-trajectory step with the control "
        "(no intervention) and with LAWA (or --intervention), and compare both with the parent on held-out batches. "
        "Reruns reuse a branch only when its whole definition matches the arguments; OUT must be a new or empty "
        "folder, or one an earlier demo wrote.",
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


def treated_name(spec: str) -> str:
    """Folder (and table label) of the treated branch: the intervention's name (``lawa`` by default)."""
    from resume.interventions.spec import parse_intervention

    name = re.sub(r"[^A-Za-z0-9._-]+", "-", parse_intervention(spec).name).strip("-.") or "treated"
    return "treated" if name in (CONTROL, "none") else name


def _is_demo_folder(out: Path) -> bool:
    """Whether ``out`` is new, empty, or was written by demo (the marker, or an earlier demo's layout)."""
    from checkpoints_cache.trajectory import Trajectory, has_content

    if not has_content(out):
        return True
    if (out / MARKER).is_file():
        return True
    # Written by a demo before the marker existed: only branch folders and compare/.
    entries = [p for p in out.iterdir() if not p.name.startswith(".")]
    branches = [p for p in entries if p.name != "compare"]
    return bool(branches) and all(Trajectory.is_trajectory(p) and Trajectory.open(p).parent for p in branches) \
        and all(p.is_dir() for p in entries)


def check_demo_folder(out: Path) -> None:
    from checkpoints_cache.errors import UserError

    if not _is_demo_folder(out):
        raise UserError(f"--out {out} is a non-empty folder that demo did not create; pass a new or empty folder "
                        "(demo writes control/, the treated branch and compare/ into it)")


def check_args(args: argparse.Namespace) -> Path:
    """Every check that needs no toy (it may not be built yet); returns OUT."""
    from checkpoints_cache.errors import UserError
    from checkpoints_cache.trajectory import Trajectory, check_output_dir, describe_nearest
    from resume.toy import TOY_SIZES, checkpoint_grid, existing_toy

    out = Path(args.out)
    check_output_dir(out)
    check_demo_folder(out)
    toy = existing_toy(args.toy, args.size, flag="--toy")  # checks --size; a mismatch names --size
    if args.steps <= 0:
        raise UserError(f"--steps {args.steps}: the number of updates must be a positive integer")
    if args.eval_batches < 1:
        raise UserError(f"--eval-batches {args.eval_batches} must be at least 1")
    treated_name(args.intervention)  # parses and validates the intervention spec
    size = TOY_SIZES[args.size]
    if toy is not None:
        traj = Trajectory.open(toy)
        grid, batches = traj.steps, int(traj.data_order["num_batches"])
    else:
        grid, batches = checkpoint_grid(size), size.train_iters + size.heldout_batches
    if args.from_step not in grid:
        raise UserError(f"--from-step {args.from_step} is not a checkpoint of the {args.size} toy; nearest available: "
                        f"{describe_nearest(grid, args.from_step)}")
    end = args.from_step + args.steps
    if end + args.eval_batches > batches:
        raise UserError(f"--from-step {args.from_step} --steps {args.steps} --eval-batches {args.eval_batches} needs "
                        f"global batches up to {end + args.eval_batches - 1}, but the {args.size} toy has {batches} "
                        f"(use --steps <= {max(batches - args.eval_batches - args.from_step, 0)})")
    return out


def _train_once(toy: Path, out: Path, args: argparse.Namespace, spec: str, wanted) -> Path:
    from checkpoints_cache.locks import output_lock
    from checkpoints_cache.trajectory import Trajectory
    from resume.branch_definition import BranchDefinition
    from resume.engine import branch

    with output_lock(out):  # nobody else may be writing the branch we are about to reuse or replace
        recorded = BranchDefinition.of_trajectory(out)
        resume = False
        if recorded is not None:
            diffs = wanted.differences(recorded)
            if not diffs and Trajectory.open(out).meta.get("complete"):
                print(f"reusing the complete branch {out} (same definition)")
                return out
            if diffs:
                print(f"{out} holds another branch ({'; '.join(diffs)}); training it again", file=sys.stderr)
                shutil.rmtree(out)
            else:
                resume = True  # the same branch, killed before the end
        elif out.exists():
            shutil.rmtree(out)  # demo's own folder without a usable branch (a run killed at its very start)
        return branch(toy, args.from_step, args.steps, intervention=spec, out=out, resume=resume)


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.locks import output_lock
    from checkpoints_cache.trajectory import atomic_write_json
    from resume.branching import check_branch
    from resume.compare.api import compare
    from resume.compare.preflight import check_eval_batches
    from resume.toy import ensure_toy

    out = check_args(args)  # everything that needs no toy, before the toy is built
    with output_lock(out):
        check_demo_folder(out)  # again under the lock: another process may have written meanwhile
        toy = ensure_toy(args.toy, size=args.size, flag="--toy")
        print(f"toy trajectory: {toy}")

        def eval_ok(parent, end: int) -> None:
            check_eval_batches(parent.data_order, parent.name, end, args.eval_batches)

        plan = {CONTROL: "none", treated_name(args.intervention): args.intervention}
        # Both branches checked in full (parent-derived parameters resolved) before either trains.
        wanted = {name: check_branch(toy, args.from_step, args.steps, intervention=spec, out=out / name,
                                     before_training=eval_ok) for name, spec in plan.items()}
        if not (out / MARKER).is_file():
            atomic_write_json(out / MARKER, {"written_by": "branchpoint demo", "branches": sorted(plan)})
        paths = [_train_once(toy, out / name, args, spec, wanted[name]) for name, spec in plan.items()]
        table = compare(paths, eval_batches=args.eval_batches, out=out / "compare")
    print(f"comparison: {len(table)} rows in {out / 'compare' / 'comparison.csv'}")
    print(f"figures and summary: {out / 'compare'} (summary.md)")
    return 0
