/*
 * The router's request state machine and device presence (SPEC §3): requests
 * are committed to the store (reqstore.c) before the API is answered, go out
 * to an online device one at a time in accept order, move on broker
 * acknowledgements, device responses and deadline timers, and each change
 * after "queued" is sent to the spool as a kind "request" envelope that is
 * kept until the spool acknowledged it.  Writes of one loop pass share one
 * LMDB transaction (group commit); what depends on them waits for it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <event2/event.h>

#include "jsoncheck.h"
#include "log.h"
#include "reqstore.h"
#include "requests.h"
#include "util.h"
#include "worker.h"

#define REQUESTS_KEEP_MS     (24LL * 3600 * 1000)  /* ended records stay readable this long */
#define REQUESTS_HIGH_PCT    50      /* over this much of max_bytes, sooner */
#define REQUESTS_CREATE_PCT  90      /* over this much, new requests are refused */
#define REQUESTS_TICK_MS     1000
#define DEV_FLUSH_MS         100     /* presence records are written in slices */
#define DEV_FLUSH_MIN        128     /* devices per slice, at least */
#define SLOW_MS              2       /* a pass this long is logged (debug) */
#define REQUESTS_PRUNE_MS    60000   /* a look for old records, at least this often */
#define REQUESTS_PRUNE_BATCH 500     /* records a slice; slices every DEV_FLUSH_MS while
                                        there are more (5,000 a second), and back
                                        to back over the high mark */
#define REQUESTS_PRUNE_LIVE  20000   /* live requests a slice steps over, at most */
#define REQUESTS_PRUNE_BUSY_MS 20    /* over the high mark: slices back to back for
                                        up to this long every DEV_FLUSH_MS */
#define PUBLISH_TIMEOUT_MS   10000   /* no PUBLISHED from the mqtt worker: retry */
#define PUBLISH_RETRY_MS     1000
#define NOSUB_RETRY_MIN_MS   1000    /* the broker had no subscriber for a command: */
#define NOSUB_RETRY_MAX_MS   60000   /* try again after this, doubling, ... */
#define NOTE_RESEND_MS       5000    /* no ACK from the spool: send again */
#define NOTE_RESEND_BATCH    1000
#define NOTE_LINGER_MS       5       /* notifications wait this long for company */
#define LIST_MAX             1000
#define LIST_SCAN_MAX        5000    /* records a page of a device's requests looks at */
#define WAIT_MAX             60
#define PEER_MAX             32

enum rstate { RS_QUEUED, RS_SENT, RS_CONFIRMED, RS_FAILED, RS_TIMEOUT, RS_EXPIRED, RS_CANCELLED, RS_N };
static const char *rstate_names[RS_N] = {
	"queued", "sent", "confirmed", "failed", "timeout", "expired", "cancelled"
};

/* Intrusive hash table: a node is the first member of what it indexes. */
struct hnode {
	struct hnode *next;
	uint64_t      hash;
	const char   *key;       /* string tables */
};
struct htab {
	struct hnode **b;
	size_t         nb, n;
};

struct requests;
struct req;

struct waiter {
	LIST_ENTRY(waiter) link;
	struct requests *q;
	struct req      *r;
	struct event    *timer;
	uint64_t         reqid;
	char             peer[PEER_MAX];
};

struct req {
	struct hnode      hn;           /* by commandId, live requests only */
	TAILQ_ENTRY(req)  dlink;        /* in dev->live, accept order */
	struct requests  *q;
	struct dev       *dev;
	char              cid[REQSTORE_ID_MAX + 1];
	uint64_t          seq;
	/*
	 * state and rec are what the open group wrote: the API sees them only
	 * through answers that wait for its commit.  The first change of a
	 * group keeps the committed ones in cstate and crec (the request is
	 * then in q->staged); a failed commit puts them back.  An ended
	 * request stays until its end is committed.
	 */
	int               state;
	json_t           *rec;
	int               cstate;
	json_t           *crec;
	bool              staged;
	TAILQ_ENTRY(req)  slink;        /* in q->staged */
	/* A fact (broker ack, device answer, deadline) of the group, and one
	 * whose write failed: that is written again every tick (want, in
	 * q->retry) rather than forgotten.  -1: none. */
	int               fact;
	json_t           *fact_rec;
	int               want;
	json_t           *want_rec;
	TAILQ_ENTRY(req)  rlink;        /* in q->retry */
	char             *text;         /* rec's public text, as its last write made it */
	int64_t           deadline_ms;
	struct event     *timer;
	struct pub       *pub;          /* its publish in flight */
	LIST_HEAD(, waiter) waiters;
};

struct dev {
	struct hnode      hn;
	TAILQ_ENTRY(dev)  dirty_link;
	TAILQ_ENTRY(dev)  kick_link;    /* in q->kicks */
	struct requests  *q;
	char              id[REQSTORE_ID_MAX + 1];
	bool              online;
	bool              dirty;        /* in q->dirty */
	bool              saving;       /* in q->saved (same link) */
	bool              kick;         /* in q->kicks */
	int64_t           last_seen_ms, status_ms, telemetry_ms;
	json_t           *status;
	json_t           *telemetry;    /* the last telemetry object the router saw */
	int               pending;      /* live requests */
	TAILQ_HEAD(reqlist, req) live;
	struct pub       *pub;          /* the command publish in flight */
	struct event     *retry;
	/*
	 * The broker took the last command with no subscriber to get it (the
	 * device is not connected, or not subscribed yet): the request stays
	 * queued until the device announces itself or nosub_wait ms pass.
	 */
	bool              nosub;
	int               nosub_wait;
	uint64_t          announced;    /* "online" statuses seen */
};

enum pub_kind { PUB_REQUEST, PUB_EVENT, PUB_CONFIG_SET, PUB_CONFIG_CLEAR };

struct pub {
	struct hnode      hn;           /* by ref (hash = ref) */
	struct requests  *q;
	uint64_t          ref;
	int               kind;
	struct event     *timer;
	struct dev       *dev;
	struct req       *r;            /* PUB_REQUEST; NULL once it ended */
	uint64_t          announced;    /* PUB_REQUEST: its device's, at the start */
	int               slot;         /* the mqtt worker that publishes it */
	uint64_t          reqid;        /* the API call waiting (others) */
	char              peer[PEER_MAX];
	char              event_id[ULID_LEN];
};

struct note { uint64_t seq; int64_t sent_mono; bool acked; };

/*
 * What waits for the group's commit.  On success: an answer is sent, a
 * notification goes to the spool, a new request is answered (202) unless it
 * waits.  On failure nothing of the group was stored: answers become 503 and
 * new requests are forgotten, so nothing is ever answered uncommitted.
 */
enum later_kind { LATER_REPLY, LATER_NOTE, LATER_CREATED };

struct later {
	STAILQ_ENTRY(later) link;
	int               kind;
	uint64_t          reqid;        /* REPLY, CREATED */
	uint64_t          nseq;         /* NOTE */
	int               status;       /* REPLY */
	char              peer[PEER_MAX];
	char              cid[REQSTORE_ID_MAX + 1];     /* CREATED */
	char             *text;         /* REPLY, CREATED (NULL: it waits) */
};
STAILQ_HEAD(later_list, later);

struct hint_id { uint64_t life, hseq; };

/* What the router made of a device hint (see requests_on_device). */
enum hint_use {
	HINT_AGAIN,     /* not taken: the crypto worker sends it again */
	HINT_GROUP,     /* taken into the open group: acknowledged once it commits */
	HINT_DONE,      /* taken, nothing to store: acknowledged as it is */
};

struct requests {
	struct worker   *w;
	struct reqstore *st;
	struct htab      reqs, devs, pubs;
	TAILQ_HEAD(, dev) dirty;
	size_t           ndirty;
	TAILQ_HEAD(, dev) saved;        /* presence written by the group */
	TAILQ_HEAD(, dev) kicks;        /* to kick after the commit */
	TAILQ_HEAD(, req) staged;       /* requests the group changed */
	TAILQ_HEAD(, req) retry;        /* facts whose write failed */
	bool             tx_open;       /* the group's write transaction */
	bool             tx_failed;     /* the group is lost: writes refused until tx_end */
	bool             stopping;      /* publish nothing more: "sent" could not be seen */
	struct later_list later;        /* waits for the group's commit */
	struct event    *tx_ev;         /* commits after the loop polled */
	struct event    *flush_ev;
	struct hmw       out;           /* notifications to send, batched */
	int              nout;
	struct event    *note_ev;       /* sends them NOTE_LINGER_MS after the first */
	char            *gw_json;       /* note_gateway() */
	char             gw_name[256];
	uint64_t         next_seq, next_nseq, next_ref;
	struct note     *notes;         /* unacknowledged, by seq */
	size_t           nnotes, capnotes, nacked;
	uint64_t        *acking;        /* acknowledged, their deletion not yet committed */
	size_t           nacking, capacking;
	struct event    *tick;
	int64_t          last_prune_ms;
	bool             prune_more;    /* the last slice did not reach the end */
	bool             prune_high;    /* over the high mark, the next slice may find history */
	uint64_t         prune_from;    /* where the next slice looks first; 0: the start */
	int              n_online, n_queued, n_sent;
	bool             spool_full;
	char             hint_peer[32]; /* the crypto worker, whose hints these are */
	struct hint_id  *hints;         /* hints taken by the open group */
	size_t           nhints, caphints;
	struct hint_id  *hdone;         /* committed, acknowledged every DEV_FLUSH_MS */
	size_t           nhdone, caphdone;
};

static void req_change(struct requests *q, struct req *r, int state, json_t *fields, bool fact);
static void acks_settle(struct requests *q, bool ok);
static void req_finish(struct requests *q, struct req *r);
static void req_count(struct requests *q, int state, int delta);
static void req_timer_arm(struct req *r);
static bool requests_prune(struct requests *q, bool due);
static void dev_kick(struct requests *q, struct dev *d);
static void dev_nosub(struct requests *q, struct dev *d, const struct pub *p);
static void reply_text(struct requests *q, const char *peer, uint64_t reqid, int status,
    const char *text);
static void req_free(struct requests *q, struct req *r);
static struct req *req_find(struct requests *q, const char *cid);
static void note_send_seq(struct requests *q, uint64_t seq);
static void note_flush(struct requests *q);
static void note_flush_soon(struct requests *q);

/* ---- hash tables ---- */

static uint64_t
hash_str(const char *s)
{
	return hash32(s, strlen(s));
}

static int
ht_grow(struct htab *t)
{
	size_t nb = t->nb ? t->nb * 2 : 256;
	struct hnode **b = calloc(nb, sizeof(*b));

	if (b == NULL)
		return -1;
	for (size_t i = 0; i < t->nb; i++) {
		struct hnode *n = t->b[i], *next;
		for (; n != NULL; n = next) {
			next = n->next;
			n->next = b[n->hash % nb];
			b[n->hash % nb] = n;
		}
	}
	free(t->b);
	t->b = b;
	t->nb = nb;
	return 0;
}

static int
ht_add(struct htab *t, struct hnode *n)
{
	if ((t->n + 1 > t->nb * 2 || t->nb == 0) && ht_grow(t) == -1 && t->nb == 0)
		return -1;
	n->next = t->b[n->hash % t->nb];
	t->b[n->hash % t->nb] = n;
	t->n++;
	return 0;
}

static void
ht_del(struct htab *t, struct hnode *n)
{
	struct hnode **pp;

	if (t->nb == 0)
		return;
	for (pp = &t->b[n->hash % t->nb]; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == n) {
			*pp = n->next;
			t->n--;
			return;
		}
	}
}

static struct hnode *
ht_find_str(const struct htab *t, const char *key)
{
	uint64_t h = hash_str(key);

	if (t->nb == 0)
		return NULL;
	for (struct hnode *n = t->b[h % t->nb]; n != NULL; n = n->next)
		if (n->hash == h && strcmp(n->key, key) == 0)
			return n;
	return NULL;
}

static struct hnode *
ht_find_u64(const struct htab *t, uint64_t key)
{
	if (t->nb == 0)
		return NULL;
	for (struct hnode *n = t->b[key % t->nb]; n != NULL; n = n->next)
		if (n->hash == key)
			return n;
	return NULL;
}

/* ---- small helpers ---- */

static bool
pstr_eq(struct pstr s, const char *c)
{
	return s.len == strlen(c) && memcmp(s.p, c, s.len) == 0;
}

static void
rfc3339_set(json_t *o, const char *key, int64_t ms)
{
	char ts[RFC3339_LEN];

	fmt_rfc3339(ms, ts);
	json_object_set_new(o, key, json_string(ts));
}

static int
state_parse(const char *s)
{
	for (int i = 0; i < RS_N; i++)
		if (strcmp(s, rstate_names[i]) == 0)
			return i;
	return -1;
}

static bool
state_ended(int s)
{
	return s >= RS_CONFIRMED;
}

static int64_t
rec_int(const json_t *rec, const char *key)
{
	return json_integer_value(json_object_get(rec, key));
}

/*
 * Verbatim JSON in records.  A request's "params" and a device's "result"
 * and "error" are shown outside (answers, lists, kind "request" envelopes,
 * the command) as they were written, whitespace between tokens aside:
 * jansson would refuse numbers past int64 or a double's range and rewrite
 * others (0.1 as 0.10000000000000001).  The record keeps the member as
 * jansson reads it (params an object; a number jansson cannot hold as
 * null), so that the store stays what herald 8ecd678 and jansson users
 * (heraldctl) read; when that differs from the text, the text is kept too,
 * in the private string field "_<name>" (which 8ecd678 keeps and hides),
 * and is shown in the member's place.  A record stored by e727283 has
 * params as a JSON string of its text: rec_norm() reads it so.
 */
static const char *
raw_private(const char *key)
{
	switch (key[0]) {
	case 'p':
		return strcmp(key, "params") == 0 ? "_params" : NULL;
	case 'r':
		return strcmp(key, "result") == 0 ? "_result" : NULL;
	case 'e':
		return strcmp(key, "error") == 0 ? "_error" : NULL;
	}
	return NULL;
}

/* The text of rec's verbatim member key ("_<key>"), or NULL. */
static const json_t *
raw_text(const json_t *rec, const char *key)
{
	const char *priv = raw_private(key);
	const json_t *t = priv != NULL ? json_object_get(rec, priv) : NULL;

	return json_is_string(t) ? t : NULL;
}

/* A text being built; oom once something could not be added. */
struct tbuf {
	char   *p;
	size_t  len, cap;
	bool    oom;
};

