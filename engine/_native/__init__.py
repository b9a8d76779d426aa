"""Compiled modules (built from ``ext/*.pyx``) and how the engine finds them.

``ENGINE_NO_EXTENSIONS=1`` makes every face fall back to its pure-Python reference twin;
``ENGINE_REQUIRE_NATIVE=1`` (set in CI) turns a missing compiled module into
:class:`engine.errors.NativeUnavailable` instead of a silent fallback.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from engine.errors import NativeUnavailable

__all__ = ["HAS_NATIVE", "MODULES", "load", "native_info"]

#: Compiled modules the engine ships (one per ``ext/_<name>.pyx``).
MODULES: tuple[str, ...] = ("_frames", "_hnsw", "_router", "_scheduler", "_vectors")

_loaded: dict[str, ModuleType | None] = {}


def _disabled() -> bool:
    return os.environ.get("ENGINE_NO_EXTENSIONS", "") not in ("", "0")


def _required() -> bool:
    return os.environ.get("ENGINE_REQUIRE_NATIVE", "") not in ("", "0")


def load(name: str) -> ModuleType | None:
    """Import ``engine._native.<name>``; ``None`` when disabled or not built (unless required)."""
    if name in _loaded:
        return _loaded[name]
    module: ModuleType | None = None
    if not _disabled():
        try:
            module = importlib.import_module(f"engine._native.{name}")
        except ImportError as exc:
            if _required():
                raise NativeUnavailable(
                    f"engine._native.{name} is not built ({exc}); run `make build` "
                    "or unset ENGINE_REQUIRE_NATIVE"
                ) from exc
    _loaded[name] = module
    return module


def native_info() -> dict[str, str | None]:
    """Map each compiled module to the file it was loaded from (``None`` if unavailable)."""
    info: dict[str, str | None] = {}
    for name in MODULES:
        try:
            mod = load(name)
        except NativeUnavailable:
            mod = None
        info[name] = getattr(mod, "__file__", None) if mod is not None else None
    return info


def _has_native() -> bool:
    try:
        return all(load(name) is not None for name in MODULES)
    except NativeUnavailable:
        return False


HAS_NATIVE: bool = _has_native()
