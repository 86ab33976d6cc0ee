/*
 * The http worker's queue of envelopes, in segment files: append-only logs
 * of records (q-<first seq>.log) with, per segment, a log of the sequences
 * deleted from it (q-<first seq>.del).  An index in memory finds a record by
 * sequence and by id.  A segment whose records are all deleted is unlinked
 * with its deletions; one mostly deleted is copied forward and unlinked.
 *
 * Changes are pending until segq_commit(), which writes them and (fsync
 * modes batch and always) syncs the new records; deletions are synced at
 * once with fsync always, by segq_sync_deletions() with batch.  A write or sync that fails
 * breaks the queue: every later call fails until it is opened again, from
 * what the files hold.  Used by spool.c only; the dead letters live in LMDB.
 */
#ifndef HERALD_SEGQ_H
#define HERALD_SEGQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "src/config.h"
#include "spool.h"

struct segq;

/* Segments start a new file past this size (at a commit). */
#define SEGQ_SEG_MAX  (16u << 20)

/*
 * `gone` (may be NULL) is called during the open with the id of each record
 * the files hold that had left the queue (delivered, or moved to the
 * dead-letter store): segment by segment, in the order they left.
 */
struct segq *segq_open(const char *dir, enum fsync_mode fsync, spool_gone_fn *gone, void *arg,
    char *err, size_t errlen);
/* Pending changes are dropped, as after a crash. */
void segq_close(struct segq *q);

/*
 * A new record (the caller has checked that its id is not queued): 0; 1 when
 * the active segment has no room for it before the next commit; -1 when out
 * of memory or broken.
 */
int  segq_put(struct segq *q, uint64_t seq, const char *id, size_t idlen,
         const char *device, size_t devlen, int64_t received_ms, const char *json,
         size_t jsonlen);
/* SPOOL_OK, SPOOL_NOTFOUND, SPOOL_ERR.  Pointers valid until the next put or commit. */
int  segq_get(struct segq *q, uint64_t seq, struct spool_rec *r);
/* SPOOL_OK (*jsonlen set), SPOOL_NOTFOUND, SPOOL_ERR (out of memory). */
int  segq_del(struct segq *q, uint64_t seq, size_t *jsonlen);
bool segq_find_id(struct segq *q, const char *id, size_t idlen, uint64_t *seq);
/*
 * SPOOL_OK; SPOOL_FULL when the disk is full: the pending records are not
 * stored (they left the index), the pending deletions stay pending for the
 * next commit; SPOOL_ERR: the queue is broken (reopen).
 */
int  segq_commit(struct segq *q);
bool segq_nospace(const struct segq *q);        /* the last commit found no room */
/* fsync batch: sync the deletions that commits wrote since the last call. */
int  segq_sync_deletions(struct segq *q);
bool segq_broken(const struct segq *q);
/* The batch is lost: break the queue (its index holds the pending changes). */
void segq_lose(struct segq *q);

/* Live records in sequence order; cb returns non-zero to stop.  Count, or -1. */
long segq_foreach(struct segq *q, spool_iter_fn *cb, void *arg);

uint64_t segq_depth(const struct segq *q);
uint64_t segq_bytes(const struct segq *q);      /* sum of the JSON lengths */
uint64_t segq_next_seq(const struct segq *q);   /* above every sequence on file */
int64_t  segq_oldest_ms(struct segq *q);        /* 0 when empty */

#endif
