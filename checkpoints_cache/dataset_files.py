"""Whole files of a dataset repo (LLM360's chunk JSONLs), fetched into the standard HF cache, verified.

A JSONL chunk has no row index, so it cannot be read by byte ranges the way Pythia's MMIDIDX shards
are (``data_store``): it is downloaded whole with ``download_verified`` (``hf_hub_download`` plus the
sha256 of the LFS oid), pinned to the commit its revision pointed to. ``data_order.chunked`` decides
which files a branch needs and converts them; this module only moves bytes and answers what a file
is (size, hash) without moving it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.hf_api import RepoFile

from . import hub
from .errors import UserError


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a pinned commit: what the Hub says about it (size, LFS sha256 or git blob id)."""

    repo_id: str
    repo_type: str
    revision: str
    commit: str
    filename: str
    size: int
    hash_kind: str  # "sha256" (LFS) | "git-sha1"
    hash: str
    entry: RepoFile | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """A content key: equal keys are equal bytes, whatever the commit."""
        return f"{self.hash_kind}-{self.hash}"


def describe_file(repo_id: str, filename: str, *, revision: str = "main", repo_type: str = "dataset",
                  endpoint: str | None = None, commit: str | None = None) -> RemoteFile:
    """Size and hash of ``filename`` at ``revision`` (one revision lookup, one paths-info call; nothing is downloaded)."""
    commit = commit or hub.resolve_commit(repo_id, revision, repo_type=repo_type, endpoint=endpoint)
    infos = hub.with_retries(
        lambda: hub.api(endpoint).get_paths_info(repo_id, [filename], revision=commit, repo_type=repo_type),
        f"paths-info {repo_id}/{filename}",
    )
    entry = next((i for i in infos if isinstance(i, RepoFile) and i.path == filename), None)
    if entry is None:
        raise UserError(f"{filename} is not a file of {repo_id}@{revision} ({commit[:10]}); check the run card's "
                        "chunk_file pattern or the revision")
    kind, digest = ("sha256", entry.lfs.sha256) if entry.lfs is not None else ("git-sha1", entry.blob_id)
    return RemoteFile(repo_id, repo_type, revision, commit, filename, int(entry.size), kind, digest, entry)


def fetch_file(ref: RemoteFile, *, endpoint: str | None = None, cache_dir: str | os.PathLike | None = None,
               progress: bool = True) -> Path:
    """Download ``ref`` whole into the HF cache (resumable, locked, hash-checked) and return its snapshot path.
    A file already in the cache at that commit is checked, not downloaded again."""
    from .fetch import _write_small, download_verified  # late: fetch imports the registry

    if ref.entry is None:
        raise ValueError("fetch_file needs a RemoteFile from describe_file (it carries the Hub's listing entry)")
    check_free(hub.hub_cache(cache_dir), ref.size, f"{ref.repo_id}/{ref.filename}",
               already=cached_path(ref, cache_dir) is not None)
    path = download_verified(ref.repo_id, ref.filename, ref.commit, ref.entry, repo_type=ref.repo_type,
                             endpoint=endpoint, cache_dir=cache_dir, progress=progress)
    # Record branch -> commit as huggingface_hub does, so an offline run finds the file by its revision.
    _write_small(hub.repo_folder(hub.hub_cache(cache_dir), ref.repo_id, ref.repo_type) / "refs" / ref.revision,
                 ref.commit)
    return Path(path)


def cached_path(ref: RemoteFile, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The file's snapshot path if the HF cache holds it at ``ref.commit`` (not verified here)."""
    p = hub.repo_folder(hub.hub_cache(cache_dir), ref.repo_id, ref.repo_type) / "snapshots" / ref.commit / ref.filename
    return p if p.exists() else None


def check_free(where: Path, need: int, what: str, already: bool = False) -> None:
    """Refuse (one line) before a download or conversion that would not fit on the disk at ``where``."""
    if already or need <= 0:
        return
    p = Path(where).absolute()
    while not p.exists():
        p = p.parent
    free = shutil.disk_usage(p).free
    if need > free:
        from .fetch import human

        raise UserError(f"not enough disk for {what}: it needs {human(need)} at {where} but only {human(free)} is free; "
                        "free some space or point HF_HOME / HF_HUB_CACHE / BRANCHPOINT_HOME at a bigger disk")
