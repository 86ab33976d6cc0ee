/*
 * herald's inter-process messages.  A message is a 2-byte header frame
 * {HM_VERSION, type} and a body of consecutive msgpack objects.  Builders and
 * readers are typed; hmr_end() fails on leftover bytes, so a peer that sends
 * more or less than the reader expects is caught, counted and logged.
 */
#ifndef HERALD_CODEC_H
#define HERALD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <msgpack.h>

/* Bump on any change to a message's body. */
#define HM_VERSION 2
#define HM_HDRLEN  2

/* One enum for every message type; names end up in logs. */
#define HM_TYPES(X)                                                         \
	/* control channel: supervisor <-> worker (socketpair) */           \
	X(CTL_READY,      1)  /* w->s: role slot generation */               \
	X(CTL_PING,       2)  /* s->w: seq */                                \
	X(CTL_PONG,       3)  /* w->s: seq */                                \
	X(CTL_STOP,       4)  /* s->w: drain and exit 0 */                   \
	X(CTL_LOGLEVEL,   5)  /* s->w: level */                              \
	X(CTL_RELOAD,     6)  /* s->w: the checked config (struct bytes) */  \
	X(CTL_ADMIN_REQ,  7)  /* s->w: reqid, command line */                \
	X(CTL_ADMIN_REP,  8)  /* w->s: reqid, json text */                   \
	/* fabric: workers <-> router (ZeroMQ) */                            \
	X(FAB_HELLO,      20) /* w->r: role slot generation */              \
	X(FAB_DEV_IN,     21) /* mqtt->crypto (lane): messages (1..n) */ \
	X(FAB_ENVELOPE,   22) /* crypto->http (lane), r->http (1..n) */\
	X(FAB_REJECT,     23) /* crypto->http (lane): to dead-letter */  \
	X(FAB_ACK,        24) /* http->r->mqtt: spooled, free the outbox */ \
	X(FAB_PAUSE,      25) /* http->r->mqtt: spool full, stop reading */ \
	X(FAB_RESUME,     26) /* http->r->mqtt: below low water */         \
	X(FAB_PUBLISH,    27) /* r->mqtt: publish to a device topic */      \
	X(FAB_PUBLISHED,  28) /* mqtt->r: broker acknowledged (or not) */   \
	X(FAB_REQUEST,    29) /* api<->r: request operations */             \
	X(FAB_REPLY,      30) /* r->api: answer to FAB_REQUEST */           \
	X(FAB_DEVICE_INFO,31) /* crypto->r: presence, status and responses */

enum hm_type {
#define HM_ENUM(name, val) HM_##name = val,
	HM_TYPES(HM_ENUM)
#undef HM_ENUM
	HM_TYPE_MAX = 64
};

const char *hm_type_name(int type);    /* "?" if unknown */
bool        hm_type_known(int type);

/* Builder. */
struct hmw {
	uint8_t         hdr[HM_HDRLEN];
	msgpack_sbuffer sb;
	msgpack_packer  pk;
};
void hmw_init(struct hmw *w, enum hm_type type);
void hmw_free(struct hmw *w);
void hmw_u64(struct hmw *w, uint64_t v);
void hmw_i64(struct hmw *w, int64_t v);
void hmw_bool(struct hmw *w, bool v);
void hmw_str(struct hmw *w, const char *s, size_t len);   /* len may be (size_t)-1: strlen */
void hmw_bin(struct hmw *w, const void *p, size_t len);
void hmw_nil(struct hmw *w);
static inline const char *hmw_body(const struct hmw *w) { return w->sb.data; }
static inline size_t hmw_len(const struct hmw *w) { return w->sb.size; }

/* Reader over a received header + body (both owned by the caller). */
struct hmr {
	const char       *data;
	size_t            len;
	size_t            off;
	uint8_t           type;
	msgpack_unpacked  u;
};
/* Checks version and type; -1 with errno-like reason string in *why. */
int  hmr_init(struct hmr *r, const void *hdr, size_t hdrlen,
         const void *body, size_t len, const char **why);
void hmr_free(struct hmr *r);
int  hmr_u64(struct hmr *r, uint64_t *v);
int  hmr_i64(struct hmr *r, int64_t *v);
int  hmr_bool(struct hmr *r, bool *v);
/* Pointers into the body: valid while the body is. Not NUL-terminated. */
int  hmr_str(struct hmr *r, const char **s, size_t *len);
int  hmr_bin(struct hmr *r, const void **p, size_t *len);
/* Copy a string into buf (NUL-terminated); fails if it does not fit. */
int  hmr_strcpy(struct hmr *r, char *buf, size_t buflen);
int  hmr_nil_or_str(struct hmr *r, const char **s, size_t *len); /* nil -> s NULL */
/* 0 if the whole body was read, -1 if bytes are left over. */
int  hmr_end(struct hmr *r);
/* Bytes are left to read: the next record of a batch. */
static inline bool hmr_more(const struct hmr *r) { return r->off < r->len; }

#endif
