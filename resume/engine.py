"""The training engine: continue a run from checkpoint N with its own recipe, under accelerate.

Read top to bottom: ``train`` is the loop every run goes through (the toy from step 0, every branch
from step N). ``branch`` (in ``resume.branching``) prepares a ``TrainJob`` from a parent run.

Step semantics (DESIGN.md): the update with index ``n`` trains on global batch ``n`` and produces
checkpoint ``step{n+1}``; its LR is the schedule at ``n``. A job from ``start_step`` N to
``end_step`` N+K runs updates N .. N+K-1.

Exactness: the LR is a pure function of ``n`` written into the param groups; the global batch is
fixed and the number of accumulation steps is derived from the world size
(``data_order.steps.rank_microbatches``); the optimizer state, weights and data cursor are restored
exactly. On CPU the arithmetic is fp32 and a control branch reproduces the parent bit for bit.

Memory: the loss is ``resume.loss.CausalLMLoss`` (chunked cross-entropy, never the full fp32
logits); that wrapper is what ``accelerator.prepare`` wraps, so DDP/FSDP hooks fire on its forward.

Sharding (``job.sharding``, ``resume.sharding``): ``fsdp`` shards the module the engine trains (the
loss wrapper: each transformer block, then the wrapper as root) with FSDP2 (``resume.fsdp``), builds
the optimizer over the shards, saves checkpoints by gathering them to rank 0 and the optimizer /
resumable state as sharded DCP folders; ``deepspeed`` hands model and optimizer to accelerate's
DeepSpeed plugin (``resume.deepspeed_zero``). ``none`` (one process or DDP) is unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from transformers.utils import logging as hf_logging

from checkpoints_cache.errors import UserError
from checkpoints_cache.fetch import AUX_FILES
from checkpoints_cache.progress import progress_bar
from checkpoints_cache.recipe import Recipe
from checkpoints_cache.trajectory import (
    CHECKPOINTS,
    METRICS,
    OPTIMIZER,
    atomic_dir,
    atomic_write_text,
    step_dir_name,
)
from data_order.steps import accumulation_steps, rank_microbatches
from resume.interventions.base import Control, Intervention
from resume.launch import launch_world_size
from resume.loss import CausalLMLoss
from resume.optim import build_optimizer
from resume.schedule import lr_at
from resume.state import STATE_DIR, SavedState, load_state, set_rng_state, tensor_bytes, write_training_state

hf_logging.disable_progress_bar()  # one progress bar per run (ours), not one per save_pretrained

# The tokenizer files among those a checkpoint folder carries (generation_config.json is the model's).
TOKENIZER_FILES = tuple(n for n in AUX_FILES if n != "generation_config.json")


@dataclass
class TrainJob:
    """Everything one training run needs; built by ``build_toy`` or ``branch``."""

    out: Path  # the trajectory directory being written
    model: Any  # transformers model with the weights at ``start_step`` (after the load-time transform)
    recipe: Recipe
    data: Any  # data_order.source.TokenRows: batch_size rows of seq_len + 1 tokens per global batch
    start_step: int
    end_step: int
    save_steps: set[int]  # checkpoint steps in (start_step, end_step] written to checkpoints/
    intervention: Intervention = field(default_factory=Control)
    optimizer_state: dict[str, Any] | None = None  # exact state to load, or None (zeros)
    reestimate_batches: range | None = None  # replay these batches at lr 0 to rebuild Adam's moments
    micro_batch_size: int | None = None
    save_every: int = 50  # resumable state every S updates (and at every saved checkpoint)
    save_optimizer: bool = True  # optimizer/stepS/ next to every saved checkpoint
    resumable: bool = True  # keep a rolling resumable state in TRAJ/state/
    resume_from: SavedState | None = None
    progress: bool = True
    precision: str | None = None  # None: fp32 on CPU, the recipe's half precision on GPU
    on_update: Callable[[dict[str, Any]], None] | None = None  # called with each metrics row
    # NeoX semantics (neox_ckpt.md §3, neox_fidelity.md §3): the LR of update n is the schedule at
    # n - schedule_offset (the parent's skipped fp16 steps); each skipped update adds one.
    schedule_offset: int = 0
    loss_scaler: Any = None  # resume.numerics.NeoXLossScaler: skip on overflow (fp16 branches of NeoX parents)
    tokenizer_dir: Path | None = None  # its tokenizer files are copied into every saved checkpoint
    row_order: Callable[[int, np.ndarray], np.ndarray] | None = None  # repeats: reorder batch n's rows
    sharding: str = "none"  # none (one process / DDP) | fsdp | deepspeed (resume.sharding)
    # sharded runs: the engine writes checkpoints/step{start} itself, once the model is sharded (the
    # intervention's averaged weights at N are shards by then); unsharded runs: write_start, before train
    save_start: bool = False


def train_precision(recipe: Recipe, precision: str | None = None) -> str:
    """The precision a run computes in: fp32 on CPU, else the parent's (or the one asked for)."""
    return precision or (recipe.precision if torch.cuda.is_available() else "fp32")


