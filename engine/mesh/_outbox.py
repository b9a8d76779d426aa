"""Frames waiting to go to one peer, grouped by kind so a flush sends each kind as one batch.

Shared by the broker (one outbox per connected peer) and the peers (one outbox to the broker).
"""

from __future__ import annotations

from engine.mesh.protocol import NackItem
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
