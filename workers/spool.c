/*
 * The durable spool of the http worker: the queue of envelopes in segment
 * files (segq.c), the dead-letter store in LMDB.  A redo log of the LMDB
 * changes of the open batch lets one dead-letter put that hits MDB_MAP_FULL
 * be refused alone (the transaction is aborted and the batch's other LMDB
 * changes are re-applied); queue changes are not redone, they are made once.
 *
 * A batch commits LMDB first, then the queue: an envelope moved to the
 * dead letters is never only in neither.  A replay commits the queue first.
 * When a crash leaves an envelope in both, opening keeps the dead letter.
 * Envelopes of an older herald, queued in LMDB, move to segments on open.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <lmdb.h>

#include "log.h"
#include "util.h"
#include "spool.h"
#include "segq.h"

#define SPOOL_VER        1
#define SPOOL_SLACK_MIN  (1u << 20)
#define SPOOL_SLACK_MAX  (64u << 20)
#define SPOOL_GROW_TRIES 4

/* Value of a "q" record: this header, then id, device, JSON. */
struct qhdr {
	uint8_t  ver;
	uint8_t  idlen;
	uint8_t  devlen;
	uint8_t  flags;
	uint32_t jsonlen;
	int64_t  received_ms;
};

/* Value of a "dead" record: this header, then device, topic, reason, detail, data. */
struct dhdr {
	uint8_t  ver;
	uint8_t  flags;
	uint8_t  devlen;
	uint8_t  reasonlen;
	uint16_t detaillen;
	uint16_t topiclen;
	int32_t  status;
	uint32_t datalen;
	int64_t  received_ms;
	int64_t  dead_ms;
};
#define DEAD_REPLAYABLE 0x01

enum op_type {
	OP_PUT, OP_DEL, OP_DEAD_PUT, OP_DEAD_MOVE, OP_DEAD_REPLAY, OP_DEAD_DEL,
	OP_DEAD_DROP, OP_DEAD_TRIM
};

/*
 * One change.  Blobs are pointers while the op is applied; in the redo log
 * they are offsets into the arena (which may move while it grows).
 * PUT: 0 id, 1 device, 2 json.  DEAD_PUT: 0 id, 1 device, 2 topic, 3 reason,
 * 4 detail, 5 data.  DEAD_MOVE: 2 topic, 3 reason, 4 detail.  DEAD_REPLAY,
 * DEAD_DEL: 0 id.
 */
#define OP_NBLOB 6
struct op {
	int         type;
	uint64_t    seq;
	int64_t     received_ms;
	int64_t     dead_ms;
	int         status;
	bool        replayable;
	bool        refusable;  /* may be dropped when the map is full */
	bool        overwrite;  /* DEAD_PUT: replace a record of the same id */
	size_t      trim_max;   /* DEAD_TRIM: entries to drop, at most */
	size_t      trimmed;    /* DEAD_TRIM: entries dropped */
	const char *p[OP_NBLOB];
	size_t      len[OP_NBLOB];
	size_t      off[OP_NBLOB];
};

struct spool {
	MDB_env  *env;
	MDB_dbi   q, ids, dead, meta;   /* q, ids: only to read an older spool */
	struct segq *sq;        /* the queue */
	MDB_txn  *txn;          /* the open write transaction (dead letters) */
	MDB_txn  *rtxn;         /* reused read transaction (MDB_NOTLS) */
	bool      rtxn_live;
	bool      batch;        /* between spool_begin and spool_commit */
	bool      full;         /* a put of this batch hit MAP_FULL */
	bool      dirty;        /* this batch changed something */
	bool      dead_empty;   /* no dead record: a put need not look there */
	bool      queue_first;  /* commit the queue before LMDB (a replay) */
	enum fsync_mode fsync;
	size_t    map_size;
	size_t    put_cap;      /* queued bytes never exceed the first map size */
	uint64_t  next_seq;     /* the sequence the next put gets */
	uint64_t  batch_seq;    /* next_seq when the batch began */
	struct op *redo;
	size_t    nredo, redocap;
	char     *arena;
	size_t    arenalen, arenacap;
	char     *scratch;
	size_t    scratchcap;
	char      trim_from[SPOOL_ID_MAX];  /* where the next trim looks first */
	size_t    trim_fromlen;             /* 0: from the oldest */
};

static uint64_t
spool_seq_from_key(const MDB_val *k)
{
	const uint8_t *p = k->mv_data;
	uint64_t v = 0;

	if (k->mv_size != 8)
		return 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static int
spool_grow_buf(char **buf, size_t *cap, size_t need)
{
	size_t n = *cap ? *cap : 4096;
	char *p;

	if (need <= *cap)
		return 0;
	while (n < need)
		n *= 2;
	if ((p = realloc(*buf, n)) == NULL)
		return -1;
	*buf = p;
	*cap = n;
	return 0;
}

static int
spool_q_parse(const MDB_val *k, const MDB_val *v, struct spool_rec *r)
{
	struct qhdr h;
	const char *p = v->mv_data;

	if (v->mv_size < sizeof(h))
		return -1;
	memcpy(&h, p, sizeof(h));
	if (h.ver != SPOOL_VER ||
	    sizeof(h) + h.idlen + h.devlen + (size_t)h.jsonlen != v->mv_size)
		return -1;
	r->seq = spool_seq_from_key(k);
	r->received_ms = h.received_ms;
	r->id = p + sizeof(h);
	r->idlen = h.idlen;
	r->device = r->id + h.idlen;
	r->devlen = h.devlen;
	r->json = r->device + h.devlen;
	r->jsonlen = h.jsonlen;
	return 0;
}

static int
spool_dead_parse(const MDB_val *k, const MDB_val *v, struct spool_dead *d)
{
	struct dhdr h;
	const char *p = v->mv_data;

	if (v->mv_size < sizeof(h))
		return -1;
	memcpy(&h, p, sizeof(h));
	if (h.ver != SPOOL_VER || sizeof(h) + h.devlen + h.topiclen + h.reasonlen +
	    h.detaillen + (size_t)h.datalen != v->mv_size)
		return -1;
	memset(d, 0, sizeof(*d));
	d->id = k->mv_data;
	d->idlen = k->mv_size;
	d->device = p + sizeof(h);
	d->devlen = h.devlen;
	d->topic = d->device + h.devlen;
	d->topiclen = h.topiclen;
	d->reason = d->topic + h.topiclen;
	d->reasonlen = h.reasonlen;
	d->detail = d->reason + h.reasonlen;
	d->detaillen = h.detaillen;
	d->data = d->detail + h.detaillen;
	d->datalen = h.datalen;
	d->status = h.status;
	d->received_ms = h.received_ms;
	d->dead_ms = h.dead_ms;
	d->replayable = (h.flags & DEAD_REPLAYABLE) != 0;
	return 0;
}

static void
spool_rtxn_end(struct spool *s)
{
	if (s->rtxn_live) {
		mdb_txn_reset(s->rtxn);
		s->rtxn_live = false;
	}
}

/* The transaction reads go through: the open write one, else the read one. */
static MDB_txn *
spool_rtxn(struct spool *s)
{
	int rc;

	if (s->txn != NULL)
		return s->txn;
	if (s->rtxn_live)
		return s->rtxn;
	if (s->rtxn == NULL)
		rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn);
	else
		rc = mdb_txn_renew(s->rtxn);
	if (rc == MDB_MAP_RESIZED) {
		mdb_env_set_mapsize(s->env, 0);
		rc = s->rtxn == NULL ?
		    mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->rtxn) :
		    mdb_txn_renew(s->rtxn);
	}
	if (rc != 0) {
		log_ratelimited(LOG_ERR, "spool: read transaction: %s", mdb_strerror(rc));
		return NULL;
	}
	s->rtxn_live = true;
	return s->rtxn;
}

