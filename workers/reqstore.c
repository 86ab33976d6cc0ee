/*
 * The router's request store on LMDB: records, their indexes, the
 * notification outbox, device presence and counters, each in its own named
 * database of one environment that only the router opens.
 */
#include <errno.h>
#include <pthread.h>
#include <unistd.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lmdb.h>

#include "log.h"
#include "reqstore.h"
#include "util.h"

#define REQSTORE_NDBS 7
#define DEVKEY_MAX    (REQSTORE_ID_MAX + 1 + 8)

struct reqstore {
	MDB_env  *env;
	MDB_dbi   rec;      /* commandId -> record JSON */
	MDB_dbi   order;    /* seq -> commandId, every request */
	MDB_dbi   bydev;    /* device NUL seq -> commandId */
	MDB_dbi   live;     /* seq -> commandId, requests not yet ended */
	MDB_dbi   notes;    /* seq -> notification */
	MDB_dbi   devs;     /* device -> presence JSON */
	MDB_dbi   meta;     /* name -> u64 */
	MDB_txn  *txn;      /* the open write transaction */
	uint64_t  quota;    /* [requests] max_bytes; the map is REQSTORE_MAP_FACTOR times */
	bool      full;
	/* Test-only: while this file exists, commits fail (EIO), and so do
	 * puts and deletes if it says "put".  From HERALD_TEST_REQSTORE_FAIL;
	 * NULL in normal operation. */
	char     *fail_flag;
	/* reqstore_sync_async(): a thread that runs mdb_env_sync, so the
	 * router's loop never waits for the disk.  mu guards the rest. */
	bool            syncer;     /* the thread runs */
	pthread_t       sync_thr;
	pthread_mutex_t mu;
	pthread_cond_t  cv;
	bool            sync_want, sync_busy, sync_stop;
	int             sync_rc;    /* the last failed sync's LMDB code, until reported */
	uint64_t        syncs;      /* syncs done */
};

/* Header of a notes value; id, device and JSON follow. */
struct note_hdr {
	int64_t  received_ms;
	uint32_t jsonlen;
	uint8_t  idlen;
	uint8_t  devlen;
	uint8_t  pad[2];
};

static void
seq_key(uint8_t k[8], uint64_t seq)
{
	for (int i = 0; i < 8; i++)
		k[i] = (uint8_t)(seq >> (8 * (7 - i)));
}

static uint64_t
seq_of(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static size_t
dev_key(uint8_t k[DEVKEY_MAX], const char *device, uint64_t seq)
{
	size_t n = strlen(device);

	if (n > REQSTORE_ID_MAX)
		n = REQSTORE_ID_MAX;
	memcpy(k, device, n);
	k[n] = '\0';
	seq_key(k + n + 1, seq);
	return n + 9;
}

/* HERALD_TEST_REQSTORE_FAIL: whether a commit (or a put, puts) fails now. */
static bool
test_fails(const struct reqstore *s, bool puts)
{
	char buf[8] = "";
	FILE *f;

	if (s->fail_flag == NULL || (f = fopen(s->fail_flag, "r")) == NULL)
		return false;
	if (fgets(buf, sizeof(buf), f) == NULL)
		buf[0] = '\0';
	fclose(f);
	return !puts || strncmp(buf, "put", 3) == 0;
}

static int
store_error(struct reqstore *s, const char *what, int rc)
{
	if (rc == MDB_MAP_FULL)
		s->full = true;
	log_ratelimited(LOG_ERR, "request store: %s: %s", what, mdb_strerror(rc));
	return -1;
}

/* A read transaction, or the open write transaction (sees its own writes). */
static MDB_txn *
rd_begin(struct reqstore *s)
{
	MDB_txn *t;
	int rc;

	if (s->txn != NULL)
		return s->txn;
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t)) != 0) {
		store_error(s, "read", rc);
		return NULL;
	}
	return t;
}

static void
rd_end(struct reqstore *s, MDB_txn *t)
{
	if (t != NULL && t != s->txn)
		mdb_txn_abort(t);
}