def make_accelerator(recipe: Recipe, precision: str | None = None, own_loss_scaler: bool = False,
                     log_with: list[str] | None = None, project_dir: Path | None = None) -> Accelerator:
    """fp32 on CPU; on GPU the parent's half precision through accelerate's autocast. ``own_loss_scaler``:
    the job brings its own (NeoX) loss scaler, so accelerate's GradScaler is switched off. ``log_with``:
    accelerate trackers (``resume.tracking``), writing under ``project_dir``."""
    precision = train_precision(recipe, precision)
    mixed = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}.get(precision)
    if mixed is None:
        raise UserError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")
    handlers = []
    if own_loss_scaler:
        from accelerate.utils import GradScalerKwargs

        handlers.append(GradScalerKwargs(enabled=False))
    tracking = {"log_with": list(log_with), "project_dir": str(project_dir)} if log_with else {}
    accelerator = Accelerator(mixed_precision=mixed, kwargs_handlers=handlers, **tracking)
    expected = launch_world_size()
    if accelerator.num_processes != expected:
        # torchrun without ACCELERATE_USE_CPU=1 on a CPU machine starts W independent rank-0 runs
        # (ecosystem.md §4.1): refuse rather than train W copies silently.
        raise UserError(
            f"accelerate sees {accelerator.num_processes} process(es) but WORLD_SIZE={expected}; "
            "on CPU launch with `ACCELERATE_USE_CPU=1 torchrun --nproc_per_node N ...`"
        )
    return accelerator


# Plain and DDP runs: every process holds whole gradients, so torch's own clipping and zeroing are
# the same computation as accelerate's wrappers, which cost ~1 ms of Python checks per update (5% of
# a toy step on CPU; benchmarks/RESULTS.md). FSDP / DeepSpeed / XLA go through accelerate.
PLAIN_TYPES = {DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU}


