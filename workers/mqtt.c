/*
 * herald mqtt worker: a slice of the broker connections.  A device message
 * is appended to the slot's outbox before the broker can see its PUBACK,
 * then sent to the router; the spool's ACK frees it.  The worker also
 * publishes what the router asks for (commands, events, retained config).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include "log.h"
#include "mosq.h"
#include "outbox.h"
#include "proto.h"
#include "util.h"
#include "worker.h"
#include "workers.h"

/*
 * Why the PUBACK waits for the outbox (libmosquitto 2.0.11): handle__publish()
 * (lib/handle_publish.c) calls send__puback() *before* on_message for a QoS 1
 * message; send__puback() ends in packet__queue() (lib/packet_mosq.c), which
 * writes the packet at once only when `in_callback == false && threaded ==
 * mosq_ts_none`.  mosquitto_threaded_set(m, true) makes it mosq_ts_external,
 * so the PUBACK only sits in the out queue until our next
 * mosquitto_loop_write(), which mqtt_flush() runs after on_message returned
 * and never from inside a read.  There the PUBACK moves to the socket's held
 * buffer (mosq.c), released only once outbox_sync() covered its record.
 */

#define MQTT_SESSION_EXPIRY_S  86400    /* the broker keeps our sessions a day */
#define MQTT_RECEIVE_MAX       512      /* our CONNECT receive maximum */
#define MQTT_READ_BUDGET       64       /* packets per connection per wakeup */
#define MQTT_TICK_MS           1000
#define MQTT_ROUTER_WATCH_MS   100      /* a look for a restarted router */
#define MQTT_STARTUP_TICK_MS   10       /* the first resend of a reopened outbox */
#define MQTT_RESEND_AFTER_MS   5000
#define MQTT_RESEND_PER_TICK   2000
#define MQTT_BACKOFF_MIN_MS    100
#define MQTT_BACKOFF_MAX_MS    10000
#define MQTT_SYNC_RETRY_MS     100
#define MQTT_SYNC_WINDOW_MS    2        /* fsync = batch: one outbox msync per window */
#define MQTT_LANE_BATCH        64       /* fsync = batch: records that leave before it ends */
#define MQTT_STOP_POLL_MS      20
#define MQTT_STOP_DEADLINE_MS  2000
#define MQTT_PUB_BUCKETS       256
#define MQTT_TOPIC_MAX         65535
#define MQTT_ORIGIN_NONE       0xffffffffu   /* QoS 0: no PUBACK, never redelivered */

#define MQTT_RECENT            65536    /* a power of 2: every packet id */
#define MQTT_FILTER_MAX        160      /* "$share/<group>/device/+/<kind>" */
#define MQTT_SESS_FILTERS      16       /* old filters a session may hold */
#define MQTT_SESS_MAX          256      /* sessions in a slot's record (64 connections, twice over) */

/*
 * Redeliveries.  When a connection or the worker dies, the broker keeps the
 * messages it sent on that session without getting their PUBACK and
 * delivers them again, first thing, when the same client id comes back,
 * with the same packet ids.  That includes PUBACKs herald wrote: a process
 * killed with unread input makes the kernel reset the connection, and the
 * broker loses what it had not read yet.  Those messages are in the outbox
 * already (or spooled): appending them again would give them a second id.
 *
 * So each connection keeps, in a file next to the outbox (<slot>.recent,
 * mapped like it), its last MQTT_RECENT messages: packet id, hash of topic
 * and payload, outbox sequence.  What the broker sends again is not bounded
 * by our receive maximum: under load Mosquitto 2.0.11 reads one packet of a
 * client per loop pass, while its publishers' messages keep coming, and it
 * had 16,545 of ours unacknowledged (its PUBACKs waiting in its socket,
 * lost with the reset) when a worker was killed; it resent all of them.  So
 * the ring holds a message for every packet id.  When the connection goes
 * down, or a worker starts, they become candidates, if the outbox still
 * knows their sequence (live or acknowledged: never one lost with a power
 * failure).  A delivery the broker marks as sent before (DUP, seen in the
 * framing mosq.c follows) matching a candidate on (connection, packet id,
 * content) is acknowledged without a new record; a new message, DUP clear,
 * is never taken for one, whatever packet id it reuses.  After
 * MQTT_REDELIV_WINDOW messages of a session, or when the session was not
 * resumed, the connection's candidates are dropped.  On a connection whose
 * I/O is not buffered the DUP flag is not seen: nothing is taken for a
 * redelivery there (a redelivery then gets a second id; never is a message
 * lost for one).
 */
#define MQTT_REDELIV_WINDOW    (2 * MQTT_RECENT)

/* A candidate, in its connection's table indexed by packet id. */
struct cand {
	uint64_t        hash;       /* of topic and payload */
	uint64_t        seq;
	bool            set;
};

/* <slot>.recent: a header, then one ring per connection, named by its
 * client id (version 1 rings had no name: they were the configured
 * connections, in order). */
#define MQTT_RECENT_MAGIC      0x544e4352u   /* "RCNT" */
#define MQTT_RECENT_VERSION    2

struct recent_hdr {
	uint32_t magic, version, epoch, nconns, per_conn, pad;
	uint64_t reserved[5];
};

struct recent_ent {
	uint32_t origin;
	uint32_t pad;
	uint64_t hash;
	uint64_t seq;
};

struct recent_ring {
	uint64_t          count;      /* entries ever written; stored after the entry */
	uint64_t          pad;
	char              id[192];    /* the connection's client id */
	struct recent_ent e[MQTT_RECENT];
};

/* A publish for the router waiting for the broker's acknowledgement. */
struct mpub {
	uint16_t     mid;
	uint64_t     ref;
	struct mpub *next;
};

struct mconn {
	struct mqttw     *mw;
	int               idx;
	char              id[192];
	struct mosquitto *m;
	int               sock;        /* -1 when closed */
	struct event     *rev, *wev, *retry;
	struct event     *again;       /* read again: input waits in the buffer */
	bool              buffered;    /* the socket's I/O is buffered, its PUBACKs held (mosq.h) */
	bool              up;          /* a connection attempt is under way or open */
	bool              connected;   /* CONNACK accepted */
	bool              subscribed;  /* SUBACK granted every device topic */
	bool              was_subscribed; /* once before, in this worker's life */
	bool              status;      /* the one connection that takes device/+/status */
	bool              reading, writing;
	bool              bye_sent;    /* DISCONNECT queued while stopping */
	int64_t           backoff_ms;
	int64_t           last_read_ms;
	struct mpub      *pubs[MQTT_PUB_BUCKETS];
	int               npubs;        /* publishes waiting for the broker's PUBACK */
	struct recent_ring *recent;     /* in <slot>.recent (or memory) */
	uint64_t          since_connack;
	struct cand      *cand;         /* redelivery candidates, MQTT_RECENT of them by
	                                   packet id; NULL: none */
	size_t            ncand;        /* of them set */
	/*
	 * Broker sessions (see "broker sessions" below).  `old` holds the
	 * filters the record says the session may hold and the configuration
	 * no longer wants: unsubscribed at the CONNACK.  A retiring connection
	 * (a client id the configuration no longer uses) takes what its session
	 * had queued, then ends the session.
	 */
	int               nold;
	char              old[MQTT_SESS_FILTERS][MQTT_FILTER_MAX];
	int               old_mid;      /* the UNSUBSCRIBE of `old` in flight; 0: none */
	bool              retiring;
	bool              barrier_clear; /* the last barrier came back with no message before it */
	bool              ending;       /* DISCONNECT with session expiry 0 queued */
	bool              retired;      /* its session ended: never connects again */
	uint64_t          rx_since_barrier;
};

struct mqttw {
	struct worker    *w;
	struct outbox    *ob;
	struct mconn     *conns;
	int               nconns;           /* the configured ones first, then the retiring */
	int               ncurrent;         /* the configured ones: device traffic, publishes */
	bool              retire_slot;      /* the slot is over [workers] mqtt: it drains and ends */
	char              sess_path[600];   /* <slot>.sessions */
	bool              sess_unsaved;     /* the last write failed: tried again each tick */
	int               rr;
	struct event     *flush_ev, *tick_ev, *resend_ev, *stop_ev;
	struct event     *sync_ev;          /* the batch window's msync */
	bool              paused_spool, paused_full, stopping, sync_failing;
	bool              urgent;           /* a publish waits on an unbuffered connection */
	bool              prompt;           /* a status or response waits to be sent */
	int64_t           stop_deadline;
	uint32_t          node_hash;
	uint64_t          unsent_from;      /* appended in this life, not sent yet */
	uint64_t          startup_from;     /* first resend pass in progress from here; 0: done */
	uint32_t          peer_gen[2];      /* the crypto and http workers' lives */
	uint32_t          router_gen;       /* the router's life */
	struct event     *router_ev;
	int64_t           resend_before;    /* records last sent before this: again now */
	size_t            trunc_limit;      /* longer payloads are cut (crypto rejects them) */
	size_t            high_water;       /* outbox room under which reading stops */
	long              die_after, appended;
	char              die_marker[600];
	const char       *hold_pub_file;    /* HERALD_TEST_HOLD_PUBLISHED */
	struct msg_published *held_pubs;
	size_t            nheld_pubs;
	const char       *sync_fail_file;   /* HERALD_TEST_SYNC_FAIL */
	enum fsync_mode   fsync;
	/* copies of the configuration used after start */
	char              host[256], user[128], pass[256], group[64];
	int               port, keepalive;
	void             *recent_map;
	size_t            recent_len;
	struct msg_ack    ack;              /* 8 KiB: not on the stack */
	struct hmw        batch;            /* DEV_IN records not sent yet */
	int               nbatch;           /* records in it; 0: not started */
	char              topic[MQTT_TOPIC_MAX + 1];
};

static void mqtt_schedule_flush(struct mqttw *mw);
static void mqtt_retire_steps(struct mqttw *mw);
static void mqtt_retire_check(struct mqttw *mw);
static void conn_start(struct mconn *c);
static void conn_down(struct mconn *c, int rc);

/*
 * Input already in the socket's buffer wakes no poll: read it from a
 * zero timer, which runs after the loop polled, so a connection that always
 * has input does not starve the others or the control channel.
 */
static void
conn_read_again(struct mconn *c)
{
	static const struct timeval zero = { 0, 0 };

	if (c->sock != -1 && c->buffered && mosq_io_readable(c->sock) &&
	    !evtimer_pending(c->again, NULL))
		evtimer_add(c->again, &zero);
}

static bool
mqtt_may_read(const struct mqttw *mw)
{
	return !mw->paused_spool && !mw->paused_full && !mw->stopping;
}

/*
 * A connection with publishes in flight reads while the spool holds
 * reading back: their PUBACKs (the backend's answer to an event or a
 * request waits for one) are behind whatever device messages the broker
 * has in flight.  Those go to the outbox, and their PUBACKs stay held
 * until reading resumes (mqtt_flush_ex), so the broker sends no more than
 * our receive maximum: the spool's quota still holds the devices back.
 * Only a buffered connection can hold its PUBACKs apart.
 */
static bool
conn_may_read(const struct mconn *c)
{
	return mqtt_may_read(c->mw) ||
	    (c->npubs > 0 && c->buffered && !c->mw->paused_full && !c->mw->stopping);
}

