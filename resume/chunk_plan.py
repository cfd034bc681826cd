"""Branching a run whose data are released as chunk files (LLM360 Amber, K2): the plan, then the data.

``branch`` calls :func:`prepare_chunk_data` once it knows the batches it trains on and the ones it
replays to reestimate Adam's moments. It prints the plan -- checkpoint, chunk files (sizes, whether
cached or converted already), why each is needed, the optimizer-state cost, the order, the exactness
flag and the memory estimate -- and then (unless ``--dry-run``) fetches and converts what is missing.
"""

from __future__ import annotations

from typing import Any

from checkpoints_cache.errors import UserError
from data_order.chunked import ChunkLayout, ChunkNeed, ChunkRows, ensure_chunks, plan_chunks
from resume.launch import is_launch_main

EXACTNESS_WHY = {
    "amber-chunks": ("the set of rows of each chunk is exact, the order within a chunk is not: it depends on the "
                     "run's unpublished restart history (llm360.md §3.1)"),
    "k2-chunks": ("the chunk order and the sequential read are exact (k2-train/main.py); the rows are exact only if "
                  "the released chunk files are the offline-shuffled ones, which is unverified (llm360.md §3.3)"),
}


def exactness_line(layout: ChunkLayout) -> str:
    return f"exactness: {layout.exactness} -- {EXACTNESS_WHY[layout.kind]}"


def _weights_line(run: Any, step: int) -> str:
    from checkpoints_cache import hub
    from checkpoints_cache.fetch import human, plan_fetch

    if run.info is None:
        return f"weights: {run.name} step {step}: local checkpoint"
    where = f"weights: {run.info.repo_id}@{run.revision(step)}"
    try:
        plan = plan_fetch(run.info, [step])
    except UserError as e:
        if hub.is_offline():
            return f"{where}: not in the HF cache, size unknown offline (the Hub is off: HF_HUB_OFFLINE=1)"
        return f"{where}: {e}"
    state = "cached" if plan.download_bytes == 0 else f"{human(plan.download_bytes)} to fetch"
    return f"{where}: {len(plan.files)} files, {human(plan.weights_bytes)} ({state})"


def _optimizer_line(layout: ChunkLayout, reestimate: range | None, needs: list[ChunkNeed], mode: str) -> str:
    from checkpoints_cache.fetch import human

    if reestimate is None or not len(reestimate):
        return f"optimizer: {mode} (no optimizer state was released, llm360.md §2)"
    files = [n for n in needs if "reestimate" in n.purposes and "train" not in n.purposes]
    spread = ("the seeded permutation scatters them over the whole file" if layout.order == "seeded"
              else "they are lines of the file")
    cost = ", ".join(f"{n.filename} ({human(n.remote.size) if n.remote else 'size unknown offline'})" for n in files)
    whole = (f"; a JSONL has no row index to fetch rows by byte range and {spread}, so {cost} is fetched whole "
             "(--optimizer-state fresh skips it)") if files else ""
    return (f"optimizer: reestimate -- no optimizer state was released (llm360.md §2); Adam's moments are rebuilt "
            f"from the {len(reestimate)} batches {reestimate.start}..{reestimate.stop - 1} at lr 0{whole}")


def plan_lines(run: Any, layout: ChunkLayout, needs: list[ChunkNeed], eval_needs: list[ChunkNeed], from_step: int,
               end: int, reestimate: range | None, mode: str, step_name: str | None) -> list[str]:
    from checkpoints_cache.fetch import human
    from resume.memory import estimate

    at = f"{step_name} (step {from_step})" if step_name else f"step {from_step}"
    to = f"step {end}" + (f" ({run.revision(end)})" if end in run.steps else "")
    out = [f"plan: branch {run.name} from {at} for {end - from_step} updates, to {to}"]
    if step_name:
        out.append(f"from-step: {step_name} is step {from_step} of {run.name} (the weights after {from_step} updates)")
    out.append(_weights_line(run, from_step))
    out += [n.line(layout) for n in needs]
    out.append(_optimizer_line(layout, reestimate, needs, mode))
    for n in eval_needs:
        if n.chunk not in {m.chunk for m in needs}:
            out.append(f"compare: held-out batches {n.purposes['compare'][0]}.. lie in {n.filename} (chunk {n.chunk}, "
                       f"{human(n.remote.size) if n.remote else 'size unknown offline'}); `compare` fetches and converts "
                       "it at the end (--no-compare skips it)")
    train_chunks = [n.chunk for n in needs if "train" in n.purposes]
    out.append("order: " + "; ".join(layout.describe_order(c) for c in train_chunks[:2])
               + (" ..." if len(train_chunks) > 2 else ""))
    out.append(exactness_line(layout))
    mem = estimate(run.model_config)
    if mem is not None:
        out.append(mem.line())
    todo = [n for n in needs if n.store is None]
    dl = sum(n.remote.size for n in todo if n.remote is not None and not n.cached)
    unknown = sum(1 for n in todo if n.remote is None)
    files = f"{human(dl)} of chunk files" + (f" + {unknown} chunk file(s) of size unknown offline" if unknown else "")
    out.append(f"total: {files} to download (plus the weights above), {len(todo)} token store(s) to write "
               f"(~{human(len(todo) * layout.store_bytes())})")
    return out


def prepare_chunk_data(run: Any, from_step: int, end: int, reestimate: range | None, mode: str, *,
                       step_name: str | None = None, eval_batches: int | None = None, dry_run: bool = False,
                       progress: bool = True, extra_lines: list[str] = ()) -> ChunkRows | None:
    """Print the plan (then ``extra_lines``: the branch plan's disk, tokens, FLOPs, micro-batch and time);
    unless ``dry_run``, fetch and convert the chunks and return the rows to train on."""
    layout = ChunkLayout.from_order(run.data_order, run.name)
    spans = {"train": (from_step, end)}
    if reestimate is not None and len(reestimate):
        spans["reestimate"] = (reestimate.start, reestimate.stop)
    needs = plan_chunks(layout, spans)
    eval_needs: list[ChunkNeed] = []
    total = layout.total_batches
    if eval_batches and (total is None or end + eval_batches <= total):
        eval_needs = plan_chunks(layout, {"compare": (end, end + eval_batches)})
    if is_launch_main():
        print("\n".join(plan_lines(run, layout, needs, eval_needs, from_step, end, reestimate, mode, step_name)
                        + list(extra_lines)), flush=True)
    if dry_run:
        return None
    return ChunkRows(layout, ensure_chunks(layout, needs, progress=progress and is_launch_main()))