static void
tb_put(struct tbuf *b, const char *s, size_t n)
{
	size_t cap;
	char *np;

	if (b->oom)
		return;
	if (b->len + n + 1 > b->cap) {
		for (cap = b->cap ? b->cap : 512; cap < b->len + n + 1; cap *= 2)
			;
		if ((np = realloc(b->p, cap)) == NULL) {
			b->oom = true;
			return;
		}
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

#define tb_lit(b, s) tb_put((b), (s), sizeof(s) - 1)

static int
tb_dump_cb(const char *s, size_t n, void *arg)
{
	tb_put(arg, s, n);
	return ((struct tbuf *)arg)->oom ? -1 : 0;
}

static void
tb_dump(struct tbuf *b, const json_t *v)
{
	if (json_dump_callback(v, tb_dump_cb, b, JSON_COMPACT | JSON_ENCODE_ANY) == -1)
		b->oom = true;
}

/* A string as JSON: as it is when nothing in it needs an escape (jansson
 * escapes only '"', '\\' and control characters here); v: it as a json_t,
 * or NULL. */
static void
tb_string(struct tbuf *b, const char *s, size_t n, const json_t *v)
{
	json_t *tmp;

	for (size_t i = 0; i < n; i++) {
		if ((unsigned char)s[i] < 0x20 || s[i] == '"' || s[i] == '\\') {
			tmp = v == NULL ? json_stringn(s, n) : NULL;
			if (v == NULL && tmp == NULL)
				b->oom = true;
			else
				tb_dump(b, v != NULL ? v : tmp);
			json_decref(tmp);
			return;
		}
	}
	tb_lit(b, "\"");
	tb_put(b, s, n);
	tb_lit(b, "\"");
}

static void
tb_value(struct tbuf *b, const json_t *v)
{
	char num[32];

	switch (json_typeof(v)) {
	case JSON_STRING:
		tb_string(b, json_string_value(v), json_string_length(v), v);
		break;
	case JSON_INTEGER:
		tb_put(b, num, (size_t)snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
		    json_integer_value(v)));
		break;
	case JSON_TRUE:
		tb_lit(b, "true");
		break;
	case JSON_FALSE:
		tb_lit(b, "false");
		break;
	case JSON_NULL:
		tb_lit(b, "null");
		break;
	default:
		tb_dump(b, v);
	}
}

/* ,"key": (the record's keys are herald's own: written as they are) */
static void
tb_key(struct tbuf *b, bool first, const char *key)
{
	size_t n = strlen(key);

	if (!first)
		tb_lit(b, ",");
	tb_string(b, key, n, NULL);
	tb_lit(b, ":");
}

/* A scratch buffer emptied for a new text; a large one is given back. */
static struct tbuf *
tb_reset(struct tbuf *b)
{
	if (b->cap > 65536) {
		free(b->p);
		b->p = NULL;
		b->cap = 0;
	}
	b->len = 0;
	b->oom = false;
	return b;
}

/* The scratch buffers of rec_texts() (the router is one thread). */
static struct tbuf tb_pub, tb_stored;

/*
 * The record's texts in one pass over its fields: *pub (malloc'd) the
 * API's, without the store's "_" fields and with each verbatim member as
 * its text; and, when stored is not NULL, the store's, every field as it
 * is (valid until the next call).  -1 if out of memory (both NULL).
 */
static int
rec_texts(const json_t *rec, char **pub, const char **stored, size_t *storedlen)
{
	struct tbuf *p = tb_reset(&tb_pub), *s = tb_reset(&tb_stored);
	const json_t *raw;
	const char *k;
	json_t *v;
	bool sfirst = true, pfirst = true;
	size_t at;

	tb_lit(p, "{");
	if (stored != NULL)
		tb_lit(s, "{");
	json_object_foreach((json_t *)rec, k, v) {
		if (k[0] == '_') {
			if (stored != NULL) {
				tb_key(s, sfirst, k);
				tb_value(s, v);
				sfirst = false;
			}
			continue;
		}
		tb_key(p, pfirst, k);
		pfirst = false;
		raw = raw_text(rec, k);
		if (stored != NULL) {
			tb_key(s, sfirst, k);
			sfirst = false;
			at = s->len;
			tb_value(s, v);
			if (raw == NULL && !s->oom)
				tb_put(p, s->p + at, s->len - at);
		} else if (raw == NULL)
			tb_value(p, v);
		if (raw != NULL)
			tb_put(p, json_string_value(raw), json_string_length(raw));
	}
	tb_lit(p, "}");
	if (stored != NULL)
		tb_lit(s, "}");
	*pub = NULL;
	if (stored != NULL) {
		*stored = NULL;
		*storedlen = 0;
	}
	if (p->oom || s->oom || (*pub = malloc(p->len + 1)) == NULL)
		return -1;
	memcpy(*pub, p->p, p->len + 1);
	if (stored != NULL) {
		*stored = s->p;
		*storedlen = s->len;
	}
	return 0;
}

/* The record's answer text (without the store's fields); NULL if out of memory. */
static char *
rec_public_text(const json_t *rec)
{
	char *text;

	return rec_texts(rec, &text, NULL, NULL) == 0 ? text : NULL;
}

/* The record as heraldctl shows it: without the store's "_" fields (a
 * verbatim member as jansson reads it). */
static json_t *
rec_public(const json_t *rec)
{
	json_t *o = json_object();
	const char *k;
	json_t *v;

	json_object_foreach((json_t *)rec, k, v)
		if (k[0] != '_')
			json_object_set(o, k, v);
	return o;
}

/*
 * Set o's member key to the JSON text t[0..n) (valid, no whitespace
 * between tokens) as jansson reads it, a number it cannot hold as null
 * (the text in "_<key>" when it differs from jansson's own); dflt: the
 * value if jansson cannot read even that (NULL: null).  -1 if out of memory.
 */
static int
raw_set(json_t *o, const char *key, const char *t, size_t n, json_t *(*dflt)(void))
{
	const char *priv = raw_private(key);
	json_t *v = json_loadb(t, n, JSON_DECODE_ANY, NULL);
	struct tbuf d = { NULL, 0, 0, false };
	char *tamed;
	bool same;

	if (v == NULL) {
		if ((tamed = malloc(n + 1)) == NULL)
			return -1;
		v = json_loadb(tamed, jc_tame(t, n, tamed, NULL), JSON_DECODE_ANY, NULL);
		free(tamed);
		if (v == NULL) {
			/* Not JSON after all (a damaged store, a broken peer):
			 * never copied out verbatim. */
			log_ratelimited(LOG_ERR, "a record's %s is not JSON: shown as %s", key,
			    dflt != NULL ? "{}" : "null");
			if ((v = dflt != NULL ? dflt() : json_null()) == NULL ||
			    json_object_set_new(o, key, v) == -1)
				return -1;
			json_object_del(o, priv);
			return 0;
		}
	}
	tb_dump(&d, v);
	same = !d.oom && d.len == n && memcmp(d.p, t, n) == 0;
	free(d.p);
	if (d.oom) {
		json_decref(v);
		return -1;
	}
	if (json_object_set_new(o, key, v) == -1)
		return -1;
	if (same)
		json_object_del(o, priv);
	else if (json_object_set_new(o, priv, json_stringn(t, n)) == -1)
		return -1;
	return 0;
}

/* A record read from the store as this herald keeps them (see
 * raw_private()): e727283's params string becomes the object and its text.
 * rec (NULL: none) or NULL after freeing it if out of memory. */
static json_t *
rec_norm(json_t *rec)
{
	json_t *p = json_object_get(rec, "params");

	if (json_is_string(p) && json_object_get(rec, "_params") == NULL) {
		json_incref(p);
		if (raw_set(rec, "params", json_string_value(p), json_string_length(p),
		    json_object) == -1) {
			json_decref(rec);
			rec = NULL;
		}
		json_decref(p);
	}
	return rec;
}

static json_t *
rec_get(struct requests *q, const char *cid)
{
	return rec_norm(reqstore_get(q->st, cid));
}

/* A command or event payload: {"<idkey>":id,"type":type,"params":params
 * (its text raw, else the object, else {}), ["expiresAt":exp]}; NULL if
 * out of memory. */
static char *
payload_text(const char *idkey, const char *id, const json_t *type, const json_t *params,
    const json_t *raw, const json_t *exp)
{
	struct tbuf b = { NULL, 0, 0, false };

	tb_lit(&b, "{");
	tb_key(&b, true, idkey);
	tb_string(&b, id, strlen(id), NULL);
	tb_lit(&b, ",\"type\":");
	if (type != NULL)
		tb_value(&b, type);
	else
		tb_lit(&b, "null");     /* a damaged record: never without one */
	tb_lit(&b, ",\"params\":");
	if (raw != NULL)
		tb_put(&b, json_string_value(raw), json_string_length(raw));
	else if (params != NULL)
		tb_value(&b, params);
	else
		tb_lit(&b, "{}");
	if (exp != NULL) {
		tb_lit(&b, ",\"expiresAt\":");
		tb_value(&b, exp);
	}
	tb_lit(&b, "}");
	if (b.oom) {
		free(b.p);
		return NULL;
	}
	return b.p;
}

/* Store rec's stored text: a new request (seq > 0) or a change. */
static int
rec_put(struct requests *q, uint64_t seq, const char *cid, const char *device,
    const char *text, size_t len)
{
	return seq > 0 ? reqstore_add_text(q->st, seq, cid, device, text, len) :
	    reqstore_update_text(q->st, cid, text, len);
}

static void
gauges(struct requests *q)
{
	worker_gauge(q->w, GAUGE_devices_online, q->n_online);
	worker_gauge(q->w, GAUGE_req_queued, q->n_queued);
	worker_gauge(q->w, GAUGE_req_sent, q->n_sent);
}

/* ---- group commit ---- */

static double
elapsed_ms(uint64_t t0_us)
{
	return (double)(mono_us() - t0_us) / 1e3;
}

static struct later *
later_add(struct requests *q, int kind, const char *peer, uint64_t reqid)
{
	struct later *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	l->kind = kind;
	l->reqid = reqid;
	if (peer != NULL)
		strlcpy_h(l->peer, peer, sizeof(l->peer));
	STAILQ_INSERT_TAIL(&q->later, l, link);
	return l;
}

static void
later_run(struct requests *q, struct later_list *list, bool ok)
{
	struct later *l;
	struct req *r;

	while ((l = STAILQ_FIRST(list)) != NULL) {
		STAILQ_REMOVE_HEAD(list, link);
		switch (l->kind) {
		case LATER_REPLY:
			if (ok)
				reply_text(q, l->peer, l->reqid, l->status, l->text);
			else
				reply_text(q, l->peer, l->reqid, 503, "{\"error\":{\"code\":"
				    "\"unavailable\",\"message\":\"the change could not be stored\"}}");
			break;
		case LATER_NOTE:
			if (ok)
				note_send_seq(q, l->nseq);
			break;
		case LATER_CREATED:
			if (ok) {
				if (l->text != NULL)
					reply_text(q, l->peer, l->reqid, 202, l->text);
				break;
			}
			/* Never stored: it must not go out, and the caller may retry.
			 * So may a repeat that waits on it (same commandId, same
			 * pass): it gets the same answer. */
			{
				const char *why = reqstore_full(q->st) ?
				    "{\"error\":{\"code\":\"store_full\",\"message\":"
				    "\"the request store is full\"}}" :
				    "{\"error\":{\"code\":\"unavailable\",\"message\":"
				    "\"the request could not be stored\"}}";
				struct waiter *wt;

				if ((r = req_find(q, l->cid)) != NULL) {
					LIST_FOREACH(wt, &r->waiters, link)
						if (wt->reqid != l->reqid ||
						    strcmp(wt->peer, l->peer) != 0)
							reply_text(q, wt->peer, wt->reqid, 503, why);
					req_free(q, r);
					gauges(q);
				}
				reply_text(q, l->peer, l->reqid, 503, why);
			}
			break;
		}
		free(l->text);
		free(l);
	}
}

/*
 * Presence written by the group moves from q->dirty to q->saved; if the
 * group is lost it goes back, to be written again by dev_flush.
 */
static void
devs_settle(struct requests *q, bool ok)
{
	struct dev *d;

	while ((d = TAILQ_FIRST(&q->saved)) != NULL) {
		TAILQ_REMOVE(&q->saved, d, dirty_link);
		d->saving = false;
		if (!ok) {
			d->dirty = true;
			TAILQ_INSERT_TAIL(&q->dirty, d, dirty_link);
			q->ndirty++;
		}
	}
}

/*
 * The group's request changes are committed: ended requests answer their
 * waiters and go.  Or they are lost: each request is as it was before the
 * group, and a fact among its changes is kept to be written again.
 */
static void
staged_settle(struct requests *q, bool ok)
{
	struct req *r;

	while ((r = TAILQ_FIRST(&q->staged)) != NULL) {
		TAILQ_REMOVE(&q->staged, r, slink);
		r->staged = false;
		if (ok) {
			json_decref(r->crec);
			r->crec = NULL;
			/* Every change was made over the fact in want. */
			if (r->want >= 0) {
				TAILQ_REMOVE(&q->retry, r, rlink);
				json_decref(r->want_rec);
				r->want_rec = NULL;
				r->want = -1;
			}
		} else {
			req_count(q, r->state, -1);
			req_count(q, r->cstate, 1);
			json_decref(r->rec);
			r->rec = r->crec;
			r->crec = NULL;
			r->state = r->cstate;
			free(r->text);
			r->text = NULL;
			if (r->fact >= 0) {
				if (r->want < 0)
					TAILQ_INSERT_TAIL(&q->retry, r, rlink);
				json_decref(r->want_rec);
				r->want = r->fact;
				r->want_rec = r->fact_rec;
				r->fact_rec = NULL;
				log_ratelimited(LOG_WARNING, "request %s: state %s not stored; "
				    "writing it again", r->cid, rstate_names[r->want]);
			}
			if (!evtimer_pending(r->timer, NULL))
				req_timer_arm(r);
		}
		json_decref(r->fact_rec);
		r->fact_rec = NULL;
		r->fact = -1;
		if (ok && state_ended(r->state))
			req_finish(q, r);
	}
}

/*
 * The group's transaction, opened by the first write of a loop pass and
 * committed by tx_ev once the loop has polled again, i.e. after the fabric
 * handed over its whole batch: a burst of state changes costs one commit
 * (one set of page writes) instead of one each.  -1: no transaction (the
 * group is then lost, see tx_fail).
 */
static int
tx_begin(struct requests *q)
{
	static const struct timeval zero = { 0, 0 };

	if (q->tx_open)
		return 0;
	if (q->tx_failed || reqstore_begin(q->st) == -1) {
		q->tx_failed = true;
		if (!evtimer_pending(q->tx_ev, NULL))
			evtimer_add(q->tx_ev, &zero);
		return -1;
	}
	q->tx_open = true;
	if (!evtimer_pending(q->tx_ev, NULL))
		evtimer_add(q->tx_ev, &zero);
	return 0;
}

/*
 * A write of the group failed: LMDB cannot go on with the transaction, so
 * the whole group is lost.  Until tx_end settles it (not here: the caller
 * may be holding a request that settling would free), memory is ahead of
 * the store, so further writes are refused, answers wait (and become 503)
 * and nothing is published.
 */
static void
tx_fail(struct requests *q)
{
	static const struct timeval zero = { 0, 0 };

	if (q->tx_open) {
		reqstore_abort(q->st);
		q->tx_open = false;
	}
	q->tx_failed = true;
	if (!evtimer_pending(q->tx_ev, NULL))
		evtimer_add(q->tx_ev, &zero);
}

/* Acknowledge the committed hints to the crypto worker, which keeps them
 * until then (it sends them again after seconds, so this may wait). */
static void
hints_ack(struct requests *q)
{
	static struct msg_ack a;
	struct hmw m;

	for (size_t i = 0; i < q->nhdone; ) {
		a.slot = PROTO_SLOT_HINTS;
		a.epoch = q->hdone[i].life;
		for (a.n = 0; i < q->nhdone && a.n < ACK_MAX && q->hdone[i].life == a.epoch; i++)
			a.seqs[a.n++] = q->hdone[i].hseq;
		hmw_init(&m, HM_FAB_ACK);
		proto_write_ack(&m, &a);
		if (worker_send(q->w, q->hint_peer, &m) == -1)
			log_ratelimited(LOG_WARNING, "hint acknowledgement to %s lost: it sends "
			    "them again", q->hint_peer);
		hmw_free(&m);
	}
	q->nhdone = 0;
}

/*
 * The group that took these hints is settled.  Committed: they are
 * acknowledged.  Lost: the group's facts and presence stay in memory to be
 * written again, but memory dies with this process, so its hints are not
 * acknowledged and come again (a response matched twice changes nothing).
 */
static void
hints_settle(struct requests *q, bool ok)
{
	struct hint_id *nh;

	if (ok && q->nhints > 0 &&
	    (nh = grow_array(q->hdone, &q->caphdone, q->nhdone + q->nhints, sizeof(*nh), 256)) != NULL) {
		q->hdone = nh;
		memcpy(q->hdone + q->nhdone, q->hints, q->nhints * sizeof(*nh));
		q->nhdone += q->nhints;
		if (q->nhdone >= ACK_MAX)
			hints_ack(q);
	}
	q->nhints = 0;
}

static void
hint_taken(struct requests *q, const char *peer, const struct msg_device_info *m,
    enum hint_use use)
{
	static const struct timeval zero = { 0, 0 };
	struct hint_id *nh;

	if ((q->nhints > 0 || q->nhdone > 0) && strcmp(q->hint_peer, peer) != 0)
		q->nhints = q->nhdone = 0;  /* one crypto worker: never; else sent again */
	strlcpy_h(q->hint_peer, peer, sizeof(q->hint_peer));
	if (use == HINT_DONE) {
		if ((nh = grow_array(q->hdone, &q->caphdone, q->nhdone + 1, sizeof(*nh), 256)) == NULL)
			return;         /* not acknowledged: it comes again */
		q->hdone = nh;
		q->hdone[q->nhdone++] = (struct hint_id){ m->life, m->hseq };
		return;
	}
	if ((nh = grow_array(q->hints, &q->caphints, q->nhints + 1, sizeof(*nh), 256)) == NULL)
		return;
	q->hints = nh;
	q->hints[q->nhints++] = (struct hint_id){ m->life, m->hseq };
	/* tx_end settles them, with or without a write in this pass. */
	if (!evtimer_pending(q->tx_ev, NULL))
		evtimer_add(q->tx_ev, &zero);
}

/* Commit the group; then answer, notify and kick what waited for it.
 * Returns whether the group was stored. */
static bool
tx_end(struct requests *q)
{
	struct later_list done = STAILQ_HEAD_INITIALIZER(done);
	TAILQ_HEAD(, dev) kicks = TAILQ_HEAD_INITIALIZER(kicks);
	uint64_t t0 = mono_us();
	struct dev *d;
	bool ok = !q->tx_failed;

	if (q->tx_open) {
		q->tx_open = false;
		if (reqstore_commit(q->st) == -1)
			ok = false;
	}
	q->tx_failed = false;
	if (!ok)
		log_ratelimited(LOG_ERR, "request store: a group of changes could not be stored; "
		    "answered 503, facts are written again");
	/* Settled in order; anything they write opens the next group. */
	staged_settle(q, ok);
	devs_settle(q, ok);
	acks_settle(q, ok);
	STAILQ_CONCAT(&done, &q->later);
	later_run(q, &done, ok);
	hints_settle(q, ok);
	note_flush_soon(q);
	TAILQ_CONCAT(&kicks, &q->kicks, kick_link);
	while ((d = TAILQ_FIRST(&kicks)) != NULL) {
		TAILQ_REMOVE(&kicks, d, kick_link);
		d->kick = false;
		dev_kick(q, d);
	}
	if (elapsed_ms(t0) > SLOW_MS)
		log_debug("group commit and its answers took %.1f ms", elapsed_ms(t0));
	return ok;
}

static void
tx_cb(evutil_socket_t fd, short what, void *arg)
{
	tx_end(arg);
}

/* ---- answers to the api worker ---- */

static void
reply_text(struct requests *q, const char *peer, uint64_t reqid, int status, const char *text)
{
	struct msg_reply rep;
	struct hmw m;

	rep.reqid = reqid;
	rep.status = (uint32_t)status;
	rep.body = (struct pstr){ text ? text : "", text ? strlen(text) : 0 };
	hmw_init(&m, HM_FAB_REPLY);
	proto_write_reply(&m, &rep);
	if (worker_send(q->w, peer, &m) == -1)
		log_ratelimited(LOG_WARNING, "answer to %s lost (api worker gone?)", peer);
	hmw_free(&m);
}

/*
 * Answer with text (owned, may be NULL).  While a group is open (or lost)
 * an answer may show what is not committed: it waits for the commit, and
 * becomes 503 if that fails.
 */
static void
reply_own(struct requests *q, const char *peer, uint64_t reqid, int status, char *text)
{
	struct later *l;

	if (q->tx_open || q->tx_failed) {
		if ((l = later_add(q, LATER_REPLY, peer, reqid)) == NULL) {
			free(text);
			reply_text(q, peer, reqid, 503, "{\"error\":{\"code\":\"unavailable\","
			    "\"message\":\"out of memory\"}}");
			return;
		}
		l->status = status;
		l->text = text;
		return;
	}
	reply_text(q, peer, reqid, status, text);
	free(text);
}

/* The body already serialized (copied). */
static void
reply_str(struct requests *q, const char *peer, uint64_t reqid, int status, const char *text)
{
	char *copy = strdup(text);

	if (copy == NULL) {
		log_ratelimited(LOG_ERR, "out of memory: an answer is lost");
		return;
	}
	reply_own(q, peer, reqid, status, copy);
}

/* At once, even while a group is open: body (stolen) shows only what is committed. */
static void
reply_now(struct requests *q, const char *peer, uint64_t reqid, int status, json_t *body)
{
	char *text = body != NULL ? json_dumps(body, JSON_COMPACT) : NULL;

	reply_text(q, peer, reqid, body != NULL && text == NULL ? 503 : status, text);
	free(text);
	json_decref(body);
}

static void
reply(struct requests *q, const char *peer, uint64_t reqid, int status, json_t *body)
{
	reply_own(q, peer, reqid, status, body != NULL ? json_dumps(body, JSON_COMPACT) : NULL);
	json_decref(body);
}

/* A record (not stolen) as the API shows it; now: at once (reply_now()). */
static void
reply_rec(struct requests *q, const char *peer, uint64_t reqid, int status, const json_t *rec,
    bool now)
{
	char *text = rec_public_text(rec);

	if (text == NULL) {
		reply_text(q, peer, reqid, 503, "{\"error\":{\"code\":\"unavailable\","
		    "\"message\":\"out of memory\"}}");
		return;
	}
	if (now) {
		reply_text(q, peer, reqid, status, text);
		free(text);
	} else
		reply_own(q, peer, reqid, status, text);
}

static void __attribute__((format(printf, 6, 7)))
reply_error(struct requests *q, const char *peer, uint64_t reqid, int status, const char *code,
    const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	reply(q, peer, reqid, status, json_pack("{s:{s:s,s:s}}", "error", "code", code,
	    "message", msg));
}

/* ---- notifications (kind "request" envelopes) ---- */

static void
note_send(struct requests *q, const struct reqstore_note *n)
{
	struct msg_envelope e;

	e.slot = PROTO_SLOT_ROUTER;
	e.epoch = 0;
	e.seq = n->seq;
	e.received_ms = n->received_ms;
	e.id = (struct pstr){ n->id, n->idlen };
	e.device = (struct pstr){ n->device, n->devlen };
	e.json = (struct pstr){ n->json, n->jsonlen };
	/* One fabric message for what a commit (or a resend pass) releases. */
	if (q->nout == 0)
		hmw_init(&q->out, HM_FAB_ENVELOPE);
	proto_write_envelope(&q->out, &e);
	if (++q->nout >= PROTO_BATCH_RECORDS || hmw_len(&q->out) >= PROTO_BATCH_BYTES)
		note_flush(q);
}

static void
note_flush(struct requests *q)
{
	if (q->nout == 0)
		return;
	/* Held in order while the http worker is away; the resend timer covers
	 * a loss beyond that (a router restart). */
	router_to_http(q->w, &q->out);
	hmw_free(&q->out);
	q->nout = 0;
}

/*
 * Notifications are background traffic: each fabric message wakes the http
 * worker (and its ACK wakes this one), so at a moderate rate they wait
 * NOTE_LINGER_MS for company instead of leaving one per commit.  A full
 * batch leaves at once (note_send).
 */
static void
note_flush_soon(struct requests *q)
{
	struct timeval tv = { 0, NOTE_LINGER_MS * 1000 };

	if (q->note_ev == NULL)
		note_flush(q);
	else if (q->nout > 0 && !evtimer_pending(q->note_ev, NULL))
		evtimer_add(q->note_ev, &tv);
}

static void
note_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	note_flush(arg);
}

