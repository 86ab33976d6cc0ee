/*
 * Small helpers shared by every herald process.
 */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <sodium.h>

#include "util.h"

int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t
mono_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

void
fmt_rfc3339(int64_t unix_ms, char out[RFC3339_LEN])
{
	/* Every envelope has one: the seconds part is formatted once a second. */
	static __thread time_t last = -1;
	static __thread char secs[32];
	time_t t = (time_t)(unix_ms / 1000);

	if (unix_ms < 0)
		t = 0, unix_ms = 0;
	if (t != last) {
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(secs, sizeof(secs), "%Y-%m-%dT%H:%M:%S", &tm);
		last = t;
	}
	/* 19 chars + ".mmmZ" */
	memcpy(out, secs, 19);
	out[19] = '.';
	out[20] = (char)('0' + (unix_ms % 1000) / 100);
	out[21] = (char)('0' + (unix_ms % 100) / 10);
	out[22] = (char)('0' + unix_ms % 10);
	out[23] = 'Z';
	out[24] = '\0';
}

void
ulid_encode(const uint8_t b[16], char out[ULID_LEN])
{
	static const char alpha[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
	/* 128 bits -> 26 chars: the first char carries the top 3 bits. */
	unsigned __int128 v = 0;

	for (int i = 0; i < 16; i++)
		v = (v << 8) | b[i];
	for (int i = 25; i >= 0; i--) {
		out[i] = alpha[(unsigned)(v & 31)];
		v >>= 5;
	}
	out[26] = '\0';
}

void
msgid_make(int64_t unix_ms, uint32_t node_hash, uint32_t slot, uint32_t epoch,
    uint64_t seq, char out[ULID_LEN])
{
	uint8_t b[16];
	uint64_t t = (uint64_t)unix_ms & 0xffffffffffffULL;

	/* 48 bits time | 16 node | 8 slot | 16 epoch | 40 seq */
	for (int i = 0; i < 6; i++)
		b[i] = (uint8_t)(t >> (8 * (5 - i)));
	b[6] = (uint8_t)(node_hash >> 8);
	b[7] = (uint8_t)node_hash;
	b[8] = (uint8_t)slot;
	b[9] = (uint8_t)(epoch >> 8);
	b[10] = (uint8_t)epoch;
	for (int i = 0; i < 5; i++)
		b[11 + i] = (uint8_t)(seq >> (8 * (4 - i)));
	ulid_encode(b, out);
}

void
ulid_random(char out[ULID_LEN])
{
	uint8_t b[16];
	uint64_t t = (uint64_t)now_ms() & 0xffffffffffffULL;

	for (int i = 0; i < 6; i++)
		b[i] = (uint8_t)(t >> (8 * (5 - i)));
	randombytes_buf(b + 6, 10);
	ulid_encode(b, out);
}

uint32_t
hash32(const void *p, size_t len)
{
	const uint8_t *s = p;
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < len; i++) {
		h ^= s[i];
		h *= 16777619u;
	}
	return h;
}

bool
device_id_valid(const char *id, size_t len)
{
	if (len == 0 || len > 128)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = id[i];
		bool alnum = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		    (c >= '0' && c <= '9');
		if (alnum)
			continue;
		if (i > 0 && (c == '.' || c == '_' || c == ':' || c == '-'))
			continue;
		return false;
	}
	return true;
}

int
topic_split(const char *topic, const char **id, size_t *idlen,
    const char **kind, size_t *kindlen)
{
	const char *p, *slash;

	if (strncmp(topic, "device/", 7) != 0)
		return -1;
	p = topic + 7;
	slash = strchr(p, '/');
	if (slash == NULL || strchr(slash + 1, '/') != NULL)
		return -1;
	if (!device_id_valid(p, (size_t)(slash - p)))
		return -1;
	*id = p;
	*idlen = (size_t)(slash - p);
	*kind = slash + 1;
	*kindlen = strlen(slash + 1);
	return *kindlen > 0 ? 0 : -1;
}

int
fd_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl == -1 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

int
fd_cloexec(int fd)
{
	int fl = fcntl(fd, F_GETFD);

	return fl == -1 ? -1 : fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
}

size_t
strlcpy_h(char *dst, const char *src, size_t size)
{
	size_t n = strlen(src);

	if (size > 0) {
		size_t c = n < size - 1 ? n : size - 1;
		memcpy(dst, src, c);
		dst[c] = '\0';
	}
	return n;
}

int
mkdir_p(const char *path, int mode)
{
	char buf[1024];
	size_t n = strlcpy_h(buf, path, sizeof(buf));

	if (n >= sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, (mode_t)mode) == -1 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	if (mkdir(buf, (mode_t)mode) == -1 && errno != EEXIST)
		return -1;
	return 0;
}

void
str_printable(char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			*s = '?';
}

void *
grow_array(void *p, size_t *cap, size_t need, size_t size, size_t first)
{
	size_t n = *cap ? *cap : first;
	void *np;

	if (need <= *cap)
		return p;
	while (n < need) {
		if (n > SIZE_MAX / 2)
			return NULL;
		n *= 2;
	}
	if (size != 0 && n > SIZE_MAX / size)
		return NULL;
	if ((np = realloc(p, n * size)) == NULL)
		return NULL;
	*cap = n;
	return np;
}