/* Add or remove the read interest of a connection.  Before its CONNACK a
 * connection reads even while paused: the broker holds device messages
 * behind the CONNACK anyway, and the loop stops after it. */
static void
conn_update_read(struct mconn *c)
{
	bool want = c->sock != -1 && !c->mw->stopping && (conn_may_read(c) || !c->connected);

	if (want && !c->reading) {
		event_add(c->rev, NULL);
		conn_read_again(c);
	} else if (!want && c->reading) {
		event_del(c->rev);
	}
	c->reading = want;
}

static void
mqtt_update_reading(struct mqttw *mw)
{
	for (int i = 0; i < mw->nconns; i++)
		conn_update_read(&mw->conns[i]);
	worker_gauge(mw->w, GAUGE_paused, (mw->paused_spool || mw->paused_full) ? 1 : 0);
}

static void
mqtt_set_full(struct mqttw *mw, bool full)
{
	if (full == mw->paused_full)
		return;
	mw->paused_full = full;
	if (full) {
		worker_count(mw->w, STAT_outbox_full, 1);
		log_warn("outbox nearly full (%zu records, %zu bytes): reading stopped until "
		    "the spool acknowledges", outbox_depth(mw->ob), outbox_bytes(mw->ob));
	} else {
		log_info("outbox has room again: reading resumed");
	}
	mqtt_update_reading(mw);
}

static void
mqtt_check_room(struct mqttw *mw)
{
	worker_gauge(mw->w, GAUGE_outbox_depth, (int64_t)outbox_depth(mw->ob));
	if (mw->paused_full && outbox_room(mw->ob) >= mw->high_water)
		mqtt_set_full(mw, false);
}

/* ---- redeliveries ---- */

static uint64_t
mqtt_content_hash(const char *topic, size_t tlen, const void *payload, size_t plen)
{
	const uint8_t *p = (const uint8_t *)topic;
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < tlen; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	h = (h ^ 0xff) * 0x100000001b3ULL;
	p = payload;
	for (size_t i = 0; i < plen; i++)
		h = (h ^ p[i]) * 0x100000001b3ULL;
	return h;
}

/*
 * One table of MQTT_RECENT candidates per connection, made when it gets its
 * first and unmapped with them: its own mapping (1.5 MB, paged in as used),
 * not heap chunks that the heap keeps once the candidates are gone.
 */
#define MQTT_CAND_BYTES (MQTT_RECENT * sizeof(struct cand))

