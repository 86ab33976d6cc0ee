/*
 * The router: hub of the ZeroMQ fabric.  Every worker's DEALER connects to
 * its ROUTER socket; it passes acknowledgements http -> the owning mqtt
 * slot, spool backpressure to every mqtt worker, and hands request traffic
 * to the request store (requests.c).  Device messages and their envelopes
 * take the lanes mqtt -> crypto -> http (fabric.h), not this hop.
 */
#include <sys/queue.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fabric.h"
#include "log.h"
#include "proto.h"
#include "util.h"
#include "requests.h"
#include "worker.h"
#include "workers.h"

/*
 * The router's own envelopes for the http worker while it is absent
 * (restarting, or not yet connected at start) wait here, in order, instead
 * of being dropped.  Bounded; past the bound the notes' resend takes over.
 */
#define HOLD_MAX_BYTES  (64u << 20)
#define HOLD_RETRY_MS   20

struct held {
	STAILQ_ENTRY(held) link;
	uint8_t            type;
	size_t             len;
	char               body[];
};

struct hold {
	const char              *to;
	STAILQ_HEAD(, held)      q;
	size_t                   bytes;
};

struct router {
	struct worker   *w;
	struct requests *reqs;
	bool             paused;        /* the spool said it is full */
	unsigned         rotation;      /* next mqtt worker to publish on */
	int64_t          mqtt_down_until[CONFIG_MAX_MQTT]; /* mono ms; 0: up */
	bool             mqtt_joined[CONFIG_MAX_MQTT];     /* said hello: a retiring slot too */
	uint32_t         mqtt_gen[CONFIG_MAX_MQTT];        /* their lives, as last seen */
	struct hold      holds[1];      /* http.0 */
	struct event    *hold_retry;
};

static struct router router;

static void
router_mqtt_name(int slot, char *buf, size_t len)
{
	snprintf(buf, len, "mqtt.%d", slot);
}

static void
router_tell_mqtt(struct router *r, enum hm_type type, int only_slot)
{
	struct hmw m;
	char peer[32];

	hmw_init(&m, type);
	/* Retiring slots (over [workers] mqtt) read too: they hear it as well. */
	for (int i = 0; i < CONFIG_MAX_MQTT; i++) {
		if ((only_slot >= 0 && i != only_slot) ||
		    (i >= r->w->cf->mqtt_workers && !r->mqtt_joined[i]))
			continue;
		router_mqtt_name(i, peer, sizeof(peer));
		/* A retired slot is gone for good: not told again. */
		if (worker_send(r->w, peer, &m) == -1 && i >= r->w->cf->mqtt_workers)
			r->mqtt_joined[i] = false;
	}
	hmw_free(&m);
}

int
router_publish(struct worker *w, const struct msg_publish *pub)
{
	struct router *r = &router;
	int n = w->cf->mqtt_workers;
	char peer[32];
	struct hmw m;

	hmw_init(&m, HM_FAB_PUBLISH);
	proto_write_publish(&m, pub);
	for (int tries = 0; tries < n; tries++) {
		int slot = (int)(r->rotation++ % (unsigned)n);
		if (r->mqtt_down_until[slot] > mono_ms())
			continue;
		router_mqtt_name(slot, peer, sizeof(peer));
		if (worker_send(w, peer, &m) == 0) {
			hmw_free(&m);
			return slot;
		}
		r->mqtt_down_until[slot] = mono_ms() + 1000;
	}
	hmw_free(&m);
	return -1;
}

static struct hold *
router_hold(struct router *r, const char *to)
{
	for (size_t i = 0; i < sizeof(r->holds) / sizeof(r->holds[0]); i++)
		if (strcmp(r->holds[i].to, to) == 0)
			return &r->holds[i];
	return NULL;
}

