/*
 * Unit tests of the spool (workers/spool.c, the queue in segment files of
 * workers/segq.c, the dead letters in LMDB) in temporary directories: order,
 * duplicates, deletion, reopening, byte accounting, dead letters, a map that
 * fills up, torn writes, segments that empty or thin out, a deletion log the
 * disk refuses, and a spool that an older herald queued in LMDB.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>
#include <dirent.h>
#include <fcntl.h>
#include <lmdb.h>

#include "workers/spool.h"
#include "workers/segq.h"

/*
 * While set, write(2) fails with ENOSPC (the test links with
 * -Wl,--wrap=write).  The spool writes its segment records with pwrite and
 * appends to deletion logs with write: this fails the deletion logs only,
 * as a disk whose last free block went does.
 */
static bool write_enospc;

ssize_t __real_write(int fd, const void *buf, size_t n);
ssize_t __wrap_write(int fd, const void *buf, size_t n);

ssize_t
__wrap_write(int fd, const void *buf, size_t n)
{
	if (write_enospc) {
		errno = ENOSPC;
		return -1;
	}
	return __real_write(fd, buf, n);
}

struct fx {
	char          dir[64];
	char          env[96];
	struct spool *s;
};

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

/* The first ids spool_open() reports gone, joined with spaces. */
static char gone_ids[4096];

static void
gone_cb(void *arg, const char *id, size_t idlen)
{
	size_t n = strlen(gone_ids);

	assert_ptr_equal(arg, gone_ids);
	if (n + idlen + 2 < sizeof(gone_ids))
		snprintf(gone_ids + n, sizeof(gone_ids) - n, "%s%.*s", n ? " " : "",
		    (int)idlen, id);
}

static struct spool *
open_env(const char *env, size_t max_bytes, enum fsync_mode m)
{
	char err[256] = "";
	struct spool *s;

	gone_ids[0] = '\0';
	s = spool_open(env, max_bytes, m, gone_cb, gone_ids, err, sizeof(err));

	if (s == NULL)
		fail_msg("spool_open %s: %s", env, err);
	return s;
}

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/test_spool.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	/* A directory that does not exist yet: spool_open creates it. */
	snprintf(f->env, sizeof(f->env), "%s/state/spool", f->dir);
	f->s = open_env(f->env, 1 << 20, FSYNC_OFF);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;

	spool_close(f->s);
	nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void
reopen(struct fx *f, size_t max_bytes, enum fsync_mode m)
{
	spool_close(f->s);
	f->s = open_env(f->env, max_bytes, m);
}

static int
put(struct spool *s, const char *id, const char *dev, int64_t ms, const char *json,
    uint64_t *seq)
{
	return spool_put(s, id, strlen(id), dev, strlen(dev), ms, json, strlen(json), seq);
}

static void
expect_rec(struct spool *s, uint64_t seq, const char *id, const char *dev,
    int64_t ms, const char *json)
{
	struct spool_rec r;

	assert_int_equal(spool_get(s, seq, &r), SPOOL_OK);
	assert_int_equal(r.seq, seq);
	assert_int_equal(r.received_ms, ms);
	assert_int_equal(r.idlen, strlen(id));
	assert_memory_equal(r.id, id, r.idlen);
	assert_int_equal(r.devlen, strlen(dev));
	assert_memory_equal(r.device, dev, r.devlen);
	assert_int_equal(r.jsonlen, strlen(json));
	assert_memory_equal(r.json, json, r.jsonlen);
}

struct seen {
	uint64_t seq[4096];
	char     id[4096][32];
	size_t   n;
	int      stop_at;
};

static int
collect(void *arg, const struct spool_rec *r)
{
	struct seen *sn = arg;

	if (sn->n < 4096) {
		sn->seq[sn->n] = r->seq;
		snprintf(sn->id[sn->n], sizeof(sn->id[0]), "%.*s", (int)r->idlen, r->id);
	}
	sn->n++;
	return sn->stop_at > 0 && sn->n == (size_t)sn->stop_at;
}

static void
test_put_get_order(void **state)
{
	struct fx *f = *state;
	struct seen *sn = calloc(1, sizeof(*sn));
	uint64_t a, b, c;
	struct spool_rec r;

	assert_int_equal(put(f->s, "A1", "dev-1", 100, "{\"n\":1}", &a), SPOOL_OK);
	assert_int_equal(put(f->s, "A2", "dev-2", 200, "{\"n\":2}", &b), SPOOL_OK);
	assert_int_equal(put(f->s, "A3", "dev-1", 300, "[]", &c), SPOOL_OK);
	assert_true(a < b && b < c);
	expect_rec(f->s, a, "A1", "dev-1", 100, "{\"n\":1}");
	expect_rec(f->s, b, "A2", "dev-2", 200, "{\"n\":2}");
	expect_rec(f->s, c, "A3", "dev-1", 300, "[]");
	assert_int_equal(spool_get(f->s, c + 1, &r), SPOOL_NOTFOUND);
	assert_int_equal(spool_foreach(f->s, collect, sn), 3);
	assert_int_equal(sn->n, 3);
	assert_int_equal(sn->seq[0], a);
	assert_int_equal(sn->seq[1], b);
	assert_int_equal(sn->seq[2], c);
	assert_string_equal(sn->id[2], "A3");
	/* The callback can stop the walk. */
	memset(sn, 0, sizeof(*sn));
	sn->stop_at = 2;
	assert_int_equal(spool_foreach(f->s, collect, sn), 2);
	free(sn);
}

static void
test_more_than_256_ordered(void **state)
{
	struct fx *f = *state;
	struct seen *sn = calloc(1, sizeof(*sn));
	char id[32];

	/* Big-endian keys: seq 256 must sort after 255, not after 1. */
	for (int i = 0; i < 600; i++) {
		snprintf(id, sizeof(id), "id-%04d", i);
		assert_int_equal(put(f->s, id, "d", i, "{}", NULL), SPOOL_OK);
	}
	assert_int_equal(spool_foreach(f->s, collect, sn), 600);
	for (int i = 0; i < 600; i++) {
		snprintf(id, sizeof(id), "id-%04d", i);
		assert_string_equal(sn->id[i], id);
		if (i > 0)
			assert_true(sn->seq[i] > sn->seq[i - 1]);
	}
	free(sn);
}

