"""Fetch checkpoint N of a run into the standard HF cache, verified.

Downloads go through ``huggingface_hub.hf_hub_download`` (cache layout, locks, ``.incomplete``
files and resume of dropped streams are its job, ecosystem.md §3.3). What this module adds:

- the file choice: config + tokenizer files + weights, safetensors preferred, ``.bin`` as fallback
  (loaded later only with ``weights_only=True``), sharded checkpoints with their index;
- verification: the sha256 of every LFS file against the Hub's LFS oid (huggingface_hub checks
  sizes only), git blob sha1 for small files; a mismatch removes the blob and downloads once
  more, a second mismatch removes it again and raises ``ChecksumError`` -- a corrupt blob never
  stays in the cache as if valid;
- whole-file retries with backoff on 5xx and dropped connections;
- ``--dry-run`` plans with sizes and a disk-space check before anything moves;
- warnings for steps flagged by a known defect (pythia.md §1.4) or by ``branchpoint audit``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from huggingface_hub import hf_hub_download
from huggingface_hub.hf_api import RepoFile

from . import hub
from .disk import human, writing
from .errors import UserError
from .registry import RunInfo

CONFIG = "config.json"
# Small files a checkpoint folder needs besides the weights (tokenizer for --decode, generation
# config; *.py only for trust_remote_code runs such as Crystal).
AUX_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
             "vocab.json", "merges.txt", "tokenizer.model")
SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"


# -- which files ------------------------------------------------------------------------------------
def _shards_of(index_name: str, names: set[str], read_index: Callable[[str], str] | None) -> list[str]:
    """The shard files an index references: from the index itself when it can be read, else by the
    ``model-0000k-of-0000n`` naming convention."""
    if read_index is not None:
        try:
            return sorted(set(json.loads(read_index(index_name))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError):
            pass
    stem, ext = ("model-", ".safetensors") if index_name.startswith("model.") else ("pytorch_model-", ".bin")
    return sorted(n for n in names if n.startswith(stem) and n.endswith(ext) and "-of-" in n)


def choose_files(names: set[str], trust_remote_code: bool = False,
                 read_index: Callable[[str], str] | None = None) -> tuple[list[str], str]:
    """(files to fetch, weight format) for a revision holding ``names``; safetensors preferred.
    ``read_index(name)`` returns the text of a shard index (e.g. by downloading it)."""
    if CONFIG not in names:
        raise UserError("this revision has no config.json; it is not a transformers checkpoint")
    if SAFETENSORS in names:
        weights, fmt = [SAFETENSORS], "safetensors"
    elif SAFETENSORS_INDEX in names:
        weights, fmt = [SAFETENSORS_INDEX] + _shards_of(SAFETENSORS_INDEX, names, read_index), "safetensors"
    elif BIN in names:
        weights, fmt = [BIN], "bin"
    elif BIN_INDEX in names:
        weights, fmt = [BIN_INDEX] + _shards_of(BIN_INDEX, names, read_index), "bin"
    else:
        raise UserError("this revision has no weights (no model.safetensors or pytorch_model.bin, sharded or not)")
    missing = [w for w in weights if w not in names]
    if missing:
        raise UserError(f"the weight index references {missing[0]}, which the revision does not hold")
    aux = [n for n in AUX_FILES if n in names]
    code = sorted(n for n in names if n.endswith(".py")) if trust_remote_code else []
    return [CONFIG] + aux + code + weights, fmt


# -- verification -------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _git_blob_sha1(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _marker(blob: Path) -> Path:
    # One marker per verified blob: named by its repo folder, etag and which cache it lives in; it
    # holds inode, size and mtime, so a replaced or rewritten blob is verified again.
    where = hashlib.sha1(str(blob.parent).encode()).hexdigest()[:12]
    return hub.branchpoint_home() / "verified" / blob.parent.parent.name / f"{blob.name}.{where}"


def _stamp(blob: Path) -> str:
    st = blob.stat()
    return f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _already_verified(blob: Path) -> bool:
    m = _marker(blob)
    return m.is_file() and m.read_text() == _stamp(blob)


def _write_small(path: Path, text: str) -> None:
    """Atomic (temp name + rename) but without fsync: losing a marker or ref costs only a re-check,
    and an fsync per file shows up in the fetch time on a busy disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _mark_verified(blob: Path) -> None:
    _write_small(_marker(blob), _stamp(blob))


