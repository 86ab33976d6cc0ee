/*
 * Unit tests of herald-bench's latency histogram: exact small values,
 * bounded relative error for large ones, empty histograms.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "../../contrib/bench/herald-bench/bench.h"

static void
test_index_monotonic_and_bounded(void **state)
{
	unsigned prev = 0;

	for (uint64_t v = 0; v < 1000000; v++) {
		unsigned i = hist_index(v);

		assert_true(i >= prev);
		assert_true(i <= prev + 1);     /* no bucket skipped */
		prev = i;
	}
	assert_true(hist_index(UINT64_MAX) < HIST_BUCKETS);
	assert_int_equal(hist_index(UINT64_MAX), HIST_BUCKETS - 1);
	assert_int_equal(hist_index(127), 127);
	assert_int_equal(hist_index(128), 128);
}

static void
test_exact_below_128(void **state)
{
	static struct hist h;

	hist_init(&h);
	for (uint64_t v = 1; v <= 100; v++)
		hist_add(&h, v);
	assert_int_equal(h.count, 100);
	assert_int_equal(h.min, 1);
	assert_int_equal(h.max, 100);
	assert_int_equal(hist_quantile(&h, 0.5), 50);
	assert_int_equal(hist_quantile(&h, 0.9), 90);
	assert_int_equal(hist_quantile(&h, 0.99), 99);
	assert_int_equal(hist_quantile(&h, 0.999), 100);
	assert_int_equal(hist_quantile(&h, 1.0), 100);
	assert_int_equal(hist_quantile(&h, 0.0), 1);
}

static void
test_relative_error(void **state)
{
	static struct hist h;
	const double qs[] = { 0.5, 0.9, 0.99, 0.999 };

	hist_init(&h);
	/* 1 ms .. 10 s in 1 ms steps: the true q-quantile is q * 10 s */
	for (uint64_t i = 1; i <= 10000; i++)
		hist_add(&h, i * 1000);
	for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
		double want = qs[i] * 10000 * 1000, got = (double)hist_quantile(&h, qs[i]);

		assert_true(got >= want * 0.99 && got <= want * 1.01);
	}
	assert_int_equal(h.sum, 1000ULL * 10000 * 10001 / 2);
}

static void
test_single_value_is_exact(void **state)
{
	static struct hist h;

	hist_init(&h);
	hist_add(&h, 123456789);
	/* clamped to [min, max]: one sample is reported as itself */
	assert_int_equal(hist_quantile(&h, 0.5), 123456789);
	assert_int_equal(hist_quantile(&h, 0.999), 123456789);
}

static void
test_empty(void **state)
{
	static struct hist a;

	hist_init(&a);
	assert_int_equal(hist_quantile(&a, 0.5), 0);
	assert_int_equal(hist_quantile(&a, 0.999), 0);
	assert_int_equal(a.count, 0);
}

static void
test_json(void **state)
{
	static struct hist h;
	json_t *j;

	hist_init(&h);
	hist_add(&h, 5);
	hist_add(&h, 7);
	j = hist_json(&h);
	assert_non_null(j);
	assert_int_equal(json_integer_value(json_object_get(j, "count")), 2);
	assert_int_equal(json_integer_value(json_object_get(j, "p50")), 5);
	assert_int_equal(json_integer_value(json_object_get(j, "p99_9")), 7);
	assert_true(json_real_value(json_object_get(j, "mean")) == 6.0);
	json_decref(j);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_index_monotonic_and_bounded),
		cmocka_unit_test(test_exact_below_128),
		cmocka_unit_test(test_relative_error),
		cmocka_unit_test(test_single_value_is_exact),
		cmocka_unit_test(test_empty),
		cmocka_unit_test(test_json),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
