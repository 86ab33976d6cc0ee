/*
 * The http worker: commits envelopes to the spool, acknowledges them to
 * their outbox only after the commit, and delivers them to the backend with
 * libcurl's multi_socket API on the worker's libevent loop, one POST in
 * flight per lane (lane = device hash) so each device's order holds.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <jansson.h>
#include <sodium.h>

#include "log.h"
#include "proto.h"
#include "util.h"
#include "webhook.h"
#include "worker.h"
#include "workers.h"
#include "spool.h"

#define HTTP_LINGER_MS          5       /* wait this long for a batch to fill */
#define HTTP_BACKOFF_MIN_MS     200
#define HTTP_BACKOFF_MAX_MS     30000
#define HTTP_RETRY_AFTER_MAX_MS 3600000
#define HTTP_BODY_READ_MAX      (1u << 20)  /* an answer's body is read this far, no further */
#define HTTP_OUTAGE_MS          5000    /* failing this long is worth a "back" line */
#define HTTP_DETAIL_MAX         SPOOL_DETAIL_MAX
#define HTTP_BATCH_OPS          1024    /* spool changes per write transaction */
#define HTTP_PUT_COMMIT_MS      5       /* new envelopes wait at most this for a commit */
#define HTTP_LAZY_COMMIT_MS     20      /* deletions wait at most this for a commit */
#define HTTP_SENT_SLOTS         (1u << 18)  /* delivered ids remembered (8 MiB) */
#define HTTP_SENT_WAYS          4           /* slots per set; a new id evicts the set's oldest */
#define HTTP_SENT_SETS          (HTTP_SENT_SLOTS / HTTP_SENT_WAYS)
#define HTTP_SENT_ID_MAX        31
#define HTTP_STOP_MARGIN_MS     1000    /* of stop_timeout_ms, left for commit and exit */
#define HTTP_TICK_MS            1000
#define HTTP_PAUSE_RESEND_MS    10000   /* a restarted router must learn it */
#define HTTP_DEAD_SHARE         4       /* rejected entries: 1/4 of [spool] max_bytes */
#define HTTP_DEAD_TRIM_MAX      10000   /* entries dropped a tick, at most */
#define HTTP_LIST_MAX           10000   /* dead-letter entries in one admin answer */
#define HTTP_LOW_WATER_PCT      80
#define HTTP_LIST_DEFAULT       100
#define HTTP_KEY_MAX            256
#define HTTP_DISK_FULL_MS       1000    /* reading pauses this long on a full disk */

enum http_lane_state { LANE_IDLE, LANE_LINGER, LANE_SENDING, LANE_BACKOFF };

static const char *http_lane_state_names[] = { "idle", "idle", "sending", "backoff" };

struct http;

struct lane {
	struct http       *h;
	int                idx;
	uint64_t          *q;           /* ring of spool sequences, oldest first */
	size_t             cap, head, n;
	enum http_lane_state    state;
	size_t             inflight;    /* the first `inflight` of q are in the POST */
	bool               array;       /* the body is a JSON array */
	CURL              *easy;
	char              *url;         /* the URL last set on easy */
	struct curl_slist *hdrs;
	char              *body;
	size_t             bodylen, bodycap;
	char               whid[SPOOL_ID_MAX + 16];
	char             (*ids)[HTTP_SENT_ID_MAX + 1]; /* ids in the POST ("" if too long) */
	size_t             idcap;
	char               resp[HTTP_DETAIL_MAX];
	size_t             resplen;
	size_t             bodyread;            /* bytes of the answer's body seen */
	char               location[256];       /* the answer's Location, for the log */
	bool               answered;            /* the final answer's headers all came */
	int64_t            retry_after_ms;      /* -1: the answer had none */
	int                attempt;
	int64_t            next_retry_ms;       /* mono */
	struct event      *timer;               /* linger and backoff */
	char               errbuf[CURL_ERROR_SIZE];
};

/* An acknowledgement owed once the batch is committed. */
struct pend_ack {
	uint32_t slot;
	uint64_t epoch;
	uint64_t seq;
	uint64_t spooled;       /* its spool sequence when this pass put it, else 0 */
	size_t   order;
};

/*
 * The first envelope of an mqtt outbox that the spool could not take (map
 * or disk full): the later ones of that outbox are not taken either (not
 * acknowledged: the outbox sends them again) until it comes again, so that
 * a device's messages keep their order.  since: mono ms, 0: no hole.
 */
struct hole {
	uint64_t epoch, seq;
	int64_t  since;
};
#define HTTP_HOLE_MAX_MS 60000  /* a hole not filled by then is forgotten */

/* A new spool entry that enters its lane once the batch is committed. */
struct pend_new {
	uint64_t seq;
	int      lane;
};

struct http_sock {
	struct http  *h;
	struct event *ev;
	short         kind;     /* what ev waits for */
};

struct http {
	struct worker   *w;
	struct spool    *sp;
	uint64_t         dead_stuck;    /* dead entries when a trim found none to drop: */
	                                /* no new look until that number changes */
	CURLM           *multi;
	struct event    *curl_timer;
	struct lane     *lanes;
	int              nlanes;
	int              sending;       /* lanes with a POST in flight */
	/* the loop pass's write transaction */
	struct event    *commit_ev;
	int64_t          commit_due;    /* mono_ms() when commit_ev fires */
	size_t           ops;
	struct pend_ack *acks;
	size_t           nacks, ackcap;
	struct pend_new *news;
	size_t           nnews, newcap;
	/* backpressure */
	bool             paused;
	int64_t          pause_sent_ms;
	uint64_t         refused_full;  /* puts refused: the map was full */
	struct hole      holes[CONFIG_MAX_MQTT];
	int64_t          disk_full_until;       /* mono ms: pause reading till then */
	struct event    *tick;
	bool             stopping;
	bool             fatal;
	uint64_t         failing;       /* POSTs retried since the last 2xx */
	int64_t          failing_since; /* mono ms of the first of them */
	struct event    *drain_ev;
	unsigned char    key[HTTP_KEY_MAX];
	size_t           keylen;
	/*
	 * Ids of envelopes the backend took, in sets of HTTP_SENT_WAYS slots
	 * chosen by hash; a new id takes the place of the oldest of its set.
	 * An outbox resends what was spooled but never acknowledged (the
	 * router died with the ACK): once delivered, the spool no longer knows
	 * the id, and the backend would get it a second time.  A hit here
	 * acknowledges the copy instead; a miss only costs that duplicate.
	 * With one slot per hash, an id had a 9% chance of being pushed out by
	 * the 25,000 deliveries of the 5 s an outbox waits before resending;
	 * with four, the chance is under 0.1%.  A new life starts with the ids
	 * the spool's files show gone (http_sent_gone): the acknowledgements
	 * may have died with the last one.
	 */
	char           (*sent)[HTTP_SENT_ID_MAX + 1];
	uint8_t         *sent_next;            /* per set: the slot to take next */
};

static struct http http_state;

static void http_flush(struct http *h);
static void http_finish(struct http *h);
static void http_lane_kick(struct lane *l);

/* Arm a timer ms from now. */
static void
http_after(struct event *ev, int64_t ms)
{
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };

	evtimer_add(ev, &tv);
}

static int
http_batch_max(const struct http *h)
{
	int b = h->w->cf->batch_max;

	return b < 1 ? 1 : b;
}

/* The spool failed under us: what is not committed was not acknowledged,
 * so a restart from what is on disk loses nothing. */
static void
http_fatal(struct http *h, const char *what)
{
	if (h->fatal)
		return;
	h->fatal = true;
	log_err("spool failure (%s): restarting from the committed state", what);
	worker_exit(h->w, 1);
}

/* The signing key: the decoded bytes of "whsec_<base64>", else the text. */
static int
http_key(struct http *h, const char *secret)
{
	uint8_t *key;
	size_t len;

	if (secret[0] == '\0') {
		h->keylen = 0;
		return 0;
	}
	if (webhook_secret_parse(secret, &key, &len) == -1) {
		log_err("[backend] secret: whsec_ value is not valid base64");
		return -1;
	}
	if (len > sizeof(h->key)) {     /* config caps the secret at 255 bytes */
		log_err("[backend] secret: longer than %zu bytes", sizeof(h->key));
		free(key);
		return -1;
	}
	memcpy(h->key, key, len);
	h->keylen = len;
	free(key);
	return 0;
}

/* ---- lanes: FIFO rings of spool sequences ---- */

static int
http_lane_push(struct lane *l, uint64_t seq)
{
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 64;
		uint64_t *q = malloc(ncap * sizeof(*q));

		if (q == NULL)
			return -1;
		for (size_t i = 0; i < l->n; i++)
			q[i] = l->q[(l->head + i) % l->cap];
		free(l->q);
		l->q = q;
		l->cap = ncap;
		l->head = 0;
	}
	l->q[(l->head + l->n) % l->cap] = seq;
	l->n++;
	return 0;
}

static uint64_t
http_lane_at(const struct lane *l, size_t i)
{
	return l->q[(l->head + i) % l->cap];
}

static void
http_lane_pop(struct lane *l, size_t k)
{
	if (k > l->n)
		k = l->n;
	l->head = (l->head + k) % (l->cap ? l->cap : 1);
	l->n -= k;
	if (l->n == 0 && l->cap > 65536) {
		/* A backlog drained: give its memory back. */
		free(l->q);
		l->q = NULL;
		l->cap = l->head = 0;
	}
}

