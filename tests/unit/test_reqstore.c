/*
 * Unit tests of the router's request store (workers/reqstore.c) on real
 * LMDB environments in temporary directories: records and their indexes,
 * walks in both directions, notifications, presence, counters, aborted and
 * reopened transactions, a map that fills up, and the fsync = batch sync
 * thread.
 */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "workers/reqstore.h"

#define MAP (16u << 20)

struct fx {
	char             dir[64];
	char             env[96];
	struct reqstore *s;
};

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static struct reqstore *
open_env(const char *env, size_t map)
{
	char err[256] = "";
	struct reqstore *s = reqstore_open(env, map, FSYNC_OFF, err, sizeof(err));

	if (s == NULL)
		fail_msg("reqstore_open %s: %s", env, err);
	return s;
}

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/test_reqstore.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	/* Not there yet: reqstore_open creates it. */
	snprintf(f->env, sizeof(f->env), "%s/state/requests", f->dir);
	f->s = open_env(f->env, MAP);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;

	reqstore_close(f->s);
	nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void
reopen(struct fx *f)
{
	reqstore_close(f->s);
	f->s = open_env(f->env, MAP);
}

static json_t *
rec(const char *cid, const char *dev, const char *state)
{
	return json_pack("{s:s,s:s,s:s,s:{s:i}}", "commandId", cid, "device", dev, "state", state,
	    "params", "n", 1);
}

static void
add(struct reqstore *s, uint64_t seq, const char *cid, const char *dev)
{
	json_t *r = rec(cid, dev, "queued");

	assert_int_equal(reqstore_begin(s), 0);
	assert_int_equal(reqstore_add(s, seq, cid, dev, r), 0);
	assert_int_equal(reqstore_commit(s), 0);
	json_decref(r);
}

/* Collects (seq, cid) pairs of a walk as "seq:cid,..." */
struct seen {
	char buf[1024];
	int  stop_after;
	int  n;
};

static int
seen_cb(uint64_t seq, const char *cid, void *arg)
{
	struct seen *w = arg;
	size_t len = strlen(w->buf);

	snprintf(w->buf + len, sizeof(w->buf) - len, "%s%llu:%s", len ? "," : "",
	    (unsigned long long)seq, cid);
	return ++w->n == w->stop_after;
}

static void
test_add_get_update(void **state)
{
	struct fx *f = *state;
	json_t *r, *got;

	assert_null(reqstore_get(f->s, "c1"));
	add(f->s, 1, "c1", "dev-a");
	got = reqstore_get(f->s, "c1");
	r = rec("c1", "dev-a", "queued");
	assert_true(json_equal(got, r));
	json_decref(got);

	/* A commandId exists once. */
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_add(f->s, 2, "c1", "dev-a", r), -1);
	assert_false(reqstore_full(f->s));
	reqstore_abort(f->s);

	json_object_set_new(r, "state", json_string("sent"));
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_update(f->s, "c1", r), 0);
	/* The open transaction sees its own write. */
	got = reqstore_get(f->s, "c1");
	assert_string_equal(json_string_value(json_object_get(got, "state")), "sent");
	json_decref(got);
	assert_int_equal(reqstore_commit(f->s), 0);
	reopen(f);
	got = reqstore_get(f->s, "c1");
	assert_true(json_equal(got, r));
	json_decref(got);
	json_decref(r);
}

static void
test_writes_need_a_transaction(void **state)
{
	struct fx *f = *state;
	json_t *r = rec("c1", "d", "queued");

	assert_int_equal(reqstore_add(f->s, 1, "c1", "d", r), -1);
	assert_int_equal(reqstore_update(f->s, "c1", r), -1);
	assert_int_equal(reqstore_meta_put(f->s, "seq", 5), -1);
	assert_int_equal(reqstore_commit(f->s), -1);
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_begin(f->s), -1);    /* no nesting */
	reqstore_abort(f->s);
	assert_null(reqstore_get(f->s, "c1"));
	json_decref(r);
}

