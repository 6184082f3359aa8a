"""Lazy re-exports for package `__init__` modules.

Packages re-export their public names without importing the modules behind them, so
`import circuit_atlas` (and the CLI's start-up) stays fast and torch, FastAPI or SQLite code is
imported only when a name is first used.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, MutableMapping


def lazy_exports(
    package: str, exports: Mapping[str, str], namespace: MutableMapping[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """`(__getattr__, __dir__, __all__)` for a package whose names live in `exports`
    (public name -> defining module). A name is imported on first use and then cached in the
    package's namespace."""
    public = sorted(exports)

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__, public
