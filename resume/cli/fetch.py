"""``branchpoint fetch RUN --step N``: weights (+ the data rows a branch needs) into the local caches."""

from __future__ import annotations

import argparse
import json
import sys

from checkpoints_cache.errors import UserError

EPILOG = """\
examples:
  branchpoint fetch pythia-160m-deduped --step 20000 --dry-run
  branchpoint fetch pythia-160m-deduped --step 20000 --data-steps 2000
  branchpoint fetch pythia-160m-deduped --data-batches 19910..19999      # rows only, no weights
  branchpoint fetch EleutherAI/pythia-70m --step 1000 --step 2000
  branchpoint fetch pythia-160m --step 4000 --optimizer
  branchpoint fetch pythia-160m --step 4000 --optimizer --out pythia-160m-step4000-adam
  branchpoint fetch amber --step 76962 --data-steps 762 --dry-run   # LLM360: whole chunk files

Weights and config go through huggingface_hub into the standard HF cache (HF_HOME / HF_HUB_CACHE),
every LFS file checked against the Hub's sha256. --data-steps K fetches only the rows of global
batches N..N+K-1 (a branch from stepN trains on batch N first); --data-batches A..B the rows of
batches A to B inclusive. Rows come as byte ranges: of document.idx only the header and 12 bytes
per row (sizes, pointers), of the preshuffled shards only the rows' bytes, into
$HF_HOME/branchpoint/data; a later fetch extends that copy. A range has no published hash: before
it is recorded its rows are checked (row length, token ids < the vocabulary), and a shard that ends
up fetched whole is checked against its sha256; a failed check fetches once more, then stops.
LLM360 runs (Amber, K2) publish their data as JSONL chunk files without a row index: --data-steps
fetches the chunks holding those batches whole into the HF cache (sha256-verified) and converts each
once into a token store under $HF_HOME/branchpoint/data/chunks. --dry-run lists files and bytes and
checks the free disk space; nothing moves. With HF_HUB_OFFLINE=1 it checks the cache only.
`branchpoint branch` fetches what it needs by itself; this command is for fetching ahead.

--optimizer also imports the run's own optimizer state at N from its NeoX checkpoint (the card's
[optimizer_state] repo, e.g. EleutherAI/neox-ckpt-pythia-160m): only mp_rank_00_model_states.pt and
the ZeRO-1 optimizer shards are downloaded (verified), checked and converted into
optimizer.safetensors (fp32 {name}.master, {name}.exp_avg, {name}.exp_avg_sq, {name} as in
GPTNeoXForCausalLM.named_parameters()) and optimizer.json (iteration, num_iters, skipped_steps,
loss_scale, source), in $HF_HOME/branchpoint/optimizer/RUN/stepN/ (where `branch` finds it) or --out DIR.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fetch", help="download checkpoint N (and its data rows) into the cache, verified",
        description="Download the weights of checkpoint N, and optionally the data rows of the next K batches.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="registry name, Hub repo id, or trajectory directory")
    p.add_argument("--step", type=int, action="append", default=None, metavar="N",
                   help="checkpoint step whose weights to fetch (repeatable)")
    p.add_argument("--data-steps", type=int, metavar="K", help="also fetch the rows of global batches N..N+K-1")
    p.add_argument("--data-batches", action="append", default=None, metavar="A..B",
                   help="fetch the rows of global batches A..B (inclusive; repeatable; no --step needed)")
    p.add_argument("--optimizer", action="store_true",
                   help="also import the run's optimizer state (fp32 masters, Adam moments, counters) from its NeoX checkpoint")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="with --optimizer: write optimizer.safetensors and optimizer.json into DIR (one --step)")
    p.add_argument("--dry-run", action="store_true", help="list files and total bytes; download nothing")
    p.add_argument("--trust-remote-code", action="store_true", help="allow runs whose model class is code in the repo (Crystal)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _run_chunked(args: argparse.Namespace, info, steps: list[int], spans: list[tuple[int, int]]) -> int:
    """LLM360 chunk releases: the checkpoints, and the chunk files of the batches asked for (whole, then converted)."""
    from checkpoints_cache.fetch import ensure_checkpoint, plan_fetch
    from data_order.chunked import ChunkLayout, ensure_chunks, plan_chunks

    if args.optimizer or args.out is not None:
        raise UserError(f"--optimizer: {info.name} released no optimizer state (llm360.md §2); `branchpoint branch` "
                        "reestimates it from the batches before the branch step")
    plan = plan_fetch(info, steps, trust_remote_code=args.trust_remote_code)
    layout = ChunkLayout.from_order(info.data_order, info.name)
    needs = plan_chunks(layout, {(f"from step {a}" if a in steps else f"batches {a}..{b - 1}"): (a, b) for a, b in spans})
    if args.dry_run:
        for line in plan.lines() + [n.line(layout) for n in needs] + [f"exactness: {layout.exactness}"]:
            print(line)
        plan.check_disk()
        print("dry run: nothing was downloaded")
        return 0
    plan.check_disk()
    progress = not args.no_progress
    for s in steps:
        print(f"step {s}: {ensure_checkpoint(info, s, progress=progress, trust_remote_code=args.trust_remote_code)}")
    for c, store in ensure_chunks(layout, needs, progress=progress).items():
        print(f"data: chunk {c} ({layout.filename(c)}): token store {store.folder} ({store.rows} rows)")
    print(f"exactness: {layout.exactness}")
    return 0


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.data_store import data_root
    from checkpoints_cache.fetch import check_data_steps, ensure_checkpoint, human, plan_fetch, step_warnings
    from checkpoints_cache.registry import resolve_run
    from data_order.remote import fetch_rows, parse_batches, plan_lines, plan_rows, spans_text

    info = resolve_run(args.run)
    steps = list(dict.fromkeys(args.step or []))
    if not steps and not args.data_batches:
        raise UserError("say what to fetch: --step N (weights, with --data-steps K for its rows) or --data-batches A..B")
    if args.data_steps is not None and not steps:
        raise UserError("--data-steps K counts batches from each --step N; give --step N, or use --data-batches A..B")
    if args.out is not None and not args.optimizer:
        raise UserError("--out is for --optimizer (weights and data go into the caches)")
    if args.out is not None and len(steps) > 1:
        raise UserError(f"--out takes one --step; got {len(steps)} ({', '.join(map(str, steps))})")
    if args.data_steps is not None and args.data_steps <= 0:
        raise UserError(f"--data-steps must be a positive number of batches, not {args.data_steps}")
    spans = [parse_batches(x) for x in args.data_batches or []]
    if args.data_steps is not None:
        spans += [(s, s + args.data_steps) for s in steps]
    if spans and (info.data_order or {}).get("kind") in ("amber-chunks", "k2-chunks"):
        return _run_chunked(args, info, steps, spans)
    if spans and info.branch_refusal:
        raise UserError(info.branch_refusal)
    if spans and not info.is_local:
        check_data_steps(info, args.data_steps or 1)
    plan = plan_fetch(info, steps, trust_remote_code=args.trust_remote_code, read_indexes=not args.dry_run)
    if args.optimizer:
        from checkpoints_cache.neox_fetch import plan_optimizer

        plan.files += [f for s in steps for f in plan_optimizer(info, s)]
    rows = plan_rows(info, spans) if spans and not info.is_local else None
    data_need = []
    if rows:
        todo = rows.data_missing_bytes + rows.index_missing_bytes
        plan.extra.append((plan_lines(rows), rows.data_bytes + rows.index_bytes, todo))
        data_need = [(data_root(), todo)]
    if args.dry_run:
        for s in steps:
            for line in step_warnings(info, s):
                print(line, file=sys.stderr)
        for line in plan.lines():
            print(line)
        plan.check_disk(extra=data_need)
        print("dry run: nothing was downloaded; enough free disk for this fetch")
        return 0
    plan.check_disk(extra=data_need)  # refuse before anything moves
    progress = not args.no_progress
    for s in steps:
        path = ensure_checkpoint(info, s, progress=progress, trust_remote_code=args.trust_remote_code)
        print(f"step {s}: {path}")
    if args.optimizer:
        from checkpoints_cache.neox_fetch import OPTIMIZER_META, OPTIMIZER_TENSORS, import_optimizer_state

        for s in steps:
            folder = import_optimizer_state(info, s, args.out, progress=progress)
            meta = json.loads((folder / OPTIMIZER_META).read_text())
            print(f"optimizer step {s}: {folder / OPTIMIZER_TENSORS} and {OPTIMIZER_META} (iteration {meta['iteration']}, "
                  f"num_iters {meta['num_iters']}, skipped_steps {meta['skipped_steps']}; "
                  f"{len(meta['release_defects'])} release defect(s))")
    if spans and info.is_local:
        where = (info.data_order or {}).get("path") or "nowhere (the trajectory declares no data order)"
        print(f"data: {info.name} is a local trajectory; its data order is already on disk: {where}")
    elif spans:
        got = fetch_rows(info, spans, progress=progress)
        print(f"data: {spans_text(got.spans, rows.batch_size)} ({human(got.row_bytes)}; moved {human(got.bytes_moved)} "
              f"of rows and {human(got.index_bytes_moved)} of index now) in {got.folder}")
    return 0
