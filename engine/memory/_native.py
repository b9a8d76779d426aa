"""The vector glue in use: ``engine._native._vectors`` when built, else the reference twin."""

from __future__ import annotations

from types import ModuleType

from engine._native import load
from engine.memory import _vectors_py

__all__ = ["NATIVE", "V", "VPy"]

NATIVE: ModuleType | None = load("_vectors")
VPy: ModuleType = _vectors_py
V: ModuleType = NATIVE if NATIVE is not None else _vectors_py
