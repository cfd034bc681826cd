"""Declared, validated parameters for interventions (one place per class: ``PARAMS``).

An intervention class lists its parameters as ``Param`` entries; ``validate_params`` turns the raw
``key=value`` strings of a spec (or Python values passed directly) into typed values, and any
unknown key, wrong type or out-of-range value becomes a one-line ``UserError`` that names the bad
key/value and lists every accepted key with its type and range.

A default of ``PARENT`` means "resolved from the parent run in ``setup(ctx)``" (e.g. the parent's
peak LR); until then the value is ``None``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from checkpoints_cache.errors import UserError

from .base import Intervention

PARENT = "<from parent>"  # sentinel default: resolved in setup(ctx)


@dataclass(frozen=True)
class Param:
    """One parameter: its name, type, default, allowed range or choices, and a short help."""

    name: str
    type: type  # int | float | str
    default: Any
    help: str = ""
    choices: tuple[str, ...] | None = None
    min: float | None = None  # inclusive lower bound
    max: float | None = None  # inclusive upper bound
    min_exclusive: bool = False  # lower bound excluded (e.g. lr > 0)

    def range_text(self) -> str:
        """``int ≥ 1``, ``float in (0, 1]``, ``replace|eval`` ..."""
        if self.choices:
            return "|".join(self.choices)
        tname = self.type.__name__
        lo = None if self.min is None else f"{self.min:g}"
        hi = None if self.max is None else f"{self.max:g}"
        if lo is not None and hi is not None:
            left = "(" if self.min_exclusive else "["
            return f"{tname} in {left}{lo}, {hi}]"
        if lo is not None:
            return f"{tname} {'>' if self.min_exclusive else '>='} {lo}"
        if hi is not None:
            return f"{tname} <= {hi}"
        return tname

    def describe(self) -> str:
        if self.default is PARENT:
            d = "default: from the parent run"
        elif self.default is None:
            d = "default: none"
        else:
            d = f"default {self.default}"
        return f"{self.name} ({self.range_text()}, {d})"

    def convert(self, raw: Any) -> Any:
        """A typed, range-checked value from a spec string or a Python value; ValueError if bad."""
        if self.type is int:
            if isinstance(raw, bool):
                raise ValueError("expected an integer")
            if isinstance(raw, str):
                text = raw.strip()
                try:
                    value = int(text)
                except ValueError:
                    try:  # accept 1e3 / 1000.0 when it is a whole number
                        f = float(text)
                    except ValueError:
                        raise ValueError("expected an integer") from None
                    if not math.isfinite(f) or f != int(f):
                        raise ValueError("expected an integer") from None
                    value = int(f)
            elif isinstance(raw, float):
                if not math.isfinite(raw) or raw != int(raw):
                    raise ValueError("expected an integer")
                value = int(raw)
            elif isinstance(raw, int):
                value = raw
            else:
                raise ValueError("expected an integer")
        elif self.type is float:
            if isinstance(raw, bool):
                raise ValueError("expected a number")
            try:
                value = float(raw.strip()) if isinstance(raw, str) else float(raw)
            except (ValueError, TypeError):
                raise ValueError("expected a number") from None
            if not math.isfinite(value):
                raise ValueError("expected a finite number")
        elif self.type is str:
            value = str(raw).strip()
        else:  # pragma: no cover - a declaration bug, not user input
            raise TypeError(f"unsupported parameter type {self.type!r}")
        if self.choices and value not in self.choices:
            raise ValueError(f"expected one of {'|'.join(self.choices)}")
        if self.min is not None and (value < self.min or (self.min_exclusive and value == self.min)):
            raise ValueError(f"out of range ({self.range_text()})")
        if self.max is not None and value > self.max:
            raise ValueError(f"out of range ({self.range_text()})")
        return value


def accepted_keys(name: str, params: Sequence[Param]) -> str:
    if not params:
        return f"{name} takes no parameters"
    return f"accepted keys for {name}: " + ", ".join(p.describe() for p in params)


def validate_params(name: str, params: Sequence[Param], given: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values for every declared parameter (defaults filled; PARENT defaults left as None)."""
    by_name = {p.name: p for p in params}
    for key in given:
        if key not in by_name:
            raise UserError(f"unknown key {key!r} for intervention {name}; {accepted_keys(name, params)}")
    out: dict[str, Any] = {}
    for p in params:
        if key_given(given, p.name):
            raw = given[p.name]
            try:
                out[p.name] = p.convert(raw)
            except (ValueError, TypeError) as e:
                raise UserError(
                    f"bad value {p.name}={raw!s} for intervention {name}: {e}; {accepted_keys(name, params)}"
                ) from None
        else:
            out[p.name] = None if p.default is PARENT else p.default
    return out


def key_given(given: Mapping[str, Any], key: str) -> bool:
    return key in given and given[key] is not None


class DeclaredIntervention(Intervention):
    """An intervention whose parameters are declared in ``PARAMS`` and validated on construction.

    ``LAWA(k=5)`` and ``parse_intervention("lawa:k=5")`` go through the same validation; the
    values in ``self.params`` are typed, and parent-dependent defaults are filled in ``setup``.
    """

    PARAMS: tuple[Param, ...] = ()

    def __init__(self, **params: Any):
        super().__init__(**validate_params(self.name, self.PARAMS, params))

    @classmethod
    def help_text(cls) -> str:
        return accepted_keys(cls.name, cls.PARAMS)
