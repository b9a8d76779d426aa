"""Frames waiting to go to one peer, grouped by kind so a flush sends each kind as one batch.

Shared by the broker (one outbox per connected peer) and the peers (one outbox to the broker).
"""

from __future__ import annotations

from engine.mesh import protocol as P
from engine.mesh.protocol import FrameKind, NackItem
from engine.messages import MessageId


class Outbox:
    __slots__ = ("acks", "deliver", "nacks", "other", "reply")

    def __init__(self) -> None:
        self.deliver: list[bytes] = []
        self.reply: list[bytes] = []
        self.acks: list[MessageId] = []
        self.nacks: list[NackItem] = []
        self.other: list[list[bytes]] = []

    def __bool__(self) -> bool:
        """True while anything waits to be sent."""
        return bool(self.deliver or self.reply or self.acks or self.nacks or self.other)

    def messages(self) -> list[list[bytes]]:
        """Everything queued as multipart messages: one ACK and one NACK frame, and REPLY and
        DELIVER bodies batched up to ``protocol.MAX_BODIES`` per message."""
        msgs = self.other
        if self.nacks:
            msgs.append(P.frames(FrameKind.NACK, P.encode_nacks(self.nacks)))
        if self.acks:
            msgs.append(P.frames(FrameKind.ACK, P.encode_ids(self.acks)))
        if self.reply:
            _batch(msgs, _REPLY, self.reply)
        if self.deliver:
            _batch(msgs, _DELIVER, self.deliver)
        return msgs


_REPLY = P.header(FrameKind.REPLY)
_DELIVER = P.header(FrameKind.DELIVER)


def _batch(msgs: list[list[bytes]], head: bytes, bodies: list[bytes]) -> None:
    limit = P.MAX_BODIES
    if len(bodies) <= limit:
        bodies.insert(0, head)  # the list becomes the message (the outbox is spent)
        msgs.append(bodies)
        return
    for i in range(0, len(bodies), limit):
        msgs.append([head, *bodies[i : i + limit]])
