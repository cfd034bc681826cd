"""A corrupt or truncated checkpoint file, named, with what to do about it.

Loading a damaged ``model.safetensors`` makes safetensors say "Error while deserializing header:
incomplete metadata, file not fully covered" and transformers a 29-line traceback, neither naming
the file. ``reading_checkpoint(folder)`` wraps a load: a failure that comes from damaged files
becomes ``CorruptCheckpointError`` naming the damaged file and the way out -- re-fetch it when it
lives in the HF cache, delete the step (or the resumable state) when it lives in a trajectory.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Iterator

from .errors import UserError

# Messages of the loaders when the bytes are damaged (safetensors, torch's zip reader, transformers).
CORRUPT_TEXT = (
    "Error while deserializing", "incomplete metadata", "header too", "invalid header", "HeaderTooLarge",
    "PytorchStreamReader failed", "failed finding central directory", "unexpected EOF", "archive is corrupted",
    "is not a valid JSON file", "Unable to load weights", "Ran out of input", "invalid load key",
    "Invalid magic number", "file not fully covered", "MetadataIncompleteBuffer", "InvalidHeader",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class CorruptCheckpointError(UserError):
    def __init__(self, path: Path, reason: str, hint: str):
        self.path = path
        super().__init__(f"{path} is corrupt or truncated ({reason}); {hint}")


def looks_corrupt(exc: BaseException) -> bool:
    if isinstance(exc, (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError)):
        return True
    if type(exc).__name__ == "SafetensorError":
        return True
    return any(t in str(exc) for t in CORRUPT_TEXT)


def _check_file(path: Path) -> str | None:
    """Why ``path`` cannot be read (None if it reads fine)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for key in list(f.keys())[:1]:
                    f.get_slice(key)
        elif path.suffix in (".bin", ".pt"):
            import torch

            torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to read is the diagnosis
        return str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
    return None


def find_damaged(target: Path) -> tuple[Path, str] | None:
    """The first unreadable checkpoint file in ``target`` (a folder or one file), with the reason."""
    target = Path(target)
    files = [target] if target.is_file() else sorted(
        p for p in target.iterdir() if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.suffix == ".json"))
    files.sort(key=lambda p: p.suffix == ".json")  # weights first: config.json is rarely the damaged one
    for f in files:
        reason = _check_file(f)
        if reason is not None:
            return f, reason
    return None


def fix_hint(path: Path) -> str:
    """What to do about a damaged file at ``path`` (in the HF cache, in a trajectory, or in a branch's state)."""
    p = Path(os.path.abspath(path))
    parts = p.parts
    if "snapshots" in parts:  # HF cache: <cache>/models--Org--Name/snapshots/<commit>/<file>
        i = parts.index("snapshots")
        repo_folder = Path(*parts[:i])
        repo = repo_folder.name.split("--", 1)[-1].replace("--", "/")
        commit = parts[i + 1] if len(parts) > i + 1 else ""
        revisions = []
        refs = repo_folder / "refs"
        if refs.is_dir():
            revisions = sorted(r.name for r in refs.iterdir() if r.is_file() and r.read_text().strip() == commit)
        steps = [m.group(1) for r in revisions if (m := re.fullmatch(r"step(\d+)", r))]
        step = f" --step {steps[0]}" if steps else " --step N"
        return (f"it is in the HF cache: re-fetch it with `branchpoint fetch {repo}{step}` (the fetch checks every "
                "file against the Hub's sha256 and downloads damaged ones again)")
    for i in range(len(parts) - 1, 0, -1):
        root = Path(*parts[:i])
        if (root / "trajectory.json").is_file():
            rel = parts[i:]
            if rel and rel[0] == "state":
                return (f"it is the resumable state of the branch {root}: delete {root / 'state'} and rerun with "
                        "--resume (the branch then restarts from its branch step)")
            if len(rel) >= 2 and rel[0] in ("checkpoints", "optimizer"):
                step_dir = root / rel[0] / rel[1]
                also = "" if rel[0] == "optimizer" else f" (and {root / 'optimizer' / rel[1]})"
                return (f"delete the step {step_dir}{also}: the trajectory {root} then lacks that step; "
                        "rebuild the run to get it back")
            return f"it belongs to the trajectory {root}; restore it or rebuild the run"
    return "restore the file, or fetch or rebuild the checkpoint"


@contextlib.contextmanager
def reading_checkpoint(target: str | os.PathLike) -> Iterator[None]:
    """Turn a load failure caused by damaged files in ``target`` into ``CorruptCheckpointError``."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unless the files are damaged
        if not looks_corrupt(e) and not isinstance(e, OSError):
            raise
        damaged = find_damaged(Path(target)) if Path(target).exists() else None
        if damaged is None:
            if not looks_corrupt(e):
                raise
            damaged = (Path(target), str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__)
        raise CorruptCheckpointError(damaged[0], damaged[1], fix_hint(damaged[0])) from e