static void
test_abort_forgets(void **state)
{
	struct fx *f = *state;
	json_t *r = rec("c1", "d", "queued");
	struct seen w = { "", 0, 0 };

	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_add(f->s, 1, "c1", "d", r), 0);
	assert_int_equal(reqstore_meta_put(f->s, "seq", 2), 0);
	reqstore_abort(f->s);
	assert_null(reqstore_get(f->s, "c1"));
	assert_int_equal(reqstore_meta_get(f->s, "seq"), 0);
	assert_int_equal(reqstore_walk_live(f->s, seen_cb, &w), 0);
	assert_string_equal(w.buf, "");
	json_decref(r);
}

static void
test_walks(void **state)
{
	struct fx *f = *state;
	struct seen w;

	/* "a" is a prefix of "ab": a device's walk must not see the other's. */
	add(f->s, 1, "c1", "a");
	add(f->s, 2, "c2", "ab");
	add(f->s, 3, "c3", "a");
	add(f->s, 4, "c4", "b");
	add(f->s, 300, "c5", "a");

	memset(&w, 0, sizeof(w));
	reqstore_walk_live(f->s, seen_cb, &w);
	assert_string_equal(w.buf, "1:c1,2:c2,3:c3,4:c4,300:c5");
	memset(&w, 0, sizeof(w));
	reqstore_walk_all(f->s, true, seen_cb, &w);
	assert_string_equal(w.buf, "300:c5,4:c4,3:c3,2:c2,1:c1");
	memset(&w, 0, sizeof(w));
	reqstore_walk_device(f->s, "a", false, seen_cb, &w);
	assert_string_equal(w.buf, "1:c1,3:c3,300:c5");
	memset(&w, 0, sizeof(w));
	reqstore_walk_device(f->s, "a", true, seen_cb, &w);
	assert_string_equal(w.buf, "300:c5,3:c3,1:c1");
	memset(&w, 0, sizeof(w));
	reqstore_walk_device(f->s, "ab", true, seen_cb, &w);
	assert_string_equal(w.buf, "2:c2");
	/* The last device in key order, backwards (no key after its range). */
	memset(&w, 0, sizeof(w));
	reqstore_walk_device(f->s, "b", true, seen_cb, &w);
	assert_string_equal(w.buf, "4:c4");
	memset(&w, 0, sizeof(w));
	reqstore_walk_device(f->s, "nobody", true, seen_cb, &w);
	assert_string_equal(w.buf, "");
	memset(&w, 0, sizeof(w));
	reqstore_walk_device(f->s, "", false, seen_cb, &w);
	assert_string_equal(w.buf, "");
	/* A callback stops the walk. */
	memset(&w, 0, sizeof(w));
	w.stop_after = 2;
	reqstore_walk_all(f->s, false, seen_cb, &w);
	assert_string_equal(w.buf, "1:c1,2:c2");
}

static void
test_ended_and_removed(void **state)
{
	struct fx *f = *state;
	struct seen w;
	json_t *got;

	add(f->s, 1, "c1", "a");
	add(f->s, 2, "c2", "a");
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_ended(f->s, 1), 0);
	assert_int_equal(reqstore_ended(f->s, 99), 0);   /* unknown: nothing to do */
	assert_int_equal(reqstore_commit(f->s), 0);
	memset(&w, 0, sizeof(w));
	reqstore_walk_live(f->s, seen_cb, &w);
	assert_string_equal(w.buf, "2:c2");
	memset(&w, 0, sizeof(w));
	reqstore_walk_device(f->s, "a", false, seen_cb, &w);
	assert_string_equal(w.buf, "1:c1,2:c2");
	got = reqstore_get(f->s, "c1");
	assert_non_null(got);
	json_decref(got);

	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_remove(f->s, 1, "c1", "a"), 0);
	assert_int_equal(reqstore_remove(f->s, 2, "c2", "a"), 0);
	assert_int_equal(reqstore_commit(f->s), 0);
	reopen(f);
	assert_null(reqstore_get(f->s, "c1"));
	assert_null(reqstore_get(f->s, "c2"));
	memset(&w, 0, sizeof(w));
	reqstore_walk_all(f->s, false, seen_cb, &w);
	reqstore_walk_live(f->s, seen_cb, &w);
	reqstore_walk_device(f->s, "a", false, seen_cb, &w);
	assert_string_equal(w.buf, "");
}