/*
 * The sync thread.  LMDB allows mdb_env_sync from any thread while another
 * one writes (MDB_NOTLS; for an environment without MDB_WRITEMAP it is one
 * fdatasync of the data file): the loop keeps committing while the disk
 * catches up.  Requests coalesce: one sync covers every commit made before
 * it started, so a burst of reqstore_sync_async() calls costs one more sync.
 */
static void *
reqstore_sync_main(void *arg)
{
	struct reqstore *s = arg;
	int rc;

	pthread_mutex_lock(&s->mu);
	for (;;) {
		while (!s->sync_want && !s->sync_stop)
			pthread_cond_wait(&s->cv, &s->mu);
		if (!s->sync_want && s->sync_stop)
			break;
		s->sync_want = false;
		s->sync_busy = true;
		pthread_mutex_unlock(&s->mu);
		rc = mdb_env_sync(s->env, 1);
		pthread_mutex_lock(&s->mu);
		s->sync_busy = false;
		s->syncs++;
		if (rc != 0)
			s->sync_rc = rc;
		pthread_cond_broadcast(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static void
reqstore_syncer_stop(struct reqstore *s)
{
	if (!s->syncer)
		return;
	pthread_mutex_lock(&s->mu);
	s->sync_stop = true;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	pthread_join(s->sync_thr, NULL);
	s->syncer = false;
}

/*
 * The map is larger than the quota the router holds new requests to: the
 * changes of the requests accepted and their notifications to the backend
 * must always fit, and the notifications stay in the store until the
 * spool takes them.  A store full of live requests that all end while the
 * http worker is down writes about as much again in notifications.
 */
#define REQSTORE_MAP_FACTOR 3

struct reqstore *
reqstore_open(const char *dir, size_t quota, enum fsync_mode fsync, char *err, size_t errlen)
{
	struct reqstore *s;
	unsigned flags = MDB_NOTLS;
	MDB_txn *t = NULL;
	int rc, dead;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if (quota > SIZE_MAX / REQSTORE_MAP_FACTOR) {
		snprintf(err, errlen, "%s: a map of %d times %zu bytes is too large", dir,
		    REQSTORE_MAP_FACTOR, quota);
		free(s);
		return NULL;
	}
	s->quota = quota;
	/* Without fsync the data is still in the kernel's page cache when the
	 * process dies: a crash loses nothing, only a power cut may. */
	if (fsync == FSYNC_BATCH)
		flags |= MDB_NOSYNC;
	else if (fsync == FSYNC_OFF)
		flags |= MDB_NOSYNC | MDB_NOMETASYNC;
	if (mkdir_p(dir, 0700) == -1) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		free(s);
		return NULL;
	}
	if ((rc = mdb_env_create(&s->env)) != 0 ||
	    (rc = mdb_env_set_maxdbs(s->env, REQSTORE_NDBS)) != 0 ||
	    (rc = mdb_env_set_mapsize(s->env, quota * REQSTORE_MAP_FACTOR)) != 0 ||
	    (rc = mdb_env_open(s->env, dir, flags, 0600)) != 0) {
		snprintf(err, errlen, "%s: %s", dir, mdb_strerror(rc));
		goto fail;
	}
	/* A killed router leaves its reader slot behind. */
	mdb_reader_check(s->env, &dead);
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &t)) != 0 ||
	    (rc = mdb_dbi_open(t, "rec", MDB_CREATE, &s->rec)) != 0 ||
	    (rc = mdb_dbi_open(t, "order", MDB_CREATE, &s->order)) != 0 ||
	    (rc = mdb_dbi_open(t, "bydev", MDB_CREATE, &s->bydev)) != 0 ||
	    (rc = mdb_dbi_open(t, "live", MDB_CREATE, &s->live)) != 0 ||
	    (rc = mdb_dbi_open(t, "notes", MDB_CREATE, &s->notes)) != 0 ||
	    (rc = mdb_dbi_open(t, "devs", MDB_CREATE, &s->devs)) != 0 ||
	    (rc = mdb_dbi_open(t, "meta", MDB_CREATE, &s->meta)) != 0 ||
	    (rc = mdb_txn_commit(t)) != 0) {
		if (rc != 0 && t != NULL)
			mdb_txn_abort(t);
		snprintf(err, errlen, "%s: %s", dir, mdb_strerror(rc));
		goto fail;
	}
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
	if (fsync == FSYNC_BATCH) {
		if ((rc = pthread_create(&s->sync_thr, NULL, reqstore_sync_main, s)) != 0) {
			snprintf(err, errlen, "sync thread: %s", strerror(rc));
			pthread_cond_destroy(&s->cv);
			pthread_mutex_destroy(&s->mu);
			goto fail;
		}
		s->syncer = true;
	}
	s->fail_flag = getenv("HERALD_TEST_REQSTORE_FAIL");
	if (s->fail_flag != NULL)
		log_warn("HERALD_TEST_REQSTORE_FAIL: commits fail while %s exists (puts too if it says put)",
		    s->fail_flag);
	return s;
