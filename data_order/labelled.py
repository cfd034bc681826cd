"""Labelled corpora for data-mixture branches (BiMix): a table with a domain column -> rows of
``seq_len + 1`` tokens packed *within* each domain, cached as an MMIDIDX dataset with one domain
label per row, plus the entropy counts of every whole domain.

Reading goes through ``datasets`` (this module opens no network connection itself): a local file
(parquet, jsonl/json, arrow, csv), a folder of such files or one written by ``save_to_disk``, or a
Hub dataset name, which ``datasets`` resolves through its cache (offline once cached).

Tokens come from a text column tokenized with the parent's tokenizer, one end-of-text token
appended after every document as GPT-NeoX's ``preprocess_data.py --append-eod`` does for Pythia
(pythia.md §4), or from a column of token ids taken as they are (LLM360 Amber's ``token_ids``,
llm360.md §3.1; nothing appended). Each domain's documents are concatenated in table order and cut
into consecutive, non-overlapping rows of ``seq_len + 1`` tokens; the last partial row of each
domain is dropped and counted. (Pythia's own rows overlap by one token, pythia.md §4.4; here no
token is shared, so an Amber record of 2049 ids stays one row.)

The cache lives in ``<cache_root>/<key>/`` (``rows.bin``/``rows.idx``, ``labels.npy``, ``corpus.json``),
keyed by the table's content fingerprint, the columns, the tokenizer and the row length: a second
branch from the same corpus reads it without tokenizing anything. It is written under a temporary
name and renamed when complete; concurrent processes wait on a file lock.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import atomic_dir, atomic_write_json

from .mmidx import write_mmidx
from .source import TokenRows

FORMAT = 1
ROWS = "rows"  # rows.bin + rows.idx
LABELS = "labels.npy"
META = "corpus.json"
LOCAL_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow", ".csv": "csv"}


# -- entropy counts ---------------------------------------------------------------------------------
def _merge_counts(codes_a: np.ndarray, counts_a: np.ndarray, codes_b: np.ndarray, counts_b: np.ndarray):
    codes = np.concatenate([codes_a, codes_b])
    counts = np.concatenate([counts_a, counts_b])
    order = np.argsort(codes, kind="stable")
    codes, counts = codes[order], counts[order]
    if codes.size == 0:
        return codes, counts
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return codes[starts], np.add.reduceat(counts, starts)


def _plugin_entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


class EntropyCounts:
    """Streaming token and within-row token-pair counts of rows, and the entropies they give (nats).

    ``conditional()`` is H(X_{t+1} | X_t) = −Σ P(x, x')·log P(x' | x) over the pairs inside each row
    (BiMix's CE, arXiv 2405.14908 Eqs. 12–13; methods.md §4.2), ``shannon()`` the unigram entropy.
    Counts are exact; ``miller_madow=True`` adds the Miller–Madow bias correction (m − 1)/(2n) to
    every plug-in entropy (m occupied bins, n samples), for estimates from a sample of rows.
    """

    FLUSH = 1 << 23  # pair codes buffered before they are counted into a sorted run

    def __init__(self) -> None:
        self.unigram = np.zeros(0, dtype=np.int64)
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []  # sorted (pair code, count) runs, larger first
        self._pending: list[np.ndarray] = []
        self._pending_size = 0
        self.tokens = 0
        self.pairs = 0
        self.rows = 0

    def add(self, rows: np.ndarray) -> "EntropyCounts":
        rows = np.asarray(rows)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.size == 0:
            return self
        if rows.min() < 0:
            raise ValueError("token ids must be >= 0")
        flat = rows.reshape(-1).astype(np.int64, copy=False)
        counts = np.bincount(flat)
        if counts.size > self.unigram.size:
            counts[: self.unigram.size] += self.unigram
            self.unigram = counts
        else:
            self.unigram[: counts.size] += counts
        self.tokens += flat.size
        self.rows += rows.shape[0]
        if rows.shape[1] >= 2:
            codes = (rows[:, :-1].astype(np.uint64) << np.uint64(32)) | rows[:, 1:].astype(np.uint64)
            self._pending.append(codes.reshape(-1))
            self._pending_size += codes.size
            self.pairs += codes.size
            if self._pending_size >= self.FLUSH:
                self._flush()
        return self

    def _flush(self) -> None:
        if self._pending:
            codes, counts = np.unique(np.concatenate(self._pending), return_counts=True)
            self._pending, self._pending_size = [], 0
            self._runs.append((codes, counts.astype(np.int64)))
        # merge runs of similar size only (as a log-structured merge): O(n log n) over the whole stream
        while len(self._runs) >= 2 and len(self._runs[-2][0]) <= 2 * len(self._runs[-1][0]):
            (a, ca), (b, cb) = self._runs[-2], self._runs.pop()
            self._runs[-1] = _merge_counts(a, ca, b, cb)

    def _pairs(self) -> tuple[np.ndarray, np.ndarray]:
        self._flush()
        while len(self._runs) >= 2:
            (a, ca), (b, cb) = self._runs[-2], self._runs.pop()
            self._runs[-1] = _merge_counts(a, ca, b, cb)
        return self._runs[0] if self._runs else (np.zeros(0, np.uint64), np.zeros(0, np.int64))

    def shannon(self, miller_madow: bool = False) -> float:
        h = _plugin_entropy(self.unigram)
        if miller_madow and self.tokens:
            h += (np.count_nonzero(self.unigram) - 1) / (2 * self.tokens)
        return h

    def conditional(self, miller_madow: bool = False) -> float:
        codes, counts = self._pairs()
        if self.pairs == 0:
            return 0.0
        joint = counts.astype(np.float64)
        first = codes >> np.uint64(32)
        starts = np.flatnonzero(np.r_[True, first[1:] != first[:-1]])
        marginal = np.add.reduceat(joint, starts)
        given = np.repeat(marginal, np.diff(np.r_[starts, joint.size]))  # count of x for each pair (x, x')
        h = float(-((joint / self.pairs) * np.log(joint / given)).sum())
        if miller_madow:  # H(X'|X) = H(X, X') − H(X): correct both plug-in terms
            h += (joint.size - 1) / (2 * self.pairs) - (marginal.size - 1) / (2 * self.pairs)
        return h

    def entropy(self, kind: str, miller_madow: bool = False) -> float:
        if kind == "conditional":
            return self.conditional(miller_madow)
        if kind == "shannon":
            return self.shannon(miller_madow)
        raise ValueError(f"unknown entropy {kind!r}; use conditional or shannon")


# -- packing ------------------------------------------------------------------------------------------
class DomainPacker:
    """Concatenates each domain's tokens and cuts them into rows of ``row_len`` tokens."""

    def __init__(self, num_domains: int, row_len: int, flush_tokens: int = 1 << 20):
        self.row_len = row_len
        self.flush_tokens = max(row_len, flush_tokens)
        self.parts: list[list[np.ndarray]] = [[] for _ in range(num_domains)]
        self.buffered = np.zeros(num_domains, dtype=np.int64)

    def add(self, domain: int, tokens: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        if tokens.size:
            self.parts[domain].append(tokens)
            self.buffered[domain] += tokens.size
        if self.buffered[domain] >= self.flush_tokens:
            yield from self._cut(domain)

    def _cut(self, domain: int) -> Iterator[tuple[int, np.ndarray]]:
        if self.buffered[domain] < self.row_len:
            return
        cat = np.concatenate(self.parts[domain])
        n = cat.size // self.row_len
        yield domain, cat[: n * self.row_len].reshape(n, self.row_len)
        rest = cat[n * self.row_len:]
        self.parts[domain] = [rest] if rest.size else []
        self.buffered[domain] = rest.size

    def finish(self) -> Iterator[tuple[int, np.ndarray]]:
        for d in range(len(self.parts)):
            yield from self._cut(d)

    def leftover(self) -> np.ndarray:
        return self.buffered.copy()


# -- the source table ---------------------------------------------------------------------------------
def _local_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in LOCAL_BUILDERS and not p.name.startswith("."))
    return files


def open_source(source: str, split: str = "train", subset: str | None = None, cache_dir: str | Path | None = None):
    """The table ``source`` names, as a ``datasets.Dataset`` (see the module docstring)."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir() and ((path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
                              or (path / "state.json").is_file()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise UserError(f"{source} has splits {', '.join(ds)}; pass split= one of them")
                ds = ds[split]
            return ds
        files = _local_files(path)
        kinds = {LOCAL_BUILDERS[f.suffix] for f in files}
        if not files or len(kinds) != 1:
            found = ", ".join(sorted(kinds)) or "no data files"
            raise UserError(f"source {source} holds {found}; give one file or a folder of "
                            f"{'/'.join(sorted(LOCAL_BUILDERS))} files of one kind")
        try:
            return datasets.load_dataset(kinds.pop(), data_files=[str(f) for f in files], split="train",
                                         cache_dir=None if cache_dir is None else str(cache_dir))
        except Exception as e:  # a malformed file: one line naming it
            raise UserError(f"cannot read {source} with datasets: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if "/" in source and not source.startswith((".", "/")) and source.count("/") == 1:
        try:
            return datasets.load_dataset(source, subset, split=split)
        except Exception as e:
            raise UserError(f"cannot load the Hub dataset {source!r} (split {split!r}) through the datasets cache: "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    raise UserError(f"source {source!r} is neither a local file or folder nor a Hub dataset name (owner/name)")


def _source_stamp(source: str) -> list[Any]:
    path = Path(source).expanduser()
    if not path.exists():
        return [source]
    files = _local_files(path) if path.is_file() or not (path / "state.json").exists() else sorted(path.rglob("*"))
    return [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files if f.is_file()]


def tokenizer_digest(tokenizer: Any) -> str:
    """A content hash of a tokenizer (its full JSON for fast tokenizers)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(
        {"vocab": sorted(tokenizer.get_vocab().items()), "class": type(tokenizer).__name__})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- the prepared corpus ------------------------------------------------------------------------------
@dataclass
class LabelledCorpus:
    root: Path
    meta: dict[str, Any]

    @property
    def prefix(self) -> Path:
        return self.root / ROWS

    @property
    def names(self) -> list[str]:
        return list(self.meta["names"])

    @property
    def num_rows(self) -> int:
        return int(self.meta["num_rows"])

    @property
    def row_len(self) -> int:
        return int(self.meta["seq_len"]) + 1

    def labels(self) -> np.ndarray:
        return np.load(self.root / LABELS, mmap_mode="r")

    def entropy(self, kind: str) -> dict[str, float]:
        return dict(self.meta["entropy"][kind])

    def token_rows(self, batch_size: int) -> TokenRows:
        return TokenRows(self.prefix, batch_size, self.row_len - 1)

    def describe(self) -> dict[str, Any]:
        keep = ("source", "split", "subset", "domain_column", "text_column", "token_column", "tokenizer", "key",
                "num_rows", "rows", "documents", "tokens", "dropped_tokens", "max_token", "append_eos")
        return {"path": str(self.root), **{k: self.meta.get(k) for k in keep}}


def load_corpus(root: Path) -> LabelledCorpus | None:
    meta_path = Path(root) / META
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        return None
    return LabelledCorpus(Path(root), meta)


def _domain_ids(table: Any, column: str, value_set: Any) -> np.ndarray:
    import pyarrow.compute as pc

    ids = pc.index_in(table.column(column), value_set=value_set)
    if ids.null_count:
        raise UserError(f"the domain column {column!r} has empty (null) values; label every row or drop those")
    return ids.to_numpy(zero_copy_only=False).astype(np.int64)


def _tokens_of_batch(table: Any, text_column: str | None, token_column: str | None, tokenizer: Any,
                     eos: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(flat token ids of the batch's documents in order, tokens per document)."""
    import pyarrow.compute as pc

    if token_column is not None:
        col = table.column(token_column)
        lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
        lengths = np.nan_to_num(lengths.astype(np.float64)).astype(np.int64)  # a null list: no tokens
        flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        return flat, lengths
    texts = [t if t is not None else "" for t in table.column(text_column).to_pylist()]
    # the fast tokenizer's own batch encoder without offsets: the same ids as tokenizer(texts), less work
    encode = getattr(getattr(tokenizer, "backend_tokenizer", None), "encode_batch_fast", None)
    if encode is not None:
        ids = [e.ids for e in encode(texts, add_special_tokens=False)]
    else:
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
    if eos is not None:  # --append-eod: one end-of-text token after every document
        flat = np.insert(flat, np.cumsum(lengths), eos)
        lengths = lengths + 1
    return flat, lengths


def prepare_labelled(
    source: str | Any,
    *,
    domain_column: str,
    seq_len: int,
    cache_root: str | Path,
    text_column: str | None = None,
    token_column: str | None = None,
    tokenizer: Any = None,
    split: str = "train",
    subset: str | None = None,
    batch_docs: int = 4096,
    progress: bool = True,
) -> LabelledCorpus:
    """The packed, labelled corpus of ``source`` (a path or Hub name, or a ``datasets.Dataset``),
    read from the cache when it was prepared before."""
    if (text_column is None) == (token_column is None):
        raise UserError("a labelled corpus needs exactly one of text_column= (tokenized with the parent's tokenizer) "
                        "or token_column= (token ids taken as they are)")
    if text_column is not None and tokenizer is None:
        raise UserError(f"text_column={text_column} needs a tokenizer, and the parent run declares none (the toy has "
                        "no tokenizer); give token_column= or tokenizer=PATH")
    cache_root = Path(cache_root)
    ds = source if not isinstance(source, (str, Path)) else open_source(str(source), split, subset,
                                                                        cache_root / "datasets")
    columns = list(ds.column_names)
    for role, col in (("domain_column", domain_column), ("text_column", text_column), ("token_column", token_column)):
        if col is not None and col not in columns:
            raise UserError(f"{role}={col}: {source if isinstance(source, str) else 'the table'} has columns "
                            f"{', '.join(columns)}")
    eos = None
    tok_id = None
    if text_column is not None:
        eos = getattr(tokenizer, "eos_token_id", None)
        tok_id = {"name": getattr(tokenizer, "name_or_path", ""), "digest": tokenizer_digest(tokenizer)}
    key_fields = {
        "format": FORMAT, "fingerprint": getattr(ds, "_fingerprint", None), "num_rows": len(ds),
        "stamp": _source_stamp(str(source)) if isinstance(source, (str, Path)) else None,
        "split": split, "subset": subset, "domain_column": domain_column, "text_column": text_column,
        "token_column": token_column, "tokenizer": tok_id, "seq_len": int(seq_len), "append_eos": eos is not None,
    }
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True, default=str).encode()).hexdigest()[:20]
    root = cache_root / key
    found = load_corpus(root)
    if found is not None:
        return found

    from filelock import FileLock

    cache_root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_root / f".{key}.lock")):
        found = load_corpus(root)  # another process prepared it while this one waited
        if found is not None:
            return found
        return _build(ds, root, key, key_fields, source, domain_column, text_column, token_column, tokenizer, eos,
                      int(seq_len), batch_docs, progress)


