"""Which sharding a branch trains under, and the checks that refuse a bad combination before any work.

``branch --sharding none|fsdp|deepspeed``; without the flag, what the launch says: ``accelerate launch
--config_file fsdp.yaml`` exports ``ACCELERATE_USE_FSDP=true`` (a DeepSpeed config
``ACCELERATE_USE_DEEPSPEED=true``), and the same variables set by hand make ``torchrun`` equivalent.

- ``none``: one process, or plain DDP under torchrun / accelerate (every rank holds the whole model).
- ``fsdp``: PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``) full sharding: parameters, gradients
  and AdamW moments are split over the ranks (``resume.fsdp``).
- ``deepspeed``: DeepSpeed ZeRO through accelerate's DeepSpeed plugin (the stage comes from its config).

The mode is set for the process while a branch runs (``activated``), because interventions are set up
and applied (``on_load``) before the model is sharded, and must already know that under FSDP every rank
keeps its own shards of their copies (``resume.interventions.weights.holds_copies``).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from typing import Any, Iterator

from checkpoints_cache.errors import UserError
from resume.launch import launch_world_size  # noqa: F401  (re-exported: the launch's world size)
from resume.microbatch import divisors

MODES = ("none", "fsdp", "deepspeed")
# The hooks that see the training weights while they are sharded; an intervention overriding one of them
# must declare the sharding it supports (``Intervention.SHARDING``).
WEIGHT_HOOKS = ("after_step", "extra_weights")

_active: str = "none"


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def launch_sharding(environ: dict[str, str] | None = None) -> str:
    """The sharding an ``accelerate launch --config_file`` (or the equivalent environment) asks for."""
    env = os.environ if environ is None else environ
    if _truthy(env.get("ACCELERATE_USE_DEEPSPEED")):
        return "deepspeed"
    if _truthy(env.get("ACCELERATE_USE_FSDP")):
        return "fsdp"
    return "none"


def resolve_sharding(requested: str | None, environ: dict[str, str] | None = None) -> str:
    """``--sharding`` if given, else the launch's; an unknown mode is a one-line error."""
    if requested is None:
        return launch_sharding(environ)
    if requested not in MODES:
        raise UserError(f"--sharding {requested!r}: use one of {', '.join(MODES)}")
    return requested


def deepspeed_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def active() -> str:
    """The sharding of the branch this process is running ("none" outside a branch)."""
    return _active


@contextlib.contextmanager
def activated(mode: str) -> Iterator[None]:
    global _active
    previous, _active = _active, mode
    try:
        yield
    finally:
        _active = previous


def supported_sharding(intervention: Any) -> tuple[str, ...]:
    """The sharding modes an intervention runs under: its ``SHARDING`` if declared; otherwise every mode
    when it only acts before the model is sharded (``on_load``), on the LR, the rows or the optimizer's
    settings, and ``none`` only when it overrides a hook that sees the training weights during training."""
    declared = getattr(intervention, "SHARDING", None)
    if declared is not None:
        return tuple(declared)
    from resume.interventions.base import Intervention

    cls = type(intervention)
    touches = [h for h in WEIGHT_HOOKS if inspect.getattr_static(cls, h, None) is not getattr(Intervention, h)]
    return ("none",) if touches else MODES


def check_sharding(mode: str, world_size: int, batch_size: int, intervention: Any) -> None:
    """Refuse, before anything is fetched or written, a launch that cannot train as asked."""
    via = "the launch" if mode != "none" else "this launch"
    if mode == "deepspeed" and not deepspeed_available():
        raise UserError("--sharding deepspeed needs the deepspeed package, which is not installed here; "
                        "`pip install deepspeed` and launch with `accelerate launch --config_file "
                        "examples/accelerate/deepspeed_zero2.yaml ...`, or use --sharding fsdp")
    if mode != "none" and world_size < 2:
        raise UserError(
            f"--sharding {mode} needs several processes and {via} has {world_size}; launch with "
            f"`accelerate launch --config_file examples/accelerate/fsdp2.yaml -m resume branch ...` or "
            f"`ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m resume branch ... --sharding {mode}` "
            "(or use --sharding none)"
        )
    if mode != "none" and batch_size % world_size:  # (unsharded launches: the micro-batch plan says it)
        sizes = divisors(batch_size)
        shown = ", ".join(str(d) for d in sizes[:8]) + (", ..." if len(sizes) > 8 else "")
        raise UserError(
            f"{via} has {world_size} processes (--sharding {mode}), which do not divide the global batch of "
            f"{batch_size} rows; use a world size (num_processes x num_machines) among {shown}"
        )
    supported = supported_sharding(intervention)
    if mode not in supported:
        name = getattr(intervention, "name", type(intervention).__name__)
        if getattr(intervention, "SHARDING", None) is None:
            why = (f"it reads or changes the training weights during training ({', '.join(WEIGHT_HOOKS)}) and does "
                   f"not declare SHARDING = (\"none\", \"{mode}\") (see resume/interventions/weights.py for "
                   "shard-aware helpers)")
        else:
            why = f"it runs under {', '.join(supported)} only"
        raise UserError(f"--intervention {name} cannot run with --sharding {mode}: {why}; "
                        f"use --sharding {supported[0]}")


def check_resume(saved_info: dict[str, Any], mode: str, world_size: int, intervention_tensors: bool) -> str | None:
    """Refuse a ``--resume`` whose saved state this launch cannot continue; return a note to print, if any.

    A state saved without sharding is whole: it resumes unsharded or under FSDP on any world size (as
    before); DeepSpeed resumes only its own checkpoints.
    An FSDP state (``torch.distributed.checkpoint``) resumes under FSDP on any world size -- the
    checkpoint reshards -- unless the intervention keeps per-rank shards of its own (the anytime EMA):
    those resume on the same world size only. A DeepSpeed state resumes under DeepSpeed on the same
    world size."""
    saved_mode = saved_info.get("sharding", "none")
    saved_world = int(saved_info.get("world_size", 1))
    if saved_mode == "none" and mode == "deepspeed":
        raise UserError(f"--resume: the saved state was written with --sharding none on {saved_world} process(es); "
                        "DeepSpeed resumes only its own checkpoints: continue it with --sharding none or fsdp")
    if saved_mode == "none":
        return None
    if mode != saved_mode:
        raise UserError(
            f"--resume: the saved state was written with --sharding {saved_mode} on {saved_world} processes; "
            f"continue it with --sharding {saved_mode}, not {mode}"
        )
    if world_size == saved_world:
        return None
    if saved_mode == "deepspeed":
        raise UserError(f"--resume: the DeepSpeed state was saved on {saved_world} processes and this launch has "
                        f"{world_size}; resume it on {saved_world} processes")
    if intervention_tensors:
        raise UserError(f"--resume: the intervention's state is sharded over the {saved_world} processes that saved "
                        f"it and this launch has {world_size}; resume it on {saved_world} processes")
    return (f"note: resuming on {world_size} processes a state saved on {saved_world}: the model and optimizer "
            "state reshard; the data order is the same, the fp32 reduction order is not (results agree to the "
            "fp32 floor, not bit for bit)")
