"""``branchpoint`` commands with test run cards installed, in one interpreter (imports cost ~10 s a process).

    python card_cli.py RESULTS.json CARD.toml [CARD.toml ...] -- ARGS [--next ARGS ...]

Runs each ``branchpoint ARGS`` in turn through ``resume.cli.main`` and writes
``[{"args", "rc", "stdout", "stderr"}, ...]`` to RESULTS.json. After each command it sends one
request to ``$HF_ENDPOINT/__command__/<i>`` so that a test can split the stand-in's log by command. The environment (HF_ENDPOINT, HF_HOME,
BRANCHPOINT_HOME, ...) is set by the caller, before huggingface_hub is imported, as for the real CLI.

Run cards come from ``BRANCHPOINT_RUNS`` once ``checkpoints_cache.cards`` exists (the released-runs
issue); before that the cards are put into the registry's rows in-process (``install_cards``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import sys
import tomllib
from pathlib import Path


def install_cards(paths: list[str], setattr_=setattr, setenv=None) -> None:
    if importlib.util.find_spec("checkpoints_cache.cards") is None:
        from checkpoints_cache import registry

        rows = {row["name"]: row for row in registry.all_rows()}
        for p in paths:
            with open(p, "rb") as f:
                card = tomllib.load(f)
            rows[card["name"]] = card
        setattr_(registry, "_rows", lambda: rows)
        return
    value = os.pathsep.join(str(Path(p)) for p in paths)
    if setenv is not None:
        setenv("BRANCHPOINT_RUNS", value)
    else:
        os.environ["BRANCHPOINT_RUNS"] = value


def _mark(i: int) -> None:
    import urllib.error
    import urllib.request

    endpoint = os.environ.get("HF_ENDPOINT")
    if endpoint and os.environ.get("HF_HUB_OFFLINE") != "1":
        try:
            urllib.request.urlopen(f"{endpoint}/__command__/{i}", timeout=10).close()
        except (urllib.error.URLError, OSError):
            pass  # the stand-in answers 404 (and logs the path): that is the mark


def _commands(argv: list[str]) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for a in argv:
        if a == "--next":
            out.append([])
        else:
            out[-1].append(a)
    return out


if __name__ == "__main__":
    sep = sys.argv.index("--")
    results_path, cards = sys.argv[1], sys.argv[2:sep]
    install_cards(cards)
    from resume.cli import main

    results = []
    for args in _commands(sys.argv[sep + 1:]):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(args)
            except SystemExit as e:  # argparse errors
                rc = e.code if isinstance(e.code, int) else 1
        results.append({"args": args, "rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
        _mark(len(results) - 1)
    Path(results_path).write_text(json.dumps(results))
