"""Evaluation cache: results keyed by the content of the checkpoints and of the eval set.

A checkpoint's fingerprint is the sha256 of its config.json and weight files (their own sha256s,
by name). A file's sha256 is remembered per (real path, size, mtime, ctime, inode), machine-wide in
``$BRANCHPOINT_CACHE`` (default ``$XDG_CACHE_HOME/branchpoint`` or ``~/.cache/branchpoint``; the
output folder's ``cache/`` if that is not writable), so each checkpoint file is read for hashing
once, not once per comparison; files are hashed in parallel threads (hashlib releases the GIL). A
checkpoint in the HF cache is already named by its sha256 (``blobs/<sha256>``) and is not hashed.
Entries are small JSON files written atomically, so a killed comparison leaves a usable cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable


_HEX64 = re.compile(r"[0-9a-f]{64}")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".index.json")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def memo_dir() -> Path:
    """Where file hashes are remembered across comparisons (see the module docstring)."""
    if os.environ.get("BRANCHPOINT_CACHE"):
        return Path(os.environ["BRANCHPOINT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "branchpoint"


def _stat_key(st: os.stat_result) -> list[int]:
    # ctime and inode too: a file rewritten in place with its old size and mtime (cp -p) still
    # gets a new ctime, which no user call can set back.
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def write_derived(path: Path, text: str) -> None:
    """Temp name + rename (a killed process leaves the old file or the new one, never half of one),
    without fsync: cache entries and the tables, summaries and figures derived from them are only
    recomputed after a machine crash, and an fsync per file costs ~10 ms, more than evaluating a
    tiny model (several percent of a toy comparison)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    write_derived(path, json.dumps(obj, sort_keys=True))


class EvalCache:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._memo_path = memo_dir() / "file_hashes.json"
        try:
            self._memo_path.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(self._memo_path.parent, os.W_OK):
                raise PermissionError(self._memo_path.parent)
        except OSError:
            self._memo_path = self.root / "file_hashes.json"
        self._memo: dict[str, Any] = self._read_memo()
        self._new: dict[str, Any] = {}
        self._fingerprints: dict[str, str] = {}

    def _read_memo(self) -> dict[str, Any]:
        try:
            return json.loads(self._memo_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}

    # -- fingerprints ---------------------------------------------------------------------
    @staticmethod
    def _blob_name(real: Path) -> str | None:
        return real.name if real.parent.name == "blobs" and _HEX64.fullmatch(real.name) else None

    def _known(self, real: Path) -> str | None:
        blob = self._blob_name(real)
        if blob:
            return blob  # HF cache blob of an LFS file: its name is its sha256
        memo = self._memo.get(str(real))
        if memo and memo.get("stat") == _stat_key(real.stat()):
            return memo["sha256"]
        return None

    def file_hash(self, path: Path) -> str:
        real = Path(os.path.realpath(path))
        known = self._known(real)
        if known:
            return known
        st = real.stat()
        digest = _file_sha256(real)
        entry = {"stat": _stat_key(st), "sha256": digest}
        self._memo[str(real)] = self._new[str(real)] = entry
        return digest

    @staticmethod
    def _files(ckpt: Path, extra: Iterable[str] = ()) -> list[Path]:
        names = set(extra)
        return sorted(p for p in Path(ckpt).iterdir()
                      if p.is_file() and (p.name == "config.json" or p.name.endswith(_WEIGHT_SUFFIXES) or p.name in names))

    def prefetch(self, ckpts: Iterable[Path], extra: Iterable[str] = ()) -> None:
        """Hash every not-yet-known file of these checkpoints, in parallel threads."""
        extra = tuple(extra)
        todo = sorted({Path(os.path.realpath(f)) for c in ckpts for f in self._files(c, extra)})
        todo = [f for f in todo if not self._known(f)]
        if not todo:
            return
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(todo))) as ex:
            for f, st, digest in ex.map(lambda f: (f, f.stat(), _file_sha256(f)), todo):
                self._memo[str(f)] = self._new[str(f)] = {"stat": _stat_key(st), "sha256": digest}

    def checkpoint_fingerprint(self, ckpt: Path, extra: Iterable[str] = ()) -> str:
        """sha256 over (name, sha256) of config.json and the weight files of a checkpoint dir (and
        of the files named in ``extra`` that it holds, e.g. the tokenizer's for text tasks)."""
        extra = tuple(sorted(extra))
        key = str(Path(ckpt).resolve()) + ("|" + ",".join(extra) if extra else "")
        if key in self._fingerprints:
            return self._fingerprints[key]
        h = hashlib.sha256()
        for p in self._files(ckpt, extra):
            h.update(f"{p.name}:{self.file_hash(p)}\n".encode())
        self._fingerprints[key] = h.hexdigest()
        return self._fingerprints[key]

    # -- entries ----------------------------------------------------------------------------
    def _path(self, kind: str, parts: list[str]) -> Path:
        key = hashlib.sha256(json.dumps([kind, *parts]).encode()).hexdigest()
        return self.root / kind / f"{key}.json"

    def get(self, kind: str, parts: list[str]) -> dict[str, Any] | None:
        try:
            return json.loads(self._path(kind, parts).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, kind: str, parts: list[str], value: dict[str, Any]) -> None:
        _write_json(self._path(kind, parts), {"key": [kind, *parts], **value})

    def flush(self) -> None:
        """Add this run's new file hashes to the memo (merged with what other processes wrote)."""
        if self._new:
            merged = {**self._read_memo(), **self._new}
            try:
                _write_json(self._memo_path, merged)
            except OSError:
                pass  # a memo that cannot be written only costs re-hashing next time
            self._new = {}