static void
conn_cand_put(struct mconn *c, uint16_t mid, uint64_t hash, uint64_t seq)
{
	struct cand *e;

	if (c->cand == NULL) {
		void *p = mmap(NULL, MQTT_CAND_BYTES, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (p == MAP_FAILED)
			return;     /* at worst a duplicate with its own id */
		c->cand = p;
	}
	e = &c->cand[mid];
	/* The newer record with that packet id is the one that can come back. */
	if (!e->set)
		c->ncand++;
	e->hash = hash;
	e->seq = seq;
	e->set = true;
}

/* Take the candidate of packet id mid: false if there is none. */
static bool
conn_cand_take(struct mconn *c, uint16_t mid, uint64_t *hash, uint64_t *seq)
{
	struct cand *e;

	if (c->cand == NULL || !(e = &c->cand[mid])->set)
		return false;
	*hash = e->hash;
	*seq = e->seq;
	e->set = false;
	c->ncand--;
	return true;
}

/* Drop the candidates of a connection (a new session, or past the window). */
static void
conn_cand_purge(struct mconn *c)
{
	if (c->cand != NULL)
		munmap(c->cand, MQTT_CAND_BYTES);
	c->cand = NULL;
	c->ncand = 0;
}

static void
conn_recent_push(struct mconn *c, uint32_t origin, uint64_t hash, uint64_t seq)
{
	struct recent_ring *rr = c->recent;
	uint64_t n = rr->count;
	struct recent_ent *e = &rr->e[n & (MQTT_RECENT - 1)];

	e->origin = origin;
	e->hash = hash;
	e->seq = seq;
	/* The entry before the count: a death in between leaves the count. */
	__atomic_store_n(&rr->count, n + 1, __ATOMIC_RELEASE);
}

/*
 * The connection is gone (or the worker is new): its recent messages may
 * come back.  at_open: an entry whose record this outbox does not know
 * (lost with a power cut, or never written) is cleared: its sequence may
 * be given to another message, and the entry would then make a later
 * delivery of its own message look like a redelivery.
 */
static void
conn_recent_to_candidates(struct mconn *c, bool at_open)
{
	struct recent_ring *rr = c->recent;
	uint64_t n = __atomic_load_n(&rr->count, __ATOMIC_ACQUIRE);
	/* Not the oldest slot: it is the one a death may have left half new. */
	uint64_t from = n >= MQTT_RECENT ? n - MQTT_RECENT + 1 : 0;

	for (uint64_t i = from; i < n; i++) {
		struct recent_ent *e = &rr->e[i & (MQTT_RECENT - 1)];

		if ((e->origin >> 16) != (uint32_t)c->idx)
			continue;
		if (outbox_seq_state(c->mw->ob, e->seq) == OUTBOX_UNKNOWN) {
			if (at_open)
				e->origin = UINT32_MAX;
			continue;
		}
		conn_cand_put(c, (uint16_t)e->origin, e->hash, e->seq);
	}
}

/*
 * The rings of a <slot>.recent written before (version 1 or 2, this
 * outbox's epoch), copied out: a connection's ring follows its client id
 * when connections are added, dropped or retired (a new node_name: the old
 * id moves behind the new ones), so the broker's redeliveries after the
 * change are still known.  Entries name their connection by index: they
 * are renumbered.  NULL when there is nothing to keep.
 */
struct recent_old {
	char              id[192];      /* "" for a version 1 ring: its index names it */
	int               idx;
	uint64_t          count;
	struct recent_ent e[MQTT_RECENT];
};

static struct recent_old *
mqtt_recent_read(struct mqttw *mw, const void *map, size_t len, int *nold)
{
	const struct recent_hdr *h = map;
	struct recent_old *old;
	size_t per, head, ringsz;

	*nold = 0;
	if (len < sizeof(*h) || h->magic != MQTT_RECENT_MAGIC || h->epoch != outbox_epoch(mw->ob) ||
	    h->nconns == 0 || h->nconns > MQTT_SESS_MAX)
		return NULL;
	/* A ring of per entries (earlier files had 16,384): a power of 2. */
	per = h->per_conn;
	if (per == 0 || per > MQTT_RECENT || (per & (per - 1)) != 0)
		return NULL;
	/* A ring: count, pad, [version 2: the client id,] then the entries. */
	if (h->version == 1)
		head = 2 * sizeof(uint64_t);
	else if (h->version == MQTT_RECENT_VERSION)
		head = offsetof(struct recent_ring, e);
	else
		return NULL;
	ringsz = head + per * sizeof(struct recent_ent);
	if (len < sizeof(*h) + h->nconns * ringsz ||
	    (old = calloc(h->nconns, sizeof(*old))) == NULL)
		return NULL;
	for (uint32_t i = 0; i < h->nconns; i++) {
		const char *r = (const char *)map + sizeof(*h) + i * ringsz;
		const struct recent_ent *e = (const void *)(r + head);
		struct recent_old *o = &old[*nold];
		uint64_t count;

		memcpy(&count, r, sizeof(count));
		if (h->version != 1) {
			const struct recent_ring *v2 = (const void *)r;

			if (memchr(v2->id, '\0', sizeof(v2->id)) == NULL || v2->id[0] == '\0')
				continue;
			strlcpy_h(o->id, v2->id, sizeof(o->id));
		}
		o->idx = (int)i;
		o->count = count;
		/* Each entry where a ring of MQTT_RECENT keeps it. */
		for (uint64_t k = count > per ? count - per : 0; k < count; k++)
			o->e[k & (MQTT_RECENT - 1)] = e[k & (per - 1)];
		(*nold)++;
	}
	return old;
}

/* Give conns[idx] the old ring of its client id, renumbered. */
static void
mqtt_recent_adopt(struct mqttw *mw, int idx, const struct recent_old *old, int nold)
{
	struct recent_ring *rr = mw->conns[idx].recent;

	for (int k = 0; k < nold; k++) {
		const struct recent_old *o = &old[k];

		if (o->id[0] != '\0' ? strcmp(o->id, mw->conns[idx].id) != 0 :
		    o->idx != idx || idx >= mw->ncurrent)
			continue;
		for (int i = 0; i < MQTT_RECENT; i++) {
			struct recent_ent e = o->e[i];

			if (e.origin != UINT32_MAX && (int)(e.origin >> 16) == o->idx)
				e.origin = ((uint32_t)idx << 16) | (e.origin & 0xffff);
			else
				e.origin = UINT32_MAX;
			rr->e[i] = e;
		}
		rr->count = o->count;
		return;
	}
}

/*
 * Map <slot>.recent, laid out for this life's connections; rings of the
 * previous life follow their client ids (mqtt_recent_read).  Falls back to
 * memory (at worst a redelivery then gets a second id).
 */
static void
mqtt_recent_open(struct mqttw *mw, const char *path)
{
	size_t len = sizeof(struct recent_hdr) + (size_t)mw->nconns * sizeof(struct recent_ring);
	struct recent_old *old = NULL;
	struct recent_hdr *h;
	struct stat st;
	void *map = MAP_FAILED;
	int fd, nold = 0;

	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	/* Read, not mapped: a fault on a hole of a full tmpfs is a SIGBUS. */
	if (fd != -1 && fstat(fd, &st) == 0 && st.st_size > 0) {
		char *prev = malloc((size_t)st.st_size);

		if (prev != NULL && pread(fd, prev, (size_t)st.st_size, 0) == st.st_size)
			old = mqtt_recent_read(mw, prev, (size_t)st.st_size, &nold);
		free(prev);
	}
	if (fd != -1 && fstat(fd, &st) == 0) {
		if ((size_t)st.st_size != len && (ftruncate(fd, 0) == -1 ||
		    ftruncate(fd, (off_t)len) == -1)) {
			close(fd);
			fd = -1;
		}
		/* Blocks reserved now: a store into a hole of a full disk is a SIGBUS. */
		if (fd != -1 && (errno = posix_fallocate(fd, 0, (off_t)len)) != 0) {
			close(fd);
			fd = -1;
		}
		if (fd != -1)
			map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	}
	if (fd != -1)
		close(fd);
	if (map == MAP_FAILED) {
		log_warn("%s: %s; redeliveries after a restart may get a second id", path,
		    strerror(errno));
		map = calloc(1, len);
		if (map == NULL) {
			free(old);
			return;
		}
		mw->recent_len = 0;
	} else {
		mw->recent_len = len;
	}
	mw->recent_map = map;
	h = map;
	/* Rebuilt whole: a death meanwhile leaves no magic (then it starts over). */
	__atomic_store_n(&h->magic, 0, __ATOMIC_RELEASE);
	memset(map, 0, len);
	h->version = MQTT_RECENT_VERSION;
	h->epoch = outbox_epoch(mw->ob);
	h->nconns = (uint32_t)mw->nconns;
	h->per_conn = MQTT_RECENT;
	for (int i = 0; i < mw->nconns; i++) {
		struct recent_ring *rr = (struct recent_ring *)((char *)map +
		    sizeof(struct recent_hdr) + (size_t)i * sizeof(struct recent_ring));

		mw->conns[i].recent = rr;
		strlcpy_h(rr->id, mw->conns[i].id, sizeof(rr->id));
		mqtt_recent_adopt(mw, i, old, nold);
	}
	free(old);
	__atomic_store_n(&h->magic, MQTT_RECENT_MAGIC, __ATOMIC_RELEASE);
}

/* ---- messages to the router ---- */

static void
mqtt_published(struct mqttw *mw, uint64_t ref, uint32_t result)
{
	struct msg_published p = { ref, result };
	struct hmw m;

	/* Tests: the router hears of the broker's acknowledgements only once
	 * the file named by HERALD_TEST_HOLD_PUBLISHED is gone (mqtt_tick). */
	if (mw->hold_pub_file != NULL && access(mw->hold_pub_file, F_OK) == 0) {
		struct msg_published *np = realloc(mw->held_pubs,
		    (mw->nheld_pubs + 1) * sizeof(*np));

		if (np != NULL) {
			mw->held_pubs = np;
			np[mw->nheld_pubs++] = p;
			return;
		}
	}
	hmw_init(&m, HM_FAB_PUBLISHED);
	proto_write_published(&m, &p);
	if (worker_send(mw->w, NULL, &m) == -1)
		log_ratelimited(LOG_WARNING, "cannot tell the router about publish %llu",
		    (unsigned long long)ref);
	hmw_free(&m);
}

/* Send the DEV_IN batch built so far; -1 if the fabric refused it. */
static int
mqtt_batch_send(struct mqttw *mw)
{
	int rc;

	if (mw->nbatch == 0)
		return 0;
	rc = worker_lane_send(mw->w, &mw->batch);
	hmw_free(&mw->batch);
	mw->nbatch = 0;
	return rc;
}

/*
 * Add one outbox record to the DEV_IN batch (its id depends only on what the
 * record holds); a full batch goes at once.  Sent or not, the record is due
 * again after the resend timeout, until the spool acknowledges it: the crypto
 * or http worker may have died with it.
 */
static int
mqtt_batch_add(struct mqttw *mw, const struct outbox_rec *r)
{
	char id[ULID_LEN];
	struct msg_dev_in d;

	msgid_make(r->received_ms, mw->node_hash, (uint32_t)mw->w->slot,
	    outbox_epoch(mw->ob), r->seq, id);
	memset(&d, 0, sizeof(d));
	d.slot = (uint32_t)mw->w->slot;
	d.epoch = outbox_epoch(mw->ob);
	d.seq = r->seq;
	d.received_ms = r->received_ms;
	d.id.p = id;
	d.id.len = strlen(id);
	d.topic.p = r->topic;
	d.topic.len = r->topic_len;
	d.payload.p = r->payload;
	d.payload.len = r->payload_len;
	if (mw->nbatch == 0)
		hmw_init(&mw->batch, HM_FAB_DEV_IN);
	proto_write_dev_in(&mw->batch, &d);
	mw->nbatch++;
	*r->last_sent = mono_ms();
	if (mw->nbatch >= PROTO_BATCH_RECORDS || hmw_len(&mw->batch) >= PROTO_BATCH_BYTES)
		return mqtt_batch_send(mw);
	return 0;
}

static int
mqtt_send_new_cb(void *arg, const struct outbox_rec *r)
{
	mqtt_batch_add(arg, r);
	return 0;
}

struct resend {
	struct mqttw *mw;
	int64_t       now;
	int           budget;
	uint64_t      next;     /* where a budget-limited walk stopped */
	bool          blocked;  /* the fabric refused: stop for this tick */
};

static int
mqtt_resend_cb(void *arg, const struct outbox_rec *r)
{
	struct resend *rs = arg;

	if (r->seq >= rs->mw->unsent_from)
		return 1;       /* new in this life: mqtt_flush sends it */
	if (*r->last_sent != 0 && rs->now - *r->last_sent < MQTT_RESEND_AFTER_MS &&
	    *r->last_sent >= rs->mw->resend_before)
		return 0;
	if (rs->budget == 0) {
		rs->next = r->seq;
		return 1;
	}
	rs->budget--;
	worker_count(rs->mw->w, STAT_outbox_resent, 1);
	if (mqtt_batch_add(rs->mw, r) == -1) {
		rs->blocked = true;
		rs->next = r->seq + 1;
		return 1;
	}
	return 0;
}

/*
 * Whether the crypto or the http worker has a new life since the last look
 * (the supervisor counts lives in the stats region).  What the old one held
 * of ours, in its lane or in its hands, died with it: those records are
 * sent again at this tick, not MQTT_RESEND_AFTER_MS after their last try
 * (the spool drops the copies of what it had already taken).
 */
static bool
mqtt_peers_restarted(struct mqttw *mw)
{
	static const int roles[2] = { ROLE_CRYPTO, ROLE_HTTP };
	bool restarted = false;

	for (int i = 0; i < 2; i++) {
		uint32_t g = worker_generation_of(mw->w, roles[i], 0);

		if (g != mw->peer_gen[i]) {
			if (mw->peer_gen[i] != 0)
				restarted = true;
			mw->peer_gen[i] = g;
		}
	}
	return restarted;
}

/*
 * A restarted router cannot publish through us until it knows us: it
 * learns our name when we connect, but our HELLO is what makes it send
 * the commands that failed meanwhile without waiting for their retry.
 */
static void
mqtt_router_watch(evutil_socket_t fd, short what, void *arg)
{
	struct mqttw *mw = arg;
	uint32_t g = worker_generation_of(mw->w, ROLE_ROUTER, 0);

	if (g != mw->router_gen) {
		if (mw->router_gen != 0)
			worker_hello(mw->w);
		mw->router_gen = g;
	}
}

static void
mqtt_resend_tick(evutil_socket_t fd, short what, void *arg)
{
	struct mqttw *mw = arg;
	struct resend rs = { mw, mono_ms(), MQTT_RESEND_PER_TICK, 0, false };
	struct timeval tv;

	if (mqtt_peers_restarted(mw)) {
		mw->resend_before = rs.now;
		if (outbox_depth(mw->ob) > 0)
			log_info("the crypto or http worker restarted: the outbox's %zu "
			    "unacknowledged record(s) are sent again", (size_t)outbox_depth(mw->ob));
	}
	if (mw->startup_from != 0) {
		/* Everything a previous life left, once, at a higher pace. */
		outbox_foreach(mw->ob, mw->startup_from, mqtt_resend_cb, &rs);
		mw->startup_from = rs.next;
		if (mw->startup_from == 0)
			log_info("outbox: records of the previous life sent again");
	} else if (!mw->stopping) {
		outbox_foreach(mw->ob, 0, mqtt_resend_cb, &rs);
	}
	mqtt_batch_send(mw);
	tv.tv_sec = 0;
	tv.tv_usec = (mw->startup_from != 0 ? MQTT_STARTUP_TICK_MS : MQTT_TICK_MS) * 1000;
	if (tv.tv_usec >= 1000000) {
		tv.tv_sec = tv.tv_usec / 1000000;
		tv.tv_usec %= 1000000;
	}
	evtimer_add(mw->resend_ev, &tv);
}

/* ---- the loop pass: reads, then one sync, then the messages and the writes ---- */

static void
conn_write(struct mconn *c)
{
	bool want;

	if (c->sock == -1)
		return;
	if (mosquitto_want_write(c->m)) {
		int rc = mosquitto_loop_write(c->m, 1);

		if (rc != MOSQ_ERR_SUCCESS) {
			conn_down(c, rc);
			return;
		}
	}
	if (c->sock == -1)
		return;
	/* What loop_write put in the buffer leaves in one write(2). */
	if (c->buffered && mosq_io_flush(c->sock) == -1) {
		conn_down(c, MOSQ_ERR_ERRNO);
		return;
	}
	want = mosquitto_want_write(c->m) || (c->buffered && mosq_io_unsent(c->sock) > 0);
	if (want && !c->writing)
		event_add(c->wev, NULL);
	else if (!want && c->writing)
		event_del(c->wev);
	c->writing = want;
}

/* The records appended since the last call leave for the crypto worker. */
static void
mqtt_send_new(struct mqttw *mw)
{
	if (mw->unsent_from < outbox_next_seq(mw->ob)) {
		outbox_foreach(mw->ob, mw->unsent_from, mqtt_send_new_cb, mw);
		mqtt_batch_send(mw);
		mw->unsent_from = outbox_next_seq(mw->ob);
	}
	mw->prompt = false;
}

/* A test switch: the file named by the variable, which acts while it exists. */
static const char *
mqtt_test_file(const char *var, const char *what)
{
	const char *f = getenv(var);

	if (f == NULL || *f == '\0')
		return NULL;
	log_warn("%s: %s while %s exists", var, what, f);
	return f;
}

/* outbox_sync(), which fails with EIO while the file named by
 * HERALD_TEST_SYNC_FAIL exists (tests: a disk that stopped writing). */
static int
mqtt_sync(struct mqttw *mw)
{
	if (mw->sync_fail_file != NULL && access(mw->sync_fail_file, F_OK) == 0) {
		errno = EIO;
		return -1;
	}
	return outbox_sync(mw->ob, mw->fsync);
}

/* An unbuffered connection's writes wait for the sync (its PUBACKs cannot
 * be held apart): stop watching for writability, or the loop would spin. */
static void
mqtt_hold_writes(struct mqttw *mw)
{
	for (int i = 0; i < mw->nconns; i++)
		if (!mw->conns[i].buffered && mw->conns[i].writing) {
			event_del(mw->conns[i].wev);
			mw->conns[i].writing = false;
		}
}

/*
 * The end of a loop pass.  Every PUBACK queued so far belongs to a record
 * appended before it; those records reach the disk (fsync always|batch)
 * before any PUBACK is written.  A buffered connection writes everything
 * else at once (publishes for devices, pings): its PUBACKs wait apart in
 * mosq_io (see mosq.c) until the sync, then go out in their order.  An
 * unbuffered one writes nothing before the sync.
 *
 * With fsync = batch the sync waits up to MQTT_SYNC_WINDOW_MS for more
 * records, so that one msync covers a window, not a pass; the PUBACKs wait
 * with it, a request's publish does not (it waited for a median 0.22 ms
 * msync, p99 several ms, when the connection had PUBACKs to write).
 * `force`, or a publish on an unbuffered connection (mw->urgent), syncs at
 * once.  The new records leave for the crypto worker before the sync, when
 * MQTT_LANE_BATCH of them are waiting, one is a status or a response
 * (mw->prompt: the router waits for those) or syncs fail, else with the
 * sync: one lane message per window rather than one per loop pass (at 43k
 * msgs/s a pass held 9 records; per window, the crypto worker's cost fell
 * from 3.7 to 2.5 µs a message).
 * Sending an id before its record is on disk is safe: a power cut can lose
 * the record, never the message (no PUBACK left, the broker sends it
 * again), and the id cannot name another message later, because it holds
 * the message's arrival time (msgid_make) as well as its sequence.  Such a
 * message may then reach the backend twice, under two ids.
 */
static void
mqtt_flush_ex(struct mqttw *mw, bool force)
{
	bool early = mw->fsync == FSYNC_BATCH;

	if (early && (force || mw->urgent || mw->prompt || mw->sync_failing ||
	    outbox_next_seq(mw->ob) - mw->unsent_from >= MQTT_LANE_BATCH))
		mqtt_send_new(mw);
	/* What is queued leaves; the PUBACKs among it are held. */
	for (int i = 0; i < mw->nconns; i++)
		if (mw->conns[i].buffered)
			conn_write(&mw->conns[i]);
	if (outbox_dirty(mw->ob)) {
		if (early && !force && !mw->urgent) {
			struct timeval tv = { 0, MQTT_SYNC_WINDOW_MS * 1000 };

			mqtt_hold_writes(mw);
			if (!evtimer_pending(mw->sync_ev, NULL))
				evtimer_add(mw->sync_ev, &tv);
			return;
		}
		if (mqtt_sync(mw) == -1) {
			struct timeval tv = { 0, MQTT_SYNC_RETRY_MS * 1000 };

			log_ratelimited(LOG_ERR, "outbox msync: %s; holding the PUBACKs",
			    strerror(errno));
			mw->sync_failing = true;
			mqtt_hold_writes(mw);
			event_del(mw->flush_ev);
			event_add(mw->flush_ev, &tv);
			return;
		}
	}
	if (mw->sync_failing) {
		log_notice("outbox msync works again");
		mw->sync_failing = false;
	}
	mw->urgent = false;
	mqtt_send_new(mw);
	/*
	 * Synced: the PUBACKs leave (the rest of a buffered connection left
	 * above), except while the spool holds reading back: what a
	 * connection reads then (a publish's PUBACK and the device messages
	 * before it, or at a keepalive) keeps its PUBACKs until reading
	 * resumes, so the broker holds the rest.
	 */
	for (int i = 0; i < mw->nconns; i++) {
		struct mconn *c = &mw->conns[i];

		if (!c->buffered) {
			conn_write(c);
			continue;
		}
		if (mw->paused_spool && !mw->stopping)
			continue;
		/* Again while writing held more: PUBACKs that waited in
		 * libmosquitto's queue behind a packet the socket could not
		 * take yet, all queued before the sync. */
		while (c->sock != -1 && mosq_io_held(c->sock) > 0) {
			if (mosq_io_release(c->sock) == -1) {
				log_ratelimited(LOG_ERR, "%s: cannot release its PUBACKs: %s",
				    c->id, strerror(errno));
				conn_down(c, MOSQ_ERR_NOMEM);
				break;
			}
			conn_write(c);
		}
	}
	mqtt_retire_steps(mw);
}

static void
mqtt_flush(struct mqttw *mw)
{
	mqtt_flush_ex(mw, false);
}

static void
mqtt_flush_cb(evutil_socket_t fd, short what, void *arg)
{
	mqtt_flush(arg);
}

static void
mqtt_sync_cb(evutil_socket_t fd, short what, void *arg)
{
	mqtt_flush_ex(arg, true);
}

/* Run the flush after every callback already due in this loop pass (reads
 * of the other connections included): one msync for all of them. */
static void
mqtt_schedule_flush(struct mqttw *mw)
{
	if (!mw->sync_failing)
		event_active(mw->flush_ev, EV_TIMEOUT, 1);
}

static bool
conn_pending(const struct mconn *c)
{
	int n = 0;

	if (c->sock == -1)
		return false;
	if (c->buffered)
		return mosq_io_readable(c->sock);
	return ioctl(c->sock, FIONREAD, &n) == 0 && n > 0;
}

/* Read up to budget packets; `force` reads even while paused (keepalive). */
static void
conn_read(struct mconn *c, int budget, bool force)
{
	struct mqttw *mw = c->mw;

	for (int i = 0; i < budget; i++) {
		int rc;

		if (c->sock == -1 || mw->stopping)
			break;
		if (!force && !conn_may_read(c) && c->connected)
			break;
		/* Room for the largest message first: one that on_message gets
		 * must never be refused (its PUBACK is already queued).  Before
		 * its CONNACK a connection gets no message: it reads the CONNACK
		 * whatever the room, or its read event, which stays armed for
		 * it, would fire on every loop pass. */
		if (c->connected && outbox_room(mw->ob) < mw->high_water) {
			mqtt_set_full(mw, true);
			break;
		}
		rc = mosquitto_loop_read(c->m, 1);
		c->last_read_ms = mono_ms();
		if (rc != MOSQ_ERR_SUCCESS) {
			conn_down(c, rc);
			break;
		}
		if (!conn_pending(c))
			break;
	}
	if (conn_may_read(c))
		conn_read_again(c);
	mqtt_schedule_flush(mw);
}

static void
conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_read(arg, MQTT_READ_BUDGET, false);
}

