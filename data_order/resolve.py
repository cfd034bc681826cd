"""RUN -> where its data order lives: a trajectory directory, or a registry run (checkpoints_cache).

A trajectory's ``trajectory.json`` carries ``"data_order": {"kind": "mmidx", "path": "data",
"batch_size": B, "seq_len": T, ...}`` with ``path`` relative to the trajectory directory.
Kind ``"amber"``: ``path`` is a folder of LLM360 ``train_KKK.jsonl`` chunks (or with them under
``train/``), ``batch_size`` 2240 and ``seq_len`` 2048, read in file order. Kinds ``"amber-chunks"`` and
``"k2-chunks"`` (the registry's LLM360 releases, ``data_order.chunked``) carry no path: their rows come
from the local token stores of converted chunks, in the card's order. Registry runs are resolved by
``checkpoints_cache.registry.resolve_run(spec).data_order`` (same keys plus ``exactness``), when that
module exists.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from checkpoints_cache.trajectory import TRAJECTORY_FILE, Trajectory

from .chunked import CHUNK_KINDS
from .mmidx import DataOrderError

KINDS = ("mmidx", "amber", "amber-chunks", "k2-chunks")


@dataclass(frozen=True)
class DataSpec:
    """What ``TokenRows`` needs; unpacks as ``(path, batch_size, seq_len)``: ``TokenRows(*spec)``."""

    path: str
    batch_size: int
    seq_len: int
    kind: str = "mmidx"
    exactness: str = "exact"
    source: str = ""
    steps_per_chunk: int | None = None  # kind "amber" only (default 762); lets tests use tiny chunks
    tokenizer: str | None = None  # name or path for --decode, when the run declares one
    order: dict[str, Any] | None = None  # kinds amber-chunks / k2-chunks: the whole [data_order] (data_order.chunked)
    run: str | None = field(default=None, compare=False)  # the registry name of a released run (named in fetch hints)

    def __iter__(self) -> Iterator[Any]:
        return iter((self.path, self.batch_size, self.seq_len))

    def token_rows(self):
        from .source import TokenRows

        return TokenRows(self.path, self.batch_size, self.seq_len, run=self.run)


def _from_data_order(order: dict[str, Any] | None, base: Path | None, source: str, fetch_hint: str = "") -> DataSpec:
    if not order:
        raise DataOrderError(f"{source} declares no data order; pass --data PREFIX --batch-size B --seq-len T instead")
    kind = str(order.get("kind", "mmidx"))
    if kind in CHUNK_KINDS:  # rows come from converted chunk stores, not from a path
        return DataSpec(path=str(order.get("repo_id")), batch_size=int(order["batch_size"]),
                        seq_len=int(order["seq_len"]), kind=kind, exactness=str(order.get("exactness") or ""),
                        source=source, tokenizer=str(order["tokenizer"]) if order.get("tokenizer") else None,
                        order=dict(order))
    if kind not in KINDS:
        note = f" ({order['note']})" if order.get("note") else ""
        raise DataOrderError(
            f"{source} has data order of kind {kind!r}{note}; `branchpoint batch` reads kinds 'mmidx' (.idx/.bin or "
            "shards), 'amber' (a folder of LLM360 train_KKK.jsonl chunks) and the LLM360 chunk releases "
            "'amber-chunks' / 'k2-chunks'"
        )
    if order.get("path") in (None, "") and fetch_hint:
        raise DataOrderError(f"the data of {source} is not in the local cache; {fetch_hint}")
    missing = [k for k in ("path", "batch_size", "seq_len") if order.get(k) in (None, "")]
    if missing:
        raise DataOrderError(f"the data_order of {source} lacks {', '.join(missing)}; it needs kind, path, batch_size, seq_len")
    path = Path(str(order["path"]))
    if base is not None and not path.is_absolute():
        path = base / path
    default_exactness = "exact" if kind == "mmidx" else "chunk-exact, order within chunk unknown"
    return DataSpec(
        path=str(path),
        batch_size=int(order["batch_size"]),
        seq_len=int(order["seq_len"]),
        kind=kind,
        exactness=str(order.get("exactness") or default_exactness),
        source=source,
        steps_per_chunk=int(order["steps_per_chunk"]) if order.get("steps_per_chunk") else None,
        tokenizer=str(order["tokenizer"]) if order.get("tokenizer") else None,
    )


def _registry():
    try:
        return importlib.import_module("checkpoints_cache.registry")
    except ModuleNotFoundError as e:
        if e.name == "checkpoints_cache.registry":
            return None
        raise


def resolve_data(run_spec: str) -> DataSpec:
    """The data order of ``run_spec``: a trajectory directory, or a name the registry knows."""
    p = Path(run_spec)
    if p.is_dir():
        if not Trajectory.is_trajectory(p):
            raise DataOrderError(
                f"{run_spec} is a directory but not a trajectory (no {TRAJECTORY_FILE}); for raw data use --data {run_spec} "
                "--batch-size B --seq-len T"
            )
        return _from_data_order(Trajectory.open(p).data_order, p, f"trajectory {run_spec}")
    registry = _registry()
    if registry is None:
        raise DataOrderError(
            f"{run_spec!r} is neither a trajectory directory nor a known run; pass a trajectory directory or "
            "--data PREFIX --batch-size B --seq-len T"
        )
    run = registry.resolve_run(run_spec)  # raises UserError for unknown names
    refusal = getattr(run, "branch_refusal", None)
    if refusal:
        raise DataOrderError(refusal)
    order = getattr(run, "data_order", None)
    if order is None and isinstance(run, dict):
        order = run.get("data_order")
    order = dict(order) if order else None
    repo_id = getattr(run, "repo_id", None)
    if order and not order.get("tokenizer") and repo_id:
        order["tokenizer"] = repo_id  # --decode: the model repo carries the tokenizer (if in the HF cache)
    name = getattr(run, "name", run_spec)
    hint = f"run `branchpoint fetch {name} --step N --data-steps K` first"
    spec = _from_data_order(order, None, f"run {run_spec}", fetch_hint=hint)
    return dataclasses.replace(spec, run=name)
