/*
 * heraldctl: speaks to herald's admin socket.  One command per connection,
 * one JSON answer; `top` asks for stats every second and shows rates.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "config.h"
#include "stats.h"
#include "util.h"

#define DEFAULT_CONFIG SYSCONFDIR "/herald/herald.conf"
#define ANSWER_MAX     (64u << 20)

static int timeout_ms = 10000;

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: heraldctl [-c FILE | -s SOCKET] [-j] [-t SECONDS] COMMAND [ARGS]\n"
	    "  -c FILE     herald's configuration, to find the admin socket (default %s)\n"
	    "  -s SOCKET   the admin socket itself\n"
	    "  -j          print workers as JSON instead of a table\n"
	    "  -t SECONDS  how long to wait for an answer (default 10)\n"
	    "commands:\n"
	    "  stats                      counters and gauges of every worker (JSON)\n"
	    "  workers                    every process: role, pid, state, restarts, last exit\n"
	    "  top [-d SECONDS] [-n N]    live view: per-second rates per worker\n"
	    "  spool                      spool depth, bytes, oldest age, delivered, retrying, dead\n"
	    "  spool retry                every lane waiting to retry the backend retries now\n"
	    "  spool skip LANE            a lane's POST that keeps failing: to the dead-letter store\n"
	    "  deadletter list [N [AFTER_ID]] | replay ID|all | purge ID|all\n"
	    "  requests [DEVICE] | devices | outbox [SLOT]\n"
	    "  device add|list|show|rotate|revoke   (not yet: needs the device registry)\n"
	    "  log-level LEVEL | reload | help\n"
	    "  counters [--man]           every counter and gauge with its meaning (no herald needed)\n",
	    DEFAULT_CONFIG);
}

static int
ctl_connect(const char *path)
{
	struct sockaddr_un sun;
	int fd;

	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "heraldctl: socket path too long: %s\n", path);
		return -1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strlcpy_h(sun.sun_path, path, sizeof(sun.sun_path));
	/*
	 * Non-blocking: a supervisor that does not accept (stopped, or its
	 * backlog full) makes connect(2) on a unix socket fail with EAGAIN
	 * instead of waiting without end; it is tried again until -t runs out.
	 */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd != -1) {
		int64_t deadline = mono_ms() + timeout_ms;
		int rc;

		while ((rc = connect(fd, (struct sockaddr *)&sun, sizeof(sun))) == -1 &&
		    errno == EAGAIN && mono_ms() < deadline)
			usleep(10000);
		if (rc == 0)
			return fd;
		if (errno == EAGAIN) {
			fprintf(stderr, "heraldctl: %s does not accept within %d ms\n", path,
			    timeout_ms);
			close(fd);
			return -1;
		}
	}
	fprintf(stderr, "heraldctl: cannot connect to %s: %s (is herald running?)\n",
	    path, strerror(errno));
	if (fd != -1)
		close(fd);
	return -1;
}

/* Send one command line, read one answer line; NULL on failure. */
static json_t *
ctl_ask(const char *path, const char *line)
{
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	json_t *doc = NULL;
	json_error_t jerr;
	int fd;

	if (buf == NULL)
		return NULL;
	fd = ctl_connect(path);
	if (fd == -1) {
		free(buf);
		return NULL;
	}
	if (write(fd, line, strlen(line)) != (ssize_t)strlen(line) || write(fd, "\n", 1) != 1) {
		fprintf(stderr, "heraldctl: write: %s\n", strerror(errno));
		goto out;
	}
	for (;;) {
		struct pollfd p = { fd, POLLIN, 0 };
		ssize_t n;

		if (memchr(buf, '\n', len) != NULL)
			break;
		if (poll(&p, 1, timeout_ms) <= 0) {
			fprintf(stderr, "heraldctl: no answer within %d ms\n", timeout_ms);
			goto out;
		}
		if (len + 1 >= cap) {
			char *nb;
			if (cap >= ANSWER_MAX)
				goto out;
			nb = realloc(buf, cap * 2);
			if (nb == NULL)
				goto out;
			buf = nb;
			cap *= 2;
		}
		n = read(fd, buf + len, cap - len - 1);
		if (n <= 0) {
			fprintf(stderr, "heraldctl: herald closed the connection\n");
			goto out;
		}
		len += (size_t)n;
	}
	/*
	 * JSON_ALLOW_NUL: strings an older herald passed on from a backend
	 * (a dead letter's detail) may hold \u0000; refused, they would keep
	 * the operator from listing, and so from purging, what holds them.
	 */
	doc = json_loadb(buf, (size_t)((char *)memchr(buf, '\n', len) - buf),
	    JSON_ALLOW_NUL, &jerr);
	if (doc == NULL)
		fprintf(stderr, "heraldctl: bad answer: %s\n", jerr.text);
out:
	close(fd);
	free(buf);
	return doc;
}

