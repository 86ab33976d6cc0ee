/*
 * The admin socket: a unix stream socket (mode 0660) served by the
 * supervisor.  One command per line, one JSON document per answer line.
 * Commands are a table; those whose data lives in a worker are forwarded over
 * its control channel and answered when it replies (or after a deadline).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "codec.h"
#include "ctl.h"
#include "log.h"
#include "supervisor.h"
#include "util.h"

#define ADMIN_MAX_LINE     1024
#define ADMIN_MAX_ARGS     16
#define ADMIN_MAX_PENDING  64
#define ADMIN_FORWARD_MS   5000
#define ADMIN_MAX_CONNS    64
#define ADMIN_OUT_HIGH     (1u << 20)   /* stop reading commands past this much unread output */
#define ADMIN_IDLE_S       60

struct admin_conn {
	struct admin       *a;
	struct bufferevent *bev;
	int                 pending;   /* forwarded questions not yet answered */
	bool                closing;
	bool                skipping;  /* the rest of a line over ADMIN_MAX_LINE follows */
};

struct admin_pending {
	uint64_t           reqid;
	struct admin_conn *conn;
	struct child      *child;
	struct event      *timer;
};

struct admin {
	struct supervisor     *s;
	struct evconnlistener *lev;
	char                   path[512];
	int                    nconns;
	struct event          *relisten;      /* after running out of descriptors */
	uint64_t               next_reqid;
	struct admin_pending   pending[ADMIN_MAX_PENDING];
};

typedef json_t *admin_fn(struct admin *a, int argc, char **argv);

struct admin_cmd {
	const char *name;
	const char *usage;
	int         role;       /* ROLE_SUPERVISOR: answered here; else forwarded */
	admin_fn   *fn;
	int         maxargs;    /* arguments after the command, at most */
};

static json_t *admin_help(struct admin *, int, char **);
static json_t *admin_stats(struct admin *, int, char **);
static json_t *admin_workers(struct admin *, int, char **);
static json_t *admin_loglevel(struct admin *, int, char **);
static json_t *admin_reload(struct admin *, int, char **);
static json_t *admin_device(struct admin *, int, char **);

static const struct admin_cmd admin_cmds[] = {
	{ "help",       "help",                                   ROLE_SUPERVISOR, admin_help, 0 },
	{ "stats",      "stats",                                  ROLE_SUPERVISOR, admin_stats, 0 },
	{ "workers",    "workers",                                ROLE_SUPERVISOR, admin_workers, 0 },
	{ "log-level",  "log-level error|warning|notice|info|debug", ROLE_SUPERVISOR, admin_loglevel, 1 },
	{ "reload",     "reload",                                 ROLE_SUPERVISOR, admin_reload, 0 },
	{ "spool",      "spool [retry | skip LANE]  (retry: every waiting lane retries now; "
	                "skip: a lane's stuck POST to the dead-letter store)", ROLE_HTTP, NULL, 2 },
	{ "deadletter", "deadletter list [N [AFTER_ID]] | replay ID|all | purge ID|all  (list: "
	                "oldest first; \"next\" is the AFTER_ID of the next page)", ROLE_HTTP, NULL, 3 },
	{ "requests",   "requests [DEVICE]",                      ROLE_ROUTER, NULL, 1 },
	{ "devices",    "devices",                                ROLE_ROUTER, NULL, 0 },
	{ "outbox",     "outbox [SLOT]  (an mqtt worker's outbox and connections)", ROLE_MQTT, NULL, 1 },
	{ "device",     "device add|list|show|rotate|revoke  (not yet: needs the device registry)",
	                                                          ROLE_SUPERVISOR, admin_device, 3 },
};

static json_t *
admin_error(const char *code, const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* It may quote the client's bytes (else the answer would be lost). */
	str_printable(msg);
	return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

/* Every command gets one answer line, or the client's next answers would
 * be taken for this one's. */
static void
admin_write(struct admin_conn *c, json_t *doc)
{
	char *text = doc != NULL ? json_dumps(doc, JSON_COMPACT) : NULL;

	if (text != NULL) {
		evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\n", text);
		free(text);
	} else
		evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\n",
		    "{\"error\":{\"code\":\"internal\",\"message\":\"the answer could not be "
		    "written\"}}");
	json_decref(doc);
}

