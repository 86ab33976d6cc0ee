/*
 * The http worker's durable spool and dead-letter store, in <state_dir>/spool:
 * the queue in segment files (segq.h), the dead letters in an LMDB
 * environment.  An envelope lives here from the commit that lets the http
 * worker acknowledge it until the backend answered 2xx or it went dead.
 */
#ifndef HERALD_SPOOL_H
#define HERALD_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/config.h"   /* "config.h" would find autoconf's header */

enum spool_rc {
	SPOOL_ERR = -1,         /* LMDB failed; an open batch is lost (restart) */
	SPOOL_OK = 0,
	SPOOL_DUP,              /* the id is already stored: nothing changed */
	SPOOL_FULL,             /* no room in the map: nothing changed, do not ack */
	SPOOL_NOTFOUND,
	SPOOL_INVAL             /* bad argument, or a record that cannot be replayed */
};

#define SPOOL_ID_MAX      255
#define SPOOL_DEVICE_MAX  255
#define SPOOL_REASON_MAX  255
#define SPOOL_TOPIC_MAX   65535
#define SPOOL_DETAIL_MAX  512

struct spool;

/* An envelope in the queue.  Pointers are into the map (see spool_get). */
struct spool_rec {
	uint64_t    seq;
	int64_t     received_ms;
	const char *id;
	size_t      idlen;
	const char *device;
	size_t      devlen;
	const char *json;
	size_t      jsonlen;
};

/* A dead-letter record. */
struct spool_dead {
	const char *id;
	size_t      idlen;
	const char *device;
	size_t      devlen;
	const char *topic;
	size_t      topiclen;
	const char *reason;     /* "http_400", "rejected: invalid_json" */
	size_t      reasonlen;
	const char *detail;     /* start of the answer, or the reject text */
	size_t      detaillen;
	const void *data;       /* the envelope JSON, or the raw device payload */
	size_t      datalen;
	int         status;     /* HTTP status, 0 when none */
	int64_t     received_ms;
	int64_t     dead_ms;
	bool        replayable; /* data is an envelope */
};

struct spool_stats {
	uint64_t depth;         /* envelopes queued */
	uint64_t bytes;         /* sum of their JSON lengths (the quota's measure) */
	int64_t  oldest_ms;     /* received_ms of the first queued envelope, 0 if none */
	uint64_t dead_depth;
	uint64_t dead_bytes;    /* the pages its entries take */
	size_t   map_size;
};

/*
 * Open (creating the directory) with an LMDB map of about 2 x max_bytes +
 * slack; queued JSON bytes may not exceed that first map size either.
 * Indexes the segments (cutting a torn write off the newest), moves an older
 * spool's LMDB queue to segments, and drops queued copies of dead letters.
 * `gone` (may be NULL) gets the ids of the envelopes the segment files still
 * hold that had left the queue (delivered or dead), see segq_open().
 */
typedef void spool_gone_fn(void *arg, const char *id, size_t idlen);
struct spool *spool_open(const char *dir, size_t max_bytes, enum fsync_mode fsync,
    spool_gone_fn *gone, void *arg, char *err, size_t errlen);
/* Aborts an uncommitted batch (commit first). */
void spool_close(struct spool *s);

/*
 * Batching: every change between spool_begin() and spool_commit() is written
 * and synced at the commit, once.  Outside a batch each call commits alone.
 * A put refused with SPOOL_FULL inside a batch leaves the batch's other
 * changes intact; SPOOL_ERR means the whole batch is lost, and every later
 * call fails until the spool is opened again.
 */
int  spool_begin(struct spool *s);
/*
 * SPOOL_OK; SPOOL_FULL when the commit itself found the LMDB map full and had
 * to drop the batch's newest dead-letter puts, or found the disk full
 * (spool_disk_full()) and stored none of the batch's puts: the puts with
 * seq < spool_next_seq() committed; the deletions and moves did too, or
 * (disk full) are written at a later commit.  Do not
 * acknowledge anything of such a batch (resent copies are acked as DUP).
 * SPOOL_ERR: the batch is lost.
 */
int  spool_commit(struct spool *s);
bool spool_in_batch(const struct spool *s);
/*
 * fsync batch: deliveries (deletions) committed since the last call reach
 * the disk.  Call it about once a second: until then a power cut may bring
 * them back, to be delivered again.  SPOOL_ERR: reopen.
 */
int  spool_sync(struct spool *s);
/* The last commit found no room on the disk. */
bool spool_disk_full(const struct spool *s);
/* The sequence the next put gets. */
uint64_t spool_next_seq(const struct spool *s);

/* SPOOL_OK (*seq set), SPOOL_DUP (id queued or dead), SPOOL_FULL, SPOOL_INVAL. */
int  spool_put(struct spool *s, const char *id, size_t idlen, const char *device,
         size_t devlen, int64_t received_ms, const char *json, size_t jsonlen,
         uint64_t *seq);
/*
 * Zero-copy read.  The pointers stay valid until the next spool call other
 * than spool_get/spool_stats.
 */
int  spool_get(struct spool *s, uint64_t seq, struct spool_rec *rec);
int  spool_del(struct spool *s, uint64_t seq);

/* Every queued envelope in sequence order; cb returns non-zero to stop.
 * cb must not call other spool functions.  Returns the count visited. */
typedef int spool_iter_fn(void *arg, const struct spool_rec *rec);
long spool_foreach(struct spool *s, spool_iter_fn *cb, void *arg);

/* Store a dead-letter record (a rejected payload); SPOOL_DUP if the id is known. */
int  spool_dead_put(struct spool *s, const struct spool_dead *d);
/* Move a queued envelope to the dead-letter store (a permanent 4xx). */
int  spool_dead_move(struct spool *s, uint64_t seq, const char *reason, int status,
         const char *detail, size_t detaillen, const char *topic, size_t topiclen,
         int64_t dead_ms);
typedef int spool_dead_fn(void *arg, const struct spool_dead *d);
/* Records in id order, those after the id `after` (NULL: from the first), at
 * most limit (0: all).  Returns the count visited. */
long spool_dead_list(struct spool *s, const char *after, size_t afterlen, size_t limit,
         spool_dead_fn *cb, void *arg);
int  spool_dead_get(struct spool *s, const char *id, size_t idlen, struct spool_dead *d);
/*
 * Move dead envelopes back to the queue with new sequences (id NULL: all).
 * Not inside a batch.  cb sees each re-queued envelope after the commit.
 * Raw payloads are not replayable: counted in *skipped.  SPOOL_FULL when the
 * map filled up part way (what was replayed is committed).
 */
int  spool_dead_replay(struct spool *s, const char *id, size_t idlen,
         spool_iter_fn *cb, void *arg, size_t *replayed, size_t *skipped);
/* id NULL: all. */
int  spool_dead_purge(struct spool *s, const char *id, size_t idlen, size_t *purged);
/*
 * When the dead-letter store takes more than max_bytes (its pages), drop its
 * oldest entries that cannot be replayed, as many as should take it a tenth
 * under (at most max); *trimmed says how many, *more whether the look
 * stopped before the newest entry.  In the open batch, or in one of its own.
 */
int  spool_dead_trim(struct spool *s, size_t max_bytes, size_t max, size_t *trimmed,
         bool *more);

void spool_stats(struct spool *s, struct spool_stats *st);

#endif