static void
note_track(struct requests *q, uint64_t seq, int64_t sent_mono)
{
	if (q->nnotes == q->capnotes) {
		size_t cap = q->capnotes ? q->capnotes * 2 : 1024;
		struct note *p = realloc(q->notes, cap * sizeof(*p));
		if (p == NULL) {
			log_err("out of memory tracking notifications; they are resent at restart");
			return;
		}
		q->notes = p;
		q->capnotes = cap;
	}
	q->notes[q->nnotes++] = (struct note){ seq, sent_mono, false };
}

static struct note *
note_find(struct requests *q, uint64_t seq)
{
	size_t lo = 0, hi = q->nnotes;

	/* Appended in sequence order, so the array is sorted. */
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (q->notes[mid].seq == seq)
			return q->notes[mid].acked ? NULL : &q->notes[mid];
		if (q->notes[mid].seq < seq)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static void
note_acked(struct requests *q, struct note *n)
{
	n->acked = true;
	q->nacked++;
}

static void
note_compact(struct requests *q)
{
	size_t j = 0;

	if (q->nacked <= 64 || q->nacked * 2 <= q->nnotes)
		return;
	for (size_t i = 0; i < q->nnotes; i++)
		if (!q->notes[i].acked)
			q->notes[j++] = q->notes[i];
	q->nnotes = j;
	q->nacked = 0;
}

/* The node name as a JSON string, kept while the configuration's is the same. */
static const char *
note_gateway(struct requests *q)
{
	const char *name = q->w->cf->node_name;
	json_t *s;

	if (q->gw_json == NULL || strcmp(q->gw_name, name) != 0) {
		free(q->gw_json);
		s = json_string(name);
		q->gw_json = s ? json_dumps(s, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
		json_decref(s);
		strlcpy_h(q->gw_name, name, sizeof(q->gw_name));
	}
	return q->gw_json ? q->gw_json : "null";
}

/*
 * Writes the notification into the open transaction; it is sent once that
 * commits (LATER_NOTE).  Returns its sequence, 0 on failure.  pubtext is
 * the record as the API shows it, already serialized for the answers: the
 * envelope is written around it rather than built and dumped again (device
 * ids are of a charset that needs no escaping).
 */
static uint64_t
note_add(struct requests *q, const char *pubtext, const char *device, int64_t at_ms)
{
	char id[ULID_LEN], ts[RFC3339_LEN];
	struct reqstore_note n;
	char *text;
	uint64_t seq = q->next_nseq;

	ulid_random(id);
	fmt_rfc3339(at_ms, ts);
	if (asprintf(&text, "{\"id\":\"%s\",\"device\":\"%s\",\"kind\":\"request\","
	    "\"receivedAt\":\"%s\",\"gateway\":%s,\"payload\":%s}", id, device, ts,
	    note_gateway(q), pubtext) == -1)
		return 0;
	n.seq = seq;
	n.received_ms = at_ms;
	n.id = id;
	n.idlen = strlen(id);
	n.device = device;
	n.devlen = strlen(device);
	n.json = text;
	n.jsonlen = strlen(text);
	if (reqstore_note_put(q->st, &n) == -1 ||
	    reqstore_meta_put(q->st, "nseq", seq + 1) == -1) {
		free(text);
		return 0;
	}
	free(text);
	q->next_nseq = seq + 1;
	return seq;
}

static void
note_send_seq(struct requests *q, uint64_t seq)
{
	struct reqstore_note n;

	if (seq == 0 || reqstore_note_get(q->st, seq, &n) == -1)
		return;
	note_send(q, &n);
	note_track(q, seq, mono_ms());
}

void
requests_on_ack(struct requests *q, const struct msg_ack *m)
{
	uint64_t *a;

	if (m->slot != PROTO_SLOT_ROUTER)
		return;
	if (tx_begin(q) == -1)
		return;
	for (uint32_t i = 0; i < m->n && i < ACK_MAX; i++) {
		if (reqstore_note_del(q->st, m->seqs[i]) == -1) {
			/* Sent again later (note_resend); the spool drops the copy. */
			tx_fail(q);
			break;
		}
		/* Done in memory once the deletion is committed (acks_settle):
		 * until then it is sent again if the group is lost. */
		a = grow_array(q->acking, &q->capacking, q->nacking + 1, sizeof(*a), 256);
		if (a == NULL)
			continue;   /* resent later, then found gone */
		q->acking = a;
		q->acking[q->nacking++] = m->seqs[i];
	}
}

/* The group that deleted acknowledged notifications ended. */
static void
acks_settle(struct requests *q, bool ok)
{
	struct note *n;

	for (size_t i = 0; ok && i < q->nacking; i++)
		if ((n = note_find(q, q->acking[i])) != NULL)
			note_acked(q, n);
	q->nacking = 0;
	note_compact(q);
}

static void
note_resend(struct requests *q)
{
	int64_t now = mono_ms();
	struct reqstore_note n;
	int sent = 0;

	for (size_t i = 0; i < q->nnotes && sent < NOTE_RESEND_BATCH; i++) {
		struct note *e = &q->notes[i];
		if (e->acked || now - e->sent_mono < NOTE_RESEND_MS)
			continue;
		if (reqstore_note_get(q->st, e->seq, &n) == -1) {
			/* acknowledged by an earlier life, or lost: nothing to send */
			note_acked(q, e);
			continue;
		}
		note_send(q, &n);
		e->sent_mono = now;
		sent++;
	}
	note_flush(q);
	if (sent > 0)
		log_debug("resent %d request notifications", sent);
	note_compact(q);
}

/* ---- devices ---- */

static json_t *
dev_doc(const struct dev *d)
{
	json_t *o = json_pack("{s:b}", "online", d->online);

	if (d->last_seen_ms)
		json_object_set_new(o, "lastSeen", json_integer(d->last_seen_ms));
	if (d->status_ms)
		json_object_set_new(o, "statusAt", json_integer(d->status_ms));
	if (d->telemetry_ms)
		json_object_set_new(o, "telemetryAt", json_integer(d->telemetry_ms));
	if (d->status != NULL)
		json_object_set(o, "status", d->status);
	if (d->telemetry != NULL)
		json_object_set(o, "telemetry", d->telemetry);
	return o;
}

/* The device as GET /v1/devices/{id} shows it. */
static json_t *
dev_view(const struct dev *d)
{
	json_t *o = json_pack("{s:s,s:b}", "id", d->id, "online", d->online);

	if (d->last_seen_ms)
		rfc3339_set(o, "lastSeen", d->last_seen_ms);
	json_object_set(o, "status", d->status ? d->status : json_null());
	/* The crypto worker passes a device's telemetry on at most once a
	 * second (and none over 4 KiB): the last one seen, and when. */
	json_object_set(o, "telemetry", d->telemetry ? d->telemetry : json_null());
	if (d->telemetry_ms)
		rfc3339_set(o, "telemetryAt", d->telemetry_ms);
	json_object_set_new(o, "pending", json_integer(d->pending));
	return o;
}

/* Written by the group: kept in q->saved until it settles (devs_settle). */
static void
dev_saving(struct requests *q, struct dev *d)
{
	if (d->saving)
		return;
	if (d->dirty) {
		TAILQ_REMOVE(&q->dirty, d, dirty_link);
		q->ndirty--;
		d->dirty = false;
	}
	d->saving = true;
	TAILQ_INSERT_TAIL(&q->saved, d, dirty_link);
}

static void
dev_mark_dirty(struct requests *q, struct dev *d)
{
	if (d->saving) {
		/* Changed after the group wrote it: written again by the next. */
		TAILQ_REMOVE(&q->saved, d, dirty_link);
		d->saving = false;
	}
	if (!d->dirty) {
		d->dirty = true;
		TAILQ_INSERT_TAIL(&q->dirty, d, dirty_link);
		q->ndirty++;
	}
}

/* Write the presence record now; if that fails, dev_flush tries again. */
static void
dev_save(struct requests *q, struct dev *d)
{
	json_t *doc = dev_doc(d);

	if (tx_begin(q) == 0 && reqstore_dev_put(q->st, d->id, doc) == 0)
		dev_saving(q, d);
	else {
		tx_fail(q);
		dev_mark_dirty(q, d);
	}
	json_decref(doc);
}

/*
 * Write up to max dirty presence records (lastSeen, telemetryAt: online
 * changes are written at once by dev_set_online).  Called in slices every
 * DEV_FLUSH_MS so that a busy second's thousands of devices never stall the
 * loop in one piece.  A record whose write fails stays dirty.
 */
static void
dev_flush(struct requests *q, size_t max)
{
	struct dev *d;
	json_t *doc;
	int rc;

	for (size_t n = 0; n < max && (d = TAILQ_FIRST(&q->dirty)) != NULL; n++) {
		if (tx_begin(q) == -1)
			return;
		doc = dev_doc(d);
		rc = reqstore_dev_put(q->st, d->id, doc);
		json_decref(doc);
		if (rc == -1) {
			tx_fail(q);
			return;
		}
		dev_saving(q, d);
	}
}

static void
dev_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	struct requests *q = arg;
	size_t max = q->ndirty / (1000 / DEV_FLUSH_MS);
	uint64_t t0;

	/* About a tenth of the backlog a slice: each record waits ~1 s at most. */
	dev_flush(q, max < DEV_FLUSH_MIN ? DEV_FLUSH_MIN : max);
	hints_ack(q);
	/* The rest of a look that was cut short; else the fill, which a flood
	 * of new requests can raise by a good part of a small map in a second.
	 * Over the high mark one slice is not enough: ended requests must go
	 * as fast as new ones come, or the store fills and refuses them.  So
	 * slice after slice, each committed on its own (a group of deletions
	 * copies pages too), for up to REQUESTS_PRUNE_BUSY_MS; not after a
	 * commit that failed (the same slice would be dropped again). */
	t0 = mono_us();
	q->prune_more = requests_prune(q, q->prune_more);
	while (q->prune_more && q->prune_high && elapsed_ms(t0) < REQUESTS_PRUNE_BUSY_MS &&
	    tx_end(q))
		q->prune_more = requests_prune(q, true);
}

static void
dev_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct dev *d = arg;

	d->nosub = false;
	dev_kick(d->q, d);
}

