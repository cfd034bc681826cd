"""Checkpoint grids and revision names of the released runs (pure arithmetic, no I/O).

Pythia: 154 branches ``step0``, ``step1 .. step512`` (powers of two) and ``step1000 .. step143000``
every 1000 (pythia.md §1.2). Amber: ``ckpt_000 .. ckpt_359``, ``ckpt_k`` saved after chunk k,
i.e. after (k+1)*762 optimizer steps (llm360.md §1.1, §3.1). K2: ``ckpt_k`` = Megatron iteration
941*k, k = 1..360 (llm360.md §1.4, inferred 1-based naming).
"""

from __future__ import annotations

import re

PYTHIA_LOG_STEPS: tuple[int, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
PYTHIA_GRID: tuple[int, ...] = PYTHIA_LOG_STEPS + tuple(range(1000, 143001, 1000))
assert len(PYTHIA_GRID) == 154  # pythia.md §1.2: "154 checkpoints"

AMBER_STEPS_PER_CKPT = 762  # floor(1,706,976 / 2240) steps per chunk (llm360.md §3.1)
AMBER_NUM_CKPTS = 360
AMBER_GRID: tuple[int, ...] = tuple((k + 1) * AMBER_STEPS_PER_CKPT for k in range(AMBER_NUM_CKPTS))

K2_ITERS_PER_CKPT = 941  # --save-interval 941 (llm360.md §3.3)
K2_NUM_CKPTS = 360
K2_GRID: tuple[int, ...] = tuple(K2_ITERS_PER_CKPT * k for k in range(1, K2_NUM_CKPTS + 1))


def pythia_revision(step: int) -> str:
    return f"step{step}"


def amber_revision(step: int, steps_per_ckpt: int = AMBER_STEPS_PER_CKPT) -> str:
    return f"ckpt_{step // steps_per_ckpt - 1:03d}"


def k2_revision(step: int, steps_per_ckpt: int = K2_ITERS_PER_CKPT) -> str:
    return f"ckpt_{step // steps_per_ckpt}"


# Branch name -> step, per naming scheme; used by `steps --remote` and the audit.
_STEP_RE = re.compile(r"^step(\d+)$")
_CKPT_RE = re.compile(r"^ckpt_(\d+)$")


def step_of_revision(scheme: str, name: str, steps_per_ckpt: int | None = None) -> int | None:
    """The checkpoint step a branch name stands for under ``scheme``, or None if it is not a step branch.
    ``steps_per_ckpt``: the card's ``[data_order] steps_per_chunk`` for the ckpt_k schemes (a scaled-down
    Amber- or K2-shaped release); default Amber's 762 and K2's 941."""
    if scheme == "crystal":
        return crystal_step(name)
    if scheme == "stepN":
        m = _STEP_RE.match(name)
        return int(m.group(1)) if m else None
    m = _CKPT_RE.match(name)
    if not m:
        return None
    k = int(m.group(1))
    if scheme == "amber":
        return (k + 1) * (steps_per_ckpt or AMBER_STEPS_PER_CKPT)
    if scheme == "k2":
        return k * (steps_per_ckpt or K2_ITERS_PER_CKPT)
    return None


# Crystal: branches CrystalCoder_phase{p}_checkpoint_{local step:06d} with phase-local step counters
# (llm360.md §1.3). branchpoint numbers them globally by adding the lengths of the earlier phases
# (max_steps 79,721 and 214,387, llm360.md §4) -- an inferred convention, stated in `runs`.
CRYSTAL_PHASE_OFFSETS: tuple[int, ...] = (0, 79721, 79721 + 214387)
_CRYSTAL_RE = re.compile(r"^CrystalCoder_phase([123])_checkpoint_(\d+)$")


def crystal_revision(step: int) -> str:
    phase = max(i for i, off in enumerate(CRYSTAL_PHASE_OFFSETS) if step > off or i == 0)
    return f"CrystalCoder_phase{phase + 1}_checkpoint_{step - CRYSTAL_PHASE_OFFSETS[phase]:06d}"


def crystal_step(name: str) -> int | None:
    m = _CRYSTAL_RE.match(name)
    return None if not m else CRYSTAL_PHASE_OFFSETS[int(m.group(1)) - 1] + int(m.group(2))


# Schemes whose revision names depend on the card's steps per checkpoint ([data_order] steps_per_chunk).
PER_CHUNK_SCHEMES = ("amber", "k2")

REVISION_OF = {"stepN": pythia_revision, "amber": amber_revision, "k2": k2_revision, "crystal": crystal_revision}
