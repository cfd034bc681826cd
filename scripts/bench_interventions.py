"""Interventions: LAWA and EMA overhead per update and peak host memory (1 vs 2 processes), and
BiMix corpus preparation throughput against ``datasets``' own ``map`` tokenization.

Three measurements, each side by side with its baseline:

- **overhead** (default): in one process the same GPT-NeoX model (same init) trains on the same
  fixed batch with AdamW, once as the control and once per intervention, one step of each variant
  in turn (interleaved, so machine noise hits all alike). The hook share is the time inside the
  intervention's ``after_step`` (plus, for LAWA eval, the average it writes at a checkpoint save)
  over the optimizer step time. LAWA's cost sits on its snapshot steps; measured with a small
  ``--lawa-every`` and amortized to the parent's grid spacing (Pythia: 1000):
  (snapshot-step cost + (1000 − 1) × other-step cost) / 1000 / step time.
- **--memory**: ``torchrun --nproc_per_node 1`` and ``2`` (CPU, gloo, DDP) per variant (control,
  LAWA k snapshots on host, LAWA on disk, EMA on CPU); every rank reports its peak resident memory
  (``getrusage``) and the snapshot bytes it holds; reported as the increase over the control.
- **--bimix-prep**: a generated multi-domain text corpus (parquet) and a BPE tokenizer trained on
  it; ``data_order.labelled.prepare_labelled`` (tokenize, pack within domain, write the MMIDIDX rows,
  labels and entropy counts) against ``Dataset.map`` with the same fast tokenizer (tokenize and
  write its Arrow cache), on the same loaded table, fresh caches each round, interleaved.
  ``--bimix-one prepare|map`` runs one of them once (for whole-process timings of the two).

Examples:
    python scripts/bench_interventions.py --model-shape toy-small --k 10
    python scripts/bench_interventions.py --memory --model-shape pythia-14m --k 10
    python scripts/bench_interventions.py --bimix-prep --docs 40000
    python scripts/bench_interventions.py --model-shape pythia-160m --device cuda --bf16 --accum 16 --k 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
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
    # Pythia-14m (pythia.md §1.3): 6 layers, d = 128, 4 heads, vocab 50304
    "pythia-14m": dict(vocab_size=50304, hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                       intermediate_size=512, seq_len=128, batch_size=8, grid_every=1000),
    # Pythia-160m (pythia.md §2): 12 layers, d = 768, 12 heads, vocab 50304, checkpoints every 1000
    "pythia-160m": dict(vocab_size=50304, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=3072, seq_len=2048, batch_size=8, grid_every=1000),
}
PYTHIA_EVERY = 1000  # Pythia's checkpoint spacing (pythia.md §1.2): LAWA's snapshot interval on its grid


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


def bench_context(out_dir: Path | None) -> BranchContext:
    recipe = Recipe(lr=1e-4, min_lr=1e-5, warmup_iters=0, decay_iters=10**9, train_iters=10**9)
    return BranchContext(branch_step=0, end_step=10**9, recipe=recipe, parent_grid=[0], out_dir=out_dir)


def variants(k: int, every: int, device: str) -> list[tuple[str, Intervention]]:
    out = [("control", Control()),
           (f"lawa replace k={k} host", LAWA(k=k, every=every, mode="replace", window="branch", store="host")),
           (f"lawa replace k={k} disk", LAWA(k=k, every=every, mode="replace", window="branch", store="disk")),
           (f"lawa eval k={k} disk", LAWA(k=k, every=every, mode="eval", window="branch", store="disk")),
           ("ema F=25 (cpu)", Anytime(ema=25, ema_device="cpu"))]
    if device.startswith("cuda"):
        out.append(("ema F=25 (model device = auto)", Anytime(ema=25, ema_device="model")))
    return out


# -- overhead per update ------------------------------------------------------------------------------
class Runner:
    """One variant: its own model copy, optimizer and intervention, advanced a step at a time."""

    def __init__(self, name: str, iv: Intervention, shape: dict, device: str, batch: torch.Tensor, amp: bool,
                 accum: int, workdir: Path):
        self.name, self.iv, self.device, self.batch, self.amp, self.accum = name, iv, device, batch, amp, accum
        model = make_model(shape, "cpu")
        ctx = bench_context(workdir / name.replace(" ", "_"))
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
            if isinstance(self.iv, LAWA) and self.iv.params["mode"] == "eval" and self.iv.is_snapshot_step(self.step):
                self.iv.extra_weights(self.model, self.step)  # the average written at a checkpoint save
            sync(self.device)
            t2 = time.perf_counter()
            self.step_times.append(t1 - t0)
            self.hook_times.append(t2 - t1)
            self.hook_steps.append(self.step)


def summarize(r: Runner, control: Runner, warmup: int) -> dict:
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
        out[f"amortized_share_every_{PYTHIA_EVERY}"] = (snap_ms + (PYTHIA_EVERY - 1) * other_ms) / PYTHIA_EVERY / step_s
    return out


def machine_info(args: argparse.Namespace, shape: dict, params: int) -> dict:
    return {
        "shape": args.model_shape, "device": args.device,
        "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
        "params": params, "cpus": os.cpu_count(),
    }


def overhead(args: argparse.Namespace) -> list[dict]:
    shape = dict(SHAPES[args.model_shape])
    b = args.batch_size or shape["batch_size"]
    t = args.seq_len or shape["seq_len"]
    torch.manual_seed(1)
    batch = torch.randint(0, shape["vocab_size"], (b, t + 1)).to(args.device)
    amp = bool(args.bf16 and args.device.startswith("cuda"))
    with tempfile.TemporaryDirectory(prefix="bench-lawa-") as work:
        runners = [Runner(n, iv, shape, args.device, batch, amp, args.accum, Path(work))
                   for n, iv in variants(args.k, args.lawa_every, args.device)]
        for r in runners:  # warm-up (allocator, kernels) outside the rounds
            r.run(args.warmup)
        for _ in range(args.rounds * args.steps):  # interleaved step by step: noise hits every variant alike
            for r in runners:
                r.run(1)
        rows = [summarize(r, runners[0], args.warmup) for r in runners]
        info = {**machine_info(args, shape, sum(p.numel() for p in runners[0].model.parameters())),
                "batch": [b, t], "accum": args.accum, "bf16": amp, "k": args.k, "lawa_every": args.lawa_every,
                "steps_per_variant": args.rounds * args.steps}
    return [info] + rows


# -- peak host memory, 1 vs 2 processes ---------------------------------------------------------------
WORKER_VARIANTS = ("control", "lawa-host", "lawa-disk", "ema-cpu")


def worker(args: argparse.Namespace) -> int:
    """One rank of a torchrun job: DDP training with one intervention; writes its peak RSS."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    shape = dict(SHAPES[args.model_shape])
    torch.manual_seed(1 + rank)
    batch = torch.randint(0, shape["vocab_size"], (shape["batch_size"] // world, shape["seq_len"] + 1))
    iv: Intervention = {
        "control": lambda: Control(),
        "lawa-host": lambda: LAWA(k=args.k, every=1, mode="replace", window="branch", store="host"),
        "lawa-disk": lambda: LAWA(k=args.k, every=1, mode="replace", window="branch", store="disk"),
        "ema-cpu": lambda: Anytime(ema=25, ema_device="cpu"),
    }[args.worker]()
    ctx = bench_context(Path(args.worker_dir))
    iv.setup(ctx)
    model = iv.on_load(make_model(shape, "cpu"), ctx)
    ddp = DistributedDataParallel(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    times = []
    for step in range(1, args.worker_steps + 1):
        t0 = time.perf_counter()
        logits = ddp(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        iv.after_step(model, step)
        times.append(time.perf_counter() - t0)
    held = 0
    if isinstance(iv, LAWA):
        held = iv.window.held_bytes()
    elif isinstance(iv, Anytime) and iv.ema_weights is not None:
        held = sum(t.numel() * t.element_size() for t in iv.ema_weights.values())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    out = {"variant": args.worker, "world": world, "rank": rank, "peak_rss_mb": rss_mb, "held_mb": held / 2**20,
           "step_ms_median": 1e3 * statistics.median(times[2:]),
           "params": sum(p.numel() for p in model.parameters())}
    Path(args.worker_out).with_suffix(f".rank{rank}.json").write_text(json.dumps(out))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(args: argparse.Namespace) -> list[dict]:
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory(prefix="bench-mem-") as work:
        for _ in range(args.rounds):
            for world in (1, 2):
                for v in WORKER_VARIANTS:
                    tag = Path(work) / f"{v}-{world}-{len(rows)}"
                    for _attempt in range(5):  # a free port can be taken between the probe and the launch
                        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(world),
                               "--master_addr", "127.0.0.1", "--master_port", str(free_port()), __file__,
                               "--worker", v, "--model-shape", args.model_shape, "--k", str(args.k),
                               "--worker-steps", str(args.worker_steps), "--worker-dir", str(tag / "traj"),
                               "--worker-out", str(tag)]
                        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
                        if proc.returncode == 0 or "EADDRINUSE" not in proc.stderr:
                            break
                    if proc.returncode:
                        raise SystemExit(proc.stderr[-3000:])
                    for r in range(world):
                        rows.append(json.loads(tag.with_suffix(f".rank{r}.json").read_text()))
    summary = []
    for world in (1, 2):
        for v in WORKER_VARIANTS:
            for r in range(world):
                pick = [x for x in rows if x["variant"] == v and x["world"] == world and x["rank"] == r]
                base = [x for x in rows if x["variant"] == "control" and x["world"] == world and x["rank"] == r]
                rss = statistics.median(x["peak_rss_mb"] for x in pick)
                summary.append({"variant": v, "processes": world, "rank": r, "peak_rss_mb": round(rss, 1),
                                "peak_rss_over_control_mb": round(rss - statistics.median(x["peak_rss_mb"] for x in base), 1),
                                "held_mb": round(statistics.median(x["held_mb"] for x in pick), 1),
                                "step_ms_median": round(statistics.median(x["step_ms_median"] for x in pick), 1)})
    params = rows[0]["params"]
    info = {"shape": args.model_shape, "params": params, "one_fp32_copy_mb": round(params * 4 / 2**20, 1),
            "k": args.k, "rounds": args.rounds, "steps": args.worker_steps, "torch": torch.__version__,
            "cpus": os.cpu_count()}
    return [info] + summary


# -- BiMix corpus preparation -------------------------------------------------------------------------
def make_text_corpus(folder: Path, docs: int, seed: int = 0) -> tuple[Path, Path]:
    """A parquet table of ``docs`` documents in 4 domains of different word distributions, and a BPE
    tokenizer (vocab 8192) trained on it."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    table_path, tok_dir = folder / "corpus.parquet", folder / "tokenizer"
    if table_path.is_file() and (tok_dir / "tokenizer.json").is_file():
        return table_path, tok_dir
    rng = np.random.default_rng(seed)
    syllables = ["ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "zu", "an", "el", "or", "ix", "um", "ed"]
    words = ["".join(rng.choice(syllables, rng.integers(1, 4))) for _ in range(20000)]
    domains = {"wiki": (20000, 1.05), "code": (3000, 1.3), "chat": (6000, 1.15), "web": (20000, 1.0)}
    names, texts = [], []
    for i in range(docs):
        name = list(domains)[i % len(domains)]
        size, a = domains[name]
        p = 1.0 / np.arange(1, size + 1) ** a
        p /= p.sum()
        n = int(rng.integers(50, 600))
        texts.append(" ".join(np.asarray(words[:size])[rng.choice(size, n, p=p)]))
        names.append(name)
    pq.write_table(pa.table({"text": texts, "domain": names}), table_path)
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=8192, special_tokens=["<|endoftext|>", "<unk>"])
    backend.train_from_iterator(texts[: min(len(texts), 5000)], trainer)
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(tok_dir)
    return table_path, tok_dir


def load_table(table_path: Path, cache: Path):
    import datasets

    datasets.disable_progress_bars()
    return datasets.load_dataset("parquet", data_files=str(table_path), split="train", cache_dir=str(cache))


def run_prepare(ds, tok, cache: Path, seq_len: int) -> int:
    from data_order.labelled import prepare_labelled

    corpus = prepare_labelled(ds, domain_column="domain", text_column="text", tokenizer=tok, seq_len=seq_len,
                              cache_root=cache, progress=False)
    return sum(corpus.meta["tokens"].values())


def run_map(ds, tok, cache: Path) -> int:
    out = ds.map(lambda b: tok(b["text"], add_special_tokens=False), batched=True, batch_size=1000,
                 remove_columns=ds.column_names, cache_file_name=str(cache / "tokenized.arrow"),
                 load_from_cache_file=False)
    return int(sum(len(x) for x in out.with_format("arrow")["input_ids"].to_pylist()))


def bimix_prep(args: argparse.Namespace) -> list[dict]:
    from transformers import AutoTokenizer

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-bimix-"))
    table_path, tok_dir = make_text_corpus(work / "data", args.docs)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    ds = load_table(table_path, work / "hf-cache")
    times: dict[str, list[float]] = {"prepare": [], "map": []}
    tokens: dict[str, int] = {}
    for r in range(args.rounds + 1):  # round 0 warms up (tokenizer, page cache) and is dropped
        for name in (("prepare", "map") if r % 2 == 0 else ("map", "prepare")):
            cache = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=work))
            t0 = time.perf_counter()
            n = run_prepare(ds, tok, cache, args.bimix_seq_len) if name == "prepare" else run_map(ds, tok, cache)
            dt = time.perf_counter() - t0
            if r:
                times[name].append(dt)
            tokens[name] = n
            subprocess.run(["rm", "-rf", str(cache)], check=False)
    # "map" counts tokenizer ids; "prepare" adds one end-of-text per document
    rows = [{"what": name, "median_s": statistics.median(ts), "tokens": tokens[name],
             "tokens_per_s": tokens[name] / statistics.median(ts), "rounds_s": [round(x, 3) for x in ts]}
            for name, ts in times.items()]
    ratio = statistics.median(a / b for a, b in zip(times["prepare"], times["map"]))
    info = {"docs": len(ds), "seq_len": args.bimix_seq_len, "tokenizer": "BPE 8192 (tokenizers, fast)",
            "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "(unset)"), "cpus": os.cpu_count(),
            "prepare_over_map_time_ratio_median_of_pairs": ratio}
    return [info] + rows


def bimix_one(args: argparse.Namespace) -> int:
    from transformers import AutoTokenizer

    work = Path(args.workdir)
    table_path, tok_dir = make_text_corpus(work / "data", args.docs)
    ds = load_table(table_path, work / "hf-cache")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    cache = Path(tempfile.mkdtemp(prefix=f"{args.bimix_one}-", dir=work))
    n = run_prepare(ds, tok, cache, args.bimix_seq_len) if args.bimix_one == "prepare" else run_map(ds, tok, cache)
    subprocess.run(["rm", "-rf", str(cache)], check=False)
    print(json.dumps({"what": args.bimix_one, "tokens": n}))
    return 0


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
    ap.add_argument("--k", type=int, default=10, help="LAWA window (default 10: the seed text's M ≈ 10)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--memory", action="store_true", help="peak host memory, 1 vs 2 processes (torchrun, CPU)")
    ap.add_argument("--worker-steps", type=int, default=14, help="--memory: updates per run (>= k, every=1)")
    ap.add_argument("--bimix-prep", action="store_true", help="BiMix corpus preparation vs datasets' map")
    ap.add_argument("--bimix-one", choices=("prepare", "map"), help="run one BiMix preparation once (--workdir)")
    ap.add_argument("--docs", type=int, default=40000, help="--bimix-prep: documents in the generated corpus")
    ap.add_argument("--bimix-seq-len", type=int, default=2048, help="--bimix-prep: row length - 1")
    ap.add_argument("--workdir", default=None, help="--bimix-*: where the corpus and caches go")
    ap.add_argument("--worker", choices=WORKER_VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--worker-dir", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help="append a JSON line with the results to this file")
    args = ap.parse_args(argv)

    if args.worker:
        return worker(args)
    if args.bimix_one:
        return bimix_one(args)
    rows = memory(args) if args.memory else bimix_prep(args) if args.bimix_prep else overhead(args)
    for row in rows:
        print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps({"argv": sys.argv[1:], "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