static struct dev *
dev_new(struct requests *q, const char *id)
{
	struct dev *d = calloc(1, sizeof(*d));

	if (d == NULL)
		return NULL;
	d->q = q;
	strlcpy_h(d->id, id, sizeof(d->id));
	d->hn.key = d->id;
	d->hn.hash = hash_str(d->id);
	TAILQ_INIT(&d->live);
	d->retry = evtimer_new(q->w->base, dev_retry_cb, d);
	if (d->retry == NULL || ht_add(&q->devs, &d->hn) == -1) {
		if (d->retry)
			event_free(d->retry);
		free(d);
		return NULL;
	}
	return d;
}

static struct dev *
dev_find(struct requests *q, const char *id)
{
	return (struct dev *)ht_find_str(&q->devs, id);
}

/* The device, created (and stored) on first sight. */
static struct dev *
dev_get(struct requests *q, const char *id)
{
	struct dev *d = dev_find(q, id);

	if (d != NULL)
		return d;
	if ((d = dev_new(q, id)) == NULL)
		return NULL;
	dev_save(q, d);
	return d;
}

static void
dev_set_online(struct requests *q, struct dev *d, bool online)
{
	if (d->online == online)
		return;
	d->online = online;
	q->n_online += online ? 1 : -1;
	gauges(q);
	log_debug("device %s is %s", d->id, online ? "online" : "offline");
	/* Written at once: after a restart the router trusts this flag. */
	dev_save(q, d);
	if (online)
		dev_kick(q, d);
}

/* ---- publishing ---- */

static void pub_done(struct requests *q, struct pub *p, uint32_t result);

static void
pub_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pub *p = arg;

	log_ratelimited(LOG_WARNING, "no broker acknowledgement for publish %llu within %d ms",
	    (unsigned long long)p->ref, PUBLISH_TIMEOUT_MS);
	pub_done(p->q, p, PUBLISHED_FAILED);
}

/* Publish at QoS 1; the pub is answered by requests_on_published or its timeout. */
static struct pub *
pub_start(struct requests *q, int kind, struct dev *d, const char *topic_kind,
    const char *payload, size_t len, bool retain)
{
	struct pub *p = calloc(1, sizeof(*p));
	struct msg_publish m;
	char topic[REQSTORE_ID_MAX + 32];
	struct timeval tv = { PUBLISH_TIMEOUT_MS / 1000, (PUBLISH_TIMEOUT_MS % 1000) * 1000 };

	if (p == NULL)
		return NULL;
	p->q = q;
	p->kind = kind;
	p->dev = d;
	p->ref = ++q->next_ref;
	p->hn.hash = p->ref;
	snprintf(topic, sizeof(topic), "device/%s/%s", d->id, topic_kind);
	m.ref = p->ref;
	m.topic = (struct pstr){ topic, strlen(topic) };
	m.payload = (struct pstr){ payload, len };
	m.qos = 1;
	m.retain = retain;
	p->timer = evtimer_new(q->w->base, pub_timeout_cb, p);
	if (p->timer == NULL || (p->slot = router_publish(q->w, &m)) == -1) {
		if (p->timer)
			event_free(p->timer);
		free(p);
		return NULL;
	}
	ht_add(&q->pubs, &p->hn);
	evtimer_add(p->timer, &tv);
	return p;
}

static void
pub_done(struct requests *q, struct pub *p, uint32_t result)
{
	struct dev *d = p->dev;
	struct req *r = p->r;
	bool ok = result != PUBLISHED_FAILED;
	struct timeval tv = { PUBLISH_RETRY_MS / 1000, (PUBLISH_RETRY_MS % 1000) * 1000 };

	ht_del(&q->pubs, &p->hn);
	event_free(p->timer);
	switch (p->kind) {
	case PUB_REQUEST:
		if (d->pub == p)
			d->pub = NULL;
		if (r != NULL)
			r->pub = NULL;
		if (result == PUBLISHED_NO_SUBSCRIBER) {
			dev_nosub(q, d, p);
			break;
		}
		if (ok)
			d->nosub_wait = 0;
		/* (also behind a cancel not yet committed: see req_change) */
		if (ok && r != NULL && r->want < 0 && (r->state == RS_QUEUED ||
		    (r->staged && r->cstate == RS_QUEUED)))
			req_change(q, r, RS_SENT, NULL, true);
		if (ok)
			dev_kick(q, d);
		else if (!evtimer_pending(d->retry, NULL))
			evtimer_add(d->retry, &tv);
		break;
	case PUB_EVENT:
		/* Fire and forget, but not into the void unsaid: with no
		 * subscriber the broker dropped it. */
		if (ok)
			reply(q, p->peer, p->reqid, 202, json_pack("{s:s,s:s}", "eventId",
			    p->event_id, "state",
			    result == PUBLISHED_NO_SUBSCRIBER ? "no_subscriber" : "sent"));
		else
			reply_error(q, p->peer, p->reqid, 503, "unavailable",
			    "the broker did not acknowledge the event");
		break;
	case PUB_CONFIG_SET:
	case PUB_CONFIG_CLEAR:
		if (!ok)
			reply_error(q, p->peer, p->reqid, 503, "unavailable",
			    "the broker did not acknowledge the configuration");
		else if (p->kind == PUB_CONFIG_CLEAR)
			reply(q, p->peer, p->reqid, 204, NULL);
		else
			reply(q, p->peer, p->reqid, 200, json_pack("{s:s,s:s}", "id", d->id,
			    "state", "sent"));
		break;
	}
	free(p);
}

void
requests_on_published(struct requests *q, const struct msg_published *m)
{
	struct pub *p = (struct pub *)ht_find_u64(&q->pubs, m->ref);

	if (p == NULL) {
		/* Answered after its timeout: the request is retried anyway. */
		log_debug("late or unknown PUBLISHED %llu ignored", (unsigned long long)m->ref);
		return;
	}
	pub_done(q, p, m->result);
}

/*
 * Send the device's oldest queued request, one at a time: the next goes
 * out only after the broker acknowledged this one, so a device receives
 * its commands in accept order whichever connection publishes them.
 */
static void
dev_kick(struct requests *q, struct dev *d)
{
	struct timeval retry = { PUBLISH_RETRY_MS / 1000, (PUBLISH_RETRY_MS % 1000) * 1000 };
	struct req *r, *next;
	json_t *rec;
	char *text;

	if (q->stopping || !d->online || d->pub != NULL || d->nosub)
		return;
	if (q->tx_open || q->tx_failed) {
		/* A command goes out only once its request (and whatever changed
		 * the queue) is committed; a lost group settles first. */
		if (!d->kick) {
			d->kick = true;
			TAILQ_INSERT_TAIL(&q->kicks, d, kick_link);
		}
		return;
	}
	for (r = TAILQ_FIRST(&d->live); r != NULL; r = next) {
		next = TAILQ_NEXT(r, dlink);
		/* want: sent (or ended), only not yet stored as such */
		if (r->state != RS_QUEUED || r->want >= 0)
			continue;
		if (r->deadline_ms <= now_ms()) {
			req_change(q, r, RS_EXPIRED, NULL, true);
			continue;
		}
		break;
	}
	if (r == NULL)
		return;
	if (evtimer_pending(d->retry, NULL))
		evtimer_del(d->retry);
	rec = r->rec;
	text = payload_text("commandId", r->cid, json_object_get(rec, "type"),
	    json_object_get(rec, "params"), raw_text(rec, "params"), json_object_get(rec, "expiresAt"));
	if (text == NULL)
		return;
	d->pub = pub_start(q, PUB_REQUEST, d, "command", text, strlen(text), false);
	free(text);
	if (d->pub == NULL) {
		log_ratelimited(LOG_WARNING, "no mqtt worker to publish to %s; retrying", d->id);
		evtimer_add(d->retry, &retry);
		return;
	}
	d->pub->r = r;
	d->pub->announced = d->announced;
	r->pub = d->pub;
}

/*
 * The broker acknowledged the device's command with "no matching
 * subscribers": nobody got it, so it is not "sent".  A device that
 * announced itself while the command was on its way gets it again at once;
 * else it goes with the device's next "online" status, or after a wait
 * that doubles (a device that subscribes without saying so).
 */
static void
dev_nosub(struct requests *q, struct dev *d, const struct pub *p)
{
	struct timeval tv;

	log_debug("no subscriber for %s's command: it waits for the device", d->id);
	if (d->announced != p->announced) {
		dev_kick(q, d);
		return;
	}
	d->nosub_wait = d->nosub_wait == 0 ? NOSUB_RETRY_MIN_MS :
	    d->nosub_wait >= NOSUB_RETRY_MAX_MS / 2 ? NOSUB_RETRY_MAX_MS : 2 * d->nosub_wait;
	d->nosub = true;
	tv.tv_sec = d->nosub_wait / 1000;
	tv.tv_usec = (d->nosub_wait % 1000) * 1000;
	evtimer_add(d->retry, &tv);
}

