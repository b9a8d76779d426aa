"""Reference twin of ``ext/_frames.pyx``: multipart I/O through pyzmq's Python API.

The oracle for the differential tests and the fallback under ``ENGINE_NO_EXTENSIONS=1``.

PERF (kept from the first pure-Python loops): plain-int flags skip pyzmq's IntFlag
arithmetic, and reading ``Frame.more`` avoids a ``getsockopt(RCVMORE)`` call per part:
9.0 vs 13.3 us per 3-part message (2026-11, loaded 2-core machine).
"""

from __future__ import annotations

import errno
from typing import Any

import zmq

__all__ = ["FrameSocketPy"]

_NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)


class FrameSocketPy:
    """Multipart I/O on one pyzmq socket (one thread, like the socket).

    A receive that fails partway through a multipart message drops the rest of that
    message; a batch receive that fails after collecting messages returns them and raises
    the error on the next receive call (as the compiled twin).
    """

    __slots__ = ("_error", "_poller", "socket")

    def __init__(self, socket: zmq.Socket[Any]) -> None:
        if not isinstance(socket, zmq.Socket):
            raise TypeError(f"FrameSocket needs a zmq.Socket, got {type(socket).__name__}")
        if socket.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        self.socket = socket
        self._poller: zmq.Poller | None = None
        self._error: Exception | None = None

    def _check(self) -> zmq.Socket[Any]:
        sock = self.socket
        if sock.closed:
            raise zmq.ZMQError(zmq.ENOTSOCK)
        return sock

    def _check_recv(self) -> zmq.Socket[Any]:
        sock = self._check()
        err = self._error
        if err is not None:
            self._error = None
            raise err
        return sock

    def _recv_one(self, sock: zmq.Socket[Any]) -> tuple[list[bytes], zmq.Frame] | None:
        """One message and its last frame (which carries the connection's metadata)."""
        try:
            frame = sock.recv(_NOBLOCK, copy=False)
        except zmq.Again:
            return None
        try:
            parts = [frame.bytes]
            while frame.more:
                frame = sock.recv(_NOBLOCK, copy=False)
                parts.append(frame.bytes)
        except BaseException:  # MemoryError copying a part, ETERM...: drop the rest of it
            try:
                while sock.getsockopt(_RCVMORE):
                    sock.recv(_NOBLOCK, copy=False)
            except zmq.ZMQError:
                pass
            raise
        return parts, frame

    def recv(self) -> list[bytes] | None:
        """One waiting message as a list of frames; ``None`` when none is waiting."""
        got = self._recv_one(self._check_recv())
        return None if got is None else got[0]

    def recv_many(self, limit: int) -> list[list[bytes]]:
        """Up to ``limit`` waiting messages, in order (an empty list when none waits)."""
        _check_limit(limit)
        sock = self._check_recv()
        out: list[list[bytes]] = []
        while len(out) < limit:
            try:
                got = self._recv_one(sock)
            except Exception as exc:
                if not out:
                    raise
                self._error = exc  # what was received is returned; the next call raises
                break
            if got is None:
                break
            out.append(got[0])
        return out

    def recv_many_meta(self, limit: int, prop: str) -> list[tuple[list[bytes], str | None]]:
        """Like :meth:`recv_many`, each message paired with its metadata ``prop``."""
        _check_limit(limit)
        if not isinstance(prop, str):
            raise TypeError(f"prop must be a str, got {type(prop).__name__}")
        sock = self._check_recv()
        out: list[tuple[list[bytes], str | None]] = []
        while len(out) < limit:
            try:
                got = self._recv_one(sock)
            except Exception as exc:
                if not out:
                    raise
                self._error = exc  # as in recv_many
                break
            if got is None:
                break
            try:
                raw = got[1].get(prop)
            except zmq.ZMQError:
                raw = None
            value = None if raw is None else str(raw)
            out.append((got[0], value))
        return out

    def send(self, frames: list[bytes], ident: bytes | None = None) -> bool:
        """Send ``frames`` as one message (after ``ident``); False when it cannot go now."""
        if not isinstance(frames, list):
            raise TypeError(f"frames must be a list, got {type(frames).__name__}")
        if ident is not None and not isinstance(ident, bytes):
            raise TypeError(f"ident must be bytes, got {type(ident).__name__}")
        if not frames:
            raise ValueError("a message needs at least one frame")
        for f in frames:  # all checked before the first part leaves
            if not isinstance(f, bytes):
                _check_buffer(f)
        sock = self._check()
        send = sock.send
        parts = frames if ident is None else [ident, *frames]
        last = len(parts) - 1
        try:
            send(parts[0], _MORE if last else _NOBLOCK)
        except zmq.Again:
            return False
        for i in range(1, last):
            send(parts[i], _MORE)
        if last:
            send(parts[last], _NOBLOCK)
        return True

    def readable(self) -> bool:
        """A message is waiting (also re-arms ZeroMQ's edge-triggered descriptor)."""
        return bool(int(self._check().getsockopt(_EVENTS)) & _POLLIN)

    def wait(self, timeout_ms: int) -> bool:
        """Block until a message is waiting or ``timeout_ms`` passed (-1: no limit); True when
        one is (the compiled twin may also return False early: callers loop)."""
        sock = self._check()
        poller = self._poller
        if poller is None:
            poller = self._poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
        try:
            return bool(poller.poll(None if timeout_ms < 0 else timeout_ms))
        except zmq.ZMQError as exc:
            if exc.errno == errno.EINTR:
                return False
            raise


def _check_limit(limit: int) -> None:
    if not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")


def _check_buffer(frame: object) -> None:
    if isinstance(frame, str):
        raise TypeError("frames must be bytes-like, not str")
    try:
        memoryview(frame)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"frames must be bytes-like, not {type(frame).__name__}") from None
