/*
 * Unit tests of mosq.c's buffered socket I/O: what libmosquitto writes on an
 * attached socket stays in the buffer until mosq_io_flush(), and with held
 * acknowledgements a PUBACK or PUBREC waits for mosq_io_release() while
 * other packets pass it.  The packets are written the way libmosquitto
 * writes them: one write(2) per packet.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

#include "mosq.h"

static const unsigned char puback1[] = { 0x40, 0x02, 0x00, 0x01 };
static const unsigned char puback2[] = { 0x40, 0x02, 0x00, 0x02 };
static const unsigned char pubrec3[] = { 0x50, 0x02, 0x00, 0x03 };
static const unsigned char publish[] = { 0x32, 0x08, 0x00, 0x01, 't', 0x00, 0x07, 'a', 'b', 'c' };
static const unsigned char pingreq[] = { 0xc0, 0x00 };

struct pair {
	int a, b;       /* a: attached (herald's side), b: the broker's side */
};

static int
setup(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));
	int sv[2];

	assert_non_null(p);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	p->a = sv[0];
	p->b = sv[1];
	assert_int_equal(fcntl(p->a, F_SETFL, O_NONBLOCK), 0);
	assert_int_equal(fcntl(p->b, F_SETFL, O_NONBLOCK), 0);
	assert_int_equal(mosq_io_attach(p->a), 0);
	*state = p;
	return 0;
}

static int
teardown(void **state)
{
	struct pair *p = *state;

	if (p->a != -1)
		close(p->a);
	close(p->b);
	free(p);
	return 0;
}

static void
put(int fd, const unsigned char *buf, size_t n)
{
	assert_int_equal(write(fd, buf, n), (ssize_t)n);
}

/* What the broker's side can read now (nothing: 0). */
static size_t
take(int fd, unsigned char *buf, size_t cap)
{
	ssize_t n = recv(fd, buf, cap, MSG_DONTWAIT);

	if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK))
		return 0;
	assert_true(n >= 0);
	return (size_t)n;
}

static void
test_buffered_until_flush(void **state)
{
	struct pair *p = *state;
	unsigned char got[64];

	put(p->a, puback1, sizeof(puback1));
	put(p->a, publish, sizeof(publish));
	assert_int_equal(take(p->b, got, sizeof(got)), 0);
	assert_int_equal(mosq_io_unsent(p->a), sizeof(puback1) + sizeof(publish));
	assert_int_equal(mosq_io_flush(p->a), 0);
	assert_int_equal(take(p->b, got, sizeof(got)), sizeof(puback1) + sizeof(publish));
	assert_memory_equal(got, puback1, sizeof(puback1));
	assert_memory_equal(got + sizeof(puback1), publish, sizeof(publish));
}

static void
test_held_acks_let_others_pass(void **state)
{
	struct pair *p = *state;
	unsigned char got[64];
	size_t n;

	assert_int_equal(mosq_io_hold_acks(p->a), 0);
	put(p->a, puback1, sizeof(puback1));
	put(p->a, pubrec3, sizeof(pubrec3));
	put(p->a, publish, sizeof(publish));
	put(p->a, puback2, sizeof(puback2));
	put(p->a, pingreq, sizeof(pingreq));
	assert_int_equal(mosq_io_held(p->a), sizeof(puback1) + sizeof(pubrec3) + sizeof(puback2));
	assert_int_equal(mosq_io_flush(p->a), 0);
	/* Only the publish and the ping left. */
	n = take(p->b, got, sizeof(got));
	assert_int_equal(n, sizeof(publish) + sizeof(pingreq));
	assert_memory_equal(got, publish, sizeof(publish));
	assert_memory_equal(got + sizeof(publish), pingreq, sizeof(pingreq));
	/* Released: the acknowledgements follow, in the order written. */
	assert_int_equal(mosq_io_release(p->a), 0);
	assert_int_equal(mosq_io_held(p->a), 0);
	assert_int_equal(take(p->b, got, sizeof(got)), 0);      /* not before the flush */
	assert_int_equal(mosq_io_flush(p->a), 0);
	n = take(p->b, got, sizeof(got));
	assert_int_equal(n, sizeof(puback1) + sizeof(pubrec3) + sizeof(puback2));
	assert_memory_equal(got, puback1, sizeof(puback1));
	assert_memory_equal(got + 4, pubrec3, sizeof(pubrec3));
	assert_memory_equal(got + 8, puback2, sizeof(puback2));
}

static void
test_unreleased_acks_dropped_at_close(void **state)
{
	struct pair *p = *state;
	unsigned char got[64];

	assert_int_equal(mosq_io_hold_acks(p->a), 0);
	put(p->a, publish, sizeof(publish));
	put(p->a, puback1, sizeof(puback1));
	close(p->a);
	p->a = -1;
	/* What was out leaves with the close; the unsynced PUBACK never does. */
	assert_int_equal(take(p->b, got, sizeof(got)), sizeof(publish));
	assert_memory_equal(got, publish, sizeof(publish));
	assert_int_equal(take(p->b, got, sizeof(got)), 0);
}

/*
 * A packet too large for the buffer goes straight to the kernel, which may
 * take part of it; its rest, written next, begins with whatever byte comes
 * next, 0x40 (a PUBACK's first byte) here, and must not be held.
 */
static void
test_rest_of_large_packet_is_no_ack(void **state)
{
	struct pair *p = *state;
	size_t big = 256u << 10, sent = 0, seen = 0, writes = 0;
	unsigned char *pkt = malloc(big), *got = malloc(big);
	int sndbuf = 16 << 10;

	assert_non_null(pkt);
	assert_non_null(got);
	assert_int_equal(setsockopt(p->a, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	assert_int_equal(mosq_io_hold_acks(p->a), 0);
	memset(pkt, 0x40, big);
	pkt[0] = 0x30;          /* a PUBLISH */
	while (sent < big) {
		ssize_t n = write(p->a, pkt + sent, big - sent);

		if (n > 0) {
			sent += (size_t)n;
			writes++;
		} else
			assert_true(n == -1 && errno == EAGAIN);
		assert_int_equal(mosq_io_held(p->a), 0);
		seen += take(p->b, got, big);
	}
	assert_true(writes > 1);        /* the kernel took it in parts */
	while (mosq_io_flush(p->a) != 0)
		seen += take(p->b, got, big);
	for (size_t k; (k = take(p->b, got, big)) > 0; )
		seen += k;
	assert_int_equal(seen, big);
	/* The next packet starts afresh: a PUBACK is held again. */
	put(p->a, puback1, sizeof(puback1));
	assert_int_equal(mosq_io_held(p->a), sizeof(puback1));
	free(pkt);
	free(got);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_buffered_until_flush, setup, teardown),
		cmocka_unit_test_setup_teardown(test_held_acks_let_others_pass, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unreleased_acks_dropped_at_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_rest_of_large_packet_is_no_ack, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