/* An "online" status: whatever waited for the device goes now. */
static void
dev_announced(struct requests *q, struct dev *d)
{
	d->announced++;
	d->nosub_wait = 0;
	if (d->nosub) {
		d->nosub = false;
		if (evtimer_pending(d->retry, NULL))
			evtimer_del(d->retry);
		dev_kick(q, d);
	}
}

/* ---- requests ---- */

static void
waiter_free(struct waiter *wt)
{
	LIST_REMOVE(wt, link);
	event_free(wt->timer);
	free(wt);
}

static void
waiter_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct waiter *wt = arg;
	struct requests *q = wt->q;
	struct req *r = wt->r;

	/* Still going, as far as the store knows. */
	reply_rec(q, wt->peer, wt->reqid, 202, r->staged ? r->crec : r->rec, false);
	waiter_free(wt);
}

/* Hold the API call (peer, reqid) until r ends (200) or wait seconds pass (202). */
static bool
waiter_add(struct requests *q, struct req *r, const char *peer, uint64_t reqid, int64_t wait)
{
	struct waiter *wt = calloc(1, sizeof(*wt));
	struct timeval wtv = { (time_t)wait, 0 };

	if (wt == NULL || (wt->timer = evtimer_new(q->w->base, waiter_timeout_cb, wt)) == NULL) {
		free(wt);
		return false;
	}
	wt->q = q;
	wt->r = r;
	wt->reqid = reqid;
	strlcpy_h(wt->peer, peer, sizeof(wt->peer));
	LIST_INSERT_HEAD(&r->waiters, wt, link);
	evtimer_add(wt->timer, &wtv);
	return true;
}

static void
req_timer_arm(struct req *r)
{
	int64_t delay = r->deadline_ms - now_ms();
	struct timeval tv;

	if (delay < 0)
		delay = 0;
	tv.tv_sec = delay / 1000;
	tv.tv_usec = (delay % 1000) * 1000;
	evtimer_add(r->timer, &tv);
}

static void
req_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct req *r = arg;

	/* libevent counts from the loop's cached time, so a timer may fire
	 * a few ms before the wall-clock deadline: never end a request early. */
	if (now_ms() < r->deadline_ms) {
		req_timer_arm(r);
		return;
	}
	if (state_ended(r->state) || (r->want >= 0 && state_ended(r->want)))
		return;   /* ended by what is being (or waits to be) written */
	req_change(r->q, r, r->state == RS_SENT || r->want == RS_SENT ? RS_TIMEOUT : RS_EXPIRED,
	    NULL, true);
}

static struct req *
req_new(struct requests *q, struct dev *d, const char *cid, uint64_t seq, int state,
    int64_t deadline_ms, json_t *rec)
{
	struct req *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->q = q;
	r->dev = d;
	strlcpy_h(r->cid, cid, sizeof(r->cid));
	r->hn.key = r->cid;
	r->hn.hash = hash_str(r->cid);
	r->seq = seq;
	r->state = state;
	r->fact = r->want = -1;
	r->deadline_ms = deadline_ms;
	r->rec = json_incref(rec);
	LIST_INIT(&r->waiters);
	r->timer = evtimer_new(q->w->base, req_timer_cb, r);
	if (r->timer == NULL || ht_add(&q->reqs, &r->hn) == -1) {
		if (r->timer)
			event_free(r->timer);
		json_decref(r->rec);
		free(r);
		return NULL;
	}
	/* Accept order: seqs grow, but a restart loads them in order too. */
	TAILQ_INSERT_TAIL(&d->live, r, dlink);
	d->pending++;
	req_count(q, state, 1);
	req_timer_arm(r);
	return r;
}

static void
req_count(struct requests *q, int state, int delta)
{
	if (state == RS_QUEUED)
		q->n_queued += delta;
	else if (state == RS_SENT)
		q->n_sent += delta;
}

static void
req_free(struct requests *q, struct req *r)
{
	struct waiter *wt;

	while ((wt = LIST_FIRST(&r->waiters)) != NULL)
		waiter_free(wt);
	if (r->pub != NULL)
		r->pub->r = NULL;
	if (r->staged)
		TAILQ_REMOVE(&q->staged, r, slink);
	if (r->want >= 0)
		TAILQ_REMOVE(&q->retry, r, rlink);
	TAILQ_REMOVE(&r->dev->live, r, dlink);
	r->dev->pending--;
	req_count(q, r->state, -1);
	ht_del(&q->reqs, &r->hn);
	event_free(r->timer);
	json_decref(r->rec);
	json_decref(r->crec);
	json_decref(r->fact_rec);
	json_decref(r->want_rec);
	free(r->text);
	free(r);
}

/* Its end is committed: the waiters get the record, and it goes. */
static void
req_finish(struct requests *q, struct req *r)
{
	struct waiter *wt;

	while ((wt = LIST_FIRST(&r->waiters)) != NULL) {
		if (r->text != NULL)
			reply_str(q, wt->peer, wt->reqid, 200, r->text);
		else
			reply_rec(q, wt->peer, wt->reqid, 200, r->rec, false);
		waiter_free(wt);
	}
	worker_count(q->w, STAT_req_completed, 1);
	req_free(q, r);
	gauges(q);
}

/*
 * Write the request's record rec (stolen) in state: record, live index and
 * notification go in the group's commit, the notification is sent once
 * that succeeded.  Memory shows the change at once (answers wait for the
 * commit); staged_settle finishes it or takes it back.  A fact is written
 * again if the group is lost.
 */
static void
req_write(struct requests *q, struct req *r, int state, json_t *rec, bool fact)
{
	int64_t now = now_ms();
	char *pubtext;
	const char *stored;
	size_t slen;
	uint64_t nseq;
	struct later *l;

	rec_texts(rec, &pubtext, &stored, &slen);
	if (tx_begin(q) == 0) {
		if (pubtext != NULL && rec_put(q, 0, r->cid, NULL, stored, slen) == 0 &&
		    (!state_ended(state) || reqstore_ended(q->st, r->seq) == 0) &&
		    (nseq = note_add(q, pubtext, r->dev->id, now)) != 0) {
			/* Sent once committed; if that fails, never. */
			if ((l = later_add(q, LATER_NOTE, NULL, 0)) != NULL)
				l->nseq = nseq;
		} else
			tx_fail(q);
	}
	if (q->tx_failed)
		log_ratelimited(LOG_ERR, "request %s: state %s could not be stored",
		    r->cid, rstate_names[state]);
	log_debug("request %s -> %s", r->cid, rstate_names[state]);
	if (!r->staged) {
		r->staged = true;
		r->cstate = r->state;
		r->crec = r->rec;
		TAILQ_INSERT_TAIL(&q->staged, r, slink);
	} else
		json_decref(r->rec);
	r->rec = rec;
	req_count(q, r->state, -1);
	req_count(q, state, 1);
	r->state = state;
	if (fact) {
		json_decref(r->fact_rec);
		r->fact = state;
		r->fact_rec = json_incref(rec);
	}
	if (state_ended(state))
		evtimer_del(r->timer);
	free(r->text);
	r->text = pubtext;
	gauges(q);
}

/*
 * One state change, over the fact that waits to be written again if there
 * is one (so that fact is written by it).  fields (stolen, may be NULL) are
 * merged into the record.  An ended request changes no more, nor one whose
 * end waits to be written again.
 */
static void
req_change(struct requests *q, struct req *r, int state, json_t *fields, bool fact)
{
	int64_t now = now_ms();
	json_t *rec, *base = r->want >= 0 ? r->want_rec : r->rec;
	bool behind = false;

	/*
	 * A fact behind an end the open group has not committed (a cancel in
	 * the same pass) changes nothing now; but if that end is lost with its
	 * group, the fact is what happened: it is kept, over the committed
	 * record, to be written then (staged_settle).
	 */
	if (fact && r->staged && state_ended(r->state) && !state_ended(r->cstate) &&
	    (r->fact < 0 || !state_ended(r->fact)) && (r->want < 0 || !state_ended(r->want))) {
		behind = true;
		base = r->fact >= 0 ? r->fact_rec : r->want >= 0 ? r->want_rec : r->crec;
	} else if (state_ended(r->state) || (r->want >= 0 && state_ended(r->want)))
		base = NULL;
	if (base == NULL || (rec = json_copy(base)) == NULL) {
		json_decref(fields);
		return;
	}
	json_object_set_new(rec, "state", json_string(rstate_names[state]));
	if (state == RS_SENT || ((state == RS_CONFIRMED || state == RS_FAILED) &&
	    json_object_get(rec, "sentAt") == NULL))
		rfc3339_set(rec, "sentAt", now);
	if (state_ended(state)) {
		rfc3339_set(rec, "completedAt", now);
		json_object_set_new(rec, "_ended", json_integer(now));
	}
	if (fields != NULL) {
		const char *k;
		json_t *v;

		/* A value without its text drops an older one's (raw_private()). */
		json_object_foreach(fields, k, v)
			if (raw_private(k) != NULL && json_object_get(fields, raw_private(k)) == NULL)
				json_object_del(rec, raw_private(k));
		json_object_update(rec, fields);
		json_decref(fields);
	}
	if (behind) {
		json_decref(r->fact_rec);
		r->fact = state;
		r->fact_rec = rec;
		return;
	}
	req_write(q, r, state, rec, fact);
}

/* Every tick: the facts whose writes were lost are written again. */
static void
req_retry_all(struct requests *q)
{
	TAILQ_HEAD(, req) list = TAILQ_HEAD_INITIALIZER(list);
	struct req *r;

	TAILQ_CONCAT(&list, &q->retry, rlink);
	while ((r = TAILQ_FIRST(&list)) != NULL) {
		TAILQ_REMOVE(&list, r, rlink);
		/* Stays in want until the write is committed (staged_settle). */
		TAILQ_INSERT_TAIL(&q->retry, r, rlink);
		if (!state_ended(r->state) && !r->staged)
			req_write(q, r, r->want, json_incref(r->want_rec), true);
	}
}

static struct req *
req_find(struct requests *q, const char *cid)
{
	return (struct req *)ht_find_str(&q->reqs, cid);
}

/* ---- responses from devices ---- */

static void
reject_response(struct requests *q, const struct msg_device_info *m, const char *detail)
{
	char id[ULID_LEN], topic[REQSTORE_ID_MAX + 32];
	struct msg_reject rj;
	struct hmw out;

	ulid_random(id);
	snprintf(topic, sizeof(topic), "device/%.*s/response", (int)m->device.len, m->device.p);
	memset(&rj, 0, sizeof(rj));
	rj.slot = PROTO_SLOT_NONE;
	rj.received_ms = m->received_ms;
	rj.id = (struct pstr){ id, strlen(id) };
	rj.device = m->device;
	rj.topic = (struct pstr){ topic, strlen(topic) };
	rj.reason = (struct pstr){ "unknown_command", 15 };
	rj.detail = (struct pstr){ detail, strlen(detail) };
	rj.payload = m->json;
	hmw_init(&out, HM_FAB_REJECT);
	proto_write_reject(&out, &rj);
	router_to_http(q->w, &out);
	hmw_free(&out);
	log_ratelimited(LOG_INFO, "response from %.*s rejected: %s", (int)m->device.len,
	    m->device.p, detail);
}

/* Is the member key k (with its quotes, as written) name? */
static bool
key_is(struct jc_span k, const char *name)
{
	size_t n = strlen(name);
	json_t *s;
	bool is;

	if (k.len == n + 2 && memcmp(k.p + 1, name, n) == 0)
		return true;
	if (memchr(k.p, '\\', k.len) == NULL)
		return false;
	s = json_loadb(k.p, k.len, JSON_DECODE_ANY, NULL);
	is = json_is_string(s) && json_string_length(s) == n &&
	    memcmp(json_string_value(s), name, n) == 0;
	json_decref(s);
	return is;
}

/* The commandId of span v into cid, if it is a string that is a valid id. */
static bool
span_id(struct jc_span v, char cid[REQSTORE_ID_MAX + 1])
{
	json_t *s;
	size_t n;

	if (v.len < 2 || v.p[0] != '"')
		return false;
	if (memchr(v.p, '\\', v.len) == NULL) {
		if ((n = v.len - 2) > REQSTORE_ID_MAX)
			return false;
		memcpy(cid, v.p + 1, n);
	} else {
		s = json_loadb(v.p, v.len, JSON_DECODE_ANY, NULL);
		n = json_string_length(s);
		if (!json_is_string(s) || n > REQSTORE_ID_MAX) {
			json_decref(s);
			return false;
		}
		memcpy(cid, json_string_value(s), n);
		json_decref(s);
	}
	cid[n] = '\0';
	return device_id_valid(cid, n);
}

/* fields' member key from the device's value v: its text without the
 * whitespace between tokens (raw_set()).  -1 if out of memory. */
static int
span_set(json_t *fields, const char *key, struct jc_span v)
{
	char *t = malloc(v.len + 1);
	int rc;

	if (t == NULL)
		return -1;
	rc = raw_set(fields, key, t, jc_minify(v.p, v.len, t), NULL);
	free(t);
	return rc;
}

/*
 * HINT_AGAIN when the request's end is known but not stored yet (a lost
 * group's fact, waiting to be written again); HINT_DONE when the answer
 * changes nothing stored (rejected, or to an ended request).  The crypto
 * worker checked the payload (jsoncheck): its members are walked, not
 * parsed, so that a number jansson cannot hold in "result" or "error"
 * does not make the response unreadable, and they keep their text.
 */
