"""Compiled modules (built from ``ext/*.pyx``) and how the engine finds them.

``ENGINE_NO_EXTENSIONS=1`` makes every face fall back to its pure-Python reference twin;
``ENGINE_REQUIRE_NATIVE=1`` (set in CI) turns a missing compiled module into
:class:`engine.errors.NativeUnavailable` instead of a silent fallback. An install whose
build could not compile a module (``setup.py`` then leaves ``BUILD_FAILED.txt`` here) warns
once, with a ``RuntimeWarning``, the first time such a module is looked for.
"""

from __future__ import annotations

import importlib
import logging
import os
import warnings
from pathlib import Path
from types import ModuleType

from engine.errors import NativeUnavailable

__all__ = ["HAS_NATIVE", "MODULES", "load", "native_info"]

#: Compiled modules the engine ships (one per ``ext/_<name>.pyx``).
MODULES: tuple[str, ...] = ("_frames", "_hnsw", "_router", "_scheduler", "_vectors")

_loaded: dict[str, ModuleType | None] = {}
_why: dict[str, str] = {}  # name -> why it could not be imported

log = logging.getLogger("engine.native")


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
            full = f"engine._native.{name}"
            built = not (isinstance(exc, ModuleNotFoundError) and exc.name == full)
            _why[name] = f"{type(exc).__name__}: {exc}"
            if not built:
                _warn_build_failed()
            # built but not importable (libzmq symbols not found through pyzmq...): say so
            log.log(logging.INFO if built else logging.DEBUG, "%s unavailable: %s", full, exc)
            if _required():
                cause = (
                    f"is built but failed to import ({exc}); fix that"
                    if built
                    else f"is not built ({exc}); run `make build`"
                )
                raise NativeUnavailable(f"{full} {cause} or unset ENGINE_REQUIRE_NATIVE") from exc
    _loaded[name] = module
    return module


_warned = False


def _warn_build_failed() -> None:
    """Once per process, if this install's build left a note of the modules it could not
    compile (a note is only written by a failed build, so a normal install costs nothing)."""
    global _warned
    note = Path(__file__).with_name("BUILD_FAILED.txt")
    if _warned or not note.exists():
        return
    _warned = True
    failed = ", ".join(line.split(":", 1)[0] for line in note.read_text().splitlines() if line)
    warnings.warn(
        f"agent-engine was installed without compiled modules ({failed}): their build failed, "
        "so the engine runs their pure-Python twins, several times slower. Reinstall with a "
        f"C compiler and the Python headers (the reasons are in {note}).",
        RuntimeWarning,
        stacklevel=3,
    )


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


HAS_NATIVE: bool = _has_native()
