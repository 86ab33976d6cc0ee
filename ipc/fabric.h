/*
 * The ZeroMQ fabric: the router binds a ROUTER socket, every other worker
 * connects a DEALER named "<role>.<slot>".  Device traffic, the bulk of
 * the messages, takes two one-way lanes that skip the router's hop: the
 * crypto worker binds a PULL socket the mqtt workers PUSH device messages
 * to ("crypto.sock"), the http worker one the crypto worker PUSHes
 * envelopes to ("spool.sock").  A PUSH queues (up to its high-water mark,
 * in order) while its peer is away or restarting.  Sockets are driven from the
 * worker's libevent loop (ZMQ_FD is edge-triggered: the fabric drains
 * ZMQ_EVENTS after every wakeup and every send).  Malformed messages are
 * counted (ipc_bad) and logged at a limited rate, never passed on.
 */
#ifndef HERALD_FABRIC_H
#define HERALD_FABRIC_H

#include <event2/event.h>
#include "codec.h"

struct fabric;
struct stats_slot;

/* peer is the sender's name on a ROUTER (NUL-terminated), NULL on a DEALER. */
typedef void fabric_cb(struct fabric *f, const char *peer, struct hmr *r, void *arg);

struct fabric *fabric_bind(struct event_base *base, const char *endpoint,
    fabric_cb *cb, void *arg);
struct fabric *fabric_connect(struct event_base *base, const char *endpoint,
    const char *identity, fabric_cb *cb, void *arg);
/* A lane's receiving end (bound) and its sending end (connected). */
struct fabric *fabric_pull(struct event_base *base, const char *endpoint,
    fabric_cb *cb, void *arg);
struct fabric *fabric_push(struct event_base *base, const char *endpoint);
void           fabric_set_stats(struct fabric *f, struct stats_slot *s);
/*
 * Send without blocking.  peer: the destination name on a ROUTER, NULL on a
 * DEALER.  -1 when the peer is unknown or its queue is full (counted as
 * ipc_dropped): at-least-once delivery above this layer resends.
 */
int            fabric_send(struct fabric *f, const char *peer, struct hmw *w);
/* Pass a received message on unchanged (the router). */
int            fabric_forward(struct fabric *f, const char *peer, const struct hmr *r);
void           fabric_linger(struct fabric *f, int ms);
void           fabric_close(struct fabric *f);
/* "ipc://<run_dir>/fabric.sock" */
void           fabric_endpoint(const char *run_dir, char *buf, size_t len);
/* "ipc://<run_dir>/<lane>.sock" */
void           fabric_lane_endpoint(const char *run_dir, const char *lane, char *buf, size_t len);

#endif
