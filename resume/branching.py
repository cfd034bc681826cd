"""``branch``: continue a run from its checkpoint N for K updates with an intervention applied."""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from checkpoints_cache.corrupt import reading_checkpoint
from checkpoints_cache.errors import UserError
from checkpoints_cache.locks import output_lock
from checkpoints_cache.trajectory import (
    FORMAT,
    TRAJECTORY_FILE,
    Trajectory,
    atomic_write_json,
    check_output_dir,
    clean_orphans,
    has_content,
)
from resume.branch_definition import BranchDefinition, check_same_branch
from resume.engine import (
    TrainJob,
    make_accelerator,
    resume_point,
    train,
    train_precision,
    truncate_metrics,
    write_start,
)
from resume.interventions.base import BranchContext, Intervention
from resume.interventions.spec import parse_intervention
from resume.numerics import NeoXLossScaler, apply_numerics, check_numerics, default_numerics, describe_numerics
from resume.parent import ParentRun, fetch_release, open_parent, plan_release
from resume.plan import BranchPlan
from resume.launch import launch_rank, launch_world_size
from resume.sharding import activated, check_resume, check_sharding, resolve_sharding
from resume.state import STATE_DIR

OPTIMIZER_MODES = ("exact", "reestimate", "fresh")
# Reestimate replays enough batches that the dropped tail of Adam's second-moment EMA weighs < 1%.
REESTIMATE_TAIL = 0.01


def reestimate_count(beta2: float, branch_step: int) -> int:
    """M = min(N, ceil(ln(0.01) / ln(beta2))): 90 batches for beta2 = 0.95. The second moment is an
    EMA with weight beta2^i on the gradient i updates back, so after M batches the moments hold
    99% of the weight they would hold in the parent (beta1 = 0.9 decays faster still)."""
    if branch_step <= 0:
        return 0
    return min(branch_step, math.ceil(math.log(REESTIMATE_TAIL) / math.log(beta2)))


def open_data(parent: ParentRun, first_batch: int, last_batch: int) -> Any:
    """The parent's data order, checked to hold global batches first_batch .. last_batch - 1.

    A release of chunk files (LLM360 Amber, K2: ``data_order.chunked``) gives a ``ChunkRows`` over the
    chunks already converted on this machine; ``branch`` fetches and converts the missing ones after
    printing its plan (``resume.chunk_plan``)."""
    from data_order.chunked import ChunkLayout, ChunkRows, is_chunked, local_stores
    from data_order.source import TokenRows

    order = parent.data_order
    if is_chunked(order):
        layout = ChunkLayout.from_order(order, parent.name)
        layout.check_batches(first_batch, last_batch, f"a branch of {parent.name}")
        return ChunkRows(layout, local_stores(layout, {"branch": (first_batch, last_batch)}))
    if not order or not order.get("path"):
        raise UserError(
            f"{parent.name} has no local data order; fetch it with "
            f"`branchpoint fetch {parent.name} --data-batches {first_batch}..{last_batch - 1}`"
        )
    data = TokenRows(order["path"], int(order["batch_size"]), int(order["seq_len"]), run=parent.name)
    if data.num_batches < last_batch:
        raise UserError(
            f"the data order of {parent.name} holds {data.num_batches} global batches; "
            f"the branch needs batches {first_batch}..{last_batch - 1} (use --steps <= {data.num_batches - first_batch})"
        )
    data.check_fetched(first_batch, last_batch)  # a partly fetched release: refuse now, not mid-run
    return data


def batches_available(data: Any, first_batch: int, stop_batch: int) -> bool:
    from data_order.mmidx import NotFetchedError

    if data is None:
        return False
    if hasattr(data, "can_serve"):  # chunk releases: fetchable batches count (the plan fetches them)
        return data.can_serve(first_batch, stop_batch)
    if first_batch < 0 or stop_batch > data.num_batches:
        return False
    try:
        data.check_fetched(first_batch, stop_batch)
    except NotFetchedError:
        return False
    return True