static void
print_workers(json_t *doc)
{
	json_t *list = json_object_get(doc, "workers"), *w;
	size_t i;

	printf("%-12s %-8s %-10s %8s %-14s %10s  %s\n", "WORKER", "PID", "STATE",
	    "RESTARTS", "LAST EXIT", "UPTIME", "LAST ERROR");
	json_array_foreach(list, i, w) {
		char name[32], last[32] = "-", up[32] = "-", pidtxt[16] = "-";
		json_t *le = json_object_get(w, "last_exit"), *pid = json_object_get(w, "pid");
		const char *err = json_string_value(json_object_get(w, "last_error"));

		snprintf(name, sizeof(name), "%s.%d",
		    json_string_value(json_object_get(w, "role")),
		    (int)json_integer_value(json_object_get(w, "slot")));
		if (json_is_object(le)) {
			if (json_object_get(le, "signal"))
				snprintf(last, sizeof(last), "%s",
				    json_string_value(json_object_get(le, "signal")));
			else
				snprintf(last, sizeof(last), "exit %d",
				    (int)json_integer_value(json_object_get(le, "status")));
		}
		if (json_integer_value(json_object_get(w, "uptime_ms")) > 0)
			snprintf(up, sizeof(up), "%.1fs",
			    json_integer_value(json_object_get(w, "uptime_ms")) / 1000.0);
		if (json_is_integer(pid))
			snprintf(pidtxt, sizeof(pidtxt), "%d", (int)json_integer_value(pid));
		printf("%-12s %-8s %-10s %8d %-14s %10s  %s\n", name, pidtxt,
		    json_string_value(json_object_get(w, "state")),
		    (int)json_integer_value(json_object_get(w, "restarts")), last, up,
		    err ? err : "");
	}
}

static json_t *
find_worker(json_t *stats, const char *role, json_int_t slot)
{
	json_t *w;
	size_t i;

	json_array_foreach(json_object_get(stats, "workers"), i, w)
		if (strcmp(json_string_value(json_object_get(w, "role")), role) == 0 &&
		    json_integer_value(json_object_get(w, "slot")) == slot)
			return w;
	return NULL;
}

static double
counter_rate(json_t *now, json_t *then, const char *name, double secs)
{
	json_int_t a = json_integer_value(json_object_get(json_object_get(now, "counters"), name));
	json_int_t b = then ? json_integer_value(json_object_get(json_object_get(then, "counters"), name)) : a;

	return secs > 0 && a >= b ? (double)(a - b) / secs : 0;
}

static volatile sig_atomic_t top_stop;
static void top_sig(int sig) { top_stop = 1; }

/* A bad `top` command line: why (if getopt did not say it), and exit 1. */
static int
top_usage(const char *why, const char *arg)
{
	if (why != NULL)
		fprintf(stderr, "heraldctl: top: %s: %s\n", why, arg);
	fprintf(stderr, "usage: heraldctl top [-d SECONDS] [-n N]\n");
	return 1;
}

