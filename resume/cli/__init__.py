"""The ``branchpoint`` command line: one small module per subcommand.

Each module in ``COMMANDS`` defines ``add_parser(subparsers)``, which registers its subparser
and sets ``func`` to a callable taking the parsed args and returning an exit status. Modules keep
heavy imports (torch, transformers) inside their ``run`` so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import socket
import sys
import traceback
from typing import Sequence

from checkpoints_cache.errors import UserError

# (subcommand, module) in the order `branchpoint --help` lists them.
COMMANDS: list[tuple[str, str]] = [
    ("runs", "resume.cli.runs"),
    ("steps", "resume.cli.steps"),
    ("fetch", "resume.cli.fetch"),
    ("audit", "resume.cli.audit"),
    ("batch", "resume.cli.batch"),
    ("toy", "resume.cli.toy"),
    ("branch", "resume.cli.branch"),
    ("compare", "resume.cli.compare"),
    ("eval", "resume.cli.eval"),
    ("gstack-plan", "resume.cli.gstack_plan"),
    ("demo", "resume.cli.demo"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="branchpoint",
        description="Branch a released pretraining run at step N, apply an intervention, compare with the original.",
        epilog="example: branchpoint toy --out runs/toy && branchpoint branch runs/toy --from-step 64 --steps 32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:  # a command whose module is not written yet
            if e.name == module_name:
                continue
            raise
        module.add_parser(sub)
    return parser


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and what caused it (``raise ... from`` and implicit context), outermost first."""
    out: list[BaseException] = []
    while exc is not None and exc not in out and len(out) < 20:
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _loaded_class(module: str, name: str) -> type | None:
    """A class from a module only if that module is already imported (an error of it implies so)."""
    mod = sys.modules.get(module)
    return getattr(mod, name, None) if mod is not None else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _http_line(exc: BaseException) -> str | None:
    hf_http = _loaded_class("huggingface_hub.errors", "HfHubHTTPError")
    if hf_http is None or not isinstance(exc, hf_http):
        return None
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    url = str(getattr(getattr(response, "request", None), "url", "") or getattr(response, "url", "") or "")
    where = f" for {url}" if url else ""
    if status in (401, 403):
        return (f"the Hub refused access (HTTP {status}){where}; for a gated or private repo log in with "
                "`hf auth login` or set HF_TOKEN")
    if status is not None and (status >= 500 or status in (408, 429)):
        from checkpoints_cache.hub import MAX_TRIES

        return f"the Hub answered HTTP {status}{where} after {MAX_TRIES} tries; it is having trouble, try again later"
    return f"the Hub answered HTTP {status}{where}: {_first_line(exc)}"


def _connection_line(exc: BaseException) -> str | None:
    kinds = [ConnectionError, TimeoutError, socket.gaierror]
    for module, name in (("httpx", "TransportError"), ("httpx2", "TransportError"), ("requests", "ConnectionError")):
        cls = _loaded_class(module, name)
        if cls is not None:
            kinds.append(cls)
    if not isinstance(exc, tuple(kinds)):
        return None
    from huggingface_hub import constants

    return (f"cannot reach the Hub at {constants.ENDPOINT} ({_first_line(exc)}); check the network connection "
            "(or HF_ENDPOINT), or set HF_HUB_OFFLINE=1 to use only what is already in the cache")


def _os_line(exc: BaseException) -> str | None:
    from checkpoints_cache import disk

    failure = disk.as_write_failure(exc, getattr(exc, "filename", None) or ".")
    if failure is not None:
        if isinstance(exc, disk.DiskFullError) or getattr(exc, "filename", None):
            return failure.line()
        kind = "a file-size limit (`ulimit -f`)" if failure.too_big else "no space left on the device"
        return f"a write failed: {kind} ({_first_line(exc)}); free some space or write to another disk"
    if not isinstance(exc, OSError):
        return None
    path = exc.filename or "a file"
    if exc.errno == errno.EROFS:
        return f"cannot write {path}: the file system is read-only; choose a writable place (another --out, HF_HOME)"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied for {path}; choose a place you can write to (another --out, HF_HOME) or fix its permissions"
    if exc.errno == errno.ENOTDIR or isinstance(exc, FileExistsError):
        return f"{path}: a part of this path is a file where a directory is needed; choose another path"
    if exc.errno == errno.EISDIR:
        return f"{path} is a directory where a file is needed; choose another path"
    return None


def _device_line(exc: BaseException) -> str | None:
    text = str(exc)
    oom = _loaded_class("torch", "OutOfMemoryError")
    if (oom is not None and isinstance(exc, oom)) or "CUDA out of memory" in text:
        return f"out of GPU memory ({_first_line(exc)}); pass a smaller --micro-batch-size or use a bigger GPU"
    if isinstance(exc, MemoryError):
        return "out of memory; use a smaller model or --micro-batch-size, or a machine with more memory"
    if any(t in text for t in ("Torch not compiled with CUDA", "No CUDA GPUs are available", "CUDA driver",
                               "no CUDA-capable device", "invalid device ordinal")):
        return f"the requested device is not available here ({_first_line(exc)}); use --device cpu"
    return None


def environment_error_line(exc: BaseException) -> str | None:
    """One line for a failure of the environment (network, Hub, disk, permissions, device), else None."""
    for e in _chain(exc):
        for classify in (_os_line, _http_line, _connection_line, _device_line):
            line = classify(e)
            if line is not None:
                return line
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = os.environ.get("BRANCHPOINT_DEBUG", "").strip() not in ("", "0")
    try:
        rc = args.func(args)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `branchpoint runs | head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - environment failures become one line; bugs keep their traceback
        line = environment_error_line(e)
        if line is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {line}" + ("" if debug else " (BRANCHPOINT_DEBUG=1 shows the traceback)"), file=sys.stderr)
        return 1
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
