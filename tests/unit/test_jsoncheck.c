/*
 * Unit tests of the JSON validator: the grammar case by case, duplicate
 * keys, the "type" member, depth, and a differential check against
 * jansson (JSON_REJECT_DUPLICATES) over many mutated documents.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <jansson.h>

#include "jsoncheck.h"

static struct jsoncheck jc;

static int
check(const char *s, struct jc_result *r)
{
	return jsoncheck(&jc, s, strlen(s), r);
}

static void
test_valid(void **state)
{
	static const char *ok[] = {
		"{}", " { } ", "[]", "0", "-0", "1.5e-7", "-12.0E+3", "1e400", "\"\"", "true", "false", "null",
		"{\"a\":1,\"b\":[1,2,{\"c\":null}],\"d\":\"x\\\"y\\\\z\\/\\b\\f\\n\\r\\t\"}",
		"\"\\u00e9\\uD83D\\uDE00\"", "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"",
		"{\"a\":{\"a\":1},\"b\":{\"a\":2}}", "[{\"k\":1},{\"k\":1}]",
		"\t\r\n[1 , 2]\n",
	};
	struct jc_result r;

	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		if (check(ok[i], &r) != 0)
			fail_msg("%s: %s at %zu", ok[i], r.error, r.error_at);
		assert_null(r.error);
	}
	assert_int_equal(check("{\"x\":1}", &r), 0);
	assert_int_equal(r.top, JC_OBJECT);
	assert_int_equal(check("[1]", &r), 0);
	assert_int_equal(r.top, JC_ARRAY);
	assert_int_equal(check("7", &r), 0);
	assert_int_equal(r.top, JC_NUMBER);
}

static void
test_invalid(void **state)
{
	static const struct { const char *doc; const char *why; size_t at; } bad[] = {
		{ "", "unexpected end of input", 0 },
		{ "   ", "unexpected end of input", 3 },
		{ "{", "string or '}' expected", 1 },
		{ "{\"a\"}", "':' expected", 4 },
		{ "{\"a\":1,}", "string or '}' expected", 7 },
		{ "[1,]", "invalid token", 3 },
		{ "[1 2]", "',' or ']' expected", 3 },
		{ "{\"a\":1 \"b\":2}", "',' or '}' expected", 7 },
		{ "01", "end of input expected", 1 },
		{ "-", "invalid number", 0 },
		{ "1.", "invalid number (digit expected after '.')", 2 },
		{ "1e+", "invalid number (digit expected in the exponent)", 3 },
		{ "+1", "invalid token", 0 },
		{ "tru", "invalid token", 0 },
		{ "nul", "invalid token", 0 },
		{ "{} x", "end of input expected", 3 },
		{ "\"abc", "unterminated string", 4 },
		{ "\"a\tb\"", "control character in a string", 2 },
		{ "\"\\x\"", "invalid escape", 1 },
		{ "\"\\u12G4\"", "invalid \\u escape", 1 },
		{ "\"\\u0000\"", "\\u0000 is not allowed", 1 },
		{ "\"\\uDC00\"", "invalid Unicode escape (lone low surrogate)", 1 },
		{ "\"\\uD800x\"", "invalid Unicode escape (lone high surrogate)", 1 },
		{ "\"\\uD800\\u0041\"", "invalid Unicode escape (lone high surrogate)", 1 },
		{ "\"\xc3\"", "invalid UTF-8 in a string", 1 },
		{ "\"\xc0\xaf\"", "invalid UTF-8 in a string", 1 },          /* overlong */
		{ "\"\xe0\x80\xaf\"", "invalid UTF-8 in a string", 1 },      /* overlong */
		{ "\"\xed\xa0\x80\"", "invalid UTF-8 in a string", 1 },      /* surrogate */
		{ "\"\xf4\x90\x80\x80\"", "invalid UTF-8 in a string", 1 },  /* > U+10FFFF */
		{ "\"\xff\"", "invalid UTF-8 in a string", 1 },
		{ "{\"a\":1,\"a\":2}", "duplicate object key", 7 },
		{ "{\"a\":1,\"\\u0061\":2}", "duplicate object key", 7 },
		{ "{\"x\":{\"k\":1,\"k\":1}}", "duplicate object key", 12 },
	};
	struct jc_result r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (check(bad[i].doc, &r) != -1)
			fail_msg("accepted: %s", bad[i].doc);
		if (strcmp(r.error, bad[i].why) != 0 || r.error_at != bad[i].at)
			fail_msg("%s: got \"%s\" at %zu, want \"%s\" at %zu", bad[i].doc,
			    r.error, r.error_at, bad[i].why, bad[i].at);
		assert_int_equal(r.top, JC_NONE);
	}
	/* A NUL byte is no JSON, inside a string or out. */
	assert_int_equal(jsoncheck(&jc, "\"a\0b\"", 5, &r), -1);
	assert_int_equal(jsoncheck(&jc, "{}\0", 3, &r), -1);
}

