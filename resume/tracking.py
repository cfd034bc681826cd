"""Live tracking of a branch in the user's tracker, through accelerate's trackers (ecosystem.md §4.5).

``branch --log-with tensorboard|wandb|trackio|all`` (several comma-separated) creates the
``Accelerator`` with ``log_with=...`` and ``project_dir=TRAJ/tracking``, calls ``init_trackers``
with the trajectory definition (``trajectory.json``, flattened to ``a/b/c`` keys with scalar values,
as TensorBoard's hparams need) and logs every ``metrics.jsonl`` row with ``accelerator.log`` at its
global, parent-aligned step. ``all`` is each of the three that is installed. Without the flag
nothing changes.
"""

from __future__ import annotations

import importlib.util
import json
from typing import Any, Callable

from checkpoints_cache.errors import UserError

TRACKERS = ("tensorboard", "wandb", "trackio")
PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
TRACKING_DIR = "tracking"


def _installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGE[name]) is not None


def parse_log_with(spec: str | None) -> list[str]:
    """'tensorboard', 'wandb,trackio' or 'all' -> tracker names; one-line errors for the rest."""
    if spec is None:
        return []
    names = [s.strip().lower() for s in str(spec).split(",") if s.strip()]
    if not names:
        raise UserError("--log-with is empty; use tensorboard, wandb, trackio or all")
    bad = [n for n in names if n not in (*TRACKERS, "all")]
    if bad:
        raise UserError(f"--log-with {bad[0]!r}: use tensorboard, wandb, trackio or all (comma-separated for several)")
    if "all" in names:
        found = [t for t in TRACKERS if _installed(t)]
        if not found:
            raise UserError("--log-with all: none of tensorboard, wandb, trackio is installed; "
                            "pip install tensorboard (or wandb / trackio)")
        return found
    missing = [n for n in names if not _installed(n)]
    if missing:
        raise UserError(f"--log-with {missing[0]}: the {PACKAGE[missing[0]]} package is not installed; "
                        f"pip install {PACKAGE[missing[0]]} (or `pip install branchpoint[{missing[0]}]`)")
    return list(dict.fromkeys(names))


def flat_config(obj: Any, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested dicts -> {'a/b': scalar}; lists and None as JSON text (TensorBoard hparams take scalars)."""
    if isinstance(obj, dict) and obj:
        out: dict[str, bool | int | float | str] = {}
        for k, v in obj.items():
            out.update(flat_config(v, f"{prefix}{k}/"))
        return out
    key = prefix.rstrip("/")
    for kind in (bool, int, float, str):  # plain types: str subclasses such as torch's version do not serialise
        if isinstance(obj, kind):
            return {key: kind(obj)}
    return {key: json.dumps(obj, sort_keys=True, default=str)}


def row_logger(accelerator: Any) -> Callable[[dict[str, Any]], None]:
    """on_update callback: the numeric fields of a metrics.jsonl row, at the row's step."""

    def log(row: dict[str, Any]) -> None:
        values = {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        accelerator.log(values, step=int(row["step"]))

    return log