static int
http_lane_of(const struct http *h, const char *dev, size_t len)
{
	return (int)(hash32(dev, len) % (uint32_t)h->nlanes);
}

static void
http_gauge_retrying(struct http *h)
{
	int n = 0;

	for (int i = 0; i < h->nlanes; i++)
		n += h->lanes[i].state == LANE_BACKOFF;
	worker_gauge(h->w, GAUGE_spool_retrying, n);
}

/* ---- backpressure and gauges ---- */

static void
http_say(struct http *h, enum hm_type type)
{
	struct hmw m;
	int rc;

	hmw_init(&m, type);
	rc = worker_send(h->w, NULL, &m);
	hmw_free(&m);
	h->pause_sent_ms = mono_ms();
	if (rc == -1)
		h->pause_sent_ms -= HTTP_PAUSE_RESEND_MS;  /* try again next tick */
}

static void
http_pressure(struct http *h, const struct spool_stats *st)
{
	uint64_t max = h->w->cf->spool_max_bytes;
	bool disk_full = mono_ms() < h->disk_full_until;

	if (!h->paused && (st->bytes >= max || disk_full)) {
		h->paused = true;
		worker_count(h->w, STAT_backpressure, 1);
		worker_gauge(h->w, GAUGE_paused, 1);
		if (disk_full)
			log_warn("spool: the disk is full: pausing device reading");
		else
			log_warn("spool at its quota (%llu of %llu bytes): pausing device "
			    "reading", (unsigned long long)st->bytes, (unsigned long long)max);
		http_say(h, HM_FAB_PAUSE);
	} else if (h->paused && !disk_full && st->bytes < max / 100 * HTTP_LOW_WATER_PCT) {
		h->paused = false;
		worker_gauge(h->w, GAUGE_paused, 0);
		log_notice("spool below %d%% of its quota, with room on disk: resuming device "
		    "reading", HTTP_LOW_WATER_PCT);
		http_say(h, HM_FAB_RESUME);
	}
}

static void
http_gauges(struct http *h)
{
	struct spool_stats st;

	if (h->sp == NULL)
		return;
	spool_stats(h->sp, &st);
	worker_gauge(h->w, GAUGE_spool_depth, (int64_t)st.depth);
	worker_gauge(h->w, GAUGE_spool_bytes, (int64_t)st.bytes);
	worker_gauge(h->w, GAUGE_spool_oldest_ms, st.oldest_ms);
	worker_gauge(h->w, GAUGE_dead_depth, (int64_t)st.dead_depth);
	http_pressure(h, &st);
}

/* ---- the pass's write transaction ---- */

static void
http_commit_event(evutil_socket_t fd, short what, void *arg)
{
	http_flush(arg);
}

static int
http_batch(struct http *h)
{
	if (h->sp == NULL || h->fatal)
		return -1;
	if (spool_in_batch(h->sp))
		return 0;
	if (spool_begin(h->sp) != SPOOL_OK) {
		http_fatal(h, "begin");
		return -1;
	}
	return 0;
}

/* Commit within ms, or sooner if an earlier commit is already due. */
static void
http_commit_within(struct http *h, int64_t ms)
{
	int64_t due = mono_ms() + ms;

	if (event_pending(h->commit_ev, EV_TIMEOUT, NULL) && h->commit_due <= due)
		return;
	h->commit_due = due;
	http_after(h->commit_ev, ms);
}

/*
 * Puts are acknowledged to their outbox, and posted, only after the commit
 * (and its sync).  They wait up to HTTP_PUT_COMMIT_MS for company: at a
 * moderate rate, where each loop pass brings one envelope, one commit then
 * covers a few milliseconds' worth, not one; under load the batch fills
 * (HTTP_BATCH_OPS) and commits at once.
 */
static void
http_commit_soon(struct http *h)
{
	http_commit_within(h, HTTP_PUT_COMMIT_MS);
}

/*
 * Deletions (delivered) and moves to the dead-letter store wait for no one:
 * losing them in a crash means a redelivery with the same id.  They ride
 * with the next puts' commit or commit within HTTP_LAZY_COMMIT_MS, so a
 * steady stream of answers costs a few syncs a second, not one per answer.
 */
static void
http_commit_later(struct http *h)
{
	http_commit_within(h, HTTP_LAZY_COMMIT_MS);
}

/*
 * One more change in the batch.  Only the fabric handlers commit early (at
 * HTTP_BATCH_OPS): a commit kicks lanes, which must not happen while a lane's
 * own answer is being handled.
 */
static void
http_op_done(struct http *h, bool may_flush)
{
	if (++h->ops >= HTTP_BATCH_OPS && may_flush)
		http_flush(h);
}

static int
http_pend_cmp(const void *a, const void *b)
{
	const struct pend_ack *x = a, *y = b;

	if (x->slot != y->slot)
		return x->slot < y->slot ? -1 : 1;
	if (x->epoch != y->epoch)
		return x->epoch < y->epoch ? -1 : 1;
	return x->order < y->order ? -1 : x->order > y->order;
}

static void
http_owe_ack(struct http *h, uint32_t slot, uint64_t epoch, uint64_t seq,
    uint64_t spooled)
{
	if (slot == PROTO_SLOT_NONE)
		return;
	struct pend_ack *p = grow_array(h->acks, &h->ackcap, h->nacks + 1, sizeof(*p), 256);

	if (p == NULL) {
		/* Not acknowledged: the outbox resends, the spool drops the copy. */
		log_ratelimited(LOG_ERR, "out of memory for acknowledgements");
		return;
	}
	h->acks = p;
	h->acks[h->nacks] = (struct pend_ack){ slot, epoch, seq, spooled, h->nacks };
	h->nacks++;
}

static void
http_send_acks(struct http *h)
{
	static struct msg_ack ack;
	struct hmw m;

	if (h->nacks == 0)
		return;
	qsort(h->acks, h->nacks, sizeof(*h->acks), http_pend_cmp);
	for (size_t i = 0; i < h->nacks; ) {
		ack.slot = h->acks[i].slot;
		ack.epoch = h->acks[i].epoch;
		ack.n = 0;
		while (i < h->nacks && ack.n < ACK_MAX && h->acks[i].slot == ack.slot &&
		    h->acks[i].epoch == ack.epoch)
			ack.seqs[ack.n++] = h->acks[i++].seq;
		hmw_init(&m, HM_FAB_ACK);
		proto_write_ack(&m, &ack);
		/* The router passes it to mqtt.<slot> (or keeps it, PROTO_SLOT_ROUTER).
		 * A lost ack means a resend, which the spool drops as a duplicate. */
		worker_send(h->w, NULL, &m);
		hmw_free(&m);
	}
	h->nacks = 0;
}

static void
http_hole_open(struct http *h, uint32_t slot, uint64_t epoch, uint64_t seq)
{
	struct hole *o = slot < CONFIG_MAX_MQTT ? &h->holes[slot] : NULL;

	if (o == NULL)
		return;
	if (o->since == 0 || epoch < o->epoch || (epoch == o->epoch && seq < o->seq)) {
		if (o->since == 0)
			o->since = mono_ms();
		o->epoch = epoch;
		o->seq = seq;
	}
}

/* Whether an envelope of outbox (slot, epoch) at seq may be taken now. */
static bool
http_hole_allows(struct http *h, uint32_t slot, uint64_t epoch, uint64_t seq)
{
	struct hole *o = slot < CONFIG_MAX_MQTT ? &h->holes[slot] : NULL;

	if (o == NULL || o->since == 0)
		return true;
	if (mono_ms() - o->since > HTTP_HOLE_MAX_MS) {
		log_warn("outbox of mqtt.%u never sent %llu again: order no longer held for it",
		    slot, (unsigned long long)o->seq);
		o->since = 0;
		return true;
	}
	return epoch < o->epoch || (epoch == o->epoch && seq <= o->seq);
}

static void
http_hole_fill(struct http *h, uint32_t slot, uint64_t epoch, uint64_t seq)
{
	if (slot < CONFIG_MAX_MQTT && h->holes[slot].epoch == epoch && h->holes[slot].seq == seq)
		h->holes[slot].since = 0;
}

static void
http_add_new(struct http *h, uint64_t seq, int lane)
{
	struct pend_new *p = grow_array(h->news, &h->newcap, h->nnews + 1, sizeof(*p), 256);

	if (p == NULL) {
		http_fatal(h, "out of memory");
		return;
	}
	h->news = p;
	h->news[h->nnews++] = (struct pend_new){ seq, lane };
}

