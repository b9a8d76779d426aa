"""Broker audit records: node.registered / node.rejected on real sockets, then verified."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
import zmq
import zmq.auth
from mesh_agents import Echo, Ping

from engine import cli
from engine.errors import EngineError
from engine.mesh import Broker, MeshClient, Node
from engine.mesh import protocol as P
from engine.mesh.security import fingerprint, generate_keys
from engine.messages import AgentId
from engine.observe.audit import NODE_REGISTERED, NODE_REJECTED, AuditLog, records, verify

pytestmark = pytest.mark.timeout(60)
HB = 0.1


def wait_records(path: Path, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        got = list(records(path)) if path.exists() else []
        if len(got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def test_register_and_rejections_are_audited_and_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "audit.log"
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, audit=str(path))
    b.start()
    ep = b.endpoints[0]

    async def main() -> None:
        async with (
            Node(ep, {"echo": Echo}, name="n1", heartbeat=HB),
            MeshClient(ep, heartbeat=HB, name="c1") as c,
        ):
            assert (await c.send(Ping(1), to=AgentId("echo", "a"), timeout=5)).n == 2
        raw = zmq.Context.instance().socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(ep)
        # a role the protocol does not know
        bad = msgspec.msgpack.encode({"name": "intruder", "role": "admin"})
        raw.send_multipart(P.frames(P.FrameKind.REGISTER, bad))
        # a monitor claiming to host agents
        mon = P.encode(P.Register("mon", role=P.Role.MONITOR, types=["echo"]))
        raw.send_multipart(P.frames(P.FrameKind.REGISTER, mon))
        await asyncio.to_thread(wait_records, path, 4)  # both arrived before LINGER 0 drops them
        raw.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 30))
        got = wait_records(path, 4)
    finally:
        b.stop()
    by_event = [(r["event"], r["data"].get("peer")) for r in got]
    assert (NODE_REGISTERED, "n1") in by_event
    assert (NODE_REGISTERED, "c1") in by_event
    n1 = next(r["data"] for r in got if r["data"].get("peer") == "n1")
    assert n1["role"] == "worker" and n1["types"] == ["echo"] and n1["key"] is None
    rejected = [r["data"] for r in got if r["event"] == NODE_REJECTED]
    assert [(d["peer"], d["reason"]) for d in rejected] == [(None, "bad role"), ("mon", "bad role")]
    assert "admin" in rejected[0]["detail"]
    assert len(got) == 4  # the Ping itself wrote nothing

    assert verify(path).records == 4
    assert cli.main(["audit", "verify", str(path)]) == 0
    lines = path.read_bytes().splitlines(keepends=True)
    record = orjson.loads(lines[0])
    record["data"]["role"] = "orchestrator"
    lines[0] = orjson.dumps(record, option=orjson.OPT_SORT_KEYS) + b"\n"
    path.write_bytes(b"".join(lines))
    capsys.readouterr()
    assert cli.main(["audit", "verify", str(path)]) == 1
    assert "edited" in capsys.readouterr().err


def test_curve_records_carry_the_key_fingerprint(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    with AuditLog(tmp_path / "audit.log") as audit:
        b = Broker("tcp://127.0.0.1:0", heartbeat=HB, curve_dir=str(keys), audit=audit)
        b.start()
        ep = b.endpoints[0]

        async def main() -> None:
            async with Node(ep, {"echo": Echo}, name="w", heartbeat=HB, curve_dir=str(keys)):
                with pytest.raises(EngineError, match="may only register as worker"):
                    await MeshClient(
                        ep, heartbeat=HB, curve_dir=str(keys), curve_key="worker"
                    ).start(timeout=5)

        try:
            asyncio.run(asyncio.wait_for(main(), 30))
            got = wait_records(audit.path, 2)
        finally:
            b.stop()
        head = audit.head
    worker_key = fingerprint(zmq.auth.load_certificate(str(keys / "worker.key"))[0])
    registered = [r["data"] for r in got if r["event"] == NODE_REGISTERED]
    rejected = [r["data"] for r in got if r["event"] == NODE_REJECTED]
    assert registered[0]["key"] == worker_key and registered[0]["role"] == "worker"
    assert rejected[0]["reason"] == "bad role" and worker_key in rejected[0]["detail"]
    assert verify(audit.path, head=head).records == len(got)


def test_broker_cli_accepts_audit_flag(tmp_path: Path) -> None:
    args = cli.build_parser().parse_args(["broker", "--audit", str(tmp_path / "a.log")])
    assert args.audit == str(tmp_path / "a.log")
    assert cli.build_parser().parse_args(["broker"]).audit is None
