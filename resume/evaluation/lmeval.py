"""One checkpoint through lm-eval: ``lm_eval.simple_evaluate`` with an ``HFLM`` on the checkpoint
directory, pinned seeds, dtype and batch size; results and per-item scores cached by content.

Cache key (``EvalCache`` entries of kind ``lmeval``): the checkpoint's fingerprint (config, weights
and tokenizer files), the task's fingerprint (``tasks.load_tasks``) and the settings (shots, limit,
batch size, dtype, device type, seeds, lm-eval's stderr bootstrap, the lm-eval version). A cached
entry holds lm-eval's metrics with their standard errors and the per-item values of each metric
(``log_samples``); the full sample log lies next to it as JSONL and is copied into the output
folder's ``samples/``.

``simple_evaluate`` ends by collecting the environment (``torch.utils.collect_env``: a ``pip list``
and other subprocesses, ~0.35 s); the first call's result is reused for later checkpoints of the
same process (``_env_info_once``), the same content without re-running the subprocesses.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from checkpoints_cache.errors import UserError

from .tasks import LoadedTasks, quiet_lm_eval, quiet_output

# Part of every cache key: bump when what is stored or how it is computed changes.
ENTRY_VERSION = "1"
# lm-eval's own defaults (lm_eval.defaults / simple_evaluate), pinned so that every model of a
# comparison, and every re-run, sees the same few-shot draws and sampling.
SEEDS = {"random_seed": 0, "numpy_random_seed": 1234, "torch_random_seed": 1234, "fewshot_random_seed": 1234}
STATISTIC_OF = {"mean": "mean", "perplexity": "perplexity"}  # lm-eval aggregation -> stats.STATISTICS

_ENV_INFO: dict[str, Any] = {}


@contextlib.contextmanager
def _env_info_once() -> Iterator[None]:
    import lm_eval.evaluator as ev

    real = ev.add_env_info

    def once(storage: dict[str, Any]) -> None:
        if not _ENV_INFO:
            fresh: dict[str, Any] = {}
            real(fresh)
            _ENV_INFO.update(fresh)
        storage.update(_ENV_INFO)

    ev.add_env_info = once
    try:
        yield
    finally:
        ev.add_env_info = real


@functools.lru_cache(maxsize=1)
def lm_eval_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


@dataclass(frozen=True)
class EvalSettings:
    num_fewshot: int | None = None  # None: each task's own default (0 when it sets none)
    limit: int | float | None = None
    batch_size: int = 16
    dtype: str = "float32"
    device: str = "cpu"
    bootstrap_iters: int = 100_000  # lm-eval's stderr bootstrap (its default, as in Pythia's evals)
    seeds: dict[str, int] = field(default_factory=lambda: dict(SEEDS))

    def key(self) -> str:
        d = asdict(self)
        d["device"] = self.device.split(":")[0]  # cuda:0 and cuda:1 round the same
        return json.dumps(d, sort_keys=True)

    def record(self) -> dict[str, Any]:
        return {**asdict(self), "lm_eval_version": lm_eval_version()}


@dataclass
class TaskScores:
    """One leaf task of one checkpoint."""

    task: str
    metrics: dict[str, float]  # "acc" or "acc,<filter>" -> value (filter "none" dropped)
    stderr: dict[str, float]
    items: dict[str, list[float]]  # per-item values by metric, in doc order
    item_keys: list[str]  # "doc_id:doc_hash" per item
    statistic: dict[str, str | None]  # metric -> "mean" | "perplexity" | None (no paired test)
    samples: str | None  # path of the JSONL sample log in the cache


def _metric_name(key: str) -> tuple[str, bool] | None:
    """'acc,none' -> ('acc', False); 'acc_stderr,none' -> ('acc', True); 'alias' -> None."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    stderr = metric.endswith("_stderr")
    base = metric[: -len("_stderr")] if stderr else metric
    return (base if filt == "none" else f"{base},{filt}"), stderr


def _number(x: Any) -> float | None:
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return None


