"""``branchpoint batch``: the exact token rows of one global batch (step semantics in data_order.steps)."""

from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """\
examples:
  branchpoint batch --data pile/document --batch-size 1024 --seq-len 2048 --step 1000 --out b1000.npy
  branchpoint batch --data pile/ --batch-size 1024 --seq-len 2048 --step 0 --decode --tokenizer EleutherAI/pythia-160m
  branchpoint batch runs/toy --step 64
  branchpoint batch amber --step 76962          # LLM360: after `branchpoint fetch amber --step 76962 --data-steps 1`
  branchpoint batch k2 --step 150560

--data is a .idx/.bin pair without its extension, or a folder holding document.idx and
document-XXXXX-of-YYYYY.bin shards (read in place, never unsharded). --step N shows global batch N
= rows [N*B, (N+1)*B): the batch trained by the update that produces stepN+1, i.e. the first batch a
branch from stepN trains on. Rows hold seq-len+1 tokens (inputs row[:-1], labels row[1:]).
LLM360 runs (Amber, K2) read the converted token store of the batch's chunk, in the card's order, and
name rows by their global id (chunk x examples_per_chunk + line); the exactness flag says how far that
order is the training order.
"""

SHOW_ROWS = 3
SHOW_TOKENS = 16
DECODE_CHARS = 300


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "batch",
        help="show or save the exact token rows of global batch N",
        description="Show or save the exact token rows of one global batch of a run's data order.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", nargs="?", metavar="RUN", help="trajectory directory or registry run (instead of --data)")
    p.add_argument("--data", metavar="PREFIX", help="MMIDIDX prefix (no extension) or folder of document.idx + shards")
    p.add_argument("--batch-size", type=int, metavar="B", help="rows per global batch (Pythia: 1024)")
    p.add_argument("--seq-len", type=int, metavar="T", help="tokens per sequence; rows hold T+1 tokens (Pythia: 2048)")
    p.add_argument("--step", type=int, required=True, metavar="N", help="global batch N = rows [N*B, (N+1)*B)")
    p.add_argument("--out", metavar="FILE.npy", help="write the [B, T+1] array with the stored dtype and values")
    p.add_argument("--decode", action="store_true",
                   help="also print the first rows as text (a local tokenizer: --tokenizer, the run's, or a trajectory's own)")
    p.add_argument("--tokenizer", metavar="NAME_OR_PATH", help="tokenizer for --decode (local path or HF-cache name)")
    p.set_defaults(func=run)


def _spec(args: argparse.Namespace):
    from data_order.mmidx import DataOrderError
    from data_order.resolve import DataSpec, resolve_data

    if args.run and args.data:
        raise DataOrderError("give either RUN or --data PREFIX, not both")
    if args.data:
        missing = [f for f, v in (("--batch-size", args.batch_size), ("--seq-len", args.seq_len)) if v is None]
        if missing:
            raise DataOrderError(f"--data needs {' and '.join(missing)} (Pythia: --batch-size 1024 --seq-len 2048)")
        return DataSpec(path=args.data, batch_size=args.batch_size, seq_len=args.seq_len, source=args.data)
    if not args.run:
        raise DataOrderError("say which data: `branchpoint batch RUN --step N` or `--data PREFIX --batch-size B --seq-len T`")
    spec = resolve_data(args.run)
    for flag, given, have in (("--batch-size", args.batch_size, spec.batch_size), ("--seq-len", args.seq_len, spec.seq_len)):
        if given is not None and given != have:
            raise DataOrderError(f"{flag} {given} contradicts {spec.source}, which uses {have}; drop {flag}")
    return spec


def _save_npy(path: Path, array) -> None:
    """np.save to a temporary sibling, renamed into place: no half-written .npy on failure."""
    import numpy as np

    from checkpoints_cache.trajectory import atomic_file

    with atomic_file(path) as f:
        np.save(f, array, allow_pickle=False)