struct notes_seen {
	char buf[1024];
};

static int
note_cb(const struct reqstore_note *n, void *arg)
{
	struct notes_seen *ns = arg;
	size_t len = strlen(ns->buf);

	snprintf(ns->buf + len, sizeof(ns->buf) - len, "%s%llu/%lld/%.*s/%.*s/%.*s",
	    len ? "," : "", (unsigned long long)n->seq, (long long)n->received_ms,
	    (int)n->idlen, n->id, (int)n->devlen, n->device, (int)n->jsonlen, n->json);
	return 0;
}

static void
put_note(struct reqstore *s, uint64_t seq, const char *id, const char *dev, const char *json)
{
	struct reqstore_note n = { seq, (int64_t)seq * 10, id, strlen(id), dev, strlen(dev),
	    json, strlen(json) };

	assert_int_equal(reqstore_note_put(s, &n), 0);
}

static void
test_notes(void **state)
{
	struct fx *f = *state;
	struct reqstore_note n;
	struct notes_seen ns = { "" };

	assert_int_equal(reqstore_note_get(f->s, 1, &n), -1);
	assert_int_equal(reqstore_begin(f->s), 0);
	put_note(f->s, 2, "ID2", "dev", "{\"b\":2}");
	put_note(f->s, 1, "ID1", "dev", "{\"a\":1}");
	put_note(f->s, 3, "ID3", "other", "{}");
	assert_int_equal(reqstore_commit(f->s), 0);

	assert_int_equal(reqstore_note_get(f->s, 2, &n), 0);
	assert_int_equal(n.seq, 2);
	assert_int_equal(n.received_ms, 20);
	assert_memory_equal(n.id, "ID2", 3);
	assert_int_equal(n.jsonlen, 7);
	assert_memory_equal(n.json, "{\"b\":2}", 7);
	reqstore_walk_notes(f->s, note_cb, &ns);
	assert_string_equal(ns.buf, "1/10/ID1/dev/{\"a\":1},2/20/ID2/dev/{\"b\":2},3/30/ID3/other/{}");

	/* Acknowledged ones go; acknowledging twice is harmless. */
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_note_del(f->s, 2), 0);
	assert_int_equal(reqstore_note_del(f->s, 2), 0);
	assert_int_equal(reqstore_commit(f->s), 0);
	reopen(f);
	memset(&ns, 0, sizeof(ns));
	reqstore_walk_notes(f->s, note_cb, &ns);
	assert_string_equal(ns.buf, "1/10/ID1/dev/{\"a\":1},3/30/ID3/other/{}");
	assert_int_equal(reqstore_note_get(f->s, 2, &n), -1);

	/* An id longer than the header can say is refused. */
	{
		char longid[300];
		struct reqstore_note bad = { 9, 0, longid, sizeof(longid), "d", 1, "{}", 2 };
		memset(longid, 'x', sizeof(longid));
		assert_int_equal(reqstore_begin(f->s), 0);
		assert_int_equal(reqstore_note_put(f->s, &bad), -1);
		reqstore_abort(f->s);
	}
}

struct devs_seen {
	char buf[512];
	int  stop_after, n;
};

static int
dev_cb(const char *id, json_t *doc, void *arg)
{
	struct devs_seen *ds = arg;
	size_t len = strlen(ds->buf);

	snprintf(ds->buf + len, sizeof(ds->buf) - len, "%s%s=%d", len ? "," : "", id,
	    json_is_true(json_object_get(doc, "online")));
	return ++ds->n == ds->stop_after;
}