def clip_gradients(accelerator: Accelerator, model: Any, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    if accelerator.distributed_type in PLAIN_TYPES:
        if accelerator.scaler is not None:
            accelerator.unscale_gradients()  # fp16: clip the true gradients, as accelerate does
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    return accelerator.clip_grad_norm_(model.parameters(), max_norm)


def zero_gradients(accelerator: Accelerator, optimizer: Any) -> None:
    if accelerator.distributed_type in PLAIN_TYPES:
        optimizer.optimizer.zero_grad(set_to_none=True)
    else:
        optimizer.zero_grad(set_to_none=True)


def default_micro_batch(batch_size: int, world_size: int) -> int:
    """The largest micro-batch that splits the global batch evenly over the processes."""
    if batch_size % world_size:
        raise UserError(f"global batch {batch_size} cannot be split over {world_size} processes; use a divisor")
    return batch_size // world_size


def _rows_tensor(data: Any, rows: np.ndarray) -> torch.Tensor:
    start = int(rows[0])
    if rows.size and int(rows[-1]) - start == rows.size - 1 and np.all(np.diff(rows) == 1):
        arr = data.rows(start, start + rows.size)  # one contiguous read
    else:
        arr = data.take(rows)
    return torch.from_numpy(np.asarray(arr, dtype=np.int64))


def _rows_hash(rows: np.ndarray) -> str:
    return hashlib.sha1(np.sort(rows.astype(np.int64)).tobytes()).hexdigest()[:16]


def tokenizer_files(folder: Path | None) -> list[Path]:
    """The tokenizer files of a checkpoint folder (as save_pretrained writes them), if any."""
    if folder is None:
        return []
    return [Path(folder) / n for n in TOKENIZER_FILES if (Path(folder) / n).is_file()]


def save_checkpoint(job: TrainJob, model: Any, step: int, optimizer_state: dict[str, Any] | None,
                    counters: dict[str, Any] | None = None) -> None:
    """checkpoints/stepS (save_pretrained + the run's tokenizer) + averaged/ weights + optimizer/stepS,
    each atomically. The tokenizer goes next to every set of weights, so each folder loads on its own
    (``AutoTokenizer``, lm-eval's ``HFLM``). ``counters``: the schedule offset and loss-scaler state at
    S (a branch from S continues them)."""
    extra = job.intervention.extra_weights(model, step)
    _write_checkpoint(job, model, step, None, extra)
    if optimizer_state is not None:
        with atomic_dir(job.out / OPTIMIZER / step_dir_name(step), need=tensor_bytes(optimizer_state)) as tmp:
            torch.save(optimizer_state, tmp / "optimizer.pt")
            info = {"step": step, "next_update": step, **(counters or {})}
            (tmp / "train_state.json").write_text(json.dumps(info) + "\n")


def _write_checkpoint(job: TrainJob, model: Any, step: int, weights: dict[str, torch.Tensor] | None,
                      extra: dict[str, dict[str, Any]]) -> None:
    """checkpoints/stepS: the model (``weights``, else its own state dict), its extra weights and the
    tokenizer, written atomically by the calling process."""
    tok = tokenizer_files(job.tokenizer_dir)
    need = tensor_bytes(weights if weights is not None else model.state_dict()) + tensor_bytes(extra)
    with atomic_dir(job.out / CHECKPOINTS / step_dir_name(step), need=need) as tmp:
        model.save_pretrained(tmp, state_dict=weights, safe_serialization=True)
        for name, state in extra.items():
            model.save_pretrained(tmp / name, state_dict=state, safe_serialization=True)
            for f in tok:
                shutil.copyfile(f, tmp / name / f.name)
        for f in tok:
            shutil.copyfile(f, tmp / f.name)


def save_checkpoint_sharded(job: TrainJob, model: Any, step: int, optimizer: Any,
                            counters: dict[str, Any] | None = None) -> None:
    """``save_checkpoint`` of an FSDP run, called on every rank: the weights (and extra weights) gathered
    tensor by tensor and written by rank 0 in save_pretrained format; ``optimizer`` (None: not saved)
    as a DCP folder ``optimizer/stepS`` that every rank writes its shards into."""
    from resume import fsdp

    extra = job.intervention.extra_weights(model, step)
    weights = fsdp.gather_full(model.state_dict())
    extra = {name: fsdp.gather_full(state) for name, state in extra.items()}
    if torch.distributed.get_rank() == 0:
        _write_checkpoint(job, model, step, weights, extra)
    del weights, extra
    if optimizer is not None:
        with fsdp.shared_atomic_dir(job.out / OPTIMIZER / step_dir_name(step)) as tmp:
            fsdp.save_sharded(tmp, model, optimizer, with_model=False)
            if torch.distributed.get_rank() == 0:
                info = {"step": step, "next_update": step, "sharding": "fsdp",
                        "world_size": torch.distributed.get_world_size(), **(counters or {})}
                (tmp / "train_state.json").write_text(json.dumps(info) + "\n")
    torch.distributed.barrier()


def _append_metrics(path: Path, row: dict[str, Any]) -> None:
    # No fsync per line: rows after the last saved state are dropped on --resume anyway.
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def truncate_metrics(path: Path, last_step: int) -> None:
    """Keep metrics rows up to ``last_step`` (drop a torn last line from a killed run)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("step", 0) <= last_step:
            kept.append(json.dumps(row))
    atomic_write_text(path, "".join(k + "\n" for k in kept))


def train(job: TrainJob, accelerator: Accelerator | None = None) -> Any:
    """Run updates ``start_step .. end_step - 1``; return the unwrapped model at ``end_step``."""
    recipe = job.recipe
    accelerator = accelerator or make_accelerator(recipe, job.precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    batch_size, seq_len = recipe.batch_size, recipe.seq_len
    micro = job.micro_batch_size or default_micro_batch(batch_size, world)
    job.data = job.intervention.token_rows(job.data)  # a data intervention may add rows of its own corpus
    n_accum = accumulation_steps(batch_size, world, micro)
    main = accelerator.is_main_process

    # --- model and optimizer: weights at start_step, the parent's AdamW, the saved moments -------
    hf_model = job.model.to(accelerator.device)
    model = CausalLMLoss(hf_model)
    start = job.start_step
    fsdp, zero = job.sharding == "fsdp", job.sharding == "deepspeed"
    if fsdp or zero:
        if fsdp:
            model, optimizer = _prepare_fsdp(job, accelerator, model, hf_model)
        else:
            from resume import deepspeed_zero

            model, optimizer = deepspeed_zero.prepare(job, accelerator, model, hf_model, micro)
        if job.resume_from is not None:
            start = job.resume_from.next_update
    else:
        optimizer = build_optimizer(hf_model, recipe)
        if job.resume_from is not None:
            optimizer.load_state_dict(job.resume_from.optimizer_state())
            job.intervention.load_state_dict(job.resume_from.intervention_state())
            set_rng_state(job.resume_from.train_state["rng"])
            start = job.resume_from.next_update
        elif job.optimizer_state is not None:
            optimizer.load_state_dict(job.optimizer_state)
        job.intervention.configure_optimizer(optimizer)  # e.g. another weight decay, after any loaded state
        model, optimizer = accelerator.prepare(model, optimizer)
    if job.resume_from is not None and accelerator.scaler is not None:
        scaler_state = job.resume_from.scaler_state()
        if scaler_state:
            accelerator.scaler.load_state_dict(scaler_state)
    unwrapped = accelerator.unwrap_model(model).model  # the transformers model (saved, given to interventions)
    params = [p for p in model.parameters() if p.requires_grad]
    scaler, offset = job.loss_scaler, job.schedule_offset
    if job.resume_from is not None:
        offset = int(job.resume_from.train_state.get("schedule_offset", offset))
        if scaler is not None and job.resume_from.train_state.get("loss_scaler"):
            scaler.load_state_dict(job.resume_from.train_state["loss_scaler"])

    def counters() -> dict[str, Any]:
        out: dict[str, Any] = {"schedule_offset": offset}
        if scaler is not None:
            out["loss_scaler"] = scaler.state_dict()
        return out

    def set_lr(lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    def forward_backward(k: int, rows: np.ndarray, loss_scale: float = 1.0) -> tuple[torch.Tensor, np.ndarray]:
        """Accumulate the gradient of global batch ``k`` (rows given) on this rank; return its mean loss.
        ``loss_scale``: the NeoX scaler's scale multiplies the loss before backward (DeepSpeed's order)."""
        loss_sum = torch.zeros((), device=accelerator.device)
        seen = []
        micro_ranges = rank_microbatches(k, batch_size, world, rank, micro)
        for a, r in enumerate(micro_ranges):
            idx = rows[r.start - k * batch_size : r.stop - k * batch_size]
            seen.append(idx)
            tokens = _rows_tensor(job.data, idx).to(accelerator.device)
            inputs, labels = tokens[:, :-1], tokens[:, 1:]
            sync = a == len(micro_ranges) - 1
            # FSDP reduce-scatters every micro-batch: skipping it would keep whole gradients on each rank
            ctx = contextlib.nullcontext() if sync or fsdp or zero else accelerator.no_sync(model)
            if zero:  # DeepSpeed's accumulation boundary (its engine.step) is the last micro-batch
                accelerator.gradient_state._set_sync_gradients(sync)
            with ctx:
                with accelerator.autocast():
                    loss = model(inputs, labels)
                accelerator.backward((loss if loss_scale == 1.0 else loss * loss_scale) / n_accum)
            loss_sum += loss.detach()
        return loss_sum / n_accum, np.concatenate(seen)

    # --- reestimate: rebuild Adam's moments from the batches before N at lr 0 ---------------------
    if job.resume_from is None and job.reestimate_batches is not None and len(job.reestimate_batches):
        set_lr(0.0)  # AdamW with lr 0 leaves the weights bit-identical (decay is lr * wd)
        for k in progress_bar(job.reestimate_batches, desc="reestimate", enabled=main and job.progress):
            rows = np.arange(k * batch_size, (k + 1) * batch_size, dtype=np.int64)
            forward_backward(k, rows, scaler.loss_scale if scaler is not None else 1.0)
            if scaler is None or not scaler.unscale_and_check(params):  # an overflowed batch adds nothing
                clip_gradients(accelerator, model, params, recipe.grad_clip)
                optimizer.step()
            zero_gradients(accelerator, optimizer)
        for state in optimizer.state.values():  # bias correction as at step N, not step M
            if "step" in state:
                state["step"] = torch.full_like(torch.as_tensor(state["step"]), float(job.start_step))

    if job.save_start and job.resume_from is None:  # sharded runs: step N once the model is sharded
        save_checkpoint_sharded(job, unwrapped, job.start_step,
                                optimizer.optimizer if job.save_optimizer and job.optimizer_state is not None else None,
                                counters())

    metrics_path = job.out / METRICS
    if main:
        job.out.mkdir(parents=True, exist_ok=True)
    if main and job.resume_from is None and job.start_step == start:
        # fresh start of this job: nothing after start may remain from an earlier attempt
        truncate_metrics(metrics_path, start)

    # --- the loop ------------------------------------------------------------------------------
    bar = progress_bar(total=job.end_step - start, desc=f"train {start}->{job.end_step}", enabled=main and job.progress)
    for n in range(start, job.end_step):
        step = n + 1
        lr = job.intervention.lr(n, lr_at(recipe, n - offset))
        set_lr(lr)
        default_rows = np.arange(n * batch_size, (n + 1) * batch_size, dtype=np.int64)
        rows = np.asarray(job.intervention.batch_row_indices(n, default_rows), dtype=np.int64)
        if job.row_order is not None:
            rows = np.asarray(job.row_order(n, rows), dtype=np.int64)
        if rows.shape != default_rows.shape:
            raise RuntimeError(f"intervention returned {rows.shape[0]} rows for batch {n}; the batch has {batch_size}")
        loss_scale = scaler.loss_scale if scaler is not None else 1.0
        loss, seen = forward_backward(n, rows, loss_scale)
        # NeoX fp16 (neox_fidelity.md §3): on overflow the update is skipped, the batch is consumed and the
        # schedule does not advance -- the next update gets this update's LR.
        skipped = scaler is not None and scaler.unscale_and_check(params)
        grad_norm = None
        if not skipped:
            grad_norm = clip_gradients(accelerator, model, params, recipe.grad_clip)
            optimizer.step()
        else:
            offset += 1
        zero_gradients(accelerator, optimizer)
        if scaler is not None:
            scaler.update_scale(skipped)
        job.intervention.after_step(unwrapped, step)

        loss = accelerator.reduce(loss, reduction="mean")
        all_seen = accelerator.gather(torch.from_numpy(seen).to(accelerator.device)).cpu().numpy()
        if hasattr(job.data, "row_ids"):  # chunk releases name rows by chunk * examples_per_chunk + line
            all_seen = job.data.row_ids(all_seen)
        row = {
            "step": step,
            "loss": float(loss),
            "lr": float(lr),
            "grad_norm": None if grad_norm is None else float(_whole(grad_norm)),
            "tokens": step * batch_size * seq_len,
            "batch_rows": _rows_hash(all_seen),
            **job.intervention.metrics(step),
        }
        if scaler is not None:
            row["skipped"] = bool(skipped)
            row["loss_scale"] = loss_scale  # the scale this update ran with
        if main:
            _append_metrics(metrics_path, row)
        if job.on_update is not None:
            job.on_update(row)

        saving = step in job.save_steps or step == job.end_step
        rolling = job.resumable and (saving or step % job.save_every == 0)
        if (saving or rolling) and zero:
            deepspeed_zero.save(job, accelerator, model, unwrapped, step, saving=saving, rolling=rolling,
                                extra={"world_size": world, "micro_batch_size": micro, **counters()},
                                counters=counters())
        elif (saving or rolling) and fsdp:
            if saving:
                save_checkpoint_sharded(job, unwrapped, step, optimizer.optimizer if job.save_optimizer else None,
                                        counters())
            if rolling:
                _write_fsdp_state(job, unwrapped, optimizer, step, {"world_size": world, "micro_batch_size": micro,
                                                                     **counters()}, accelerator)
        elif saving or rolling:
            opt_state = optimizer.state_dict()
            if main:
                if saving:
                    save_checkpoint(job, unwrapped, step, opt_state if job.save_optimizer else None, counters())
            if main and rolling:
                write_training_state(
                    job.out / STATE_DIR,
                    model=unwrapped,
                    optimizer_state=opt_state,
                    next_update=step,
                    extra={"world_size": world, "micro_batch_size": micro, **counters()},
                    intervention_state=job.intervention.state_dict(),
                    scaler_state=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
                )
            accelerator.wait_for_everyone()
        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)  # shown with this update
        bar.update(1)
    bar.close()
    accelerator.wait_for_everyone()
    return unwrapped


def _whole(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's whole value (e.g. the gradient norm of sharded gradients, replicated), else ``t``."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _prepare_fsdp(job: TrainJob, accelerator: Accelerator, model: Any, hf_model: Any) -> tuple[Any, Any]:
    """Shard ``model`` (the loss wrapper around ``hf_model``; FSDP2), build the optimizer over the shards
    and load the state it starts from: the resumable DCP state (``--resume``), or a whole optimizer state
    sliced to the shards."""
    from resume import fsdp

    if accelerator.distributed_type == DistributedType.FSDP:  # accelerate's own FSDP (GPUs + an FSDP config)
        fsdp.configure_accelerate_plugin(accelerator, hf_model)
        model, optimizer = accelerator.prepare(model, build_optimizer(hf_model, job.recipe))
    else:  # accelerate keeps MULTI_CPU: the same fully_shard, called here
        fsdp.shard(model, hf_model, accelerator)
        optimizer = accelerator.prepare(build_optimizer(hf_model, job.recipe))
    hf_model = accelerator.unwrap_model(model).model
    if job.resume_from is not None and job.resume_from.sharding == "none":  # a whole (DDP) state, now sharded
        fsdp.load_whole_optimizer_state(optimizer.optimizer, job.resume_from.optimizer_state())
        job.intervention.load_state_dict(job.resume_from.intervention_state())
        set_rng_state(job.resume_from.train_state["rng"])
    elif job.resume_from is not None:
        fsdp.load_sharded(job.resume_from.path / fsdp.DCP_DIR, hf_model, optimizer.optimizer)
        job.intervention.load_state_dict(job.resume_from.intervention_state(torch.distributed.get_rank()))
        set_rng_state(job.resume_from.train_state["rng"])
    elif job.optimizer_state is not None:
        fsdp.load_whole_optimizer_state(optimizer.optimizer, job.optimizer_state)
    job.intervention.configure_optimizer(optimizer.optimizer)
    return model, optimizer


def _write_fsdp_state(job: TrainJob, model: Any, optimizer: Any, step: int, extra: dict[str, Any],
                      accelerator: Accelerator) -> None:
    """The resumable state of an FSDP run (every rank): model + optimizer as DCP shards, each rank's
    intervention state, and (rank 0) the config, RNG and counters."""
    from resume import fsdp
    from resume.state import write_sharded_state

    with fsdp.shared_atomic_dir(job.out / STATE_DIR) as tmp:
        fsdp.save_sharded(tmp / fsdp.DCP_DIR, model, optimizer.optimizer)
        write_sharded_state(
            tmp, model=model, next_update=step, rank=torch.distributed.get_rank(),
            extra={**extra, "sharding": "fsdp"}, intervention_state=job.intervention.state_dict(),
            scaler_state=accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        )
    accelerator.wait_for_everyone()


def write_start(job: TrainJob, model: Any) -> None:
    """checkpoints/step{start} (after the load-time transform) and its optimizer state, if any."""
    counters: dict[str, Any] = {"schedule_offset": job.schedule_offset}
    if job.loss_scaler is not None:
        counters["loss_scaler"] = job.loss_scaler.state_dict()
    save_checkpoint(job, model, job.start_step, job.optimizer_state if job.save_optimizer else None, counters)


def resume_point(out: Path) -> SavedState | None:
    return load_state(Path(out) / STATE_DIR)


def branch(*args: Any, **kwargs: Any) -> Path:
    """See ``resume.branching.branch`` (kept here so ``resume.engine.branch`` is the one entry point)."""
    from resume.branching import branch as _branch

    return _branch(*args, **kwargs)
