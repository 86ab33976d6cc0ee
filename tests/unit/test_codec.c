/*
 * Unit tests of the message codec and the typed fabric bodies: round trips,
 * and rejection of truncated, trailing-byte, wrong-type and unknown-version
 * messages.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "codec.h"
#include "proto.h"

static int
reader(struct hmr *r, const struct hmw *w)
{
	const char *why = NULL;

	return hmr_init(r, w->hdr, HM_HDRLEN, hmw_body(w), hmw_len(w), &why);
}

static void
test_scalars_round_trip(void **state)
{
	struct hmw w;
	struct hmr r;
	uint64_t u;
	int64_t i;
	bool b;
	const char *s;
	const void *p;
	size_t len;
	char buf[16];
	static const uint8_t bin[] = { 0, 1, 2, 0xff };

	hmw_init(&w, HM_CTL_PING);
	hmw_u64(&w, UINT64_MAX);
	hmw_i64(&w, -42);
	hmw_bool(&w, true);
	hmw_str(&w, "hello", (size_t)-1);
	hmw_bin(&w, bin, sizeof(bin));
	hmw_nil(&w);
	hmw_str(&w, "copy", 4);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(r.type, HM_CTL_PING);
	assert_int_equal(hmr_u64(&r, &u), 0);
	assert_true(u == UINT64_MAX);
	assert_int_equal(hmr_i64(&r, &i), 0);
	assert_int_equal(i, -42);
	assert_int_equal(hmr_bool(&r, &b), 0);
	assert_true(b);
	assert_int_equal(hmr_str(&r, &s, &len), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(s, "hello", 5);
	assert_int_equal(hmr_bin(&r, &p, &len), 0);
	assert_int_equal(len, sizeof(bin));
	assert_memory_equal(p, bin, sizeof(bin));
	assert_int_equal(hmr_nil_or_str(&r, &s, &len), 0);
	assert_null(s);
	assert_int_equal(hmr_strcpy(&r, buf, sizeof(buf)), 0);
	assert_string_equal(buf, "copy");
	assert_int_equal(hmr_end(&r), 0);
	/* Reading past the end fails rather than inventing a value. */
	assert_int_equal(hmr_u64(&r, &u), -1);
	hmr_free(&r);
	hmw_free(&w);
}

static void
test_wrong_types_rejected(void **state)
{
	struct hmw w;
	struct hmr r;
	uint64_t u;
	const char *s;
	size_t len;
	char small[3];

	hmw_init(&w, HM_CTL_PING);
	hmw_str(&w, "x", 1);
	hmw_i64(&w, -1);
	hmw_str(&w, "toolong", (size_t)-1);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(hmr_u64(&r, &u), -1);          /* a string is not a u64 */
	assert_int_equal(hmr_u64(&r, &u), -1);          /* a negative int is not a u64 */
	assert_int_equal(hmr_strcpy(&r, small, sizeof(small)), -1);
	hmr_free(&r);
	hmw_free(&w);

	hmw_init(&w, HM_CTL_PING);
	hmw_u64(&w, 7);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(hmr_str(&r, &s, &len), -1);
	hmr_free(&r);
	hmw_free(&w);
}

static void
test_header_checks(void **state)
{
	struct hmr r;
	const char *why = NULL;
	uint8_t hdr[HM_HDRLEN] = { HM_VERSION, HM_FAB_ACK };
	uint8_t bad_version[HM_HDRLEN] = { HM_VERSION + 1, HM_FAB_ACK };
	uint8_t bad_type[HM_HDRLEN] = { HM_VERSION, 63 };
	uint8_t zero_type[HM_HDRLEN] = { HM_VERSION, 0 };

	assert_int_equal(hmr_init(&r, hdr, HM_HDRLEN, "", 0, &why), 0);
	hmr_free(&r);
	assert_int_equal(hmr_init(&r, bad_version, HM_HDRLEN, "", 0, &why), -1);
	assert_string_equal(why, "unknown protocol version");
	hmr_free(&r);
	assert_int_equal(hmr_init(&r, bad_type, HM_HDRLEN, "", 0, &why), -1);
	assert_string_equal(why, "unknown message type");
	hmr_free(&r);
	assert_int_equal(hmr_init(&r, zero_type, HM_HDRLEN, "", 0, &why), -1);
	hmr_free(&r);
	assert_int_equal(hmr_init(&r, hdr, 1, "", 0, &why), -1);
	assert_string_equal(why, "bad header length");
	hmr_free(&r);
	assert_string_equal(hm_type_name(HM_FAB_DEV_IN), "FAB_DEV_IN");
	assert_string_equal(hm_type_name(63), "?");
}

