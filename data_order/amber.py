"""LLM360 Amber: checkpoint ``ckpt_k`` <-> data chunk ``train_k.jsonl`` <-> steps ``[762k, 762(k+1))``.

Facts (reference/llm360.md §1.1 and §3.1, from ``amber-train/main.py`` + ``run.sh`` @64bc595):
- 360 chunks ``train/train_000.jsonl`` .. ``train_359.jsonl`` in ``LLM360/AmberDatasets``; each
  record is ``{"token_ids": [2049 ints], "source": ...}``.
- Chunk ``k`` is trained entirely, then ``ckpt_k`` is saved: 762 optimizer steps of 2240 rows per
  chunk, so ``ckpt_k`` holds the weights after ``(k+1)*762`` steps (``ckpt_000`` is *not* step 0).
- **The order of rows within a chunk is not recoverable from the release**: the files are in
  subset order, unshuffled, and training drew a NumPy permutation whose seed depends on the
  run's unpublished restart history. Only the chunk <-> checkpoint mapping is exact. Every
  reader here says so (flag, warning, and the text any CLI prints).

Step numbers follow branchpoint's semantics (``steps.py``): batch ``s`` is trained by the update
that produces step ``s+1``, and lives in chunk ``s // 762``.

The seeded order (``seeded_permutation``, used by ``data_order.chunked`` for ``order = "seeded"``)
is the one a run that never restarted would have drawn: amber-train ``main.py`` @64bc595 calls
``fabric.seed_everything(11111 + last_ckpt_idx + 1)`` once per process (last_ckpt_idx = -1 on a
fresh start: ``np.random.seed(11111)``), then ``main_utils.load_jsonl_examples`` draws one
``np.random.permutation(TRAIN_EXAMPLES_PER_CHUNK)`` per chunk, nothing else touching NumPy's RNG;
it keeps the first ``n // 2240 * 2240`` entries, and step j of the chunk trains on entries
``[2240 j, 2240 (j+1))`` (the ranks' ``perm[r::world]`` slices of 10 rows each, joined). The set of
rows of a chunk is exact either way; the order is approximate (the restart history is unpublished).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .mmidx import DataOrderError
from .steps import _check_step

N_CHUNKS = 360
STEPS_PER_CHUNK = 762  # floor(1,706,976 / 2240) (llm360.md §3.1)
ROWS_PER_STEP = 2240  # 56 nodes x 4 GPUs x 10 per device, accumulate 1 (run.sh @64bc595)
SEQ_LEN = 2048
ROW_LEN = SEQ_LEN + 1  # records carry 2049 tokens: inputs [:-1], labels [1:]
TRAIN_EXAMPLES_PER_CHUNK = 1_706_976
SEED_BASE = 11111  # RANDOM_SEED in amber-train main.py
TOTAL_STEPS = N_CHUNKS * STEPS_PER_CHUNK  # 274,320
WITHIN_CHUNK_ORDER_RECOVERABLE = False
DATASET_REPO = "LLM360/AmberDatasets"
MODEL_REPO = "LLM360/Amber"

ORDER_NOT_RECOVERABLE = (
    "LLM360 Amber: the order of rows within a chunk is NOT recoverable from the release (training shuffled each "
    "chunk with a seed that depends on its unpublished restart history; llm360.md §3.1); only the chunk <-> "
    "checkpoint mapping is exact"
)

_CHUNK_RE = re.compile(r"train_(\d+)\.jsonl$")
_REVISION_RE = re.compile(r"^ckpt_(\d+)$")


class AmberOrderWarning(UserWarning):
    """Rows were read from an Amber chunk whose within-chunk training order is unknown."""


def _check_chunk(k: int) -> None:
    if int(k) != k or not (0 <= k < N_CHUNKS):
        raise DataOrderError(f"Amber chunk/checkpoint {k} does not exist; use 0..{N_CHUNKS - 1} (ckpt_000 .. ckpt_359)")


def seeded_permutation(chunk: int, examples_per_chunk: int = TRAIN_EXAMPLES_PER_CHUNK,
                       seed_base: int = SEED_BASE) -> np.ndarray:
    """Chunk ``chunk``'s permutation of ``range(examples_per_chunk)`` had the run never restarted: the
    ``chunk + 1``-th ``np.random.permutation(examples_per_chunk)`` after ``np.random.seed(seed_base)``."""
    return seeded_permutations([chunk], examples_per_chunk, seed_base)[chunk]


def seeded_permutations(chunks, examples_per_chunk: int = TRAIN_EXAMPLES_PER_CHUNK,
                        seed_base: int = SEED_BASE) -> dict[int, np.ndarray]:
    """``seeded_permutation`` for several chunks in one pass over the draws (each draw depends on all
    before it, so chunk k costs k + 1 draws: ~0.1-0.2 s each at Amber's size on one CPU core).

    Drawn from a private ``RandomState`` (the generator ``np.random.seed`` seeds), so the caller's
    global RNG is untouched.
    """
    wanted = sorted({int(c) for c in chunks})
    for c in wanted:
        if c < 0:
            raise DataOrderError(f"chunk {c} is not a chunk index (0, 1, ...)")
    if int(examples_per_chunk) != examples_per_chunk or examples_per_chunk < 1:
        raise DataOrderError(f"examples_per_chunk {examples_per_chunk} must be a positive number of rows")
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    rng = np.random.RandomState(int(seed_base))
    for draw in range(wanted[-1] + 1):
        perm = rng.permutation(int(examples_per_chunk))
        if draw in wanted:
            out[draw] = perm
    return out


def revision_name(k: int) -> str:
    """HF branch of checkpoint ``k``: ``ckpt_007`` (zero-padded to 3, as Analysis360 builds it)."""
    _check_chunk(k)
    return f"ckpt_{k:03d}"


def parse_revision(name: str) -> int:
    m = _REVISION_RE.match(name)
    if not m:
        raise DataOrderError(f"{name!r} is not an Amber revision; Amber branches are ckpt_000 .. ckpt_359")
    k = int(m.group(1))
    _check_chunk(k)
    return k


def chunk_file(k: int) -> str:
    """Path of chunk ``k`` inside the ``LLM360/AmberDatasets`` repo."""
    _check_chunk(k)
    return f"train/train_{k:03d}.jsonl"


def checkpoint_step(k: int) -> int:
    """Optimizer steps behind ``ckpt_k``: ``(k+1) * 762``."""
    _check_chunk(k)
    return (k + 1) * STEPS_PER_CHUNK


def chunk_steps(k: int) -> range:
    """The batches (0-based steps) trained on chunk ``k``: ``[762k, 762(k+1))``; they lead to ``ckpt_k``."""
    _check_chunk(k)
    return range(k * STEPS_PER_CHUNK, (k + 1) * STEPS_PER_CHUNK)


def chunk_of_batch(step: int) -> int:
    """The chunk holding batch ``step`` (the batch a branch from step ``step`` trains on first)."""
    _check_step("step", step)
    if step >= TOTAL_STEPS:
        raise DataOrderError(f"step {step} is beyond Amber's {TOTAL_STEPS} steps; the last batch is step {TOTAL_STEPS - 1}")
    return step // STEPS_PER_CHUNK


def checkpoint_at_step(step: int) -> int | None:
    """``k`` such that ``ckpt_k`` holds the weights after ``step`` updates, or None if no checkpoint does."""
    _check_step("step", step)
    k, rem = divmod(step, STEPS_PER_CHUNK)
    if rem or k == 0 or k > N_CHUNKS:
        return None
    return k - 1


def chunk_index_of(path: str | os.PathLike) -> int:
    m = _CHUNK_RE.search(Path(path).name)
    if not m:
        raise DataOrderError(f"cannot tell the chunk index of {path}; Amber chunks are named train_KKK.jsonl (or pass chunk_index=)")
    return int(m.group(1))


@dataclass(frozen=True)
class AmberStepRows:
    """The rows of an Amber chunk that belong to one step, *as far as the release allows*.

    ``tokens`` are the file's lines ``file_rows`` (file order). Training used the same chunk but
    an unknown permutation of it, so these are the right *set of candidates* (the chunk) and a
    stand-in of the right shape, not the exact batch: ``order_recoverable`` is always False.
    """

    tokens: np.ndarray  # [rows_per_step, 2049]
    chunk: int
    step: int
    step_in_chunk: int
    file_rows: range
    order_recoverable: bool = WITHIN_CHUNK_ORDER_RECOVERABLE
    warning: str = ORDER_NOT_RECOVERABLE

    @property
    def exactness(self) -> str:
        return "chunk-exact, order within chunk unknown"


def load_chunk(path: str | os.PathLike, cache_dir: str | os.PathLike | None = None):
    """An Amber chunk as a memory-mapped Arrow ``datasets.Dataset`` (converted once into ``cache_dir``)."""
    path = Path(path)
    if not path.is_file():
        raise DataOrderError(f"Amber chunk {path} does not exist; fetch {DATASET_REPO} {chunk_file(chunk_index_of(path))} first")
    import datasets  # heavy: only when a chunk is read

    ds = datasets.load_dataset(
        "json", data_files=str(path), split="train", cache_dir=None if cache_dir is None else str(cache_dir)
    )
    if "token_ids" not in ds.column_names:
        raise DataOrderError(f"{path} has columns {ds.column_names}, no 'token_ids'; is it an AmberDatasets chunk?")
    return ds


def read_amber_step(
    chunk_path: str | os.PathLike,
    step: int,
    *,
    chunk_index: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    rows_per_step: int = ROWS_PER_STEP,
    steps_per_chunk: int = STEPS_PER_CHUNK,
    row_len: int = ROW_LEN,
    warn: bool = True,
) -> AmberStepRows:
    """Rows of chunk ``train_k.jsonl`` for global step ``step`` (which must lie in ``chunk_steps(k)``).

    Returns lines ``[j*2240, (j+1)*2240)`` of the file for the ``j``-th step of the chunk, flagged
    ``order_recoverable=False`` (and warned about unless ``warn=False``): see the module docstring.
    ``rows_per_step`` / ``steps_per_chunk`` exist so tests can use tiny generated chunks.
    """
    _check_step("step", step)
    k = chunk_index_of(chunk_path) if chunk_index is None else int(chunk_index)
    first = k * steps_per_chunk
    if not (first <= step < first + steps_per_chunk):
        raise DataOrderError(
            f"step {step} is not in chunk {k}, which holds steps {first}..{first + steps_per_chunk - 1}; "
            f"step {step} is in chunk {step // steps_per_chunk}"
        )
    j = step - first
    file_rows = range(j * rows_per_step, (j + 1) * rows_per_step)
    ds = load_chunk(chunk_path, cache_dir)
    if len(ds) < file_rows.stop:
        raise DataOrderError(f"{chunk_path} has {len(ds)} rows, fewer than the {file_rows.stop} that step {step} needs; the chunk is truncated")
    tokens = ds.with_format("numpy")[file_rows.start : file_rows.stop]["token_ids"]
    if tokens.dtype == object or tokens.ndim != 2 or tokens.shape[1] != row_len:
        lengths = sorted({len(t) for t in tokens}) if tokens.ndim == 1 else [tokens.shape[-1]]
        raise DataOrderError(f"rows {file_rows.start}..{file_rows.stop - 1} of {chunk_path} have {lengths} tokens, not {row_len}")
    if warn:
        warnings.warn(ORDER_NOT_RECOVERABLE, AmberOrderWarning, stacklevel=2)
    return AmberStepRows(tokens=tokens, chunk=k, step=step, step_in_chunk=j, file_rows=file_rows)