fail:
	if (s->env != NULL)
		mdb_env_close(s->env);
	free(s);
	return NULL;
}

void
reqstore_close(struct reqstore *s)
{
	if (s == NULL)
		return;
	reqstore_syncer_stop(s);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	if (s->txn != NULL)
		mdb_txn_abort(s->txn);
	mdb_env_close(s->env);
	free(s);
}

int
reqstore_begin(struct reqstore *s)
{
	int rc;

	if (s->txn != NULL) {
		log_err("request store: nested write transaction");
		return -1;
	}
	s->full = false;
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &s->txn)) != 0) {
		s->txn = NULL;
		return store_error(s, "begin", rc);
	}
	return 0;
}

int
reqstore_commit(struct reqstore *s)
{
	int rc;

	if (s->txn == NULL)
		return -1;
	if (test_fails(s, false)) {
		mdb_txn_abort(s->txn);
		s->txn = NULL;
		return store_error(s, "commit (HERALD_TEST_REQSTORE_FAIL)", EIO);
	}
	rc = mdb_txn_commit(s->txn);
	s->txn = NULL;
	return rc == 0 ? 0 : store_error(s, "commit", rc);
}

void
reqstore_abort(struct reqstore *s)
{
	if (s->txn != NULL)
		mdb_txn_abort(s->txn);
	s->txn = NULL;
}

bool
reqstore_full(const struct reqstore *s)
{
	return s->full;
}

int
reqstore_usage(struct reqstore *s, uint64_t *used, uint64_t *size)
{
	MDB_dbi dbis[] = { s->rec, s->order, s->bydev, s->live, s->notes, s->devs, s->meta };
	MDB_stat st;
	MDB_txn *t;
	int rc = 0;

	*used = *size = 0;
	if ((t = rd_begin(s)) == NULL)
		return -1;
	for (size_t i = 0; i < sizeof(dbis) / sizeof(dbis[0]) && rc == 0; i++)
		if ((rc = mdb_stat(t, dbis[i], &st)) == 0)
			*used += (uint64_t)(st.ms_branch_pages + st.ms_leaf_pages +
			    st.ms_overflow_pages) * st.ms_psize;
	rd_end(s, t);
	if (rc != 0)
		return store_error(s, "stat", rc);
	*size = s->quota;
	return 0;
}

int64_t
reqstore_note_count(struct reqstore *s)
{
	MDB_stat st;
	MDB_txn *t;
	int rc;

	if ((t = rd_begin(s)) == NULL)
		return -1;
	rc = mdb_stat(t, s->notes, &st);
	rd_end(s, t);
	if (rc != 0)
		return store_error(s, "stat", rc);
	return (int64_t)st.ms_entries;
}

int
reqstore_sync(struct reqstore *s)
{
	int rc = mdb_env_sync(s->env, 1);

	return rc == 0 ? 0 : store_error(s, "sync", rc);
}

/*
 * Ask the thread for a sync; with wait, return once a sync that started after
 * this call (so after every earlier commit) is done.  Reports, once, the
 * last sync that failed.
 */
static int
reqstore_sync_ask(struct reqstore *s, bool wait)
{
	uint64_t target;
	int rc;

	if (!s->syncer)
		return reqstore_sync(s);
	pthread_mutex_lock(&s->mu);
	/* A sync already running may have started before our last commit. */
	target = s->syncs + (s->sync_busy ? 2 : 1);
	s->sync_want = true;
	pthread_cond_signal(&s->cv);
	while (wait && s->syncs < target)
		pthread_cond_wait(&s->cv, &s->mu);
	rc = s->sync_rc;
	s->sync_rc = 0;
	pthread_mutex_unlock(&s->mu);
	return rc == 0 ? 0 : store_error(s, "sync", rc);
}