/* SPEC 4 names these; the registry they manage comes with the security work. */
static json_t *
admin_device(struct admin *a, int argc, char **argv)
{
	return admin_error("not_implemented", "device commands need the device registry, "
	    "which this herald does not have yet (the REST API answers 501 for it too)");
}

static json_t *
admin_help(struct admin *a, int argc, char **argv)
{
	json_t *list = json_array();

	for (size_t i = 0; i < sizeof(admin_cmds) / sizeof(admin_cmds[0]); i++)
		json_array_append_new(list, json_pack("{s:s,s:s}", "command",
		    admin_cmds[i].name, "usage", admin_cmds[i].usage));
	return json_pack("{s:o}", "commands", list);
}

static json_t *
admin_stats(struct admin *a, int argc, char **argv)
{
	return supervisor_stats_json(a->s);
}

static json_t *
admin_workers(struct admin *a, int argc, char **argv)
{
	return supervisor_workers_json(a->s);
}

static json_t *
admin_loglevel(struct admin *a, int argc, char **argv)
{
	int level;

	if (argc != 2)
		return admin_error("usage", "usage: log-level error|warning|notice|info|debug");
	level = log_level_parse(argv[1]);
	if (level < 0)
		return admin_error("bad_level", "unknown log level \"%s\"", argv[1]);
	supervisor_set_log_level(a->s, level);
	log_notice("log level set to %s", log_level_name(level));
	return json_pack("{s:b,s:s}", "ok", 1, "level", log_level_name(level));
}

static json_t *
admin_reload(struct admin *a, int argc, char **argv)
{
	char err[CONFIG_ERRLEN];

	if (supervisor_reload(a->s, err, sizeof(err)) == -1) {
		log_err("reload failed, keeping the running configuration: %s", err);
		return json_pack("{s:b,s:{s:s,s:s}}", "ok", 0, "error", "code",
		    "reload_failed", "message", err);
	}
	return json_pack("{s:b}", "ok", 1);
}

static void
admin_conn_free(struct admin_conn *c)
{
	for (int i = 0; i < ADMIN_MAX_PENDING; i++)
		if (c->a->pending[i].conn == c)
			c->a->pending[i].conn = NULL;
	c->a->nconns--;
	bufferevent_free(c->bev);
	free(c);
}

static void admin_read(struct bufferevent *bev, void *arg);

static void
admin_pending_clear(struct admin_pending *p)
{
	if (p->timer != NULL)
		event_free(p->timer);
	if (p->conn != NULL)
		p->conn->pending--;
	memset(p, 0, sizeof(*p));
}

static void
admin_pending_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct admin_pending *p = arg;

	if (p->conn != NULL)
		admin_write(p->conn, admin_error("timeout", "the worker did not answer in time"));
	admin_pending_clear(p);
}

void
admin_reply(struct admin *a, uint64_t reqid, const char *json)
{
	for (int i = 0; i < ADMIN_MAX_PENDING; i++) {
		struct admin_pending *p = &a->pending[i];
		if (p->reqid != reqid || p->timer == NULL)
			continue;
		struct admin_conn *c = p->conn;

		if (c != NULL)
			evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\n", json);
		admin_pending_clear(p);
		/* Commands may be waiting behind this answer. */
		if (c != NULL && !c->closing)
			admin_read(c->bev, c);
		return;
	}
}

void
admin_child_gone(struct admin *a, struct child *c)
{
	if (a == NULL)
		return;
	for (int i = 0; i < ADMIN_MAX_PENDING; i++) {
		struct admin_pending *p = &a->pending[i];
		if (p->timer == NULL || p->child != c)
			continue;
		if (p->conn != NULL)
			admin_write(p->conn, admin_error("worker_gone",
			    "the worker died before it answered"));
		admin_pending_clear(p);
	}
}

