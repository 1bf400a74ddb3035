"""Public names of a package imported on first use, so importing the package stays cheap (no torch, no
onnxruntime until a name that needs it is touched)."""

from __future__ import annotations

import importlib
from typing import Callable


def lazy_exports(package: str, where: dict[str, str],
                 namespace: dict) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(__getattr__, __dir__) for a package whose public name N lives in module where[N]; a resolved name is
    stored in the package's `namespace` so the next lookup is a plain attribute."""

    def __getattr__(name: str):
        if name in where:
            value = getattr(importlib.import_module(where[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return namespace["__all__"]

    return __getattr__, __dir__
