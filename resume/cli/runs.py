"""``branchpoint runs``: the released runs the run cards describe (no network)."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  branchpoint runs
  branchpoint runs --family pythia --verbose
  branchpoint runs --card pythia-160m-deduped > my-run.toml     # a card to copy and edit
  BRANCHPOINT_RUNS=~/cards:./extra.toml branchpoint runs         # add your own cards

Every run is a TOML card: the bundled ones ship in checkpoints_cache/runs/, yours are the files
(or folders of *.toml) named by BRANCHPOINT_RUNS, separated by ':' (';' on Windows). The "from"
column says where each came from. A RUN argument elsewhere is a card name, an alias, its Hub repo
id (EleutherAI/pythia-160m-deduped, LLM360/Amber), or a local trajectory directory.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from checkpoints_cache.cards import FAMILIES

    p = subparsers.add_parser(
        "runs", help="list the released runs (run cards) branchpoint knows",
        description="List the released runs branchpoint knows: the bundled run cards and yours (BRANCHPOINT_RUNS).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--family", choices=list(FAMILIES), help="only this family")
    p.add_argument("--verbose", "-v", action="store_true", help="also print recipe, data-order notes and defects")
    p.add_argument("--card", metavar="NAME", help="print the run card of NAME (bundled or yours) as TOML, ready to copy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from checkpoints_cache.registry import card_of, known_runs, resolve_run

    if args.card:
        print(card_of(args.card).text(), end="")
        return 0
    rows = [r for r in known_runs() if not args.family or r["family"] == args.family]
    if not rows:
        print(f"no run cards of family {args.family}")
        return 0
    width = max(len(r["name"]) for r in rows)
    rwidth = max(len(r["repo_id"]) for r in rows)
    print(f"{'name':<{width}}  {'repo':<{rwidth}}  steps  {'data order':<28}  from")
    for r in rows:
        order = r["data_order"]
        grid = str(len(r["grid"])) if r["grid"] else "hub"
        trc = " (needs --trust-remote-code)" if r.get("trust_remote_code") else ""
        kind = f"{order['kind']} ({order['exactness']})"
        print(f"{r['name']:<{width}}  {r['repo_id']:<{rwidth}}  {grid:>5}  {kind:<28}  {r['origin']}{trc}")
        if args.verbose:
            rec = r["recipe"]
            print(f"    recipe: lr {rec['lr']} -> {rec['min_lr']}, warmup {rec['warmup_iters']}, {rec['schedule']}, "
                  f"batch {rec['batch_size']} x {rec['seq_len']}, {rec['precision']}")
            if order.get("repo_id"):
                print(f"    data: {order['repo_id']}" + (f" -- {order['note']}" if order.get("note") else ""))
            src = r.get("optimizer_state")
            if src:  # a user card's table may hold other keys: show what is there
                rev = str(src.get("revision", "?"))
                where = rev if "{N}" in rev else f"{rev} = step {src.get('step')}"
                mp = f", model-parallel {src['model_parallel']} (not importable)" if src.get("model_parallel", 1) > 1 else ""
                print(f"    optimizer state: {src.get('repo_id', '?')} ({src.get('kind', '?')}, {where}{mp})")
            for note in r.get("notes", []) + r.get("branch_notes", []):
                print(f"    note: {note}")
            for d in resolve_run(r["name"]).defects:
                print(f"    defect {d.issue}: {d.text}")
            print(f"    card: {r['source']}")
    return 0