static int
spool_txn_start(struct spool *s)
{
	MDB_stat st;
	int rc;

	spool_rtxn_end(s);
	rc = mdb_txn_begin(s->env, NULL, 0, &s->txn);
	if (rc == MDB_MAP_RESIZED) {
		mdb_env_set_mapsize(s->env, 0);
		rc = mdb_txn_begin(s->env, NULL, 0, &s->txn);
	}
	if (rc != 0) {
		s->txn = NULL;
		log_err("spool: write transaction: %s", mdb_strerror(rc));
		return -1;
	}
	s->dead_empty = mdb_stat(s->txn, s->dead, &st) == 0 && st.ms_entries == 0;
	return 0;
}

static void
spool_txn_drop(struct spool *s)
{
	if (s->txn != NULL)
		mdb_txn_abort(s->txn);
	s->txn = NULL;
}

/* A bigger map, when a change that must not be refused found it full. */
static int
spool_grow(struct spool *s)
{
	long pg = sysconf(_SC_PAGESIZE);
	size_t add = s->map_size / 4, nsz;
	int rc;

	if (add < SPOOL_SLACK_MIN)
		add = SPOOL_SLACK_MIN;
	nsz = (s->map_size + add + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
	if (s->rtxn != NULL) {
		mdb_txn_abort(s->rtxn);
		s->rtxn = NULL;
		s->rtxn_live = false;
	}
	if ((rc = mdb_env_set_mapsize(s->env, nsz)) != 0) {
		log_err("spool: grow the map to %zu bytes: %s", nsz, mdb_strerror(rc));
		return -1;
	}
	log_warn("spool: map full, grown from %zu to %zu bytes", s->map_size, nsz);
	s->map_size = nsz;
	return 0;
}

/* Is the id a dead letter?  0 yes, MDB_NOTFOUND no, else an LMDB error. */
static int
spool_dead_has(struct spool *s, const char *id, size_t idlen)
{
	MDB_val k = { idlen, (void *)id }, v;
	MDB_txn *t;

	if (s->dead_empty)
		return MDB_NOTFOUND;
	if ((t = spool_rtxn(s)) == NULL)
		return EIO;
	return mdb_get(t, s->dead, &k, &v);
}

/* Into the queue with the next sequence; the id is new (checked by callers). */
static int
spool_q_put(struct spool *s, const char *id, size_t idlen, const char *dev,
    size_t devlen, int64_t received_ms, const char *json, size_t jsonlen,
    uint64_t *seqp, int *res)
{
	/* Room the map grew by is for deletions, not for more envelopes. */
	if (segq_bytes(s->sq) + jsonlen > s->put_cap) {
		*res = SPOOL_FULL;
		return 0;
	}
	switch (segq_put(s->sq, s->next_seq, id, idlen, dev, devlen, received_ms,
	    json, jsonlen)) {
	case 0:
		*seqp = s->next_seq++;
		*res = SPOOL_OK;
		return 0;
	case 1:
		*res = SPOOL_FULL;      /* the segment is full until the commit */
		return 0;
	default:
		return ENOMEM;
	}
}

static int
spool_op_put(struct spool *s, struct op *op, int *res)
{
	uint64_t old;
	int rc;

	if (op->len[0] == 0 || op->len[0] > SPOOL_ID_MAX ||
	    op->len[1] > SPOOL_DEVICE_MAX || op->len[2] > UINT32_MAX) {
		*res = SPOOL_INVAL;
		return 0;
	}
	if (segq_find_id(s->sq, op->p[0], op->len[0], &old)) {
		*res = SPOOL_DUP;
		return 0;
	}
	rc = spool_dead_has(s, op->p[0], op->len[0]);
	if (rc == 0) {
		*res = SPOOL_DUP;
		return 0;
	}
	if (rc != MDB_NOTFOUND)
		return rc;
	return spool_q_put(s, op->p[0], op->len[0], op->p[1], op->len[1],
	    op->received_ms, op->p[2], op->len[2], &op->seq, res);
}

static int
spool_op_del(struct spool *s, struct op *op, int *res)
{
	size_t jsonlen;

	*res = segq_del(s->sq, op->seq, &jsonlen);
	return *res == SPOOL_ERR ? ENOMEM : 0;
}

static size_t
spool_clamp(size_t n, size_t max)
{
	return n < max ? n : max;
}

/* Write a dead record; existing: keep the old one (SPOOL_DUP) or overwrite. */
static int
spool_dead_write(struct spool *s, const struct spool_dead *d, bool overwrite, int *res)
{
	struct dhdr h;
	MDB_val k, v;
	char *p;
	int rc;

	memset(&h, 0, sizeof(h));
	h.ver = SPOOL_VER;
	h.flags = d->replayable ? DEAD_REPLAYABLE : 0;
	h.devlen = (uint8_t)spool_clamp(d->devlen, SPOOL_DEVICE_MAX);
	h.topiclen = (uint16_t)spool_clamp(d->topiclen, SPOOL_TOPIC_MAX);
	h.reasonlen = (uint8_t)spool_clamp(d->reasonlen, SPOOL_REASON_MAX);
	h.detaillen = (uint16_t)spool_clamp(d->detaillen, SPOOL_DETAIL_MAX);
	h.status = d->status;
	h.datalen = (uint32_t)d->datalen;
	h.received_ms = d->received_ms;
	h.dead_ms = d->dead_ms;
	k.mv_data = (void *)d->id;
	k.mv_size = d->idlen;
	v.mv_data = NULL;
	v.mv_size = sizeof(h) + h.devlen + h.topiclen + h.reasonlen + h.detaillen +
	    h.datalen;
	rc = mdb_put(s->txn, s->dead, &k, &v,
	    MDB_RESERVE | (overwrite ? 0 : MDB_NOOVERWRITE));
	if (rc == 0)
		s->dead_empty = false;
	if (rc == MDB_KEYEXIST) {
		*res = SPOOL_DUP;
		return 0;
	}
	if (rc != 0)
		return rc;
	p = v.mv_data;
	memcpy(p, &h, sizeof(h));
	p += sizeof(h);
	/* Empty fields may come as NULL (a message of no valid device has no
	 * device): memcpy must not see those. */
	if (h.devlen > 0)
		memcpy(p, d->device, h.devlen);
	p += h.devlen;
	if (h.topiclen > 0)
		memcpy(p, d->topic, h.topiclen);
	p += h.topiclen;
	if (h.reasonlen > 0)
		memcpy(p, d->reason, h.reasonlen);
	p += h.reasonlen;
	if (h.detaillen > 0)
		memcpy(p, d->detail, h.detaillen);
	p += h.detaillen;
	if (h.datalen > 0)
		memcpy(p, d->data, h.datalen);
	*res = SPOOL_OK;
	return 0;
}

static int
spool_op_dead_put(struct spool *s, struct op *op, int *res)
{
	struct spool_dead d;
	uint64_t old;

	if (op->len[0] == 0 || op->len[0] > SPOOL_ID_MAX || op->len[5] > UINT32_MAX) {
		*res = SPOOL_INVAL;
		return 0;
	}
	/* Already queued as an envelope: that copy wins. */
	if (!op->overwrite && segq_find_id(s->sq, op->p[0], op->len[0], &old)) {
		*res = SPOOL_DUP;
		return 0;
	}
	memset(&d, 0, sizeof(d));
	d.id = op->p[0];
	d.idlen = op->len[0];
	d.device = op->p[1];
	d.devlen = op->len[1];
	d.topic = op->p[2];
	d.topiclen = op->len[2];
	d.reason = op->p[3];
	d.reasonlen = op->len[3];
	d.detail = op->p[4];
	d.detaillen = op->len[4];
	d.data = op->p[5];
	d.datalen = op->len[5];
	d.status = op->status;
	d.received_ms = op->received_ms;
	d.dead_ms = op->dead_ms;
	d.replayable = op->replayable;
	return spool_dead_write(s, &d, op->overwrite, res);
}

/*
 * The dead letter is written first, then the envelope leaves the queue (a
 * retry after MAP_FULL finds it still queued).  The op becomes the dead
 * letter's put, which is what a redo of the LMDB transaction repeats.
 */
static int
spool_op_dead_move(struct spool *s, struct op *op, int *res)
{
	struct spool_rec r;
	struct spool_dead d;
	size_t jsonlen;
	int rc;

	if ((*res = segq_get(s->sq, op->seq, &r)) != SPOOL_OK)
		return *res == SPOOL_ERR ? EIO : 0;
	memset(&d, 0, sizeof(d));
	d.id = r.id;
	d.idlen = r.idlen;
	d.device = r.device;
	d.devlen = r.devlen;
	d.topic = op->p[2];
	d.topiclen = op->len[2];
	d.reason = op->p[3];
	d.reasonlen = op->len[3];
	d.detail = op->p[4];
	d.detaillen = op->len[4];
	d.data = r.json;
	d.datalen = r.jsonlen;
	d.status = op->status;
	d.received_ms = r.received_ms;
	d.dead_ms = op->dead_ms;
	d.replayable = true;
	if ((rc = spool_dead_write(s, &d, true, res)) != 0 || *res != SPOOL_OK)
		return rc;
	/* The record's bytes stay readable until the next put or commit. */
	if ((*res = segq_del(s->sq, op->seq, &jsonlen)) != SPOOL_OK)
		return *res == SPOOL_ERR ? ENOMEM : 0;
	op->type = OP_DEAD_PUT;
	op->overwrite = true;
	op->p[0] = r.id;
	op->len[0] = r.idlen;
	op->p[1] = r.device;
	op->len[1] = r.devlen;
	op->p[5] = r.json;
	op->len[5] = r.jsonlen;
	op->received_ms = r.received_ms;
	op->replayable = true;
	return 0;
}

/*
 * The dead letter leaves LMDB, then the envelope enters the queue under a
 * new sequence (once: the op becomes the dead letter's deletion, which is
 * what a redo of the LMDB transaction repeats).
 */
static int
spool_op_dead_replay(struct spool *s, struct op *op, int *res)
{
	struct spool_dead d;
	MDB_val k, v;
	char *id, *dev, *json;
	uint64_t old;
	int rc;

	k.mv_data = (void *)op->p[0];
	k.mv_size = op->len[0];
	rc = mdb_get(s->txn, s->dead, &k, &v);
	if (rc == MDB_NOTFOUND) {
		*res = SPOOL_NOTFOUND;
		return 0;
	}
	if (rc != 0)
		return rc;
	if (spool_dead_parse(&k, &v, &d) == -1 || !d.replayable || d.idlen > SPOOL_ID_MAX) {
		*res = SPOOL_INVAL;
		return 0;
	}
	if (segq_bytes(s->sq) + d.datalen > s->put_cap) {
		*res = SPOOL_FULL;
		return 0;
	}
	if (spool_grow_buf(&s->scratch, &s->scratchcap, d.idlen + d.devlen + d.datalen) == -1)
		return ENOMEM;
	id = s->scratch;
	dev = id + d.idlen;
	json = dev + d.devlen;
	memcpy(id, d.id, d.idlen);
	memcpy(dev, d.device, d.devlen);
	memcpy(json, d.data, d.datalen);
	k.mv_data = id;
	if ((rc = mdb_del(s->txn, s->dead, &k, NULL)) != 0)
		return rc;
	op->type = OP_DEAD_DEL;
	op->refusable = false;
	if (segq_find_id(s->sq, id, d.idlen, &old)) {
		op->seq = 0;    /* already queued under its id: nothing to re-queue */
		*res = SPOOL_OK;
		return 0;
	}
	rc = spool_q_put(s, id, d.idlen, dev, d.devlen, d.received_ms, json, d.datalen,
	    &op->seq, res);
	if (rc == 0 && *res == SPOOL_FULL)
		return MDB_MAP_FULL;    /* the deletion must not stand alone */
	return rc;
}

static int
spool_op_dead_del(struct spool *s, struct op *op, int *res)
{
	MDB_val k = { op->len[0], (void *)op->p[0] };
	int rc;

	if (op->len[0] == 0) {
		*res = SPOOL_NOTFOUND;
		return 0;
	}
	rc = mdb_del(s->txn, s->dead, &k, NULL);
	if (rc == MDB_NOTFOUND) {
		*res = SPOOL_NOTFOUND;
		return 0;
	}
	*res = SPOOL_OK;
	return rc;
}

/*
 * Drop the oldest entries that cannot be replayed (ids sort by time), up to
 * trim_max, looking at no more than 8 times that many: replayable ones are
 * only ever dropped by the operator.  A look that stops early leaves where
 * the next one starts (past the replayable entries it stepped over), so a
 * long run of them does not hide what comes after.  The op holds where it
 * began: redone, it drops the same entries.
 */
static int
spool_op_dead_trim(struct spool *s, struct op *op, int *res)
{
	MDB_cursor *c;
	MDB_val k = { op->len[0], (void *)op->p[0] }, v;
	size_t seen = 0;
	int rc;

	op->trimmed = 0;
	if ((rc = mdb_cursor_open(s->txn, s->dead, &c)) != 0)
		return rc;
	for (rc = mdb_cursor_get(c, &k, &v, op->len[0] > 0 ? MDB_SET_RANGE : MDB_FIRST);
	    rc == 0 && op->trimmed < op->trim_max && seen++ < 8 * op->trim_max;
	    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		struct dhdr hd;

		if (v.mv_size < sizeof(hd))
			continue;       /* not ours to judge */
		memcpy(&hd, v.mv_data, sizeof(hd));
		if (hd.flags & DEAD_REPLAYABLE)
			continue;
		/* (the cursor then stands on the next entry, which MDB_NEXT gives) */
		if ((rc = mdb_cursor_del(c, 0)) != 0)
			break;
		op->trimmed++;
	}
	s->trim_fromlen = 0;
	if (rc == 0 && k.mv_size <= sizeof(s->trim_from)) {
		/* stopped early: k is the entry the next look starts at */
		memcpy(s->trim_from, k.mv_data, k.mv_size);
		s->trim_fromlen = k.mv_size;
	}
	mdb_cursor_close(c);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return rc;
	*res = SPOOL_OK;
	return 0;
}

static int
spool_op_apply(struct spool *s, struct op *op, int *res)
{
	switch (op->type) {
	case OP_PUT:
		return spool_op_put(s, op, res);
	case OP_DEL:
		return spool_op_del(s, op, res);
	case OP_DEAD_PUT:
		return spool_op_dead_put(s, op, res);
	case OP_DEAD_MOVE:
		return spool_op_dead_move(s, op, res);
	case OP_DEAD_REPLAY:
		return spool_op_dead_replay(s, op, res);
	case OP_DEAD_DEL:
		return spool_op_dead_del(s, op, res);
	case OP_DEAD_DROP:
		*res = SPOOL_OK;
		return mdb_drop(s->txn, s->dead, 0);
	case OP_DEAD_TRIM:
		return spool_op_dead_trim(s, op, res);
	}
	*res = SPOOL_INVAL;
	return 0;
}

static int
spool_redo_record(struct spool *s, const struct op *op)
{
	struct op *r;
	size_t need = s->arenalen;

	for (int i = 0; i < OP_NBLOB; i++)
		need += op->len[i];
	if (s->nredo == s->redocap) {
		size_t n = s->redocap ? s->redocap * 2 : 64;
		struct op *p = realloc(s->redo, n * sizeof(*p));
		if (p == NULL)
			return -1;
		s->redo = p;
		s->redocap = n;
	}
	if (spool_grow_buf(&s->arena, &s->arenacap, need) == -1)
		return -1;
	r = &s->redo[s->nredo++];
	*r = *op;
	for (int i = 0; i < OP_NBLOB; i++) {
		r->p[i] = NULL;
		r->off[i] = s->arenalen;
		if (op->len[i] > 0)
			memcpy(s->arena + s->arenalen, op->p[i], op->len[i]);
		s->arenalen += op->len[i];
	}
	return 0;
}

/*
 * Re-apply the batch's changes in a fresh transaction, with the same results.
 * Only the first `keep` refusable changes are kept (a prefix: the sequences
 * they were given stay the same); a deletion may then find nothing.
 */
static int
spool_redo_apply(struct spool *s, size_t keep)
{
	size_t kept = 0;

	for (size_t i = 0; i < s->nredo; i++) {
		struct op op = s->redo[i];
		int rc, res;

		if (op.refusable && kept++ >= keep)
			continue;
		for (int b = 0; b < OP_NBLOB; b++)
			op.p[b] = s->arena + s->redo[i].off[b];
		rc = spool_op_apply(s, &op, &res);
		if (rc == 0 && res == SPOOL_NOTFOUND && keep != SIZE_MAX &&
		    !op.refusable)
			continue;
		if (rc != 0 || res != SPOOL_OK || op.seq != s->redo[i].seq) {
			log_err("spool: re-applying the batch failed: %s",
			    rc ? mdb_strerror(rc) : "different result");
			spool_txn_drop(s);
			return -1;
		}
	}
	return 0;
}

static void
spool_redo_clear(struct spool *s)
{
	s->nredo = 0;
	s->arenalen = 0;
}

/* The batch is over, committed or not: changes stand alone again. */
static void
spool_batch_end(struct spool *s)
{
	spool_redo_clear(s);
	s->batch = false;
	s->full = false;
	s->dirty = false;
	s->queue_first = false;
}

/* The batch is lost: so are the queue's pending changes (reopen to go on). */
static void
spool_batch_lost(struct spool *s)
{
	spool_txn_drop(s);
	segq_lose(s->sq);
	spool_batch_end(s);
}

static bool
spool_op_lmdb(const struct op *op)
{
	return op->type != OP_PUT && op->type != OP_DEL;
}

/* Apply one change inside the open batch. */
static int
spool_batch_exec(struct spool *s, struct op *op, bool refusable)
{
	int rc, res = SPOOL_ERR;

	op->refusable = refusable;
	if (refusable && s->full)
		return SPOOL_FULL;
	if (segq_broken(s->sq))
		return SPOOL_ERR;
	if (!spool_op_lmdb(op)) {
		/* The queue: no transaction to abort, no redo. */
		if ((rc = spool_op_apply(s, op, &res)) != 0) {
			log_err("spool: %s", rc == ENOMEM ? "out of memory" : mdb_strerror(rc));
			spool_batch_lost(s);
			return SPOOL_ERR;
		}
		if (res == SPOOL_OK)
			s->dirty = true;
		return res;
	}
	if (s->txn == NULL && spool_txn_start(s) == -1) {
		spool_batch_lost(s);
		return SPOOL_ERR;
	}
	for (int tries = 0;; tries++) {
		rc = spool_op_apply(s, op, &res);
		if (rc == 0)
			break;
		if (rc != MDB_MAP_FULL) {
			log_err("spool: %s", rc == ENOMEM ? "out of memory" : mdb_strerror(rc));
			spool_batch_lost(s);
			return SPOOL_ERR;
		}
		spool_txn_drop(s);
		if (refusable) {
			if (spool_txn_start(s) == -1 || spool_redo_apply(s, SIZE_MAX) == -1) {
				spool_batch_lost(s);
				return SPOOL_ERR;
			}
			s->full = true;
			return SPOOL_FULL;
		}
		/* Deletions and moves must not fail: make room. */
		if (tries == SPOOL_GROW_TRIES || spool_grow(s) == -1 ||
		    spool_txn_start(s) == -1 || spool_redo_apply(s, SIZE_MAX) == -1) {
			spool_batch_lost(s);
			return SPOOL_ERR;
		}
	}
	if (res == SPOOL_FULL)
		s->full = true;
	if (res == SPOOL_OK) {
		if (spool_redo_record(s, op) == -1) {
			log_err("spool: out of memory");
			spool_batch_lost(s);
			return SPOOL_ERR;
		}
		s->dirty = true;
	}
	return res;
}

/* In the open batch, or in a batch of its own. */
static int
spool_exec(struct spool *s, struct op *op, bool refusable)
{
	bool own = !s->batch;
	int res;

	if (own && spool_begin(s) != SPOOL_OK)
		return SPOOL_ERR;
	res = spool_batch_exec(s, op, refusable);
	if (own && res != SPOOL_ERR) {
		switch (spool_commit(s)) {
		case SPOOL_OK:
			break;
		case SPOOL_FULL:
			/* Only this change was refusable: it was dropped. */
			return SPOOL_FULL;
		default:
			return SPOOL_ERR;
		}
	}
	return res;
}

int
spool_begin(struct spool *s)
{
	if (s->batch) {
		log_err("spool: batch already open");
		return SPOOL_ERR;
	}
	if (segq_broken(s->sq))
		return SPOOL_ERR;
	spool_redo_clear(s);
	s->batch = true;
	s->full = false;
	s->dirty = false;
	s->batch_seq = s->next_seq;
	return SPOOL_OK;
}

bool
spool_in_batch(const struct spool *s)
{
	return s->batch;
}

/* The LMDB part of the batch: SPOOL_OK, SPOOL_FULL (puts dropped), SPOOL_ERR. */
static int
spool_commit_lmdb(struct spool *s)
{
	size_t nref, i, keep;
	bool dropped = false;
	MDB_stat st;
	MDB_txn *t;
	int rc;

	if (s->txn == NULL)
		return SPOOL_OK;
	for (nref = 0, i = 0; i < s->nredo; i++)
		nref += s->redo[i].refusable;
	keep = SIZE_MAX;
	for (int tries = 0;; ) {
		rc = mdb_txn_commit(s->txn);
		s->txn = NULL;
		if (rc == 0)
			break;
		if (rc != MDB_MAP_FULL) {
			log_err("spool: commit: %s", mdb_strerror(rc));
			return SPOOL_ERR;
		}
		/*
		 * The free list needs pages of its own at commit.  Drop the
		 * newest refusable puts (halving what is kept) before growing
		 * the map: a put may be refused, a deletion may not.
		 */
		if (keep == SIZE_MAX)
			keep = nref;
		if (keep > 0) {
			keep /= 2;
			dropped = true;
		} else if (tries++ == SPOOL_GROW_TRIES || spool_grow(s) == -1) {
			log_err("spool: commit: %s", mdb_strerror(rc));
			return SPOOL_ERR;
		}
		if (spool_txn_start(s) == -1 || spool_redo_apply(s, keep) == -1)
			return SPOOL_ERR;
	}
	if (s->fsync == FSYNC_BATCH && (rc = mdb_env_sync(s->env, 1)) != 0) {
		/* Committed but maybe not durable: the caller must not ack. */
		log_err("spool: sync: %s", mdb_strerror(rc));
		return SPOOL_ERR;
	}
	if ((t = spool_rtxn(s)) != NULL && mdb_stat(t, s->dead, &st) == 0)
		s->dead_empty = st.ms_entries == 0;
	return dropped ? SPOOL_FULL : SPOOL_OK;
}

/*
 * LMDB first (a dead letter exists before its envelope leaves the queue),
 * then the queue; a replay the other way round (the envelope is queued
 * before its dead letter goes).
 */
int
spool_commit(struct spool *s)
{
	int rc = SPOOL_OK;

	if (!s->batch)
		return SPOOL_OK;
	if (!s->dirty) {
		spool_txn_drop(s);
		spool_batch_end(s);
		return SPOOL_OK;
	}
	if (s->queue_first) {
		switch (segq_commit(s->sq)) {
		case SPOOL_OK:
			break;
		case SPOOL_FULL:
			/* No room for the replayed envelopes: they stay dead. */
			spool_txn_drop(s);
			goto nospace;
		default:
			spool_batch_lost(s);
			return SPOOL_ERR;
		}
	}
	if ((rc = spool_commit_lmdb(s)) == SPOOL_ERR) {
		spool_batch_lost(s);
		return SPOOL_ERR;
	}
	if (!s->queue_first) {
		switch (segq_commit(s->sq)) {
		case SPOOL_OK:
			break;
		case SPOOL_FULL:
			goto nospace;
		default:
			spool_batch_lost(s);
			return SPOOL_ERR;
		}
	}
	spool_batch_end(s);
	return rc;
nospace:
	/* The disk is full: none of the batch's puts stayed. */
	s->next_seq = s->batch_seq;
	spool_batch_end(s);
	return SPOOL_FULL;
}

bool
spool_disk_full(const struct spool *s)
{
	return segq_nospace(s->sq);
}

int
spool_sync(struct spool *s)
{
	return segq_sync_deletions(s->sq);
}

uint64_t
spool_next_seq(const struct spool *s)
{
	return s->next_seq;
}

int
spool_put(struct spool *s, const char *id, size_t idlen, const char *device,
    size_t devlen, int64_t received_ms, const char *json, size_t jsonlen,
    uint64_t *seq)
{
	struct op op;
	int res;

	memset(&op, 0, sizeof(op));
	op.type = OP_PUT;
	op.p[0] = id;
	op.len[0] = idlen;
	op.p[1] = device;
	op.len[1] = devlen;
	op.p[2] = json;
	op.len[2] = jsonlen;
	op.received_ms = received_ms;
	res = spool_exec(s, &op, true);
	if (res == SPOOL_OK && seq != NULL)
		*seq = op.seq;
	return res;
}

int
spool_get(struct spool *s, uint64_t seq, struct spool_rec *rec)
{
	return segq_get(s->sq, seq, rec);
}

int
spool_del(struct spool *s, uint64_t seq)
{
	struct op op;

	memset(&op, 0, sizeof(op));
	op.type = OP_DEL;
	op.seq = seq;
	return spool_exec(s, &op, false);
}

long
spool_foreach(struct spool *s, spool_iter_fn *cb, void *arg)
{
	return segq_foreach(s->sq, cb, arg);
}

int
spool_dead_put(struct spool *s, const struct spool_dead *d)
{
	struct op op;

	memset(&op, 0, sizeof(op));
	op.type = OP_DEAD_PUT;
	op.p[0] = d->id;
	op.len[0] = d->idlen;
	op.p[1] = d->device;
	op.len[1] = spool_clamp(d->devlen, SPOOL_DEVICE_MAX);
	op.p[2] = d->topic;
	op.len[2] = spool_clamp(d->topiclen, SPOOL_TOPIC_MAX);
	op.p[3] = d->reason;
	op.len[3] = spool_clamp(d->reasonlen, SPOOL_REASON_MAX);
	op.p[4] = d->detail;
	op.len[4] = spool_clamp(d->detaillen, SPOOL_DETAIL_MAX);
	op.p[5] = d->data;
	op.len[5] = d->datalen;
	op.status = d->status;
	op.received_ms = d->received_ms;
	op.dead_ms = d->dead_ms;
	op.replayable = d->replayable;
	return spool_exec(s, &op, true);
}

int
spool_dead_move(struct spool *s, uint64_t seq, const char *reason, int status,
    const char *detail, size_t detaillen, const char *topic, size_t topiclen,
    int64_t dead_ms)
{
	struct op op;

	memset(&op, 0, sizeof(op));
	op.type = OP_DEAD_MOVE;
	op.seq = seq;
	op.p[2] = topic;
	op.len[2] = spool_clamp(topiclen, SPOOL_TOPIC_MAX);
	op.p[3] = reason;
	op.len[3] = reason ? spool_clamp(strlen(reason), SPOOL_REASON_MAX) : 0;
	op.p[4] = detail;
	op.len[4] = spool_clamp(detaillen, SPOOL_DETAIL_MAX);
	op.status = status;
	op.dead_ms = dead_ms;
	return spool_exec(s, &op, false);
}

long
spool_dead_list(struct spool *s, const char *after, size_t afterlen, size_t limit,
    spool_dead_fn *cb, void *arg)
{
	MDB_cursor *c;
	MDB_txn *t;
	MDB_val k = { afterlen, (void *)after }, v;
	struct spool_dead d;
	long n = 0;
	int rc;

	if ((t = spool_rtxn(s)) == NULL || mdb_cursor_open(t, s->dead, &c) != 0)
		return SPOOL_ERR;
	if (after == NULL || afterlen == 0) {
		rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
	} else {
		/* The first key at or after `after`; not `after` itself. */
		rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
		if (rc == 0 && k.mv_size == afterlen && memcmp(k.mv_data, after, afterlen) == 0)
			rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	}
	for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (limit > 0 && (size_t)n >= limit)
			break;
		if (spool_dead_parse(&k, &v, &d) == -1)
			continue;
		n++;
		if (cb != NULL && cb(arg, &d) != 0)
			break;
	}
	mdb_cursor_close(c);
	return n;
}