/* Live view, like varnishstat: rates over the last interval per worker. */
static int
cmd_top(const char *path, int argc, char **argv)
{
	static const char *cols[][2] = {
		{ "mqtt_received", "RECV/s" }, { "envelopes", "ENV/s" },
		{ "spooled", "SPOOL/s" }, { "delivered", "DELIV/s" },
		{ "ipc_in", "IPCIN/s" }, { "ipc_out", "IPCOUT/s" },
	};
	int ncols = (int)(sizeof(cols) / sizeof(cols[0]));
	double interval = 1;
	int iterations = -1, ch;
	json_t *prev = NULL;
	bool tty = isatty(STDOUT_FILENO);

	optind = 1;
	while ((ch = getopt(argc, argv, "d:n:")) != -1) {
		char *end;

		if (ch == 'd') {
			interval = strtod(optarg, &end);
			if (end == optarg || *end != '\0' || !(interval >= 0.1) ||
			    interval > 86400)
				return top_usage("-d wants seconds, at least 0.1 and "
				    "at most 86400", optarg);
		} else if (ch == 'n') {
			long n;

			errno = 0;
			n = strtol(optarg, &end, 10);
			if (end == optarg || *end != '\0' || errno != 0 || n < 1 ||
			    n > INT_MAX)
				return top_usage("-n wants a number of views, at least 1",
				    optarg);
			iterations = (int)n;
		} else
			return top_usage(NULL, NULL);
	}
	if (optind < argc)
		return top_usage("unexpected argument", argv[optind]);
	signal(SIGINT, top_sig);
	signal(SIGTERM, top_sig);
	for (int it = 0; !top_stop && (iterations < 0 || it < iterations); it++) {
		json_t *cur = ctl_ask(path, "stats"), *w, *g;
		double secs = 0;
		size_t i;

		if (cur == NULL)
			return 1;
		if (prev != NULL)
			secs = (json_integer_value(json_object_get(json_object_get(cur, "herald"), "time_ms")) -
			    json_integer_value(json_object_get(json_object_get(prev, "herald"), "time_ms"))) / 1000.0;
		g = json_object_get(cur, "gauges");
		if (tty)
			printf("\033[H\033[2J");
		printf("herald %s on %s   up %.0fs   spool %lld envelopes / %lld bytes   dead %lld   online %lld%s\n",
		    json_string_value(json_object_get(json_object_get(cur, "herald"), "version")),
		    json_string_value(json_object_get(json_object_get(cur, "herald"), "node")),
		    json_integer_value(json_object_get(json_object_get(cur, "herald"), "uptime_ms")) / 1000.0,
		    (long long)json_integer_value(json_object_get(g, "spool_depth")),
		    (long long)json_integer_value(json_object_get(g, "spool_bytes")),
		    (long long)json_integer_value(json_object_get(g, "dead_depth")),
		    (long long)json_integer_value(json_object_get(g, "devices_online")),
		    json_integer_value(json_object_get(g, "paused")) ? "   PAUSED (spool full)" : "");
		printf("%-10s %-8s %-9s %4s", "WORKER", "PID", "STATE", "RST");
		for (int c = 0; c < ncols; c++)
			printf(" %9s", cols[c][1]);
		printf(" %7s\n", "HB-AGE");
		json_array_foreach(json_object_get(cur, "workers"), i, w) {
			const char *role = json_string_value(json_object_get(w, "role"));
			json_int_t slot = json_integer_value(json_object_get(w, "slot"));
			json_t *old = prev ? find_worker(prev, role, slot) : NULL;
			char name[32];

			/* A new pid means new counters: no rate across a restart. */
			if (old && json_integer_value(json_object_get(old, "pid")) !=
			    json_integer_value(json_object_get(w, "pid")))
				old = NULL;
			snprintf(name, sizeof(name), "%s.%lld", role, (long long)slot);
			printf("%-10s %-8lld %-9s %4lld", name,
			    (long long)json_integer_value(json_object_get(w, "pid")),
			    json_string_value(json_object_get(w, "state")),
			    (long long)json_integer_value(json_object_get(w, "restarts")));
			for (int c = 0; c < ncols; c++)
				printf(" %9.0f", counter_rate(w, old, cols[c][0], secs));
			printf(" %6.1fs\n", json_integer_value(json_object_get(w, "heartbeat_age_ms")) / 1000.0);
		}
		fflush(stdout);
		json_decref(prev);
		prev = cur;
		if (iterations < 0 || it + 1 < iterations) {
			struct timespec ts = { (time_t)interval,
			    (long)((interval - (time_t)interval) * 1e9) };
			nanosleep(&ts, NULL);
		}
	}
	json_decref(prev);
	return 0;
}

/*
 * The counters and gauges of ipc/stats.h with their help texts: one line
 * each ("counter NAME HELP"), or man(7) entries (--man) from which the build
 * makes the STATISTICS section of herald(8).  Needs no herald.
 */
