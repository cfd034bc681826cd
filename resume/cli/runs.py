"""``branchpoint runs``: the released runs the registry knows (no network)."""

from __future__ import annotations

import argparse

EPILOG = """\
example:
  branchpoint runs
  branchpoint runs --family pythia --verbose

A RUN argument elsewhere is one of these names, its Hub repo id (EleutherAI/pythia-160m-deduped,
LLM360/Amber), or a local trajectory directory.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "runs", help="list the released runs branchpoint knows", description="List the released runs branchpoint knows.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--family", choices=["pythia", "amber", "k2", "crystal"], help="only this family")
    p.add_argument("--verbose", "-v", action="store_true", help="also print recipe, data-order notes and defects")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.defects import defects_for
    from checkpoints_cache.registry import known_runs

    rows = [r for r in known_runs() if not args.family or r["family"] == args.family]
    width = max(len(r["name"]) for r in rows)
    rwidth = max(len(r["repo_id"]) for r in rows)
    print(f"{'name':<{width}}  {'repo':<{rwidth}}  steps  data order")
    for r in rows:
        order = r["data_order"]
        grid = str(len(r["grid"])) if r["grid"] else "hub"
        trc = "  (needs --trust-remote-code)" if r.get("trust_remote_code") else ""
        print(f"{r['name']:<{width}}  {r['repo_id']:<{rwidth}}  {grid:>5}  {order['kind']} ({order['exactness']}){trc}")
        if args.verbose:
            rec = r["recipe"]
            print(f"    recipe: lr {rec['lr']} -> {rec['min_lr']}, warmup {rec['warmup_iters']}, {rec['schedule']}, "
                  f"batch {rec['batch_size']} x {rec['seq_len']}, {rec['precision']}")
            if order.get("repo_id"):
                print(f"    data: {order['repo_id']}" + (f" -- {order['note']}" if order.get("note") else ""))
            src = r.get("optimizer_state")
            if src:
                where = src["revision"] if "{N}" in src["revision"] else f"{src['revision']} = step {src.get('step')}"
                mp = f", model-parallel {src['model_parallel']} (not importable)" if src.get("model_parallel", 1) > 1 else ""
                print(f"    optimizer state: {src['repo_id']} ({src['kind']}, {where}{mp})")
            for note in r.get("notes", []) + r.get("branch_notes", []):
                print(f"    note: {note}")
            for d in defects_for(r["name"], r["family"]):
                print(f"    defect {d.issue}: {d.text}")
    return 0
