"""The parent's published evaluations: Pythia's released lm-eval v0.3 JSONs (``EleutherAI/pythia``
``evals/``), read into tidy rows of a labelled reference series.

Schema (users_and_suites.md §4.2)::

    {"results": {"piqa": {"acc": 0.627, "acc_stderr": 0.011, ...}, ...},
     "versions": {"piqa": 0, ...},
     "config": {"model_args": "pretrained=EleutherAI/pythia-v1.1-160m,revision=step143000",
                "num_fewshot": 0, ...}}

Files are keyed on ``config.num_fewshot`` and the ``revision=stepN`` of ``model_args``, never on
their names (four zero-shot files of ``pythia-1b-bf16`` are named ``-5shot``). The model they
describe may be named differently from the parent (``pythia-v1.1-160m`` for ``pythia-160m``): the
files the user passes are taken as the parent's, with a warning when the names disagree. v0.3's
``ppl`` is lm-eval 0.4's ``perplexity``; other names are kept. These numbers come from an older
harness with other prompts (pythia#118, lm-evaluation-harness#2211): they are drawn next to the
branch's own evaluation of the parent, never mixed into any Δ.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from checkpoints_cache.errors import UserError

HARNESS = "lm-eval v0.3 (gpt-neox evaluate.py)"
METRIC_NAMES = {"ppl": "perplexity"}  # v0.3 -> 0.4 (users_and_suites.md §4.3)
WEIGHTS = "published"
_REVISION = re.compile(r"(?:^|,)\s*revision\s*=\s*step(\d+)\s*(?:,|$)")
_PRETRAINED = re.compile(r"(?:^|,)\s*pretrained\s*=\s*([^,]+)")


@dataclass
class Published:
    rows: pd.DataFrame  # run, weights, step, metric, value (+ "<metric>_stderr" rows)
    models: list[str]
    files: int
    num_fewshot: int | None
    warnings: list[str] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return sorted(set(self.rows.run))


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.rglob("*.json"))
            if not found:
                raise UserError(f"--published {p}: the folder holds no .json file; pass Pythia's evals/ folder or its files")
            out += found
        elif p.is_file():
            out.append(p)
        else:
            raise UserError(f"--published {p}: no such file or folder; pass Pythia's evals/ JSON files or a folder of them")
    return out


def _schema_error(path: Path, obj: Any) -> UserError:
    keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
    hint = ""
    if isinstance(obj, dict) and isinstance(obj.get("results"), dict) and any(
            isinstance(v, dict) and any("," in k for k in v) for v in obj["results"].values()):
        hint = " (it looks like lm-eval 0.4 output, metric keys like 'acc,none')"
    return UserError(f"{path}: not a Pythia lm-eval v0.3 results JSON{hint}: expected top-level results, versions and "
                     f"config (with num_fewshot and model_args 'pretrained=…,revision=stepN'), found {keys}")


def parse_file(path: str | Path) -> dict[str, Any]:
    """One file -> {model, step, num_fewshot, results}; a one-line UserError for another schema."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a JSON file ({e}); --published reads Pythia's evals/ JSON files") from None
    ok = isinstance(obj, dict) and {"results", "versions", "config"} <= set(obj) and isinstance(obj["results"], dict)
    cfg = obj.get("config") if isinstance(obj, dict) else None
    ok = ok and isinstance(cfg, dict) and isinstance(cfg.get("num_fewshot"), int) and isinstance(cfg.get("model_args"), str)
    ok = ok and all(isinstance(v, dict) and all(isinstance(x, (int, float)) and "," not in k for k, x in v.items())
                    for v in obj["results"].values())
    if not ok:
        raise _schema_error(path, obj)
    rev = _REVISION.search(cfg["model_args"])
    if rev is None:
        raise UserError(f"{path}: config.model_args {cfg['model_args']!r} names no revision=stepN, so the step is "
                        "unknown; --published needs Pythia's per-step eval files")
    model = _PRETRAINED.search(cfg["model_args"])
    return {"model": model.group(1).strip() if model else "unknown", "step": int(rev.group(1)),
            "num_fewshot": int(cfg["num_fewshot"]), "results": obj["results"], "path": str(path)}


def normalize_model(name: str) -> str:
    """'EleutherAI/pythia-v1.1-160m-deduped' -> 'pythia-160m-deduped' (for matching names only)."""
    n = name.strip().lower().rsplit("/", 1)[-1]
    n = re.sub(r"-v\d+(\.\d+)?(?=-)", "", n)  # pythia-v1.1-160m -> pythia-160m
    n = re.sub(r"-v\d+(\.\d+)?$", "", n)
    return n


def short_model(name: str) -> str:
    return name.strip().rsplit("/", 1)[-1]


def read_published(paths: Iterable[str | Path], parent_name: str | None = None, num_fewshot: int | None = None,
                   tasks: Iterable[str] | None = None) -> Published:
    """Tidy rows of the published series (``run = published:<model>``, ``weights = published``).

    ``num_fewshot``: keep files with that shot count (None: all; rows of several shot counts are
    then told apart by the run label). ``tasks``: keep these task names only (None: all)."""
    files = _files(paths)
    parsed = [parse_file(f) for f in files]
    warnings: list[str] = []
    if num_fewshot is not None:
        found = sorted({p["num_fewshot"] for p in parsed})
        parsed = [p for p in parsed if p["num_fewshot"] == num_fewshot]
        if not parsed:
            warnings.append(f"none of the {len(files)} published file(s) has num_fewshot {num_fewshot} "
                            f"(they have {found}); no published series drawn")
    models = sorted({p["model"] for p in parsed})
    if parent_name and models:
        want = normalize_model(parent_name)
        others = [m for m in models if normalize_model(m) != want]
        if others:
            warnings.append(f"the published file(s) describe {', '.join(others)}, not the parent {parent_name}; "
                            "they are drawn as given (label: published:<model>)")
    shots = {p["num_fewshot"] for p in parsed}
    keep = set(tasks) if tasks is not None else None
    rows: list[tuple[str, str, int, str, float]] = []
    seen: set[tuple[str, int, str]] = set()
    for p in sorted(parsed, key=lambda p: (p["model"], p["step"], p["num_fewshot"], p["path"])):
        label = f"published:{short_model(p['model'])}" + (f"@{p['num_fewshot']}shot" if len(shots) > 1 else "")
        for task, metrics in sorted(p["results"].items()):
            if keep is not None and task not in keep:
                continue
            for key, value in sorted(metrics.items()):
                stderr = key.endswith("_stderr")
                base = key[: -len("_stderr")] if stderr else key
                name = f"task/{task}/{METRIC_NAMES.get(base, base)}" + ("_stderr" if stderr else "")
                if (label, p["step"], name) in seen:
                    continue  # the same point twice (e.g. a copied file): keep the first
                seen.add((label, p["step"], name))
                rows.append((label, WEIGHTS, p["step"], name, float(value)))
    df = pd.DataFrame(rows, columns=["run", "weights", "step", "metric", "value"])
    df = df.astype({"run": str, "weights": str, "step": "int64", "metric": str, "value": "float64"})
    return Published(df, models, len(files), num_fewshot, warnings)
