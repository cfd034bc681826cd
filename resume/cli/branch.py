"""``branchpoint branch``: continue a run from step N with an intervention, then compare."""

from __future__ import annotations

import argparse


def _intervention_keys() -> str:
    from resume.interventions.spec import describe_registry

    return "interventions and their keys:\n" + "\n".join("  " + line for line in describe_registry().splitlines())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "branch",
        help="continue RUN from checkpoint N for K updates with an intervention, then compare",
        description="Load checkpoint stepN of RUN (a trajectory directory or a registry name), rebuild the parent's "
        "recipe (LR schedule, AdamW, clipping, global batch), apply the intervention and train K updates on the "
        "parent's own data order (batch N first). For a released run, everything it needs that is not cached is "
        "fetched first (the weights at N; the rows of batches N..N+K-1 and, to reestimate Adam's moments, the M "
        "batches before N: index entries and rows by byte ranges). The plan (what is fetched, disk, tokens, FLOPs, "
        "micro-batch, time) is printed before anything moves. Writes a trajectory directory: checkpoints at stepN "
        "(after the intervention's load-time transform) and at the parent's grid steps in (N, N+K], metrics.jsonl, "
        "and a comparison with the parent in OUT/compare/ unless --no-compare. "
        "A run whose data are released as chunk files (LLM360 Amber, K2) first prints a plan (checkpoint, chunk files "
        "and why each is needed, optimizer-state cost, order, exactness, memory), then fetches each chunk whole "
        "into the HF cache and converts it once into a local token store.",
        epilog="examples:\n"
        "  branchpoint branch pythia-160m-deduped --from-step 20000 --steps 1000 --intervention lawa --dry-run\n"
        "  branchpoint branch pythia-160m-deduped --from-step 20000 --steps 1000 --intervention lawa\n"
        "  branchpoint branch runs/toy-small --from-step 400 --steps 200 --intervention none --out runs/control\n"
        "  branchpoint branch runs/toy-small --from-step 400 --steps 200 --intervention lawa:k=5,every=50,mode=replace\n"
        "  branchpoint branch runs/toy-tiny --from-step 48 --steps 16 "
        "--intervention bimix:source=corpus.parquet,domain_column=domain,token_column=token_ids\n"
        "  ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m resume branch runs/toy-small --from-step 400 --steps 20\n"
        "  ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m resume branch runs/toy-small --from-step 400 --steps 20 "
        "--sharding fsdp\n"
        "  accelerate launch --config_file examples/accelerate/fsdp2.yaml -m resume branch pythia-1b --from-step 4000 "
        "--steps 1000\n"
        "  branchpoint branch amber --from-step ckpt_100 --steps 762 --dry-run     # LLM360 Amber: the plan only\n"
        "  branchpoint branch amber --from-step ckpt_100 --steps 762 --order file\n"
        "  branchpoint branch pythia-160m --from-step 4000 --steps 1000 --optimizer-state exact --numerics neox\n"
        "  branchpoint branch runs/toy-small --from-step 400 --steps 200 --intervention none --repeat 3 --out runs/ctl\n"
        "  branchpoint branch runs/toy-small --from-step 400 --steps 200 --log-with tensorboard   # tensorboard --logdir OUT/tracking\n\n"
        "A Pythia parent whose card names its NeoX checkpoints (pythia-160m: every step) starts from the fp32\n"
        "master weights and Adam moments imported from them (see `branchpoint fetch --optimizer`), with the\n"
        "scheduler count they hold: the first update's LR is the NeoX schedule at num_iters = N - skipped_steps.\n\n"
        + _intervention_keys(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="trajectory directory or registry name (see `branchpoint runs`)")
    p.add_argument("--from-step", required=True, metavar="N",
                   help="checkpoint to branch from: a step (76962) or a checkpoint name (ckpt_100, step400)")
    p.add_argument("--steps", type=int, required=True, metavar="K", help="number of optimizer updates to train")
    p.add_argument("--intervention", default="none", metavar="SPEC",
                   help="none | lawa:k=5,every=1000,mode=replace | anytime:schedule=constant,ema=25 | gstack:g=4 | "
                   "bimix:entropy=conditional | path/to/file.py:ClassName (default: none, the control)")
    p.add_argument("--optimizer-state", default=None, metavar="MODE",
                   help="exact: the parent's saved state (Pythia: imported from its NeoX checkpoint); reestimate: rebuild "
                   "Adam's moments from the batches before N at lr 0; fresh: zeros (default: exact if it exists, else "
                   "reestimate if that data exists -- for a released run, with its batches fetched -- else fresh)")
    p.add_argument("--numerics", default=None, choices=["neox", "hf"],
                   help="neox: GPT-NeoX's rotary tables in the parent's half precision, tanh GELU and, in fp16, "
                   "DeepSpeed's skip-on-overflow loss scaler; hf: transformers' GPT-NeoX as is "
                   "(default: neox for NeoX-trained parents such as Pythia, hf otherwise)")
    p.add_argument("--out", default=None, metavar="TRAJ", help="branch directory (default: branches/<run>-stepN-<name>-kK)")
    p.add_argument("--resume", action="store_true",
                   help="continue a killed branch from its last saved state; only with the same definition (RUN, "
                   "--from-step, --steps, --intervention, --optimizer-state, --numerics, recipe, precision), a complete one is left as is")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (what would be fetched, converted, trained) and stop: nothing is downloaded or written")
    p.add_argument("--micro-batch-size", default="auto", metavar="b",
                   help="rows per forward pass per process, or auto (default): the largest that divides the per-process "
                   "batch and fits this device (CPU: an estimate against the available RAM; GPU: a probe forward/backward)")
    p.add_argument("--save-every", type=int, default=50, metavar="S", help="save the resumable state every S updates")
    p.add_argument("--precision", default=None, metavar="P",
                   help="fp32 | bf16 | fp16 (default: fp32 on CPU, the parent's half precision on GPU)")
    p.add_argument("--order", default=None, choices=("seeded", "file"),
                   help="LLM360 Amber chunks: seeded (default: the permutation of a run that never restarted) or file "
                   "(the chunk's file order); either way the rows of a chunk are exact and their order approximate")
    p.add_argument("--sharding", default=None, choices=["none", "fsdp", "deepspeed"],
                   help="none: one process or plain DDP (every rank holds the whole model); fsdp: FSDP2 full sharding "
                   "of weights, gradients and AdamW moments (checkpoints gathered to rank 0, optimizer and resumable "
                   "state as sharded torch.distributed.checkpoint folders); deepspeed: DeepSpeed ZeRO through "
                   "accelerate's plugin (default: what the accelerate config / environment says, else none)")
    p.add_argument("--no-compare", action="store_true", help="skip the comparison with the parent at the end")
    p.add_argument("--eval-batches", type=int, default=4, metavar="K", help="held-out global batches for the comparison")
    p.add_argument("--log-with", default=None, metavar="TRACKER",
                   help="tensorboard | wandb | trackio | all (comma-separated for several): log every metrics.jsonl "
                   "row live through accelerate's trackers, with the trajectory definition as config (in OUT/tracking)")
    p.add_argument("--repeat", type=int, default=None, metavar="R",
                   help="make R repeats OUT-rep1 .. OUT-repR, each with another micro-batch order (or data-order "
                   "seed, --repeat-vary data): with --intervention none, the repeated controls of the noise band")
    p.add_argument("--repeat-vary", default="order", metavar="WHAT",
                   help="order: the rows of each batch in another order (floating-point noise); data: the rows of "
                   "batches N..N+K-1 shuffled among them (data-order noise); default order")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.errors import UserError
    from resume.engine import branch

    if args.save_every <= 0:
        raise UserError(f"--save-every {args.save_every}: use a positive number of updates")
    if not args.no_compare and args.eval_batches < 1:
        raise UserError(f"--eval-batches {args.eval_batches} must be at least 1 (or pass --no-compare)")
    if args.repeat is not None and args.repeat < 1:
        raise UserError(f"--repeat {args.repeat}: use a positive number of repeats")
    from resume.repeats import MODES

    if args.repeat_vary not in MODES:
        raise UserError(f"--repeat-vary {args.repeat_vary!r}: use order (micro-batch order) or data (data-order seed)")

    def check_compare(parent, end: int) -> None:  # the comparison at the end, checked before the first update
        if not args.no_compare:
            from resume.compare.preflight import check_eval_batches

            check_eval_batches(parent.data_order, parent.name, end, args.eval_batches, hint="or pass --no-compare")

    def report(out) -> None:
        from checkpoints_cache.trajectory import Trajectory

        print(f"branch written to {out}")
        exactness = Trajectory.open(out).meta.get("exactness")
        if exactness:
            print(f"exactness: {exactness} (recorded in {out / 'trajectory.json'})")

    def compare_outs(outs) -> None:
        if args.no_compare:
            return
        from resume.compare.api import compare

        table = compare(list(outs), eval_batches=args.eval_batches)
        where = outs[0] / "compare"
        print(f"comparison written to {where} ({len(table)} rows); summary: {where / 'summary.md'}")

    def compare_branch(out) -> None:  # one branch: compared while its output is still locked
        report(out)
        compare_outs([out])

    repeats = [None] if args.repeat is None else [(i, args.repeat) for i in range(1, args.repeat + 1)]
    outs = []
    for rep in repeats:
        target = args.out if rep is None or args.out is None else f"{args.out}-rep{rep[0]}"  # None: branch's default
        outs.append(branch(
            args.run,
            args.from_step,
            args.steps,
            intervention=args.intervention,
            optimizer_state=args.optimizer_state,
            out=target,
            resume=args.resume,
            micro_batch_size=args.micro_batch_size,
            save_every=args.save_every,
            precision=args.precision,
            numerics=args.numerics,
            order=args.order,
            dry_run=args.dry_run,
            eval_batches=None if args.no_compare else args.eval_batches,
            log_with=args.log_with,
            repeat=rep,
            repeat_vary=args.repeat_vary,
            sharding=args.sharding,
            before_training=check_compare,
            after_training=compare_branch if rep is None else None,  # on the main process, the branch still locked
        ))
    if args.dry_run:  # each branch printed its plan
        print("dry run: nothing was fetched, converted or trained")
        return 0
    if args.repeat is not None:
        from accelerate import PartialState

        if not PartialState().is_main_process:
            return 0
        for out in outs:
            report(out)
        compare_outs(outs)  # the repeats side by side: the engine's own noise floor
    return 0
