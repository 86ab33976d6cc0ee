/*
 * The supervisor: forks every worker, watches them (READY handshake, health
 * pings, exits), restarts with backoff, throttles crash loops, stops herald
 * on a fatal worker exit, drains on SIGTERM, reloads on SIGHUP, and serves
 * the admin socket (supervisor_admin.c).
 */
#ifndef HERALD_SUPERVISOR_H
#define HERALD_SUPERVISOR_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <event2/event.h>
#include <jansson.h>

#include "config.h"
#include "stats.h"

#define SUP_MAX_CHILDREN (4 + CONFIG_MAX_MQTT)
#define SUP_MAX_DEATHS   CONFIG_MAX_THROTTLE   /* deaths remembered: the most throttle_restarts counts */

struct ctl;
struct admin;

struct child {
	int          role;
	int          slot;
	struct stats_slot *st;
	pid_t        pid;
	struct ctl  *ctl;
	bool         wanted;          /* should be running */
	bool         restart_now;     /* stopped on purpose (reload): respawn at once */
	bool         retiring;        /* an mqtt slot over [workers] mqtt, ending its sessions */
	int64_t      spawned_at;      /* mono ms */
	int64_t      next_spawn;      /* mono ms; 0 = now */
	int          backoff_ms;
	int64_t      deaths[SUP_MAX_DEATHS];
	int          ndeaths;
	uint64_t     ping_seq;
	int64_t      ping_sent;       /* mono ms of the unanswered ping, 0 if none */
	int64_t      last_ping;
};

struct supervisor {
	struct event_base   *base;
	struct config       *cf;
	struct stats_region *stats;
	int                  lockfd;     /* state_dir's flock, kept by every worker */
	int                  api_fd;     /* [api] listen, kept across api restarts */
	char                 api_fd_for[sizeof(((struct config *)0)->api_listen)];
	struct child         children[SUP_MAX_CHILDREN];
	int                  nchildren;
	struct admin        *admin;
	bool                 stopping;
	bool                 notified_ready;
	int64_t              stop_started;
	bool                 stop_termed;
	int                  exit_code;
	int64_t              started_ms;
	struct event        *tick;
	struct event        *sigev;
};

/* Takes ownership of cf (a reload replaces it).  lockfd: the state_dir lock
 * (-1: none), inherited by every worker.  Returns herald's exit code. */
int  supervisor_run(struct config *cf, struct stats_region *stats, int lockfd);

/* Used by the admin socket. */
json_t *supervisor_workers_json(struct supervisor *s);
json_t *supervisor_stats_json(struct supervisor *s);
int     supervisor_reload(struct supervisor *s, char *err, size_t errlen);
void    supervisor_set_log_level(struct supervisor *s, int level);
struct child *supervisor_child(struct supervisor *s, int role, int slot);
void    supervisor_notify(const char *state);

/* supervisor_admin.c */
struct admin *admin_open(struct supervisor *s, const char *path);
void          admin_close(struct admin *a);
void          admin_reply(struct admin *a, uint64_t reqid, const char *json);
void          admin_child_gone(struct admin *a, struct child *c);

#endif
