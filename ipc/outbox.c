/*
 * The per-slot outbox ring of the mqtt workers (see outbox.h and DESIGN.md
 * "No data lost"): records are published in the shared file mapping with one
 * 64-bit store after their body, so a process death at any instruction
 * leaves either a complete record or one that the next open ignores.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "outbox.h"
#include "util.h"

/*
 * File layout (host byte order; a ring never moves between machines):
 *
 *   [0, OB_HDRSIZE)   struct ob_hdr, then zeros up to the page
 *   [OB_HDRSIZE, end) records, each 8-byte aligned, never split at the end:
 *                     a record that does not fit before the end is preceded
 *                     by a skip marker (a bare mark word with state SKIP)
 *
 * Positions are logical (they only grow); the byte of position p is at
 * data[p % dlen].  Sequences increase from the tail to the head, so an open
 * can tell the records of this lap from stale ones of earlier laps.
 */
#define OB_MAGIC    0x58424f48u        /* "HOBX" */
#define OB_VERSION  1u
#define OB_HDRSIZE  4096u
#define OB_MINDATA  4096u

#define OB_FREE     0u
#define OB_LIVE     0x4556494cu        /* "LIVE" */
#define OB_ACKED    0x444b4341u        /* "ACKD" */
#define OB_SKIP     0x50494b53u        /* "SKIP" */

struct ob_hdr {
	uint32_t magic;
	uint32_t version;
	uint64_t file_size;
	uint32_t data_off;
	uint32_t epoch;
	uint32_t check;         /* of the fields above */
	uint32_t tag;           /* the caller's, kept for the epoch (0: not set) */
	uint64_t next_seq;      /* a floor: the next sequence is at least this */
	uint64_t tail;          /* position of the oldest record */
	uint64_t acked_below;   /* every sequence under this one was acknowledged */
};

struct ob_rec {
	uint64_t mark;          /* len | state << 32, stored last */
	uint64_t seq;
	int64_t  received_ms;
	uint32_t topic_len;
	uint32_t payload_len;
	uint32_t origin;        /* the caller's: where the message came from */
	uint32_t check;         /* of the fields above but mark, the epoch, topic, payload */
	/* topic, payload, zeros up to 8 */
};
#define OB_RECHDR   sizeof(struct ob_rec)

#define MARK(len, state)  ((uint64_t)(len) | ((uint64_t)(state) << 32))
#define MARK_LEN(m)       ((uint32_t)(m))
#define MARK_STATE(m)     ((uint32_t)((m) >> 32))

/* In-memory index of the records from tail to head, in sequence order. */
struct ob_ent {
	uint64_t seq;
	uint64_t pos;
	int64_t  last_sent;
	uint32_t len;
	uint32_t acked;
};

struct outbox {
	char            path[1024];
	int             fd;
	uint8_t        *map;
	size_t          map_len;
	struct ob_hdr  *hdr;
	uint8_t        *data;
	uint64_t        dlen;
	uint32_t        epoch;
	uint64_t        head, tail, next_seq;
	uint64_t        acked_below;
	uint64_t        synced_head;    /* records before this are on disk */
	uint64_t        synced_tail;    /* the tail the on-disk header holds */
	enum fsync_mode fsync;
	struct ob_ent  *ents;
	size_t          cap, first, n, live;
};

static size_t ob_align8(size_t n) { return (n + 7) & ~(size_t)7; }

/* FNV-1a over 64-bit words: cheap, and enough to tell a torn or stale
 * record from a complete one (not a defence against forgery: the
 * sequence chain is). */
static uint64_t
ob_hash(uint64_t h, const void *p, size_t len)
{
	const uint8_t *s = p;
	uint64_t w;

	while (len >= 8) {
		memcpy(&w, s, 8);
		h = (h ^ w) * 0x100000001b3ULL;
		s += 8;
		len -= 8;
	}
	if (len > 0) {
		w = 0;
		memcpy(&w, s, len);
		h = (h ^ w ^ ((uint64_t)len << 56)) * 0x100000001b3ULL;
	}
	return h;
}