static json_t *
admin_forward(struct admin_conn *c, int role, int slot, const char *line)
{
	struct admin *a = c->a;
	struct child *ch = supervisor_child(a->s, role, slot);
	struct admin_pending *p = NULL;
	struct timeval tv = { ADMIN_FORWARD_MS / 1000, 0 };
	struct hmw m;

	if (ch == NULL || ch->ctl == NULL || ch->st->state != WS_READY)
		return admin_error("unavailable", "the %s.%d worker is not running",
		    stats_role_name(role), slot);
	for (int i = 0; i < ADMIN_MAX_PENDING; i++)
		if (a->pending[i].timer == NULL) {
			p = &a->pending[i];
			break;
		}
	if (p == NULL)
		return admin_error("busy", "too many admin questions in flight");
	p->reqid = ++a->next_reqid;
	p->conn = c;
	p->child = ch;
	p->timer = evtimer_new(a->s->base, admin_pending_timeout, p);
	evtimer_add(p->timer, &tv);
	c->pending++;
	hmw_init(&m, HM_CTL_ADMIN_REQ);
	hmw_u64(&m, p->reqid);
	hmw_str(&m, line, (size_t)-1);
	ctl_send(ch->ctl, &m);
	hmw_free(&m);
	return NULL;
}

static void
admin_command(struct admin_conn *c, char *line)
{
	char copy[ADMIN_MAX_LINE], *argv[ADMIN_MAX_ARGS], *save = NULL;
	int argc = 0;

	strlcpy_h(copy, line, sizeof(copy));
	for (char *t = strtok_r(line, " \t\r", &save); t && argc < ADMIN_MAX_ARGS;
	    t = strtok_r(NULL, " \t\r", &save))
		argv[argc++] = t;
	if (argc == 0) {
		/* One answer per line, even an empty one: the client waits for it. */
		admin_write(c, admin_error("usage", "empty command; try help"));
		return;
	}
	log_debug("admin: %s", copy);
	for (size_t i = 0; i < sizeof(admin_cmds) / sizeof(admin_cmds[0]); i++) {
		const struct admin_cmd *cmd = &admin_cmds[i];
		json_t *ans;

		if (strcmp(argv[0], cmd->name) != 0)
			continue;
		if (argc - 1 > cmd->maxargs)
			ans = admin_error("usage", "usage: %s", cmd->usage);
		else if (cmd->role == ROLE_SUPERVISOR)
			ans = cmd->fn(c->a, argc, argv);
		else if (cmd->role == ROLE_MQTT) {
			/* Several mqtt workers: the first argument names the slot. */
			char *end;
			long slot = argc > 1 ? strtol(argv[1], &end, 10) : 0;

			if (argc > 2 || (argc > 1 && (*end != '\0' || slot < 0 || slot >= CONFIG_MAX_MQTT)))
				ans = admin_error("usage", "usage: %s", cmd->usage);
			else
				ans = admin_forward(c, cmd->role, (int)slot, copy);
		} else
			ans = admin_forward(c, cmd->role, 0, copy);
		if (ans != NULL)
			admin_write(c, ans);
		return;
	}
	admin_write(c, admin_error("unknown_command", "unknown command \"%s\"; try help", argv[0]));
}

