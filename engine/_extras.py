"""Optional dependencies: import one, or fail with an error that names the extra to install.

The core install (``pip install agent-engine-runtime``) brings msgspec, pyzmq, numpy,
uvloop, orjson and prometheus-client. Everything else is an extra, imported where a feature
first needs it::

    faiss = require("faiss", extra="memory", feature="engine.memory")

raises :class:`engine.errors.MissingExtraError` (an ``ImportError``) when FAISS is absent:
``engine.memory needs faiss: pip install 'agent-engine-runtime[memory]'``. A module that is
installed but fails to import for another reason (a broken wheel, a missing system library)
raises its own error unchanged, so the real cause stays visible.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType
from typing import Final

from engine.errors import MissingExtraError

__all__ = ["DISTRIBUTION", "EXTRAS", "available", "install_hint", "require"]

#: The name on the package index (the import package is ``engine``).
DISTRIBUTION: Final = "agent-engine-runtime"

#: Each extra and the distributions it installs (``pyproject.toml`` must agree: a test checks).
EXTRAS: Final[dict[str, tuple[str, ...]]] = {
    "memory": ("faiss-cpu",),
    "llm": ("openai",),
    "cli": ("rich",),
    "otel": ("opentelemetry-api",),
    "postgres": ("psycopg",),
    "langgraph": ("langgraph",),
    "embeddings": ("sentence-transformers",),
}


def install_hint(extra: str) -> str:
    """The pip command that installs ``extra``."""
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def require(module: str, *, extra: str, feature: str | None = None) -> ModuleType:
    """Import ``module``; if it is not installed, raise :class:`MissingExtraError` naming
    ``extra`` (and ``feature``, what needed it, e.g. ``"engine demo"``)."""
    if extra not in EXTRAS:
        raise ValueError(f"unknown extra {extra!r}; extras are: {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if not missing or not (module == missing or module.startswith(missing + ".")):
            raise  # the module exists but one of *its* imports is missing: show that
        who = feature or module
        raise MissingExtraError(
            f"{who} needs {missing}, which is not installed: {install_hint(extra)}",
            module=missing,
            extra=extra,
        ) from exc


def available(module: str) -> bool:
    """Whether ``module`` can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False