def choose_optimizer_mode(
    requested: str | None, parent: ParentRun, step: int, data: Any, intervention: Intervention
) -> tuple[str, str]:
    """(mode, reason). Default: exact if saved (or importable from the parent's NeoX checkpoint), else
    reestimate if the batches before N are on disk or, for a released run, can be fetched (a control
    from zeros is not a control), else fresh. ``data`` is None for a released run planned before its
    rows are fetched."""
    if requested is not None and requested not in OPTIMIZER_MODES:
        raise UserError(f"--optimizer-state {requested!r}: use one of {', '.join(OPTIMIZER_MODES)}")
    has_saved = parent.optimizer_dir(step) is not None
    neox_why = None if has_saved else parent.neox_unavailable(step)
    has_exact = has_saved or neox_why is None
    if intervention.fresh_optimizer():
        return "fresh", f"{intervention.name} starts a fresh optimizer by design"
    if requested == "exact" and not has_exact:
        why = f" ({neox_why})" if parent.optimizer_source else ""
        raise UserError(
            f"--optimizer-state exact: {parent.name} has no optimizer state at step {step}{why}; "
            "use --optimizer-state reestimate or fresh"
        )
    m = reestimate_count(parent.recipe.betas[1], step)
    if requested is not None:
        if requested == "reestimate" and m:
            return requested, f"requested: replays the {m} batches before step {step}"
        return requested, "requested"
    if has_saved:
        return "exact", "the parent saved its full optimizer state at this step"
    if has_exact:
        return "exact", f"the parent's NeoX checkpoint ({parent.optimizer_source['repo_id']}) holds its optimizer state"
    if step == 0:
        return "fresh", "step 0 has no optimizer state to rebuild"
    if parent.is_released and data is None:
        return "reestimate", f"{parent.name} publishes weights only; the {m} batches before step {step} are replayed"
    if batches_available(data, step - m, step):
        where = "in the released chunk files" if hasattr(data, "can_serve") else "available"
        return "reestimate", f"no saved optimizer state; the {m} batches before the branch step are {where}"
    return "fresh", f"no saved optimizer state, and batches {step - m}..{step - 1} (to reestimate it) are not on disk"


def build_plan(
    run: ParentRun, from_step: int, steps: int, iv: Intervention, intervention: str, optimizer_state: str | None,
    micro_batch: int | None, out: Path, precision: str | None, resumed_micro: int | None = None,
    dry_run: bool = False, own_rows: bool = False,
) -> tuple[BranchPlan, Any, list[tuple[int, int]] | None]:
    """Everything decided before anything is fetched or written: optimizer mode, the data and weights
    to fetch (metadata only), the micro-batch, FLOPs, disk and time. Returns (plan, data, fetch_spans):
    ``data`` is the local data order (a chunk release's already-converted stores) or None;
    ``fetch_spans`` the batch spans a released mmidx run fetches after the plan (with its weights),
    None for other runs. ``own_rows``: the intervention trains on rows of its own, so the parent's are
    read only to reestimate before N. A micro-batch that cannot fit is an error, except in a dry run,
    whose plan says so instead."""
    import os

    from resume.microbatch import MicroBatchChoice, choose_micro_batch, gpu_probe, param_count
    from resume.plan import BranchPlan, estimate_wall, flops_per_token

    recipe = run.recipe
    end = from_step + steps
    world = launch_world_size()
    plan = BranchPlan(run.name, from_step, steps, out, intervention, batch_size=recipe.batch_size,
                      seq_len=recipe.seq_len, world_size=world)
    data, fetch_spans = None, None
    stop = from_step if own_rows else end  # the parent's batches read: [first, stop)
    chunked = run.is_released and is_chunked_order(run.data_order)
    if run.is_released and not chunked:  # Hub files: weights, index entries, rows (metadata only here)
        mode, reason = choose_optimizer_mode(optimizer_state, run, from_step, None, iv)
        first = from_step - reestimate_count(recipe.betas[1], from_step) if mode == "reestimate" else from_step
        fetch_spans = [(first, stop)] if first < stop else []
        plan_release(run, plan, from_step, fetch_spans, neox_optimizer=mode == "exact")
    else:  # a local trajectory, or a chunk release (resume.chunk_plan plans its files)
        data = _data_if_any(run, from_step) if own_rows else open_data(run, from_step, end)
        mode, reason = choose_optimizer_mode(optimizer_state, run, from_step, data, iv)
        first = from_step - reestimate_count(recipe.betas[1], from_step) if mode == "reestimate" else from_step
        if mode == "reestimate":
            data = open_data(run, first, stop)
        elif own_rows and hasattr(data, "can_serve"):
            data = None  # nothing of a chunk release to fetch
        if not chunked:
            ckpt = run.checkpoint_dir(from_step)
            plan.add("weights", sum(f.stat().st_size for f in ckpt.iterdir() if f.is_file()), True, str(ckpt))
            if data is not None and first < stop:
                plan.add("data rows", (stop - first) * recipe.batch_size * (recipe.seq_len + 1) * data.dtype.itemsize,
                         True, f"batches {first}..{stop - 1} in {run.data_order['path']}")
    if mode == "exact" and run.optimizer_dir(from_step) is None and run.info is not None:
        _plan_neox_import(run, plan, from_step)
    plan.optimizer_mode, plan.optimizer_reason = mode, reason
    plan.reestimate = range(first, from_step) if mode == "reestimate" and first < from_step else None

    config = run.model_config
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        per_rank = recipe.batch_size // world if recipe.batch_size % world == 0 else 0
        # the micro-batch the resumed branch used, where it still splits this launch's rows per process
        if resumed_micro is not None and micro_batch is None and per_rank and per_rank % resumed_micro == 0:
            choice = MicroBatchChoice(resumed_micro, recipe.batch_size // (world * resumed_micro), "given",
                                      "as the branch being resumed used")
        elif device == "cuda":  # a probe forward/backward at the real sequence length, on this rank's GPU
            gpu = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
            probe = gpu_probe(config, recipe.seq_len, precision or recipe.precision, device=gpu)
            choice = choose_micro_batch(micro_batch, config, recipe.batch_size, world, recipe.seq_len, device=gpu,
                                        probe=probe, available=torch.cuda.get_device_properties(gpu).total_memory)
            del probe  # frees the probe's model
            torch.cuda.empty_cache()
        else:
            choice = choose_micro_batch(micro_batch, config, recipe.batch_size, world, recipe.seq_len)
    except UserError as e:
        if not dry_run:
            raise
        choice = MicroBatchChoice(micro_batch or 1, recipe.batch_size // (world * (micro_batch or 1)), "does not fit",
                                  f"{e} -- a real run stops here with this message")
    plan.micro_batch_size, plan.accumulation = choice.micro_batch_size, choice.accumulation
    plan.micro_batch_mode, plan.micro_batch_reason = choice.mode, choice.reason
    parent_micro = (run.trajectory.meta.get("engine", {}) if run.trajectory else {}).get("micro_batch_size")
    if mode == "exact" and iv.name == "none" and parent_micro and parent_micro != choice.micro_batch_size * world:
        plan.notes.append(f"the parent ran micro-batch {parent_micro}; with {choice.micro_batch_size} the sums run in "
                          "another order, so a control matches it to the fp32 floor, not bit for bit")
    if iv.name == "gstack":
        plan.notes.append("gstack grows the model after loading: memory, FLOPs and time are for the parent's size")

    plan.params = param_count(config)
    plan.flops_per_token = flops_per_token(config, plan.params, recipe.seq_len)
    saves = len({s for s in run.grid if from_step < s <= end} | {end}) + 1  # + the branch's own stepN
    plan.output_bytes = 12 * plan.params * (saves + 1)  # fp32 weights + Adam moments per save, + the rolling state
    estimate_wall(plan, device, precision or ("fp32" if device == "cpu" else recipe.precision))
    return plan, data, fetch_spans


