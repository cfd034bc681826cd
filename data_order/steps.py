"""Step arithmetic, in one place (DESIGN.md "Step semantics"; reference/pythia.md §4.4).

- Global batch ``k`` is data rows ``[k*B, (k+1)*B)`` of the preshuffled order.
- Checkpoint ``stepN`` holds the weights after N optimizer updates: it consumed batches ``0..N-1``
  (``neox@v1.0`` ``train()`` increments ``iteration`` and then saves ``step{iteration}``).
- The update that takes ``stepN`` to ``stepN+1`` trains on batch ``N``; a branch from ``stepN``
  therefore trains on batch ``N`` first.

Everything else in branchpoint asks these functions instead of doing the arithmetic itself.
"""

from __future__ import annotations

from .mmidx import DataOrderError


def _check_step(name: str, value: int) -> None:
    if int(value) != value or value < 0:
        raise DataOrderError(f"{name} {value} is negative; steps and batches count from 0 (step0 = the initialization)")


def _check_positive(name: str, value: int) -> None:
    if int(value) != value or value < 1:
        raise DataOrderError(f"{name} must be a positive integer, got {value}")


def batch_rows(k: int, batch_size: int) -> range:
    """Rows of global batch ``k``: ``[k*B, (k+1)*B)``."""
    _check_step("batch", k)
    _check_positive("batch size", batch_size)
    return range(k * batch_size, (k + 1) * batch_size)


def consumed_batches(step: int) -> range:
    """Batches already trained on by checkpoint ``stepN``: ``0..N-1``."""
    _check_step("step", step)
    return range(0, step)


def first_batch_after(step: int) -> int:
    """The batch a branch from checkpoint ``stepN`` trains on first: batch ``N``."""
    _check_step("step", step)
    return step


def batch_for_update(step_reached: int) -> int:
    """The batch trained on by the update whose result is checkpoint ``step_reached`` (>= 1)."""
    _check_step("step", step_reached)
    if step_reached == 0:
        raise DataOrderError("step 0 is the initialization; no update produced it (the first update reaches step1 from batch 0)")
    return step_reached - 1


def accumulation_steps(batch_size: int, world_size: int, micro_batch_size: int) -> int:
    """Gradient-accumulation steps per optimizer update: ``B / (W * b)``, which must be whole."""
    _check_positive("batch size", batch_size)
    _check_positive("world size", world_size)
    _check_positive("micro-batch size", micro_batch_size)
    per_pass = world_size * micro_batch_size
    if batch_size % per_pass:
        fits = [b for b in range(1, batch_size + 1) if batch_size % (world_size * b) == 0]
        hint = f"micro-batch sizes that fit {world_size} processes: {', '.join(map(str, fits[:8]))}" if fits else (
            f"use a world size that divides {batch_size}"
        )
        raise DataOrderError(
            f"global batch {batch_size} is not divisible by world size {world_size} x micro-batch {micro_batch_size} "
            f"= {per_pass}; {hint}"
        )
    return batch_size // per_pass


def rank_microbatches(k: int, batch_size: int, world_size: int, rank: int, micro_batch_size: int) -> list[range]:
    """The row ranges rank ``rank`` processes for global batch ``k``, one per accumulation step, in order.

    Layout: at accumulation step ``a`` the W ranks together read the next ``W*b`` rows of the
    batch, rank ``r`` taking its contiguous slice, i.e. rows ``k*B + (a*W + r)*b`` to ``+ b``.
    This is GPT-NeoX's layout (a loader batch of micro x dp rows, each rank a contiguous slice,
    ``DistributedBatchSampler`` with interleave=False; reference/pythia.md §4.4 "Resuming"). The
    union over ranks and accumulation steps is exactly ``batch_rows(k)``, for any W dividing B/b.
    """
    if not (0 <= rank < world_size):
        raise DataOrderError(f"rank {rank} is outside world size {world_size}; ranks are 0..{world_size - 1}")
    steps = accumulation_steps(batch_size, world_size, micro_batch_size)
    base = batch_rows(k, batch_size).start
    out = []
    for a in range(steps):
        start = base + (a * world_size + rank) * micro_batch_size
        out.append(range(start, start + micro_batch_size))
    return out


def describe_batch(k: int, batch_size: int) -> str:
    """One line stating what batch ``k`` is, in the words the CLI and notebooks use."""
    rows = batch_rows(k, batch_size)
    return (
        f"batch {k} = rows {rows.start}..{rows.stop - 1}; first trained by the update that produces step{k + 1}; "
        f"a branch from step{k} trains on it first"
    )
