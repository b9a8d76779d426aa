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
        limit = P.MAX_BODIES
        for kind, bodies in ((FrameKind.REPLY, self.reply), (FrameKind.DELIVER, self.deliver)):
            for i in range(0, len(bodies), limit):
                msgs.append(P.frames(kind, *bodies[i : i + limit]))
        return msgs