int
spool_dead_get(struct spool *s, const char *id, size_t idlen, struct spool_dead *d)
{
	MDB_val k = { idlen, (void *)id }, v;
	MDB_txn *t;
	int rc;

	if (idlen == 0 || idlen > SPOOL_ID_MAX)
		return SPOOL_NOTFOUND;
	if ((t = spool_rtxn(s)) == NULL)
		return SPOOL_ERR;
	rc = mdb_get(t, s->dead, &k, &v);
	if (rc == MDB_NOTFOUND)
		return SPOOL_NOTFOUND;
	if (rc != 0)
		return SPOOL_ERR;
	return spool_dead_parse(&k, &v, d) == -1 ? SPOOL_INVAL : SPOOL_OK;
}

struct idlist {
	char   *buf;
	size_t  len, cap;
	size_t *offs;
	size_t  n, ncap;
};

static int
spool_idlist_add(void *arg, const struct spool_dead *d)
{
	struct idlist *l = arg;

	if (l->n == l->ncap) {
		size_t n = l->ncap ? l->ncap * 2 : 64;
		size_t *p = realloc(l->offs, (n + 1) * sizeof(*p));
		if (p == NULL)
			return -1;
		l->offs = p;
		l->ncap = n;
	}
	if (spool_grow_buf(&l->buf, &l->cap, l->len + d->idlen) == -1)
		return -1;
	memcpy(l->buf + l->len, d->id, d->idlen);
	l->offs[l->n++] = l->len;
	l->len += d->idlen;
	l->offs[l->n] = l->len;
	return 0;
}

