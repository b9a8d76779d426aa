"""``engine dlq list|replay``: the broker's dead letters."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import TYPE_CHECKING

from engine.cli import CommandError
from engine.cli._common import run_coro
from engine.cli._mesh import add_hmac_arguments, hmac_keys

if TYPE_CHECKING:
    from engine.mesh._signing import Keys
    from engine.mesh._store import DeadLetter

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    from engine.mesh._store import open_store
    from engine.messages import decode

    store = open_store(args.store, create=False)  # read-only: never creates one
    try:
        letters = store.dead_letters(args.limit)
        if args.ids:
            wanted = set(args.ids)
            letters = [d for d in letters if d.id in wanted]
        if args.action == "list":
            for d in letters:
                env = decode(d.envelope)
                print(
                    json.dumps(
                        {
                            "id": d.id,
                            "message": d.key,
                            "kind": env.kind.name,
                            "recipient": str(env.recipient) if env.recipient else None,
                            "topic": str(env.topic) if env.topic else None,
                            "payload_type": env.payload_type,
                            "attempts": d.attempts,
                            "reason": d.reason,
                            "at": d.at,
                        }
                    )
                )
            return 0
        if not args.connect:
            raise CommandError("engine dlq replay needs --connect tcp://BROKER:PORT", 2)
        keys = hmac_keys(args)
        replayed, again, failed = run_coro(_replay(args, letters, keys))
        # A letter goes only once the mesh took it: replayed, or dead-lettered again (the
        # broker stored it anew). One whose replay failed otherwise stays, to try later.
        store.remove_dead_letters(replayed + again)
    finally:
        store.close()
    print(
        f"replayed {len(replayed)} dead letter(s); dead-lettered again {len(again)}; "
        f"failed {len(failed)}"
    )
    for letter_id, why in failed:
        print(f"  dead letter {letter_id} not replayed: {why}")
    return 0 if not again and not failed else 1


async def _replay(
    args: argparse.Namespace, letters: list[DeadLetter], keys: Keys | None
) -> tuple[list[int], list[int], list[tuple[int, str]]]:
    import msgspec

    from engine.errors import DeadlineExceeded, EngineError, RemoteError, UndeliverableError
    from engine.mesh.client import MeshClient
    from engine.messages import decode

    client = MeshClient(args.connect, curve_dir=args.curve_dir, name="dlq-replay", hmac_key=keys)
    try:
        await client.start(timeout=args.timeout)
    except (TimeoutError, EngineError) as exc:
        raise CommandError(f"cannot reach the broker at {args.connect}: {exc}") from None
    replayed: list[int] = []
    again: list[int] = []
    failed: list[tuple[int, str]] = []
    try:
        for d in letters:
            # a fresh id from this tool: the message never completed, and the reply
            # (awaited, then discarded) comes back here
            env = msgspec.structs.replace(decode(d.envelope), id=client.ids.next(), attempt=0)
            try:
                await asyncio.wait_for(client.submit(env), args.timeout)
            except RemoteError:
                pass  # the handler ran (and raised): the message was delivered
            except UndeliverableError as exc:
                if str(exc).startswith("dead-lettered"):
                    again.append(d.id)
                else:
                    failed.append((d.id, str(exc)))
                continue
            except (TimeoutError, DeadlineExceeded):
                failed.append((d.id, f"no answer within {args.timeout} s"))
                continue
            except EngineError as exc:
                failed.append((d.id, str(exc)))
                continue
            replayed.append(d.id)
    finally:
        await client.close()
    return replayed, again, failed


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dlq",
        help="list or replay the broker's dead letters",
        description="List the dead letters in a broker's store, or replay them through a "
        "running broker. Exit status 1 when a replay failed (those letters stay).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("action", choices=["list", "replay"], help="what to do")
    p.add_argument(
        "--store", required=True, help="the broker's store URL (sqlite:///PATH, postgresql://...)"
    )
    p.add_argument("--connect", default=None, help="broker endpoint (replay)")
    p.add_argument("--curve-dir", default=None, help="CURVE keys (engine keys generate DIR)")
    add_hmac_arguments(p)
    p.add_argument(
        "--id", dest="ids", type=int, action="append", default=None, help="only this id (repeat)"
    )
    p.add_argument("--limit", type=int, default=1000, help="at most this many letters")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per replayed message")
    p.set_defaults(func=run)
