"""``engine dlq list|replay``: the broker's dead letters."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from engine.cli._common import run_coro

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    from engine.mesh._store import open_store
    from engine.messages import decode

    store = open_store(args.store)
    letters = store.list_dead(args.limit)
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
        print("engine dlq replay needs --connect tcp://BROKER:PORT", file=sys.stderr)
        return 2

    async def replay() -> int:
        import msgspec

        from engine.mesh.client import MeshClient

        client = MeshClient(args.connect, curve_dir=args.curve_dir, name="dlq-replay")
        await client.start(timeout=10)
        done: list[int] = []
        try:
            for d in letters:
                # a fresh id from this tool: the message never completed, and the reply
                # (awaited, then discarded) comes back here
                env = msgspec.structs.replace(decode(d.envelope), id=client.ids.next(), attempt=0)
                await asyncio.wait_for(client.submit(env), args.timeout)
                done.append(d.id)
        finally:
            store.remove_dead(done)
            await client.close()
        print(f"replayed {len(done)} dead letter(s)")
        return 0

    code = run_coro(replay())
    store.close()
    return code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "dlq",
        help="list or replay the broker's dead letters",
        description="List the dead letters in a broker's store, or replay them through a "
        "running broker.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("action", choices=["list", "replay"], help="what to do")
    p.add_argument("--store", required=True, help="the broker's store, sqlite:///PATH")
    p.add_argument("--connect", default=None, help="broker endpoint (replay)")
    p.add_argument("--curve-dir", default=None, help="CURVE keys (engine keys generate DIR)")
    p.add_argument(
        "--id", dest="ids", type=int, action="append", default=None, help="only this id (repeat)"
    )
    p.add_argument("--limit", type=int, default=1000, help="at most this many letters")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per replayed message")
    p.set_defaults(func=run)
