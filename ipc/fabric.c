/*
 * The ZeroMQ fabric driven from a libevent loop.  ZMQ_FD signals edges, not
 * levels: after every wakeup, and after every send (which may consume the
 * edge), the socket is drained until ZMQ_EVENTS says nothing is left.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zmq.h>

#include "fabric.h"
#include "log.h"
#include "stats.h"
#include "util.h"

#define FABRIC_HWM       200000
#define FABRIC_PUSH_HWM  2000    /* batches queued for an absent peer (<= 512 MiB) */
#define FABRIC_BATCH     512     /* messages per wakeup before yielding */
/* ...or this much time: a message may carry hundreds of device messages, and a
 * backlog (a lane's queue after a restart) must not keep the worker from its
 * control channel's health pings. */
#define FABRIC_SLICE_US  20000

/* One ZeroMQ context (one I/O thread) per process, for all its sockets. */
static void *fabric_ctx;
static int   fabric_ctx_refs;

struct fabric {
	void              *sock;
	bool               router;
	struct event      *ev;       /* ZMQ_FD readable */
	struct event      *again;    /* re-check after a send or a full batch */
	fabric_cb         *cb;
	void              *arg;
	struct stats_slot *stats;
};

static void
fabric_count(struct fabric *f, enum stats_counter c)
{
	if (f->stats != NULL)
		stats_add(f->stats, c, 1);
}

/*
 * Look at the socket again soon, but only after the loop has polled: a
 * zero timeout, not event_active(), which libevent runs in the same pass and
 * which, under a steady stream, kept a worker from ever reading its control
 * channel (a busy crypto worker missed its health pings and was killed).
 */
static void
fabric_again(struct fabric *f)
{
	static const struct timeval zero = { 0, 0 };

	if (!evtimer_pending(f->again, NULL))
		evtimer_add(f->again, &zero);
}

static void
fabric_drain(struct fabric *f)
{
	uint64_t until = mono_us() + FABRIC_SLICE_US;

	for (int n = 0; n < FABRIC_BATCH && (n == 0 || mono_us() < until); n++) {
		zmq_msg_t parts[3];
		int nparts = 0, more = 1;
		const char *why;
		char peer[64];
		struct hmr r;

		while (more) {
			zmq_msg_t scratch, *m = nparts < 3 ? &parts[nparts] : &scratch;

			zmq_msg_init(m);
			if (zmq_msg_recv(m, f->sock, ZMQ_DONTWAIT) == -1) {
				zmq_msg_close(m);
				for (int i = 0; i < nparts && i < 3; i++)
					zmq_msg_close(&parts[i]);
				if (errno != EAGAIN && errno != EINTR)
					log_ratelimited(LOG_WARNING, "fabric receive: %s", zmq_strerror(errno));
				return;
			}
			more = zmq_msg_more(m);
			if (m == &scratch)
				zmq_msg_close(m);
			nparts++;
		}
		/* ROUTER: [peer, header, body]; DEALER: [header, body]. */
		int want = f->router ? 3 : 2, h = f->router ? 1 : 0;
		if (nparts != want) {
			fabric_count(f, STAT_ipc_bad);
			log_ratelimited(LOG_WARNING, "fabric: message with %d frames dropped", nparts);
		} else if (hmr_init(&r, zmq_msg_data(&parts[h]), zmq_msg_size(&parts[h]),
		    zmq_msg_data(&parts[h + 1]), zmq_msg_size(&parts[h + 1]), &why) == -1) {
			fabric_count(f, STAT_ipc_bad);
			log_ratelimited(LOG_WARNING, "fabric: message dropped: %s", why);
			hmr_free(&r);
		} else {
			const char *from = NULL;

			if (f->router) {
				size_t len = zmq_msg_size(&parts[0]);
				if (len >= sizeof(peer))
					len = sizeof(peer) - 1;
				memcpy(peer, zmq_msg_data(&parts[0]), len);
				peer[len] = '\0';
				from = peer;
			}
			fabric_count(f, STAT_ipc_in);
			f->cb(f, from, &r, f->arg);
			hmr_free(&r);
		}
		for (int i = 0; i < nparts && i < 3; i++)
			zmq_msg_close(&parts[i]);
	}
	/* More may be waiting: come back after other events had their turn. */
	fabric_again(f);
}

static void
fabric_check(struct fabric *f)
{
	int events = 0;
	size_t len = sizeof(events);

	if (zmq_getsockopt(f->sock, ZMQ_EVENTS, &events, &len) == 0 &&
	    (events & ZMQ_POLLIN))
		fabric_drain(f);
}

static void
fabric_ready(evutil_socket_t fd, short what, void *arg)
{
	fabric_check(arg);
}

static struct fabric *
fabric_new(struct event_base *base, int type, fabric_cb *cb, void *arg)
{
	struct fabric *f = calloc(1, sizeof(*f));
	int hwm = type == ZMQ_PUSH ? FABRIC_PUSH_HWM : FABRIC_HWM, linger = 0, fd;
	size_t len = sizeof(fd);

	if (f == NULL)
		return NULL;
	if (fabric_ctx == NULL && (fabric_ctx = zmq_ctx_new()) == NULL) {
		log_err("fabric: cannot create a context: %s", zmq_strerror(errno));
		free(f);
		return NULL;
	}
	fabric_ctx_refs++;
	f->sock = zmq_socket(fabric_ctx, type);
	if (f->sock == NULL) {
		log_err("fabric: cannot create socket: %s", zmq_strerror(errno));
		fabric_close(f);
		return NULL;
	}
	f->router = type == ZMQ_ROUTER;
	f->cb = cb;
	f->arg = arg;
	zmq_setsockopt(f->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(f->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm));
	zmq_setsockopt(f->sock, ZMQ_LINGER, &linger, sizeof(linger));
	if (cb == NULL)
		return f;       /* send only */
	zmq_getsockopt(f->sock, ZMQ_FD, &fd, &len);
	f->ev = event_new(base, fd, EV_READ | EV_PERSIST, fabric_ready, f);
	f->again = event_new(base, -1, 0, fabric_ready, f);
	event_add(f->ev, NULL);
	return f;
}

