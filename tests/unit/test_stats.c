/*
 * Unit tests of the stats region: the slot layout readers depend on
 * (cache-line size and alignment, header), slot numbering and names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "stats.h"

static void
test_layout(void **state)
{
	assert_int_equal(sizeof(struct stats_header), STATS_CACHELINE);
	assert_int_equal(sizeof(struct stats_slot) % STATS_CACHELINE, 0);
	assert_int_equal(offsetof(struct stats_region, slots) % STATS_CACHELINE, 0);
	assert_int_equal(_Alignof(struct stats_slot), STATS_CACHELINE);
	/* Writers' hot fields never share a line with the next slot. */
	assert_true(offsetof(struct stats_slot, counters) < sizeof(struct stats_slot));
	assert_int_equal(stats_size(8), sizeof(struct stats_header) + 8 * sizeof(struct stats_slot));
}

static void
test_create_and_slots(void **state)
{
	int n = STATS_NSLOTS(3);
	struct stats_region *r = stats_create(n);

	assert_non_null(r);
	assert_int_equal(r->hdr.magic, STATS_MAGIC);
	assert_int_equal(r->hdr.version, STATS_VERSION);
	assert_int_equal(r->hdr.nslots, n);
	assert_int_equal(r->hdr.slot_size, sizeof(struct stats_slot));
	assert_true(r->hdr.created_ms > 0);
	assert_int_equal(((uintptr_t)&r->slots[1]) % STATS_CACHELINE, 0);
	assert_int_equal(stats_slot_index(ROLE_SUPERVISOR, 0), 0);
	assert_int_equal(stats_slot_index(ROLE_ROUTER, 0), 1);
	assert_int_equal(stats_slot_index(ROLE_API, 0), 4);
	assert_int_equal(stats_slot_index(ROLE_MQTT, 2), 7);
	assert_int_equal(stats_slot_index(99, 0), -1);
	for (int i = 0; i < n; i++) {
		assert_int_equal(r->slots[i].role, i < 5 ? i : ROLE_MQTT);
		assert_int_equal(r->slots[i].slot, i < 5 ? 0 : i - 5);
		assert_int_equal(r->slots[i].state, WS_EMPTY);
	}
	stats_destroy(r);
}

static void
test_shared_across_fork(void **state)
{
	struct stats_region *r = stats_create(STATS_NSLOTS(1));
	pid_t pid;
	int status;

	/* The region is created before fork: a child's writes are the parent's reads. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		stats_add(&r->slots[5], STAT_mqtt_received, 41);
		stats_add(&r->slots[5], STAT_mqtt_received, 1);
		stats_set(&r->slots[5], GAUGE_spool_depth, -7);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(r->slots[5].counters[STAT_mqtt_received], 42);
	assert_int_equal(r->slots[5].gauges[GAUGE_spool_depth], -7);
	stats_destroy(r);
}

static void
test_names(void **state)
{
	assert_string_equal(stats_role_name(ROLE_MQTT), "mqtt");
	assert_string_equal(stats_role_name(ROLE_SUPERVISOR), "supervisor");
	assert_string_equal(stats_role_name(-1), "?");
	assert_int_equal(stats_role_parse("crypto"), ROLE_CRYPTO);
	assert_int_equal(stats_role_parse("nope"), -1);
	assert_string_equal(stats_state_name(WS_THROTTLED), "throttled");
	assert_string_equal(stats_state_name(WS_READY), "ready");
	assert_string_equal(stats_counter_name(STAT_delivered), "delivered");
	assert_string_equal(stats_counter_name(STAT_NCOUNTERS), "?");
	assert_string_equal(stats_gauge_name(GAUGE_spool_depth), "spool_depth");
	/* Every counter and gauge has a distinct name and some help text. */
	for (int i = 0; i < STAT_NCOUNTERS; i++) {
		assert_true(strlen(stats_counter_help(i)) > 5);
		for (int j = i + 1; j < STAT_NCOUNTERS; j++)
			assert_string_not_equal(stats_counter_name(i), stats_counter_name(j));
	}
	for (int i = 0; i < STAT_NGAUGES; i++)
		assert_true(strlen(stats_gauge_help(i)) > 5);
	/* "loops" (event loop passes) was listed, in herald(8) too, and never
	 * counted: a counter stuck at 0 tells an operator nothing. */
	for (int i = 0; i < STAT_NCOUNTERS; i++)
		assert_string_not_equal(stats_counter_name(i), "loops");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_layout),
		cmocka_unit_test(test_create_and_slots),
		cmocka_unit_test(test_shared_across_fork),
		cmocka_unit_test(test_names),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
