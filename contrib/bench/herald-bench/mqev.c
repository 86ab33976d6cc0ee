/*
 * Drives libmosquitto clients from one libevent loop (mosquitto_loop_read /
 * _write on mosquitto_socket(), _misc from a timer), so one process holds
 * thousands of simulated devices with one fd each.
 */
#include <errno.h>
#include <unistd.h>

#include <event2/event.h>
#include <mosquitto.h>

#include "bench.h"

void
mqev_sync(struct mqev *c)
{
	if (c->rd == NULL)
		return;
	if (mosquitto_socket(c->m) != c->fd) {
		/* libmosquitto closed the socket (error, EOF, keepalive): tell the owner */
		mqev_detach(c);
		if (c->closed)
			c->closed(c, c->arg);
		return;
	}
	if (mosquitto_want_write(c->m) && !event_pending(c->wr, EV_WRITE, NULL))
		event_add(c->wr, NULL);
}

static void
mqev_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mqev *c = arg;

	mosquitto_loop_read(c->m, 1);
	mqev_sync(c);
}

static void
mqev_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mqev *c = arg;

	mosquitto_loop_write(c->m, 1);
	mqev_sync(c);
}

int
mqev_attach(struct mqev *c, struct event_base *base)
{
	c->fd = mosquitto_socket(c->m);
	if (c->fd < 0)
		return -1;
	c->rd = event_new(base, c->fd, EV_READ | EV_PERSIST, mqev_read_cb, c);
	c->wr = event_new(base, c->fd, EV_WRITE, mqev_write_cb, c);
	if (c->rd == NULL || c->wr == NULL || event_add(c->rd, NULL) == -1) {
		mqev_detach(c);
		return -1;
	}
	mqev_sync(c);
	return 0;
}

void
mqev_detach(struct mqev *c)
{
	if (c->rd != NULL)
		event_free(c->rd);
	if (c->wr != NULL)
		event_free(c->wr);
	c->rd = c->wr = NULL;
	c->fd = -1;
}