static void
test_duplicate_by_id(void **state)
{
	struct fx *f = *state;
	struct spool_stats st;
	uint64_t a, b = 777;

	assert_int_equal(put(f->s, "D1", "dev", 1, "{\"x\":1}", &a), SPOOL_OK);
	assert_int_equal(put(f->s, "D1", "dev", 2, "{\"x\":2}", &b), SPOOL_DUP);
	assert_int_equal(b, 777);       /* untouched on a duplicate */
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	assert_int_equal(st.bytes, strlen("{\"x\":1}"));
	expect_rec(f->s, a, "D1", "dev", 1, "{\"x\":1}");

	/* Inside one batch as well. */
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	assert_int_equal(put(f->s, "D2", "dev", 3, "{}", NULL), SPOOL_OK);
	assert_int_equal(put(f->s, "D2", "dev", 3, "{}", NULL), SPOOL_DUP);
	assert_int_equal(put(f->s, "D1", "dev", 3, "{}", NULL), SPOOL_DUP);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 2);
}

static void
test_invalid(void **state)
{
	struct fx *f = *state;
	char longid[SPOOL_ID_MAX + 2], longdev[SPOOL_DEVICE_MAX + 2];
	struct spool_stats st;

	memset(longid, 'i', sizeof(longid) - 1);
	longid[sizeof(longid) - 1] = '\0';
	memset(longdev, 'd', sizeof(longdev) - 1);
	longdev[sizeof(longdev) - 1] = '\0';
	assert_int_equal(put(f->s, "", "dev", 1, "{}", NULL), SPOOL_INVAL);
	assert_int_equal(put(f->s, longid, "dev", 1, "{}", NULL), SPOOL_INVAL);
	assert_int_equal(put(f->s, "ok", longdev, 1, "{}", NULL), SPOOL_INVAL);
	longid[SPOOL_ID_MAX] = '\0';
	assert_int_equal(put(f->s, longid, "dev", 1, "{}", NULL), SPOOL_OK);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	/* A batch cannot be opened twice; commit without a batch is harmless. */
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	assert_true(spool_in_batch(f->s));
	assert_int_equal(spool_begin(f->s), SPOOL_ERR);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	assert_false(spool_in_batch(f->s));
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
}

static void
test_delete(void **state)
{
	struct fx *f = *state;
	struct spool_stats st;
	struct spool_rec r;
	uint64_t a, b, c;

	assert_int_equal(put(f->s, "X1", "dev", 10, "12345", &a), SPOOL_OK);
	assert_int_equal(put(f->s, "X2", "dev", 20, "1234567", &b), SPOOL_OK);
	spool_stats(f->s, &st);
	assert_int_equal(st.bytes, 12);
	assert_int_equal(st.oldest_ms, 10);
	assert_int_equal(spool_del(f->s, a), SPOOL_OK);
	assert_int_equal(spool_get(f->s, a, &r), SPOOL_NOTFOUND);
	assert_int_equal(spool_del(f->s, a), SPOOL_NOTFOUND);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	assert_int_equal(st.bytes, 7);
	assert_int_equal(st.oldest_ms, 20);
	/* Once delivered, the id may come again (at-least-once): a new seq. */
	assert_int_equal(put(f->s, "X1", "dev", 10, "12345", &c), SPOOL_OK);
	assert_true(c > b);
	assert_int_equal(spool_del(f->s, b), SPOOL_OK);
	assert_int_equal(spool_del(f->s, c), SPOOL_OK);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 0);
	assert_int_equal(st.bytes, 0);
	assert_int_equal(st.oldest_ms, 0);
}

/*
 * A commit whose records were written but whose deletions the disk refused:
 * the records are stored (SPOOL_OK: the caller acknowledges them and their
 * sequences stay taken), the deletions wait for a later commit.  Taking the
 * sequences back let the next envelope reuse one and hide an acknowledged
 * envelope.
 */
static void
test_deletion_log_full_keeps_records(void **state)
{
	struct fx *f = *state;
	struct seen sn = { .n = 0 };
	uint64_t p, a, a2, b;

	reopen(f, 1 << 20, FSYNC_ALWAYS);
	assert_int_equal(put(f->s, "P", "dev", 1, "{\"p\":1}", &p), SPOOL_OK);
	assert_int_equal(spool_begin(f->s), 0);
	assert_int_equal(spool_del(f->s, p), SPOOL_OK);
	assert_int_equal(put(f->s, "A", "dev", 2, "{\"a\":1}", &a), SPOOL_OK);
	write_enospc = true;
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	write_enospc = false;
	assert_true(spool_disk_full(f->s));
	assert_true(spool_next_seq(f->s) > a);
	expect_rec(f->s, a, "A", "dev", 2, "{\"a\":1}");

	/* A again (its outbox resent it) is a duplicate; B gets a new sequence. */
	assert_int_equal(spool_begin(f->s), 0);
	assert_int_equal(put(f->s, "A", "dev", 2, "{\"a\":1}", &a2), SPOOL_DUP);
	assert_int_equal(put(f->s, "B", "dev", 3, "{\"b\":1}", &b), SPOOL_OK);
	assert_true(b > a);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	assert_false(spool_disk_full(f->s));
	expect_rec(f->s, a, "A", "dev", 2, "{\"a\":1}");
	expect_rec(f->s, b, "B", "dev", 3, "{\"b\":1}");

	/* The same after a restart; P's deletion was written by the last commit. */
	reopen(f, 1 << 20, FSYNC_ALWAYS);
	assert_int_equal(spool_foreach(f->s, collect, &sn), 2);
	assert_int_equal(sn.n, 2);
	assert_string_equal(sn.id[0], "A");
	assert_string_equal(sn.id[1], "B");
}

static void
test_reopen_keeps_everything(void **state)
{
	struct fx *f = *state;
	struct spool_stats st;
	uint64_t a, b, c, d;

	assert_int_equal(put(f->s, "R1", "dev-a", 1, "{\"a\":1}", &a), SPOOL_OK);
	assert_int_equal(put(f->s, "R2", "dev-b", 2, "{\"b\":22}", &b), SPOOL_OK);
	assert_int_equal(put(f->s, "R3", "dev-c", 3, "{}", &c), SPOOL_OK);
	assert_int_equal(spool_del(f->s, c), SPOOL_OK);
	reopen(f, 1 << 20, FSYNC_ALWAYS);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 2);
	assert_int_equal(st.bytes, strlen("{\"a\":1}") + strlen("{\"b\":22}"));
	expect_rec(f->s, a, "R1", "dev-a", 1, "{\"a\":1}");
	expect_rec(f->s, b, "R2", "dev-b", 2, "{\"b\":22}");
	/* Duplicates are still known after a restart. */
	assert_int_equal(put(f->s, "R2", "dev-b", 2, "{\"b\":22}", NULL), SPOOL_DUP);
	/* The counter survives even when the queue was emptied. */
	assert_int_equal(spool_del(f->s, a), SPOOL_OK);
	assert_int_equal(spool_del(f->s, b), SPOOL_OK);
	reopen(f, 1 << 20, FSYNC_BATCH);
	assert_int_equal(put(f->s, "R4", "dev", 4, "{}", &d), SPOOL_OK);
	assert_true(d > c);
}

