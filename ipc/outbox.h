/*
 * The outbox of one mqtt worker slot: a ring of device messages in a
 * file-backed shared mapping, so that what a worker wrote before it died is
 * there for the next worker of the same slot, until the spool acknowledges it.
 */
#ifndef HERALD_OUTBOX_H
#define HERALD_OUTBOX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "config.h"

struct outbox;

/* A live (not yet acknowledged) record, as iteration shows it. */
struct outbox_rec {
	uint64_t    seq;
	int64_t     received_ms;
	const char *topic;          /* not NUL-terminated */
	size_t      topic_len;
	const void *payload;
	size_t      payload_len;
	uint32_t    origin;         /* as given to outbox_append */
	int64_t    *last_sent;      /* in-memory only; 0 = never sent by this process */
};

/*
 * Open (or create) the ring at path with `size` bytes (the header page
 * included).  A file whose header is damaged or of another format is renamed
 * aside (path.bad-<unix ms>) with a log line, and a new ring with a new epoch
 * is created.  An existing healthy ring of another size keeps its size while
 * it holds live records.  NULL with err set on failure.
 */
struct outbox *outbox_open(const char *path, size_t size, char *err, size_t errlen);
void           outbox_close(struct outbox *ob);

/*
 * Append a record; the record is complete in the mapping when this returns
 * (a process death afterwards keeps it).  origin is the caller's (the mqtt
 * worker: connection and packet id).  0 with *seq set, or -1 with errno
 * ENOSPC (no room now: acks free it) or EMSGSIZE (can never fit).
 */
int  outbox_append(struct outbox *ob, const char *topic, size_t topic_len,
         const void *payload, size_t payload_len, int64_t received_ms, uint32_t origin,
         uint64_t *seq);


/* Mark seq acknowledged and free the space of the acknowledged records at
 * the tail.  0 if seq was live, -1 if unknown or already acknowledged. */
int  outbox_ack(struct outbox *ob, uint64_t seq);

/*
 * Call cb for every live record, oldest first, from sequence `from` on
 * (0: all).  cb returns 0 to go on, anything else to stop; that value is
 * returned (0 when the walk ended).
 */
typedef int outbox_cb(void *arg, const struct outbox_rec *r);
int  outbox_foreach(struct outbox *ob, uint64_t from, outbox_cb *cb, void *arg);

/*
 * Make appended records durable: msync(MS_SYNC) of the header page and of
 * the records appended since the last call, for FSYNC_ALWAYS and FSYNC_BATCH;
 * nothing for FSYNC_OFF (a process death never loses a record either way).
 */
int  outbox_sync(struct outbox *ob, enum fsync_mode mode);
/* Let outbox_append sync the header itself before it would overwrite space
 * that the on-disk header still counts as used (FSYNC_ALWAYS, FSYNC_BATCH). */
void outbox_set_fsync(struct outbox *ob, enum fsync_mode mode);
/* True when records were appended since the last outbox_sync(). */
bool outbox_dirty(const struct outbox *ob);

/*
 * What became of a sequence: LIVE (in the ring, not acknowledged), ACKED
 * (acknowledged: the spool has it), or UNKNOWN (never handed out, or lost
 * with a power failure before it reached the disk).
 */
enum { OUTBOX_UNKNOWN = 0, OUTBOX_LIVE, OUTBOX_ACKED };
int  outbox_seq_state(const struct outbox *ob, uint64_t seq);

/* Bytes a record of these lengths takes in the ring. */
size_t   outbox_record_size(size_t topic_len, size_t payload_len);
/*
 * For device messages of up to max_payload bytes (longer ones are cut to
 * max_payload + 64 KiB and dead-lettered): the room under which an mqtt
 * worker stops reading, and the smallest [mqtt] outbox_bytes that holds
 * twice that (checked with the configuration).
 */
size_t   outbox_high_water(size_t max_payload);
size_t   outbox_min_bytes(size_t max_payload);
#define  OUTBOX_TRUNC_EXTRA (64u * 1024)
#define  OUTBOX_TOPIC_MAX   65535           /* MQTT's limit on a topic */
/* The largest record (outbox_record_size) that outbox_append would take now. */
size_t   outbox_room(const struct outbox *ob);
size_t   outbox_capacity(const struct outbox *ob);   /* bytes for records */
size_t   outbox_depth(const struct outbox *ob);      /* live records */
size_t   outbox_bytes(const struct outbox *ob);      /* bytes from tail to head */
uint32_t outbox_epoch(const struct outbox *ob);
/* A value of the caller's kept in the header for the outbox's epoch, 0 until
 * set (a new epoch starts unset); set writes it through to the disk. */
uint32_t outbox_tag(const struct outbox *ob);
int      outbox_set_tag(struct outbox *ob, uint32_t tag);
uint64_t outbox_next_seq(const struct outbox *ob);

#endif
