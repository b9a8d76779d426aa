"""Multipart I/O of the mesh: the compiled FrameSocket against its pure-Python twin.

Real ZeroMQ sockets over TCP on 127.0.0.1 (ROUTER <-> DEALER, as broker and peers use them);
every behaviour runs on both implementations ("py" / "native") and a differential test
checks both see the same messages.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.mesh._frames_py import FrameSocketPy
from engine.mesh._io import FrameSocketC, frame_socket
from engine.mesh.security import CurveClient, CurveServer, generate_keys
from tests._gil import python_progress_during
from tests._wait import wait_until
from tests.conftest import impl_params

IMPLS = impl_params(FrameSocketPy, FrameSocketC)


@pytest.fixture
def pair() -> Iterator[tuple[zmq.Socket[Any], zmq.Socket[Any]]]:
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, b"peer-1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    router.close(0)
    dealer.close(0)
    ctx.term()


def _recv_all(io: Any, n: int, timeout: float = 5.0) -> list[list[bytes]]:
    got: list[list[bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        if io.wait(100):
            got += io.recv_many(4096)
    return got


def _wait(io: Any, timeout: float = 5.0) -> bool:
    """``io.wait`` until a message waits (it may return False early: a wake-up for
    ZeroMQ's commands, such as the connection handshake)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if io.wait(100):
            return True
    return False


@pytest.mark.parametrize("impl", IMPLS)
def test_round_trip_dealer_to_router_and_back(impl: Any, pair: Any) -> None:
    router, dealer = pair
    r, d = impl(router), impl(dealer)
    assert d.send([b"AEM\x01\x03", b"body", b""]) is True
    assert _recv_all(r, 1) == [[b"peer-1", b"AEM\x01\x03", b"body", b""]]
    assert r.send([b"AEM\x01\x06", b"x" * 70_000], ident=b"peer-1") is True
    assert _recv_all(d, 1) == [[b"AEM\x01\x06", b"x" * 70_000]]


@pytest.mark.parametrize("impl", IMPLS)
def test_nothing_waiting(impl: Any, pair: Any) -> None:
    router, _ = pair
    r = impl(router)
    assert r.recv() is None
    assert r.recv_many(10) == []
    assert r.readable() is False
    t0 = time.monotonic()
    while time.monotonic() - t0 < 0.05:  # may return early (a wake-up for commands): loop
        assert r.wait(50) is False


@pytest.mark.parametrize("impl", IMPLS)
def test_recv_many_keeps_order_and_honours_the_limit(impl: Any) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    router, dealer = _inproc_pair(ctx, "limit")  # a send is in the peer's queue on return
    try:
        r, d = impl(router), impl(dealer)
        for i in range(50):
            assert d.send([str(i).encode()])
        first = r.recv_many(20)
        assert len(first) == 20
        rest = _recv_all(r, 30)
        got = [m[1] for m in first + rest]
        assert got == [str(i).encode() for i in range(50)]
        assert r.readable() is False
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()


@pytest.mark.parametrize("impl", IMPLS)
def test_readable_reports_a_waiting_message(impl: Any, pair: Any) -> None:
    router, dealer = pair
    r, d = impl(router), impl(dealer)
    d.send([b"hello"])
    assert _wait(r) is True
    assert r.readable() is True
    assert r.recv() == [b"peer-1", b"hello"]
    assert r.readable() is False


@pytest.mark.parametrize("impl", IMPLS)
def test_unknown_routing_id_raises_host_unreachable(impl: Any, pair: Any) -> None:
    router, _ = pair
    with pytest.raises(zmq.ZMQError) as info:
        impl(router).send([b"x"], ident=b"nobody")
    assert info.value.errno == zmq.EHOSTUNREACH


@pytest.mark.parametrize("impl", IMPLS)
def test_full_queue_refuses_without_raising(impl: Any) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)  # never connected: nothing can go
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        assert impl(dealer).send([b"a", b"b"]) is False
    finally:
        dealer.close(0)
        ctx.term()


