"""The fixed held-out batches every model of a comparison is evaluated on.

Default rule: the K global batches right after the last step any compared run trained to
(``E = max(end steps, compared steps)``, batches ``E .. E+K-1``). Checkpoint ``stepS`` has consumed
batches ``0 .. S-1`` (DESIGN.md, step semantics), so no compared checkpoint of the parent or of
a branch that trains on the parent's data order has seen them. The exact batches, their rows and
a content fingerprint are recorded in ``eval_set.json``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from checkpoints_cache.errors import UserError


@dataclass
class EvalSet:
    data_path: str
    batch_size: int
    seq_len: int
    batch_indices: list[int]
    rows: np.ndarray  # [K*B, T+1] token rows, in batch order
    rule: str  # how the batches were chosen, in words
    trained_through: int  # the last step a compared checkpoint reached (batches < this were trained on)
    row_ids: np.ndarray | None = None  # global row ids of ``rows`` where the data order names rows (chunk releases)

    @property
    def fingerprint(self) -> str:
        """sha256 of the token rows themselves (plus shape and dtype): the eval set's cache key."""
        h = hashlib.sha256()
        h.update(f"{self.rows.shape}|{self.rows.dtype.str}|".encode())
        h.update(np.ascontiguousarray(self.rows).tobytes())
        return h.hexdigest()

    @property
    def tokens(self) -> int:
        """Predicted positions: every row gives T next-token predictions."""
        return int(self.rows.shape[0] * (self.rows.shape[1] - 1))

    def overlap_with_training(self) -> list[int]:
        return [k for k in self.batch_indices if k < self.trained_through]

    def to_json(self) -> dict[str, Any]:
        B = self.batch_size
        return {
            "data": self.data_path,
            "batch_size": B,
            "seq_len": self.seq_len,
            "batch_indices": list(self.batch_indices),
            "rows": [[k * B, (k + 1) * B] for k in self.batch_indices],
            "tokens": self.tokens,
            "rule": self.rule,
            "trained_through_step": self.trained_through,
            "overlaps_training": self.overlap_with_training(),
            "fingerprint_sha256": self.fingerprint,
            **({"row_ids": [int(r) for r in self.row_ids]} if self.row_ids is not None else {}),
        }


def _open_rows(path: str, batch_size: int, seq_len: int):
    from data_order.source import TokenRows

    return TokenRows(path, batch_size, seq_len)


def _chunk_rows(data_order: dict[str, Any], owner: str, first: int, stop: int, progress: bool):
    """A chunk release (LLM360): the chunks holding batches [first, stop), fetched and converted when missing."""
    from data_order.chunked import open_chunk_rows

    return open_chunk_rows(data_order, {"compare": (first, stop)}, fetch=True, progress=progress, source=owner)


def build_eval_set(data_order: dict[str, Any] | None, owner: str, trained_through: int, eval_batches: int = 4,
                   eval_batch_indices: list[int] | None = None, progress: bool = True) -> EvalSet:
    """Read the held-out batches from a run's data order (``data_order`` dict of trajectory.json)."""
    from data_order.chunked import is_chunked

    if is_chunked(data_order):
        return _chunked_eval_set(data_order, owner, trained_through, eval_batches, eval_batch_indices, progress)
    if not data_order or not data_order.get("path"):
        raise UserError(
            f"{owner} has no local data order to draw held-out batches from; "
            "fetch it with `branchpoint fetch RUN --step N --data-steps K` or compare against a trajectory that carries data/"
        )
    kind = data_order.get("kind", "mmidx")
    if kind != "mmidx":
        raise UserError(f"the data order of {owner} is {kind!r}; held-out batches need an exact 'mmidx' data order")
    path = str(data_order["path"])
    B, T = int(data_order["batch_size"]), int(data_order["seq_len"])
    source = _open_rows(path, B, T)
    available = int(source.num_batches)
    if eval_batch_indices is not None:
        indices = [int(k) for k in eval_batch_indices]
        if not indices:
            raise UserError("eval_batch_indices is empty; pass at least one global batch index")
        bad = [k for k in indices if k < 0 or k >= available]
        if bad:
            raise UserError(f"eval batch {bad[0]} is outside the data order of {owner} (batches 0..{available - 1})")
        if len(set(indices)) != len(indices):
            raise UserError(f"eval batch indices {indices} repeat a batch; list each batch once")
        rule = "batches chosen by the user"
    else:
        if eval_batches < 1:
            raise UserError(f"--eval-batches {eval_batches} must be at least 1")
        first = trained_through
        indices = list(range(first, first + eval_batches))
        if indices[-1] >= available:
            raise UserError(
                f"the data order of {owner} has {available} batches, but {eval_batches} held-out batches after step "
                f"{first} need batches {first}..{indices[-1]}; pass fewer --eval-batches "
                f"(at most {max(available - first, 0)}) or choose --eval-batch-indices"
            )
        rule = f"the {eval_batches} global batches right after step {first}, the last step any compared run trained to"
    try:
        rows = np.concatenate([np.asarray(source.batch(k)) for k in indices], axis=0)
    except UserError as e:  # e.g. a partial data store that holds only the branch's training batches
        raise UserError(f"cannot read eval batches {indices[0]}..{indices[-1]} of {owner}: {e}") from None
    return EvalSet(path, B, T, indices, rows, rule, trained_through)


def _chunked_eval_set(data_order: dict[str, Any], owner: str, trained_through: int, eval_batches: int,
                      eval_batch_indices: list[int] | None, progress: bool) -> EvalSet:
    """Held-out batches of a chunk release. Any row of a chunk after the last compared checkpoint's is held
    out whatever the order within chunks, so the rule is exact even where the order is approximate."""
    from data_order.chunked import ChunkLayout

    layout = ChunkLayout.from_order(data_order, owner)
    if eval_batch_indices is not None:
        indices = [int(k) for k in eval_batch_indices]
        if not indices or len(set(indices)) != len(indices):
            raise UserError(f"eval batch indices {indices} must list at least one global batch, each once")
        rule = "batches chosen by the user"
    else:
        if eval_batches < 1:
            raise UserError(f"--eval-batches {eval_batches} must be at least 1")
        indices = list(range(trained_through, trained_through + eval_batches))
        rule = (f"the {eval_batches} global batches right after step {trained_through}, the last step any compared run "
                f"trained to ({layout.order} order of the chunk release)")
    for k in indices:
        layout.check_batches(k, k + 1, f"eval batch {k} of {owner}")
    source = _chunk_rows(data_order, owner, min(indices), max(indices) + 1, progress)
    rows = np.concatenate([np.asarray(source.batch(k)) for k in indices], axis=0)
    B = layout.batch_size
    ids = np.concatenate([source.row_ids(np.arange(k * B, (k + 1) * B)) for k in indices])
    files = sorted({layout.filename(layout.chunk_at(q)) for k in indices for q in layout.positions_of_batches(k, k + 1)})
    path = f"{layout.repo_id} {', '.join(files)} (token store)"
    return EvalSet(path, B, layout.seq_len, indices, rows, rule, trained_through, row_ids=ids)
