"""BiMix entropy-driven data mixtures (Ge et al., arXiv 2405.14908 §4.2), ``bimix:entropy=…``.

Where the rows come from:

- **A labelled corpus** (``source=PATH_OR_DATASET,domain_column=NAME,text_column=|token_column=…``):
  read with ``datasets`` (local parquet/jsonl/json/arrow/csv, a ``save_to_disk`` folder, or a Hub
  dataset through the datasets cache), tokenized with the parent's tokenizer (``text_column``; an
  end-of-text token after every document, as Pythia's data) or taken as token ids
  (``token_column``, e.g. Amber's ``token_ids`` with ``domain_column=source``), packed *within
  each domain* into rows of seq_len + 1 tokens and cached as an MMIDIDX dataset with one label per
  row (``data_order/labelled.py``; a second branch from it reads the cache). The branch trains on
  these rows instead of the parent's; the parent's data order is not needed (it is used to rebuild
  Adam's moments where it is on disk).
- **The parent's own rows**, when its data order carries per-row labels (``domains.labels``: the
  toy corpus; Amber's ``source`` once stored there): the rows after the branch point (rows ≥ N·B,
  the held-out batches excluded).

Entropies H_i are counted over **each whole domain** (every row of the pool; ``sample_rows=S``
estimates them from S evenly spread rows per domain with the Miller–Madow bias correction
instead): ``conditional`` (CE, the paper's best): H(X_{t+1} | X_t) from the token pairs within rows;
``shannon`` (SE): the unigram entropy; in nats. Proportions r_i = softmax(H)_i (Eqs. 12–13). Every
global batch k ≥ N holds c_i rows of domain i, the integer counts c_i being r·B rounded by largest
remainder (ties to the lower domain id) so that they sum to B. Domain i's rows are read in a fixed
order from a cursor at (k − N)·c_i: the parent's rows in data order, a corpus's in a seeded
permutation. When a domain runs out, ``repeat=epoch`` (default) starts another pass over it in a
new permutation seeded by (seed, domain, pass) and ``metrics.jsonl`` counts it
(``bimix_repeated_rows``: rows of that batch drawn in a repeat pass; ``bimix_epoch.<domain>``: the
pass index, 0 = first); ``repeat=error`` refuses a branch longer than the data, naming the last
step it supports. Within a batch the rows are grouped by domain id (the loss is a mean over the
batch, so the grouping does not change the update).

Differences from the paper: it trains from scratch on its mixture (here a branch switches to it at
step N); its entropies are counted during tokenization per document (here over the packed rows,
which is what the model sees); its VNE entropy (FastText embeddings) is not implemented.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from checkpoints_cache.errors import UserError
from data_order.labelled import EntropyCounts, LabelledCorpus, StackedRows

from .base import BranchContext
from .params import PARENT, DeclaredIntervention, Param
from .weights import is_main_process

SUMMARY = (
    "bimix: the paper's training-free mixture r = softmax(H) over per-domain entropies (conditional = CE, the "
    "paper's best, or shannon), counted over each whole domain, each global batch drawn by domain "
    "deterministically. Rows from a labelled corpus (source=PATH_OR_DATASET,domain_column=…,text_column=|"
    "token_column=…, packed within each domain, cached) or from the parent's labelled rows after N. Differs: "
    "a branch switches to the mixture at N (the paper trains from scratch); a domain that runs out is "
    "reshuffled and repeated (repeat=epoch, counted in metrics.jsonl) or refused (repeat=error)."
)

ENTROPY_CHUNK_ROWS = 4096  # rows read at a time when counting a pool of the parent's rows


def conditional_entropy(rows: np.ndarray) -> float:
    """H(X_{t+1} | X_t) in nats from the bigram counts of each row (pairs never cross rows)."""
    return EntropyCounts().add(np.asarray(rows)).conditional()


def shannon_entropy(rows: np.ndarray) -> float:
    """Unigram entropy in nats over every token of the rows."""
    return EntropyCounts().add(np.asarray(rows)).shannon()


def softmax(values: np.ndarray) -> np.ndarray:
    z = np.exp(values - values.max())
    return z / z.sum()


def largest_remainder(proportions: np.ndarray, total: int) -> np.ndarray:
    """Integer counts summing to ``total``, each floor(r·total) plus one for the largest remainders."""
    exact = np.asarray(proportions, dtype=np.float64) * total
    counts = np.floor(exact).astype(np.int64)
    left = int(total - counts.sum())
    order = np.lexsort((np.arange(len(exact)), -(exact - counts)))  # largest remainder, then lower id
    counts[order[:left]] += 1
    return counts


def sample_positions(n: int, k: int) -> np.ndarray:
    """``min(k, n)`` evenly spread positions in [0, n): deterministic and representative."""
    if n <= k:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


def heldout_start(ctx: BranchContext) -> int | None:
    """The first held-out global batch of the parent's data order, when it declares one (the toy)."""
    traj = ctx.extra.get("parent_trajectory")
    order = getattr(traj, "data_order", None) or ctx.extra.get("data_order") or {}
    span = order.get("heldout_batches")
    return int(span[0]) if span else None