def _build(ds: Any, root: Path, key: str, key_fields: dict[str, Any], source: Any, domain_column: str,
           text_column: str | None, token_column: str | None, tokenizer: Any, eos: int | None, seq_len: int,
           batch_docs: int, progress: bool) -> LabelledCorpus:
    import pyarrow as pa
    from tqdm.auto import tqdm

    values = sorted(ds.unique(domain_column), key=lambda v: (v is None, str(v)))
    if not values or values[-1] is None:
        raise UserError(f"the domain column {domain_column!r} has empty (null) values; label every row or drop those")
    names = [str(v) for v in values]
    value_set = pa.array(values, type=ds.features.arrow_schema.field(domain_column).type)
    row_len = seq_len + 1
    arrow = ds.with_format("arrow")

    max_token = _max_token(arrow, token_column, batch_docs) if token_column is not None else len(tokenizer) - 1
    dtype = np.uint16 if max_token < 2 ** 16 else np.int32
    packer = DomainPacker(len(names), row_len)
    counts = [EntropyCounts() for _ in names]
    labels: list[np.ndarray] = []
    documents = np.zeros(len(names), dtype=np.int64)
    doc_tokens = np.zeros(len(names), dtype=np.int64)

    def emit(pairs: Iterator[tuple[int, np.ndarray]]) -> Iterator[np.ndarray]:
        for d, block in pairs:
            labels.append(np.full(block.shape[0], d, dtype=np.int32))
            counts[d].add(block)
            yield block

    def blocks() -> Iterator[np.ndarray]:
        bar = tqdm(total=len(ds), desc="bimix corpus", unit="doc", disable=not progress)
        for table in arrow.iter(batch_size=batch_docs):
            dom = _domain_ids(table, domain_column, value_set)
            flat, lengths = _tokens_of_batch(table, text_column, token_column, tokenizer, eos)
            if flat.size and (flat.min() < 0 or flat.max() > max_token):
                raise UserError(f"token ids {int(flat.min())}..{int(flat.max())} in {token_column or text_column} "
                                f"exceed 0..{max_token}")
            np.add.at(documents, dom, 1)
            np.add.at(doc_tokens, dom, lengths)
            token_dom = np.repeat(dom, lengths)
            for d in np.unique(dom):
                yield from emit(packer.add(int(d), flat[token_dom == d].astype(dtype)))
            bar.update(table.num_rows)
        yield from emit(packer.finish())
        bar.close()

    with atomic_dir(root) as tmp:
        write_mmidx(tmp / ROWS, blocks(), dtype=dtype)
        all_labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int32)
        np.save(tmp / LABELS, all_labels)
        rows = np.bincount(all_labels, minlength=len(names)) if all_labels.size else np.zeros(len(names), np.int64)
        meta = {
            **{k: v for k, v in key_fields.items() if k not in ("stamp",)},
            "key": key,
            "source": str(source) if isinstance(source, (str, Path)) else "<datasets.Dataset>",
            "names": names,
            "num_rows": int(all_labels.size),
            "rows": dict(zip(names, map(int, rows))),
            "documents": dict(zip(names, map(int, documents))),
            "tokens": dict(zip(names, map(int, doc_tokens))),
            "dropped_tokens": dict(zip(names, map(int, packer.leftover()))),
            "max_token": int(max_token),
            "dtype": np.dtype(dtype).name,
            "entropy": {
                kind: {n: c.entropy(kind) for n, c in zip(names, counts)} for kind in ("conditional", "shannon")
            },
            "entropy_counts": {n: {"tokens": int(c.tokens), "pairs": int(c.pairs)} for n, c in zip(names, counts)},
        }
        atomic_write_json(tmp / META, meta)
    return LabelledCorpus(root, meta)


