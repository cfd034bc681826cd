"""FSDP2 vs DDP on CPU: update time and peak host memory per process, 2 processes (torchrun, gloo).

Each variant is one ``torchrun --nproc_per_node 2`` launch of this script in worker mode, which
trains the engine's module (``resume.loss.CausalLMLoss`` around a GPT-NeoX of the given shape, same
init on every rank) with the engine's AdamW (``resume.optim.build_optimizer``) on a fixed batch:

- ``ddp``: ``accelerator.prepare`` of the wrapper (accelerate's MULTI_CPU: DistributedDataParallel);
- ``fsdp``: ``resume.fsdp.shard`` (``fully_shard`` on each block, then the root), as the engine does
  under ``--sharding fsdp`` on CPU.

One update = forward + backward of the rank's rows, gradient clipping to 1.0, ``optimizer.step``,
``zero_grad``. Every rank reports the median update time after ``--warmup`` updates, its peak
resident memory (``getrusage``: the process's whole life, including the whole model every rank builds
before it is sharded), its resident memory after the updates (the training steady state) and the bytes of
parameters + gradients + AdamW moments it holds (its shards under FSDP). Launches alternate
ddp, fsdp, ddp, fsdp ... over ``--rounds`` so machine noise hits both alike; the ratio is FSDP / DDP.

Examples:
    python scripts/bench_fsdp.py --model-shape toy-small --rounds 3
    python scripts/bench_fsdp.py --model-shape pythia-70m --rounds 2 --steps 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_interventions import SHAPES, free_port, make_model  # noqa: E402

SHAPES = {
    **SHAPES,
    # Pythia-70m (pythia.md §2.2): 6 layers, d = 512, 8 heads, vocab 50304 (§2.3); short rows so that
    # an update fits the 2-core CPU in seconds (the memory of weights and moments does not depend on it)
    "pythia-70m": dict(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                       intermediate_size=2048, seq_len=128, batch_size=2, grid_every=1000),
}
VARIANTS = ("ddp", "fsdp")


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Parameters + gradients + optimizer state this rank holds (local shards of DTensors)."""
    def local(t: torch.Tensor) -> torch.Tensor:
        return t.to_local() if hasattr(t, "to_local") else t

    total = 0
    for p in model.parameters():
        total += local(p).numel() * p.element_size()
        if p.grad is not None:
            total += local(p.grad).numel() * p.grad.element_size()
    for state in optimizer.state.values():
        for v in state.values():
            if torch.is_tensor(v) and v.dim() > 0:
                total += local(v).numel() * v.element_size()
    return total


def worker(args: argparse.Namespace) -> int:
    from accelerate import Accelerator

    from resume import fsdp
    from resume.loss import CausalLMLoss
    from resume.optim import build_optimizer
    from checkpoints_cache.recipe import Recipe

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    shape = dict(SHAPES[args.model_shape])
    hf_model = make_model(shape, "cpu")  # same seed on every rank: the same initial weights
    recipe = Recipe(lr=1e-4, min_lr=1e-5, warmup_iters=0, decay_iters=10**9, train_iters=10**9, grad_clip=1.0)
    wrapper = CausalLMLoss(hf_model)
    if args.worker == "fsdp":
        fsdp.shard(wrapper, hf_model, accelerator)
        optimizer = accelerator.prepare(build_optimizer(hf_model, recipe))
        model = wrapper
    else:
        model, optimizer = accelerator.prepare(wrapper, build_optimizer(hf_model, recipe))
    torch.manual_seed(1 + rank)
    rows = max(1, shape["batch_size"] // world)
    batch = torch.randint(0, shape["vocab_size"], (rows, shape["seq_len"] + 1))
    params = [p for p in model.parameters() if p.requires_grad]
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        loss = model(batch[:, :-1], batch[:, 1:])
        accelerator.backward(loss)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        held = held_bytes(hf_model, optimizer.optimizer)  # gradients still there: the update's peak set
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    import psutil

    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    now_mb = psutil.Process().memory_info().rss / 2**20  # after the updates: the training steady state
    out = {"variant": args.worker, "world": world, "rank": rank, "peak_rss_mb": rss_mb, "rss_after_mb": now_mb,
           "held_mb": held / 2**20,
           "update_ms_median": 1e3 * statistics.median(times[args.warmup:]),
           "params": sum(p.numel() for p in hf_model.parameters()), "sharded": fsdp.is_sharded(hf_model)}
    Path(args.worker_out).with_suffix(f".rank{rank}.json").write_text(json.dumps(out))
    accelerator.wait_for_everyone()
    return 0


def launch(args: argparse.Namespace, variant: str, tag: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    for _attempt in range(5):  # a free port can be taken between the probe and the launch
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), __file__, "--worker", variant, "--model-shape", args.model_shape,
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--worker-out", str(tag)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
            break
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return [json.loads(tag.with_suffix(f".rank{r}.json").read_text()) for r in range(2)]


def bench(args: argparse.Namespace) -> list[dict]:
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-fsdp-") as work:
        for i in range(args.rounds):
            for v in VARIANTS:
                rows += launch(args, v, Path(work) / f"{v}-{i}")
    summary = []
    for v in VARIANTS:
        for r in range(2):
            pick = [x for x in rows if x["variant"] == v and x["rank"] == r]
            summary.append({"variant": v, "rank": r, "sharded": pick[0]["sharded"],
                            "update_ms_median": round(statistics.median(x["update_ms_median"] for x in pick), 1),
                            "peak_rss_mb": round(statistics.median(x["peak_rss_mb"] for x in pick), 1),
                            "rss_after_mb": round(statistics.median(x["rss_after_mb"] for x in pick), 1),
                            "held_mb": round(statistics.median(x["held_mb"] for x in pick), 1)})
    def med(v: str, key: str) -> float:
        return statistics.median(x[key] for x in summary if x["variant"] == v)

    ratios = {f"fsdp_over_ddp_{k}": round(med("fsdp", k) / med("ddp", k), 3)
              for k in ("update_ms_median", "peak_rss_mb", "rss_after_mb", "held_mb")}
    params = rows[0]["params"]
    info = {"shape": args.model_shape, "params": params, "one_fp32_copy_mb": round(params * 4 / 2**20, 1),
            "processes": 2, "rounds": args.rounds, "steps": args.steps, "torch": torch.__version__,
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(), **ratios}
    return [info] + summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-shape", default="toy-small", choices=sorted(SHAPES))
    ap.add_argument("--rounds", type=int, default=3, help="launches of each variant, alternated")
    ap.add_argument("--steps", type=int, default=10, help="timed updates per launch")
    ap.add_argument("--warmup", type=int, default=2, help="untimed updates first")
    ap.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)
    for row in bench(args):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