int
spool_dead_replay(struct spool *s, const char *id, size_t idlen,
    spool_iter_fn *cb, void *arg, size_t *replayed, size_t *skipped)
{
	struct idlist l;
	uint64_t *seqs = NULL;
	size_t nseq = 0;
	int ret = SPOOL_OK, res;

	*replayed = *skipped = 0;
	if (s->batch)
		return SPOOL_INVAL;
	memset(&l, 0, sizeof(l));
	if (id != NULL) {
		struct spool_dead d = { .id = id, .idlen = idlen };
		if (idlen == 0 || idlen > SPOOL_ID_MAX)
			return SPOOL_NOTFOUND;
		if (spool_idlist_add(&l, &d) == -1)
			return SPOOL_ERR;
	} else if (spool_dead_list(s, NULL, 0, 0, spool_idlist_add, &l) < 0) {
		ret = SPOOL_ERR;
		goto out;
	}
	if ((seqs = calloc(l.n + 1, sizeof(*seqs))) == NULL) {
		ret = SPOOL_ERR;
		goto out;
	}
	if (spool_begin(s) != SPOOL_OK) {
		ret = SPOOL_ERR;
		goto out;
	}
	s->queue_first = true;
	for (size_t i = 0; i < l.n; i++) {
		struct op op;

		memset(&op, 0, sizeof(op));
		op.type = OP_DEAD_REPLAY;
		op.p[0] = l.buf + l.offs[i];
		op.len[0] = l.offs[i + 1] - l.offs[i];
		res = spool_batch_exec(s, &op, true);
		if (res == SPOOL_OK) {
			(*replayed)++;
			if (op.seq != 0)
				seqs[nseq++] = op.seq;
		} else if (res == SPOOL_INVAL) {
			(*skipped)++;
		} else if (res == SPOOL_NOTFOUND && id != NULL) {
			ret = SPOOL_NOTFOUND;
		} else if (res == SPOOL_FULL) {
			ret = SPOOL_FULL;
			break;
		} else if (res == SPOOL_ERR) {
			ret = SPOOL_ERR;
			*replayed = 0;
			nseq = 0;
			break;
		}
	}
	if (ret != SPOOL_ERR) {
		switch (spool_commit(s)) {
		case SPOOL_OK:
			break;
		case SPOOL_FULL: {
			/* The newest were dropped at commit: keep the rest. */
			size_t k = 0;

			for (size_t i = 0; i < nseq; i++)
				if (seqs[i] < s->next_seq)
					seqs[k++] = seqs[i];
			*replayed -= nseq - k;
			nseq = k;
			ret = SPOOL_FULL;
			break;
		}
		default:
			ret = SPOOL_ERR;
			*replayed = 0;
			nseq = 0;
		}
	}
	for (size_t i = 0; i < nseq && cb != NULL; i++) {
		struct spool_rec r;

		if (spool_get(s, seqs[i], &r) == SPOOL_OK)
			cb(arg, &r);
	}
out:
	free(seqs);
	free(l.buf);
	free(l.offs);
	return ret;
}