static enum hint_use
on_response(struct requests *q, struct dev *d, const struct msg_device_info *m)
{
	struct jc_span k, v, cidv = { NULL, 0 }, succ = { NULL, 0 }, res = { NULL, 0 },
	    err = { NULL, 0 };
	char cid[REQSTORE_ID_MAX + 1];
	json_t *fields, *old;
	size_t pos = 0;
	struct req *r;
	bool ok, boolean;

	while (jc_member(m->json.p, m->json.len, &pos, &k, &v)) {
		if (key_is(k, "commandId"))
			cidv = v;
		else if (key_is(k, "success"))
			succ = v;
		else if (key_is(k, "result"))
			res = v;
		else if (key_is(k, "error"))
			err = v;
	}
	if (!span_id(cidv, cid)) {
		reject_response(q, m, "the response has no valid commandId");
		return HINT_DONE;
	}
	if ((r = req_find(q, cid)) == NULL) {
		old = rec_get(q, cid);
		if (old != NULL && strcmp(json_string_value(json_object_get(old, "device")) ?: "",
		    d->id) == 0) {
			/* A late or repeated answer: the request already ended. */
			log_debug("response to ended request %s ignored", cid);
			json_decref(old);
			return HINT_DONE;
		}
		json_decref(old);
		reject_response(q, m, "no request has this commandId");
		return HINT_DONE;
	}
	if (r->dev != d) {
		reject_response(q, m, "the commandId belongs to another device");
		return HINT_DONE;
	}
	if (r->want >= 0 && state_ended(r->want))
		return HINT_AGAIN;
	ok = succ.len == 4 && memcmp(succ.p, "true", 4) == 0;
	boolean = ok || (succ.len == 5 && memcmp(succ.p, "false", 5) == 0);
	if ((fields = json_pack("{s:b}", "success", ok)) == NULL)
		return HINT_AGAIN;
	if (ok && res.p != NULL && span_set(fields, "result", res) == -1)
		goto oom;
	if (!ok) {
		if (err.p != NULL) {
			if (span_set(fields, "error", err) == -1)
				goto oom;
		} else if (!boolean)
			json_object_set_new(fields, "error", json_pack("{s:s,s:s}", "code",
			    "bad_response", "message", "the response has no boolean \"success\""));
	}
	/*
	 * The device answered before the broker's acknowledgement of the
	 * command reached us (it came through another connection, or first,
	 * or that acknowledgement died with a router): the command was sent
	 * all the same.  Say so first, so that the backend gets "sent" and
	 * then the end, as for every answered request; the acknowledgement
	 * finds the request ended and changes nothing.
	 */
	if (r->want < 0 && r->state == RS_QUEUED)
		req_change(q, r, RS_SENT, NULL, true);
	req_change(q, r, ok ? RS_CONFIRMED : RS_FAILED, fields, true);
	return HINT_GROUP;
oom:
	json_decref(fields);
	return HINT_AGAIN;
}

/*
 * Write the device's record in the open group, so that the hint behind
 * the change is acknowledged only with it (the slices of dev_flush may
 * write it a second later).
 */
static void
dev_save_now(struct requests *q, struct dev *d)
{
	if (!d->saving)
		dev_save(q, d);
}

static enum hint_use
device_info(struct requests *q, const struct msg_device_info *m)
{
	char id[REQSTORE_ID_MAX + 1];
	struct dev *d;
	json_t *doc;
	const char *state;
	bool stale, online;
	enum hint_use use = HINT_DONE;

	if (!device_id_valid(m->device.p, m->device.len)) {
		worker_count(q->w, STAT_ipc_bad, 1);
		return HINT_DONE;
	}
	memcpy(id, m->device.p, m->device.len);
	id[m->device.len] = '\0';
	if ((d = dev_get(q, id)) == NULL)
		return HINT_AGAIN;
	/* A copy sent again (its first went with a router that died, or with
	 * a group that was lost) may come after later messages: what it says
	 * of presence then no longer holds. */
	stale = m->resent && (m->received_ms < d->status_ms || m->received_ms < d->last_seen_ms);
	if (m->received_ms > d->last_seen_ms) {
		d->last_seen_ms = m->received_ms;
		dev_mark_dirty(q, d);
	}
	if (pstr_eq(m->kind, "status")) {
		if (stale)
			return HINT_DONE;
		doc = json_loadb(m->json.p, m->json.len, 0, NULL);
		if (json_is_object(doc)) {
			json_decref(d->status);
			d->status = json_incref(doc);
			d->status_ms = m->received_ms;
			dev_mark_dirty(q, d);
		}
		state = json_string_value(json_object_get(doc, "state"));
		/* "offline" is also the device's Last Will, sent by the broker. */
		online = state == NULL || strcmp(state, "offline") != 0;
		dev_set_online(q, d, online);
		if (online)
			dev_announced(q, d);
		json_decref(doc);
		dev_save_now(q, d);
		return HINT_GROUP;
	}
	if (!stale) {
		dev_set_online(q, d, true);
		if (m->resent) {
			dev_save_now(q, d);
			use = HINT_GROUP;
		}
	}
	if (pstr_eq(m->kind, "telemetry")) {
		if (m->received_ms >= d->telemetry_ms && m->json.len > 0 &&
		    (doc = json_loadb(m->json.p, m->json.len, 0, NULL)) != NULL) {
			if (json_is_object(doc)) {
				json_decref(d->telemetry);
				d->telemetry = json_incref(doc);
			}
			json_decref(doc);
		}
		d->telemetry_ms = m->received_ms;
		dev_mark_dirty(q, d);
	} else if (pstr_eq(m->kind, "response")) {
		enum hint_use r = on_response(q, d, m);

		if (r != HINT_DONE)
			use = r;
	}
	/* A presence change written by the group (dev_set_online) goes with it. */
	if (use == HINT_DONE && d->saving)
		use = HINT_GROUP;
	return use;
}

/*
 * A hint with an hseq is acknowledged to the crypto worker when what it
 * changed is committed; one that changed nothing stored at once; one not
 * taken is not, and comes again.
 */
void
requests_on_device(struct requests *q, const char *peer, const struct msg_device_info *m)
{
	enum hint_use use = device_info(q, m);

	if (m->hseq != 0 && use != HINT_AGAIN)
		hint_taken(q, peer, m, use);
}

/* ---- API operations ---- */

struct call {
	struct requests *q;
	const char      *peer;
	uint64_t         reqid;
	json_t          *args;
};

static const char *
arg_str(const struct call *c, const char *key)
{
	return json_string_value(json_object_get(c->args, key));
}

static bool
arg_id(const struct call *c, const char *key, const char **out)
{
	const char *s = arg_str(c, key);

	if (s == NULL || !device_id_valid(s, strlen(s))) {
		reply_error(c->q, c->peer, c->reqid, 400, "invalid_field",
		    "\"%s\" must be an id of [A-Za-z0-9._:-], at most 128 characters", key);
		return false;
	}
	*out = s;
	return true;
}

/*
 * Do a repeat's params (their text, or NULL: absent, {}) match the record
 * rec's?  The same text, or the same once parsed (so key order and
 * spacing do not matter where jansson reads both; a number it cannot
 * hold compares only as text).  The record's text is its "_params", else
 * its params as jansson writes them (jansson could read it all).
 */
static bool
params_same(const json_t *rec, const json_t *params)
{
	const json_t *raw = raw_text(rec, "params"), *old = json_object_get(rec, "params");
	const char *a = raw != NULL ? json_string_value(raw) : old == NULL ? "{}" : NULL;
	const char *b = params == NULL ? "{}" : json_string_value(params);
	json_t *ta, *tb;
	bool same;

	if (a != NULL && strcmp(a, b) == 0)
		return true;
	ta = a != NULL ? json_loads(a, 0, NULL) : json_incref((json_t *)old);
	tb = json_loads(b, 0, NULL);
	same = ta != NULL && tb != NULL && json_equal(ta, tb);
	json_decref(ta);
	json_decref(tb);
	return same;
}

static void
op_request_create(struct call *c)
{
	struct requests *q = c->q;
	const struct config *cf = q->w->cf;
	const char *device, *type, *cidarg = NULL;
	json_t *params = json_object_get(c->args, "params"), *tv = json_object_get(c->args, "timeout");
	json_t *wv = json_object_get(c->args, "wait"), *old, *rec;
	char cid[ULID_LEN > REQSTORE_ID_MAX + 1 ? ULID_LEN : REQSTORE_ID_MAX + 1];
	int64_t timeout = cf->default_timeout, wait = 0, now;
	uint64_t seq;
	struct dev *d;
	struct req *r;
	struct later *created = NULL;
	uint64_t used, size;
	bool full;
	char ts[RFC3339_LEN], exp[RFC3339_LEN], *text;
	const char *stored;
	size_t slen;

	if (!arg_id(c, "device", &device))
		return;
	type = arg_str(c, "type");
	if (type == NULL || *type == '\0') {
		reply_error(q, c->peer, c->reqid, 400, "invalid_field", "\"type\" must be a non-empty string");
		return;
	}
	/* The api worker sends params as its text (raw_set()). */
	if (params != NULL && (!json_is_string(params) || json_string_value(params)[0] != '{')) {
		reply_error(q, c->peer, c->reqid, 400, "invalid_field", "\"params\" must be an object");
		return;
	}
	if (tv != NULL) {
		if (!json_is_integer(tv) || json_integer_value(tv) < 1 ||
		    json_integer_value(tv) > cf->max_timeout) {
			reply_error(q, c->peer, c->reqid, 400, "invalid_field",
			    "\"timeout\" must be an integer of 1..%d seconds", cf->max_timeout);
			return;
		}
		timeout = json_integer_value(tv);
	}
	if (wv != NULL) {
		if (!json_is_integer(wv) || json_integer_value(wv) < 0 ||
		    json_integer_value(wv) > WAIT_MAX) {
			reply_error(q, c->peer, c->reqid, 400, "invalid_field", "wait must be 0..%d", WAIT_MAX);
			return;
		}
		wait = json_integer_value(wv);
	}
	if (json_object_get(c->args, "commandId") != NULL && !arg_id(c, "commandId", &cidarg))
		return;

	if (cidarg != NULL) {
		strlcpy_h(cid, cidarg, sizeof(cid));
		if ((old = rec_get(q, cid)) != NULL) {
			const char *odev = json_string_value(json_object_get(old, "device"));
			const char *otype = json_string_value(json_object_get(old, "type"));
			bool same = odev && otype && strcmp(odev, device) == 0 && strcmp(otype, type) == 0 &&
			    params_same(old, params) &&
			    (tv == NULL || rec_int(old, "_timeout") == timeout);
			/*
			 * A repeat with ?wait (a client retrying the call it lost)
			 * waits as the first call did: 200 once the request ended,
			 * 202 if it is still going when the wait is over.
			 */
			if (same && wait > 0 && (r = req_find(q, cid)) != NULL &&
			    waiter_add(q, r, c->peer, c->reqid, wait))
				;
			else if (same)
				reply_rec(q, c->peer, c->reqid, 200, old, false);
			else
				reply_error(q, c->peer, c->reqid, 409, "command_id_conflict",
				    "a request with commandId %s exists with other fields", cid);
			json_decref(old);
			return;
		}
	} else
		ulid_random(cid);

	if (q->spool_full) {
		/* Its state changes could not reach the backend for now. */
		reply_error(q, c->peer, c->reqid, 503, "spool_full",
		    "the delivery spool is full; try again later");
		return;
	}
	if ((d = dev_get(q, device)) == NULL) {
		reply_error(q, c->peer, c->reqid, 503, "unavailable", "out of memory");
		return;
	}
	if (d->pending >= cf->max_pending_per_device) {
		reply_error(q, c->peer, c->reqid, 429, "too_many_pending",
		    "device %s has %d requests pending (max_pending_per_device)", device, d->pending);
		return;
	}
	/*
	 * The last part of the map is kept for changes: an LMDB write copies
	 * pages even to delete, so a map filled by new requests could not
	 * take a cancel, a device's answer or the pruning that frees it.
	 */
	if (reqstore_usage(q->st, &used, &size) == 0 && used > size / 100 * REQUESTS_CREATE_PCT) {
		log_ratelimited(LOG_WARNING, "request store %llu of %llu KiB used: new requests refused",
		    (unsigned long long)(used >> 10), (unsigned long long)(size >> 10));
		reply_now(q, c->peer, c->reqid, 503, json_pack("{s:{s:s,s:s}}", "error", "code",
		    "store_full", "message", "the request store is full"));
		return;
	}
	now = now_ms();
	fmt_rfc3339(now, ts);
	fmt_rfc3339(now + timeout * 1000, exp);
	seq = q->next_seq;
	rec = json_pack("{s:s,s:s,s:s,s:o,s:s,s:s,s:s,s:I,s:I,s:I,s:I,s:b}",
	    "commandId", cid, "device", device, "type", type,
	    "params", json_object(), "state", "queued",
	    "createdAt", ts, "expiresAt", exp,
	    "_seq", (json_int_t)seq, "_created", (json_int_t)now,
	    "_deadline", (json_int_t)(now + timeout * 1000), "_timeout", (json_int_t)timeout,
	    "_tgiven", tv != NULL);
	text = NULL;
	stored = NULL;
	if (rec != NULL && (params == NULL || raw_set(rec, "params", json_string_value(params),
	    json_string_length(params), json_object) == 0))
		rec_texts(rec, &text, &stored, &slen);
	/* A full map refuses the rest of its pass too (tx_failed): those
	 * creates are told store_full as well. */
	full = text != NULL && tx_begin(q) == -1 && reqstore_full(q->st);
	if (text != NULL && q->tx_open &&
	    (rec_put(q, seq, cid, device, stored, slen) == -1 ||
	    reqstore_meta_put(q->st, "seq", seq + 1) == -1 ||
	    (created = later_add(q, LATER_CREATED, c->peer, c->reqid)) == NULL)) {
		full = reqstore_full(q->st);
		tx_fail(q);
	}
	if (text == NULL || created == NULL) {
		json_decref(rec);
		free(text);
		/* At once: held for the lost group, it would become a plain
		 * "unavailable", and it shows nothing uncommitted. */
		reply_now(q, c->peer, c->reqid, 503, json_pack("{s:{s:s,s:s}}", "error", "code",
		    full ? "store_full" : "unavailable", "message",
		    full ? "the request store is full" : "the request could not be stored"));
		return;
	}
	/* Answered (202, or by a waiter) only after the group's commit. */
	strlcpy_h(created->cid, cid, sizeof(created->cid));
	q->next_seq = seq + 1;
	worker_count(q->w, STAT_req_accepted, 1);
	r = req_new(q, d, cid, seq, RS_QUEUED, now + timeout * 1000, rec);
	if (r == NULL) {
		/* Stored but not tracked: it is picked up at the next start. */
		log_err("out of memory tracking request %s", cid);
		created->text = text;
		json_decref(rec);
		return;
	}
	gauges(q);
	if (wait > 0 && waiter_add(q, r, c->peer, c->reqid, wait)) {
		free(text);
		json_decref(rec);
		dev_kick(q, d);
		return;
	}
	created->text = text;
	json_decref(rec);
	dev_kick(q, d);
}