static uint32_t ob_fold(uint64_t h) { return (uint32_t)(h ^ (h >> 32)); }

static uint32_t
ob_hdr_check(const struct ob_hdr *h)
{
	return ob_fold(ob_hash(0xcbf29ce484222325ULL, h, offsetof(struct ob_hdr, check)));
}

static uint32_t
ob_rec_check(uint32_t epoch, const struct ob_rec *r, const void *topic, const void *payload)
{
	uint64_t h = ob_hash(0xcbf29ce484222325ULL, &r->seq,
	    offsetof(struct ob_rec, check) - offsetof(struct ob_rec, seq));

	h = ob_hash(h, &epoch, sizeof(epoch));
	h = ob_hash(h, topic, r->topic_len);
	h = ob_hash(h, payload, r->payload_len);
	return ob_fold(h);
}

size_t
outbox_record_size(size_t topic_len, size_t payload_len)
{
	return ob_align8(OB_RECHDR + topic_len + payload_len);
}

size_t
outbox_high_water(size_t max_payload)
{
	return outbox_record_size(OUTBOX_TOPIC_MAX, max_payload + OUTBOX_TRUNC_EXTRA) + 64 * 1024;
}

size_t
outbox_min_bytes(size_t max_payload)
{
	return OB_HDRSIZE + 2 * outbox_high_water(max_payload) + 8;
}

static uint32_t
ob_new_epoch(uint32_t not)
{
	uint16_t v = 0;

	do {
		if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v))
			v = (uint16_t)(mono_us() ^ (uint64_t)getpid());
	} while (v == 0 || v == not);
	return v;
}

/* fsync the directory holding path, so a rename or a creation survives. */
static void
ob_sync_dir(const char *path)
{
	char dir[1024];
	char *slash;
	int fd;

	strlcpy_h(dir, path, sizeof(dir));
	slash = strrchr(dir, '/');
	if (slash == NULL)
		strlcpy_h(dir, ".", sizeof(dir));
	else if (slash == dir)
		dir[1] = '\0';
	else
		*slash = '\0';
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd != -1) {
		(void)fsync(fd);
		close(fd);
	}
}

/* Write a new empty ring to path (atomically: a temporary file, then rename). */
static int
ob_create(const char *path, uint64_t size, uint32_t epoch, uint64_t next_seq,
    char *err, size_t errlen)
{
	char tmp[1100];
	struct ob_hdr h;
	int fd, rc;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	(void)unlink(tmp);
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		return -1;
	}
	/* Reserve the blocks now: a store into a hole of a full disk is a SIGBUS. */
	rc = posix_fallocate(fd, 0, (off_t)size);
	if (rc == EOPNOTSUPP || rc == EINVAL)
		rc = ftruncate(fd, (off_t)size) == -1 ? errno : 0;
	if (rc != 0) {
		snprintf(err, errlen, "%s: reserving %llu bytes: %s", tmp,
		    (unsigned long long)size, strerror(rc));
		goto fail;
	}
	memset(&h, 0, sizeof(h));
	h.magic = OB_MAGIC;
	h.version = OB_VERSION;
	h.file_size = size;
	h.data_off = OB_HDRSIZE;
	h.epoch = epoch;
	h.check = ob_hdr_check(&h);
	h.next_seq = next_seq;
	h.tail = 0;
	if (pwrite(fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h) || fsync(fd) == -1) {
		snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
		goto fail;
	}
	close(fd);
	if (rename(tmp, path) == -1) {
		snprintf(err, errlen, "rename %s: %s", tmp, strerror(errno));
		(void)unlink(tmp);
		return -1;
	}
	ob_sync_dir(path);
	return 0;
fail:
	close(fd);
	(void)unlink(tmp);
	return -1;
}