def is_chunked_order(order: dict[str, Any] | None) -> bool:
    from data_order.chunked import is_chunked

    return is_chunked(order)


def _plan_neox_import(run: ParentRun, plan: BranchPlan, step: int) -> None:
    """The NeoX optimizer files an exact start from a released Pythia imports (metadata only)."""
    from checkpoints_cache import hub
    from checkpoints_cache.neox_fetch import plan_optimizer

    try:
        files = plan_optimizer(run.info, step)
    except UserError as e:  # offline and not cached, say: the import itself names what to do
        plan.notes.append(f"optimizer state: {e}")
        return
    if not files:
        plan.add("optimizer state", 0, True, f"NeoX state of step {step}, imported already")
    for f in files:
        plan.add("optimizer state", f.size, f.cached, f"{f.repo_id}@{f.revision} {f.filename} (NeoX, imported once)",
                 hub.hub_cache())


def library_versions() -> dict[str, str]:
    import accelerate
    import huggingface_hub
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "numpy": np.__version__,
        "branchpoint": _own_version(),
    }


def _own_version() -> str:
    try:
        from importlib.metadata import version

        return version("branchpoint")
    except Exception:  # not installed as a distribution
        return "0+local"


def load_model(checkpoint_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    # fp32 master weights; .bin checkpoints are read by transformers with weights_only=True
    with reading_checkpoint(checkpoint_dir):  # a damaged file is named, with what to do
        return AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32)


def branch_context(parent: ParentRun, step: int, end: int, out: Path, data: Any) -> BranchContext:
    domains = (parent.data_order or {}).get("domains") or {}
    labels = np.load(domains["labels"], mmap_mode="r") if domains.get("labels") else None
    names = domains.get("names")
    if hasattr(data, "row_domains"):  # chunk releases: one label per row of the training order, from the stores
        labels, names = data.row_domains, data.domain_names
    return BranchContext(
        branch_step=step,
        end_step=end,
        recipe=parent.recipe,
        parent_grid=parent.grid,
        out_dir=out,
        row_domains=labels,
        domain_names=names,
        take_rows=None if data is None else data.take,
        num_rows=None if data is None else data.num_rows,
        parent_checkpoint=parent.checkpoint_dir,
        extra={"parent": parent.spec, "parent_trajectory": parent.trajectory},
    )


