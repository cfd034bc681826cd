"""``branchpoint eval``: lm-evaluation-harness tasks on trajectories and their parent, with paired tests."""

from __future__ import annotations

import argparse


def add_task_args(p: argparse.ArgumentParser, required: bool) -> None:
    """The task flags shared by ``eval`` and ``compare``."""
    p.add_argument("--tasks", required=required, default=None, metavar="T1,T2",
                   help="lm-eval task (or group) names, comma-separated: lm-eval's own (data from the HF datasets "
                   "cache) or those in --include-path")
    p.add_argument("--num-fewshot", type=int, default=None, metavar="K",
                   help="few-shot examples (default: each task's own, 0 when it sets none)")
    p.add_argument("--limit", type=float, default=None, metavar="N",
                   help="documents per task (an integer) or a fraction < 1 (lm-eval: for testing)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B",
                   help="lm-eval batch size, pinned and recorded (it moves scores in the 3rd-4th decimal; default 16)")
    p.add_argument("--dtype", default="float32", metavar="DTYPE", help="float32 (default) | bfloat16 | float16 | auto")
    p.add_argument("--include-path", default=None, metavar="DIR",
                   help="folder of your own task YAMLs (data via dataset_kwargs.data_files: json / parquet / arrow)")
    p.add_argument("--tokenizer", default=None, metavar="NAME_OR_PATH",
                   help="tokenizer for checkpoints that carry none (default: each checkpoint folder's own)")


def add_band_args(p: argparse.ArgumentParser, seed_runs: bool = True) -> None:
    """Noise-band and published-number flags shared by ``eval`` and ``compare``."""
    if seed_runs:
        p.add_argument("--seed-runs", nargs="+", default=None, metavar="RUN",
                       help="runs of the same recipe with other seeds (trajectories or registry names such as "
                       "pythia-160m-seed1): the seed band, median and IQR")
    p.add_argument("--noise-window", type=int, default=3, metavar="K",
                   help="checkpoint-noise band: σ of the parent's metric around its linear trend over its K evaluated "
                   "checkpoints nearest to each step (default 3; 0 turns it off)")
    p.add_argument("--bootstrap-iters", type=int, default=10_000, metavar="B",
                   help="resamples of the paired bootstrap (default 10000; seed 1234)")
    p.add_argument("--published", nargs="+", default=None, metavar="PATH",
                   help="the parent's released evals: Pythia's evals/ lm-eval v0.3 JSON files or folders (keyed on "
                   "num_fewshot and revision), drawn as a labelled reference series")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="lm-eval tasks on trajectories and their parent at the same steps: scores, paired tests, noise bands",
        description="Run lm-evaluation-harness (lm_eval.simple_evaluate with an HFLM on each checkpoint folder, "
        "averaged/ weights included) at each saved step of each TRAJ (or the --steps given) and of its parent at the "
        "same steps, with pinned seeds, dtype and batch size. Writes comparison.csv/.parquet (run, weights, step, "
        "metric, value; metric = task/<task>/<metric> and task/<task>/<metric>_stderr), paired.csv (McNemar / paired "
        "bootstrap against the parent, noise bands, verdicts), bands.csv, eval_config.json, summary.md, a figure per "
        "task and lm-eval's per-item samples/ to --out. Results are cached by checkpoint and task content: a re-run "
        "only re-plots. Offline: lm-eval's own tasks read their data from the HF datasets cache; your own tasks are "
        "YAMLs in --include-path over local files.",
        epilog="examples:\n"
        "  branchpoint eval runs/control runs/lawa --tasks my_task --include-path tasks/ --out runs/eval\n"
        "  branchpoint eval runs/lawa --tasks lambada_openai,piqa --num-fewshot 0 --steps 134000 143000 \\\n"
        "      --seed-runs pythia-160m-seed1 pythia-160m-seed2 --published pythia/evals/pythia-v1/pythia-160m\n\n"
        "A task YAML over a local jsonl (lm-eval's format):\n"
        "  task: my_task\n  dataset_path: json\n  dataset_kwargs: {data_files: {test: /abs/path/my_task.jsonl}}\n"
        "  test_split: test\n  output_type: multiple_choice\n  doc_to_text: \"{{context}}\"\n"
        "  doc_to_choice: \"{{choices}}\"\n  doc_to_target: label\n  metric_list: [{metric: acc}]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("trajs", nargs="+", metavar="TRAJ", help="trajectory directories (branches) or registry runs")
    add_task_args(p, required=True)
    p.add_argument("--steps", type=int, nargs="+", default=None, metavar="S",
                   help="evaluate at these steps (each a checkpoint of every TRAJ and of the parent)")
    p.add_argument("--against", default=None, metavar="RUN", help="compare with this run instead of each TRAJ's parent")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: FIRST_TRAJ/eval)")
    add_band_args(p)
    p.add_argument("--device", default=None, metavar="DEV", help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--no-figures", action="store_true", help="write the tables and summary only")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def limit_arg(limit: float | None) -> int | float | None:
    """--limit 50 -> 50 documents, --limit 0.1 -> a tenth of each task."""
    if limit is None:
        return None
    return int(limit) if limit >= 1 and float(limit).is_integer() else limit


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from resume.evaluation.api import evaluate

    df = evaluate(args.trajs, args.tasks, against=args.against, steps=args.steps, num_fewshot=args.num_fewshot,
                  limit=limit_arg(args.limit), batch_size=args.batch_size, dtype=args.dtype, device=args.device,
                  include_path=args.include_path, out=args.out, seed_runs=args.seed_runs, published=args.published,
                  noise_window=args.noise_window, bootstrap_iters=args.bootstrap_iters, tokenizer=args.tokenizer,
                  progress=not args.no_progress, figures=not args.no_figures)
    out = Path(args.out) if args.out else Path(args.trajs[0]) / "eval"
    scores = df[df.metric.str.startswith("task/") & ~df.metric.str.endswith("_stderr") & (df.weights != "published")]
    last = scores[scores.step == scores.groupby("run").step.transform("max")]
    if not last.empty:
        wide = last.pivot_table(index=["run", "weights", "step"], columns="metric", values="value", sort=False)
        print(wide.to_string(float_format=lambda x: f"{x:.4g}", na_rep="-"))
    print(f"evaluation written to {out}: comparison.csv, paired.csv, summary.md, figures, samples/")
    return 0
