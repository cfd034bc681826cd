"""Peak memory of one training update, before (full-logits F.cross_entropy) and after (chunked loss).

Each measurement runs in its own child process: build the model from its config (random init,
fp32), AdamW with the engine's parameter groups, one update on random token rows (forward,
backward, clip, step). Reported per micro-batch b:

- peak RSS of the child (``ru_maxrss``), for the loss "before" (``model(...).logits`` + full
  ``F.cross_entropy``, what the engine did) and "after" (``resume.loss.CausalLMLoss``);
- the floor: the process baseline (python + torch imported, nothing allocated) + weights + grads +
  Adam moments (16 bytes per parameter) + the activations autograd saves for backward in the
  "after" forward (measured with saved-tensor hooks, logits excluded by construction);
- the engine's own estimate (``resume.microbatch.cpu_estimate``), to check the auto choice.

    python scripts/bench_memory.py                                # pythia-160m shape, b = 1 2 4 8
    python scripts/bench_memory.py --shape pythia-14m --micro 1 2 4 8 16
    python scripts/bench_memory.py --device cuda                  # on a GPU: peak allocated, largest b that fits

A child that would not fit is not started (its estimated peak exceeds --max-gib): the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {  # pythia.md §2.2 (layers, d_model, heads), §1.3 (vocab 50304), §2.1 (seq 2048)
    "pythia-14m": (6, 128, 4),
    "pythia-70m": (6, 512, 8),
    "pythia-160m": (12, 768, 12),
}


def config(shape: str, seq_len: int):
    from transformers import GPTNeoXConfig

    layers, d, heads = SHAPES[shape]
    return GPTNeoXConfig(vocab_size=50304, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                         intermediate_size=4 * d, rotary_pct=0.25, max_position_embeddings=seq_len,
                         use_parallel_residual=True, tie_word_embeddings=False, attention_dropout=0.0, hidden_dropout=0.0)


def child(args: argparse.Namespace) -> None:
    import torch
    import torch.nn.functional as F
    from transformers import GPTNeoXForCausalLM

    from resume.loss import CausalLMLoss
    from resume.optim import build_optimizer

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "2"))))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    device = torch.device(args.device)
    cfg = config(args.shape, args.seq_len)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg).to(device)
    params = sum(p.numel() for p in model.parameters())
    opt = build_optimizer(model, _recipe())
    rows = torch.randint(0, 50277, (args.micro, args.seq_len + 1), device=device)
    inputs, labels = rows[:, :-1], rows[:, 1:]
    wrapper = CausalLMLoss(model)

    saved = {"bytes": 0}
    seen = {q.untyped_storage().data_ptr() for q in model.parameters()}  # weights are counted in 16 * P

    def pack(t):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            saved["bytes"] += t.untyped_storage().nbytes()
        return t

    # Steady state: Adam's moments exist before the update, as in every update after the first
    # (the engine's reestimate replay or the loaded optimizer state creates them).
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        if args.mode == "after":
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = wrapper(inputs, labels)
        else:
            logits = model(input_ids=inputs).logits
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    out = {"mode": args.mode, "micro": args.micro, "params": params, "base_rss": base_rss,
           "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "saved_activation_bytes": saved["bytes"],
           "loss": float(loss), "seconds": elapsed}
    if device.type == "cuda":
        out["peak_allocated"] = torch.cuda.max_memory_allocated()
        out["total_gpu"] = torch.cuda.get_device_properties(0).total_memory
    print("RESULT " + json.dumps(out))


def _recipe():
    from checkpoints_cache.recipe import Recipe

    return Recipe(lr=6e-4, min_lr=6e-5, warmup_iters=1430, decay_iters=143000, train_iters=143000)


def run_child(shape: str, micro: int, mode: str, seq_len: int, device: str) -> dict | None:
    cmd = [sys.executable, __file__, "--child", "--shape", shape, "--micro", str(micro), "--mode", mode,
           "--seq-len", str(seq_len), "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    if "OutOfMemoryError" in proc.stderr or proc.returncode in (-9, 137):
        return None
    raise RuntimeError(proc.stderr[-3000:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="pythia-160m", choices=list(SHAPES))
    p.add_argument("--micro", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--modes", nargs="+", default=["before", "after"], choices=["before", "after"])
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-gib", type=float, default=16.0, help="do not start a CPU child whose estimated peak exceeds this")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="after", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.micro = args.micro[0]
        return child(args)

    from resume.microbatch import activation_bytes_per_row, cpu_estimate

    cfg = config(args.shape, args.seq_len).to_dict()
    gib = 1 << 30
    print(f"{args.shape} (vocab 50304, seq {args.seq_len}), one update on {args.device}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    print("| micro-batch | loss | peak GiB | floor GiB | peak / floor | saved activations GiB | engine estimate GiB | s |")
    print("|---|---|---|---|---|---|---|---|")
    modes = [m for m in ("after", "before") if m in args.modes]  # "after" first: it measures the activations
    for b in args.micro:
        saved = None
        for mode in modes:
            est = cpu_estimate(cfg, b, args.seq_len, full_logits=mode == "before")
            label = "chunked (after)" if mode == "after" else "full logits (before)"
            if args.device == "cpu" and est.total / gib > args.max_gib:
                print(f"| {b} | {label} | not run: the estimate {est.total / gib:.1f} GiB exceeds --max-gib {args.max_gib} "
                      "(a shared machine) | | | | | |")
                continue
            r = run_child(args.shape, b, mode, args.seq_len, args.device)
            if r is None:
                print(f"| {b} | {label} | out of memory | | | | | |")
                continue
            if mode == "after":
                saved = r["saved_activation_bytes"]
            acts = saved if saved is not None else b * activation_bytes_per_row(cfg, args.seq_len)
            peak = r.get("peak_allocated", r["peak_rss"])
            base = 0 if "peak_allocated" in r else r["base_rss"]
            floor = base + 16 * r["params"] + acts
            print(f"| {b} | {label} | {peak / gib:.2f} | {floor / gib:.2f} | {peak / floor:.2f} | {acts / gib:.2f} | "
                  f"{est.total / gib:.2f} | {r['seconds']:.0f} |", flush=True)



if __name__ == "__main__":
    main()
