"""This process's place in a torchrun / accelerate launch, read from the launcher's environment.

For code that runs before the accelerator (and its process group) exists: validating a branch,
printing its plan, taking the output lock, setting up an intervention. Without a launcher the
process is rank 0 of 1.
"""

from __future__ import annotations

import os


def launch_rank(environ: dict[str, str] | None = None) -> int:
    """``RANK`` of the launch (0 when not launched)."""
    env = os.environ if environ is None else environ
    return int(env.get("RANK", "0") or 0)


def launch_world_size(environ: dict[str, str] | None = None) -> int:
    """``WORLD_SIZE`` of the launch (1 when not launched)."""
    env = os.environ if environ is None else environ
    return int(env.get("WORLD_SIZE", "1") or 1)


def is_launch_main() -> bool:
    return launch_rank() == 0
