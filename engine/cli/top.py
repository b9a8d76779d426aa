"""``engine top``: a live terminal view of a broker's, node's or runtime's ``/metrics``."""

from __future__ import annotations

import argparse
import time

from engine._extras import require

__all__ = ["register", "run"]


def run(args: argparse.Namespace) -> int:
    require("rich", extra="cli", feature="engine top")
    from rich.console import Console
    from rich.live import Live

    from engine.observe.top import fetch, render

    console = Console()
    url = args.url if "://" in args.url else f"http://{args.url}"
    if not url.rstrip("/").endswith("/metrics"):
        url = url.rstrip("/") + "/metrics"
    try:
        prev = fetch(url)
        if args.once:
            time.sleep(args.interval)
            console.print(render(prev, fetch(url), url))
            return 0
    except (OSError, ValueError) as exc:
        console.print(f"[red]engine top: cannot scrape {url}: {exc}[/red]")
        return 2
    with Live(render(None, prev, url), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(args.interval)
                try:
                    cur = fetch(url)
                except (OSError, ValueError) as exc:
                    live.update(f"[red]cannot scrape {url}: {exc}[/red] (retrying)")
                    continue
                live.update(render(prev, cur, url))
                prev = cur
        except KeyboardInterrupt:
            return 0


def _interval(text: str) -> float:
    value = float(text)
    if not 0.05 <= value <= 3600:
        raise argparse.ArgumentTypeError(f"interval must be in [0.05, 3600] seconds, got {text}")
    return value


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("top", help="live view of nodes, agent types, queues, throughput, latency")
    p.add_argument(
        "--url",
        default="http://127.0.0.1:9100/metrics",
        help="metrics endpoint of a broker, node or runtime (host:port is enough)",
    )
    p.add_argument("--interval", type=_interval, default=1.0, help="seconds between refreshes")
    p.add_argument(
        "--once",
        action="store_true",
        help="scrape twice, `interval` apart, print one frame and exit",
    )
    p.set_defaults(func=run)