def _with_order(run: ParentRun, order: str | None) -> None:
    """Apply ``--order`` (seeded | file) to a chunk-released parent's data order, checked."""
    from data_order.chunked import ChunkLayout, is_chunked

    if order is None:
        return
    if not is_chunked(run.data_order):
        raise UserError(f"--order {order}: only runs whose data are released as chunk files (LLM360 Amber, K2) have a "
                        f"choice of order; {run.name}'s data order is fixed")
    run.data_order = {**run.data_order, "order": order}
    ChunkLayout.from_order(run.data_order, run.name)  # a bad order for this kind is one line


def branch(
    parent: str | Path,
    from_step: int | str,
    steps: int,
    *,
    intervention: str = "none",
    optimizer_state: str | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    micro_batch_size: int | str | None = None,
    save_every: int | None = None,
    precision: str | None = None,
    numerics: str | None = None,
    progress: bool = True,
    order: str | None = None,
    dry_run: bool = False,
    eval_batches: int | None = None,
    log_with: str | None = None,
    repeat: tuple[int, int] | None = None,
    repeat_vary: str = "order",
    sharding: str | None = None,
    before_training: Callable[[ParentRun, int], None] | None = None,
    after_training: Callable[[Path], None] | None = None,
    show_plan: bool = True,
) -> Any:
    """Continue ``parent`` from checkpoint ``from_step`` (a step, or a checkpoint name such as ``ckpt_012``) for
    ``steps`` updates; return the branch dir.

    The plan (``resume.plan.BranchPlan``: what is fetched, disk, tokens, FLOPs, micro-batch, time) is
    printed first; a released parent is then fetched as needed (weights at N, the index entries and
    rows of the batches trained on and replayed; a chunk release's files through
    ``resume.chunk_plan``). ``dry_run`` returns the plan having fetched and written nothing.
    ``micro_batch_size``: ``auto``/None (the largest that fits this device) or a number.

    The output directory is locked for the whole run (``checkpoints_cache.locks``): a second
    process on the same ``out`` fails at once. ``resume=True`` continues the branch in ``out`` only
    if its whole definition (``resume.branch_definition``) matches, and returns at once when that
    branch is already complete. ``before_training(parent, end)`` is called after the arguments are
    checked and before anything is fetched or written (the CLI checks its comparison arguments
    there); ``after_training(out)`` runs on the main process while the lock is still held (the
    comparison). ``check_branch`` runs the same checks and writes nothing.
    ``numerics``: ``neox`` (GPT-NeoX's rotary tables, tanh GELU, fp16 skip-on-overflow) or ``hf``; default
    ``neox`` for NeoX-family parents (resume.numerics). A chunk-released parent (LLM360) prints its plan first
    and fetches what it needs; ``dry_run`` stops after the plan (returns None). ``order`` picks a chunk
    release's order (``seeded`` | ``file``); ``eval_batches`` is only for the plan (the held-out batches
    ``compare`` will read). ``log_with``: accelerate trackers (``resume.tracking``). ``repeat``: (i, R), the
    i-th of R repeats, with the rows of each batch reordered by seed i (``resume.repeats``, ``repeat_vary``).
    ``sharding``: ``none`` | ``fsdp`` | ``deepspeed`` (default: what the launch's accelerate config or
    environment says; ``resume.sharding``).
    """
    if dry_run and resume:
        raise UserError("--dry-run writes nothing and --resume continues a branch on disk; use one of them, not both")
    mode = resolve_sharding(sharding)
    run, iv, out, from_step, step_name = _open_branch(parent, from_step, steps, intervention, out, order, repeat, mode)
    lock = output_lock(out) if launch_rank() == 0 and not dry_run else contextlib.nullcontext()
    with lock, activated(mode):  # held for the whole run (rank 0 holds it for every process of a launch)
        done = _branch_locked(run, iv, from_step, steps, out, optimizer_state=optimizer_state, resume=resume,
                              micro_batch_size=micro_batch_size, save_every=save_every, precision=precision,
                              numerics=numerics, progress=progress, check_only=False, dry_run=dry_run,
                              step_name=step_name, eval_batches=eval_batches, before_training=before_training,
                              log_with=log_with, repeat=repeat, repeat_vary=repeat_vary, show_plan=show_plan,
                              sharding=mode)[0]
        if done is not None and not dry_run and after_training is not None and launch_rank() == 0:
            after_training(done)
    return done


