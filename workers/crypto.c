/*
 * The crypto/ACL worker: every device payload passes through here.  It
 * checks the topic and device id, the payload size and JSON, and builds the
 * backend envelope of SPEC §2 with the message's stable id; what it cannot
 * turn into an envelope goes to the dead-letter store with its reason.  All
 * parsing of untrusted device bytes happens in this process.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/random.h>

#include "hints.h"
#include "jsoncheck.h"
#include "log.h"
#include "outbox.h"
#include "proto.h"
#include "util.h"
#include "worker.h"
#include "workers.h"

#define SEEN_SLOTS     65536     /* presence hints sent at most once a second per device */
#define SEEN_EVERY_MS  1000
#define TELEMETRY_MAX  4096      /* a telemetry payload the router keeps for GET /v1/devices/{id} */
#define CRYPTO_LINGER_MS 2       /* envelopes wait this long for company */
#define HINT_KEEP      65536     /* status and response hints the router has not taken */
#define HINT_BYTES     (64u << 20) /* and the bytes of their payloads, at most */
#define HINT_TICK_MS   500
#define HINT_RESEND_TICK 1024    /* hints sent again a tick, at most */

/*
 * A device's last hint (telemetry, events) and the one held back: what
 * comes within a second of a hint waits, and the last of it goes when the
 * second is over (seen_tick), so that the router's view of the device
 * ends at its last message, not the first of its last burst.
 */
struct seen {
	char    id[129];
	bool    held;           /* a message came since `at`, not told yet */
	bool    listed;         /* in crypto.held */
	char    held_kind[12];
	int64_t at;             /* mono ms of the last hint */
	int64_t held_received_ms;
	char   *held_json;      /* its telemetry payload (NULL: none kept) */
	size_t  held_len;
};
#define SEEN_HELD_BYTES (16u << 20)  /* held payloads, at most (else without) */

struct crypto {
	struct worker *w;
	struct seen   *seen;
	size_t         held_bytes;   /* of seen[].held_json */
	uint32_t      *held;         /* slots of seen[] holding something, or were */
	size_t         nheld;
	struct event  *seen_ev;
	struct jsoncheck jc;
	char          *buf;          /* envelope being built */
	size_t         cap;
	struct hmw     out;          /* ENVELOPE records not sent yet */
	int            nout;
	struct event  *linger;       /* sends them CRYPTO_LINGER_MS after the first */
	/* DEVICE_INFO messages, sent at the end of each batch: the router
	 * waits for responses.  The device's envelope (a response) lingers, but
	 * less than the router's notifications, so it is likely on its way to
	 * the spool before the router's own (the request it confirmed).  Likely,
	 * not guaranteed: the two travel different paths. */
	struct hmw     infos[PROTO_BATCH_RECORDS];
	int            ninfos;
	/*
	 * Every status and response told to the router, kept until it says
	 * the group that stored the change is committed (hints.h): one lost in
	 * a dying router (in its socket, its queue, or a group it could not
	 * commit) would leave a device shown online after its Last Will, or a
	 * request its device answered ending in timeout.  The router takes a
	 * copy sent again like the first (a response matched twice changes
	 * nothing), but not what it says of presence if a later message of the
	 * device came first.
	 */
	struct hints  *hints;
	uint64_t       life;         /* this run's, echoed in the router's acknowledgements */
	struct event  *hint_ev;
};

static const struct {
	const char *topic;           /* last topic level */
	const char *kind;            /* envelope kind */
} crypto_kinds[] = {
	{ "status", "status" },
	{ "telemetry", "telemetry" },
	{ "response", "response" },
	{ "events", "event" },
};