def expected_hash(entry: RepoFile) -> tuple[str, str]:
    """("sha256", LFS oid) for LFS files, ("git-sha1", blob id) otherwise."""
    if entry.lfs is not None:
        return "sha256", entry.lfs.sha256
    return "git-sha1", entry.blob_id


def verify_file(path: Path, kind: str, expected: str) -> str | None:
    """None if ``path`` hashes to ``expected``, else the hash it has."""
    blob = Path(os.path.realpath(path))
    if kind == "git-sha1":  # small non-LFS files: hashing is cheaper than keeping a marker
        got = _git_blob_sha1(blob)
        return None if got == expected else got
    if _already_verified(blob):
        return None
    got = _sha256(blob)
    if got != expected:
        return got
    _mark_verified(blob)
    return None


def _remove_from_cache(path: Path) -> None:
    blob = Path(os.path.realpath(path))
    blob.unlink(missing_ok=True)
    if Path(path).is_symlink() or Path(path).exists():
        Path(path).unlink(missing_ok=True)
    _marker(blob).unlink(missing_ok=True)


class _StreamingSha256:
    """sha256 of the bytes huggingface_hub writes to its ``<etag>.<id>.incomplete`` file, computed while
    they arrive (a second thread reads them back from the page cache), so verifying costs no extra
    pass over the file. Any doubt (no unique temp file, a rewind, a partial resume) -> ``digest()``
    returns None and the caller hashes the finished blob instead."""

    def __init__(self, blob_dir: Path, etag: str):
        self.blob_dir, self.etag = blob_dir, etag
        self.h = hashlib.sha256()
        self.pos = self.target = 0
        self.valid, self.done = True, False
        self.f = None
        self.cv = threading.Condition()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def advance(self, n: int) -> None:
        if n > 0 and self.f is None and self.valid:
            # Called by the writing thread right after its first write: the temp file exists now.
            found = list(self.blob_dir.glob(f"{self.etag}.*.incomplete"))
            try:
                self.f = open(found[0], "rb") if len(found) == 1 else None
            except OSError:
                self.f = None
            if self.f is None:
                n = -1
        with self.cv:
            if n < 0:
                self.valid = False
            self.target += n
            self.cv.notify()

    def invalidate(self) -> None:
        self.advance(-1)

    def _run(self) -> None:
        while True:
            with self.cv:
                while self.valid and not self.done and self.target <= self.pos:
                    self.cv.wait()
                if not self.valid or self.done:
                    return
                want = self.target - self.pos
            data = self.f.read(min(want, 8 << 20))
            if data:
                self.h.update(data)
                self.pos += len(data)
            else:  # the writer's last bytes are still in its buffer: wait for more or for the end
                with self.cv:
                    self.cv.wait(0.01)

    def digest(self, blob: Path) -> str | None:
        with self.cv:
            self.done = True
            self.cv.notify()
        self.thread.join()
        if self.f is None:
            return None
        try:
            if not self.valid or os.fstat(self.f.fileno()).st_ino != blob.stat().st_ino:
                return None
            for chunk in iter(lambda: self.f.read(8 << 20), b""):  # the tail written at close
                self.h.update(chunk)
                self.pos += len(chunk)
            return self.h.hexdigest() if self.pos == blob.stat().st_size else None
        finally:
            self.f.close()


def _progress_class(hasher: _StreamingSha256 | None, show: bool):
    """A bar of our progress policy that also feeds ``hasher`` (huggingface_hub builds it with its own kwargs)."""
    from .progress import bar_class

    class Bar(bar_class()):
        def __init__(self, *args, **kwargs):
            if hasher is not None and kwargs.get("initial"):
                hasher.invalidate()  # started from a partial file we did not see
            if not show:
                kwargs["disable"] = True
            kwargs.setdefault("name", "huggingface_hub.http_get")  # honours HF_HUB_DISABLE_PROGRESS_BARS
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            if hasher is not None:
                hasher.advance(int(n or 0))
            return super().update(n)

    return Bar