def check_branch(
    parent: str | Path, from_step: int | str, steps: int, *, intervention: str = "none",
    optimizer_state: str | None = None, out: str | Path | None = None, micro_batch_size: int | str | None = None,
    precision: str | None = None, numerics: str | None = None, order: str | None = None,
    before_training: Callable[[ParentRun, int], None] | None = None, sharding: str | None = None,
) -> BranchDefinition:
    """Every check ``branch`` makes before training, without fetching or writing anything; the resolved definition."""
    mode = resolve_sharding(sharding)
    run, iv, out, from_step, step_name = _open_branch(parent, from_step, steps, intervention, out, order, None, mode)
    with activated(mode):
        return _branch_locked(run, iv, from_step, steps, out, optimizer_state=optimizer_state, resume=False,
                              micro_batch_size=micro_batch_size, save_every=None, precision=precision,
                              numerics=numerics, progress=False, check_only=True, dry_run=False, step_name=step_name,
                              eval_batches=None, before_training=before_training, sharding=mode)[1]


def _open_branch(parent: str | Path, from_step: int | str, steps: int, intervention: str, out: str | Path | None,
                 order: str | None, repeat: tuple[int, int] | None = None, sharding: str = "none",
                 ) -> tuple[ParentRun, Intervention, Path, int, str | None]:
    # 1. validate everything before anything is written
    if steps <= 0:
        raise UserError(f"--steps {steps}: the number of updates must be a positive integer")
    run = open_parent(parent)
    for note in run.branch_notes:
        print(f"note: {run.name}: {note}", file=sys.stderr)
    from_step, step_name = run.resolve_step(from_step)
    if from_step < 0:
        raise UserError(f"--from-step {from_step}: steps are >= 0")
    run.require_step(from_step)
    _with_order(run, order)
    iv = parse_intervention(intervention)
    check_sharding(sharding, launch_world_size(), run.recipe.batch_size, iv)
    rep = f"-rep{repeat[0]}" if repeat else ""
    out = Path(out) if out is not None else Path("branches") / f"{run.name}-step{from_step}-{iv.name}-k{steps}{rep}"
    check_output_dir(out)
    return run, iv, out, from_step, step_name


def _spec_text(iv: Intervention) -> str:
    """The intervention as the plan's header names it: ``none``, ``lawa:k=5,every=1000``, ..."""
    d = iv.describe()
    params = ",".join(f"{k}={v}" for k, v in (d.get("params") or {}).items())
    return d.get("name", "none") + (f":{params}" if params else "")


