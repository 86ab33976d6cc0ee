/*
 * The accounting of herald-bench sink: every envelope id and every
 * (device, kind, seq) seen, so loss, duplicates and reordering are exact counts.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "bench.h"

const char *const track_kind_names[TK_NKINDS] = {
	"telemetry", "status", "response", "event", "request", "other"
};

/* One numbered stream: a bitmap of the seqs seen, from seq 1. */
struct track_stream {
	uint64_t max_seq;
	uint64_t distinct;
	uint64_t repeats;
	uint64_t reordered;
	uint64_t *bits;
	size_t words;
};

struct track_dev {
	char *name;
	struct track_stream s[TK_NKINDS];
};

struct track_slot {
	uint64_t h;
	struct track_dev *dev;
};

/* Envelope ids are kept as 128-bit BLAKE2b digests: 16 bytes each whatever the
 * id's length; two distinct ids collide with probability ~n^2/2^129. */
struct track_id {
	uint64_t a, b;
};

struct track {
	struct track_id *ids;
	size_t ids_cap, ids_len;
	struct track_slot *devs;
	size_t devs_cap, devs_len;
	struct track_counts c[TK_NKINDS];
};

enum track_kind
track_kind_parse(const char *s)
{
	for (int k = 0; k < TK_OTHER; k++)
		if (strcmp(s, track_kind_names[k]) == 0)
			return (enum track_kind)k;
	return TK_OTHER;
}

struct track *
track_new(void)
{
	struct track *t = calloc(1, sizeof(*t));

	if (t == NULL)
		return NULL;
	t->ids_cap = 1024;
	t->devs_cap = 256;
	t->ids = calloc(t->ids_cap, sizeof(*t->ids));
	t->devs = calloc(t->devs_cap, sizeof(*t->devs));
	if (t->ids == NULL || t->devs == NULL) {
		track_free(t);
		return NULL;
	}
	return t;
}

void
track_free(struct track *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i < t->devs_cap; i++) {
		struct track_dev *d = t->devs[i].dev;

		if (d == NULL)
			continue;
		for (int k = 0; k < TK_NKINDS; k++)
			free(d->s[k].bits);
		free(d->name);
		free(d);
	}
	free(t->devs);
	free(t->ids);
	free(t);
}

static uint64_t
track_strhash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;

	for (; *s; s++) {
		h ^= (uint8_t)*s;
		h *= 1099511628211ULL;
	}
	return h ? h : 1;
}

/* Returns 1 if the id was already there, 0 if inserted, -1 on memory failure. */
static int
track_id_insert(struct track *t, const char *id)
{
	unsigned char d[16];
	struct track_id key;
	size_t mask, i;

	crypto_generichash(d, sizeof(d), (const unsigned char *)id, strlen(id), NULL, 0);
	memcpy(&key.a, d, 8);
	memcpy(&key.b, d + 8, 8);
	if (key.a == 0 && key.b == 0)
		key.b = 1;                      /* {0,0} marks an empty slot */
	if ((t->ids_len + 1) * 2 > t->ids_cap) {
		size_t ncap = t->ids_cap * 2;
		struct track_id *n = calloc(ncap, sizeof(*n));

		if (n == NULL)
			return -1;
		for (size_t j = 0; j < t->ids_cap; j++) {
			struct track_id *o = &t->ids[j];

			if (o->a == 0 && o->b == 0)
				continue;
			for (i = o->a & (ncap - 1); n[i].a || n[i].b; i = (i + 1) & (ncap - 1))
				;
			n[i] = *o;
		}
		free(t->ids);
		t->ids = n;
		t->ids_cap = ncap;
	}
	mask = t->ids_cap - 1;
	for (i = key.a & mask; t->ids[i].a || t->ids[i].b; i = (i + 1) & mask)
		if (t->ids[i].a == key.a && t->ids[i].b == key.b)
			return 1;
	t->ids[i] = key;
	t->ids_len++;
	return 0;
}

static struct track_dev *
track_dev_find(const struct track *t, const char *name)
{
	uint64_t h = track_strhash(name);
	size_t mask = t->devs_cap - 1;

	for (size_t i = h & mask; t->devs[i].dev; i = (i + 1) & mask)
		if (t->devs[i].h == h && strcmp(t->devs[i].dev->name, name) == 0)
			return t->devs[i].dev;
	return NULL;
}

static struct track_dev *
track_dev_get(struct track *t, const char *name)
{
	struct track_dev *d = track_dev_find(t, name);
	size_t mask, i;

	if (d != NULL)
		return d;
	if ((t->devs_len + 1) * 2 > t->devs_cap) {
		size_t ncap = t->devs_cap * 2;
		struct track_slot *n = calloc(ncap, sizeof(*n));

		if (n == NULL)
			return NULL;
		for (size_t j = 0; j < t->devs_cap; j++) {
			if (t->devs[j].dev == NULL)
				continue;
			for (i = t->devs[j].h & (ncap - 1); n[i].dev; i = (i + 1) & (ncap - 1))
				;
			n[i] = t->devs[j];
		}
		free(t->devs);
		t->devs = n;
		t->devs_cap = ncap;
	}
	if ((d = calloc(1, sizeof(*d))) == NULL || (d->name = strdup(name)) == NULL) {
		free(d);
		return NULL;
	}
	mask = t->devs_cap - 1;
	uint64_t h = track_strhash(name);
	for (i = h & mask; t->devs[i].dev; i = (i + 1) & mask)
		;
	t->devs[i].h = h;
	t->devs[i].dev = d;
	t->devs_len++;
	return d;
}

