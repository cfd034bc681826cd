"""Weight copies kept off the accelerator, their averages, and writing them back.

Shared by LAWA (uniform mean of snapshots) and the anytime EMA, and the one place where their
tensor operations live (so that sharded training, issue 14, changes them here only). A "weights"
mapping is ``{parameter name: CPU tensor}`` over the model's floating-point parameters
(``named_parameters`` names, which are also ``state_dict`` keys; tied parameters appear once).

Several processes (DDP): every rank holds the same weights, so copies are kept once, by the main
process (``is_main_process``); a change of the training weights made there reaches the other ranks
with ``broadcast_parameters``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import torch

from checkpoints_cache.errors import UserError

Weights = dict[str, torch.Tensor]


def float_params(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]


# -- processes --------------------------------------------------------------------------------------
def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """Rank 0 of the process group (accelerate's main process), or the only process. Before the process
    group exists (an intervention is set up before the accelerator, to validate the branch first), the
    launcher's RANK says it."""
    if _distributed():
        return torch.distributed.get_rank() == 0
    return int(os.environ.get("RANK", "0") or 0) == 0


@torch.no_grad()
def broadcast_parameters(model: torch.nn.Module) -> None:
    """Every rank's float parameters := the main process's (in place; a no-op in one process)."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return
    for _, p in float_params(model):
        torch.distributed.broadcast(p.data, src=0)


# -- copies -----------------------------------------------------------------------------------------
@torch.no_grad()
def cpu_snapshot(model: torch.nn.Module, dtype: torch.dtype | None = None) -> Weights:
    """A CPU copy of every float parameter (in its own dtype unless ``dtype`` is given)."""
    return {
        n: p.detach().to("cpu", dtype=dtype or p.dtype, copy=True) for n, p in float_params(model)
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
def uniform_mean_of_files(paths: Sequence[Path]) -> Weights:
    """``uniform_mean`` of snapshots saved with ``save_weights``, streamed tensor by tensor: only
    the float32 accumulator and one tensor are in memory, and the arithmetic (order, dtype) is
    the same as ``uniform_mean``'s, so the result is identical bit for bit."""
    from safetensors import safe_open

    if not paths:
        raise ValueError("uniform_mean_of_files of no files")
    handles = [safe_open(str(p), framework="pt", device="cpu") for p in paths]
    out: Weights = {}
    for name in handles[0].keys():
        first = handles[0].get_tensor(name)
        acc = first.to(accumulation_dtype(first.dtype), copy=True)
        for h in handles[1:]:
            acc.add_(h.get_tensor(name).to(acc.dtype))
        acc.div_(len(handles))
        out[name] = acc.to(first.dtype)
    return out


def save_weights(path: Path, weights: Weights) -> None:
    """Write ``weights`` as one safetensors file, atomically (temporary name, then rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({n: t.contiguous() for n, t in weights.items()}, tmp)
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
        out[name] = t.detach().to("cpu", dtype=p.dtype, copy=True)
    return out


# -- writing back -----------------------------------------------------------------------------------
@torch.no_grad()
def copy_into(model: torch.nn.Module, weights: Weights) -> None:
    """Overwrite the model's parameters in place (device and dtype of each parameter kept)."""
    for name, p in float_params(model):
        if name in weights:
            p.copy_(weights[name].to(device=p.device, dtype=p.dtype))


@torch.no_grad()
def full_state_dict(model: torch.nn.Module, weights: Weights) -> dict[str, torch.Tensor]:
    """The model's complete CPU state_dict with its parameters replaced by ``weights``.

    Tied parameters (e.g. an LM head tied to the embedding) get the same replaced tensor under
    every key that aliases them, so the result loads into a fresh model of the same config.
    """
    name_of = {id(p): n for n, p in model.named_parameters()}
    out: dict[str, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        src = name_of.get(id(value))
        if src is not None and src in weights:
            out[key] = weights[src].to(device="cpu", dtype=value.dtype)
        else:
            out[key] = value.detach().to("cpu", copy=True)
    return out


# -- the EMA ----------------------------------------------------------------------------------------
@torch.no_grad()
def ema_update_(average: Sequence[torch.Tensor], params: Sequence[torch.Tensor], beta: float) -> None:
    """average ← β·average + (1 − β)·θ, in place, tensor by tensor (``params[i]`` pairs with
    ``average[i]``); each average tensor stays on its own device and dtype (a parameter elsewhere is
    copied there first)."""
    new = [p.detach() if (p.device == a.device and p.dtype == a.dtype) else p.detach().to(a.device, a.dtype)
           for a, p in zip(average, params)]
    torch._foreach_mul_(list(average), beta)
    torch._foreach_add_(list(average), new, alpha=1.0 - beta)


def move_(weights: Weights, device_of: dict[str, torch.device]) -> None:
    """Move each tensor to ``device_of[name]`` once (a no-op where it already lives)."""
    for n, dev in device_of.items():
        if weights[n].device != dev:
            weights[n] = weights[n].to(dev)