/*
 * The ids of envelopes that left the queue (delivered, dead) before a
 * restart are reported at the open, in the order they left, so the http
 * worker knows them when an outbox resends one; the queued ones are not.
 */
static void
test_gone_ids_reported_at_open(void **state)
{
	struct fx *f = *state;
	uint64_t a, b, c, d;

	assert_int_equal(put(f->s, "G1", "dev", 1, "{}", &a), SPOOL_OK);
	assert_int_equal(put(f->s, "G2", "dev", 2, "{}", &b), SPOOL_OK);
	assert_int_equal(put(f->s, "G3", "dev", 3, "{}", &c), SPOOL_OK);
	assert_int_equal(put(f->s, "G4", "dev", 4, "{}", &d), SPOOL_OK);
	assert_int_equal(spool_del(f->s, c), SPOOL_OK);
	assert_int_equal(spool_del(f->s, a), SPOOL_OK);
	reopen(f, 1 << 20, FSYNC_BATCH);
	assert_string_equal(gone_ids, "G3 G1");
	assert_int_equal(spool_del(f->s, d), SPOOL_OK);
	reopen(f, 1 << 20, FSYNC_OFF);
	assert_string_equal(gone_ids, "G3 G1 G4");
	expect_rec(f->s, b, "G2", "dev", 2, "{}");
}

