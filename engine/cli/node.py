"""``engine node``: run a mesh node hosting agent classes."""

from __future__ import annotations

import argparse
import asyncio
import signal

from engine.cli import CommandError
from engine.cli._common import run_coro, setup_logging
from engine.cli._mesh import add_hmac_arguments, hmac_keys

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    from engine.errors import EngineError, RegistrationRefused
    from engine.mesh import load_agent_classes
    from engine.mesh.node import Node

    setup_logging(args.verbose)
    keys = hmac_keys(args)

    try:
        agents = load_agent_classes(args.agents)
    except EngineError as exc:
        raise CommandError(f"--agents: {exc}", 2) from None

    async def main() -> None:
        node = Node(
            args.connect,
            agents,
            name=args.name,
            concurrency=args.concurrency,
            curve_dir=args.curve_dir,
            curve_key=args.curve_key,
            heartbeat=args.heartbeat,
            hmac_key=keys,
        )
        stopped = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopped.set)
        try:
            await node.start(timeout=args.connect_timeout)
        except TimeoutError as exc:
            raise CommandError(str(exc)) from None
        except RegistrationRefused as exc:
            raise CommandError(str(exc), 2) from None
        srv = None
        try:
            if args.metrics_port is not None:
                from engine.observe.instrument import serve
                from engine.observe.metrics import default_metrics

                # the process-wide metrics: the hosted agents' LLM, cache and tool metrics
                # go there, the node's counters are added to them
                srv = serve(
                    node, args.metrics_port, host=args.metrics_host, metrics=default_metrics()
                )
            print(
                f"node {node.name} serving {', '.join(node.types)} via {args.connect}",
                flush=True,
            )
            if srv is not None:
                print(f"metrics on {srv.url}/metrics", flush=True)
            await stopped.wait()
        finally:
            if srv is not None:
                srv.close()
            await node.close()

    run_coro(main())
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "node",
        help="run a mesh node hosting agent classes",
        description="Run a mesh node: it connects to a broker and serves the given agent "
        "classes to the mesh.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--connect", required=True, help="broker endpoint, tcp://HOST:5555")
    p.add_argument(
        "--agents", required=True, help="pkg.module:AgentClass[,type=pkg.module:Other,...]"
    )
    p.add_argument("--name", default=None, help="node name (default: host-pid)")
    p.add_argument("--concurrency", type=int, default=64, help="deliveries handled at once")
    p.add_argument("--curve-dir", default=None, help="CURVE keys (engine keys generate DIR)")
    p.add_argument("--curve-key", default="worker", help="key pair name in --curve-dir")
    p.add_argument("--heartbeat", type=float, default=0.5, help="seconds between heartbeats")
    p.add_argument(
        "--connect-timeout", type=float, default=30.0, help="seconds to wait for the broker"
    )
    add_hmac_arguments(p)
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve /metrics (the node's counters and its agents' LLM, cache and tool "
        "metrics), /debug/profile, /healthz and /readyz on this port",
    )
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO, tracebacks")
    p.set_defaults(func=run)
