/*
 * Unit tests of the outbox ring (ipc/outbox.c) on real files: append and
 * ack in and out of order, wrap-around, a full ring, reopening, torn and
 * damaged records, a damaged header, and processes killed mid-append.
 */
#define _XOPEN_SOURCE 700
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "ipc/outbox.h"

/* The file layout outbox.c documents: a 4096-byte header page, then
 * records whose first 8 bytes are {u32 len, u32 state} (little endian),
 * then a 32-byte fixed part, the topic and the payload. */
#define HDRSIZE   4096
#define RECHDR    40
#define SMALL     (HDRSIZE + 4096)
#define ORIGIN(s) ((uint32_t)((s) * 7 + 3))

struct fx {
	char dir[64];
	char path[128];
};

static int
rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/test_outbox.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	/* A directory that does not exist yet: outbox_open creates it. */
	snprintf(f->path, sizeof(f->path), "%s/state/outbox/0.ring", f->dir);
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;

	nftw(f->dir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static struct outbox *
open_ob(const char *path, size_t size)
{
	char err[256] = "";
	struct outbox *ob = outbox_open(path, size, err, sizeof(err));

	if (ob == NULL)
		fail_msg("outbox_open %s: %s", path, err);
	return ob;
}

/* Payload of record `seq` in the tests that check contents: deterministic. */
static size_t
make_payload(uint64_t seq, char *buf, size_t max)
{
	size_t len = 1 + (seq * 37) % (max - 1);

	for (size_t i = 0; i < len; i++)
		buf[i] = (char)('a' + (seq + i) % 26);
	return len;
}

static uint64_t
append_n(struct outbox *ob, uint64_t seq_expect, size_t maxpay)
{
	char topic[64], pay[2048];
	size_t tl = (size_t)snprintf(topic, sizeof(topic), "device/d%llu/telemetry",
	    (unsigned long long)seq_expect);
	size_t pl = make_payload(seq_expect, pay, maxpay);
	uint64_t seq = 0;

	assert_int_equal(outbox_append(ob, topic, tl, pay, pl, (int64_t)seq_expect * 1000, ORIGIN(seq_expect), &seq), 0);
	assert_int_equal(seq, seq_expect);
	return seq;
}

struct collect {
	uint64_t seqs[4096];
	size_t   n;
	int      check_contents;
	size_t   maxpay;
	int      stop_at;
};

static int
collect_cb(void *arg, const struct outbox_rec *r)
{
	struct collect *c = arg;

	if (c->check_contents) {
		char topic[64], pay[2048];
		size_t tl = (size_t)snprintf(topic, sizeof(topic), "device/d%llu/telemetry",
		    (unsigned long long)r->seq);
		size_t pl = make_payload(r->seq, pay, c->maxpay);

		assert_int_equal(r->topic_len, tl);
		assert_memory_equal(r->topic, topic, tl);
		assert_int_equal(r->payload_len, pl);
		assert_memory_equal(r->payload, pay, pl);
		assert_int_equal(r->received_ms, (int64_t)r->seq * 1000);
		assert_int_equal(r->origin, ORIGIN(r->seq));
	}
	assert_true(c->n < 4096);
	c->seqs[c->n++] = r->seq;
	if (c->stop_at != 0 && (int)c->n == c->stop_at)
		return 7;
	return 0;
}

static void
collect(struct outbox *ob, struct collect *c, size_t maxpay)
{
	memset(c, 0, sizeof(*c));
	c->check_contents = 1;
	c->maxpay = maxpay;
	assert_int_equal(outbox_foreach(ob, 0, collect_cb, c), 0);
}

static void
test_append_ack_in_order(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	struct collect c;
	size_t r1;

	assert_true(outbox_epoch(ob) >= 1 && outbox_epoch(ob) <= 0xffff);
	assert_int_equal(outbox_next_seq(ob), 1);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(outbox_bytes(ob), 0);
	assert_int_equal(outbox_capacity(ob), (1 << 20) - HDRSIZE);
	assert_int_equal(outbox_room(ob), outbox_capacity(ob));
	for (uint64_t s = 1; s <= 3; s++)
		append_n(ob, s, 100);
	assert_int_equal(outbox_depth(ob), 3);
	r1 = outbox_record_size(strlen("device/d1/telemetry"), 1 + 37 % 99);
	assert_true(outbox_bytes(ob) > 2 * r1);
	assert_true(outbox_dirty(ob));
	assert_int_equal(outbox_sync(ob, FSYNC_ALWAYS), 0);
	assert_false(outbox_dirty(ob));
	collect(ob, &c, 100);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.seqs[0], 1);
	assert_int_equal(c.seqs[2], 3);

	size_t before = outbox_bytes(ob);
	assert_int_equal(outbox_ack(ob, 1), 0);
	assert_int_equal(outbox_depth(ob), 2);
	assert_int_equal(outbox_bytes(ob), before - r1);
	/* Twice, unknown, zero, future: refused without harm. */
	assert_int_equal(outbox_ack(ob, 1), -1);
	assert_int_equal(outbox_ack(ob, 0), -1);
	assert_int_equal(outbox_ack(ob, 99), -1);
	assert_int_equal(outbox_depth(ob), 2);
	assert_int_equal(outbox_ack(ob, 2), 0);
	assert_int_equal(outbox_ack(ob, 3), 0);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(outbox_bytes(ob), 0);
	collect(ob, &c, 100);
	assert_int_equal(c.n, 0);
	assert_int_equal(outbox_next_seq(ob), 4);
	outbox_close(ob);
}