static void
test_devices(void **state)
{
	struct fx *f = *state;
	struct devs_seen ds;
	const char *ids[] = { "m", "a", "z", "b" };
	json_t *doc, *got;

	assert_null(reqstore_dev_get(f->s, "a"));
	assert_int_equal(reqstore_begin(f->s), 0);
	for (size_t i = 0; i < 4; i++) {
		doc = json_pack("{s:b,s:I}", "online", i % 2, "lastSeen", (json_int_t)i);
		assert_int_equal(reqstore_dev_put(f->s, ids[i], doc), 0);
		json_decref(doc);
	}
	assert_int_equal(reqstore_commit(f->s), 0);
	got = reqstore_dev_get(f->s, "z");
	assert_int_equal(json_integer_value(json_object_get(got, "lastSeen")), 2);
	json_decref(got);

	memset(&ds, 0, sizeof(ds));
	reqstore_walk_devs(f->s, NULL, dev_cb, &ds);
	assert_string_equal(ds.buf, "a=1,b=1,m=0,z=0");
	/* A cursor: after an existing id, after one between ids, after the last. */
	memset(&ds, 0, sizeof(ds));
	reqstore_walk_devs(f->s, "b", dev_cb, &ds);
	assert_string_equal(ds.buf, "m=0,z=0");
	memset(&ds, 0, sizeof(ds));
	reqstore_walk_devs(f->s, "c", dev_cb, &ds);
	assert_string_equal(ds.buf, "m=0,z=0");
	memset(&ds, 0, sizeof(ds));
	reqstore_walk_devs(f->s, "z", dev_cb, &ds);
	assert_string_equal(ds.buf, "");
	memset(&ds, 0, sizeof(ds));
	ds.stop_after = 1;
	assert_int_equal(reqstore_walk_devs(f->s, "", dev_cb, &ds), 0);
	assert_string_equal(ds.buf, "a=1");
}

static void
test_meta(void **state)
{
	struct fx *f = *state;

	assert_int_equal(reqstore_meta_get(f->s, "seq"), 0);
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_meta_put(f->s, "seq", 0x0102030405060708ULL), 0);
	assert_int_equal(reqstore_meta_put(f->s, "nseq", 7), 0);
	assert_int_equal(reqstore_commit(f->s), 0);
	reopen(f);
	assert_int_equal(reqstore_meta_get(f->s, "seq"), 0x0102030405060708ULL);
	assert_int_equal(reqstore_meta_get(f->s, "nseq"), 7);
	assert_int_equal(reqstore_sync(f->s), 0);
}

