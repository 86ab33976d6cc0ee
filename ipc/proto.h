/*
 * Typed bodies of the fabric messages.  Each message has a struct, a
 * writer that packs it and a reader that unpacks it with a strict end check.
 * Strings and byte fields of a read message point into the received body.
 */
#ifndef HERALD_PROTO_H
#define HERALD_PROTO_H

#include <stdint.h>
#include <stddef.h>
#include "codec.h"

struct pstr { const char *p; size_t len; };

/* Origins of an envelope that are not an mqtt outbox slot. */
#define PROTO_SLOT_ROUTER 0xfffffffeu   /* the router's own (request state changes) */
#define PROTO_SLOT_HINTS  0xfffffffdu   /* r->crypto: DEVICE_INFO hints taken (epoch: life) */
#define PROTO_SLOT_NONE   0xffffffffu   /* no acknowledgement wanted */

/* FAB_HELLO: a worker joined (or re-joined) the fabric. */
struct msg_hello { uint32_t role, slot, generation; };

/*
 * FAB_DEV_IN and FAB_ENVELOPE bodies hold one or more records back to back:
 * a worker sends what one loop pass produced as one fabric message, so the
 * per-message cost of ZeroMQ and of the router is paid once per batch.  Their
 * readers read one record without the end check; the caller loops while
 * hmr_more().  An empty body is malformed.
 */
#define PROTO_BATCH_RECORDS 256          /* records per batch, at most */
#define PROTO_BATCH_BYTES   (256u << 10) /* a batch is sent once it passes this */

/* FAB_DEV_IN: a device message, from the outbox of mqtt slot `slot`. */
struct msg_dev_in {
	uint32_t    slot;
	uint64_t    epoch;
	uint64_t    seq;
	int64_t     received_ms;
	struct pstr id;        /* stable message id (ULID text) */
	struct pstr topic;
	struct pstr payload;   /* raw bytes */
};

/* FAB_ENVELOPE: the backend envelope (JSON text) to spool. */
struct msg_envelope {
	uint32_t    slot;      /* origin outbox, for the ACK; UINT32_MAX: none */
	uint64_t    epoch;
	uint64_t    seq;
	int64_t     received_ms;
	struct pstr id;
	struct pstr device;
	struct pstr json;
};

/* FAB_REJECT: a device message that cannot become an envelope. */
struct msg_reject {
	uint32_t    slot;
	uint64_t    epoch;
	uint64_t    seq;
	int64_t     received_ms;
	struct pstr id;
	struct pstr device;
	struct pstr topic;
	struct pstr reason;    /* snake_case: invalid_json, too_large, bad_topic, ... */
	struct pstr detail;    /* human text */
	struct pstr payload;   /* raw bytes (possibly truncated to max_payload) */
};

/* FAB_ACK: the spool committed these sequences of outbox (slot, epoch). */
#define ACK_MAX 1024
struct msg_ack {
	uint32_t slot;
	uint64_t epoch;
	uint32_t n;
	uint64_t seqs[ACK_MAX];
};

/* FAB_PAUSE / FAB_RESUME have an empty body. */

/* FAB_PUBLISH: router -> mqtt; FAB_PUBLISHED: mqtt -> router. */
struct msg_publish {
	uint64_t    ref;       /* router's reference, echoed in PUBLISHED */
	struct pstr topic;
	struct pstr payload;
	uint32_t    qos;
	uint32_t    retain;
};
/*
 * result: PUBLISHED_OK, or PUBLISHED_NO_SUBSCRIBER when the broker accepted
 * the message but had no subscription it matched (MQTT 5 PUBACK reason 0x10:
 * nobody got it), or PUBLISHED_FAILED (refused, or the connection dropped
 * before the acknowledgement).
 */
enum { PUBLISHED_FAILED = 0, PUBLISHED_OK = 1, PUBLISHED_NO_SUBSCRIBER = 2 };
struct msg_published { uint64_t ref; uint32_t result; };

/* FAB_DEVICE_INFO: what the router needs of a device message (presence,
 * status, command responses); json is the validated payload (may be empty).
 * A hint with hseq > 0 is kept by the crypto worker until the router
 * acknowledges (FAB_ACK, slot PROTO_SLOT_HINTS, epoch = life) that the
 * group it changed was committed; `resent` marks a copy sent again. */
struct msg_device_info {
	struct pstr device;
	struct pstr kind;
	int64_t     received_ms;
	struct pstr json;
	uint64_t    life;      /* the crypto worker's run */
	uint64_t    hseq;      /* 0: no acknowledgement wanted */
	uint32_t    resent;
};

/* FAB_REQUEST: api -> router, an operation of the REST API; FAB_REPLY: its
 * answer (HTTP status and JSON body).  `op` names the operation
 * ("request.create", "request.get", ...); args and body are JSON text. */
struct msg_request { uint64_t reqid; struct pstr op; struct pstr args; };
struct msg_reply { uint64_t reqid; uint32_t status; struct pstr body; };

int proto_write_device_info(struct hmw *w, const struct msg_device_info *m);
int proto_read_device_info(struct hmr *r, struct msg_device_info *m);
int proto_write_request(struct hmw *w, const struct msg_request *m);
int proto_read_request(struct hmr *r, struct msg_request *m);
int proto_write_reply(struct hmw *w, const struct msg_reply *m);
int proto_read_reply(struct hmr *r, struct msg_reply *m);
int proto_write_hello(struct hmw *w, const struct msg_hello *m);
int proto_read_hello(struct hmr *r, struct msg_hello *m);
int proto_write_dev_in(struct hmw *w, const struct msg_dev_in *m);
int proto_read_dev_in(struct hmr *r, struct msg_dev_in *m);
int proto_write_envelope(struct hmw *w, const struct msg_envelope *m);
int proto_read_envelope(struct hmr *r, struct msg_envelope *m);
int proto_write_reject(struct hmw *w, const struct msg_reject *m);
int proto_read_reject(struct hmr *r, struct msg_reject *m);
int proto_write_ack(struct hmw *w, const struct msg_ack *m);
int proto_read_ack(struct hmr *r, struct msg_ack *m);
int proto_write_publish(struct hmw *w, const struct msg_publish *m);
int proto_read_publish(struct hmr *r, struct msg_publish *m);
int proto_write_published(struct hmw *w, const struct msg_published *m);
int proto_read_published(struct hmr *r, struct msg_published *m);

/* Every other reader ends with hmr_end(): 0 when the body was exactly the message. */

#endif