/* Send what waits for h->to, oldest first, until the peer refuses again. */
static void
router_hold_flush(struct router *r, struct hold *h)
{
	struct held *m;

	while ((m = STAILQ_FIRST(&h->q)) != NULL) {
		struct hmr msg = { .data = m->body, .len = m->len, .type = m->type };

		if (fabric_forward(r->w->fab, h->to, &msg) == -1) {
			struct timeval tv = { 0, HOLD_RETRY_MS * 1000 };
			evtimer_add(r->hold_retry, &tv);
			return;
		}
		worker_count(r->w, STAT_routed, 1);
		STAILQ_REMOVE_HEAD(&h->q, link);
		h->bytes -= m->len;
		free(m);
	}
}

static void
router_hold_retry(evutil_socket_t fd, short what, void *arg)
{
	struct router *r = arg;

	for (size_t i = 0; i < sizeof(r->holds) / sizeof(r->holds[0]); i++)
		router_hold_flush(r, &r->holds[i]);
}

static void
router_forward(struct router *r, const char *to, const struct hmr *msg)
{
	struct hold *h = router_hold(r, to);
	struct held *m;

	if ((h == NULL || STAILQ_EMPTY(&h->q)) && fabric_forward(r->w->fab, to, msg) == 0) {
		worker_count(r->w, STAT_routed, 1);
		return;
	}
	/* Not held (acks, to mqtt): the sender's at-least-once logic resends. */
	if (h == NULL)
		return;
	if (h->bytes + msg->len > HOLD_MAX_BYTES || (m = malloc(sizeof(*m) + msg->len)) == NULL) {
		log_ratelimited(LOG_WARNING, "%s absent and %zu bytes wait for it: dropping; "
		    "it is sent again later", to, h->bytes);
		return;
	}
	m->type = msg->type;
	m->len = msg->len;
	memcpy(m->body, msg->data, msg->len);
	STAILQ_INSERT_TAIL(&h->q, m, link);
	h->bytes += msg->len;
	if (!evtimer_pending(r->hold_retry, NULL)) {
		struct timeval tv = { 0, HOLD_RETRY_MS * 1000 };
		evtimer_add(r->hold_retry, &tv);
	}
}

void
router_to_http(struct worker *w, struct hmw *m)
{
	struct hmr msg = { .data = hmw_body(m), .len = hmw_len(m), .type = m->hdr[1] };

	router_forward(&router, "http.0", &msg);
}

static void
router_hello(struct router *r, const char *peer, struct hmr *msg)
{
	struct msg_hello h;

	if (proto_read_hello(msg, &h) == -1)
		goto bad;
	log_debug("%s joined the fabric (generation %u)", peer, h.generation);
	if (h.role == ROLE_MQTT && h.slot < CONFIG_MAX_MQTT) {
		bool new_life = h.generation != r->mqtt_gen[h.slot];

		r->mqtt_down_until[h.slot] = 0;
		r->mqtt_joined[h.slot] = true;
		r->mqtt_gen[h.slot] = h.generation;
		/* A new mqtt worker must learn that the spool is full. */
		if (r->paused)
			router_tell_mqtt(r, HM_FAB_PAUSE, (int)h.slot);
		/* Also the hello of one that was there before us (see
		 * mqtt_router_watch): only what waited for it goes. */
		requests_on_mqtt_up(r->reqs, (int)h.slot, new_life);
	}
	return;
bad:
	worker_bad_msg(r->w, msg->type, peer);
}

static void
router_ack(struct router *r, struct hmr *msg)
{
	static struct msg_ack ack;
	char peer[32];

	if (proto_read_ack(msg, &ack) == -1) {
		worker_bad_msg(r->w, msg->type, "the http worker");
		return;
	}
	if (ack.slot == PROTO_SLOT_ROUTER) {
		requests_on_ack(r->reqs, &ack);
		return;
	}
	if (ack.slot >= CONFIG_MAX_MQTT)
		return;
	router_mqtt_name((int)ack.slot, peer, sizeof(peer));
	router_forward(r, peer, msg);
}