static void
test_ack_out_of_order(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	struct collect c;
	size_t total, r[6];

	for (uint64_t s = 1; s <= 5; s++) {
		size_t b = outbox_bytes(ob);

		append_n(ob, s, 500);
		r[s] = outbox_bytes(ob) - b;
	}
	total = outbox_bytes(ob);
	assert_int_equal(outbox_ack(ob, 3), 0);
	assert_int_equal(outbox_ack(ob, 5), 0);
	assert_int_equal(outbox_depth(ob), 3);
	/* The tail waits for 1: nothing freed yet. */
	assert_int_equal(outbox_bytes(ob), total);
	collect(ob, &c, 500);
	assert_int_equal(c.n, 3);
	assert_int_equal(c.seqs[0], 1);
	assert_int_equal(c.seqs[1], 2);
	assert_int_equal(c.seqs[2], 4);
	assert_int_equal(outbox_ack(ob, 3), -1);
	assert_int_equal(outbox_ack(ob, 1), 0);
	assert_int_equal(outbox_bytes(ob), total - r[1]);
	/* 2 frees 2 and the already acknowledged 3. */
	assert_int_equal(outbox_ack(ob, 2), 0);
	assert_int_equal(outbox_bytes(ob), r[4] + r[5]);
	assert_int_equal(outbox_ack(ob, 4), 0);
	assert_int_equal(outbox_bytes(ob), 0);
	assert_int_equal(outbox_depth(ob), 0);
	outbox_close(ob);
}

static int
mark_sent_cb(void *arg, const struct outbox_rec *r)
{
	*r->last_sent = (int64_t)r->seq * 10;
	return 0;
}

static int
check_sent_cb(void *arg, const struct outbox_rec *r)
{
	assert_int_equal(*r->last_sent, (int64_t)r->seq * 10);
	(*(int *)arg)++;
	return 0;
}

/* The tag stays with the file's epoch: read back after a reopen. */
static void
test_tag_kept(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	uint32_t epoch = outbox_epoch(ob);

	assert_int_equal(outbox_tag(ob), 0);
	assert_int_equal(outbox_set_tag(ob, 0x8000beefu), 0);
	outbox_close(ob);
	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_epoch(ob), epoch);
	assert_int_equal(outbox_tag(ob), 0x8000beefu);
	outbox_close(ob);
}

