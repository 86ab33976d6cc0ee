/*
 * Unit tests of mosq.c's buffered socket I/O: what libmosquitto writes on an
 * attached socket stays in the buffer until mosq_io_flush(), and with held
 * acknowledgements a PUBACK waits for mosq_io_release() while other
 * packets pass it.  The packets are written the way libmosquitto
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
static const unsigned char pubrec3[] = { 0x50, 0x02, 0x00, 0x03 };   /* QoS 2: not held */
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
	put(p->a, publish, sizeof(publish));
	put(p->a, puback2, sizeof(puback2));
	put(p->a, pubrec3, sizeof(pubrec3));
	put(p->a, pingreq, sizeof(pingreq));
	assert_int_equal(mosq_io_held(p->a), sizeof(puback1) + sizeof(puback2));
	assert_int_equal(mosq_io_flush(p->a), 0);
	/* Only the publish, the PUBREC and the ping left, in their order. */
	n = take(p->b, got, sizeof(got));
	assert_int_equal(n, sizeof(publish) + sizeof(pubrec3) + sizeof(pingreq));
	assert_memory_equal(got, publish, sizeof(publish));
	assert_memory_equal(got + sizeof(publish), pubrec3, sizeof(pubrec3));
	assert_memory_equal(got + sizeof(publish) + sizeof(pubrec3), pingreq, sizeof(pingreq));
	/* Released: the PUBACKs follow, in the order written. */
	assert_int_equal(mosq_io_release(p->a), 0);
	assert_int_equal(mosq_io_held(p->a), 0);
	assert_int_equal(take(p->b, got, sizeof(got)), 0);      /* not before the flush */
	assert_int_equal(mosq_io_flush(p->a), 0);
	n = take(p->b, got, sizeof(got));
	assert_int_equal(n, sizeof(puback1) + sizeof(puback2));
	assert_memory_equal(got, puback1, sizeof(puback1));
	assert_memory_equal(got + sizeof(puback1), puback2, sizeof(puback2));
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

/* Read everything the broker's side gets until the attached side has
 * nothing left to send; returns the byte count. */
static size_t
drain(struct pair *p, unsigned char *got, size_t cap)
{
	size_t seen = 0;
	int rc;

	do {
		rc = mosq_io_flush(p->a);
		assert_true(rc >= 0);
		for (size_t k; (k = take(p->b, got + seen, cap - seen)) > 0; )
			seen += k;
	} while (rc != 0);
	for (size_t k; (k = take(p->b, got + seen, cap - seen)) > 0; )
		seen += k;
	return seen;
}

/*
 * A packet too large for the buffer goes straight to the kernel, which may
 * take part of it.  Its rest must reach the peer before anything written or
 * released after it: a PUBACK released then must not land inside it.  The
 * packet's bytes are all 0x40 (a PUBACK's first byte), so nothing of it may
 * be held either.
 */
static void
test_large_packet_stays_whole(void **state)
{
	struct pair *p = *state;
	size_t big = 256u << 10, seen;
	unsigned char *pkt = malloc(big), *got = malloc(2 * big);
	int sndbuf = 16 << 10;

	assert_non_null(pkt);
	assert_non_null(got);
	assert_int_equal(setsockopt(p->a, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0);
	assert_int_equal(mosq_io_hold_acks(p->a), 0);
	memset(pkt, 0x40, big);
	pkt[0] = 0x30;                                  /* a PUBLISH */
	put(p->a, puback1, sizeof(puback1));            /* held */
	put(p->a, pkt, big);                            /* taken whole, in one call */
	assert_int_equal(mosq_io_held(p->a), sizeof(puback1));
	assert_true(mosq_io_unsent(p->a) > 0);          /* the kernel took only part */
	/* The PUBACK's record is synced now: released while the packet is cut. */
	assert_int_equal(mosq_io_release(p->a), 0);
	put(p->a, pingreq, sizeof(pingreq));
	seen = drain(p, got, 2 * big);
	assert_int_equal(seen, big + sizeof(puback1) + sizeof(pingreq));
	assert_memory_equal(got, pkt, big);
	assert_memory_equal(got + big, puback1, sizeof(puback1));
	assert_memory_equal(got + big + sizeof(puback1), pingreq, sizeof(pingreq));
	free(pkt);
	free(got);
}

/* Read one packet as libmosquitto does: the header byte, the remaining
 * length a byte at a time, then the rest in one call. */
static void
read_packet(int fd, unsigned char *buf, size_t cap)
{
	size_t len = 0, shift = 0;
	unsigned char b;

	assert_int_equal(read(fd, &b, 1), 1);
	do {
		assert_int_equal(read(fd, &b, 1), 1);
		len |= (size_t)(b & 0x7f) << shift;
		shift += 7;
	} while (b & 0x80);
	assert_true(len <= cap);
	if (len > 0)
		assert_int_equal(read(fd, buf, len), (ssize_t)len);
}

/* The header of the packet read last, DUP flag included, whatever the
 * chunks the socket gave: the broker's resends are told from new messages. */
static void
test_last_command_follows_framing(void **state)
{
	struct pair *p = *state;
	static const unsigned char dup[] = { 0x3a, 0x08, 0x00, 0x01, 't', 0x00, 0x07, 'a', 'b', 'c' };
	unsigned char big[3 + 200], buf[256];

	memset(big, 'x', sizeof(big));
	big[0] = 0x32;
	big[1] = 0xc8;          /* 200: two bytes of remaining length */
	big[2] = 0x01;
	assert_int_equal(mosq_io_last_command(p->a), 0);
	put(p->b, dup, sizeof(dup));
	put(p->b, big, sizeof(big));
	put(p->b, pingreq, sizeof(pingreq));
	put(p->b, publish, sizeof(publish));
	read_packet(p->a, buf, sizeof(buf));
	assert_int_equal(mosq_io_last_command(p->a), 0x3a);
	assert_true(mosq_io_last_command(p->a) & 0x08);
	read_packet(p->a, buf, sizeof(buf));
	assert_int_equal(mosq_io_last_command(p->a), 0x32);
	read_packet(p->a, buf, sizeof(buf));
	assert_int_equal(mosq_io_last_command(p->a), 0xc0);
	read_packet(p->a, buf, sizeof(buf));
	assert_int_equal(mosq_io_last_command(p->a), 0x32);
	assert_false(mosq_io_last_command(p->a) & 0x08);
	assert_int_equal(mosq_io_last_command(p->b), -1);     /* not attached */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_buffered_until_flush, setup, teardown),
		cmocka_unit_test_setup_teardown(test_held_acks_let_others_pass, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unreleased_acks_dropped_at_close, setup, teardown),
		cmocka_unit_test_setup_teardown(test_large_packet_stays_whole, setup, teardown),
		cmocka_unit_test_setup_teardown(test_last_command_follows_framing, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