static void
conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct mconn *c = arg;

	mqtt_flush(c->mw);
}

/* ---- libmosquitto callbacks ---- */

/* The device topics herald subscribes to: device/+/<kind>. */
enum { KIND_STATUS, KIND_TELEMETRY, KIND_RESPONSE, KIND_EVENTS, NKINDS };
static const char *const mqtt_kinds[NKINDS] = { "status", "telemetry", "response", "events" };

/* The topic's kind, or -1 if it is no device topic of ours. */
static int
mqtt_topic_kind(const char *topic)
{
	const char *id, *kind;
	size_t idlen, kindlen;

	if (topic_split(topic, &id, &idlen, &kind, &kindlen) == -1)
		return -1;
	for (int i = 0; i < NKINDS; i++)
		if (kindlen == strlen(mqtt_kinds[i]) && memcmp(kind, mqtt_kinds[i], kindlen) == 0)
			return i;
	return -1;
}

/* Test switch (issue 3, "must show" 7): die between the outbox append and
 * the PUBACK, once per state_dir and slot. */
static void
mqtt_test_die(struct mqttw *mw, uint64_t seq)
{
	int fd;

	if (mw->die_after <= 0 || ++mw->appended < mw->die_after)
		return;
	fd = open(mw->die_marker, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		mw->die_after = 0;
		return;
	}
	close(fd);
	log_err("HERALD_TEST_DIE_AFTER_APPEND: exiting 99 after append %ld (seq %llu), "
	    "before its PUBACK", mw->appended, (unsigned long long)seq);
	_exit(99);
}

static void
on_message(struct mosquitto *m, void *arg, const struct mosquitto_message *msg)
{
	struct mconn *c = arg;
	struct mqttw *mw = c->mw;
	size_t tlen = strlen(msg->topic), plen = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
	uint32_t origin = MQTT_ORIGIN_NONE;
	uint64_t seq, hash = 0;
	int kind = mqtt_topic_kind(msg->topic);

	worker_count(mw->w, STAT_mqtt_received, 1);
	c->rx_since_barrier++;
	if (kind == -1)
		log_ratelimited(LOG_WARNING, "unexpected topic \"%.100s\": passed on for the "
		    "dead-letter store", msg->topic);
	if (plen > mw->trunc_limit) {
		log_ratelimited(LOG_WARNING, "%.100s: payload of %zu bytes cut to %zu (over "
		    "max_payload, it goes to the dead-letter store)", msg->topic, plen,
		    mw->trunc_limit);
		plen = mw->trunc_limit;
	}
	if (msg->qos > 0) {
		origin = ((uint32_t)c->idx << 16) | (uint16_t)msg->mid;
		hash = mqtt_content_hash(msg->topic, tlen, msg->payload, plen);
	}
	if (c->cand != NULL && ++c->since_connack > MQTT_REDELIV_WINDOW)
		conn_cand_purge(c);
	/* Only what the broker marks as sent before (DUP) can be a redelivery:
	 * a new message reusing an old one's packet id is never taken for one. */
	if (origin != MQTT_ORIGIN_NONE && c->cand != NULL && c->buffered &&
	    (mosq_io_last_command(c->sock) & 0x08) != 0) {
		uint64_t ch, cseq;

		/* (one not what was sent with that id before is not it) */
		if (conn_cand_take(c, (uint16_t)msg->mid, &ch, &cseq) && ch == hash) {
			log_ratelimited(LOG_NOTICE, "%s: the broker delivered packet %d again; "
			    "it is outbox record %llu already", c->id, msg->mid,
			    (unsigned long long)cseq);
			conn_recent_push(c, origin, hash, cseq);
			mqtt_schedule_flush(mw);
			errno = EAGAIN;
			return;
		}
	}
	if (outbox_append(mw->ob, msg->topic, tlen, msg->payload, plen, now_ms(), origin,
	    &seq) == -1) {
		/*
		 * Cannot happen while conn_read keeps high_water free; if it does,
		 * the PUBACK queued for this message must never leave: cut the
		 * connection so the broker keeps the message for the session.
		 */
		log_err("outbox append failed (%s): dropping the connection %s so the "
		    "broker keeps the message", strerror(errno), c->id);
		worker_count(mw->w, STAT_outbox_full, 1);
		if (c->sock != -1)
			shutdown(c->sock, SHUT_RDWR);
		mqtt_set_full(mw, true);
		errno = EAGAIN;
		return;
	}
	worker_count(mw->w, STAT_outbox_appended, 1);
	/* What the router waits for (a request's answer, presence) does not
	 * wait for the sync window. */
	if (kind == KIND_STATUS || kind == KIND_RESPONSE)
		mw->prompt = true;
	if (origin != MQTT_ORIGIN_NONE)
		conn_recent_push(c, origin, hash, seq);
	mqtt_test_die(mw, seq);
	if (outbox_room(mw->ob) < mw->high_water)
		mqtt_set_full(mw, true);
	mqtt_schedule_flush(mw);
	/* mosquitto_loop_read() handles several packets per call when it has
	 * publishes in flight, stopping early on EAGAIN: one message per call,
	 * so conn_read checks the room before the next. */
	errno = EAGAIN;
}

/* ---- broker sessions ---- */

/*
 * Each connection holds a persistent session at the broker (expiry
 * MQTT_SESSION_EXPIRY_S), and a session stays a member of its shared
 * subscriptions while its client is away: Mosquitto 2.0.11 goes on giving
 * it its turn of the group's messages and queues them.  A session whose
 * client id the configuration no longer uses (another node_name, fewer
 * workers or connections) would take its share of every new device
 * message, and the broker would drop them with the session a day later; a
 * filter of an earlier share_group would bring every message twice.
 *
 * So <slot>.sessions records, for every client id of the slot, the filters
 * its session may hold; it is written before a connection subscribes.  At
 * the CONNACK a connection unsubscribes the recorded filters it no longer
 * wants.  A recorded client id the configuration no longer uses gets a
 * retiring connection: it resumes the session, unsubscribes its filters (no
 * new message is routed to it), takes what the session had queued like any
 * device message, and ends the session (DISCONNECT with session expiry 0)
 * once a barrier finds the queue empty.  A slot over [workers] mqtt runs
 * only retiring connections and exits WORKER_EXIT_RETIRED once they are
 * done and its outbox is empty.
 *
 * The barrier is an UNSUBSCRIBE sent once every PUBACK of the connection is
 * written.  The broker handles a client's packets in order, and a PUBACK
 * puts the next queued message in flight and writes it at once
 * (db__message_delete_outgoing() in 2.0.11's src/database.c): an UNSUBACK
 * that no PUBLISH preceded means that nothing was queued or in flight
 * when the broker read the UNSUBSCRIBE.  Not so in one case of 2.0.11
 * (fixed in 2.0.15): when the messages a resumed session puts in flight
 * have all expired (a device's message expiry), it drops them and sends
 * nothing more until a PUBACK or a new message moves the queue, so the
 * barrier comes back clear over a stalled queue (README says so).  A
 * session whose DISCONNECT did not leave after all stays at the broker,
 * unsubscribed and empty, until its expiry.
 */