static void
http_flush(struct http *h)
{
	uint64_t cutoff = UINT64_MAX;
	int rc;

	if (h->sp == NULL || h->fatal || !spool_in_batch(h->sp))
		return;
	rc = spool_commit(h->sp);
	h->ops = 0;
	if (rc == SPOOL_ERR) {
		h->nacks = h->nnews = 0;
		http_fatal(h, "commit");
		return;
	}
	if (rc == SPOOL_FULL) {
		/*
		 * The newest puts did not fit.  Acknowledge only the puts that
		 * stayed; a duplicate or a dead-letter put of this pass may have
		 * been dropped: its outbox resends it.
		 */
		size_t k = 0, held;

		cutoff = spool_next_seq(h->sp);
		for (size_t i = 0; i < h->nnews; i++)
			h->refused_full += h->news[i].seq >= cutoff;
		for (size_t i = 0; i < h->nacks; i++)
			if (h->acks[i].spooled != 0 && h->acks[i].spooled < cutoff)
				h->acks[k++] = h->acks[i];
			else if (h->acks[i].spooled != 0)
				http_hole_open(h, h->acks[i].slot, h->acks[i].epoch, h->acks[i].seq);
		held = h->nacks - k;
		h->nacks = k;
		if (spool_disk_full(h->sp)) {
			/* Their outboxes send them again once reading resumes. */
			h->disk_full_until = mono_ms() + HTTP_DISK_FULL_MS;
			log_ratelimited(LOG_ERR, "spool: no room on disk: %zu acknowledgement(s) "
			    "held back", held);
		} else {
			log_ratelimited(LOG_WARNING, "spool map full: %zu acknowledgement(s) "
			    "held back", held);
		}
	}
	http_send_acks(h);
	for (size_t i = 0; i < h->nnews; i++) {
		struct pend_new *p = &h->news[i];

		if (p->seq >= cutoff || p->lane >= h->nlanes)
			continue;
		if (http_lane_push(&h->lanes[p->lane], p->seq) == -1) {
			http_fatal(h, "out of memory");
			return;
		}
	}
	for (size_t i = 0; i < h->nnews; i++)
		if (h->news[i].lane < h->nlanes)
			http_lane_kick(&h->lanes[h->news[i].lane]);
	h->nnews = 0;
	http_gauges(h);
}

/* ---- signing and POSTs ---- */

static int
http_hdr(struct lane *l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int
http_hdr(struct lane *l, const char *fmt, ...)
{
	char line[512];
	struct curl_slist *n;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if ((n = curl_slist_append(l->hdrs, line)) == NULL)
		return -1;
	l->hdrs = n;
	return 0;
}

static int
http_body_add(struct lane *l, const char *p, size_t len)
{
	char *b = grow_array(l->body, &l->bodycap, l->bodylen + len, 1, 4096);

	if (b == NULL)
		return -1;
	l->body = b;
	memcpy(l->body + l->bodylen, p, len);
	l->bodylen += len;
	return 0;
}

/* Send (or send again) the lane's batch: fresh timestamp and signature. */
static void
http_lane_post(struct lane *l)
{
	struct http *h = l->h;
	const struct config *cf = h->w->cf;
	char ts[24], sig[WEBHOOK_SIG_LEN];
	CURLMcode mc;

	curl_slist_free_all(l->hdrs);
	l->hdrs = NULL;
	if (http_hdr(l, "Content-Type: application/json") == -1 ||
	    http_hdr(l, "Expect:") == -1)
		goto nomem;
	if (cf->backend_secret[0] != '\0') {
		snprintf(ts, sizeof(ts), "%lld", (long long)(now_ms() / 1000));
		if (webhook_sign(h->key, h->keylen, l->whid, ts, l->body, l->bodylen,
		    sig) == -1 ||
		    http_hdr(l, "webhook-id: %s", l->whid) == -1 ||
		    http_hdr(l, "webhook-timestamp: %s", ts) == -1 ||
		    http_hdr(l, "webhook-signature: %s", sig) == -1)
			goto nomem;
	}
	/* libcurl parses the URL when it is set: only when it changed (reload). */
	if (l->url == NULL || strcmp(l->url, cf->backend_url) != 0) {
		free(l->url);
		if ((l->url = strdup(cf->backend_url)) == NULL)
			goto nomem;
		curl_easy_setopt(l->easy, CURLOPT_URL, l->url);
	}
	curl_easy_setopt(l->easy, CURLOPT_TIMEOUT_MS, (long)cf->timeout_ms);
	curl_easy_setopt(l->easy, CURLOPT_HTTPHEADER, l->hdrs);
	curl_easy_setopt(l->easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)l->bodylen);
	curl_easy_setopt(l->easy, CURLOPT_POSTFIELDS, l->body);
	l->resplen = 0;
	l->bodyread = 0;
	l->location[0] = '\0';
	l->answered = false;
	l->retry_after_ms = -1;
	l->errbuf[0] = '\0';
	if ((mc = curl_multi_add_handle(h->multi, l->easy)) != CURLM_OK) {
		log_ratelimited(LOG_ERR, "lane %d: %s", l->idx, curl_multi_strerror(mc));
		goto retry_later;
	}
	l->state = LANE_SENDING;
	h->sending++;
	worker_count(h->w, STAT_http_requests, 1);
	log_debug("lane %d: POST %s (%zu envelope(s), attempt %d)", l->idx, l->whid,
	    l->inflight, l->attempt);
	return;
nomem:
	log_ratelimited(LOG_ERR, "lane %d: out of memory for headers", l->idx);
retry_later:
	l->state = LANE_BACKOFF;
	l->next_retry_ms = mono_ms() + HTTP_BACKOFF_MIN_MS;
	http_after(l->timer, HTTP_BACKOFF_MIN_MS);
}

static bool
http_sent_recently(const struct http *h, const char *id, size_t len)
{
	size_t set;

	if (h->sent == NULL || len == 0 || len > HTTP_SENT_ID_MAX)
		return false;
	set = (size_t)(hash32(id, len) % HTTP_SENT_SETS);
	for (size_t i = 0; i < HTTP_SENT_WAYS; i++) {
		const char *slot = h->sent[set * HTTP_SENT_WAYS + i];

		if (slot[len] == '\0' && memcmp(slot, id, len) == 0)
			return true;
	}
	return false;
}

static void
http_sent_put(struct http *h, const char *id, size_t len)
{
	size_t set;
	char *slot;

	if (h->sent == NULL || len == 0 || len > HTTP_SENT_ID_MAX)
		return;
	set = (size_t)(hash32(id, len) % HTTP_SENT_SETS);
	slot = h->sent[set * HTTP_SENT_WAYS + h->sent_next[set]];
	memcpy(slot, id, len);
	slot[len] = '\0';
	h->sent_next[set] = (uint8_t)((h->sent_next[set] + 1) % HTTP_SENT_WAYS);
}

/*
 * At the spool's open: the envelopes that left the queue before this life
 * (delivered, or dead) go into the table, so that an outbox resending one
 * whose acknowledgement died with the previous http worker or the router
 * does not post it a second time: the table of that life is gone.  Best
 * effort: only what the segment files still hold is known, and a segment
 * whose records all left goes at the next commit (the active one once it
 * passed 1 MiB), so the deliveries of the moments before such a commit may
 * be posted again (same id).
 */
static void
http_sent_gone(void *arg, const char *id, size_t idlen)
{
	http_sent_put(arg, id, idlen);
}

/* Keep the id of the POST's took-th envelope, to remember it once delivered. */
static int
http_lane_note_id(struct lane *l, size_t took, const char *id, size_t len)
{
	void *p = grow_array(l->ids, &l->idcap, took + 1, sizeof(*l->ids), 16);

	if (p == NULL)
		return -1;
	l->ids = p;
	if (len > HTTP_SENT_ID_MAX)
		len = 0;        /* not remembered */
	memcpy(l->ids[took], id, len);
	l->ids[took][len] = '\0';
	return 0;
}

/* Build the body from the head of the lane and post it. */
static void
http_lane_start(struct lane *l)
{
	struct http *h = l->h;
	int bmax = http_batch_max(h);
	size_t k = l->n < (size_t)bmax ? l->n : (size_t)bmax, took = 0;
	struct spool_rec r;

	l->array = bmax > 1;
	l->bodylen = 0;
	if (l->array && http_body_add(l, "[", 1) == -1)
		goto nomem;
	while (took < k && l->n > took) {
		uint64_t seq = http_lane_at(l, took);
		int rc = spool_get(h->sp, seq, &r);

		if (rc != SPOOL_OK) {
			/* Not there (or unreadable): nothing to deliver for it. */
			log_ratelimited(LOG_ERR, "lane %d: spool entry %llu %s, skipped",
			    l->idx, (unsigned long long)seq,
			    rc == SPOOL_NOTFOUND ? "missing" : "unreadable");
			if (rc == SPOOL_ERR) {
				http_fatal(h, "read");
				return;
			}
			if (rc == SPOOL_INVAL && http_batch(h) == 0) {
				http_commit_later(h);
				spool_del(h->sp, seq);
				http_op_done(h, false);
			}
			/* Drop it from the ring, keeping what is already taken. */
			for (size_t i = took; i > 0; i--)
				l->q[(l->head + i) % l->cap] = http_lane_at(l, i - 1);
			http_lane_pop(l, 1);
			if (k > l->n)
				k = l->n;
			continue;
		}
		if (took == 0)
			snprintf(l->whid, sizeof(l->whid), "%.*s", (int)r.idlen, r.id);
		if (http_lane_note_id(l, took, r.id, r.idlen) == -1)
			goto nomem;
		if ((took > 0 && http_body_add(l, ",", 1) == -1) ||
		    http_body_add(l, r.json, r.jsonlen) == -1)
			goto nomem;
		took++;
	}
	if (took == 0) {
		l->state = LANE_IDLE;
		return;
	}
	if (l->array) {
		if (http_body_add(l, "]", 1) == -1)
			goto nomem;
		size_t idl = strlen(l->whid);
		snprintf(l->whid + idl, sizeof(l->whid) - idl, ".%zu", took);
	}
	l->inflight = took;
	l->attempt = 0;
	http_lane_post(l);
	return;
nomem:
	log_ratelimited(LOG_ERR, "lane %d: out of memory for a body", l->idx);
	l->state = LANE_BACKOFF;
	l->inflight = 0;
	l->next_retry_ms = mono_ms() + HTTP_BACKOFF_MIN_MS;
	http_after(l->timer, HTTP_BACKOFF_MIN_MS);
}