int
reqstore_sync_async(struct reqstore *s)
{
	return reqstore_sync_ask(s, false);
}

int
reqstore_sync_wait(struct reqstore *s)
{
	return reqstore_sync_ask(s, true);
}

uint64_t
reqstore_syncs(struct reqstore *s)
{
	uint64_t n;

	if (!s->syncer)
		return 0;
	pthread_mutex_lock(&s->mu);
	n = s->syncs;
	pthread_mutex_unlock(&s->mu);
	return n;
}

static int
put(struct reqstore *s, MDB_dbi dbi, const void *k, size_t klen, const void *v, size_t vlen,
    unsigned flags, const char *what)
{
	MDB_val key = { klen, (void *)k }, val = { vlen, (void *)v };
	int rc;

	if (s->txn == NULL) {
		log_err("request store: %s outside a transaction", what);
		return -1;
	}
	if (test_fails(s, true))
		return store_error(s, "put (HERALD_TEST_REQSTORE_FAIL)", EIO);
	rc = mdb_put(s->txn, dbi, &key, &val, flags);
	if (rc == MDB_KEYEXIST)
		return -1;
	return rc == 0 ? 0 : store_error(s, what, rc);
}

static int
del(struct reqstore *s, MDB_dbi dbi, const void *k, size_t klen, const char *what)
{
	MDB_val key = { klen, (void *)k };
	int rc;

	if (s->txn == NULL) {
		log_err("request store: %s outside a transaction", what);
		return -1;
	}
	if (test_fails(s, true))
		return store_error(s, "delete (HERALD_TEST_REQSTORE_FAIL)", EIO);
	rc = mdb_del(s->txn, dbi, &key, NULL);
	if (rc == MDB_NOTFOUND)
		return 0;
	return rc == 0 ? 0 : store_error(s, what, rc);
}

static int
put_json(struct reqstore *s, MDB_dbi dbi, const char *key, const json_t *doc, unsigned flags,
    const char *what)
{
	char *text = json_dumps(doc, JSON_COMPACT);
	int rc;

	if (text == NULL) {
		log_err("request store: %s: cannot serialize", what);
		return -1;
	}
	rc = put(s, dbi, key, strlen(key), text, strlen(text), flags, what);
	free(text);
	return rc;
}

/* In t, or (NULL) in the open write transaction or a read one. */
static json_t *
get_json(struct reqstore *s, MDB_txn *t, MDB_dbi dbi, const char *key)
{
	MDB_val k = { strlen(key), (void *)key }, v;
	MDB_txn *own = NULL;
	json_t *doc = NULL;
	int rc;

	if (t == NULL && (t = own = rd_begin(s)) == NULL)
		return NULL;
	rc = mdb_get(t, dbi, &k, &v);
	if (rc == 0) {
		doc = json_loadb(v.mv_data, v.mv_size, 0, NULL);
		if (doc == NULL)
			log_ratelimited(LOG_ERR, "request store: unreadable entry %.128s", key);
	} else if (rc != MDB_NOTFOUND)
		store_error(s, "get", rc);
	rd_end(s, own);
	return doc;
}

int
reqstore_add_text(struct reqstore *s, uint64_t seq, const char *cid, const char *device,
    const char *text, size_t len)
{
	uint8_t sk[8], dk[DEVKEY_MAX];
	size_t dklen = dev_key(dk, device, seq), clen = strlen(cid);

	seq_key(sk, seq);
	if (put(s, s->rec, cid, clen, text, len, MDB_NOOVERWRITE, "add") == -1 ||
	    put(s, s->order, sk, 8, cid, clen, 0, "add order") == -1 ||
	    put(s, s->bydev, dk, dklen, cid, clen, 0, "add device index") == -1 ||
	    put(s, s->live, sk, 8, cid, clen, 0, "add live") == -1)
		return -1;
	return 0;
}

int
reqstore_update_text(struct reqstore *s, const char *cid, const char *text, size_t len)
{
	return put(s, s->rec, cid, strlen(cid), text, len, 0, "update");
}