static void
test_uncommitted_batch_is_lost_on_close(void **state)
{
	struct fx *f = *state;
	struct spool_stats st;
	uint64_t a;

	assert_int_equal(put(f->s, "C1", "dev", 1, "{}", NULL), SPOOL_OK);
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	assert_int_equal(put(f->s, "C2", "dev", 2, "{}", &a), SPOOL_OK);
	/* Visible inside its own batch. */
	expect_rec(f->s, a, "C2", "dev", 2, "{}");
	reopen(f, 1 << 20, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	assert_int_equal(put(f->s, "C2", "dev", 2, "{}", NULL), SPOOL_OK);
}

static void
test_batch_commit_and_fsync_modes(void **state)
{
	struct fx *f = *state;
	enum fsync_mode modes[] = { FSYNC_OFF, FSYNC_BATCH, FSYNC_ALWAYS };
	struct spool_stats st;
	char id[32];
	int k = 0;

	for (size_t m = 0; m < 3; m++) {
		reopen(f, 1 << 20, modes[m]);
		assert_int_equal(spool_begin(f->s), SPOOL_OK);
		for (int i = 0; i < 100; i++, k++) {
			snprintf(id, sizeof(id), "B%d", k);
			assert_int_equal(put(f->s, id, "dev", k, "{\"v\":1}", NULL), SPOOL_OK);
		}
		assert_int_equal(spool_commit(f->s), SPOOL_OK);
	}
	reopen(f, 1 << 20, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 300);
	assert_int_equal(st.bytes, 300 * strlen("{\"v\":1}"));
}

struct dead_seen {
	char   id[64][32];
	char   reason[64][64];
	int    status[64];
	bool   replayable[64];
	size_t n;
};

static int
dead_collect(void *arg, const struct spool_dead *d)
{
	struct dead_seen *ds = arg;

	if (ds->n < 64) {
		snprintf(ds->id[ds->n], 32, "%.*s", (int)d->idlen, d->id);
		snprintf(ds->reason[ds->n], 64, "%.*s", (int)d->reasonlen, d->reason);
		ds->status[ds->n] = d->status;
		ds->replayable[ds->n] = d->replayable;
	}
	ds->n++;
	return 0;
}

static void
test_dead_letters(void **state)
{
	struct fx *f = *state;
	struct dead_seen ds;
	struct seen *sn = calloc(1, sizeof(*sn));
	struct spool_dead d, g;
	struct spool_stats st;
	uint64_t a, b;
	size_t replayed, skipped, purged;
	char answer[600];
	const uint8_t raw[] = { 0x00, 0xff, '{', 0x01 };

	memset(answer, 'z', sizeof(answer));
	/* A rejected raw payload. */
	memset(&d, 0, sizeof(d));
	d.id = "E1";
	d.idlen = 2;
	d.device = "dev-r";
	d.devlen = 5;
	d.topic = "device/dev-r/telemetry";
	d.topiclen = strlen(d.topic);
	d.reason = "rejected: invalid_json";
	d.reasonlen = strlen(d.reason);
	d.detail = "unexpected byte";
	d.detaillen = strlen(d.detail);
	d.data = raw;
	d.datalen = sizeof(raw);
	d.received_ms = 5;
	d.dead_ms = 6;
	assert_int_equal(spool_dead_put(f->s, &d), SPOOL_OK);
	assert_int_equal(spool_dead_put(f->s, &d), SPOOL_DUP);
	/* Its id is known: a re-sent copy of it is not queued again. */
	assert_int_equal(put(f->s, "E1", "dev-r", 5, "{}", NULL), SPOOL_DUP);

	/* A queued envelope that the backend refused for good. */
	assert_int_equal(put(f->s, "E2", "dev-b", 7, "{\"id\":\"E2\"}", &a), SPOOL_OK);
	assert_int_equal(put(f->s, "E3", "dev-b", 8, "{\"id\":\"E3\"}", &b), SPOOL_OK);
	assert_int_equal(spool_dead_move(f->s, a, "http_400", 400, answer, sizeof(answer),
	    "device/dev-b/events", 19, 99), SPOOL_OK);
	assert_int_equal(spool_dead_move(f->s, a, "http_400", 400, "", 0, "", 0, 99),
	    SPOOL_NOTFOUND);
	/* A rejected copy of a queued id is a duplicate. */
	d.id = "E3";
	assert_int_equal(spool_dead_put(f->s, &d), SPOOL_DUP);

	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	assert_int_equal(st.dead_depth, 2);
	assert_int_equal(st.bytes, strlen("{\"id\":\"E3\"}"));

	assert_int_equal(spool_dead_get(f->s, "E2", 2, &g), SPOOL_OK);
	assert_int_equal(g.status, 400);
	assert_int_equal(g.detaillen, SPOOL_DETAIL_MAX);
	assert_int_equal(g.reasonlen, 8);
	assert_memory_equal(g.reason, "http_400", 8);
	assert_memory_equal(g.device, "dev-b", 5);
	assert_memory_equal(g.topic, "device/dev-b/events", 19);
	assert_memory_equal(g.data, "{\"id\":\"E2\"}", g.datalen);
	assert_int_equal(g.received_ms, 7);
	assert_int_equal(g.dead_ms, 99);
	assert_true(g.replayable);
	assert_int_equal(spool_dead_get(f->s, "E1", 2, &g), SPOOL_OK);
	assert_false(g.replayable);
	assert_int_equal(g.datalen, sizeof(raw));
	assert_memory_equal(g.data, raw, sizeof(raw));
	assert_int_equal(spool_dead_get(f->s, "nope", 4, &g), SPOOL_NOTFOUND);

	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_dead_list(f->s, NULL, 0, 0, dead_collect, &ds), 2);
	assert_string_equal(ds.id[0], "E1");
	assert_string_equal(ds.reason[0], "rejected: invalid_json");
	assert_string_equal(ds.id[1], "E2");
	assert_int_equal(ds.status[1], 400);
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_dead_list(f->s, NULL, 0, 1, dead_collect, &ds), 1);
	/* Pages: after an id (there or not), never including it. */
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_dead_list(f->s, "E1", 2, 0, dead_collect, &ds), 1);
	assert_string_equal(ds.id[0], "E2");
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_dead_list(f->s, "E", 1, 0, dead_collect, &ds), 2);
	assert_string_equal(ds.id[0], "E1");
	assert_int_equal(spool_dead_list(f->s, "E2", 2, 0, dead_collect, &ds), 0);
	assert_int_equal(spool_dead_list(f->s, "F", 1, 0, dead_collect, &ds), 0);

	/* Not inside a batch. */
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	assert_int_equal(spool_dead_replay(f->s, NULL, 0, NULL, NULL, &replayed,
	    &skipped), SPOOL_INVAL);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);

	/* Replay all: the envelope returns behind E3, the raw payload stays. */
	assert_int_equal(spool_dead_replay(f->s, NULL, 0, collect, sn, &replayed,
	    &skipped), SPOOL_OK);
	assert_int_equal(replayed, 1);
	assert_int_equal(skipped, 1);
	assert_int_equal(sn->n, 1);
	assert_true(sn->seq[0] > b);
	assert_string_equal(sn->id[0], "E2");
	expect_rec(f->s, sn->seq[0], "E2", "dev-b", 7, "{\"id\":\"E2\"}");
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 2);
	assert_int_equal(st.dead_depth, 1);
	assert_int_equal(st.bytes, 2 * strlen("{\"id\":\"E2\"}"));
	/* It is a queued id again. */
	assert_int_equal(put(f->s, "E2", "dev-b", 7, "{}", NULL), SPOOL_DUP);

	/* Replay one: raw payload is skipped, unknown id is not found. */
	assert_int_equal(spool_dead_replay(f->s, "E1", 2, NULL, NULL, &replayed,
	    &skipped), SPOOL_OK);
	assert_int_equal(replayed, 0);
	assert_int_equal(skipped, 1);
	assert_int_equal(spool_dead_replay(f->s, "E9", 2, NULL, NULL, &replayed,
	    &skipped), SPOOL_NOTFOUND);
	assert_int_equal(spool_dead_move(f->s, b, "http_404", 404, "gone", 4, "", 0, 1),
	    SPOOL_OK);
	memset(sn, 0, sizeof(*sn));
	assert_int_equal(spool_dead_replay(f->s, "E3", 2, collect, sn, &replayed,
	    &skipped), SPOOL_OK);
	assert_int_equal(replayed, 1);
	assert_int_equal(sn->n, 1);
	assert_string_equal(sn->id[0], "E3");

	/* Dead letters survive a restart. */
	reopen(f, 1 << 20, FSYNC_OFF);
	assert_int_equal(spool_dead_get(f->s, "E1", 2, &g), SPOOL_OK);

	/* Purge one, then all. */
	d.id = "E4";
	assert_int_equal(spool_dead_put(f->s, &d), SPOOL_OK);
	d.id = "E5";
	assert_int_equal(spool_dead_put(f->s, &d), SPOOL_OK);
	assert_int_equal(spool_dead_purge(f->s, "E4", 2, &purged), SPOOL_OK);
	assert_int_equal(purged, 1);
	assert_int_equal(spool_dead_purge(f->s, "E4", 2, &purged), SPOOL_NOTFOUND);
	assert_int_equal(purged, 0);
	assert_int_equal(spool_dead_purge(f->s, NULL, 0, &purged), SPOOL_OK);
	assert_int_equal(purged, 2);
	spool_stats(f->s, &st);
	assert_int_equal(st.dead_depth, 0);
	assert_int_equal(st.depth, 2);
	/* Purged ids are no longer duplicates. */
	assert_int_equal(put(f->s, "E1", "dev-r", 5, "{}", NULL), SPOOL_OK);
	free(sn);
}

static void
dead_put_n(struct spool *s, const char *prefix, int n, bool replayable)
{
	struct spool_dead d;
	char id[16];

	memset(&d, 0, sizeof(d));
	d.device = "dev-t";
	d.devlen = 5;
	d.topic = "device/dev-t/telemetry";
	d.topiclen = strlen(d.topic);
	d.reason = replayable ? "http_400" : "rejected: invalid_json";
	d.reasonlen = strlen(d.reason);
	d.data = "{\"id\":1}";
	d.datalen = 8;
	d.replayable = replayable;
	for (int i = 0; i < n; i++) {
		d.idlen = (size_t)snprintf(id, sizeof(id), "%s%03d", prefix, i);
		d.id = id;
		assert_int_equal(spool_dead_put(s, &d), SPOOL_OK);
	}
}

/*
 * The trim drops the oldest entries that cannot be replayed, never the
 * others; a look stops after 8 times as many entries as it may drop and the
 * next one goes on from there, so a long run of replayable entries does not
 * hide the rejected ones behind it.
 */
