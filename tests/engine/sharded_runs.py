"""Run several branches of one parent in one torchrun launch (the process start and import cost
once): ``torchrun --nproc_per_node 2 tests/engine/sharded_runs.py PARENT FROM STEPS OUT_ROOT
NAME=SHARDING:SPEC ...``; each branch goes to OUT_ROOT/NAME. Used by tests/engine/test_fsdp.py."""

from __future__ import annotations

import sys
from pathlib import Path

from resume.engine import branch


def main(argv: list[str]) -> int:
    parent, from_step, steps, root = argv[0], int(argv[1]), int(argv[2]), Path(argv[3])
    for item in argv[4:]:
        name, _, rest = item.partition("=")
        sharding, _, spec = rest.partition(":")
        branch(parent, from_step, steps, intervention=spec or "none", out=root / name, sharding=sharding,
               micro_batch_size=4, progress=False, show_plan=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