def scores_from_output(out: dict[str, Any], tasks: LoadedTasks, samples_dir: Path | None, key_of) -> dict[str, TaskScores]:
    """Per-task scores from simple_evaluate's output (results, per-item samples, aggregations)."""
    res: dict[str, TaskScores] = {}
    samples = out.get("samples") or {}
    for task, values in (out.get("results") or {}).items():
        metrics, stderr = {}, {}
        for k, v in values.items():
            parsed = _metric_name(k)
            num = _number(v)
            if parsed is None or num is None:
                continue  # "alias", "N/A" stderrs, ...
            (stderr if parsed[1] else metrics)[parsed[0]] = num
        leaf = tasks.leaves.get(task)
        aggs = {}
        if leaf is not None:
            with contextlib.suppress(Exception):
                aggs = {m: getattr(f, "__name__", "") for m, f in leaf.aggregation().items()}
        items: dict[str, list[float]] = {}
        keys: list[str] = []
        log = sorted(samples.get(task, []), key=lambda s: (s.get("filter", "none"), s["doc_id"]))
        filters = list(dict.fromkeys(s.get("filter", "none") for s in log))
        for s in log:
            filt = s.get("filter", "none")
            if filt == filters[0]:
                keys.append(f"{s['doc_id']}:{s.get('doc_hash', '')}")  # the same documents under every filter
            for m in s.get("metrics", []):
                num = _number(s.get(m))
                if num is not None:
                    items.setdefault(m if filt == "none" else f"{m},{filt}", []).append(num)
        items = {m: v for m, v in items.items() if len(v) == len(keys)}
        statistic = {m: STATISTIC_OF.get(aggs.get(m.split(",")[0], "")) if m in items else None for m in metrics}
        path = None
        if samples_dir is not None and log:
            samples_dir.mkdir(parents=True, exist_ok=True)
            path = samples_dir / f"{key_of(task)}.jsonl"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            with open(tmp, "w") as f:
                for s in log:
                    f.write(json.dumps(s, default=str, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        res[task] = TaskScores(task, metrics, stderr, items, keys, statistic, str(path) if path else None)
    return res


class LmEvalRunner:
    """Evaluates checkpoint folders on the loaded tasks; each (checkpoint, task) result is cached."""

    def __init__(self, tasks: LoadedTasks, settings: EvalSettings, cache, tokenizer: str | None = None):
        self.tasks = tasks
        self.settings = settings
        self.cache = cache  # resume.compare.cache.EvalCache
        self.tokenizer = tokenizer
        self.evaluated = 0  # simple_evaluate calls made (0 on a fully cached re-run)
        self._names = tasks.leaf_names() + sorted(set(tasks.names) - set(tasks.leaves))  # leaves, then groups

    def _key(self, fp: str, task: str) -> list[str]:
        # A group's aggregate depends on all of its leaves: key it on their fingerprints.
        task_fp = self.tasks.fingerprints.get(task) or "group:" + hashlib.sha256(
            json.dumps(sorted(self.tasks.fingerprints.items())).encode()).hexdigest()
        return [fp, task, task_fp, self.settings.key(), ENTRY_VERSION]

    def checkpoint_fingerprint(self, ckpt: Path) -> str:
        from resume.engine import TOKENIZER_FILES

        return self.cache.checkpoint_fingerprint(ckpt, extra=TOKENIZER_FILES)

    def cached(self, ckpt: Path) -> dict[str, TaskScores] | None:
        fp = self.checkpoint_fingerprint(ckpt)
        out = {}
        for task in self._names:
            hit = self.cache.get("lmeval", self._key(fp, task))
            if hit is None:
                return None
            if hit.get("samples") and not Path(hit["samples"]).is_file():
                return None  # the sample log was removed: evaluate again
            out[task] = TaskScores(**hit["scores"])
        return out

    def run(self, ckpt: Path) -> dict[str, TaskScores]:
        hit = self.cached(ckpt)
        if hit is not None:
            return hit
        fp = self.checkpoint_fingerprint(ckpt)
        out = evaluate_checkpoint(ckpt, self.tasks, self.settings, self.tokenizer)
        self.evaluated += 1

        def key_of(task: str) -> str:
            return hashlib.sha256(json.dumps(self._key(fp, task)).encode()).hexdigest()

        scores = scores_from_output(out, self.tasks, self.cache.root / "lmeval-samples", key_of)
        for task in self._names:
            # A name lm-eval reports nothing for (a group without an aggregate) is cached as empty too,
            # so that a re-run does not evaluate again.
            sc = scores.get(task) or TaskScores(task, {}, {}, {}, [], {}, None)
            self.cache.put("lmeval", self._key(fp, task), {"scores": asdict(sc), "samples": sc.samples})
        return scores


def make_lm(ckpt: Path, settings: EvalSettings, tokenizer: str | None = None):
    """lm-eval's HFLM on a checkpoint folder (config, weights and tokenizer files)."""
    from lm_eval.models.huggingface import HFLM

    from resume.compare.evaluate import _quiet_transformers

    has_tok = any((Path(ckpt) / n).is_file() for n in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model"))
    if tokenizer is None and not has_tok:
        raise UserError(f"{ckpt} has no tokenizer files (tokenizer.json / tokenizer_config.json); pass --tokenizer "
                        "NAME_OR_PATH, or rebuild the toy with this version (its checkpoints carry one)")
    with _quiet_transformers(), quiet_lm_eval():
        return HFLM(pretrained=str(ckpt), tokenizer=tokenizer, dtype=settings.dtype, batch_size=settings.batch_size,
                    device=settings.device)


def evaluate_checkpoint(ckpt: Path, tasks: LoadedTasks, settings: EvalSettings, tokenizer: str | None = None) -> dict[str, Any]:
    """``simple_evaluate`` on one checkpoint folder with the pinned settings; its raw output."""
    import lm_eval

    lm = make_lm(ckpt, settings, tokenizer)
    # lm-eval prints its own bars and notes per call; the caller shows one progress bar for all.
    with _env_info_once(), quiet_lm_eval(), quiet_output():
        out = lm_eval.simple_evaluate(
            model=lm, tasks=list(tasks.objects), task_manager=tasks.manager, num_fewshot=settings.num_fewshot,
            limit=settings.limit, batch_size=settings.batch_size, device=settings.device, log_samples=True,
            bootstrap_iters=settings.bootstrap_iters, **settings.seeds)
    del lm
    return out


def copy_samples(scores: dict[str, TaskScores], dest_dir: Path, stem: str) -> list[Path]:
    """The cached sample logs of one checkpoint, as ``dest_dir/<task>/<stem>.jsonl``."""
    written = []
    for task, s in scores.items():
        if not s.samples or not Path(s.samples).is_file():
            continue
        dest = dest_dir / task / f"{stem}.jsonl"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(s.samples, tmp)  # the cache's log is never rewritten in place: a hard link is a copy
        except OSError:
            shutil.copyfile(s.samples, tmp)
        os.replace(tmp, dest)
        written.append(dest)
    return written