int
reqstore_add(struct reqstore *s, uint64_t seq, const char *cid, const char *device,
    const json_t *rec)
{
	char *text = json_dumps(rec, JSON_COMPACT);
	int rc;

	if (text == NULL) {
		log_err("request store: add: cannot serialize");
		return -1;
	}
	rc = reqstore_add_text(s, seq, cid, device, text, strlen(text));
	free(text);
	return rc;
}

int
reqstore_update(struct reqstore *s, const char *cid, const json_t *rec)
{
	return put_json(s, s->rec, cid, rec, 0, "update");
}

int
reqstore_ended(struct reqstore *s, uint64_t seq)
{
	uint8_t sk[8];

	seq_key(sk, seq);
	return del(s, s->live, sk, 8, "end");
}

int
reqstore_remove(struct reqstore *s, uint64_t seq, const char *cid, const char *device)
{
	uint8_t sk[8], dk[DEVKEY_MAX];
	size_t dklen = dev_key(dk, device, seq);

	seq_key(sk, seq);
	if (del(s, s->rec, cid, strlen(cid), "remove") == -1 ||
	    del(s, s->order, sk, 8, "remove order") == -1 ||
	    del(s, s->bydev, dk, dklen, "remove device index") == -1 ||
	    del(s, s->live, sk, 8, "remove live") == -1)
		return -1;
	return 0;
}

json_t *
reqstore_get(struct reqstore *s, const char *cid)
{
	return get_json(s, NULL, s->rec, cid);
}

json_t *
reqstore_get_committed(struct reqstore *s, const char *cid)
{
	MDB_txn *t;
	json_t *doc;
	int rc;

	/* MDB_NOTLS: a read transaction beside the thread's write one. */
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &t)) != 0) {
		store_error(s, "read", rc);
		return NULL;
	}
	doc = get_json(s, t, s->rec, cid);
	mdb_txn_abort(t);
	return doc;
}

/* Calls fn for each entry whose value is a commandId; from (a walk of
 * 8-byte sequence keys after the prefix): forward, the first sequence;
 * reverse, the one past the first (the walk starts below it); 0: the start. */
static int
walk_ids(struct reqstore *s, MDB_dbi dbi, bool reverse, const void *prefix, size_t plen,
    uint64_t from, reqstore_walk_fn *fn, void *arg)
{
	MDB_txn *t = rd_begin(s);
	MDB_cursor *c = NULL;
	MDB_val k, v;
	uint8_t start[DEVKEY_MAX + 1];
	char cid[REQSTORE_ID_MAX + 1];
	int rc, ret = 0;

	if (t == NULL)
		return -1;
	if ((rc = mdb_cursor_open(t, dbi, &c)) != 0) {
		rd_end(s, t);
		return store_error(s, "walk", rc);
	}
	if (from > 0) {
		/* prefix (a device's, or none) then the sequence */
		if (plen > 0)
			memcpy(start, prefix, plen);
		seq_key(start + plen, from);
		k.mv_data = start;
		k.mv_size = plen + 8;
		rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
		/* reverse: the key before the first one at or past it */
		if (reverse && rc == 0)
			rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
		else if (reverse && rc == MDB_NOTFOUND)
			rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
	} else if (plen == 0)
		rc = mdb_cursor_get(c, &k, &v, reverse ? MDB_LAST : MDB_FIRST);
	else if (!reverse) {
		k.mv_data = (void *)prefix;
		k.mv_size = plen;
		rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
	} else {
		/* Just past the prefix's range: the prefix ends in NUL, so the
		 * same bytes ending in 0x01 sort after every key it begins. */
		memcpy(start, prefix, plen);
		start[plen - 1] = 0x01;
		k.mv_data = start;
		k.mv_size = plen;
		rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
		if (rc == 0)
			rc = mdb_cursor_get(c, &k, &v, MDB_PREV);
		else if (rc == MDB_NOTFOUND)
			rc = mdb_cursor_get(c, &k, &v, MDB_LAST);
	}
	for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, reverse ? MDB_PREV : MDB_NEXT)) {
		if (plen > 0 && (k.mv_size != plen + 8 || memcmp(k.mv_data, prefix, plen) != 0))
			break;
		if (k.mv_size < 8 || v.mv_size == 0 || v.mv_size > REQSTORE_ID_MAX)
			continue;
		memcpy(cid, v.mv_data, v.mv_size);
		cid[v.mv_size] = '\0';
		if (fn(seq_of((const uint8_t *)k.mv_data + k.mv_size - 8), cid, arg) != 0)
			break;
	}
	if (rc != 0 && rc != MDB_NOTFOUND)
		ret = store_error(s, "walk", rc);
	mdb_cursor_close(c);
	rd_end(s, t);
	return ret;
}