static void
admin_read(struct bufferevent *bev, void *arg)
{
	struct admin_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;

	/* One answer at a time when the client does not read its answers:
	 * what it sends waits in the socket, not in our memory. */
	while (evbuffer_get_length(bufferevent_get_output(bev)) < ADMIN_OUT_HIGH &&
	    c->pending < 4 &&
	    (line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
		if (c->skipping)
			c->skipping = false;    /* answered already: too_long */
		else if (len >= ADMIN_MAX_LINE)
			admin_write(c, admin_error("too_long", "command line over %d bytes",
			    ADMIN_MAX_LINE));
		else
			admin_command(c, line);
		free(line);
	}
	if (evbuffer_get_length(bufferevent_get_output(bev)) >= ADMIN_OUT_HIGH || c->pending >= 4)
		bufferevent_disable(bev, EV_READ);
	else if (evbuffer_get_length(in) >= ADMIN_MAX_LINE &&
	    evbuffer_search_eol(in, NULL, NULL, EVBUFFER_EOL_CRLF).pos == -1) {
		if (!c->skipping)
			admin_write(c, admin_error("too_long", "command line over %d bytes",
			    ADMIN_MAX_LINE));
		evbuffer_drain(in, evbuffer_get_length(in));
		c->skipping = true;
	}
}

static void
admin_written(struct bufferevent *bev, void *arg)
{
	struct admin_conn *c = arg;

	if (c->closing && c->pending == 0) {
		admin_conn_free(c);
		return;
	}
	/* The client read its answers: take its next commands. */
	bufferevent_enable(bev, EV_READ);
	admin_read(bev, c);
}

static void
admin_event(struct bufferevent *bev, short what, void *arg)
{
	struct admin_conn *c = arg;

	if (what & BEV_EVENT_EOF) {
		/* A client may send its command and shut down its side: answer first. */
		c->closing = true;
		if (c->pending == 0 && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
			admin_conn_free(c);
		return;
	}
	if (what & (BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT))
		admin_conn_free(c);
}

static void
admin_relisten(evutil_socket_t fd, short what, void *arg)
{
	struct admin *a = arg;

	evconnlistener_enable(a->lev);
}

/* Out of descriptors: libevent would retry accept() in a tight loop. */
static void
admin_accept_error(struct evconnlistener *lev, void *arg)
{
	struct admin *a = arg;
	struct timeval tv = { 1, 0 };

	log_ratelimited(LOG_ERR, "admin socket: accept: %s; not accepting for 1 s",
	    strerror(errno));
	evconnlistener_disable(lev);
	evtimer_add(a->relisten, &tv);
}

static void
admin_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct admin *a = arg;
	struct admin_conn *c;
	struct ucred cred;
	socklen_t len = sizeof(cred);

	/* Only root and herald's own user may steer herald. */
	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1 ||
	    (cred.uid != 0 && cred.uid != geteuid())) {
		log_warn("admin socket: refused a client with uid %d",
		    len == sizeof(cred) ? (int)cred.uid : -1);
		close(fd);
		return;
	}
	if (a->nconns >= ADMIN_MAX_CONNS) {
		static const char busy[] = "{\"error\":{\"code\":\"busy\","
		    "\"message\":\"too many admin connections\"}}\n";
		log_ratelimited(LOG_WARNING, "admin socket: %d connections open, refusing another",
		    a->nconns);
		if (write(fd, busy, sizeof(busy) - 1) < 0) {
			/* closing anyway */
		}
		close(fd);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (c == NULL) {
		close(fd);
		return;
	}
	c->a = a;
	c->bev = bufferevent_socket_new(a->s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		close(fd);
		free(c);
		return;
	}
	a->nconns++;
	{
		struct timeval idle = { ADMIN_IDLE_S, 0 };
		bufferevent_set_timeouts(c->bev, &idle, &idle);
	}
	bufferevent_setcb(c->bev, admin_read, admin_written, admin_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

struct admin *
admin_open(struct supervisor *s, const char *path)
{
	struct admin *a = calloc(1, sizeof(*a));
	struct sockaddr_un sun;
	mode_t old;
	int fd;

	if (a == NULL)
		return NULL;
	a->s = s;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		log_err("admin socket path too long: %s", path);
		free(a);
		return NULL;
	}
	strlcpy_h(a->path, path, sizeof(a->path));
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strlcpy_h(sun.sun_path, path, sizeof(sun.sun_path));
	/* A socket that answers belongs to a running herald (another state_dir,
	 * the same [admin] socket): taking it over would cut that one off. */
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) != -1) {
		/* EAGAIN: it listens, its backlog full (stopped?): it is alive,
		 * and the start must not wait for it. */
		int live = connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0 || errno == EAGAIN;

		close(fd);
		if (live) {
			log_err("admin socket %s is in use by a running herald", path);
			free(a);
			return NULL;
		}
	}
	unlink(path);
	old = umask(0117);
	a->lev = evconnlistener_new_bind(s->base, admin_accept, a,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16,
	    (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (a->lev == NULL) {
		log_err("cannot listen on admin socket %s: %s", path, strerror(errno));
		free(a);
		return NULL;
	}
	chmod(path, 0660);
	a->relisten = evtimer_new(s->base, admin_relisten, a);
	evconnlistener_set_error_cb(a->lev, admin_accept_error);
	return a;
}

void
admin_close(struct admin *a)
{
	if (a == NULL)
		return;
	evconnlistener_free(a->lev);
	event_free(a->relisten);
	unlink(a->path);
	for (int i = 0; i < ADMIN_MAX_PENDING; i++)
		if (a->pending[i].timer != NULL)
			admin_pending_clear(&a->pending[i]);
	free(a);
}

/* ---- JSON views of the stats region ---- */

static json_t *
slot_json(const struct stats_slot *st, bool counters)
{
	json_t *o = json_object();
	int64_t now = now_ms();

	json_object_set_new(o, "role", json_string(stats_role_name(st->role)));
	json_object_set_new(o, "slot", json_integer(st->slot));
	json_object_set_new(o, "pid", st->pid ? json_integer(st->pid) : json_null());
	json_object_set_new(o, "state", json_string(stats_state_name(st->state)));
	json_object_set_new(o, "generation", json_integer(st->generation));
	json_object_set_new(o, "restarts", json_integer(st->restarts));
	if (st->last_status < 0) {
		const char *abbr = sigabbrev_np(-st->last_status);
		char sig[32];
		snprintf(sig, sizeof(sig), "SIG%s", abbr ? abbr : "?");
		json_object_set_new(o, "last_exit", json_pack("{s:s,s:i}", "signal", sig,
		    "number", -st->last_status));
	} else if (st->generation > 1 || st->state == WS_DEAD || st->state == WS_THROTTLED)
		json_object_set_new(o, "last_exit", json_pack("{s:i}", "status", st->last_status));
	else
		json_object_set_new(o, "last_exit", json_null());
	if (st->started_ms) {
		char ts[RFC3339_LEN];
		fmt_rfc3339(st->started_ms, ts);
		json_object_set_new(o, "started", json_string(ts));
		json_object_set_new(o, "uptime_ms", json_integer(st->pid ? now - st->started_ms : 0));
	}
	if (st->heartbeat_ms)
		json_object_set_new(o, "heartbeat_age_ms", json_integer(now - st->heartbeat_ms));
	if (st->state == WS_THROTTLED) {
		char ts[RFC3339_LEN];
		fmt_rfc3339(st->throttled_until_ms, ts);
		json_object_set_new(o, "throttled_until", json_string(ts));
	}
	if (st->panic[0])
		json_object_set_new(o, "last_error", json_stringn(st->panic,
		    strnlen(st->panic, sizeof(st->panic))));
	if (counters) {
		json_t *c = json_object(), *g = json_object();
		for (int i = 0; i < STAT_NCOUNTERS; i++)
			if (st->counters[i])
				json_object_set_new(c, stats_counter_name(i),
				    json_integer((json_int_t)st->counters[i]));
		for (int i = 0; i < STAT_NGAUGES; i++)
			if (st->gauges[i])
				json_object_set_new(g, stats_gauge_name(i), json_integer(st->gauges[i]));
		json_object_set_new(o, "counters", c);
		json_object_set_new(o, "gauges", g);
	}
	return o;
}

json_t *
supervisor_workers_json(struct supervisor *s)
{
	json_t *list = json_array();

	json_array_append_new(list, slot_json(&s->stats->slots[0], false));
	for (int i = 0; i < s->nchildren; i++)
		if (s->children[i].wanted || s->children[i].pid > 0)
			json_array_append_new(list, slot_json(s->children[i].st, false));
	return json_pack("{s:o}", "workers", list);
}

json_t *
supervisor_stats_json(struct supervisor *s)
{
	json_t *list = json_array(), *tot = json_object(), *gtot = json_object();
	uint64_t sum[STAT_NCOUNTERS] = { 0 };
	int64_t gsum[STAT_NGAUGES] = { 0 };
	struct stats_slot *slots[SUP_MAX_CHILDREN + 1];
	int n = 0;

	slots[n++] = &s->stats->slots[0];
	for (int i = 0; i < s->nchildren; i++)
		if (s->children[i].wanted || s->children[i].pid > 0)
			slots[n++] = s->children[i].st;
	for (int k = 0; k < n; k++) {
		json_array_append_new(list, slot_json(slots[k], true));
		for (int i = 0; i < STAT_NCOUNTERS; i++)
			sum[i] += slots[k]->counters[i];
		for (int i = 0; i < STAT_NGAUGES; i++)
			gsum[i] += slots[k]->gauges[i];
	}
	for (int i = 0; i < STAT_NCOUNTERS; i++)
		json_object_set_new(tot, stats_counter_name(i), json_integer((json_int_t)sum[i]));
	for (int i = 0; i < STAT_NGAUGES; i++)
		json_object_set_new(gtot, stats_gauge_name(i), json_integer(gsum[i]));
	return json_pack("{s:{s:s,s:s,s:i,s:I,s:I},s:o,s:o,s:o}",
	    "herald", "version", PACKAGE_VERSION, "node", s->cf->node_name,
	    "pid", (int)getpid(), "uptime_ms", (json_int_t)(now_ms() - s->started_ms),
	    "time_ms", (json_int_t)now_ms(),
	    "totals", tot, "gauges", gtot, "workers", list);
}