struct sess_rec {
	char id[192];
	int  nf;
	char f[MQTT_SESS_FILTERS + NKINDS][MQTT_FILTER_MAX];   /* as many as a line holds */
};

/*
 * An empty share_group subscribes plainly (one connection only, checked by
 * the configuration): Mosquitto 2.0.11 saves plain subscriptions with their
 * sessions, not shared ones, so only a plain one still holds after a broker
 * restart that herald did not see (see README).
 */
static void
mqtt_filter(const struct mqttw *mw, int kind, char *buf, size_t len)
{
	if (mw->group[0] == '\0')
		snprintf(buf, len, "device/+/%s", mqtt_kinds[kind]);
	else
		snprintf(buf, len, "$share/%s/device/+/%s", mw->group, mqtt_kinds[kind]);
}

/* The filters a configured connection subscribes to; their number. */
static int
conn_filters(const struct mconn *c, char f[NKINDS][MQTT_FILTER_MAX])
{
	int n = 0;

	for (int k = c->status ? 0 : 1; k < NKINDS; k++)
		mqtt_filter(c->mw, k, f[n++], MQTT_FILTER_MAX);
	return n;
}

/* The recorded session of a client id, or NULL. */
static const struct sess_rec *
sess_find(const struct sess_rec *recs, int nrec, const char *id)
{
	for (int r = 0; r < nrec; r++)
		if (strcmp(recs[r].id, id) == 0)
			return &recs[r];
	return NULL;
}

/*
 * A client id this slot may have used: <node_name>-mqtt-<slot>-<n>.  Nothing
 * else in a damaged record is taken for a session to resume and end.
 */
static bool
sess_id_ok(const char *id, int slot)
{
	char tail[32];
	const char *dash = strrchr(id, '-');
	size_t len, nlen;

	if (dash == NULL || dash[1] == '\0' || strspn(dash + 1, "0123456789") != strlen(dash + 1))
		return false;
	snprintf(tail, sizeof(tail), "-mqtt-%d", slot);
	len = (size_t)(dash - id);
	if (len <= strlen(tail) || memcmp(dash - strlen(tail), tail, strlen(tail)) != 0)
		return false;
	nlen = len - strlen(tail);
	return nlen <= 63 && strspn(id, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789._-") >= nlen;
}

/* Read <slot>.sessions: the number of sessions, 0 when there is no record. */
static int
sess_load(const char *path, int slot, struct sess_rec *recs, int max)
{
	FILE *f = fopen(path, "re");
	char line[2048], *save, *tok;
	int n = 0;

	if (f == NULL) {
		if (errno != ENOENT)
			log_warn("%s: %s; broker sessions of an earlier configuration "
			    "are not ended", path, strerror(errno));
		return 0;
	}
	while (n < max && fgets(line, sizeof(line), f) != NULL) {
		struct sess_rec *r = &recs[n];

		line[strcspn(line, "\n")] = '\0';
		if ((tok = strtok_r(line, " ", &save)) == NULL || tok[0] == '#' ||
		    strlen(tok) >= sizeof(r->id))
			continue;
		strlcpy_h(r->id, tok, sizeof(r->id));
		if (!sess_id_ok(r->id, slot) || sess_find(recs, n, r->id) != NULL)
			continue;
		r->nf = 0;
		while ((tok = strtok_r(NULL, " ", &save)) != NULL &&
		    r->nf < MQTT_SESS_FILTERS + NKINDS)
			if (strlen(tok) < MQTT_FILTER_MAX)
				strlcpy_h(r->f[r->nf++], tok, MQTT_FILTER_MAX);
		n++;
	}
	fclose(f);
	return n;
}

/*
 * Write <slot>.sessions anew (a temporary file, synced, renamed): every
 * connection whose session has not ended, with the filters it may hold.
 */
static int
mqtt_sessions_save(struct mqttw *mw)
{
	char tmp[sizeof(mw->sess_path) + 8], f[NKINDS][MQTT_FILTER_MAX], *slash;
	FILE *fp;
	int fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp", mw->sess_path);
	if ((fp = fopen(tmp, "we")) == NULL)
		goto fail;
	fprintf(fp, "# herald: the broker sessions of mqtt slot %d, each with the "
	    "filters it may hold\n", mw->w->slot);
	for (int i = 0; i < mw->nconns; i++) {
		const struct mconn *c = &mw->conns[i];
		int n = c->retiring ? 0 : conn_filters(c, f);

		if (c->retired)
			continue;
		fputs(c->id, fp);
		for (int k = 0; k < n; k++)
			fprintf(fp, " %s", f[k]);
		for (int k = 0; k < c->nold; k++)
			fprintf(fp, " %s", c->old[k]);
		fputc('\n', fp);
	}
	if (fflush(fp) != 0 || fsync(fileno(fp)) == -1) {
		fclose(fp);
		goto fail;
	}
	if (fclose(fp) != 0 || rename(tmp, mw->sess_path) == -1)
		goto fail;
	/* The rename itself outlives a power cut once the directory is synced. */
	strlcpy_h(tmp, mw->sess_path, sizeof(tmp));
	if ((slash = strrchr(tmp, '/')) != NULL)
		*slash = '\0';
	if ((fd = open(tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) != -1) {
		fsync(fd);
		close(fd);
	}
	if (mw->sess_unsaved)
		log_notice("%s written", mw->sess_path);
	mw->sess_unsaved = false;
	return 0;
fail:
	if (!mw->sess_unsaved)
		log_err("%s: %s; trying again every second (until then a broker session "
		    "the configuration drops may not be ended)", mw->sess_path, strerror(errno));
	mw->sess_unsaved = true;
	snprintf(tmp, sizeof(tmp), "%s.tmp", mw->sess_path);
	unlink(tmp);
	return -1;
}

/*
 * Read the slot's record of sessions into *recsp (the caller frees it):
 * their number.  A retiring slot with no record ends the sessions its
 * configuration names.
 */
static int
mqtt_sessions_load(struct mqttw *mw, const struct config *cf, struct sess_rec **recsp)
{
	struct sess_rec *recs = calloc(MQTT_SESS_MAX, sizeof(*recs));
	int nrec;

	if ((*recsp = recs) == NULL)
		return -1;
	nrec = sess_load(mw->sess_path, mw->w->slot, recs, MQTT_SESS_MAX);
	if (nrec == 0 && mw->retire_slot)
		for (int i = 0; i < cf->connections_per_worker && nrec < MQTT_SESS_MAX; i++)
			snprintf(recs[nrec++].id, sizeof(recs[0].id), "%s-mqtt-%d-%d",
			    cf->node_name, mw->w->slot, i);
	return nrec;
}

/*
 * The configured connections (conns[0..ncurrent), ids set) learn which
 * recorded filters they must drop; every other recorded client id becomes
 * a retiring connection (conns[ncurrent..nconns), room made by the
 * caller).  The record is written anew before any connection subscribes.
 */
static int
mqtt_sessions_apply(struct mqttw *mw, const struct sess_rec *recs, int nrec)
{
	char f[NKINDS][MQTT_FILTER_MAX];
	int next = mw->ncurrent;

	for (int i = 0; i < mw->ncurrent; i++) {
		struct mconn *c = &mw->conns[i];
		const struct sess_rec *r = sess_find(recs, nrec, c->id);
		int n = conn_filters(c, f);

		for (int k = 0; r != NULL && k < r->nf; k++) {
			bool wanted = false;

			for (int j = 0; j < n; j++)
				wanted |= strcmp(r->f[k], f[j]) == 0;
			if (!wanted && c->nold < MQTT_SESS_FILTERS)
				strlcpy_h(c->old[c->nold++], r->f[k], MQTT_FILTER_MAX);
		}
	}
	for (int r = 0; r < nrec && next < mw->nconns; r++) {
		struct mconn *c;
		bool current = false;

		for (int i = 0; i < mw->ncurrent; i++)
			current |= strcmp(mw->conns[i].id, recs[r].id) == 0;
		if (current)
			continue;
		c = &mw->conns[next++];
		c->retiring = true;
		strlcpy_h(c->id, recs[r].id, sizeof(c->id));
		for (int k = 0; k < recs[r].nf && c->nold < MQTT_SESS_FILTERS; k++)
			strlcpy_h(c->old[c->nold++], recs[r].f[k], MQTT_FILTER_MAX);
		if (c->nold == 0)
			/* Not recorded: whatever this configuration subscribes to. */
			for (int k = 0; k < NKINDS; k++)
				mqtt_filter(mw, k, c->old[c->nold++], MQTT_FILTER_MAX);
		log_notice("%s: a broker session this configuration does not use: "
		    "taking what it holds, then ending it", c->id);
	}
	return mw->nconns > 0 ? mqtt_sessions_save(mw) : 0;
}

/* UNSUBSCRIBE the connection's old filters; the mid, or 0 on failure. */
static int
conn_unsubscribe_old(struct mconn *c)
{
	char *sp[MQTT_SESS_FILTERS];
	int mid = 0, rc;

	for (int k = 0; k < c->nold; k++)
		sp[k] = c->old[k];
	rc = mosquitto_unsubscribe_multiple(c->m, &mid, c->nold, sp, NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		log_err("%s: unsubscribe: %s", c->id, mosquitto_strerror(rc));
		return 0;
	}
	return mid;
}

/* Every packet of the connection, PUBACKs included, is on the wire. */
static bool
conn_all_written(const struct mconn *c)
{
	return !mosquitto_want_write(c->m) &&
	    (!c->buffered || (mosq_io_held(c->sock) == 0 && mosq_io_unsent(c->sock) == 0));
}

/*
 * A retiring connection's next step: a barrier once its PUBACKs are out,
 * and the end of the session once a barrier came back clear.
 */
static void
conn_retire_step(struct mconn *c)
{
	mosquitto_property *props = NULL;
	int rc;

	if (!c->retiring || c->retired || c->ending || !c->connected || c->sock == -1 ||
	    c->old_mid != 0 || c->mw->stopping || !conn_all_written(c))
		return;
	if (!c->barrier_clear) {
		c->rx_since_barrier = 0;
		c->old_mid = conn_unsubscribe_old(c);
		mqtt_schedule_flush(c->mw);
		return;
	}
	if (mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL, 0) !=
	    MOSQ_ERR_SUCCESS)
		return;
	rc = mosquitto_disconnect_v5(c->m, 0, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_SUCCESS) {
		log_err("%s: disconnect: %s", c->id, mosquitto_strerror(rc));
		return;
	}
	c->ending = true;
	log_info("%s: its session holds nothing more: ending it", c->id);
	mqtt_schedule_flush(c->mw);     /* may run in a callback: never writes itself */
}

static void
mqtt_retire_steps(struct mqttw *mw)
{
	for (int i = mw->ncurrent; i < mw->nconns; i++)
		conn_retire_step(&mw->conns[i]);
}

/*
 * A retiring slot is done when every session ended and the spool took
 * every record of its outbox: its files go, and the supervisor does not
 * start it again.
 */
static void
mqtt_retire_check(struct mqttw *mw)
{
	char path[600];
	static const char *const files[] = { "ring", "recent", "sessions" };

	if (!mw->retire_slot || mw->stopping)
		return;
	for (int i = 0; i < mw->nconns; i++)
		if (!mw->conns[i].retired)
			return;
	if (outbox_depth(mw->ob) > 0 || mw->unsent_from < outbox_next_seq(mw->ob))
		return;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/outbox/%d.%s", mw->w->cf->state_dir,
		    mw->w->slot, files[i]);
		if (unlink(path) == -1 && errno != ENOENT)
			log_warn("%s: %s", path, strerror(errno));
	}
	log_notice("slot %d retired: its broker sessions ended and the spool took "
	    "everything its outbox held", mw->w->slot);
	mw->stopping = true;
	worker_exit(mw->w, WORKER_EXIT_RETIRED);
}