static void
ob_rename_aside(const char *path, const char *why)
{
	char bad[1100];

	long long ms = now_ms();

	snprintf(bad, sizeof(bad), "%s.bad-%lld", path, ms);
	for (int i = 1; i < 1000 && access(bad, F_OK) == 0; i++)
		snprintf(bad, sizeof(bad), "%s.bad-%lld.%d", path, ms, i);
	if (rename(path, bad) == -1) {
		log_err("outbox %s: %s; cannot move it aside (%s), replacing it",
		    path, why, strerror(errno));
		(void)unlink(path);
	} else {
		log_err("outbox %s: %s; moved to %s, starting a new ring", path, why, bad);
	}
	ob_sync_dir(path);
}

static const char *
ob_hdr_problem(const struct ob_hdr *h, uint64_t st_size)
{
	if (h->magic != OB_MAGIC)
		return "not an outbox (bad magic)";
	if (h->version != OB_VERSION)
		return "unknown outbox version";
	if (h->check != ob_hdr_check(h))
		return "damaged header (checksum)";
	if (h->file_size != st_size)
		return "file size differs from its header";
	if (h->data_off != OB_HDRSIZE || st_size < OB_HDRSIZE + OB_MINDATA)
		return "bad header geometry";
	if (h->epoch == 0 || h->epoch > 0xffff)
		return "bad epoch";
	if (h->tail % 8 != 0)
		return "bad tail";
	return NULL;
}

static int
ob_index_push(struct outbox *ob, uint64_t seq, uint64_t pos, uint32_t len, bool acked)
{
	struct ob_ent *e;

	if (ob->n == ob->cap) {
		size_t ncap = ob->cap ? ob->cap * 2 : 1024;
		struct ob_ent *ne = malloc(ncap * sizeof(*ne));

		if (ne == NULL)
			return -1;
		for (size_t i = 0; i < ob->n; i++)
			ne[i] = ob->ents[(ob->first + i) & (ob->cap - 1)];
		free(ob->ents);
		ob->ents = ne;
		ob->cap = ncap;
		ob->first = 0;
	}
	e = &ob->ents[(ob->first + ob->n) & (ob->cap - 1)];
	e->seq = seq;
	e->pos = pos;
	e->len = len;
	e->acked = acked;
	e->last_sent = 0;
	ob->n++;
	if (!acked)
		ob->live++;
	return 0;
}

static struct ob_ent *
ob_ent(const struct outbox *ob, size_t i)
{
	return &ob->ents[(ob->first + i) & (ob->cap - 1)];
}