static void
op_request_get(struct call *c)
{
	const char *cid;
	json_t *rec;

	if (!arg_id(c, "commandId", &cid))
		return;
	/* What is committed, answered at once: any answer that told a client
	 * of a change waited for its commit, so none is contradicted. */
	if ((rec = rec_norm(reqstore_get_committed(c->q->st, cid))) == NULL) {
		reply_now(c->q, c->peer, c->reqid, 404, json_pack("{s:{s:s,s:s+}}", "error",
		    "code", "not_found", "message", "no request ", cid));
		return;
	}
	reply_rec(c->q, c->peer, c->reqid, 200, rec, true);
	json_decref(rec);
}

static void
op_request_cancel(struct call *c)
{
	struct requests *q = c->q;
	const char *cid;
	json_t *rec;
	struct req *r;

	if (!arg_id(c, "commandId", &cid))
		return;
	if ((r = req_find(q, cid)) != NULL) {
		/* An end that waits to be written again comes first. */
		if (r->want >= 0 && state_ended(r->want) && !r->staged)
			req_write(q, r, r->want, json_incref(r->want_rec), true);
		/* Every answer here waits for the commit (or becomes 503). */
		if (state_ended(r->state)) {
			reply_error(q, c->peer, c->reqid, 409, "already_ended",
			    "request %s already ended (%s)", cid, rstate_names[r->state]);
			return;
		}
		req_change(q, r, RS_CANCELLED, NULL, false);
		if (r->state == RS_CANCELLED)
			reply_rec(q, c->peer, c->reqid, 200, r->rec, false);
		else
			reply_error(q, c->peer, c->reqid, 503, "unavailable", "out of memory");
		return;
	}
	if ((rec = rec_get(q, cid)) == NULL) {
		reply_error(q, c->peer, c->reqid, 404, "not_found", "no request %s", cid);
		return;
	}
	reply_error(q, c->peer, c->reqid, 409, "already_ended", "request %s already ended (%s)",
	    cid, json_string_value(json_object_get(rec, "state")) ?: "?");
	json_decref(rec);
}

struct collect {
	struct requests *q;
	json_t          *list;    /* records, with their store fields */
	int              state;   /* -1: any */
	int              scanned, max;
	bool             more;    /* there may be more after the last one */
	uint64_t         last;    /* the sequence of the last one looked at */
};

static int
collect_cb(uint64_t seq, const char *cid, void *arg)
{
	struct collect *k = arg;
	json_t *rec;
	const char *st;

	/* Bound the work for a device with a long history (each look reads
	 * and parses a record): the next page goes on from where this one
	 * stopped. */
	if (k->scanned++ >= LIST_SCAN_MAX) {
		k->more = true;
		return 1;
	}
	if ((rec = rec_get(k->q, cid)) != NULL) {
		st = json_string_value(json_object_get(rec, "state"));
		if (k->state < 0 || (st != NULL && state_parse(st) == k->state)) {
			if ((int)json_array_size(k->list) >= k->max) {
				/* one more than the page holds: there is a next */
				json_decref(rec);
				k->more = true;
				return 1;
			}
			json_array_append(k->list, rec);
		}
		json_decref(rec);
	}
	k->last = seq;
	return 0;
}

/*
 * A device's requests a page at a time, newest pages first: up to "limit"
 * (1..LIST_MAX, default LIST_MAX) of those accepted before the sequence
 * "cursor" (0 or none: the newest), shown in accept order, and "next"
 * (the cursor of the page of older ones) or null.  Without a cursor it
 * is the newest "limit", in accept order, as before paging came.  A page
 * with a state filter looks at LIST_SCAN_MAX records at most: it may
 * hold fewer than limit, none even, and still have a next.
 */
static void
op_device_requests(struct call *c)
{
	struct collect k = { c->q, json_array(), -1, 0, LIST_MAX, false, 0 };
	const char *device, *st = arg_str(c, "state");
	json_t *lim = json_object_get(c->args, "limit"), *cur = json_object_get(c->args, "cursor");
	uint64_t before = json_is_integer(cur) && json_integer_value(cur) > 0 ?
	    (uint64_t)json_integer_value(cur) : 0;
	struct tbuf b = { NULL, 0, 0, false };
	struct dev *d;
	struct req *r;
	char *one, next[24];
	size_t i, n;

	if (!arg_id(c, "device", &device)) {
		json_decref(k.list);
		return;
	}
	if (st != NULL && (k.state = state_parse(st)) < 0) {
		json_decref(k.list);
		reply_error(c->q, c->peer, c->reqid, 400, "invalid_field", "unknown state \"%s\"", st);
		return;
	}
	if (json_is_integer(lim) && json_integer_value(lim) >= 1 && json_integer_value(lim) <= LIST_MAX)
		k.max = (int)json_integer_value(lim);
	if (k.state == RS_QUEUED || k.state == RS_SENT) {
		/* Live requests are in memory, in accept order: newest first here. */
		if ((d = dev_find(c->q, device)) != NULL)
			TAILQ_FOREACH_REVERSE(r, &d->live, reqlist, dlink) {
				if (r->state != k.state || (before > 0 && r->seq >= before))
					continue;
				if ((int)json_array_size(k.list) >= k.max) {
					k.more = true;
					break;
				}
				json_array_append(k.list, r->rec);
				k.last = r->seq;
			}
	} else
		reqstore_walk_device_before(c->q->st, device, before, collect_cb, &k);
	/* Collected newest first, shown in accept order; the text by hand (a
	 * verbatim member is its own text, see raw_private()). */
	tb_lit(&b, "{\"requests\":[");
	for (n = json_array_size(k.list), i = n; i > 0; i--) {
		if ((one = rec_public_text(json_array_get(k.list, i - 1))) == NULL)
			b.oom = true;
		else {
			if (i < n)
				tb_lit(&b, ",");
			tb_put(&b, one, strlen(one));
		}
		free(one);
	}
	tb_lit(&b, "],\"next\":");
	if (k.more) {
		snprintf(next, sizeof(next), "\"%llu\"}", (unsigned long long)k.last);
		tb_put(&b, next, strlen(next));
	} else
		tb_lit(&b, "null}");
	json_decref(k.list);
	if (b.oom) {
		free(b.p);
		reply_error(c->q, c->peer, c->reqid, 503, "unavailable", "out of memory");
		return;
	}
	reply_own(c->q, c->peer, c->reqid, 200, b.p);
}

static void
op_event(struct call *c)
{
	struct requests *q = c->q;
	const char *device, *type;
	json_t *params = json_object_get(c->args, "params");
	struct dev *d;
	struct pub *p;
	char id[ULID_LEN], *text;

	if (!arg_id(c, "device", &device))
		return;
	type = arg_str(c, "type");
	if (type == NULL || *type == '\0' ||
	    (params != NULL && (!json_is_string(params) || json_string_value(params)[0] != '{'))) {
		reply_error(q, c->peer, c->reqid, 400, "invalid_field",
		    "an event needs a non-empty string \"type\" and an object \"params\"");
		return;
	}
	if ((d = dev_get(q, device)) == NULL) {
		reply_error(q, c->peer, c->reqid, 503, "unavailable", "out of memory");
		return;
	}
	ulid_random(id);
	text = payload_text("eventId", id, json_object_get(c->args, "type"), NULL, params, NULL);
	p = text ? pub_start(q, PUB_EVENT, d, "command", text, strlen(text), false) : NULL;
	free(text);
	if (p == NULL) {
		reply_error(q, c->peer, c->reqid, 503, "unavailable", "no broker connection to publish on");
		return;
	}
	p->reqid = c->reqid;
	strlcpy_h(p->peer, c->peer, sizeof(p->peer));
	memcpy(p->event_id, id, sizeof(id));
}

static void
op_config(struct call *c, bool set)
{
	struct requests *q = c->q;
	const char *device;
	json_t *cfg = json_object_get(c->args, "config");
	struct dev *d;
	struct pub *p;
	char *text = NULL;

	if (!arg_id(c, "device", &device))
		return;
	/* The api worker sends the object's text, as the backend wrote it. */
	if (set && (!json_is_string(cfg) || json_string_value(cfg)[0] != '{')) {
		reply_error(q, c->peer, c->reqid, 400, "invalid_json", "the configuration must be a JSON object");
		return;
	}
	if ((d = dev_get(q, device)) == NULL) {
		reply_error(q, c->peer, c->reqid, 503, "unavailable", "out of memory");
		return;
	}
	if (set && (text = strdup(json_string_value(cfg))) == NULL) {
		reply_error(q, c->peer, c->reqid, 503, "unavailable", "out of memory");
		return;
	}
	/* An empty retained message clears what the broker keeps. */
	p = pub_start(q, set ? PUB_CONFIG_SET : PUB_CONFIG_CLEAR, d, "config",
	    set ? text : "", set ? strlen(text) : 0, true);
	free(text);
	if (p == NULL) {
		reply_error(q, c->peer, c->reqid, 503, "unavailable", "no broker connection to publish on");
		return;
	}
	p->reqid = c->reqid;
	strlcpy_h(p->peer, c->peer, sizeof(p->peer));
}

static void
op_device_get(struct call *c)
{
	const char *device;
	struct dev *d;

	if (!arg_id(c, "device", &device))
		return;
	if ((d = dev_find(c->q, device)) == NULL) {
		reply_error(c->q, c->peer, c->reqid, 404, "not_found", "no device %s", device);
		return;
	}
	reply(c->q, c->peer, c->reqid, 200, dev_view(d));
}

struct devlist {
	struct requests *q;
	json_t          *list;
	int              online;  /* -1 any, 0, 1 */
	int              limit;
	bool             more;
	char             last[REQSTORE_ID_MAX + 1];
};

static int
devlist_cb(const char *id, json_t *doc, void *arg)
{
	struct devlist *l = arg;
	struct dev *d = dev_find(l->q, id);

	if (d == NULL)
		return 0;
	if (l->online >= 0 && d->online != (l->online == 1))
		return 0;
	if ((int)json_array_size(l->list) >= l->limit) {
		l->more = true;
		return 1;
	}
	json_array_append_new(l->list, dev_view(d));
	strlcpy_h(l->last, id, sizeof(l->last));
	return 0;
}

static void
op_device_list(struct call *c)
{
	struct devlist l = { c->q, json_array(), -1, 100, false, "" };
	json_t *on = json_object_get(c->args, "online"), *lim = json_object_get(c->args, "limit");
	const char *cursor = arg_str(c, "cursor");

	if (on != NULL)
		l.online = json_is_true(on) ? 1 : 0;
	if (json_is_integer(lim) && json_integer_value(lim) >= 1 && json_integer_value(lim) <= LIST_MAX)
		l.limit = (int)json_integer_value(lim);
	reqstore_walk_devs(c->q->st, cursor, devlist_cb, &l);
	reply(c->q, c->peer, c->reqid, 200, json_pack("{s:o,s:o}", "devices", l.list,
	    "next", l.more ? json_string(l.last) : json_null()));
}

void
requests_on_request(struct requests *q, const char *peer, const struct msg_request *m)
{
	static const struct {
		const char *op;
		void (*fn)(struct call *);
	} ops[] = {
		{ "request.create", op_request_create },
		{ "request.get", op_request_get },
		{ "request.cancel", op_request_cancel },
		{ "device.requests", op_device_requests },
		{ "device.get", op_device_get },
		{ "device.list", op_device_list },
		{ "event.publish", op_event },
	};
	struct call c = { q, peer, m->reqid, NULL };

	c.args = json_loadb(m->args.p, m->args.len, 0, NULL);
	if (!json_is_object(c.args)) {
		worker_count(q->w, STAT_ipc_bad, 1);
		reply_error(q, peer, m->reqid, 400, "bad_request", "malformed operation arguments");
		goto out;
	}
	if (pstr_eq(m->op, "config.put") || pstr_eq(m->op, "config.delete")) {
		op_config(&c, pstr_eq(m->op, "config.put"));
		goto out;
	}
	for (size_t i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		if (pstr_eq(m->op, ops[i].op)) {
			ops[i].fn(&c);
			goto out;
		}
	}
	reply_error(q, peer, m->reqid, 501, "not_implemented", "operation %.*s is not implemented",
	    (int)(m->op.len > 64 ? 64 : m->op.len), m->op.p);
out:
	json_decref(c.args);
}

/* ---- upkeep ---- */

struct prune {
	struct requests *q;
	int64_t          cutoff;
	int              n, read, live;
	bool             cut;           /* the slice ended before the store did */
	uint64_t         resume;        /* if cut: the first record not looked at */
	uint64_t         seq[REQUESTS_PRUNE_BATCH];
	char           (*cid)[REQSTORE_ID_MAX + 1];
	char           (*dev)[REQSTORE_ID_MAX + 1];
};

static int
prune_cb(uint64_t seq, const char *cid, void *arg)
{
	struct prune *p = arg;
	json_t *rec;
	int64_t ended;
	const char *dev;

	if (p->n >= REQUESTS_PRUNE_BATCH || p->read >= 4 * REQUESTS_PRUNE_BATCH ||
	    p->live >= REQUESTS_PRUNE_LIVE) {
		p->cut = true;
		p->resume = seq;
		return 1;
	}
	if (req_find(p->q, cid) != NULL) {
		p->live++;
		return 0;   /* still live: later ones may be old enough */
	}
	p->read++;
	if ((rec = reqstore_get(p->q->st, cid)) == NULL)
		return 0;
	ended = rec_int(rec, "_ended");
	dev = json_string_value(json_object_get(rec, "device"));
	if (ended == 0 || ended > p->cutoff || dev == NULL) {
		json_decref(rec);
		/* Requests end roughly in accept order: stop at the first young
		 * one, and begin at the start again next time. */
		return ended > p->cutoff;
	}
	p->seq[p->n] = seq;
	strlcpy_h(p->cid[p->n], cid, sizeof(p->cid[0]));
	strlcpy_h(p->dev[p->n], dev, sizeof(p->dev[0]));
	p->n++;
	json_decref(rec);
	return 0;
}

/*
 * Drop ended requests older than REQUESTS_KEEP_MS, a slice at a time; while
 * the store is more than REQUESTS_HIGH_PCT full, the oldest ended ones
 * whatever their age, so that history never fills it.  due: it is time
 * to look for old records (the fill is looked at every time).  A slice
 * goes on where the last one was cut short, so live requests at the head
 * of the accept order (queued for days for an offline device) cannot hide
 * the history behind them.  Returns whether there is more to look at now.
 */
