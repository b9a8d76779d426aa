/* The few libzmq declarations ext/_frames.pyx needs (the pyzmq wheel ships no zmq.h).
 *
 * Nothing here is linked: _frames resolves the functions at import from the libzmq that
 * pyzmq already loaded (dlsym through pyzmq's backend module), so both bindings share one
 * library and one context. Types and constants follow zmq.h of libzmq 4.x (stable ABI);
 * _frames checks the constants against pyzmq's at import.
 */
#ifndef ENGINE_ZMQ_H
#define ENGINE_ZMQ_H
#include <stddef.h>

typedef struct engine_zmq_msg_t {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} engine_zmq_msg_t;

typedef int (*engine_zmq_msg_init_t)(engine_zmq_msg_t *);
typedef int (*engine_zmq_msg_close_t)(engine_zmq_msg_t *);
typedef void *(*engine_zmq_msg_data_t)(engine_zmq_msg_t *);
typedef size_t (*engine_zmq_msg_size_t)(const engine_zmq_msg_t *);
typedef int (*engine_zmq_msg_more_t)(const engine_zmq_msg_t *);
typedef int (*engine_zmq_msg_recv_t)(engine_zmq_msg_t *, void *, int);
typedef const char *(*engine_zmq_msg_gets_t)(const engine_zmq_msg_t *, const char *);
typedef int (*engine_zmq_send_t)(void *, const void *, size_t, int);
typedef int (*engine_zmq_getsockopt_t)(void *, int, void *, size_t *);
typedef int (*engine_zmq_errno_t)(void);

#define ENGINE_ZMQ_DONTWAIT 1
#define ENGINE_ZMQ_SNDMORE 2
#define ENGINE_ZMQ_EVENTS 15
#define ENGINE_ZMQ_POLLIN 1
#endif