def _branch_locked(
    run: ParentRun, iv: Intervention, from_step: int, steps: int, out: Path, *, optimizer_state: str | None,
    resume: bool, micro_batch_size: int | str | None, save_every: int | None, precision: str | None,
    numerics: str | None, progress: bool, check_only: bool, dry_run: bool, step_name: str | None,
    eval_batches: int | None, before_training: Callable[[ParentRun, int], None] | None,
    log_with: str | None = None, repeat: tuple[int, int] | None = None, repeat_vary: str = "order",
    show_plan: bool = True, sharding: str = "none",
) -> tuple[Any, BranchDefinition]:
    """(the branch dir -- the plan for a dry run, None for a chunk release's dry run --, the definition)."""
    from resume.microbatch import parse_micro_batch
    from resume.repeats import RowOrder
    from resume.tracking import TRACKING_DIR, flat_config, parse_log_with, row_logger

    end = from_step + steps
    trackers = parse_log_with(log_with)
    row_order = RowOrder(repeat_vary, int(repeat[0]), from_step, end, run.recipe.batch_size) if repeat else None
    recorded = earlier = None
    if not check_only:
        if launch_rank() == 0 and out.is_dir() and not dry_run:
            clean_orphans(out)  # a killed run's temporaries (we hold the lock: nobody else writes here)
        if has_content(out) and not resume:
            raise UserError(f"output directory {out} already exists; pass --resume to continue it or choose another --out")
        if resume and has_content(out) and not Trajectory.is_trajectory(out):
            raise UserError(f"--resume: {out} is not a branch trajectory directory")
        if resume and Trajectory.is_trajectory(out):
            earlier = Trajectory.open(out)
            recorded = BranchDefinition.of_meta(earlier.meta)
            if recorded is None:
                raise UserError(f"--resume: {out} is not a branch trajectory directory (no parent recorded)")
            # continue the branch as it was defined where an argument is left to its default
            optimizer_state = optimizer_state or recorded.optimizer_state
            numerics = numerics or recorded.numerics
    numerics = numerics or default_numerics(run.neox_family)
    check_numerics(numerics, run.model_config.get("model_type"))
    micro_req = parse_micro_batch(micro_batch_size)
    resumed_micro = earlier.meta.get("engine", {}).get("micro_batch_size") if earlier is not None else None
    # an intervention that trains on rows of its own (BiMix on a corpus) needs the parent's rows only to
    # reestimate Adam's moments before N
    own_rows = not iv.reads_parent_rows()
    # what is fetched (metadata only), the optimizer mode, the micro-batch, FLOPs, disk, time
    plan, data, fetch_spans = build_plan(run, from_step, steps, iv, _spec_text(iv), optimizer_state, micro_req, out,
                                         precision, resumed_micro, dry_run=dry_run, own_rows=own_rows)
    mode, reason = plan.optimizer_mode, plan.optimizer_reason
    reestimate = plan.reestimate
    first = reestimate.start if reestimate else from_step
    stop = from_step if own_rows else end  # the parent's batches the branch reads: [first, stop)
    if before_training is not None:
        before_training(run, end)

    def define() -> BranchDefinition:
        return BranchDefinition(parent=run.spec, step=from_step, end=end, intervention=iv.describe(),
                                optimizer_state=mode, recipe=run.recipe.to_dict(),
                                precision=train_precision(run.recipe, precision), numerics=numerics)

    if hasattr(data, "can_serve"):  # chunk files (LLM360): their plan, then fetch and convert what is missing
        if check_only:  # nothing is fetched for a check; the intervention is set up when the data is there
            return out, define()
        from resume.chunk_plan import prepare_chunk_data

        data = prepare_chunk_data(run, from_step, stop, reestimate, mode, step_name=step_name,
                                  eval_batches=eval_batches, dry_run=dry_run, progress=progress,
                                  extra_lines=plan.compute_lines() if show_plan else [])
        if data is None:
            return None, define()
    elif check_only and fetch_spans is not None:  # a released run's files are not here: nothing is fetched for a check
        return out, define()
    elif not check_only:
        if show_plan and launch_rank() == 0:
            print("\n".join(plan.lines()), flush=True)
        if dry_run:
            return plan, define()

    # NeoX fp16: DeepSpeed's loss scaler replaces accelerate's GradScaler (on CPU fp32 it never applies)
    use_scaler = numerics == "neox" and train_precision(run.recipe, precision) == "fp16"
    saved = resume_point(out) if resume and not check_only else None
    if saved is not None and not (earlier is not None and earlier.meta.get("complete")):  # refused now if it cannot go on
        note = check_resume(saved.train_state, sharding, launch_world_size(),
                            saved.sharding != "none" and saved.intervention_holds_tensors())
        if note and launch_rank() == 0:
            print(note, file=sys.stderr)
    if sharding == "deepspeed" and mode == "exact" and not check_only:
        raise UserError("--sharding deepspeed starts DeepSpeed's ZeRO optimizer from zeros; the parent's exact state "
                        "cannot be handed to it: use --optimizer-state reestimate or fresh")
    if fetch_spans is not None:  # a released mmidx run: the weights at N and the rows, as planned (main process first)
        plan.check_disk()
        accelerator = make_accelerator(run.recipe, precision, own_loss_scaler=use_scaler, log_with=trackers,
                                       project_dir=out / TRACKING_DIR)
        with accelerator.main_process_first():
            fetch_release(run, from_step, fetch_spans, progress=progress and accelerator.is_main_process)
        data = open_data(run, first, stop) if fetch_spans else None
    else:
        accelerator = None
    ctx = branch_context(run, from_step, end, out, data)
    iv.setup(ctx)  # resolves parent-derived parameters (part of the definition) and checks the intervention
    definition = define()
    if recorded is not None:
        check_same_branch(out, definition)
    if check_only:
        return out, definition
    if recorded is not None and Trajectory.open(out).meta.get("complete"):
        print(f"{out} is already complete (same branch definition); nothing to train", file=sys.stderr)
        return out, definition
    if accelerator is None:
        plan.check_disk()
    warning = run.warning_for(from_step)
    if warning:
        print(f"warning: step {from_step} of {run.name} is flagged: {warning}", file=sys.stderr)
    if mode == "fresh" and optimizer_state is None and not iv.fresh_optimizer() and from_step > 0:
        print(f"warning: starting Adam from zeros: {reason}", file=sys.stderr)

    if accelerator is None:
        accelerator = make_accelerator(run.recipe, precision, own_loss_scaler=use_scaler, log_with=trackers,
                                       project_dir=out / TRACKING_DIR)
    check_accelerate_sharding(accelerator, sharding)
    main = accelerator.is_main_process
    micro = plan.micro_batch_size

    meta = {
        "format": FORMAT,
        "name": out.name,
        "architecture": {"model_type": run.model_config.get("model_type"), "config": run.model_config},
        "recipe": run.recipe.to_dict(),
        "steps": run.grid,
        "data_order": _recorded_order(run.data_order, data),
        "parent": {"run": run.spec, "step": from_step},
        "branch_step": from_step,
        "end_step": end,
        "intervention": iv.describe(),
        "optimizer_state": {"mode": mode, "reason": reason, "reestimate_batches": [reestimate.start, reestimate.stop] if reestimate else None},
        "seeds": {"recipe": run.recipe.seed},
        "versions": library_versions(),
        "engine": {"micro_batch_size": micro, "world_size": accelerator.num_processes,
                   "precision": definition.precision, "sharding": sharding,
                   "micro_batch": {"mode": plan.micro_batch_mode, "reason": plan.micro_batch_reason,
                                   "accumulation": plan.accumulation}},
        "plan": plan.to_dict(),
        "complete": False,
    }
    if (run.data_order or {}).get("exactness") not in (None, "exact"):
        meta["exactness"] = run.data_order["exactness"]  # said where a reader of the trajectory cannot miss it
    if run.is_released:
        meta["parent"]["repo_id"] = run.info.repo_id
        meta["parent"]["card"] = run.info.source
    if row_order is not None:
        meta["repeat"] = {"index": int(repeat[0]), "of": int(repeat[1]), **row_order.describe()}

    # 2. the weights at N (after the load-time transform), or the last saved state of this branch
    counters: dict[str, Any] = {}  # schedule offset and loss scaler where the parent's state has them
    if saved is None:
        model = load_model(run.checkpoint_dir(from_step))
        opt, imported = None, None
        if mode == "exact" and run.optimizer_dir(from_step) is not None:
            opt_dir = run.optimizer_dir(from_step)
            opt = _load_optimizer_dir(opt_dir, model, run.recipe)
            counters = _saved_counters(opt_dir)
        elif mode == "exact":
            imported, counters = _import_neox(run, from_step, accelerator, model, meta)
        model = iv.on_load(model, ctx)
        if imported is not None:  # the moments by name, in this engine's group order (neox_ckpt.md §7)
            from resume.optim import adamw_state_by_name

            opt = adamw_state_by_name(model, run.recipe, imported, counters["adam_step"])
    else:  # a sharded state: the weights come from its shards once the model is sharded (FSDP, DeepSpeed)
        model = model_from_config(out / STATE_DIR) if saved.sharding != "none" else load_model(out / STATE_DIR)
        opt = None
        counters = {k: saved.train_state[k] for k in ("schedule_offset", "loss_scaler") if k in saved.train_state}
    model = apply_numerics(model, numerics, run.recipe.precision)
    offset = int(counters.get("schedule_offset", 0))
    scaler = NeoXLossScaler.from_state(counters.get("loss_scaler")) if use_scaler else None
    if saved is not None and earlier is not None:  # the engine continues from the saved counters
        offset = int(earlier.meta.get("schedule_offset") or 0)
        meta["optimizer_state"] = earlier.meta.get("optimizer_state", meta["optimizer_state"])
    meta["architecture"] = {"model_type": model.config.model_type, "config": model.config.to_dict()}
    meta["intervention"] = iv.describe()
    meta["numerics"] = describe_numerics(numerics, run.recipe.precision, scaler)
    meta["schedule_offset"] = offset  # the LR of update n is the schedule at n - offset (+ skips in this branch)
    meta["skipped_steps"] = offset  # DeepSpeed's count: fp16 updates skipped since step 0
    meta["branch_skipped_steps"] = 0

    job = TrainJob(
        out=out,
        model=model,
        recipe=run.recipe,
        data=data,
        start_step=from_step,
        end_step=end,
        save_steps={s for s in run.grid if from_step < s <= end} | {end},
        intervention=iv,
        optimizer_state=opt,
        reestimate_batches=reestimate,
        micro_batch_size=micro,
        save_every=save_every or 50,
        resume_from=saved,
        progress=progress,
        precision=precision,
        schedule_offset=offset,
        loss_scaler=scaler,
        tokenizer_dir=run.checkpoint_dir(from_step),  # the parent's tokenizer goes with every checkpoint
        row_order=row_order,
        sharding=sharding,
        save_start=sharding == "fsdp",
    )
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / TRAJECTORY_FILE, meta)
        if saved is None and not job.save_start:
            write_start(job, model)
        elif saved is not None:
            truncate_metrics(out / "metrics.jsonl", saved.next_update)
    accelerator.wait_for_everyone()
    if trackers:
        accelerator.init_trackers(out.name, config=flat_config(meta))
        job.on_update = row_logger(accelerator)
    train(job, accelerator)
    if trackers:
        accelerator.end_training()
    if main:
        meta["complete"] = True
        meta["intervention"] = iv.describe()
        meta["branch_skipped_steps"] = sum(1 for r in Trajectory(out, meta).metrics() if r.get("skipped"))
        meta["skipped_steps"] = offset + meta["branch_skipped_steps"]
        atomic_write_json(out / TRAJECTORY_FILE, meta)
    accelerator.wait_for_everyone()
    return out, definition


