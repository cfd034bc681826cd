"""compare()'s evaluation time vs bare forward passes over the same checkpoints and batches.

Both run in this process, interleaved round by round:

- bare: for every checkpoint that compare evaluates (the parent at each compared step, each
  branch at each compared step), ``AutoModelForCausalLM.from_pretrained`` once, then one forward
  pass per held-out batch, logits discarded. This is the floor: load + forward, nothing else.
- compare: ``resume.compare.api.compare(..., figures=False)`` into a fresh output folder (no
  cache): the same loads and forward passes plus KL / loss / top-1 on every token, parameter
  distances, content fingerprints of the checkpoints, the eval set, the table and the summary.

Reported: median seconds of each, the ratio compare / bare (goal <= 1.1), plus the cost of the
figures and of a cached re-run (a re-plot).

    python scripts/bench_compare.py                       # toy small, branches from 400 for 200 steps
    python scripts/bench_compare.py --size tiny --from-step 32 --steps 32
    python scripts/bench_compare.py --workdir runs/bench  # keep the toy and branches between runs
    python scripts/bench_compare.py --shape pythia-70m     # Pythia-70m shape (vocab 50304), random weights

``--shape pythia-70m`` writes a parent and a branch trajectory with random Pythia-70m-shaped
weights (pythia.md §1.3: d 512, 6 layers, 8 heads, vocab 50304) at two steps, and random token rows
(``--seq-len``, default 256, instead of 2048 to keep CPU rounds short): at a real vocabulary the
float64 metric work per token is much larger relative to the forward than on the toy.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bare_forward(checkpoints: list[Path], batches: list[np.ndarray], device: torch.device, rows: int) -> None:
    """Load each checkpoint, one forward per batch (``rows`` rows at a time, as compare does)."""
    from transformers import AutoModelForCausalLM

    from resume.compare.evaluate import _quiet_transformers

    inputs = [torch.from_numpy(b[:, :-1].astype(np.int64)).to(device) for b in batches]
    with torch.inference_mode():
        for ckpt in checkpoints:
            with _quiet_transformers():
                model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).to(device).eval()
            for x in inputs:
                for i in range(0, x.shape[0], rows):
                    model(input_ids=x[i : i + rows]).logits
            del model
        if device.type == "cuda":
            torch.cuda.synchronize()


def breakdown(run) -> dict[str, float]:
    """Wall time of one call of ``run`` split by what compare spends it on (wrapped functions)."""
    import collections

    import resume.compare.cache as cache
    import resume.compare.evaluate as ev

    spent: dict[str, float] = collections.defaultdict(float)
    patched = []

    def wrap(mod, name, label):
        f = getattr(mod, name)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return f(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t

        setattr(mod, name, timed)
        patched.append((mod, name, f))

    wrap(ev, "load_model", "load + forward")
    wrap(ev, "reference_block", "metrics (parent side; float32 elementwise, float64 per token)")
    wrap(ev, "pair_sums", "metrics (per compared model; float32 elementwise, float64 per token)")
    wrap(ev, "param_l2_distance", "parameter distances")
    wrap(cache, "_file_sha256", "content hashing of checkpoints")
    import resume.compare.api as api

    wrap(api, "analyze", "paired bootstrap of Δloss over sequences, noise bands")
    from transformers import PreTrainedModel

    orig_call = torch.nn.Module.__call__

    depth = [0]

    def call(self, *a, **k):
        if not isinstance(self, PreTrainedModel) or depth[0]:
            return orig_call(self, *a, **k)  # count the outermost model call only
        depth[0] += 1
        t = time.perf_counter()
        try:
            return orig_call(self, *a, **k)
        finally:
            depth[0] -= 1
            spent["load + forward"] += time.perf_counter() - t

    torch.nn.Module.__call__ = call
    t = time.perf_counter()
    try:
        run()
    finally:
        torch.nn.Module.__call__ = orig_call
        for mod, name, f in patched:
            setattr(mod, name, f)
    total = time.perf_counter() - t
    out = dict(spent)
    out["everything else (runs, eval set, cache, table, summary)"] = total - sum(spent.values())
    out["total"] = total
    return out


def synthetic_pythia(work: Path, seq_len: int, batch_size: int, eval_batches: int) -> list[Path]:
    """Parent + branch trajectories with random Pythia-70m-shaped checkpoints at steps 0 and 10."""
    import json

    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from data_order.mmidx import write_mmidx

    parent, child = work / "pythia70m-parent", work / "pythia70m-branch"
    if (child / "trajectory.json").is_file():
        return [child]
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=512, num_hidden_layers=6, num_attention_heads=8,
                        intermediate_size=2048, rotary_pct=0.25, max_position_embeddings=2048,
                        use_parallel_residual=True, tie_word_embeddings=False)
    cfg.architectures = ["GPTNeoXForCausalLM"]
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(cfg)
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 50304, size=((10 + eval_batches) * batch_size, seq_len + 1), dtype=np.uint16)
    write_mmidx(work / "pythia70m-data", list(rows))
    data = {"kind": "mmidx", "path": str(work / "pythia70m-data"), "batch_size": batch_size, "seq_len": seq_len}
    for root, parent_ref in ((parent, None), (child, {"run": str(parent), "step": 0})):
        meta = {"format": "branchpoint-trajectory/1", "name": root.name, "steps": [0, 10], "data_order": data,
                "parent": parent_ref, "branch_step": 0 if parent_ref else None, "end_step": 10,
                "intervention": {"name": "none" if parent_ref is None else "noise", "params": {}}}
        root.mkdir(parents=True, exist_ok=True)
        (root / "trajectory.json").write_text(json.dumps(meta))
    model.save_pretrained(parent / "checkpoints" / "step0")
    model.save_pretrained(child / "checkpoints" / "step0")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
        model.save_pretrained(parent / "checkpoints" / "step10")
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
        model.save_pretrained(child / "checkpoints" / "step10")
    return [child]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="small", choices=["tiny", "small"])
    ap.add_argument("--shape", default="toy", choices=["toy", "pythia-70m"],
                    help="toy: branches of the toy (--size); pythia-70m: synthetic Pythia-70m-shaped runs")
    ap.add_argument("--seq-len", type=int, default=256, help="pythia-70m shape: tokens per row")
    ap.add_argument("--batch-size", type=int, default=4, help="pythia-70m shape: rows per global batch")
    ap.add_argument("--from-step", type=int, default=400)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--interventions", nargs="+", default=["none", "lawa:k=2,every=50,mode=replace"])
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads for both sides (1: stable timings on a shared 2-core machine)")
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available, as compare does)")
    ap.add_argument("--workdir", default=None, help="keep the toy and branches here (default: a temp dir, deleted)")
    ap.add_argument("--out", default=None, help="write the Markdown result here (e.g. /tmp/compare.md)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    from checkpoints_cache.trajectory import Trajectory
    from data_order.source import TokenRows
    from resume.compare.api import compare
    from resume.engine import branch
    from resume.toy import ensure_toy

    tmp = None
    work = Path(args.workdir) if args.workdir else Path(tmp := tempfile.mkdtemp(prefix="bench_compare."))
    import os

    os.environ["BRANCHPOINT_CACHE"] = str(work / "hash-memo")  # compare's file-hash memo, kept out of ~/.cache
    try:
        t0 = time.perf_counter()
        if args.shape == "pythia-70m":
            branches = synthetic_pythia(work, args.seq_len, args.batch_size, args.eval_batches)
            toy = Path(json.loads((branches[0] / "trajectory.json").read_text())["parent"]["run"])
            args.interventions = ["random perturbation"]
        else:
            toy = ensure_toy(work / f"toy-{args.size}", args.size, progress=False)
            branches = []
            for i, spec in enumerate(args.interventions):
                out = work / f"branch{i}-{spec.split(':')[0]}"
                if not Trajectory.is_trajectory(out) or not Trajectory.open(out).steps or \
                        Trajectory.open(out).steps[-1] != args.from_step + args.steps:
                    shutil.rmtree(out, ignore_errors=True)
                    branch(str(toy), args.from_step, args.steps, intervention=spec, out=out, progress=False)
                branches.append(out)
        setup_s = time.perf_counter() - t0

        # The checkpoints compare evaluates and its eval batches, from one warm-up comparison.
        warm = work / "compare-warmup"
        shutil.rmtree(warm, ignore_errors=True)
        df = compare(branches, eval_batches=args.eval_batches, out=warm, progress=False, figures=False,
                     device=str(device))
        steps = sorted(set(df.step))
        parent = Trajectory.open(toy)
        ckpts = [parent.checkpoint_dir(s) for s in steps]
        for b in branches:
            tb = Trajectory.open(b)
            ckpts += [tb.checkpoint_dir(s) for s in steps]
            ckpts += [d for s in steps if (d := tb.averaged_dir(s)) is not None]
        es = json.loads((warm / "eval_set.json").read_text())
        rows = TokenRows(es["data"], es["batch_size"], es["seq_len"])
        batches = [rows.batch(k) for k in es["batch_indices"]]
        from resume.compare.evaluate import rows_per_forward

        vocab = json.loads((ckpts[0] / "config.json").read_text())["vocab_size"]
        per = rows_per_forward(es["batch_size"], es["seq_len"], vocab)  # compare's rows per forward pass

        # First-time content hashing of these checkpoints (later comparisons find them in the memo).
        from resume.compare.cache import EvalCache

        shutil.rmtree(work / "hash-memo-fresh", ignore_errors=True)
        os.environ["BRANCHPOINT_CACHE"] = str(work / "hash-memo-fresh")
        t = time.perf_counter()
        EvalCache(work / "hash-only").prefetch(ckpts)
        hash_s = time.perf_counter() - t
        gb = sum(f.stat().st_size for c in ckpts for f in c.iterdir() if f.is_file()) / 1e9
        os.environ["BRANCHPOINT_CACHE"] = str(work / "hash-memo")
        shutil.rmtree(work / "hash-memo-fresh", ignore_errors=True)
        shutil.rmtree(work / "hash-only", ignore_errors=True)

        bare_t, cmp_t = [], []
        for r in range(args.rounds):
            order = ("bare", "compare") if r % 2 == 0 else ("compare", "bare")
            for which in order:
                out = work / f"compare-round{r}"
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                if which == "bare":
                    bare_forward(ckpts, batches, device, per)
                    bare_t.append(time.perf_counter() - t)
                else:
                    compare(branches, eval_batches=args.eval_batches, out=out, progress=False, figures=False,
                            device=str(device))
                    cmp_t.append(time.perf_counter() - t)
                shutil.rmtree(out, ignore_errors=True)
        # Figures, and a cached re-run (what a re-plot costs).
        t = time.perf_counter()
        compare(branches, eval_batches=args.eval_batches, out=warm, progress=False, figures=True, device=str(device))
        replot = time.perf_counter() - t
        t = time.perf_counter()
        compare(branches, eval_batches=args.eval_batches, out=warm, progress=False, figures=False, device=str(device))
        cached = time.perf_counter() - t

        shutil.rmtree(work / "compare-breakdown", ignore_errors=True)
        parts = breakdown(lambda: compare(branches, eval_batches=args.eval_batches, out=work / "compare-breakdown",
                                          progress=False, figures=False, device=str(device)))
        shutil.rmtree(work / "compare-breakdown", ignore_errors=True)
        bare_m, cmp_m = statistics.median(bare_t), statistics.median(cmp_t)
        paired = statistics.median(c / b for c, b in zip(cmp_t, bare_t))
        tokens = len(batches) * batches[0].shape[0] * (batches[0].shape[1] - 1)
        lines = [
            "# compare: evaluation vs bare forward passes",
            "",
            (f"Machine: {torch.get_num_threads()} torch threads on a 2-core CPU shared with other jobs"
             if device.type == "cpu" else f"Device: {torch.cuda.get_device_name(device)}")
            + f", Python {platform.python_version()}, torch {torch.__version__}. Command: `python scripts/bench_compare.py "
            + " ".join(argv if argv is not None else sys.argv[1:]) + "`.",
            "",
            (f"Workload: toy `{args.size}`, {len(branches)} branches ({', '.join(args.interventions)}) from step "
             f"{args.from_step} for {args.steps} steps" if args.shape == "toy" else
             "Workload: synthetic Pythia-70m shape (vocab 50304), 1 branch (random weight perturbation) of a parent "
             "with checkpoints at steps 0 and 10")
            + f"; compared steps {steps}; {len(ckpts)} checkpoints evaluated "
            f"on {len(batches)} held-out batches ({tokens} tokens each pass); {args.rounds} rounds, interleaved "
            f"(setup {setup_s:.1f} s).",
            "",
            "| what | median s | per checkpoint ms |",
            "| --- | ---: | ---: |",
            f"| bare: from_pretrained + forward per batch | {bare_m:.3f} | {1000 * bare_m / len(ckpts):.1f} |",
            f"| compare(figures=False), no cache | {cmp_m:.3f} | {1000 * cmp_m / len(ckpts):.1f} |",
            f"| compare re-run from cache, with figures (re-plot) | {replot:.3f} | |",
            f"| compare re-run from cache, no figures | {cached:.3f} | |",
            "",
            f"Ratio compare / bare: **{cmp_m / bare_m:.3f}** (ratio of medians), {paired:.3f} (median of paired "
            "rounds); goal <= 1.1.",
            f"Rounds (s): bare {', '.join(f'{x:.3f}' for x in bare_t)}; compare {', '.join(f'{x:.3f}' for x in cmp_t)}.",
            f"Timed compare rounds find the checkpoints' file hashes in the machine-wide memo (written by the "
            f"warm-up); hashing them the first time ({gb:.2f} GB, parallel threads) took {hash_s:.3f} s, "
            f"{100 * hash_s / bare_m:.0f}% of a bare pass.",
            "",
            "Where one uncached compare spends its time (one extra instrumented run):",
            "",
            "| part | s | share |",
            "| --- | ---: | ---: |",
            *[f"| {k} | {v:.3f} | {100 * v / parts['total']:.0f}% |" for k, v in parts.items() if k != "total"],
            f"| total | {parts['total']:.3f} | |",
            "",
            f"Within that run, total / (load + forward) = **{parts['total'] / parts['load + forward']:.3f}**: the "
            "ratio once the bare side's own work (the same loads and forwards) is taken out, robust to the machine's "
            "speed changing between rounds.",
        ]
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