static void
test_type_member(void **state)
{
	struct jc_result r;

	assert_int_equal(check("{\"type\":\"boot\",\"n\":1}", &r), 0);
	assert_int_equal(r.type_member, JC_STRING);
	assert_int_equal(check("{\"type\":3}", &r), 0);
	assert_int_equal(r.type_member, JC_NUMBER);
	assert_int_equal(check("{\"t\\u0079pe\":\"x\"}", &r), 0);   /* escaped key */
	assert_int_equal(r.type_member, JC_STRING);
	/* Only the top object's member counts. */
	assert_int_equal(check("{\"inner\":{\"type\":\"x\"}}", &r), 0);
	assert_int_equal(r.type_member, JC_NONE);
	assert_int_equal(check("[{\"type\":\"x\"}]", &r), 0);
	assert_int_equal(r.type_member, JC_NONE);
	assert_int_equal(check("{\"types\":\"x\"}", &r), 0);
	assert_int_equal(r.type_member, JC_NONE);
	/* An empty "type" is told apart (an event without a type). */
	assert_int_equal(check("{\"type\":\"x\"}", &r), 0);
	assert_false(r.type_empty);
	assert_int_equal(check("{\"type\": \"\" ,\"a\":1}", &r), 0);
	assert_int_equal(r.type_member, JC_STRING);
	assert_true(r.type_empty);
	assert_int_equal(check("{\"type\":\"\\\"\"}", &r), 0);   /* "\"" */
	assert_false(r.type_empty);
	assert_int_equal(check("{\"a\":{\"type\":\"\"}}", &r), 0);
	assert_false(r.type_empty);
}

static void
test_members(void **state)
{
	static const char doc[] = " {\"a\" : 1e400 ,\"b\\\"}\":{\"x\":[1,\"]}\"]},\n\"c\":\"s\\\\\",\"d\":-0.10}";
	static const char *want[][2] = {
		{ "\"a\"", "1e400" }, { "\"b\\\"}\"", "{\"x\":[1,\"]}\"]}" }, { "\"c\"", "\"s\\\\\"" },
		{ "\"d\"", "-0.10" },
	};
	struct jc_result r;
	struct jc_span k, v;
	size_t pos = 0, i = 0;
	char out[sizeof(doc)];

	assert_int_equal(check(doc, &r), 0);
	while (jc_member(doc, strlen(doc), &pos, &k, &v)) {
		assert_true(i < 4);
		assert_int_equal(k.len, strlen(want[i][0]));
		assert_memory_equal(k.p, want[i][0], k.len);
		assert_int_equal(v.len, strlen(want[i][1]));
		assert_memory_equal(v.p, want[i][1], v.len);
		i++;
	}
	assert_int_equal(i, 4);
	pos = 0;
	assert_int_equal(jc_member(" { } ", 5, &pos, &k, &v), 0);
	/* Whitespace between tokens goes; strings and numbers stay as written. */
	assert_int_equal(jc_minify(doc, strlen(doc), out), 53);
	out[53] = '\0';
	assert_string_equal(out, "{\"a\":1e400,\"b\\\"}\":{\"x\":[1,\"]}\"]},\"c\":\"s\\\\\",\"d\":-0.10}");
	assert_int_equal(jc_minify("{ \"k\" : \" a b \" }", 17, out), 13);
	assert_memory_equal(out, "{\"k\":\" a b \"}", 13);
}

