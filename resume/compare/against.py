"""``compare --against RUN``: warn when RUN saw other data (another data order or seed) than the branch.

A branch trains on its parent's data order. Compared against a run with another data order or
another seed (a seed variant: pythia.md §1.1, same corpus in another order and another init), the
differences mix the intervention with the run-to-run noise: allowed (that is what seed runs are
for), but said on stderr so nobody reads it as branch-vs-parent.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Any

from .runs import RunRef

HEAD_BYTES = 1 << 16  # bytes hashed from the start of each data file: cheap, and enough to tell orders apart


def _seed(run: RunRef) -> int | None:
    recipe = run.traj.recipe if run.traj is not None else getattr(run.info, "recipe", None)
    seed = getattr(recipe, "seed", None)
    return None if seed is None else int(seed)


def _files_fingerprint(path: str) -> str | None:
    """Sizes of the data files plus a hash of their first bytes (None when the path is not on disk)."""
    p = Path(path)
    files = sorted(p.glob("*.bin")) + sorted(p.glob("*.idx")) if p.is_dir() else [Path(f"{path}.bin"), Path(f"{path}.idx")]
    files = [f for f in files if f.is_file()]
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}:{f.stat().st_size}:".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(HEAD_BYTES))
    return h.hexdigest()


def _order_key(order: dict[str, Any] | None) -> tuple | None:
    if not order:
        return None
    shape = (order.get("batch_size"), order.get("seq_len"))
    if order.get("repo_id"):  # a release's order; chunk releases (LLM360) also name which order of the chunks
        return ("hub", order["repo_id"], order.get("revision", "main"), order.get("order"), *shape)
    if order.get("path"):
        return ("local", os.path.realpath(order["path"]), *shape)
    return None


def same_data_order(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool | None:
    """True / False when it can be told, None when either side declares no data order."""
    ka, kb = _order_key(a), _order_key(b)
    if ka is None or kb is None:
        return None
    if ka == kb:
        return True
    if ka[0] == kb[0] == "local" and ka[2:] == kb[2:]:  # a copy of the same data elsewhere on disk
        fa, fb = _files_fingerprint(a["path"]), _files_fingerprint(b["path"])
        return fa is not None and fa == fb
    return False


def warn_other_data_order(branches: list[RunRef], against: RunRef) -> list[str]:
    """Print (and return) one warning line per branch whose data order or seed differs from ``against``."""
    lines = []
    for b in branches:
        what = []
        same = same_data_order(b.data_order, against.data_order)
        if same is False:
            what.append("another data order")
        sb, sa = _seed(b), _seed(against)
        if sb is not None and sa is not None and sb != sa:
            what.append(f"another seed ({sa}, the branch's parent has {sb})")
        if what:
            line = (f"warning: --against {against.spec} has {' and '.join(what)} than {b.spec} was trained on; "
                    "the comparison mixes run-to-run differences into the branch's, it is not branch vs parent")
            print(line, file=sys.stderr)
            lines.append(line)
    return lines
