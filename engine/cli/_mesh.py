"""Flags the mesh commands share (``engine broker``, ``node``, ``dlq``): the HMAC key."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from engine.cli import CommandError

if TYPE_CHECKING:
    from engine.mesh._signing import Keys

__all__ = ["add_hmac_arguments", "hmac_keys"]


def add_hmac_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hmac-key-file",
        default=None,
        metavar="FILE",
        help="require HMAC-SHA256 signed frames, keys in FILE (one per line: the first "
        "signs, all verify; chmod 600); or set ENGINE_HMAC_KEY",
    )
    p.add_argument(
        "--hmac-key",
        default=None,
        help="the HMAC key itself (visible to `ps`: prefer --hmac-key-file or ENGINE_HMAC_KEY)",
    )


def hmac_keys(args: argparse.Namespace) -> Keys | None:
    """The keys from ``--hmac-key-file``, ``--hmac-key`` or ``ENGINE_HMAC_KEY`` (in that order)."""
    from engine.errors import EngineError
    from engine.mesh._signing import load_keys

    if args.hmac_key is not None:
        print(
            "warning: --hmac-key shows the key to every user of this host (ps); "
            "use --hmac-key-file or ENGINE_HMAC_KEY",
            file=sys.stderr,
        )
    try:
        return load_keys(args.hmac_key, args.hmac_key_file)
    except EngineError as exc:
        raise CommandError(str(exc), 2) from None
