/*
 * libmosquitto adapted to an external event loop.
 *
 * The wake-up socketpair: libmosquitto 2.0 gives every client a socketpair
 * at mosquitto_new() (lib/mosquitto.c, mosquitto_reinitialise) only to wake
 * its own select() loop, and writes one byte into it for every packet it
 * queues (lib/packet_mosq.c, packet__queue).  Driven by mosquitto_loop_read
 * and _write it is never read: two fds per client and one write(2) per
 * packet, failing with EAGAIN once the pair is full.  When socketpair()
 * fails the library goes on without it, so during mosq_new() only this
 * file's socketpair(), which takes precedence over libc's, fails.
 *
 * Buffered socket I/O: libmosquitto reads a packet with one read(2) for the
 * command byte, one per remaining-length byte and one for the rest (four
 * for a typical device message), and writes each packet (every PUBACK) with
 * its own write(2).  For an attached socket this file's read() and write()
 * serve libmosquitto from a 64 KiB input buffer and collect its output
 * until the caller's mosq_io_flush(), so an mqtt worker makes a read and a
 * write per loop pass instead of five syscalls per message.  Every other fd
 * goes straight to the kernel.  close() of an attached socket (libmosquitto
 * closes its own) tries to send what is left and detaches it first, so a
 * reused fd number never finds a stale buffer.
 *
 * Held acknowledgements: an mqtt worker may write a PUBACK only once its
 * message's outbox record is synced, but a publish for a device should not
 * wait for that sync.  libmosquitto keeps one out queue per client, in
 * order, so the PUBACKs it writes on a socket that holds them go to a
 * second buffer, which mosq_io_release() puts behind what is already out.
 * Other packets pass them (MQTT orders the PUBACKs among themselves, not
 * against our publishes).  This needs each write(2) of libmosquitto to be
 * one whole packet: it writes a packet's remaining bytes in one call
 * (lib/packet_mosq.c, packet__write; net__write is a plain write() without
 * TLS, which herald does not use), and this file takes all of them or none:
 * what the kernel does not take of a large packet written directly stays in
 * the out buffer, so a release never lands inside a packet.  An unreleased
 * PUBACK is dropped when the socket closes: the broker sends its message
 * again.  Only QoS 1 is held: herald subscribes at QoS 1, and for QoS 2
 * libmosquitto calls on_message only after its PUBREC has left anyway.
 *
 * The table is only written
 * by the thread that drives the clients; other threads (ZeroMQ's) only ever
 * find their own fds absent from it.
 */
#undef _FORTIFY_SOURCE          /* we define read() and write() */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/syscall.h>

#include "mosq.h"
#include "util.h"

#define MOSQ_IO_FDS     65536          /* fds past this are not buffered */
#define MOSQ_IO_IN      (64u << 10)
#define MOSQ_IO_OUT_MAX (4u << 20)     /* past this, writes see EAGAIN */

struct mosq_io {
	char   *in;
	size_t  in_off, in_len;
	bool    in_full;       /* the last fill filled the buffer */
	char   *out;
	size_t  out_len, out_cap;
	bool    hold;          /* PUBACKs wait for mosq_io_release() */
	/* The framing of what libmosquitto has read (mosq_io_last_command). */
	uint8_t rd_cmd;        /* fixed header byte of the last packet begun */
	uint8_t rd_state;      /* RD_CMD, RD_LEN, RD_BODY */
	uint8_t rd_shift;
	uint32_t rd_left;      /* remaining length being read, then its bytes left */
	char   *held;
	size_t  held_len, held_cap;
};

static bool mosq_refuse_pair;
static struct mosq_io **mosq_io_tab;

int
socketpair(int domain, int type, int protocol, int sv[2])
{
	if (mosq_refuse_pair) {
		errno = EMFILE;
		return -1;
	}
	return (int)syscall(SYS_socketpair, domain, type, protocol, sv);
}

struct mosquitto *
mosq_new(const char *id, bool clean_session, void *obj, bool wakeup_pair)
{
	struct mosquitto *m;

	mosq_refuse_pair = !wakeup_pair;
	m = mosquitto_new(id, clean_session, obj);
	mosq_refuse_pair = false;
	return m;
}