@pytest.mark.parametrize("impl", IMPLS)
def test_bad_input_raises_typed_errors(impl: Any, pair: Any) -> None:
    router, dealer = pair
    d = impl(dealer)
    with pytest.raises(TypeError, match=r"zmq\.Socket"):
        impl(object())
    with pytest.raises(ValueError, match="at least one frame"):
        d.send([])
    with pytest.raises(TypeError, match="bytes-like"):
        d.send(["text"])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        d.send((b"a",))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        impl(router).send([b"a"], ident="peer-1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit"):
        d.recv_many(0)
    with pytest.raises(ValueError, match="limit"):
        d.recv_many_meta(0, "User-Id")


@pytest.mark.parametrize("impl", IMPLS)
def test_other_buffers_are_sent_as_their_bytes(impl: Any, pair: Any) -> None:
    router, dealer = pair
    r, d = impl(router), impl(dealer)
    frames: list[Any] = [bytearray(b"ab"), memoryview(b"cd")]
    assert d.send(frames)
    assert _recv_all(r, 1) == [[b"peer-1", b"ab", b"cd"]]
    assert isinstance(frames[0], bytearray)  # the caller's list is left alone


@pytest.mark.parametrize("impl", IMPLS)
def test_closed_socket_raises_instead_of_crashing(impl: Any) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    io = impl(sock)
    sock.close(0)
    for call in (io.recv, io.readable, lambda: io.recv_many(1), lambda: io.send([b"x"])):
        with pytest.raises(zmq.ZMQError) as info:
            call()
        assert info.value.errno == zmq.ENOTSOCK
    with pytest.raises(zmq.ZMQError):
        io.wait(0)
    with pytest.raises(zmq.ZMQError):
        impl(sock)
    ctx.term()


@pytest.mark.parametrize("impl", IMPLS)
def test_wait_releases_the_gil(impl: Any, pair: Any) -> None:
    router, _ = pair
    r = impl(router)
    # a wait holding the GIL would leave this thread's counter unchanged across it (0)
    assert python_progress_during(lambda: r.wait(200)) > 0


@pytest.mark.parametrize("impl", IMPLS)
def test_user_id_metadata_under_curve(impl: Any, tmp_path: Any) -> None:
    generate_keys(str(tmp_path))
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    auth = CurveServer.from_dir(str(tmp_path)).apply(ctx, router)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    CurveClient.from_dir(str(tmp_path), "worker").apply(dealer)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    try:
        r = impl(router)
        assert impl(dealer).send([b"AEM\x01\x01", b"reg"])
        got: list[tuple[list[bytes], str | None]] = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            if r.wait(100):
                got = r.recv_many_meta(10, "User-Id")
        assert len(got) == 1
        msg, user_id = got[0]
        assert msg[1:] == [b"AEM\x01\x01", b"reg"]
        assert user_id is not None and user_id.startswith("worker:")
        assert impl(dealer).send([b"x"])
        assert _wait(r)
        [(_, missing)] = r.recv_many_meta(10, "No-Such-Property")
        assert missing is None
    finally:
        router.close(0)
        dealer.close(0)
        if auth is not None:
            auth.stop()
        ctx.term()


def test_frame_socket_is_the_compiled_one_when_built(pair: Any) -> None:
    router, _ = pair
    io = frame_socket(router)
    expected = FrameSocketPy if FrameSocketC is None else FrameSocketC
    assert type(io) is expected
    assert io.socket is router  # type: ignore[attr-defined]


frames_st = st.lists(st.binary(max_size=300), min_size=1, max_size=6)


