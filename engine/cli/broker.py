"""``engine broker``: run the mesh broker (a ZeroMQ ROUTER)."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from engine.cli._common import hmac_key, setup_logging

__all__ = ["register", "run"]

DEFAULT_BIND = "tcp://0.0.0.0:5555"


def run(args: argparse.Namespace) -> int:
    from engine.mesh.broker import Broker

    setup_logging(args.verbose)
    broker = Broker(
        args.bind or [DEFAULT_BIND],
        curve_dir=args.curve_dir,
        store=args.store,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        heartbeat=args.heartbeat,
        max_attempts=args.max_attempts,
        hmac_key=hmac_key(args.hmac_key),
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


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker",
        help="run the mesh broker (ZeroMQ ROUTER)",
        description="Run the mesh broker: nodes and clients connect to it; it routes, acks, "
        "redelivers and dead-letters their messages.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--bind",
        action="append",
        default=None,
        help=f"endpoint to bind (repeatable); default {DEFAULT_BIND}",
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
        "--policy",
        default="least_outstanding",
        choices=["least_outstanding", "round_robin"],
        help="how a message for an agent type picks a node",
    )
    p.add_argument("--hmac-key", default=None, help="require HMAC-SHA256 signed frames")
    p.add_argument(
        "--audit",
        default=None,
        metavar="FILE",
        help="append node.registered/node.rejected records to this hash-chained log",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO, tracebacks")
    p.set_defaults(func=run)
