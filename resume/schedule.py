"""Learning rate as a pure function of the global update index (never a stateful scheduler).

``n`` is the number of optimizer updates before the current one, counted from the run's step 0:
the update with index ``n`` produces checkpoint ``step{n+1}``. Writing ``lr_at(recipe, n)`` into the
param groups each update makes the schedule independent of the world size and of restarts
(ecosystem.md §4.3: an accelerate-prepared scheduler steps once per process).
"""

from __future__ import annotations

import math

from checkpoints_cache.errors import UserError
from checkpoints_cache.recipe import Recipe


def neox_cosine(n: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """GPT-NeoX v1.0 ``AnnealingLR.get_lr`` with decay-style cosine (pythia.md §2.3).

    Warmup: lr * n / W for n <= W, so the first update (n = 0) uses lr = 0 (why Pythia's step0 and
    step1 are identical, pythia#83). Then n' = min(n, E - W) - W and
    lr = max(lr/2 * (cos(pi * n' / E) + 1), min_lr): the cosine's denominator is E, not E - W.
    """
    if warmup > 0 and n <= warmup:
        return lr * n / warmup
    n_ = min(n, decay_iters - warmup) - warmup
    return max(lr / 2.0 * (math.cos(math.pi * n_ / decay_iters) + 1.0), min_lr)


def linear_warmup_cosine(n: int, lr: float, min_lr: float, warmup: int, decay_iters: int) -> float:
    """Linear warmup from 0, then cosine from lr to min_lr at ``decay_iters``, held at min_lr afterwards
    (Amber and K2, llm360.md §4). Update ``n`` uses lr(n); the first update (n = 0) has lr 0:

    - Amber (amber-train @64bc595): ``main_utils.get_cosine_lr_decay_fn`` gives ``lr*step/W`` for
      step < W, else ``min + ½(lr − min)(1 + cos(π(step − W)/(E − W)))`` (E = total steps, min past it),
      and ``main.py::train_chunk`` sets the LR from ``step`` *before* ``step += 1``, with
      ``step = chunk_idx * 762`` at each chunk start. That is the released ``run.sh`` config
      (accumulate 1); the earlier 4-way accumulation config counted micro-steps (lr at update n =
      lr(4n+3) on a 4x grid), which is not modelled.
    - K2 (k2-train @869fbb9, Megatron): ``OptimizerParamScheduler.get_lr`` gives ``max_lr*num_steps/W``
      for num_steps <= W and the same cosine over [W, E] (``lr_decay_iters`` unset = ``train_iters``);
      ``num_steps`` counts samples (W and E are scaled by the global batch too) and is advanced by
      ``step(increment)`` *after* each update, from ``step(0)`` at construction. Update n therefore
      uses ``max_lr*n/W``: the same function (at n = W both conventions give the peak).
    """
    if warmup > 0 and n < warmup:
        return lr * n / warmup
    span = max(1, decay_iters - warmup)
    progress = min(1.0, (n - warmup) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


SCHEDULES = {
    "neox-cosine": neox_cosine,
    "linear-warmup-cosine": linear_warmup_cosine,
}


def lr_at(recipe: Recipe, n: int) -> float:
    """The parent's learning rate for the update with index ``n`` (0-based)."""
    try:
        fn = SCHEDULES[recipe.schedule]
    except KeyError:
        raise UserError(
            f"unknown schedule {recipe.schedule!r} in the recipe; known: {', '.join(sorted(SCHEDULES))}"
        ) from None
    return fn(n, recipe.lr, recipe.min_lr, recipe.warmup_iters, recipe.decay_iters)
