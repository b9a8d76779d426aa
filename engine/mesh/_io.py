"""Small ZeroMQ I/O helpers shared by the broker and peers (hot path).

PERF: plain-int flags skip pyzmq's IntFlag arithmetic, and draining while
``EVENTS & POLLIN`` skips raising ``zmq.Again`` at the end of every drain (an exception
object per wake-up); together ~10-20 us per send+recv round in an in-process
DEALER->ROUTER loop. ``recv_frames`` reads ``Frame.more`` instead of a ``getsockopt(RCVMORE)``
per part: 9.0 vs 13.3 us per 3-part message (2026-11, loaded 2-core machine).
"""

from __future__ import annotations

from typing import Any

import zmq

__all__ = ["NOBLOCK", "readable", "recv_frames", "recv_zmq_frames", "send_frames"]

NOBLOCK = int(zmq.NOBLOCK)
_MORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)


def readable(sock: zmq.Socket[Any]) -> bool:
    """A message is waiting (also re-arms ZeroMQ's edge-triggered FD)."""
    return bool(int(sock.getsockopt(_EVENTS)) & _POLLIN)


def send_frames(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    """Send one multipart message without blocking; ``zmq.Again`` if it cannot go now.

    ZeroMQ queues a multipart message atomically: only the first part can fail.
    """
    send = sock.send
    last = len(frames) - 1
    for i in range(last):
        send(frames[i], _MORE)
    send(frames[last], NOBLOCK)


def recv_frames(sock: zmq.Socket[Any]) -> list[bytes]:
    """Receive one multipart message without blocking (``zmq.Again`` if none)."""
    recv = sock.recv
    frame = recv(NOBLOCK, copy=False)
    parts = [frame.bytes]
    while frame.more:
        frame = recv(NOBLOCK, copy=False)
        parts.append(frame.bytes)
    return parts


def recv_zmq_frames(sock: zmq.Socket[Any]) -> list[zmq.Frame]:
    """Like :func:`recv_frames` but keeps the ``zmq.Frame`` objects (for metadata)."""
    recv = sock.recv
    frame = recv(NOBLOCK, copy=False)
    parts = [frame]
    while frame.more:
        frame = recv(NOBLOCK, copy=False)
        parts.append(frame)
    return parts
