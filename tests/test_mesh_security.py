"""CURVE: allow-listed keys connect with their role; unknown keys cannot connect."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from mesh_agents import Echo, Ping

from engine import cli
from engine.errors import EngineError
from engine.mesh import Broker, MeshClient, Node
from engine.mesh.security import CurveClient, CurveServer, generate_keys
from engine.messages import AgentId

pytestmark = pytest.mark.timeout(60)
HB = 0.1


def test_keys_generate_cli_writes_pairs_with_roles(tmp_path: Path) -> None:
    assert cli.main(["keys", "generate", str(tmp_path / "k")]) == 0
    server = CurveServer.from_dir(tmp_path / "k")
    assert sorted(r.value for r in server.roles.values()) == ["monitor", "orchestrator", "worker"]
    assert (tmp_path / "k" / "worker.key_secret").stat().st_mode & 0o077 == 0
    with pytest.raises(EngineError, match="does not exist"):
        CurveClient.from_dir(tmp_path / "k", "nobody")


def test_curve_allow_list_and_roles(tmp_path: Path) -> None:
    keys, strangers = tmp_path / "keys", tmp_path / "strangers"
    generate_keys(keys)
    generate_keys(strangers)
    # strangers share the broker's public key but hold keys the broker never allowed
    (strangers / "broker.key").write_bytes((keys / "broker.key").read_bytes())
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, curve_dir=str(keys))
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"echo": Echo}, heartbeat=HB, curve_dir=str(keys)),
            MeshClient(ep, heartbeat=HB, curve_dir=str(keys)) as c,
        ):
            assert (await c.send(Ping(1), to=AgentId("echo", "s"), timeout=5)).n == 2
            # unknown key: the handshake fails, nothing ever registers
            with pytest.raises(TimeoutError, match="no mesh broker answered"):
                await MeshClient(ep, heartbeat=HB, curve_dir=str(strangers)).start(timeout=0.7)
            # no CURVE at all against a CURVE broker: same
            with pytest.raises(TimeoutError):
                await MeshClient(ep, heartbeat=HB).start(timeout=0.5)
            # a worker key may not register as an orchestrator
            with pytest.raises(EngineError, match="may only register as worker"):
                await MeshClient(ep, heartbeat=HB, curve_dir=str(keys), curve_key="worker").start(
                    timeout=5
                )
            assert (await c.send(Ping(2), to=AgentId("echo", "s"), timeout=5)).n == 3
            assert len(b.peers()) == 2  # only the two allow-listed peers ever registered

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        b.stop()
    assert b.stats["unauthorized"] == 1