static void
test_foreach(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	struct collect c;
	int n = 0;

	for (uint64_t s = 1; s <= 10; s++)
		append_n(ob, s, 300);
	assert_int_equal(outbox_ack(ob, 4), 0);
	/* From a sequence on, acknowledged records left out. */
	memset(&c, 0, sizeof(c));
	assert_int_equal(outbox_foreach(ob, 3, collect_cb, &c), 0);
	assert_int_equal(c.n, 7);
	assert_int_equal(c.seqs[0], 3);
	assert_int_equal(c.seqs[1], 5);
	/* A callback that stops: its value comes back. */
	memset(&c, 0, sizeof(c));
	c.stop_at = 2;
	assert_int_equal(outbox_foreach(ob, 0, collect_cb, &c), 7);
	assert_int_equal(c.n, 2);
	memset(&c, 0, sizeof(c));
	assert_int_equal(outbox_foreach(ob, 11, collect_cb, &c), 0);
	assert_int_equal(c.n, 0);
	/* last_sent is kept per record between walks. */
	assert_int_equal(outbox_foreach(ob, 0, mark_sent_cb, NULL), 0);
	assert_int_equal(outbox_ack(ob, 1), 0);
	for (uint64_t s = 11; s <= 12; s++)
		append_n(ob, s, 300);
	assert_int_equal(outbox_foreach(ob, 0, mark_sent_cb, NULL), 0);
	assert_int_equal(outbox_foreach(ob, 0, check_sent_cb, &n), 0);
	assert_int_equal(n, 10);
	outbox_close(ob);
}

/* Many laps of a small ring with a sliding window of live records, acked
 * in a scrambled order, checked against a model; reopened on the way. */
static void
test_wrap_around(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, SMALL);
	uint64_t next = 1, lo = 1;
	uint8_t acked[4000] = { 0 };
	struct collect c;
	unsigned rnd = 12345;
	size_t appended_bytes = 0;

	/* With syncing on, so the msync ranges (wrapped or not) and the header
	 * sync before an overwrite run too. */
	outbox_set_fsync(ob, FSYNC_BATCH);
	while (next < 3000) {
		size_t before = outbox_bytes(ob);
		char topic[64], pay[2048];
		size_t tl = (size_t)snprintf(topic, sizeof(topic), "device/d%llu/telemetry",
		    (unsigned long long)next);
		size_t pl = make_payload(next, pay, 400);
		uint64_t seq;

		if (outbox_append(ob, topic, tl, pay, pl, (int64_t)next * 1000, ORIGIN(next), &seq) == -1) {
			assert_int_equal(errno, ENOSPC);
			assert_true(outbox_room(ob) < outbox_record_size(tl, pl));
			/* Ack a random live record, or the oldest when stuck. */
			uint64_t pick = lo + (rnd = rnd * 1103515245 + 12345) % (next - lo);

			while (pick < next && acked[pick])
				pick++;
			if (pick == next)
				pick = lo;
			while (acked[pick])
				pick++;
			assert_int_equal(outbox_ack(ob, pick), 0);
			acked[pick] = 1;
			while (lo < next && acked[lo])
				lo++;
			continue;
		}
		assert_int_equal(seq, next);
		appended_bytes += outbox_bytes(ob) - before;
		next++;
		if (next % 7 == 0) {
			assert_int_equal(outbox_sync(ob, FSYNC_BATCH), 0);
			assert_false(outbox_dirty(ob));
		}
		if (next % 500 == 0) {
			size_t depth = outbox_depth(ob), bytes = outbox_bytes(ob);

			outbox_close(ob);
			ob = open_ob(f->path, SMALL);
			outbox_set_fsync(ob, FSYNC_BATCH);
			assert_int_equal(outbox_depth(ob), depth);
			assert_int_equal(outbox_bytes(ob), bytes);
			assert_int_equal(outbox_next_seq(ob), next);
		}
		/* The live set equals the model. */
		collect(ob, &c, 400);
		size_t k = 0;
		for (uint64_t s = lo; s < next; s++)
			if (!acked[s]) {
				assert_true(k < c.n);
				assert_int_equal(c.seqs[k], s);
				k++;
			}
		assert_int_equal(k, c.n);
		assert_int_equal(outbox_depth(ob), c.n);
	}
	/* Many laps really happened. */
	assert_true(appended_bytes > 20 * outbox_capacity(ob));
	outbox_close(ob);
}

