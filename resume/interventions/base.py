"""The one protocol every intervention implements, and the control (``none``).

The engine (``resume.engine``) calls these hooks, in this order, on every process:

1. ``setup(ctx)`` once, before the model is loaded into the engine.
2. ``on_load(model, ctx) -> model`` once: a load-time transform (e.g. Gstack growth). The result
   is what the branch saves as its own ``checkpoints/stepN``.
3. ``fresh_optimizer()``: True if the branch must start from a zero optimizer state no matter
   what ``--optimizer-state`` says (e.g. after a shape change).
   ``configure_optimizer(optimizer)``: once the optimizer is built and its state loaded (e.g. a
   weight decay other than the parent's; Gstack's decay on every tensor).
   ``token_rows(parent_rows)``: the rows the branch reads (default: the parent's data order; a data
   intervention may return a source that also holds rows of its own corpus, after the parent's).
4. For every update ``n`` (the number of updates before this one, counted from the parent's step 0;
   the update produces checkpoint step ``n + 1``):
   - ``batch_row_indices(k, default)``: the data rows of global batch ``k = n`` (default: the
     parent's rows ``[k*B, (k+1)*B)``); a data-mixture intervention returns other rows, same count.
   - ``lr(n, parent_lr)``: the learning rate of this update (default: the parent's schedule).
   - ``after_step(model, step)``: after the optimizer update that reached ``step`` (may change the
     training weights in place, e.g. LAWA replace, or update a shadow, e.g. an EMA).
   - ``metrics(step) -> dict``: extra columns merged into that step's ``metrics.jsonl`` row.
5. ``extra_weights(model, step)`` whenever the engine saves ``checkpoints/stepS``: a mapping
   ``{"averaged": state_dict}`` written to ``checkpoints/stepS/averaged/`` in save_pretrained format.
6. ``state_dict()`` / ``load_state_dict()``: saved with the resumable state so that ``--resume``
   continues exactly.

``model`` is always the unwrapped ``transformers`` model (never the DDP wrapper). Hooks are called
on every process and must leave the same training weights everywhere; copies an intervention keeps
(LAWA's snapshots, the EMA) are held by the main process only (``weights.is_main_process``). Checkpoint snapshots (LAWA) live off the
accelerator; a running shadow such as an EMA may stay where the weights are (copying it to the CPU
every step would cost more than the step on a GPU; ``benchmarks/RESULTS.md``).

Sharded training (``--sharding fsdp``, ``resume.sharding``): ``setup`` and ``on_load`` run before the
model is sharded (Gstack grows the whole model); from the first update on, every parameter the hooks
see is a DTensor shard, and copies are held by every rank, each its own shards
(``weights.holds_copies``; the helpers in ``weights`` handle both cases). An intervention declares the
sharding it supports in ``SHARDING``; one that does not, and overrides ``after_step`` or
``extra_weights``, is refused under sharding with one line before any work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from checkpoints_cache.recipe import Recipe


@dataclass
class BranchContext:
    """What an intervention may know about the branch it is applied to."""

    branch_step: int  # N: the parent's checkpoint the branch starts from
    end_step: int  # N + K
    recipe: Recipe  # the parent's recipe (batch size, schedule, optimizer)
    parent_grid: list[int]  # the parent's checkpoint grid
    out_dir: Path | None = None
    # Per-row domain labels of the data order (int array over all rows) and their names, when the
    # data order carries them (the toy corpus; Amber's `source`). None otherwise.
    row_domains: np.ndarray | None = None
    domain_names: list[str] | None = None
    # Reads rows of the data order: take_rows(indices) -> int array [len(indices), seq_len + 1].
    take_rows: Any = None
    num_rows: int | None = None
    # The parent's checkpoint at a step, as a local folder in save_pretrained format (a released
    # parent fetches it into the HF cache): parent_checkpoint(step) -> Path; UserError if it has none.
    parent_checkpoint: Callable[[int], Path] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Intervention:
    """Base class: every hook is a no-op, so a subclass overrides only what it changes."""

    name: ClassVar[str] = "none"
    # One paragraph for --help and the README: what it does relative to the paper / official code.
    SUMMARY: ClassVar[str] = ""
    # The --sharding modes it runs under (resume.sharding.MODES); None: inferred from the hooks it
    # overrides (resume.sharding.supported_sharding).
    SHARDING: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, **params: Any):
        self.params: dict[str, Any] = dict(params)

    def describe(self) -> dict[str, Any]:
        """What ``trajectory.json`` records: the name and the full, validated parameters."""
        return {"name": self.name, "params": dict(self.params)}

    def setup(self, ctx: BranchContext) -> None:
        self.ctx = ctx

    def on_load(self, model: Any, ctx: BranchContext) -> Any:
        return model

    def fresh_optimizer(self) -> bool:
        return False

    def configure_optimizer(self, optimizer: Any) -> None:
        return None

    def reads_parent_rows(self) -> bool:
        """False when the branch trains on rows of its own (the parent's data order is then optional)."""
        return True

    def token_rows(self, parent_rows: Any) -> Any:
        return parent_rows

    def batch_row_indices(self, k: int, default: np.ndarray) -> np.ndarray:
        return default

    def lr(self, n: int, parent_lr: float) -> float:
        return parent_lr

    def after_step(self, model: Any, step: int) -> None:
        return None

    def metrics(self, step: int) -> dict[str, Any]:
        return {}

    def extra_weights(self, model: Any, step: int) -> dict[str, dict[str, Any]]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class Control(Intervention):
    """``none``: the control branch; must reproduce the parent exactly."""

    name = "none"
    SUMMARY = "none: the control branch: the parent's recipe and rows, nothing changed; must reproduce the parent exactly."
