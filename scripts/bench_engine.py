"""Engine step time vs a minimal hand-written PyTorch loop on the same model and batches.

Both run in this process, interleaved round by round, on identical copies of one model and the
same global batches (same micro-batching, same AdamW with the same parameter groups, same clipping,
same precision). Reported: median time per optimizer update, the ratio engine / bare loop
(goal <= 1.05), tokens/s, and on a GPU the MFU.

    python scripts/bench_engine.py --shape toy-small                      # CPU, fp32
    python scripts/bench_engine.py --shape pythia-160m --precision bf16    # GPU
    python scripts/bench_engine.py --toy-build                             # toy build wall time

MFU counts 6 * N + 12 * L * d * T FLOPs per token (N: parameters without the input embedding, a
lookup; the second term is attention, PaLM appendix B) against the GPU's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from checkpoints_cache.recipe import Recipe
from data_order.mmidx import write_mmidx
from data_order.source import TokenRows
from resume.engine import TrainJob, make_accelerator, train
from resume.optim import build_optimizer
from resume.schedule import lr_at

PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16 tensor-core peaks (vendor sheets)


def model_config(shape: str):
    from transformers import GPTNeoXConfig

    if shape == "pythia-160m":  # pythia.md §1.3 / §2.2: 12 layers, d 768, 12 heads, vocab 50304
        return GPTNeoXConfig(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, rotary_pct=0.25, max_position_embeddings=2048,
                             use_parallel_residual=True, tie_word_embeddings=False, attention_dropout=0.0,
                             hidden_dropout=0.0)
    from resume.toy import TOY_SIZES, toy_config

    return toy_config(TOY_SIZES[shape.removeprefix("toy-")])


def bare_loop(model, recipe: Recipe, data: np.ndarray, first: int, steps: int, micro: int, device, dtype) -> list[float]:
    """The minimal loop: lr, micro-batches, autocast forward, CE, backward, clip, AdamW step."""
    opt = build_optimizer(model, recipe)
    B = recipe.batch_size
    times = []
    for n in range(first, first + steps):
        t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(recipe, n)
        total = 0.0
        for a in range(B // micro):
            rows = torch.from_numpy(data[n * B + a * micro : n * B + (a + 1) * micro].astype(np.int64)).to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(input_ids=rows[:, :-1]).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), rows[:, 1:].reshape(-1))
            (loss / (B // micro)).backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(total)  # the engine logs the loss every update: same host sync here
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def engine_run(model, recipe, tokens: TokenRows, first: int, steps: int, micro: int, precision: str, out: Path) -> list[float]:
    stamps: list[float] = []
    job = TrainJob(out=out, model=model, recipe=recipe, data=tokens, start_step=first, end_step=first + steps,
                   save_steps=set(), micro_batch_size=micro, resumable=False, save_optimizer=False,
                   progress=False, precision=precision,
                   on_update=lambda row: (torch.cuda.synchronize() if torch.cuda.is_available() else None,
                                          stamps.append(time.perf_counter())))
    t0 = time.perf_counter()
    train(job, make_accelerator(recipe, precision))
    return list(np.diff([t0, *stamps]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="toy-small", help="toy-tiny | toy-small | pythia-160m")
    ap.add_argument("--precision", default="fp32", help="fp32 | bf16")
    ap.add_argument("--batch", type=int, default=16, help="rows per global batch")
    ap.add_argument("--micro", type=int, default=16, help="rows per forward pass")
    ap.add_argument("--seq-len", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20, help="updates per timed round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--toy-build", action="store_true", help="time `branchpoint toy --size small` instead")
    args = ap.parse_args()

    if args.toy_build:
        from resume.toy import build_toy

        for size in ("tiny", "small"):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.perf_counter()
                build_toy(Path(d) / "toy", size=size, progress=False)
                print(f"toy build --size {size}: {time.perf_counter() - t0:.1f} s wall, {torch.get_num_threads()} threads")
        return

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = model_config(args.shape)
    T = args.seq_len or cfg.max_position_embeddings
    recipe = Recipe(lr=6e-4, min_lr=6e-5, warmup_iters=10, decay_iters=10_000, train_iters=10_000,
                    batch_size=args.batch, seq_len=T, precision=args.precision)
    from transformers import GPTNeoXForCausalLM

    torch.manual_seed(0)
    base = GPTNeoXForCausalLM(cfg)
    n_batches = args.steps * args.rounds * 2 + 4
    rng = np.random.default_rng(0)
    data = rng.integers(2, cfg.vocab_size, size=(n_batches * args.batch, T + 1), dtype=np.uint16)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    with tempfile.TemporaryDirectory() as d:
        write_mmidx(Path(d) / "data", list(data), dtype=np.uint16)
        tokens = TokenRows(Path(d) / "data", args.batch, T)
        eng, bare = [], []
        for r in range(args.rounds):
            first = 2 * r * args.steps
            m = copy.deepcopy(base)
            eng += engine_run(m, recipe, tokens, first, args.steps, args.micro, args.precision, Path(d) / f"e{r}")[2:]
            m = copy.deepcopy(base).to(device)
            bare += bare_loop(m, recipe, data, first + args.steps, args.steps, args.micro, device, dtype)[2:]
            del m
    e, b = statistics.median(eng), statistics.median(bare)
    tok = args.batch * T
    L, dm = cfg.num_hidden_layers, cfg.hidden_size
    n_params = sum(p.numel() for n, p in base.named_parameters() if "embed_in" not in n)
    flops_per_token = 6 * n_params + 12 * L * dm * T
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; shape {args.shape} ({n_params / 1e6:.1f}M non-embedding-input "
          f"params); {args.precision}; global batch {args.batch} x {T} tokens, micro-batch {args.micro}")
    print(f"median update: engine {e * 1e3:.1f} ms, bare loop {b * 1e3:.1f} ms, ratio {e / b:.3f} "
          f"({len(eng)} + {len(bare)} timed updates over {args.rounds} interleaved rounds)")
    print(f"tokens/s: engine {tok / e:,.0f}, bare loop {tok / b:,.0f}")
    if device.type == "cuda":
        peak = next((v for k, v in PEAK_BF16.items() if k in name), math.nan)
        print(f"MFU (bf16 dense peak {peak / 1e12:.0f} TFLOP/s): engine {flops_per_token * tok / e / peak:.1%}, "
              f"bare loop {flops_per_token * tok / b / peak:.1%}")


if __name__ == "__main__":
    main()
