/*
 * herald's shared-memory stats region: created by the supervisor before any
 * fork, a versioned header and one cache-line-aligned slot per worker slot.
 * Each slot has one writer (its worker, or the supervisor for the lifecycle
 * fields); readers never wait on a writer.
 */
#ifndef HERALD_STATS_H
#define HERALD_STATS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define STATS_MAGIC    0x48524c44u      /* "HRLD" */
#define STATS_VERSION  1
#define STATS_CACHELINE 64
#define STATS_PANICLEN 160

/*
 * Every counter, declared once: name, help text.  The admin socket, heraldctl,
 * /metrics and the man page all come from this list.
 */
#define STATS_COUNTERS(X)                                                              \
	X(ipc_in,             "messages received from other processes")                \
	X(ipc_out,            "messages sent to other processes")                      \
	X(ipc_bad,            "malformed messages received and dropped")               \
	X(ipc_dropped,        "messages that could not be sent (peer absent or full)") \
	X(mqtt_connects,      "broker connections established")                        \
	X(mqtt_disconnects,   "broker connections lost")                               \
	X(mqtt_received,      "device messages received from the broker")              \
	X(mqtt_published,     "messages published to devices")                         \
	X(mqtt_no_subscriber, "publishes the broker took with no subscriber to get them") \
	X(outbox_appended,    "device messages written to the outbox")                 \
	X(outbox_acked,       "outbox entries acknowledged by the spool")              \
	X(outbox_resent,      "outbox entries sent again after a timeout or restart")  \
	X(outbox_full,        "times reading stopped because the outbox was full")     \
	X(routed,             "messages routed by the router")                         \
	X(envelopes,          "device messages turned into backend envelopes")         \
	X(rejected,           "device messages rejected to the dead-letter store")     \
	X(spooled,            "envelopes committed to the spool")                      \
	X(spool_duplicates,   "envelopes already in the spool, dropped by id")         \
	X(delivered,          "envelopes the backend accepted (2xx)")                  \
	X(http_requests,      "HTTP POSTs sent to the backend")                        \
	X(http_retries,       "HTTP POSTs that failed and will be retried")            \
	X(deadlettered,       "envelopes moved to the dead-letter store")              \
	X(dead_trimmed,       "rejected device messages dropped from a full dead-letter store") \
	X(backpressure,       "times the spool quota stopped device reading")          \
	X(api_requests,       "REST API requests served")                              \
	X(api_errors,         "REST API requests answered with an error")              \
	X(req_accepted,       "device requests accepted")                              \
	X(req_completed,      "device requests that reached an end state")              \
	X(hints_resent,       "status and response hints sent to the router again")

enum stats_counter {
#define STATS_ENUM(name, help) STAT_##name,
	STATS_COUNTERS(STATS_ENUM)
#undef STATS_ENUM
	STAT_NCOUNTERS
};

/* Gauges: values set, not added (spool depth and the like). */
#define STATS_GAUGES(X)                                                  \
	X(outbox_depth,   "outbox entries not yet acknowledged")         \
	X(spool_depth,    "envelopes waiting in the spool")              \
	X(spool_bytes,    "bytes of envelopes in the spool")             \
	X(spool_oldest_ms,"receive time of the oldest spooled envelope (unix ms)") \
	X(spool_retrying, "delivery lanes waiting to retry")             \
	X(dead_depth,     "entries in the dead-letter store")            \
	X(devices_online, "devices currently online")                    \
	X(req_queued,     "requests queued for offline devices")         \
	X(req_sent,       "requests sent, waiting for the device")       \
	X(paused,         "1 while device reading is paused")              \
	X(mqtt_subscribed,"broker connections subscribed to the device topics")

enum stats_gauge {
#define STATS_GENUM(name, help) GAUGE_##name,
	STATS_GAUGES(STATS_GENUM)
#undef STATS_GENUM
	STAT_NGAUGES
};

enum worker_role { ROLE_SUPERVISOR = 0, ROLE_ROUTER, ROLE_CRYPTO, ROLE_HTTP, ROLE_API, ROLE_MQTT, ROLE_MAX };
enum worker_state { WS_EMPTY = 0, WS_STARTING, WS_READY, WS_STOPPING, WS_THROTTLED, WS_DEAD };

const char *stats_role_name(int role);
int         stats_role_parse(const char *name);     /* -1 if unknown */
const char *stats_state_name(int state);

struct stats_slot {
	/* lifecycle, written by the supervisor */
	int32_t  role;
	int32_t  slot;          /* index within the role */
	int32_t  pid;
	int32_t  state;
	uint32_t generation;
	uint32_t restarts;
	int32_t  last_status;   /* exit code, or -signal; 0 when none yet */
	int32_t  pad0;
	int64_t  started_ms;    /* unix ms of the current spawn */
	int64_t  throttled_until_ms;
	/* written by the worker */
	int64_t  heartbeat_ms;
	uint64_t counters[STAT_NCOUNTERS];
	int64_t  gauges[STAT_NGAUGES];
	char     panic[STATS_PANICLEN];  /* last error line of the previous life */
} __attribute__((aligned(STATS_CACHELINE)));

struct stats_header {
	uint32_t magic;
	uint32_t version;
	uint32_t nslots;
	uint32_t slot_size;
	int64_t  created_ms;
	uint8_t  reserved[STATS_CACHELINE - 24];
} __attribute__((aligned(STATS_CACHELINE)));

struct stats_region {
	struct stats_header hdr;
	struct stats_slot   slots[];
};

/* Slot 0 is the supervisor; then router, crypto, http, api, then mqtt 0..N-1. */
#define STATS_NSLOTS(nmqtt) (5 + (nmqtt))

struct stats_region *stats_create(int nslots);       /* MAP_SHARED|MAP_ANONYMOUS */
void                 stats_destroy(struct stats_region *r);
size_t               stats_size(int nslots);
int                  stats_slot_index(int role, int slot);

const char *stats_counter_name(int i);
const char *stats_counter_help(int i);
const char *stats_gauge_name(int i);
const char *stats_gauge_help(int i);

/* One writer per slot: plain relaxed stores are enough for readers. */
static inline void
stats_add(struct stats_slot *s, enum stats_counter c, uint64_t n)
{
	__atomic_store_n(&s->counters[c], s->counters[c] + n, __ATOMIC_RELAXED);
}
static inline void
stats_set(struct stats_slot *s, enum stats_gauge g, int64_t v)
{
	__atomic_store_n(&s->gauges[g], v, __ATOMIC_RELAXED);
}

#endif
