"""The transport registry: what ``Runtime(mesh=...)`` and friends resolve through.

The runtime knows transports only by this registry, never by import: a package that
provides one registers a factory (``register_transport("mesh", MeshTransport)``) when it
is imported. The ``engine`` package names the module providing each built-in kind
(:func:`provide`), so the first ``Runtime(mesh=...)`` imports that module, which
registers its factory; nothing in ``engine.runtime`` imports a transport's package.
A leaf module (it imports nothing from the engine), so ``import engine`` stays cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.runtime._transport import Transport

__all__ = ["provide", "register_transport", "transport_for"]

TransportFactory = Callable[[str], "Transport"]

_factories: dict[str, TransportFactory] = {}
_providers: dict[str, str] = {}  # kind -> module whose import registers it


def register_transport(kind: str, factory: TransportFactory) -> None:
    """Make ``Runtime(**{kind: address})`` build its transport as ``factory(address)``."""
    if not isinstance(kind, str) or not kind.isidentifier():
        raise ValueError(f"transport kind must be an identifier, got {kind!r}")
    if not callable(factory):
        raise TypeError(f"transport factory for {kind!r} must be callable, got {factory!r}")
    _factories[kind] = factory


def provide(kind: str, module: str) -> None:
    """Name the module that registers ``kind`` when imported (imported on first use)."""
    _providers.setdefault(kind, module)


def transport_for(kind: str, address: str) -> Transport:
    """Build the ``kind`` transport for ``address`` (importing its provider if needed)."""
    factory = _factories.get(kind)
    if factory is None and kind in _providers:
        importlib.import_module(_providers[kind])
        factory = _factories.get(kind)
    if factory is None:
        known = ", ".join(sorted({*_factories, *_providers})) or "none"
        raise ValueError(f"no {kind!r} transport is registered (registered: {known})")
    return factory(address)