def _load_tokenizer(name: str | None):
    """(tokenizer, None) or (None, reason): local path or HF cache only, never the network."""
    if not name:
        return None, "no tokenizer given (pass --tokenizer NAME_OR_PATH)"
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name, local_files_only=True), None
    except Exception as e:  # any failure means: show ids only
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, f"tokenizer {name!r} is not available offline ({reason[:160]})"


def _amber_chunk_path(folder: Path, k: int) -> Path:
    for candidate in (folder / f"train_{k:03d}.jsonl", folder / "train" / f"train_{k:03d}.jsonl"):
        if candidate.is_file():
            return candidate
    from data_order.amber import DATASET_REPO, chunk_file
    from data_order.mmidx import DataOrderError

    raise DataOrderError(f"Amber chunk train_{k:03d}.jsonl is not in {folder}; fetch {DATASET_REPO} {chunk_file(k)} first")


def _run_amber(args: argparse.Namespace, spec) -> int:
    """Kind 'amber': the step's rows of its chunk, in file order, flagged as order-unknown everywhere."""
    from data_order import amber
    from data_order.steps import first_batch_after

    first_batch_after(args.step)  # refuses negative steps
    if spec.steps_per_chunk is None:
        amber.chunk_of_batch(args.step)  # refuses steps beyond Amber's 274,320
    per_chunk = spec.steps_per_chunk or amber.STEPS_PER_CHUNK
    k = args.step // per_chunk
    path = _amber_chunk_path(Path(spec.path), k)
    got = amber.read_amber_step(
        path, args.step, chunk_index=k, rows_per_step=spec.batch_size, steps_per_chunk=per_chunk,
        row_len=spec.seq_len + 1, warn=False,
    )
    tokens = got.tokens
    print(f"warning: {got.warning}; these are lines {got.file_rows.start}..{got.file_rows.stop - 1} of {path.name} in file order")
    if args.out:
        _save_npy(Path(args.out), tokens)
        print(f"wrote {args.out}: shape [{tokens.shape[0]}, {tokens.shape[1]}], {tokens.dtype.name}, chunk {k} step {got.step_in_chunk} of {per_chunk}")
    else:
        print(f"data: {path} (LLM360 Amber chunk {k}: steps {k * per_chunk}..{(k + 1) * per_chunk - 1}, leading to ckpt_{k:03d})")
        print(f"shape: [{tokens.shape[0]}, {tokens.shape[1]}], dtype {tokens.dtype.name}")
        print(f"exactness: {got.exactness}")
        for i in range(min(SHOW_ROWS, len(tokens))):
            print(f"line {got.file_rows.start + i}: {' '.join(str(int(t)) for t in tokens[i, :SHOW_TOKENS])} ...")
    print(
        f"step semantics: batch {args.step} = {spec.batch_size} rows of chunk {k} (which ones: unknown, see the warning); "
        f"first trained by the update that produces step{args.step + 1}; a branch from step{args.step} trains on it first"
    )
    if args.decode:
        _decode(args, spec, tokens, [f"line {got.file_rows.start + i}" for i in range(len(tokens))])
    return 0