/* Index of the first entry with seq >= want (n if none). */
static size_t
ob_lower_bound(const struct outbox *ob, uint64_t want)
{
	size_t lo = 0, hi = ob->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (ob_ent(ob, mid)->seq < want)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Drop acknowledged entries at the front and move the tail after them. */
static void
ob_advance_tail(struct outbox *ob)
{
	while (ob->n > 0 && ob_ent(ob, 0)->acked) {
		ob->first = (ob->first + 1) & (ob->cap - 1);
		ob->n--;
	}
	ob->tail = ob->n > 0 ? ob_ent(ob, 0)->pos : ob->head;
	if (ob->hdr->tail != ob->tail)
		__atomic_store_n(&ob->hdr->tail, ob->tail, __ATOMIC_RELEASE);
}

/* After acknowledgements at run time.  An acknowledgement is durable (the
 * spool has the message), so this may reach the disk before or after the
 * records: it stays true. */
static void
ob_update_acked_below(struct outbox *ob)
{
	uint64_t v = ob->n > 0 ? ob_ent(ob, 0)->seq : ob->next_seq;

	if (v > ob->acked_below) {
		ob->acked_below = v;
		__atomic_store_n(&ob->hdr->acked_below, v, __ATOMIC_RELAXED);
	}
}

/*
 * Rebuild the index: walk from the tail over complete records with
 * increasing sequences; the first record that is torn, damaged, free, or
 * out of sequence (a stale one of an earlier lap) is the head.
 */
static int
ob_scan(struct outbox *ob)
{
	uint64_t start = ob->hdr->tail, pos = start, expect = 0, floor = ob->hdr->acked_below;

	while (pos - start < ob->dlen) {
		uint64_t phys = pos % ob->dlen, room = ob->dlen - phys;
		const struct ob_rec *r = (const struct ob_rec *)(ob->data + phys);
		uint64_t mark = __atomic_load_n(&r->mark, __ATOMIC_ACQUIRE);
		uint32_t len = MARK_LEN(mark), state = MARK_STATE(mark);
		const uint8_t *topic;

		if (state == OB_SKIP) {
			if (len != room)
				break;
			pos += room;
			continue;
		}
		if (state != OB_LIVE && state != OB_ACKED)
			break;
		if (room < OB_RECHDR || len < OB_RECHDR || len % 8 != 0 || len > room ||
		    pos - start + len > ob->dlen)
			break;
		if (outbox_record_size(r->topic_len, r->payload_len) != len)
			break;
		/* Increasing, not consecutive: a death between handing out a
		 * sequence and publishing its record leaves a gap, and a sequence
		 * is never used twice (it names a message id).  A stale record
		 * of an earlier lap has a lower sequence than the one before it. */
		if (r->seq == 0 || r->seq < expect)
			break;
		topic = (const uint8_t *)(r + 1);
		if (r->check != ob_rec_check(ob->epoch, r, topic, topic + r->topic_len))
			break;
		if (ob_index_push(ob, r->seq, pos, len, state == OB_ACKED) == -1)
			return -1;
		expect = r->seq + 1;
		pos += len;
	}
	ob->head = pos;
	ob->next_seq = ob->hdr->next_seq;
	if (expect > ob->next_seq)
		ob->next_seq = expect;
	if (ob->next_seq == 0)
		ob->next_seq = 1;
	/*
	 * The header's tail here is the page cache's: a dead worker's last
	 * acknowledgements may have moved it past what the disk holds.  Taken
	 * as unknown, the first append that could overwrite what an older tail
	 * still counts syncs the header first (once).
	 */
	ob->synced_tail = 0;
	/*
	 * Not next_seq when nothing is left: after a power loss the header may
	 * count records that never reached the disk.  Records before the first
	 * one found are behind the tail, so acknowledged.
	 */
	ob_advance_tail(ob);
	if (ob->n > 0)
		ob->acked_below = ob_ent(ob, 0)->seq;
	else
		ob->acked_below = expect;
	if (ob->acked_below < floor)
		ob->acked_below = floor;
	__atomic_store_n(&ob->hdr->acked_below, ob->acked_below, __ATOMIC_RELAXED);
	/* A dead process leaves its records in the page cache, maybe not yet on
	 * disk: the first outbox_sync() covers them all. */
	ob->synced_head = ob->tail;
	ob->hdr->next_seq = ob->next_seq;
	return 0;
}

static void
ob_unmap(struct outbox *ob)
{
	if (ob->map != NULL)
		munmap(ob->map, ob->map_len);
	if (ob->fd != -1)
		close(ob->fd);
	free(ob->ents);
	ob->map = NULL;
	ob->fd = -1;
	ob->ents = NULL;
	ob->cap = ob->first = ob->n = ob->live = 0;
}

/* Open path as a ring: 1 opened, 0 absent, -2 damaged (moved aside, *old_epoch
 * set when readable), -1 error. */
static int
ob_try_open(struct outbox *ob, const char *path, uint32_t *old_epoch, char *err, size_t errlen)
{
	struct ob_hdr h;
	struct stat st;
	const char *why;

	ob->fd = open(path, O_RDWR | O_CLOEXEC);
	if (ob->fd == -1) {
		if (errno == ENOENT)
			return 0;
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		return -1;
	}
	if (fstat(ob->fd, &st) == -1) {
		snprintf(err, errlen, "%s: %s", path, strerror(errno));
		goto fail;
	}
	memset(&h, 0, sizeof(h));
	if (st.st_size < (off_t)sizeof(h) ||
	    pread(ob->fd, &h, sizeof(h), 0) != (ssize_t)sizeof(h))
		why = "too short to be an outbox";
	else
		why = ob_hdr_problem(&h, (uint64_t)st.st_size);
	if (why != NULL) {
		if (h.magic == OB_MAGIC && h.epoch > 0 && h.epoch <= 0xffff)
			*old_epoch = h.epoch;
		close(ob->fd);
		ob->fd = -1;
		ob_rename_aside(path, why);
		return -2;
	}
	ob->map_len = (size_t)st.st_size;
	ob->map = mmap(NULL, ob->map_len, PROT_READ | PROT_WRITE, MAP_SHARED, ob->fd, 0);
	if (ob->map == MAP_FAILED) {
		ob->map = NULL;
		snprintf(err, errlen, "%s: mmap: %s", path, strerror(errno));
		goto fail;
	}
	ob->hdr = (struct ob_hdr *)ob->map;
	ob->data = ob->map + OB_HDRSIZE;
	ob->dlen = (ob->map_len - OB_HDRSIZE) & ~(uint64_t)7;
	ob->epoch = h.epoch;
	if (ob_scan(ob) == -1) {
		snprintf(err, errlen, "%s: out of memory", path);
		goto fail;
	}
	return 1;
fail:
	ob_unmap(ob);
	return -1;
}

struct outbox *
outbox_open(const char *path, size_t size, char *err, size_t errlen)
{
	struct outbox *ob;
	char dir[1024], *slash;
	uint32_t old_epoch = 0;

	err[0] = '\0';
	size &= ~(size_t)7;
	if (size < OB_HDRSIZE + OB_MINDATA || size > (size_t)1 << 40) {
		snprintf(err, errlen, "%s: outbox size %zu out of range", path, size);
		return NULL;
	}
	if (strlen(path) >= sizeof(ob->path)) {
		snprintf(err, errlen, "outbox path too long");
		return NULL;
	}
	strlcpy_h(dir, path, sizeof(dir));
	slash = strrchr(dir, '/');
	if (slash != NULL && slash != dir) {
		*slash = '\0';
		if (mkdir_p(dir, 0700) == -1) {
			snprintf(err, errlen, "%s: %s", dir, strerror(errno));
			return NULL;
		}
	}
	ob = calloc(1, sizeof(*ob));
	if (ob == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	strlcpy_h(ob->path, path, sizeof(ob->path));
	ob->fd = -1;
	for (int attempt = 0; attempt < 4; attempt++) {
		int rc = ob_try_open(ob, path, &old_epoch, err, errlen);

		if (rc == -1)
			break;
		if (rc == 1 && ob->map_len != size) {
			if (ob->live > 0) {
				log_notice("outbox %s: keeping its size %zu (configured %zu) while "
				    "it holds %zu records", path, ob->map_len, size, ob->live);
				return ob;
			}
			/* Empty: resize by starting over with the same epoch and sequence. */
			uint32_t epoch = ob->epoch;
			uint64_t next = ob->next_seq;

			ob_unmap(ob);
			log_info("outbox %s: resizing to %zu bytes", path, size);
			if (ob_create(path, size, epoch, next, err, errlen) == -1)
				break;
			continue;
		}
		if (rc == 1)
			return ob;
		if (ob_create(path, size, ob_new_epoch(old_epoch), 1, err, errlen) == -1)
			break;
	}
	if (ob->fd != -1 || ob->map != NULL)
		ob_unmap(ob);
	if (err[0] == '\0')
		snprintf(err, errlen, "%s: cannot open the outbox", path);
	free(ob);
	return NULL;
}

void
outbox_close(struct outbox *ob)
{
	if (ob == NULL)
		return;
	ob_unmap(ob);
	free(ob);
}

static int
ob_msync(struct outbox *ob, uint64_t off, uint64_t len)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)ob->map + off) & ~(pg - 1);
	uintptr_t b = (uintptr_t)ob->map + off + len;

	if (len == 0)
		return 0;
	return msync((void *)a, b - a, MS_SYNC);
}

