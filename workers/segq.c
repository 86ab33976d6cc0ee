/*
 * The envelope queue in segment files (see segq.h).
 *
 * A record is a 32-byte header (magic, CRC32C of header and body, sequence,
 * arrival time, lengths), the id, the device and the JSON, padded to 8
 * bytes.  Opening reads every segment: a record that does not check is
 * skipped with the bytes up to the next sound record (a torn write at the
 * tail of the newest segment, with none after it, is cut off), then the
 * deletion logs are applied.  A sequence found twice (a record copied
 * forward, then a crash before its old segment was unlinked) lives at the
 * newer place.  A deletion is an entry of 16 bytes (the sequence and a
 * check of it) in the deletion log of the segment that holds the record,
 * so a segment and its log leave together and no other file refers to them.
 *
 * The order of writes at a commit: new records (sync), then deletions
 * (sync with fsync always; with batch, segq_sync_deletions() syncs them
 * about once a second: a power cut may bring a delivered record back, to be
 * delivered again, never lose one), then unlinks of segments left with no
 * live record.  A crash at
 * any point leaves each record either queued or deleted, never lost: a
 * deletion is only written for a record whose removal the caller wants,
 * and a segment is only unlinked once every record in it is deleted or
 * copied forward to a synced place.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "log.h"
#include "util.h"
#include "segq.h"

#define SEGQ_MAGIC      0x51444c48u             /* "HLDQ" */
#define SEGQ_DEL_CHECK  0x68657261646c6421ull
#define SEGQ_MAP_MIN    (2 * (size_t)SEGQ_SEG_MAX)
#define SEGQ_OFF_MAX    ((size_t)UINT32_MAX)

struct rhdr {
	uint32_t magic;
	uint32_t crc;           /* CRC32C of this header (crc 0) and the body */
	uint64_t seq;
	int64_t  received_ms;
	uint32_t jsonlen;
	uint8_t  idlen;
	uint8_t  devlen;
	uint8_t  flags;
	uint8_t  pad;
};
_Static_assert(sizeof(struct rhdr) == 32, "record header is 32 bytes");

struct delent {
	uint64_t seq;
	uint64_t check;         /* seq ^ SEGQ_DEL_CHECK: a torn or zeroed entry fails */
};

struct seg {
	uint64_t       name;    /* q-<name>.log, q-<name>.del */
	int            fd, dfd; /* dfd: -1 until the first deletion */
	char          *map;
	size_t         maplen;
	size_t         size;    /* bytes written to the file */
	size_t         live;    /* records whose live copy is here */
	size_t         livebytes;
	struct delent *dels;    /* pending deletions */
	size_t         ndels, delcap;
	bool           dirty;   /* on the list of segments with pending deletions */
	bool           dunsynced;       /* deletions written, not yet synced */
	size_t         dsize;   /* bytes in the deletion log */
};

struct qent {                   /* seq 0: empty slot */
	uint64_t    seq;
	struct seg *seg;
	uint32_t    off;
	uint32_t    len;            /* padded record length */
};

struct oldmap {
	char  *p;
	size_t len;
};

struct ident {                  /* seq 0: empty slot */
	uint64_t h;
	uint64_t seq;
};

struct segq {
	char          *dir;
	int            dirfd;
	enum fsync_mode fsync;
	bool           broken;
	struct seg   **segs;        /* by name, the active one last */
	size_t         nsegs, segcap;
	struct seg    *active;
	char          *wbuf;        /* pending records, at active->size */
	size_t         wlen, wcap;
	struct qent   *tab;
	size_t         tabcap, tabn;
	struct ident  *ids;
	size_t         idcap, idn;
	struct seg   **dirty;
	size_t         ndirty, dirtycap;
	uint64_t       next_seq, lo, bytes;
	struct oldmap *old;         /* replaced mappings, unmapped at the commit */
	size_t         nold, oldcap;
	uint64_t      *pend;        /* sequences of the pending records */
	size_t         npend, pendcap;
	bool           nospace;     /* the last commit found the disk full */
};

/* ---- CRC32C ---- */

static uint32_t crc_tab[256];

static void
crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;

		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_tab[i] = c;
	}
}

static uint32_t
crc_sw(uint32_t c, const uint8_t *p, size_t n)
{
	while (n--)
		c = crc_tab[(c ^ *p++) & 0xff] ^ (c >> 8);
	return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t c, const uint8_t *p, size_t n)
{
	uint64_t c64 = c, v;

	for (; n >= 8; n -= 8, p += 8) {
		memcpy(&v, p, 8);
		c64 = __builtin_ia32_crc32di(c64, v);
	}
	c = (uint32_t)c64;
	while (n--)
		c = __builtin_ia32_crc32qi(c, *p++);
	return c;
}
#endif

static uint32_t
crc_update(uint32_t c, const void *p, size_t n)
{
#if defined(__x86_64__)
	static int hw = -1;

	if (hw == -1)
		hw = __builtin_cpu_supports("sse4.2") ? 1 : 0;
	if (hw)
		return crc_hw(c, p, n);
#endif
	return crc_sw(c, p, n);
}

/* The record's CRC: the header with crc 0, then the body. */
static uint32_t
rec_crc(const struct rhdr *h, const char *body, size_t bodylen)
{
	struct rhdr z = *h;
	uint32_t c = 0xffffffffu;

	z.crc = 0;
	c = crc_update(c, &z, sizeof(z));
	c = crc_update(c, body, bodylen);
	return ~c;
}