static void
test_full(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, SMALL);
	char big[8192];
	uint64_t seq, n = 0;

	memset(big, 'x', sizeof(big));
	/* Larger than the ring can ever hold. */
	assert_int_equal(outbox_append(ob, "t", 1, big, 4096, 1, 0, &seq), -1);
	assert_int_equal(errno, EMSGSIZE);
	/* Exactly the whole ring fits when it is empty. */
	assert_int_equal(outbox_append(ob, "t", 1, big, 4096 - RECHDR - 1, 1, 0, &seq), 0);
	assert_int_equal(outbox_room(ob), 0);
	assert_int_equal(outbox_append(ob, "t", 1, "", 0, 1, 0, &seq), -1);
	assert_int_equal(errno, ENOSPC);
	assert_int_equal(outbox_ack(ob, 1), 0);
	assert_int_equal(outbox_room(ob), 4096);

	/* Fill with 200-byte records until refused. */
	while (outbox_append(ob, "t", 1, big, 200 - RECHDR - 1, 1, 0, &seq) == 0)
		n++;
	assert_int_equal(errno, ENOSPC);
	assert_int_equal(n, 4096 / 200);
	assert_true(outbox_room(ob) < 200);
	assert_int_equal(outbox_depth(ob), n);
	/* A full ring survives a reopen as full. */
	outbox_close(ob);
	ob = open_ob(f->path, SMALL);
	assert_int_equal(outbox_depth(ob), n);
	assert_int_equal(outbox_append(ob, "t", 1, big, 200 - RECHDR - 1, 1, 0, &seq), -1);
	/* Acking a middle record frees nothing; the oldest frees room. */
	assert_int_equal(outbox_ack(ob, 5), 0);
	assert_int_equal(outbox_append(ob, "t", 1, big, 200 - RECHDR - 1, 1, 0, &seq), -1);
	assert_int_equal(outbox_ack(ob, 2), 0);
	assert_true(outbox_room(ob) >= 200);
	assert_int_equal(outbox_append(ob, "t", 1, big, 200 - RECHDR - 1, 1, 0, &seq), 0);
	assert_int_equal(seq, n + 2);
	outbox_close(ob);
}

/* Fixed-size records so that the head falls on the boundary of a stale,
 * complete, acknowledged record of the previous lap: the open must stop
 * there (its sequence is lower), not take it as part of this lap. */
static void
test_stale_laps(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, SMALL);
	char pay[200];
	uint64_t seq;

	memset(pay, 'p', sizeof(pay));
	for (int i = 1; i <= 20; i++) {
		assert_int_equal(outbox_append(ob, "t", 1, pay, 200 - RECHDR - 1, i, 0, &seq), 0);
		assert_int_equal(outbox_ack(ob, seq), 0);
	}
	for (int i = 0; i < 5; i++)
		assert_int_equal(outbox_append(ob, "t", 1, pay, 200 - RECHDR - 1, i, 0, &seq), 0);
	assert_int_equal(outbox_bytes(ob), 1000);
	outbox_close(ob);
	ob = open_ob(f->path, SMALL);
	assert_int_equal(outbox_depth(ob), 5);
	assert_int_equal(outbox_bytes(ob), 1000);
	assert_int_equal(outbox_next_seq(ob), 26);
	assert_int_equal(outbox_append(ob, "t", 1, pay, 200 - RECHDR - 1, 1, 0, &seq), 0);
	assert_int_equal(seq, 26);
	for (uint64_t s = 21; s <= 26; s++)
		assert_int_equal(outbox_ack(ob, s), 0);
	outbox_close(ob);
	/* Empty, its tail on a stale record: nothing comes back to life. */
	ob = open_ob(f->path, SMALL);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(outbox_next_seq(ob), 27);
	assert_int_equal(outbox_append(ob, "t", 1, pay, 200 - RECHDR - 1, 1, 0, &seq), 0);
	assert_int_equal(seq, 27);
	outbox_close(ob);
	ob = open_ob(f->path, SMALL);
	assert_int_equal(outbox_depth(ob), 1);
	outbox_close(ob);
}

static void
patch(const char *path, off_t off, const void *p, size_t len)
{
	int fd = open(path, O_RDWR);

	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, p, len, off), (ssize_t)len);
	close(fd);
}

