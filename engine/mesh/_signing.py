"""HMAC-SHA256 signatures with replay protection (``--hmac-key-file`` / ``ENGINE_HMAC_KEY``).

A signed message sets bit 0x80 of its kind byte and ends in a 48-byte trailer::

    session (8 bytes) | counter (8 bytes, big-endian) | HMAC-SHA256 (32 bytes)

The MAC covers a direction byte (0 = to the broker, 1 = to a peer), the session, the
counter and every frame before the trailer (each prefixed with its 4-byte big-endian
length). A peer signs its REGISTER in a session of its own choosing; the broker answers
with a fresh random session (``Welcome.session``), and every later message, both ways, is
signed in that session with a counter that only grows. A message whose counter does not
exceed the last one seen in its session is a replay and is dropped; a REGISTER replayed
on another connection gets a new session that its sender cannot sign in, so it never
becomes a registration (the broker activates a REGISTER only on the first message signed
in the session it handed out).

Key rotation: a key file holds one key per line. The first key signs; every key verifies.
Add the new key as the second line everywhere, then make it the first everywhere, then
drop the old one (docs/multi-host.md, "Security model").
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from engine.errors import EngineError, ProtocolError
from engine.mesh.protocol import SIGNED, header

__all__ = [
    "ENV_KEY",
    "TO_BROKER",
    "TO_PEER",
    "Keys",
    "Session",
    "as_keys",
    "load_keys",
    "new_session",
]

TO_BROKER: Final = 0
TO_PEER: Final = 1
_DIRECTION: Final = (b"\x00", b"\x01")
_ZERO_SESSION: Final = bytes(8)
#: Environment variable holding the HMAC key (one key; a key file allows rotation).
ENV_KEY: Final = "ENGINE_HMAC_KEY"


class Keys:
    """The shared HMAC keys: ``keys[0]`` signs, any of them verifies."""

    __slots__ = ("keys",)

    def __init__(self, keys: Sequence[bytes]) -> None:
        keys = [bytes(k) for k in keys]
        if not keys or any(not k for k in keys):
            raise EngineError("HMAC keys must be non-empty")
        self.keys = keys

    def mac(
        self, key: bytes, direction: int, session: bytes, counter: bytes, msg: list[bytes]
    ) -> bytes:
        h = hmac.new(key, _DIRECTION[direction], hashlib.sha256)
        h.update(session)
        h.update(counter)
        for part in msg:
            h.update(len(part).to_bytes(4, "big"))
            h.update(part)
        return h.digest()

    def sign(self, msg: list[bytes], direction: int, session: bytes, counter: int) -> list[bytes]:
        """Sign ``msg`` in place (as built by ``protocol.frames``) and return it."""
        msg[0] = header(msg[0][4] | SIGNED)
        ctr = counter.to_bytes(8, "big")
        msg.append(session + ctr + self.mac(self.keys[0], direction, session, ctr, msg))
        return msg

    def verify(self, msg: list[bytes], trailer: bytes, direction: int) -> tuple[bytes, int]:
        """``(session, counter)`` of a signed message whose MAC is right, else ProtocolError.

        ``msg`` is every frame before the trailer (header included).
        """
        session, ctr, mac = trailer[:8], trailer[8:16], trailer[16:]
        for key in self.keys:
            if hmac.compare_digest(mac, self.mac(key, direction, session, ctr, msg)):
                return session, int.from_bytes(ctr, "big")
        raise ProtocolError("bad HMAC signature")


class Session:
    """One connection's signing state: its session and the counters both ways."""

    __slots__ = ("keys", "received", "recv_dir", "send_dir", "sent", "session")

    def __init__(self, keys: Keys, session: bytes, *, broker: bool) -> None:
        self.keys = keys
        self.session = session
        self.sent = 0
        self.received = 0
        self.send_dir, self.recv_dir = (TO_PEER, TO_BROKER) if broker else (TO_BROKER, TO_PEER)

    def seal(self, msg: list[bytes]) -> list[bytes]:
        """Sign ``msg`` with the next counter of this session."""
        self.sent += 1
        return self.keys.sign(msg, self.send_dir, self.session, self.sent)

    def open(self, msg: list[bytes], trailer: bytes | None) -> None:
        """Accept a message signed in this session with a counter above the last one."""
        if trailer is None:
            raise ProtocolError("unsigned message while HMAC signatures are required")
        session, counter = self.keys.verify(msg, trailer, self.recv_dir)
        if session != self.session:
            raise ProtocolError("message signed in another session (a replay?)")
        if counter <= self.received:
            raise ProtocolError(f"replayed message (counter {counter} <= {self.received})")
        self.received = counter


def new_session() -> bytes:
    """8 random bytes, never the all-zero session."""
    while True:
        s = os.urandom(8)
        if s != _ZERO_SESSION:
            return s


def load_keys(
    value: str | bytes | None = None, file: str | os.PathLike[str] | None = None
) -> Keys | None:
    """The HMAC keys from a value, a key file (one per line) or ``ENGINE_HMAC_KEY``.

    A key file readable by group or others is refused: a shared secret belongs to its
    owner (``chmod 600``). Returns None when no key is configured.
    """
    if file is not None:
        path = Path(file)
        try:
            mode = path.stat().st_mode
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise EngineError(f"cannot read HMAC key file {path}: {exc}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise EngineError(f"HMAC key file {path} is readable by others: chmod 600 it")
        keys = [ln.strip() for ln in lines if ln.strip() and not ln.startswith(b"#")]
        if not keys:
            raise EngineError(f"HMAC key file {path} holds no key")
        return Keys(keys)
    if value is None:
        value = os.environ.get(ENV_KEY) or None
    if not value:
        return None
    return Keys([value.encode() if isinstance(value, str) else value])


def as_keys(value: Keys | bytes | str | Sequence[bytes] | None) -> Keys | None:
    """Normalise the ``hmac_key=`` argument of Broker/MeshPeer."""
    if value is None or isinstance(value, Keys):
        return value
    if isinstance(value, str):
        return Keys([value.encode()])
    if isinstance(value, bytes | bytearray):
        return Keys([bytes(value)])
    return Keys(list(value))