static void
http_lane_kick(struct lane *l)
{
	struct http *h = l->h;
	int bmax = http_batch_max(h);

	if (h->stopping || h->fatal || h->sp == NULL || l->n == 0)
		return;
	if (l->state == LANE_LINGER) {
		if (l->n < (size_t)bmax)
			return;
		evtimer_del(l->timer);
	} else if (l->state != LANE_IDLE) {
		return;
	} else if (bmax > 1 && l->n < (size_t)bmax) {
		/* Give the batch a moment to fill. */
		l->state = LANE_LINGER;
		http_after(l->timer, HTTP_LINGER_MS);
		return;
	}
	l->state = LANE_IDLE;
	http_lane_start(l);
}

static void
http_lane_timer(evutil_socket_t fd, short what, void *arg)
{
	struct lane *l = arg;
	struct http *h = l->h;
	enum http_lane_state was = l->state;

	if (h->stopping || h->fatal || h->sp == NULL)
		return;
	l->state = LANE_IDLE;
	if (was == LANE_BACKOFF) {
		http_gauge_retrying(h);
		if (l->inflight > 0) {
			http_lane_post(l);
			return;
		}
	}
	if (l->n > 0)
		http_lane_start(l);
}

/* ---- answers ---- */

/*
 * End the lanes' backoff waits now; how many.  The operator's `spool retry`
 * ends every wait, Retry-After included, and starts the backoff over.
 * After an outage the backoffs have grown to many seconds: once one POST is
 * accepted again, the other lanes go now instead of leaving delivery idle
 * that long, keeping their backoff step should they fail again; a lane the
 * backend gave a Retry-After keeps waiting it.  (Only after an outage: a
 * backend that fails some POSTs and accepts others would otherwise be
 * retried at the pace of its successes.)
 */
static int
http_retry_now(struct http *h, bool operator)
{
	int n = 0;

	for (int i = 0; i < h->nlanes; i++) {
		struct lane *l = &h->lanes[i];

		if (l->state != LANE_BACKOFF ||
		    (!operator && l->retry_after_ms >= HTTP_BACKOFF_MIN_MS))
			continue;
		evtimer_del(l->timer);
		if (operator)
			l->attempt = 0;
		l->next_retry_ms = mono_ms();
		http_after(l->timer, 0);
		n++;
	}
	return n;
}

static void
http_lane_delivered(struct lane *l)
{
	struct http *h = l->h;
	int n;

	if (http_batch(h) == -1)
		return;
	http_commit_later(h);
	for (size_t i = 0; i < l->inflight && i < l->n; i++) {
		if (spool_del(h->sp, http_lane_at(l, i)) == SPOOL_ERR) {
			http_fatal(h, "delete");
			return;
		}
		http_op_done(h, false);
	}
	for (size_t i = 0; i < l->inflight && i < l->idcap; i++)
		http_sent_put(h, l->ids[i], strlen(l->ids[i]));
	if (h->failing > 0) {
		/* The warnings of an outage are rate-limited: say it ended (a
		 * backend failing now and then is not an outage). */
		if (mono_ms() - h->failing_since >= HTTP_OUTAGE_MS) {
			log_notice("backend accepts again after %lld s (%llu POSTs retried "
			    "meanwhile)", (long long)(mono_ms() - h->failing_since) / 1000,
			    (unsigned long long)h->failing);
			if (!h->stopping && (n = http_retry_now(h, false)) > 0)
				log_info("%d lane(s) waiting out their backoff retry now", n);
		}
		h->failing = 0;
	}
	worker_count(h->w, STAT_delivered, l->inflight);
	http_lane_pop(l, l->inflight);
	l->inflight = 0;
	l->attempt = 0;
}

/* The envelope's topic, for the dead-letter record (absent for requests). */
static size_t
http_topic(const char *json, size_t len, char *out, size_t outlen)
{
	json_t *root = json_loadb(json, len, 0, NULL);
	const char *t = root ? json_string_value(json_object_get(root, "topic")) : NULL;
	size_t n = 0;

	if (t != NULL)
		n = strlcpy_h(out, t, outlen);
	json_decref(root);
	return n < outlen ? n : outlen - 1;
}

/* The lane's POST goes to the dead-letter store (replayable), with why. */
static void
http_lane_dead_as(struct lane *l, const char *reason, long status, const char *detail,
    size_t detaillen)
{
	struct http *h = l->h;
	char topic[512];
	struct spool_rec r;
	size_t tlen;

	if (http_batch(h) == -1)
		return;
	http_commit_later(h);
	for (size_t i = 0; i < l->inflight && i < l->n; i++) {
		uint64_t seq = http_lane_at(l, i);

		tlen = 0;
		topic[0] = '\0';
		if (spool_get(h->sp, seq, &r) == SPOOL_OK)
			tlen = http_topic(r.json, r.jsonlen, topic, sizeof(topic));
		switch (spool_dead_move(h->sp, seq, reason, (int)status, detail,
		    detaillen, topic, tlen, now_ms())) {
		case SPOOL_OK:
			worker_count(h->w, STAT_deadlettered, 1);
			break;
		case SPOOL_NOTFOUND:
			break;
		default:
			http_fatal(h, "dead-letter move");
			return;
		}
		http_op_done(h, false);
	}
	http_lane_pop(l, l->inflight);
	l->inflight = 0;
	l->attempt = 0;
}

static void
http_lane_dead(struct lane *l, long status)
{
	char reason[32];

	snprintf(reason, sizeof(reason), "http_%ld", status);
	log_ratelimited(LOG_WARNING, "backend answered %ld: %zu envelope(s) to the "
	    "dead-letter store (%s)", status, l->inflight, l->whid);
	http_lane_dead_as(l, reason, status, l->resp, l->resplen);
}

/* Why the lane's answer does not count, for the log. */
static void
http_lane_why(struct lane *l, CURLcode res, long status, char *why, size_t len)
{
	if (!l->answered) {
		if (res == CURLE_OK)
			snprintf(why, len, "backend closed the connection before its "
			    "answer's headers ended");
		else if (res == CURLE_OUT_OF_MEMORY && l->errbuf[0] == '\0')
			/* libcurl's code, with no text, for a header over 100 KiB */
			snprintf(why, len, "backend: answer unreadable (a header over "
			    "100 KiB, or out of memory)");
		else
			snprintf(why, len, "backend: %s", l->errbuf[0] ? l->errbuf :
			    curl_easy_strerror(res));
	} else if (status >= 300 && status < 400 && l->location[0] != '\0')
		snprintf(why, len, "backend answered %ld, redirecting to %s (redirects "
		    "are not followed: set [backend] url to the final address)", status,
		    l->location);
	else
		/* The status decides; what became of the body does not matter. */
		snprintf(why, len, "backend answered %ld", status);
}

static void
http_lane_retry(struct lane *l, CURLcode res, long status)
{
	struct http *h = l->h;
	char why[CURL_ERROR_SIZE + 256];
	int64_t delay;

	worker_count(h->w, STAT_http_retries, 1);
	if (h->failing++ == 0)
		h->failing_since = mono_ms();
	/*
	 * A Retry-After shorter than the first backoff step ("0", or a date
	 * already past: clocks differ, a proxy served a stale answer) would
	 * retry at once, over and over, against a backend that is failing:
	 * it counts as absent and the backoff goes on growing.
	 */
	if (l->retry_after_ms >= HTTP_BACKOFF_MIN_MS) {
		delay = l->retry_after_ms;
		if (delay > HTTP_RETRY_AFTER_MAX_MS)
			delay = HTTP_RETRY_AFTER_MAX_MS;
	} else {
		/*
		 * Exponential backoff with "equal" jitter: half the step fixed,
		 * half random.  Lanes still spread out, and each wait is at least
		 * as long as the one before, so a struggling backend sees the
		 * pressure fall steadily (full jitter may retry at once).
		 */
		int64_t cap = HTTP_BACKOFF_MIN_MS;

		for (int i = 0; i < l->attempt && cap < HTTP_BACKOFF_MAX_MS; i++)
			cap *= 2;
		if (cap > HTTP_BACKOFF_MAX_MS)
			cap = HTTP_BACKOFF_MAX_MS;
		delay = cap / 2 + (int64_t)randombytes_uniform((uint32_t)(cap / 2) + 1);
	}
	if (l->attempt < 64)
		l->attempt++;
	http_lane_why(l, res, status, why, sizeof(why));
	l->state = LANE_BACKOFF;
	l->next_retry_ms = mono_ms() + delay;
	http_gauge_retrying(h);
	if (h->stopping) {
		/* No retry in this life: the spool keeps the envelopes. */
		log_ratelimited(LOG_WARNING, "%s; lane %d's %zu envelope(s) are posted "
		    "again after the restart", why, l->idx, l->inflight);
		return;
	}
	log_ratelimited(LOG_WARNING, "%s; lane %d retries in %lld ms", why, l->idx,
	    (long long)delay);
	http_after(l->timer, delay);
}

