/*
 * Unit tests of herald-bench sink's accounting: loss, duplicate ids, seq
 * repeats and reordering are exact, per device and kind.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "../../contrib/bench/herald-bench/bench.h"

static enum track_result
add(struct track *t, const char *id, const char *dev, enum track_kind k, int64_t seq)
{
	return track_add(t, id, dev, k, seq);
}

static void
test_in_order(void **state)
{
	struct track *t = track_new();
	char id[32];

	for (int i = 1; i <= 10; i++) {
		snprintf(id, sizeof(id), "id%d", i);
		assert_int_equal(add(t, id, "d1", TK_TELEMETRY, i), TRACK_NEW);
	}
	const struct track_counts *c = track_counts(t, TK_TELEMETRY);
	assert_int_equal(c->envelopes, 10);
	assert_int_equal(c->distinct, 10);
	assert_int_equal(c->gaps, 0);
	assert_int_equal(c->reordered, 0);
	assert_int_equal(track_devices(t), 1);
	track_free(t);
}

static void
test_gaps_then_reorder_fills(void **state)
{
	struct track *t = track_new();
	const struct track_counts *c = track_counts(t, TK_TELEMETRY);

	assert_int_equal(add(t, "a", "d1", TK_TELEMETRY, 1), TRACK_NEW);
	assert_int_equal(add(t, "b", "d1", TK_TELEMETRY, 2), TRACK_NEW);
	assert_int_equal(add(t, "e", "d1", TK_TELEMETRY, 5), TRACK_NEW);
	assert_int_equal(c->gaps, 2);                   /* 3 and 4 */
	assert_int_equal(add(t, "d", "d1", TK_TELEMETRY, 4), TRACK_REORDERED);
	assert_int_equal(c->gaps, 1);
	assert_int_equal(c->reordered, 1);
	assert_int_equal(add(t, "c", "d1", TK_TELEMETRY, 3), TRACK_REORDERED);
	assert_int_equal(c->gaps, 0);
	assert_int_equal(c->reordered, 2);
	assert_int_equal(c->distinct, 5);
	track_free(t);
}

static void
test_duplicate_id_vs_seq_repeat(void **state)
{
	struct track *t = track_new();
	const struct track_counts *c = track_counts(t, TK_STATUS);

	assert_int_equal(add(t, "x1", "d1", TK_STATUS, 1), TRACK_NEW);
	/* the same envelope again: a redelivery */
	assert_int_equal(add(t, "x1", "d1", TK_STATUS, 1), TRACK_DUP_ID);
	/* a new envelope for a message already counted: a copy */
	assert_int_equal(add(t, "x2", "d1", TK_STATUS, 1), TRACK_SEQ_REPEAT);
	assert_int_equal(c->envelopes, 3);
	assert_int_equal(c->distinct, 1);
	assert_int_equal(c->dup_ids, 1);
	assert_int_equal(c->seq_repeats, 1);
	assert_int_equal(c->gaps, 0);
	/* a duplicate id is caught even with another seq in it */
	assert_int_equal(add(t, "x1", "d1", TK_STATUS, 2), TRACK_DUP_ID);
	assert_int_equal(c->distinct, 1);
	track_free(t);
}

static void
test_unsequenced_and_invalid(void **state)
{
	struct track *t = track_new();
	const struct track_counts *c = track_counts(t, TK_REQUEST);

	assert_int_equal(add(t, "r1", "d1", TK_REQUEST, -1), TRACK_UNSEQUENCED);
	assert_int_equal(add(t, "r2", "d1", TK_REQUEST, -1), TRACK_UNSEQUENCED);
	assert_int_equal(add(t, "r1", "d1", TK_REQUEST, -1), TRACK_DUP_ID);
	assert_int_equal(c->distinct, 2);
	assert_int_equal(c->unsequenced, 2);
	assert_int_equal(add(t, "z0", "d1", TK_REQUEST, 0), TRACK_SEQ_INVALID);
	assert_int_equal(add(t, "z1", "d1", TK_REQUEST, (int64_t)TRACK_SEQ_MAX + 1),
	    TRACK_SEQ_INVALID);
	assert_int_equal(c->seq_invalid, 2);
	assert_int_equal(c->distinct, 2);
	/* without an id only the seq can tell copies apart */
	assert_int_equal(add(t, NULL, "d1", TK_REQUEST, 7), TRACK_NEW);
	assert_int_equal(add(t, NULL, "d1", TK_REQUEST, 7), TRACK_SEQ_REPEAT);
	track_free(t);
}