static bool
track_bit(const struct track_stream *s, uint64_t seq)
{
	uint64_t w = (seq - 1) / 64;

	return w < s->words && (s->bits[w] >> ((seq - 1) % 64) & 1);
}

static int
track_bit_set(struct track_stream *s, uint64_t seq)
{
	uint64_t w = (seq - 1) / 64;

	if (w >= s->words) {
		size_t nw = s->words ? s->words : 4;
		uint64_t *n;

		while (nw <= w)
			nw *= 2;
		if ((n = realloc(s->bits, nw * sizeof(*n))) == NULL)
			return -1;
		memset(n + s->words, 0, (nw - s->words) * sizeof(*n));
		s->bits = n;
		s->words = nw;
	}
	s->bits[w] |= 1ULL << ((seq - 1) % 64);
	return 0;
}

enum track_result
track_add(struct track *t, const char *id, const char *device, enum track_kind kind,
    int64_t seq)
{
	struct track_counts *c = &t->c[kind];
	struct track_stream *s;
	struct track_dev *d;
	uint64_t q;

	if (id != NULL) {
		int r = track_id_insert(t, id);

		if (r == 1) {
			c->dup_ids++;
			c->envelopes++;
			return TRACK_DUP_ID;
		}
		/* out of memory: count the message without its id rather than stop */
	}
	c->envelopes++;
	if (seq < 0) {
		c->unsequenced++;
		c->distinct++;
		return TRACK_UNSEQUENCED;
	}
	q = (uint64_t)seq;
	if (q == 0 || q > TRACK_SEQ_MAX || (d = track_dev_get(t, device)) == NULL) {
		c->seq_invalid++;
		return TRACK_SEQ_INVALID;
	}
	s = &d->s[kind];
	if (track_bit(s, q)) {
		s->repeats++;
		c->seq_repeats++;
		return TRACK_SEQ_REPEAT;
	}
	if (track_bit_set(s, q) == -1) {
		c->seq_invalid++;
		return TRACK_SEQ_INVALID;
	}
	s->distinct++;
	c->distinct++;
	if (q < s->max_seq) {
		/* fills a hole below the highest seq: one gap fewer */
		s->reordered++;
		c->reordered++;
		c->gaps--;
		return TRACK_REORDERED;
	}
	c->gaps += q - s->max_seq - 1;
	s->max_seq = q;
	return TRACK_NEW;
}

const struct track_counts *
track_counts(const struct track *t, enum track_kind k)
{
	return &t->c[k];
}

void
track_total(const struct track *t, struct track_counts *out)
{
	memset(out, 0, sizeof(*out));
	for (int k = 0; k < TK_NKINDS; k++) {
		const struct track_counts *c = &t->c[k];

		out->envelopes += c->envelopes;
		out->distinct += c->distinct;
		out->unsequenced += c->unsequenced;
		out->dup_ids += c->dup_ids;
		out->seq_repeats += c->seq_repeats;
		out->reordered += c->reordered;
		out->seq_invalid += c->seq_invalid;
		out->gaps += c->gaps;
	}
}

size_t
track_devices(const struct track *t)
{
	return t->devs_len;
}

/* Distinct seqs of s within 1..last. */
static uint64_t
track_seen_upto(const struct track_stream *s, uint64_t last)
{
	uint64_t n = 0, full = last / 64;

	for (uint64_t w = 0; w < full && w < s->words; w++)
		n += (uint64_t)__builtin_popcountll(s->bits[w]);
	if (last % 64 && full < s->words)
		n += (uint64_t)__builtin_popcountll(s->bits[full] & ((1ULL << (last % 64)) - 1));
	return n;
}

int
track_missing_from_file(const struct track *t, const char *path, uint64_t *missing,
    uint64_t *expected)
{
	char line[512], dev[256], kind[32];
	unsigned long long last;
	FILE *f = fopen(path, "r");

	*missing = *expected = 0;
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f) != NULL) {
		const struct track_dev *d;
		enum track_kind k;

		if (sscanf(line, "%255s %31s %llu", dev, kind, &last) != 3)
			continue;
		k = track_kind_parse(kind);
		if (last > TRACK_SEQ_MAX)
			last = TRACK_SEQ_MAX;
		*expected += last;
		d = track_dev_find(t, dev);
		*missing += last - (d ? track_seen_upto(&d->s[k], last) : 0);
	}
	fclose(f);
	return 0;
}

json_t *
track_devices_json(const struct track *t)
{
	json_t *all = json_object();

	for (size_t i = 0; i < t->devs_cap; i++) {
		const struct track_dev *d = t->devs[i].dev;
		json_t *o;

		if (d == NULL)
			continue;
		o = json_object();
		for (int k = 0; k < TK_NKINDS; k++) {
			const struct track_stream *s = &d->s[k];

			if (s->max_seq == 0)
				continue;
			json_object_set_new(o, track_kind_names[k], json_pack(
			    "{sI sI sI sI sI}",
			    "distinct", (json_int_t)s->distinct,
			    "max_seq", (json_int_t)s->max_seq,
			    "gaps", (json_int_t)(s->max_seq - s->distinct),
			    "repeats", (json_int_t)s->repeats,
			    "reordered", (json_int_t)s->reordered));
		}
		json_object_set_new(all, d->name, o);
	}
	return all;
}
