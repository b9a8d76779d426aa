"""Compiled modules (built from ``ext/*.pyx``) and the one place that chooses between each
and its pure-Python twin.

Every face (routing, scheduling, memory, mesh frames) asks :func:`pick` for its compiled
class or module and gets the twin when the compiled one is disabled or missing:

- ``ENGINE_NO_EXTENSIONS=1`` chooses every twin on purpose, silently;
- ``ENGINE_REQUIRE_NATIVE=1`` (set in CI) turns a missing compiled module into
  :class:`engine.errors.NativeUnavailable`;
- otherwise a missing compiled module falls back to its twin with one
  :class:`engine.errors.NativeFallbackWarning` per module: the twins are 25-250x slower,
  which must not go unnoticed.

Nothing is imported until a face asks for it: ``import engine._native`` costs nothing, and
:data:`HAS_NATIVE` loads every module on first access.
"""

from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType
from typing import TYPE_CHECKING, Any

from engine.errors import NativeFallbackWarning, NativeUnavailable

__all__ = ["HAS_NATIVE", "MODULES", "load", "native_info", "pick"]

#: Compiled modules the engine ships (one per ``ext/_<name>.pyx``).
MODULES: tuple[str, ...] = ("_frames", "_hnsw", "_router", "_scheduler", "_vectors")

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}  # name -> why it could not be imported
_not_built: set[str] = set()  # missing altogether (not: built but failing to import)
_warned: set[str] = set()

if TYPE_CHECKING:
    #: True when every compiled module is importable (loads them all on first access).
    HAS_NATIVE: bool


def _disabled() -> bool:
    return os.environ.get("ENGINE_NO_EXTENSIONS", "") not in ("", "0")


def _required() -> bool:
    return os.environ.get("ENGINE_REQUIRE_NATIVE", "") not in ("", "0")


def _state(name: str) -> str:
    """Why ``name`` is missing, in words (after a failed :func:`load`)."""
    if name in _not_built:
        return f"not built ({_why[name]})"
    # built but not importable (libzmq symbols not found through pyzmq...): say so
    return f"built but failed to import ({_why.get(name, 'unknown')})"


def load(name: str) -> ModuleType | None:
    """Import ``engine._native.<name>`` once; ``None`` when disabled or not importable
    (:class:`NativeUnavailable` instead when ``ENGINE_REQUIRE_NATIVE=1``). Silent: faces
    call :func:`pick`, which warns."""
    if name in _loaded:
        return _loaded[name]
    module: ModuleType | None = None
    if not _disabled():
        full = f"engine._native.{name}"
        try:
            module = importlib.import_module(full)
        except ImportError as exc:
            _why[name] = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ModuleNotFoundError) and exc.name == full:
                _not_built.add(name)
            if _required():
                fix = "run `make build`" if name in _not_built else "fix that"
                raise NativeUnavailable(
                    f"{full} is {_state(name)}; {fix} or unset ENGINE_REQUIRE_NATIVE"
                ) from exc
    _loaded[name] = module
    return module


def pick(name: str, attr: str | None, twin: Any) -> tuple[Any, Any]:
    """``(compiled, chosen)`` for a face: ``compiled`` is ``engine._native.<name>`` (or its
    attribute ``attr``) or ``None`` when disabled or missing; ``chosen`` is ``compiled``
    when there is one, else ``twin``. A missing module warns once (see the module doc)."""
    module = load(name)
    if module is None:
        if not _disabled() and name not in _warned:
            _warned.add(name)
            warnings.warn(
                f"engine._native.{name} is {_state(name)}: using the pure-Python "
                "twin, 25-250x slower. Run `make build` (or `pip install` a wheel), or set "
                "ENGINE_NO_EXTENSIONS=1 to choose the twins on purpose.",
                NativeFallbackWarning,
                stacklevel=2,
            )
        return None, twin
    compiled = module if attr is None else getattr(module, attr)
    return compiled, compiled


def native_info() -> dict[str, str | None]:
    """Map each compiled module to the file it was loaded from; ``None`` when disabled
    (``ENGINE_NO_EXTENSIONS``), ``"unavailable: <why>"`` when it could not be imported."""
    info: dict[str, str | None] = {}
    for name in MODULES:
        try:
            mod = load(name)
        except NativeUnavailable:
            mod = None
        if mod is not None:
            info[name] = getattr(mod, "__file__", None)
        elif name in _why:
            info[name] = f"unavailable: {_why[name]}"
        else:
            info[name] = None
    return info


def _has_native() -> bool:
    try:
        return all(load(name) is not None for name in MODULES)
    except NativeUnavailable:
        return False


def __getattr__(name: str) -> Any:
    if name == "HAS_NATIVE":
        return _has_native()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
