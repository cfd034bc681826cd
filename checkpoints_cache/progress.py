"""The one progress-bar policy every bar of branchpoint goes through.

- On a terminal: tqdm's live bar, redrawn in place.
- In a non-terminal log (stderr redirected to a file, CI, a job scheduler): one plain line when
  the bar starts, then one each time another 10 % is done or ``LOG_INTERVAL_S`` (30 s) have
  passed, whichever comes first, and a last line at the end -- not one line per redraw.
- In a Jupyter notebook: tqdm's widget when ipywidgets is installed, else the text bar (never
  tqdm.auto's "IProgress not found" warning).

``BRANCHPOINT_PROGRESS=terminal|log|notebook|off`` forces a mode (default ``auto``). huggingface_hub
builds its bars from our class too (``name=`` is accepted, and HF_HUB_DISABLE_PROGRESS_BARS is
honoured for those), so downloads follow the same policy.
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from functools import lru_cache
from typing import Any, Iterable

# Merely importing tqdm.auto in a Jupyter kernel without ipywidgets warns "IProgress not found"
# (huggingface_hub and accelerate import it); our bars never use the widget there, so the warning
# only misleads. The package __init__s install this filter before anything imports tqdm.auto.
WIDGET_WARNING = "IProgress not found"


def quiet_widget_warning() -> None:
    warnings.filterwarnings("ignore", message=WIDGET_WARNING)


LOG_INTERVAL_S = 30.0
LOG_FRACTION = 0.1
MODES = ("auto", "terminal", "log", "notebook", "off")


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - any odd IPython state: not a notebook
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"


def _widgets_available() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def mode(stream: Any = None) -> str:
    """"terminal" | "log" | "notebook" | "off" for bars written to ``stream`` (default stderr)."""
    forced = os.environ.get("BRANCHPOINT_PROGRESS", "auto").strip().lower() or "auto"
    if forced not in MODES:
        forced = "auto"
    if forced != "auto":
        return forced
    if _in_notebook():
        return "notebook"
    stream = stream if stream is not None else sys.stderr
    try:
        return "terminal" if stream is not None and stream.isatty() else "log"
    except (AttributeError, ValueError):  # closed or unusual stream
        return "log"


def _hf_disabled(name: str | None) -> bool:
    if name is None:
        return False
    from huggingface_hub.utils import are_progress_bars_disabled

    return are_progress_bars_disabled(name)


@lru_cache(maxsize=None)
def _classes() -> dict[str, type]:
    from tqdm.std import tqdm as std_tqdm

    class Bar(std_tqdm):
        """tqdm that also takes huggingface_hub's ``name=`` keyword."""

        def __init__(self, *args: Any, name: str | None = None, **kwargs: Any):
            if _hf_disabled(name):
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    class LogBar(Bar):
        """One full line per report instead of in-place redraws."""

        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("mininterval", LOG_INTERVAL_S)
            kwargs.setdefault("miniters", 1)
            kwargs.setdefault("ascii", True)
            kwargs["dynamic_ncols"] = False
            self._tenth = 0
            super().__init__(*args, **kwargs)

        @staticmethod
        def status_printer(file: Any):
            def print_line(s: str) -> None:
                if s:
                    file.write(s.rstrip() + "\n")
                    getattr(file, "flush", lambda: None)()

            return print_line

        def moveto(self, n: int) -> None:  # no cursor movement in a log
            return None

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            if msg == "":  # tqdm clearing its line: nothing to clear in a log
                return False
            # one line per new state (count, postfix, description): no repeats that differ only in the rate
            state = (self.n, self.postfix, self.desc, msg)
            if state == getattr(self, "_last_state", None):
                return False
            self._last_state = state
            return super().display(msg, pos)

        def set_postfix(self, ordered_dict=None, refresh: bool = True, **kwargs: Any) -> None:
            super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown with the next line

        def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
            super().set_description(desc, refresh=False)

        def __iter__(self):  # tqdm's own __iter__ skips update(), and with it the 10 % lines
            if self.disable:
                yield from self.iterable
                return
            try:
                for obj in self.iterable:
                    yield obj
                    self.update(1)
            finally:
                self.close()

        def update(self, n: float | None = 1) -> bool | None:
            shown = super().update(n)
            if not self.disable and self.total:
                tenth = math.floor(self.n / self.total / LOG_FRACTION + 1e-9)
                if tenth > self._tenth:
                    self._tenth = tenth
                    if self.last_print_n != self.n:
                        self.refresh()
                        self.last_print_n, self.last_print_t = self.n, time.time()
            return shown

        def close(self) -> None:
            if not self.disable and hasattr(self, "last_print_n"):
                self.refresh()  # the final count and postfix, unless that line is already out
            self.leave = False  # tqdm would redraw the last line and add an empty one
            super().close()

    classes: dict[str, type] = {"terminal": Bar, "log": LogBar, "off": Bar}
    if _widgets_available():
        from tqdm.notebook import tqdm as nb_tqdm

        class NotebookBar(nb_tqdm):
            def __init__(self, *args: Any, name: str | None = None, **kwargs: Any):
                if _hf_disabled(name):
                    kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        classes["notebook"] = NotebookBar
    else:
        classes["notebook"] = Bar  # the text bar in the cell output, without tqdm.auto's warning
    return classes


def bar_class(stream: Any = None) -> type:
    """The tqdm class for the current environment (for APIs that take ``tqdm_class``)."""
    m = mode(stream)
    cls = _classes()[m]
    if m == "off":
        class Off(cls):  # type: ignore[misc, valid-type]
            def __init__(self, *args: Any, **kwargs: Any):
                kwargs["disable"] = True
                super().__init__(*args, **kwargs)

        return Off
    return cls


def progress_bar(iterable: Iterable | None = None, *, enabled: bool = True, **kwargs: Any) -> Any:
    """A progress bar under the policy above; ``enabled=False`` gives a silent one (same API)."""
    if not enabled:
        kwargs["disable"] = True
    return bar_class(kwargs.get("file"))(iterable, **kwargs)
