"""``engine broker``: run the mesh broker (a ZeroMQ ROUTER)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
from typing import Any

from engine.cli import CommandError
from engine.cli._common import setup_logging
from engine.cli._mesh import add_hmac_arguments, hmac_keys

__all__ = ["DEFAULT_BIND", "register", "run"]

DEFAULT_BIND = "tcp://127.0.0.1:5555"
log = logging.getLogger("engine.cli.broker")


def exposed(endpoint: str) -> bool:
    """Whether ``endpoint`` listens beyond this host (not loopback, ipc or inproc)."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", ""):
        return host == ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # an interface or host name: assume reachable from outside


def run(args: argparse.Namespace) -> int:
    from engine.errors import EngineError
    from engine.mesh.broker import Broker

    setup_logging(args.verbose)
    binds = args.bind or [DEFAULT_BIND]
    open_to = [b for b in binds if exposed(b)]
    if open_to and args.curve_dir is None:
        if not args.insecure:
            raise CommandError(
                f"{', '.join(open_to)} is reachable from other hosts, and without --curve-dir "
                "anyone there can join, read and forge traffic; add --curve-dir DIR, or "
                "--insecure to accept that",
                2,
            )
        logging.getLogger("engine.mesh.broker").warning(
            "INSECURE: plaintext and unauthenticated on %s (no --curve-dir)", ", ".join(open_to)
        )
    weights: dict[str, int] = {}
    for item in args.tenant_weight or ():
        tenant, _, weight = item.rpartition("=")
        if not tenant or not weight.isdigit():
            raise CommandError(f"--tenant-weight expects TENANT=WEIGHT, got {item!r}", 2)
        weights[tenant] = int(weight)
    try:
        broker = Broker(
            binds,
            curve_dir=args.curve_dir,
            store=args.store,
            metrics_port=args.metrics_port,
            metrics_host=args.metrics_host,
            hmac_key=hmac_keys(args),
            audit=args.audit,
            heartbeat=args.heartbeat,
            max_attempts=args.max_attempts,
            policy=args.policy,
            route_timeout=args.route_timeout,
            delivery_timeout=args.delivery_timeout,
            client_rate=args.client_rate,
            client_burst=args.client_burst,
            tenant_weights=weights,
        )
    except (EngineError, ValueError) as exc:
        raise CommandError(str(exc), 2) from None

    def stop(signum: int, frame: Any) -> None:
        broker.stop(timeout=0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        broker.start()
    except OSError as exc:  # e.g. the port is taken (zmq.ZMQError is an OSError)
        raise CommandError(f"cannot start the broker: {exc}") from None
    print(f"broker listening on {' '.join(broker.endpoints)}", flush=True)
    if broker.observe is not None:
        print(f"metrics on {broker.observe.url}/metrics", flush=True)
    while not broker.join(0.2):
        pass
    if broker.crashed is not None:
        raise CommandError(f"the broker crashed: {broker.crashed!r}")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "broker",
        help="run the mesh broker (ZeroMQ ROUTER)",
        description="Run the mesh broker: nodes and clients connect to it; it routes, acks, "
        "redelivers and dead-letters their messages. It listens on 127.0.0.1 unless told; "
        "a non-loopback --bind needs --curve-dir (or --insecure).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--bind",
        action="append",
        default=None,
        help=f"endpoint to bind (repeatable); default {DEFAULT_BIND}",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        help="allow a non-loopback --bind without --curve-dir (plaintext, no authentication)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics and /debug/profile on this port",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument("--curve-dir", default=None, help="CURVE keys (engine keys generate DIR)")
    add_hmac_arguments(p)
    p.add_argument(
        "--store",
        default=None,
        help="persistence: sqlite:///mesh.db or postgresql://USER@HOST/DB",
    )
    p.add_argument("--heartbeat", type=float, default=0.5, help="seconds (dead after 3)")
    p.add_argument("--max-attempts", type=int, default=5, help="deliveries before the DLQ")
    p.add_argument(
        "--route-timeout",
        type=float,
        default=10.0,
        help="seconds a message waits for a node of its type",
    )
    p.add_argument(
        "--delivery-timeout",
        type=float,
        default=300.0,
        help="seconds a node may hold a delivery unanswered before it goes to another node",
    )
    p.add_argument(
        "--policy",
        default="least_outstanding",
        choices=["least_outstanding", "round_robin"],
        help="how a message for an agent type picks a node",
    )
    p.add_argument(
        "--client-rate",
        type=float,
        default=None,
        help="submissions per second per peer (token bucket; over it: NACK BUSY with a hint)",
    )
    p.add_argument("--client-burst", type=float, default=None, help="token bucket size")
    p.add_argument(
        "--tenant-weight",
        action="append",
        default=None,
        metavar="TENANT=WEIGHT",
        help="fair-share weight of a tenant (repeatable; default 1 each)",
    )
    p.add_argument(
        "--audit",
        default=None,
        metavar="FILE",
        help="append node.registered/node.rejected records to this hash-chained log",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO, tracebacks")
    p.set_defaults(func=run)
