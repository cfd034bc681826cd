"""Finding and loading lm-eval tasks, offline first, with one-line errors.

Tasks are lm-eval's own (their data from the HF datasets cache) or the user's YAMLs in
``--include-path DIR`` (data from local files through ``dataset_kwargs.data_files``,
users_and_suites.md §4.1). lm-eval's ``TaskManager()`` indexes all ~15,000 built-in YAMLs (about
9 s); so the user's folder is tried alone first, then the built-in folders that hold the requested
names (a quick text scan of ``task:``/``group:`` lines), and only then the full index.

Each leaf task gets a fingerprint for the result cache: sha256 of its resolved config (lm-eval's
``dump_config``) plus the content hashes of the local data files it reads.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from checkpoints_cache.errors import UserError

_NAME_LINE = re.compile(r"^(?:task|group|tag)\s*:\s*['\"]?([A-Za-z0-9_.\-]+)['\"]?\s*$", re.M)
_TAG_LIST = re.compile(r"^tag\s*:\s*\n((?:[ \t]*-[ \t]*\S+[ \t]*\n?)+)", re.M)
_ADDRESS = re.compile(r" at 0x[0-9a-f]+")  # function reprs in dumped configs differ run to run


@contextlib.contextmanager
def quiet_lm_eval(level: int = logging.ERROR) -> Iterator[None]:
    """lm-eval logs every default it fills in; keep its loggers to errors while we drive it."""
    names = ["lm_eval", "lm-eval"]
    old = [(n, logging.getLogger(n).level) for n in names]
    for n in names:
        logging.getLogger(n).setLevel(level)
    try:
        yield
    finally:
        for n, lvl in old:
            logging.getLogger(n).setLevel(lvl)


@contextlib.contextmanager
def quiet_output() -> Iterator[None]:
    """lm-eval and datasets print bars, notes and subprocess errors (``git describe`` outside a
    repository) per call; hide them at the Python and the file-descriptor level while we drive them
    (the caller shows one progress bar; errors still surface as exceptions)."""
    import sys

    saved = []
    with open(os.devnull, "w") as null:
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError, ValueError):
                    getattr(sys, "stdout" if fd == 1 else "stderr").flush()
                    saved.append((fd, os.dup(fd)))
                    os.dup2(null.fileno(), fd)
            with contextlib.redirect_stdout(null), contextlib.redirect_stderr(null):
                yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def parse_task_list(spec: str | list[str]) -> list[str]:
    items = spec if isinstance(spec, list) else [spec]
    names = [t.strip() for item in items for t in str(item).split(",") if t.strip()]
    if not names:
        raise UserError("--tasks is empty; name at least one task, e.g. --tasks lambada_openai,piqa")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"--tasks names {dup[0]} twice; list each task once")
    return names


def _scan(root: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for path in sorted(root.rglob("*.yaml")):
        try:
            text = path.read_text(errors="ignore")
        except OSError:
            continue
        names = _NAME_LINE.findall(text)
        for block in _TAG_LIST.findall(text):
            names += [line.strip().lstrip("-").strip().strip("'\"") for line in block.splitlines() if line.strip()]
        for name in names:
            out.setdefault(name, str(path.parent.relative_to(root)))
    return out


@functools.lru_cache(maxsize=1)
def builtin_task_dirs() -> dict[str, Path]:
    """name -> folder of its YAML, for lm-eval's built-in tasks: a text scan of ``task:``, ``group:``
    and ``tag:`` lines (no YAML parsing), remembered per lm-eval version next to compare's file-hash
    memo (reading ~15,000 files takes seconds)."""
    import lm_eval.tasks as lt
    from importlib.metadata import version

    from resume.compare.cache import memo_dir

    root = Path(lt.__file__).parent
    memo = memo_dir() / f"lm_eval_task_dirs-{version('lm_eval')}.json"
    try:
        rel = json.loads(memo.read_text())
    except (OSError, json.JSONDecodeError):
        rel = _scan(root)
        with contextlib.suppress(OSError):
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f".{memo.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(rel, sort_keys=True))
            os.replace(tmp, memo)
    return {name: root / d for name, d in rel.items()}


def _manager(include: list[Path], defaults: bool):
    from lm_eval.tasks import TaskManager

    with quiet_lm_eval():
        return TaskManager(include_path=[str(p) for p in include] or None, include_defaults=defaults)


def _close(name: str, candidates: list[str]) -> list[str]:
    return difflib.get_close_matches(name, candidates, n=5, cutoff=0.6)


def _unknown(names: list[str], known: list[str], where: str) -> UserError:
    name = names[0]
    close = _close(name, known)
    hint = f"close names: {', '.join(close)}" if close else "no close name"
    return UserError(f"unknown task {name!r} ({hint}); list tasks with `lm-eval ls tasks`, or pass --include-path DIR "
                     f"with your task YAMLs ({where})")


def task_manager(names: list[str], include_path: str | Path | None = None):
    """A TaskManager that knows every name in ``names``; UserError (with close names) otherwise."""
    user: list[Path] = []
    user_names: set[str] = set()
    if include_path is not None:
        p = Path(include_path)
        if not p.is_dir():
            raise UserError(f"--include-path {include_path}: no such folder; pass a folder of lm-eval task YAMLs")
        user = [p]
        tm = _manager(user, defaults=False)
        user_names = set(tm.all_tasks)
        missing = [n for n in names if n not in user_names]
        if not missing:
            return tm
        # A near-miss of the user's own task: say so without scanning lm-eval's 15,000 tasks.
        if all(_close(n, tm.all_tasks) and n not in builtin_task_dirs() for n in missing):
            raise _unknown(missing, tm.all_tasks, f"the tasks in {include_path}")
    builtin = builtin_task_dirs()
    dirs = sorted({builtin[n] for n in names if n in builtin})
    if all(n in builtin or n in user_names for n in names):
        tm = _manager(user + dirs, defaults=False)
        if all(n in tm.all_tasks for n in names):
            return tm
    tm = _manager(user, defaults=True)  # the full index (a tag, or a task our scan missed)
    missing = [n for n in names if n not in tm.all_tasks]
    if missing:
        raise _unknown(missing, tm.all_tasks, "lm-eval's tasks" + (f" and those in {include_path}" if user else ""))
    return tm


def _entry_dataset(tm, name: str) -> str:
    entry = tm.task_index.get(name)
    cfg = getattr(entry, "cfg", None) or {}
    path, sub = cfg.get("dataset_path"), cfg.get("dataset_name")
    if not path:
        return name
    return f"{path}" + (f" ({sub})" if sub else "")


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _datasets_cache() -> str:
    try:
        import datasets.config as dc

        return str(dc.HF_DATASETS_CACHE)
    except Exception:  # datasets missing or changed: name the variable alone
        return os.environ.get("HF_DATASETS_CACHE", "~/.cache/huggingface/datasets")


def _load_error(tm, name: str, err: Exception) -> UserError:
    msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    dataset = _entry_dataset(tm, name)
    network = isinstance(err, (ConnectionError, TimeoutError)) or any(
        s in msg for s in ("Couldn't reach", "OfflineModeIsEnabled", "offline mode", "Connection", "resolve"))
    if network or (_offline() and isinstance(err, FileNotFoundError)):
        state = "offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set)" if _offline() else "the Hub could not be reached"
        return UserError(f"task {name!r} needs dataset {dataset} from the Hugging Face Hub, but it is not in the datasets "
                         f"cache (HF_DATASETS_CACHE={_datasets_cache()}) and {state}; download it once with network, point "
                         "HF_DATASETS_CACHE at a cache that holds it, or use a local task YAML with dataset_kwargs.data_files")
    return UserError(f"task {name!r} could not be loaded (dataset {dataset}): {msg[:300]}")


@dataclass
class LoadedTasks:
    """The requested tasks, built once and reused for every checkpoint."""

    names: list[str]
    manager: Any
    objects: list[Any]  # what simple_evaluate gets: Task / Group objects in request order
    leaves: dict[str, Any] = field(default_factory=dict)  # leaf task name -> Task
    fingerprints: dict[str, str] = field(default_factory=dict)  # leaf task name -> sha256

    def leaf_names(self) -> list[str]:
        return sorted(self.leaves)


def _data_files(cfg: dict[str, Any]) -> list[Path]:
    out: list[Path] = []

    def add(x: Any) -> None:
        if isinstance(x, (list, tuple)):
            for y in x:
                add(y)
        elif isinstance(x, dict):
            for y in x.values():
                add(y)
        elif isinstance(x, (str, os.PathLike)) and Path(x).is_file():
            out.append(Path(x))

    add((cfg.get("dataset_kwargs") or {}).get("data_files"))
    path = cfg.get("dataset_path")
    if isinstance(path, str) and Path(path).exists():
        p = Path(path)
        out += [f for f in sorted(p.rglob("*")) if f.is_file()] if p.is_dir() else [p]
    return out


def load_tasks(names: list[str], include_path: str | Path | None, file_hash: Callable[[Path], str]) -> LoadedTasks:
    """Resolve and build the tasks (loading their datasets) and fingerprint each leaf task."""
    tm = task_manager(names, include_path)
    objects, leaves = [], {}
    for name in names:
        try:
            with quiet_lm_eval(), quiet_output():
                loaded = tm.load([name])
        except UserError:
            raise
        except Exception as e:  # datasets' errors have many types; say which dataset and why
            raise _load_error(tm, name, e) from None
        group = (loaded.get("groups") or {}).get(name)
        objects += [group] if group is not None else list(loaded["tasks"].values())
        leaves.update(loaded["tasks"])
    prints = {}
    for leaf, task in leaves.items():
        cfg = task.dump_config() if hasattr(task, "dump_config") else dict(vars(task.config))
        text = _ADDRESS.sub("", json.dumps(cfg, sort_keys=True, default=str))
        h = hashlib.sha256(text.encode())
        for f in _data_files(cfg):
            h.update(f"\n{f.name}:{file_hash(f)}".encode())
        prints[leaf] = h.hexdigest()
    return LoadedTasks(names, tm, objects, leaves, prints)