def _max_token(arrow: Any, column: str, batch_docs: int) -> int:
    import pyarrow.compute as pc

    top = -1
    for table in arrow.iter(batch_size=max(batch_docs, 10_000)):
        m = pc.max(pc.list_flatten(table.column(column))).as_py()
        if m is not None:
            top = max(top, int(m))
    if top < 0:
        raise UserError(f"token_column={column} holds no token ids")
    return top


# -- reading parent rows and corpus rows as one index space ---------------------------------------------
class StackedRows:
    """Rows ``[0, P)`` from the parent's data order (``first``, may be None: P = 0), then rows
    ``[P, P + C)`` from a corpus: the engine reads both through one ``rows``/``take`` interface."""

    def __init__(self, first: Any, second: TokenRows):
        self.first = first
        self.second = second
        self.offset = 0 if first is None else int(first.num_rows)
        self.row_len = second.row_len
        if first is not None and getattr(first, "row_len", self.row_len) != self.row_len:
            raise UserError(f"the corpus rows have {self.row_len} tokens but the parent's have {first.row_len}")

    @property
    def num_rows(self) -> int:
        return self.offset + self.second.num_rows

    def rows(self, start: int, stop: int) -> np.ndarray:
        if stop <= self.offset:
            return self.first.rows(start, stop)
        if start >= self.offset:
            return self.second.rows(start - self.offset, stop - self.offset)
        return self.take(np.arange(start, stop))

    def take(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        out = np.empty((idx.size, self.row_len), dtype=np.int64)
        low = idx < self.offset
        if low.any():
            out[low] = self.first.take(idx[low])
        if (~low).any():
            out[~low] = self.second.take(idx[~low] - self.offset)
        return out