static void
test_dead_trim(void **state)
{
	struct fx *f = *state;
	struct dead_seen ds;
	struct spool_stats st;
	size_t n, total = 0;
	bool more;
	int looks = 0;

	dead_put_n(f->s, "A", 100, true);       /* oldest: the backend refused them */
	dead_put_n(f->s, "B", 50, false);       /* then a device's invalid messages */
	spool_stats(f->s, &st);
	assert_int_equal(st.dead_depth, 150);
	assert_true(st.dead_bytes > 0);
	/* Under the limit: nothing. */
	assert_int_equal(spool_dead_trim(f->s, st.dead_bytes, 5, &n, &more), SPOOL_OK);
	assert_int_equal(n, 0);
	/* The first look sees 40 entries, all replayable. */
	assert_int_equal(spool_dead_trim(f->s, 0, 5, &n, &more), SPOOL_OK);
	assert_int_equal(n, 0);
	assert_true(more);
	do {
		assert_int_equal(spool_dead_trim(f->s, 0, 5, &n, &more), SPOOL_OK);
		assert_true(n <= 5);
		total += n;
		looks++;
	} while (more && looks < 100);
	/* Every rejected entry went, oldest first; no replayable one. */
	assert_int_equal(total, 50);
	spool_stats(f->s, &st);
	assert_int_equal(st.dead_depth, 100);
	memset(&ds, 0, sizeof(ds));
	assert_int_equal(spool_dead_list(f->s, NULL, 0, 0, dead_collect, &ds), 100);
	assert_string_equal(ds.id[0], "A000");
	/* Nothing left to drop: a look to the end says so. */
	assert_int_equal(spool_dead_trim(f->s, 0, 5, &n, &more), SPOOL_OK);
	while (more)
		assert_int_equal(spool_dead_trim(f->s, 0, 5, &n, &more), SPOOL_OK);
	assert_int_equal(n, 0);
	/* Inside an open batch too, with the batch's own changes. */
	dead_put_n(f->s, "C", 3, false);
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	do
		assert_int_equal(spool_dead_trim(f->s, 0, 1000, &n, &more), SPOOL_OK);
	while (more);
	assert_int_equal(n, 3);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	reopen(f, 1 << 20, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_int_equal(st.dead_depth, 100);
}

/*
 * A map too small for what is put: puts are refused with SPOOL_FULL, the
 * batch's earlier puts commit, deletions still work, nothing is corrupt.
 */
static void
test_map_full(void **state)
{
	struct fx *f = *state;
	struct seen *sn = calloc(1, sizeof(*sn));
	struct spool_stats st;
	static char body[3000];
	char id[32];
	uint64_t seqs[4096];
	int ok = 0, full = 0, i;

	memset(body, 'x', sizeof(body) - 1);
	reopen(f, 64 << 10, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_true(st.map_size < (4u << 20));

	/* Single puts until the first refusal. */
	for (i = 0; i < 4096; i++) {
		snprintf(id, sizeof(id), "F%05d", i);
		int rc = put(f->s, id, "dev", i, body, &seqs[ok]);
		if (rc == SPOOL_FULL)
			break;
		assert_int_equal(rc, SPOOL_OK);
		ok++;
	}
	assert_true(i < 4096);
	assert_true(ok > 100);
	/* Make room for 20, then a batch that overflows in its middle. */
	for (int k = 0; k < 20; k++)
		assert_int_equal(spool_del(f->s, seqs[k]), SPOOL_OK);
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	int inbatch = 0, rc;
	uint64_t bseq[200];
	for (i = 0; i < 200; i++) {
		snprintf(id, sizeof(id), "G%05d", i);
		rc = put(f->s, id, "dev", i, body, &bseq[inbatch]);
		if (rc == SPOOL_OK) {
			assert_int_equal(full, 0);
			inbatch++;
		} else {
			assert_int_equal(rc, SPOOL_FULL);
			full++;
		}
	}
	assert_true(inbatch > 0);
	assert_true(full > 0);
	/* The deletions above were committed alone; this batch only puts. */
	rc = spool_commit(f->s);
	if (rc == SPOOL_FULL) {
		/* The commit dropped the newest puts: a prefix stays. */
		int kept = 0;
		while (kept < inbatch && bseq[kept] < spool_next_seq(f->s))
			kept++;
		for (int k = kept; k < inbatch; k++)
			assert_true(bseq[k] >= spool_next_seq(f->s));
		inbatch = kept;
	} else {
		assert_int_equal(rc, SPOOL_OK);
	}
	assert_true(inbatch > 0);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, (uint64_t)(ok - 20 + inbatch));
	assert_int_equal(st.bytes, (uint64_t)(ok - 20 + inbatch) * (sizeof(body) - 1));
	assert_int_equal(spool_foreach(f->s, collect, sn), ok - 20 + inbatch);
	assert_string_equal(sn->id[ok - 20], "G00000");

	/* Reopen: the same content, the refused ones absent. */
	reopen(f, 64 << 10, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, (uint64_t)(ok - 20 + inbatch));
	assert_int_equal(st.bytes, (uint64_t)(ok - 20 + inbatch) * (sizeof(body) - 1));
	snprintf(id, sizeof(id), "G%05d", inbatch);
	assert_int_equal(put(f->s, id, "dev", 1, "{}", NULL), SPOOL_OK);

	/* Deleting everything in one batch works even at the edge. */
	memset(sn, 0, sizeof(*sn));
	assert_true(spool_foreach(f->s, collect, sn) > 0);
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	for (size_t k = 0; k < sn->n; k++)
		assert_int_equal(spool_del(f->s, sn->seq[k]), SPOOL_OK);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 0);
	assert_int_equal(st.bytes, 0);
	/* And there is room again. */
	assert_int_equal(put(f->s, "H1", "dev", 1, body, NULL), SPOOL_OK);
	free(sn);
}

