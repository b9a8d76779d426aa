"""Mesh benchmarks: the engine's broker + 2 nodes against a raw-pyzmq ROUTER broker, same run.

Run: ``.venv/bin/python benches/bench_mesh.py`` (prints a table and the acceptance ratios)
or ``.venv/bin/python -m pytest benches/bench_mesh.py -s`` (same, asserting them).

Each setup is 3 processes on 127.0.0.1 (broker + 2 nodes; the client is this process):
* raw: ``benches/_mesh_raw.py`` — poll-then-drain ROUTER forwarding client -> round-robin
  node -> client, no envelopes, no acks, no reliability (the ceiling);
* engine: ``engine broker`` + 2 x ``engine node`` hosting ``mesh_bench_agents:Bench``,
  client :class:`engine.mesh.MeshClient` on uvloop.

Workloads (64-byte payloads): one-way routed throughput (raw: until both nodes counted
everything; engine: ``tell_many`` until the broker has ACKed every message, i.e. handed it
to a node inside its credit window); request/reply round trip sequentially (p50/p99) and
with 100 in flight (throughput, p50/p99). Every workload runs with and without CURVE.
"""

from __future__ import annotations

import asyncio
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import zmq

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _mesh_raw  # noqa: E402
from mesh_bench_agents import Ping, Tick  # noqa: E402

from engine.messages import AgentId  # noqa: E402