/* Numbers jansson refuses become null, and only those; strings stay. */
static void
test_tame(void **state)
{
	static const char doc[] = "{\"a\":1e400,\"b\":[18446744073709551615,-9223372036854775808,"
	    "9223372036854775808,-1e-400,0.1,-2E+308],\"c\":\"1e400\",\"d\":-1.7976931348623157e308}";
	static const char want[] = "{\"a\":null,\"b\":[null,-9223372036854775808,"
	    "null,-1e-400,0.1,null],\"c\":\"1e400\",\"d\":-1.7976931348623157e308}";
	char out[sizeof(doc)];
	size_t n, tamed;
	json_t *j;

	n = jc_tame(doc, strlen(doc), out, &tamed);
	assert_int_equal(n, strlen(want));
	assert_memory_equal(out, want, n);
	assert_int_equal(tamed, 4);
	assert_null(json_loadb(doc, strlen(doc), 0, NULL));
	assert_non_null(j = json_loadb(out, n, 0, NULL));
	json_decref(j);
	n = jc_tame("{\"x\":[1,2.5]}", 13, out, &tamed);
	assert_int_equal(tamed, 0);
	assert_memory_equal(out, "{\"x\":[1,2.5]}", 13);
}

static void
test_depth(void **state)
{
	char *doc = malloc(2 * (JC_MAX_DEPTH + 1) + 1);
	struct jc_result r;
	size_t n;

	assert_non_null(doc);
	for (n = 0; n < JC_MAX_DEPTH; n++)
		doc[n] = '[';
	for (size_t i = 0; i < JC_MAX_DEPTH; i++)
		doc[n++] = ']';
	assert_int_equal(jsoncheck(&jc, doc, n, &r), 0);
	memmove(doc + 1, doc, n);
	doc[0] = '[';
	doc[n + 1] = ']';
	assert_int_equal(jsoncheck(&jc, doc, n + 2, &r), -1);
	assert_string_equal(r.error, "maximum nesting depth reached");
	assert_true(r.too_deep);
	free(doc);
}

/* max_depth: levels of objects and arrays together; other errors are not
 * "too deep", and 0 means JC_MAX_DEPTH. */
static void
test_max_depth(void **state)
{
	struct jc_result r;

	jc.max_depth = 3;
	assert_int_equal(check("{\"a\":[{\"b\":1}]}", &r), 0);
	assert_int_equal(check("{\"a\":[{\"b\":[]}]}", &r), -1);
	assert_true(r.too_deep);
	assert_int_equal(r.error_at, 11);
	assert_int_equal(check("{\"a\":[{\"b\":1,}]}", &r), -1);
	assert_false(r.too_deep);
	assert_int_equal(check("[[[\"x\"]]]", &r), 0);
	jc.max_depth = 1;
	assert_int_equal(check("{\"a\":1}", &r), 0);
	assert_int_equal(check("{\"a\":{}}", &r), -1);
	assert_true(r.too_deep);
	jc.max_depth = 0;
	assert_int_equal(check("{\"a\":{\"b\":{\"c\":{\"d\":{}}}}}", &r), 0);
	assert_false(r.too_deep);
}

/* Many keys cost linear time, and a late duplicate is still found. */
static void
test_many_keys(void **state)
{
	size_t n = 50000, cap = n * 16 + 16, len = 0;
	char *doc = malloc(cap);
	struct jc_result r;

	assert_non_null(doc);
	doc[len++] = '{';
	for (size_t i = 0; i < n; i++)
		len += (size_t)snprintf(doc + len, cap - len, "%s\"k%zu\":%zu", i ? "," : "", i, i);
	doc[len++] = '}';
	assert_int_equal(jsoncheck(&jc, doc, len, &r), 0);
	len--;
	len += (size_t)snprintf(doc + len, cap - len, ",\"k%zu\":0}", n / 2);
	assert_int_equal(jsoncheck(&jc, doc, len, &r), -1);
	assert_string_equal(r.error, "duplicate object key");
	/* and the scratch is clean for the next document */
	assert_int_equal(check("{\"k1\":1}", &r), 0);
	free(doc);
}

/*
 * Keys chosen to pile up in a few slots of an unkeyed hash (FNV-1a of the
 * key, mixed with the object number as the validator did before its hash
 * got a secret key): 20,000 of them, all in 64 of the table's slots, made
 * every insertion walk the pile (290 ms for 256 KiB).  With the keyed
 * hash, the slots compared stay a few per key.
 */
