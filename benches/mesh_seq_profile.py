"""Where a sequential mesh round trip spends its CPU, per process (benches/bench_mesh.py setup).

Run (under the shared lock, ~20 s)::

    flock /tmp/bench.lock .venv/bin/python benches/mesh_seq_profile.py            # CPU/round trip
    flock /tmp/bench.lock .venv/bin/python benches/mesh_seq_profile.py --perf-stat # ns clock
    flock /tmp/bench.lock .venv/bin/python benches/mesh_seq_profile.py --strace    # syscalls
    flock /tmp/bench.lock .venv/bin/python benches/mesh_seq_profile.py --py-spy    # + py-spy
    flock /tmp/bench.lock .venv/bin/python benches/mesh_seq_profile.py --python    # no sockets
    flock /tmp/bench.lock .venv/bin/python benches/mesh_seq_profile.py --micro     # FrameSocket

Starts ``engine broker`` + 2 x ``engine node`` (``mesh_bench_agents:Bench``) and the
raw-pyzmq ceiling (``benches/_mesh_raw.py``) exactly as the benchmark does, then runs
``--n`` sequential round trips against each and prints the CPU time (``/proc/PID/stat``
utime + stime deltas) per round trip of every process. With ``--py-spy`` each engine
process is also sampled by ``py-spy record --format raw`` during a second engine loop; the
collapsed stacks land in ``--out`` (``broker.txt``, ``node.txt``, ``client.txt``) and the
top self/inclusive frames are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import bench_mesh
from mesh_bench_agents import Ping

from engine.messages import AgentId

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all threads) in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def summarize(path: Path, top: int) -> list[str]:
    """Top frames of a py-spy ``--format raw`` file by self and inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    lines = [f"{path.name}: {total} samples"]
    lines += [f"  self {n / total:6.1%}  {f}" for f, n in own.most_common(top)]
    lines += [f"  incl {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    return lines


def perf_stat(pids: list[int]) -> list[subprocess.Popen[bytes]]:
    """``perf stat`` of each process (task-clock, context switches) until SIGINT."""
    return [
        subprocess.Popen(
            ["perf", "stat", "-x", ",", "-e", "task-clock,context-switches", "-p", str(pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for pid in pids
    ]


def perf_stat_read(procs: list[subprocess.Popen[bytes]], n: int) -> list[str]:
    out = []
    for p in procs:
        p.send_signal(2)
        _, err = p.communicate(timeout=30)
        vals = {
            ln.split(",")[2]: float(ln.split(",")[0])
            for ln in err.decode().splitlines()
            if ln.count(",") >= 2 and ln.split(",")[0].replace(".", "").isdigit()
        }
        ms, cs = vals.get("task-clock", 0.0), vals.get("context-switches", 0.0)
        out.append(f"{ms * 1000 / n:6.1f} us task-clock, {cs / n:4.1f} context switches")
    return out


def strace(pids: list[int], names: list[str], prefix: str = "") -> list[subprocess.Popen[bytes]]:
    """``strace -c -f`` of each process into ``STRACE/strace_<prefix><name>.txt``."""
    return [
        subprocess.Popen(
            ["strace", "-c", "-f", "-p", str(pid), "-o", f"{STRACE}/strace_{prefix}{name}.txt"],
            stderr=subprocess.DEVNULL,
        )
        for pid, name in zip(pids, names, strict=True)
    ]


def strace_stop(tracers: list[subprocess.Popen[bytes]]) -> None:
    for t in tracers:
        t.send_signal(2)
        t.wait(30)


async def loop_of(c: Any, n: int) -> None:
    to = AgentId("bench", "*")
    for i in range(n):
        await c.send(Ping(i, bench_mesh.BLOB), to=to)


async def engine_loop(ep: str, n: int, pids: list[int], spy: list[str] | None) -> list[str]:
    from engine.mesh import MeshClient

    async with MeshClient(ep) as c:
        to = AgentId("bench", "*")
        for i in range(300):
            await c.send(Ping(i, bench_mesh.BLOB), to=to, timeout=10)
        names = ["broker", "node1", "node2", "client"]
        before = [cpu_seconds(p) for p in pids]
        t0 = time.perf_counter()
        for i in range(n):
            await c.send(Ping(i, bench_mesh.BLOB), to=to)
        wall = time.perf_counter() - t0
        after = [cpu_seconds(p) for p in pids]
        out = [f"engine: {wall / n * 1e6:.0f} us wall per round trip"]
        out += [
            f"  {name:7s} {(a - b) / n * 1e6:6.1f} us CPU per round trip"
            for name, a, b in zip(names, after, before, strict=True)
        ]
        if STRACE:
            tracers = strace(pids, names)
            await asyncio.sleep(1.0)
            await loop_of(c, n)
            strace_stop(tracers)
        if INSTRUCTIONS:
            stats = perf_stat(pids)
            await asyncio.sleep(0.5)  # perf attached
            await loop_of(c, n)
            names = ["broker", "node1", "node2", "client"]
            for name, line in zip(names, perf_stat_read(stats, n), strict=True):
                out.append(f"  {name:7s} {line} per round trip")
        if spy is not None:
            quiet: dict[str, Any] = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            if spy_paths:
                procs = [
                    subprocess.Popen([*spy, "--pid", str(pid), "-o", str(path)], **quiet)
                    for pid, path in zip(pids, spy_paths, strict=True)
                ]
            else:  # perf: one recorder for all processes
                procs = [subprocess.Popen(spy, **quiet)]
            await asyncio.sleep(1.0)  # py-spy attached
            for i in range(n):
                await c.send(Ping(i, bench_mesh.BLOB), to=to)
            for p in procs:
                p.wait(60)
        return out


spy_paths: list[Path] = []
INSTRUCTIONS = False
STRACE = ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=5000, help="sequential round trips per loop")
    ap.add_argument("--py-spy", action="store_true", help="also sample with py-spy")
    ap.add_argument("--native", action="store_true", help="py-spy --native")
    ap.add_argument("--perf", action="store_true", help="perf record all 4 processes instead")
    ap.add_argument("--strace", action="store_true", help="strace -c each engine process")
    ap.add_argument("--micro", action="store_true", help="only: FrameSocket vs pyzmq per call")
    ap.add_argument(
        "--python", action="store_true", help="only: Python cost per process, sockets faked"
    )
    ap.add_argument(
        "--perf-stat",
        action="store_true",
        help="perf stat task-clock and context switches per round trip and process (ns clock)",
    )
    ap.add_argument("--out", default="profiles/reports/mesh_seq", help="py-spy output dir")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    if args.micro or args.python:
        import _mesh_inproc

        lines = _mesh_inproc.micro() if args.micro else []
        print("\n".join(lines + (_mesh_inproc.python_costs() if args.python else [])))
        return
    global INSTRUCTIONS, STRACE
    INSTRUCTIONS = args.perf_stat
    if args.strace:
        STRACE = args.out
        Path(args.out).mkdir(parents=True, exist_ok=True)
    import uvloop

    me = os.getpid()
    with bench_mesh._procs() as procs:
        raw = bench_mesh.RawSetup(procs, None)
        raw.sequential(300)
        rpids = [p.pid for p in procs[:3]]
        before = [cpu_seconds(p) for p in [*rpids, me]]
        t0 = time.perf_counter()
        raw.sequential(args.n)
        wall = time.perf_counter() - t0
        after = [cpu_seconds(p) for p in [*rpids, me]]
        print(f"raw: {wall / args.n * 1e6:.0f} us wall per round trip")
        names = ["broker", "node1", "node2", "client"]
        for name, a, b in zip(names, after, before, strict=True):
            print(f"  {name:7s} {(a - b) / args.n * 1e6:6.1f} us CPU per round trip")
        if STRACE:
            tracers = strace([*rpids, me], names, "raw_")
            time.sleep(1.0)
            raw.sequential(args.n)
            strace_stop(tracers)
        if args.perf_stat:
            stats = perf_stat([*rpids, me])
            time.sleep(0.5)
            raw.sequential(args.n)
            for name, line in zip(names, perf_stat_read(stats, args.n), strict=True):
                print(f"  {name:7s} {line} per round trip")
        raw.close()
        ep = bench_mesh._start_engine(procs, None)
        pids = [p.pid for p in procs[3:6]] + [me]
        spy: list[str] | None = None
        if args.perf:
            secs = max(2, int(args.n * 400e-6) + 1)
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            spy = ["perf", "record", "-F", "4999", "-g", "-o", str(out / "perf.data")]
            spy += ["-p", ",".join(map(str, pids)), "--", "sleep", str(secs)]
            spy_paths[:] = []
        elif args.py_spy:
            exe = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
            secs = max(2, int(args.n * 400e-6) + 1)
            spy = [exe, "record", "--format", "raw", "--rate", "997", "-d", str(secs)]
            spy += ["--native"] if args.native else []
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            spy_paths[:] = [out / f"{n}.txt" for n in ("broker", "node1", "node2", "client")]
        print("\n".join(uvloop.run(engine_loop(ep, args.n, pids, spy))))
        if spy is not None:
            for path in spy_paths:
                if path.exists():
                    print("\n".join(summarize(path, args.top)))


if __name__ == "__main__":
    main()