static void
http_lane_done(struct lane *l, CURLcode res)
{
	struct http *h = l->h;
	long status = 0;

	h->sending--;
	l->state = LANE_IDLE;
	curl_easy_getinfo(l->easy, CURLINFO_RESPONSE_CODE, &status);
	log_debug("lane %d: %s answered %ld (%s)", l->idx, l->whid, status,
	    res == CURLE_OK ? "ok" : curl_easy_strerror(res));
	if (h->sp == NULL || h->fatal)
		return;
	/*
	 * The final answer's status decides once its headers have all come,
	 * whatever became of its body (cut short, endless, too slow): the
	 * backend has said what it did.  An answer cut off before the end of its
	 * headers is no answer (libcurl may still report success): retried.
	 */
	if (l->answered && status >= 200 && status < 300) {
		if (res != CURLE_OK)
			log_debug("lane %d: %s delivered (%ld); its answer's body: %s",
			    l->idx, l->whid, status, curl_easy_strerror(res));
		http_lane_delivered(l);
	} else if (l->answered && status >= 400 && status < 500 && status != 408 &&
	    status != 429)
		http_lane_dead(l, status);
	else
		http_lane_retry(l, res, status);
	if (h->stopping) {
		if (h->sending == 0)
			http_finish(h);
		return;
	}
	if (l->state == LANE_IDLE)
		http_lane_kick(l);
}

/* ---- libcurl multi_socket on libevent ---- */

static void
http_check_multi(struct http *h)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(h->multi, &left)) != NULL) {
		CURL *e = msg->easy_handle;
		CURLcode res = msg->data.result;
		struct lane *l = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&l);
		curl_multi_remove_handle(h->multi, e);
		if (l != NULL)
			http_lane_done(l, res);
	}
}

static void
http_sock_event(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;
	int running, flags = 0;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(h->multi, fd, flags, &running);
	/* No evtimer_del when nothing runs: a lane may have just added its next
	 * POST, and libcurl set the timer that starts it. */
	http_check_multi(h);
}

static void
http_timer_event(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;
	int running;

	curl_multi_socket_action(h->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	http_check_multi(h);
}

/* libcurl says which events it wants on a socket. */
static int
http_sock_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *sockp)
{
	struct http *h = userp;
	struct http_sock *hs = sockp;
	short kind = EV_PERSIST;

	if (what == CURL_POLL_REMOVE) {
		if (hs != NULL) {
			if (hs->ev != NULL)
				event_free(hs->ev);
			free(hs);
		}
		return 0;
	}
	if (what & CURL_POLL_IN)
		kind |= EV_READ;
	if (what & CURL_POLL_OUT)
		kind |= EV_WRITE;
	if (hs == NULL) {
		if ((hs = calloc(1, sizeof(*hs))) == NULL)
			return -1;
		hs->h = h;
		if ((hs->ev = event_new(h->w->base, fd, kind, http_sock_event, h)) == NULL) {
			free(hs);
			return -1;
		}
		curl_multi_assign(h->multi, fd, hs);
	} else if (kind == hs->kind) {
		return 0;       /* libcurl says again what it wants */
	} else {
		/* The same event, waiting for something else: no free and new. */
		event_del(hs->ev);
		if (event_assign(hs->ev, h->w->base, fd, kind, http_sock_event, h) == -1)
			return -1;
	}
	hs->kind = kind;
	return event_add(hs->ev, NULL) == -1 ? -1 : 0;
}

static int
http_timer_cb(CURLM *m, long timeout_ms, void *userp)
{
	struct http *h = userp;

	if (timeout_ms < 0) {
		evtimer_del(h->curl_timer);
		return 0;
	}
	/* Not socket_action from here: libcurl wants that from the loop. */
	http_after(h->curl_timer, timeout_ms);
	return 0;
}

static size_t
http_write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct lane *l = arg;
	size_t len = size * nmemb, room = sizeof(l->resp) - l->resplen;

	if (room > 0) {
		size_t c = len < room ? len : room;
		memcpy(l->resp + l->resplen, p, c);
		l->resplen += c;
	}
	/* The status decides, not the body: stop reading a long one (the
	 * connection closes).  0 makes libcurl end the transfer. */
	l->bodyread += len;
	if (l->answered && l->bodyread > HTTP_BODY_READ_MAX)
		return 0;
	return len;
}

/* Retry-After: delay-seconds or an HTTP date. */
static size_t
http_header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
	struct lane *l = arg;
	size_t len = size * nmemb;
	char val[128];
	size_t n;

	if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
		/* A new response (after a 100 Continue): forget the last one's. */
		l->retry_after_ms = -1;
		l->resplen = 0;
		l->bodyread = 0;
		l->location[0] = '\0';
		l->answered = false;
		return len;
	}
	if (len > 9 && strncasecmp(p, "Location:", 9) == 0) {
		/* Kept as sent (libcurl resolves it only for a transfer that ended
		 * well, and herald may cut a long body short). */
		size_t a = 9, b = len;

		while (a < b && (p[a] == ' ' || p[a] == '\t'))
			a++;
		while (b > a && (p[b - 1] == '\r' || p[b - 1] == '\n' || p[b - 1] == ' '))
			b--;
		if (b - a >= sizeof(l->location))
			b = a + sizeof(l->location) - 1;
		memcpy(l->location, p + a, b - a);
		l->location[b - a] = '\0';
		str_printable(l->location);
		return len;
	}
	if ((len == 2 && p[0] == '\r' && p[1] == '\n') || (len == 1 && p[0] == '\n')) {
		/* The blank line that ends a header block; a 1xx has another after
		 * it.  The status as libcurl read it (it takes more forms than
		 * "HTTP/1.1 200"). */
		long status = 0;

		curl_easy_getinfo(l->easy, CURLINFO_RESPONSE_CODE, &status);
		if (status >= 200)
			l->answered = true;
		return len;
	}
	if (len <= 12 || strncasecmp(p, "Retry-After:", 12) != 0)
		return len;
	p += 12;
	len -= 12;
	while (len > 0 && (*p == ' ' || *p == '\t')) {
		p++;
		len--;
	}
	while (len > 0 && (p[len - 1] == '\r' || p[len - 1] == '\n' ||
	    p[len - 1] == ' ' || p[len - 1] == '\t'))
		len--;
	if (len == 0 || len >= sizeof(val))
		return size * nmemb;
	memcpy(val, p, len);
	val[len] = '\0';
	n = strspn(val, "0123456789");
	if (n == len) {
		long long secs = n > 7 ? 9999999 : atoll(val);
		l->retry_after_ms = secs * 1000;
	} else {
		time_t t = curl_getdate(val, NULL);
		if (t != -1) {
			int64_t d = ((int64_t)t - (int64_t)time(NULL)) * 1000;
			l->retry_after_ms = d > 0 ? d : 0;
		}
	}
	if (l->retry_after_ms > HTTP_RETRY_AFTER_MAX_MS)
		l->retry_after_ms = HTTP_RETRY_AFTER_MAX_MS;
	return size * nmemb;
}

/* ---- lanes: build, rebuild ---- */

static int
http_lane_init(struct http *h, struct lane *l, int idx)
{
	const struct config *cf;

	memset(l, 0, sizeof(*l));
	l->h = h;
	l->idx = idx;
	l->retry_after_ms = -1;
	l->timer = evtimer_new(h->w->base, http_lane_timer, l);
	l->easy = curl_easy_init();
	if (l->timer == NULL || l->easy == NULL)
		return -1;
	cf = h->w->cf;
	curl_easy_setopt(l->easy, CURLOPT_PRIVATE, (char *)l);
	curl_easy_setopt(l->easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(l->easy, CURLOPT_WRITEFUNCTION, http_write_cb);
	curl_easy_setopt(l->easy, CURLOPT_WRITEDATA, l);
	curl_easy_setopt(l->easy, CURLOPT_HEADERFUNCTION, http_header_cb);
	curl_easy_setopt(l->easy, CURLOPT_HEADERDATA, l);
	curl_easy_setopt(l->easy, CURLOPT_ERRORBUFFER, l->errbuf);
	curl_easy_setopt(l->easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(l->easy, CURLOPT_USERAGENT, "herald");
	curl_easy_setopt(l->easy, CURLOPT_FOLLOWLOCATION, 0L);
	/*
	 * The TLS files, once: a reload that changes them (or what is in
	 * them) restarts this worker, since libcurl would keep connections
	 * made with the old ones.  libcurl copies the paths and reads the
	 * files for each new connection.  An encrypted key fails its
	 * handshake rather than have OpenSSL ask for a passphrase on a
	 * terminal (herald -t refuses one anyway).
	 */
	if (cf->backend_ca_file[0] != '\0')
		curl_easy_setopt(l->easy, CURLOPT_CAINFO, cf->backend_ca_file);
	if (cf->backend_cert_file[0] != '\0')
		curl_easy_setopt(l->easy, CURLOPT_SSLCERT, cf->backend_cert_file);
	if (cf->backend_key_file[0] != '\0')
		curl_easy_setopt(l->easy, CURLOPT_SSLKEY, cf->backend_key_file);
	curl_easy_setopt(l->easy, CURLOPT_KEYPASSWD, "");
	return 0;
}

static void
http_lane_free(struct http *h, struct lane *l)
{
	if (l->easy != NULL) {
		if (l->state == LANE_SENDING)
			curl_multi_remove_handle(h->multi, l->easy);
		curl_easy_cleanup(l->easy);
	}
	if (l->timer != NULL)
		event_free(l->timer);
	curl_slist_free_all(l->hdrs);
	free(l->q);
	free(l->body);
	free(l->url);
	free(l->ids);
	memset(l, 0, sizeof(*l));
}

static int
http_lanes_fill(void *arg, const struct spool_rec *r)
{
	struct http *h = arg;

	return http_lane_push(&h->lanes[http_lane_of(h, r->device, r->devlen)], r->seq);
}

/* Lanes from the spool's content, in sequence order (each device's order). */
static int
http_lanes(struct http *h, int n)
{
	if (n < 1)
		n = 1;
	if ((h->lanes = calloc((size_t)n, sizeof(*h->lanes))) == NULL)
		return -1;
	h->nlanes = n;
	for (int i = 0; i < n; i++)
		if (http_lane_init(h, &h->lanes[i], i) == -1)
			return -1;
	if (spool_foreach(h->sp, http_lanes_fill, h) < 0)
		return -1;
	curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)(2 * n + 4));
	return 0;
}