static size_t
rec_len(size_t idlen, size_t devlen, size_t jsonlen)
{
	return (sizeof(struct rhdr) + idlen + devlen + jsonlen + 7) & ~(size_t)7;
}

/*
 * The first offset from off on (records start 8-byte aligned) where a sound
 * record starts: magic, lengths within the segment, CRC.  Its header goes
 * to *h and its length to *len.  size when none does.  A damaged record is
 * stepped over this way without losing the sound ones after it: no sound
 * record can hide in a record's body, whose id, device and JSON are text.
 */
static size_t
seg_next_sound(const char *map, size_t off, size_t size, struct rhdr *h, size_t *len)
{
	for (; off + sizeof(*h) <= size && off <= SEGQ_OFF_MAX; off += 8) {
		size_t n;

		memcpy(h, map + off, sizeof(*h));
		if (h->magic != SEGQ_MAGIC || h->seq == 0 || h->idlen == 0)
			continue;
		n = rec_len(h->idlen, h->devlen, h->jsonlen);
		if (off + n > size || off + n > SEGQ_OFF_MAX ||
		    rec_crc(h, map + off + sizeof(*h), (size_t)h->idlen + h->devlen + h->jsonlen) !=
		    h->crc)
			continue;
		*len = n;
		return off;
	}
	return size;
}

/* ---- hash tables (linear probing, deletion by backward shift) ---- */

static uint64_t
mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static uint64_t
id_hash(const char *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ULL;

	for (size_t i = 0; i < n; i++) {
		h ^= (uint8_t)p[i];
		h *= 0x100000001b3ULL;
	}
	return mix64(h);
}

/* Is k (a home slot) cyclically in (i, j]? */
static bool
slot_between(size_t i, size_t k, size_t j)
{
	return i <= j ? (i < k && k <= j) : (i < k || k <= j);
}

static struct qent *
tab_find(const struct segq *q, uint64_t seq)
{
	size_t m, i;

	if (q->tabcap == 0 || seq == 0)
		return NULL;
	m = q->tabcap - 1;
	for (i = mix64(seq) & m;; i = (i + 1) & m) {
		if (q->tab[i].seq == seq)
			return &q->tab[i];
		if (q->tab[i].seq == 0)
			return NULL;
	}
}

static int
tab_grow(struct segq *q)
{
	size_t ncap = q->tabcap ? q->tabcap * 2 : 1024, m = ncap - 1;
	struct qent *n = calloc(ncap, sizeof(*n));

	if (n == NULL)
		return -1;
	for (size_t i = 0; i < q->tabcap; i++) {
		size_t j;

		if (q->tab[i].seq == 0)
			continue;
		for (j = mix64(q->tab[i].seq) & m; n[j].seq != 0; j = (j + 1) & m)
			;
		n[j] = q->tab[i];
	}
	free(q->tab);
	q->tab = n;
	q->tabcap = ncap;
	return 0;
}

/* The slot of seq, new (seg NULL) or existing; NULL when out of memory. */
static struct qent *
tab_slot(struct segq *q, uint64_t seq)
{
	size_t m, i;

	if ((q->tabn + 1) * 10 > q->tabcap * 7 && tab_grow(q) == -1)
		return NULL;
	m = q->tabcap - 1;
	for (i = mix64(seq) & m; q->tab[i].seq != 0; i = (i + 1) & m)
		if (q->tab[i].seq == seq)
			return &q->tab[i];
	q->tab[i].seq = seq;
	q->tab[i].seg = NULL;
	q->tabn++;
	return &q->tab[i];
}

static void
tab_remove(struct segq *q, struct qent *e)
{
	size_t m = q->tabcap - 1, i = (size_t)(e - q->tab), j = i;

	for (;;) {
		j = (j + 1) & m;
		if (q->tab[j].seq == 0)
			break;
		if (!slot_between(i, mix64(q->tab[j].seq) & m, j)) {
			q->tab[i] = q->tab[j];
			i = j;
		}
	}
	q->tab[i].seq = 0;
	q->tabn--;
}

static int
ids_grow(struct segq *q)
{
	size_t ncap = q->idcap ? q->idcap * 2 : 1024, m = ncap - 1;
	struct ident *n = calloc(ncap, sizeof(*n));

	if (n == NULL)
		return -1;
	for (size_t i = 0; i < q->idcap; i++) {
		size_t j;

		if (q->ids[i].seq == 0)
			continue;
		for (j = q->ids[i].h & m; n[j].seq != 0; j = (j + 1) & m)
			;
		n[j] = q->ids[i];
	}
	free(q->ids);
	q->ids = n;
	q->idcap = ncap;
	return 0;
}

static int
ids_add(struct segq *q, uint64_t h, uint64_t seq)
{
	size_t m, i;

	if ((q->idn + 1) * 10 > q->idcap * 7 && ids_grow(q) == -1)
		return -1;
	m = q->idcap - 1;
	for (i = h & m; q->ids[i].seq != 0; i = (i + 1) & m)
		;
	q->ids[i].h = h;
	q->ids[i].seq = seq;
	q->idn++;
	return 0;
}

static void
ids_remove(struct segq *q, uint64_t h, uint64_t seq)
{
	size_t m, i, j;

	if (q->idcap == 0)
		return;
	m = q->idcap - 1;
	for (i = h & m;; i = (i + 1) & m) {
		if (q->ids[i].seq == 0)
			return;
		if (q->ids[i].h == h && q->ids[i].seq == seq)
			break;
	}
	for (j = i;;) {
		j = (j + 1) & m;
		if (q->ids[j].seq == 0)
			break;
		if (!slot_between(i, q->ids[j].h & m, j)) {
			q->ids[i] = q->ids[j];
			i = j;
		}
	}
	q->ids[i].seq = 0;
	q->idn--;
}