static void
crypto_reject(struct crypto *c, const struct msg_dev_in *in, const char *device,
    size_t devlen, const char *reason, const char *detail)
{
	struct msg_reject rj;
	struct hmw m;
	size_t keep = in->payload.len;

	/* Keep what the store needs to show, not a hostile payload's megabytes. */
	if (keep > c->w->cf->max_payload)
		keep = c->w->cf->max_payload;
	rj.slot = in->slot;
	rj.epoch = in->epoch;
	rj.seq = in->seq;
	rj.received_ms = in->received_ms;
	rj.id = in->id;
	rj.device = (struct pstr){ device, devlen };
	rj.topic = in->topic;
	rj.reason = (struct pstr){ reason, strlen(reason) };
	rj.detail = (struct pstr){ detail, strlen(detail) };
	rj.payload = (struct pstr){ in->payload.p, keep };
	hmw_init(&m, HM_FAB_REJECT);
	proto_write_reject(&m, &rj);
	worker_lane_send(c->w, &m);
	hmw_free(&m);
	worker_count(c->w, STAT_rejected, 1);
	if (devlen > 0)
		log_ratelimited(LOG_INFO, "message %.*s from %.*s rejected: %s (%s)",
		    (int)in->id.len, in->id.p, (int)devlen, device, reason, detail);
	else
		log_ratelimited(LOG_INFO, "message %.*s on a topic of no valid device rejected: "
		    "%s (%s)", (int)in->id.len, in->id.p, reason, detail);
}

static int
crypto_reserve(struct crypto *c, size_t need)
{
	char *nb;

	if (need <= c->cap)
		return 0;
	nb = realloc(c->buf, need);
	if (nb == NULL)
		return -1;
	c->buf = nb;
	c->cap = need;
	return 0;
}

/* Keep a hint for the router; its hseq, or 0 when it cannot be kept (sent once). */
static uint64_t
hint_keep(struct crypto *c, const char *device, size_t devlen, const char *kind,
    const struct msg_dev_in *in)
{
	int dropped;
	uint64_t hseq = hints_keep(c->hints, kind, device, devlen, in->payload.p, in->payload.len,
	    in->received_ms, mono_ms(), &dropped);

	if (dropped > 0) {
		/* The router has not taken the oldest for a long time: it is away,
		 * or dying again and again. */
		log_ratelimited(LOG_WARNING, "the router has not taken the oldest status and "
		    "response hints (at most %d and %u MiB are kept): %d dropped", HINT_KEEP,
		    HINT_BYTES >> 20, dropped);
		worker_count(c->w, STAT_ipc_dropped, (uint64_t)dropped);
	}
	return hseq;
}

static void
hint_send_again(void *arg, const struct hint_view *v)
{
	struct crypto *c = arg;
	struct msg_device_info info;
	struct hmw m;

	info.device = (struct pstr){ v->device, v->devlen };
	info.kind = (struct pstr){ v->kind, strlen(v->kind) };
	info.received_ms = v->received_ms;
	info.json = (struct pstr){ v->json, v->jsonlen };
	info.life = c->life;
	info.hseq = v->hseq;
	info.resent = 1;
	hmw_init(&m, HM_FAB_DEVICE_INFO);
	proto_write_device_info(&m, &info);
	worker_send(c->w, NULL, &m);
	hmw_free(&m);
}

static void
hint_tick(evutil_socket_t fd, short what, void *arg)
{
	struct crypto *c = arg;
	struct timeval tv = { 0, HINT_TICK_MS * 1000 };
	int sent = hints_due(c->hints, mono_ms(), HINT_RESEND_TICK, hint_send_again, c);

	if (sent > 0) {
		worker_count(c->w, STAT_hints_resent, (uint64_t)sent);
		log_ratelimited(LOG_WARNING, "%d status and response hints sent to the router "
		    "again (not acknowledged)", sent);
	}
	evtimer_add(c->hint_ev, &tv);
}

static void
seen_drop(struct crypto *c, struct seen *s)
{
	if (s->held_json != NULL) {
		c->held_bytes -= s->held_len;
		free(s->held_json);
		s->held_json = NULL;
	}
	s->held = false;
}

/* One DEVICE_INFO, at the end of this batch (with the others) or, from a
 * timer, at once. */
