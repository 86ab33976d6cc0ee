/*
 * The runtime every worker shares: the control channel to the supervisor
 * (READY, PING/PONG, STOP, log level, reload, admin questions), the stats
 * slot and its heartbeat, and the fabric socket to the router.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ctl.h"
#include "fabric.h"
#include "log.h"
#include "proto.h"
#include "util.h"
#include "worker.h"

#define WORKER_TICK_MS 250
#define ADMIN_MAX_ARGS 16

static void
worker_tick(evutil_socket_t fd, short what, void *arg)
{
	struct worker *w = arg;

	w->stats->heartbeat_ms = now_ms();
	log_ratelimit_flush();
}

/* Drain and exit: asked by the supervisor, or by SIGTERM to the whole
 * process group (systemd's default KillMode). */
static void
worker_stop(struct worker *w)
{
	if (w->stopping)
		return;
	w->stopping = true;
	log_info("stopping");
	if (w->hooks.stop != NULL)
		w->hooks.stop(w);
	else
		worker_exit(w, 0);
}

static void
worker_sigterm(evutil_socket_t sig, short what, void *arg)
{
	worker_stop(arg);
}

/* The configuration the supervisor read and checked (see child_send_config). */
static void
worker_reload(struct worker *w, const void *p, size_t len)
{
	struct config *next, *old = w->cf;

	if (len != sizeof(*next)) {
		log_err("reload: a configuration of %zu bytes, not %zu; keeping the running one",
		    len, sizeof(*next));
		return;
	}
	if ((next = malloc(sizeof(*next))) == NULL) {
		log_err("reload: out of memory; keeping the running configuration");
		return;
	}
	memcpy(next, p, sizeof(*next));
	w->cf = next;
	log_set_level(next->log_level);
	if (w->hooks.reload != NULL)
		w->hooks.reload(w, old);
	free(old);
	log_info("configuration reloaded");
}

static void
worker_admin(struct worker *w, struct hmr *r)
{
	uint64_t reqid;
	char line[1024], *argv[ADMIN_MAX_ARGS], *save = NULL;
	int argc = 0;
	json_t *ans = NULL;
	char *text;
	struct hmw m;

	if (hmr_u64(r, &reqid) == -1 || hmr_strcpy(r, line, sizeof(line)) == -1 ||
	    hmr_end(r) == -1) {
		worker_bad_msg(w, r->type, "the supervisor");
		return;
	}
	for (char *t = strtok_r(line, " \t", &save); t && argc < ADMIN_MAX_ARGS;
	    t = strtok_r(NULL, " \t", &save))
		argv[argc++] = t;
	if (argc > 0 && w->hooks.admin != NULL)
		ans = w->hooks.admin(w, argc, argv);
	if (ans == NULL)
		ans = json_pack("{s:{s:s,s:s}}", "error", "code", "unknown_command",
		    "message", "this worker does not answer that command");
	text = json_dumps(ans, JSON_COMPACT);
	json_decref(ans);
	if (text != NULL && strlen(text) > CTL_MAX_FRAME - 4096) {
		free(text);
		text = strdup("{\"error\":{\"code\":\"answer_too_large\","
		    "\"message\":\"the answer does not fit the control channel; ask for fewer entries\"}}");
	}
	hmw_init(&m, HM_CTL_ADMIN_REP);
	hmw_u64(&m, reqid);
	hmw_str(&m, text ? text : "{}", (size_t)-1);
	ctl_send(w->ctl, &m);
	hmw_free(&m);
	free(text);
}

static void
worker_ctl_msg(struct ctl *c, struct hmr *r, void *arg)
{
	struct worker *w = arg;
	struct hmw m;
	uint64_t v;
	const void *cfp;
	size_t cflen;

	switch (r->type) {
	case HM_CTL_PING:
		if (hmr_u64(r, &v) == -1 || hmr_end(r) == -1)
			goto bad;
		w->stats->heartbeat_ms = now_ms();
		hmw_init(&m, HM_CTL_PONG);
		hmw_u64(&m, v);
		ctl_send(c, &m);
		hmw_free(&m);
		break;
	case HM_CTL_STOP:
		if (hmr_end(r) == -1)
			goto bad;
		worker_stop(w);
		break;
	case HM_CTL_LOGLEVEL:
		if (hmr_u64(r, &v) == -1 || hmr_end(r) == -1 || v > LOG_DEBUG)
			goto bad;
		log_set_level((int)v);
		break;
	case HM_CTL_RELOAD:
		if (hmr_bin(r, &cfp, &cflen) == -1 || hmr_end(r) == -1)
			goto bad;
		worker_reload(w, cfp, cflen);
		break;
	case HM_CTL_ADMIN_REQ:
		worker_admin(w, r);
		break;
	default:
		goto bad;
	}
	return;
bad:
	worker_bad_msg(w, r->type, "the supervisor");
}

static void
worker_ctl_eof(struct ctl *c, void *arg)
{
	struct worker *w = arg;

	/* The supervisor is gone: nobody would restart or stop us. */
	log_warn("supervisor went away, exiting");
	worker_exit(w, 0);
}

int
worker_init(struct worker *w, int role, int slot, uint32_t generation, int ctlfd,
    struct config *cf, struct stats_region *region)
{
	int idx = stats_slot_index(role, slot);

