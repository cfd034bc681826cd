"""``branchpoint eval``'s evaluation time vs ``lm_eval.simple_evaluate`` called directly on the same checkpoints.

Both run in this process, interleaved round by round, on the same task (a local YAML over a
generated jsonl: the toy's ``toy_next_word``, ``--docs`` documents) and settings (dtype float32,
batch size 16, lm-eval's default seeds, ``log_samples=True``):

- direct: for each checkpoint, ``HFLM(pretrained=<checkpoint folder>)`` and
  ``simple_evaluate(model=lm, tasks=[name], task_manager=TaskManager(include_path=DIR,
  include_defaults=False), log_samples=True)``, as a user scripting lm-eval would.
- eval: ``resume.evaluation.api.evaluate([TRAJ], tasks, steps=..., figures=False)`` into a fresh
  output folder (no cache): the same evaluations plus content fingerprints, the cache entries, the
  per-item logs, the table, paired tests, bands and summary.

Two workloads: one checkpoint (the toy's last step, evaluated alone), and a branch with its parent
at every compared step (each direct call re-loads the task, as a loop over checkpoints does; eval
loads it once).

    python scripts/bench_eval.py                      # toy tiny, 64 documents, 5 rounds
    python scripts/bench_eval.py --size small --docs 256 --rounds 7 --workdir runs/bench-eval
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def direct(ckpts: list[Path], task: str, include: Path, batch_size: int) -> None:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from resume.evaluation.tasks import quiet_lm_eval, quiet_output

    for ckpt in ckpts:
        with quiet_lm_eval(), quiet_output():
            lm = HFLM(pretrained=str(ckpt), dtype="float32", batch_size=batch_size, device="cpu")
            lm_eval.simple_evaluate(model=lm, tasks=[task], log_samples=True,
                                    task_manager=TaskManager(include_path=str(include), include_defaults=False))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="tiny", choices=["tiny", "small"])
    ap.add_argument("--docs", type=int, default=64, help="documents of the toy task")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: stable timings on a shared machine)")
    ap.add_argument("--workdir", default=None, help="keep the toy, branch and task here (default: a temp dir)")
    ap.add_argument("--out", default=None, help="write the Markdown result here")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from checkpoints_cache.trajectory import Trajectory
    from resume.engine import branch
    import resume.evaluation.lmeval as lmeval
    from resume.evaluation.api import evaluate
    from resume.evaluation.toy_task import NEXT_WORD, write_toy_tasks
    from resume.toy import TOY_SIZES, ensure_toy

    tmp = None
    work = Path(args.workdir) if args.workdir else Path(tmp := tempfile.mkdtemp(prefix="bench_eval."))
    os.environ["BRANCHPOINT_CACHE"] = str(work / "hash-memo")
    try:
        toy = ensure_toy(work / f"toy-{args.size}", args.size, progress=False)
        size = TOY_SIZES[args.size]
        last, mid = size.train_iters, size.train_iters // 2
        b = work / f"branch-lawa-{mid}"
        if not Trajectory.is_trajectory(b) or Trajectory.open(b).steps[-1:] != [last]:
            shutil.rmtree(b, ignore_errors=True)
            branch(str(toy), mid, last - mid, intervention=f"lawa:k=2,every={size.grid_every},mode=replace", out=b,
                   progress=False)
        tasks = write_toy_tasks(toy, work / "tasks", docs=args.docs)
        steps = Trajectory.open(b).steps
        pt = Trajectory.open(toy)
        workloads = {
            "one checkpoint": ([toy], [last], [pt.checkpoint_dir(last)]),
            f"branch + parent at {len(steps)} steps": ([b], steps, [pt.checkpoint_dir(s) for s in steps]
                                                        + [Trajectory.open(b).checkpoint_dir(s) for s in steps]),
        }
        # warm-up: imports, the datasets cache of the task, lm-eval's environment record
        direct(workloads["one checkpoint"][2], NEXT_WORD, tasks, 16)
        evaluate([toy], [NEXT_WORD], steps=[last], include_path=tasks, out=work / "warm", progress=False,
                 figures=False)
        lines = ["# eval: evaluation vs lm_eval.simple_evaluate called directly", "",
                 f"Machine: {torch.get_num_threads()} torch thread(s) on a 2-core CPU shared with other jobs, Python "
                 f"{platform.python_version()}, torch {torch.__version__}. Command: `python scripts/bench_eval.py "
                 + " ".join(argv if argv is not None else sys.argv[1:]) + "`.", "",
                 f"Task: `{NEXT_WORD}` ({args.docs} documents, multiple choice over 4 words), toy `{args.size}`; "
                 f"{args.rounds} rounds, interleaved; eval into a fresh folder each round (no cache), no figures.", "",
                 "| workload | checkpoints | direct s | eval s | ratio eval / direct |", "| --- | ---: | ---: | ---: | ---: |"]
        notes = []
        for name, (trajs, st, ckpts) in workloads.items():
            d_t, e_t = [], []
            for r in range(args.rounds):
                for which in (("direct", "eval") if r % 2 == 0 else ("eval", "direct")):
                    out = work / f"round{r}"
                    shutil.rmtree(out, ignore_errors=True)
                    t = time.perf_counter()
                    if which == "direct":
                        direct(ckpts, NEXT_WORD, tasks, 16)
                        d_t.append(time.perf_counter() - t)
                    else:
                        lmeval._ENV_INFO.clear()  # as in a fresh process: the first simple_evaluate records the environment
                        evaluate(trajs, [NEXT_WORD], steps=st, include_path=tasks, out=out, progress=False,
                                 figures=False)
                        e_t.append(time.perf_counter() - t)
                    shutil.rmtree(out, ignore_errors=True)
            dm, em = statistics.median(d_t), statistics.median(e_t)
            paired = statistics.median(e / d for e, d in zip(e_t, d_t))
            lines.append(f"| {name} | {len(ckpts)} | {dm:.3f} | {em:.3f} | **{em / dm:.3f}** (paired median {paired:.3f}) |")
            notes.append(f"Rounds ({name}, s): direct {', '.join(f'{x:.3f}' for x in d_t)}; eval "
                         f"{', '.join(f'{x:.3f}' for x in e_t)}.")
        lines += ["", *notes, ""]
        # One instrumented run per workload: the time inside lm-eval (building the task, HFLM + simple_evaluate)
        # against the whole call, robust to the machine's speed changing between rounds.
        import resume.evaluation.api as api

        for name, (trajs, st, _) in workloads.items():
            spent = {"lm": 0.0}
            originals = (lmeval.evaluate_checkpoint, api.load_tasks)

            def timed(f):
                def g(*a, **k):
                    t0 = time.perf_counter()
                    try:
                        return f(*a, **k)
                    finally:
                        spent["lm"] += time.perf_counter() - t0
                return g

            lmeval.evaluate_checkpoint, api.load_tasks = timed(originals[0]), timed(originals[1])
            try:
                out = work / "instrumented"
                shutil.rmtree(out, ignore_errors=True)
                lmeval._ENV_INFO.clear()
                t = time.perf_counter()
                evaluate(trajs, [NEXT_WORD], steps=st, include_path=tasks, out=out, progress=False, figures=False)
                total = time.perf_counter() - t
            finally:
                lmeval.evaluate_checkpoint, api.load_tasks = originals
            lines.append(f"Instrumented ({name}): {total:.3f} s, of which lm-eval (task build, HFLM, simple_evaluate) "
                         f"{spent['lm']:.3f} s: total / lm-eval = **{total / spent['lm']:.3f}** (the rest: fingerprints, "
                         "cache, sample logs, tables, summary).")
        lines.append("")
        t = time.perf_counter()
        evaluate([b], [NEXT_WORD], steps=steps, include_path=tasks, out=work / "cached", progress=False)
        evaluate([b], [NEXT_WORD], steps=steps, include_path=tasks, out=work / "cached", progress=False)
        lines.append(f"A cached re-run with figures (a re-plot) of the branch workload: {time.perf_counter() - t:.2f} s for "
                     "both calls (the first evaluates).")
        text = "\n".join(lines) + "\n"
        print(text)
        if args.out:
            Path(args.out).write_text(text)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
