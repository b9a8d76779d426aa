"""Operating the mesh: dead-letter replay, HMAC keys, key files, exit codes, safe defaults."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
import zmq.auth
from mesh_agents import Echo, Ping

from engine import cli
from engine.cli.broker import DEFAULT_BIND, exposed
from engine.errors import EngineError
from engine.mesh import Broker, Node
from engine.mesh._signing import load_keys
from engine.mesh._store import DeadLetter, MeshWrites, SqliteStore
from engine.mesh.security import CurveServer, generate_keys
from engine.messages import AgentId, Envelope, Kind, MessageId, encode, encode_payload

pytestmark = pytest.mark.timeout(60)
HB = 0.1


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 30))


def _store_dead_letter(path: Path, type_: str = "flaky") -> None:
    """A dead letter in the broker's SQLite store, as a broker writes it."""
    env = Envelope(
        MessageId("old-client", 7),
        Kind.SEND,
        recipient=AgentId(type_, "k"),
        payload_type="Ping",
        payload=encode_payload(Ping(3)),
    )
    store = SqliteStore(path)
    store.apply(MeshWrites(dead=[DeadLetter("old-client:7", encode(env), "dead-lettered", 5)]))
    store.close()


def test_a_replay_that_fails_again_keeps_its_letter_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "mesh.db"
    _store_dead_letter(db)
    url = f"sqlite:///{db}"
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, route_timeout=0.3, startup_grace=0.1)
    b.start()
    ep = b.endpoints[0]
    try:
        # nobody hosts 'flaky': the replay is refused (unroutable) and the letter stays
        code = cli.main(["dlq", "replay", "--store", url, "--connect", ep, "--timeout", "5"])
        out = capsys.readouterr().out
        assert code == 1 and "replayed 0" in out and "failed 1" in out and "unroutable" in out
        assert cli.main(["dlq", "list", "--store", url]) == 0
        (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert row["message"] == "old-client:7" and row["recipient"] == "flaky/k"

        async def fixed() -> int:
            async with Node(ep, {"flaky": Echo}, name="fixed", heartbeat=HB):
                args = ["dlq", "replay", "--store", url, "--connect", ep, "--timeout", "5"]
                return await asyncio.to_thread(cli.main, args)

        assert run(fixed()) == 0
        assert "replayed 1" in capsys.readouterr().out
        assert cli.main(["dlq", "list", "--store", url]) == 0
        assert capsys.readouterr().out == ""
    finally:
        b.stop()


@pytest.mark.parametrize("how", ["file", "env"])
def test_dlq_replay_reaches_an_hmac_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    db = tmp_path / "mesh.db"
    _store_dead_letter(db)
    key_file = tmp_path / "hmac.key"
    key_file.write_bytes(b"k1\n")
    key_file.chmod(0o600)
    b = Broker("tcp://127.0.0.1:0", heartbeat=HB, hmac_key=b"k1")
    b.start()
    ep = b.endpoints[0]
    args = ["dlq", "replay", "--store", f"sqlite:///{db}", "--connect", ep, "--timeout", "5"]
    if how == "file":
        args += ["--hmac-key-file", str(key_file)]
    else:
        monkeypatch.setenv("ENGINE_HMAC_KEY", "k1")

    async def replay() -> int:
        async with Node(ep, {"flaky": Echo}, name="fixed", heartbeat=HB, hmac_key=b"k1") as node:
            code = await asyncio.to_thread(cli.main, args)
            assert node.stats["executed"] == 1
            return code

    try:
        assert run(replay()) == 0
        assert "replayed 1" in capsys.readouterr().out
    finally:
        b.stop()


def test_an_hmac_key_file_must_be_private(tmp_path: Path) -> None:
    key = tmp_path / "hmac.key"
    key.write_bytes(b"new\nold\n")
    key.chmod(0o644)
    with pytest.raises(EngineError, match="chmod 600"):
        load_keys(file=key)
    key.chmod(0o600)
    keys = load_keys(file=key)
    assert keys is not None and keys.keys == [b"new", b"old"]


def test_a_crashed_broker_exits_non_zero(monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(self: Broker, io: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Broker, "_loop", crash)
    assert cli.main(["broker", "--bind", "tcp://127.0.0.1:0"]) == 1


def test_the_broker_listens_on_loopback_unless_told(capsys: pytest.CaptureFixture[str]) -> None:
    assert DEFAULT_BIND.startswith("tcp://127.0.0.1:")
    assert cli.build_parser().parse_args(["broker"]).bind is None
    assert not exposed("tcp://127.0.0.1:5555") and not exposed("tcp://[::1]:5555")
    assert exposed("tcp://0.0.0.0:5555") and exposed("tcp://*:5555") and exposed("tcp://eth0:1")
    assert not exposed("ipc:///tmp/x") and not exposed("inproc://x")
    assert cli.main(["broker", "--bind", "tcp://0.0.0.0:0"]) == 2
    assert "--insecure" in capsys.readouterr().err


def test_rerunning_keys_generate_does_not_reauthorize_a_revoked_key(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert cli.main(["keys", "generate", str(keys)]) == 0
    (keys / "authorized" / "worker.key").unlink()  # revoke the worker key
    assert cli.main(["keys", "generate", str(keys)]) == 0
    assert sorted(p.name for p in (keys / "authorized").iterdir()) == [
        "monitor.key",
        "orchestrator.key",
    ]
    assert sorted(r.value for r in CurveServer.from_dir(keys).roles.values()) == [
        "monitor",
        "orchestrator",
    ]


def test_secret_key_files_are_never_readable_by_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[int] = []
    create = zmq.auth.create_certificates

    def spy(key_dir: str, name: str, metadata: Any = None) -> tuple[str, str]:
        seen.append(stat.S_IMODE(os.stat(key_dir).st_mode))  # the folder they appear in
        return create(key_dir, name, metadata=metadata)

    monkeypatch.setattr(zmq.auth, "create_certificates", spy)
    generate_keys(tmp_path / "keys")
    assert seen and all(mode & 0o077 == 0 for mode in seen)
    for secret in (tmp_path / "keys").glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert not list((tmp_path / "keys").glob(".keys-*"))  # the private folders are gone


def test_node_metrics_show_its_agents_llm_metrics_and_its_counters() -> None:
    """``engine node --metrics-port`` serves the process-wide metrics (where the hosted
    agents' LLM metrics go) with the node's own counters added."""
    import urllib.request

    from mesh_procs import Proc

    from engine.mesh import MeshClient

    b = Broker("tcp://127.0.0.1:0", heartbeat=HB)
    b.start()
    try:
        node = Proc(
            ["node", "--connect", b.endpoints[0], "--agents", "mesh_agents:Metered",
             "--name", "metered-1", "--heartbeat", str(HB), "--metrics-port", "0"],
            "/metrics",
        )  # fmt: skip
        try:
            url = node.line.split("metrics on ", 1)[1].split()[0]

            async def ask() -> Any:
                async with MeshClient(b.endpoints[0], name="metered-c") as c:
                    return await c.send(Ping(7), AgentId("metered", "k"), timeout=20)

            assert run(ask()).n == 7
            with urllib.request.urlopen(url, timeout=10) as r:
                text = r.read().decode()
            assert (
                'engine_llm_tokens_total{kind="prompt",model="node-test-model"} 7.0' in text
                or 'engine_llm_tokens_total{model="node-test-model",kind="prompt"} 7.0' in text
            ), text
            assert 'engine_node_agents{agent_type="metered",node="metered-1"} 1.0' in text
            assert 'engine_messages_total{kind="executed"}' in text
        finally:
            node.stop()
    finally:
        b.stop()
