/*
 * herald's supervisor: spawns and watches every worker.  Signal handlers are
 * libevent signal events (they only flag; the loop acts).  Each worker slot
 * keeps its own backoff and death history; the lifecycle fields of its stats
 * slot are written here, the counters by the worker.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "codec.h"
#include "ctl.h"
#include "log.h"
#include "supervisor.h"
#include "util.h"
#include "worker.h"
#include "workers.h"

#define SUP_TICK_MS        50
#define BACKOFF_MIN_MS     100
#define BACKOFF_MAX_MS     10000
#define BACKOFF_RESET_MS   10000    /* a worker that ran this long starts over */

static int (*const role_main[ROLE_MAX])(struct worker *) = {
	[ROLE_ROUTER] = router_main,
	[ROLE_CRYPTO] = crypto_main,
	[ROLE_HTTP] = http_main,
	[ROLE_API] = api_main,
	[ROLE_MQTT] = mqtt_main,
};

static void sup_ctl_msg(struct ctl *c, struct hmr *r, void *arg);
static void sup_ctl_eof(struct ctl *c, void *arg);
static void sup_begin_stop(struct supervisor *s, int code);

/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. */
void
supervisor_notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sun;
	socklen_t len;
	int fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@') ||
	    strlen(path) >= sizeof(sun.sun_path))
		return;
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strlcpy_h(sun.sun_path, path, sizeof(sun.sun_path));
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return;
	if (sendto(fd, state, strlen(state), 0, (struct sockaddr *)&sun, len) == -1)
		log_debug("sd_notify: %s", strerror(errno));
	close(fd);
}

struct child *
supervisor_child(struct supervisor *s, int role, int slot)
{
	for (int i = 0; i < s->nchildren; i++)
		if (s->children[i].role == role && s->children[i].slot == slot)
			return &s->children[i];
	return NULL;
}

static const char *
child_name(const struct child *c, char *buf, size_t len)
{
	snprintf(buf, len, "%s.%d", stats_role_name(c->role), c->slot);
	return buf;
}

static void
child_send(struct child *c, enum hm_type type, const uint64_t *arg)
{
	struct hmw m;

	if (c->ctl == NULL)
		return;
	hmw_init(&m, type);
	if (arg != NULL)
		hmw_u64(&m, *arg);
	ctl_send(c->ctl, &m);
	hmw_free(&m);
}

/*
 * A reload carries the configuration the supervisor read and checked: a
 * worker never reads the file itself, which may have changed since (or be
 * changing).  Every process is this same binary, forked, so the struct's
 * bytes mean the same on both ends; the worker checks their size.
 */
static void
child_send_config(struct child *c, const struct config *cf)
{
	struct hmw m;

	if (c->ctl == NULL)
		return;
	hmw_init(&m, HM_CTL_RELOAD);
	hmw_bin(&m, cf, sizeof(*cf));
	ctl_send(c->ctl, &m);
	hmw_free(&m);
}

/*
 * The REST API's listening socket for the configuration's [api] listen,
 * opened once and kept here across restarts of the api worker: clients
 * that connect meanwhile wait in the backlog and are served by the next
 * worker instead of being refused.  A new address is opened when the api
 * worker is started for it, once the old worker has let go of its own.
 */
static int
sup_api_socket(struct supervisor *s, char *err, size_t errlen)
{
	if (s->api_fd >= 0 && strcmp(s->api_fd_for, s->cf->api_listen) == 0)
		return 0;
	if (s->api_fd >= 0)
		close(s->api_fd);
	if ((s->api_fd = api_listen_open(s->cf->api_listen, err, errlen)) == -1)
		return -1;
	snprintf(s->api_fd_for, sizeof(s->api_fd_for), "%s", s->cf->api_listen);
	return 0;
}

