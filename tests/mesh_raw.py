"""A raw mesh peer for attack tests: a pyzmq DEALER that sends whatever frames it is told.

It speaks the wire protocol by hand (``engine.mesh.protocol`` only for constants), so a
test can send what a well-behaved peer never would.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import zmq

from engine.mesh import protocol as P
from engine.messages import AgentId, Envelope, Kind, MessageId, encode, encode_payload

__all__ = ["RawPeer", "envelope"]


def envelope(
    mid: MessageId,
    kind: Kind = Kind.SEND,
    *,
    to: AgentId | None = None,
    correlation: MessageId | None = None,
    payload: Any = None,
    payload_type: str = "",
    **fields: Any,
) -> bytes:
    """An encoded envelope."""
    return encode(
        Envelope(
            mid,
            kind,
            recipient=to,
            correlation=correlation,
            payload_type=payload_type or (type(payload).__name__ if payload is not None else ""),
            payload=encode_payload(payload),
            **fields,
        )
    )


class RawPeer:
    """One DEALER connection; ``inbox`` keeps every message received, in order."""

    def __init__(self, endpoint: str, curve: Any = None) -> None:
        self.sock: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            curve.apply(self.sock)
        self.sock.connect(endpoint)
        self.inbox: list[list[bytes]] = []

    def close(self) -> None:
        self.sock.close(0)

    def send(self, frames: list[bytes]) -> None:
        self.sock.send_multipart(frames)

    def send_kind(self, kind: P.FrameKind, *bodies: bytes) -> None:
        self.send(P.frames(kind, *bodies))

    def register(self, name: str, **fields: Any) -> None:
        self.send_kind(P.FrameKind.REGISTER, P.encode(P.Register(name, **fields)))

    def _read(self) -> None:
        while self.sock.poll(0):
            self.inbox.append(self.sock.recv_multipart())

    def kinds(self) -> list[int]:
        self._read()
        return [m[0][4] & 0x7F for m in self.inbox if len(m[0]) == 5]

    def of_kind(self, kind: P.FrameKind) -> list[list[bytes]]:
        self._read()
        return [m[1:] for m in self.inbox if len(m[0]) == 5 and m[0][4] & 0x7F == kind]

    async def wait_for(
        self, kind: P.FrameKind, timeout: float = 30.0, count: int = 1
    ) -> list[list[bytes]]:
        """The bodies of the first ``count`` messages of ``kind`` (AssertionError on timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.of_kind(kind)
            if len(got) >= count:
                return got[:count]
            await asyncio.sleep(0.005)
        raise AssertionError(
            f"no {count} x {kind.name} within {timeout} s; got kinds {self.kinds()}"
        )

    async def welcome(self, name: str, timeout: float = 30.0, **fields: Any) -> P.Welcome:
        self.register(name, **fields)
        body = (await self.wait_for(P.FrameKind.REGISTER, timeout))[0]
        return msgspec.msgpack.decode(body[0], type=P.Welcome)

    def nacks(self) -> list[P.NackItem]:
        return [i for b in self.of_kind(P.FrameKind.NACK) for i in P.decode_nacks(b)]

    def disconnects(self) -> list[P.Disconnect]:
        return [P.decode_disconnect(b) for b in self.of_kind(P.FrameKind.DISCONNECT)]
