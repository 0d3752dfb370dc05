"""A package's names loaded on first use (PEP 562): the packages whose modules are costly to import, or
import each other (api/, export/), name where each of their names lives instead of importing it."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["names_loaded_on_use"]


def names_loaded_on_use(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """The ``__getattr__`` of ``package``: a name of ``homes`` is imported from its module (``homes[name]``,
    relative to the package) when first asked for, then kept in the package; any other name is missing."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{home}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