static void
on_unsubscribe(struct mosquitto *m, void *arg, int mid)
{
	struct mconn *c = arg;

	if (mid == 0 || mid != c->old_mid)
		return;
	c->old_mid = 0;
	if (c->retiring) {
		c->barrier_clear = c->rx_since_barrier == 0;
		conn_retire_step(c);
		return;
	}
	log_info("%s: dropped the subscriptions of an earlier configuration", c->id);
	c->nold = 0;
	mqtt_sessions_save(c->mw);
}

static void
on_connect(struct mosquitto *m, void *arg, int rc, int flags)
{
	struct mconn *c = arg;
	struct mqttw *mw = c->mw;
	char subs[NKINDS][MQTT_FILTER_MAX], *sp[NKINDS];
	int src, first = c->status ? 0 : 1;

	if (rc != 0) {
		log_ratelimited(LOG_ERR, "%s: the broker refused the connection: %s", c->id,
		    mosquitto_reason_string(rc));
		return;     /* libmosquitto closes it; on_disconnect retries */
	}
	c->connected = true;
	c->backoff_ms = 0;
	c->since_connack = 0;
	if (!(flags & 1) && c->cand != NULL) {
		/* No session present: the broker has nothing of ours to redeliver. */
		log_warn("%s: the broker had no session for us (expired or lost); "
		    "unacknowledged messages it held are gone with it", c->id);
		conn_cand_purge(c);
	}
	worker_count(mw->w, STAT_mqtt_connects, 1);
	log_info("%s connected to %s:%d", c->id, mw->host, mw->port);
	c->old_mid = 0;
	if (c->retiring) {
		/* Its first barrier: what the session queued comes before the UNSUBACK. */
		c->barrier_clear = false;
		conn_retire_step(c);
		conn_update_read(c);
		mqtt_schedule_flush(mw);
		return;
	}
	if (c->nold > 0)
		c->old_mid = conn_unsubscribe_old(c);
	for (int i = 0; i < NKINDS; i++) {
		mqtt_filter(mw, i, subs[i], sizeof(subs[i]));
		sp[i] = subs[i];
	}
	/*
	 * Status messages (and the Last Wills the broker publishes for devices)
	 * come through one connection only, mqtt worker 0's first: through
	 * several, a device's Will and its next "online" could reach the router
	 * swapped (read by different workers), leaving a connected device
	 * offline.  One connection gets them in the broker's order.  The others
	 * drop a status subscription their persistent session may still hold
	 * from an earlier configuration.
	 */
	if (!c->status &&
	    (src = mosquitto_unsubscribe(m, NULL, subs[KIND_STATUS])) != MOSQ_ERR_SUCCESS)
		log_err("%s: unsubscribe: %s", c->id, mosquitto_strerror(src));
	/* No retained messages at subscribe time: every (re)subscription would
	 * otherwise bring each device's retained status again, as a new message
	 * with a new id (a restarted worker re-sent the whole fleet's status).
	 * Live status messages, retained or not, still arrive as published. */
	src = mosquitto_subscribe_multiple(m, NULL, NKINDS - first, sp + first, 1,
	    MQTT_SUB_OPT_SEND_RETAIN_NEVER, NULL);
	if (src != MOSQ_ERR_SUCCESS)
		log_err("%s: subscribe: %s", c->id, mosquitto_strerror(src));
	conn_update_read(c);
	mqtt_schedule_flush(mw);
}

/* Connections that receive device traffic: what "herald is listening" means. */
static void
mqtt_gauge_subscribed(struct mqttw *mw)
{
	int64_t n = 0;

	for (int i = 0; i < mw->nconns; i++)
		n += mw->conns[i].subscribed;
	worker_gauge(mw->w, GAUGE_mqtt_subscribed, n);
}

static void
on_subscribe(struct mosquitto *m, void *arg, int mid, int n, const int *granted)
{
	struct mconn *c = arg;
	bool all = n == (c->status ? 4 : 3);

	for (int i = 0; i < n; i++)
		if (granted[i] > 2) {
			all = false;
			log_ratelimited(LOG_ERR, "%s: the broker refused subscription %d: %s "
			    "(check the ACL of herald's service account)", c->id, i,
			    mosquitto_reason_string(granted[i]));
		}
	c->subscribed = all;
	mqtt_gauge_subscribed(c->mw);
	/* Back after a lost connection (a broker restart): commands whose
	 * publish failed meanwhile wait for a 1 s retry at the router; a hello
	 * sends them now. */
	if (all && c->was_subscribed)
		worker_hello(c->mw->w);
	if (all)
		c->was_subscribed = true;
}

static void
on_disconnect(struct mosquitto *m, void *arg, int rc)
{
	conn_down(arg, rc == 0 ? MOSQ_ERR_SUCCESS : rc);
}

static struct mpub **
conn_pub_slot(struct mconn *c, uint16_t mid)
{
	struct mpub **pp = &c->pubs[mid % MQTT_PUB_BUCKETS];

	while (*pp != NULL && (*pp)->mid != mid)
		pp = &(*pp)->next;
	return pp;
}

static void
on_publish(struct mosquitto *m, void *arg, int mid, int reason, const mosquitto_property *props)
{
	struct mconn *c = arg;
	struct mpub **pp = conn_pub_slot(c, (uint16_t)mid), *p = *pp;
	uint32_t result = PUBLISHED_OK;

	if (p == NULL)
		return;     /* failed already when its connection dropped */
	*pp = p->next;
	if (--c->npubs == 0)
		conn_update_read(c);
	if (reason >= 0x80) {
		result = PUBLISHED_FAILED;
		log_ratelimited(LOG_WARNING, "%s: the broker refused a publish: %s", c->id,
		    mosquitto_reason_string(reason));
	} else {
		worker_count(c->mw->w, STAT_mqtt_published, 1);
		/* Taken, and dropped: no subscription matched its topic. */
		if (reason == MQTT_RC_NO_MATCHING_SUBSCRIBERS) {
			result = PUBLISHED_NO_SUBSCRIBER;
			worker_count(c->mw->w, STAT_mqtt_no_subscriber, 1);
		}
	}
	mqtt_published(c->mw, p->ref, result);
	free(p);
}

static void
on_log(struct mosquitto *m, void *arg, int level, const char *line)
{
	struct mconn *c = arg;

	if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING))
		log_ratelimited(LOG_WARNING, "%s: libmosquitto: %s", c->id, line);
	else
		log_debug("%s: libmosquitto: %s", c->id, line);
}

/* ---- connections ---- */

static void
conn_fail_pubs(struct mconn *c)
{
	for (int b = 0; b < MQTT_PUB_BUCKETS; b++)
		while (c->pubs[b] != NULL) {
			struct mpub *p = c->pubs[b];

			c->pubs[b] = p->next;
			mqtt_published(c->mw, p->ref, PUBLISHED_FAILED);
			free(p);
		}
	c->npubs = 0;
}

static void
conn_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	conn_start(arg);
}

static void
conn_schedule_retry(struct mconn *c)
{
	struct timeval tv;
	int64_t d;

	c->backoff_ms = c->backoff_ms == 0 ? MQTT_BACKOFF_MIN_MS : c->backoff_ms * 2;
	if (c->backoff_ms > MQTT_BACKOFF_MAX_MS)
		c->backoff_ms = MQTT_BACKOFF_MAX_MS;
	/* Jitter: all connections of all workers do not come back at once. */
	d = c->backoff_ms / 2 + random() % (c->backoff_ms / 2 + 1);
	tv.tv_sec = d / 1000;
	tv.tv_usec = (d % 1000) * 1000;
	evtimer_add(c->retry, &tv);
}

/* The connection is gone (libmosquitto closed the socket already, or will
 * when it is destroyed).  May run inside a libmosquitto call: never destroys. */
