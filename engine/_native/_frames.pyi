"""Stub of the compiled ZeroMQ multipart I/O (``ext/_frames.pyx``); the face is
``engine.mesh._io.FrameSocket``, the reference twin ``engine.mesh._frames_py.FrameSocketPy``."""

from typing import Any, final

import zmq

@final
class FrameSocket:
    """Multipart I/O on one pyzmq socket (one thread, like the socket)."""

    @property
    def socket(self) -> zmq.Socket[Any]: ...
    def __init__(self, socket: zmq.Socket[Any]) -> None: ...
    def recv(self) -> list[bytes] | None: ...
    def recv_many(self, limit: int) -> list[list[bytes]]: ...  # limit: int
    def recv_many_meta(self, limit: int, prop: str) -> list[tuple[list[bytes], str | None]]: ...
    def send(self, frames: list[bytes], ident: bytes | None = None) -> bool: ...
    def readable(self) -> bool: ...
    def wait(self, timeout_ms: int) -> bool: ...  # timeout_ms: long