int
spool_dead_purge(struct spool *s, const char *id, size_t idlen, size_t *purged)
{
	struct op op;
	struct spool_stats st;
	int res;

	*purged = 0;
	memset(&op, 0, sizeof(op));
	if (id != NULL) {
		op.type = OP_DEAD_DEL;
		op.p[0] = id;
		op.len[0] = idlen <= SPOOL_ID_MAX ? idlen : 0;
		res = spool_exec(s, &op, false);
		if (res == SPOOL_OK)
			*purged = 1;
		return res;
	}
	spool_stats(s, &st);
	op.type = OP_DEAD_DROP;
	res = spool_exec(s, &op, false);
	if (res == SPOOL_OK)
		*purged = st.dead_depth;
	return res;
}

int
spool_dead_trim(struct spool *s, size_t max_bytes, size_t max, size_t *trimmed, bool *more)
{
	char from[SPOOL_ID_MAX];
	struct op op;
	struct spool_stats st;
	int res;

	*trimmed = 0;
	*more = false;
	spool_stats(s, &st);
	if (st.dead_bytes <= max_bytes)
		return SPOOL_OK;
	memset(&op, 0, sizeof(op));
	op.type = OP_DEAD_TRIM;
	/* As many as take the store a tenth under max_bytes, by their mean
	 * size: it is not trimmed again at every new entry. */
	op.trim_max = (size_t)((st.dead_bytes - (max_bytes - max_bytes / 10)) *
	    st.dead_depth / st.dead_bytes) + 1;
	if (op.trim_max > max)
		op.trim_max = max;
	/* (a copy: the op moves s->trim_from, and a redo needs the start) */
	memcpy(from, s->trim_from, s->trim_fromlen);
	op.p[0] = from;
	op.len[0] = s->trim_fromlen;
	res = spool_exec(s, &op, false);
	if (res == SPOOL_OK) {
		*trimmed = op.trimmed;
		*more = s->trim_fromlen > 0;
	}
	return res;
}