@pytest.mark.skipif(FrameSocketC is None, reason="native extension not built")
@settings(max_examples=40, deadline=None)
@given(msgs=st.lists(frames_st, min_size=1, max_size=8))
def test_native_and_reference_see_the_same_messages(msgs: list[list[bytes]]) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    routers, dealers = [], []
    try:
        for _ in range(2):
            router = ctx.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            port = router.bind_to_random_port("tcp://127.0.0.1")
            dealer = ctx.socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.IDENTITY, b"d")
            dealer.connect(f"tcp://127.0.0.1:{port}")
            routers.append(router)
            dealers.append(dealer)
        seen = []
        for impl, router, dealer in zip(
            (FrameSocketPy, FrameSocketC), routers, dealers, strict=True
        ):
            r, d = impl(router), impl(dealer)
            for m in msgs:
                assert d.send(list(m))
            got = _recv_all(r, len(msgs))
            for m in got:  # and back through the ROUTER with the routing id
                assert r.send(m[1:], ident=m[0])
            seen.append((got, _recv_all(d, len(msgs))))
        assert seen[0] == seen[1]
        assert seen[0][0] == [[b"d", *m] for m in msgs]
        assert seen[0][1] == msgs
    finally:
        for s in routers + dealers:
            s.close(0)
        ctx.term()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("impl", IMPLS)
def test_wait_wakes_when_a_message_arrives(impl: Any, pair: Any) -> None:
    router, dealer = pair
    r = impl(router)
    timer = threading.Timer(0.05, lambda: dealer.send(b"late"))
    timer.start()
    woke = False
    while not woke:  # no time limit: only the arrival ends the wait (else: the test timeout)
        woke = r.wait(-1)
    timer.join()
    assert r.recv() == [b"peer-1", b"late"]


# A part too big to copy under a lowered address-space limit: MemoryError partway through a
# multipart message. Runs in a child process (the limit is process-wide).
_PARTIAL_RECV = """
import resource, sys
import zmq
from engine.mesh._frames_py import FrameSocketPy
from engine.mesh._io import FrameSocketC
impl = FrameSocketPy if sys.argv[1] == "py" else FrameSocketC
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER)
router.bind("inproc://partial")
dealer = ctx.socket(zmq.DEALER)
dealer.setsockopt(zmq.IDENTITY, b"d")
dealer.connect("inproc://partial")
r = impl(router)
dealer.send_multipart([b"first"])
dealer.send_multipart([b"head", b"x" * (96 << 20), b"tail"])
dealer.send_multipart([b"next"])  # inproc: all three are queued now, the big one whole
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) for line in f if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (32 << 20), hard))  # no room for a 96 MB copy
results = []
for _ in range(2):
    try:
        results.append(r.recv_many(10))
    except MemoryError:
        results.append("MemoryError")
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
results.append(r.recv_many(10))
print(results)
"""


@pytest.mark.parametrize("impl", ["py", "native"])
def test_an_error_partway_through_a_message_neither_splits_nor_loses_messages(impl: str) -> None:
    if impl == "native" and FrameSocketC is None:
        pytest.skip("native extension not built")
    res = subprocess.run(
        [sys.executable, "-c", _PARTIAL_RECV, impl], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    # the message before is returned, the error raised on the next call, the big message
    # dropped whole (no bogus [b"tail"] message), and the one after it received intact
    assert res.stdout.strip() == str([[[b"d", b"first"]], "MemoryError", [[b"d", b"next"]]])


def _fails_with_eterm(call: Any) -> bool:
    try:
        call()
    except zmq.ContextTerminated:
        return True
    return False


@pytest.mark.parametrize("impl", IMPLS)
def test_errors_are_pyzmqs_classes_once_the_context_terminates(impl: Any) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    io = impl(dealer)
    term = threading.Thread(target=ctx.term)  # blocks until the socket is closed
    term.start()
    try:
        wait_until(lambda: _fails_with_eterm(io.recv))  # ctx.term() has begun
        for call in (io.recv, lambda: io.recv_many(4), lambda: io.send([b"a", b"b"])):
            with pytest.raises(zmq.ContextTerminated):
                call()
    finally:
        dealer.close(0)
        term.join(5)
    assert not term.is_alive()


def _inproc_pair(ctx: zmq.Context[Any], name: str) -> tuple[zmq.Socket[Any], zmq.Socket[Any]]:
    """ROUTER <-> DEALER over inproc: a sent message is waiting at once (no I/O thread)."""
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(f"inproc://{name}")
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, b"d")
    dealer.connect(f"inproc://{name}")
    return router, dealer