def download_verified(
    repo_id: str, filename: str, commit: str, entry: RepoFile, *, repo_type: str = "model",
    endpoint: str | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True,
) -> Path:
    """hf_hub_download one file at a pinned commit, then check its hash; re-download once on mismatch."""
    kind, expected = expected_hash(entry)
    blob_dir = hub.repo_folder(hub.hub_cache(cache_dir), repo_id, repo_type) / "blobs"
    for attempt in (1, 2):
        hasher = _StreamingSha256(blob_dir, expected) if kind == "sha256" else None
        with writing(blob_dir, entry.size):  # a full disk: one line with the bytes this file needs
            path = Path(hub.with_retries(
                lambda: hf_hub_download(
                    repo_id, filename, revision=commit, repo_type=repo_type, endpoint=endpoint,
                    cache_dir=str(cache_dir) if cache_dir else None, force_download=attempt == 2,
                    tqdm_class=_progress_class(hasher, progress),
                ),
                f"downloading {repo_id}/{filename}",
                on_retry=hasher.invalidate if hasher else None,
            ))
        blob = Path(os.path.realpath(path))
        streamed = hasher.digest(blob) if hasher is not None else None
        if streamed == expected:
            _mark_verified(blob)
            got = None
        elif streamed is not None:
            got = streamed
        else:
            got = verify_file(path, kind, expected)
        if got is None:
            return path
        _remove_from_cache(path)
        if attempt == 1:
            print(f"warning: {repo_id}/{filename}: {kind} {got[:12]}... != Hub's {expected[:12]}...; "
                  "removed it from the cache, downloading again", file=sys.stderr)
    raise hub.ChecksumError(
        f"{repo_id}/{filename}@{commit[:10]} arrived corrupt twice ({kind} {got} instead of the Hub's {expected}); "
        "it was removed from the cache -- try again later, or report it to the repo owners"
    )


# -- warnings -----------------------------------------------------------------------------------------
def audit_flags_path(run_name: str) -> Path:
    return hub.branchpoint_home() / "audit" / f"{run_name}.json"


def step_warnings(run: RunInfo, step: int) -> list[str]:
    """One line per known defect or audit finding that touches ``step`` of ``run``."""
    out = [f"warning: {run.name} step {step}: {d.text} ({d.issue})" for d in run.defects_at(step)]
    flags_file = audit_flags_path(run.name)
    if flags_file.is_file():
        flags = json.loads(flags_file.read_text()).get("flags", {})
        for text in flags.get(str(step), []):
            out.append(f"warning: {run.name} step {step}: {text} (from `branchpoint audit {run.name}`)")
    return out


def warn_step(run: RunInfo, step: int) -> None:
    for line in step_warnings(run, step):
        print(line, file=sys.stderr)


# -- plan ----------------------------------------------------------------------------------------------
@dataclass
class PlannedFile:
    repo_id: str
    revision: str
    commit: str | None
    filename: str
    size: int
    cached: bool


@dataclass
class FetchPlan:
    """The weight files a fetch of some steps moves (the data rows are planned by data_order.remote)."""

    run: str
    files: list[PlannedFile] = field(default_factory=list)
    offline: bool = False
    # What others plan next to the weights (data_order.remote's rows): (lines, total bytes, bytes to download).
    extra: list[tuple[list[str], int, int]] = field(default_factory=list)

    @property
    def weights_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def download_bytes(self) -> int:
        return sum(f.size for f in self.files if not f.cached) + sum(todo for _, _, todo in self.extra)

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + sum(total for _, total, _ in self.extra)

    def lines(self) -> list[str]:
        out = []
        for f in self.files:
            state = "cached" if f.cached else "to fetch"
            out.append(f"{f.repo_id}@{f.revision}  {f.filename}  {human(f.size)}  ({state})")
        for lines, _, _ in self.extra:
            out.extend(lines)
        out.append(f"total: {human(self.total_bytes)} ({self.total_bytes} bytes); to download: {human(self.download_bytes)}")
        return out

    def check_disk(self, cache_dir: str | os.PathLike | None = None, extra: list[tuple[Path, int]] = ()) -> None:
        """Refuse (UserError) when the cache (or a place in ``extra``) lacks room for what is downloaded."""
        weights = sum(f.size for f in self.files if not f.cached)
        check_free_disk([(hub.hub_cache(cache_dir), weights), *extra])


def free_disk(where: str | os.PathLike) -> int:
    return shutil.disk_usage(_existing_parent(Path(where))).free