static void
crypto_info(struct crypto *c, const char *device, size_t devlen, const char *kind,
    int64_t received_ms, const char *json, size_t jsonlen, const struct msg_dev_in *in,
    bool now)
{
	bool full = strcmp(kind, "status") == 0 || strcmp(kind, "response") == 0;
	struct msg_device_info info;
	struct hmw m;

	info.device = (struct pstr){ device, devlen };
	info.kind = (struct pstr){ kind, strlen(kind) };
	info.received_ms = received_ms;
	info.json = (struct pstr){ json, jsonlen };
	info.life = c->life;
	info.hseq = full ? hint_keep(c, device, devlen, strcmp(kind, "status") == 0 ?
	    "status" : "response", in) : 0;
	info.resent = 0;
	if (now) {
		hmw_init(&m, HM_FAB_DEVICE_INFO);
		proto_write_device_info(&m, &info);
		worker_send(c->w, NULL, &m);
		hmw_free(&m);
		return;
	}
	hmw_init(&c->infos[c->ninfos], HM_FAB_DEVICE_INFO);
	proto_write_device_info(&c->infos[c->ninfos], &info);
	c->ninfos++;
}

/* Tell the router what a device held back when its second is over. */
static void
seen_flush(struct crypto *c, struct seen *s)
{
	crypto_info(c, s->id, strlen(s->id), s->held_kind, s->held_received_ms,
	    s->held_json != NULL ? s->held_json : "", s->held_json != NULL ? s->held_len : 0,
	    NULL, true);
	s->at = mono_ms();
	seen_drop(c, s);
}

static void
seen_tick(evutil_socket_t fd, short what, void *arg)
{
	struct crypto *c = arg;
	struct timeval tv = { 0, SEEN_EVERY_MS / 4 * 1000 };
	int64_t now = mono_ms();
	size_t keep = 0;

	for (size_t i = 0; i < c->nheld; i++) {
		struct seen *s = &c->seen[c->held[i]];

		if (s->held && now - s->at >= SEEN_EVERY_MS)
			seen_flush(c, s);
		if (s->held)
			c->held[keep++] = c->held[i];
		else
			s->listed = false;
	}
	c->nheld = keep;
	evtimer_add(c->seen_ev, &tv);
}

/* Presence for the router: status and responses always, others once a second
 * (telemetry with its payload, when small enough, for the device's view);
 * what comes within the second goes at its end, the last of it only. */
static void
crypto_tell_router(struct crypto *c, const char *device, size_t devlen, const char *kind,
    const struct msg_dev_in *in)
{
	bool full = strcmp(kind, "status") == 0 || strcmp(kind, "response") == 0;
	struct seen *s = &c->seen[hash32(device, devlen) % SEEN_SLOTS];
	bool same = strlen(s->id) == devlen && memcmp(s->id, device, devlen) == 0;
	bool small = strcmp(kind, "telemetry") == 0 && in->payload.len <= TELEMETRY_MAX;
	int64_t now = mono_ms();

	if (!same && s->held)
		seen_flush(c, s);       /* another device's, in the same slot */
	if (!full && same && now - s->at < SEEN_EVERY_MS) {
		/* Held: replaces what was held (only the last one goes). */
		seen_drop(c, s);
		s->held = true;
		if (!s->listed) {
			s->listed = true;
			c->held[c->nheld++] = (uint32_t)(s - c->seen);
		}
		snprintf(s->held_kind, sizeof(s->held_kind), "%s", kind);
		s->held_received_ms = in->received_ms;
		if (small && c->held_bytes + in->payload.len <= SEEN_HELD_BYTES &&
		    (s->held_json = malloc(in->payload.len + 1)) != NULL) {
			memcpy(s->held_json, in->payload.p, in->payload.len);
			s->held_len = in->payload.len;
			c->held_bytes += s->held_len;
		}
		return;
	}
	if (strcmp(kind, "status") == 0) {
		/* It may say offline (a Last Will): the device's next message,
		 * however soon, must reach the router to say it is back; and what
		 * was held back came before it, so it no longer says "online". */
		if (same) {
			seen_drop(c, s);
			s->id[0] = '\0';
		}
	} else {
		seen_drop(c, s);
		memcpy(s->id, device, devlen);
		s->id[devlen] = '\0';
		s->at = now;
	}
	crypto_info(c, device, devlen, kind, in->received_ms, full || small ? in->payload.p : "",
	    full || small ? in->payload.len : 0, in, false);
}

