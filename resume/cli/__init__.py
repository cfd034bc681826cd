"""The ``branchpoint`` command line: one small module per subcommand.

Each module in ``COMMANDS`` defines ``add_parser(subparsers)``, which registers its subparser
and sets ``func`` to a callable taking the parsed args and returning an exit status. Modules keep
heavy imports (torch, transformers) inside their ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from checkpoints_cache.errors import UserError

# (subcommand, module) in the order `branchpoint --help` lists them.
COMMANDS: list[tuple[str, str]] = [
    ("runs", "resume.cli.runs"),
    ("steps", "resume.cli.steps"),
    ("fetch", "resume.cli.fetch"),
    ("audit", "resume.cli.audit"),
    ("batch", "resume.cli.batch"),
    ("toy", "resume.cli.toy"),
    ("branch", "resume.cli.branch"),
    ("compare", "resume.cli.compare"),
    ("eval", "resume.cli.eval"),
    ("gstack-plan", "resume.cli.gstack_plan"),
    ("demo", "resume.cli.demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="branchpoint",
        description="Branch a released pretraining run at step N, apply an intervention, compare with the original.",
        epilog="example: branchpoint toy --out runs/toy && branchpoint branch runs/toy --from-step 64 --steps 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:  # a command whose module is not written yet
            if e.name == module_name:
                continue
            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `branchpoint runs | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
