# cython: language_level=3, annotation_typing=False
"""Compiled ZeroMQ multipart I/O for the mesh: whole messages per call, no per-frame Python.

:class:`FrameSocket` wraps a pyzmq socket and moves multipart messages between it and lists
of ``bytes`` in C: one call receives every waiting message (``recv_many``) or sends one
message with its routing id (``send``). pyzmq's Python API costs ~1-3 us per frame and per
``getsockopt`` (option enum lookup, keyword handling, a ``Frame`` object per part); a mesh
hop moves 2-3 frames each way, on every hop of a round trip.

libzmq is the one pyzmq loaded: its functions are resolved at import through pyzmq's backend
module (``dlsym`` on that module's handle also searches its libzmq), and the socket is
pyzmq's (``Socket.underlying``), so both bindings share one context and one library. Calls
are non-blocking and keep the GIL, except :meth:`FrameSocket.wait`, which polls the socket's
descriptor with the GIL released. The reference twin is ``engine.mesh._frames_py.FrameSocketPy`` (pyzmq's API).
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR
from libc.stdint cimport uintptr_t

from engine_zmq cimport (
    POLLIN,
    ENGINE_ZMQ_DONTWAIT,
    ENGINE_ZMQ_EVENTS,
    ENGINE_ZMQ_POLLIN,
    ENGINE_ZMQ_SNDMORE,
    engine_zmq_errno_t,
    engine_zmq_getsockopt_t,
    engine_zmq_msg_close_t,
    engine_zmq_msg_data_t,
    engine_zmq_msg_gets_t,
    engine_zmq_msg_init_t,
    engine_zmq_msg_more_t,
    engine_zmq_msg_recv_t,
    engine_zmq_msg_size_t,
    engine_zmq_msg_t,
    engine_zmq_send_t,
    poll,
    pollfd,
)

import zmq

cdef engine_zmq_msg_init_t z_msg_init = NULL
cdef engine_zmq_msg_close_t z_msg_close = NULL
cdef engine_zmq_msg_data_t z_msg_data = NULL
cdef engine_zmq_msg_size_t z_msg_size = NULL
cdef engine_zmq_msg_more_t z_msg_more = NULL
cdef engine_zmq_msg_recv_t z_msg_recv = NULL
cdef engine_zmq_msg_gets_t z_msg_gets = NULL
cdef engine_zmq_send_t z_send = NULL
cdef engine_zmq_getsockopt_t z_getsockopt = NULL
cdef engine_zmq_errno_t z_errno = NULL

cdef object _ZMQError = zmq.ZMQError
cdef object _Again = zmq.Again
cdef object _ContextTerminated = zmq.ContextTerminated
cdef int _ETERM = zmq.ETERM
cdef object _Socket = zmq.Socket
cdef int _DONTWAIT = ENGINE_ZMQ_DONTWAIT
cdef int _MORE = ENGINE_ZMQ_DONTWAIT | ENGINE_ZMQ_SNDMORE
cdef char _EMPTY[1]


def _resolve() -> None:
    """Bind the libzmq functions pyzmq uses; ImportError when they cannot be found."""
    global z_msg_init, z_msg_close, z_msg_data, z_msg_size, z_msg_more, z_msg_recv
    global z_msg_gets, z_send, z_getsockopt, z_errno
    import ctypes

    from zmq.backend.cython import _zmq

    for name, ours in (
        ("DONTWAIT", ENGINE_ZMQ_DONTWAIT),
        ("SNDMORE", ENGINE_ZMQ_SNDMORE),
        ("EVENTS", ENGINE_ZMQ_EVENTS),
        ("POLLIN", ENGINE_ZMQ_POLLIN),
    ):
        if int(getattr(zmq, name)) != ours:
            raise ImportError(f"libzmq constant {name} differs from engine_zmq.h")
    try:
        lib = ctypes.CDLL(_zmq.__file__)
        addr = {
            name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value
            for name in (
                "zmq_msg_init", "zmq_msg_close", "zmq_msg_data", "zmq_msg_size",
                "zmq_msg_more", "zmq_msg_recv", "zmq_msg_gets", "zmq_send",
                "zmq_getsockopt", "zmq_errno",
            )
        }
    except (OSError, AttributeError) as exc:
        raise ImportError(f"libzmq functions not found through pyzmq: {exc}") from None
    if not all(addr.values()):
        raise ImportError("libzmq functions not found through pyzmq")
    z_msg_init = <engine_zmq_msg_init_t><uintptr_t>addr["zmq_msg_init"]
    z_msg_close = <engine_zmq_msg_close_t><uintptr_t>addr["zmq_msg_close"]
    z_msg_data = <engine_zmq_msg_data_t><uintptr_t>addr["zmq_msg_data"]
    z_msg_size = <engine_zmq_msg_size_t><uintptr_t>addr["zmq_msg_size"]
    z_msg_more = <engine_zmq_msg_more_t><uintptr_t>addr["zmq_msg_more"]
    z_msg_recv = <engine_zmq_msg_recv_t><uintptr_t>addr["zmq_msg_recv"]
    z_msg_gets = <engine_zmq_msg_gets_t><uintptr_t>addr["zmq_msg_gets"]
    z_send = <engine_zmq_send_t><uintptr_t>addr["zmq_send"]
    z_getsockopt = <engine_zmq_getsockopt_t><uintptr_t>addr["zmq_getsockopt"]
    z_errno = <engine_zmq_errno_t><uintptr_t>addr["zmq_errno"]


_resolve()


cdef int _raise(int err) except -1:
    """Raise as pyzmq does: ``zmq.Again`` for EAGAIN, ``zmq.ContextTerminated`` for ETERM."""
    if err == EAGAIN:
        raise _Again(err)
    if err == _ETERM:
        raise _ContextTerminated(err)
    raise _ZMQError(err)


cdef void _discard_rest(void *handle, engine_zmq_msg_t *msg) noexcept:
    """Receive and drop the parts left of the message whose part ``msg`` holds (ZeroMQ
    queues a multipart message whole, so they are waiting); stops at any error."""
    while z_msg_more(msg):
        if z_msg_recv(msg, handle, _DONTWAIT) < 0 and z_errno() != EINTR:
            return


@cython.final
cdef class FrameSocket:
    """Multipart I/O on one pyzmq socket (not thread-safe: one thread, like the socket).

    Every call raises ``zmq.ZMQError`` (``ENOTSOCK``) once the socket is closed. Errors
    are pyzmq's classes (``zmq.Again``, ``zmq.ContextTerminated``, ``zmq.ZMQError``). A
    receive that fails partway through a multipart message drops the rest of that message
    (never split into a bogus one); a batch receive that fails after collecting messages
    returns them and raises the error on the next receive call.
    """

    cdef readonly object socket
    cdef object _error  # raised by the next receive call (see recv_many)
    cdef void *_handle
    cdef int _fd  # ZMQ_FD: edge-triggered readiness of the socket's command mailbox

    def __init__(self, socket):
        if not isinstance(socket, _Socket):
            raise TypeError(f"FrameSocket needs a zmq.Socket, got {type(socket).__name__}")
        if socket.closed:
            raise _ZMQError(zmq.ENOTSOCK)
        self.socket = socket
        self._handle = <void *><uintptr_t>socket.underlying
        self._fd = socket.getsockopt(zmq.FD)

    cdef inline int _check(self) except -1:
        if self.socket.closed:
            raise _ZMQError(zmq.ENOTSOCK)
        return 0

    cdef inline int _check_recv(self) except -1:
        self._check()
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return 0

    cdef object _recv_one(self, const char *prop, list meta):
        """One message (a list of bytes), or None when none is waiting; with ``prop``, the
        message's metadata ``prop`` (str or None, read from its last frame) is appended to
        ``meta``."""
        cdef engine_zmq_msg_t msg
        cdef list parts = None
        cdef int rc, err
        cdef const char *value
        cdef bint started = False
        z_msg_init(&msg)
        try:
            while True:
                rc = z_msg_recv(&msg, self._handle, _DONTWAIT)
                if rc < 0:
                    err = z_errno()
                    if err == EINTR:
                        continue
                    if err == EAGAIN and not started:
                        return None
                    _raise(err)
                started = True
                data = PyBytes_FromStringAndSize(<char *>z_msg_data(&msg), z_msg_size(&msg))
                if parts is None:
                    parts = [data]
                else:
                    parts.append(data)
                if not z_msg_more(&msg):
                    if prop != NULL:
                        value = z_msg_gets(&msg, prop)
                        meta.append(value.decode("utf-8", "replace") if value != NULL else None)
                    return parts
        except BaseException:
            if started:  # MemoryError copying a part, ETERM...: drop the rest of it
                _discard_rest(self._handle, &msg)
            raise
        finally:
            z_msg_close(&msg)

    def recv(self):
        """One waiting message as a list of frames; ``None`` when none is waiting."""
        self._check_recv()
        return self._recv_one(NULL, None)

    def recv_many(self, limit):
        """Up to ``limit`` waiting messages, in order (an empty list when none waits).

        Receiving until none is left also re-arms the socket's edge-triggered descriptor.
        """
        cdef Py_ssize_t n = _limit(limit)
        self._check_recv()
        cdef list out = []
        cdef object msg
        while len(out) < n:
            try:
                msg = self._recv_one(NULL, None)
            except Exception as exc:
                if not out:
                    raise
                self._error = exc  # what was received is returned; the next call raises
                break
            if msg is None:
                break
            out.append(msg)
        return out

    def recv_many_meta(self, limit, prop):
        """Like :meth:`recv_many`, each message paired with its metadata ``prop``
        (``"User-Id"`` set by ZAP, ``"Peer-Address"``...; None when unset)."""
        cdef Py_ssize_t n = _limit(limit)
        if not isinstance(prop, str):
            raise TypeError(f"prop must be a str, got {type(prop).__name__}")
        self._check_recv()
        cdef bytes name = prop.encode("utf-8")
        cdef list out = []
        cdef list meta = []
        cdef object msg
        while len(out) < n:
            try:
                msg = self._recv_one(PyBytes_AS_STRING(name), meta)
            except Exception as exc:
                if not out:
                    raise
                self._error = exc  # as in recv_many
                break
            if msg is None:
                break
            out.append((msg, meta.pop()))
        return out

    def send(self, frames, ident=None):
        """Send ``frames`` as one message (after ``ident``, a ROUTER's routing id).

        Returns False when it cannot go now (high-water mark: nothing was queued); ZeroMQ
        queues a multipart message atomically, so only the first part can be refused (a
        later refusal would raise ``zmq.Again``, as pyzmq does). Other failures
        (``EHOSTUNREACH`` for an unknown routing id...) raise ZMQError.
        """
        if not isinstance(frames, list):
            raise TypeError(f"frames must be a list, got {type(frames).__name__}")
        if ident is not None and not isinstance(ident, bytes):
            raise TypeError(f"ident must be bytes, got {type(ident).__name__}")
        cdef Py_ssize_t n = len(frames), i
        cdef int flags
        cdef bytes data
        if n == 0:
            raise ValueError("a message needs at least one frame")
        for i in range(n):
            if not PyBytes_Check(frames[i]):
                frames = [f if PyBytes_Check(f) else _as_bytes(f) for f in frames]
                break
        self._check()
        cdef bint first = True
        if ident is not None:
            if _send(self._handle, PyBytes_AS_STRING(ident), PyBytes_GET_SIZE(ident), _MORE) < 0:
                return False
            first = False
        for i in range(n):
            data = <bytes>frames[i]  # checked above
            flags = _MORE if i < n - 1 else _DONTWAIT
            if _send(self._handle, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), flags) < 0:
                if first:
                    return False
                _raise(EAGAIN)  # zmq.Again (not expected: later parts are never refused)
            first = False
        return True

    cdef bint _readable(self) except -1:
        cdef int events = 0
        cdef size_t size = sizeof(int)
        while z_getsockopt(self._handle, ENGINE_ZMQ_EVENTS, &events, &size) < 0:
            if z_errno() != EINTR:
                _raise(z_errno())
        return (events & ENGINE_ZMQ_POLLIN) != 0

    def readable(self):
        """A message is waiting (also re-arms ZeroMQ's edge-triggered descriptor)."""
        self._check()
        return self._readable()

    def wait(self, long timeout_ms):
        """Block (GIL released) until a message is waiting or ``timeout_ms`` passed
        (-1: no limit); True when one is. May return False early (a signal, or the socket
        woke for something else): callers loop.

        PERF: ``ZMQ_EVENTS``, then ``poll()`` on ``ZMQ_FD``, then ``ZMQ_EVENTS``: one
        ``poll(0)`` syscall less per wait than ``zmq_poll`` (whose first pass polls with a
        zero timeout), measured with ``benches/mesh_seq_profile.py --strace``.
        """
        self._check()
        if self._readable():
            return True
        cdef pollfd item
        cdef int timeout = <int>timeout_ms if -1 <= timeout_ms <= 0x7FFFFFFF else -1
        item.fd = self._fd
        item.events = POLLIN
        item.revents = 0
        with nogil:
            poll(&item, 1, timeout)  # EINTR or a wake-up for commands: EVENTS decides
        if self.socket.closed:  # closed by another thread while we waited
            raise _ZMQError(zmq.ENOTSOCK)
        return self._readable()


cdef int _send(void *handle, const char *buf, Py_ssize_t size, int flags) except -2:
    """zmq_send of one part: 0 sent, -1 would block (EAGAIN); raises other errors."""
    cdef int rc, err
    if size == 0:
        buf = _EMPTY
    while True:
        rc = z_send(handle, buf, <size_t>size, flags)
        if rc >= 0:
            return 0
        err = z_errno()
        if err == EINTR:
            continue
        if err == EAGAIN:
            return -1
        _raise(err)


cdef Py_ssize_t _limit(object limit) except -1:
    """A batch limit: an int >= 1 (TypeError / ValueError otherwise); huge ones are capped."""
    if not isinstance(limit, int):
        raise TypeError(f"limit must be an int, got {type(limit).__name__}")
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    return limit if limit < 0x7FFFFFFF else 0x7FFFFFFF


cdef bytes _as_bytes(object frame):
    if isinstance(frame, str):
        raise TypeError("frames must be bytes-like, not str")
    try:
        return bytes(memoryview(frame))
    except TypeError:
        raise TypeError(f"frames must be bytes-like, not {type(frame).__name__}") from None