/* Bind f (just made) to endpoint; NULL, f closed, on failure. */
static struct fabric *
fabric_bound(struct fabric *f, const char *endpoint)
{
	if (f != NULL && zmq_bind(f->sock, endpoint) == -1) {
		log_err("fabric: cannot bind %s: %s", endpoint, zmq_strerror(errno));
		fabric_close(f);
		return NULL;
	}
	return f;
}

/* Connect f (just made) to endpoint, reconnecting every 100 ms while it is
 * away; NULL, f closed, on failure. */
static struct fabric *
fabric_connected(struct fabric *f, const char *endpoint)
{
	int ivl = 100;

	if (f == NULL)
		return NULL;
	zmq_setsockopt(f->sock, ZMQ_RECONNECT_IVL, &ivl, sizeof(ivl));
	if (zmq_connect(f->sock, endpoint) == -1) {
		log_err("fabric: cannot connect %s: %s", endpoint, zmq_strerror(errno));
		fabric_close(f);
		return NULL;
	}
	return f;
}

struct fabric *
fabric_bind(struct event_base *base, const char *endpoint, fabric_cb *cb, void *arg)
{
	struct fabric *f = fabric_new(base, ZMQ_ROUTER, cb, arg);
	int one = 1;

	if (f != NULL) {
		/* Unknown peers are an error, not a silent drop; a restarted
		 * worker takes its name over from its dead predecessor. */
		zmq_setsockopt(f->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
		zmq_setsockopt(f->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof(one));
	}
	return fabric_bound(f, endpoint);
}

struct fabric *
fabric_connect(struct event_base *base, const char *endpoint, const char *identity,
    fabric_cb *cb, void *arg)
{
	struct fabric *f = fabric_new(base, ZMQ_DEALER, cb, arg);

	if (f != NULL)
		zmq_setsockopt(f->sock, ZMQ_ROUTING_ID, identity, strlen(identity));
	return fabric_connected(f, endpoint);
}

struct fabric *
fabric_pull(struct event_base *base, const char *endpoint, fabric_cb *cb, void *arg)
{
	return fabric_bound(fabric_new(base, ZMQ_PULL, cb, arg), endpoint);
}

struct fabric *
fabric_push(struct event_base *base, const char *endpoint)
{
	return fabric_connected(fabric_new(base, ZMQ_PUSH, NULL, NULL), endpoint);
}

void
fabric_set_stats(struct fabric *f, struct stats_slot *s)
{
	f->stats = s;
}

static int
fabric_send_parts(struct fabric *f, const char *peer, const void *hdr,
    const void *body, size_t len)
{
	if (peer != NULL &&
	    zmq_send(f->sock, peer, strlen(peer), ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1)
		goto fail;
	if (zmq_send(f->sock, hdr, HM_HDRLEN, ZMQ_SNDMORE | ZMQ_DONTWAIT) == -1)
		goto fail;
	if (zmq_send(f->sock, body, len, ZMQ_DONTWAIT) == -1)
		goto fail;
	fabric_count(f, STAT_ipc_out);
	/* A send can swallow the read edge: look again from the loop. */
	if (f->again != NULL)
		fabric_again(f);
	return 0;
fail:
	fabric_count(f, STAT_ipc_dropped);
	log_ratelimited(LOG_INFO, "fabric: cannot send to %s: %s",
	    peer ? peer : "the fabric", zmq_strerror(errno));
	if (f->again != NULL)
		fabric_again(f);
	return -1;
}

int
fabric_send(struct fabric *f, const char *peer, struct hmw *w)
{
	return fabric_send_parts(f, peer, w->hdr, hmw_body(w), hmw_len(w));
}

int
fabric_forward(struct fabric *f, const char *peer, const struct hmr *r)
{
	uint8_t hdr[HM_HDRLEN] = { HM_VERSION, r->type };

	return fabric_send_parts(f, peer, hdr, r->data, r->len);
}

/* Messages still queued when the socket closes get ms to go out (default:
 * none; a worker about to exit sets it for its last answers). */
void
fabric_linger(struct fabric *f, int ms)
{
	if (f != NULL && f->sock != NULL)
		zmq_setsockopt(f->sock, ZMQ_LINGER, &ms, sizeof(ms));
}

void
fabric_close(struct fabric *f)
{
	if (f == NULL)
		return;
	if (f->ev)
		event_free(f->ev);
	if (f->again)
		event_free(f->again);
	if (f->sock != NULL)
		zmq_close(f->sock);
	if (--fabric_ctx_refs == 0) {
		zmq_ctx_term(fabric_ctx);
		fabric_ctx = NULL;
	}
	free(f);
}

void
fabric_endpoint(const char *run_dir, char *buf, size_t len)
{
	snprintf(buf, len, "ipc://%s/fabric.sock", run_dir);
}

void
fabric_lane_endpoint(const char *run_dir, const char *lane, char *buf, size_t len)
{
	snprintf(buf, len, "ipc://%s/%s.sock", run_dir, lane);
}
