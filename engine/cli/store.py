"""``engine store migrate|version URL``: the state store's schema.

``migrate`` creates the store when it does not exist and applies every missing migration
in order (one transaction); ``version`` reads an existing store only and never creates one.
"""

from __future__ import annotations

import argparse

from engine.cli._common import run_coro

__all__ = ["register", "run"]


async def _version(url: str) -> tuple[int, int]:
    import engine.store
    from engine.store.migrations import LATEST

    async with engine.store.open(url, create=False, migrate=False) as store:
        return await store.schema_version(), LATEST


def run(args: argparse.Namespace) -> int:
    import engine.store
    from engine.cli import CommandError
    from engine.errors import SchemaVersionError, StoreError, StoreInputError, StoreURLError

    try:
        if args.action == "migrate":
            before, after = run_coro(engine.store.migrate(args.url))
            if before == after:
                print(f"{args.url}: schema {after}, up to date")
            else:
                print(f"{args.url}: schema {before} -> {after}")
            return 0
        current, latest = run_coro(_version(args.url))
        state = "up to date" if current == latest else f"this code writes {latest}"
        print(f"{args.url}: schema {current} ({state})")
        return 0
    except (StoreURLError, StoreInputError) as exc:
        raise CommandError(str(exc), code=2) from None
    except SchemaVersionError as exc:
        raise CommandError(str(exc), code=1) from None
    except StoreError as exc:
        raise CommandError(str(exc), code=1) from None


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("store", help="state store schema: migrate or show its version")
    p.add_argument("action", choices=["migrate", "version"], help="what to do")
    p.add_argument(
        "url",
        metavar="URL",
        help="store URL: sqlite:///relative.db, sqlite:////absolute.db or postgresql://...",
    )
    p.set_defaults(func=run)
