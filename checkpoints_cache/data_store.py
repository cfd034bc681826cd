"""The partial data store: only the byte ranges of a dataset repo's files that a branch needs.

Pythia's preshuffled data is 21 shards of ~30 GB and a 2.9 GB index (pythia.md §4.1, §4.3); a
branch of K steps needs K * 1024 rows of 2049 tokens and 12 bytes of index per row. HF's cache
stores whole files only, so ranges live in a folder of our own, one per pinned commit::

    $BRANCHPOINT_HOME/data/            (default $HF_HOME/branchpoint/data)
      datasets--EleutherAI--pile-deduped-pythia-preshuffled/
        refs/main                      # commit sha the branch name pointed to when fetched
        <commit>/
          manifest.json                # repo, revision, commit, endpoint, per-file size + LFS sha256
          document.idx                 # sparse file: header + the entries of the fetched rows (or, from
                                       #   older fetches, a symlink to the whole verified blob in the HF cache)
          document-000XX-of-00020.bin  # sparse files of full logical size, only fetched ranges written
          fetched_ranges.json          # {"<file>": [[start, end], ...]} merged, end exclusive

``data_order`` reads this folder (its ``MMapIndexedDataset`` refuses bytes outside the fetched
ranges). Ranges are HTTP Range GETs through huggingface_hub's session, retried with backoff and
resumed from the last byte written when a connection drops. Every metadata file is written
atomically, and a range is recorded only after its bytes are on disk and have passed the caller's
check (``validate``) and, for a file now fetched whole, its LFS sha256.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.utils import build_hf_headers, get_session

from . import disk, hub
from .errors import UserError
from .locks import output_lock
from .trajectory import atomic_write_json, clean_orphans

MANIFEST = "manifest.json"
RANGES = "fetched_ranges.json"

Range = tuple[int, int]


def data_root(root: str | os.PathLike | None = None) -> Path:
    return Path(root) if root else hub.branchpoint_home() / "data"


def store_folder(repo_id: str, repo_type: str = "dataset", root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def existing_partial_dir(
    repo_id: str, revision: str = "main", repo_type: str = "dataset", root: str | os.PathLike | None = None
) -> Path | None:
    """The partial folder ``revision`` was last fetched into, if any (no network)."""
    base = store_folder(repo_id, repo_type, root)
    ref = base / "refs" / revision
    if not ref.is_file():
        return None
    folder = base / ref.read_text().strip()
    return folder if (folder / MANIFEST).is_file() else None


# -- range arithmetic ------------------------------------------------------------------------------
def merge_ranges(ranges: Iterable[Iterable[int]]) -> list[list[int]]:
    """Sorted, non-overlapping, adjacent ranges joined; empty ranges dropped."""
    out: list[list[int]] = []
    for s, e in sorted((int(a), int(b)) for a, b in ranges):
        if e <= s:
            continue
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return out


def subtract_ranges(needed: Iterable[Iterable[int]], have: Iterable[Iterable[int]]) -> list[list[int]]:
    """The parts of ``needed`` not covered by ``have``."""
    have_m = merge_ranges(have)
    out: list[list[int]] = []
    for s, e in merge_ranges(needed):
        cur = s
        for hs, he in have_m:
            if he <= cur or hs >= e:
                continue
            if hs > cur:
                out.append([cur, hs])
            cur = max(cur, he)
        if cur < e:
            out.append([cur, e])
    return out


def read_fetched(folder: Path) -> dict[str, list[list[int]]]:
    p = Path(folder) / RANGES
    return json.loads(p.read_text()) if p.is_file() else {}


# -- fetching ----------------------------------------------------------------------------------------
@dataclass
class RangeFetch:
    folder: Path
    commit: str
    bytes_requested: int = 0  # payload bytes of the ranges this call had to fetch
    bytes_received: int = 0  # payload bytes written to the shards this call
    requests: int = 0  # Range GETs sent (more than the ranges when a dropped connection was resumed)
    whole_files: dict[str, Path] = field(default_factory=dict)


def plan_missing(folder: Path | None, wanted: dict[str, list[Range]]) -> dict[str, list[list[int]]]:
    have = read_fetched(folder) if folder else {}
    out = {}
    for name, rs in wanted.items():
        miss = subtract_ranges(rs, have.get(name, []))
        if miss:
            out[name] = miss
    return out


def _sparse_file(path: Path, size: int) -> None:
    """Create ``path`` as a sparse file of ``size`` bytes (atomically), or check the existing size."""
    if path.exists():
        if path.stat().st_size != size:
            raise UserError(f"{path} has {path.stat().st_size} bytes but the Hub says {size}; delete the folder {path.parent} and fetch again")
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.truncate(size)
    os.replace(tmp, path)


def _link_into(folder: Path, name: str, target: Path) -> Path:
    dest = folder / name
    tmp = folder / f".{name}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.realpath(target), tmp)
    except OSError:  # no symlinks (e.g. some Windows setups): copy instead
        import shutil

        shutil.copyfile(target, tmp)
    os.replace(tmp, dest)
    return dest


class _Location:
    """The download URL of one file (after the Hub's redirect to its storage), refreshed on 401/403."""

    def __init__(self, repo_id: str, filename: str, repo_type: str, commit: str, endpoint: str | None, size: int):
        self.url = hf_hub_url(repo_id, filename, repo_type=repo_type, revision=commit, endpoint=endpoint)
        self.endpoint = endpoint
        self.size = size
        self.name = f"{repo_id}/{filename}"
        self.location = ""
        self.refresh()

    def refresh(self) -> None:
        meta = hub.with_retries(lambda: get_hf_file_metadata(self.url, endpoint=self.endpoint), f"HEAD {self.name}")
        if meta.size is not None and meta.size != self.size:
            raise UserError(f"{self.name}: the Hub reports {meta.size} bytes in one place and {self.size} in another; try again later")
        self.location = meta.location

    def headers(self) -> dict[str, str]:
        # Auth only for the Hub host itself, never for a signed storage URL (as huggingface_hub does).
        same_host = self.location.split("/")[2] == self.url.split("/")[2]
        return build_hf_headers() if same_host else {}


def _get_range(loc: _Location, fd: int, start: int, end: int, stats: RangeFetch, bar) -> None:
    """Write bytes [start, end) of the remote file at the same offsets of ``fd``; resume after drops."""
    pos = start
    failures = 0
    refreshed = False
    while pos < end:
        headers = {**loc.headers(), "Range": f"bytes={pos}-{end - 1}", "Accept-Encoding": "identity"}
        try:
            stats.requests += 1
            with get_session().stream("GET", loc.location, headers=headers, follow_redirects=True) as r:
                if r.status_code in (401, 403) and not refreshed:
                    refreshed = True  # a signed storage URL expired: ask the Hub again, once
                    loc.refresh()
                    continue
                if r.status_code >= 500 or r.status_code in (408, 429):
                    raise ConnectionError(f"HTTP {r.status_code} for {loc.name}")
                if r.status_code != 206:
                    raise UserError(
                        f"{loc.name}: asked for bytes {pos}-{end - 1} and got HTTP {r.status_code}"
                        + (" (the server ignored the Range header)" if r.status_code == 200 else "")
                    )
                expect = f"bytes {pos}-{end - 1}/"
                if not r.headers.get("Content-Range", "").startswith(expect):
                    raise UserError(f"{loc.name}: asked for {expect}... and got Content-Range {r.headers.get('Content-Range')!r}")
                for chunk in r.iter_bytes():  # as received, so a drop loses nothing already sent
                    if not chunk:
                        continue
                    chunk = chunk[: end - pos]
                    os.pwrite(fd, chunk, pos)
                    pos += len(chunk)
                    stats.bytes_received += len(chunk)
                    failures = 0  # progress resets the retry budget, as huggingface_hub's http_get does
                    if bar is not None:
                        bar.update(len(chunk))
                    if pos >= end:
                        break
            if pos < end:
                raise ConnectionError(f"{loc.name}: connection closed at byte {pos} of range ending {end}")
        except Exception as e:  # noqa: BLE001 - filtered by is_transient
            if not hub.is_transient(e):
                raise
            failures += 1
            if failures >= hub.MAX_TRIES:
                raise UserError(f"{loc.name}: giving up on bytes {pos}-{end - 1} after {failures} failed tries ({e})") from None
            delay = hub.retry_base_s() * 2 ** (failures - 1)
            print(f"warning: {loc.name}: {e}; resuming at byte {pos} in {delay:.1f}s", file=sys.stderr)
            time.sleep(delay)


# validate(file, start, end, path of the local file) -> None (or True) if the bytes [start, end) look right,
# else why not (a reason, or False, or it raises ValueError / UserError)
RangeValidator = Callable[[str, int, int, Path], "str | bool | None"]


class CorruptRangeError(UserError):
    """Fetched bytes failed their check twice; nothing of them was recorded."""


def _problem(validate: RangeValidator, name: str, s: int, e: int, path: Path) -> str | None:
    """What ``validate`` finds wrong (it returns a reason, or False, or raises ValueError / UserError), else None."""
    try:
        got = validate(name, s, e, path)
    except (ValueError, UserError) as exc:
        return str(exc) or type(exc).__name__
    if got is None or got is True:
        return None
    return "the range check failed" if got is False else str(got)


def _verified_or_refetched(loc: "_Location", fd: int, path: Path, name: str, s: int, e: int,
                           validate: RangeValidator | None, stats: RangeFetch, bar) -> None:
    if validate is None:
        return
    problem = _problem(validate, name, s, e, path)
    if problem is None:
        return
    print(f"warning: {loc.name} bytes {s}-{e - 1}: {problem}; fetching them again", file=sys.stderr)
    _get_range(loc, fd, s, e, stats, bar)
    os.fsync(fd)
    problem = _problem(validate, name, s, e, path)
    if problem is not None:
        raise CorruptRangeError(
            f"{loc.name} bytes {s}-{e - 1} arrived damaged twice ({problem}); nothing of them was stored -- "
            "try again later, or report it to the repo owners"
        )


def _sha256_of(path: Path) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_whole_file(loc: "_Location", fd: int, folder: Path, name: str, sha256: str | None,
                      fetched: dict[str, list[list[int]]], validate: RangeValidator | None, stats: RangeFetch,
                      bar) -> None:
    """A file now fetched whole: its bytes must hash to the Hub's LFS sha256 (fetched once more if not)."""
    if not sha256:
        return
    if _sha256_of(folder / name) == sha256:
        return
    print(f"warning: {loc.name}: the whole file does not match the Hub's sha256 {sha256[:12]}...; fetching it again",
          file=sys.stderr)
    _get_range(loc, fd, 0, loc.size, stats, bar)
    os.fsync(fd)
    if _sha256_of(folder / name) == sha256:
        _verified_or_refetched(loc, fd, folder / name, name, 0, loc.size, validate, stats, bar)
        return
    if name in fetched:  # some of its earlier ranges must be damaged too: forget them all
        del fetched[name]
        atomic_write_json(folder / RANGES, fetched)
    raise CorruptRangeError(
        f"{loc.name} arrived whole but does not match the Hub's sha256 {sha256} twice; none of its ranges are "
        "recorded -- try again later, or report it to the repo owners"
    )


def fetch_ranges(
    repo_id: str,
    wanted: dict[str, list[Range]],
    *,
    revision: str = "main",
    commit: str | None = None,
    repo_type: str = "dataset",
    whole_files: Iterable[str] = (),
    endpoint: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
    progress: bool = True,
    validate: RangeValidator | None = None,
) -> RangeFetch:
    """Fetch byte ranges ``wanted[file] = [(start, end), ...]`` of ``repo_id@revision`` into its partial folder.

    ``whole_files`` (e.g. ``document.idx``) are downloaded whole into the HF cache, sha256-verified,
    and linked into the folder. Ranges already fetched are not fetched again. ``commit`` pins
    ``revision`` when the caller resolved it already (one Hub call fewer). Offline
    (``HF_HUB_OFFLINE=1``) this only succeeds when everything is already there.

    Verification before a range is recorded in ``fetched_ranges.json``: ``validate(file, start,
    end, path)`` (e.g. ``data_order.row_check``: row lengths, token ids < vocabulary) returns None
    or what is wrong; and a file whose fetched ranges now cover it whole is checked against its
    LFS sha256. A failed check fetches the bytes once more; a second failure records nothing and
    raises ``CorruptRangeError``. A range of a file only partly fetched has no published hash:
    beyond ``validate`` it cannot be proven intact.

    The dataset's partial folder is locked for the call (``locks.output_lock``): a second process
    fetching into it fails at once naming the first.
    """
    from .fetch import download_verified  # late: fetch imports this module

    whole_files = list(whole_files)
    base = store_folder(repo_id, repo_type, root)
    if hub.is_offline():
        folder = existing_partial_dir(repo_id, revision, repo_type, root)
        missing = plan_missing(folder, wanted)
        absent = [n for n in whole_files if folder is None or not (folder / n).exists()]
        if folder is None or missing or absent:
            raise UserError(
                f"the data rows are not all in {base} and offline mode is on (HF_HUB_OFFLINE=1); "
                "run the same fetch with network access first"
            )
        print(f"offline: data ranges of {repo_id} already in {folder}", file=sys.stderr)
        return RangeFetch(folder=folder, commit=folder.name)

    commit = commit or hub.resolve_commit(repo_id, revision, repo_type=repo_type, endpoint=endpoint)
    folder = base / commit
    folder.mkdir(parents=True, exist_ok=True)
    stats = RangeFetch(folder=folder, commit=commit)
    names = sorted(set(wanted) | set(whole_files))
    infos = hub.with_retries(
        lambda: hub.api(endpoint).get_paths_info(repo_id, names, revision=commit, repo_type=repo_type),
        f"paths-info {repo_id}",
    )
    sizes = {i.path: i for i in infos if hasattr(i, "size")}
    for n in names:
        if n not in sizes:
            raise UserError(f"{n} is not a file of {repo_id}@{revision} ({commit[:10]}); the data-order layout changed?")

    with output_lock(base, hint="wait for that fetch to finish"):
        clean_orphans(folder)  # temporaries of a killed fetch (we hold the lock)
        manifest = {
            "repo_id": repo_id, "repo_type": repo_type, "revision": revision, "commit": commit,
            "endpoint": hub.endpoint_of(endpoint),
            "files": {n: {"size": sizes[n].size, "sha256": sizes[n].lfs.sha256 if sizes[n].lfs else None} for n in names},
        }
        old = json.loads((folder / MANIFEST).read_text()) if (folder / MANIFEST).is_file() else {}
        merged_files = {**old.get("files", {}), **manifest["files"]}
        atomic_write_json(folder / MANIFEST, {**manifest, "files": merged_files})

        for n in whole_files:
            path = download_verified(repo_id, n, commit, sizes[n], repo_type=repo_type, endpoint=endpoint,
                                     cache_dir=cache_dir, progress=progress)
            stats.whole_files[n] = _link_into(folder, n, path)

        fetched = read_fetched(folder)
        # A file linked whole (document.idx of an older fetch) already holds every range.
        todo = {n: subtract_ranges(rs, fetched.get(n, [])) for n, rs in wanted.items() if not (folder / n).is_symlink()}
        todo = {n: rs for n, rs in todo.items() if rs}
        total = sum(e - s for rs in todo.values() for s, e in rs)
        stats.bytes_requested = total
        bar = None
        if progress and total:
            from .progress import progress_bar

            bar = progress_bar(total=total, unit="B", unit_scale=True, desc=f"data rows of {repo_id}")
        try:
            for n, rs in todo.items():
                _sparse_file(folder / n, sizes[n].size)
                for s, e in rs:
                    if e > sizes[n].size:
                        raise UserError(f"{n}: range {s}-{e} goes past the end of the file ({sizes[n].size} bytes)")
                loc = _Location(repo_id, n, repo_type, commit, endpoint, sizes[n].size)
                fd = os.open(folder / n, os.O_RDWR)
                try:
                    for s, e in rs:
                        with disk.writing(folder / n, e - s):  # a full disk: one line with the bytes needed
                            _get_range(loc, fd, s, e, stats, bar)
                            os.fsync(fd)  # bytes on disk before the range is recorded
                        _verified_or_refetched(loc, fd, folder / n, n, s, e, validate, stats, bar)
                        merged = merge_ranges(fetched.get(n, []) + [[s, e]])
                        if merged == [[0, sizes[n].size]]:
                            _check_whole_file(loc, fd, folder, n, manifest["files"][n]["sha256"], fetched,
                                              validate, stats, bar)
                        fetched[n] = merged
                        atomic_write_json(folder / RANGES, fetched)
                finally:
                    os.close(fd)
        finally:
            if bar is not None:
                bar.close()
        if not (folder / RANGES).exists():
            atomic_write_json(folder / RANGES, fetched)
        # Point the branch name at this commit only once the folder is usable.
        from .trajectory import atomic_write_text

        atomic_write_text(base / "refs" / revision, commit)
    return stats