static void
test_chosen_keys_stay_linear(void **state)
{
	static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	const uint64_t mix = 0x9e3779b97f4a7c15ULL;    /* object 1 */
	size_t want = 20000, n = 0, cap = want * 12 + 16, len = 0;
	char *doc = malloc(cap);
	struct jc_result r;
	uint64_t before;

	assert_non_null(doc);
	doc[len++] = '{';
	for (uint64_t ctr = 0; n < want; ctr++) {
		char k[7];
		uint64_t x = ctr, h = 0xcbf29ce484222325ULL;

		for (int i = 0; i < 6; i++) {
			k[i] = al[x % 62];
			x /= 62;
			h = (h ^ (unsigned char)k[i]) * 0x100000001b3ULL;
		}
		k[6] = '\0';
		if (((h ^ mix) & 0xffff) >= 64)
			continue;
		len += (size_t)snprintf(doc + len, cap - len, "%s\"%s\":0", n ? "," : "", k);
		n++;
	}
	doc[len++] = '}';
	before = jc.probes;
	assert_int_equal(jsoncheck(&jc, doc, len, &r), 0);
	if (jc.probes - before > 8 * want)
		fail_msg("%llu slot comparisons for %zu keys",
		    (unsigned long long)(jc.probes - before), want);
	free(doc);
}

/*
 * Differential: mutations of valid documents must get the same verdict from
 * jansson and from the validator.  jansson also refuses integers beyond
 * int64 and reals beyond double, which are valid JSON: those are skipped.
 */
static void
test_agrees_with_jansson(void **state)
{
	static const char *seeds[] = {
		"{\"state\":\"online\",\"fw\":\"1.2.3\",\"uptime\":12345,\"temp\":21.5,\"ok\":true}",
		"{\"type\":\"door\",\"data\":{\"open\":false,\"n\":[1,2,3],\"s\":\"\\u00e9\\n\"},\"x\":null}",
		"[{\"a\":1},{\"b\":[true,false,null]},\"\xc3\xa9\xf0\x9f\x98\x80\",-0.5e-3]",
		"{\"k\":\"\\uD83D\\uDE00\",\"k2\":{\"k\":{\"k\":\"v\"}}}",
	};
	static const char alphabet[] = "{}[]:,\"\\u0123456789abcdefABCDEF.eE+-tfnrl \t\n\x01\x7f\xc3\xa9\xed\xf0\x9f\xff";
	char buf[512];
	unsigned seed = 12345;
	long agreed = 0, skipped = 0;

	for (int iter = 0; iter < 40000; iter++) {
		const char *s = seeds[iter % (sizeof(seeds) / sizeof(seeds[0]))];
		size_t len = strlen(s);
		int muts = 1 + (int)(rand_r(&seed) % 3);
		json_error_t jerr;
		struct jc_result r;
		json_t *doc;
		int ours;

		memcpy(buf, s, len);
		for (int m = 0; m < muts; m++) {
			size_t at = len ? (size_t)rand_r(&seed) % len : 0;
			char c = alphabet[(size_t)rand_r(&seed) % (sizeof(alphabet) - 1)];

			switch (rand_r(&seed) % 4) {
			case 0:         /* replace */
				if (len)
					buf[at] = c;
				break;
			case 1:         /* insert */
				if (len + 1 < sizeof(buf)) {
					memmove(buf + at + 1, buf + at, len - at);
					buf[at] = c;
					len++;
				}
				break;
			case 2:         /* delete */
				if (len) {
					memmove(buf + at, buf + at + 1, len - at - 1);
					len--;
				}
				break;
			default:        /* truncate */
				len = at;
				break;
			}
		}
		doc = json_loadb(buf, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
		ours = jsoncheck(&jc, buf, len, &r);
		if (doc == NULL && (strstr(jerr.text, "too big") || strstr(jerr.text, "overflow"))) {
			skipped++;
			continue;
		}
		if ((doc != NULL) != (ours == 0))
			fail_msg("disagree on \"%.*s\": jansson %s, validator %s", (int)len, buf,
			    doc ? "valid" : jerr.text, ours == 0 ? "valid" : r.error);
		json_decref(doc);
		agreed++;
	}
	assert_true(agreed > 39000);
	print_message("%ld agreed, %ld skipped (number range)\n", agreed, skipped);
}

static int
teardown(void **state)
{
	jsoncheck_free(&jc);
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_invalid),
		cmocka_unit_test(test_type_member),
		cmocka_unit_test(test_members),
		cmocka_unit_test(test_tame),
		cmocka_unit_test(test_depth),
		cmocka_unit_test(test_max_depth),
		cmocka_unit_test(test_many_keys),
		cmocka_unit_test(test_chosen_keys_stay_linear),
		cmocka_unit_test(test_agrees_with_jansson),
	};

	return cmocka_run_group_tests(tests, NULL, teardown);
}