/* ---- records ---- */

/*
 * Map the segment, past its end (the file grows into it).  A mapping that
 * is replaced by a longer one stays until the next commit: pointers that
 * segq_get() handed out stay valid until then.
 */
static int
seg_map(struct segq *q, struct seg *g, size_t need)
{
	size_t len = SEGQ_MAP_MIN;
	struct oldmap *o;
	char *p;

	while (len < need)
		len *= 2;
	if (g->map != NULL && g->maplen >= need)
		return 0;
	if (g->map != NULL) {
		o = grow_array(q->old, &q->oldcap, q->nold + 1, sizeof(*o), 4);
		if (o == NULL)
			return -1;
		q->old = o;
	}
	p = mmap(NULL, len, PROT_READ, MAP_SHARED, g->fd, 0);
	if (p == MAP_FAILED) {
		log_err("spool: map segment %016" PRIx64 ": %s", g->name, strerror(errno));
		return -1;
	}
	if (g->map != NULL)
		q->old[q->nold++] = (struct oldmap){ g->map, g->maplen };
	g->map = p;
	g->maplen = len;
	return 0;
}

/* The bytes of a record: in the map, or pending in the write buffer. */
static const char *
rec_at(struct segq *q, const struct qent *e)
{
	struct seg *g = e->seg;

	if (g == q->active && e->off >= g->size)
		return q->wbuf + (e->off - g->size);
	if ((size_t)e->off + e->len > g->maplen &&
	    seg_map(q, g, (size_t)e->off + e->len) == -1)
		return NULL;
	return g->map + e->off;
}

static void
rec_fill(const char *p, struct spool_rec *r)
{
	struct rhdr h;

	memcpy(&h, p, sizeof(h));
	r->seq = h.seq;
	r->received_ms = h.received_ms;
	r->id = p + sizeof(h);
	r->idlen = h.idlen;
	r->device = r->id + h.idlen;
	r->devlen = h.devlen;
	r->json = r->device + h.devlen;
	r->jsonlen = h.jsonlen;
}

/* ---- files ---- */

static void
seg_path(const struct segq *q, uint64_t name, const char *ext, char *out, size_t outlen)
{
	snprintf(out, outlen, "%s/q-%016" PRIx64 ".%s", q->dir, name, ext);
}