static struct msg_dev_in
sample_dev_in(void)
{
	static const char payload[] = "{\"cpu\":40}";
	struct msg_dev_in m = {
		.slot = 3, .epoch = 77, .seq = 123456789, .received_ms = 1763769001123,
		.id = { "01JD3Q8Z7M4V2K9X5T1B6N0C8R", 26 },
		.topic = { "device/display-42/telemetry", 27 },
		.payload = { payload, sizeof(payload) - 1 },
	};
	return m;
}

static void
test_dev_in_round_trip(void **state)
{
	struct msg_dev_in in = sample_dev_in(), out;
	struct hmw w;
	struct hmr r;

	hmw_init(&w, HM_FAB_DEV_IN);
	proto_write_dev_in(&w, &in);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_dev_in(&r, &out), 0);
	assert_int_equal(out.slot, 3);
	assert_int_equal(out.epoch, 77);
	assert_int_equal(out.seq, 123456789);
	assert_int_equal(out.received_ms, 1763769001123);
	assert_int_equal(out.id.len, 26);
	assert_memory_equal(out.topic.p, in.topic.p, in.topic.len);
	assert_memory_equal(out.payload.p, in.payload.p, in.payload.len);
	hmr_free(&r);
	hmw_free(&w);
}

static void
test_truncated_and_trailing(void **state)
{
	struct msg_dev_in in = sample_dev_in(), out;
	struct hmw w;
	struct hmr r;
	const char *why;

	hmw_init(&w, HM_FAB_DEV_IN);
	proto_write_dev_in(&w, &in);
	/* Every truncation of the body fails. */
	for (size_t cut = 0; cut < hmw_len(&w); cut++) {
		assert_int_equal(hmr_init(&r, w.hdr, HM_HDRLEN, hmw_body(&w), cut, &why), 0);
		assert_int_equal(proto_read_dev_in(&r, &out), -1);
		hmr_free(&r);
	}
	/* One extra object after the record is the start of a next record,
	 * which is then truncated. */
	hmw_u64(&w, 1);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_dev_in(&r, &out), 0);
	assert_true(hmr_more(&r));
	assert_int_equal(proto_read_dev_in(&r, &out), -1);
	hmr_free(&r);
	hmw_free(&w);
}

/* Batches: records back to back, read one by one until the end. */
static void
test_batches(void **state)
{
	struct msg_dev_in in = sample_dev_in(), out;
	struct msg_envelope env = {
		.slot = 1, .epoch = 2, .received_ms = 5,
		.id = { "01JD3Q8Z7M4V2K9X5T1B6N0C8R", 26 },
		.device = { "d1", 2 }, .json = { "{}", 2 },
	}, eout;
	struct hmw w;
	struct hmr r;
	int n = 0;

	hmw_init(&w, HM_FAB_DEV_IN);
	for (uint64_t i = 0; i < 3; i++) {
		in.seq = 100 + i;
		proto_write_dev_in(&w, &in);
	}
	assert_int_equal(reader(&r, &w), 0);
	do {
		assert_int_equal(proto_read_dev_in(&r, &out), 0);
		assert_int_equal(out.seq, 100 + n);
		assert_memory_equal(out.payload.p, in.payload.p, in.payload.len);
		n++;
	} while (hmr_more(&r));
	assert_int_equal(n, 3);
	assert_int_equal(hmr_end(&r), 0);
	hmr_free(&r);
	hmw_free(&w);

	hmw_init(&w, HM_FAB_ENVELOPE);
	for (uint64_t i = 0; i < 2; i++) {
		env.seq = 7 + i;
		proto_write_envelope(&w, &env);
	}
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_envelope(&r, &eout), 0);
	assert_int_equal(eout.seq, 7);
	assert_true(hmr_more(&r));
	assert_int_equal(proto_read_envelope(&r, &eout), 0);
	assert_int_equal(eout.seq, 8);
	assert_memory_equal(eout.json.p, "{}", 2);
	assert_false(hmr_more(&r));
	hmr_free(&r);
	hmw_free(&w);

	/* An empty body is no record. */
	hmw_init(&w, HM_FAB_ENVELOPE);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_envelope(&r, &eout), -1);
	hmr_free(&r);
	hmw_free(&w);
}

