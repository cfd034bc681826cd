"""Disk-full and write-refused errors, told apart from bugs and said in one line.

Writers fail in several dialects when the disk is full: ``OSError(ENOSPC)`` from Python,
``SafetensorError("... No space left on device (os error 28)")`` from safetensors, and
``RuntimeError("[enforce fail at inline_container.cc] . unexpected pos ...")`` (or
``basic_ios::clear``) from ``torch.save``, which loses the errno. A file-size limit
(``ulimit -f``) gives ``EFBIG`` instead. ``as_write_failure`` recognises them all;
``writing(path, need)`` wraps a write so that such a failure becomes ``DiskFullError`` naming the
path, the bytes the write needs and the bytes free.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import Iterator

# torch.save's C++ writer reports a failed write without an errno (seen on ENOSPC and EFBIG).
TORCH_WRITE_FAILURES = ("unexpected pos", "basic_ios::clear", "file write failed", "PytorchStreamWriter failed writing")
FULL_TEXT = ("No space left on device", "os error 28")
TOO_BIG_TEXT = ("File too large", "os error 27")


def human(n: int | float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return str(n)


def free_bytes(path: str | os.PathLike) -> int | None:
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


class DiskFullError(OSError):
    """A write ran out of room (ENOSPC) or hit a file-size limit (EFBIG)."""

    def __init__(self, path: str | os.PathLike, need: int | None, free: int | None, too_big: bool = False):
        self.path, self.need, self.free, self.too_big = Path(path), need, free, too_big
        super().__init__(errno.EFBIG if too_big else errno.ENOSPC, self.line(), str(path))

    def line(self) -> str:
        need = f"about {human(self.need)}" if self.need else "more room than is left"
        if self.too_big:
            return (f"could not write {self.path}: a file would exceed the file-size limit of this process or "
                    f"filesystem (`ulimit -f`); the write needs {need}; raise the limit or write to another disk")
        free = f", {human(self.free)} free" if self.free is not None else ""
        return (f"no space left on the device writing {self.path}: the write needs {need}{free}; "
                "free some space or write to another disk (another --out, or HF_HOME / BRANCHPOINT_HOME)")

    def __str__(self) -> str:
        return self.line()


def write_failure_kind(exc: BaseException) -> str | None:
    """"full" | "too-big" when ``exc`` is a failed write for lack of room, else None."""
    if isinstance(exc, DiskFullError):
        return "too-big" if exc.too_big else "full"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "full"
    if isinstance(exc, OSError) and exc.errno == errno.EFBIG:
        return "too-big"
    text = str(exc)
    if any(t in text for t in FULL_TEXT):
        return "full"
    if any(t in text for t in TOO_BIG_TEXT):
        return "too-big"
    if isinstance(exc, RuntimeError) and any(t in text for t in TORCH_WRITE_FAILURES):
        return "full"  # errno lost; full disk is by far the common cause, a size limit the other
    return None


def as_write_failure(exc: BaseException, path: str | os.PathLike, need: int | None = None) -> DiskFullError | None:
    kind = write_failure_kind(exc)
    if kind is None:
        return None
    if isinstance(exc, DiskFullError):
        return exc
    return DiskFullError(getattr(exc, "filename", None) or path, need, free_bytes(path), too_big=kind == "too-big")


def tree_bytes(path: str | os.PathLike) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, f)).st_size
    return total


@contextlib.contextmanager
def writing(path: str | os.PathLike, need: int | None = None) -> Iterator[None]:
    """Turn a disk-full failure inside the block into ``DiskFullError(path, need, free)``."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:  # noqa: BLE001 - re-raised unchanged unless it is a failed write
        failure = as_write_failure(e, path, need)
        if failure is None:
            raise
        raise failure from e
