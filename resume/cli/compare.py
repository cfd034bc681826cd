"""``branchpoint compare``: how far branches moved from their parent, as a table, figures and a summary."""

from __future__ import annotations

import argparse

from resume.cli.eval import add_band_args, add_task_args, limit_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="evaluate branches and their parent on held-out batches: loss, Δloss, KL, top-1, parameter distance",
        description="Evaluate each TRAJ (a branch trajectory directory) and its parent (from trajectory.json, or "
        "--against RUN) at every step both have a checkpoint, on the same held-out global batches of the parent's "
        "data order (default: the K batches right after the last compared step). Writes comparison.csv/.parquet "
        "(columns run, weights, step, metric, value), figures (PNG + SVG), summary.md and eval_set.json to --out. "
        "Evaluations are cached by checkpoint and eval-set content, so a re-run only re-plots. Δloss gets a paired "
        "bootstrap over held-out sequences, noise bands (seed runs, the parent's checkpoint noise, repeated controls) "
        "and a verdict per branch in paired.csv and summary.md. --tasks adds lm-eval task scores of the same "
        "checkpoints (as `branchpoint eval`), --published the parent's released evals, --parent-loss its training-loss "
        "curve.",
        epilog="examples:\n"
        "  branchpoint compare runs/control runs/lawa --out runs/compare\n"
        "  branchpoint compare runs/gstack --against runs/toy-small-deep --eval-batches 8\n"
        "  branchpoint compare runs/lawa --seed-runs runs/toy-small-seed1 runs/toy-small-seed2\n"
        "  branchpoint compare runs/lawa runs/control runs/control-rep1 runs/control-rep2 --tasks my_task \\\n"
        "      --include-path tasks/ --parent-loss wandb_export.csv --published pythia/evals/pythia-v1/pythia-160m",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("trajs", nargs="+", metavar="TRAJ", help="branch trajectory directories")
    p.add_argument("--against", default=None, metavar="RUN",
                   help="compare with this run (trajectory dir or registry name) instead of each TRAJ's parent")
    p.add_argument("--eval-batches", type=int, default=4, metavar="K",
                   help="number of held-out global batches (default 4)")
    p.add_argument("--eval-batch-indices", type=int, nargs="+", default=None, metavar="I",
                   help="evaluate on these global batches of the data order instead")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: FIRST_TRAJ/compare)")
    p.add_argument("--seed-runs", nargs="+", default=None, metavar="RUN",
                   help="runs of the same recipe with other seeds (trajectories or registry names such as pythia-160m-seed1): "
                   "the seed band, median and IQR with the parent")
    p.add_argument("--device", default=None, metavar="DEV", help="torch device for evaluation (default: cuda if available, else cpu)")
    p.add_argument("--parent-loss", default=None, metavar="FILE.csv",
                   help="the parent's training-loss curve (columns step,loss, or a W&B export), overlaid on the loss figure")
    add_band_args(p, seed_runs=False)
    add_task_args(p, required=False)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from resume.compare.api import compare

    df = compare(args.trajs, against=args.against, eval_batches=args.eval_batches,
                 eval_batch_indices=args.eval_batch_indices, out=args.out, seed_runs=args.seed_runs,
                 progress=not args.no_progress, device=args.device, tasks=args.tasks, num_fewshot=args.num_fewshot,
                 limit=limit_arg(args.limit), batch_size=args.batch_size, dtype=args.dtype,
                 include_path=args.include_path, tokenizer=args.tokenizer, published=args.published,
                 parent_loss=args.parent_loss, noise_window=args.noise_window, bootstrap_iters=args.bootstrap_iters)
    out = Path(args.out) if args.out else Path(args.trajs[0]) / "compare"
    last = df[df.step == df.groupby("run").step.transform("max")]
    wide = last[last.metric.isin(["loss", "delta_loss", "kl", "top1_agreement", "param_distance"])].pivot_table(
        index=["run", "weights", "step"], columns="metric", values="value", sort=False)
    print(wide.to_string(float_format=lambda x: f"{x:.4g}", na_rep="-"))
    print(f"comparison written to {out}: comparison.csv, paired.csv, figures, summary.md")
    from checkpoints_cache.trajectory import Trajectory

    flags = {Trajectory.open(t).meta.get("exactness") for t in args.trajs if Trajectory.is_trajectory(t)} - {None}
    for flag in sorted(flags):  # data released with an approximate order (LLM360): said here and in summary.md
        print(f"exactness: {flag}")
    return 0
