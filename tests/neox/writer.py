"""A writer of Pythia-shaped GPT-NeoX / DeeperSpeed checkpoints, for the tests (never used by the package).

It follows the writer side of neox_ckpt.md, independently of the reader in ``checkpoints_cache.neox_ckpt``:

- parameter names, pipeline indices and the two optimizer groups of NeoX (§2, §5), built from HF names;
- the old ZeRO-1 split of each flat group (§6): ``best_max_elems_per_comm``, sub-partitions of size s,
  padding P at the end, piece j owned by rank j mod dp as its comm interval j div dp;
- the saved pieces are *views* of the first (s - pad_j) elements of separate s-element tensors, so
  ``torch.save`` writes the whole storage (§6.2) and all-padding pieces are 0-length;
- the loss scaler is a pickled object of class ``deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler`` and
  the numpy RNG state is pickled under numpy 1.x's ``numpy.core.multiarray._reconstruct`` (§9), without
  DeepSpeed or numpy 1.x installed (stand-in modules live in ``sys.modules`` only while saving);
- ``mp_rank_00_model_states.pt`` carries the keys of §3 and the layer files the fp16 weights (§2).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import random
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

LAYER_KEYS = ("input_layernorm.weight", "input_layernorm.bias", "attention.query_key_value.weight",
              "attention.query_key_value.bias", "attention.dense.weight", "attention.dense.bias",
              "post_attention_layernorm.weight", "post_attention_layernorm.bias", "mlp.dense_h_to_4h.weight",
              "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias")  # registration order


def neox_names(num_layers: int, head: str = "lm_head.weight") -> list[tuple[str, str]]:
    """(NeoX param_shapes name, HF name) in PipelineModule.named_parameters() order (§2, §7)."""
    out = [("0.word_embeddings.weight", "gpt_neox.embed_in.weight")]
    for i in range(num_layers):
        out += [(f"{i + 2}.{k}", f"gpt_neox.layers.{i}.{k}") for k in LAYER_KEYS]
    out += [(f"{num_layers + 3}.norm.weight", "gpt_neox.final_layer_norm.weight"),
            (f"{num_layers + 3}.norm.bias", "gpt_neox.final_layer_norm.bias"),
            (f"{num_layers + 4}.final_linear.weight", head)]
    return out


def is_norm_or_bias(neox_name: str) -> bool:
    parts = neox_name.split(".")
    return parts[-1] == "bias" or parts[-2] in ("input_layernorm", "post_attention_layernorm", "norm")


# -- §6 arithmetic --------------------------------------------------------------------------------------------
def best_max_elems_per_comm(n: int, max_elems: int, dp: int) -> int:
    """stage1.py::best_max_elems_per_comm (§6 step 1), quirk included."""
    if n < max_elems:
        return max_elems
    hi, lo = math.ceil(n / max_elems), n // max_elems
    pad_hi = max_elems * hi - n
    pad_lo = math.ceil(n / (dp * lo))
    return max_elems + pad_lo if pad_hi > pad_lo else max_elems


def sub_partitions(n: int, max_elems: int, dp: int) -> tuple[int, int, int]:
    """(k pieces per rank, piece size s, padding P) of a flat group of n elements (§6 step 2)."""
    m = best_max_elems_per_comm(n, max_elems, dp)
    a, b = math.ceil(n / dp), m // dp
    if a <= b:
        k, s = 1, a
    else:
        k, s = math.ceil(a / b), b
    return k, s, k * s * dp - n


def shard_tensor_bytes(group_sizes: list[int], dp: int, max_elems: int) -> int:
    """Bytes of tensor storage in one shard: fp32 master + exp_avg + exp_avg_sq of every piece, padding
    included (§6.2: views save their whole storage)."""
    total = 0
    for n in group_sizes:
        k, s, _ = sub_partitions(n, max_elems, dp)
        total += k * s
    return 12 * total


def pythia_group_sizes(vocab: int, d: int, layers: int, mp: int = 1) -> list[int]:
    """Numel of the decay and no-decay groups per mp rank (§5)."""
    return [2 * (vocab // mp) * d + layers * 12 * d * d // mp, layers * (4 * d + 7 * d // mp + 2 * d) + 2 * d]


# -- pickling as 2022's DeeperSpeed + numpy 1.22 did -------------------------------------------------------------
class DynamicLossScaler:  # stand-in; its module name is set below
    pass


DynamicLossScaler.__module__ = "deepspeed.runtime.fp16.loss_scaler"


def _reconstruct(*args: Any) -> Any:  # only ever pickled by name, never called
    raise RuntimeError("stand-in")


_reconstruct.__module__ = "numpy.core.multiarray"
_reconstruct.__qualname__ = "_reconstruct"


@contextmanager
def _legacy_names():
    names = ["deepspeed", "deepspeed.runtime", "deepspeed.runtime.fp16", "deepspeed.runtime.fp16.loss_scaler",
             "numpy.core.multiarray"]
    saved = {n: sys.modules.get(n) for n in names}
    mods = {n: types.ModuleType(n) for n in names}
    mods["deepspeed.runtime.fp16.loss_scaler"].DynamicLossScaler = DynamicLossScaler
    mods["numpy.core.multiarray"]._reconstruct = _reconstruct
    sys.modules.update(mods)
    try:
        yield
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is np.ndarray:  # numpy 1.x's ndarray.__reduce__
            return (_reconstruct, (np.ndarray, (0,), b"b"), (1, obj.shape, obj.dtype, False, obj.tobytes()))
        return NotImplemented


class _PickleModule:
    Pickler = _Pickler
    Unpickler = pickle.Unpickler
    HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
    dump, load = staticmethod(pickle.dump), staticmethod(pickle.load)


def save_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    with _legacy_names():
        torch.save(obj, buf, pickle_module=_PickleModule)
    return buf.getvalue()


def loss_scaler(**attrs: Any) -> DynamicLossScaler:
    obj = DynamicLossScaler()
    defaults = dict(cur_scale=4096.0, cur_iter=0, last_overflow_iter=-1, scale_factor=2.0, scale_window=1000,
                    min_scale=1, delayed_shift=2, cur_hysteresis=2, consecutive_hysteresis=False,
                    raise_error_at_min_scale=True)
    obj.__dict__.update({**defaults, **attrs})
    return obj


# -- the checkpoint ----------------------------------------------------------------------------------------------
@dataclass
class NeoXState:
    """What a NeoX run holds at one step, by HF name."""

    master: dict[str, torch.Tensor]
    exp_avg: dict[str, torch.Tensor]
    exp_avg_sq: dict[str, torch.Tensor]
    num_layers: int
    hidden_size: int
    heads: int
    vocab: int
    max_positions: int
    iteration: int
    skipped_steps: int = 0
    scaler: dict[str, Any] = field(default_factory=dict)
    weights_dtype: torch.dtype = torch.float16
    rotary_dim: int = 0


@dataclass
class Written:
    files: dict[str, bytes]
    pieces: dict[int, list[list[int]]]  # rank -> per group, the lean length of each piece


def write_checkpoint(state: NeoXState, dp: int, max_elems: int, *,
                     shard_hook: Callable[[int, dict], dict] | None = None,
                     model_states_hook: Callable[[dict], dict] | None = None, layer_files: bool = True) -> Written:
    """The files of one NeoX branch (names -> bytes) at mp 1 and data-parallel degree ``dp``."""
    names = neox_names(state.num_layers)
    shapes = OrderedDict((n, torch.Size(state.master[h].shape)) for n, h in names)
    groups = [[(n, h) for n, h in names if not is_norm_or_bias(n)], [(n, h) for n, h in names if is_norm_or_bias(n)]]

    per_rank: dict[int, dict[str, list]] = {r: {"w": [], "m": [], "v": []} for r in range(dp)}
    intervals, lean_lengths = [], {r: [] for r in range(dp)}
    for group in groups:
        flats = {key: torch.cat([getattr(state, attr)[h].reshape(-1).float() for _, h in group])
                 for key, attr in (("w", "master"), ("m", "exp_avg"), ("v", "exp_avg_sq"))}
        n = flats["w"].numel()
        k, s, pad = sub_partitions(n, max_elems, dp)
        intervals.append(k)
        for r in range(dp):
            for key in per_rank[r]:
                per_rank[r][key].append([])
            lean_lengths[r].append([])
        padded = {key: torch.cat([f, torch.zeros(pad)]) for key, f in flats.items()}
        for j in range(k * dp):
            r = j % dp  # piece j is rank r's comm interval j // dp
            keep = s - min(max((j + 1) * s - n, 0), s)
            for key in per_rank[r]:
                piece = padded[key][j * s:(j + 1) * s].clone()  # its own s-element storage ...
                per_rank[r][key][-1].append(piece[:keep])  # ... saved through a trimmed view
            lean_lengths[r][-1].append(keep)
        assert [len(x) for x in per_rank[0]["w"]][-1] == k

    files: dict[str, bytes] = {}
    scaler_attrs = {"cur_iter": state.iteration, **state.scaler}
    for r in range(dp):
        osd = {
            "loss_scaler": loss_scaler(**scaler_attrs),
            "dynamic_loss_scale": True,
            "overflow": False,
            "base_optimizer_state": [[{"exp_avg": m, "exp_avg_sq": v} for m, v in zip(ms, vs)]
                                     for ms, vs in zip(per_rank[r]["m"], per_rank[r]["v"])],
            "zero_stage": 1,
            "partition_count": dp,
            "num_comm_intervals_per_group": list(intervals),
            "local_sub_partitions_of_fp32_groups": per_rank[r]["w"],
        }
        shard = {"optimizer_state_dict": osd, "param_shapes": copy.copy(shapes)}
        if shard_hook is not None:
            shard = shard_hook(r, shard)
        files[f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt"] = save_bytes(shard)

    files["mp_rank_00_model_states.pt"] = save_bytes(model_states(state, dp, model_states_hook))
    if layer_files:
        files.update(write_layer_files(state))
    files["toy.yml"] = b"# the NeoX config of this run would sit here\n"
    return Written(files, lean_lengths)


def model_states(state: NeoXState, dp: int, hook: Callable[[dict], dict] | None = None) -> dict:
    rng = np.random.RandomState(1234)
    py = random.Random(1234)
    sd = {
        "module": None,
        "optimizer": None,
        "lr_scheduler": {"start_lr": 1e-3, "warmup_iter": 0.64, "num_iters": state.iteration - state.skipped_steps,
                         "decay_style": "cosine", "end_iter": 64, "min_lr": 1e-4},
        "csr_tensor_module_names": set(),
        "skipped_steps": state.skipped_steps,
        "global_steps": state.iteration,
        "global_samples": state.iteration * 8,
        "dp_world_size": dp,
        "mp_world_size": 1,
        "iteration": state.iteration,
        "args": {"num_layers": state.num_layers, "hidden_size": state.hidden_size,
                 "num_attention_heads": state.heads, "max_position_embeddings": state.max_positions,
                 "make_vocab_size_divisible_by": 128, "padded_vocab_size": state.vocab,
                 "tokenizer_type": "HFTokenizer", "model_parallel_size": 1},
        "random_rng_state": py.getstate(),
        "np_rng_state": rng.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.zeros(816, dtype=torch.uint8),
        "rng_tracker_states": {"model-parallel-rng": torch.zeros(816, dtype=torch.uint8)},
    }
    return hook(sd) if hook is not None else sd


def write_layer_files(state: NeoXState) -> dict[str, bytes]:
    """layer_II-model_00-model_states.pt: the fp16 weights of each pipeline layer (§2)."""
    names = neox_names(state.num_layers)
    by_index: dict[int, dict[str, torch.Tensor]] = {}
    for n, h in names:
        idx, _, key = n.partition(".")
        by_index.setdefault(int(idx), {})[key] = state.master[h].to(state.weights_dtype)
    for i in range(state.num_layers):  # the rotary buffer sits in every layer file
        by_index[i + 2]["attention.rotary_emb.inv_freq"] = (
            1.0 / (10000 ** (torch.arange(0, state.rotary_dim, 2).float() / state.rotary_dim))).to(state.weights_dtype)
    return {f"layer_{i:02d}-model_00-model_states.pt": save_bytes(sd) for i, sd in sorted(by_index.items())}