/* In the child, right after fork: become the worker. Never returns. */
static void __attribute__((noreturn))
child_become(struct supervisor *s, struct child *c, int fd)
{
	struct worker w;
	int code, ch, lk, ap, next;

	/* Errors before worker_init belong to this slot, not the supervisor's. */
	log_set_panic_buffer(c->st->panic, sizeof(c->st->panic));
	/*
	 * Nothing of the supervisor's stays open but stdio, our channel (3) and
	 * the state_dir lock (4): a worker that outlives its supervisor (stopped,
	 * or still draining) holds state_dir until it exits, so that a new
	 * herald cannot open the outboxes and the spool under it.  The flock
	 * belongs to the open file, which every copy of the fd shares.
	 */
	ch = fcntl(fd, F_DUPFD_CLOEXEC, 10);
	lk = s->lockfd >= 0 ? fcntl(s->lockfd, F_DUPFD_CLOEXEC, 10) : -1;
	ap = c->role == ROLE_API && s->api_fd >= 0 ? fcntl(s->api_fd, F_DUPFD_CLOEXEC, 10) : -1;
	next = lk >= 0 ? 5 : 4;
	if (ch == -1 || (s->lockfd >= 0 && lk == -1) || dup2(ch, 3) == -1 ||
	    (lk >= 0 && dup2(lk, 4) == -1) ||
	    (c->role == ROLE_API && s->api_fd >= 0 && (ap == -1 || dup2(ap, next) == -1))) {
		log_err("cannot set up the worker's descriptors: %s", strerror(errno));
		_exit(1);
	}
	/* The api worker also keeps the REST API's listening socket. */
	if (ap >= 0)
		api_listen_fd = next++;
	close_range((unsigned)next, ~0U, 0);
	signal(SIGCHLD, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	signal(SIGINT, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	if (worker_init(&w, c->role, c->slot, c->st->generation, 3, s->cf, s->stats) == -1) {
		log_err("cannot set up the worker process");
		_exit(1);
	}
	code = role_main[c->role](&w);
	fflush(NULL);
	_exit(code);
}

static void
child_spawn(struct supervisor *s, struct child *c)
{
	int sv[2];
	pid_t pid;
	char name[32], err[256];

	if (c->role == ROLE_API && sup_api_socket(s, err, sizeof(err)) == -1) {
		log_err("[api] listen %s: cannot listen there: %s; stopping herald",
		    s->cf->api_listen, err);
		sup_begin_stop(s, WORKER_EXIT_FATAL);
		return;
	}
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == -1) {
		log_err("socketpair: %s", strerror(errno));
		c->next_spawn = mono_ms() + 1000;
		return;
	}
	c->st->generation++;
	pid = fork();
	if (pid == -1) {
		log_err("fork: %s", strerror(errno));
		close(sv[0]);
		close(sv[1]);
		c->next_spawn = mono_ms() + 1000;
		return;
	}
	if (pid == 0) {
		close(sv[0]);
		child_become(s, c, sv[1]);
	}
	close(sv[1]);
	c->pid = pid;
	c->spawned_at = mono_ms();
	c->ping_sent = 0;
	c->last_ping = c->spawned_at;
	c->ctl = ctl_new(s->base, sv[0], sup_ctl_msg, sup_ctl_eof, c);
	c->st->pid = pid;
	c->st->state = WS_STARTING;
	c->st->started_ms = now_ms();
	c->st->throttled_until_ms = 0;
	log_debug("started %s as pid %d (generation %u)", child_name(c, name, sizeof(name)),
	    (int)pid, c->st->generation);
}

static struct supervisor *sup_of_ctl;   /* ctl callbacks get the child only */

static void
sup_check_all_ready(struct supervisor *s)
{
	if (s->notified_ready || s->stopping)
		return;
	for (int i = 0; i < s->nchildren; i++)
		if (s->children[i].wanted && s->children[i].st->state != WS_READY)
			return;
	s->notified_ready = true;
	log_notice("all %d workers ready", s->nchildren);
	supervisor_notify("READY=1\nSTATUS=all workers ready");
}

static void
sup_ctl_msg(struct ctl *ctl, struct hmr *r, void *arg)
{
	struct child *c = arg;
	struct supervisor *s = sup_of_ctl;
	uint64_t role, slot, gen, seq, reqid;
	const char *json;
	size_t len;
	char name[32];

	switch (r->type) {
	case HM_CTL_READY:
		if (hmr_u64(r, &role) == -1 || hmr_u64(r, &slot) == -1 ||
		    hmr_u64(r, &gen) == -1 || hmr_end(r) == -1)
			break;
		if (role != (uint64_t)c->role || slot != (uint64_t)c->slot ||
		    gen != c->st->generation) {
			log_warn("%s: READY from another generation ignored",
			    child_name(c, name, sizeof(name)));
			return;
		}
		c->st->state = s->stopping ? WS_STOPPING : WS_READY;
		log_info("%s ready (pid %d)", child_name(c, name, sizeof(name)), (int)c->pid);
		sup_check_all_ready(s);
		return;
	case HM_CTL_PONG:
		if (hmr_u64(r, &seq) == -1 || hmr_end(r) == -1)
			break;
		if (seq == c->ping_seq)
			c->ping_sent = 0;
		return;
	case HM_CTL_ADMIN_REP:
		if (hmr_u64(r, &reqid) == -1 || hmr_str(r, &json, &len) == -1 ||
		    hmr_end(r) == -1)
			break;
		{
			char *text = strndup(json, len);
			if (text != NULL)
				admin_reply(s->admin, reqid, text);
			free(text);
		}
		return;
	default:
		break;
	}
	stats_add(&s->stats->slots[0], STAT_ipc_bad, 1);
	log_ratelimited(LOG_WARNING, "%s: bad control message %s",
	    child_name(c, name, sizeof(name)), hm_type_name(r->type));
}

static void
sup_ctl_eof(struct ctl *ctl, void *arg)
{
	struct child *c = arg;

	/* The process is dying; SIGCHLD does the bookkeeping. Stop reading. */
	if (c->ctl != NULL) {
		ctl_free(c->ctl);
		c->ctl = NULL;
	}
}

static void
sup_begin_stop(struct supervisor *s, int code)
{
	if (s->stopping)
		return;
	s->stopping = true;
	s->exit_code = code;
	s->stop_started = mono_ms();
	/* New API clients are refused from now on, not left in the backlog. */
	if (s->api_fd >= 0) {
		close(s->api_fd);
		s->api_fd = -1;
	}
	supervisor_notify("STOPPING=1");
	log_notice("stopping: draining %d workers", s->nchildren);
	for (int i = 0; i < s->nchildren; i++) {
		struct child *c = &s->children[i];
		c->wanted = false;
		if (c->pid > 0) {
			c->st->state = WS_STOPPING;
			child_send(c, HM_CTL_STOP, NULL);
		}
	}
}

static void
child_died(struct supervisor *s, struct child *c, int status)
{
	int64_t now = mono_ms(), ran = now - c->spawned_at;
	char name[32], how[64];
	int recent = 0;

	child_name(c, name, sizeof(name));
	if (WIFSIGNALED(status)) {
		c->st->last_status = -WTERMSIG(status);
		snprintf(how, sizeof(how), "killed by signal %d (%s)", WTERMSIG(status),
		    sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
	} else {
		c->st->last_status = WEXITSTATUS(status);
		snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(status));
	}
	if (c->ctl != NULL) {
		ctl_free(c->ctl);
		c->ctl = NULL;
	}
	admin_child_gone(s->admin, c);
	c->pid = 0;
	c->st->pid = 0;
	c->st->state = WS_DEAD;

	if (s->stopping) {
		log_info("%s %s", name, how);
		return;
	}
	if (c->retiring && !c->restart_now && WIFEXITED(status) &&
	    WEXITSTATUS(status) == WORKER_EXIT_RETIRED) {
		c->retiring = false;
		c->wanted = false;
		c->st->state = WS_EMPTY;
		log_notice("%s retired: its broker sessions ended and its outbox is empty", name);
		return;
	}
	if (c->restart_now) {
		c->restart_now = false;
		c->next_spawn = 0;
		log_info("%s %s; restarting it for the new configuration", name, how);
		return;
	}
	if (!c->wanted) {
		/* Retired by a reload ([workers] mqtt lowered): not a worker that
		 * is down (/metrics would keep its herald_worker_up at 0). */
		c->st->state = WS_EMPTY;
		log_info("%s %s", name, how);
		return;
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == WORKER_EXIT_FATAL) {
		log_err("%s exited with the fatal configuration code %d%s%s; not restarting it, stopping herald",
		    name, WORKER_EXIT_FATAL, c->st->panic[0] ? ": " : "", c->st->panic);
		sup_begin_stop(s, 2);
		return;
	}

	/* Crash-loop throttle: too many deaths in the window pause the slot. */
	if (c->ndeaths == SUP_MAX_DEATHS) {
		memmove(c->deaths, c->deaths + 1, sizeof(c->deaths[0]) * (SUP_MAX_DEATHS - 1));
		c->ndeaths--;
	}
	c->deaths[c->ndeaths++] = now;
	for (int i = 0; i < c->ndeaths; i++)
		if (now - c->deaths[i] <= s->cf->throttle_window_ms)
			recent++;
	if (ran >= BACKOFF_RESET_MS)
		c->backoff_ms = 0;
	c->backoff_ms = c->backoff_ms == 0 ? BACKOFF_MIN_MS :
	    (c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2);

	if (recent >= s->cf->throttle_restarts) {
		c->next_spawn = now + s->cf->throttle_pause_ms;
		c->st->state = WS_THROTTLED;
		c->st->throttled_until_ms = now_ms() + s->cf->throttle_pause_ms;
		c->ndeaths = 0;
		log_err("%s %s; it died %d times within %d ms: throttled, next start in %d s%s%s",
		    name, how, recent, s->cf->throttle_window_ms, s->cf->throttle_pause_ms / 1000,
		    c->st->panic[0] ? "; last error: " : "", c->st->panic);
		return;
	}
	c->next_spawn = now + c->backoff_ms;
	log_warn("%s %s; restarting in %d ms%s%s", name, how, c->backoff_ms,
	    c->st->panic[0] ? "; last error: " : "", c->st->panic);
}

static void
sup_reap(struct supervisor *s)
{
	for (;;) {
		int status;
		pid_t pid = waitpid(-1, &status, WNOHANG);

		if (pid <= 0)
			return;
		for (int i = 0; i < s->nchildren; i++)
			if (s->children[i].pid == pid) {
				child_died(s, &s->children[i], status);
				break;
			}
	}
}

static int
sup_running(const struct supervisor *s)
{
	int n = 0;

	for (int i = 0; i < s->nchildren; i++)
		n += s->children[i].pid > 0;
	return n;
}

static void
sup_tick(evutil_socket_t fd, short what, void *arg)
{
	struct supervisor *s = arg;
	int64_t now = mono_ms();
	char name[32];

	s->stats->slots[0].heartbeat_ms = now_ms();
	log_ratelimit_flush();
	sup_reap(s);
	if (s->stopping) {
		int64_t waited = now - s->stop_started;

		if (sup_running(s) == 0) {
			event_base_loopbreak(s->base);
			return;
		}
		/* Escalate: TERM at half the deadline, KILL at the deadline. */
		for (int i = 0; i < s->nchildren; i++) {
			struct child *c = &s->children[i];
			if (c->pid <= 0)
				continue;
			if (waited >= s->cf->stop_timeout_ms) {
				log_warn("%s did not stop in %d ms: SIGKILL",
				    child_name(c, name, sizeof(name)), s->cf->stop_timeout_ms);
				kill(c->pid, SIGKILL);
			} else if (waited >= s->cf->stop_timeout_ms / 2 && !s->stop_termed)
				kill(c->pid, SIGTERM);
		}
		if (waited >= s->cf->stop_timeout_ms / 2)
			s->stop_termed = true;
		return;
	}
	for (int i = 0; i < s->nchildren; i++) {
		struct child *c = &s->children[i];

		if (c->pid == 0) {
			if (c->wanted && now >= c->next_spawn) {
				if (c->st->state == WS_THROTTLED)
					log_notice("%s: throttle over, starting again",
					    child_name(c, name, sizeof(name)));
				if (c->st->generation > 0)
					c->st->restarts++;
				child_spawn(s, c);
			}
			continue;
		}
		if (c->st->state == WS_STARTING && now - c->spawned_at > s->cf->ready_timeout_ms) {
			log_err("%s (pid %d) not ready within %d ms: killing it",
			    child_name(c, name, sizeof(name)), (int)c->pid, s->cf->ready_timeout_ms);
			kill(c->pid, SIGKILL);
			continue;
		}
		if (c->st->state != WS_READY)
			continue;
		if (c->ping_sent != 0 && now - c->ping_sent > s->cf->ping_timeout_ms) {
			log_err("%s (pid %d) missed its health ping for %d ms: killing it",
			    child_name(c, name, sizeof(name)), (int)c->pid, s->cf->ping_timeout_ms);
			kill(c->pid, SIGKILL);
			c->ping_sent = 0;
			continue;
		}
		if (c->ping_sent == 0 && now - c->last_ping >= s->cf->ping_interval_ms) {
			c->ping_seq++;
			c->ping_sent = c->last_ping = now;
			child_send(c, HM_CTL_PING, &c->ping_seq);
		}
	}
}

/*
 * Signals: the handler only writes the signal number to a pipe; the loop
 * reads it and acts.  (Not evsignal: a forked worker would inherit libevent's
 * global signal state along with the supervisor's event base.)
 */
static int sig_pipe[2] = { -1, -1 };

static void
sup_sig_handler(int sig)
{
	int saved = errno;
	unsigned char b = (unsigned char)sig;

	if (write(sig_pipe[1], &b, 1) == -1) {
		/* pipe full: a signal of the same kind is already pending */
	}
	errno = saved;
}

static void sup_signal(int sig, struct supervisor *s);

static void
sup_sig_read(evutil_socket_t fd, short what, void *arg)
{
	unsigned char buf[64];
	ssize_t n;

	while ((n = read(fd, buf, sizeof(buf))) > 0)
		for (ssize_t i = 0; i < n; i++)
			sup_signal(buf[i], arg);
}

static void
sup_signal(int sig, struct supervisor *s)
{
	char err[CONFIG_ERRLEN];

	switch (sig) {
	case SIGTERM:
	case SIGINT:
		log_notice("%s received", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		sup_begin_stop(s, s->exit_code);
		break;
	case SIGHUP:
		log_notice("SIGHUP received: reloading %s", s->cf->path);
		if (supervisor_reload(s, err, sizeof(err)) == -1)
			log_err("reload failed, keeping the running configuration: %s", err);
		break;
	case SIGCHLD:
		sup_reap(s);
		break;
	}
}

void
supervisor_set_log_level(struct supervisor *s, int level)
{
	uint64_t v = (uint64_t)level;

	log_set_level(level);
	s->cf->log_level = level;
	for (int i = 0; i < s->nchildren; i++)
		child_send(&s->children[i], HM_CTL_LOGLEVEL, &v);
}

/* Which roles cannot apply a change live and must be restarted for it. */
static bool
role_needs_restart(int role, const struct config *a, const struct config *b)
{
	switch (role) {
	case ROLE_MQTT:
		return strcmp(a->mqtt_host, b->mqtt_host) || a->mqtt_port != b->mqtt_port ||
		    strcmp(a->mqtt_username, b->mqtt_username) ||
		    strcmp(a->mqtt_password, b->mqtt_password) ||
		    a->connections_per_worker != b->connections_per_worker ||
		    a->keepalive != b->keepalive || strcmp(a->share_group, b->share_group) ||
		    a->outbox_bytes != b->outbox_bytes || strcmp(a->node_name, b->node_name) ||
		    /* the outbox's sync mode and room are set at its start */
		    a->spool_fsync != b->spool_fsync || a->max_payload != b->max_payload;
	case ROLE_API:
		return strcmp(a->api_listen, b->api_listen) != 0;
	case ROLE_HTTP:
		return a->concurrency != b->concurrency || a->spool_max_bytes != b->spool_max_bytes ||
		    a->spool_fsync != b->spool_fsync || strcmp(a->node_name, b->node_name) ||
		    /* libcurl keeps connections made with the old TLS files (and
		     * reads files under an unchanged name only for new ones) */
		    strcmp(a->backend_ca_file, b->backend_ca_file) ||
		    strcmp(a->backend_cert_file, b->backend_cert_file) ||
		    strcmp(a->backend_key_file, b->backend_key_file) ||
		    a->backend_tls_stamp != b->backend_tls_stamp;
	case ROLE_CRYPTO:
		return strcmp(a->node_name, b->node_name) != 0;
	case ROLE_ROUTER:
		/* the request store's size and sync mode are set when it opens */
		return a->requests_max_bytes != b->requests_max_bytes ||
		    a->spool_fsync != b->spool_fsync;
	default:
		return false;
	}
}

static void
sup_add_child(struct supervisor *s, int role, int slot)
{
	struct child *c = &s->children[s->nchildren++];

	memset(c, 0, sizeof(*c));
	c->role = role;
	c->slot = slot;
	c->st = &s->stats->slots[stats_slot_index(role, slot)];
	c->wanted = true;
}

/*
 * An outbox or a session record of a slot over [workers] mqtt (herald ran
 * with more mqtt workers before): that slot runs in its retiring mode, to
 * end its broker sessions and hand what its outbox holds to the spool.
 */
static void
sup_add_retiring(struct supervisor *s)
{
	char path[sizeof(s->cf->state_dir) + 16], *end;
	struct dirent *e;
	DIR *d;

	snprintf(path, sizeof(path), "%s/outbox", s->cf->state_dir);
	if ((d = opendir(path)) == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		long slot;

		if (!isdigit((unsigned char)e->d_name[0]))
			continue;
		slot = strtol(e->d_name, &end, 10);
		if ((strcmp(end, ".ring") != 0 && strcmp(end, ".sessions") != 0) ||
		    slot < s->cf->mqtt_workers || slot >= CONFIG_MAX_MQTT ||
		    supervisor_child(s, ROLE_MQTT, (int)slot) != NULL ||
		    s->nchildren >= SUP_MAX_CHILDREN)
			continue;
		sup_add_child(s, ROLE_MQTT, (int)slot);
		s->children[s->nchildren - 1].retiring = true;
		log_notice("mqtt.%ld: a slot over [workers] mqtt left an outbox or broker "
		    "sessions: it runs until they are emptied and ended", slot);
	}
	closedir(d);
}

int
supervisor_reload(struct supervisor *s, char *err, size_t errlen)
{
	struct config *next = malloc(sizeof(*next)), *old = s->cf;
	char name[32];

	if (next == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	if (config_load(next, old->path, err, errlen) == -1) {
		free(next);
		return -1;
	}
	if (strcmp(next->state_dir, old->state_dir) || strcmp(next->run_dir, old->run_dir) ||
	    strcmp(next->admin_socket, old->admin_socket)) {
		snprintf(err, errlen, "state_dir, run_dir and [admin] socket change only with a restart");
		free(next);
		return -1;
	}
	supervisor_notify("RELOADING=1");
	s->cf = next;
	/* A new [api] listen: the old address takes no new connection; the
	 * restarted api worker gets the new one (sup_api_socket). */
	if (strcmp(next->api_listen, old->api_listen) != 0 && s->api_fd >= 0) {
		close(s->api_fd);
		s->api_fd = -1;
	}
	log_set_level(next->log_level);
	for (int i = 0; i < s->nchildren; i++) {
		struct child *c = &s->children[i];
		if (c->role == ROLE_MQTT && c->slot >= next->mqtt_workers) {
			/*
			 * Fewer mqtt workers: the slot runs on, in its retiring
			 * mode, until the broker sessions it used are ended and
			 * its outbox is empty (a session left behind would take
			 * its share of every new device message).
			 */
			if (c->wanted && !c->retiring) {
				c->retiring = true;
				if (c->pid > 0) {
					log_info("%s restarts to end its broker sessions and "
					    "empty its outbox", child_name(c, name, sizeof(name)));
					c->restart_now = true;
					child_send(c, HM_CTL_STOP, NULL);
				}
			} else if (c->retiring && c->pid > 0) {
				/* Retiring already: like any mqtt worker (a new broker
				 * address, new credentials). */
				if (role_needs_restart(c->role, old, next)) {
					c->restart_now = true;
					child_send(c, HM_CTL_STOP, NULL);
				} else
					child_send_config(c, next);
			}
			continue;
		}
		if (c->pid > 0 && role_needs_restart(c->role, old, next)) {
			log_info("%s restarts to apply the new configuration",
			    child_name(c, name, sizeof(name)));
			c->restart_now = true;
			child_send(c, HM_CTL_STOP, NULL);
		} else
			child_send_config(c, next);
	}
	for (int slot = 0; slot < next->mqtt_workers; slot++) {
		struct child *c = supervisor_child(s, ROLE_MQTT, slot);
		if (c == NULL) {
			sup_add_child(s, ROLE_MQTT, slot);
			continue;
		}
		if (c->retiring) {
			/* Wanted again before it finished retiring: a plain worker. */
			c->retiring = false;
			if (c->pid > 0) {
				c->restart_now = true;
				child_send(c, HM_CTL_STOP, NULL);
			}
		}
		c->wanted = true;
	}
	free(old);
	log_notice("configuration reloaded from %s", next->path);
	supervisor_notify("READY=1");
	return 0;
}

int
supervisor_run(struct config *cf, struct stats_region *stats, int lockfd)
{
	struct supervisor sup, *s = &sup;
	static const int sigs[] = { SIGTERM, SIGINT, SIGHUP, SIGCHLD };
	struct timeval tv = { 0, SUP_TICK_MS * 1000 };
	struct sigaction sa;
	char err[256];

	memset(s, 0, sizeof(*s));
	s->api_fd = -1;
	sup_of_ctl = s;
	s->cf = cf;
	s->stats = stats;
	s->lockfd = lockfd;
	s->started_ms = now_ms();
	stats->slots[0].pid = getpid();
	stats->slots[0].state = WS_READY;
	stats->slots[0].started_ms = s->started_ms;
	stats->slots[0].generation = 1;
	log_set_panic_buffer(stats->slots[0].panic, sizeof(stats->slots[0].panic));
	signal(SIGPIPE, SIG_IGN);

	s->base = event_base_new();
	if (s->base == NULL)
		return 1;
	if (pipe2(sig_pipe, O_CLOEXEC | O_NONBLOCK) == -1) {
		log_err("pipe: %s", strerror(errno));
		return 1;
	}
	s->sigev = event_new(s->base, sig_pipe[0], EV_READ | EV_PERSIST, sup_sig_read, s);
	event_add(s->sigev, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = sup_sig_handler;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
	s->admin = admin_open(s, cf->admin_socket);
	if (s->admin == NULL)
		return 1;
	if (sup_api_socket(s, err, sizeof(err)) == -1) {
		log_err("[api] listen %s: cannot listen there: %s", cf->api_listen, err);
		admin_close(s->admin);
		return WORKER_EXIT_FATAL;
	}
	sup_add_child(s, ROLE_ROUTER, 0);
	sup_add_child(s, ROLE_CRYPTO, 0);
	sup_add_child(s, ROLE_HTTP, 0);
	sup_add_child(s, ROLE_API, 0);
	for (int i = 0; i < cf->mqtt_workers; i++)
		sup_add_child(s, ROLE_MQTT, i);
	sup_add_retiring(s);
	s->tick = event_new(s->base, -1, EV_PERSIST, sup_tick, s);
	event_add(s->tick, &tv);
	log_notice("herald %s starting on node %s with %d mqtt workers (pid %d)",
	    PACKAGE_VERSION, cf->node_name, cf->mqtt_workers, (int)getpid());
	sup_tick(-1, 0, s);

	event_base_dispatch(s->base);

	admin_close(s->admin);
	if (s->api_fd >= 0)
		close(s->api_fd);
	event_free(s->sigev);
	close(sig_pipe[0]);
	close(sig_pipe[1]);
	event_free(s->tick);
	event_base_free(s->base);
	log_notice("stopped%s", s->exit_code ? " after a fatal worker error" : "");
	free(s->cf);    /* ours since the start: reloads replace it */
	return s->exit_code;
}
