"""The vector glue in use: ``engine._native._vectors`` when built, else the reference twin."""

from __future__ import annotations

from types import ModuleType

from engine._native import pick
from engine.memory import _vectors_py

__all__ = ["NATIVE", "V", "VPy"]

NATIVE: ModuleType | None
V: ModuleType
NATIVE, V = pick("_vectors", None, _vectors_py)
VPy: ModuleType = _vectors_py
