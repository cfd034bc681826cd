"""Thin helpers around huggingface_hub: where things live, retries, commit pinning, file listings.

huggingface_hub does the downloads, cache layout, locks and ``.incomplete`` files (ecosystem.md
§3.2-§3.3); this module only adds what it lacks for our use: retries with backoff around a whole
file (its own HTTP GET retries only 408/429 and dropped streams), errors that say what to do, and
the places branchpoint keeps its own small state (``$HF_HOME/branchpoint``).

huggingface_hub reads ``HF_ENDPOINT``, ``HF_HOME``, ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` when it
is imported (ecosystem.md §3.4): every function here takes explicit ``endpoint`` / ``cache_dir``
overrides and otherwise uses those import-time values.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, TypeVar

from huggingface_hub import HfApi, constants
from huggingface_hub.errors import (
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import httpx

from .errors import UserError

T = TypeVar("T")

# Whole-file retries: base delay doubles each try. Tests shorten it through the environment.
MAX_TRIES = 4


def retry_base_s() -> float:
    return float(os.environ.get("BRANCHPOINT_RETRY_BASE_S", "1.0"))


class MissingRevisionError(UserError):
    """The revision the registry expects does not exist on the Hub."""


class ChecksumError(UserError):
    """A downloaded file's sha256 does not match the Hub's LFS oid, twice."""


def endpoint_of(endpoint: str | None) -> str:
    return (endpoint or constants.ENDPOINT).rstrip("/")


def hub_cache(cache_dir: str | os.PathLike | None = None) -> Path:
    return Path(cache_dir or constants.HF_HUB_CACHE)


def branchpoint_home() -> Path:
    """Where branchpoint keeps its own state: ``$BRANCHPOINT_HOME`` or ``$HF_HOME/branchpoint``."""
    return Path(os.environ.get("BRANCHPOINT_HOME") or Path(constants.HF_HOME) / "branchpoint")


def is_offline() -> bool:
    return bool(constants.is_offline_mode())


def api(endpoint: str | None = None) -> HfApi:
    if is_offline():
        raise UserError("this needs the Hub but HF_HUB_OFFLINE=1 is set; unset it (or run where the Hub is reachable)")
    return HfApi(endpoint=endpoint)


def is_transient(exc: BaseException) -> bool:
    """5xx / 408 / 429, dropped or refused connections, timeouts, and truncated bodies are worth a retry."""
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        return status is not None and (status >= 500 or status in (408, 429))
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    # huggingface_hub raises a plain OSError when a body arrives shorter than announced.
    return isinstance(exc, OSError) and "Consistency check failed" in str(exc)


def with_retries(fn: Callable[[], T], what: str, tries: int = MAX_TRIES, on_retry: Callable[[], None] | None = None) -> T:
    """Call ``fn``; on a transient error wait (base * 2**i seconds) and try again, up to ``tries`` times."""
    for attempt in range(1, tries + 1):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - filtered by is_transient
            if not is_transient(e) or attempt == tries:
                raise
            if on_retry is not None:
                on_retry()
            delay = retry_base_s() * 2 ** (attempt - 1)
            reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
            print(f"warning: {what}: {reason}; retrying in {delay:.1f}s ({attempt}/{tries - 1})", file=sys.stderr)
            time.sleep(delay)
    raise AssertionError("unreachable")


def resolve_commit(repo_id: str, revision: str, *, repo_type: str = "model", endpoint: str | None = None) -> str:
    """Pin a branch name to its commit sha (one ``/api/{type}s/{repo}/revision/{rev}`` call)."""
    hf = api(endpoint)
    try:
        info = with_retries(lambda: hf.repo_info(repo_id, revision=revision, repo_type=repo_type), f"{repo_id}@{revision}")
    except RevisionNotFoundError:
        raise MissingRevisionError(
            f"revision {revision!r} of {repo_id} does not exist on the Hub ({endpoint_of(endpoint)}); "
            f"`branchpoint steps {repo_id} --remote` lists the revisions that do"
        ) from None
    except RepositoryNotFoundError:
        raise UserError(
            f"repository {repo_id!r} ({repo_type}) was not found on {endpoint_of(endpoint)}; check the name or HF_ENDPOINT"
        ) from None
    if not info.sha:
        raise UserError(f"the Hub did not return a commit for {repo_id}@{revision}")
    return info.sha


def list_files(repo_id: str, commit: str, *, repo_type: str = "model", endpoint: str | None = None) -> dict[str, RepoFile]:
    """Every file of ``repo_id`` at ``commit`` with size, git blob id and LFS sha256 (one tree listing)."""
    hf = api(endpoint)

    def _list() -> dict[str, RepoFile]:
        entries = hf.list_repo_tree(repo_id, revision=commit, repo_type=repo_type, recursive=True)
        return {e.path: e for e in entries if isinstance(e, RepoFile)}

    return with_retries(_list, f"listing {repo_id}@{commit[:10]}")


def repo_folder(cache: Path, repo_id: str, repo_type: str = "model") -> Path:
    """The HF cache folder of a repo: ``models--Org--Name`` (ecosystem.md §3.2)."""
    return cache / f"{repo_type}s--{repo_id.replace('/', '--')}"


def cached_commit(cache: Path, repo_id: str, revision: str, repo_type: str = "model") -> str | None:
    ref = repo_folder(cache, repo_id, repo_type) / "refs" / revision
    return ref.read_text().strip() if ref.is_file() else None
