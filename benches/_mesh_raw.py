"""The raw-pyzmq ceiling for benches/bench_mesh.py: a ROUTER broker and DEALER echo nodes.

``python benches/_mesh_raw.py broker PORT [CURVE_DIR]`` / ``node ENDPOINT [CURVE_DIR]``.
The broker does the same forwarding as the engine's (client -> round-robin node -> back to
the client) with the loop the issue's measured hints recommend (poll once, drain with
NOBLOCK), one send per message, no envelopes, no acks, no reliability. It uses the same
pyzmq fast paths as the engine (int flags, draining while EVENTS & POLLIN).

Frames: client -> broker [kind, seq, payload]; broker -> node [kind, client, seq, payload];
node -> broker [kind, client, seq, payload]; broker -> client [kind, seq, payload].
kind: b"R" request (echoed), b"O" one-way (counted), b"E" end (answered with the count).
"""

from __future__ import annotations

import sys
from typing import Any

import zmq
import zmq.auth

NOBLOCK, MORE = int(zmq.NOBLOCK), int(zmq.NOBLOCK) | int(zmq.SNDMORE)
EVENTS, POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def send(sock: zmq.Socket[Any], frames: list[bytes]) -> None:
    for frame in frames[:-1]:
        sock.send(frame, MORE)
    sock.send(frames[-1], NOBLOCK)


def _curve_server(ctx: zmq.Context[Any], sock: zmq.Socket[Any], keys: str) -> Any:
    from zmq.auth.thread import ThreadAuthenticator

    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=f"{keys}/authorized")
    pub, sec = zmq.auth.load_certificate(f"{keys}/broker.key_secret")
    sock.curve_secretkey, sock.curve_publickey, sock.curve_server = sec, pub, True
    return auth


def curve_client(sock: zmq.Socket[Any], keys: str, name: str) -> None:
    server, _ = zmq.auth.load_certificate(f"{keys}/broker.key")
    pub, sec = zmq.auth.load_certificate(f"{keys}/{name}.key_secret")
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = server, pub, sec


def broker(port: int, keys: str | None) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    auth = _curve_server(ctx, sock, keys) if keys else None
    sock.bind(f"tcp://127.0.0.1:{port}")
    print("raw broker ready", flush=True)
    nodes: list[bytes] = []
    node_set: set[bytes] = set()
    rr = 0
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    recv = sock.recv_multipart
    while True:
        poller.poll()
        first = True
        while first or int(sock.getsockopt(EVENTS)) & POLLIN:
            first = False
            msg = recv(NOBLOCK)
            ident = msg[0]
            if ident in node_set:
                send(sock, [msg[2], msg[1], msg[3], msg[4]])
            elif msg[1] == b"READY":
                nodes.append(ident)
                node_set.add(ident)
            elif msg[1] == b"STOP":
                if auth is not None:
                    auth.stop()
                return
            else:
                rr = (rr + 1) % len(nodes)
                send(sock, [nodes[rr], msg[1], ident, msg[2], msg[3]])


def node(endpoint: str, keys: str | None) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if keys:
        curve_client(sock, keys, "worker")
    sock.connect(endpoint)
    sock.send_multipart([b"READY"])
    print("raw node ready", flush=True)
    count = 0
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    recv = sock.recv_multipart
    while True:
        poller.poll()
        first = True
        while first or int(sock.getsockopt(EVENTS)) & POLLIN:
            first = False
            kind, client, seq, payload = recv(NOBLOCK)
            if kind == b"R":
                send(sock, [kind, client, seq, payload])
            elif kind == b"O":
                count += 1
            else:
                send(sock, [kind, client, seq, str(count).encode()])
                count = 0


if __name__ == "__main__":
    keys_ = sys.argv[3] if len(sys.argv) > 3 else None
    if sys.argv[1] == "broker":
        broker(int(sys.argv[2]), keys_)
    else:
        node(sys.argv[2], keys_)
