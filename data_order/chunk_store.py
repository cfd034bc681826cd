"""Released chunk files (JSON lines of token ids) converted once into a local memory-mapped token store.

LLM360 publishes its training data as JSONL chunks (``{"token_ids": [2049 ints], "source": ...}`` per
line, llm360.md §3.1/§3.3). Reading batches from JSON text is slow and a JSONL has no row index, so
each chunk is read once with ``datasets`` (its streaming JSON reader: Arrow blocks, nothing cached)
and written as an MMIDIDX token store, one item per line, plus one domain label per line::

    $BRANCHPOINT_HOME/data/chunks/datasets--LLM360--AmberDatasets/
      index.json                  # "<revision>:<file>" -> key: which store a chunk file became (offline lookups)
      sha256-<oid>/               # key = the source file's content hash: the same bytes give the same store
        tokens.bin, tokens.idx    # MMIDIDX, item i = line i (row_len tokens; uint16 when the vocabulary fits)
        labels.npy                # int16, one per line: index into store.json "label_names" (the `source` field)
        store.json                # source repo/file/commit, rows, row_len, dtype, label field and names

A store is written in a temporary folder and renamed when complete, under a file lock, so two
processes (or two branches) convert a chunk once, and a killed conversion leaves nothing behind.
Bad input (no ``token_ids``, a row of the wrong length, a token outside the vocabulary) is one line
naming the file, the line and what was expected. No network I/O happens here.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from filelock import FileLock

from checkpoints_cache.data_store import data_root
from checkpoints_cache.trajectory import atomic_dir, atomic_write_json

from .mmidx import DataOrderError, MMapIndexedDataset, write_mmidx

STORE_FILE = "store.json"
TOKENS = "tokens"  # tokens.bin / tokens.idx
LABELS = "labels.npy"
INDEX_FILE = "index.json"
STORE_FORMAT = "branchpoint-chunk-store/1"
BLOCK_ROWS = 4096  # rows per Arrow block handed to the writer (~16 MB of uint16 at 2049 tokens)
NO_LABEL = "(none)"


def stores_root(repo_id: str, repo_type: str = "dataset", root: str | os.PathLike | None = None) -> Path:
    return data_root(root) / "chunks" / f"{repo_type}s--{repo_id.replace('/', '--')}"


def token_dtype(vocab_size: int | None) -> np.dtype:
    """uint16 when every token id fits (LLaMA's 32000, K2's 32032), else int32."""
    return np.dtype("<u2") if vocab_size is not None and 0 < vocab_size <= 65536 else np.dtype("<i4")


@dataclass(frozen=True)
class ChunkStore:
    """One converted chunk: rows (= lines of the source file) of ``row_len`` tokens and their labels."""

    folder: Path
    meta: dict[str, Any]

    @property
    def rows(self) -> int:
        return int(self.meta["rows"])

    @property
    def row_len(self) -> int:
        return int(self.meta["row_len"])

    @property
    def label_names(self) -> list[str]:
        return list(self.meta["label_names"])

    @property
    def source(self) -> str:
        return str(self.meta["filename"])

    @property
    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())

    @cached_property
    def dataset(self) -> MMapIndexedDataset:
        return MMapIndexedDataset(self.folder / TOKENS)

    @cached_property
    def labels(self) -> np.ndarray:
        return np.load(self.folder / LABELS, mmap_mode="r")

    def take(self, lines: np.ndarray) -> np.ndarray:
        """Rows at ``lines`` (in that order) as ``[len(lines), row_len]``."""
        return self.dataset.take(lines, self.row_len)

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "ChunkStore | None":
        """The store in ``folder``, or None when there is no complete one."""
        folder = Path(folder)
        meta_path = folder / STORE_FILE
        if not meta_path.is_file():
            return None
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != STORE_FORMAT:
            return None
        return cls(folder, meta)


# -- the index: which store a (revision, file) became ------------------------------------------------
def _index_path(repo_id: str, repo_type: str, root: str | os.PathLike | None) -> Path:
    return stores_root(repo_id, repo_type, root) / INDEX_FILE


def lookup_store(repo_id: str, filename: str, revision: str = "main", *, key: str | None = None,
                 repo_type: str = "dataset", root: str | os.PathLike | None = None) -> ChunkStore | None:
    """The converted store of ``filename``: by content ``key`` when the Hub told it, else by the index
    (offline: the store this revision's file was converted into last time)."""
    base = stores_root(repo_id, repo_type, root)
    if key is None:
        index = _read_index(_index_path(repo_id, repo_type, root))
        key = (index.get(f"{revision}:{filename}") or {}).get("key")
        if key is None:
            return None
    return ChunkStore.open(base / key)


def _read_index(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _record(repo_id: str, repo_type: str, revision: str, filename: str, key: str, commit: str | None,
            root: str | os.PathLike | None) -> None:
    path = _index_path(repo_id, repo_type, root)
    with FileLock(str(path) + ".lock"):
        index = _read_index(path)
        index[f"{revision}:{filename}"] = {"key": key, "commit": commit}
        atomic_write_json(path, index)


# -- conversion ------------------------------------------------------------------------------------
def _arrow_blocks(src: Path, token_field: str, label_field: str | None) -> Iterator[Any]:
    """Arrow tables of ``src`` (JSON lines) through ``datasets``' streaming JSON reader (no Arrow cache)."""
    import datasets

    quiet = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its parse errors come back as our one line
    try:
        try:
            # on_mixed_types=None: skip datasets' per-value Python scan for mixed struct types (token rows have
            # none; the scan costs ~30 ms per MB of the first block); the fields are inferred by pyarrow.
            ds = datasets.load_dataset("json", data_files=str(src), split="train", streaming=True, on_mixed_types=None)
            if ds.features is None:  # the reader could not infer the fields: surface its error
                next(iter(ds.with_format("arrow").iter(batch_size=BLOCK_ROWS)))
        except Exception as e:  # datasets' own exception types vary between versions
            raise DataOrderError(f"cannot read {src.name} as JSON lines ({_first_line(e)}); is it a complete chunk "
                                 "file?") from None
        columns = list(ds.features or {})
        if token_field not in columns:
            raise DataOrderError(
                f"{src.name} has no {token_field!r} field (its fields: {', '.join(columns) or 'none'}); a chunk line must "
                f"hold {token_field!r} (the row's token ids), e.g. an LLM360 AmberDatasets train_KKK.jsonl"
            )
        keep = [token_field] + ([label_field] if label_field and label_field in columns else [])
        try:
            yield from ds.select_columns(keep).with_format("arrow").iter(batch_size=BLOCK_ROWS)
        except DataOrderError:
            raise
        except Exception as e:
            raise DataOrderError(f"cannot read {src.name} as JSON lines ({_first_line(e)}); is the file complete?") from None
    finally:
        datasets.logging.set_verbosity(quiet)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:200]


class _Converter:
    """Checks and converts Arrow blocks: tokens to ``dtype`` rows, labels to ids (in order of appearance)."""

    def __init__(self, src: Path, row_len: int, token_field: str, label_field: str | None, dtype: np.dtype,
                 vocab_size: int | None):
        self.src, self.row_len, self.token_field, self.label_field = src, row_len, token_field, label_field
        self.dtype, self.vocab_size = dtype, vocab_size
        self.rows = 0
        self.names: dict[str, int] = {}
        self.labels: list[np.ndarray] = []

    def tokens(self, table: Any) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        col = table.column(self.token_field).combine_chunks()
        n = len(col)
        if col.null_count:
            bad = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataOrderError(f"line {self.rows + bad + 1} of {self.src.name} has no {self.token_field!r}; every "
                                 f"line needs {self.row_len} token ids")
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            raise DataOrderError(f"{self.token_field!r} of {self.src.name} holds {col.type}, not lists of token ids")
        lengths = np.diff(col.offsets.to_numpy())
        wrong = np.flatnonzero(lengths != self.row_len)
        if wrong.size:
            i = int(wrong[0])
            raise DataOrderError(
                f"line {self.rows + i + 1} of {self.src.name} has {int(lengths[i])} tokens, not {self.row_len} "
                f"(seq_len {self.row_len - 1} + 1, the card's [data_order] seq_len); every row must have the same length"
            )
        values = pc.list_flatten(col)
        if not pa.types.is_integer(values.type):
            raise DataOrderError(f"{self.token_field!r} of {self.src.name} holds {values.type}, not integer token ids")
        flat = values.to_numpy(zero_copy_only=False)
        if flat.size:
            lo, hi = int(flat.min()), int(flat.max())
            limit = self.vocab_size if self.vocab_size else np.iinfo(self.dtype).max + 1
            if lo < 0 or hi >= limit:
                what = f"the vocabulary size {self.vocab_size}" if self.vocab_size else self.dtype.name
                raise DataOrderError(f"token ids {lo}..{hi} in lines {self.rows + 1}..{self.rows + n} of {self.src.name} "
                                     f"do not fit {what}; is this chunk from another tokenizer?")
        self._labels(table, n)
        self.rows += n
        return flat.astype(self.dtype, copy=False).reshape(n, self.row_len)

    def _labels(self, table: Any, n: int) -> None:
        if not self.label_field or self.label_field not in table.column_names:
            self.labels.append(np.full(n, self._id(NO_LABEL), dtype=np.int16))
            return
        values = table.column(self.label_field).to_pylist()
        uniq = {v: self._id(NO_LABEL if v is None else str(v)) for v in dict.fromkeys(values)}
        self.labels.append(np.fromiter((uniq[v] for v in values), dtype=np.int16, count=n))

    def _id(self, name: str) -> int:
        if name not in self.names:
            if len(self.names) >= np.iinfo(np.int16).max:
                raise DataOrderError(f"{self.src.name} has more than {np.iinfo(np.int16).max} distinct "
                                     f"{self.label_field!r} values; use another label_field")
            self.names[name] = len(self.names)
        return self.names[name]


def convert_chunk(src: str | os.PathLike, dest: str | os.PathLike, *, row_len: int, token_field: str = "token_ids",
                  label_field: str | None = "source", vocab_size: int | None = None,
                  provenance: dict[str, Any] | None = None, expected_rows: int | None = None,
                  progress: bool = True) -> ChunkStore:
    """Convert the JSON-lines file ``src`` into a token store at ``dest`` (written atomically)."""
    from checkpoints_cache.progress import progress_bar

    src = Path(src)
    if not src.is_file():
        raise DataOrderError(f"chunk file {src} does not exist")
    dtype = token_dtype(vocab_size)
    conv = _Converter(src, int(row_len), token_field, label_field, dtype, vocab_size)
    bar = progress_bar(total=expected_rows, unit="rows", unit_scale=True, desc=f"convert {src.name}", enabled=progress,
                       file=sys.stderr)

    def blocks() -> Iterator[np.ndarray]:
        for table in _arrow_blocks(src, token_field, label_field):
            rows = conv.tokens(table)
            bar.update(len(rows))
            yield rows

    try:
        with atomic_dir(Path(dest), overwrite=True) as tmp:
            write_mmidx(tmp / TOKENS, blocks(), dtype=dtype)
            if conv.rows == 0:
                raise DataOrderError(f"{src.name} holds no rows")
            np.save(tmp / LABELS, np.concatenate(conv.labels) if conv.labels else np.zeros(0, np.int16))
            meta = {
                "format": STORE_FORMAT, **(provenance or {}), "rows": conv.rows, "row_len": int(row_len),
                "dtype": dtype.name, "token_field": token_field, "label_field": label_field,
                "label_names": list(conv.names), "source_bytes": src.stat().st_size,
            }
            meta.setdefault("filename", src.name)
            atomic_write_json(tmp / STORE_FILE, meta)
    finally:
        bar.close()
    store = ChunkStore.open(dest)
    assert store is not None
    return store


def ensure_store(src: str | os.PathLike, *, repo_id: str, filename: str, key: str, revision: str = "main",
                 commit: str | None = None, repo_type: str = "dataset", row_len: int, token_field: str = "token_ids",
                 label_field: str | None = "source", vocab_size: int | None = None, expected_rows: int | None = None,
                 root: str | os.PathLike | None = None, progress: bool = True) -> tuple[ChunkStore, bool]:
    """(store, converted now?): reuse the store of this content ``key``, or convert ``src`` once (locked)."""
    base = stores_root(repo_id, repo_type, root)
    base.mkdir(parents=True, exist_ok=True)
    folder = base / key
    with FileLock(str(base / f".{key}.lock")):
        store = ChunkStore.open(folder)
        converted = False
        if store is None:
            provenance = {"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "commit": commit,
                          "filename": filename, "key": key}
            store = convert_chunk(src, folder, row_len=row_len, token_field=token_field, label_field=label_field,
                                  vocab_size=vocab_size, provenance=provenance, expected_rows=expected_rows,
                                  progress=progress)
            converted = True
    if store.row_len != row_len:
        raise DataOrderError(f"the token store of {filename} ({folder}) has rows of {store.row_len} tokens but the "
                             f"run card expects {row_len} (seq_len {row_len - 1} + 1); fix seq_len in the card")
    _record(repo_id, repo_type, revision, filename, key, commit, root)
    return store, converted