static struct mosq_io *
mosq_io_get(int fd)
{
	struct mosq_io **tab = __atomic_load_n(&mosq_io_tab, __ATOMIC_ACQUIRE);

	if (tab == NULL || fd < 0 || fd >= MOSQ_IO_FDS)
		return NULL;
	return __atomic_load_n(&tab[fd], __ATOMIC_ACQUIRE);
}

int
mosq_io_attach(int fd)
{
	struct mosq_io *io;

	if (fd < 0 || fd >= MOSQ_IO_FDS) {
		errno = EBADF;
		return -1;
	}
	if (mosq_io_tab == NULL) {
		struct mosq_io **tab = calloc(MOSQ_IO_FDS, sizeof(*tab));

		if (tab == NULL)
			return -1;
		__atomic_store_n(&mosq_io_tab, tab, __ATOMIC_RELEASE);
	}
	if (mosq_io_tab[fd] != NULL)
		return 0;
	if ((io = calloc(1, sizeof(*io))) == NULL || (io->in = malloc(MOSQ_IO_IN)) == NULL) {
		free(io);
		return -1;
	}
	__atomic_store_n(&mosq_io_tab[fd], io, __ATOMIC_RELEASE);
	return 0;
}

bool
mosq_io_readable(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	return io != NULL && (io->in_off < io->in_len || io->in_full);
}

size_t
mosq_io_unsent(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	return io != NULL ? io->out_len : 0;
}

static int
mosq_io_push(int fd, struct mosq_io *io)
{
	size_t done = 0;
	int rc = 0;

	while (done < io->out_len) {
		ssize_t n = syscall(SYS_write, fd, io->out + done, io->out_len - done);

		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n == -1 && errno == EINTR)
			continue;
		rc = n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK) ? 1 : -1;
		break;
	}
	if (done > 0 && done < io->out_len)
		memmove(io->out, io->out + done, io->out_len - done);
	io->out_len -= done;
	return rc;
}

int
mosq_io_hold_acks(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	if (io == NULL) {
		errno = EBADF;
		return -1;
	}
	io->hold = true;
	return 0;
}

size_t
mosq_io_held(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	return io != NULL ? io->held_len : 0;
}

static int
mosq_io_append(char **buf, size_t *len, size_t *cap, const void *p, size_t n)
{
	char *nb;

	if ((nb = grow_array(*buf, cap, *len + n, 1, 4096)) == NULL) {
		errno = ENOMEM;
		return -1;
	}
	*buf = nb;
	memcpy(*buf + *len, p, n);
	*len += n;
	return 0;
}

int
mosq_io_release(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	if (io == NULL || io->held_len == 0)
		return 0;
	if (mosq_io_append(&io->out, &io->out_len, &io->out_cap, io->held, io->held_len) == -1)
		return -1;
	io->held_len = 0;
	return 0;
}

int
mosq_io_flush(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	if (io == NULL || io->out_len == 0)
		return 0;
	return mosq_io_push(fd, io);
}

enum { RD_CMD, RD_LEN, RD_BODY };

/*
 * Follow the MQTT framing of the bytes handed to libmosquitto: a fixed
 * header byte, the remaining length (1 to 4 bytes of 7 bits), then that
 * many bytes.  libmosquitto reads one packet at a time and calls its
 * handlers (on_message) once the packet is complete, before it reads the
 * next one's first byte: then rd_cmd is that packet's header.
 */
static void
mosq_io_track(struct mosq_io *io, const unsigned char *p, size_t n)
{
	while (n > 0) {
		switch (io->rd_state) {
		case RD_CMD:
			io->rd_cmd = *p++;
			n--;
			io->rd_state = RD_LEN;
			io->rd_left = 0;
			io->rd_shift = 0;
			break;
		case RD_LEN:
			io->rd_left |= (uint32_t)(*p & 0x7f) << io->rd_shift;
			io->rd_shift += 7;
			if ((*p & 0x80) == 0 || io->rd_shift >= 28)
				io->rd_state = io->rd_left > 0 ? RD_BODY : RD_CMD;
			p++;
			n--;
			break;
		default: {
			size_t k = n < io->rd_left ? n : io->rd_left;

			p += k;
			n -= k;
			io->rd_left -= (uint32_t)k;
			if (io->rd_left == 0)
				io->rd_state = RD_CMD;
		}
		}
	}
}

