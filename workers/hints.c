/*
 * The crypto worker's kept device hints (see hints.h).  A ring of slots
 * indexed by sequence: the oldest kept is `first`, the next to hand out is
 * `next`; an acknowledged hint frees its payload at once and its slot when
 * every older one is acknowledged too.  The ring starts small and doubles
 * when the hints not yet released fill it, up to max_count: a slot per
 * sequence modulo a ring of max_count would page in the whole ring (4.7 MB)
 * over the first 65,536 hints however few are kept at once, which looked
 * like a leak of 4 kB/s in a soak.  It shrinks back when it is empty after
 * a stretch in which the most kept at once was under a quarter of it, so a
 * ring grown by a long router outage is given back once it is over, and one
 * that a steady load fills now and then is not freed and grown each time.
 */
#include <stdlib.h>
#include <string.h>

#include "hints.h"

struct hint {
	uint64_t    hseq;            /* 0: free */
	bool        acked;
	int64_t     sent_ms;
	int64_t     wait_ms;         /* before the next copy */
	int64_t     received_ms;
	const char *kind;
	char       *data;            /* device id, then the payload: one allocation */
	size_t      devlen, jsonlen;
};

#define HINTS_RING_MIN 256

struct hints {
	struct hint *ring;
	size_t       cap, max_count, max_bytes;
	uint64_t     first, next;
	size_t       count, bytes;
	size_t       peak;             /* most slots in use since the ring was last empty */
};

struct hints *
hints_new(size_t max_count, size_t max_bytes)
{
	struct hints *h;

	if (max_count == 0 || (h = calloc(1, sizeof(*h))) == NULL)
		return NULL;
	h->cap = max_count < HINTS_RING_MIN ? max_count : HINTS_RING_MIN;
	if ((h->ring = calloc(h->cap, sizeof(*h->ring))) == NULL) {
		free(h);
		return NULL;
	}
	h->max_count = max_count;
	h->max_bytes = max_bytes;
	h->first = h->next = 1;
	return h;
}

void
hints_free(struct hints *h)
{
	if (h == NULL)
		return;
	for (uint64_t s = h->first; s < h->next; s++)
		free(h->ring[s % h->cap].data);
	free(h->ring);
	free(h);
}

static struct hint *
hint_at(struct hints *h, uint64_t hseq)
{
	struct hint *e;

	if (hseq < h->first || hseq >= h->next)
		return NULL;
	e = &h->ring[hseq % h->cap];
	return e->hseq == hseq ? e : NULL;
}

/* Taken, or dropped: its payload goes at once. */
static void
hint_release(struct hints *h, struct hint *e)
{
	if (e->acked)
		return;
	h->bytes -= e->devlen + e->jsonlen;
	h->count--;
	free(e->data);
	e->data = NULL;
	e->acked = true;
}

/* Its slot, when every older one is released too. */
static void
hint_pop(struct hints *h)
{
	while (h->first < h->next && h->ring[h->first % h->cap].acked) {
		memset(&h->ring[h->first % h->cap], 0, sizeof(struct hint));
		h->first++;
	}
}

/* A ring of cap slots (room for the kept ones), the kept slots moved over. */
static int
hints_resize(struct hints *h, size_t cap)
{
	struct hint *ring = calloc(cap, sizeof(*ring));

	if (ring == NULL)
		return -1;
	for (uint64_t s = h->first; s < h->next; s++)
		ring[s % cap] = h->ring[s % h->cap];
	free(h->ring);
	h->ring = ring;
	h->cap = cap;
	return 0;
}

/*
 * The ring is empty: back to the size the last stretch needed (twice its
 * peak, HINTS_RING_MIN at least) if that is under a quarter of it.  A ring
 * that cannot be had keeps the old one.
 */
static void
hints_shrink(struct hints *h)
{
	size_t cap = HINTS_RING_MIN, peak = h->peak;

	h->peak = 0;
	if (h->cap <= HINTS_RING_MIN || peak >= h->cap / 4)
		return;
	while (cap < 2 * peak)
		cap *= 2;
	if (cap < h->cap)
		(void)hints_resize(h, cap);
}

uint64_t
hints_keep(struct hints *h, const char *kind, const char *device, size_t devlen,
    const char *json, size_t jsonlen, int64_t received_ms, int64_t now_ms, int *dropped)
{
	size_t need = devlen + jsonlen;
	struct hint *e;
	char *p;

	*dropped = 0;
	if (need > h->max_bytes)
		return 0;
	if (h->next - h->first == h->cap && h->cap < h->max_count &&
	    hints_resize(h, h->cap * 2 > h->max_count ? h->max_count : h->cap * 2) == -1)
		return 0;
	/* The oldest go first: every slot used, or the bytes over the budget. */
	while (h->first < h->next &&
	    (h->next - h->first == h->cap || h->bytes + need > h->max_bytes)) {
		hint_release(h, &h->ring[h->first % h->cap]);
		hint_pop(h);
		(*dropped)++;
	}
	if ((p = malloc(need + 1)) == NULL)
		return 0;
	memcpy(p, device, devlen);
	memcpy(p + devlen, json, jsonlen);
	e = &h->ring[h->next % h->cap];
	e->hseq = h->next++;
	e->acked = false;
	e->sent_ms = now_ms;
	e->wait_ms = HINTS_RESEND_MS;
	e->received_ms = received_ms;
	e->kind = kind;
	e->data = p;
	e->devlen = devlen;
	e->jsonlen = jsonlen;
	h->bytes += need;
	h->count++;
	if (h->next - h->first > h->peak)
		h->peak = (size_t)(h->next - h->first);
	return e->hseq;
}

void
hints_ack(struct hints *h, const uint64_t *seqs, size_t n)
{
	struct hint *e;

	for (size_t i = 0; i < n; i++)
		if ((e = hint_at(h, seqs[i])) != NULL)
			hint_release(h, e);
	hint_pop(h);
	if (h->first == h->next)
		hints_shrink(h);
}

int
hints_due(struct hints *h, int64_t now_ms, int max,
    void (*fn)(void *arg, const struct hint_view *v), void *arg)
{
	int n = 0;

	for (uint64_t s = h->first; s < h->next && n < max; s++) {
		struct hint *e = &h->ring[s % h->cap];
		struct hint_view v;

		if (e->hseq != s || e->acked || now_ms - e->sent_ms < e->wait_ms)
			continue;
		v.hseq = e->hseq;
		v.kind = e->kind;
		v.device = e->data;
		v.devlen = e->devlen;
		v.json = e->data + e->devlen;
		v.jsonlen = e->jsonlen;
		v.received_ms = e->received_ms;
		fn(arg, &v);
		e->sent_ms = now_ms;
		e->wait_ms = e->wait_ms * 2 > HINTS_RESEND_MAX_MS ? HINTS_RESEND_MAX_MS :
		    e->wait_ms * 2;
		n++;
	}
	return n;
}

size_t hints_count(const struct hints *h) { return h->count; }
size_t hints_slots(const struct hints *h) { return h->cap; }
size_t hints_bytes(const struct hints *h) { return h->bytes; }
