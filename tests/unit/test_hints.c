/*
 * Unit tests of the crypto worker's kept device hints (workers/hints.c):
 * sequences, acknowledgements in any order, what is due again and when
 * (2 s, then twice as late up to 30 s), and the two bounds -- the count and
 * the payload bytes -- past which the oldest go.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "workers/hints.h"

struct seen {
	int      n;
	uint64_t seqs[64];
	char     last[64];
};

static void
collect(void *arg, const struct hint_view *v)
{
	struct seen *s = arg;

	if (s->n < 64)
		s->seqs[s->n] = v->hseq;
	s->n++;
	snprintf(s->last, sizeof(s->last), "%s %.*s %.*s %lld", v->kind, (int)v->devlen,
	    v->device, (int)v->jsonlen, v->json, (long long)v->received_ms);
}

static uint64_t
keep(struct hints *h, const char *dev, const char *json, int64_t now, int *dropped)
{
	return hints_keep(h, "status", dev, strlen(dev), json, strlen(json), 1000 + now, now,
	    dropped);
}

static void
test_keep_ack_due(void **state)
{
	struct hints *h = hints_new(16, 1 << 20);
	struct seen s;
	uint64_t a[3];
	int dropped;

	for (int i = 0; i < 3; i++) {
		a[i] = keep(h, "dev-a", "{\"state\":\"online\"}", 0, &dropped);
		assert_int_equal(a[i], (uint64_t)i + 1);
		assert_int_equal(dropped, 0);
	}
	assert_int_equal(hints_count(h), 3);
	assert_int_equal(hints_bytes(h), 3 * (5 + 18));

	/* Nothing is due before its first wait. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(hints_due(h, HINTS_RESEND_MS - 1, 100, collect, &s), 0);

	/* The middle one taken: its payload goes at once. */
	hints_ack(h, &a[1], 1);
	assert_int_equal(hints_count(h), 2);
	assert_int_equal(hints_bytes(h), 2 * (5 + 18));

	/* The other two are due, oldest first, with what was kept. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(hints_due(h, HINTS_RESEND_MS, 100, collect, &s), 2);
	assert_int_equal(s.seqs[0], 1);
	assert_int_equal(s.seqs[1], 3);
	assert_string_equal(s.last, "status dev-a {\"state\":\"online\"} 1000");

	/* Then twice as late: not 2 s after that copy, 4 s after it. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(hints_due(h, 2 * HINTS_RESEND_MS, 100, collect, &s), 0);
	assert_int_equal(hints_due(h, 3 * HINTS_RESEND_MS, 100, collect, &s), 2);

	/* At most `max` a call. */
	memset(&s, 0, sizeof(s));
	assert_int_equal(hints_due(h, 1000000, 1, collect, &s), 1);
	assert_int_equal(s.seqs[0], 1);

	/* Unknown sequences change nothing; acknowledging twice is harmless. */
	{
		uint64_t odd[] = { 0, 99, 2, 2 };

		hints_ack(h, odd, 4);
		assert_int_equal(hints_count(h), 2);
	}
	hints_ack(h, a, 3);
	assert_int_equal(hints_count(h), 0);
	assert_int_equal(hints_bytes(h), 0);
	memset(&s, 0, sizeof(s));
	assert_int_equal(hints_due(h, 10000000, 100, collect, &s), 0);

	/* Sequences go on after the ring emptied. */
	assert_int_equal(keep(h, "dev-b", "{}", 0, &dropped), 4);
	hints_free(h);
}

static void
test_wait_caps_at_30s(void **state)
{
	struct hints *h = hints_new(4, 1 << 20);
	struct seen s;
	int64_t waits[8];
	int dropped, n = 0;

	keep(h, "dev-a", "{}", 0, &dropped);
	/* Step a millisecond at a time: record the gaps between copies. */
	for (int64_t t = 0, last = 0; t <= 200000 && n < 8; t++) {
		memset(&s, 0, sizeof(s));
		if (hints_due(h, t, 10, collect, &s) == 1) {
			waits[n++] = t - last;
			last = t;
		}
	}
	assert_int_equal(n, 8);
	assert_int_equal(waits[0], 2000);
	assert_int_equal(waits[1], 4000);
	assert_int_equal(waits[2], 8000);
	assert_int_equal(waits[3], 16000);
	assert_int_equal(waits[4], 30000);
	assert_int_equal(waits[5], 30000);
	hints_free(h);
}

static void
test_count_bound(void **state)
{
	struct hints *h = hints_new(4, 1 << 20);
	struct seen s;
	uint64_t first;
	int dropped;

	for (int i = 0; i < 4; i++)
		keep(h, "dev-a", "{}", 0, &dropped);
	assert_int_equal(hints_count(h), 4);
	/* A fifth: the oldest goes. */
	assert_int_equal(keep(h, "dev-a", "{}", 0, &dropped), 5);
	assert_int_equal(dropped, 1);
	assert_int_equal(hints_count(h), 4);
	memset(&s, 0, sizeof(s));
	hints_due(h, HINTS_RESEND_MS, 100, collect, &s);
	assert_int_equal(s.n, 4);
	assert_int_equal(s.seqs[0], 2);
	assert_int_equal(s.seqs[3], 5);

	/* Acknowledged ones behind an unacknowledged oldest hold their slot,
	 * not their bytes; making room drops only hints not yet taken. */
	{
		uint64_t taken[] = { 3, 4 };

		hints_ack(h, taken, 2);
	}
	assert_int_equal(hints_count(h), 2);
	first = keep(h, "dev-a", "{}", 0, &dropped);
	assert_int_equal(first, 6);
	assert_int_equal(dropped, 1);         /* 2 went; 3 and 4 were taken */
	assert_int_equal(hints_count(h), 2);  /* 5 and 6 */
	memset(&s, 0, sizeof(s));
	hints_due(h, HINTS_RESEND_MS * 100, 100, collect, &s);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.seqs[0], 5);
	assert_int_equal(s.seqs[1], 6);
	hints_free(h);
}