static void
test_seq_state(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	uint32_t zero = 0;
	size_t r1;

	assert_int_equal(outbox_seq_state(ob, 0), OUTBOX_UNKNOWN);
	assert_int_equal(outbox_seq_state(ob, 1), OUTBOX_UNKNOWN);
	append_n(ob, 1, 100);
	r1 = outbox_bytes(ob);
	for (uint64_t s = 2; s <= 5; s++)
		append_n(ob, s, 100);
	assert_int_equal(outbox_seq_state(ob, 1), OUTBOX_LIVE);
	assert_int_equal(outbox_seq_state(ob, 6), OUTBOX_UNKNOWN);
	assert_int_equal(outbox_ack(ob, 1), 0);
	assert_int_equal(outbox_ack(ob, 3), 0);
	assert_int_equal(outbox_seq_state(ob, 1), OUTBOX_ACKED);
	assert_int_equal(outbox_seq_state(ob, 2), OUTBOX_LIVE);
	assert_int_equal(outbox_seq_state(ob, 3), OUTBOX_ACKED);
	outbox_close(ob);
	/* Known across a reopen: acknowledged before the tail, live after it. */
	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_seq_state(ob, 1), OUTBOX_ACKED);
	assert_int_equal(outbox_seq_state(ob, 2), OUTBOX_LIVE);
	assert_int_equal(outbox_seq_state(ob, 3), OUTBOX_ACKED);
	assert_int_equal(outbox_seq_state(ob, 5), OUTBOX_LIVE);
	for (uint64_t s = 2; s <= 5; s++)
		outbox_ack(ob, s);
	assert_int_equal(outbox_seq_state(ob, 5), OUTBOX_ACKED);
	outbox_close(ob);
	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(outbox_seq_state(ob, 5), OUTBOX_ACKED);
	assert_int_equal(outbox_seq_state(ob, 6), OUTBOX_UNKNOWN);
	append_n(ob, 6, 100);
	append_n(ob, 7, 100);
	outbox_close(ob);
	/*
	 * Record 7 never reached the disk (torn, as after a power loss), though
	 * the header counted it: it is unknown, not acknowledged; 6 is live.
	 */
	off_t off = HDRSIZE;
	char pay[128];
	for (uint64_t s = 1; s <= 6; s++) {
		char topic[64];
		size_t tl = (size_t)snprintf(topic, sizeof(topic), "device/d%llu/telemetry",
		    (unsigned long long)s);

		off += (off_t)outbox_record_size(tl, make_payload(s, pay, 100));
	}
	patch(f->path, off + 4, &zero, 4);
	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_depth(ob), 1);
	assert_int_equal(outbox_seq_state(ob, 6), OUTBOX_LIVE);
	assert_int_equal(outbox_seq_state(ob, 7), OUTBOX_UNKNOWN);
	assert_int_equal(outbox_seq_state(ob, 5), OUTBOX_ACKED);
	outbox_close(ob);
	(void)r1;
}

static void
test_reopen(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	struct collect c;
	uint32_t epoch = outbox_epoch(ob);
	uint64_t seq;

	for (uint64_t s = 1; s <= 3; s++)
		append_n(ob, s, 1000);
	assert_int_equal(outbox_ack(ob, 2), 0);
	outbox_close(ob);

	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_epoch(ob), epoch);
	assert_int_equal(outbox_next_seq(ob), 4);
	assert_int_equal(outbox_depth(ob), 2);
	collect(ob, &c, 1000);
	assert_int_equal(c.n, 2);
	assert_int_equal(c.seqs[0], 1);
	assert_int_equal(c.seqs[1], 3);
	assert_int_equal(outbox_ack(ob, 2), -1);
	assert_int_equal(outbox_ack(ob, 1), 0);
	append_n(ob, 4, 1000);
	assert_int_equal(outbox_ack(ob, 3), 0);
	assert_int_equal(outbox_ack(ob, 4), 0);
	outbox_close(ob);

	/* Empty now, but the sequence goes on and the epoch stays. */
	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_epoch(ob), epoch);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(outbox_next_seq(ob), 5);
	assert_int_equal(outbox_append(ob, "t", 1, "p", 1, 1, 0, &seq), 0);
	assert_int_equal(seq, 5);
	outbox_close(ob);
}


static void
test_torn_record(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	struct collect c;
	size_t r1;
	uint32_t zero = 0;
	uint64_t seq;

	append_n(ob, 1, 100);
	r1 = outbox_bytes(ob);
	append_n(ob, 2, 100);
	append_n(ob, 3, 100);
	outbox_close(ob);

	/* Record 2 as a death between its len and its state would leave it. */
	patch(f->path, HDRSIZE + (off_t)r1 + 4, &zero, 4);
	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_depth(ob), 1);
	collect(ob, &c, 100);
	assert_int_equal(c.n, 1);
	assert_int_equal(c.seqs[0], 1);
	assert_int_equal(outbox_bytes(ob), r1);
	/* The sequence never goes back: 2 and 3 were handed out. */
	assert_true(outbox_next_seq(ob) >= 3);
	seq = outbox_next_seq(ob);
	append_n(ob, seq, 100);
	outbox_close(ob);
	ob = open_ob(f->path, 1 << 20);
	collect(ob, &c, 100);
	assert_int_equal(c.n, 2);
	assert_int_equal(c.seqs[0], 1);
	assert_int_equal(c.seqs[1], seq);
	outbox_close(ob);
}

