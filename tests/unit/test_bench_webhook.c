/*
 * Unit tests of the Standard Webhooks signatures herald sends and herald-bench
 * checks (against the specification's published vector), and of herald-bench's
 * sealed device payloads.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "../../contrib/bench/herald-bench/bench.h"
#include "webhook.h"

/* The example of the Standard Webhooks specification and its reference libraries. */
#define VEC_SECRET "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
#define VEC_ID "msg_p5jXN8AQM9LWM0D4loKWxJek"
#define VEC_TS "1614265330"
#define VEC_BODY "{\"test\": 2432232314}"
#define VEC_SIG "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

static void
test_sign_vector(void **state)
{
	uint8_t *key;
	size_t len;
	char sig[WEBHOOK_SIG_LEN];

	assert_int_equal(webhook_secret_parse(VEC_SECRET, &key, &len), 0);
	assert_int_equal(len, 24);
	assert_int_equal(webhook_sign(key, len, VEC_ID, VEC_TS, VEC_BODY, strlen(VEC_BODY), sig), 0);
	assert_string_equal(sig, VEC_SIG);
	free(key);
}

static void
test_verify(void **state)
{
	uint8_t *key;
	size_t len;
	const char *body = VEC_BODY;

	assert_int_equal(webhook_secret_parse(VEC_SECRET, &key, &len), 0);
	assert_int_equal(webhook_verify(key, len, VEC_ID, VEC_TS, body, strlen(body), VEC_SIG), 1);
	/* one good signature among several is enough */
	assert_int_equal(webhook_verify(key, len, VEC_ID, VEC_TS, body, strlen(body),
	    "v1,AAAAM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE= " VEC_SIG), 1);
	/* anything changed: body, id, timestamp */
	assert_int_equal(webhook_verify(key, len, VEC_ID, VEC_TS, "{\"test\": 2432232315}",
	    strlen(body), VEC_SIG), 0);
	assert_int_equal(webhook_verify(key, len, "msg_other", VEC_TS, body, strlen(body),
	    VEC_SIG), 0);
	assert_int_equal(webhook_verify(key, len, VEC_ID, "1614265331", body, strlen(body),
	    VEC_SIG), 0);
	/* not a signature at all */
	assert_int_equal(webhook_verify(key, len, VEC_ID, VEC_TS, body, strlen(body), ""), -1);
	assert_int_equal(webhook_verify(key, len, VEC_ID, VEC_TS, body, strlen(body),
	    "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="), -1);
	assert_int_equal(webhook_verify(key, len, VEC_ID, VEC_TS, body, strlen(body), "v1,***"), -1);
	free(key);
}

static void
test_secret_forms(void **state)
{
	uint8_t *key;
	size_t len;
	char sig[WEBHOOK_SIG_LEN];

	/* without the prefix the secret is its own bytes */
	assert_int_equal(webhook_secret_parse("plain-secret", &key, &len), 0);
	assert_int_equal(len, 12);
	assert_memory_equal(key, "plain-secret", 12);
	assert_int_equal(webhook_sign(key, len, "id", "1", "b", 1, sig), 0);
	assert_int_equal(webhook_verify(key, len, "id", "1", "b", 1, sig), 1);
	free(key);
	/* Another key, then the first again (a reload): each signs as its own. */
	{
		uint8_t *vkey;
		size_t vlen;
		char again[WEBHOOK_SIG_LEN];

		assert_int_equal(webhook_secret_parse(VEC_SECRET, &vkey, &vlen), 0);
		assert_int_equal(webhook_sign(vkey, vlen, VEC_ID, VEC_TS, VEC_BODY,
		    strlen(VEC_BODY), again), 0);
		assert_string_equal(again, VEC_SIG);
		assert_int_equal(webhook_verify(vkey, vlen, "id", "1", "b", 1, sig), 0);
		assert_int_equal(webhook_sign(vkey, 3, VEC_ID, VEC_TS, VEC_BODY,
		    strlen(VEC_BODY), again), 0);
		assert_string_not_equal(again, VEC_SIG);
		assert_int_equal(webhook_sign(vkey, vlen, VEC_ID, VEC_TS, VEC_BODY,
		    strlen(VEC_BODY), again), 0);
		assert_string_equal(again, VEC_SIG);
		free(vkey);
	}
	assert_int_equal(webhook_secret_parse("whsec_%%%notbase64", &key, &len), -1);
	assert_int_equal(webhook_secret_parse("whsec_", &key, &len), -1);
	assert_int_equal(webhook_secret_parse("", &key, &len), -1);
}

static void
test_seal_round_trip(void **state)
{
	uint8_t key[32], other[32], box[256], out[256], kv;
	const char *msg = "{\"cpu\":40}";
	uint64_t ctr;
	int n, m;

	randombytes_buf(key, sizeof(key));
	randombytes_buf(other, sizeof(other));
	n = seal_box(key, 3, 0x0102030405060708ULL, "device/d1/telemetry", msg, strlen(msg),
	    box, sizeof(box));
	assert_int_equal(n, (int)strlen(msg) + SEAL_OVERHEAD);
	assert_int_equal(box[0], 0x01);
	assert_int_equal(box[1], 3);
	assert_int_equal(box[2], 0x01);                 /* big-endian counter */
	assert_int_equal(box[9], 0x08);
	m = seal_open(key, "device/d1/telemetry", box, (size_t)n, out, sizeof(out), &kv, &ctr);
	assert_int_equal(m, (int)strlen(msg));
	assert_memory_equal(out, msg, strlen(msg));
	assert_int_equal(kv, 3);
	assert_true(ctr == 0x0102030405060708ULL);
	/* the topic is authenticated, and so is every byte */
	assert_int_equal(seal_open(key, "device/d2/telemetry", box, (size_t)n, out, sizeof(out),
	    &kv, &ctr), -1);
	assert_int_equal(seal_open(other, "device/d1/telemetry", box, (size_t)n, out, sizeof(out),
	    &kv, &ctr), -1);
	box[5] ^= 1;                                    /* header: additional data */
	assert_int_equal(seal_open(key, "device/d1/telemetry", box, (size_t)n, out, sizeof(out),
	    &kv, &ctr), -1);
	box[5] ^= 1;
	box[n - 1] ^= 1;                                /* tag */
	assert_int_equal(seal_open(key, "device/d1/telemetry", box, (size_t)n, out, sizeof(out),
	    &kv, &ctr), -1);
	box[n - 1] ^= 1;
	box[0] = 0x02;                                  /* unknown version */
	assert_int_equal(seal_open(key, "device/d1/telemetry", box, (size_t)n, out, sizeof(out),
	    &kv, &ctr), -1);
	assert_int_equal(seal_open(key, "t", box, SEAL_OVERHEAD - 1, out, sizeof(out), &kv, &ctr), -1);
	/* no room for the box */
	assert_int_equal(seal_box(key, 1, 1, "t", msg, strlen(msg), box, strlen(msg)), -1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sign_vector),
		cmocka_unit_test(test_verify),
		cmocka_unit_test(test_secret_forms),
		cmocka_unit_test(test_seal_round_trip),
	};

	if (sodium_init() < 0)
		return 1;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