def check_free_disk(needs: list[tuple[Path, int]], what: str = "the fetch", as_write_failure: bool = False) -> None:
    """UserError naming the place when ``need`` bytes do not fit; places on one filesystem add up.
    ``as_write_failure``: raise ``disk.DiskFullError`` instead (what a write that ran out of room raises:
    the same one line and exit status, before anything is written)."""
    by_device: dict[int, list[tuple[Path, int]]] = {}
    for where, need in needs:
        if need > 0:
            by_device.setdefault(os.stat(_existing_parent(Path(where))).st_dev, []).append((Path(where), need))
    for places in by_device.values():
        need = sum(n for _, n in places)
        where = places[0][0]
        free = free_disk(where)
        if need > free and as_write_failure:
            from .disk import DiskFullError

            raise DiskFullError(where, need, free)
        if need > free:
            raise UserError(
                f"not enough disk: {what} needs {human(need)} at {where} but only {human(free)} is free; "
                "free some space or point HF_HOME / HF_HUB_CACHE (and --out) at a bigger disk"
            )


def _existing_parent(p: Path) -> Path:
    p = Path(p).absolute()
    while not p.exists():
        p = p.parent
    return p


def _check_trust(run: RunInfo, trust_remote_code: bool) -> None:
    if run.trust_remote_code_required and not trust_remote_code:
        raise UserError(
            f"{run.name} needs trust_remote_code (its model class is code in the repo); "
            "pass --trust-remote-code if you have read that code and trust it"
        )


def _index_reader(repo_id: str, commit: str, entries: dict[str, RepoFile], endpoint, cache_dir, progress):
    def reader(name: str) -> str:
        return download_verified(repo_id, name, commit, entries[name], endpoint=endpoint, cache_dir=cache_dir,
                                 progress=progress).read_text()
    return reader


def _remote_files(run: RunInfo, step: int, *, endpoint, cache_dir, trust_remote_code, progress=False, read_indexes=True):
    assert run.repo_id is not None
    rev = run.revision(step)
    commit = hub.resolve_commit(run.repo_id, rev, endpoint=endpoint)
    entries = hub.list_files(run.repo_id, commit, endpoint=endpoint)
    reader = _index_reader(run.repo_id, commit, entries, endpoint, cache_dir, progress) if read_indexes else None
    try:
        chosen, fmt = choose_files(set(entries), trust_remote_code, reader)
    except UserError as e:
        raise UserError(f"{run.repo_id}@{rev}: {e}") from None
    return rev, commit, entries, chosen, fmt


def _snapshot(cache: Path, repo_id: str, commit: str) -> Path:
    return hub.repo_folder(cache, repo_id) / "snapshots" / commit


def _is_cached(cache: Path, repo_id: str, commit: str, filename: str) -> bool:
    return (_snapshot(cache, repo_id, commit) / filename).exists()


def _cached_files(run: RunInfo, step: int, cache: Path, trust_remote_code: bool) -> tuple[str, str, Path, list[str]]:
    """Offline: the snapshot folder of ``step`` in the cache and its chosen files, or a clear error."""
    assert run.repo_id is not None
    rev = run.revision(step)
    commit = hub.cached_commit(cache, run.repo_id, rev)
    snap = _snapshot(cache, run.repo_id, commit) if commit else None
    if snap is None or not snap.is_dir():
        raise UserError(
            f"{run.name} step {step} ({run.repo_id}@{rev}) is not in the cache {cache} and the Hub is off "
            f"(HF_HUB_OFFLINE=1 or --offline); fetch it with network access first: branchpoint fetch {run.name} --step {step}"
        )
    names = {str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()}
    try:
        chosen, _ = choose_files(names, trust_remote_code, lambda name: (snap / name).read_text())
    except UserError as e:
        raise UserError(f"cached {run.repo_id}@{rev} in {snap} is incomplete ({e}); fetch it again with network access") from None
    return rev, commit, snap, chosen


