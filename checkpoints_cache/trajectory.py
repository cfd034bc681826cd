"""Local trajectory directories: the toy run, every branch, any run laid out like a release.

Layout (``DESIGN.md``, "A trajectory directory")::

    TRAJ/
      trajectory.json        # architecture, recipe, step grid, data-order reference, parent, ...
      checkpoints/stepN/     # save_pretrained format: config.json + model.safetensors
      checkpoints/stepN/averaged/   # averaged / shadow weights, where an intervention keeps them
      optimizer/stepN/       # full training state where it exists (optimizer.pt + train_state.json)
      data/                  # the run's own data order (document.idx + shards), if it carries one
      metrics.jsonl          # one JSON object per optimizer step
      compare/               # comparison tables and figures

Everything here is plain file access; writes go through a temporary name and a rename so that a
killed process never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError
from .recipe import Recipe

TRAJECTORY_FILE = "trajectory.json"
FORMAT = "branchpoint-trajectory/1"
CHECKPOINTS = "checkpoints"
OPTIMIZER = "optimizer"
AVERAGED = "averaged"
METRICS = "metrics.jsonl"
DATA = "data"


def step_dir_name(step: int) -> str:
    return f"step{step}"


def parse_step_dir(name: str) -> int | None:
    if name.startswith("step") and name[4:].isdigit():
        return int(name[4:])
    return None


def nearest_steps(steps: list[int], step: int) -> tuple[int | None, int | None]:
    """The closest available steps at or below and at or above ``step`` (sorted input)."""
    i = bisect.bisect_left(steps, step)
    lower = steps[i - 1] if i > 0 else None
    upper = steps[i] if i < len(steps) else None
    if upper == step:
        lower = step
    return lower, upper


def describe_nearest(steps: list[int], step: int) -> str:
    lower, upper = nearest_steps(steps, step)
    near = [str(s) for s in (lower, upper) if s is not None]
    return " and ".join(dict.fromkeys(near)) if near else "none"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[Any]:
    """Open a temporary sibling of ``path``; fsync and rename it into place only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_file(path, "w") as f:
        f.write(text)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(final)
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class Trajectory:
    """A trajectory directory on disk, read-only view plus path helpers."""

    def __init__(self, root: Path, meta: dict[str, Any]):
        self.root = Path(root)
        self.meta = meta

    # -- opening ---------------------------------------------------------------------------
    @staticmethod
    def is_trajectory(path: str | os.PathLike) -> bool:
        return (Path(path) / TRAJECTORY_FILE).is_file()

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Trajectory":
        root = Path(path)
        meta_path = root / TRAJECTORY_FILE
        if not root.exists():
            raise UserError(f"trajectory directory {str(root)!r} does not exist; build one with `branchpoint toy --out {root}`")
        if not meta_path.is_file():
            raise UserError(
                f"{str(root)!r} is not a trajectory directory (no {TRAJECTORY_FILE}); "
                "pass a directory written by `branchpoint toy` or `branchpoint branch`"
            )
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{meta_path} is not valid JSON ({e.msg} at line {e.lineno})") from None
        return cls(root, meta)

    # -- metadata ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.meta.get("name") or self.root.name)

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.meta["recipe"])

    @property
    def model_config(self) -> dict[str, Any]:
        """The HF config dict of the run's architecture (as of its first checkpoint)."""
        return dict(self.meta.get("architecture", {}).get("config", {}))

    @property
    def grid(self) -> list[int]:
        """The checkpoint grid the run declares (for a branch: the parent's grid it follows)."""
        return sorted(int(s) for s in self.meta.get("steps", []))

    @property
    def parent(self) -> dict[str, Any] | None:
        return self.meta.get("parent")

    @property
    def branch_step(self) -> int | None:
        p = self.parent
        return None if p is None else int(p["step"])

    @property
    def intervention(self) -> dict[str, Any]:
        return self.meta.get("intervention") or {"name": "none", "params": {}}

    @property
    def data_order(self) -> dict[str, Any] | None:
        return self.meta.get("data_order")

    # -- files -------------------------------------------------------------------------------
    @property
    def steps(self) -> list[int]:
        """Steps whose checkpoint is complete on disk (config + weights), ascending."""
        base = self.root / CHECKPOINTS
        if not base.is_dir():
            return []
        out = []
        for p in base.iterdir():
            s = parse_step_dir(p.name)
            if s is not None and (p / "config.json").is_file():
                out.append(s)
        return sorted(out)

    def checkpoint_dir(self, step: int) -> Path:
        d = self.root / CHECKPOINTS / step_dir_name(step)
        if not (d / "config.json").is_file():
            steps = self.steps
            raise UserError(
                f"step {step} is not a checkpoint of {self.root}; nearest available: {describe_nearest(steps, step)}"
            )
        return d

    def averaged_dir(self, step: int) -> Path | None:
        d = self.root / CHECKPOINTS / step_dir_name(step) / AVERAGED
        return d if (d / "config.json").is_file() else None

    def optimizer_dir(self, step: int) -> Path | None:
        d = self.root / OPTIMIZER / step_dir_name(step)
        return d if d.is_dir() and any(d.iterdir()) else None

    def has_optimizer_state(self, step: int) -> bool:
        return self.optimizer_dir(step) is not None

    @property
    def data_dir(self) -> Path:
        return self.root / DATA

    @property
    def metrics_path(self) -> Path:
        return self.root / METRICS

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.is_file():
            return []
        rows = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if line:
                rows.append(json.loads(line))
        return rows

    def write_meta(self) -> None:
        atomic_write_json(self.root / TRAJECTORY_FILE, self.meta)
