"""Checks of a comparison's arguments that can run before any work (and before a branch trains).

``branch`` compares with the parent at the end: ``check_eval_batches`` lets it refuse a bad
``--eval-batches`` before the first update instead of after the last one. ``check_device`` turns
``--device`` into a torch device or a one-line error (unknown type, CUDA/MPS not available).
"""

from __future__ import annotations

from typing import Any

from checkpoints_cache.errors import UserError

from .evalset import build_eval_set


def check_eval_batches(data_order: dict[str, Any] | None, owner: str, trained_through: int, eval_batches: int,
                       eval_batch_indices: list[int] | None = None, hint: str = "") -> None:
    """Raise the error ``compare`` would raise for these held-out batches. Local rows are read once
    (cheap); a chunk release (LLM360) is only checked against its layout, and the rows of a released
    run (kind mmidx with a ``repo_id``, which ``compare`` fetches) against the extent its plan found
    (``num_batches``): nothing is fetched."""
    from data_order.chunked import ChunkLayout, is_chunked

    try:
        if (data_order or {}).get("kind") == "mmidx" and (data_order or {}).get("repo_id"):
            if eval_batch_indices is None and eval_batches < 1:
                raise UserError(f"--eval-batches {eval_batches} must be at least 1")
            indices = eval_batch_indices or range(trained_through, trained_through + eval_batches)
            n = data_order.get("num_batches")
            bad = [k for k in indices if n is not None and not 0 <= k < int(n)]
            if bad:
                raise UserError(f"eval batch {bad[0]} is outside the data order of {owner} (batches 0..{int(n) - 1})")
            return
        if is_chunked(data_order):
            if eval_batch_indices is None and eval_batches < 1:
                raise UserError(f"--eval-batches {eval_batches} must be at least 1")
            indices = eval_batch_indices or range(trained_through, trained_through + eval_batches)
            layout = ChunkLayout.from_order(data_order, owner)
            for k in indices:
                layout.check_batches(k, k + 1, f"eval batch {k} of {owner}")
            return
        build_eval_set(data_order, owner, trained_through, eval_batches, eval_batch_indices, progress=False)
    except UserError as e:
        raise UserError(f"the comparison at the end would fail: {e}{'; ' + hint if hint else ''}") from None


def check_device(spec: str | None) -> Any:
    """The torch device ``spec`` names, checked to exist here (None: cuda if available, else cpu)."""
    import torch

    if spec is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError, TypeError):
        raise UserError(f"--device {spec!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {spec}: CUDA is not available on this machine (torch {torch.__version__}); "
                            "use --device cpu")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UserError(f"--device {spec}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise UserError(f"--device {spec}: MPS is not available on this machine; use --device cpu")
    elif device.type != "cpu":
        raise UserError(f"--device {spec}: branchpoint evaluates on cpu, cuda or mps, not {device.type}")
    return device