def plan_fetch(
    run: RunInfo, steps: list[int], *, endpoint: str | None = None, cache_dir: str | os.PathLike | None = None,
    trust_remote_code: bool = False, local_files_only: bool = False, read_indexes: bool = True,
) -> FetchPlan:
    """Weight files and bytes a fetch of ``steps`` would move: one revision lookup and one file listing
    per step. ``read_indexes=False`` (dry runs) names the shards of a sharded checkpoint by the
    ``model-0000k-of-0000n`` convention instead of downloading its small index: nothing is written."""
    _check_trust(run, trust_remote_code)
    for s in steps:
        run.check_step(s)
    plan = FetchPlan(run=run.name, offline=hub.is_offline() or local_files_only)
    if run.is_local:
        return plan
    cache = hub.hub_cache(cache_dir)
    for s in steps:
        if plan.offline:
            rev, commit, snap, chosen = _cached_files(run, s, cache, trust_remote_code)
            for n in chosen:
                plan.files.append(PlannedFile(run.repo_id, rev, commit, n, (snap / n).stat().st_size, True))
            continue
        rev, commit, entries, chosen, _ = _remote_files(run, s, endpoint=endpoint, cache_dir=cache_dir,
                                                      trust_remote_code=trust_remote_code, read_indexes=read_indexes)
        for n in chosen:
            plan.files.append(PlannedFile(run.repo_id, rev, commit, n, entries[n].size,
                                          _is_cached(cache, run.repo_id, commit, n)))
    return plan


def check_data_steps(run: RunInfo, k: int, what: str = "--data-steps") -> dict:
    """The run's data order if ``--data-steps k`` can be served (preshuffled rows), else a UserError
    (``what`` names the request in the message)."""
    order = run.data_order or {}
    if order.get("kind") != "mmidx" or not order.get("repo_id"):
        raise UserError(
            f"{what} needs a run whose data order is published as preshuffled rows; {run.name}'s is "
            f"{order.get('kind', 'unknown')} ({order.get('note') or 'no source'})"
        )
    if k <= 0:
        raise UserError(f"--data-steps must be a positive number of batches, not {k}")
    return order


# -- fetch -------------------------------------------------------------------------------------------
def ensure_checkpoint(
    run: RunInfo, step: int, *, local_files_only: bool = False, progress: bool = True,
    endpoint: str | None = None, cache_dir: str | os.PathLike | None = None, trust_remote_code: bool = False,
    max_workers: int = 8,
) -> Path:
    """A local folder with config.json + verified weights of ``run`` at ``step`` (HF snapshot folder, or
    the trajectory's ``checkpoints/stepN`` for local runs)."""
    _check_trust(run, trust_remote_code)
    run.check_step(step)
    warn_step(run, step)
    if run.is_local:
        assert run.trajectory is not None
        return run.trajectory.checkpoint_dir(step)
    assert run.repo_id is not None
    cache = hub.hub_cache(cache_dir)
    if hub.is_offline() or local_files_only:
        rev, commit, snap, chosen = _cached_files(run, step, cache, trust_remote_code)
        for n in chosen:
            _verify_cached(snap / n)
        print(f"offline: {run.repo_id}@{rev} from the cache ({snap}); the Hub was not contacted", file=sys.stderr)
        return snap
    rev, commit, entries, chosen, fmt = _remote_files(run, step, endpoint=endpoint, cache_dir=cache_dir,
                                                    trust_remote_code=trust_remote_code, progress=progress)

    def one(name: str) -> Path:
        return download_verified(run.repo_id, name, commit, entries[name], endpoint=endpoint, cache_dir=cache_dir,
                                 progress=progress)

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(chosen)))) as pool:
        list(pool.map(one, chosen))
    # Downloads went by commit sha (all files from one commit); record the branch -> commit ref as
    # huggingface_hub does (refs/<rev> holds the sha, no newline) so offline use finds the step.
    _write_small(hub.repo_folder(cache, run.repo_id) / "refs" / rev, commit)
    return _snapshot(cache, run.repo_id, commit)


def _verify_cached(path: Path) -> None:
    """Offline check: an LFS blob's name in the cache is its sha256 (its etag), so it can be checked
    without the Hub."""
    blob = Path(os.path.realpath(path))
    name = blob.name
    if len(name) == 64 and all(c in "0123456789abcdef" for c in name):
        got = verify_file(path, "sha256", name)
        if got is not None:
            _remove_from_cache(path)
            raise hub.ChecksumError(
                f"cached {path.name} is corrupt (sha256 {got} instead of {name}); it was removed from the cache "
                "-- fetch it again with network access"
            )
