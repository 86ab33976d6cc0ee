/*
 * Unit tests of the shared helpers: times, ids, device ids and topics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "util.h"

static void
test_rfc3339(void **state)
{
	char ts[RFC3339_LEN];

	fmt_rfc3339(0, ts);
	assert_string_equal(ts, "1970-01-01T00:00:00.000Z");
	fmt_rfc3339(1795305001123LL, ts);
	assert_string_equal(ts, "2026-11-21T23:50:01.123Z");
	fmt_rfc3339(1795305001007LL, ts);
	assert_string_equal(ts, "2026-11-21T23:50:01.007Z");
}

static void
test_msgid_stable_and_distinct(void **state)
{
	char a[ULID_LEN], b[ULID_LEN], c[ULID_LEN], d[ULID_LEN];

	msgid_make(1795305001123LL, 0xbeef, 3, 7, 42, a);
	msgid_make(1795305001123LL, 0xbeef, 3, 7, 42, b);
	msgid_make(1795305001123LL, 0xbeef, 3, 7, 43, c);
	msgid_make(1795305001123LL, 0xbeef, 4, 7, 42, d);
	assert_int_equal(strlen(a), 26);
	assert_string_equal(a, b);              /* same message, same id */
	assert_string_not_equal(a, c);
	assert_string_not_equal(a, d);
	/* Crockford alphabet only, and time-ordered like a ULID. */
	assert_int_equal(strspn(a, "0123456789ABCDEFGHJKMNPQRSTVWXYZ"), 26);
	msgid_make(1795305001124LL, 0, 0, 0, 0, c);
	assert_true(strcmp(c, a) > 0);
}

static void
test_ulid_random(void **state)
{
	char a[ULID_LEN], b[ULID_LEN];

	ulid_random(a);
	ulid_random(b);
	assert_int_equal(strlen(a), 26);
	assert_string_not_equal(a, b);
}

static void
test_str_printable(void **state)
{
	char s[] = "ok \xe9\xff\n\x01~ end";

	str_printable(s);
	assert_string_equal(s, "ok ????~ end");
}

static void
test_device_ids(void **state)
{
	char longest[129];

	assert_true(device_id_valid("display-42", 10));
	assert_true(device_id_valid("0b6c1f2e-3d4a-4b5c-8d9e-0f1a2b3c4d5e", 36));
	assert_true(device_id_valid("a.b_c:d-e", 9));
	assert_false(device_id_valid("", 0));
	assert_false(device_id_valid("-abc", 4));
	assert_false(device_id_valid("a/b", 3));
	assert_false(device_id_valid("a b", 3));
	assert_false(device_id_valid("a+b", 3));
	assert_false(device_id_valid("a#", 2));
	memset(longest, 'a', 128);
	longest[128] = '\0';
	assert_true(device_id_valid(longest, 128));
	assert_false(device_id_valid("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 129));
}

static void
test_topics(void **state)
{
	const char *id, *kind;
	size_t idlen, kindlen;

	assert_int_equal(topic_split("device/display-42/telemetry", &id, &idlen, &kind, &kindlen), 0);
	assert_int_equal(idlen, 10);
	assert_memory_equal(id, "display-42", 10);
	assert_string_equal(kind, "telemetry");
	assert_int_equal(topic_split("device/x/", &id, &idlen, &kind, &kindlen), -1);
	assert_int_equal(topic_split("device//status", &id, &idlen, &kind, &kindlen), -1);
	assert_int_equal(topic_split("devices/x/status", &id, &idlen, &kind, &kindlen), -1);
	assert_int_equal(topic_split("device/x/status/extra", &id, &idlen, &kind, &kindlen), -1);
	assert_int_equal(topic_split("device/x", &id, &idlen, &kind, &kindlen), -1);
	assert_int_equal(topic_split("device/-x/status", &id, &idlen, &kind, &kindlen), -1);
}

static void
test_hash_and_strings(void **state)
{
	char buf[4];

	assert_int_equal(hash32("", 0), 2166136261u);
	assert_int_not_equal(hash32("a", 1), hash32("b", 1));
	assert_int_equal(strlcpy_h(buf, "abcdef", sizeof(buf)), 6);
	assert_string_equal(buf, "abc");
}

static void
test_grow_array(void **state)
{
	size_t cap = 0;
	int *a = NULL, *b;

	/* From `first`, doubling until the need fits; the contents move along. */
	a = grow_array(a, &cap, 1, sizeof(*a), 4);
	assert_non_null(a);
	assert_int_equal(cap, 4);
	a[0] = 42;
	a = grow_array(a, &cap, 9, sizeof(*a), 4);
	assert_non_null(a);
	assert_int_equal(cap, 16);
	assert_int_equal(a[0], 42);
	/* Room already: the same array, the same capacity. */
	b = grow_array(a, &cap, 16, sizeof(*a), 4);
	assert_ptr_equal(a, b);
	assert_int_equal(cap, 16);
	/* Sizes that overflow fail and leave the array alone. */
	assert_null(grow_array(a, &cap, SIZE_MAX, sizeof(*a), 4));
	assert_null(grow_array(a, &cap, SIZE_MAX / 2 + 2, 1, 4));
	assert_int_equal(cap, 16);
	assert_int_equal(a[0], 42);
	free(a);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rfc3339),
		cmocka_unit_test(test_msgid_stable_and_distinct),
		cmocka_unit_test(test_ulid_random),
		cmocka_unit_test(test_device_ids),
		cmocka_unit_test(test_topics),
		cmocka_unit_test(test_hash_and_strings),
		cmocka_unit_test(test_grow_array),
		cmocka_unit_test(test_str_printable),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
