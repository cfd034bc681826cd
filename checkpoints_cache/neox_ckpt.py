"""Read the GPT-NeoX / DeeperSpeed checkpoints of the Pythia runs (``EleutherAI/neox-ckpt-pythia-*``).

Everything here works on local files (``neox_fetch`` downloads them): format detection from the keys,
safe loading, the old ZeRO-1 reader, the NeoX -> transformers name mapping and the import checks.
Facts and their sources are in ``neox_ckpt.md`` (cited by section below):

- the files were written by DeeperSpeed 0.3.15's old, sub-partitioned ZeRO stage 1 (§1): every
  data-parallel rank saves *interleaved* pieces of each flat parameter group, so the fp32 masters and
  Adam moments are rebuilt by concatenating, per group, the pieces in (comm interval, rank) order (§6.1);
  a rank-major join silently scrambles every model from 1B up (§11);
- the pieces are loaded with ``torch.load(weights_only=True, mmap=True)``: the only pickled objects
  allowed are DeepSpeed's loss scaler (read into a plain stub, DeepSpeed need not be installed) and
  numpy's RNG state globals, under their numpy-1.x names (§9);
- anything else -- ZeRO stage 0 (14M/31M, §10), modern DeepSpeed layouts, unknown keys, model
  parallelism > 1 (§7: the merge and the mp x bias LR are DERIVED, not run) -- is refused, one line.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch

from .errors import UserError

# -- file names (neox_ckpt.md §2) -----------------------------------------------------------------------
SHARD_RE = re.compile(r"^(?P<dir>(?:.*/)?)zero_pp_rank_(?P<dp>\d+)_mp_rank_(?P<mp>\d+)_optim_states\.pt$")
MODEL_STATES_RE = re.compile(r"^(?P<dir>(?:.*/)?)mp_rank_(?P<mp>\d+)_model_states\.pt$")
LAYER_RE = re.compile(r"^(?P<dir>(?:.*/)?)layer_(?P<idx>\d+)-model_(?P<mp>\d+)-model_states\.pt$")


class NeoXCheckpointError(UserError):
    """A NeoX checkpoint that this importer does not read, or that fails one of its checks."""


@dataclass
class Layout:
    """Which file of one revision is which (names relative to the revision root)."""

    folder: str  # "" or e.g. "global_step1000/" when the files sit in a subfolder
    model_states: dict[int, str]  # mp rank -> mp_rank_XX_model_states.pt
    shards: dict[tuple[int, int], str]  # (mp rank, dp rank) -> zero_pp_rank_D_mp_rank_XX_optim_states.pt
    layers: dict[tuple[int, int], str]  # (pipeline index, mp rank) -> layer_II-model_XX-model_states.pt

    @property
    def mp(self) -> int:
        return len(self.model_states)

    def shard_names(self, dp: int, mp_rank: int = 0) -> list[str]:
        """The dp shards of ``mp_rank`` in integer rank order (§9: never lexicographic)."""
        return [self.shards[(mp_rank, r)] for r in range(dp)]

    def missing_shards(self, dp: int, mp_rank: int = 0) -> list[str]:
        return [f"{self.folder}zero_pp_rank_{r}_mp_rank_{mp_rank:02d}_optim_states.pt"
                for r in range(dp) if (mp_rank, r) not in self.shards]

    def layer_name(self, index: int, mp_rank: int = 0) -> str | None:
        return self.layers.get((index, mp_rank))


def find_layout(names: Iterable[str], where: str) -> Layout:
    """The NeoX checkpoint files among ``names`` (one revision's listing), or a one-line refusal."""
    names = sorted(names)
    model_states = [(m, n) for n in names if (m := MODEL_STATES_RE.match(n))]
    if not model_states:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise NeoXCheckpointError(
            f"{where} holds no mp_rank_00_model_states.pt, so it is not a GPT-NeoX/DeepSpeed checkpoint "
            f"(files: {shown or 'none'})"
        )
    folders = sorted({m["dir"] for m, _ in model_states})
    if len(folders) > 1:
        raise NeoXCheckpointError(f"{where} holds several checkpoints ({', '.join(f or '/' for f in folders)}); "
                                  "expected one per revision")
    folder = folders[0]
    ms = {int(m["mp"]): n for m, n in model_states}
    shards = {(int(m["mp"]), int(m["dp"])): n for n in names if (m := SHARD_RE.match(n)) and m["dir"] == folder}
    layers = {(int(m["idx"]), int(m["mp"])): n for n in names if (m := LAYER_RE.match(n)) and m["dir"] == folder}
    if sorted(ms) != list(range(len(ms))):
        raise NeoXCheckpointError(f"{where}: model-parallel ranks {sorted(ms)} are not 0..{len(ms) - 1}")
    return Layout(folder, ms, shards, layers)


# -- safe loading (neox_ckpt.md §9) -----------------------------------------------------------------------
class DynamicLossScalerStub:
    """Receives the attributes of a pickled ``deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler``."""


class LossScalerStub:
    """Receives the attributes of a pickled static ``deepspeed.runtime.fp16.loss_scaler.LossScaler``."""


def _allowed_globals() -> list[Any]:
    import numpy as np

    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtype_classes = {type(np.dtype(c)) for c in ("uint32", "int64", "float64", "uint8")}
    return [
        (DynamicLossScalerStub, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
        (LossScalerStub, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
        # numpy 1.x (2022) pickles name numpy.core.multiarray; numpy 2 renamed it to numpy._core (§9).
        (core._reconstruct, "numpy.core.multiarray._reconstruct"),
        core._reconstruct,
        np.ndarray,
        np.dtype,
        *dtype_classes,
    ]


def safe_load(path: str | Path, display: str | None = None) -> Any:
    """``torch.load`` with ``weights_only=True``, memory-mapped (§6.2: most of a shard's bytes are dead
    padding storage), CPU tensors, and only the loss scaler / numpy RNG globals allowed."""
    display = display or Path(path).name
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                # a pre-zipfile (legacy) torch file cannot be memory-mapped
                return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        reason = found.group(1) if found else (str(e).splitlines() or ["unpickling refused"])[0][:160]
        raise NeoXCheckpointError(f"{display} holds a pickled object outside the allow-list ({reason}); "
                                  "refusing to unpickle it") from None
    except (EOFError, zipfile.BadZipFile, RuntimeError, OSError, ValueError) as e:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise NeoXCheckpointError(f"{display} is truncated or not a torch checkpoint ({first}); "
                                  "delete it from the cache and fetch again") from None


# -- format detection from the keys (neox_ckpt.md §3, §4, §10) --------------------------------------------
MODEL_STATES_REQUIRED = {"module", "optimizer", "lr_scheduler", "skipped_steps", "global_steps", "dp_world_size",
                         "mp_world_size", "iteration"}
MODEL_STATES_OPTIONAL = {"csr_tensor_module_names", "global_samples", "args", "random_rng_state", "np_rng_state",
                         "torch_rng_state", "cuda_rng_state", "rng_tracker_states", "checkpoint_validation_logits"}
# keys that only newer DeepSpeed versions write (stage_1_and_2.py, engine.py of 0.4+)
MODERN_MARKERS = {"ds_version", "ds_config", "buffer_names", "param_shapes", "frozen_param_shapes", "shared_params",
                  "single_partition_of_fp32_groups", "param_slice_mappings", "group_paddings", "fp32_flat_groups"}
SHARD_KEYS = {"optimizer_state_dict", "param_shapes"}
ZERO1_KEYS = {"loss_scaler", "dynamic_loss_scale", "overflow", "base_optimizer_state", "zero_stage", "partition_count",
              "num_comm_intervals_per_group", "local_sub_partitions_of_fp32_groups"}
_OLD_LAYOUT = "the old ZeRO-1 layout of DeeperSpeed 0.3.15 that trained Pythia (neox_ckpt.md §4)"


def _keys(d: dict) -> str:
    return ", ".join(sorted(map(str, d)))


def check_model_states_format(state: Any, display: str) -> None:
    """Refuse anything but the pipeline + ZeRO-1 ``mp_rank_XX_model_states.pt`` of §3."""
    if not isinstance(state, dict):
        raise NeoXCheckpointError(f"{display} holds a {type(state).__name__}, not a DeepSpeed state dict")
    modern = sorted(MODERN_MARKERS & set(state))
    if modern:
        raise NeoXCheckpointError(
            f"{display} is a modern DeepSpeed checkpoint (keys {', '.join(modern)}); this importer reads {_OLD_LAYOUT}; "
            "DeepSpeed's own zero_to_fp32 reads modern ones"
        )
    opt = state.get("optimizer")
    if isinstance(opt, dict) and ("fp32_groups_flat" in opt or "optimizer_state_dict" in opt):
        raise NeoXCheckpointError(
            f"{display} carries its optimizer inside the model states (ZeRO stage 0, FP16_Optimizer: how 14M/31M "
            "were trained, neox_ckpt.md §10); this layout is not supported"
        )
    if state.get("module") is not None:
        raise NeoXCheckpointError(
            f"{display} holds the weights in 'module' (not a pipeline checkpoint with layer files; neox_ckpt.md §10); "
            "this layout is not supported"
        )
    missing = sorted(MODEL_STATES_REQUIRED - set(state))
    unknown = sorted(set(map(str, state)) - MODEL_STATES_REQUIRED - MODEL_STATES_OPTIONAL)
    if missing or unknown:
        what = "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                     f"unknown {', '.join(unknown)}" if unknown else "") if x)
        raise NeoXCheckpointError(f"{display}: unexpected keys ({what}); this importer reads {_OLD_LAYOUT}")


def check_shard_format(state: Any, display: str) -> None:
    """Refuse anything but an old ZeRO-1 elastic optimizer shard (§4)."""
    if not isinstance(state, dict):
        raise NeoXCheckpointError(f"{display} holds a {type(state).__name__}, not a DeepSpeed optimizer shard")
    osd = state.get("optimizer_state_dict")
    inner = set(osd) if isinstance(osd, dict) else set()
    modern = sorted(MODERN_MARKERS & ((set(state) - {"param_shapes"}) | inner))
    if modern or isinstance(state.get("param_shapes"), list):
        raise NeoXCheckpointError(
            f"{display} is a modern DeepSpeed ZeRO shard (keys {', '.join(modern) or 'param_shapes as a list'}); "
            f"this importer reads {_OLD_LAYOUT}; DeepSpeed's own zero_to_fp32 reads modern ones"
        )
    if set(state) != SHARD_KEYS:
        raise NeoXCheckpointError(f"{display}: top-level keys {_keys(state)}, expected {_keys(SHARD_KEYS)}; "
                                  f"this importer reads {_OLD_LAYOUT}")
    if not isinstance(osd, dict):
        raise NeoXCheckpointError(f"{display}: optimizer_state_dict is a {type(osd).__name__}, not a dict")
    if osd.get("zero_stage") != 1:
        raise NeoXCheckpointError(f"{display}: ZeRO stage {osd.get('zero_stage')}; this importer reads {_OLD_LAYOUT}")
    if inner != ZERO1_KEYS:
        missing, unknown = sorted(ZERO1_KEYS - inner), sorted(map(str, inner - ZERO1_KEYS))
        what = "; ".join(x for x in (f"missing {', '.join(missing)}" if missing else "",
                                     f"unknown {', '.join(unknown)}" if unknown else "") if x)
        raise NeoXCheckpointError(f"{display}: unexpected optimizer_state_dict keys ({what}); "
                                  f"this importer reads {_OLD_LAYOUT}")


# -- counters (neox_ckpt.md §3, §8) ---------------------------------------------------------------------
@dataclass
class Counters:
    iteration: int
    global_steps: int
    skipped_steps: int  # fp16 overflow steps since step 0
    num_iters: int  # the LR scheduler's count: the next update's LR is the schedule at num_iters
    dp_world_size: int
    mp_world_size: int
    lr_scheduler: dict[str, Any]
    args: dict[str, Any]


def read_counters(state: dict, display: str) -> Counters:
    sched = state.get("lr_scheduler")
    if not isinstance(sched, dict) or "num_iters" not in sched:
        raise NeoXCheckpointError(f"{display}: lr_scheduler has no num_iters (the scheduler count, neox_ckpt.md §3)")

    def _int(v: Any, key: str) -> int:
        try:
            return int(v)
        except (TypeError, ValueError):
            raise NeoXCheckpointError(f"{display}: {key} is {v!r}, not a number") from None

    return Counters(
        iteration=_int(state["iteration"], "iteration"),
        global_steps=_int(state["global_steps"], "global_steps"),
        skipped_steps=_int(state["skipped_steps"], "skipped_steps"),
        num_iters=_int(sched["num_iters"], "lr_scheduler.num_iters"),
        dp_world_size=_int(state["dp_world_size"], "dp_world_size"),
        mp_world_size=_int(state["mp_world_size"], "mp_world_size"),
        lr_scheduler={k: v for k, v in sched.items() if isinstance(v, (int, float, str, bool)) or v is None},
        args=dict(state.get("args") or {}),
    )


def check_counters(c: Counters, step: int, display: str) -> None:
    """§13 step 5: iteration == global_steps == N and num_iters == N - skipped_steps >= 0."""
    if c.iteration != step or c.global_steps != step:
        raise NeoXCheckpointError(
            f"{display} is at iteration {c.iteration} (global_steps {c.global_steps}), not step {step}: "
            "the file belongs to another step"
        )
    if c.num_iters != step - c.skipped_steps or c.num_iters < 0:
        raise NeoXCheckpointError(
            f"{display}: scheduler count {c.num_iters} != step {step} - skipped_steps {c.skipped_steps} "
            "(neox_ckpt.md §3); the counters are inconsistent"
        )


ARGS_VS_CONFIG = (("num_layers", "num_hidden_layers"), ("hidden_size", "hidden_size"),
                  ("num_attention_heads", "num_attention_heads"), ("padded_vocab_size", "vocab_size"),
                  ("max_position_embeddings", "max_position_embeddings"))


def check_args(args: dict[str, Any], config: dict[str, Any], display: str) -> None:
    """§13 step 1: the NeoX args agree with the HF config.json of the same run."""
    for neox_key, hf_key in ARGS_VS_CONFIG:
        if neox_key in args and hf_key in config and int(args[neox_key]) != int(config[hf_key]):
            raise NeoXCheckpointError(
                f"{display}: {neox_key} = {args[neox_key]} but the HF config says {hf_key} = {config[hf_key]}; "
                "these are checkpoints of different models"
            )


# -- the ZeRO-1 reader (neox_ckpt.md §5, §6.1) ----------------------------------------------------------
def is_no_decay(neox_name: str) -> bool:
    """§5: all params of a norm module, and every param named ``bias``, are in group 1 (no decay)."""
    module, _, leaf = neox_name.rpartition(".")
    return leaf == "bias" or "norm" in module.rpartition(".")[2]


def neox_groups(names: list[str]) -> list[list[str]]:
    """The optimizer groups in DeepSpeed's order, rebuilt from ``param_shapes`` order (§5, RAN)."""
    return [[n for n in names if not is_no_decay(n)], [n for n in names if is_no_decay(n)]]


@dataclass
class Piece:
    rank: int
    interval: int
    start: int  # offset in the merged (unpadded) flat group
    length: int


@dataclass
class Zero1State:
    """The fp32 masters and Adam moments of one mp rank, per NeoX parameter name, plus what the shards say."""

    param_shapes: dict[str, tuple[int, ...]]
    groups: list[list[str]]
    pieces: list[list[Piece]]  # per group, in merged order
    offsets: dict[str, tuple[int, int]]  # name -> (group, offset in the flat group)
    master: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    loss_scaler: dict[str, Any] | None
    dynamic_loss_scale: bool
    overflow: bool
    dp: int
    comm_intervals: list[int]
    shard_names: list[str] = field(default_factory=list)

    def ranks_holding(self, name: str, flat_indices: torch.Tensor) -> set[int]:
        """Which dp ranks' pieces hold the given element indices of parameter ``name``."""
        g, off = self.offsets[name]
        starts = torch.tensor([p.start for p in self.pieces[g]], dtype=torch.int64)
        where = torch.searchsorted(starts, flat_indices.to(torch.int64) + off, right=True) - 1
        return {self.pieces[g][int(i)].rank for i in torch.unique(where)}


def _scaler_state(obj: Any) -> dict[str, Any] | None:
    if obj is None:
        return None
    d = dict(obj) if isinstance(obj, dict) else dict(vars(obj))
    out = {k: v for k, v in d.items() if isinstance(v, (int, float, bool))}
    out["dynamic"] = not isinstance(obj, LossScalerStub)
    return out


def read_zero1(shards: list[tuple[str, dict]]) -> Zero1State:
    """Rebuild the flat groups from the dp shards of one mp rank, ``shards`` in integer dp-rank order,
    each already passed through ``check_shard_format``. Runs the structure and count checks of §13."""
    first_name, first = shards[0]
    osd0 = first["optimizer_state_dict"]
    dp = int(osd0["partition_count"])
    intervals = [int(c) for c in osd0["num_comm_intervals_per_group"]]
    shapes = {str(k): tuple(int(x) for x in v) for k, v in first["param_shapes"].items()}
    scaler0 = _scaler_state(osd0["loss_scaler"])
    if len(shards) != dp:
        raise NeoXCheckpointError(f"{first_name}: partition_count {dp} but {len(shards)} shards were given")
    for rank, (name, state) in enumerate(shards):
        osd = state["optimizer_state_dict"]
        if int(osd["partition_count"]) != dp:
            raise NeoXCheckpointError(f"{name}: partition_count {osd['partition_count']}, rank 0 says {dp}")
        if [int(c) for c in osd["num_comm_intervals_per_group"]] != intervals:
            raise NeoXCheckpointError(f"{name}: num_comm_intervals_per_group {osd['num_comm_intervals_per_group']}, "
                                      f"rank 0 says {intervals}")
        if [(str(k), tuple(int(x) for x in v)) for k, v in state["param_shapes"].items()] != list(shapes.items()):
            raise NeoXCheckpointError(f"{name}: param_shapes differ from rank 0's")
        # Every rank runs the same loss-scaler updates: a different state means a shard of another step.
        if _scaler_state(osd["loss_scaler"]) != scaler0 or bool(osd["overflow"]) != bool(osd0["overflow"]):
            other = _scaler_state(osd["loss_scaler"]) or {}
            raise NeoXCheckpointError(
                f"{name}: its loss scaler is at iteration {other.get('cur_iter')} (scale {other.get('cur_scale')}) "
                f"but rank 0's at {(scaler0 or {}).get('cur_iter')} (scale {(scaler0 or {}).get('cur_scale')}): "
                "this shard is from another step"
            )
        for key in ("local_sub_partitions_of_fp32_groups", "base_optimizer_state"):
            got = [len(g) for g in osd[key]]
            if got != intervals:
                raise NeoXCheckpointError(f"{name}: {key} has {got} pieces per group, expected {intervals}")

    groups = neox_groups(list(shapes))
    if len(groups) != len(intervals):
        raise NeoXCheckpointError(f"{first_name}: {len(intervals)} optimizer groups, the NeoX rule gives {len(groups)}")

    # §6.1: for each group, concatenate piece [g][c] of rank r for c = 0..C-1 and, inside, r = 0..dp-1.
    pieces: list[list[Piece]] = []
    data: dict[str, list[list[torch.Tensor]]] = {"master": [], "exp_avg": [], "exp_avg_sq": []}
    for g, c_g in enumerate(intervals):
        table, parts = [], {k: [] for k in data}
        start = 0
        for c in range(c_g):
            for rank, (name, state) in enumerate(shards):
                osd = state["optimizer_state_dict"]
                w = osd["local_sub_partitions_of_fp32_groups"][g][c]
                moments = osd["base_optimizer_state"][g][c]
                if not isinstance(moments, dict) or set(moments) != {"exp_avg", "exp_avg_sq"}:
                    raise NeoXCheckpointError(f"{name}: base_optimizer_state[{g}][{c}] is not {{exp_avg, exp_avg_sq}}")
                m, v = moments["exp_avg"], moments["exp_avg_sq"]
                for what, t in (("master", w), ("exp_avg", m), ("exp_avg_sq", v)):
                    if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.dim() != 1:
                        raise NeoXCheckpointError(f"{name}: {what} piece [{g}][{c}] is not a 1-D fp32 tensor")
                if not (w.numel() == m.numel() == v.numel()):
                    raise NeoXCheckpointError(f"{name}: piece [{g}][{c}] has {w.numel()} masters but "
                                              f"{m.numel()}/{v.numel()} moments")
                table.append(Piece(rank, c, start, w.numel()))
                parts["master"].append(w)
                parts["exp_avg"].append(m)
                parts["exp_avg_sq"].append(v)
                start += w.numel()
        need = sum(math.prod(shapes[n]) for n in groups[g])
        if start != need:  # §13 step 2: exact; a gap means a missing shard or a wrong group rule
            raise NeoXCheckpointError(
                f"group {g}: the shards hold {start} elements but param_shapes need {need}; "
                "a shard is missing or incomplete"
            )
        pieces.append(table)
        for k in data:
            data[k].append(parts[k])

    out = {k: {} for k in data}
    offsets: dict[str, tuple[int, int]] = {}
    for g, names in enumerate(groups):
        starts = [p.start for p in pieces[g]]
        off = 0
        for n in names:
            size = math.prod(shapes[n])
            offsets[n] = (g, off)
            for k in data:
                out[k][n] = _gather(data[k][g], starts, off, size).view(shapes[n])
            off += size
    return Zero1State(
        param_shapes=shapes, groups=groups, pieces=pieces, offsets=offsets,
        master=out["master"], exp_avg=out["exp_avg"], exp_avg_sq=out["exp_avg_sq"],
        loss_scaler=scaler0, dynamic_loss_scale=bool(osd0["dynamic_loss_scale"]), overflow=bool(osd0["overflow"]),
        dp=dp, comm_intervals=intervals, shard_names=[n for n, _ in shards],
    )


def _gather(parts: list[torch.Tensor], starts: list[int], off: int, size: int) -> torch.Tensor:
    """Elements [off, off + size) of the concatenation of ``parts`` as one new tensor (copies only what
    it needs from the memory-mapped pieces; never materializes the whole flat group)."""
    import bisect

    i = max(0, bisect.bisect_right(starts, off) - 1)
    chunks, end = [], off + size
    while i < len(parts) and starts[i] < end:
        lo, hi = max(off, starts[i]) - starts[i], min(end, starts[i] + parts[i].numel()) - starts[i]
        if hi > lo:
            chunks.append(parts[i][lo:hi])
        i += 1
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.float32)


# -- NeoX -> transformers names (neox_ckpt.md §7) --------------------------------------------------------
LAYER_SUFFIXES = tuple(f"{m}.{leaf}" for m in ("input_layernorm", "post_attention_layernorm",
                                                "attention.query_key_value", "attention.dense",
                                                "mlp.dense_h_to_4h", "mlp.dense_4h_to_h")
                       for leaf in ("weight", "bias"))


def hf_name(neox_name: str, num_layers: int, head_name: str) -> str:
    """``2.attention.dense.weight`` -> ``gpt_neox.layers.0.attention.dense.weight`` etc. (§7 table)."""
    idx, _, rest = neox_name.partition(".")
    i = int(idx) if idx.isdigit() else -1
    if i == 0 and rest == "word_embeddings.weight":
        return "gpt_neox.embed_in.weight"
    if 2 <= i <= num_layers + 1 and rest in LAYER_SUFFIXES:
        return f"gpt_neox.layers.{i - 2}.{rest}"
    if i == num_layers + 3 and rest in ("norm.weight", "norm.bias"):
        return f"gpt_neox.final_layer_norm.{rest.rpartition('.')[2]}"
    if i == num_layers + 4 and rest == "final_linear.weight":
        return head_name
    raise NeoXCheckpointError(f"NeoX parameter {neox_name} has no place in GPTNeoXForCausalLM with {num_layers} "
                              "layers (neox_ckpt.md §7)")


def layer_file_key(neox_name: str) -> tuple[int, str]:
    """(pipeline index, key inside that layer file) of a NeoX parameter."""
    idx, _, rest = neox_name.partition(".")
    return int(idx), rest


# -- checks on values (neox_ckpt.md §13 steps 3-4) --------------------------------------------------------
def moment_bound(betas: tuple[float, float]) -> float:
    """Cauchy-Schwarz: |m| <= c * sqrt(v) elementwise when both EMAs start at zero on the same gradients;
    c = (1 - b1) / sqrt((1 - b2) (1 - b1^2 / b2)) = 1.165 for (0.9, 0.95) (§13 step 4)."""
    b1, b2 = betas
    if b1 * b1 >= b2:
        return math.inf
    return (1 - b1) / math.sqrt((1 - b2) * (1 - b1 * b1 / b2))


def check_values(state: Zero1State, betas: tuple[float, float], counters: Counters) -> dict[str, Any]:
    """Finite masters and moments, exp_avg_sq >= 0, the |m| <= c sqrt(v) pairing bound, zero moments at
    step 0 and nonzero ones after a real update. Returns the figures for optimizer.json."""
    bound = moment_bound(betas)
    max_ratio, nonzero = 0.0, False
    for n in state.param_shapes:
        w, m, v = state.master[n], state.exp_avg[n], state.exp_avg_sq[n]
        for what, t in (("fp32 master", w), ("exp_avg", m), ("exp_avg_sq", v)):
            # one pass: a float64 sum is finite unless some element is inf or NaN
            if t.numel() and not math.isfinite(float(t.sum(dtype=torch.float64))):
                raise NeoXCheckpointError(f"{what} of {n} has {int((~torch.isfinite(t)).sum())} non-finite values")
        if not v.numel():
            continue
        vmin, vmax = torch.aminmax(v)
        if float(vmin) < 0:
            raise NeoXCheckpointError(f"exp_avg_sq of {n} has {int((v < 0).sum())} negative values")
        ratio = m.abs().div_(v.sqrt()).nan_to_num_(nan=0.0)  # 0/0 -> 0; m != 0 with v == 0 -> inf
        worst = float(ratio.max())
        # fp32 is enough: the slack (1e-3 relative; 1e-20 absolute where a tiny gradient's square underflowed)
        # dwarfs its rounding. The exact test runs only when the ratio says it may fail.
        if math.isfinite(bound) and worst > bound * (1 + 1e-3):
            over = m.abs() > v.sqrt() * (bound * (1 + 1e-3)) + 1e-20
            if bool(over.any()):
                raise NeoXCheckpointError(
                    f"exp_avg of {n} breaks |m| <= {bound:.3f} sqrt(v) at {int(over.sum())} elements: the "
                    "moments are misaligned (neox_ckpt.md §13 step 4)"
                )
            worst = float(ratio[v > 0].max()) if bool((v > 0).any()) else 0.0
        max_ratio = max(max_ratio, worst)
        nonzero = nonzero or float(vmax) > 0 or bool(m.any())
    if counters.iteration == 0 and nonzero:
        raise NeoXCheckpointError("step 0 has nonzero Adam moments; only the zero-gradient init step ran before it")
    if counters.num_iters >= 1 and not nonzero:
        raise NeoXCheckpointError(f"all Adam moments are zero although {counters.num_iters} updates ran")
    return {"finite": True, "exp_avg_sq_nonnegative": True, "bound": bound, "max_abs_m_over_sqrt_v": max_ratio,
            "zero_moments": not nonzero}


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def cast_mismatch(master: torch.Tensor, ref: torch.Tensor, train_dtype: torch.dtype) -> torch.Tensor | None:
    """None if the fp32 master cast to the stored dtype equals ``ref`` bitwise (directly, or through the
    training dtype: pythia-1b trained in bf16, its files may be fp16), else the mask of differing elements."""
    if master.shape != ref.shape:
        return torch.ones(ref.shape, dtype=torch.bool)
    best = None
    want = ref.contiguous().reshape(-1)
    for cast in dict.fromkeys((ref.dtype, train_dtype)):
        got = master.to(cast).to(ref.dtype).contiguous().reshape(-1)
        if ref.is_floating_point():  # bitwise: decided by the bytes (NaN, -0.0)
            diff = got.view(_int_view(ref.dtype)) != want.view(_int_view(ref.dtype))
        else:
            diff = got != want
        if not bool(diff.any()):
            return None
        if best is None or int(diff.sum()) < int(best.sum()):
            best = diff
    return best.view(ref.shape)


def _int_view(dtype: torch.dtype) -> torch.dtype:
    return {2: torch.int16, 4: torch.int32, 8: torch.int64}[torch.empty(0, dtype=dtype).element_size()]