void
spool_stats(struct spool *s, struct spool_stats *st)
{
	MDB_stat ms;
	MDB_txn *t;

	memset(st, 0, sizeof(*st));
	st->depth = segq_depth(s->sq);
	st->bytes = segq_bytes(s->sq);
	st->oldest_ms = segq_oldest_ms(s->sq);
	st->map_size = s->map_size;
	if ((t = spool_rtxn(s)) != NULL && mdb_stat(t, s->dead, &ms) == 0) {
		st->dead_depth = ms.ms_entries;
		st->dead_bytes = (uint64_t)(ms.ms_branch_pages + ms.ms_leaf_pages +
		    ms.ms_overflow_pages) * ms.ms_psize;
	}
}

/*
 * Envelopes that an older herald queued in LMDB move to the segments, with
 * their sequences; then LMDB's queue is emptied.  A crash in between moves
 * them again: those already queued are known by their ids.
 */
static int
spool_migrate(struct spool *s, uint64_t *next)
{
	MDB_val k, v, mk = { 8, "next_seq" };
	MDB_cursor *c;
	MDB_stat st;
	MDB_txn *t;
	struct spool_rec r;
	size_t moved = 0;
	uint64_t old;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t)) != 0)
		return rc;
	if (mdb_get(t, s->meta, &mk, &v) == 0 && v.mv_size == sizeof(uint64_t))
		memcpy(next, v.mv_data, sizeof(*next));
	if ((rc = mdb_stat(t, s->q, &st)) != 0 || st.ms_entries == 0 ||
	    (rc = mdb_cursor_open(t, s->q, &c)) != 0) {
		mdb_txn_abort(t);
		return rc;
	}
	log_info("spool: moving %zu queued envelope(s) from LMDB to segment files",
	    (size_t)st.ms_entries);
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (spool_q_parse(&k, &v, &r) == -1 || r.idlen == 0) {
			log_err("spool: record %llu of the LMDB queue is corrupt, skipped",
			    (unsigned long long)spool_seq_from_key(&k));
			continue;
		}
		if (r.seq >= *next)
			*next = r.seq + 1;
		if (segq_find_id(s->sq, r.id, r.idlen, &old))
			continue;
		if (segq_put(s->sq, r.seq, r.id, r.idlen, r.device, r.devlen, r.received_ms,
		    r.json, r.jsonlen) != 0 ||
		    (++moved % 4096 == 0 && segq_commit(s->sq) != SPOOL_OK)) {
			rc = EIO;
			break;
		}
	}
	mdb_cursor_close(c);
	mdb_txn_abort(t);
	if (rc != MDB_NOTFOUND)
		return rc;
	if (segq_commit(s->sq) != SPOOL_OK)
		return EIO;
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &t)) != 0)
		return rc;
	if ((rc = mdb_drop(t, s->q, 0)) != 0 || (rc = mdb_drop(t, s->ids, 0)) != 0) {
		mdb_txn_abort(t);
		return rc;
	}
	if ((rc = mdb_txn_commit(t)) != 0 || (rc = mdb_env_sync(s->env, 1)) != 0)
		return rc;
	log_info("spool: %zu envelope(s) moved", moved);
	return 0;
}