static void
test_damaged_record(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	struct collect c;
	size_t r1;
	char x = 'Z';

	append_n(ob, 1, 100);
	r1 = outbox_bytes(ob);
	append_n(ob, 2, 100);
	outbox_close(ob);
	/* One payload byte of record 2 never reached the disk. */
	patch(f->path, HDRSIZE + (off_t)r1 + RECHDR + 20, &x, 1);
	ob = open_ob(f->path, 1 << 20);
	collect(ob, &c, 100);
	assert_int_equal(c.n, 1);
	assert_int_equal(c.seqs[0], 1);
	outbox_close(ob);
}

static uint32_t
count_bad(const char *path)
{
	char pat[200];
	glob_t g;
	uint32_t n;

	snprintf(pat, sizeof(pat), "%s.bad-*", path);
	if (glob(pat, 0, NULL, &g) != 0)
		return 0;
	n = (uint32_t)g.gl_pathc;
	globfree(&g);
	return n;
}

static void
test_corrupt_header(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	uint32_t epoch = outbox_epoch(ob), e2;
	uint8_t junk[8] = { 1, 2, 3, 4, 5, 6, 7, 8 };

	append_n(ob, 1, 100);
	append_n(ob, 2, 100);
	outbox_close(ob);

	patch(f->path, 0, junk, sizeof(junk));
	ob = open_ob(f->path, 1 << 20);
	assert_int_not_equal(outbox_epoch(ob), epoch);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(outbox_next_seq(ob), 1);
	assert_int_equal(count_bad(f->path), 1);
	e2 = outbox_epoch(ob);
	append_n(ob, 1, 100);
	outbox_close(ob);

	/* A flipped epoch fails the header checksum: a new epoch again, and
	 * never the one that was there. */
	uint8_t b;
	int fd = open(f->path, O_RDWR);
	assert_true(fd >= 0);
	assert_int_equal(pread(fd, &b, 1, 20), 1);
	b ^= 0x40;
	assert_int_equal(pwrite(fd, &b, 1, 20), 1);
	close(fd);
	ob = open_ob(f->path, 1 << 20);
	assert_int_not_equal(outbox_epoch(ob), e2);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(count_bad(f->path), 2);
	outbox_close(ob);

	/* Too short to be an outbox at all. */
	assert_int_equal(truncate(f->path, 10), 0);
	ob = open_ob(f->path, 1 << 20);
	assert_int_equal(outbox_depth(ob), 0);
	assert_int_equal(count_bad(f->path), 3);
	outbox_close(ob);
}

static void
test_resize(void **state)
{
	struct fx *f = *state;
	struct outbox *ob = open_ob(f->path, 1 << 20);
	uint32_t epoch = outbox_epoch(ob);
	struct stat st;

	append_n(ob, 1, 100);
	outbox_close(ob);
	/* Live records: the ring keeps its size. */
	ob = open_ob(f->path, 2 << 20);
	assert_int_equal(outbox_capacity(ob), (1 << 20) - HDRSIZE);
	assert_int_equal(outbox_depth(ob), 1);
	assert_int_equal(outbox_ack(ob, 1), 0);
	outbox_close(ob);
	/* Empty: it takes the new size, keeping epoch and sequence. */
	ob = open_ob(f->path, 2 << 20);
	assert_int_equal(outbox_capacity(ob), (2 << 20) - HDRSIZE);
	assert_int_equal(outbox_epoch(ob), epoch);
	assert_int_equal(outbox_next_seq(ob), 2);
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_size, 2 << 20);
	assert_int_equal(count_bad(f->path), 0);
	outbox_close(ob);
}