static int
ob_sync_header(struct outbox *ob)
{
	uint64_t tail = ob->tail;

	if (ob_msync(ob, 0, sizeof(struct ob_hdr)) == -1)
		return -1;
	ob->synced_tail = tail;
	return 0;
}

int
outbox_sync(struct outbox *ob, enum fsync_mode mode)
{
	uint64_t from = ob->synced_head, to = ob->head, tail = ob->tail, a, b;

	if (mode == FSYNC_OFF) {
		ob->synced_head = to;
		return 0;
	}
	if (from == to)
		return 0;
	/*
	 * One msync from the header page to the last new record (only dirty
	 * pages cost anything), two when the new records wrap.  The order in
	 * which the kernel writes these pages does not matter: the header on
	 * disk may lag, but never points into overwritten space (outbox_append
	 * syncs it first when it would).
	 */
	a = from % ob->dlen;
	b = to % ob->dlen;
	if (b == 0)
		b = ob->dlen;
	if (to - from >= ob->dlen) {
		if (ob_msync(ob, 0, ob->map_len) == -1)
			return -1;
	} else if (a < b) {
		if (ob_msync(ob, 0, OB_HDRSIZE + b) == -1)
			return -1;
	} else {
		if (ob_msync(ob, OB_HDRSIZE + a, ob->dlen - a) == -1 ||
		    ob_msync(ob, 0, OB_HDRSIZE + b) == -1)
			return -1;
	}
	ob->synced_head = to;
	ob->synced_tail = tail;
	return 0;
}

