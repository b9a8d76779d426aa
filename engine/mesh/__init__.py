"""The ZeroMQ mesh: a ROUTER broker, DEALER nodes hosting agents, and clients.

A node is an :class:`engine.Runtime` whose transport is the mesh: it hosts
``engine.Agent`` subclasses, the same agent model as in process.

The protocol logic of both sides is sans-IO (:class:`BrokerCore`, :class:`PeerCore`: frames
and time in, frames and store writes out), each inside a thin socket shell (:class:`Broker`,
:class:`MeshPeer`). See ``docs/protocol.md`` for the wire protocol and ``docs/multi-host.md``
for deployment and the security model.
"""

from __future__ import annotations

from engine.mesh._agent_classes import load_agent_classes, type_name_of
from engine.mesh._config import BrokerConfig
from engine.mesh.broker import Broker
from engine.mesh.broker_core import BrokerCore
from engine.mesh.client import MeshClient
from engine.mesh.node import Node
from engine.mesh.peer import MeshPeer, decode_reply
from engine.mesh.peer_core import PeerCore
from engine.mesh.protocol import FrameKind, NackCode, Role
from engine.mesh.security import generate_keys
from engine.mesh.transport import MeshTransport

__all__ = [
    "Broker",
    "BrokerConfig",
    "BrokerCore",
    "FrameKind",
    "MeshClient",
    "MeshPeer",
    "MeshTransport",
    "NackCode",
    "Node",
    "PeerCore",
    "Role",
    "decode_reply",
    "generate_keys",
    "load_agent_classes",
    "type_name_of",
]