static int
write_all(int fd, const void *buf, size_t len, off_t off, bool positioned)
{
	const char *p = buf;

	while (len > 0) {
		ssize_t n = positioned ? pwrite(fd, p, len, off) : write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static void
seg_free(struct seg *g)
{
	if (g->map != NULL)
		munmap(g->map, g->maplen);
	if (g->fd >= 0)
		close(g->fd);
	if (g->dfd >= 0)
		close(g->dfd);
	free(g->dels);
	free(g);
}

static struct seg *
seg_alloc(uint64_t name)
{
	struct seg *g = calloc(1, sizeof(*g));

	if (g == NULL)
		return NULL;
	g->name = name;
	g->fd = g->dfd = -1;
	return g;
}

static int
segs_append(struct segq *q, struct seg *g)
{
	struct seg **p = grow_array(q->segs, &q->segcap, q->nsegs + 1, sizeof(*p), 16);

	if (p == NULL)
		return -1;
	q->segs = p;
	q->segs[q->nsegs++] = g;
	return 0;
}

static int
dir_sync(struct segq *q)
{
	if (q->fsync != FSYNC_OFF && fsync(q->dirfd) == -1) {
		log_err("spool: sync %s: %s", q->dir, strerror(errno));
		return -1;
	}
	return 0;
}

/* A new, empty active segment. */
static int
seg_create(struct segq *q, uint64_t name)
{
	char path[4096];
	struct seg *g;

	if ((g = seg_alloc(name)) == NULL)
		return -1;
	seg_path(q, name, "log", path, sizeof(path));
	g->fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (g->fd == -1) {
		log_err("spool: create %s: %s", path, strerror(errno));
		seg_free(g);
		return -1;
	}
	/* The name must be durable before an acknowledged record is in it. */
	if (seg_map(q, g, 0) == -1 || dir_sync(q) == -1 || segs_append(q, g) == -1) {
		unlink(path);
		seg_free(g);
		return -1;
	}
	q->active = g;
	return 0;
}

static void
seg_unlink(struct segq *q, size_t i)
{
	struct seg *g = q->segs[i];
	char path[4096];

	/* The log first: a deletion log left alone refers to nothing. */
	seg_path(q, g->name, "log", path, sizeof(path));
	if (unlink(path) == -1 && errno != ENOENT)
		log_warn("spool: unlink %s: %s", path, strerror(errno));
	seg_path(q, g->name, "del", path, sizeof(path));
	if (unlink(path) == -1 && errno != ENOENT)
		log_warn("spool: unlink %s: %s", path, strerror(errno));
	/* Deletions still pending for it (a full disk) refer to nothing now. */
	for (size_t j = 0; g->dirty && j < q->ndirty; j++)
		if (q->dirty[j] == g) {
			memmove(&q->dirty[j], &q->dirty[j + 1],
			    (q->ndirty - j - 1) * sizeof(q->dirty[0]));
			q->ndirty--;
			break;
		}
	seg_free(g);
	memmove(&q->segs[i], &q->segs[i + 1], (q->nsegs - i - 1) * sizeof(q->segs[0]));
	q->nsegs--;
}

/* ---- the queue ---- */

static void
segq_break(struct segq *q, const char *what, const char *path)
{
	log_err("spool: %s %s: %s", what, path, strerror(errno));
	q->broken = true;
}

bool
segq_broken(const struct segq *q)
{
	return q->broken;
}

bool
segq_nospace(const struct segq *q)
{
	return q->nospace;
}

void
segq_lose(struct segq *q)
{
	if (q->wlen > 0 || q->ndirty > 0)
		log_err("spool: uncommitted queue changes lost; the queue must be reopened");
	q->broken = true;
}

static int
segq_index(struct segq *q, struct seg *g, uint64_t seq, uint32_t off, uint32_t len,
    const char *id, size_t idlen)
{
	struct qent *e = tab_slot(q, seq);

	if (e == NULL)
		return -1;
	if (e->seg != NULL) {
		/* Found again further on: the newer copy is the live one. */
		e->seg->live--;
		e->seg->livebytes -= e->len;
	} else if (ids_add(q, id_hash(id, idlen), seq) == -1) {
		tab_remove(q, e);
		return -1;
	}
	e->seg = g;
	e->off = off;
	e->len = len;
	g->live++;
	g->livebytes += len;
	if (seq >= q->next_seq)
		q->next_seq = seq + 1;
	return 0;
}

bool
segq_find_id(struct segq *q, const char *id, size_t idlen, uint64_t *seq)
{
	uint64_t h = id_hash(id, idlen);
	size_t m, i;

	if (q->idcap == 0)
		return false;
	m = q->idcap - 1;
	for (i = h & m; q->ids[i].seq != 0; i = (i + 1) & m) {
		struct qent *e;
		struct spool_rec r;
		const char *p;

		if (q->ids[i].h != h || (e = tab_find(q, q->ids[i].seq)) == NULL ||
		    (p = rec_at(q, e)) == NULL)
			continue;
		rec_fill(p, &r);
		if (r.idlen == idlen && memcmp(r.id, id, idlen) == 0) {
			*seq = r.seq;
			return true;
		}
	}
	return false;
}

int
segq_put(struct segq *q, uint64_t seq, const char *id, size_t idlen,
    const char *device, size_t devlen, int64_t received_ms, const char *json,
    size_t jsonlen)
{
	size_t len = rec_len(idlen, devlen, jsonlen), off;
	struct rhdr h;
	uint64_t *p;
	char *w;

	if (q->broken || seq == 0 || idlen == 0 || idlen > UINT8_MAX ||
	    devlen > UINT8_MAX || jsonlen > UINT32_MAX)
		return -1;
	if (tab_find(q, seq) != NULL) {
		/* Another envelope holds it: indexing this one would hide it. */
		log_err("spool: sequence %" PRIu64 " is already queued", seq);
		return -1;
	}
	off = q->active->size + q->wlen;
	if (off + len > SEGQ_OFF_MAX)
		return 1;
	if ((w = grow_array(q->wbuf, &q->wcap, q->wlen + len, 1, 64 * 1024)) == NULL)
		return -1;
	q->wbuf = w;
	w += q->wlen;
	memset(&h, 0, sizeof(h));
	h.magic = SEGQ_MAGIC;
	h.seq = seq;
	h.received_ms = received_ms;
	h.jsonlen = (uint32_t)jsonlen;
	h.idlen = (uint8_t)idlen;
	h.devlen = (uint8_t)devlen;
	memcpy(w + sizeof(h), id, idlen);
	memcpy(w + sizeof(h) + idlen, device, devlen);
	memcpy(w + sizeof(h) + idlen + devlen, json, jsonlen);
	memset(w + sizeof(h) + idlen + devlen + jsonlen, 0,
	    len - sizeof(h) - idlen - devlen - jsonlen);
	h.crc = rec_crc(&h, w + sizeof(h), idlen + devlen + jsonlen);
	memcpy(w, &h, sizeof(h));
	if ((p = grow_array(q->pend, &q->pendcap, q->npend + 1, sizeof(*p), 256)) == NULL)
		return -1;
	q->pend = p;
	if (segq_index(q, q->active, seq, (uint32_t)off, (uint32_t)len, id, idlen) == -1)
		return -1;
	q->pend[q->npend++] = seq;
	q->wlen += len;
	q->bytes += jsonlen;
	if (seq < q->lo)
		q->lo = seq;
	return 0;
}

int
segq_get(struct segq *q, uint64_t seq, struct spool_rec *r)
{
	struct qent *e = tab_find(q, seq);
	const char *p;

	if (e == NULL)
		return SPOOL_NOTFOUND;
	if ((p = rec_at(q, e)) == NULL)
		return SPOOL_ERR;
	rec_fill(p, r);
	return SPOOL_OK;
}

int
segq_del(struct segq *q, uint64_t seq, size_t *jsonlen)
{
	struct qent *e = tab_find(q, seq);
	struct spool_rec r;
	struct seg *g;
	struct delent *d;
	const char *p;

	if (e == NULL)
		return SPOOL_NOTFOUND;
	if (q->broken || (p = rec_at(q, e)) == NULL)
		return SPOOL_ERR;
	g = e->seg;
	if ((d = grow_array(g->dels, &g->delcap, g->ndels + 1, sizeof(*d), 64)) == NULL)
		return SPOOL_ERR;
	g->dels = d;
	if (!g->dirty) {
		struct seg **l = grow_array(q->dirty, &q->dirtycap, q->ndirty + 1,
		    sizeof(*l), 16);
		if (l == NULL)
			return SPOOL_ERR;
		q->dirty = l;
		q->dirty[q->ndirty++] = g;
		g->dirty = true;
	}
	g->dels[g->ndels++] = (struct delent){ seq, seq ^ SEGQ_DEL_CHECK };
	rec_fill(p, &r);
	ids_remove(q, id_hash(r.id, r.idlen), seq);
	q->bytes -= r.jsonlen <= q->bytes ? r.jsonlen : q->bytes;
	*jsonlen = r.jsonlen;
	g->live--;
	g->livebytes -= e->len;
	tab_remove(q, e);
	return SPOOL_OK;
}

static bool
no_space(int err)
{
	return err == ENOSPC || err == EDQUOT;
}

/*
 * The disk is full: the pending records are not stored.  They leave the
 * index (their callers acknowledge nothing of them) and the file is cut
 * back to what it held.
 */
static void
segq_unwrite(struct segq *q)
{
	struct seg *g = q->active;

	if (ftruncate(g->fd, (off_t)g->size) == -1)
		log_warn("spool: cut back segment %016" PRIx64 ": %s", g->name, strerror(errno));
	for (size_t i = 0; i < q->npend; i++) {
		struct qent *e = tab_find(q, q->pend[i]);
		struct spool_rec r;

		if (e == NULL || e->seg != g || e->off < g->size)
			continue;       /* delivered already, within the batch */
		rec_fill(q->wbuf + (e->off - g->size), &r);
		ids_remove(q, id_hash(r.id, r.idlen), r.seq);
		q->bytes -= r.jsonlen <= q->bytes ? r.jsonlen : q->bytes;
		g->live--;
		g->livebytes -= e->len;
		tab_remove(q, e);
	}
	q->npend = 0;
	q->wlen = 0;
}

/* Write (and sync) the pending records: 0; 1 the disk is full; -1 broken. */
static int
segq_write_records(struct segq *q)
{
	struct seg *g = q->active;
	char path[4096];

	if (q->wlen == 0) {
		q->npend = 0;
		return 0;
	}
	if (write_all(g->fd, q->wbuf, q->wlen, (off_t)g->size, true) == -1 ||
	    (q->fsync != FSYNC_OFF && fdatasync(g->fd) == -1)) {
		int err = errno;

		seg_path(q, g->name, "log", path, sizeof(path));
		if (no_space(err)) {
			log_ratelimited(LOG_ERR, "spool: write %s: %s: %zu new envelope(s) "
			    "not stored, to come again", path, strerror(err), q->npend);
			segq_unwrite(q);
			return 1;
		}
		segq_break(q, "write", path);
		return -1;
	}
	g->size += q->wlen;
	q->wlen = 0;
	q->npend = 0;
	return 0;
}

/*
 * Write the pending deletions: 0; 1 the disk is full (they stay pending for
 * the next commit, the log cut back to whole entries); -1 broken.
 */
static int
segq_write_dels(struct segq *q)
{
	char path[4096];
	bool created = false;
	int ret = 0;
	size_t keep = 0;

	for (size_t i = 0; i < q->ndirty; i++) {
		struct seg *g = q->dirty[i];

		if (g->ndels == 0) {
			g->dirty = false;
			continue;
		}
		seg_path(q, g->name, "del", path, sizeof(path));
		if (g->dfd == -1) {
			g->dfd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
			if (g->dfd == -1 && no_space(errno)) {
				q->dirty[keep++] = g;
				ret = 1;
				continue;
			}
			if (g->dfd == -1) {
				segq_break(q, "create", path);
				return -1;
			}
			created = true;
		}
		/* fsync batch syncs deletions in segq_sync_deletions(), later. */
		if (write_all(g->dfd, g->dels, g->ndels * sizeof(*g->dels), 0, false) == -1 ||
		    (q->fsync == FSYNC_ALWAYS && fdatasync(g->dfd) == -1)) {
			int err = errno;

			if (!no_space(err)) {
				segq_break(q, "write", path);
				return -1;
			}
			log_ratelimited(LOG_ERR, "spool: write %s: %s: %zu delivery(ies) kept "
			    "for the next commit", path, strerror(err), g->ndels);
			if (ftruncate(g->dfd, (off_t)g->dsize) == -1) {
				segq_break(q, "cut back", path);
				return -1;
			}
			q->dirty[keep++] = g;
			ret = 1;
			continue;
		}
		g->dsize += g->ndels * sizeof(*g->dels);
		g->dunsynced = q->fsync == FSYNC_BATCH;
		g->ndels = 0;
		g->dirty = false;
	}
	q->ndirty = keep;
	if (created && dir_sync(q) == -1) {
		q->broken = true;
		return -1;
	}
	return ret;
}

/*
 * Copy the live records of a mostly deleted segment to the active one, so
 * that it can go: its dead space would otherwise stay on disk as long as one
 * record in it is not delivered.
 */
static int
segq_copy_forward(struct segq *q, struct seg *g)
{
	size_t off = 0, n = 0, cap = 0;
	struct moved { uint64_t seq; uint32_t off; } *mv = NULL, *m;
	int rc;

	if (seg_map(q, g, g->size) == -1)
		return -1;
	while (off + sizeof(struct rhdr) <= g->size && g->live > 0) {
		struct rhdr h;
		struct qent *e;
		size_t len;
		char *w;

		/* Over damaged bytes that opening skipped, to the next record. */
		if ((off = seg_next_sound(g->map, off, g->size, &h, &len)) >= g->size)
			break;
		e = tab_find(q, h.seq);
		if (e != NULL && e->seg == g && e->off == off) {
			size_t noff = q->active->size + q->wlen;

			if (noff + len > SEGQ_OFF_MAX)
				break;          /* the rest waits for the next active segment */
			if ((w = grow_array(q->wbuf, &q->wcap, q->wlen + len, 1, 64 * 1024)) == NULL ||
			    (m = grow_array(mv, &cap, n + 1, sizeof(*m), 64)) == NULL) {
				if (w != NULL)
					q->wbuf = w;
				rc = -1;
				goto undo;
			}
			q->wbuf = w;
			mv = m;
			mv[n++] = (struct moved){ h.seq, (uint32_t)off };
			memcpy(q->wbuf + q->wlen, g->map + off, len);
			q->wlen += len;
			g->live--;
			g->livebytes -= len;
			e->seg = q->active;
			e->off = (uint32_t)noff;
			q->active->live++;
			q->active->livebytes += len;
		}
		off += len;
	}
	/* Not through segq_write_records: a full disk must not unindex these. */
	if (q->wlen == 0 || (write_all(q->active->fd, q->wbuf, q->wlen,
	    (off_t)q->active->size, true) == 0 &&
	    (q->fsync == FSYNC_OFF || fdatasync(q->active->fd) == 0))) {
		q->active->size += q->wlen;
		q->wlen = 0;
		free(mv);
		return 0;
	}
	rc = no_space(errno) ? 1 : -1;
	if (ftruncate(q->active->fd, (off_t)q->active->size) == -1)
		rc = -1;
undo:
	/* Back where they were: the old segment keeps them. */
	for (size_t i = 0; i < n; i++) {
		struct qent *e = tab_find(q, mv[i].seq);

		q->active->live--;
		q->active->livebytes -= e->len;
		e->seg = g;
		e->off = mv[i].off;
		g->live++;
		g->livebytes += e->len;
	}
	q->wlen = 0;
	free(mv);
	if (rc == -1)
		q->broken = true;
	return rc;
}

/*
 * Segments with no live record go (their pending deletions with them).  So
 * does the active one once all it holds is delivered, for a new one, when
 * it has grown past a sixteenth of a segment or the disk is full: else a
 * full disk would stay full with delivered records.
 */
static void
segq_housekeep(struct segq *q)
{
	struct seg *a = q->active;

	/* One sparse segment per commit is copied forward (not on a full disk). */
	for (size_t i = 0; !q->nospace && i + 1 < q->nsegs; i++) {
		struct seg *g = q->segs[i];

		if (g->live > 0 && g->size >= SEGQ_SEG_MAX / 2 && g->livebytes * 4 < g->size) {
			if (segq_copy_forward(q, g) != 0)
				log_ratelimited(LOG_WARNING, "spool: segment %016" PRIx64
				    " not compacted", g->name);
			break;
		}
	}
	for (size_t i = 0; i + 1 < q->nsegs; )
		if (q->segs[i]->live == 0)
			seg_unlink(q, i);
		else
			i++;
	if (a->live == 0 && q->wlen == 0 && a->size > 0 &&
	    (q->nospace || a->size >= SEGQ_SEG_MAX / 16)) {
		uint64_t name = q->next_seq > a->name ? q->next_seq : a->name + 1;

		if (seg_create(q, name) == 0)
			seg_unlink(q, q->nsegs - 2);
		else
			log_ratelimited(LOG_WARNING, "spool: no new segment for %016" PRIx64
			    " yet", a->name);
	}
}

static void
segq_unmap_old(struct segq *q)
{
	for (size_t i = 0; i < q->nold; i++)
		munmap(q->old[i].p, q->old[i].len);
	q->nold = 0;
}

int
segq_commit(struct segq *q)
{
	int rw, dw;

	segq_unmap_old(q);
	if (q->broken)
		return SPOOL_ERR;
	if ((rw = segq_write_records(q)) == -1 || (dw = segq_write_dels(q)) == -1)
		return SPOOL_ERR;
	q->nospace = rw == 1 || dw == 1;
	segq_housekeep(q);
	if (q->broken)
		return SPOOL_ERR;
	/*
	 * SPOOL_FULL only when the records are not stored: the caller then
	 * takes back their sequences.  Deletions the disk refused stay pending
	 * (a crash repeats those deliveries, same ids) while the records that
	 * were written are stored, and must be acknowledged and delivered.
	 */
	if (rw == 1)
		return SPOOL_FULL;
	if (q->active->size >= SEGQ_SEG_MAX && !q->nospace) {
		uint64_t name = q->next_seq > q->active->name ? q->next_seq : q->active->name + 1;

		/* No new file (a full disk): the active one grows on, and the
		 * next commit tries again. */
		if (seg_create(q, name) == -1)
			log_ratelimited(LOG_WARNING, "spool: segment %016" PRIx64 " is full and "
			    "no new one could be made; it goes on growing", q->active->name);
	}
	return SPOOL_OK;
}

int
segq_sync_deletions(struct segq *q)
{
	char path[4096];

	if (q->broken)
		return SPOOL_ERR;
	for (size_t i = 0; i < q->nsegs; i++) {
		struct seg *g = q->segs[i];

		if (!g->dunsynced)
			continue;
		if (fdatasync(g->dfd) == -1) {
			seg_path(q, g->name, "del", path, sizeof(path));
			segq_break(q, "sync", path);
			return SPOOL_ERR;
		}
		g->dunsynced = false;
	}
	return SPOOL_OK;
}

static int
seq_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

long
segq_foreach(struct segq *q, spool_iter_fn *cb, void *arg)
{
	uint64_t *seqs;
	size_t n = 0;
	long visited = 0;

	if ((seqs = malloc((q->tabn + 1) * sizeof(*seqs))) == NULL)
		return -1;
	for (size_t i = 0; i < q->tabcap; i++)
		if (q->tab[i].seq != 0)
			seqs[n++] = q->tab[i].seq;
	qsort(seqs, n, sizeof(*seqs), seq_cmp);
	for (size_t i = 0; i < n; i++) {
		struct spool_rec r;

		if (segq_get(q, seqs[i], &r) != SPOOL_OK)
			continue;
		visited++;
		if (cb != NULL && cb(arg, &r) != 0)
			break;
	}
	free(seqs);
	return visited;
}

uint64_t
segq_depth(const struct segq *q)
{
	return q->tabn;
}

uint64_t
segq_bytes(const struct segq *q)
{
	return q->bytes;
}

uint64_t
segq_next_seq(const struct segq *q)
{
	return q->next_seq;
}

int64_t
segq_oldest_ms(struct segq *q)
{
	struct spool_rec r;

	if (q->tabn == 0) {
		q->lo = q->next_seq;
		return 0;
	}
	while (q->lo < q->next_seq && tab_find(q, q->lo) == NULL)
		q->lo++;
	return segq_get(q, q->lo, &r) == SPOOL_OK ? r.received_ms : 0;
}

/* ---- opening ---- */

/*
 * Index the records of a segment.  Damaged bytes between sound records are
 * skipped (logged; the sound records after them stay queued).  Bytes after
 * the last sound record are cut off the newest segment (a write cut short
 * by a crash, never committed) and skipped in an older one (damage).
 */
static int
segq_load_seg(struct segq *q, struct seg *g, bool newest)
{
	struct stat st;
	size_t off = 0, end = 0, size;
	char path[4096];

	seg_path(q, g->name, "log", path, sizeof(path));
	if ((g->fd = open(path, O_RDWR | O_CLOEXEC)) == -1 || fstat(g->fd, &st) == -1) {
		log_err("spool: open %s: %s", path, strerror(errno));
		return -1;
	}
	/*
	 * A worker that died between a write and its sync left records in the
	 * page cache only; found here, they would be acknowledged (as
	 * duplicates) or replace a durable copy.  Made durable before they
	 * count.
	 */
	if (q->fsync != FSYNC_OFF && fdatasync(g->fd) == -1) {
		log_err("spool: sync %s: %s", path, strerror(errno));
		return -1;
	}
	size = (size_t)st.st_size;
	if (seg_map(q, g, size) == -1)
		return -1;
	while (off + sizeof(struct rhdr) <= size) {
		struct rhdr h;
		size_t len, at = seg_next_sound(g->map, off, size, &h, &len);

		if (at >= size)
			break;
		if (at > off)
			log_err("spool: %s: %zu damaged bytes at byte %zu skipped (a record lost "
			    "its check); the records after them are kept", path, at - off, off);
		if (segq_index(q, g, h.seq, (uint32_t)at, (uint32_t)len,
		    g->map + at + sizeof(h), h.idlen) == -1) {
			log_err("spool: out of memory indexing %s", path);
			return -1;
		}
		off = end = at + len;
	}
	if (end < size) {
		if (newest) {
			/* Never committed: a write cut short by a crash. */
			log_warn("spool: %s: %zu bytes of an unfinished write cut off", path,
			    size - end);
			if (ftruncate(g->fd, (off_t)end) == -1) {
				log_err("spool: truncate %s: %s", path, strerror(errno));
				return -1;
			}
		} else {
			log_err("spool: %s: the %zu bytes from byte %zu on hold no sound record; "
			    "skipped", path, size - end, end);
		}
	}
	g->size = end;
	return 0;
}

/* Apply a deletion log; its length is cut to whole entries. */
static int
segq_load_dels(struct segq *q, struct seg *g, spool_gone_fn *gone, void *arg)
{
	char path[4096];
	struct stat st;
	struct delent *d;
	size_t n;
	int fd;

	seg_path(q, g->name, "del", path, sizeof(path));
	if ((fd = open(path, O_RDWR | O_CLOEXEC)) == -1)
		return errno == ENOENT ? 0 : -1;
	if (fstat(fd, &st) == -1 || (q->fsync != FSYNC_OFF && fdatasync(fd) == -1)) {
		close(fd);
		return -1;
	}
	n = (size_t)st.st_size / sizeof(*d);
	if ((d = malloc(n * sizeof(*d) + 1)) == NULL) {
		close(fd);
		return -1;
	}
	if (n > 0 && pread(fd, d, n * sizeof(*d), 0) != (ssize_t)(n * sizeof(*d))) {
		free(d);
		close(fd);
		return -1;
	}
	for (size_t i = 0; i < n; i++) {
		struct qent *e;
		struct spool_rec r;
		const char *p;

		if (d[i].seq == 0 || (d[i].seq ^ SEGQ_DEL_CHECK) != d[i].check)
			continue;
		/* A deletion whose record did not reach the disk (a power cut):
		 * its sequence must not be given again, or this entry would
		 * delete the new envelope at the next open. */
		if (d[i].seq >= q->next_seq)
			q->next_seq = d[i].seq + 1;
		if ((e = tab_find(q, d[i].seq)) == NULL || (p = rec_at(q, e)) == NULL)
			continue;
		rec_fill(p, &r);
		if (gone != NULL)
			gone(arg, r.id, r.idlen);
		ids_remove(q, id_hash(r.id, r.idlen), r.seq);
		e->seg->live--;
		e->seg->livebytes -= e->len;
		tab_remove(q, e);
	}
	free(d);
	g->dsize = n * sizeof(*d);
	if ((size_t)st.st_size != n * sizeof(*d) && ftruncate(fd, (off_t)(n * sizeof(*d))) == -1) {
		close(fd);
		return -1;
	}
	close(fd);
	return 0;
}

/* The names of the q-<16 hex><ext> files in the directory, sorted. */
static int
segq_list(struct segq *q, const char *ext, uint64_t **names, size_t *n, size_t *cap)
{
	DIR *d;
	struct dirent *de;
	int dfd = dup(q->dirfd);

	if (dfd == -1 || (d = fdopendir(dfd)) == NULL) {
		if (dfd != -1)
			close(dfd);
		return -1;
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		uint64_t name;
		char tail[8];
		uint64_t *p;

		if (strlen(de->d_name) != 2 + 16 + 4 ||
		    sscanf(de->d_name, "q-%16" SCNx64 "%7s", &name, tail) != 2 ||
		    strcmp(tail, ext) != 0)
			continue;
		if ((p = grow_array(*names, cap, *n + 1, sizeof(*p), 16)) == NULL) {
			closedir(d);
			return -1;
		}
		*names = p;
		(*names)[(*n)++] = name;
	}
	closedir(d);
	if (*n > 1)
		qsort(*names, *n, sizeof(**names), seq_cmp);
	return 0;
}

struct segq *
segq_open(const char *dir, enum fsync_mode fsync, spool_gone_fn *gone, void *arg, char *err,
    size_t errlen)
{
	struct segq *q;
	uint64_t *names = NULL;
	size_t nnames = 0, namecap = 0;

	crc_init();
	if ((q = calloc(1, sizeof(*q))) == NULL || (q->dir = strdup(dir)) == NULL) {
		snprintf(err, errlen, "out of memory");
		free(q);
		return NULL;
	}
	q->fsync = fsync;
	q->next_seq = 1;
	q->dirfd = -1;
	if ((q->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		goto fail;
	}
	if (segq_list(q, ".log", &names, &nnames, &namecap) == -1) {
		snprintf(err, errlen, "%s: %s", dir, strerror(errno));
		goto fail;
	}
	for (size_t i = 0; i < nnames; i++) {
		struct seg *g = seg_alloc(names[i]);

		if (g == NULL || segs_append(q, g) == -1) {
			free(g);
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		if (segq_load_seg(q, g, i + 1 == nnames) == -1) {
			snprintf(err, errlen, "%s: segment %016" PRIx64 " cannot be read", dir,
			    names[i]);
			goto fail;
		}
		if (names[i] >= q->next_seq)
			q->next_seq = names[i] + 1;
	}
	for (size_t i = 0; i < q->nsegs; i++)
		if (segq_load_dels(q, q->segs[i], gone, arg) == -1) {
			snprintf(err, errlen, "%s: deletions of segment %016" PRIx64 ": %s", dir,
			    q->segs[i]->name, strerror(errno));
			goto fail;
		}
	q->lo = q->next_seq;
	for (size_t i = 0; i < q->tabcap; i++) {
		struct spool_rec r;

		if (q->tab[i].seq == 0 || segq_get(q, q->tab[i].seq, &r) != SPOOL_OK)
			continue;
		q->bytes += r.jsonlen;
		if (r.seq < q->lo)
			q->lo = r.seq;
	}
	/* Segments with nothing live go, but for the newest: it takes what comes. */
	for (size_t i = 0; i + 1 < q->nsegs; )
		if (q->segs[i]->live == 0)
			seg_unlink(q, i);
		else
			i++;
	if (q->nsegs > 0 && q->segs[q->nsegs - 1]->size < SEGQ_SEG_MAX)
		q->active = q->segs[q->nsegs - 1];
	else if (seg_create(q, q->next_seq) == -1) {
		/* A full disk must not keep the spool shut: the newest grows on. */
		if (q->nsegs == 0) {
			snprintf(err, errlen, "%s: cannot create a segment", dir);
			goto fail;
		}
		log_warn("spool: segment %016" PRIx64 " is full and no new one could be made; "
		    "it goes on growing", q->segs[q->nsegs - 1]->name);
		q->active = q->segs[q->nsegs - 1];
	}
	/* A deletion log whose segment went (a crash between the two unlinks). */
	nnames = 0;
	if (segq_list(q, ".del", &names, &nnames, &namecap) == 0) {
		size_t k = 0;

		for (size_t i = 0; i < nnames; i++) {
			char path[4096];

			while (k < q->nsegs && q->segs[k]->name < names[i])
				k++;
			if (k < q->nsegs && q->segs[k]->name == names[i])
				continue;
			seg_path(q, names[i], "del", path, sizeof(path));
			if (unlink(path) == -1)
				log_warn("spool: unlink %s: %s", path, strerror(errno));
		}
	}
	free(names);
	return q;
fail:
	free(names);
	segq_close(q);
	return NULL;
}

void
segq_close(struct segq *q)
{
	if (q == NULL)
		return;
	segq_sync_deletions(q);
	for (size_t i = 0; i < q->nsegs; i++)
		seg_free(q->segs[i]);
	segq_unmap_old(q);
	free(q->old);
	if (q->dirfd >= 0)
		close(q->dirfd);
	free(q->segs);
	free(q->wbuf);
	free(q->tab);
	free(q->ids);
	free(q->dirty);
	free(q->pend);
	free(q->dir);
	free(q);
}
