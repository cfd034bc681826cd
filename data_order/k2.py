"""LLM360 K2 (65B): global step -> (training position, chunk id, row) of its chunk files.

Facts (llm360.md §3.3, from ``k2-train/main.py`` and ``scripts/pretrain_65b.sh`` @869fbb9):

- The data are ``chunk_{i}.jsonl`` in ``LLM360/K2Datasets``, each shuffled offline by
  ``k2-data-prep/shuffle.py`` (``random.seed(11111 + i)``), so a file's line order is the order it was
  read in -- *if* the released files are the shuffled ones (unverified: the committed ``shuffle.py``
  has ``N_CHUNKS = 32``).
- Training concatenates the files in a hard-coded chunk order (``datasets.load_dataset("json",
  data_files=[...])``) and reads it with Megatron's sequential sampler: iteration s (1-based) takes
  samples ``[(s-1)·2040, s·2040)``, i.e. branchpoint's batch ``k = s - 1`` takes ``[k·2040, (k+1)·2040)``.
- The order is data, not code: the run card's ``[data_order] chunk_order`` lists the chunk at each
  training position as inclusive ranges (``[[0, 15], [32, 37], ...]``), including the moves made after
  the loss spikes (the chunks at positions 160 and 185 went to the end).
- With 941 iterations x 2040 = 1,919,640 rows per chunk (unverified line count), checkpoint
  ``ckpt_k`` (iteration 941·k) ends exactly at the end of training position k - 1.

Everything is flagged ``exact if the released chunks are the shuffled files`` (the card's exactness).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .mmidx import DataOrderError
from .steps import _check_step


def expand_chunk_order(spec: Sequence[Any], n_chunks: int | None = None) -> tuple[int, ...]:
    """The chunk id at each training position, from a card's ``chunk_order``: inclusive ``[first, last]``
    ranges and/or single ids, in training order. Must name every chunk exactly once."""
    if not isinstance(spec, (list, tuple)) or not spec:
        raise DataOrderError("chunk_order must be a non-empty list of chunk ids or [first, last] ranges, "
                             "e.g. [[0, 15], [32, 37], 16]")
    out: list[int] = []
    for item in spec:
        if isinstance(item, int) and not isinstance(item, bool):
            out.append(item)
        elif (isinstance(item, (list, tuple)) and len(item) == 2 and all(isinstance(v, int) for v in item)
              and item[0] <= item[1]):
            out.extend(range(item[0], item[1] + 1))
        else:
            raise DataOrderError(f"chunk_order entry {item!r} is neither a chunk id nor an inclusive [first, last] "
                                 "range with first <= last")
    n = n_chunks if n_chunks is not None else len(out)
    if sorted(out) != list(range(n)):
        seen: set[int] = set()
        dup = next((c for c in out if c in seen or seen.add(c)), None)
        missing = sorted(set(range(n)) - set(out))
        what = (f"chunk {dup} appears twice" if dup is not None else
                f"chunks {missing[:5]} are missing" if missing else f"ids outside 0..{n - 1} appear")
        raise DataOrderError(f"chunk_order must name each of the {n} chunks 0..{n - 1} once; {what}")
    return tuple(out)


@dataclass(frozen=True)
class K2Location:
    """Where global batch ``step`` starts in K2's concatenated chunk files."""

    step: int  # branchpoint's batch index (= Megatron iteration step + 1)
    sample: int  # first sample of the batch in the concatenation: step * batch_size
    position: int  # training position of the chunk holding that sample (0..359)
    chunk: int  # the chunk id at that position: file chunk_{chunk}.jsonl
    row: int  # line of that file (0-based)
    straddles: bool  # the batch runs on into the next position's chunk

    def describe(self) -> str:
        more = ", continuing into the next position's chunk" if self.straddles else ""
        return (f"batch {self.step} (Megatron iteration {self.step + 1}) starts at sample {self.sample}: training "
                f"position {self.position}, chunk_{self.chunk}.jsonl line {self.row}{more}")


def locate_batch(step: int, chunk_order: Sequence[int], examples_per_chunk: int, batch_size: int) -> K2Location:
    """Sequential read of the chunks in ``chunk_order``: batch ``step`` = samples ``[step·B, (step+1)·B)``."""
    _check_step("step", step)
    sample = int(step) * int(batch_size)
    position, row = divmod(sample, int(examples_per_chunk))
    if position >= len(chunk_order):
        last = len(chunk_order) * int(examples_per_chunk) // int(batch_size) - 1
        raise DataOrderError(f"step {step} is beyond K2's data ({len(chunk_order)} chunks of {examples_per_chunk} rows); "
                             f"the last whole batch is step {last}")
    straddles = row + int(batch_size) > int(examples_per_chunk)
    return K2Location(int(step), sample, position, int(chunk_order[position]), row, straddles)