static bool
requests_prune(struct requests *q, bool due)
{
	struct prune *p;
	uint64_t used = 0, size = 0;
	bool high, more = false;

	q->prune_high = false;
	high = reqstore_usage(q->st, &used, &size) == 0 && used > size / 100 * REQUESTS_HIGH_PCT;
	if (!high && !due)
		return false;
	if (due)
		q->last_prune_ms = now_ms();
	if ((p = calloc(1, sizeof(*p))) == NULL)
		return false;
	p->q = q;
	p->cutoff = high ? INT64_MAX : now_ms() - REQUESTS_KEEP_MS;
	p->cid = calloc(REQUESTS_PRUNE_BATCH, sizeof(*p->cid));
	p->dev = calloc(REQUESTS_PRUNE_BATCH, sizeof(*p->dev));
	if (p->cid != NULL && p->dev != NULL) {
		uint64_t from = q->prune_from;

		reqstore_walk_from(q->st, from, prune_cb, p);
		if (p->n == 0) {
			q->prune_from = p->cut ? p->resume : 0;
			/* Over the high mark, a look that began past the start
			 * goes on from the start: what ended since is there. */
			more = p->cut || (high && from != 0);
			q->prune_high = high && from != 0 && !p->cut;
		} else if (tx_begin(q) == 0) {
			int i;
			for (i = 0; i < p->n; i++)
				if (reqstore_remove(q->st, p->seq[i], p->cid[i], p->dev[i]) == -1) {
					tx_fail(q);
					break;
				}
			if (i == p->n) {
				if (high)
					log_ratelimited(LOG_WARNING, "request store %llu of %llu MiB used: "
					    "dropping ended requests before their %lld h",
					    (unsigned long long)(used >> 20), (unsigned long long)(size >> 20),
					    (long long)(REQUESTS_KEEP_MS / 3600000));
				else
					log_debug("pruned %d requests ended more than %lld h ago", p->n,
					    (long long)(REQUESTS_KEEP_MS / 3600000));
				q->prune_from = p->cut ? p->resume : 0;
				/* Over the high mark, on while there is something to drop. */
				more = p->cut || high;
				q->prune_high = high;
			}
		}
	}
	free(p->cid);
	free(p->dev);
	free(p);
	return more;
}

static void
requests_tick(evutil_socket_t fd, short what, void *arg)
{
	struct requests *q = arg;
	int64_t now = now_ms();
	uint64_t t0 = mono_us();

	note_resend(q);
	req_retry_all(q);
	/*
	 * fsync = batch: the store's thread flushes what was committed until
	 * now (this group's writes go with the next second's sync), so a
	 * commit is on disk within about a second plus the disk's time.  The
	 * environment stays MDB_NOSYNC without MDB_WRITEMAP: LMDB then keeps
	 * its integrity across a power cut on a file system that preserves
	 * write order, losing only the last commits.
	 */
	if (q->w->cf->spool_fsync == FSYNC_BATCH)
		reqstore_sync_async(q->st);
	if (!q->prune_more)
		q->prune_more = requests_prune(q, now - q->last_prune_ms >= REQUESTS_PRUNE_MS);
	if (elapsed_ms(t0) > SLOW_MS)
		log_debug("tick took %.1f ms", elapsed_ms(t0));
}

void
requests_on_mqtt_up(struct requests *q, int slot, bool new_life)
{
	struct pub **gone = NULL;
	size_t ngone = 0, cap = 0;

	/*
	 * A new mqtt worker in this slot: the broker's acknowledgements of
	 * what the last one published and had not confirmed died with it.
	 * Those publishes fail now rather than at their timeout (10 s): a
	 * request's command goes out again at once (a device may get it
	 * twice, with its commandId), an event or a configuration is answered
	 * 503 as at the timeout.
	 */
	for (size_t i = 0; new_life && i < q->pubs.nb; i++)
		for (struct hnode *n = q->pubs.b[i]; n != NULL; n = n->next) {
			struct pub *p = (struct pub *)n;

			if (p->slot != slot)
				continue;
			if (ngone == cap) {
				struct pub **ng = realloc(gone, (cap ? cap * 2 : 16) * sizeof(*ng));

				if (ng == NULL)
					break;  /* the others time out */
				gone = ng;
				cap = cap ? cap * 2 : 16;
			}
			gone[ngone++] = p;
		}
	if (ngone > 0)
		log_notice("mqtt.%d restarted: %zu publish(es) it had not confirmed are "
		    "treated as lost", slot, ngone);
	for (size_t i = 0; i < ngone; i++)
		pub_done(q, gone[i], PUBLISHED_FAILED);
	free(gone);
	/* Devices whose publishing failed for want of a connection go now. */
	for (size_t i = 0; i < q->devs.nb; i++)
		for (struct hnode *n = q->devs.b[i]; n != NULL; n = n->next) {
			struct dev *d = (struct dev *)n;
			if (d->online && d->pub == NULL && !TAILQ_EMPTY(&d->live))
				dev_kick(q, d);
		}
}

void
requests_on_pause(struct requests *q, bool paused)
{
	q->spool_full = paused;
}

/* ---- admin ---- */

json_t *
requests_admin(struct requests *q, int argc, char **argv)
{
	struct collect k = { q, json_array(), -1, 0, LIST_MAX, false, 0 };
	json_t *list;

	if (strcmp(argv[0], "requests") == 0) {
		if (argc > 1) {
			if (!device_id_valid(argv[1], strlen(argv[1]))) {
				json_decref(k.list);
				return json_pack("{s:{s:s,s:s}}", "error", "code", "bad_argument",
				    "message", "not a device id");
			}
			reqstore_walk_device(q->st, argv[1], true, collect_cb, &k);
		} else
			reqstore_walk_all(q->st, true, collect_cb, &k);
		list = json_array();
		for (size_t i = 0; i < json_array_size(k.list); i++)
			json_array_append_new(list, rec_public(json_array_get(k.list, i)));
		json_decref(k.list);
		k.list = list;
		/* notifications: kind "request" envelopes the spool has not
		 * acknowledged, stored (and, in memory, waiting to be resent). */
		return json_pack("{s:o,s:i,s:i,s:I,s:I}", "requests", k.list, "queued", q->n_queued,
		    "sent", q->n_sent, "notifications", (json_int_t)reqstore_note_count(q->st),
		    "notifications_unacked", (json_int_t)(q->nnotes - q->nacked));
	}
	json_decref(k.list);
	if (strcmp(argv[0], "devices") == 0) {
		list = json_array();
		for (size_t i = 0; i < q->devs.nb; i++)
			for (struct hnode *n = q->devs.b[i]; n != NULL; n = n->next)
				if (json_array_size(list) < 10000)
					json_array_append_new(list, dev_view((struct dev *)n));
		return json_pack("{s:o,s:i}", "devices", list, "online", q->n_online);
	}
	return NULL;
}

void
requests_reload(struct requests *q)
{
	/* Limits are read from w->cf on each use; nothing is cached. */
	(void)q;
}

/* ---- start and stop ---- */

static int
load_dev_cb(const char *id, json_t *doc, void *arg)
{
	struct requests *q = arg;
	struct dev *d;

	if (!device_id_valid(id, strlen(id)) || (d = dev_new(q, id)) == NULL)
		return 0;
	/* Presence is not known after a restart until the device speaks; a
	 * device that was online is taken to still be, so its queue moves. */
	d->online = json_is_true(json_object_get(doc, "online"));
	d->last_seen_ms = json_integer_value(json_object_get(doc, "lastSeen"));
	d->status_ms = json_integer_value(json_object_get(doc, "statusAt"));
	d->telemetry_ms = json_integer_value(json_object_get(doc, "telemetryAt"));
	if (json_is_object(json_object_get(doc, "status")))
		d->status = json_incref(json_object_get(doc, "status"));
	if (json_is_object(json_object_get(doc, "telemetry")))
		d->telemetry = json_incref(json_object_get(doc, "telemetry"));
	if (d->online)
		q->n_online++;
	return 0;
}

static int
load_live_cb(uint64_t seq, const char *cid, void *arg)
{
	struct requests *q = arg;
	json_t *rec = rec_get(q, cid);
	const char *dev, *st;
	struct dev *d;
	int state;

	if (rec == NULL)
		return 0;
	dev = json_string_value(json_object_get(rec, "device"));
	st = json_string_value(json_object_get(rec, "state"));
	state = st ? state_parse(st) : -1;
	if (dev != NULL && device_id_valid(dev, strlen(dev)) && (state == RS_QUEUED || state == RS_SENT) &&
	    ((d = dev_find(q, dev)) != NULL || (d = dev_new(q, dev)) != NULL))
		req_new(q, d, cid, seq, state, rec_int(rec, "_deadline"), rec);
	else
		log_warn("request %s in the live index is not live (%s); ignored", cid, st ? st : "?");
	json_decref(rec);
	return 0;
}

static int
load_note_cb(const struct reqstore_note *n, void *arg)
{
	/* Sent again at the first tick: the spool drops duplicates by id. */
	note_track(arg, n->seq, mono_ms() - NOTE_RESEND_MS);
	return 0;
}

struct requests *
requests_open(struct worker *w)
{
	struct requests *q = calloc(1, sizeof(*q));
	char dir[600], err[700];
	struct timeval tv = { REQUESTS_TICK_MS / 1000, (REQUESTS_TICK_MS % 1000) * 1000 };
	struct timeval ftv = { 0, DEV_FLUSH_MS * 1000 };

	if (q == NULL)
		return NULL;
	q->w = w;
	TAILQ_INIT(&q->dirty);
	TAILQ_INIT(&q->kicks);
	TAILQ_INIT(&q->saved);
	TAILQ_INIT(&q->staged);
	TAILQ_INIT(&q->retry);
	STAILQ_INIT(&q->later);
	/* Publish references differ between lives: an mqtt worker's answer to
	 * the previous router's publish must not settle a new one. */
	q->next_ref = (uint64_t)w->generation << 40;
	snprintf(dir, sizeof(dir), "%s/requests", w->cf->state_dir);
	q->st = reqstore_open(dir, w->cf->requests_max_bytes, w->cf->spool_fsync, err, sizeof(err));
	if (q->st == NULL) {
		log_err("request store: %s", err);
		free(q);
		return NULL;
	}
	q->next_seq = reqstore_meta_get(q->st, "seq");
	q->next_nseq = reqstore_meta_get(q->st, "nseq");
	if (q->next_seq == 0)
		q->next_seq = 1;
	if (q->next_nseq == 0)
		q->next_nseq = 1;   /* 0 means "none" in note_add */
	reqstore_walk_devs(q->st, NULL, load_dev_cb, q);
	reqstore_walk_live(q->st, load_live_cb, q);
	reqstore_walk_notes(q->st, load_note_cb, q);
	q->last_prune_ms = now_ms() - REQUESTS_PRUNE_MS + 5000;
	log_info("request store: %zu live requests, %zu devices (%d online), %zu notifications to send",
	    q->reqs.n, q->devs.n, q->n_online, q->nnotes);
	gauges(q);
	q->tick = event_new(w->base, -1, EV_PERSIST, requests_tick, q);
	event_add(q->tick, &tv);
	q->tx_ev = evtimer_new(w->base, tx_cb, q);
	q->note_ev = evtimer_new(w->base, note_flush_cb, q);
	q->flush_ev = event_new(w->base, -1, EV_PERSIST, dev_flush_cb, q);
	event_add(q->flush_ev, &ftv);
	/* Queues of devices taken to be online go out once an mqtt worker is
	 * reachable (first try now; failures retry every second). */
	for (size_t i = 0; i < q->devs.nb; i++)
		for (struct hnode *n = q->devs.b[i]; n != NULL; n = n->next) {
			struct dev *d = (struct dev *)n;
			struct timeval now = { 0, 0 };
			if (d->online && !TAILQ_EMPTY(&d->live))
				evtimer_add(d->retry, &now);
		}
	return q;
}

/*
 * Stopping: commit what is pending, then answer every API call still held
 * by ?wait with the request as stored (202), as its wait running out would.
 * Left to the api worker, the call became 503 "shutting down" although the
 * request was stored: a client taking that at its word creates it again.
 */
void
requests_stop(struct requests *q)
{
	struct waiter *wt;
	int n = 0;

	/* A command published now would go out again after the restart: its
	 * broker acknowledgement (and so "sent") would never be read. */
	q->stopping = true;
	dev_flush(q, q->ndirty);
	tx_end(q);
	for (size_t i = 0; i < q->reqs.nb; i++)
		for (struct hnode *h = q->reqs.b[i]; h != NULL; h = h->next) {
			struct req *r = (struct req *)h;

			while ((wt = LIST_FIRST(&r->waiters)) != NULL) {
				reply_rec(q, wt->peer, wt->reqid, 202, r->staged ? r->crec : r->rec,
				    false);
				waiter_free(wt);
				n++;
			}
		}
	if (n > 0)
		log_info("stopping: %d API call(s) waiting on requests answered 202", n);
}

void
requests_close(struct requests *q)
{
	struct hnode *n, *next;

	if (q == NULL)
		return;
	/* Kicks of this last group publish nothing and its answers go nowhere. */
	q->stopping = true;
	dev_flush(q, q->ndirty);
	tx_end(q);
	if (q->w->cf->spool_fsync == FSYNC_BATCH)
		reqstore_sync_wait(q->st);
	if (q->tick)
		event_free(q->tick);
	if (q->tx_ev)
		event_free(q->tx_ev);
	if (q->note_ev)
		event_free(q->note_ev);
	if (q->flush_ev)
		event_free(q->flush_ev);
	for (size_t i = 0; i < q->pubs.nb; i++)
		for (n = q->pubs.b[i]; n != NULL; n = next) {
			struct pub *p = (struct pub *)n;
			next = n->next;
			event_free(p->timer);
			free(p);
		}
	for (size_t i = 0; i < q->reqs.nb; i++)
		for (n = q->reqs.b[i]; n != NULL; n = next) {
			struct req *r = (struct req *)n;
			struct waiter *wt;
			next = n->next;
			while ((wt = LIST_FIRST(&r->waiters)) != NULL)
				waiter_free(wt);
			event_free(r->timer);
			json_decref(r->rec);
			json_decref(r->crec);
			json_decref(r->fact_rec);
			json_decref(r->want_rec);
			free(r->text);
			free(r);
		}
	for (size_t i = 0; i < q->devs.nb; i++)
		for (n = q->devs.b[i]; n != NULL; n = next) {
			struct dev *d = (struct dev *)n;
			next = n->next;
			json_decref(d->status);
			json_decref(d->telemetry);
			event_free(d->retry);
			free(d);
		}
	free(q->reqs.b);
	free(q->devs.b);
	free(q->pubs.b);
	free(q->notes);
	free(q->acking);
	free(q->hints);
	free(q->hdone);
	free(q->gw_json);
	if (q->nout > 0)
		hmw_free(&q->out);
	reqstore_close(q->st);
	free(q);
}