int
reqstore_walk_live(struct reqstore *s, reqstore_walk_fn *fn, void *arg)
{
	return walk_ids(s, s->live, false, NULL, 0, 0, fn, arg);
}

int
reqstore_walk_all(struct reqstore *s, bool reverse, reqstore_walk_fn *fn, void *arg)
{
	return walk_ids(s, s->order, reverse, NULL, 0, 0, fn, arg);
}

int
reqstore_walk_from(struct reqstore *s, uint64_t from, reqstore_walk_fn *fn, void *arg)
{
	return walk_ids(s, s->order, false, NULL, 0, from, fn, arg);
}

/* A device's requests in its index (the device id and a NUL, then the sequence). */
static int
walk_device(struct reqstore *s, const char *device, bool reverse, uint64_t from,
    reqstore_walk_fn *fn, void *arg)
{
	uint8_t prefix[DEVKEY_MAX];
	size_t n = strlen(device);

	if (n == 0 || n > REQSTORE_ID_MAX)
		return 0;
	memcpy(prefix, device, n);
	prefix[n] = '\0';
	return walk_ids(s, s->bydev, reverse, prefix, n + 1, from, fn, arg);
}

int
reqstore_walk_device(struct reqstore *s, const char *device, bool reverse,
    reqstore_walk_fn *fn, void *arg)
{
	return walk_device(s, device, reverse, 0, fn, arg);
}

int
reqstore_walk_device_before(struct reqstore *s, const char *device, uint64_t before,
    reqstore_walk_fn *fn, void *arg)
{
	return walk_device(s, device, true, before, fn, arg);
}

int
reqstore_note_put(struct reqstore *s, const struct reqstore_note *n)
{
	struct note_hdr h;
	uint8_t sk[8];
	size_t len;
	char *buf;
	int rc;

	if (n->idlen > 255 || n->devlen > 255 || n->jsonlen > UINT32_MAX)
		return -1;
	memset(&h, 0, sizeof(h));
	h.received_ms = n->received_ms;
	h.jsonlen = (uint32_t)n->jsonlen;
	h.idlen = (uint8_t)n->idlen;
	h.devlen = (uint8_t)n->devlen;
	len = sizeof(h) + n->idlen + n->devlen + n->jsonlen;
	if ((buf = malloc(len)) == NULL)
		return -1;
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + sizeof(h), n->id, n->idlen);
	memcpy(buf + sizeof(h) + n->idlen, n->device, n->devlen);
	memcpy(buf + sizeof(h) + n->idlen + n->devlen, n->json, n->jsonlen);
	seq_key(sk, n->seq);
	rc = put(s, s->notes, sk, 8, buf, len, 0, "note");
	free(buf);
	return rc;
}

int
reqstore_note_del(struct reqstore *s, uint64_t seq)
{
	uint8_t sk[8];

	seq_key(sk, seq);
	return del(s, s->notes, sk, 8, "note ack");
}

static int
note_parse(const MDB_val *k, const MDB_val *v, struct reqstore_note *n)
{
	struct note_hdr h;
	const char *p = v->mv_data;

	if (k->mv_size != 8 || v->mv_size < sizeof(h))
		return -1;
	memcpy(&h, p, sizeof(h));
	if (v->mv_size != sizeof(h) + h.idlen + h.devlen + (size_t)h.jsonlen)
		return -1;
	n->seq = seq_of(k->mv_data);
	n->received_ms = h.received_ms;
	n->id = p + sizeof(h);
	n->idlen = h.idlen;
	n->device = n->id + h.idlen;
	n->devlen = h.devlen;
	n->json = n->device + h.devlen;
	n->jsonlen = h.jsonlen;
	return 0;
}

