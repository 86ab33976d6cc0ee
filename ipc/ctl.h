/*
 * The control channel between the supervisor and one worker: a socketpair
 * carrying length-prefixed herald messages (u32 big-endian length of the
 * header + body, then the 2-byte header, then the msgpack body).  It works
 * when the ZeroMQ fabric does not, and its EOF tells each side the other died.
 */
#ifndef HERALD_CTL_H
#define HERALD_CTL_H

#include <event2/event.h>
#include "codec.h"

#define CTL_MAX_FRAME (16u << 20)

struct ctl;
struct stats_slot;
typedef void ctl_msg_cb(struct ctl *c, struct hmr *r, void *arg);
typedef void ctl_eof_cb(struct ctl *c, void *arg);

struct ctl *ctl_new(struct event_base *base, int fd, ctl_msg_cb *on_msg,
    ctl_eof_cb *on_eof, void *arg);
void        ctl_set_stats(struct ctl *c, struct stats_slot *s);
int         ctl_send(struct ctl *c, struct hmw *w);
/* Block until everything queued is written (a worker about to exit). */
void        ctl_flush(struct ctl *c);
void        ctl_free(struct ctl *c);

#endif
