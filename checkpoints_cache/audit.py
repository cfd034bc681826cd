"""Audit a released trajectory from Hub metadata only (no weight downloads).

For every step of the run's grid: does its branch exist, does it hold config + weights, and is
any weight file byte-identical (same LFS sha256) to the one in another branch -- the pythia#205 /
#206 kind of upload error (pythia.md §1.4 recommends exactly this check). Calls: one
``list_repo_refs`` and one ``list_repo_tree`` per branch.

The findings are also saved under ``$BRANCHPOINT_HOME/audit/<run>.json`` so that ``fetch`` (and
``branch``) warn when a chosen step is flagged.
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
from huggingface_hub.errors import RepositoryNotFoundError

from . import hub
from .errors import UserError
from .fetch import AUX_FILES, CONFIG, audit_flags_path
from .registry import RunInfo
from .trajectory import atomic_write_json

COLUMNS = ["step", "revision", "commit", "status", "weights", "same_as", "detail", "known_defects"]


def _is_weight(name: str) -> bool:
    return name.endswith((".safetensors", ".bin")) and name not in AUX_FILES


def audit(run: RunInfo, *, endpoint: str | None = None, max_workers: int = 8, save: bool = True) -> pd.DataFrame:
    """One row per grid step (plus ``main``): status is ``ok``, ``missing revision``, ``missing files`` or
    ``duplicate`` (a weight file identical to another branch's)."""
    if run.is_local or run.repo_id is None:
        raise UserError(f"{run.name} is a local trajectory; audit checks released runs on the Hub")
    hf = hub.api(endpoint)
    try:
        refs = hub.with_retries(lambda: hf.list_repo_refs(run.repo_id), f"refs of {run.repo_id}")
    except RepositoryNotFoundError:
        raise UserError(f"repository {run.repo_id} was not found on {hub.endpoint_of(endpoint)}") from None
    branches = {b.name: b.target_commit for b in refs.branches}

    grid = list(run.steps)
    if not grid:  # runs whose grid is known only from the Hub (Crystal)
        grid = sorted(s for s in (run.step_of_revision(b) for b in branches) if s is not None)
    wanted = [(s, run.revision(s)) for s in grid] + ([(None, "main")] if "main" in branches else [])

    def listing(rev: str) -> dict[str, str | None]:
        files = hub.list_files(run.repo_id, branches[rev], endpoint=endpoint)
        return {n: (f.lfs.sha256 if f.lfs else f.blob_id) for n, f in files.items()}

    present = [rev for _, rev in wanted if rev in branches]
    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        listings = dict(zip(present, pool.map(listing, present)))

    # weight sha256 -> revisions holding it
    holders: dict[str, list[str]] = defaultdict(list)
    for rev, files in listings.items():
        for n, sha in files.items():
            if _is_weight(n) and sha:
                holders[sha].append(rev)

    rows = []
    for step, rev in wanted:
        known = "; ".join(f"{d.issue}" for d in run.defects_at(step)) if step is not None else ""
        if rev not in branches:
            rows.append(dict(step=step, revision=rev, commit=None, status="missing revision", weights="",
                             same_as="", detail="no such branch on the Hub", known_defects=known))
            continue
        files = listings[rev]
        weights = sorted(n for n in files if _is_weight(n))
        problems = []
        if CONFIG not in files:
            problems.append("no config.json")
        if not weights:
            problems.append("no weight files")
        others = sorted({o for n in weights for o in holders[files[n]] if o != rev}, key=_rev_key)
        dup_files = [n for n in weights if any(o != rev for o in holders[files[n]])]
        if problems:
            status, detail = "missing files", ", ".join(problems)
        elif others and not (rev == "main" or set(others) <= {"main"} and step == max(grid)):
            status = "duplicate"
            detail = f"{', '.join(dup_files)} byte-identical to {', '.join(others[:6])}" + (
                f" and {len(others) - 6} more" if len(others) > 6 else "")
        else:
            status, detail = "ok", ""
        rows.append(dict(step=step, revision=rev, commit=branches[rev][:10], status=status, weights=", ".join(weights),
                         same_as=", ".join(others), detail=detail, known_defects=known))
    df = pd.DataFrame(rows, columns=COLUMNS)
    if save:
        flags: dict[str, list[str]] = {}
        for r in rows:
            if r["step"] is not None and r["status"] != "ok":
                flags.setdefault(str(r["step"]), []).append(f"audit: {r['status']}: {r['detail']}")
        atomic_write_json(audit_flags_path(run.name), {"repo_id": run.repo_id, "endpoint": hub.endpoint_of(endpoint),
                                                       "flags": flags})
    return df


def _rev_key(rev: str) -> tuple[int, str]:
    return (1, rev) if rev == "main" else (0, f"{len(rev):04d}{rev}")