def count_rows(take_rows: Any, rows: np.ndarray, chunk: int = ENTROPY_CHUNK_ROWS, desc: str = "") -> EntropyCounts:
    """Entropy counts over the given rows, read ``chunk`` rows at a time (sorted: reads run forward);
    a progress bar when that takes many reads (a released run's pool: millions of rows)."""
    from tqdm.auto import tqdm

    counts = EntropyCounts()
    ordered = np.sort(np.asarray(rows, dtype=np.int64))
    quiet = ordered.size < 64 * chunk or not is_main_process()
    for i in tqdm(range(0, ordered.size, chunk), desc=f"bimix entropy {desc}", unit="chunk", disable=quiet):
        counts.add(np.asarray(take_rows(ordered[i:i + chunk])))
    return counts


class BiMix(DeclaredIntervention):
    name = "bimix"
    SUMMARY = SUMMARY
    PARAMS = (
        Param("entropy", str, "conditional", "entropy: conditional (CE, the paper's best) or shannon (SE)",
              choices=("conditional", "shannon")),
        Param("sample_rows", int, 0, "0: count every row of each domain; S > 0: estimate from S evenly spread rows "
              "per domain with the Miller-Madow correction", min=0),
        Param("source", str, None, "a labelled corpus to train on: a local parquet/jsonl/arrow file or folder, or a "
              "Hub dataset name (read through the datasets cache); default: the parent's labelled rows"),
        Param("domain_column", str, None, "the corpus column holding each document's domain"),
        Param("text_column", str, None, "a text column, tokenized with the parent's tokenizer (+ end of text)"),
        Param("token_column", str, None, "a column of token ids, taken as they are (e.g. Amber's token_ids)"),
        Param("tokenizer", str, PARENT, "tokenizer for text_column (default: the parent's)"),
        Param("split", str, "train", "the corpus split"),
        Param("subset", str, None, "the Hub dataset's configuration name"),
        Param("repeat", str, "epoch", "when a domain runs out: epoch = reshuffle and repeat it (counted in "
              "metrics.jsonl), error = refuse the branch", choices=("epoch", "error")),
        Param("seed", int, PARENT, "seed of the corpus order and of every repeat's reshuffle (default: the "
              "parent's seed)", min=0),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        p = self.params
        if p["source"] is None:
            extra = [k for k in ("domain_column", "text_column", "token_column", "subset") if p[k] is not None]
            if extra or p["tokenizer"] is not None:
                keys = ", ".join(extra + (["tokenizer"] if p["tokenizer"] is not None else []))
                raise UserError(f"bimix: {keys} describe a labelled corpus; give source=PATH_OR_DATASET with them")
        else:
            if p["domain_column"] is None:
                raise UserError("bimix source=… needs domain_column=NAME (the column holding each document's domain)")
            if (p["text_column"] is None) == (p["token_column"] is None):
                raise UserError("bimix source=… needs exactly one of text_column=NAME (tokenized with the parent's "
                                "tokenizer) or token_column=NAME (token ids as they are)")
        self.domain_ids: list[int] = []
        self.domain_rows: dict[int, np.ndarray] = {}
        self.entropies: dict[int, float] = {}
        self.proportions: dict[int, float] = {}
        self.counts: dict[int, int] = {}
        self.corpus: LabelledCorpus | None = None
        self.offset = 0  # index of the corpus's first row in the rows the engine reads
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def reads_parent_rows(self) -> bool:
        return self.params["source"] is None

    # -- setup: the pools and the mixture --------------------------------------------------------------
    def setup(self, ctx: BranchContext) -> None:
        super().setup(ctx)
        p = self.params
        if p["seed"] is None:
            p["seed"] = int(ctx.recipe.seed)
        if p["source"] is not None:
            self._setup_corpus(ctx)
        else:
            self._setup_parent_rows(ctx)
        h = np.array([self.entropies[d] for d in self.domain_ids])
        r = softmax(h)
        counts = largest_remainder(r, int(ctx.recipe.batch_size))
        self.proportions = {d: float(x) for d, x in zip(self.domain_ids, r)}
        self.counts = {d: int(c) for d, c in zip(self.domain_ids, counts)}
        if p["repeat"] == "error":
            self.check_supply(ctx.end_step)

    def _setup_parent_rows(self, ctx: BranchContext) -> None:
        if ctx.row_domains is None or ctx.take_rows is None:
            raise UserError(
                "bimix needs rows with domain labels: give a labelled corpus (bimix:source=PATH_OR_DATASET,"
                "domain_column=NAME,text_column=NAME or token_column=NAME), or branch from a run whose data order "
                "carries per-row labels (the toy); this parent's has none"
            )
        labels = np.asarray(ctx.row_domains)
        batch = int(ctx.recipe.batch_size)
        start = ctx.branch_step * batch
        stop = min(len(labels), ctx.num_rows if ctx.num_rows is not None else len(labels))
        heldout = heldout_start(ctx)
        if heldout is not None:  # never train on the batches the comparison evaluates on
            stop = min(stop, heldout * batch)
        after = np.arange(start, stop, dtype=np.int64)
        if after.size == 0:
            raise UserError(f"bimix: the data order has no rows after step {ctx.branch_step} (rows >= {start})")
        after_labels = labels[after]
        self.domain_ids = sorted(int(d) for d in np.unique(after_labels))
        for d in self.domain_ids:
            self.domain_rows[d] = after[after_labels == d]
            self.entropies[d] = self._entropy_of(ctx.take_rows, self.domain_rows[d], self.domain_name(d))

    def _setup_corpus(self, ctx: BranchContext) -> None:
        from checkpoints_cache.hub import branchpoint_home
        from data_order.labelled import prepare_labelled

        p = self.params
        tokenizer = self._tokenizer(ctx) if p["text_column"] is not None else None
        self.corpus = prepare_labelled(
            p["source"], domain_column=p["domain_column"], seq_len=int(ctx.recipe.seq_len),
            cache_root=branchpoint_home() / "bimix", text_column=p["text_column"], token_column=p["token_column"],
            tokenizer=tokenizer, split=p["split"], subset=p["subset"],
        )
        if self.corpus.num_rows == 0:
            raise UserError(f"bimix: {p['source']} gives no row of {ctx.recipe.seq_len + 1} tokens in any domain")
        self.offset = int(ctx.num_rows or 0)
        labels = np.asarray(self.corpus.labels())
        rows = np.arange(labels.size, dtype=np.int64)
        self.domain_ids = sorted(int(d) for d in np.unique(labels))
        exact = self.corpus.entropy(p["entropy"])
        data = self.corpus.token_rows(int(ctx.recipe.batch_size))
        for d in self.domain_ids:
            self.domain_rows[d] = rows[labels == d]
            name = self.corpus.names[d]
            self.entropies[d] = exact[name] if not p["sample_rows"] else self._entropy_of(data.take, self.domain_rows[d],
                                                                                           name)

    def _entropy_of(self, take_rows: Any, rows: np.ndarray, name: str) -> float:
        p = self.params
        if p["sample_rows"]:
            sample = rows[sample_positions(len(rows), p["sample_rows"])]
            return count_rows(take_rows, sample, desc=name).entropy(p["entropy"], miller_madow=True)
        return count_rows(take_rows, rows, desc=name).entropy(p["entropy"])

    def _tokenizer(self, ctx: BranchContext) -> Any:
        """The tokenizer for text_column: tokenizer=, else the parent's checkpoint folder at N, else the
        tokenizer its data order declares; all read from local files only."""
        from transformers import AutoTokenizer

        p = self.params
        tried = []
        candidates = []
        if p["tokenizer"] is not None:
            candidates.append(p["tokenizer"])
        else:
            if ctx.parent_checkpoint is not None:
                try:
                    candidates.append(str(ctx.parent_checkpoint(ctx.branch_step)))
                except UserError:
                    pass
            traj = ctx.extra.get("parent_trajectory")
            declared = ((getattr(traj, "data_order", None) or {}).get("tokenizer")
                        or (ctx.extra.get("data_order") or {}).get("tokenizer"))
            if declared:
                candidates.append(str(declared))
        for c in candidates:
            try:
                return AutoTokenizer.from_pretrained(c, local_files_only=True)
            except Exception as e:  # not a tokenizer folder: try the next candidate
                tried.append(f"{c} ({type(e).__name__})")
        if p["tokenizer"] is not None:
            raise UserError(f"bimix tokenizer={p['tokenizer']}: no tokenizer there ({'; '.join(tried)})")
        raise UserError("bimix text_column=… needs the parent's tokenizer and the parent has none "
                        f"({'; '.join(tried) or 'no tokenizer files, none declared'}); give tokenizer=PATH, or "
                        "token_column= for token ids (the toy has no tokenizer)")

    # -- the draw --------------------------------------------------------------------------------------
    def domain_name(self, d: int) -> str:
        names = self.corpus.names if self.corpus is not None else self.ctx.domain_names
        return names[d] if names is not None and 0 <= d < len(names) else str(d)

    def last_supported_step(self) -> int:
        """The last checkpoint step every domain still has fresh rows for."""
        limits = [len(self.domain_rows[d]) // c for d, c in self.counts.items() if c > 0]
        return self.ctx.branch_step + min(limits)

    def check_supply(self, end_step: int) -> None:
        if end_step > self.last_supported_step():
            short = [
                self.domain_name(d) for d, c in self.counts.items()
                if c > 0 and (end_step - self.ctx.branch_step) * c > len(self.domain_rows[d])
            ]
            raise UserError(
                f"bimix: domain(s) {', '.join(short)} run out of rows after the branch point before step {end_step}; "
                f"this mixture supports branches up to step {self.last_supported_step()} with repeat=error "
                "(repeat=epoch reshuffles and repeats them)"
            )

    def pass_order(self, d: int, epoch: int) -> np.ndarray:
        """Domain ``d``'s rows in the order of pass ``epoch`` (a pure function of seed, domain, pass)."""
        rows = self.domain_rows[d]
        if epoch == 0 and self.corpus is None:
            return rows  # the parent's rows: first in data order
        key = (d, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * max(1, len(self.domain_ids)):
                self._perms.clear()
            rng = np.random.default_rng([int(self.params["seed"]), d, epoch])
            self._perms[key] = rows[rng.permutation(len(rows))]
        return self._perms[key]

    def domain_draw(self, d: int, j: int) -> tuple[np.ndarray, int, int]:
        """(rows, pass index of the last one, rows drawn in a repeat pass) for batch j after N."""
        c, n = self.counts[d], len(self.domain_rows[d])
        lo, hi = j * c, (j + 1) * c
        if self.params["repeat"] == "error" and hi > n:
            raise UserError(
                f"bimix: domain {self.domain_name(d)} runs out of rows at global batch {self.ctx.branch_step + j}; "
                f"this mixture supports branches up to step {self.last_supported_step()} with repeat=error"
            )
        parts = []
        pos = lo
        while pos < hi:
            epoch, i = divmod(pos, n)
            take = min(hi - pos, n - i)
            parts.append(self.pass_order(d, epoch)[i:i + take])
            pos += take
        rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return rows, (hi - 1) // n if c else 0, max(0, hi - max(lo, n))

    def batch_row_indices(self, k: int, default: np.ndarray) -> np.ndarray:
        j = k - self.ctx.branch_step
        if j < 0:
            return default
        parts = [self.domain_draw(d, j)[0] for d in self.domain_ids if self.counts[d] > 0]
        out = (np.concatenate(parts) + self.offset).astype(np.asarray(default).dtype, copy=False)
        if len(out) != len(default):  # counts sum to B by construction; guard a changed batch size
            raise ValueError(f"bimix drew {len(out)} rows for a batch of {len(default)}")
        return out

    def metrics(self, step: int) -> dict[str, Any]:
        j = step - 1 - self.ctx.branch_step
        if j < 0:
            return {}
        row: dict[str, Any] = {"bimix_repeated_rows": 0}
        for d in self.domain_ids:
            if self.counts[d] == 0:
                continue
            _, epoch, repeated = self.domain_draw(d, j)
            row["bimix_repeated_rows"] += repeated
            row[f"bimix_epoch.{self.domain_name(d)}"] = epoch
        return row

    def token_rows(self, parent_rows: Any) -> Any:
        if self.corpus is None:
            return parent_rows
        return StackedRows(parent_rows, self.corpus.token_rows(int(self.ctx.recipe.batch_size)))

    def on_load(self, model: Any, ctx: BranchContext) -> Any:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if self.corpus is not None and vocab is not None and self.corpus.meta["max_token"] >= vocab:
            raise UserError(f"bimix: the corpus holds token id {self.corpus.meta['max_token']} but the model's "
                            f"vocabulary has {vocab} ids; use the parent's tokenizer or ids below {vocab}")
        return model

    def describe(self) -> dict[str, Any]:
        d = super().describe()
        if self.proportions:
            d["params"]["mixture"] = {
                self.domain_name(i): {
                    "entropy": self.entropies[i],
                    "proportion": self.proportions[i],
                    "rows_per_batch": self.counts[i],
                    "rows": int(len(self.domain_rows[i])),
                }
                for i in self.domain_ids
            }
            sample = self.params["sample_rows"]
            d["resolved"] = {
                "entropy_estimate": (f"Miller-Madow corrected, {sample} rows per domain" if sample
                                     else "exact counts over each whole domain"),
                "rows_from": "corpus" if self.corpus is not None else "parent rows after the branch step",
                "last_step_without_repeats": self.last_supported_step(),
            }
            if self.corpus is not None:
                d["resolved"]["corpus"] = self.corpus.describe()
                d["resolved"]["corpus_row_offset"] = self.offset
        return d
