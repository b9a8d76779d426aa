"""The error a command raises for its user (a leaf module: command helpers import it
without importing the ``engine.cli`` package that runs them)."""

from __future__ import annotations

__all__ = ["CommandError"]


class CommandError(Exception):
    """A command failed in a way its user can act on: printed as one line, exit ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
