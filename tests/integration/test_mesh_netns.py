"""Multi-host mesh on Linux network namespaces: broker, two nodes and the client each on
their own "host" (namespace with its own IP), joined by veth pairs on a bridge.

The test creates and always deletes the namespaces, veths and bridge; it needs root
(CI runs as root) and is skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from mesh_agents import Ping, Pong, Sleep
from mesh_procs import broker, node, processes

from engine.mesh import MeshClient
from engine.mesh.security import generate_keys
from engine.messages import AgentId

pytestmark = [
    pytest.mark.netns,
    pytest.mark.timeout(90),
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 `ip` is not installed"),
]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


class Hosts:
    """A bridge in the root namespace (the client's host) and one namespace per host."""

    def __init__(self, names: list[str]) -> None:
        tag = secrets.token_hex(3)
        self.subnet = f"10.{77 + int(tag[:2], 16) % 100}.{int(tag[2:4], 16)}"
        self.bridge = f"mbr{tag}"
        self.ns = {name: f"mesh-{name}-{tag}" for name in names}
        self.addr = {name: f"{self.subnet}.{i + 1}" for i, name in enumerate(names)}
        self.client_addr = f"{self.subnet}.254"
        self._veths: list[str] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.client_addr}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for i, (name, ns) in enumerate(self.ns.items()):
            outer, inner = f"mv{tag}{i}", f"mv{tag}{i}p"
            _ip("netns", "add", ns)
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            self._veths.append(outer)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", self.bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{self.addr[name]}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")

    def prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns[name]]

    def delete(self) -> None:
        for ns in self.ns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)
        for veth in self._veths:
            subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=10)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    h = Hosts(["broker", "node1", "node2"])
    try:
        yield h
    finally:
        h.delete()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in h.ns.values()), "namespaces left behind"


def test_broker_and_nodes_on_separate_hosts(hosts: Hosts, tmp_path: Path) -> None:
    """Across hosts the broker needs CURVE (a plaintext non-loopback bind is refused)."""
    port = 5555
    ep = f"tcp://{hosts.addr['broker']}:{port}"
    keys = str(tmp_path / "keys")
    generate_keys(keys)
    curve = ("--curve-dir", keys)
    with processes() as procs:
        procs.append(broker(port, *curve, host="0.0.0.0", prefix=hosts.prefix("broker")))
        victim = node(ep, "node1", *curve, prefix=hosts.prefix("node1"))
        procs.append(victim)
        procs.append(node(ep, "node2", *curve, prefix=hosts.prefix("node2")))

        async def main() -> None:
            async with MeshClient(ep, heartbeat=0.2, curve_dir=keys) as c:
                first = await asyncio.gather(
                    *(c.send(Ping(i), to=AgentId("echo", f"k{i}"), timeout=10) for i in range(60))
                )
                assert [r.n for r in first] == [i + 1 for i in range(60)]
                assert {r.node for r in first} == {"node1", "node2"}
                # a host dies mid-run: its work moves to the other host, nothing is lost
                sem = asyncio.Semaphore(30)

                async def one(i: int) -> Pong:
                    async with sem:
                        reply: Pong = await c.send(
                            Sleep(0.01, i), to=AgentId("echo", f"j{i}"), timeout=30
                        )
                        return reply

                run = asyncio.ensure_future(asyncio.gather(*(one(i) for i in range(150))))
                while c.stats["replies"] < 60 + 40:
                    await asyncio.sleep(0.005)
                victim.kill()
                replies = await asyncio.wait_for(run, 60)
                assert sorted(r.n for r in replies) == list(range(150))
                assert Counter(r.node for r in replies)["node2"] > 0

        asyncio.run(main())
