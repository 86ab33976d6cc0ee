/*
 * libmosquitto clients driven from our own event loops (mqtt workers,
 * herald-bench): created without the library's wake-up socketpair, and,
 * for the mqtt workers, with buffered socket I/O.
 */
#ifndef HERALD_MOSQ_H
#define HERALD_MOSQ_H

#include <stdbool.h>
#include <stddef.h>
#include <mosquitto.h>

/* mosquitto_new(); wakeup_pair false drops the socketpair (see mosq.c). */
struct mosquitto *mosq_new(const char *id, bool clean_session, void *obj, bool wakeup_pair);

/*
 * Buffered I/O for a client's socket (see mosq.c).  Once attached, what
 * libmosquitto reads comes from a 64 KiB input buffer and what it writes is
 * kept until mosq_io_flush(); close() of the socket detaches it.
 */
int    mosq_io_attach(int fd);
/* Input bytes buffered, or the last fill filled the buffer: read again. */
bool   mosq_io_readable(int fd);
/* Write what is buffered: 0 all written, 1 some left (wait for POLLOUT),
 * -1 the socket failed (errno). */
int    mosq_io_flush(int fd);
size_t mosq_io_unsent(int fd);
/* From now on the socket's PUBACKs wait, in order, until mosq_io_release()
 * puts them behind what is out (see mosq.c); other packets pass them.
 * Those never released are dropped at close(). */
int    mosq_io_hold_acks(int fd);
int    mosq_io_release(int fd);
size_t mosq_io_held(int fd);
/* The fixed header byte of the last packet libmosquitto began to read on an
 * attached socket (in on_message: that message's, DUP flag 0x08), or -1. */
int    mosq_io_last_command(int fd);

#endif
