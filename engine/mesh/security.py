"""CURVE keys, the ZAP allow-list and roles.

Layout of a key directory (``engine keys generate DIR``)::

    DIR/broker.key, DIR/broker.key_secret          the broker's pair
    DIR/<name>.key, DIR/<name>.key_secret          one pair per peer name
    DIR/authorized/<name>.key                      public keys the broker lets in

Each peer certificate carries its role as ZeroMQ certificate metadata (``role = "worker"``);
the broker binds that role to the key, so a worker key cannot act as an orchestrator.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
import zmq.utils.z85
from zmq.auth.thread import ThreadAuthenticator

from engine.errors import EngineError
from engine.mesh.protocol import Role

__all__ = ["CurveClient", "CurveServer", "generate_keys"]

DEFAULT_NAMES = ("orchestrator", "worker", "monitor")
_ROLE_RX = re.compile(rb'^\s*role\s*=\s*"?([a-z]+)"?', re.M)


def generate_keys(directory: str | Path, names: tuple[str, ...] = DEFAULT_NAMES) -> list[Path]:
    """Create the broker pair plus one pair per name (role = the name when it is a role).

    Existing pairs are kept, so the command is safe to rerun; a public key is added to
    ``authorized/`` only when its pair is created here, so deleting ``authorized/NAME.key``
    (revoking it) stays in force on a rerun. Secret files are written inside a private
    (0700) folder and are 0600 before they appear in ``directory``. Returns the files
    written.
    """
    root = Path(directory)
    (root / "authorized").mkdir(parents=True, exist_ok=True)
    for name in ("broker", *names):
        if "/" in name or not name or name.startswith("."):
            raise EngineError(f"invalid key name {name!r}")
    written: list[Path] = []
    for name in ("broker", *names):
        public = root / f"{name}.key"
        if public.exists():
            continue
        role = name if name in {r.value for r in Role} else Role.WORKER.value
        meta = {} if name == "broker" else {"role": role}
        with tempfile.TemporaryDirectory(dir=root, prefix=".keys-") as tmp:  # mode 0700
            pub, sec = (Path(p) for p in zmq.auth.create_certificates(tmp, name, metadata=meta))
            sec.chmod(0o600)
            if meta:  # pyzmq writes metadata to the secret file only; the broker reads public
                text = pub.read_text()
                pub.write_text(text.replace("metadata\n", f'metadata\n    role = "{role}"\n', 1))
            os.replace(sec, root / sec.name)
            os.replace(pub, public)
        written += [public, root / sec.name]
        if name != "broker":
            shutil.copyfile(public, root / "authorized" / public.name)
            written.append(root / "authorized" / public.name)
    return written


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.exists():
        raise EngineError(f"CURVE key file {path} does not exist")
    try:
        pub, sec = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise EngineError(f"cannot read CURVE key file {path}: {exc}") from None
    if secret and sec is None:
        raise EngineError(f"{path} holds no secret key")
    return pub, sec


def _role_of(path: Path) -> Role:
    m = _ROLE_RX.search(path.read_bytes())
    try:
        return Role(m.group(1).decode()) if m else Role.WORKER
    except ValueError:
        return Role.WORKER


class _Authenticator(ThreadAuthenticator):
    """ZAP handler whose User-Id is ``ROLE:FINGERPRINT`` for the client's key.

    The fingerprint (:func:`fingerprint`) lets the broker's audit log name the key.
    """

    roles: dict[bytes, Role]

    def curve_user_id(self, client_public_key: bytes) -> str:
        z85 = zmq.utils.z85.encode(client_public_key)
        role = self.roles.get(z85, Role.WORKER)
        return f"{role.value}:{fingerprint(z85)}"


def fingerprint(public_z85: bytes) -> str:
    """A short, stable name for a CURVE public key: the first 16 hex of its SHA-256."""
    return hashlib.sha256(public_z85).hexdigest()[:16]


@dataclass
class CurveServer:
    """The broker side: its key pair and the allow-list (public key -> role)."""

    public: bytes
    secret: bytes
    roles: dict[bytes, Role]

    @classmethod
    def from_dir(cls, directory: str | Path) -> CurveServer:
        root = Path(directory)
        pub, sec = _load(root / "broker.key_secret", secret=True)
        assert sec is not None
        roles: dict[bytes, Role] = {}
        for path in sorted((root / "authorized").glob("*.key")):
            key, _ = _load(path, secret=False)
            roles[key] = _role_of(path)
        return cls(pub, sec, roles)

    def apply(self, ctx: zmq.Context[Any], sock: zmq.Socket[Any]) -> ThreadAuthenticator:
        """Make ``sock`` a CURVE server and start the ZAP allow-list; returns the authenticator."""
        auth = _Authenticator(ctx)
        auth.roles = dict(self.roles)
        auth.start()
        auth.configure_curve_callback(domain="*", credentials_provider=_AllowList(self.roles))
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True
        return auth


class _AllowList:
    def __init__(self, roles: dict[bytes, Role]) -> None:
        self._keys = frozenset(roles)

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self._keys  # pyzmq passes the z85 form


@dataclass
class CurveClient:
    """A peer's side: the broker's public key and the peer's own pair."""

    server_public: bytes
    public: bytes
    secret: bytes

    @classmethod
    def from_dir(cls, directory: str | Path, name: str) -> CurveClient:
        root = Path(directory)
        server, _ = _load(root / "broker.key", secret=False)
        pub, sec = _load(root / f"{name}.key_secret", secret=True)
        assert sec is not None
        return cls(server, pub, sec)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_serverkey = self.server_public
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
