"""``branchpoint gstack-plan``: when to grow, by the Gstack paper's timing guideline.

log10(d) = 0.88·log10(N) + 163.27 / log10(C) − 5.74 (Du et al. 2024, Eq. 2; methods.md §3.3), with
N the target parameter count, C the compute budget in FLOPs (C = 6·N·D when given --tokens D) and d
the tokens the small model trains on before it is stacked g times.
"""

from __future__ import annotations

import argparse
import math
import re

from checkpoints_cache.errors import UserError

EPILOG = """\
examples:
  branchpoint gstack-plan --target-params 7B --tokens 2T          # Llama2-7B: grow at d = 11.11B tokens
  branchpoint gstack-plan --target-params 410M --budget-flops 1e21 --tokens-per-step 2097152

  branchpoint gstack-plan --target-params 7B --tokens 2T --embedding-params 262M   # also the base model's size

Numbers take K/M/B/T suffixes (thousand .. trillion) or scientific notation. The paper fixes g = 4
(optimal 2-4); whether N counts embedding parameters is not stated by the paper (methods.md §3.3).
The base model has 1/g of the grown model's layers, hence 1/g of its non-embedding parameters; its
embeddings, final norm and head are as large as the grown model's. With --embedding-params E (input
embedding + LM head) the plan prints the base model's size, (N - E)/g + E.
"""

SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9, "G": 1e9, "T": 1e12}


def parse_amount(text: str, flag: str) -> float:
    """``7B`` -> 7e9, ``2T`` -> 2e12, ``1e21`` -> 1e21; anything else is a one-line error."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([KkMmBbGgTt]?)\s*", text or "")
    if not m:
        raise UserError(f"{flag} {text!r} is not a number; use e.g. 7B, 410M, 2T or 1e21")
    value = float(m.group(1)) * SUFFIX[m.group(2).upper()]
    if not math.isfinite(value) or value <= 0:
        raise UserError(f"{flag} {text!r} must be a positive number")
    return value


def human(x: float) -> str:
    for suffix, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{suffix}"
    return f"{x:.2f}"


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gstack-plan",
        help="Gstack growth-timing guideline: tokens to train the small model before stacking",
        description="Print the Gstack paper's growth timing d for a target size and compute budget.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target-params", required=True, metavar="P", help="parameters N of the grown model (e.g. 7B)")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-flops", metavar="C", help="compute budget in FLOPs (e.g. 8.4e22)")
    budget.add_argument("--tokens", metavar="D", help="training tokens of the grown model; C = 6·N·D")
    p.add_argument("--g", type=int, default=4, metavar="G", help="growth factor (default 4, the paper's choice)")
    p.add_argument("--tokens-per-step", metavar="T", help="also print d in optimizer steps (Pythia: 2097152)")
    p.add_argument("--embedding-params", metavar="E",
                   help="embedding + LM-head parameters of the grown model, counted in N: also print the base size")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from resume.interventions.gstack import growth_tokens

    n = parse_amount(args.target_params, "--target-params")
    if args.g < 1:
        raise UserError(f"--g {args.g}: the growth factor is an integer >= 1 (the paper uses 4)")
    if args.tokens is not None:
        d_total = parse_amount(args.tokens, "--tokens")
        c = 6 * n * d_total
        budget = f"C = 6·N·D = {c:.3g} FLOPs (D = {human(d_total)} tokens)"
    else:
        c = parse_amount(args.budget_flops, "--budget-flops")
        d_total = c / (6 * n)
        budget = f"C = {c:.3g} FLOPs (D = C/6N = {human(d_total)} tokens)"
    if c <= 10:
        raise UserError("the compute budget must exceed 10 FLOPs (log10 C appears in a denominator)")
    d = growth_tokens(n, c)
    print(f"target N = {human(n)} parameters, {budget}")
    print(f"grow at d = {human(d)} tokens   [log10 d = 0.88·log10 N + 163.27/log10 C - 5.74]")
    print(f"plan: train a base model with 1/{args.g} of the grown model's layers on d tokens: 1/{args.g} of its "
          "non-embedding parameters,")
    print("      with embeddings, final norm and head of full size;")
    if args.embedding_params:
        e = parse_amount(args.embedding_params, "--embedding-params")
        if e >= n:
            raise UserError(f"--embedding-params {args.embedding_params} is not below --target-params {args.target_params}")
        print(f"      base model: (N - E)/g + E = {human((n - e) / args.g + e)} parameters "
              f"({human((n - e) / args.g)} non-embedding, E = {human(e)})")
    else:
        print(f"      base model: (N - E)/{args.g} + E parameters for E embedding + head parameters in N "
              "(give --embedding-params E to compute it)")
    print(f"      then stack its layers {args.g} times (gstack:g={args.g}) and train the grown model on the remaining "
          f"{human(max(d_total - d, 0.0))} tokens")
    if d > d_total:
        print("note: d exceeds the whole budget D; the guideline is outside the range the paper fitted")
    if args.tokens_per_step:
        per_step = parse_amount(args.tokens_per_step, "--tokens-per-step")
        print(f"d = {math.ceil(d / per_step)} optimizer steps at {per_step:.0f} tokens per step")
    return 0