struct seqlist {
	struct spool *s;
	uint64_t     *seq;
	size_t        n, cap;
	bool          nomem;
};

static int
spool_dead_wins_cb(void *arg, const struct spool_rec *r)
{
	struct seqlist *l = arg;
	uint64_t *p;

	if (spool_dead_has(l->s, r->id, r->idlen) != 0)
		return 0;
	if ((p = grow_array(l->seq, &l->cap, l->n + 1, sizeof(*p), 64)) == NULL) {
		l->nomem = true;
		return 1;
	}
	l->seq = p;
	l->seq[l->n++] = r->seq;
	return 0;
}

/*
 * An envelope both queued and dead (a crash between the two commits of a
 * move or a replay) stays dead: it is taken out of the queue.
 */
static int
spool_dead_wins(struct spool *s)
{
	struct seqlist l = { .s = s };
	size_t jsonlen;
	int rc = 0;

	if (s->dead_empty)
		return 0;
	if (segq_foreach(s->sq, spool_dead_wins_cb, &l) < 0 || l.nomem) {
		free(l.seq);
		return -1;
	}
	if (l.n > 0) {
		log_warn("spool: %zu envelope(s) both queued and dead after a crash: kept dead",
		    l.n);
		for (size_t i = 0; i < l.n && rc == 0; i++)
			if (segq_del(s->sq, l.seq[i], &jsonlen) == SPOOL_ERR)
				rc = -1;
		if (rc == 0 && segq_commit(s->sq) != SPOOL_OK)
			rc = -1;
	}
	free(l.seq);
	return rc;
}

