"""Serve a local trajectory as a released run on the Hub stand-in, with a run card written for it.

Its checkpoints become ``stepN`` revisions of a model repo (config.json + model.safetensors), its
data order a dataset repo (``document.idx`` + ``document-0000k-of-0000n.bin`` shards), exactly as
Pythia publishes them (pythia.md §1.3, §4.1); the card names both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .hub_standin import HubStandin


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def _clean(v: Any) -> Any:
    """Drop None values (TOML has no null), recursively."""
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items() if x is not None and _clean(x) != {}}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v if x is not None]
    return v


def toml_card(card: dict[str, Any]) -> str:
    """A run card as TOML: top-level keys, then one table per dict, [[defects]] as an array of tables."""
    card = _clean(card)
    out = [f"{k} = {_toml_value(v)}\n" for k, v in card.items() if not isinstance(v, dict) and k != "defects"]
    for k, v in card.items():
        if isinstance(v, dict):
            out.append(f"\n[{k}]\n")
            out.extend(f"{json.dumps(kk)} = {_toml_value(vv)}\n" for kk, vv in v.items())
    for d in card.get("defects", []):
        out.append("\n[[defects]]\n")
        out.extend(f"{kk} = {_toml_value(vv)}\n" for kk, vv in d.items())
    return "".join(out)


def serve_trajectory(hub: HubStandin, traj: Path, model_repo: str, data_repo: str, name: str,
                     steps: list[int] | None = None) -> dict[str, Any]:
    """Publish ``traj``'s checkpoints (``steps``, default all) and data on the stand-in; return its card."""
    meta = json.loads((traj / "trajectory.json").read_text())
    grid = sorted(int(s) for s in meta["steps"])
    for s in steps or grid:
        ckpt = traj / "checkpoints" / f"step{s}"
        hub.add_commit("model", model_repo, f"step{s}",
                       {n: (ckpt / n).read_bytes() for n in ("config.json", "model.safetensors")})
    data = traj / "data"
    files = {p.name: p.read_bytes() for p in data.iterdir() if p.name == "document.idx" or p.suffix == ".bin"}
    hub.add_commit("dataset", data_repo, "main", files)
    recipe = dict(meta["recipe"])
    order = meta["data_order"]
    # family "other": the toy has the Pythia architecture but was trained by branchpoint's engine with
    # transformers' numerics, not by GPT-NeoX (family "pythia" would default a branch to --numerics neox)
    return {
        "name": name, "repo_id": model_repo, "family": "other", "scheme": "stepN", "grid": grid,
        "notes": [f"the toy trajectory {traj.name}, served by the test Hub stand-in"],
        "recipe": recipe,
        "architecture": dict(meta["architecture"]["config"]),
        "data_order": {"kind": "mmidx", "repo_id": data_repo, "repo_type": "dataset", "revision": "main",
                       "batch_size": order["batch_size"], "seq_len": order["seq_len"], "exactness": "exact"},
    }
