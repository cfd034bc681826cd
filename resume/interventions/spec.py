"""``--intervention SPEC`` -> an ``Intervention`` object.

Grammar: ``none`` | ``NAME`` | ``NAME:key=value,key=value`` | ``path/to/file.py:ClassName``
(optionally ``path/to/file.py:ClassName:key=value,...`` when the plugin declares ``PARAMS``).
Every key is validated against the class's declared parameters (``params.Param``).
"""

from __future__ import annotations

from typing import Any

from checkpoints_cache.errors import UserError

from .anytime import Anytime
from .base import Control, Intervention
from .bimix import BiMix
from .gstack import Gstack
from .lawa import LAWA
from .params import DeclaredIntervention, accepted_keys, validate_params
from .plugin import load_plugin_class

# The built-in interventions, by the name a spec uses.
REGISTRY: dict[str, type[Intervention]] = {
    "none": Control,
    "lawa": LAWA,
    "anytime": Anytime,
    "gstack": Gstack,
    "bimix": BiMix,
}

SPEC_FORMS = "none, " + ", ".join(f"{n}:key=value,..." for n in REGISTRY if n != "none") + ", or path/to/file.py:ClassName"


def parse_key_values(spec: str, text: str) -> dict[str, str]:
    """``k=5,every=8`` -> {"k": "5", "every": "8"}; malformed pairs and repeated keys are errors."""
    out: dict[str, str] = {}
    if not text.strip():
        return out
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise UserError(f"bad intervention spec {spec!r}: {part.strip()!r} is not key=value (e.g. lawa:k=5,every=1000)")
        if key in out:
            raise UserError(f"bad intervention spec {spec!r}: key {key!r} given twice")
        out[key] = value
    return out


def build(cls: type[Intervention], spec: str, raw: dict[str, Any]) -> Intervention:
    if issubclass(cls, DeclaredIntervention):
        return cls(**raw)
    # A plain Intervention subclass (Control, a minimal plugin) declares no parameters.
    validate_params(cls.name, getattr(cls, "PARAMS", ()), raw)
    return cls()


def parse_intervention(spec: str | None) -> Intervention:
    """The intervention a spec string names, with validated parameters (defaults filled)."""
    if spec is None:
        return Control()
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"empty intervention spec; use {SPEC_FORMS}")
    spec = spec.strip()
    if ".py:" in spec or spec.endswith(".py"):
        head, sep, rest = spec.partition(".py:")
        if not sep or not rest.strip():
            raise UserError(f"intervention plugin spec {spec!r} names no class; use path/to/file.py:ClassName")
        class_name, _, args = rest.partition(":")
        cls = load_plugin_class(head + ".py", class_name.strip())
        iv = build(cls, spec, parse_key_values(spec, args))
        if cls.name == Control.name and cls is not Control:
            iv.name = class_name.strip()  # a plugin that sets no name must not be recorded as the control
        return iv
    name, _, args = spec.partition(":")
    name = name.strip().lower()
    cls = REGISTRY.get(name)
    if cls is None:
        raise UserError(f"unknown intervention {name!r}; use {SPEC_FORMS}")
    return build(cls, spec, parse_key_values(spec, args))


def describe_registry(width: int = 100) -> str:
    """Per built-in: what it does relative to its paper (``SUMMARY``), then its accepted keys (for --help)."""
    import textwrap

    blocks = []
    for name, cls in REGISTRY.items():
        summary = getattr(cls, "SUMMARY", "")
        text = textwrap.fill(summary, width, subsequent_indent="    ") if summary else name
        keys = textwrap.fill(accepted_keys(name, getattr(cls, "PARAMS", ())), width, initial_indent="    ",
                             subsequent_indent="      ")
        blocks.append(text + "\n" + keys)
    return "\n".join(blocks)
