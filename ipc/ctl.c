/*
 * The supervisor <-> worker control channel: length-prefixed herald messages
 * over a socketpair, read and written through a libevent bufferevent.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "ctl.h"
#include "log.h"
#include "stats.h"
#include "util.h"

struct ctl {
	struct bufferevent *bev;
	ctl_msg_cb         *on_msg;
	ctl_eof_cb         *on_eof;
	void               *arg;
	struct stats_slot  *stats;
	size_t              skip;      /* bytes left of an oversized frame */
};

static void
ctl_read(struct bufferevent *bev, void *arg)
{
	struct ctl *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);

	for (;;) {
		uint32_t len;
		unsigned char *frame;
		struct hmr r;
		const char *why;

		if (c->skip > 0) {
			size_t n = evbuffer_get_length(in);
			n = n < c->skip ? n : c->skip;
			evbuffer_drain(in, n);
			c->skip -= n;
			if (c->skip > 0)
				return;
		}
		if (evbuffer_get_length(in) < 4)
			return;
		evbuffer_copyout(in, &len, 4);
		len = ntohl(len);
		if (len < HM_HDRLEN || len > CTL_MAX_FRAME) {
			/* Drop the frame, keep the channel: closing it would take
			 * the peer down with it (a worker exits when its channel
			 * closes). */
			log_ratelimited(LOG_WARNING, "control channel: frame of %u bytes dropped", len);
			if (c->stats != NULL)
				stats_add(c->stats, STAT_ipc_bad, 1);
			c->skip = 4 + (size_t)len;
			continue;
		}
		if (evbuffer_get_length(in) < 4 + (size_t)len)
			return;
		frame = evbuffer_pullup(in, 4 + (ssize_t)len);
		if (hmr_init(&r, frame + 4, HM_HDRLEN, frame + 4 + HM_HDRLEN,
		    len - HM_HDRLEN, &why) == -1) {
			log_ratelimited(LOG_WARNING, "control channel: %s", why);
			if (c->stats != NULL)
				stats_add(c->stats, STAT_ipc_bad, 1);
		} else {
			if (c->stats != NULL)
				stats_add(c->stats, STAT_ipc_in, 1);
			c->on_msg(c, &r, c->arg);
		}
		hmr_free(&r);
		evbuffer_drain(in, 4 + (size_t)len);
	}
}

static void
ctl_event(struct bufferevent *bev, short what, void *arg)
{
	struct ctl *c = arg;

	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		c->on_eof(c, c->arg);
}

struct ctl *
ctl_new(struct event_base *base, int fd, ctl_msg_cb *on_msg, ctl_eof_cb *on_eof,
    void *arg)
{
	struct ctl *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	evutil_make_socket_nonblocking(fd);
	c->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		free(c);
		return NULL;
	}
	c->on_msg = on_msg;
	c->on_eof = on_eof;
	c->arg = arg;
	bufferevent_setcb(c->bev, ctl_read, NULL, ctl_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	return c;
}

void
ctl_set_stats(struct ctl *c, struct stats_slot *s)
{
	c->stats = s;
}

int
ctl_send(struct ctl *c, struct hmw *w)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	uint32_t len = htonl((uint32_t)(HM_HDRLEN + hmw_len(w)));

	if (evbuffer_add(out, &len, 4) == -1 ||
	    evbuffer_add(out, w->hdr, HM_HDRLEN) == -1 ||
	    evbuffer_add(out, hmw_body(w), hmw_len(w)) == -1)
		return -1;
	if (c->stats != NULL)
		stats_add(c->stats, STAT_ipc_out, 1);
	return 0;
}

void
ctl_flush(struct ctl *c)
{
	struct evbuffer *out = bufferevent_get_output(c->bev);
	int fd = bufferevent_getfd(c->bev);

	int64_t deadline = mono_ms() + 1000;

	/* Bounded: a supervisor that does not read must not keep us spinning. */
	while (evbuffer_get_length(out) > 0 && mono_ms() < deadline) {
		struct pollfd p = { fd, POLLOUT, 0 };

		if (poll(&p, 1, 100) <= 0)
			continue;
		errno = 0;
		if (evbuffer_write(out, fd) <= 0 && errno != EAGAIN && errno != EINTR)
			return;
	}
}

void
ctl_free(struct ctl *c)
{
	if (c == NULL)
		return;
	bufferevent_free(c->bev);
	free(c);
}
