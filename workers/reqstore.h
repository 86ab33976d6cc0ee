/*
 * The router's request store on LMDB (its own environment under
 * <state_dir>/requests): request records by commandId with their accept-order
 * and per-device indexes, the outbox of request notifications for the
 * backend, device presence, and two sequence counters.  No policy here:
 * requests.c decides what to write; this file only keeps it consistent.
 */
#ifndef HERALD_REQSTORE_H
#define HERALD_REQSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "config.h"

struct reqstore;

/* Longest commandId or device id (SPEC §1 charset). */
#define REQSTORE_ID_MAX 128

/* quota: what reqstore_usage() gives as the size; the map is larger. */
struct reqstore *reqstore_open(const char *dir, size_t quota, enum fsync_mode fsync,
    char *err, size_t errlen);
void    reqstore_close(struct reqstore *s);

/*
 * Writes happen inside one open write transaction: begin, any number of
 * puts and deletes, then commit (or abort).  -1 on an LMDB error, logged;
 * reqstore_full() tells whether it was the map filling up.
 */
int     reqstore_begin(struct reqstore *s);
int     reqstore_commit(struct reqstore *s);
void    reqstore_abort(struct reqstore *s);
bool    reqstore_full(const struct reqstore *s);
/* Bytes in the pages of the records (not the free ones), and the quota. */
int     reqstore_usage(struct reqstore *s, uint64_t *used, uint64_t *size);
/* Flush to disk now, on the caller's thread. */
int     reqstore_sync(struct reqstore *s);
/*
 * With fsync = batch (the environment is MDB_NOSYNC) a thread of the store
 * does the flushing: reqstore_sync_async() asks for a sync of everything
 * committed so far and returns at once (-1: an earlier one failed, logged);
 * reqstore_sync_wait() also waits until such a sync is done.  Without the
 * thread (fsync = always or off) both are reqstore_sync().
 */
int     reqstore_sync_async(struct reqstore *s);
int     reqstore_sync_wait(struct reqstore *s);
/* Syncs the thread has done (0 without one): for tests and debugging. */
uint64_t reqstore_syncs(struct reqstore *s);

/* A new request: its record and its three index entries (accept order,
 * device, live).  -1 if the commandId exists. */
int     reqstore_add(struct reqstore *s, uint64_t seq, const char *cid, const char *device,
    const json_t *rec);
int     reqstore_update(struct reqstore *s, const char *cid, const json_t *rec);
/* The same with the record already serialized (JSON text of len bytes). */
int     reqstore_add_text(struct reqstore *s, uint64_t seq, const char *cid, const char *device,
    const char *text, size_t len);
int     reqstore_update_text(struct reqstore *s, const char *cid, const char *text, size_t len);
/* The request ended: it leaves the live index. */
int     reqstore_ended(struct reqstore *s, uint64_t seq);
/* Forget a request entirely (pruning). */
int     reqstore_remove(struct reqstore *s, uint64_t seq, const char *cid, const char *device);
/* The stored record, or NULL (not found or unreadable).  Owned by the caller. */
json_t *reqstore_get(struct reqstore *s, const char *cid);
/* The same, as last committed (not what the open write transaction wrote). */
json_t *reqstore_get_committed(struct reqstore *s, const char *cid);

/* Walks: the callback returns 0 to go on, 1 to stop.  cid is NUL-terminated. */
typedef int reqstore_walk_fn(uint64_t seq, const char *cid, void *arg);
/* Live requests in accept order. */
int     reqstore_walk_live(struct reqstore *s, reqstore_walk_fn *fn, void *arg);
/* Every request in accept order (reverse: newest first). */
int     reqstore_walk_all(struct reqstore *s, bool reverse, reqstore_walk_fn *fn, void *arg);
/* The same from sequence `from` on (accept order). */
int     reqstore_walk_from(struct reqstore *s, uint64_t from, reqstore_walk_fn *fn, void *arg);
/* One device's requests in accept order (reverse: newest first). */
int     reqstore_walk_device(struct reqstore *s, const char *device, bool reverse,
    reqstore_walk_fn *fn, void *arg);
/* The same newest first, from the one accepted before sequence `before`
 * (0: from the newest). */
int     reqstore_walk_device_before(struct reqstore *s, const char *device, uint64_t before,
    reqstore_walk_fn *fn, void *arg);

/* Notifications waiting for the spool's acknowledgement. */
/* How many are stored (-1: unreadable). */
int64_t reqstore_note_count(struct reqstore *s);
struct reqstore_note {
	uint64_t    seq;
	int64_t     received_ms;
	const char *id;          /* envelope id (ULID text) */
	size_t      idlen;
	const char *device;
	size_t      devlen;
	const char *json;        /* the envelope */
	size_t      jsonlen;
};
int     reqstore_note_put(struct reqstore *s, const struct reqstore_note *n);
int     reqstore_note_del(struct reqstore *s, uint64_t seq);
/* Pointers into the map: valid until the next store call. 0, or -1 if absent. */
int     reqstore_note_get(struct reqstore *s, uint64_t seq, struct reqstore_note *n);
typedef int reqstore_note_fn(const struct reqstore_note *n, void *arg);
int     reqstore_walk_notes(struct reqstore *s, reqstore_note_fn *fn, void *arg);

/* Device presence: a JSON object per device id. */
int     reqstore_dev_put(struct reqstore *s, const char *device, const json_t *doc);
json_t *reqstore_dev_get(struct reqstore *s, const char *device);
typedef int reqstore_dev_fn(const char *device, json_t *doc, void *arg);
/* Devices in id order, starting after `after` (NULL: from the first). */
int     reqstore_walk_devs(struct reqstore *s, const char *after, reqstore_dev_fn *fn, void *arg);

/* Named counters ("seq", "nseq"); 0 when never set. */
uint64_t reqstore_meta_get(struct reqstore *s, const char *name);
int     reqstore_meta_put(struct reqstore *s, const char *name, uint64_t v);

#endif