/* Dead-letter moves must not be refused when the map is full: it grows. */
static void
test_map_full_moves_still_work(void **state)
{
	struct fx *f = *state;
	struct seen *sn = calloc(1, sizeof(*sn));
	struct spool_stats st, st2;
	static char body[3000];
	char id[32];
	int ok = 0;

	memset(body, 'y', sizeof(body) - 1);
	reopen(f, 64 << 10, FSYNC_OFF);
	for (int i = 0; i < 4096; i++) {
		snprintf(id, sizeof(id), "M%05d", i);
		if (put(f->s, id, "dev", i, body, NULL) != SPOOL_OK)
			break;
		ok++;
	}
	assert_int_equal(spool_foreach(f->s, collect, sn), ok);
	spool_stats(f->s, &st);
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	for (size_t k = 0; k < sn->n; k++)
		assert_int_equal(spool_dead_move(f->s, sn->seq[k], "http_400", 400,
		    "bad", 3, "", 0, 1), SPOOL_OK);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	spool_stats(f->s, &st2);
	assert_int_equal(st2.depth, 0);
	assert_int_equal(st2.dead_depth, (uint64_t)ok);
	assert_true(st2.map_size > st.map_size);

	/* The grown map is not for more envelopes: queued bytes stay under the
	 * first map size even with the dead letters gone. */
	size_t purged;
	assert_int_equal(spool_dead_purge(f->s, NULL, 0, &purged), SPOOL_OK);
	assert_int_equal(purged, (size_t)ok);
	int more = 0, rc;
	for (int i = 0; i < 4096; i++) {
		snprintf(id, sizeof(id), "N%05d", i);
		if ((rc = put(f->s, id, "dev", i, body, NULL)) != SPOOL_OK)
			break;
		more++;
	}
	assert_int_equal(rc, SPOOL_FULL);
	assert_true(more > 0);
	spool_stats(f->s, &st2);
	assert_true(st2.bytes <= st.map_size);
	assert_true(st2.bytes + sizeof(body) > st.map_size);     /* it was the cap */
	free(sn);
}

/* The segment logs (q-*.log) in the spool directory: count and total size. */
static int
seg_files(const char *env, const char *ext, size_t *bytes, char *last, size_t lastlen)
{
	DIR *d = opendir(env);
	struct dirent *de;
	int n = 0;

	assert_non_null(d);
	if (bytes != NULL)
		*bytes = 0;
	while ((de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		char path[512];
		struct stat st;

		if (strncmp(de->d_name, "q-", 2) != 0 || len < 4 ||
		    strcmp(de->d_name + len - 4, ext) != 0)
			continue;
		n++;
		snprintf(path, sizeof(path), "%s/%s", env, de->d_name);
		assert_int_equal(stat(path, &st), 0);
		if (bytes != NULL)
			*bytes += (size_t)st.st_size;
		if (last != NULL && strcmp(path, last) > 0)
			snprintf(last, lastlen, "%s", path);
	}
	closedir(d);
	return n;
}

/*
 * fsync = off, a power cut: a deletion entry reached the disk, its record
 * did not.  The next envelope must not get that record's sequence, or the
 * old entry deletes it at the next open.
 */
static void
test_deletion_of_a_lost_record_spares_the_next(void **state)
{
	struct fx *f = *state;
	char last[512] = "";
	size_t size_a;
	uint64_t a, b, c;
	int fd;

	assert_int_equal(put(f->s, "L1", "dev", 1, "{\"n\":1}", &a), SPOOL_OK);
	spool_close(f->s);
	f->s = NULL;
	assert_int_equal(seg_files(f->env, ".log", &size_a, last, sizeof(last)), 1);
	f->s = open_env(f->env, 1 << 20, FSYNC_OFF);
	assert_int_equal(put(f->s, "L2", "dev", 2, "{\"n\":2}", &b), SPOOL_OK);
	assert_int_equal(spool_del(f->s, b), SPOOL_OK);
	spool_close(f->s);
	f->s = NULL;
	/* L2's record is lost, its deletion entry is not. */
	assert_true((fd = open(last, O_RDWR)) >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size_a), 0);
	assert_int_equal(close(fd), 0);
	f->s = open_env(f->env, 1 << 20, FSYNC_OFF);
	assert_int_equal(put(f->s, "L3", "dev", 3, "{\"n\":3}", &c), SPOOL_OK);
	assert_true(c > b);
	reopen(f, 1 << 20, FSYNC_OFF);
	expect_rec(f->s, a, "L1", "dev", 1, "{\"n\":1}");
	expect_rec(f->s, c, "L3", "dev", 3, "{\"n\":3}");
}

/* A crash in the middle of a write: the tail of the newest segment is torn. */
static void
test_torn_tail_is_cut(void **state)
{
	struct fx *f = *state;
	struct spool_stats st;
	struct spool_rec r;
	struct seen *sn;
	char last[512] = "", junk[100];
	size_t before, after;
	uint64_t a, b;
	int fd;

	assert_int_equal(put(f->s, "T1", "dev", 1, "{\"n\":1}", &a), SPOOL_OK);
	assert_int_equal(put(f->s, "T2", "dev", 2, "{\"n\":2}", &b), SPOOL_OK);
	spool_close(f->s);
	f->s = NULL;
	assert_int_equal(seg_files(f->env, ".log", &before, last, sizeof(last)), 1);
	/* Part of a record header. */
	memset(junk, 0, sizeof(junk));
	memcpy(junk, "HLDQ", 4);
	junk[8] = 3;
	assert_true((fd = open(last, O_WRONLY | O_APPEND)) >= 0);
	assert_int_equal(write(fd, junk, 20), 20);
	assert_int_equal(close(fd), 0);
	f->s = open_env(f->env, 1 << 20, FSYNC_ALWAYS);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 2);
	expect_rec(f->s, a, "T1", "dev", 1, "{\"n\":1}");
	expect_rec(f->s, b, "T2", "dev", 2, "{\"n\":2}");
	seg_files(f->env, ".log", &after, NULL, 0);
	assert_int_equal(after, before);
	/* What comes next is appended where the torn write was. */
	assert_int_equal(put(f->s, "T3", "dev", 3, "{\"n\":3}", NULL), SPOOL_OK);
	reopen(f, 1 << 20, FSYNC_ALWAYS);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 3);
	/* A damaged byte in a committed record: that record is not delivered
	 * as if it were sound; the one after it is kept. */
	spool_close(f->s);
	f->s = NULL;
	seg_files(f->env, ".log", NULL, last, sizeof(last));
	assert_true((fd = open(last, O_RDWR)) >= 0);
	assert_int_equal(pwrite(fd, "X", 1, (off_t)before - 8), 1);   /* T2's JSON */
	assert_int_equal(close(fd), 0);
	f->s = open_env(f->env, 1 << 20, FSYNC_ALWAYS);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 2);
	expect_rec(f->s, a, "T1", "dev", 1, "{\"n\":1}");
	assert_int_equal(spool_get(f->s, b, &r), SPOOL_NOTFOUND);
	assert_int_equal(put(f->s, "T4", "dev", 4, "{\"n\":4}", NULL), SPOOL_OK);
	reopen(f, 1 << 20, FSYNC_ALWAYS);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 3);
	assert_non_null(sn = calloc(1, sizeof(*sn)));
	assert_int_equal(spool_foreach(f->s, collect, sn), 3);
	assert_string_equal(sn->id[0], "T1");
	assert_string_equal(sn->id[1], "T3");
	assert_string_equal(sn->id[2], "T4");
	free(sn);
}

