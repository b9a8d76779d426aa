"""``engine broker``, ``engine node``, ``engine keys generate``, ``engine dlq list|replay``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from typing import Any

__all__ = ["register"]


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _hmac(value: str | None) -> bytes | None:
    return value.encode() if value else None


def run_broker(args: argparse.Namespace) -> int:
    from engine.mesh.broker import Broker

    _logging(args.verbose)
    broker = Broker(
        args.bind,
        curve_dir=args.curve_dir,
        store=args.store,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        heartbeat=args.heartbeat,
        max_attempts=args.max_attempts,
        hmac_key=_hmac(args.hmac_key),
        policy=args.policy,
        route_timeout=args.route_timeout,
        audit=args.audit,
    )

    def stop(signum: int, frame: Any) -> None:
        broker.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    broker.start()
    print(f"broker listening on {' '.join(broker.endpoints)}", flush=True)
    if broker.observe is not None:
        print(f"metrics on {broker.observe.url}/metrics", flush=True)
    while broker._thread is not None and broker._thread.is_alive():
        broker._thread.join(0.2)
    return 0


def run_node(args: argparse.Namespace) -> int:
    from engine.mesh.node import Node

    _logging(args.verbose)

    async def main() -> None:
        node = Node(
            args.connect,
            args.agents,
            name=args.name,
            concurrency=args.concurrency,
            curve_dir=args.curve_dir,
            curve_key=args.curve_key,
            heartbeat=args.heartbeat,
            hmac_key=_hmac(args.hmac_key),
        )
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        await node.start(timeout=args.connect_timeout)
        srv = None
        try:
            if args.metrics_port is not None:
                from engine.observe.instrument import serve

                srv = serve(node, args.metrics_port, host=args.metrics_host)
            print(
                f"node {node.name} serving {', '.join(node.host.types)} "  # type: ignore[union-attr]
                f"via {args.connect}",
                flush=True,
            )
            if srv is not None:
                print(f"metrics on {srv.url}/metrics", flush=True)
            await stopped.wait()
        finally:
            if srv is not None:
                srv.close()
            await node.close()

    _run(main())
    return 0


def _run(coro: Any) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def run_keys(args: argparse.Namespace) -> int:
    from engine.mesh.security import generate_keys

    names = tuple(n for n in args.names.split(",") if n)
    for path in generate_keys(args.dir, names):
        print(path)
    return 0


def run_dlq(args: argparse.Namespace) -> int:
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

    code = 0

    async def main() -> None:
        nonlocal code
        code = await replay()

    _run(main())
    store.close()
    return code


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("broker", help="run the mesh broker (ZeroMQ ROUTER)")
    p.add_argument(
        "--bind",
        action="append",
        default=None,
        help="endpoint to bind (repeatable); default tcp://0.0.0.0:5555",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /debug/profile on this port",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument("--curve-dir", default=None, help="CURVE keys (engine keys generate DIR)")
    p.add_argument("--store", default=None, help="persistence, e.g. sqlite:///mesh.db")
    p.add_argument("--heartbeat", type=float, default=0.5, help="seconds (dead after 3)")
    p.add_argument("--max-attempts", type=int, default=5, help="deliveries before the DLQ")
    p.add_argument(
        "--route-timeout",
        type=float,
        default=10.0,
        help="seconds a message waits for a node of its type",
    )
    p.add_argument(
        "--policy", default="least_outstanding", choices=["least_outstanding", "round_robin"]
    )
    p.add_argument("--hmac-key", default=None, help="require HMAC-SHA256 signed frames")
    p.add_argument(
        "--audit",
        default=None,
        metavar="FILE",
        help="append node.registered/node.rejected records to this hash-chained log",
    )
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=lambda a: run_broker(_default_bind(a)))

    p = sub.add_parser("node", help="run a mesh node hosting agent classes")
    p.add_argument("--connect", required=True, help="broker endpoint, tcp://HOST:5555")
    p.add_argument(
        "--agents", required=True, help="pkg.module:AgentClass[,type=pkg.module:Other,...]"
    )
    p.add_argument("--name", default=None)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--curve-dir", default=None)
    p.add_argument("--curve-key", default="worker", help="key pair name in --curve-dir")
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument("--hmac-key", default=None)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /debug/profile on this port",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=run_node)

    p = sub.add_parser("keys", help="CURVE key management")
    ks = p.add_subparsers(dest="keys_command", required=True)
    g = ks.add_parser("generate", help="create broker + peer key pairs in DIR")
    g.add_argument("dir")
    g.add_argument(
        "--names",
        default="orchestrator,worker,monitor",
        help="peer key names (a name that is a role gets that role)",
    )
    g.set_defaults(func=run_keys)

    p = sub.add_parser("dlq", help="list or replay the broker's dead letters")
    p.add_argument("action", choices=["list", "replay"])
    p.add_argument("--store", required=True, help="the broker's store, sqlite:///PATH")
    p.add_argument("--connect", default=None, help="broker endpoint (replay)")
    p.add_argument("--curve-dir", default=None)
    p.add_argument("--id", dest="ids", type=int, action="append", default=None)
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=30.0, help="seconds per replayed message")
    p.set_defaults(func=run_dlq)


def _default_bind(args: argparse.Namespace) -> argparse.Namespace:
    if not args.bind:
        args.bind = ["tcp://0.0.0.0:5555"]
    return args