static void
test_streams_are_separate(void **state)
{
	struct track *t = track_new();
	struct track_counts tot;

	assert_int_equal(add(t, "a", "d1", TK_TELEMETRY, 1), TRACK_NEW);
	assert_int_equal(add(t, "b", "d1", TK_STATUS, 1), TRACK_NEW);
	assert_int_equal(add(t, "c", "d2", TK_TELEMETRY, 1), TRACK_NEW);
	assert_int_equal(add(t, "d", "d2", TK_TELEMETRY, 3), TRACK_NEW);
	track_total(t, &tot);
	assert_int_equal(tot.distinct, 4);
	assert_int_equal(tot.gaps, 1);
	assert_int_equal(tot.seq_repeats, 0);
	assert_int_equal(track_devices(t), 2);
	assert_int_equal(track_kind_parse("event"), TK_EVENT);
	assert_int_equal(track_kind_parse("response"), TK_RESPONSE);
	assert_int_equal(track_kind_parse("nonsense"), TK_OTHER);
	track_free(t);
}

static void
test_growth(void **state)
{
	struct track *t = track_new();
	struct track_counts tot;
	char id[32], dev[32];

	/* enough ids and devices to grow both tables many times, then find them all */
	for (int d = 0; d < 2000; d++) {
		snprintf(dev, sizeof(dev), "dev-%d", d);
		for (int s = 1; s <= 100; s++) {
			snprintf(id, sizeof(id), "%d/%d", d, s);
			assert_int_equal(add(t, id, dev, TK_TELEMETRY, s), TRACK_NEW);
		}
	}
	for (int d = 0; d < 2000; d += 97) {
		snprintf(dev, sizeof(dev), "dev-%d", d);
		snprintf(id, sizeof(id), "%d/%d", d, 50);
		assert_int_equal(add(t, id, dev, TK_TELEMETRY, 50), TRACK_DUP_ID);
		snprintf(id, sizeof(id), "new/%d", d);
		assert_int_equal(add(t, id, dev, TK_TELEMETRY, 50), TRACK_SEQ_REPEAT);
	}
	track_total(t, &tot);
	assert_int_equal(tot.distinct, 200000);
	assert_int_equal(tot.gaps, 0);
	assert_int_equal(track_devices(t), 2000);
	json_t *j = track_devices_json(t);
	assert_int_equal(json_object_size(j), 2000);
	assert_int_equal(json_integer_value(json_object_get(json_object_get(
	    json_object_get(j, "dev-97"), "telemetry"), "repeats")), 1);
	json_decref(j);
	track_free(t);
}

static void
test_missing_from_file(void **state)
{
	struct track *t = track_new();
	char path[] = "/tmp/test_bench_track.XXXXXX";
	int fd = mkstemp(path);
	uint64_t missing, expected;
	FILE *f;

	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	/* d1 sent telemetry 1..10, the sink saw 1..5 and 7: 6, 8, 9, 10 are missing;
	 * d9 sent 3 status messages and none arrived */
	fprintf(f, "d1 telemetry 10\nd9 status 3\n# comment\n");
	fclose(f);
	for (int s = 1; s <= 5; s++)
		add(t, NULL, "d1", TK_TELEMETRY, s);
	add(t, NULL, "d1", TK_TELEMETRY, 7);
	add(t, NULL, "d1", TK_TELEMETRY, 12);   /* beyond what the file expects: not missing */
	assert_int_equal(track_missing_from_file(t, path, &missing, &expected), 0);
	assert_int_equal(missing, 4 + 3);
	assert_int_equal(expected, 13);
	unlink(path);
	assert_int_equal(track_missing_from_file(t, path, &missing, &expected), -1);
	track_free(t);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_in_order),
		cmocka_unit_test(test_gaps_then_reorder_fills),
		cmocka_unit_test(test_duplicate_id_vs_seq_repeat),
		cmocka_unit_test(test_unsequenced_and_invalid),
		cmocka_unit_test(test_streams_are_separate),
		cmocka_unit_test(test_growth),
		cmocka_unit_test(test_missing_from_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
