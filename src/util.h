/*
 * Small helpers shared by every herald process: clocks, ids, strings, fds.
 */
#ifndef HERALD_UTIL_H
#define HERALD_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

int64_t now_ms(void);           /* CLOCK_REALTIME, unix ms */
uint64_t now_us(void);          /* CLOCK_REALTIME, unix µs */
int64_t mono_ms(void);          /* CLOCK_MONOTONIC ms */
uint64_t mono_us(void);

/* RFC 3339 UTC with milliseconds: "2026-11-21T23:50:01.123Z" (25 bytes incl. NUL). */
#define RFC3339_LEN 25
void fmt_rfc3339(int64_t unix_ms, char out[RFC3339_LEN]);

/* 128-bit id as 26 Crockford base32 characters (ULID layout: 48-bit ms time first). */
#define ULID_LEN 27
void ulid_encode(const uint8_t bytes[16], char out[ULID_LEN]);
/* Stable message id: time, node, worker slot, outbox epoch, sequence. */
void msgid_make(int64_t unix_ms, uint32_t node_hash, uint32_t slot, uint32_t epoch,
    uint64_t seq, char out[ULID_LEN]);
/* Random id (event ids, command ids). */
void ulid_random(char out[ULID_LEN]);

uint32_t hash32(const void *p, size_t len);  /* FNV-1a */

/*
 * Room for `need` elements of `size` bytes in p, whose capacity *cap grows by
 * doubling from `first`.  Returns p itself when it has room, the moved array,
 * or NULL (p untouched) when out of memory or the size overflows.
 */
void *grow_array(void *p, size_t *cap, size_t need, size_t size, size_t first);

/* Bytes outside printable ASCII become '?': a message that quotes a client's
 * bytes stays valid JSON text (jansson refuses bad UTF-8). */
void str_printable(char *s);

/* What device_id_valid() accepts, for messages. */
#define DEVICE_ID_PATTERN "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
bool device_id_valid(const char *id, size_t len);

/*
 * Split "device/<id>/<kind>"; on success id/kind point into topic.
 * Returns -1 if the topic is not of that shape or the id is invalid.
 */
int  topic_split(const char *topic, const char **id, size_t *idlen,
         const char **kind, size_t *kindlen);

int  fd_nonblock(int fd);
int  fd_cloexec(int fd);
size_t strlcpy_h(char *dst, const char *src, size_t size);
int  mkdir_p(const char *path, int mode);

#endif