def check_accelerate_sharding(accelerator: Any, sharding: str) -> None:
    """The accelerator the launch made must run the sharding asked for (one line otherwise)."""
    from accelerate.utils import DistributedType

    kind = accelerator.distributed_type
    if sharding == "deepspeed" and kind != DistributedType.DEEPSPEED:
        raise UserError("--sharding deepspeed needs accelerate's DeepSpeed plugin: launch with `accelerate launch "
                        "--config_file examples/accelerate/deepspeed_zero2.yaml -m resume branch ...` (pip install deepspeed)")
    if sharding != "deepspeed" and kind == DistributedType.DEEPSPEED:
        raise UserError(f"--sharding {sharding}, but the accelerate config runs DeepSpeed; pass --sharding deepspeed "
                        "or launch with another config")
    if sharding == "none" and kind == DistributedType.FSDP:
        raise UserError("--sharding none, but the accelerate config runs FSDP; pass --sharding fsdp (or leave it out) "
                        "or launch with a config without FSDP")


def model_from_config(folder: Path) -> Any:
    """A model of the architecture saved in ``folder`` (config.json), fp32, weights to be loaded."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with reading_checkpoint(folder / "config.json"):
        config = AutoConfig.from_pretrained(folder)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _load_optimizer_dir(opt_dir: Path, model: Any, recipe: Any) -> dict[str, Any]:
    """A trajectory's optimizer state at a step, whole and index-keyed: ``optimizer.pt``, or the DCP
    folder an FSDP branch writes (consolidated in this process)."""
    from resume.fsdp import is_dcp_folder, whole_optimizer_state

    if is_dcp_folder(opt_dir):
        with reading_checkpoint(opt_dir / ".metadata"):
            return whole_optimizer_state(opt_dir, model, recipe)
    with reading_checkpoint(opt_dir / "optimizer.pt"):  # a damaged file is named, with what to do
        return torch.load(opt_dir / "optimizer.pt", map_location="cpu", weights_only=True)


def _saved_counters(opt_dir: Path) -> dict[str, Any]:
    """Schedule offset and loss-scaler state saved next to a trajectory's optimizer state (if any)."""
    import json

    info_path = opt_dir / "train_state.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    return {k: info[k] for k in ("schedule_offset", "loss_scaler") if k in info}


