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
to a node inside its credit window); request/reply round trip sequentially (p50/p99;
raw and engine interleaved in 6 blocks so the machine's load drift hits both alike) and
with 100 in flight (throughput, p50/p99). Every workload runs with and without CURVE;
both sets of processes are up together and used in turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
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
#: the agent class(es) the nodes host (``engine node --agents``)
AGENTS = os.environ.get("MESH_BENCH_AGENTS", "mesh_bench_agents:Bench")


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: no orphans


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(args: list[str], ready: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(ROOT)]))
    p = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
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
            if p.stdout is not None:
                p.stdout.close()


def _pct(samples: list[float], q: float) -> float:
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))]


# ----------------------------------------------------------------------------- raw ceiling


class RawSetup:
    """The raw-pyzmq ceiling: its broker and nodes, and a blocking DEALER client."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], keys: str | None) -> None:
        port = _free_port()
        ep = f"tcp://127.0.0.1:{port}"
        extra = [keys] if keys else []
        raw = str(HERE / "_mesh_raw.py")
        procs.append(_spawn([sys.executable, raw, "broker", str(port), *extra], "ready"))
        procs.append(_spawn([sys.executable, raw, "node", ep, *extra], "ready"))
        procs.append(_spawn([sys.executable, raw, "node", ep, *extra], "ready"))
        self.ctx: zmq.Context[Any] = zmq.Context()
        sock = self.sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 30_000)
        if keys:
            _mesh_raw.curve_client(sock, keys, "orchestrator")
        sock.connect(ep)
        time.sleep(0.3)
        sock.send_multipart([b"R", b"0", BLOB])  # warm-up + connection check
        assert sock.poll(10_000), "raw broker did not answer"
        sock.recv_multipart()

    def oneway(self) -> float:
        send = self.sock.send_multipart
        t0 = time.perf_counter()
        for _ in range(ONEWAY_N):
            send([b"O", b"", BLOB])
        send([b"E", b"", b""])
        send([b"E", b"", b""])
        counted = sum(int(self.sock.recv_multipart()[2]) for _ in range(2))
        assert counted == ONEWAY_N
        return ONEWAY_N / (time.perf_counter() - t0)

    def sequential(self, n: int) -> list[float]:
        sock, lat = self.sock, []
        for _ in range(n):
            t = time.perf_counter()
            sock.send_multipart([b"R", b"1", BLOB])
            sock.recv_multipart()
            lat.append(time.perf_counter() - t)
        return lat

    def inflight(self) -> tuple[float, list[float]]:
        sock = self.sock
        sent_at: dict[bytes, float] = {}
        lat: list[float] = []
        t0 = time.perf_counter()
        nxt = 0
        for _ in range(100):
            key = str(nxt).encode()
            sent_at[key] = time.perf_counter()
            sock.send_multipart([b"R", key, BLOB])
            nxt += 1
        while len(lat) < INFLIGHT_N:
            _, key, _ = sock.recv_multipart()
            now = time.perf_counter()
            lat.append(now - sent_at.pop(key))
            if nxt < INFLIGHT_N:
                k2 = str(nxt).encode()
                sent_at[k2] = now
                sock.send_multipart([b"R", k2, BLOB])
                nxt += 1
        return INFLIGHT_N / (time.perf_counter() - t0), lat

    def close(self) -> None:
        self.sock.send_multipart([b"STOP"])
        self.sock.close(0)
        self.ctx.term()


# --------------------------------------------------------------------------------- engine


def _start_engine(procs: list[subprocess.Popen[bytes]], keys: str | None) -> str:
    port = _free_port()
    ep = f"tcp://127.0.0.1:{port}"
    curve = ["--curve-dir", keys] if keys else []
    cli = [sys.executable, "-m", "engine.cli"]
    procs.append(_spawn([*cli, "broker", "--bind", ep, *curve], "listening"))
    for name in ("n1", "n2"):
        procs.append(
            _spawn(
                [*cli, "node", "--connect", ep, "--agents", AGENTS, "--name", name, *curve],
                "serving",
            )
        )
    return ep


async def _compare(ep: str, keys: str | None, raw: RawSetup) -> dict[str, dict[str, float]]:
    from engine.mesh import MeshClient

    r: dict[str, float] = {}
    e: dict[str, float] = {}
    async with MeshClient(ep, curve_dir=keys) as c:
        any_bench = AgentId("bench", "*")
        for i in range(200):  # warm-up, and both nodes registered
            await c.send(Ping(i, BLOB), to=any_bench, timeout=10)
        r["oneway"] = raw.oneway()
        t0 = time.perf_counter()
        await c.tell_many([Tick(i, BLOB) for i in range(ONEWAY_N)], to=any_bench)
        e["oneway"] = ONEWAY_N / (time.perf_counter() - t0)
        # sequential round trips, interleaved in blocks so load drift hits both alike
        raw_lat: list[float] = []
        eng_lat: list[float] = []
        block = max(1, SEQ_N // 6)
        for _ in range(6):
            raw_lat += raw.sequential(block)
            for i in range(block):
                t = time.perf_counter()
                await c.send(Ping(i, BLOB), to=any_bench)
                eng_lat.append(time.perf_counter() - t)
        r["seq_p50"], r["seq_p99"] = _pct(raw_lat, 0.5), _pct(raw_lat, 0.99)
        e["seq_p50"], e["seq_p99"] = _pct(eng_lat, 0.5), _pct(eng_lat, 0.99)
        r["inflight_rate"], lat = raw.inflight()
        r["inflight_p50"], r["inflight_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
        lat = []
        per_worker = INFLIGHT_N // 100

        async def worker() -> None:
            for i in range(per_worker):
                t = time.perf_counter()
                await c.send(Ping(i, BLOB), to=any_bench)
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(100)))
        e["inflight_rate"] = per_worker * 100 / (time.perf_counter() - t0)
        e["inflight_p50"], e["inflight_p99"] = _pct(lat, 0.5), _pct(lat, 0.99)
    return {"raw": r, "engine": e}


def run_pair(keys: str | None) -> dict[str, dict[str, float]]:
    """Raw ceiling and engine side by side (both sets of processes up, used in turn)."""
    import uvloop

    with _procs() as procs:
        raw = RawSetup(procs, keys)
        try:
            ep = _start_engine(procs, keys)
            return uvloop.run(_compare(ep, keys, raw))
        finally:
            raw.close()


# ---------------------------------------------------------------------------------- report


def measure() -> dict[str, dict[str, float]]:
    from engine.mesh.security import generate_keys

    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate_keys(tmp)
        for label, keys in (("plain", None), ("curve", tmp)):
            pair = run_pair(keys)
            results[f"raw/{label}"] = pair["raw"]
            results[f"engine/{label}"] = pair["engine"]
    return results


def report(results: dict[str, dict[str, float]]) -> list[str]:
    lines = [
        "| setup | one-way msg/s | seq p50 µs | seq p99 µs | 100 in flight req/s "
        "| in-flight p50 µs | in-flight p99 µs |",
        "|---|---|---|---|---|---|---|",
    ]
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


def test_mesh_against_raw_pyzmq_ceiling(benchmark: Any, bench_report: list[str]) -> None:
    results = benchmark.pedantic(measure, rounds=1, iterations=1)
    bench_report.extend(["mesh (benches/bench_mesh.py):", *report(results)])
    benchmark.extra_info.update({k: v for k, v in results.items()})
    for label in ("plain", "curve"):
        throughput, p50 = ratios(results, label)
        assert throughput >= 0.5, f"{label}: one-way {throughput:.2f} of the raw ceiling"
        assert p50 <= 2.0, f"{label}: round-trip p50 {p50:.2f}x the raw ceiling"


if __name__ == "__main__":
    print("\n".join(report(measure())))
