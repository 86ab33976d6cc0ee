/*
 * The runtime every worker process shares: its event loop, the control
 * channel to the supervisor (READY, health pings, stop, log level, reload,
 * admin questions), its stats slot and heartbeat, and its fabric socket.
 * A role fills the hooks it needs and calls worker_loop().
 */
#ifndef HERALD_WORKER_H
#define HERALD_WORKER_H

#include <stdbool.h>
#include <stdint.h>
#include <event2/event.h>
#include <jansson.h>

#include "codec.h"
#include "config.h"
#include "stats.h"

/* Exit code of a worker that must not be restarted (bad configuration). */
#define WORKER_EXIT_FATAL 2
/* An mqtt slot over [workers] mqtt ended its broker sessions and emptied its
 * outbox: not restarted. */
#define WORKER_EXIT_RETIRED 3

struct fabric;
struct ctl;
struct worker;

struct worker_hooks {
	/* A fabric message arrived (peer: sender name on the router, else NULL). */
	void (*fabric)(struct worker *w, const char *peer, struct hmr *r);
	/* Drain requested: stop taking work; call worker_exit() when done.
	 * Without this hook the worker exits at once. */
	void (*stop)(struct worker *w);
	/* The supervisor accepted a new configuration; w->cf already points at it. */
	void (*reload)(struct worker *w, const struct config *old);
	/* An admin command routed to this role: argv[0] is the command.
	 * Return a JSON object (owned by the caller) or NULL for "unknown". */
	json_t *(*admin)(struct worker *w, int argc, char **argv);
};

struct worker {
	struct event_base   *base;
	struct config       *cf;
	int                  role;
	int                  slot;
	uint32_t             generation;
	struct stats_slot   *stats;
	struct stats_region *region;
	struct ctl          *ctl;
	struct fabric       *fab;       /* DEALER to the router (the router: its ROUTER) */
	struct fabric       *lane_in;   /* device traffic: PULL (crypto, http) */
	struct fabric       *lane_out;  /* device traffic: PUSH (mqtt, crypto) */
	char                 name[32];  /* "mqtt.2" */
	bool                 stopping;
	int                  exit_code;
	struct worker_hooks  hooks;
	void                *arg;       /* the role's state */
	struct event        *tick;
	struct event        *sigterm;
};

/* Set up the process after fork (called by the supervisor in the child). */
int  worker_init(struct worker *w, int role, int slot, uint32_t generation,
         int ctlfd, struct config *cf, struct stats_region *region);
/* Connect the DEALER to the router and say HELLO (every role but the router). */
int  worker_join_fabric(struct worker *w);
void worker_hello(struct worker *w);
/* The current life of another worker (the supervisor counts them in the
 * stats region when it forks): a change means that worker was restarted. */
uint32_t worker_generation_of(const struct worker *w, int role, int slot);
/* Bind the fabric's ROUTER socket (the router role). */
int  worker_bind_fabric(struct worker *w, const char *endpoint);
/* The device-traffic lanes (fabric.h): bind the receiving end named `lane`
 * (its messages reach hooks.fabric with peer NULL), connect the sending end. */
int  worker_lane_in(struct worker *w, const char *lane);
int  worker_lane_out(struct worker *w, const char *lane);
/* Send on the lane; -1 when refused (its high-water mark): the outbox resends. */
int  worker_lane_send(struct worker *w, struct hmw *m);
/* Say READY to the supervisor; run the loop until worker_exit(). Returns the exit code. */
int  worker_loop(struct worker *w);
void worker_exit(struct worker *w, int code);
/* A message from a peer that cannot be used: counted (ipc_bad) and logged at a
 * limited rate, never acted on.  peer may be NULL (the router, or the supervisor). */
void worker_bad_msg(struct worker *w, int type, const char *peer);
/* Convenience: send on the worker's fabric socket to peer (NULL on a DEALER). */
int  worker_send(struct worker *w, const char *peer, struct hmw *m);

static inline void worker_count(struct worker *w, enum stats_counter c, uint64_t n) { stats_add(w->stats, c, n); }
static inline void worker_gauge(struct worker *w, enum stats_gauge g, int64_t v) { stats_set(w->stats, g, v); }

/* Test-only fault injection: HERALD_TEST_CRASH=<role> crashes at start,
 * HERALD_TEST_FATAL=<role> exits 2 at start.  True if `what` names this worker
 * ("<role>" or "<role>.<slot>"). */
bool worker_test_switch(const struct worker *w, const char *env);

#endif