def _run_chunked(args: argparse.Namespace, spec) -> int:
    """Kinds amber-chunks / k2-chunks: the batch's rows from the local token store, in the card's order."""
    from data_order.chunked import ChunkLayout, ChunkRows, local_stores
    from data_order.steps import describe_batch

    layout = ChunkLayout.from_order(spec.order, args.run)
    where = layout.locate(args.step)
    data = ChunkRows(layout, local_stores(layout, {"batch": (args.step, args.step + 1)}))
    tokens = data.batch(args.step)  # a chunk not converted yet: one line naming it and the fetch command
    rows = range(args.step * layout.batch_size, (args.step + 1) * layout.batch_size)
    labels = [data.describe_row(r) for r in rows[:SHOW_ROWS]]
    store = data.stores[where["chunk"]]
    if args.out:
        _save_npy(Path(args.out), tokens)
        print(f"wrote {args.out}: shape [{tokens.shape[0]}, {tokens.shape[1]}], {tokens.dtype.name}, chunk "
              f"{where['chunk']} step {where['step_in_chunk']} of the chunk")
    else:
        print(f"data: {layout.repo_id} {layout.filename(where['chunk'])} (chunk {where['chunk']}, training position "
              f"{where['position']}) from the token store {store.folder}")
        print(f"shape: [{tokens.shape[0]}, {tokens.shape[1]}], dtype {tokens.dtype.name}")
        for label, row in zip(labels, tokens):
            print(f"{label}: {' '.join(str(int(t)) for t in row[:SHOW_TOKENS])} ...")
    print(f"order: {layout.describe_order(where['chunk'])}")
    print(f"exactness: {spec.exactness}")
    print(f"step semantics: {describe_batch(args.step, layout.batch_size)} of the training order")
    if args.decode:
        _decode(args, spec, tokens, [data.describe_row(r) for r in rows])
    return 0


def run(args: argparse.Namespace) -> int:
    from data_order.source import TokenRows
    from data_order.steps import describe_batch

    spec = _spec(args)
    if args.out and Path(args.out).is_dir():
        from data_order.mmidx import DataOrderError

        raise DataOrderError(f"--out {args.out} is a directory; give a file name such as {Path(args.out) / f'batch{args.step}.npy'}")
    if spec.kind in ("amber-chunks", "k2-chunks"):
        return _run_chunked(args, spec)
    if spec.kind == "amber":
        return _run_amber(args, spec)
    data = TokenRows(spec.path, spec.batch_size, spec.seq_len, run=spec.run)
    rows = data.batch_range(args.step)
    tokens = data.batch(args.step)  # every error (bad rows, unfetched bytes) fires before any output
    ds = data.dataset
    layout = f"{len(ds.shard_files)} shards" if ds.is_sharded else "single .bin"
    if ds.is_partial:
        layout += ", partially fetched"

    if args.out:
        path = Path(args.out)
        _save_npy(path, tokens)
        print(f"wrote {path}: shape [{tokens.shape[0]}, {tokens.shape[1]}], {tokens.dtype.name}, rows {rows.start}..{rows.stop - 1}")
    else:
        print(f"data: {ds.prefix} ({layout}; {data.num_rows} rows of {data.row_len} {ds.dtype.name} tokens = {data.num_batches} batches of {data.batch_size})")
        print(f"shape: [{tokens.shape[0]}, {tokens.shape[1]}], dtype {tokens.dtype.name}")
        print(f"exactness: {spec.exactness}")
        for i in range(min(SHOW_ROWS, len(tokens))):
            head = " ".join(str(int(t)) for t in tokens[i, :SHOW_TOKENS])
            print(f"row {rows.start + i}: {head} ...")
    print(f"step semantics: {describe_batch(args.step, data.batch_size)}")

    if args.decode:
        _decode(args, spec, tokens, [f"row {i}" for i in rows])
    return 0


def _trajectory_tokenizer(run: str | None) -> str | None:
    """A trajectory's own tokenizer: the last checkpoint folder that carries tokenizer files (the toy
    and its branches save theirs with every checkpoint)."""
    from checkpoints_cache.trajectory import Trajectory

    if not run or not Trajectory.is_trajectory(run):
        return None
    traj = Trajectory.open(run)
    for step in reversed(traj.steps):
        folder = traj.checkpoint_dir(step)
        if (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file():
            return str(folder)
    return None


def _decode(args: argparse.Namespace, spec, tokens, labels: list[str]) -> None:
    tok, why = _load_tokenizer(args.tokenizer or spec.tokenizer or _trajectory_tokenizer(args.run))
    if tok is None:
        print(f"decode: {why}; showing token ids only")
        return
    for i in range(min(SHOW_ROWS, len(tokens))):
        text = tok.decode([int(t) for t in tokens[i]])
        print(f"{labels[i]} text: {text[:DECODE_CHARS]!r}")