static void
test_map_full(void **state)
{
	struct fx *f = *state;
	char cid[32], blob[2000];
	json_t *r;
	int i, rc = 0;

	reqstore_close(f->s);
	nftw(f->env, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	f->s = open_env(f->env, 256 * 1024);
	memset(blob, 'x', sizeof(blob) - 1);
	blob[sizeof(blob) - 1] = '\0';
	/* One request per transaction until the map refuses one. */
	for (i = 0; i < 1000; i++) {
		snprintf(cid, sizeof(cid), "c%d", i);
		r = json_pack("{s:s}", "blob", blob);
		assert_int_equal(reqstore_begin(f->s), 0);
		rc = reqstore_add(f->s, (uint64_t)i + 1, cid, "d", r);
		if (rc == 0)
			rc = reqstore_commit(f->s);
		else
			reqstore_abort(f->s);
		json_decref(r);
		if (rc != 0)
			break;
	}
	assert_int_equal(rc, -1);
	assert_true(i > 10);
	assert_true(reqstore_full(f->s));
	/* What was committed is still there and readable. */
	r = reqstore_get(f->s, "c0");
	assert_non_null(r);
	json_decref(r);
	/* Making room makes the store usable again. */
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_int_equal(reqstore_remove(f->s, 1, "c0", "d"), 0);
	assert_int_equal(reqstore_remove(f->s, 2, "c1", "d"), 0);
	assert_int_equal(reqstore_commit(f->s), 0);
	assert_int_equal(reqstore_begin(f->s), 0);
	assert_false(reqstore_full(f->s));
	assert_int_equal(reqstore_meta_put(f->s, "seq", 1), 0);
	assert_int_equal(reqstore_commit(f->s), 0);
}

static uint64_t
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* fsync = batch: a thread syncs on request while the caller goes on writing. */
static void
test_sync_thread(void **state)
{
	struct fx *f = *state;
	char err[256] = "", env[128];
	struct reqstore *s;
	json_t *rec = json_pack("{s:s}", "state", "queued"), *got;
	uint64_t n0, deadline;

	/* Without the thread (fsync = off): no syncs counted, calls still work. */
	assert_int_equal(reqstore_sync_async(f->s), 0);
	assert_int_equal(reqstore_sync_wait(f->s), 0);
	assert_int_equal(reqstore_syncs(f->s), 0);

	snprintf(env, sizeof(env), "%s/batch", f->dir);
	s = reqstore_open(env, MAP, FSYNC_BATCH, err, sizeof(err));
	assert_non_null(s);
	assert_int_equal(reqstore_syncs(s), 0);
	assert_int_equal(reqstore_begin(s), 0);
	assert_int_equal(reqstore_add(s, 1, "c1", "d1", rec), 0);
	assert_int_equal(reqstore_commit(s), 0);

	/* async returns at once; the sync happens, bounded by a deadline. */
	assert_int_equal(reqstore_sync_async(s), 0);
	deadline = mono_us() + 5000000;
	while (reqstore_syncs(s) == 0 && mono_us() < deadline)
		usleep(1000);
	assert_true(reqstore_syncs(s) >= 1);

	/* A burst of requests coalesces; wait returns only after a sync that
	 * started after it was called. */
	n0 = reqstore_syncs(s);
	for (int i = 0; i < 100; i++)
		assert_int_equal(reqstore_sync_async(s), 0);
	assert_int_equal(reqstore_sync_wait(s), 0);
	assert_true(reqstore_syncs(s) > n0);
	assert_true(reqstore_syncs(s) <= n0 + 102);

	/* A sync while a write transaction is open on this thread. */
	n0 = reqstore_syncs(s);
	assert_int_equal(reqstore_begin(s), 0);
	assert_int_equal(reqstore_add(s, 2, "c2", "d1", rec), 0);
	assert_int_equal(reqstore_sync_wait(s), 0);
	assert_true(reqstore_syncs(s) > n0);
	assert_int_equal(reqstore_commit(s), 0);

	/* Closing with a sync asked for neither hangs nor loses commits. */
	assert_int_equal(reqstore_sync_async(s), 0);
	reqstore_close(s);
	s = reqstore_open(env, MAP, FSYNC_BATCH, err, sizeof(err));
	assert_non_null(s);
	assert_non_null(got = reqstore_get(s, "c1"));
	json_decref(got);
	assert_non_null(got = reqstore_get(s, "c2"));
	json_decref(got);
	reqstore_close(s);
	json_decref(rec);
}

static void
test_open_fails_cleanly(void **state)
{
	struct fx *f = *state;
	char path[128], err[256] = "";
	FILE *fp;

	/* A file where the directory should be. */
	snprintf(path, sizeof(path), "%s/afile", f->dir);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fclose(fp);
	snprintf(path, sizeof(path), "%s/afile/requests", f->dir);
	assert_null(reqstore_open(path, MAP, FSYNC_ALWAYS, err, sizeof(err)));
	assert_non_null(strstr(err, path));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_add_get_update, setup, teardown),
		cmocka_unit_test_setup_teardown(test_writes_need_a_transaction, setup, teardown),
		cmocka_unit_test_setup_teardown(test_abort_forgets, setup, teardown),
		cmocka_unit_test_setup_teardown(test_walks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ended_and_removed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_notes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_devices, setup, teardown),
		cmocka_unit_test_setup_teardown(test_meta, setup, teardown),
		cmocka_unit_test_setup_teardown(test_map_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_fails_cleanly, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync_thread, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