static void
test_bad_args(void **state)
{
	struct fx *f = *state;
	char err[256] = "";
	char path[200];

	assert_null(outbox_open(f->path, 100, err, sizeof(err)));
	assert_true(strlen(err) > 0);
	/* A directory that cannot be created. */
	snprintf(path, sizeof(path), "%s/file", f->dir);
	int fd = open(path, O_RDWR | O_CREAT, 0600);
	assert_true(fd >= 0);
	close(fd);
	snprintf(path, sizeof(path), "%s/file/sub/0.ring", f->dir);
	err[0] = '\0';
	assert_null(outbox_open(path, 1 << 20, err, sizeof(err)));
	assert_true(strlen(err) > 0);
}

/*
 * A child appends and acks in a small ring and is killed at a random
 * instruction; after each kill the ring must open, and hold every record
 * the child reported complete and not acknowledged, with its contents.
 */
static void
test_killed_mid_append(void **state)
{
	struct fx *f = *state;

	srand((unsigned)time(NULL));
	for (int round = 0; round < 30; round++) {
		int pfd[2];
		pid_t pid;
		struct outbox *ob;
		struct collect c;
		uint64_t done[2] = { 0, 0 }, got[2];
		ssize_t n;

		assert_int_equal(pipe(pfd), 0);
		pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			char err[256];
			struct outbox *cob;

			close(pfd[0]);
			cob = outbox_open(f->path, SMALL, err, sizeof(err));
			if (cob == NULL)
				_exit(3);
			for (;;) {
				char topic[64], pay[2048];
				uint64_t s = outbox_next_seq(cob), seq;
				size_t tl = (size_t)snprintf(topic, sizeof(topic),
				    "device/d%llu/telemetry", (unsigned long long)s);
				size_t pl = make_payload(s, pay, 400);

				if (outbox_append(cob, topic, tl, pay, pl, (int64_t)s * 1000, ORIGIN(s), &seq) == 0) {
					/* Tell the parent: highest complete seq, lowest live seq. */
					uint64_t msg[2] = { seq, 0 };
					struct collect cc;

					memset(&cc, 0, sizeof(cc));
					cc.stop_at = 1;
					outbox_foreach(cob, 0, collect_cb, &cc);
					msg[1] = cc.seqs[0];
					if (write(pfd[1], msg, sizeof(msg)) != sizeof(msg))
						_exit(4);
				} else {
					struct collect cc;

					memset(&cc, 0, sizeof(cc));
					cc.stop_at = 1;
					outbox_foreach(cob, 0, collect_cb, &cc);
					outbox_ack(cob, cc.seqs[0]);
				}
			}
		}
		close(pfd[1]);
		/* Keep the pipe drained while the child runs, so that the kill
		 * lands in its work, not in a blocked write. */
		assert_int_equal(fcntl(pfd[0], F_SETFL, O_NONBLOCK), 0);
		struct timespec t0, t1;
		long budget_us = 1000 + rand() % 20000;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		do {
			while ((n = read(pfd[0], got, sizeof(got))) == sizeof(got))
				memcpy(done, got, sizeof(done));
			clock_gettime(CLOCK_MONOTONIC, &t1);
		} while ((t1.tv_sec - t0.tv_sec) * 1000000L + (t1.tv_nsec - t0.tv_nsec) / 1000 < budget_us);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		while ((n = read(pfd[0], got, sizeof(got))) == sizeof(got))
			memcpy(done, got, sizeof(done));
		close(pfd[0]);

		ob = open_ob(f->path, SMALL);
		collect(ob, &c, 400);
		/* The last record the child finished is there (it acks only the
		 * oldest, when full, so that one cannot have been acked), with
		 * at most the one it was writing after it; all in sequence. */
		if (done[0] != 0) {
			assert_true(c.n > 0);
			assert_true(c.seqs[0] <= done[0]);
			assert_true(c.seqs[c.n - 1] >= done[0]);
			assert_true(c.seqs[c.n - 1] <= done[0] + 1);
			assert_true(outbox_next_seq(ob) > done[0]);
		}
		for (size_t i = 1; i < c.n; i++)
			assert_true(c.seqs[i] > c.seqs[i - 1]);
		outbox_close(ob);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_append_ack_in_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ack_out_of_order, setup, teardown),
		cmocka_unit_test_setup_teardown(test_foreach, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tag_kept, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrap_around, setup, teardown),
		cmocka_unit_test_setup_teardown(test_full, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_laps, setup, teardown),
		cmocka_unit_test_setup_teardown(test_seq_state, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_damaged_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_header, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resize, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_args, setup, teardown),
		cmocka_unit_test_setup_teardown(test_killed_mid_append, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
