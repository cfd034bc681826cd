"""Weight copies kept off the accelerator, their averages, and writing them back.

Shared by LAWA (uniform mean of snapshots) and the anytime EMA, and the one place where their
tensor operations live (so that sharded training, issue 14, changes them here only). A "weights"
mapping is ``{parameter name: CPU tensor}`` over the model's floating-point parameters
(``named_parameters`` names, which are also ``state_dict`` keys; tied parameters appear once).

Several processes (DDP): every rank holds the same weights, so copies are kept once, by the main
process (``is_main_process``); a change of the training weights made there reaches the other ranks
with ``broadcast_parameters``.

Sharded (``--sharding fsdp``): every parameter is a ``DTensor`` split on dim 0 over the ranks, and
every rank keeps and averages its own shards (``holds_copies`` is true everywhere): ``cpu_snapshot``
copies the local shard, ``copy_into`` writes it, ``uniform_mean_of_files`` reads only its rows, and
``full_state_dict`` wraps the shards back into DTensors that the engine gathers when it saves. The
arithmetic is elementwise, so each shard's mean or EMA is bit for bit the matching rows of the one a
DDP run computes. A copy taken before the model was sharded (``on_load``) is whole; helpers slice it
to the local rows where it meets a sharded parameter (``localize``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import torch

from checkpoints_cache.errors import UserError
from resume.launch import is_launch_main

Weights = dict[str, torch.Tensor]


def float_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


# -- processes and shards -----------------------------------------------------------------------------
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """Rank 0 of the process group (accelerate's main process), or the only process. Before the process
    group exists (an intervention is set up before the accelerator, to validate the branch first), the
    launcher's RANK says it."""
    if _distributed():
        return torch.distributed.get_rank() == 0
    return is_launch_main()


def holds_copies() -> bool:
    """Whether this process keeps an intervention's weight copies: the main process, or every rank of a
    sharded branch (each its own shards; ``resume.sharding.active``)."""
    from resume.sharding import active

    return active() == "fsdp" or is_main_process()


def is_dtensor(t: object) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def local(p: torch.Tensor) -> torch.Tensor:
    """The part of ``p`` this rank holds: its shard of a DTensor, else ``p`` itself."""
    return p.to_local() if is_dtensor(p) else p


def local_rows(p: torch.Tensor) -> tuple[int, int] | None:
    """[start, stop) of the rows (dim 0) of ``p`` this rank holds, for a DTensor sharded as FSDP2 shards
    (``Shard(0)`` on a 1-D mesh: ``torch.chunk`` of dim 0); None for a whole tensor."""
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor import Shard

    if len(p.placements) != 1 or not isinstance(p.placements[0], Shard) or p.placements[0].dim != 0:
        raise UserError(f"a parameter is sharded as {p.placements}; branchpoint's weight copies support FSDP2's "
                        "Shard(0) over one mesh dimension (full sharding)")
    n, world = int(p.shape[0]), p.device_mesh.size()
    rank = p.device_mesh.get_local_rank()
    size = -(-n // world)
    start = min(n, rank * size)
    stop = min(n, start + size)
    if stop - start != local(p).shape[0]:
        raise RuntimeError(f"shard rows {start}:{stop} do not match the local shard {tuple(local(p).shape)}")
    return start, stop


def shard_rows(model: torch.nn.Module) -> dict[str, tuple[int, int]] | None:
    """{name: local rows} of a sharded model's float parameters; None when the model is not sharded."""
    rows = {n: local_rows(p) for n, p in float_params(model)}
    return None if all(r is None for r in rows.values()) else {n: r for n, r in rows.items() if r is not None}


def localize(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``t`` as this rank's part of ``p``: the local rows of a whole tensor shaped like a sharded ``p``."""
    rows = local_rows(p)
    if rows is None or tuple(t.shape) != tuple(p.shape) or tuple(t.shape) == tuple(local(p).shape):
        return t
    return t[rows[0]:rows[1]].clone()


@torch.no_grad()
def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank's float parameters := the main process's (in place; a no-op in one process). Sharded
    parameters are skipped: each rank already wrote its own shard."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return
    for _, p in float_params(model):
        if not is_dtensor(p):
            torch.distributed.broadcast(p.data, src=0)


# -- copies -----------------------------------------------------------------------------------------
@torch.no_grad()
def cpu_snapshot(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Weights:
    """A CPU copy of every float parameter (in its own dtype unless ``dtype`` is given); of a sharded
    parameter, this rank's shard."""
    return {
        n: local(p).detach().to("cpu", dtype=dtype or p.dtype, copy=True) for n, p in float_params(model)
    }


def nbytes(weights: Weights) -> int:
    return sum(t.numel() * t.element_size() for t in weights.values())


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Half-precision sums lose bits quickly; sum in float32 (float64 stays float64).
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def uniform_mean(snapshots: Iterable[Weights]) -> Weights:
    """(1/n)·Σ snapshots, summed in float32 in the given order, returned in each tensor's dtype.

    The mean of a single snapshot is that snapshot bit for bit (x/1 == x), which is what makes
    LAWA with k=1 an exact no-op.
    """
    snaps = list(snapshots)
    if not snaps:
        raise ValueError("uniform_mean of no snapshots")
    n = len(snaps)
    out: Weights = {}
    for name, first in snaps[0].items():
        acc = first.to(accumulation_dtype(first.dtype), copy=True)
        for s in snaps[1:]:
            acc.add_(s[name].to(acc.dtype))
        acc.div_(n)
        out[name] = acc.to(first.dtype)
    return out


@torch.no_grad()
def uniform_mean_of_files(paths: Sequence[Path], rows: dict[str, tuple[int, int]] | None = None) -> Weights:
    """``uniform_mean`` of snapshots saved with ``save_weights`` (or ``save_shards``), streamed tensor by
    tensor: only the float32 accumulator and one tensor are in memory, and the arithmetic (order, dtype)
    is the same as ``uniform_mean``'s, so the result is identical bit for bit. ``rows``: read only these
    rows of the named tensors (this rank's shards, ``shard_rows``)."""
    if not paths:
        raise ValueError("uniform_mean_of_files of no files")
    readers = [SnapshotReader(p) for p in paths]
    out: Weights = {}
    for name in readers[0].keys():
        r = (rows or {}).get(name)
        first = readers[0].get(name, r)
        acc = first.to(accumulation_dtype(first.dtype), copy=True)
        for reader in readers[1:]:
            acc.add_(reader.get(name, r).to(acc.dtype))
        acc.div_(len(readers))
        out[name] = acc.to(first.dtype)
    return out


SHARD_ROWS_KEY = "branchpoint_rows"  # safetensors metadata of a shard file: {name: [start, stop, rows]}
SHARD_WORLD_KEY = "branchpoint_world"


def shard_file(folder: Path, rank: int) -> Path:
    return Path(folder) / f"rank{rank}.safetensors"


def save_shards(folder: Path, weights: Weights, rows: dict[str, tuple[int, int]], shapes: dict[str, tuple[int, ...]],
                rank: int, world: int) -> None:
    """This rank's shards of a snapshot, as ``folder/rank{R}.safetensors`` (atomically), with the rows
    each tensor covers, so any world size can read any rows back (``SnapshotReader``)."""
    import json

    meta = {n: [rows[n][0], rows[n][1], int(shapes[n][0])] for n in weights if n in rows}
    save_weights(shard_file(folder, rank), weights, {SHARD_ROWS_KEY: json.dumps(meta), SHARD_WORLD_KEY: str(world)})


class SnapshotReader:
    """Reads the tensors of a snapshot: one safetensors file of whole tensors, or a folder of per-rank
    shard files (``save_shards``); ``get(name, (start, stop))`` reads only those rows of dim 0."""

    def __init__(self, path: Path):
        import json

        from safetensors import safe_open

        path = Path(path)
        self.files = sorted(path.glob("rank*.safetensors")) if path.is_dir() else [path]
        if not self.files:
            raise FileNotFoundError(f"no snapshot files in {path}")
        self.handles = [safe_open(str(f), framework="pt", device="cpu") for f in self.files]
        self.rows: list[dict[str, list[int]]] = []
        for f, h in zip(self.files, self.handles):
            meta = h.metadata() or {}
            self.rows.append(json.loads(meta[SHARD_ROWS_KEY]) if SHARD_ROWS_KEY in meta else {})
            if path.is_dir() and int(meta.get(SHARD_WORLD_KEY, 0)) != len(self.files):
                raise FileNotFoundError(f"snapshot {path} holds {len(self.files)} shard files of "
                                        f"{meta.get(SHARD_WORLD_KEY)}: incomplete")

    def keys(self) -> list[str]:
        return list(self.handles[0].keys())

    def get(self, name: str, rows: tuple[int, int] | None = None) -> torch.Tensor:
        parts = []
        for h, layout in zip(self.handles, self.rows):
            if name not in layout:  # a whole tensor (or one every rank holds whole)
                t = h.get_slice(name)
                return t[rows[0]:rows[1]] if rows is not None else h.get_tensor(name)
            start, stop, total = layout[name]
            lo, hi = rows if rows is not None else (0, total)
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                parts.append((a, h.get_slice(name)[a - start:b - start]))
        parts.sort(key=lambda x: x[0])
        return torch.cat([p for _, p in parts]) if len(parts) != 1 else parts[0][1]


def save_weights(path: Path, weights: Weights, metadata: dict[str, str] | None = None) -> None:
    """Write ``weights`` as one safetensors file, atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({n: t.contiguous() for n, t in weights.items()}, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(path: Path) -> Weights:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


@torch.no_grad()
def checkpoint_weights(checkpoint_dir: Path, like: torch.nn.Module) -> Weights:
    """The float parameters of a saved checkpoint (save_pretrained format), loaded as the branch
    loads its own start (fp32 through transformers), in the dtypes of ``like``'s parameters; an
    architecture that does not match ``like`` is a one-line error."""
    from transformers import AutoModelForCausalLM

    other = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32)
    theirs = dict(float_params(other))
    out: Weights = {}
    for name, p in float_params(like):
        t = theirs.get(name)
        if t is None or t.shape != p.shape:
            raise UserError(
                f"checkpoint {checkpoint_dir} does not match the branch's model ({name}: "
                f"{None if t is None else tuple(t.shape)} vs {tuple(p.shape)}); average checkpoints of one architecture"
            )
        out[name] = localize(t.detach().to("cpu", dtype=p.dtype, copy=True), p)
    return out


# -- writing back -----------------------------------------------------------------------------------
@torch.no_grad()
def copy_into(model: torch.nn.Module, weights: Weights) -> None:
    """Overwrite the model's parameters in place (device and dtype of each parameter kept); a sharded
    parameter's shard from this rank's part of ``weights[name]``."""
    for name, p in float_params(model):
        if name in weights:
            target = local(p)
            target.copy_(localize(weights[name], p).to(device=target.device, dtype=target.dtype))


@torch.no_grad()
def full_state_dict(model: torch.nn.Module, weights: Weights) -> dict[str, torch.Tensor]:
    """The model's complete CPU state_dict with its parameters replaced by ``weights``.

    Tied parameters (e.g. an LM head tied to the embedding) get the same replaced tensor under
    every key that aliases them, so the result loads into a fresh model of the same config.
    Sharded parameters: the entries are DTensors made of this rank's shards (collectively gathered
    by the engine when it writes them: ``resume.fsdp.gather_full``).
    """
    from torch.distributed.tensor import DTensor

    name_of = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    made: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        src = name_of.get(id(value))
        if src is not None and src in weights and is_dtensor(value):
            if src not in made:
                shard = localize(weights[src], value).to(device=local(value).device, dtype=value.dtype)
                made[src] = DTensor.from_local(shard, value.device_mesh, value.placements,
                                               shape=value.shape, stride=value.stride())
            out[key] = made[src]
        elif src is not None and src in weights:
            out[key] = weights[src].to(device="cpu", dtype=value.dtype)
        elif is_dtensor(value):
            out[key] = value.detach()
        else:
            out[key] = value.detach().to("cpu", copy=True)
    return out


# -- the EMA ----------------------------------------------------------------------------------------
@torch.no_grad()
def ema_update_(average: Sequence[torch.Tensor], params: Sequence[torch.Tensor], beta: float) -> None:
    """average ← β·average + (1 − β)·θ, in place, tensor by tensor (``params[i]`` pairs with
    ``average[i]``); each average tensor stays on its own device and dtype (a parameter elsewhere is
    copied there first). Of a sharded parameter, ``average[i]`` is this rank's shard."""
    params = [local(p) for p in params]
    new = [p.detach() if (p.device == a.device and p.dtype == a.dtype) else p.detach().to(a.device, a.dtype)
           for a, p in zip(average, params)]
    torch._foreach_mul_(list(average), beta)
    torch._foreach_add_(list(average), new, alpha=1.0 - beta)


def localize_(weights: Weights, params: dict[str, torch.Tensor]) -> None:
    """Replace each whole tensor of ``weights`` that meets a sharded parameter by this rank's rows
    (once: a copy taken before sharding becomes this rank's shard; the whole tensor is freed)."""
    for n, p in params.items():
        if n in weights:
            weights[n] = localize(weights[n], p)


def move_(weights: Weights, device_of: dict[str, torch.device]) -> None:
    """Move each tensor to ``device_of[name]`` once (a no-op where it already lives)."""
    for n, dev in device_of.items():
        if weights[n].device != dev:
            weights[n] = weights[n].to(dev)
