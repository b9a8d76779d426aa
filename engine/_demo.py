"""``engine demo``: the main job; until the orchestrator lands, a showcase of what exists."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    Console().print("[bold]agent-engine[/bold]: nothing to show yet")
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("demo", help="run the main job (a showcase of the engine)")
    p.set_defaults(func=run)