static int
cmd_counters(int argc, char **argv)
{
	static const struct {
		const char *kind, *title;
		int         n;
		const char *(*name)(int);
		const char *(*help)(int);
	} lists[] = {
		{ "counter", "Counters", STAT_NCOUNTERS, stats_counter_name, stats_counter_help },
		{ "gauge", "Gauges", STAT_NGAUGES, stats_gauge_name, stats_gauge_help },
	};
	bool man = argc == 2 && strcmp(argv[1], "--man") == 0;

	if (argc > 2 || (argc == 2 && !man)) {
		fprintf(stderr, "usage: heraldctl counters [--man]\n");
		return 1;
	}
	if (man)
		printf(".\\\" Generated by \"heraldctl counters --man\" from ipc/stats.h.\n");
	for (size_t l = 0; l < sizeof(lists) / sizeof(lists[0]); l++) {
		if (man)
			printf(".SS %s\n", lists[l].title);
		for (int i = 0; i < lists[l].n; i++) {
			const char *help = lists[l].help(i);

			if (!man) {
				printf("%-7s %-20s %s\n", lists[l].kind, lists[l].name(i), help);
				continue;
			}
			/* Names are C identifiers; the help is prose (a - is a hyphen). */
			printf(".TP\n.B %s\n%s", lists[l].name(i),
			    *help == '.' || *help == '\'' ? "\\&" : "");
			for (const char *c = help; *c != '\0'; c++) {
				if (*c == '\\')
					fputs("\\e", stdout);
				else
					putchar(*c);
			}
			putchar('\n');
		}
	}
	return fflush(stdout) == EOF || ferror(stdout) ? 1 : 0;
}

int
main(int argc, char **argv)
{
	const char *cfpath = NULL, *sock = NULL;
	bool as_json = false;
	char line[1024] = "";
	json_t *doc, *err;
	int ch, code;

	while ((ch = getopt(argc, argv, "+c:s:jt:h")) != -1) {
		switch (ch) {
		case 'c': cfpath = optarg; break;
		case 's': sock = optarg; break;
		case 'j': as_json = true; break;
		case 't': {
			char *end;
			double v = strtod(optarg, &end);

			if (end == optarg || *end != '\0' || !(v > 0) || v > 86400) {
				fprintf(stderr, "heraldctl: -t wants seconds, more than 0 and at "
				    "most 86400: %s\n", optarg);
				return 1;
			}
			timeout_ms = (int)(v * 1000) > 0 ? (int)(v * 1000) : 1;
			break;
		}
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return 1;
	}
	if (cfpath != NULL && sock != NULL) {
		/* Which one would name the socket? */
		fprintf(stderr, "heraldctl: -c and -s are alternatives: give one\n");
		usage(stderr);
		return 1;
	}
	if (cfpath == NULL)
		cfpath = DEFAULT_CONFIG;
	if (strcmp(argv[optind], "counters") == 0)
		return cmd_counters(argc - optind, argv + optind);
	if (sock == NULL) {
		static struct config cf;
		char e[CONFIG_ERRLEN];

		if (config_load(&cf, cfpath, e, sizeof(e)) == -1) {
			fprintf(stderr, "heraldctl: %s\n", e);
			return 1;
		}
		sock = cf.admin_socket;
	}
	if (strcmp(argv[optind], "top") == 0)
		return cmd_top(sock, argc - optind, argv + optind);
	for (int i = optind; i < argc; i++) {
		if (strlen(line) + strlen(argv[i]) + 2 >= sizeof(line)) {
			fprintf(stderr, "heraldctl: command too long\n");
			return 1;
		}
		if (i > optind)
			strcat(line, " ");
		strcat(line, argv[i]);
	}
	doc = ctl_ask(sock, line);
	if (doc == NULL)
		return 1;
	err = json_object_get(doc, "error");
	if (strcmp(argv[optind], "workers") == 0 && !as_json && err == NULL)
		print_workers(doc);
	else {
		char *text = json_dumps(doc, JSON_INDENT(2) | JSON_SORT_KEYS);
		printf("%s\n", text);
		free(text);
	}
	code = err != NULL ? 1 : 0;
	if (err != NULL)
		fprintf(stderr, "heraldctl: %s\n", json_string_value(json_object_get(err, "message")));
	json_decref(doc);
	return code;
}
