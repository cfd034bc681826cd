"""``branchpoint steps RUN [--remote]``: the checkpoint steps of a run, one number per line."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
example:
  branchpoint steps pythia-160m-deduped
  branchpoint steps EleutherAI/pythia-160m-deduped --remote

Prints one step per line (stdout only, so it pipes). --remote asks the Hub for the run's branches
(list_repo_refs) and prints the steps that exist there; grid steps missing on the Hub and
branches off the grid are reported on stderr.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "steps", help="list the checkpoint steps of a run", description="List the checkpoint steps of a run, one per line.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="registry name, Hub repo id, or trajectory directory")
    p.add_argument("--remote", action="store_true", help="check against the Hub's branches (network)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.errors import UserError
    from checkpoints_cache.registry import resolve_run

    info = resolve_run(args.run)
    if not args.remote:
        if not info.steps:
            raise UserError(f"the checkpoint grid of {info.name} is known only from the Hub; use `branchpoint steps {args.run} --remote`")
        _print_lines(str(s) for s in info.steps)
        return 0
    if info.is_local:
        raise UserError(f"{args.run} is a local trajectory; --remote applies to released runs on the Hub")
    from huggingface_hub.errors import RepositoryNotFoundError

    from checkpoints_cache import hub
    try:
        refs = hub.with_retries(lambda: hub.api().list_repo_refs(info.repo_id), f"refs of {info.repo_id}")
    except RepositoryNotFoundError:
        raise UserError(f"repository {info.repo_id} was not found on {hub.endpoint_of(None)}") from None
    on_hub = {}
    for b in refs.branches:
        s = info.step_of_revision(b.name)
        if s is not None:
            on_hub[s] = b.name
    grid = info.steps or sorted(on_hub)
    present = [s for s in grid if s in on_hub]
    _print_lines(str(s) for s in present)
    missing = [s for s in grid if s not in on_hub]
    extra = sorted(set(on_hub) - set(grid))
    if missing:
        shown = ", ".join(str(s) for s in missing[:10]) + (" ..." if len(missing) > 10 else "")
        print(f"warning: {len(missing)} grid step(s) of {info.name} have no branch on the Hub: {shown}", file=sys.stderr)
    if extra:
        print(f"note: {len(extra)} step branch(es) off the grid: {', '.join(on_hub[s] for s in extra[:10])}", file=sys.stderr)
    return 0


def _print_lines(lines) -> None:
    """One per line; a closed pipe (`| head`) is not an error."""
    import os

    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
