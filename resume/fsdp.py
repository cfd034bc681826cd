"""FSDP2 full sharding of the module the engine trains, its sharded state, and its gathered saves.

Sharding (``shard``): ``fully_shard`` on each transformer block (the classes the transformers model
names in ``_no_split_modules``, else the layer list of its ``base_model``), then on the root -- the
module the engine trains (the model, or the loss wrapper around it), so the root's unit holds the
embeddings, the final norm and the LM head, gathered at the start of its forward: the loss reaches
the head's weight whole. Where accelerate runs FSDP itself (``DistributedType.FSDP``, GPUs with an
FSDP config) its plugin is given the same block classes and ``accelerator.prepare`` shards; with
``ACCELERATE_USE_CPU=1`` accelerate 1.15 keeps plain DDP (``MULTI_CPU``) even when given an FSDP
plugin, so the engine calls ``fully_shard`` itself: the same PyTorch engine accelerate would call.
Every parameter becomes a ``DTensor`` sharded on dim 0 (``Shard(0)``) over the ranks.

State: the optimizer is built after sharding (over the DTensor parameters); a whole optimizer
state (the parent's ``optimizer.pt``) is sliced into each rank's shards (``load_whole_optimizer_state``);
the resumable state and ``optimizer/stepS`` are ``torch.distributed.checkpoint`` (DCP) folders, written
by every rank in parallel (``.metadata`` + one ``__R_0.distcp`` per rank) and read back resharded.

Saving ``checkpoints/stepS``: the full state dict is gathered tensor by tensor (``full_tensor``), kept
on rank 0 in host memory only, and written there with ``save_pretrained``: loadable with
``from_pretrained`` in one process. Rank 0 holds one whole copy of the model in host memory while it
writes; the other ranks never hold more than the tensor being gathered.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn

from checkpoints_cache.errors import UserError
from checkpoints_cache.trajectory import atomic_dir

DCP_DIR = "dcp"  # inside TRAJ/state/: model + optimizer, sharded
DCP_METADATA = ".metadata"


# -- the blocks and the sharding ----------------------------------------------------------------------
def block_classes(model: nn.Module) -> tuple[type, ...]:
    """The transformer block classes of a transformers model: those named in ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return tuple({type(m) for m in model.modules() if type(m).__name__ in names})


def transformer_blocks(trained: nn.Module, model: nn.Module) -> list[nn.Module]:
    """The transformer blocks inside ``trained`` (the model or a wrapper around it), in order."""
    classes = block_classes(model)
    if classes:
        blocks = [m for m in trained.modules() if isinstance(m, classes)]
        if blocks:
            return blocks
    layers = getattr(getattr(model, "base_model", model), "layers", None)
    if isinstance(layers, nn.ModuleList) and len(layers):
        return list(layers)
    raise UserError(f"--sharding fsdp: cannot find the transformer blocks of {type(model).__name__} (no "
                    "_no_split_modules and no base_model.layers); branchpoint shards transformers causal LMs")


def is_sharded(module: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in module.parameters())


def shard(trained: nn.Module, model: nn.Module, accelerator: Any) -> nn.Module:
    """``fully_shard`` each transformer block, then the root ``trained`` (in place; returned)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy()  # fp32 on CPU; half precision comes from accelerate's autocast
    kwargs: dict[str, Any] = {"mp_policy": mp}
    for block in transformer_blocks(trained, model):
        fully_shard(block, reshard_after_forward=True, **kwargs)
    fully_shard(trained, **kwargs)  # reshard_after_forward=None: the root stays gathered until backward
    if not is_sharded(trained):
        raise RuntimeError("fully_shard left the model unsharded")
    return trained


def configure_accelerate_plugin(accelerator: Any, model: nn.Module) -> None:
    """Where accelerate runs FSDP itself: FSDP2, full sharding, blocks = the model's block classes, fp32
    weights and gradient reductions (half precision from accelerate's autocast, as under DDP)."""
    plugin = accelerator.state.fsdp_plugin
    if getattr(plugin, "fsdp_version", 1) != 2:
        raise UserError("--sharding fsdp: the accelerate config asks for FSDP1; set `fsdp_version: 2` in its "
                        "fsdp_config (see examples/accelerate/fsdp2.yaml)")
    if not plugin.transformer_cls_names_to_wrap:
        plugin.transformer_cls_names_to_wrap = sorted(c.__name__ for c in block_classes(model)) or None
    # accelerate's bf16 policy gathers bf16 weights and reduce-scatters bf16 gradients; the engine's DDP
    # path keeps fp32 masters and fp32 gradient sums under autocast: keep that (as ``shard`` does on CPU)
    from torch.distributed.fsdp import MixedPrecisionPolicy

    plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.float32, reduce_dtype=torch.float32)