/*
 * The pointers stay valid after the read transaction ends: LMDB's map is
 * only rewritten in place by a later write, and the caller uses them at
 * once.  (A write txn in between could reuse the pages.)
 */
int
reqstore_note_get(struct reqstore *s, uint64_t seq, struct reqstore_note *n)
{
	MDB_txn *t = rd_begin(s);
	uint8_t sk[8];
	MDB_val k = { 8, sk }, v;
	int rc, ret = -1;

	if (t == NULL)
		return -1;
	seq_key(sk, seq);
	rc = mdb_get(t, s->notes, &k, &v);
	if (rc == 0)
		ret = note_parse(&k, &v, n);
	else if (rc != MDB_NOTFOUND)
		store_error(s, "note get", rc);
	rd_end(s, t);
	return ret;
}

int
reqstore_walk_notes(struct reqstore *s, reqstore_note_fn *fn, void *arg)
{
	MDB_txn *t = rd_begin(s);
	MDB_cursor *c;
	MDB_val k, v;
	struct reqstore_note n;
	int rc, ret = 0;

	if (t == NULL)
		return -1;
	if ((rc = mdb_cursor_open(t, s->notes, &c)) != 0) {
		rd_end(s, t);
		return store_error(s, "notes", rc);
	}
	for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (note_parse(&k, &v, &n) == -1) {
			log_ratelimited(LOG_ERR, "request store: unreadable notification skipped");
			continue;
		}
		if (fn(&n, arg) != 0)
			break;
	}
	if (rc != 0 && rc != MDB_NOTFOUND)
		ret = store_error(s, "notes", rc);
	mdb_cursor_close(c);
	rd_end(s, t);
	return ret;
}

int
reqstore_dev_put(struct reqstore *s, const char *device, const json_t *doc)
{
	return put_json(s, s->devs, device, doc, 0, "device");
}

json_t *
reqstore_dev_get(struct reqstore *s, const char *device)
{
	return get_json(s, NULL, s->devs, device);
}

int
reqstore_walk_devs(struct reqstore *s, const char *after, reqstore_dev_fn *fn, void *arg)
{
	MDB_txn *t = rd_begin(s);
	MDB_cursor *c;
	MDB_val k, v;
	char id[REQSTORE_ID_MAX + 1];
	json_t *doc;
	int rc, ret = 0;

	if (t == NULL)
		return -1;
	if ((rc = mdb_cursor_open(t, s->devs, &c)) != 0) {
		rd_end(s, t);
		return store_error(s, "devices", rc);
	}
	if (after != NULL && *after != '\0') {
		k.mv_data = (void *)after;
		k.mv_size = strlen(after);
		rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE);
		if (rc == 0 && k.mv_size == strlen(after) && memcmp(k.mv_data, after, k.mv_size) == 0)
			rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
	} else
		rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
	for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
		if (k.mv_size == 0 || k.mv_size > REQSTORE_ID_MAX)
			continue;
		memcpy(id, k.mv_data, k.mv_size);
		id[k.mv_size] = '\0';
		doc = json_loadb(v.mv_data, v.mv_size, 0, NULL);
		if (doc == NULL) {
			log_ratelimited(LOG_ERR, "request store: unreadable device %s skipped", id);
			continue;
		}
		rc = fn(id, doc, arg);
		json_decref(doc);
		if (rc != 0)
			break;
	}
	if (rc != 0 && rc != MDB_NOTFOUND && rc != 1)
		ret = store_error(s, "devices", rc);
	mdb_cursor_close(c);
	rd_end(s, t);
	return ret;
}

uint64_t
reqstore_meta_get(struct reqstore *s, const char *name)
{
	MDB_txn *t = rd_begin(s);
	MDB_val k = { strlen(name), (void *)name }, v;
	uint64_t val = 0;

	if (t == NULL)
		return 0;
	if (mdb_get(t, s->meta, &k, &v) == 0 && v.mv_size == 8)
		val = seq_of(v.mv_data);
	rd_end(s, t);
	return val;
}

int
reqstore_meta_put(struct reqstore *s, const char *name, uint64_t v)
{
	uint8_t b[8];

	seq_key(b, v);
	return put(s, s->meta, name, strlen(name), b, 8, 0, "meta");
}