static void
conn_down(struct mconn *c, int rc)
{
	struct mqttw *mw = c->mw;

	/* libmosquitto reports a loss both by on_disconnect and by the return
	 * code of the call that saw it: handle it once. */
	if (!c->up)
		return;
	c->up = false;
	if (c->sock != -1) {
		if (c->reading)
			event_del(c->rev);
		if (c->writing)
			event_del(c->wev);
		c->reading = c->writing = false;
		c->sock = -1;
	}
	if (c->subscribed) {
		c->subscribed = false;
		mqtt_gauge_subscribed(mw);
	}
	if (c->ending) {
		c->ending = false;
		c->connected = false;
		conn_fail_pubs(c);
		if (rc == MOSQ_ERR_SUCCESS) {
			/* Our DISCONNECT left: the broker drops the session. */
			c->retired = true;
			log_notice("%s: broker session ended", c->id);
			mqtt_sessions_save(mw);
			return;
		}
		/* Not known to have left: resume the session and try again. */
	}
	if (c->connected) {
		c->connected = false;
		worker_count(mw->w, STAT_mqtt_disconnects, 1);
		if (mw->stopping)
			log_info("%s disconnected", c->id);
		else
			log_warn("%s lost its connection: %s", c->id,
			    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
	} else if (!mw->stopping) {
		log_ratelimited(LOG_WARNING, "%s: cannot connect to %s:%d: %s", c->id, mw->host,
		    mw->port, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
	}
	conn_fail_pubs(c);
	conn_recent_to_candidates(c, false);
	if (!mw->stopping && !evtimer_pending(c->retry, NULL))
		conn_schedule_retry(c);
}

/*
 * A fresh client for every attempt: nothing of a lost connection (queued
 * PUBACKs, publishes already reported failed) is replayed on the new one;
 * the broker redelivers what it did not get a PUBACK for.
 */
static void
conn_start(struct mconn *c)
{
	struct mqttw *mw = c->mw;
	mosquitto_property *props = NULL;
	int rc;

	if (c->rev != NULL)
		event_free(c->rev);
	if (c->wev != NULL)
		event_free(c->wev);
	c->rev = c->wev = NULL;
	c->up = false;
	if (c->m != NULL)
		mosquitto_destroy(c->m);
	c->sock = -1;
	c->m = mosq_new(c->id, false, c, false);
	if (c->m == NULL) {
		log_err("%s: mosquitto_new: %s", c->id, strerror(errno));
		conn_schedule_retry(c);
		return;
	}
	mosquitto_int_option(c->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
	mosquitto_int_option(c->m, MOSQ_OPT_RECEIVE_MAXIMUM, MQTT_RECEIVE_MAX);
	mosquitto_int_option(c->m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_threaded_set(c->m, true);
	if (mw->user[0] != '\0')
		mosquitto_username_pw_set(c->m, mw->user, mw->pass[0] ? mw->pass : NULL);
	mosquitto_connect_with_flags_callback_set(c->m, on_connect);
	mosquitto_disconnect_callback_set(c->m, on_disconnect);
	mosquitto_message_callback_set(c->m, on_message);
	mosquitto_subscribe_callback_set(c->m, on_subscribe);
	mosquitto_unsubscribe_callback_set(c->m, on_unsubscribe);
	mosquitto_publish_v5_callback_set(c->m, on_publish);
	/* libmosquitto formats a line per packet when it has a log callback. */
	if (log_get_level() >= LOG_DEBUG)
		mosquitto_log_callback_set(c->m, on_log);
	/*
	 * The session must outlive a dead worker (the broker keeps its
	 * unacknowledged messages), so CONNECT carries a session expiry.  2.0.11
	 * has no asynchronous connect with properties; mosquitto_connect_bind_v5()
	 * stores them before it validates the port, so an invalid port stores
	 * them without connecting, and mosquitto_connect_async() (like every
	 * reconnect) sends them (lib/connect.c).
	 */
	if (mosquitto_property_add_int32(&props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
	    MQTT_SESSION_EXPIRY_S) != MOSQ_ERR_SUCCESS) {
		log_err("%s: out of memory", c->id);
		conn_schedule_retry(c);
		return;
	}
	rc = mosquitto_connect_bind_v5(c->m, mw->host, -1, mw->keepalive, NULL, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_INVAL)
		log_warn("%s: unexpected answer storing the CONNECT properties: %s", c->id,
		    mosquitto_strerror(rc));
	rc = mosquitto_connect_async(c->m, mw->host, mw->port, mw->keepalive);
	if (rc != MOSQ_ERR_SUCCESS || mosquitto_socket(c->m) == -1) {
		log_ratelimited(LOG_WARNING, "%s: cannot connect to %s:%d: %s", c->id, mw->host,
		    mw->port, rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		conn_schedule_retry(c);
		return;
	}
	c->sock = mosquitto_socket(c->m);
	/* Nothing was written yet: the CONNECT waits in libmosquitto's queue. */
	c->buffered = mosq_io_attach(c->sock) == 0 && mosq_io_hold_acks(c->sock) == 0;
	if (!c->buffered)
		log_warn("%s: unbuffered socket I/O (%s)", c->id, strerror(errno));
	c->rev = event_new(mw->w->base, c->sock, EV_READ | EV_PERSIST, conn_read_cb, c);
	c->wev = event_new(mw->w->base, c->sock, EV_WRITE | EV_PERSIST, conn_write_cb, c);
	if (c->rev == NULL || c->wev == NULL) {
		log_err("%s: event_new failed", c->id);
		mosquitto_disconnect(c->m);
		c->sock = -1;
		conn_schedule_retry(c);
		return;
	}
	c->reading = c->writing = false;
	c->bye_sent = false;
	c->up = true;
	c->last_read_ms = mono_ms();
	conn_update_read(c);
	mqtt_schedule_flush(mw);    /* the CONNECT is queued: write it when connected */
}

/* ---- keepalive, pause, resend ---- */

static void
mqtt_tick(evutil_socket_t fd, short what, void *arg)
{
	struct mqttw *mw = arg;
	int64_t now = mono_ms();

	if (mw->nheld_pubs > 0 && access(mw->hold_pub_file, F_OK) == -1) {
		struct msg_published *held = mw->held_pubs;
		size_t n = mw->nheld_pubs;

		mw->held_pubs = NULL;
		mw->nheld_pubs = 0;
		for (size_t i = 0; i < n; i++)
			mqtt_published(mw, held[i].ref, held[i].result);
		free(held);
	}

	for (int i = 0; i < mw->nconns; i++) {
		struct mconn *c = &mw->conns[i];

		if (c->sock == -1)
			continue;
		/*
		 * Paused, libmosquitto would not see the PINGRESP and would drop
		 * the connection at the next keepalive.  So a paused connection
		 * still reads what has arrived every half keepalive (what the
		 * broker had in flight, and the PINGRESP behind it); those
		 * messages go to the outbox (durable) like any other, the broker
		 * holds the rest.  When the outbox itself is full nothing is
		 * read, and the connection is dropped by its keepalive and comes
		 * back (nothing is lost: the broker redelivers to the session).
		 */
		if (!mqtt_may_read(mw) && !mw->stopping && c->connected &&
		    now - c->last_read_ms >= (int64_t)mw->keepalive * 500)
			conn_read(c, MQTT_RECEIVE_MAX + 16, true);
		if (c->sock != -1) {
			int rc = mosquitto_loop_misc(c->m);

			if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
				conn_down(c, rc);
		}
	}
	mqtt_check_room(mw);
	if (mw->sess_unsaved)
		mqtt_sessions_save(mw);
	mqtt_retire_steps(mw);
	mqtt_retire_check(mw);
	mqtt_schedule_flush(mw);
}

static void
mqtt_set_paused(struct mqttw *mw, bool paused)
{
	if (paused == mw->paused_spool)
		return;
	mw->paused_spool = paused;
	log_info("%s device reading (spool backpressure)", paused ? "pausing" : "resuming");
	mqtt_update_reading(mw);
	if (!paused)
		mqtt_schedule_flush(mw);    /* the PUBACKs held meanwhile leave */
}

/* ---- fabric ---- */

static void
mqtt_publish(struct mqttw *mw, const struct msg_publish *p)
{
	struct mconn *c = NULL;
	struct mpub **pp, *n;
	int mid = 0, rc;

	if (p->topic.len == 0 || p->topic.len > MQTT_TOPIC_MAX ||
	    memchr(p->topic.p, '\0', p->topic.len) != NULL || p->qos > 2 ||
	    p->payload.len > MQTT_MAX_PAYLOAD) {
		log_ratelimited(LOG_WARNING, "publish %llu refused: bad topic, QoS or size",
		    (unsigned long long)p->ref);
		mqtt_published(mw, p->ref, PUBLISHED_FAILED);
		return;
	}
	for (int i = 0; i < mw->ncurrent; i++) {
		struct mconn *t = &mw->conns[(mw->rr + i) % mw->ncurrent];

		if (t->connected && t->sock != -1) {
			c = t;
			mw->rr = (t->idx + 1) % mw->ncurrent;
			break;
		}
	}
	if (c == NULL) {
		log_ratelimited(LOG_WARNING, "publish %llu: no broker connection",
		    (unsigned long long)p->ref);
		mqtt_published(mw, p->ref, PUBLISHED_FAILED);
		return;
	}
	memcpy(mw->topic, p->topic.p, p->topic.len);
	mw->topic[p->topic.len] = '\0';
	rc = mosquitto_publish_v5(c->m, &mid, mw->topic, (int)p->payload.len, p->payload.p,
	    (int)p->qos, p->retain != 0, NULL);
	if (rc != MOSQ_ERR_SUCCESS) {
		log_ratelimited(LOG_WARNING, "publish to %.100s: %s", mw->topic,
		    mosquitto_strerror(rc));
		mqtt_published(mw, p->ref, PUBLISHED_FAILED);
		return;
	}
	pp = conn_pub_slot(c, (uint16_t)mid);
	if (*pp != NULL) {
		/* 65535 publishes in flight on one connection: the oldest lost its mid. */
		n = *pp;
		*pp = n->next;
		mqtt_published(mw, n->ref, PUBLISHED_FAILED);
		free(n);
		c->npubs--;
	}
	n = malloc(sizeof(*n));
	if (n == NULL) {
		log_err("out of memory");
		mqtt_published(mw, p->ref, PUBLISHED_FAILED);
		return;
	}
	n->mid = (uint16_t)mid;
	n->ref = p->ref;
	n->next = c->pubs[(uint16_t)mid % MQTT_PUB_BUCKETS];
	c->pubs[(uint16_t)mid % MQTT_PUB_BUCKETS] = n;
	if (++c->npubs == 1)
		conn_update_read(c);
	if (!c->buffered)
		mw->urgent = true;      /* its write waits for a sync: make it now */
	else if (mw->sync_failing)
		conn_write(c);          /* no flush runs before the next sync retry */
	mqtt_schedule_flush(mw);
}

static void
mqtt_acks(struct mqttw *mw)
{
	uint64_t n = 0;

	if (mw->ack.slot != (uint32_t)mw->w->slot || mw->ack.epoch != outbox_epoch(mw->ob)) {
		log_debug("ack for slot %u epoch %llu ignored (ours: %d, %u)", mw->ack.slot,
		    (unsigned long long)mw->ack.epoch, mw->w->slot, outbox_epoch(mw->ob));
		return;
	}
	for (uint32_t i = 0; i < mw->ack.n; i++)
		if (outbox_ack(mw->ob, mw->ack.seqs[i]) == 0)
			n++;
	worker_count(mw->w, STAT_outbox_acked, n);
	mqtt_check_room(mw);
	mqtt_retire_check(mw);
}

static void
mqtt_fabric(struct worker *w, const char *peer, struct hmr *r)
{
	struct mqttw *mw = w->arg;
	struct msg_publish p;

	switch (r->type) {
	case HM_FAB_ACK:
		if (proto_read_ack(r, &mw->ack) == -1)
			goto bad;
		mqtt_acks(mw);
		break;
	case HM_FAB_PAUSE:
	case HM_FAB_RESUME:
		if (hmr_end(r) == -1)
			goto bad;
		mqtt_set_paused(mw, r->type == HM_FAB_PAUSE);
		break;
	case HM_FAB_PUBLISH:
		if (proto_read_publish(r, &p) == -1)
			goto bad;
		if (mw->stopping)
			mqtt_published(mw, p.ref, PUBLISHED_FAILED);
		else
			mqtt_publish(mw, &p);
		break;
	default:
		goto bad;
	}
	return;
bad:
	worker_bad_msg(w, r->type, NULL);
}

/* ---- stop ---- */

static void
mqtt_stop_step(evutil_socket_t fd, short what, void *arg)
{
	struct mqttw *mw = arg;
	struct timeval tv = { 0, MQTT_STOP_POLL_MS * 1000 };
	bool open = false;

	mqtt_flush_ex(mw, true);
	for (int i = 0; i < mw->nconns; i++) {
		struct mconn *c = &mw->conns[i];

		if (c->sock == -1)
			continue;
		/* The PUBACKs first, then a clean DISCONNECT (the session stays). */
		if (!mw->sync_failing && !mosquitto_want_write(c->m) && !c->bye_sent) {
			c->bye_sent = true;
			mosquitto_disconnect(c->m);
			conn_write(c);
		}
		if (c->sock != -1)
			open = true;
	}
	if (open && mono_ms() < mw->stop_deadline) {
		evtimer_add(mw->stop_ev, &tv);
		return;
	}
	if (open)
		log_warn("stop: connections still busy after %d ms, leaving", MQTT_STOP_DEADLINE_MS);
	mqtt_send_new(mw);
	if (mqtt_sync(mw) == -1)
		log_err("outbox msync: %s", strerror(errno));
	for (int i = 0; i < mw->nconns; i++)
		conn_fail_pubs(&mw->conns[i]);
	worker_exit(mw->w, 0);
}

static void
mqtt_stop(struct worker *w)
{
	struct mqttw *mw = w->arg;

	mw->stopping = true;
	mw->stop_deadline = mono_ms() + MQTT_STOP_DEADLINE_MS;
	mqtt_update_reading(mw);
	for (int i = 0; i < mw->nconns; i++)
		evtimer_del(mw->conns[i].retry);
	mqtt_stop_step(-1, 0, mw);
}

static json_t *
mqtt_admin(struct worker *w, int argc, char **argv)
{
	struct mqttw *mw = w->arg;
	json_t *conns;

	if (strcmp(argv[0], "outbox") != 0 && strcmp(argv[0], "mqtt") != 0)
		return NULL;
	conns = json_array();
	for (int i = 0; i < mw->nconns; i++)
		json_array_append_new(conns, json_pack("{s:s,s:b,s:b}", "client_id",
		    mw->conns[i].id, "connected", mw->conns[i].connected,
		    "retiring", mw->conns[i].retiring && !mw->conns[i].retired));
	return json_pack("{s:i,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:b,s:b,s:b,s:o}",
	    "slot", w->slot,
	    "retiring", mw->retire_slot,
	    "epoch", (json_int_t)outbox_epoch(mw->ob),
	    "depth", (json_int_t)outbox_depth(mw->ob),
	    "bytes", (json_int_t)outbox_bytes(mw->ob),
	    "capacity", (json_int_t)outbox_capacity(mw->ob),
	    "room", (json_int_t)outbox_room(mw->ob),
	    "next_seq", (json_int_t)outbox_next_seq(mw->ob),
	    "paused_spool", mw->paused_spool,
	    "paused_full", mw->paused_full,
	    "sync_failing", mw->sync_failing,     /* PUBACKs held until a sync works */
	    "connections", conns);
}

/* ---- setup ---- */

static int
mqtt_setup(struct worker *w, struct mqttw *mw)
{
	struct config *cf = w->cf;
	char path[600], err[512];
	const char *die;
	struct sess_rec *recs = NULL;
	int nrec;
	size_t ncand = 0;

	mw->w = w;
	strlcpy_h(mw->host, cf->mqtt_host, sizeof(mw->host));
	strlcpy_h(mw->user, cf->mqtt_username, sizeof(mw->user));
	strlcpy_h(mw->pass, cf->mqtt_password, sizeof(mw->pass));
	strlcpy_h(mw->group, cf->share_group, sizeof(mw->group));
	mw->port = cf->mqtt_port;
	mw->keepalive = cf->keepalive < 5 ? 5 : cf->keepalive;
	mw->fsync = cf->spool_fsync;
	mw->retire_slot = w->slot >= cf->mqtt_workers;
	mw->ncurrent = mw->retire_slot ? 0 :
	    cf->connections_per_worker < 1 ? 1 : cf->connections_per_worker;

	snprintf(path, sizeof(path), "%s/outbox/%d.ring", cf->state_dir, w->slot);
	mw->ob = outbox_open(path, cf->outbox_bytes, err, sizeof(err));
	if (mw->ob == NULL) {
		log_err("outbox: %s", err);
		return -1;
	}
	outbox_set_fsync(mw->ob, mw->fsync);
	/*
	 * Message ids hold the node's hash (msgid_make): the one of the
	 * node_name this outbox's epoch began with, kept in its header, so a
	 * record sent again after a new node_name keeps its id.
	 */
	if ((mw->node_hash = outbox_tag(mw->ob)) == 0) {
		mw->node_hash = hash32(cf->node_name, strlen(cf->node_name)) | 0x80000000u;
		if (outbox_set_tag(mw->ob, mw->node_hash) == -1)
			log_warn("outbox: cannot keep the node's hash in its header (%s); a "
			    "new node_name would give records sent again new ids", strerror(errno));
	}
	/* Longer payloads are over max_payload whatever e2e adds: cut them. */
	mw->trunc_limit = cf->max_payload + OUTBOX_TRUNC_EXTRA;
	mw->high_water = outbox_high_water(cf->max_payload);
	if (outbox_capacity(mw->ob) < 2 * mw->high_water) {
		/* config_validate refuses this; a file of another size may remain */
		log_err("[mqtt] outbox_bytes (%zu) is too small for [limits] max_payload (%zu): "
		    "it needs at least %zu", cf->outbox_bytes, cf->max_payload,
		    outbox_min_bytes(cf->max_payload));
		return WORKER_EXIT_FATAL;
	}
	mw->unsent_from = outbox_next_seq(mw->ob);
	mw->startup_from = outbox_depth(mw->ob) > 0 ? 1 : 0;
	worker_gauge(w, GAUGE_outbox_depth, (int64_t)outbox_depth(mw->ob));

	mw->sync_fail_file = mqtt_test_file("HERALD_TEST_SYNC_FAIL", "outbox syncs fail");
	mw->hold_pub_file = mqtt_test_file("HERALD_TEST_HOLD_PUBLISHED",
	    "broker acknowledgements wait");
	die = getenv("HERALD_TEST_DIE_AFTER_APPEND");
	if (die != NULL && *die != '\0') {
		snprintf(mw->die_marker, sizeof(mw->die_marker), "%s/outbox/%d.test-died",
		    cf->state_dir, w->slot);
		mw->die_after = access(mw->die_marker, F_OK) == 0 ? 0 : strtol(die, NULL, 10);
		if (mw->die_after > 0)
			log_warn("HERALD_TEST_DIE_AFTER_APPEND=%ld: this worker will exit 99 after "
			    "that many appends", mw->die_after);
	}

	mw->flush_ev = event_new(w->base, -1, 0, mqtt_flush_cb, mw);
	mw->tick_ev = event_new(w->base, -1, EV_PERSIST, mqtt_tick, mw);
	mw->resend_ev = evtimer_new(w->base, mqtt_resend_tick, mw);
	mqtt_peers_restarted(mw);
	mw->router_ev = event_new(w->base, -1, EV_PERSIST, mqtt_router_watch, mw);
	mw->router_gen = worker_generation_of(w, ROLE_ROUTER, 0);
	mw->stop_ev = evtimer_new(w->base, mqtt_stop_step, mw);
	mw->sync_ev = evtimer_new(w->base, mqtt_sync_cb, mw);
	/* The configured connections, then one for each recorded session of
	 * a client id they do not use (see "broker sessions"). */
	snprintf(mw->sess_path, sizeof(mw->sess_path), "%s/outbox/%d.sessions", cf->state_dir,
	    w->slot);
	nrec = mqtt_sessions_load(mw, cf, &recs);
	mw->nconns = mw->ncurrent;
	for (int r = 0; r < nrec; r++) {
		char id[sizeof(mw->conns[0].id)];
		bool current = false;

		for (int i = 0; i < mw->ncurrent; i++) {
			snprintf(id, sizeof(id), "%s-mqtt-%d-%d", cf->node_name, w->slot, i);
			current |= strcmp(id, recs[r].id) == 0;
		}
		mw->nconns += !current;
	}
	mw->conns = calloc((size_t)mw->nconns + 1, sizeof(*mw->conns));
	if (mw->flush_ev == NULL || mw->tick_ev == NULL || mw->resend_ev == NULL ||
	    mw->router_ev == NULL ||
	    mw->stop_ev == NULL || mw->sync_ev == NULL || mw->conns == NULL || nrec < 0) {
		log_err("out of memory");
		free(recs);
		return -1;
	}
	for (int i = 0; i < mw->nconns; i++) {
		struct mconn *c = &mw->conns[i];

		c->mw = mw;
		c->idx = i;
		c->sock = -1;
		/* Stable across restarts: the broker keeps each one's session. */
		if (i < mw->ncurrent)
			snprintf(c->id, sizeof(c->id), "%s-mqtt-%d-%d", cf->node_name, w->slot, i);
		c->status = w->slot == 0 && i == 0 && !mw->retire_slot;
		c->retry = evtimer_new(w->base, conn_retry_cb, c);
		c->again = evtimer_new(w->base, conn_read_cb, c);
		if (c->retry == NULL || c->again == NULL) {
			free(recs);
			return -1;
		}
	}
	mqtt_sessions_apply(mw, recs, nrec);
	free(recs);
	snprintf(path, sizeof(path), "%s/outbox/%d.recent", cf->state_dir, w->slot);
	mqtt_recent_open(mw, path);
	if (mw->recent_map == NULL) {
		log_err("out of memory");
		return -1;
	}
	for (int i = 0; i < mw->nconns; i++) {
		conn_recent_to_candidates(&mw->conns[i], true);
		ncand += mw->conns[i].ncand;
	}
	snprintf(path, sizeof(path), "%s/outbox/%d.ring", cf->state_dir, w->slot);
	log_info("outbox %s: epoch %u, %zu records to send again, %zu recent ones watched "
	    "for redelivery, next sequence %llu", path, outbox_epoch(mw->ob), outbox_depth(mw->ob),
	    ncand, (unsigned long long)outbox_next_seq(mw->ob));
	return 0;
}

int
mqtt_main(struct worker *w)
{
	struct mqttw *mw = calloc(1, sizeof(*mw));
	struct timeval tick = { MQTT_TICK_MS / 1000, (MQTT_TICK_MS % 1000) * 1000 };
	struct timeval router_tv = { 0, MQTT_ROUTER_WATCH_MS * 1000 };
	struct timeval now = { 0, 0 };
	int rc;

	if (mw == NULL)
		return 1;
	srandom((unsigned)(mono_us() ^ ((uint64_t)getpid() << 16)));
	mosquitto_lib_init();
	rc = mqtt_setup(w, mw);
	if (rc != 0)
		return rc == WORKER_EXIT_FATAL ? WORKER_EXIT_FATAL : 1;
	w->arg = mw;
	w->hooks.fabric = mqtt_fabric;
	w->hooks.stop = mqtt_stop;
	w->hooks.admin = mqtt_admin;
	if (worker_join_fabric(w) == -1 || worker_lane_out(w, "crypto") == -1) {
		log_err("cannot join the fabric");
		return 1;
	}
	event_add(mw->tick_ev, &tick);
	event_add(mw->router_ev, &router_tv);
	evtimer_add(mw->resend_ev, &now);
	for (int i = 0; i < mw->nconns; i++)
		conn_start(&mw->conns[i]);
	rc = worker_loop(w);
	for (int i = 0; i < mw->nconns; i++)
		if (mw->conns[i].m != NULL)
			mosquitto_destroy(mw->conns[i].m);
	outbox_close(mw->ob);
	mosquitto_lib_cleanup();
	return rc;
}