# -- optimizer state --------------------------------------------------------------------------------------
@torch.no_grad()
def load_whole_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load an index-keyed optimizer state of whole tensors (``optimizer.state_dict()`` of an unsharded
    run, same parameter order) into an optimizer over DTensor parameters: each rank keeps the slice of
    every moment that matches its shard of the parameter (an exact copy; no communication)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for g in optimizer.param_groups for p in g["params"]]
    local: dict[Any, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        p = params[int(index)]
        out = {}
        for key, value in entry.items():
            if isinstance(p, DTensor) and torch.is_tensor(value) and tuple(value.shape) == tuple(p.shape):
                value = distribute_tensor(value.to(p.device, p.dtype), p.device_mesh, p.placements, src_data_rank=None)
            out[key] = value
        local[index] = out
    optimizer.load_state_dict({"state": local, "param_groups": state["param_groups"]})


def whole_optimizer_state(folder: Path, model: nn.Module, recipe: Any) -> dict[str, Any]:
    """The index-keyed optimizer state (as ``optimizer.state_dict()`` of ``build_optimizer(model, recipe)``)
    held in a DCP ``optimizer/stepS`` folder written by an FSDP branch (keys are parameter names), read in
    one process: what a branch of that branch loads."""
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from resume.optim import build_optimizer

    with tempfile.TemporaryDirectory() as tmp:  # DCP's own consolidation, then a plain weights-only load
        dcp_to_torch_save(str(folder), Path(tmp) / "whole.pt")
        loaded = torch.load(Path(tmp) / "whole.pt", map_location="cpu", weights_only=True)["optimizer"]
    optimizer = build_optimizer(model, recipe)
    names = {id(p): n for n, p in model.named_parameters()}
    template = optimizer.state_dict()
    state, index = {}, 0
    for group, saved in zip(optimizer.param_groups, loaded["param_groups"]):
        for p in group["params"]:
            name = names[id(p)]
            if name in loaded["state"]:
                state[index] = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in loaded["state"][name].items()}
            index += 1
    groups = []
    for g_template, saved in zip(template["param_groups"], loaded["param_groups"]):
        groups.append({**{k: v for k, v in saved.items() if k != "params"}, "params": g_template["params"]})
    return {"state": state, "param_groups": groups}


def is_dcp_folder(folder: Path) -> bool:
    return (Path(folder) / DCP_METADATA).is_file()


# -- gathering and collective folders -------------------------------------------------------------------------
def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


@torch.no_grad()
def gather_full(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """A state dict with DTensor values -> the whole tensors on rank 0's CPU (``{}`` on the other ranks).

    Collective: every rank calls it, with the same keys in the same order. Tensors are gathered one at a
    time (aliases of one tensor, e.g. tied weights, once)."""
    from torch.distributed.tensor import DTensor

    main = _rank() == 0
    out: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}
    for key, value in state.items():
        if id(value) in seen:
            if main:
                out[key] = out[seen[id(value)]]
            continue
        seen[id(value)] = key
        t = value.full_tensor() if isinstance(value, DTensor) else value
        if main:
            out[key] = t.detach().to("cpu", copy=True)
        del t
    return out


@contextlib.contextmanager
def shared_atomic_dir(final: Path, need: int | None = None) -> Iterator[Path]:
    """``atomic_dir`` that every rank writes into: rank 0 makes the temporary folder and renames it to
    ``final`` once every rank has finished writing (a barrier), so ``final`` appears only when complete."""
    main = _rank() == 0
    with (atomic_dir(final, need=need) if main else contextlib.nullcontext()) as tmp:
        box = [str(tmp) if main else None]
        dist.broadcast_object_list(box, src=0)
        yield Path(box[0])
        dist.barrier()


# -- DCP state ----------------------------------------------------------------------------------------------
def sharded_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """{"model": ..., "optimizer": ...} with DTensor values keyed by parameter name (DCP's layout)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    msd, osd = get_state_dict(model, optimizer)
    return {"model": msd, "optimizer": osd}


def save_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer, with_model: bool = True) -> None:
    """Write the model (optional) and optimizer state in DCP form into ``folder`` (collective)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = sharded_state(model, optimizer) if with_model else {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Read a DCP model + optimizer state into the sharded ``model`` and ``optimizer`` (any world size)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = sharded_state(model, optimizer)
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def adam_moment_chunks(folder: Path, name: str, moment: str = "exp_avg") -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(offsets, sizes) of the chunks a DCP folder holds of the Adam moment of parameter ``name``:
    one chunk per rank that holds a shard -- what proves the optimizer state was sharded."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(folder)).read_metadata().state_dict_metadata
    key = f"optimizer.state.{name}.{moment}"
    if key in meta:
        return [(tuple(c.offsets), tuple(c.sizes)) for c in meta[key].chunks]
    raise KeyError(f"no {moment} of {name} in {folder}")
