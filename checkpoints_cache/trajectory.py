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

from . import disk, locks
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
    # Read it without setting it where the OS tells (os.umask(0) would briefly open up files that
    # other threads create meanwhile, e.g. parallel downloads).
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb", need: int | None = None) -> Iterator[Any]:
    """Open a temporary sibling of ``path``; fsync and rename it into place only on success.

    A write that runs out of room raises ``disk.DiskFullError`` naming ``path`` (and ``need``
    bytes, when the caller knows them)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        with disk.writing(path, need):
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, usual_mode(False))  # mkstemp makes 0600; give the file the usual permissions
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
def atomic_dir(final: Path, overwrite: bool = True, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to ``final`` only if the block succeeds.

    Everything in it gets the usual permissions (0644 / 0755 under umask 022: safetensors and
    mkstemp create 0600). A write that runs out of room raises ``disk.DiskFullError``."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=TMP_SUFFIX, dir=final.parent))
    try:
        try:
            with disk.writing(final, need):
                yield tmp
        except disk.DiskFullError as e:  # name the place the user asked for, not our temporary name
            if e.path == tmp or tmp in e.path.parents:
                e.path = final / e.path.relative_to(tmp)
                e.strerror = e.line()
            raise
        fix_permissions(tmp)
        if final.exists():
            if not overwrite:
                raise FileExistsError(final)
            old = final.with_name(f".{final.name}{OLD_SUFFIX}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def usual_mode(is_dir: bool) -> int:
    """0666 / 0777 under the umask: what ``open``/``mkdir`` give (0644 / 0755 under umask 022)."""
    return (0o777 if is_dir else 0o666) & ~_umask()


def fix_permissions(root: Path) -> None:
    """Give ``root`` and everything below it the usual permissions (keeps execute bits of files)."""
    dmode, fmode = usual_mode(True), usual_mode(False)
    os.chmod(root, dmode)
    for base, dirs, files in os.walk(root):
        for d in dirs:
            os.chmod(os.path.join(base, d), dmode)
        for f in files:
            p = os.path.join(base, f)
            if not os.path.islink(p):
                os.chmod(p, fmode | (os.stat(p).st_mode & 0o111 & dmode))


# Names of the temporaries the helpers above leave behind when a process is killed mid-write:
# ``.<name>.<random>.tmp`` (atomic_file, atomic_dir, mkstemp users) and ``.<name>.old``.
TMP_SUFFIX = ".tmp"
OLD_SUFFIX = ".old"


def is_orphan_name(name: str) -> bool:
    return name.startswith(".") and len(name) > 1 and name.endswith((TMP_SUFFIX, OLD_SUFFIX))


def clean_orphans(root: Path | None, siblings_of: Path | None = None) -> list[Path]:
    """Remove temporaries a killed run left under ``root`` (and, with ``siblings_of``, the
    ``.<name>.*`` temporaries next to that path). Call it only while holding the output's lock
    (``checkpoints_cache.locks``): then no other writer can own them. Returns what was removed."""
    removed: list[Path] = []

    def drop(p: Path) -> None:
        name = p.name
        if name.endswith(OLD_SUFFIX):  # killed between atomic_dir's two renames: the old copy is the only one
            final = p.with_name(name[1:-len(OLD_SUFFIX)])
            if not final.exists():
                os.replace(p, final)
                return
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)

    if root is not None and Path(root).is_dir():
        for base, dirs, files in os.walk(root):
            for name in [d for d in dirs if is_orphan_name(d) or locks.held_elsewhere(Path(base) / d)]:
                dirs.remove(name)  # an orphan, or a nested output another process is writing now
                if is_orphan_name(name):
                    drop(Path(base) / name)
            for name in files:
                if is_orphan_name(name):
                    drop(Path(base) / name)
    if siblings_of is not None:
        sib = Path(siblings_of)
        if sib.parent.is_dir():
            for p in sib.parent.iterdir():
                if p.name.startswith(f".{sib.name}.") and is_orphan_name(p.name):
                    drop(p)
    return removed


def has_content(path: Path) -> bool:
    """Whether directory ``path`` holds anything besides an output lock (``locks.INNER_LOCK``)."""
    path = Path(path)
    return path.is_dir() and any(p.name != locks.INNER_LOCK for p in path.iterdir())


def check_output_dir(out: Path, flag: str = "--out") -> None:
    """An output directory argument must be a directory or not exist yet; not a file, nor below one."""
    out = Path(out)
    for p in (out, *out.parents):
        if p.exists() and not p.is_dir():
            what = f"{flag} {out}" if p == out else f"{flag} {out}: {p}"
            raise UserError(f"{what} is a file, not a directory; pass a directory path")
        if p.exists():
            break


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