/* A message id is 26 Crockford base32 characters (util.h, msgid_make). */
static bool
crypto_id_valid(const struct pstr *id)
{
	if (id->len != ULID_LEN - 1)
		return false;
	for (size_t i = 0; i < id->len; i++)
		if (strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", id->p[i]) == NULL || id->p[i] == '\0')
			return false;
	return true;
}

static void
crypto_send_envelopes(struct crypto *c)
{
	if (c->nout > 0) {
		/* Lost (http worker away too long): the outboxes send them again. */
		worker_lane_send(c->w, &c->out);
		hmw_free(&c->out);
		c->nout = 0;
	}
}

static void
crypto_send_infos(struct crypto *c)
{
	for (int i = 0; i < c->ninfos; i++) {
		worker_send(c->w, NULL, &c->infos[i]);
		hmw_free(&c->infos[i]);
	}
	c->ninfos = 0;
}

static void
crypto_linger_cb(evutil_socket_t fd, short what, void *arg)
{
	crypto_send_envelopes(arg);
}

/*
 * The end of a batch: device infos leave now; envelopes wait up to
 * CRYPTO_LINGER_MS for more, so that at a moderate rate the http worker
 * wakes once for several, not once for each.  A full batch has already left.
 */
static void
crypto_batch_done(struct crypto *c)
{
	struct timeval tv = { 0, CRYPTO_LINGER_MS * 1000 };

	crypto_send_infos(c);
	if (c->nout > 0 && !evtimer_pending(c->linger, NULL))
		evtimer_add(c->linger, &tv);
}

/* SPEC §2 envelope, in this order; the payload member comes last. */
#define ENV_ID       "{\"id\":\""
#define ENV_DEVICE   "\",\"device\":\""
#define ENV_KIND     "\",\"kind\":\""
#define ENV_TOPIC    "\",\"topic\":\""
#define ENV_RECEIVED "\",\"receivedAt\":\""
#define ENV_GATEWAY  "\",\"gateway\":\""
#define ENV_PAYLOAD  "\",\"payload\":"

static char *
crypto_put(char *p, const void *s, size_t n)
{
	memcpy(p, s, n);
	return p + n;
}

/* One device message; 0 when read (envelope or rejection), -1 if malformed. */
static int
crypto_device_message(struct crypto *c, struct hmr *r)
{
	struct msg_dev_in in;
	const char *id, *kindp, *kind = NULL;
	size_t idlen, kindlen;
	char topic[300], ts[RFC3339_LEN], detail[200];
	struct jc_result jr;
	const struct config *cf = c->w->cf;
	struct msg_envelope env;
	size_t n, need, klen, gwlen;
	char *p;

	/* A malformed id comes only from a broken or hostile fabric peer. */
	if (proto_read_dev_in(r, &in) == -1 || !crypto_id_valid(&in.id))
		return -1;
	if (in.topic.len >= sizeof(topic)) {
		crypto_reject(c, &in, "", 0, "bad_topic", "topic too long");
		return 0;
	}
	memcpy(topic, in.topic.p, in.topic.len);
	topic[in.topic.len] = '\0';
	if (topic_split(topic, &id, &idlen, &kindp, &kindlen) == -1) {
		const char *slash = strncmp(topic, "device/", 7) == 0 ? strchr(topic + 7, '/') : NULL;
		size_t bad = slash != NULL ? (size_t)(slash - (topic + 7)) : 0;

		if (slash != NULL && strchr(slash + 1, '/') == NULL && slash[1] != '\0') {
			/* The shape is right, the id is not: say which and why. */
			char shown[80];

			snprintf(shown, sizeof(shown), "%.*s%s", (int)(bad > 64 ? 64 : bad),
			    topic + 7, bad > 64 ? "..." : "");
			str_printable(shown);
			snprintf(detail, sizeof(detail), "device id \"%s\" (%zu bytes) does not "
			    "match " DEVICE_ID_PATTERN, shown, bad);
			crypto_reject(c, &in, "", 0, "bad_device_id", detail);
		} else
			crypto_reject(c, &in, "", 0, "bad_topic", "topic is not device/<id>/<kind>");
		return 0;
	}
	for (size_t i = 0; i < sizeof(crypto_kinds) / sizeof(crypto_kinds[0]); i++)
		if (strcmp(kindp, crypto_kinds[i].topic) == 0)
			kind = crypto_kinds[i].kind;
	if (kind == NULL) {
		crypto_reject(c, &in, id, idlen, "bad_topic", "unknown message kind");
		return 0;
	}
	if (in.payload.len > cf->max_payload) {
		/* The mqtt worker keeps no more than max_payload + OUTBOX_TRUNC_EXTRA
		 * of a payload: one that long was longer (its log says how long). */
		if (in.payload.len >= cf->max_payload + OUTBOX_TRUNC_EXTRA)
			snprintf(detail, sizeof(detail), "payload of more than %zu bytes is over "
			    "[limits] max_payload %zu", in.payload.len - 1, cf->max_payload);
		else
			snprintf(detail, sizeof(detail), "payload of %zu bytes is over [limits] "
			    "max_payload %zu", in.payload.len, cf->max_payload);
		crypto_reject(c, &in, id, idlen, "too_large", detail);
		return 0;
	}
	c->jc.max_depth = cf->max_depth;
	switch (jsoncheck(&c->jc, in.payload.p, in.payload.len, &jr)) {
	case 0:
		break;
	case -1:
		if (jr.too_deep) {
			/* Valid JSON, maybe, but deeper than backends' parsers go
			 * (.NET's default is 64, Ruby's 100). */
			snprintf(detail, sizeof(detail), "nesting deeper than [limits] max_depth %d "
			    "at byte %zu", cf->max_depth, jr.error_at);
			crypto_reject(c, &in, id, idlen, "too_deep", detail);
			return 0;
		}
		snprintf(detail, sizeof(detail), "invalid JSON at byte %zu: %s", jr.error_at, jr.error);
		crypto_reject(c, &in, id, idlen, "invalid_json", detail);
		return 0;
	default:
		/* Not taken: its outbox sends it again. */
		log_ratelimited(LOG_ERR, "out of memory checking message %.*s",
		    (int)in.id.len, in.id.p);
		return 0;
	}
	if (jr.top != JC_OBJECT) {
		crypto_reject(c, &in, id, idlen, "invalid_json", "payload is not a JSON object");
		return 0;
	}
	/* SPEC: "type is mandatory"; an empty one names nothing (the API
	 * refuses it from the backend too). */
	if (strcmp(kind, "event") == 0 && (jr.type_member != JC_STRING || jr.type_empty)) {
		crypto_reject(c, &in, id, idlen, "missing_type",
		    "an event needs a non-empty string \"type\"");
		return 0;
	}

	/* The device id, topic and node name are checked to need no escaping;
	 * the payload goes in verbatim, as the device sent it.  Pieces are
	 * copied, not printed: snprintf was a tenth of this worker's time. */
	fmt_rfc3339(in.received_ms, ts);
	klen = strlen(kind);
	gwlen = strlen(cf->node_name);
	need = sizeof(ENV_ID) + sizeof(ENV_DEVICE) + sizeof(ENV_KIND) + sizeof(ENV_TOPIC) +
	    sizeof(ENV_RECEIVED) + sizeof(ENV_GATEWAY) + sizeof(ENV_PAYLOAD) +
	    in.id.len + idlen + klen + in.topic.len + RFC3339_LEN + gwlen +
	    in.payload.len + 1;
	if (crypto_reserve(c, need) == -1) {
		log_err("out of memory building an envelope");
		return 0;
	}
	p = c->buf;
	p = crypto_put(p, ENV_ID, sizeof(ENV_ID) - 1);
	p = crypto_put(p, in.id.p, in.id.len);
	p = crypto_put(p, ENV_DEVICE, sizeof(ENV_DEVICE) - 1);
	p = crypto_put(p, id, idlen);
	p = crypto_put(p, ENV_KIND, sizeof(ENV_KIND) - 1);
	p = crypto_put(p, kind, klen);
	p = crypto_put(p, ENV_TOPIC, sizeof(ENV_TOPIC) - 1);
	p = crypto_put(p, in.topic.p, in.topic.len);
	p = crypto_put(p, ENV_RECEIVED, sizeof(ENV_RECEIVED) - 1);
	p = crypto_put(p, ts, strlen(ts));
	p = crypto_put(p, ENV_GATEWAY, sizeof(ENV_GATEWAY) - 1);
	p = crypto_put(p, cf->node_name, gwlen);
	p = crypto_put(p, ENV_PAYLOAD, sizeof(ENV_PAYLOAD) - 1);
	p = crypto_put(p, in.payload.p, in.payload.len);
	*p++ = '}';
	n = (size_t)(p - c->buf);

	env.slot = in.slot;
	env.epoch = in.epoch;
	env.seq = in.seq;
	env.received_ms = in.received_ms;
	env.id = in.id;
	env.device = (struct pstr){ id, idlen };
	env.json = (struct pstr){ c->buf, n };
	if (c->nout == 0)
		hmw_init(&c->out, HM_FAB_ENVELOPE);
	proto_write_envelope(&c->out, &env);
	c->nout++;
	worker_count(c->w, STAT_envelopes, 1);
	crypto_tell_router(c, id, idlen, kindp, &in);
	if (c->nout >= PROTO_BATCH_RECORDS || hmw_len(&c->out) >= PROTO_BATCH_BYTES)
		crypto_send_envelopes(c);
	if (c->ninfos >= PROTO_BATCH_RECORDS)
		crypto_send_infos(c);
	return 0;
}

/* A batch of device messages: their envelopes leave as one batch too. */
static void
crypto_device_messages(struct crypto *c, struct hmr *r)
{
	do {
		if (crypto_device_message(c, r) == -1) {
			/* The rest of the batch cannot be framed: its outbox resends it. */
			worker_bad_msg(c->w, r->type, NULL);
			break;
		}
	} while (hmr_more(r));
	crypto_batch_done(c);
}

/* Stop: what lingers leaves first (else its outbox would resend it). */
static void
crypto_stop(struct worker *w)
{
	struct crypto *c = w->arg;

	crypto_send_infos(c);
	crypto_send_envelopes(c);
	worker_exit(w, 0);
}

static void
crypto_dispatch(struct worker *w, const char *peer, struct hmr *r)
{
	struct crypto *c = w->arg;

	static struct msg_ack ack;

	switch (r->type) {
	case HM_FAB_DEV_IN:
		crypto_device_messages(c, r);
		break;
	case HM_FAB_ACK:
		if (proto_read_ack(r, &ack) == -1 || ack.slot != PROTO_SLOT_HINTS) {
			worker_bad_msg(w, r->type, peer);
			break;
		}
		if (ack.epoch == c->life)       /* else for an earlier run of this worker */
			hints_ack(c->hints, ack.seqs, ack.n);
		break;
	default:
		worker_bad_msg(w, r->type, peer);
	}
}

int
crypto_main(struct worker *w)
{
	static struct crypto crypto;
	struct crypto *c = &crypto;
	struct timeval tv = { 0, HINT_TICK_MS * 1000 };

	c->w = w;
	c->seen = calloc(SEEN_SLOTS, sizeof(*c->seen));
	c->held = calloc(SEEN_SLOTS, sizeof(*c->held));
	c->hints = hints_new(HINT_KEEP, HINT_BYTES);
	if (getrandom(&c->life, sizeof(c->life), 0) != (ssize_t)sizeof(c->life))
		c->life = mono_us() ^ ((uint64_t)getpid() << 32);
	c->linger = evtimer_new(w->base, crypto_linger_cb, c);
	c->hint_ev = evtimer_new(w->base, hint_tick, c);
	c->seen_ev = evtimer_new(w->base, seen_tick, c);
	if (c->seen == NULL || c->held == NULL || c->hints == NULL || c->linger == NULL ||
	    c->hint_ev == NULL ||
	    c->seen_ev == NULL || crypto_reserve(c, 64 * 1024) == -1)
		return 1;
	evtimer_add(c->hint_ev, &tv);
	tv.tv_usec = SEEN_EVERY_MS / 4 * 1000;
	evtimer_add(c->seen_ev, &tv);
	w->arg = c;
	w->hooks.fabric = crypto_dispatch;
	w->hooks.stop = crypto_stop;
	if (worker_join_fabric(w) == -1 || worker_lane_in(w, "crypto") == -1 ||
	    worker_lane_out(w, "spool") == -1)
		return 1;
	return worker_loop(w);
}
