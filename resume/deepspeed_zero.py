"""DeepSpeed ZeRO (``--sharding deepspeed``) through accelerate's DeepSpeed plugin.

The launch brings the plugin (``accelerate launch --config_file examples/accelerate/deepspeed_zero2.yaml``;
the ZeRO stage, offload and precision come from there). The engine keeps its own semantics:

- accumulation: the engine splits the global batch into micro-batches as for any world size and
  divides each loss by their count; DeepSpeed is told ``gradient_accumulation_steps = 1`` and sees
  the last micro-batch of an update as the accumulation boundary (accelerate's ``sync_gradients``),
  where its ``engine.step`` clips (the parent's ``grad_clip``, written into the DeepSpeed config) and
  steps the optimizer. The LR is still the engine's, written into the param groups before each update.
- saving: ``checkpoints/stepS`` from ``accelerator.get_state_dict`` (ZeRO-3 gathers the 16-bit weights
  to rank 0: ``zero3_save_16bit_model``), written by rank 0 with ``save_pretrained``; the optimizer
  and resumable state are DeepSpeed's own sharded checkpoint (``accelerator.save_state``), which
  resumes on the same world size only (``resume.sharding.check_resume``).
- DeepSpeed builds its optimizer state from zeros: ``--optimizer-state exact`` is refused before work.

Not run in this project's tests: DeepSpeed is not installed on the CPU machines and ZeRO needs GPUs
(``tests/engine/test_fsdp.py::test_deepspeed_zero2_branch`` skips with that reason).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from checkpoints_cache.trajectory import OPTIMIZER, step_dir_name
from resume.fsdp import shared_atomic_dir
from resume.optim import build_optimizer
from resume.state import STATE_DIR, set_rng_state, write_sharded_state

DS_DIR = "deepspeed"  # inside TRAJ/state/ and optimizer/stepS/: accelerate.save_state's folder


def prepare(job: Any, accelerator: Any, model: Any, hf_model: Any, micro: int) -> tuple[Any, Any]:
    """The loss wrapper and the parent's AdamW handed to DeepSpeed; the saved state loaded on --resume."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["gradient_accumulation_steps"] = 1  # the engine accumulates (boundary = the last micro-batch)
    config["train_micro_batch_size_per_gpu"] = int(micro)
    config["train_batch_size"] = int(micro) * accelerator.num_processes
    config["gradient_clipping"] = float(job.recipe.grad_clip)  # applied inside DeepSpeed's engine.step
    optimizer = build_optimizer(hf_model, job.recipe)
    job.intervention.configure_optimizer(optimizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    if job.resume_from is not None:
        accelerator.load_state(str(job.resume_from.path / DS_DIR))
        job.intervention.load_state_dict(job.resume_from.intervention_state(accelerator.process_index))
        set_rng_state(job.resume_from.train_state["rng"])
    return model, optimizer


def full_weights(accelerator: Any, model: Any) -> dict[str, torch.Tensor]:
    """The transformers model's whole state dict on rank 0 (collective under ZeRO-3)."""
    state = accelerator.get_state_dict(model)
    prefix = "model."  # the loss wrapper's attribute holding the transformers model
    return {k[len(prefix):] if k.startswith(prefix) else k: v.detach().to("cpu") for k, v in (state or {}).items()}


def save(job: Any, accelerator: Any, model: Any, unwrapped: Any, step: int, *, saving: bool, rolling: bool,
         extra: dict[str, Any], counters: dict[str, Any]) -> None:
    """checkpoints/stepS (+ optimizer/stepS) and the rolling resumable state of a DeepSpeed run (every rank)."""
    from resume.engine import _write_checkpoint

    if saving:
        weights = full_weights(accelerator, model)
        if accelerator.is_main_process:
            _write_checkpoint(job, unwrapped, step, weights, job.intervention.extra_weights(unwrapped, step))
        del weights
        if job.save_optimizer:
            with shared_atomic_dir(job.out / OPTIMIZER / step_dir_name(step)) as tmp:
                accelerator.save_state(str(tmp / DS_DIR))
                if accelerator.is_main_process:
                    info = {"step": step, "next_update": step, "sharding": "deepspeed",
                            "world_size": accelerator.num_processes, **counters}
                    (tmp / "train_state.json").write_text(json.dumps(info) + "\n")
    if rolling:
        with shared_atomic_dir(job.out / STATE_DIR) as tmp:
            accelerator.save_state(str(Path(tmp) / DS_DIR))
            write_sharded_state(tmp, model=unwrapped, next_update=step, rank=accelerator.process_index,
                                extra={**extra, "sharding": "deepspeed"},
                                intervention_state=job.intervention.state_dict())
    accelerator.wait_for_everyone()
