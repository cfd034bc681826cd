"""One writer per output: an exclusive lock on an output directory, held for the whole run.

``output_lock(path)`` takes an OS lock (``fcntl.flock``) on the file ``.<name>.lock`` next to the
directory ``path`` (next to it, not inside, so that outputs written atomically by renaming a
temporary sibling -- the toy -- are covered before they exist). The holder writes its PID and
command line into the lock file, so a second process fails at once with one line naming it.

The kernel drops a flock when its holder dies (kill -9 included), so a lock left by a dead process
is simply taken over: there is nothing to clean up by hand. The lock file is removed on release;
a waiter that opened the old file notices (the path no longer names the inode it locked) and
retries, so removal never lets two holders in.

Locks are re-entrant within a process (``branch`` locks its output, and the CLI that calls it
holds the same lock across the comparison that follows). Downloads into the HF cache are not
locked here: huggingface_hub's own per-blob locks cover them (ecosystem.md §3.3).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

from .errors import UserError

LOCK_SUFFIX = ".lock"


class OutputLockedError(UserError):
    """Another live process holds the lock on an output directory."""

    def __init__(self, path: Path, holder: dict, hint: str):
        self.path, self.holder = path, holder
        pid = holder.get("pid")
        who = f"PID {pid}" if pid else "a process whose PID could not be read"
        host = holder.get("host")
        if host and host != socket.gethostname():
            who += f" on {host}"
        cmd = holder.get("command")
        what = f" ({cmd})" if cmd else ""
        super().__init__(f"{path} is being written by another branchpoint process, {who}{what}; {hint}")


INNER_LOCK = ".branchpoint.lock"


def lock_path(path: str | os.PathLike) -> Path:
    """The lock file of the output directory ``path``: ``<parent>/.<name>.lock``, or
    ``<path>/.branchpoint.lock`` when only the directory itself is writable (e.g. your folder in a
    shared, read-only parent)."""
    p = Path(os.path.abspath(path))
    if not os.access(p.parent, os.W_OK) and p.is_dir() and os.access(p, os.W_OK):
        return p / INNER_LOCK
    return p.with_name(f".{p.name}{LOCK_SUFFIX}")


# path of the lock file -> [fd, depth]; guarded by _held_lock (threads of one process share it)
_held: dict[str, list[int]] = {}
_held_lock = threading.Lock()


def _read_holder(lp: Path) -> dict:
    for _ in range(20):  # the holder writes its PID right after locking: wait a moment for it
        try:
            text = lp.read_text()
        except OSError:
            text = ""
        if text.strip():
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                pass
        time.sleep(0.01)
    return {}


def _command() -> str:
    argv = [os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    if argv[0] in ("__main__.py", "-c", "-m"):
        argv[0] = "branchpoint"
    text = " ".join(argv)
    return text if len(text) <= 200 else text[:197] + "..."


def _acquire(lp: Path, out: Path, hint: str) -> int:
    lp.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lp, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise OutputLockedError(out, _read_holder(lp), hint) from None
        # The previous holder may have removed the file between our open and our flock: then we
        # locked an orphaned inode and must start over on the file the path names now.
        try:
            same = os.stat(lp).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(), "since": time.time()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    return fd


def _release(lp: Path, fd: int) -> None:
    # Remove while still holding the lock, so nobody can lock this file after we leave it.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lp)
    os.close(fd)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike, hint: str = "wait for it to finish, or choose another --out") -> Iterator[Path]:
    """Hold the exclusive lock of output directory ``path`` for the block (re-entrant per process).

    Raises ``OutputLockedError`` (a ``UserError``: one line, exit 2) at once when another live
    process holds it; never waits."""
    lp = lock_path(path)
    key = str(lp)
    with _held_lock:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
        else:
            _held[key] = [_acquire(lp, Path(path), hint), 1]
    try:
        yield Path(os.path.abspath(path))
    finally:
        with _held_lock:
            entry = _held[key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[key]
                _release(lp, entry[0])


def is_locked_here(path: str | os.PathLike) -> bool:
    """Whether this process holds the lock of ``path``."""
    with _held_lock:
        return str(lock_path(path)) in _held


def held_elsewhere(path: str | os.PathLike) -> bool:
    """Whether another live process holds the lock of output directory ``path`` right now (read from
    the PID in the lock file, without touching the lock itself)."""
    lp = lock_path(path)
    if not lp.exists() or is_locked_here(path):
        return False
    try:
        pid = int(json.loads(lp.read_text()).get("pid", 0))
    except (OSError, ValueError, AttributeError):
        return True  # being written right now: someone is taking it
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False  # left by a dead process
    except PermissionError:
        return True
    return True