static void
test_byte_bound(void **state)
{
	char big[1001];
	struct hints *h = hints_new(1024, 3000);
	int dropped;

	memset(big, 'x', 1000);
	big[1000] = '\0';
	/* 5 + 1000 bytes each: two fit, the third pushes the first out. */
	assert_int_equal(keep(h, "dev-a", big, 0, &dropped), 1);
	assert_int_equal(keep(h, "dev-b", big, 0, &dropped), 2);
	assert_int_equal(dropped, 0);
	assert_int_equal(hints_bytes(h), 2010);
	assert_int_equal(keep(h, "dev-c", big, 0, &dropped), 3);
	assert_int_equal(dropped, 1);
	assert_int_equal(hints_count(h), 2);
	assert_int_equal(hints_bytes(h), 2010);
	/* Larger than the whole budget: not kept, and nothing dropped for it. */
	{
		char huge[3100];

		memset(huge, 'y', sizeof(huge) - 1);
		huge[sizeof(huge) - 1] = '\0';
		assert_int_equal(keep(h, "dev-d", huge, 0, &dropped), 0);
		assert_int_equal(dropped, 0);
		assert_int_equal(hints_count(h), 2);
	}
	hints_free(h);
}

/*
 * The ring grows with what is kept at once, not with the sequences handed
 * out: 100,000 hints acknowledged as they come leave it at its first size;
 * 1,000 kept at once grow it, and every one of them is still there, due in
 * order.
 */
static void
test_ring_grows_with_what_is_kept(void **state)
{
	struct hints *h = hints_new(65536, 1 << 20);
	struct seen s;
	int dropped;
	size_t first;

	(void)state;
	assert_non_null(h);
	first = hints_slots(h);
	assert_true(first < 65536);
	for (int i = 0; i < 100000; i++) {
		uint64_t q = keep(h, "d1", "{}", 0, &dropped);

		assert_int_equal(q, (uint64_t)i + 1);
		hints_ack(h, &q, 1);
	}
	assert_int_equal(hints_slots(h), first);
	assert_int_equal(hints_count(h), 0);
	for (int i = 0; i < 1000; i++) {
		char dev[16];

		snprintf(dev, sizeof(dev), "d%d", i);
		assert_int_not_equal(keep(h, dev, "{}", 0, &dropped), 0);
		assert_int_equal(dropped, 0);
	}
	assert_true(hints_slots(h) >= 1000 && hints_slots(h) <= 2048);
	assert_int_equal(hints_count(h), 1000);
	memset(&s, 0, sizeof(s));
	assert_int_equal(hints_due(h, HINTS_RESEND_MS, 64, collect, &s), 64);
	for (int i = 0; i < 64; i++)
		assert_int_equal(s.seqs[i], 100001 + (uint64_t)i);
	memset(&s, 0, sizeof(s));
	assert_int_equal(hints_due(h, HINTS_RESEND_MS, 2000, collect, &s), 1000 - 64);
	assert_string_equal(s.last, "status d999 {} 1000");
	for (uint64_t q = 100001; q <= 101000; q++)
		hints_ack(h, &q, 1);
	assert_int_equal(hints_count(h), 0);
	/* Empty after a stretch that needed it all: kept at its size. */
	assert_true(hints_slots(h) >= 1000);
	hints_free(h);
}

static void
test_ring_shrinks_after_an_outage(void **state)
{
	struct hints *h = hints_new(65536, 64 << 20);
	uint64_t q, last = 0;
	int dropped;

	(void)state;
	assert_non_null(h);
	/* A router outage: 50,000 kept, none acknowledged. */
	for (int i = 0; i < 50000; i++) {
		last = keep(h, "d1", "{}", 0, &dropped);
		assert_int_not_equal(last, 0);
		assert_int_equal(dropped, 0);
	}
	assert_int_equal(hints_slots(h), 65536);
	for (q = 1; q <= last; q++)
		hints_ack(h, &q, 1);
	assert_int_equal(hints_count(h), 0);
	assert_int_equal(hints_slots(h), 65536);    /* that stretch needed it */
	/* Then a quiet stretch: at most 3 kept at once.  Empty at its end, the
	 * ring goes back to its smallest. */
	for (int i = 0; i < 3; i++)
		last = keep(h, "d1", "{}", 0, &dropped);
	for (q = last - 2; q <= last; q++)
		hints_ack(h, &q, 1);
	assert_int_equal(hints_slots(h), 256);
	/* And still works: kept, due, acknowledged across the new ring. */
	for (int i = 0; i < 600; i++)
		assert_int_equal(keep(h, "d2", "{}", 0, &dropped), last + 1 + (uint64_t)i);
	assert_true(hints_slots(h) >= 600 && hints_slots(h) <= 1024);
	assert_int_equal(hints_count(h), 600);
	for (q = last + 1; q <= last + 600; q++)
		hints_ack(h, &q, 1);
	assert_int_equal(hints_count(h), 0);
	hints_free(h);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_keep_ack_due),
		cmocka_unit_test(test_wait_caps_at_30s),
		cmocka_unit_test(test_count_bound),
		cmocka_unit_test(test_byte_bound),
		cmocka_unit_test(test_ring_grows_with_what_is_kept),
		cmocka_unit_test(test_ring_shrinks_after_an_outage),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
