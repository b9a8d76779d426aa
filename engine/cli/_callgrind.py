"""Instruction counts of hot-path probes under ``valgrind --tool=callgrind``.

The counting half of the gate's instruction mode (``engine bench --instructions``): one
callgrind run of a small driver per tree, one dump per ``os.sched_yield`` marker, so probe
``i``'s ``run(k)`` lands in dump part ``2 * i + 2`` and nothing else is counted. The counts
are deterministic (``PYTHONHASHSEED=0``): identical code gives identical numbers, however
loaded the machine.

Startup is the slow part: callgrind instruments every instruction of the interpreter
importing numpy and ``engine`` (about 20 s of a 25 s run on a 2-core box). On x86-64 the
driver therefore starts with instrumentation off (``--instr-atstart=no``) and switches it
on itself once the probe module is imported, with the client request ``callgrind.h``'s
``CALLGRIND_START_INSTRUMENTATION`` issues: the same five no-op instructions, run from an
executable page through ctypes (natively they do nothing). The probe counts are identical
either way; the run takes about a third of the time. Elsewhere, or where the page cannot
be made executable, the whole run is instrumented.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from engine.errors import GateError

__all__ = ["count", "valgrind"]

#: ``unsigned long request(unsigned long args[6])`` for x86-64 (System V): valgrind.h's
#: special-instruction preamble (rotations of %rdi by 3, 13, 61, 51 = 128 bits: a no-op)
#: then ``xchg %rbx,%rbx``, the client request itself: %rdx = request(%rax), -1 natively.
_REQUEST_X86_64: Final = (
    "4889f8"  # mov %rdi,%rax
    "48c7c2ffffffff"  # mov $-1,%rdx
    "48c1c703" "48c1c70d" "48c1c73d" "48c1c733"  # rol $3/$13/$61/$51,%rdi
    "4887db"  # xchg %rbx,%rbx
    "4889d0"  # mov %rdx,%rax
    "c3"  # ret
)  # fmt: skip
#: VG_USERREQ_TOOL_BASE('C','T') + 4: CALLGRIND_START_INSTRUMENTATION.
_START_INSTRUMENTATION: Final = 0x43540004

#: Runs inside each side's tree under callgrind. argv: hotpath, k, request hex or "-",
#: probe names.
_DRIVER: Final = r"""
import gc, importlib.util, os, sys
spec = importlib.util.spec_from_file_location("_engine_hotpath", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
k = int(sys.argv[2])
if sys.argv[3] != "-":  # switch callgrind's instrumentation on: imports are done
    import ctypes, mmap
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except OSError as exc:
        print(f"INSTRUMENT-UNAVAILABLE {exc}", flush=True)
        sys.exit(3)
    page.write(bytes.fromhex(sys.argv[3]))
    addr = ctypes.addressof(ctypes.c_char.from_buffer(page))
    request = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_void_p)(addr)
    args = (ctypes.c_ulong * 6)(int(sys.argv[4]), 0, 0, 0, 0, 0)
    if request(ctypes.addressof(args)) != 0:
        print("INSTRUMENT-UNAVAILABLE the client request was not answered", flush=True)
        sys.exit(3)
names = sys.argv[5:] or sorted(mod.PROBES)
for name in names:
    try:
        run = mod.PROBES[name]()
        run(1)
        ok = True
    except Exception as exc:
        print(f"PROBE-ERROR {name}: {type(exc).__name__}: {exc}", flush=True)
        run, ok = None, False
    gc.collect()
    gc.disable()
    os.sched_yield()
    if ok:
        run(k)
    os.sched_yield()
    gc.enable()
    print(f"PROBE {name} {int(ok)}", flush=True)
"""


def valgrind() -> str:
    path = shutil.which("valgrind")
    if path is None:
        raise GateError(
            "valgrind is not installed (apt-get install valgrind); the instruction-count gate "
            "needs it"
        )
    return path


def _late_request() -> str | None:
    """The client-request code for this machine, or None: instrument from the start."""
    return _REQUEST_X86_64 if platform.machine().lower() in ("x86_64", "amd64") else None


def count(
    root: Path,
    env: Mapping[str, str],
    hotpath: Path,
    *,
    iterations: int,
    names: Sequence[str] = (),
    label: str = "",
) -> tuple[dict[str, float], list[str]]:
    """Instructions per probe iteration (``nan`` where a probe failed), and the problems.

    ``root`` is the working directory, ``env`` the child's environment (it must import the
    tree's own ``engine``); ``label`` names the tree in errors.
    """
    request = _late_request()
    while True:
        with tempfile.TemporaryDirectory(prefix="engine-cg-") as tmp:
            out = Path(tmp) / "cg.out"
            cmd = [
                valgrind(),
                "--tool=callgrind",
                f"--instr-atstart={'no' if request else 'yes'}",
                "--dump-before=sched_yield",
                f"--callgrind-out-file={out}",
                sys.executable,
                "-c",
                _DRIVER,
                str(hotpath),
                str(iterations),
                request or "-",
                str(_START_INSTRUMENTATION),
                *names,
            ]
            proc = subprocess.run(
                cmd,
                cwd=root,
                env={**env, "PYTHONHASHSEED": "0"},
                capture_output=True,
                timeout=1800,
            )
            text = proc.stdout.decode(errors="replace")
            if request and "INSTRUMENT-UNAVAILABLE" in text:
                request = None  # count the slow way: everything instrumented
                continue
            if proc.returncode != 0:
                raise GateError(
                    f"{label}: probe run exited {proc.returncode}:\n"
                    + proc.stderr.decode(errors="replace")[-3000:]
                )
            lines = text.splitlines()
            probes = [line.split()[1:] for line in lines if line.startswith("PROBE ")]
            problems = [line for line in lines if line.startswith("PROBE-ERROR")]
            counts: dict[str, float] = {}
            for i, (name, ok) in enumerate(probes):
                part = Path(f"{out}.{2 * i + 2}")
                counts[name] = _totals(part) / iterations if ok == "1" else float("nan")
            return counts, problems


def _totals(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise GateError(f"no totals in callgrind output {path}")
