"""What makes a branch the branch it is, and the check that ``--resume`` continues the same one.

A branch is defined by its parent run, branch step N, end step N+K, the intervention with its
resolved parameters (defaults filled in, parent-derived values such as LAWA's ``every`` resolved),
the optimizer-state mode, the parent's recipe, the numeric precision and the numerics (NeoX or HF). ``--resume`` (and
``demo``'s reuse of a finished branch) is allowed only when every one of them matches what the
branch directory recorded in ``trajectory.json``; otherwise the run would append to, and relabel,
a branch trained under another definition.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import Trajectory


class BranchDefinitionMismatch(UserError):
    """The directory holds a branch with another definition."""

    def __init__(self, out: Path, differences: list[str], hint: str):
        self.out, self.differences = out, differences
        super().__init__(f"{out} holds another branch: {'; '.join(differences)}. {hint}")


def _normal(obj: Any) -> Any:
    """JSON round trip: tuples -> lists, numpy scalars -> numbers, keys -> strings (as stored)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _same_run(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and os.path.realpath(pa) == os.path.realpath(pb)


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        text = json.dumps(v, sort_keys=True)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(v)


def intervention_text(iv: dict[str, Any]) -> str:
    """``lawa:k=5,every=10,mode=replace`` from a recorded ``{"name", "params"}``."""
    params = {k: v for k, v in (iv.get("params") or {}).items() if not isinstance(v, (dict, list))}
    args = ",".join(f"{k}={_value(v)}" for k, v in sorted(params.items()))
    return f"{iv.get('name', 'none')}{':' + args if args else ''}"


@dataclass
class BranchDefinition:
    parent: str  # parent.run as recorded: an absolute trajectory path or a registry name
    step: int
    end: int
    intervention: dict[str, Any]  # {"name": ..., "params": {...}} after setup
    optimizer_state: str | None  # exact | reestimate | fresh
    recipe: dict[str, Any]
    precision: str | None = None  # fp32 | bf16 | fp16 (None: not recorded by older branches)
    numerics: str | None = None  # neox | hf (resume.numerics); branches from before it trained with hf

    @classmethod
    def of_meta(cls, meta: dict[str, Any]) -> "BranchDefinition | None":
        """The definition a branch's ``trajectory.json`` records (None if it is not a branch)."""
        parent = meta.get("parent") or {}
        if not parent.get("run") or meta.get("end_step") is None:
            return None
        return cls(
            parent=str(parent["run"]),
            step=int(parent["step"]),
            end=int(meta["end_step"]),
            intervention=meta.get("intervention") or {"name": "none", "params": {}},
            optimizer_state=(meta.get("optimizer_state") or {}).get("mode"),
            recipe=meta.get("recipe") or {},
            precision=(meta.get("engine") or {}).get("precision"),
            numerics=(meta.get("numerics") or {}).get("mode", "hf"),
        )

    @classmethod
    def of_trajectory(cls, path: str | os.PathLike) -> "BranchDefinition | None":
        return cls.of_meta(Trajectory.open(path).meta) if Trajectory.is_trajectory(path) else None

    def differences(self, recorded: "BranchDefinition") -> list[str]:
        """What differs, as '<what> is <recorded> there, <this> here' phrases (empty: same branch)."""
        out = []
        if not _same_run(self.parent, recorded.parent):
            out.append(f"its parent is {recorded.parent}, not {self.parent}")
        if (self.step, self.end) != (recorded.step, recorded.end):
            out.append(f"it runs from step {recorded.step} to {recorded.end}, not {self.step} to {self.end}")
        mine, theirs = _normal(self.intervention), _normal(recorded.intervention)
        if mine.get("name") != theirs.get("name"):
            out.append(f"its intervention is {intervention_text(theirs)}, not {intervention_text(mine)}")
        elif mine.get("params") != theirs.get("params"):
            p, q = mine.get("params") or {}, theirs.get("params") or {}
            keys = sorted(k for k in set(p) | set(q) if p.get(k) != q.get(k))
            what = ", ".join(f"{k}={_value(q.get(k))} (not {_value(p.get(k))})" for k in keys)
            out.append(f"its {mine.get('name')} parameters differ: {what}")
        if self.optimizer_state != recorded.optimizer_state:
            out.append(f"its optimizer state is {recorded.optimizer_state}, not {self.optimizer_state}")
        r, s = _normal(self.recipe), _normal(recorded.recipe)
        if r != s:
            keys = sorted(k for k in set(r) | set(s) if r.get(k) != s.get(k))
            what = ", ".join(f"{k}={_value(s.get(k))} (not {_value(r.get(k))})" for k in keys)
            out.append(f"its recipe differs: {what}")
        if self.precision and recorded.precision and self.precision != recorded.precision:
            out.append(f"it trains in {recorded.precision}, not {self.precision}")
        if self.numerics and recorded.numerics and self.numerics != recorded.numerics:
            out.append(f"it was trained with --numerics {recorded.numerics}, not {self.numerics}")
        return out


def check_same_branch(out: Path, wanted: BranchDefinition, hint: str | None = None) -> None:
    """Raise ``BranchDefinitionMismatch`` unless ``out`` records exactly ``wanted``."""
    recorded = BranchDefinition.of_trajectory(out)
    if recorded is None:
        raise UserError(f"--resume: {out} is not a branch trajectory directory (its trajectory.json names no parent "
                        "and end step); choose another --out")
    diffs = wanted.differences(recorded)
    if diffs:
        raise BranchDefinitionMismatch(
            out, diffs,
            hint or "Rerun with that branch's own arguments to continue it, or pass another --out (without --resume) "
                    "to start a new branch",
        )
