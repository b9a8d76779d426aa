"""``engine keys generate DIR``: CURVE key pairs for the broker and its peers."""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    from engine.mesh.security import generate_keys

    names = tuple(n for n in args.names.split(",") if n)
    for path in generate_keys(args.dir, names):
        print(path)
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "keys",
        help="CURVE key management",
        description="Create and manage the CURVE key pairs of a mesh.",
    )
    ks = p.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    g = ks.add_parser(
        "generate",
        help="create broker + peer key pairs in DIR",
        description="Create the broker's key pair and one per peer name in DIR.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g.add_argument("dir", help="folder for the key files")
    g.add_argument(
        "--names",
        default="orchestrator,worker,monitor",
        help="peer key names (a name that is a role gets that role)",
    )
    g.set_defaults(func=run)