static void
router_dispatch(struct worker *w, const char *peer, struct hmr *msg)
{
	struct router *r = w->arg;
	struct msg_request req;
	struct msg_published pubd;
	struct msg_device_info info;
	struct hold *h = router_hold(r, peer);

	/* A held-for peer speaks: it is back. */
	if (h != NULL && !STAILQ_EMPTY(&h->q))
		router_hold_flush(r, h);
	switch (msg->type) {
	case HM_FAB_HELLO:
		router_hello(r, peer, msg);
		break;
	case HM_FAB_ACK:
		router_ack(r, msg);
		break;
	case HM_FAB_PAUSE:
	case HM_FAB_RESUME:
		if (hmr_end(msg) == -1)
			goto bad;
		/* The http worker repeats its state now and then: pass it on every
		 * time (a lost RESUME must heal), log only a change. */
		if (r->paused != (msg->type == HM_FAB_PAUSE)) {
			r->paused = msg->type == HM_FAB_PAUSE;
			log_notice("spool %s: %s device reading", r->paused ? "full" : "has room again",
			    r->paused ? "pausing" : "resuming");
		}
		requests_on_pause(r->reqs, r->paused);
		worker_gauge(w, GAUGE_paused, r->paused);
		router_tell_mqtt(r, (enum hm_type)msg->type, -1);
		break;
	case HM_FAB_REQUEST:
		if (proto_read_request(msg, &req) == -1)
			goto bad;
		requests_on_request(r->reqs, peer, &req);
		break;
	case HM_FAB_PUBLISHED:
		if (proto_read_published(msg, &pubd) == -1)
			goto bad;
		requests_on_published(r->reqs, &pubd);
		break;
	case HM_FAB_DEVICE_INFO:
		if (proto_read_device_info(msg, &info) == -1)
			goto bad;
		requests_on_device(r->reqs, peer, &info);
		break;
	default:
		goto bad;
	}
	return;
bad:
	worker_bad_msg(w, msg->type, peer);
}

static json_t *
router_admin(struct worker *w, int argc, char **argv)
{
	struct router *r = w->arg;

	return requests_admin(r->reqs, argc, argv);
}

static void
router_reload(struct worker *w, const struct config *old)
{
	struct router *r = w->arg;

	requests_reload(r->reqs);
}

/* Answer what waits on requests, and give those answers time to leave. */
static void
router_stop(struct worker *w)
{
	struct router *r = w->arg;

	if (r->reqs != NULL)
		requests_stop(r->reqs);
	fabric_linger(w->fab, 1000);
	worker_exit(w, 0);
}

int
router_main(struct worker *w)
{
	struct router *r = &router;
	char ep[600], path[600];
	int code;

	r->w = w;
	w->arg = r;
	fabric_endpoint(w->cf->run_dir, ep, sizeof(ep));
	snprintf(path, sizeof(path), "%s/fabric.sock", w->cf->run_dir);
	unlink(path);   /* a dead router's socket file */
	w->hooks.fabric = router_dispatch;
	w->hooks.admin = router_admin;
	w->hooks.reload = router_reload;
	w->hooks.stop = router_stop;
	if (worker_bind_fabric(w, ep) == -1)
		return 1;
	r->holds[0].to = "http.0";
	for (size_t i = 0; i < sizeof(r->holds) / sizeof(r->holds[0]); i++)
		STAILQ_INIT(&r->holds[i].q);
	r->hold_retry = evtimer_new(w->base, router_hold_retry, r);
	r->reqs = requests_open(w);
	if (r->reqs == NULL)
		return 1;
	/* The mqtt workers already running are not new lives when they say hello. */
	for (int i = 0; i < CONFIG_MAX_MQTT; i++)
		r->mqtt_gen[i] = worker_generation_of(w, ROLE_MQTT, i);
	code = worker_loop(w);
	requests_close(r->reqs);
	/* The process ends with _exit: close the socket, so that its lingering
	 * answers (router_stop) go out first. */
	fabric_close(w->fab);
	w->fab = NULL;
	return code;
}