int
mosq_io_last_command(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	return io != NULL ? io->rd_cmd : -1;
}

ssize_t
read(int fd, void *buf, size_t n)
{
	struct mosq_io *io = mosq_io_get(fd);
	size_t k;

	if (io == NULL)
		return syscall(SYS_read, fd, buf, n);
	if (io->in_off == io->in_len) {
		ssize_t r;

		if (n >= MOSQ_IO_IN / 2) {
			/* a large payload's remainder: no copy */
			r = syscall(SYS_read, fd, buf, n);
			io->in_full = r > 0 && (size_t)r == n;
			if (r > 0)
				mosq_io_track(io, buf, (size_t)r);
			return r;
		}
		r = syscall(SYS_read, fd, io->in, MOSQ_IO_IN);
		if (r <= 0) {
			io->in_full = false;
			return r;
		}
		io->in_off = 0;
		io->in_len = (size_t)r;
		io->in_full = (size_t)r == MOSQ_IO_IN;
	}
	k = io->in_len - io->in_off < n ? io->in_len - io->in_off : n;
	memcpy(buf, io->in + io->in_off, k);
	io->in_off += k;
	mosq_io_track(io, buf, k);
	return (ssize_t)k;
}

/* A PUBACK (herald's acknowledgement of a QoS 1 message it received). */
static bool
mosq_io_is_puback(const void *buf, size_t n)
{
	return n > 0 && *(const unsigned char *)buf >> 4 == 4;
}

/* Every call from libmosquitto is one whole packet (again after EAGAIN), and
 * is taken whole or not at all (see the top of this file). */
ssize_t
write(int fd, const void *buf, size_t n)
{
	struct mosq_io *io = mosq_io_get(fd);

	if (io == NULL)
		return syscall(SYS_write, fd, buf, n);
	if (io->hold && mosq_io_is_puback(buf, n)) {
		/* At most a receive maximum of them between two syncs. */
		if (mosq_io_append(&io->held, &io->held_len, &io->held_cap, buf, n) == -1)
			return -1;
		return (ssize_t)n;
	}
	if (io->out_len + n > MOSQ_IO_OUT_MAX || n >= MOSQ_IO_IN) {
		/* A large packet, or a peer that does not read: what is
		 * buffered goes first; a large packet then goes straight,
		 * and what the kernel leaves of it waits in the buffer. */
		if (mosq_io_push(fd, io) == -1)
			return -1;
		if (io->out_len > 0) {
			errno = EAGAIN;
			return -1;
		}
		if (n >= MOSQ_IO_IN) {
			ssize_t r;

			do
				r = syscall(SYS_write, fd, buf, n);
			while (r == -1 && errno == EINTR);
			if (r == -1 && errno != EAGAIN && errno != EWOULDBLOCK)
				return -1;
			if (r == -1)
				r = 0;
			if ((size_t)r < n && mosq_io_append(&io->out, &io->out_len, &io->out_cap,
			    (const char *)buf + r, n - (size_t)r) == -1) {
				if (r > 0)      /* a packet cut short: the stream is lost */
					shutdown(fd, SHUT_RDWR);
				return -1;
			}
			return (ssize_t)n;
		}
	}
	if (mosq_io_append(&io->out, &io->out_len, &io->out_cap, buf, n) == -1)
		return -1;
	return (ssize_t)n;
}

int
close(int fd)
{
	struct mosq_io *io = mosq_io_get(fd);

	if (io != NULL) {
		/* libmosquitto closes after writing a DISCONNECT: send it. */
		if (io->out_len > 0)
			(void)mosq_io_push(fd, io);
		__atomic_store_n(&mosq_io_tab[fd], NULL, __ATOMIC_RELEASE);
		free(io->in);
		free(io->out);
		free(io->held);
		free(io);
	}
	return (int)syscall(SYS_close, fd);
}