static void
http_lanes_free(struct http *h)
{
	for (int i = 0; i < h->nlanes; i++)
		http_lane_free(h, &h->lanes[i]);
	free(h->lanes);
	h->lanes = NULL;
	h->nlanes = 0;
}

/* ---- fabric messages ---- */

static void
http_bad(struct http *h, int type)
{
	worker_bad_msg(h->w, type, NULL);
}

/* A dead-letter record for what cannot be spooled under its own id. */
static int
http_dead_orphan(struct http *h, const char *device, size_t devlen, const char *topic,
    size_t topiclen, const char *reason, const char *detail, const void *data,
    size_t datalen, int64_t received_ms)
{
	struct spool_dead d;
	char id[ULID_LEN];

	ulid_random(id);
	memset(&d, 0, sizeof(d));
	d.id = id;
	d.idlen = strlen(id);
	d.device = device;
	d.devlen = devlen;
	d.topic = topic;
	d.topiclen = topiclen;
	d.reason = reason;
	d.reasonlen = strlen(reason);
	d.detail = detail;
	d.detaillen = strlen(detail);
	d.data = data;
	d.datalen = datalen;
	d.received_ms = received_ms;
	d.dead_ms = now_ms();
	return spool_dead_put(h->sp, &d);
}

/* One envelope of a batch; -1 if it cannot be read or the spool failed. */
static int
http_envelope(struct http *h, struct hmr *r)
{
	struct msg_envelope m;
	uint64_t seq = 0;
	int rc;

	if (proto_read_envelope(r, &m) == -1) {
		http_bad(h, r->type);
		return -1;
	}
	if (http_batch(h) == -1)
		return -1;
	http_commit_soon(h);
	if (!http_hole_allows(h, m.slot, m.epoch, m.seq)) {
		log_ratelimited(LOG_INFO, "envelope %.*s waits for an earlier one of its outbox "
		    "(order)", (int)m.id.len, m.id.p);
		http_op_done(h, true);
		return 0;
	}
	if (http_sent_recently(h, m.id.p, m.id.len))
		rc = SPOOL_DUP;
	else
		rc = spool_put(h->sp, m.id.p, m.id.len, m.device.p, m.device.len,
		    m.received_ms, m.json.p, m.json.len, &seq);
	if (rc == SPOOL_INVAL) {
		/* An id or device the spool cannot key: keep it, never drop it. */
		log_ratelimited(LOG_WARNING, "envelope with a bad id or device: "
		    "to the dead-letter store");
		rc = http_dead_orphan(h, m.device.p, m.device.len > SPOOL_DEVICE_MAX ?
		    SPOOL_DEVICE_MAX : m.device.len, NULL, 0, "bad_envelope",
		    "id or device unusable as a key", m.json.p, m.json.len, m.received_ms);
		if (rc == SPOOL_OK) {
			worker_count(h->w, STAT_deadlettered, 1);
			rc = SPOOL_DUP;     /* acknowledged, not queued */
		}
	}
	switch (rc) {
	case SPOOL_OK:
		worker_count(h->w, STAT_spooled, 1);
		http_owe_ack(h, m.slot, m.epoch, m.seq, seq);
		http_add_new(h, seq, http_lane_of(h, m.device.p, m.device.len));
		http_hole_fill(h, m.slot, m.epoch, m.seq);
		break;
	case SPOOL_DUP:
		worker_count(h->w, STAT_spool_duplicates, 1);
		http_owe_ack(h, m.slot, m.epoch, m.seq, 0);
		http_hole_fill(h, m.slot, m.epoch, m.seq);
		break;
	case SPOOL_FULL:
		/* Not acknowledged: the outbox keeps it and sends it again. */
		http_hole_open(h, m.slot, m.epoch, m.seq);
		h->refused_full++;
		log_ratelimited(LOG_WARNING, "spool map full: envelope %.*s not taken "
		    "(its outbox resends it)", (int)m.id.len, m.id.p);
		break;
	default:
		http_fatal(h, "put");
		return -1;
	}
	http_op_done(h, true);
	return 0;
}

/* A batch of envelopes: all of one pass's puts share its commit. */
static void
http_envelopes(struct http *h, struct hmr *r)
{
	while (http_envelope(h, r) == 0 && hmr_more(r) && h->sp != NULL && !h->fatal)
		;
}

static void
http_reject(struct http *h, struct hmr *r)
{
	struct msg_reject m;
	struct spool_dead d;
	char reason[SPOOL_REASON_MAX + 1], detail[SPOOL_DETAIL_MAX + 1];
	int rc;

	if (proto_read_reject(r, &m) == -1) {
		http_bad(h, r->type);
		return;
	}
	if (http_batch(h) == -1)
		return;
	http_commit_soon(h);
	snprintf(reason, sizeof(reason), "rejected: %.*s", (int)m.reason.len, m.reason.p);
	snprintf(detail, sizeof(detail), "%.*s", (int)m.detail.len, m.detail.p);
	memset(&d, 0, sizeof(d));
	d.id = m.id.p;
	d.idlen = m.id.len;
	d.device = m.device.p;
	d.devlen = m.device.len;
	d.topic = m.topic.p;
	d.topiclen = m.topic.len;
	d.reason = reason;
	d.reasonlen = strlen(reason);
	d.detail = detail;
	d.detaillen = strlen(detail);
	d.data = m.payload.p;
	d.datalen = m.payload.len;
	d.received_ms = m.received_ms;
	d.dead_ms = now_ms();
	rc = spool_dead_put(h->sp, &d);
	if (rc == SPOOL_INVAL)
		rc = http_dead_orphan(h, m.device.p, m.device.len > SPOOL_DEVICE_MAX ?
		    SPOOL_DEVICE_MAX : m.device.len, m.topic.p, m.topic.len, reason,
		    detail, m.payload.p, m.payload.len, m.received_ms);
	switch (rc) {
	case SPOOL_OK:
		worker_count(h->w, STAT_deadlettered, 1);
		http_owe_ack(h, m.slot, m.epoch, m.seq, 0);
		break;
	case SPOOL_DUP:
		worker_count(h->w, STAT_spool_duplicates, 1);
		http_owe_ack(h, m.slot, m.epoch, m.seq, 0);
		break;
	case SPOOL_FULL:
		h->refused_full++;
		log_ratelimited(LOG_WARNING, "spool map full: rejected message not taken "
		    "(its outbox resends it)");
		break;
	default:
		http_fatal(h, "dead-letter put");
		return;
	}
	http_op_done(h, true);
}

static void
http_fabric(struct worker *w, const char *peer, struct hmr *r)
{
	struct http *h = w->arg;

	/* After the spool closed (stopping) nothing is taken or acknowledged. */
	if (h->sp == NULL || h->fatal)
		return;
	switch (r->type) {
	case HM_FAB_ENVELOPE:
		http_envelopes(h, r);
		break;
	case HM_FAB_REJECT:
		http_reject(h, r);
		break;
	default:
		http_bad(h, r->type);
		break;
	}
}

/* ---- admin ---- */