/* Single-message readers still refuse anything after the message. */
static void
test_trailing_single(void **state)
{
	struct msg_hello in = { 1, 2, 3 }, out;
	struct hmw w;
	struct hmr r;

	hmw_init(&w, HM_FAB_HELLO);
	proto_write_hello(&w, &in);
	hmw_u64(&w, 1);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_hello(&r, &out), -1);
	hmr_free(&r);
	hmw_free(&w);
}

static void
test_ack_round_trip_and_limits(void **state)
{
	static struct msg_ack in, out;
	struct hmw w;
	struct hmr r;

	in.slot = 2;
	in.epoch = 9;
	in.n = ACK_MAX;
	for (uint32_t i = 0; i < in.n; i++)
		in.seqs[i] = (uint64_t)i * 1000003u + (1ULL << 40);
	hmw_init(&w, HM_FAB_ACK);
	assert_int_equal(proto_write_ack(&w, &in), 0);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_ack(&r, &out), 0);
	assert_int_equal(out.n, ACK_MAX);
	assert_memory_equal(out.seqs, in.seqs, sizeof(in.seqs));
	hmr_free(&r);
	hmw_free(&w);

	in.n = ACK_MAX + 1;
	hmw_init(&w, HM_FAB_ACK);
	assert_int_equal(proto_write_ack(&w, &in), -1);
	hmw_free(&w);

	/* A sequence blob that is not a multiple of 8 bytes is rejected. */
	hmw_init(&w, HM_FAB_ACK);
	hmw_u64(&w, 1);
	hmw_u64(&w, 1);
	hmw_bin(&w, "1234567", 7);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_ack(&r, &out), -1);
	hmr_free(&r);
	hmw_free(&w);
}

static void
test_other_bodies(void **state)
{
	struct hmw w;
	struct hmr r;
	struct msg_publish p = { 5, { "device/a/command", 16 }, { "{}", 2 }, 1, 1 }, po;
	struct msg_reply rp = { 8, 202, { "{\"a\":1}", 7 } }, ro;
	struct msg_hello h = { 5, 2, 9 }, ho;

	hmw_init(&w, HM_FAB_PUBLISH);
	proto_write_publish(&w, &p);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_publish(&r, &po), 0);
	assert_int_equal(po.ref, 5);
	assert_int_equal(po.qos, 1);
	assert_int_equal(po.retain, 1);
	hmr_free(&r);
	hmw_free(&w);

	hmw_init(&w, HM_FAB_PUBLISH);
	p.qos = 3;      /* no such QoS */
	proto_write_publish(&w, &p);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_publish(&r, &po), -1);
	hmr_free(&r);
	hmw_free(&w);

	hmw_init(&w, HM_FAB_REPLY);
	proto_write_reply(&w, &rp);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_reply(&r, &ro), 0);
	assert_int_equal(ro.status, 202);
	assert_memory_equal(ro.body.p, "{\"a\":1}", 7);
	hmr_free(&r);
	hmw_free(&w);

	hmw_init(&w, HM_FAB_HELLO);
	proto_write_hello(&w, &h);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_hello(&r, &ho), 0);
	assert_int_equal(ho.role, 5);
	assert_int_equal(ho.slot, 2);
	assert_int_equal(ho.generation, 9);
	hmr_free(&r);
	hmw_free(&w);
}

