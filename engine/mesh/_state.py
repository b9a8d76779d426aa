"""What the broker core knows about each peer and each message it holds."""

from __future__ import annotations

from engine.mesh import protocol as P
from engine.mesh._config import TokenBucket
from engine.mesh._signing import Session
from engine.mesh.protocol import FrameKind, Role
from engine.messages import Envelope, Kind, MessageId

__all__ = ["Delivery", "Peer"]


class Delivery:
    """One accepted message on its way to one peer (a topic publish has one per subscriber).

    ``group`` is None for a message with one destination; a topic publish's copies share
    ``[copies not finished, copies not dispatched]``. ``owner`` is the submitting peer
    (None for a message restored from the store), ``settled`` whether the owner has had its
    answer (ACK, REPLY or a final NACK) — exactly once. ``sent_at`` is set on dispatch.
    """

    __slots__ = (
        "attempts",
        "avoid",
        "data",
        "deadline",
        "env",
        "group",
        "lane",
        "mid",
        "owner",
        "sent_at",
        "settled",
        "size",
        "slot",
        "target",
        "task",
    )

    # PERF: the fewest attributes set per message (benches/mesh_seq_profile.py --python)
    def __init__(
        self,
        env: Envelope,
        data: bytes,
        owner: Peer | None,
        deadline: float,
        group: list[int] | None = None,
    ) -> None:
        self.env = env
        self.data = data
        self.mid: MessageId = env.id
        self.owner = owner
        self.deadline = deadline  # on the core's clock; inf = none
        self.group = group
        self.size = len(data)
        self.attempts = 0
        self.slot = -1  # router slot charged by a by-type pick, -1 when none
        self.task = -1  # scheduler task id while queued or in flight
        self.target: Peer | None = None
        self.settled = False
        self.avoid: Peer | None = None  # after a failure there: another node if one exists
        self.sent_at: float
        self.lane: int  # its scheduler tenant, set while it is a task

    def copy(self) -> Delivery:
        """Another copy of a topic publish (same group, owner and bytes)."""
        d = Delivery(self.env, self.data, self.owner, self.deadline, self.group)
        d.settled = True  # the owner is answered once, through the first copy
        return d

    @property
    def is_send(self) -> bool:
        return self.env.kind is Kind.SEND


class Peer:
    """One registered connection (a node, client or monitor)."""

    __slots__ = (
        "allowed",
        "bucket",
        "heartbeat",
        "ident",
        "inflight",
        "instance",
        "key",
        "last_seen",
        "name",
        "num",
        "origins",
        "owned",
        "owned_bytes",
        "patterns",
        "role",
        "session",
        "sids",
        "slots",
        "waiting",
        "window",
    )

    def __init__(
        self,
        ident: bytes,
        num: int,
        reg: P.Register,
        role: Role,
        key: str | None,
        heartbeat: float,
        window: int,
        now: float,
    ) -> None:
        self.ident = ident
        self.num = num  # its scheduler pool and router subscriber id (reused after it leaves)
        self.name = reg.name
        self.role = role
        self.key = key  # CURVE key fingerprint, None without CURVE
        self.instance = reg.instance
        self.allowed: frozenset[FrameKind] = P.ALLOWED[role]
        self.window = window
        self.heartbeat = heartbeat
        self.origins: tuple[str, ...] = tuple(dict.fromkeys(reg.origins))
        self.inflight: dict[MessageId, Delivery] = {}  # delivered, unanswered (oldest first)
        self.waiting = 0  # deliveries queued (scheduler tasks) for this peer
        self.slots: dict[str, int] = {}  # hosted type -> router slot
        self.sids: list[int] = []  # router subscription ids
        self.patterns: tuple[str, ...] = tuple(dict.fromkeys(reg.subscriptions))
        self.owned = 0  # its submissions not yet answered (the submission window)
        self.owned_bytes = 0
        self.last_seen = now
        self.bucket: TokenBucket | None = None
        self.session: Session | None = None