struct spool *
spool_open(const char *dir, size_t max_bytes, enum fsync_mode fsync,
    spool_gone_fn *gone, void *arg, char *err, size_t errlen)
{
	struct spool *s;
	MDB_txn *t = NULL;
	unsigned int flags = MDB_NOTLS | MDB_NORDAHEAD;
	long pg = sysconf(_SC_PAGESIZE);
	size_t slack;
	MDB_envinfo info;
	MDB_stat st;
	uint64_t next;
	int rc, dead;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	s->fsync = fsync;
	slack = max_bytes / 4;
	if (slack < SPOOL_SLACK_MIN)
		slack = SPOOL_SLACK_MIN;
	if (slack > SPOOL_SLACK_MAX)
		slack = SPOOL_SLACK_MAX;
	s->map_size = (2 * max_bytes + slack + (size_t)pg - 1) / (size_t)pg * (size_t)pg;
	if (fsync == FSYNC_BATCH)
		flags |= MDB_NOSYNC;
	else if (fsync == FSYNC_OFF)
		flags |= MDB_NOSYNC | MDB_NOMETASYNC;
	if (mkdir_p(dir, 0700) == -1) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		goto fail;
	}
	if ((rc = mdb_env_create(&s->env)) != 0 ||
	    (rc = mdb_env_set_maxdbs(s->env, 4)) != 0 ||
	    (rc = mdb_env_set_mapsize(s->env, s->map_size)) != 0 ||
	    (rc = mdb_env_open(s->env, dir, flags, 0600)) != 0) {
		snprintf(err, errlen, "%s: %s", dir, mdb_strerror(rc));
		goto fail;
	}
	mdb_reader_check(s->env, &dead);
	s->put_cap = s->map_size;
	if (mdb_env_info(s->env, &info) == 0 && info.me_mapsize > s->map_size)
		s->map_size = info.me_mapsize;
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &t)) != 0 ||
	    (rc = mdb_dbi_open(t, "q", MDB_CREATE, &s->q)) != 0 ||
	    (rc = mdb_dbi_open(t, "ids", MDB_CREATE, &s->ids)) != 0 ||
	    (rc = mdb_dbi_open(t, "dead", MDB_CREATE, &s->dead)) != 0 ||
	    (rc = mdb_dbi_open(t, "meta", MDB_CREATE, &s->meta)) != 0) {
		snprintf(err, errlen, "%s: %s", dir, mdb_strerror(rc));
		if (t != NULL)
			mdb_txn_abort(t);
		goto fail;
	}
	if ((rc = mdb_txn_commit(t)) != 0) {
		snprintf(err, errlen, "%s: %s", dir, mdb_strerror(rc));
		goto fail;
	}
	if ((s->sq = segq_open(dir, fsync, gone, arg, err, errlen)) == NULL)
		goto fail;
	next = 1;
	if ((rc = spool_migrate(s, &next)) != 0) {
		snprintf(err, errlen, "%s: moving the LMDB queue to segments: %s", dir,
		    rc == EIO ? "write failed" : mdb_strerror(rc));
		goto fail;
	}
	s->next_seq = segq_next_seq(s->sq) > next ? segq_next_seq(s->sq) : next;
	if ((t = spool_rtxn(s)) != NULL && mdb_stat(t, s->dead, &st) == 0)
		s->dead_empty = st.ms_entries == 0;
	if (spool_dead_wins(s) == -1) {
		snprintf(err, errlen, "%s: cannot drop the queued copies of dead letters", dir);
		goto fail;
	}
	return s;
fail:
	if (s->rtxn != NULL)
		mdb_txn_abort(s->rtxn);
	segq_close(s->sq);
	if (s->env != NULL)
		mdb_env_close(s->env);
	free(s);
	return NULL;
}

void
spool_close(struct spool *s)
{
	if (s == NULL)
		return;
	if (s->batch) {
		log_warn("spool: closing with an uncommitted batch");
		spool_batch_lost(s);
	}
	if (s->rtxn != NULL)
		mdb_txn_abort(s->rtxn);
	if (s->fsync != FSYNC_ALWAYS)
		mdb_env_sync(s->env, 1);
	mdb_env_close(s->env);
	segq_close(s->sq);
	free(s->redo);
	free(s->arena);
	free(s->scratch);
	free(s);
}
