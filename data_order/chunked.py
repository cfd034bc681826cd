"""Runs whose data order is released as chunk files (LLM360 Amber, K2): layout, plan, fetch, rows.

The run card's ``[data_order]`` describes the release as data, so a user card can describe a
scaled-down release of the same shape::

    kind = "amber-chunks"                    # or "k2-chunks"
    repo_id = "LLM360/AmberDatasets"         # + repo_type, revision
    chunk_file = "train/train_{k:03d}.jsonl" # chunk k's file in the repo (str.format with k)
    n_chunks = 360                           # chunks in the release (optional for amber-chunks)
    examples_per_chunk = 1706976             # rows the training code takes from each chunk file
    steps_per_chunk = 762                    # optimizer updates per chunk = the checkpoint interval
    batch_size = 2240                        # rows per global batch; rows hold seq_len + 1 tokens
    seq_len = 2048
    order = "seeded"                         # amber-chunks: "seeded" (default) | "file"; k2-chunks: "sequential"
    seed_base = 11111                        # amber-chunks, order "seeded"
    chunk_order = [[0, 15], [32, 37], ...]   # k2-chunks: the chunk id at each training position
    token_field = "token_ids"                # optional; label_field = "source" (per-row domain labels)
    exactness = "rows-of-chunk exact, order approximate"

**Training positions.** The data a run trained on is a sequence of chunk regions. Position ``q``
holds chunk ``chunk_at(q)`` and ``R`` rows:

- ``amber-chunks``: ``chunk_at(q) = q``; ``R = steps_per_chunk * batch_size`` (amber-train keeps each
  chunk's permutation truncated to whole global batches, llm360.md §3.1). The lines of chunk c, in
  training order: ``seeded`` = the first R entries of ``amber.seeded_permutation(c)``; ``file`` = 0..R-1.
- ``k2-chunks``: ``chunk_at(q) = chunk_order[q]``; ``R = examples_per_chunk`` (the files are read
  back to back, each in its own -- pre-shuffled -- line order, llm360.md §3.3; ``k2.locate_batch``).

Row ``p`` of the training order (global batch ``k`` = rows ``[k*B, (k+1)*B)``, DESIGN.md) is line
``lines(c)[p % R]`` of chunk ``c = chunk_at(p // R)``. Its **global row id** -- what ``batch_rows`` in
metrics.jsonl and eval sets name -- is ``c * examples_per_chunk + line``.

Chunk files are JSON lines without a row index, so they are fetched whole through the HF cache
(``checkpoints_cache.dataset_files``, sha256-verified) and converted once into a token store
(``chunk_store``). This module plans and converts; the bytes move in ``checkpoints_cache``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from .chunk_store import ChunkStore, ensure_store, lookup_store, stores_root, token_dtype
from .mmidx import DataOrderError, NotFetchedError

CHUNK_KINDS = ("amber-chunks", "k2-chunks")
ORDERS = {"amber-chunks": ("seeded", "file"), "k2-chunks": ("sequential",)}
DEFAULT_ORDER = {"amber-chunks": "seeded", "k2-chunks": "sequential"}
ORDER_ALIASES = {"k2-chunks": {"file": "sequential"}}  # K2's files are read in their (pre-shuffled) file order


def is_chunked(order: dict[str, Any] | None) -> bool:
    return bool(order) and order.get("kind") in CHUNK_KINDS


def _int(order: dict[str, Any], key: str, source: str, minimum: int = 1, default: int | None = None) -> int:
    value = order.get(key, default)
    if value is None:
        raise DataOrderError(f"the data_order of {source} lacks {key!r}; a {order.get('kind')} order needs kind, repo_id, "
                             "chunk_file, examples_per_chunk, steps_per_chunk, batch_size, seq_len")
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise DataOrderError(f"[data_order] {key} = {value!r} in {source}: use an integer >= {minimum}")
    return int(value)


class ChunkNotFetchedError(NotFetchedError):
    """Rows of a chunk that is not in the local token store."""

    def __init__(self, message: str, first_row: int, last_row: int):
        self.prefix, self.first_row, self.last_row = "chunk store", first_row, last_row
        DataOrderError.__init__(self, message)


@dataclass(frozen=True)
class ChunkLayout:
    """A chunk release's ``[data_order]`` as checked data, with the step -> rows arithmetic."""

    kind: str
    repo_id: str
    repo_type: str
    revision: str
    chunk_file: str
    examples_per_chunk: int
    steps_per_chunk: int
    batch_size: int
    seq_len: int
    order: str
    n_chunks: int | None = None
    seed_base: int | None = None
    chunk_order: tuple[int, ...] | None = None
    token_field: str = "token_ids"
    label_field: str | None = "source"
    exactness: str = ""
    vocab_size: int | None = None
    source: str = "RUN"  # the run's name, for the commands error messages suggest
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    _lines: dict[int, np.ndarray] = field(default_factory=dict, compare=False, repr=False)

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_order(cls, order: dict[str, Any], source: str = "RUN") -> "ChunkLayout":
        kind = order.get("kind")
        if kind not in CHUNK_KINDS:
            raise DataOrderError(f"{source} has data order of kind {kind!r}, not a chunk release ({', '.join(CHUNK_KINDS)})")
        repo_id = order.get("repo_id")
        if not repo_id:
            raise DataOrderError(f"the data_order of {source} lacks 'repo_id' (the dataset repo holding its chunk files)")
        pattern = str(order.get("chunk_file") or "")
        try:
            if "{k" not in pattern or pattern.format(k=0) == pattern.format(k=1):
                raise ValueError
        except (ValueError, KeyError, IndexError):
            raise DataOrderError(f"[data_order] chunk_file = {pattern!r} in {source}: give the path of chunk k in the "
                                 "repo with a {k} field, e.g. 'train/train_{k:03d}.jsonl'") from None
        e = _int(order, "examples_per_chunk", source)
        s = _int(order, "steps_per_chunk", source)
        b = _int(order, "batch_size", source)
        t = _int(order, "seq_len", source)
        n = _int(order, "n_chunks", source, default=None) if order.get("n_chunks") is not None else None
        want = order.get("order") or DEFAULT_ORDER[kind]
        want = ORDER_ALIASES.get(kind, {}).get(want, want)
        if want not in ORDERS[kind]:
            raise DataOrderError(f"order {want!r} does not apply to {kind} data ({source}); use one of "
                                 f"{', '.join(ORDERS[kind])}")
        seed = None
        chunk_order = None
        if kind == "amber-chunks":
            if s != e // b:
                raise DataOrderError(
                    f"[data_order] steps_per_chunk = {s} in {source} disagrees with examples_per_chunk // batch_size = "
                    f"{e} // {b} = {e // b}: the training code keeps each chunk's permutation cut to whole global batches")
            if want == "seeded":
                seed = _int(order, "seed_base", source, minimum=0)
        else:
            from .k2 import expand_chunk_order

            if order.get("chunk_order") is None:
                raise DataOrderError(f"the data_order of {source} lacks 'chunk_order' (the chunk id at each training "
                                     "position, e.g. [[0, 15], [32, 37], ...])")
            chunk_order = expand_chunk_order(order["chunk_order"], n)
            n = len(chunk_order)
        vocab = order.get("vocab_size")
        return cls(kind=kind, repo_id=str(repo_id), repo_type=str(order.get("repo_type") or "dataset"),
                   revision=str(order.get("revision") or "main"), chunk_file=pattern, examples_per_chunk=e,
                   steps_per_chunk=s, batch_size=b, seq_len=t, order=want, n_chunks=n, seed_base=seed,
                   chunk_order=chunk_order, token_field=str(order.get("token_field") or "token_ids"),
                   label_field=order.get("label_field", "source") or None,
                   exactness=str(order.get("exactness") or ""), vocab_size=int(vocab) if vocab else None,
                   source=source, raw=dict(order))

    def to_dict(self) -> dict[str, Any]:
        """The data order as recorded in a branch's trajectory.json (the card's keys, with the order used)."""
        return {**self.raw, "order": self.order}

    # -- arithmetic --------------------------------------------------------------------------------
    @property
    def row_len(self) -> int:
        return self.seq_len + 1

    @property
    def rows_per_position(self) -> int:
        """R: rows each training position contributes to the training order."""
        return self.steps_per_chunk * self.batch_size if self.kind == "amber-chunks" else self.examples_per_chunk

    @property
    def n_positions(self) -> int | None:
        return self.n_chunks

    @property
    def total_batches(self) -> int | None:
        """Global batches in the whole release (None when the card does not say how many chunks there are)."""
        if self.n_positions is None:
            return None
        return self.n_positions * self.rows_per_position // self.batch_size

    def chunk_at(self, position: int) -> int:
        self._check_position(position)
        return int(self.chunk_order[position]) if self.chunk_order is not None else int(position)

    def position_of(self, chunk: int) -> int:
        if self.chunk_order is not None:
            try:
                return self.chunk_order.index(int(chunk))
            except ValueError:
                raise DataOrderError(f"chunk {chunk} is not in the chunk order (0..{len(self.chunk_order) - 1})") from None
        return int(chunk)

    def _check_position(self, q: int) -> None:
        if q < 0 or (self.n_positions is not None and q >= self.n_positions):
            last = f"0..{self.n_positions - 1}" if self.n_positions else "0, 1, ..."
            raise DataOrderError(f"training position {q} is outside the release's chunks ({last})")

    def filename(self, chunk: int) -> str:
        return self.chunk_file.format(k=int(chunk))

    def positions_of_batches(self, first: int, stop: int) -> range:
        """Training positions holding rows of global batches ``[first, stop)``."""
        if stop <= first:
            return range(0)
        r = self.rows_per_position
        return range(first * self.batch_size // r, ((stop * self.batch_size) - 1) // r + 1)

    def check_batches(self, first: int, stop: int, what: str = "the branch") -> None:
        total = self.total_batches
        if first < 0:
            raise DataOrderError(f"{what} needs batches {first}..{stop - 1}; batches count from 0")
        if total is not None and stop > total:
            raise DataOrderError(f"{what} needs batches {first}..{stop - 1} but the release has {total} global batches "
                                 f"({self.n_positions} chunks); the last one is batch {total - 1}")

    def first_batch_of(self, position: int) -> int:
        """The first global batch with a row in ``position``."""
        return position * self.rows_per_position // self.batch_size

    def needed_lines(self) -> int:
        """Lines a chunk file must hold: seeded -- every index the permutation can draw; else the rows read."""
        return self.examples_per_chunk if self.order == "seeded" or self.kind == "k2-chunks" else self.rows_per_position

    def lines(self, chunk: int) -> np.ndarray:
        """Lines of chunk ``chunk`` in training order (length R)."""
        return self.lines_for([chunk])[int(chunk)]

    def lines_for(self, chunks: Iterable[int]) -> dict[int, np.ndarray]:
        chunks = sorted({int(c) for c in chunks})
        todo = [c for c in chunks if c not in self._lines]
        if todo:
            r = self.rows_per_position
            if self.order == "seeded":
                from .amber import seeded_permutations

                for c, perm in seeded_permutations(todo, self.examples_per_chunk, self.seed_base).items():
                    self._lines[c] = perm[:r]
            else:
                for c in todo:
                    self._lines[c] = np.arange(r, dtype=np.int64)
        return {c: self._lines[c] for c in chunks}

    def map_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(positions, chunks, lines) of rows ``rows`` of the training order."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if rows.size and rows.min() < 0:
            raise DataOrderError(f"row {int(rows.min())} is negative; rows of the training order count from 0")
        q, off = np.divmod(rows, self.rows_per_position)
        chunks = np.empty_like(q)
        lines = np.empty_like(q)
        uq = np.unique(q)
        table = self.lines_for(self.chunk_at(int(p)) for p in uq)
        for p in uq:
            sel = q == p
            c = self.chunk_at(int(p))
            chunks[sel] = c
            lines[sel] = table[c][off[sel]]
        return q, chunks, lines

    def row_ids(self, rows: np.ndarray) -> np.ndarray:
        """Global row ids (chunk * examples_per_chunk + line) of rows of the training order."""
        _, chunks, lines = self.map_rows(rows)
        return chunks * self.examples_per_chunk + lines

    def locate(self, step: int) -> dict[str, int | bool]:
        """Where global batch ``step`` lies: training position, chunk id, its line of the first row, step in chunk."""
        if step < 0:
            raise DataOrderError(f"step {step} is negative; steps and batches count from 0")
        self.check_batches(step, step + 1, f"batch {step}")
        first = step * self.batch_size
        q, off = divmod(first, self.rows_per_position)
        c = self.chunk_at(q)
        return {"step": step, "position": q, "chunk": c, "row": int(self.lines(c)[off]),
                "step_in_chunk": off // self.batch_size,
                "straddles": off + self.batch_size > self.rows_per_position}

    # -- words ------------------------------------------------------------------------------------
    def describe_order(self, chunk: int) -> str:
        r = self.rows_per_position
        if self.order == "seeded":
            return (f"seeded: chunk {chunk} in the permutation a run that never restarted would have drawn "
                    f"(np.random.seed({self.seed_base}), draw {chunk + 1} of np.random.permutation("
                    f"{self.examples_per_chunk}), first {r} kept, step j = entries [{self.batch_size}j, "
                    f"{self.batch_size}(j+1)))")
        if self.kind == "k2-chunks":
            return (f"sequential: {self.filename(chunk)} read in its file order at training position "
                    f"{self.position_of(chunk)} (the chunk order of the card)")
        return f"file: chunk {chunk}'s first {r} lines in file order (the release's subset order, not the training order)"

    def store_bytes(self) -> int:
        """Bytes of one converted chunk: tokens + index (12 B/row) + labels (2 B/row)."""
        item = token_dtype(self.vocab_size).itemsize
        return self.examples_per_chunk * (self.row_len * item + 14)


# -- the rows object the engine reads -------------------------------------------------------------------
class ChunkRows:
    """Training-order rows of a chunk release, served from converted chunk stores (``data_order.source.TokenRows``'s
    interface: global batch k is the run's real batch k, as far as the layout's order is)."""

    def __init__(self, layout: ChunkLayout, stores: dict[int, ChunkStore] | None = None):
        self.layout = layout
        self.stores = dict(stores or {})
        self.batch_size = layout.batch_size
        self.seq_len = layout.seq_len
        self.row_len = layout.row_len
        self.exactness = layout.exactness
        self._positions = sorted(layout.position_of(c) for c in self.stores)
        for c, st in self.stores.items():
            if st.row_len != self.row_len:
                raise DataOrderError(f"the token store of {layout.filename(c)} has rows of {st.row_len} tokens but the "
                                     f"card expects {self.row_len} (seq_len {self.seq_len} + 1)")
        self._domains: tuple[np.ndarray, list[str]] | None = None

    @property
    def dtype(self) -> np.dtype:
        if self.stores:
            return next(iter(self.stores.values())).dataset.dtype
        return token_dtype(self.layout.vocab_size)

    @property
    def num_batches(self) -> int:
        """Global batches up to the end of the last chunk held (earlier chunks may be absent: ``check_fetched``)."""
        if not self._positions:
            return 0
        return (self._positions[-1] + 1) * self.layout.rows_per_position // self.batch_size

    @property
    def num_rows(self) -> int:
        return self.num_batches * self.batch_size

    def can_serve(self, first_batch: int, stop_batch: int) -> bool:
        """Whether the release holds batches [first, stop) (fetched or not): a plan may fetch them."""
        total = self.layout.total_batches
        return first_batch >= 0 and (total is None or stop_batch <= total)

    def missing_chunks(self, first_batch: int, stop_batch: int) -> list[int]:
        return [self.layout.chunk_at(q) for q in self.layout.positions_of_batches(first_batch, stop_batch)
                if self.layout.chunk_at(q) not in self.stores]

    def check_fetched(self, first_batch: int, stop_batch: int) -> None:
        missing = self.missing_chunks(first_batch, stop_batch)
        if missing:
            files = ", ".join(self.layout.filename(c) for c in missing[:3]) + (" ..." if len(missing) > 3 else "")
            raise ChunkNotFetchedError(
                f"batches {first_batch}..{stop_batch - 1} need chunk(s) {', '.join(map(str, missing[:3]))} ({files}), "
                f"which are not in the local token store; {fetch_hint(self.layout, self.layout.position_of(missing[0]))}",
                first_batch * self.batch_size, stop_batch * self.batch_size - 1)

    def batch_range(self, k: int) -> range:
        self.layout.check_batches(k, k + 1, f"batch {k}")
        self.check_fetched(k, k + 1)
        return range(k * self.batch_size, (k + 1) * self.batch_size)

    def batch(self, k: int) -> np.ndarray:
        r = self.batch_range(k)
        return self.rows(r.start, r.stop)

    def rows(self, start: int, stop: int) -> np.ndarray:
        return self.take(np.arange(start, stop, dtype=np.int64))

    def take(self, indices) -> np.ndarray:
        """Rows of the training order at ``indices`` (in that order) as ``[len, seq_len + 1]``."""
        q, chunks, lines = self.layout.map_rows(indices)
        out = np.empty((len(q), self.row_len), dtype=self.dtype)
        for c in np.unique(chunks):
            store = self.stores.get(int(c))
            sel = chunks == c
            if store is None:
                first = int(np.asarray(indices).reshape(-1)[sel][0])
                self.check_fetched(first // self.batch_size, first // self.batch_size + 1)
            out[sel] = store.take(lines[sel])
        return out

    def row_ids(self, rows) -> np.ndarray:
        return self.layout.row_ids(rows)

    def _build_domains(self) -> tuple[np.ndarray, list[str]]:
        # calloc'd zeros: pages of chunks not held are never touched, so this costs memory only for held chunks.
        labels = np.zeros(self.num_rows, dtype=np.int16)
        index: dict[str, int] = {}  # label name -> id over all held chunks, in order of first appearance
        r = self.layout.rows_per_position
        for q in self._positions:
            c = self.layout.chunk_at(q)
            store = self.stores[c]
            ids = np.array([index.setdefault(n, len(index)) for n in store.label_names], dtype=np.int16)
            lo, hi = q * r, min((q + 1) * r, self.num_rows)
            labels[lo:hi] = ids[np.asarray(store.labels)[self.layout.lines(c)[: hi - lo]]]
        return labels, list(index)

    @property
    def row_domains(self) -> np.ndarray:
        """One domain label per row of the training order (the chunk lines' ``label_field``), for BiMix."""
        if self._domains is None:
            self._domains = self._build_domains()
        return self._domains[0]

    @property
    def domain_names(self) -> list[str]:
        if self._domains is None:
            self._domains = self._build_domains()
        return self._domains[1]

    def describe_row(self, row: int) -> str:
        _, chunks, lines = self.layout.map_rows(np.array([row]))
        return f"row {int(self.row_ids(np.array([row]))[0])} (chunk {int(chunks[0])} line {int(lines[0])})"

    def __repr__(self) -> str:
        return f"ChunkRows({self.layout.repo_id}, chunks {sorted(self.stores)}, order={self.layout.order})"


def fetch_hint(layout: ChunkLayout, position: int) -> str:
    """What to run to get the chunk at ``position``: ``fetch --step S --data-steps 1`` with S the checkpoint that
    ends the previous position (its next batch lies in this one)."""
    if position == 0:
        return "a `branchpoint branch` that needs it fetches it"
    return (f"`branchpoint branch` fetches it, or run `branchpoint fetch {layout.source} --step "
            f"{layout.first_batch_of(position)} --data-steps 1`")


# -- plan and fetch -----------------------------------------------------------------------------------
@dataclass
class ChunkNeed:
    """One chunk file a task needs, what it is needed for, and what is already on this machine."""

    chunk: int
    position: int
    filename: str
    purposes: dict[str, tuple[int, int]]  # purpose -> batches [first, stop) it serves
    remote: Any = None  # checkpoints_cache.dataset_files.RemoteFile (None offline)
    store: ChunkStore | None = None  # already converted
    cached: bool = False  # the JSONL is in the HF cache

    def line(self, layout: ChunkLayout) -> str:
        from checkpoints_cache.fetch import human

        why = "; ".join(f"{p} batches {a}..{b - 1}" for p, (a, b) in self.purposes.items())
        size = human(self.remote.size) if self.remote is not None else "size unknown offline"
        if self.store is not None:
            state = f"already converted ({self.store.folder}); nothing to fetch"
        elif self.cached:
            state = f"in the HF cache; converting it writes a token store of ~{human(layout.store_bytes())}"
        else:
            state = (f"to fetch whole into the HF cache (sha256-verified), then converted once to a token store of "
                     f"~{human(layout.store_bytes())}")
        return (f"data: {layout.repo_id} {self.filename} (chunk {self.chunk}, training position {self.position}; "
                f"{why}): {size}, {state}")


def plan_chunks(layout: ChunkLayout, spans: dict[str, tuple[int, int]], *, endpoint: str | None = None,
                root: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None) -> list[ChunkNeed]:
    """The chunk files behind ``spans`` (purpose -> global batches [first, stop)), in training order, with their
    Hub size and hash (when online) and whether they are already cached or converted. Moves no data."""
    from checkpoints_cache import hub

    needs: dict[int, ChunkNeed] = {}
    for purpose, (a, b) in spans.items():
        if b <= a:
            continue
        layout.check_batches(a, b, f"{purpose}")
        for q in layout.positions_of_batches(a, b):
            c = layout.chunk_at(q)
            lo = max(a, layout.first_batch_of(q))
            hi = min(b, ((q + 1) * layout.rows_per_position - 1) // layout.batch_size + 1)
            need = needs.setdefault(c, ChunkNeed(c, q, layout.filename(c), {}))
            need.purposes[purpose] = (lo, hi)
    out = sorted(needs.values(), key=lambda n: n.position)
    if not out:
        return out
    if hub.is_offline():
        for n in out:
            n.store = lookup_store(layout.repo_id, n.filename, layout.revision, repo_type=layout.repo_type, root=root)
        return out
    from checkpoints_cache.dataset_files import cached_path, describe_file

    commit = hub.resolve_commit(layout.repo_id, layout.revision, repo_type=layout.repo_type, endpoint=endpoint)
    for n in out:
        n.remote = describe_file(layout.repo_id, n.filename, revision=layout.revision, repo_type=layout.repo_type,
                                 endpoint=endpoint, commit=commit)
        n.store = lookup_store(layout.repo_id, n.filename, layout.revision, key=n.remote.key,
                               repo_type=layout.repo_type, root=root)
        n.cached = cached_path(n.remote, cache_dir) is not None
    return out


def ensure_chunks(layout: ChunkLayout, needs: list[ChunkNeed], *, endpoint: str | None = None,
                  cache_dir: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                  progress: bool = True) -> dict[int, ChunkStore]:
    """Fetch (whole, verified) and convert (once) the chunks of ``needs``; return their stores by chunk id."""
    from checkpoints_cache import hub
    from checkpoints_cache.dataset_files import check_free, fetch_file
    from checkpoints_cache.fetch import human

    stores: dict[int, ChunkStore] = {}
    for n in needs:
        if n.store is not None:
            print(f"data: {n.filename}: reusing the token store {n.store.folder}", file=sys.stderr)
            stores[n.chunk] = n.store
        elif n.remote is None:
            raise DataOrderError(
                f"{layout.repo_id} {n.filename} (chunk {n.chunk}) is not in the local token store and the Hub is off "
                f"(HF_HUB_OFFLINE=1); run the same command with network access once"
                if hub.is_offline() else f"{n.filename} was not planned with the Hub; plan again online")
        else:
            path = fetch_file(n.remote, endpoint=endpoint, cache_dir=cache_dir, progress=progress)
            check_free(stores_root(layout.repo_id, layout.repo_type, root), layout.store_bytes(),
                       f"the token store of {n.filename}")
            store, converted = ensure_store(
                path, repo_id=layout.repo_id, filename=n.filename, key=n.remote.key, revision=layout.revision,
                commit=n.remote.commit, repo_type=layout.repo_type, row_len=layout.row_len,
                token_field=layout.token_field, label_field=layout.label_field, vocab_size=layout.vocab_size,
                expected_rows=layout.examples_per_chunk, root=root, progress=progress)
            verb = "converted" if converted else "reusing"
            print(f"data: {n.filename}: {verb} the token store {store.folder} ({store.rows} rows, "
                  f"{human(store.nbytes)})", file=sys.stderr)
            stores[n.chunk] = store
        _check_lines(layout, n.chunk, stores[n.chunk])
    return stores


def _check_lines(layout: ChunkLayout, chunk: int, store: ChunkStore) -> None:
    need = layout.needed_lines()
    name = layout.filename(chunk)
    if store.rows < need:
        why = ("the seeded permutation draws line indices up to examples_per_chunk - 1" if layout.order == "seeded"
               else f"the {layout.rows_per_position} rows of its training position")
        raise DataOrderError(f"{name} has {store.rows} rows, fewer than the {need} the card's [data_order] needs ({why}); "
                             "is the chunk truncated, or examples_per_chunk wrong?")
    if layout.kind == "k2-chunks" and store.rows != layout.examples_per_chunk:
        raise DataOrderError(
            f"{name} has {store.rows} rows but the card's examples_per_chunk is {layout.examples_per_chunk}: the "
            "sequential step mapping assumes every chunk holds exactly that many (llm360.md §3.3, unverified)")


def open_chunk_rows(order: dict[str, Any], spans: dict[str, tuple[int, int]], *, fetch: bool = True,
                    endpoint: str | None = None, cache_dir: str | os.PathLike | None = None,
                    root: str | os.PathLike | None = None, progress: bool = True, source: str = "RUN") -> ChunkRows:
    """Rows for ``spans`` of a chunk release: fetched and converted when ``fetch``, else what is local already."""
    layout = ChunkLayout.from_order(order, source)
    if fetch:
        needs = plan_chunks(layout, spans, endpoint=endpoint, root=root, cache_dir=cache_dir)
        return ChunkRows(layout, ensure_chunks(layout, needs, endpoint=endpoint, cache_dir=cache_dir, root=root,
                                               progress=progress))
    return ChunkRows(layout, local_stores(layout, spans, root=root))


def local_stores(layout: ChunkLayout, spans: dict[str, tuple[int, int]],
                 root: str | os.PathLike | None = None) -> dict[int, ChunkStore]:
    """The converted stores of the chunks behind ``spans`` that this machine holds (no network)."""
    out: dict[int, ChunkStore] = {}
    for a, b in spans.values():
        for q in layout.positions_of_batches(a, b):
            c = layout.chunk_at(q)
            store = lookup_store(layout.repo_id, layout.filename(c), layout.revision, repo_type=layout.repo_type, root=root)
            if store is not None:
                _check_lines(layout, c, store)
                out[c] = store
    return out
