/*
 * The crypto worker's kept device hints: every status and response it
 * tells the router stays here, by sequence, until the router acknowledges
 * that what it changed is committed; one not acknowledged is due again
 * after 2 s, then 4, 8 ... 30 s.  Bounded by a count and by the bytes of
 * the payloads: past either, the oldest go (see workers/crypto.c).
 */
#ifndef HERALD_HINTS_H
#define HERALD_HINTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HINTS_RESEND_MS     2000
#define HINTS_RESEND_MAX_MS 30000

struct hints;

/* What a due hint holds, for sending it again. */
struct hint_view {
	uint64_t    hseq;
	const char *kind;           /* as kept (a static string) */
	const char *device;
	size_t      devlen;
	const char *json;
	size_t      jsonlen;
	int64_t     received_ms;
};

struct hints *hints_new(size_t max_count, size_t max_bytes);
void          hints_free(struct hints *h);
/*
 * Keep a hint sent at now_ms; its sequence (1, 2, ...), or 0 when it cannot
 * be kept (larger than max_bytes, out of memory).  *dropped: how many of the
 * oldest went to make room.
 */
uint64_t      hints_keep(struct hints *h, const char *kind, const char *device, size_t devlen,
                  const char *json, size_t jsonlen, int64_t received_ms, int64_t now_ms,
                  int *dropped);
/* The router took these; unknown sequences (0, gone, never kept) are ignored. */
void          hints_ack(struct hints *h, const uint64_t *seqs, size_t n);
/*
 * Each hint not acknowledged for its wait by now_ms, oldest first, at most
 * max of them: fn sees it, and its next wait doubles (up to 30 s).  Returns
 * how many.
 */
int           hints_due(struct hints *h, int64_t now_ms, int max,
                  void (*fn)(void *arg, const struct hint_view *v), void *arg);
size_t        hints_count(const struct hints *h);    /* kept, not acknowledged */
size_t        hints_bytes(const struct hints *h);    /* their payloads' bytes */
size_t        hints_slots(const struct hints *h);    /* the ring's size, now */

#endif