ONEWAY_N = int(os.environ.get("MESH_BENCH_ONEWAY", "100000"))
SEQ_N = int(os.environ.get("MESH_BENCH_SEQ", "3000"))
INFLIGHT_N = int(os.environ.get("MESH_BENCH_INFLIGHT", "30000"))
BLOB = b"x" * 64
#: ``mesh_bench_agents:PlainBench`` measures the node without the Runtime.
AGENTS = os.environ.get("MESH_BENCH_AGENTS", "mesh_bench_agents:Bench")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(args: list[str], ready: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    assert p.stdout is not None
    buf, deadline = b"", time.monotonic() + 30
    while ready.encode() not in buf:
        if time.monotonic() > deadline or p.poll() is not None:
            p.kill()
            raise RuntimeError(f"{args} did not start: {buf!r}")
        if select.select([p.stdout], [], [], 0.1)[0]:
            buf += os.read(p.stdout.fileno(), 4096)
    return p


@contextmanager
def _procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


# ----------------------------------------------------------------------------- raw ceiling


def run_raw(keys: str | None) -> dict[str, float]:
    port = _free_port()
    ep = f"tcp://127.0.0.1:{port}"
    extra = [keys] if keys else []
    raw = str(HERE / "_mesh_raw.py")
    with _procs() as procs:
        procs.append(_spawn([sys.executable, raw, "broker", str(port), *extra], "ready"))
        procs.append(_spawn([sys.executable, raw, "node", ep, *extra], "ready"))
        procs.append(_spawn([sys.executable, raw, "node", ep, *extra], "ready"))
        ctx: zmq.Context[Any] = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 30_000)
        if keys:
            _mesh_raw.curve_client(sock, keys, "orchestrator")
        sock.connect(ep)
        time.sleep(0.3)
        out: dict[str, float] = {}
        try:
            # warm-up + connection check
            sock.send_multipart([b"R", b"0", BLOB])
            assert sock.poll(10_000), "raw broker did not answer"
            sock.recv_multipart()
            # one-way
            t0 = time.perf_counter()
            send = sock.send_multipart
            for _ in range(ONEWAY_N):
                send([b"O", b"", BLOB])
            send([b"E", b"", b""])
            send([b"E", b"", b""])
            counted = 0
            for _ in range(2):
                assert sock.poll(60_000), "raw one-way did not finish"
                counted += int(sock.recv_multipart()[2])
            out["oneway"] = ONEWAY_N / (time.perf_counter() - t0)
            assert counted == ONEWAY_N
            # sequential round trips
            lat: list[float] = []
            for _ in range(SEQ_N):
                t = time.perf_counter()
                send([b"R", b"1", BLOB])
                sock.recv_multipart()
                lat.append(time.perf_counter() - t)
            out["seq_p50"], out["seq_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
            # 100 in flight
            sent_at: dict[bytes, float] = {}
            lat = []
            t0 = time.perf_counter()
            nxt = 0
            for _ in range(100):
                key = str(nxt).encode()
                sent_at[key] = time.perf_counter()
                send([b"R", key, BLOB])
                nxt += 1
            while len(lat) < INFLIGHT_N:
                _, key, _ = sock.recv_multipart()
                now = time.perf_counter()
                lat.append(now - sent_at.pop(key))
                if nxt < INFLIGHT_N:
                    k2 = str(nxt).encode()
                    sent_at[k2] = now
                    send([b"R", k2, BLOB])
                    nxt += 1
            out["inflight_rate"] = INFLIGHT_N / (time.perf_counter() - t0)
            out["inflight_p50"], out["inflight_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
            sock.send_multipart([b"STOP"])
        finally:
            sock.close(0)
            ctx.term()
    return out


# --------------------------------------------------------------------------------- engine


async def _engine_client(ep: str, keys: str | None) -> dict[str, float]:
    from engine.mesh import MeshClient

    out: dict[str, float] = {}
    async with MeshClient(ep, curve_dir=keys) as c:
        any_bench = AgentId("bench", "*")
        for i in range(200):  # warm-up, and both nodes registered
            await c.send(Ping(i, BLOB), to=any_bench, timeout=10)
        t0 = time.perf_counter()
        await c.tell_many([Tick(i, BLOB) for i in range(ONEWAY_N)], to=any_bench)
        out["oneway"] = ONEWAY_N / (time.perf_counter() - t0)
        lat: list[float] = []
        for i in range(SEQ_N):
            t = time.perf_counter()
            await c.send(Ping(i, BLOB), to=any_bench)
            lat.append(time.perf_counter() - t)
        out["seq_p50"], out["seq_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
        lat = []
        per_worker = INFLIGHT_N // 100

        async def worker() -> None:
            for i in range(per_worker):
                t = time.perf_counter()
                await c.send(Ping(i, BLOB), to=any_bench)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(100)))
        out["inflight_rate"] = per_worker * 100 / (time.perf_counter() - t0)
        out["inflight_p50"], out["inflight_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
    return out


def run_engine(keys: str | None) -> dict[str, float]:
    port = _free_port()
    ep = f"tcp://127.0.0.1:{port}"
    curve = ["--curve-dir", keys] if keys else []
    cli = [sys.executable, "-m", "engine.cli"]
    with _procs() as procs:
        procs.append(_spawn([*cli, "broker", "--bind", ep, *curve], "listening"))
        for name in ("n1", "n2"):
            procs.append(_spawn([*cli, "node", "--connect", ep, "--agents", AGENTS,
                                 "--name", name, *curve], "serving"))
        import uvloop

        return uvloop.run(_engine_client(ep, keys))


# ---------------------------------------------------------------------------------- report


def measure() -> dict[str, dict[str, float]]:
    from engine.mesh.security import generate_keys

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate_keys(tmp)
        for label, keys in (("plain", None), ("curve", tmp)):
            results[f"raw/{label}"] = run_raw(keys)
            results[f"engine/{label}"] = run_engine(keys)
    return results


def report(results: dict[str, dict[str, float]]) -> list[str]:
    lines = ["| setup | one-way msg/s | seq p50 µs | seq p99 µs | 100 in flight req/s "
             "| in-flight p50 µs | in-flight p99 µs |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['oneway']:,.0f} | {r['seq_p50'] * 1e6:.0f} | {r['seq_p99'] * 1e6:.0f}"
            f" | {r['inflight_rate']:,.0f} | {r['inflight_p50'] * 1e6:.0f}"
            f" | {r['inflight_p99'] * 1e6:.0f} |"
        )
    lines.append("")
    for label in ("plain", "curve"):
        raw, eng = results[f"raw/{label}"], results[f"engine/{label}"]
        lines.append(
            f"{label}: one-way engine/raw = {eng['oneway'] / raw['oneway']:.2f} (need >= 0.50); "
            f"seq p50 engine/raw = {eng['seq_p50'] / raw['seq_p50']:.2f} (need <= 2.00); "
            f"100-in-flight rate engine/raw = {eng['inflight_rate'] / raw['inflight_rate']:.2f}"
        )
    return lines


def ratios(results: dict[str, dict[str, float]], label: str) -> tuple[float, float]:
    raw, eng = results[f"raw/{label}"], results[f"engine/{label}"]
    return eng["oneway"] / raw["oneway"], eng["seq_p50"] / raw["seq_p50"]


def test_mesh_against_raw_pyzmq_ceiling(benchmark: Any) -> None:
    results = benchmark.pedantic(measure, rounds=1, iterations=1)
    print("\n" + "\n".join(report(results)))
    benchmark.extra_info.update({k: v for k, v in results.items()})
    for label in ("plain", "curve"):
        throughput, p50 = ratios(results, label)
        assert throughput >= 0.5, f"{label}: one-way {throughput:.2f} of the raw ceiling"
        assert p50 <= 2.0, f"{label}: round-trip p50 {p50:.2f}x the raw ceiling"


if __name__ == "__main__":
    print("\n".join(report(measure())))