void outbox_set_fsync(struct outbox *ob, enum fsync_mode mode) { ob->fsync = mode; }
bool outbox_dirty(const struct outbox *ob) { return ob->synced_head != ob->head; }

size_t
outbox_room(const struct outbox *ob)
{
	uint64_t used = ob->head - ob->tail, freeb = ob->dlen - used;
	uint64_t hp = ob->head % ob->dlen, tp = ob->tail % ob->dlen, to_end = ob->dlen - hp;

	if (used == 0)
		return ob->dlen;
	if (freeb == 0)
		return 0;
	if (tp > hp)
		return freeb;
	return to_end > tp ? to_end : tp;
}

int
outbox_append(struct outbox *ob, const char *topic, size_t topic_len,
    const void *payload, size_t payload_len, int64_t received_ms, uint32_t origin,
    uint64_t *seqp)
{
	size_t need;
	uint64_t hp, to_end, used, freeb, skip, end;
	struct ob_rec *r;
	uint8_t *body;

	if (topic_len > UINT32_MAX || payload_len > UINT32_MAX) {
		errno = EMSGSIZE;
		return -1;
	}
	need = outbox_record_size(topic_len, payload_len);
	if (need > ob->dlen || need > UINT32_MAX) {
		errno = EMSGSIZE;
		return -1;
	}
	hp = ob->head % ob->dlen;
	to_end = ob->dlen - hp;
	used = ob->head - ob->tail;
	freeb = ob->dlen - used;
	skip = need > to_end ? to_end : 0;
	if (used == 0 && skip > 0) {
		/* Empty ring: start the next lap instead of writing a skip marker. */
		ob->head += to_end;
		ob->tail = ob->head;
		__atomic_store_n(&ob->hdr->tail, ob->tail, __ATOMIC_RELEASE);
		skip = 0;
		hp = 0;
	} else if (skip + need > freeb) {
		errno = ENOSPC;
		return -1;
	}
	/*
	 * The on-disk header's tail must not point into space we overwrite, or
	 * an open after a power loss would stop there and miss synced records.
	 */
	end = ob->head + skip + need;
	if (ob->fsync != FSYNC_OFF && end > ob->synced_tail + ob->dlen &&
	    ob_sync_header(ob) == -1)
		log_ratelimited(LOG_ERR, "outbox %s: msync: %s", ob->path, strerror(errno));
	if (ob_index_push(ob, ob->next_seq, ob->head + skip, (uint32_t)need, false) == -1) {
		errno = ENOMEM;
		return -1;
	}
	if (skip > 0) {
		__atomic_store_n((uint64_t *)(ob->data + hp), MARK(skip, OB_SKIP), __ATOMIC_RELEASE);
		ob->head += skip;
		hp = 0;
	}
	r = (struct ob_rec *)(ob->data + hp);
	/* Unpublish whatever stale record starts here before the body changes. */
	__atomic_store_n(&r->mark, MARK(0, OB_FREE), __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
	r->seq = ob->next_seq;
	r->received_ms = received_ms;
	r->topic_len = (uint32_t)topic_len;
	r->payload_len = (uint32_t)payload_len;
	r->origin = origin;
	body = (uint8_t *)(r + 1);
	memcpy(body, topic, topic_len);
	if (payload_len > 0)
		memcpy(body + topic_len, payload, payload_len);
	memset(body + topic_len + payload_len, 0, need - OB_RECHDR - topic_len - payload_len);
	r->check = ob_rec_check(ob->epoch, r, body, body + topic_len);
	/* Publish: every byte above before the mark that makes the record count. */
	__atomic_store_n(&r->mark, MARK(need, OB_LIVE), __ATOMIC_RELEASE);
	ob->head += need;
	*seqp = ob->next_seq++;
	__atomic_store_n(&ob->hdr->next_seq, ob->next_seq, __ATOMIC_RELAXED);
	return 0;
}

int
outbox_ack(struct outbox *ob, uint64_t seq)
{
	size_t i = ob_lower_bound(ob, seq);
	struct ob_ent *e;
	struct ob_rec *r;

	if (i == ob->n)
		return -1;
	e = ob_ent(ob, i);
	if (e->seq != seq || e->acked)
		return -1;
	r = (struct ob_rec *)(ob->data + e->pos % ob->dlen);
	__atomic_store_n(&r->mark, MARK(e->len, OB_ACKED), __ATOMIC_RELEASE);
	e->acked = 1;
	ob->live--;
	if (i == 0) {
		ob_advance_tail(ob);
		ob_update_acked_below(ob);
	}
	return 0;
}

int
outbox_foreach(struct outbox *ob, uint64_t from, outbox_cb *cb, void *arg)
{
	for (size_t i = ob_lower_bound(ob, from); i < ob->n; i++) {
		struct ob_ent *e = ob_ent(ob, i);
		const struct ob_rec *r;
		struct outbox_rec v;
		int rc;

		if (e->acked)
			continue;
		r = (const struct ob_rec *)(ob->data + e->pos % ob->dlen);
		v.seq = r->seq;
		v.received_ms = r->received_ms;
		v.topic = (const char *)(r + 1);
		v.topic_len = r->topic_len;
		v.payload = v.topic + r->topic_len;
		v.payload_len = r->payload_len;
		v.origin = r->origin;
		v.last_sent = &e->last_sent;
		rc = cb(arg, &v);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int
outbox_seq_state(const struct outbox *ob, uint64_t seq)
{
	size_t i;

	if (seq == 0 || seq >= ob->next_seq)
		return OUTBOX_UNKNOWN;
	if (seq < ob->acked_below)
		return OUTBOX_ACKED;
	i = ob_lower_bound(ob, seq);
	if (i == ob->n || ob_ent(ob, i)->seq != seq)
		return OUTBOX_UNKNOWN;
	return ob_ent(ob, i)->acked ? OUTBOX_ACKED : OUTBOX_LIVE;
}

size_t   outbox_capacity(const struct outbox *ob) { return (size_t)ob->dlen; }
size_t   outbox_depth(const struct outbox *ob) { return ob->live; }
size_t   outbox_bytes(const struct outbox *ob) { return (size_t)(ob->head - ob->tail); }
uint32_t outbox_epoch(const struct outbox *ob) { return ob->epoch; }
uint32_t outbox_tag(const struct outbox *ob) { return ob->hdr->tag; }

int
outbox_set_tag(struct outbox *ob, uint32_t tag)
{
	ob->hdr->tag = tag;
	return ob_msync(ob, 0, sizeof(struct ob_hdr));
}
uint64_t outbox_next_seq(const struct outbox *ob) { return ob->next_seq; }
