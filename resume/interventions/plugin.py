"""User interventions loaded from a file: ``path/to/file.py:ClassName``.

The class must subclass ``resume.interventions.base.Intervention`` (or ``DeclaredIntervention`` to
get validated ``key=value`` parameters). The file is imported with importlib under a private module
name, so two plugins with the same file name do not collide.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from checkpoints_cache.errors import UserError

from .base import Intervention


def load_plugin_class(path: str, class_name: str) -> type[Intervention]:
    """The ``Intervention`` subclass ``class_name`` defined in the Python file ``path``."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise UserError(f"intervention plugin file {path!r} does not exist; pass path/to/file.py:ClassName")
    if not class_name.isidentifier():
        raise UserError(f"bad class name {class_name!r} in intervention plugin spec; pass path/to/file.py:ClassName")
    resolved = file.resolve()
    module_name = "branchpoint_plugin_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, resolved)
        if spec is None or spec.loader is None:
            raise UserError(f"cannot import intervention plugin {path!r}: not a Python source file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[module_name]
            raise UserError(f"importing intervention plugin {path!r} failed: {type(e).__name__}: {e}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(
            n for n, v in vars(module).items()
            if isinstance(v, type) and issubclass(v, Intervention) and v.__module__ == module.__name__
        )
        raise UserError(
            f"{path!r} defines no class {class_name!r}; Intervention subclasses in it: {', '.join(found) or 'none'}"
        )
    if not (isinstance(cls, type) and issubclass(cls, Intervention)):
        raise UserError(
            f"{class_name!r} in {path!r} is not a subclass of resume.interventions.base.Intervention"
        )
    return cls