/* A device hint carries the crypto worker's run and sequence, and whether
 * it is a copy sent again; a body without them (an older sender) is refused. */
static void
test_device_info_round_trip(void **state)
{
	struct hmw w;
	struct hmr r;
	struct msg_device_info in = { { "dev-1", 5 }, { "response", 8 }, 1700000000123LL,
	    { "{\"commandId\":\"c\"}", 17 }, 0x1122334455667788ULL, 42, 1 }, out;

	hmw_init(&w, HM_FAB_DEVICE_INFO);
	proto_write_device_info(&w, &in);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_device_info(&r, &out), 0);
	assert_memory_equal(out.device.p, "dev-1", 5);
	assert_memory_equal(out.kind.p, "response", 8);
	assert_true(out.received_ms == in.received_ms);
	assert_int_equal(out.json.len, 17);
	assert_memory_equal(out.json.p, "{\"commandId\":\"c\"}", 17);
	assert_true(out.life == in.life);
	assert_int_equal(out.hseq, 42);
	assert_int_equal(out.resent, 1);
	hmr_free(&r);
	hmw_free(&w);

	hmw_init(&w, HM_FAB_DEVICE_INFO);
	hmw_str(&w, "dev-1", 5);
	hmw_str(&w, "status", 6);
	hmw_i64(&w, 1);
	hmw_str(&w, "{}", 2);
	assert_int_equal(reader(&r, &w), 0);
	assert_int_equal(proto_read_device_info(&r, &out), -1);
	hmr_free(&r);
	hmw_free(&w);
}

static void
test_garbage_never_crashes(void **state)
{
	uint8_t hdr[HM_HDRLEN] = { HM_VERSION, HM_FAB_DEV_IN };
	uint8_t body[64];
	struct msg_dev_in out;
	struct hmr r;
	const char *why;
	uint32_t x = 12345;

	/* Pseudo-random bodies: the reader must fail cleanly, never crash. */
	for (int round = 0; round < 20000; round++) {
		size_t len = (size_t)(x % sizeof(body));
		for (size_t i = 0; i < len; i++) {
			x = x * 1103515245u + 12345u;
			body[i] = (uint8_t)(x >> 16);
		}
		assert_int_equal(hmr_init(&r, hdr, HM_HDRLEN, body, len, &why), 0);
		(void)proto_read_dev_in(&r, &out);
		hmr_free(&r);
	}
}

static void
test_containers_refused(void **state)
{
	/* An array header claiming 2^32-1 elements, and a map: never unpacked. */
	static const uint8_t arr32[] = { 0xdd, 0xff, 0xff, 0xff, 0xff };
	static const uint8_t fixmap[] = { 0x81, 0x01, 0x02 };
	uint8_t hdr[HM_HDRLEN] = { HM_VERSION, HM_CTL_PING };
	struct hmr r;
	const char *why;
	uint64_t v;

	assert_int_equal(hmr_init(&r, hdr, HM_HDRLEN, arr32, sizeof(arr32), &why), 0);
	assert_int_equal(hmr_u64(&r, &v), -1);
	hmr_free(&r);
	assert_int_equal(hmr_init(&r, hdr, HM_HDRLEN, fixmap, sizeof(fixmap), &why), 0);
	assert_int_equal(hmr_u64(&r, &v), -1);
	hmr_free(&r);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scalars_round_trip),
		cmocka_unit_test(test_wrong_types_rejected),
		cmocka_unit_test(test_header_checks),
		cmocka_unit_test(test_dev_in_round_trip),
		cmocka_unit_test(test_truncated_and_trailing),
		cmocka_unit_test(test_batches),
		cmocka_unit_test(test_trailing_single),
		cmocka_unit_test(test_ack_round_trip_and_limits),
		cmocka_unit_test(test_other_bodies),
		cmocka_unit_test(test_device_info_round_trip),
		cmocka_unit_test(test_garbage_never_crashes),
		cmocka_unit_test(test_containers_refused),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