@pytest.mark.skipif(FrameSocketC is None, reason="native extension not built")
@settings(max_examples=40, deadline=None)
@given(
    msgs=st.lists(frames_st, min_size=1, max_size=12),
    limit=st.integers(1, 5),
    meta=st.booleans(),
)
def test_native_and_reference_cut_batches_and_read_metadata_alike(
    msgs: list[list[bytes]], limit: int, meta: bool
) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sockets: list[zmq.Socket[Any]] = []
    try:
        seen = []
        for n, impl in enumerate((FrameSocketPy, FrameSocketC)):
            router, dealer = _inproc_pair(ctx, f"diff-{n}")
            sockets += [router, dealer]
            r, d = impl(router), impl(dealer)
            for m in msgs:
                assert d.send(list(m))
            batches: list[Any] = []
            while True:
                batch = r.recv_many_meta(limit, "Peer-Address") if meta else r.recv_many(limit)
                if not batch:
                    break
                batches.append(batch)
            seen.append(batches)
        assert seen[0] == seen[1]
        flat = [b for batch in seen[0] for b in batch]
        assert [len(b) for b in seen[0]] == [
            min(limit, len(msgs) - i) for i in range(0, len(msgs), limit)
        ]
        expected = [[b"d", *m] for m in msgs]
        assert flat == ([(m, None) for m in expected] if meta else expected)  # inproc: no address
    finally:
        for s in sockets:
            s.close(0)
        ctx.term()


class _List(list):  # type: ignore[type-arg]
    pass


class _Bytes(bytes):
    pass


_BAD_CALLS: list[tuple[str, Any]] = [
    ("tuple frames", lambda io: io.send((b"a",))),
    ("None frames", lambda io: io.send(None)),
    ("empty", lambda io: io.send([])),
    ("str frame", lambda io: io.send([b"a", "text"])),
    ("int frame", lambda io: io.send([b"a", 5])),
    ("str ident", lambda io: io.send([b"a"], ident="x")),
    ("str ident, empty", lambda io: io.send([], ident="x")),
    ("float limit", lambda io: io.recv_many(2.5)),
    ("str limit", lambda io: io.recv_many("2")),
    ("zero limit", lambda io: io.recv_many(0)),
    ("negative meta limit", lambda io: io.recv_many_meta(-1, "User-Id")),
    ("bytes prop", lambda io: io.recv_many_meta(1, b"User-Id")),
]


@pytest.mark.skipif(FrameSocketC is None, reason="native extension not built")
def test_native_and_reference_fail_alike_and_accept_the_same_subclasses() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    router, dealer = _inproc_pair(ctx, "errors")
    try:
        for name, call in _BAD_CALLS:
            errors = []
            for impl in (FrameSocketPy, FrameSocketC):
                with pytest.raises(Exception) as info:  # compared below
                    call(impl(dealer))
                errors.append((type(info.value), str(info.value)))
            assert errors[0] == errors[1], name
            assert errors[0][0] in (TypeError, ValueError), name
        assert not FrameSocketPy(router).recv_many(10)  # nothing half-sent by a refused call
        for impl in (FrameSocketPy, FrameSocketC):
            r, d = impl(router), impl(dealer)
            assert d.send(_List([_Bytes(b"a"), b"b"]))
            assert r.send(_List([b"c"]), ident=_Bytes(b"d"))
            assert r.recv_many(2) == [[b"d", b"a", b"b"]]
            assert d.recv_many(True) == [[b"c"]]  # bool is an int
            assert r.recv_many(1 << 80) == []  # a huge limit is not an overflow
    finally:
        router.close(0)
        dealer.close(0)
        ctx.term()