	memset(w, 0, sizeof(*w));
	w->role = role;
	w->slot = slot;
	w->generation = generation;
	w->cf = cf;
	w->region = region;
	w->stats = &region->slots[idx];
	snprintf(w->name, sizeof(w->name), "%s.%d", stats_role_name(role), slot);
	log_init(stats_role_name(role), role == ROLE_MQTT ? slot : -1);
	log_set_level(cf->log_level);
	/* The previous life's last error stays readable until we log our own. */
	log_set_panic_buffer(w->stats->panic, sizeof(w->stats->panic));
	memset(w->stats->counters, 0, sizeof(w->stats->counters));
	memset(w->stats->gauges, 0, sizeof(w->stats->gauges));
	w->stats->heartbeat_ms = now_ms();

	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);     /* reloads come from the supervisor */
	signal(SIGINT, SIG_IGN);     /* a terminal ^C goes to the supervisor */
	signal(SIGTERM, SIG_DFL);

	w->base = event_base_new();
	if (w->base == NULL)
		return -1;
	w->sigterm = evsignal_new(w->base, SIGTERM, worker_sigterm, w);
	event_add(w->sigterm, NULL);
	w->ctl = ctl_new(w->base, ctlfd, worker_ctl_msg, worker_ctl_eof, w);
	if (w->ctl == NULL)
		return -1;
	ctl_set_stats(w->ctl, w->stats);
	w->tick = event_new(w->base, -1, EV_PERSIST, worker_tick, w);
	struct timeval tv = { 0, WORKER_TICK_MS * 1000 };
	event_add(w->tick, &tv);
	return 0;
}

static void
worker_fabric_msg(struct fabric *f, const char *peer, struct hmr *r, void *arg)
{
	struct worker *w = arg;

	if (w->hooks.fabric != NULL)
		w->hooks.fabric(w, peer, r);
}

uint32_t
worker_generation_of(const struct worker *w, int role, int slot)
{
	return __atomic_load_n(&w->region->slots[stats_slot_index(role, slot)].generation,
	    __ATOMIC_RELAXED);
}

/* Tell the router who we are (a restarted router learns it again so). */
void
worker_hello(struct worker *w)
{
	struct hmw m;
	struct msg_hello h = { (uint32_t)w->role, (uint32_t)w->slot, w->generation };

	hmw_init(&m, HM_FAB_HELLO);
	proto_write_hello(&m, &h);
	/* The router may not be up yet: the message waits in the socket's queue. */
	fabric_send(w->fab, NULL, &m);
	hmw_free(&m);
}

int
worker_join_fabric(struct worker *w)
{
	char ep[600];

	fabric_endpoint(w->cf->run_dir, ep, sizeof(ep));
	w->fab = fabric_connect(w->base, ep, w->name, worker_fabric_msg, w);
	if (w->fab == NULL)
		return -1;
	fabric_set_stats(w->fab, w->stats);
	worker_hello(w);
	return 0;
}

int
worker_bind_fabric(struct worker *w, const char *endpoint)
{
	w->fab = fabric_bind(w->base, endpoint, worker_fabric_msg, w);
	if (w->fab == NULL)
		return -1;
	fabric_set_stats(w->fab, w->stats);
	return 0;
}

static int
worker_lane(struct worker *w, const char *lane, bool in)
{
	struct fabric **f = in ? &w->lane_in : &w->lane_out;
	char ep[600];

	fabric_lane_endpoint(w->cf->run_dir, lane, ep, sizeof(ep));
	*f = in ? fabric_pull(w->base, ep, worker_fabric_msg, w) : fabric_push(w->base, ep);
	if (*f == NULL)
		return -1;
	fabric_set_stats(*f, w->stats);
	return 0;
}

int
worker_lane_in(struct worker *w, const char *lane)
{
	return worker_lane(w, lane, true);
}

int
worker_lane_out(struct worker *w, const char *lane)
{
	return worker_lane(w, lane, false);
}

int
worker_lane_send(struct worker *w, struct hmw *m)
{
	return fabric_send(w->lane_out, NULL, m);
}

/* Test-only switches: a name list like "crypto" or "mqtt.1,http". */
bool
worker_test_switch(const struct worker *w, const char *env)
{
	const char *v = getenv(env);
	char buf[256], *save = NULL;

	if (v == NULL || *v == '\0')
		return false;
	strlcpy_h(buf, v, sizeof(buf));
	for (char *t = strtok_r(buf, ", ", &save); t; t = strtok_r(NULL, ", ", &save))
		if (strcmp(t, stats_role_name(w->role)) == 0 || strcmp(t, w->name) == 0)
			return true;
	return false;
}

int
worker_loop(struct worker *w)
{
	struct hmw m;

	if (worker_test_switch(w, "HERALD_TEST_CRASH")) {
		log_err("HERALD_TEST_CRASH: crashing at start as asked");
		abort();
	}
	if (worker_test_switch(w, "HERALD_TEST_FATAL")) {
		log_err("HERALD_TEST_FATAL: fatal configuration error (test switch)");
		return WORKER_EXIT_FATAL;
	}
	hmw_init(&m, HM_CTL_READY);
	hmw_u64(&m, (uint64_t)w->role);
	hmw_u64(&m, (uint64_t)w->slot);
	hmw_u64(&m, w->generation);
	ctl_send(w->ctl, &m);
	hmw_free(&m);
	log_debug("ready");
	event_base_dispatch(w->base);
	ctl_flush(w->ctl);
	return w->exit_code;
}

void
worker_exit(struct worker *w, int code)
{
	w->exit_code = code;
	event_base_loopbreak(w->base);
}

void
worker_bad_msg(struct worker *w, int type, const char *peer)
{
	worker_count(w, STAT_ipc_bad, 1);
	log_ratelimited(LOG_WARNING, "unexpected or malformed %s from %s dropped",
	    hm_type_name(type), peer != NULL ? peer : w->fab != NULL && w->role != ROLE_ROUTER ?
	    "the router" : "the supervisor");
}

int
worker_send(struct worker *w, const char *peer, struct hmw *m)
{
	if (w->fab == NULL)
		return -1;
	return fabric_send(w->fab, peer, m);
}
