# Declarations of bindings/include/engine_zmq.h (libzmq types, function pointer types).

cdef extern from "engine_zmq.h" nogil:
    ctypedef struct engine_zmq_msg_t:
        pass

    ctypedef int (*engine_zmq_msg_init_t)(engine_zmq_msg_t *) noexcept nogil
    ctypedef int (*engine_zmq_msg_close_t)(engine_zmq_msg_t *) noexcept nogil
    ctypedef void *(*engine_zmq_msg_data_t)(engine_zmq_msg_t *) noexcept nogil
    ctypedef size_t (*engine_zmq_msg_size_t)(const engine_zmq_msg_t *) noexcept nogil
    ctypedef int (*engine_zmq_msg_more_t)(const engine_zmq_msg_t *) noexcept nogil
    ctypedef int (*engine_zmq_msg_recv_t)(engine_zmq_msg_t *, void *, int) noexcept nogil
    ctypedef const char *(*engine_zmq_msg_gets_t)(const engine_zmq_msg_t *, const char *) noexcept nogil
    ctypedef int (*engine_zmq_send_t)(void *, const void *, size_t, int) noexcept nogil
    ctypedef int (*engine_zmq_getsockopt_t)(void *, int, void *, size_t *) noexcept nogil
    ctypedef int (*engine_zmq_errno_t)() noexcept nogil

    const int ENGINE_ZMQ_DONTWAIT
    const int ENGINE_ZMQ_SNDMORE
    const int ENGINE_ZMQ_EVENTS
    const int ENGINE_ZMQ_POLLIN


# poll(2): FrameSocket.wait polls the socket's ZMQ_FD itself.
cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents

    int poll(pollfd *fds, unsigned long nfds, int timeout)
    const short POLLIN
