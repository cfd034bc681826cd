"""LAWA and EMA overhead per training step, amortized, as a fraction of the step time.

Side by side in one process: the same model (same init) trains on the same fixed batch with AdamW,
once as the control and once per intervention; every variant runs in interleaved rounds so machine
noise hits all of them alike (one step of each variant in turn). Two numbers per variant:

- hook share: time spent inside the intervention's ``after_step`` / time of the optimizer steps, both
  synchronised (CUDA) and summed over the run. LAWA's cost sits on its snapshot steps, so it is
  reported amortized: (snapshot-step cost + (every − 1) × other-step cost) / every, at the ``every``
  of the parent's checkpoint grid (toy small: 50, Pythia: 1000) and at the measured ``every``.
- step ratio: median (step + hook) time of the variant / median step time of the control − 1.

Examples:
    python scripts/bench_interventions.py                                  # toy-small shape, CPU
    python scripts/bench_interventions.py --model-shape pythia-160m --device cuda --batch-size 8 --seq-len 2048
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints_cache.recipe import Recipe  # noqa: E402
from resume.interventions.anytime import Anytime  # noqa: E402
from resume.interventions.base import BranchContext, Control, Intervention  # noqa: E402
from resume.interventions.lawa import LAWA  # noqa: E402

SHAPES = {
    # the toy's "small" size (resume/toy.py TOY_SIZES["small"])
    "toy-small": dict(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=256, seq_len=64, batch_size=16, grid_every=50),
    "toy-tiny": dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, seq_len=32, batch_size=8, grid_every=16),
    # Pythia-160m (pythia.md §2): 12 layers, d = 768, 12 heads, vocab 50304, checkpoints every 1000
    "pythia-160m": dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, seq_len=2048, batch_size=8, grid_every=1000),
}


def make_model(shape: dict, device: str, seed: int = 0):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(
        vocab_size=shape["vocab_size"], hidden_size=shape["hidden_size"], num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"], intermediate_size=shape["intermediate_size"],
        max_position_embeddings=max(2048, shape["seq_len"]), rotary_pct=0.25, use_parallel_residual=True,
    )
    return GPTNeoXForCausalLM(cfg).to(device)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Runner:
    """One variant: its own model copy, optimizer and intervention, advanced a chunk of steps at a time."""

    def __init__(self, name: str, iv: Intervention, shape: dict, device: str, batch: torch.Tensor, amp: bool,
                 accum: int = 1):
        self.name, self.iv, self.device, self.batch, self.amp, self.accum = name, iv, device, batch, amp, accum
        model = make_model(shape, "cpu")
        ctx = BranchContext(branch_step=0, end_step=10**9, recipe=Recipe(lr=1e-4, min_lr=1e-5, warmup_iters=0,
                            decay_iters=10**9, train_iters=10**9), parent_grid=[0])
        iv.setup(ctx)
        self.model = iv.on_load(model, ctx).to(device)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
        self.step = 0
        self.step_times: list[float] = []
        self.hook_times: list[float] = []
        self.hook_steps: list[int] = []

    def run(self, n: int) -> None:
        inputs, labels = self.batch[:, :-1], self.batch[:, 1:]
        for _ in range(n):
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(self.accum):  # micro-batches of one optimizer step (the global batch)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.amp):
                    logits = self.model(input_ids=inputs).logits
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1))
                (loss / self.accum).backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            sync(self.device)
            t1 = time.perf_counter()
            self.step += 1
            self.iv.after_step(self.model, self.step)
            sync(self.device)
            t2 = time.perf_counter()
            self.step_times.append(t1 - t0)
            self.hook_times.append(t2 - t1)
            self.hook_steps.append(self.step)


def summarize(r: Runner, control: Runner, warmup: int, target_every: int) -> dict:
    st, ht, steps = r.step_times[warmup:], r.hook_times[warmup:], r.hook_steps[warmup:]
    step_med = statistics.median(control.step_times[warmup:])
    out = {
        "variant": r.name,
        "step_ms_median": 1e3 * statistics.median(st),
        "hook_ms_mean": 1e3 * statistics.fmean(ht),
        "hook_share": sum(ht) / sum(st),
        "step_ratio_vs_control": statistics.median([a + b for a, b in zip(st, ht)]) / step_med - 1.0,
    }
    if isinstance(r.iv, LAWA):
        every = r.iv.every
        snap = [h for h, s in zip(ht, steps) if s % every == 0]
        other = [h for h, s in zip(ht, steps) if s % every != 0]
        snap_ms, other_ms = statistics.fmean(snap), (statistics.fmean(other) if other else 0.0)
        step_s = statistics.median(st)
        out["snapshot_ms_mean"] = 1e3 * snap_ms
        out["amortized_share_measured_every"] = (snap_ms + (every - 1) * other_ms) / every / step_s
        out[f"amortized_share_every_{target_every}"] = (snap_ms + (target_every - 1) * other_ms) / target_every / step_s
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-shape", choices=sorted(SHAPES), default="toy-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per step (default: the shape's)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: the shape's)")
    ap.add_argument("--accum", type=int, default=1,
                    help="micro-batches per optimizer step: the global batch is accum × batch-size rows")
    ap.add_argument("--steps", type=int, default=60, help="measured steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (steps are interleaved across variants)")
    ap.add_argument("--warmup", type=int, default=5, help="steps per variant dropped from the statistics")
    ap.add_argument("--lawa-every", type=int, default=10, help="snapshot interval during the measurement")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--out", default=None, help="append a JSON line with the results to this file")
    args = ap.parse_args(argv)

    shape = dict(SHAPES[args.model_shape])
    b = args.batch_size or shape["batch_size"]
    t = args.seq_len or shape["seq_len"]
    torch.manual_seed(1)
    batch = torch.randint(0, shape["vocab_size"], (b, t + 1)).to(args.device)
    amp = bool(args.bf16 and args.device.startswith("cuda"))
    variants = [("control", Control()),
                (f"lawa replace k={args.k} every={args.lawa_every}", LAWA(k=args.k, every=args.lawa_every, mode="replace")),
                (f"lawa eval k={args.k} every={args.lawa_every}", LAWA(k=args.k, every=args.lawa_every, mode="eval")),
                ("ema F=25 (cpu)", Anytime(ema=25, ema_device="cpu"))]
    if args.device.startswith("cuda"):
        variants.append(("ema F=25 (model device = auto)", Anytime(ema=25, ema_device="model")))
    runners = [Runner(n, iv, shape, args.device, batch, amp, args.accum) for n, iv in variants]
    for r in runners:  # warm-up (allocator, kernels) outside the rounds
        r.run(args.warmup)
    for _ in range(args.rounds * args.steps):  # interleaved step by step: noise hits every variant alike
        for r in runners:
            r.run(1)
    control = runners[0]
    rows = [summarize(r, control, args.warmup, shape["grid_every"]) for r in runners]
    info = {
        "shape": args.model_shape, "batch": [b, t], "accum": args.accum, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "params": sum(p.numel() for p in control.model.parameters()), "bf16": amp,
        "steps_per_variant": args.rounds * args.steps, "grid_every": shape["grid_every"],
    }
    print(json.dumps(info))
    for row in rows:
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"info": info, "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