def _import_neox(run: ParentRun, step: int, accelerator: Any, model: Any, meta: dict) -> tuple[dict, dict]:
    """Import (or reuse) the parent's NeoX optimizer state at ``step`` (main process first: one download),
    put the fp32 masters into ``model``; return (tensors, counters) and record the source in ``meta``."""
    from checkpoints_cache.neox_fetch import load_imported
    from resume.optim import load_masters

    assert run.import_optimizer is not None
    with accelerator.main_process_first():
        folder = run.import_optimizer(step)
    tensors, info = load_imported(folder)
    try:
        load_masters(model, tensors)  # the branch starts from the fp32 masters, not the fp16 release
    except ValueError as e:
        raise UserError(f"{folder}: {e}") from None
    src = info["source"]
    print(f"optimizer: NeoX state of step {step} from {src['repo_id']}@{src['revision']} ({src['commit'][:10]}): "
          f"num_iters {info['num_iters']}, skipped_steps {info['skipped_steps']}; the next update uses the schedule "
          f"at {info['num_iters']}", file=sys.stderr)
    meta["optimizer_state"].update(
        source={**src, "path": str(folder)}, iteration=info["iteration"], num_iters=info["num_iters"],
        skipped_steps=info["skipped_steps"], adam_step=info["adam_step"], masters="fp32 (optimizer.safetensors)",
        release_defects=info.get("release_defects", []),
    )
    return tensors, {"schedule_offset": info["skipped_steps"], "loss_scaler": info.get("loss_scale"),
                     "adam_step": info["adam_step"]}


def _recorded_order(order: dict[str, Any] | None, data: Any) -> dict[str, Any] | None:
    """The data order a branch records: the parent's, plus (chunk releases) the order used and the chunk stores read."""
    if not hasattr(data, "layout"):
        return order
    out = data.layout.to_dict()
    out["chunks"] = {str(c): {"file": data.layout.filename(c), "position": data.layout.position_of(c),
                              "store": str(st.folder), "rows": st.rows, "labels": str(st.folder / "labels.npy"),
                              "label_names": st.label_names}
                     for c, st in sorted(data.stores.items())}
    return out


def _data_if_any(parent: ParentRun, step: int) -> Any:
    try:
        return open_data(parent, step, step)
    except UserError:
        return None
