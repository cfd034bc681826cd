"""Benchmark: the NeoX ZeRO-1 import against the least work that moves the same bytes.

``--prepare DIR`` writes a synthetic Pythia-70m-shaped NeoX checkpoint (V 50304, d 512, 6 layers; random
masters, moments that satisfy the Cauchy-Schwarz bound) with tests/neox/writer.py: dp shards in the old
ZeRO-1 layout, a small reduce bucket so every rank holds many interleaved pieces, plus the fp16 weights.

``--mode import DIR``: what ``fetch --optimizer`` does once the files are local -- safe loading, format
checks, the (interval, rank) reassembly per parameter, the value checks, master -> fp16 comparison with the
weights, and one ``optimizer.safetensors``.
``--mode baseline DIR``: the same shards loaded the same way (weights_only, mmap), each group joined with one
``torch.cat`` rank by rank (the naive -- wrong -- join) and saved as safetensors: no checks, no per-parameter
cut. Run both as whole processes side by side; quote the ratio.

    python scripts/bench_neox_import.py --prepare /tmp/neox70m --dp 8
    python scripts/bench_neox_import.py --mode import /tmp/neox70m
    python scripts/bench_neox_import.py --mode baseline /tmp/neox70m
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def prepare(folder: Path, dp: int, bucket: int) -> None:
    import torch
    from safetensors.torch import save_file

    from tests.neox.writer import NeoXState, neox_names, write_checkpoint

    vocab, d, layers, heads = 50304, 512, 6, 8
    gen = torch.Generator().manual_seed(0)
    shapes = {"gpt_neox.embed_in.weight": (vocab, d), "lm_head.weight": (vocab, d),
              "gpt_neox.final_layer_norm.weight": (d,), "gpt_neox.final_layer_norm.bias": (d,)}
    for i in range(layers):
        p = f"gpt_neox.layers.{i}."
        shapes.update({p + "input_layernorm.weight": (d,), p + "input_layernorm.bias": (d,),
                       p + "post_attention_layernorm.weight": (d,), p + "post_attention_layernorm.bias": (d,),
                       p + "attention.query_key_value.weight": (3 * d, d), p + "attention.query_key_value.bias": (3 * d,),
                       p + "attention.dense.weight": (d, d), p + "attention.dense.bias": (d,),
                       p + "mlp.dense_h_to_4h.weight": (4 * d, d), p + "mlp.dense_h_to_4h.bias": (4 * d,),
                       p + "mlp.dense_4h_to_h.weight": (d, 4 * d), p + "mlp.dense_4h_to_h.bias": (d,)})
    assert {h for _, h in neox_names(layers)} == set(shapes)
    master = {n: torch.randn(s, generator=gen) * 0.02 for n, s in shapes.items()}
    grad = {n: torch.randn(s, generator=gen) * 1e-3 for n, s in shapes.items()}
    state = NeoXState(master=master, exp_avg={n: 0.5 * g for n, g in grad.items()},
                      exp_avg_sq={n: g * g for n, g in grad.items()}, num_layers=layers, hidden_size=d, heads=heads,
                      vocab=vocab, max_positions=2048, iteration=1000, skipped_steps=3, rotary_dim=16)
    folder.mkdir(parents=True, exist_ok=True)
    written = write_checkpoint(state, dp, bucket, layer_files=False)
    for name, data in written.files.items():
        (folder / name).write_bytes(data)
    save_file({n: t.half() for n, t in master.items()}, str(folder / "weights-fp16.safetensors"))
    pieces = [len(x) for x in written.pieces[0]]
    print(f"wrote {len(written.files)} files to {folder}: dp {dp}, pieces per rank per group {pieces}")


def run_import(folder: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    from checkpoints_cache.neox_ckpt import (
        cast_mismatch, check_shard_format, check_values, hf_name, read_counters, read_zero1, safe_load,
    )

    t0 = time.perf_counter()
    counters = read_counters(safe_load(folder / "mp_rank_00_model_states.pt"), "mp_rank_00")
    names = sorted(folder.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=lambda p: int(p.name.split("_")[3]))
    shards = []
    for p in names:
        st = safe_load(p)
        check_shard_format(st, p.name)
        shards.append((p.name, st))
    zero = read_zero1(shards)
    check_values(zero, (0.9, 0.95), counters)
    weights = load_file(folder / "weights-fp16.safetensors")
    layers = counters.args["num_layers"]
    tensors = {}
    for n in zero.param_shapes:
        h = hf_name(n, layers, "lm_head.weight")
        assert cast_mismatch(zero.master[n], weights[h], torch.float16) is None, h
        tensors[f"{h}.master"], tensors[f"{h}.exp_avg"], tensors[f"{h}.exp_avg_sq"] = (
            zero.master[n], zero.exp_avg[n], zero.exp_avg_sq[n])
    with tempfile.TemporaryDirectory(dir=folder) as d:
        save_file(tensors, str(Path(d) / "optimizer.safetensors"))
    print(f"import: {time.perf_counter() - t0:.2f} s, {sum(t.numel() for t in tensors.values()) * 4 / 1e6:.0f} MB written")


def run_baseline(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from checkpoints_cache.neox_ckpt import safe_load

    t0 = time.perf_counter()
    safe_load(folder / "mp_rank_00_model_states.pt")
    names = sorted(folder.glob("zero_pp_rank_*_mp_rank_00_optim_states.pt"), key=lambda p: int(p.name.split("_")[3]))
    states = [safe_load(p)["optimizer_state_dict"] for p in names]
    tensors = {}
    for g in range(len(states[0]["num_comm_intervals_per_group"])):
        tensors[f"{g}.master"] = torch.cat([t for st in states for t in st["local_sub_partitions_of_fp32_groups"][g]])
        for key in ("exp_avg", "exp_avg_sq"):
            tensors[f"{g}.{key}"] = torch.cat([m[key] for st in states for m in st["base_optimizer_state"][g]])
    with tempfile.TemporaryDirectory(dir=folder) as d:
        save_file(tensors, str(Path(d) / "optimizer.safetensors"))
    print(f"baseline: {time.perf_counter() - t0:.2f} s, {sum(t.numel() for t in tensors.values()) * 4 / 1e6:.0f} MB written")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--prepare", metavar="DIR")
    ap.add_argument("--mode", choices=["import", "baseline"])
    ap.add_argument("--dp", type=int, default=8)
    ap.add_argument("--bucket", type=int, default=5_000_000, help="reduce_bucket_size of the written run (Pythia: 5e8)")
    args = ap.parse_args()
    if args.prepare:
        prepare(Path(args.prepare), args.dp, args.bucket)
    elif args.mode == "import":
        run_import(Path(args.folder))
    elif args.mode == "baseline":
        run_baseline(Path(args.folder))
    else:
        ap.error("give --prepare DIR or --mode import|baseline DIR")
    return 0


if __name__ == "__main__":
    sys.exit(main())
