"""ZeroMQ multipart I/O for the broker and peers: the compiled ``FrameSocket`` when built.

:func:`frame_socket` wraps a pyzmq socket in ``engine._native._frames.FrameSocket``
(``ext/_frames.pyx``) unless extensions are disabled or missing, then in the reference twin
:class:`~engine.mesh._frames_py.FrameSocketPy`. Both receive whole messages per call
(``recv``/``recv_many``), send one message with an optional routing id (``send``), report
``readable()`` and ``wait(timeout_ms)``.

PERF: pyzmq's Python API costs ~2.4 us per 2-frame send, ~4.5 us per 3-frame receive and
~2.2 us per ``getsockopt(EVENTS)``; the compiled calls 0.4-0.6 / 0.5-0.7 / 0.4-0.9 us
(``benches/mesh_seq_profile.py --micro``, 2026-11-21, loaded 2-core machine).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import zmq

from engine._native import pick
from engine.mesh._frames_py import FrameSocketPy

if TYPE_CHECKING:
    from engine._native._frames import FrameSocket as _FrameSocketC

__all__ = ["FrameIO", "FrameSocketC", "FrameSocketPy", "frame_socket"]


class FrameIO(Protocol):
    """What the broker and peers use (both implementations)."""

    def recv(self) -> list[bytes] | None: ...
    def recv_many(self, limit: int) -> list[list[bytes]]: ...
    def recv_many_meta(self, limit: int, prop: str) -> list[tuple[list[bytes], str | None]]: ...
    def send(self, frames: list[bytes], ident: bytes | None = None) -> bool: ...
    def readable(self) -> bool: ...
    def wait(self, timeout_ms: int) -> bool: ...


#: The compiled implementation, None when not built or disabled.
FrameSocketC: type[_FrameSocketC] | None = pick("_frames", "FrameSocket", FrameSocketPy)[0]


def frame_socket(sock: zmq.Socket[Any]) -> FrameIO:
    """``sock`` wrapped for multipart I/O: compiled when built, else the reference twin."""
    if FrameSocketC is not None:
        return FrameSocketC(sock)
    return FrameSocketPy(sock)
