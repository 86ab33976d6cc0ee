/*
 * libmosquitto 2.0 gives every client a socketpair at mosquitto_new()
 * (lib/mosquitto.c, mosquitto_reinitialise) only to wake its own select()
 * loop, and writes one byte into it for every packet it queues
 * (lib/packet_mosq.c, packet__queue).  A client driven from our loop with
 * mosquitto_loop_read/_write never reads it: two fds per client and one
 * write(2) per packet (failing with EAGAIN once the pair is full) for
 * nothing; for an mqtt worker that is a wasted syscall per device message.
 * When socketpair() fails the library logs a warning and goes on without
 * the pair, so during mosq_new() only this definition, which takes
 * precedence over libc's for libmosquitto, fails; otherwise it is libc's.
 */
#include <errno.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "mosq.h"

static bool mosq_refuse_pair;

int
socketpair(int domain, int type, int protocol, int sv[2])
{
	if (mosq_refuse_pair) {
		errno = EMFILE;
		return -1;
	}
	return (int)syscall(SYS_socketpair, domain, type, protocol, sv);
}

struct mosquitto *
mosq_new(const char *id, bool clean_session, void *obj, bool wakeup_pair)
{
	struct mosquitto *m;

	mosq_refuse_pair = !wakeup_pair;
	m = mosquitto_new(id, clean_session, obj);
	mosq_refuse_pair = false;
	return m;
}