static json_t *
http_err(const char *code, const char *msg)
{
	return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

/*
 * A lane that retries one POST over and over (its envelopes are what the
 * backend cannot take, and it never says so with a 4xx) holds every device
 * of the lane behind it: the operator moves that POST's envelopes to the
 * dead-letter store (replayable) and the lane goes on.
 */
static json_t *
http_admin_skip(struct http *h, const char *arg)
{
	char *end, detail[160];
	long i = strtol(arg, &end, 10);
	struct lane *l;
	size_t n;

	if (*arg == '\0' || *end != '\0' || i < 0 || i >= h->nlanes)
		return http_err("usage", "usage: spool skip LANE (a lane number of heraldctl spool)");
	l = &h->lanes[i];
	if (h->stopping)
		return http_err("stopping", "herald is stopping");
	if (l->state != LANE_BACKOFF || l->inflight == 0)
		return http_err("not_waiting", "the lane is not waiting to retry a POST");
	n = l->inflight;
	snprintf(detail, sizeof(detail), "skipped by the operator (heraldctl spool skip) "
	    "after %d attempt(s)", l->attempt);
	evtimer_del(l->timer);
	http_lane_dead_as(l, "skipped", 0, detail, strlen(detail));
	l->state = LANE_IDLE;
	http_gauge_retrying(h);
	log_notice("spool skip: lane %ld's %zu envelope(s) moved to the dead-letter store", i, n);
	if (l->n > 0)
		http_lane_start(l);
	return json_pack("{s:i,s:I}", "lane", (int)i, "skipped", (json_int_t)n);
}

/* End every lane's wait (backoff or Retry-After): the operator knows the
 * backend is back. */
static json_t *
http_admin_retry(struct http *h)
{
	int n;

	if (h->stopping)
		return http_err("stopping", "herald is stopping: nothing is retried now");
	if ((n = http_retry_now(h, true)) > 0)
		log_notice("spool retry: %d waiting lane(s) retry now", n);
	return json_pack("{s:i}", "retried", n);
}

static json_t *
http_admin_spool(struct http *h)
{
	struct spool_stats st;
	json_t *lanes = json_array(), *o;
	int64_t mono = mono_ms(), retrying = 0;

	spool_stats(h->sp, &st);
	for (int i = 0; i < h->nlanes; i++) {
		struct lane *l = &h->lanes[i];
		int64_t next = 0;

		if (l->state == LANE_BACKOFF) {
			retrying++;
			next = l->next_retry_ms > mono ? l->next_retry_ms - mono : 0;
		}
		json_array_append_new(lanes, json_pack("{s:i,s:I,s:s,s:I,s:I,s:i}",
		    "lane", i, "depth", (json_int_t)l->n, "state",
		    http_lane_state_names[l->state], "next_retry_ms", (json_int_t)next,
		    "inflight", (json_int_t)(l->state == LANE_SENDING ||
		    l->state == LANE_BACKOFF ? l->inflight : 0), "attempt", l->attempt));
	}
	o = json_pack("{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:I,s:I,s:o}",
	    "depth", (json_int_t)st.depth,
	    "bytes", (json_int_t)st.bytes,
	    "max_bytes", (json_int_t)h->w->cf->spool_max_bytes,
	    "oldest_age_ms", (json_int_t)(st.depth > 0 && st.oldest_ms > 0 ?
	        now_ms() - st.oldest_ms : 0),
	    "delivered", (json_int_t)h->w->stats->counters[STAT_delivered],
	    "retrying", (json_int_t)retrying,
	    "dead", (json_int_t)st.dead_depth,
	    "dead_bytes", (json_int_t)st.dead_bytes,
	    "paused", h->paused,
	    "refused_full", (json_int_t)h->refused_full,
	    "map_bytes", (json_int_t)st.map_size,
	    "lanes", lanes);
	return o;
}

/*
 * A JSON string from bytes that may not be UTF-8.  A NUL is valid UTF-8 but
 * becomes "?" like an invalid byte: jansson writes it as \u0000, which
 * heraldctl's parser (jansson without JSON_ALLOW_NUL), and many others,
 * refuse, so one binary answer of a backend (a dead letter's detail) would
 * make every page of the list that holds it unreadable.
 */
static json_t *
http_jstr(const char *p, size_t len)
{
	json_t *s;
	char *c;

	if (len > 0 && memchr(p, '\0', len) != NULL) {
		if ((c = malloc(len)) == NULL)
			return json_string("");
		for (size_t i = 0; i < len; i++)
			c[i] = p[i] != '\0' ? p[i] : '?';
		s = http_jstr(c, len);
		free(c);
		return s;
	}
	if ((s = json_stringn(p, len)) != NULL)
		return s;
	/* Cut inside a character (answers are kept to their first bytes)? */
	for (size_t cut = 1; cut <= 3 && cut <= len; cut++) {
		if (((unsigned char)p[len - cut] & 0xc0) != 0x80) {
			if ((unsigned char)p[len - cut] >= 0xc0 &&
			    (s = json_stringn(p, len - cut)) != NULL)
				return s;
			break;
		}
	}
	if ((c = malloc(len + 1)) == NULL)
		return json_string("");
	for (size_t i = 0; i < len; i++)
		c[i] = (unsigned char)p[i] < 0x80 && p[i] != '\0' ? p[i] : '?';
	s = json_stringn(c, len);
	free(c);
	return s ? s : json_string("");
}

struct dead_list {
	json_t *entries;
};

static int
http_dead_entry(void *arg, const struct spool_dead *d)
{
	struct dead_list *dl = arg;
	char rat[RFC3339_LEN], dat[RFC3339_LEN];
	json_t *e;

	fmt_rfc3339(d->received_ms, rat);
	fmt_rfc3339(d->dead_ms, dat);
	e = json_object();
	json_object_set_new(e, "id", http_jstr(d->id, d->idlen));
	json_object_set_new(e, "device", http_jstr(d->device, d->devlen));
	json_object_set_new(e, "topic", http_jstr(d->topic, d->topiclen));
	json_object_set_new(e, "reason", http_jstr(d->reason, d->reasonlen));
	json_object_set_new(e, "status", json_integer(d->status));
	json_object_set_new(e, "detail", http_jstr(d->detail, d->detaillen));
	json_object_set_new(e, "receivedAt", json_string(rat));
	json_object_set_new(e, "deadAt", json_string(dat));
	json_object_set_new(e, "replayable", json_boolean(d->replayable));
	json_object_set_new(e, "bytes", json_integer((json_int_t)d->datalen));
	json_array_append_new(dl->entries, e);
	return 0;
}

static int
http_replayed(void *arg, const struct spool_rec *r)
{
	struct http *h = arg;

	return http_lane_push(&h->lanes[http_lane_of(h, r->device, r->devlen)], r->seq);
}

static json_t *
http_admin_dead(struct http *h, int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : "list";
	struct spool_stats st;
	size_t a = 0, b = 0;
	int rc;

	if (strcmp(sub, "list") == 0) {
		struct dead_list dl = { json_array() };
		const char *after = argc > 3 ? argv[3] : NULL;
		long limit = HTTP_LIST_DEFAULT;
		json_t *res;
		char *end;

		if (argc > 2) {
			limit = strtol(argv[2], &end, 10);
			if (*end != '\0' || limit <= 0 ||
			    (after != NULL && (*after == '\0' || strlen(after) > SPOOL_ID_MAX))) {
				json_decref(dl.entries);
				return http_err("usage", "deadletter list [LIMIT [AFTER_ID]]");
			}
		}
		/* An answer must fit the control channel (ctl.h): at most 10,000.
		 * One more is read to tell whether a next page exists. */
		if (limit > HTTP_LIST_MAX)
			limit = HTTP_LIST_MAX;
		if (spool_dead_list(h->sp, after, after ? strlen(after) : 0, (size_t)limit + 1,
		    http_dead_entry, &dl) < 0) {
			json_decref(dl.entries);
			return http_err("internal", "cannot read the dead-letter store");
		}
		spool_stats(h->sp, &st);
		res = json_pack("{s:o,s:I}", "entries", dl.entries, "total",
		    (json_int_t)st.dead_depth);
		if (json_array_size(dl.entries) > (size_t)limit) {
			/* More follow: "next" is where the next page starts after. */
			json_array_remove(dl.entries, (size_t)limit);
			json_object_set(res, "next", json_object_get(
			    json_array_get(dl.entries, (size_t)limit - 1), "id"));
		}
		return res;
	}
	if (strcmp(sub, "replay") != 0 && strcmp(sub, "purge") != 0)
		return http_err("usage", "deadletter list [LIMIT [AFTER_ID]] | replay ID|all | "
		    "purge ID|all");
	if (argc < 3)
		return http_err("usage", sub[0] == 'r' ? "deadletter replay ID|all" :
		    "deadletter purge ID|all");
	/* Both work outside the pass's batch. */
	http_flush(h);
	if (h->fatal)
		return http_err("internal", "spool failure");
	const char *id = strcmp(argv[2], "all") == 0 ? NULL : argv[2];
	size_t idlen = id ? strlen(id) : 0;
	if (sub[0] == 'r') {
		rc = spool_dead_replay(h->sp, id, idlen, http_replayed, h, &a, &b);
		if (rc == SPOOL_ERR) {
			http_fatal(h, "replay");
			return http_err("internal", "spool failure");
		}
		if (rc == SPOOL_NOTFOUND)
			return http_err("not_found", "no such dead-letter entry");
		log_info("dead-letter replay: %zu replayed, %zu skipped", a, b);
		for (int i = 0; i < h->nlanes; i++)
			http_lane_kick(&h->lanes[i]);
		http_gauges(h);
		if (rc == SPOOL_FULL)
			return json_pack("{s:I,s:I,s:b}", "replayed", (json_int_t)a,
			    "skipped", (json_int_t)b, "full", 1);
		return json_pack("{s:I,s:I}", "replayed", (json_int_t)a, "skipped",
		    (json_int_t)b);
	}
	rc = spool_dead_purge(h->sp, id, idlen, &a);
	if (rc == SPOOL_ERR) {
		http_fatal(h, "purge");
		return http_err("internal", "spool failure");
	}
	if (rc == SPOOL_NOTFOUND && id != NULL)
		return http_err("not_found", "no such dead-letter entry");
	log_info("dead-letter purge: %zu removed", a);
	http_gauges(h);
	return json_pack("{s:I}", "purged", (json_int_t)a);
}

static json_t *
http_admin(struct worker *w, int argc, char **argv)
{
	struct http *h = w->arg;

	if (h->sp == NULL)
		return NULL;
	if (strcmp(argv[0], "spool") == 0) {
		if (argc == 1)
			return http_admin_spool(h);
		if (argc == 2 && strcmp(argv[1], "retry") == 0)
			return http_admin_retry(h);
		if (argc == 3 && strcmp(argv[1], "skip") == 0)
			return http_admin_skip(h, argv[2]);
		return http_err("usage", "usage: spool [retry | skip LANE]");
	}
	if (strcmp(argv[0], "deadletter") == 0)
		return http_admin_dead(h, argc, argv);
	return NULL;
}

/* ---- lifecycle ---- */

/*
 * The dead-letter store is outside the spool's quota, and a device that
 * sends only invalid messages adds one entry each: its rejected entries
 * (never replayable, kept to show what came) may take a quarter of
 * [spool] max_bytes; past that the oldest go.  What the backend refused
 * stays until the operator replays or purges it.
 */
static void
http_dead_trim(struct http *h)
{
	size_t max = h->w->cf->spool_max_bytes / HTTP_DEAD_SHARE, n;
	struct spool_stats st;
	bool more;

	spool_stats(h->sp, &st);
	if (st.dead_bytes <= max || st.dead_depth == h->dead_stuck)
		return;
	if (spool_dead_trim(h->sp, max, HTTP_DEAD_TRIM_MAX, &n, &more) != SPOOL_OK)
		return;     /* logged; again at the next tick */
	/* Nothing to drop in the whole store: no new look until its count changes. */
	h->dead_stuck = n == 0 && !more ? st.dead_depth : 0;
	if (n == 0 && more)
		return;     /* the look goes on at the next tick */
	if (n == 0) {
		log_ratelimited(LOG_WARNING, "the dead-letter store takes %llu bytes, over a "
		    "quarter of [spool] max_bytes, all of it replayable: heraldctl "
		    "deadletter replay or purge", (unsigned long long)st.dead_bytes);
		return;
	}
	worker_count(h->w, STAT_dead_trimmed, n);
	log_ratelimited(LOG_WARNING, "the dead-letter store took %llu bytes, over a quarter "
	    "of [spool] max_bytes: its %zu oldest rejected device message(s) are dropped",
	    (unsigned long long)st.dead_bytes, n);
}

static void
http_tick(evutil_socket_t fd, short what, void *arg)
{
	struct http *h = arg;

	if (h->sp == NULL || h->fatal)
		return;
	/* Say the state again now and then, either way: a restarted router, or a
	 * RESUME lost on its way to an mqtt worker, must not pause reading for good. */
	if (mono_ms() - h->pause_sent_ms >= HTTP_PAUSE_RESEND_MS)
		http_say(h, h->paused ? HM_FAB_PAUSE : HM_FAB_RESUME);
	/* Deliveries reach the disk once a second, not at every commit. */
	if (spool_sync(h->sp) != SPOOL_OK) {
		http_fatal(h, "sync");
		return;
	}
	http_dead_trim(h);
	http_gauges(h);
}

static void
http_finish(struct http *h)
{
	if (h->sp == NULL)
		return;
	http_flush(h);
	if (h->sending > 0)
		log_notice("stopping with %d POST(s) unanswered: they are sent again "
		    "after the restart", h->sending);
	spool_close(h->sp);
	h->sp = NULL;
	worker_exit(h->w, h->fatal ? 1 : 0);
}

static void
http_drain_timeout(evutil_socket_t fd, short what, void *arg)
{
	http_finish(arg);
}

/*
 * How long POSTs in flight may take at a stop: the supervisor's
 * [workers] stop_timeout_ms, less HTTP_STOP_MARGIN_MS (a quarter of a
 * shorter timeout) for the last commit, the spool's close and the exit, so
 * that it never has to send SIGKILL.  Its SIGTERM at half the timeout
 * changes nothing here: the stop is already under way.
 */
static int
http_drain_ms(const struct config *cf)
{
	int margin = cf->stop_timeout_ms / 4;

	if (margin > HTTP_STOP_MARGIN_MS)
		margin = HTTP_STOP_MARGIN_MS;
	return cf->stop_timeout_ms - margin;
}

/*
 * Drain: no new POST (lane_kick and the lane timers check `stopping`),
 * lanes waiting to retry stop waiting (their envelopes stay in the spool),
 * and the POSTs in flight get their answers recorded as usual: 2xx
 * deletes, a permanent 4xx moves to the dead-letter store, anything else
 * keeps the envelopes.  The last answer, or the deadline, ends it with a
 * commit (http_finish); what is still unanswered then is posted again
 * after the restart, under the same id.  Envelopes that come meanwhile
 * are spooled and acknowledged as ever.
 */
static void
http_stop(struct worker *w)
{
	struct http *h = w->arg;
	int ms;

	h->stopping = true;
	for (int i = 0; i < h->nlanes; i++) {
		struct lane *l = &h->lanes[i];

		if (l->state == LANE_LINGER || l->state == LANE_BACKOFF)
			evtimer_del(l->timer);
		if (l->state == LANE_LINGER)
			l->state = LANE_IDLE;
	}
	if (h->sending == 0) {
		http_finish(h);
		return;
	}
	ms = http_drain_ms(w->cf);
	log_info("stopping: waiting up to %d ms for %d POST(s) in flight", ms, h->sending);
	http_after(h->drain_ev, ms);
}

static void
http_reload(struct worker *w, const struct config *old)
{
	struct http *h = w->arg;
	const struct config *cf = w->cf;

	if (strcmp(cf->backend_secret, old->backend_secret) != 0 &&
	    http_key(h, cf->backend_secret) == -1) {
		log_err("reload: keeping the previous signing key");
		http_key(h, old->backend_secret);
	}
	/*
	 * url, timeout_ms and batch_max are read at every POST.  A change of
	 * concurrency (lanes map devices), of the spool's quota or of its
	 * sync mode restarts this worker instead (role_needs_restart in
	 * supervisor.c): the new worker builds its lanes from the spool.
	 */
}

static void
http_cleanup(struct http *h)
{
	if (h->sp != NULL) {
		http_flush(h);
		spool_close(h->sp);
		h->sp = NULL;
	}
	http_lanes_free(h);
	if (h->multi != NULL)
		curl_multi_cleanup(h->multi);
	h->multi = NULL;
	if (h->curl_timer != NULL)
		event_free(h->curl_timer);
	if (h->commit_ev != NULL)
		event_free(h->commit_ev);
	if (h->tick != NULL)
		event_free(h->tick);
	if (h->drain_ev != NULL)
		event_free(h->drain_ev);
	h->curl_timer = h->commit_ev = h->tick = h->drain_ev = NULL;
	free(h->acks);
	free(h->news);
	free(h->sent);
	free(h->sent_next);
	h->sent = NULL;
	h->sent_next = NULL;
	curl_global_cleanup();
}

int
http_main(struct worker *w)
{
	struct http *h = &http_state;
	char path[600], err[512];
	int code;

	memset(h, 0, sizeof(*h));
	h->w = w;
	w->arg = h;
	if (sodium_init() < 0) {
		log_err("libsodium failed to initialise");
		return 1;
	}
	if (http_key(h, w->cf->backend_secret) == -1)
		return WORKER_EXIT_FATAL;
	/* Optional: without it a resent copy of a delivered envelope goes out again. */
	h->sent = calloc(HTTP_SENT_SLOTS, sizeof(*h->sent));
	h->sent_next = calloc(HTTP_SENT_SETS, sizeof(*h->sent_next));
	if (h->sent == NULL || h->sent_next == NULL) {
		log_warn("no memory to remember delivered ids: resent copies are posted again");
		free(h->sent);
		free(h->sent_next);
		h->sent = NULL;
		h->sent_next = NULL;
	}
	snprintf(path, sizeof(path), "%s/spool", w->cf->state_dir);
	h->sp = spool_open(path, w->cf->spool_max_bytes, w->cf->spool_fsync, http_sent_gone, h,
	    err, sizeof(err));
	if (h->sp == NULL) {
		log_err("spool: %s", err);
		return 1;
	}
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK ||
	    (h->multi = curl_multi_init()) == NULL) {
		log_err("libcurl failed to initialise");
		spool_close(h->sp);
		return 1;
	}
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, http_sock_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, http_timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	h->curl_timer = evtimer_new(w->base, http_timer_event, h);
	h->commit_ev = event_new(w->base, -1, 0, http_commit_event, h);
	h->tick = event_new(w->base, -1, EV_PERSIST, http_tick, h);
	h->drain_ev = evtimer_new(w->base, http_drain_timeout, h);
	if (h->curl_timer == NULL || h->commit_ev == NULL || h->tick == NULL ||
	    h->drain_ev == NULL || http_lanes(h, w->cf->concurrency) == -1) {
		log_err("http worker set-up failed");
		http_cleanup(h);
		return 1;
	}
	event_add(h->tick, &(struct timeval){ HTTP_TICK_MS / 1000, 0 });
	w->hooks.fabric = http_fabric;
	w->hooks.stop = http_stop;
	w->hooks.reload = http_reload;
	w->hooks.admin = http_admin;
	/* The router's messages (its own envelopes, requests' notes) come
	 * on the fabric, the crypto worker's envelopes on the spool lane. */
	if (worker_join_fabric(w) == -1 || worker_lane_in(w, "spool") == -1) {
		http_cleanup(h);
		return 1;
	}
	{
		struct spool_stats st;

		spool_stats(h->sp, &st);
		log_info("spool: %llu envelope(s), %llu bytes, %llu dead; %d lanes",
		    (unsigned long long)st.depth, (unsigned long long)st.bytes,
		    (unsigned long long)st.dead_depth, h->nlanes);
		/* The router may remember a pause of our previous life. */
		http_gauges(h);
		if (!h->paused)
			http_say(h, HM_FAB_RESUME);
	}
	for (int i = 0; i < h->nlanes; i++)
		http_lane_kick(&h->lanes[i]);
	code = worker_loop(w);
	http_cleanup(h);
	return code;
}