/* Change one byte of the JSON of the record with this id (device "dev"),
 * in whichever segment holds it; that segment's path goes to path. */
static void
damage_record(const char *env, const char *id, char *path, size_t pathlen)
{
	DIR *d = opendir(env);
	struct dirent *de;
	bool done = false;

	assert_non_null(d);
	while (!done && (de = readdir(d)) != NULL) {
		size_t len = strlen(de->d_name);
		struct stat st;
		char *buf, *at;
		int fd;

		if (strncmp(de->d_name, "q-", 2) != 0 || len < 4 ||
		    strcmp(de->d_name + len - 4, ".log") != 0)
			continue;
		snprintf(path, pathlen, "%s/%s", env, de->d_name);
		assert_true((fd = open(path, O_RDWR)) >= 0);
		assert_int_equal(fstat(fd, &st), 0);
		assert_non_null(buf = malloc((size_t)st.st_size + 1));
		assert_int_equal(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
		if ((at = memmem(buf, (size_t)st.st_size, id, strlen(id))) != NULL) {
			/* Past the id and "dev": inside the JSON. */
			off_t off = (off_t)(at - buf) + (off_t)strlen(id) + 8;

			assert_int_equal(pwrite(fd, "#", 1, off), 1);
			done = true;
		}
		free(buf);
		assert_int_equal(close(fd), 0);
	}
	closedir(d);
	assert_true(done);
}

/*
 * A damaged record in an older segment costs that record only: the records
 * after it in the same segment stay queued, and copying the segment forward
 * steps over the damaged bytes.
 */
static void
test_damaged_record_costs_only_itself(void **state)
{
	struct fx *f = *state;
	static char body[8192];
	size_t n = SEGQ_SEG_MAX / sizeof(body) + 20;
	struct spool_stats st;
	struct spool_rec r;
	uint64_t *seqs;
	char id[32], damaged[512], last[512] = "";

	memset(body, 'd', sizeof(body) - 1);
	assert_non_null(seqs = calloc(n, sizeof(*seqs)));
	reopen(f, 256u << 20, FSYNC_OFF);
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	for (size_t k = 0; k < n; k++) {
		snprintf(id, sizeof(id), "D%06zu", k);
		assert_int_equal(put(f->s, id, "dev", (int64_t)k, body, &seqs[k]), SPOOL_OK);
	}
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	spool_close(f->s);
	f->s = NULL;
	assert_int_equal(seg_files(f->env, ".log", NULL, last, sizeof(last)), 2);
	damage_record(f->env, "D000010", damaged, sizeof(damaged));
	assert_string_not_equal(damaged, last);

	f->s = open_env(f->env, 256u << 20, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, n - 1);
	assert_int_equal(spool_get(f->s, seqs[10], &r), SPOOL_NOTFOUND);
	expect_rec(f->s, seqs[9], "D000009", "dev", 9, body);
	expect_rec(f->s, seqs[11], "D000011", "dev", 11, body);
	snprintf(id, sizeof(id), "D%06zu", n - 1);
	expect_rec(f->s, seqs[n - 1], id, "dev", (int64_t)(n - 1), body);

	/* Deliver all but D000011: its segment is copied forward, over the hole. */
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	for (size_t k = 0; k < n; k++)
		if (k != 10 && k != 11)
			assert_int_equal(spool_del(f->s, seqs[k]), SPOOL_OK);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	assert_int_equal(access(damaged, F_OK), -1);
	reopen(f, 256u << 20, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	expect_rec(f->s, seqs[11], "D000011", "dev", 11, body);
	free(seqs);
}

/*
 * Segments roll over at SEGQ_SEG_MAX; one whose records are all delivered
 * goes with its deletion log; one that keeps a single undelivered record
 * among many delivered ones is copied forward, so its dead space goes too.
 */
static void
test_segments_roll_empty_and_thin_out(void **state)
{
	struct fx *f = *state;
	static char body[8192];
	struct spool_stats st;
	uint64_t *seqs;
	size_t n = (3 * SEGQ_SEG_MAX) / sizeof(body) + 10, bytes;
	char id[32], path[512];
	int fd;

	memset(body, 'z', sizeof(body) - 1);
	assert_non_null(seqs = calloc(n, sizeof(*seqs)));
	reopen(f, 256u << 20, FSYNC_OFF);
	for (size_t i = 0; i < n; i += 100) {
		assert_int_equal(spool_begin(f->s), SPOOL_OK);
		for (size_t k = i; k < i + 100 && k < n; k++) {
			snprintf(id, sizeof(id), "S%06zu", k);
			assert_int_equal(put(f->s, id, "dev", (int64_t)k, body, &seqs[k]), SPOOL_OK);
		}
		assert_int_equal(spool_commit(f->s), SPOOL_OK);
	}
	assert_true(seg_files(f->env, ".log", NULL, NULL, 0) >= 3);
	/* Deliver all but one record in the middle. */
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	for (size_t k = 0; k < n; k++)
		if (k != n / 2)
			assert_int_equal(spool_del(f->s, seqs[k]), SPOOL_OK);
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	seg_files(f->env, ".log", &bytes, NULL, 0);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	assert_true(bytes < SEGQ_SEG_MAX + 4 * sizeof(body));
	snprintf(id, sizeof(id), "S%06zu", n / 2);
	expect_rec(f->s, seqs[n / 2], id, "dev", (int64_t)(n / 2), body);
	/* The record copied forward is the same record after a restart, once. */
	reopen(f, 256u << 20, FSYNC_OFF);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 1);
	assert_int_equal(st.bytes, sizeof(body) - 1);
	expect_rec(f->s, seqs[n / 2], id, "dev", (int64_t)(n / 2), body);
	assert_int_equal(put(f->s, id, "dev", 1, "{}", NULL), SPOOL_DUP);
	assert_int_equal(spool_del(f->s, seqs[n / 2]), SPOOL_OK);
	/* Nothing left but the newest segment. */
	assert_int_equal(put(f->s, "V", "dev", 1, "{}", NULL), SPOOL_OK);
	assert_int_equal(seg_files(f->env, ".log", NULL, NULL, 0), 1);
	assert_true(seg_files(f->env, ".del", NULL, NULL, 0) <= 1);
	/* A deletion log left behind by a crash between two unlinks goes too. */
	snprintf(path, sizeof(path), "%s/q-0000000000000002.del", f->env);
	assert_true((fd = open(path, O_WRONLY | O_CREAT, 0600)) >= 0);
	assert_int_equal(close(fd), 0);
	reopen(f, 256u << 20, FSYNC_OFF);
	assert_int_equal(access(path, F_OK), -1);
	free(seqs);
}

/*
 * One batch bigger than a segment's mapping: reading its end maps the
 * segment again, and what spool_get() returned before stays readable.
 */
static void
test_big_batch_pointers_stay_valid(void **state)
{
	struct fx *f = *state;
	static char body[16384];
	size_t n = (5 * SEGQ_SEG_MAX) / sizeof(body) + 10;
	struct spool_rec first, last;
	uint64_t s0 = 0, sn = 0, seq;
	char id[32];

	memset(body, 'b', sizeof(body) - 1);
	reopen(f, 256u << 20, FSYNC_OFF);
	assert_int_equal(spool_begin(f->s), SPOOL_OK);
	for (size_t k = 0; k < n; k++) {
		snprintf(id, sizeof(id), "B%06zu", k);
		assert_int_equal(put(f->s, id, "dev", 7, body, &seq), SPOOL_OK);
		if (k == 0)
			s0 = seq;
		sn = seq;
	}
	assert_int_equal(spool_commit(f->s), SPOOL_OK);
	assert_int_equal(spool_get(f->s, s0, &first), SPOOL_OK);
	assert_int_equal(spool_get(f->s, sn, &last), SPOOL_OK);
	assert_int_equal(first.jsonlen, sizeof(body) - 1);
	assert_memory_equal(first.json, body, first.jsonlen);
	assert_memory_equal(last.json, body, last.jsonlen);
	reopen(f, 256u << 20, FSYNC_OFF);
	expect_rec(f->s, sn, id, "dev", 7, body);
}

/* The record layout of the LMDB queue of an older herald (its "q" table). */
struct old_qhdr {
	uint8_t  ver;
	uint8_t  idlen;
	uint8_t  devlen;
	uint8_t  flags;
	uint32_t jsonlen;
	int64_t  received_ms;
};

static void
old_put(MDB_txn *t, MDB_dbi q, MDB_dbi ids, uint64_t seq, const char *id, const char *json)
{
	char v[256];
	uint8_t k[8];
	struct old_qhdr h = { 1, (uint8_t)strlen(id), 3, 0, (uint32_t)strlen(json), 42 };
	MDB_val kv = { 8, k }, vv = { sizeof(h) + h.idlen + 3 + h.jsonlen, v };
	MDB_val ik = { h.idlen, (void *)id }, iv = { 8, &seq };

	for (int i = 0; i < 8; i++)
		k[i] = (uint8_t)(seq >> (8 * (7 - i)));
	memcpy(v, &h, sizeof(h));
	memcpy(v + sizeof(h), id, h.idlen);
	memcpy(v + sizeof(h) + h.idlen, "dev", 3);
	memcpy(v + sizeof(h) + h.idlen + 3, json, h.jsonlen);
	assert_int_equal(mdb_put(t, q, &kv, &vv, 0), 0);
	assert_int_equal(mdb_put(t, ids, &ik, &iv, 0), 0);
}

/* Envelopes an older herald queued in LMDB are moved to segments, in order. */
static void
test_lmdb_queue_is_moved(void **state)
{
	struct fx *f = *state;
	struct seen *sn = calloc(1, sizeof(*sn));
	struct spool_stats st;
	MDB_env *env;
	MDB_txn *t;
	MDB_dbi q, ids;
	MDB_stat ms;
	uint64_t c;

	spool_close(f->s);
	f->s = NULL;
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
	assert_int_equal(mdb_env_open(env, f->env, 0, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, 0, &t), 0);
	assert_int_equal(mdb_dbi_open(t, "q", MDB_CREATE, &q), 0);
	assert_int_equal(mdb_dbi_open(t, "ids", MDB_CREATE, &ids), 0);
	old_put(t, q, ids, 700, "OLD1", "{\"a\":1}");
	old_put(t, q, ids, 701, "OLD2", "{\"b\":2}");
	assert_int_equal(mdb_txn_commit(t), 0);
	mdb_env_close(env);

	f->s = open_env(f->env, 1 << 20, FSYNC_ALWAYS);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 2);
	assert_int_equal(spool_foreach(f->s, collect, sn), 2);
	assert_string_equal(sn->id[0], "OLD1");
	assert_int_equal(sn->seq[0], 700);
	expect_rec(f->s, 701, "OLD2", "dev", 42, "{\"b\":2}");
	assert_int_equal(put(f->s, "OLD2", "dev", 1, "{}", NULL), SPOOL_DUP);
	assert_int_equal(put(f->s, "NEW", "dev", 1, "{}", &c), SPOOL_OK);
	assert_true(c > 701);
	reopen(f, 1 << 20, FSYNC_ALWAYS);
	spool_stats(f->s, &st);
	assert_int_equal(st.depth, 3);
	spool_close(f->s);
	f->s = NULL;
	/* LMDB's queue is empty now: nothing is moved twice. */
	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
	assert_int_equal(mdb_env_set_mapsize(env, 8u << 20), 0);
	assert_int_equal(mdb_env_open(env, f->env, MDB_RDONLY, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, MDB_RDONLY, &t), 0);
	assert_int_equal(mdb_dbi_open(t, "q", 0, &q), 0);
	assert_int_equal(mdb_stat(t, q, &ms), 0);
	assert_int_equal(ms.ms_entries, 0);
	mdb_txn_abort(t);
	mdb_env_close(env);
	f->s = open_env(f->env, 1 << 20, FSYNC_ALWAYS);
	free(sn);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_put_get_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_more_than_256_ordered, setup, teardown),
		cmocka_unit_test_setup_teardown(test_duplicate_by_id, setup, teardown),
		cmocka_unit_test_setup_teardown(test_invalid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_delete, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen_keeps_everything, setup, teardown),
		cmocka_unit_test_setup_teardown(test_gone_ids_reported_at_open, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deletion_log_full_keeps_records, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_uncommitted_batch_is_lost_on_close,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_batch_commit_and_fsync_modes, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_dead_letters, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dead_trim, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_full_moves_still_work, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_torn_tail_is_cut, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deletion_of_a_lost_record_spares_the_next,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_damaged_record_costs_only_itself, setup, teardown),
		cmocka_unit_test_setup_teardown(test_segments_roll_empty_and_thin_out, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_big_batch_pointers_stay_valid, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_lmdb_queue_is_moved, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
