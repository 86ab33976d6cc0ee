/*
 * herald-bench rtt: requests at a fixed rate (open loop: each is sent at its
 * scheduled time whatever the answers do) through herald's REST API, or with
 * --raw over bare MQTT to the same devices; round-trip percentiles.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>
#include <mosquitto.h>

#include "bench.h"
#include "mosq.h"
#include "util.h"

struct rtt_opts {
	const char *url, *token, *prefix, *file, *type, *params;
	const char *host, *username, *password;
	int port;
	size_t devices;
	double rate;
	uint64_t duration, count, wait, timeout;
	long conns;
	bool raw, json;
	pid_t herald_pid;
};

/* One request in flight; in raw mode a slot of the ring indexed by seq. */
struct rtt_req {
	struct rtt *r;
	uint64_t seq;
	uint64_t sched;                 /* when it was due (mono µs) */
	bool active;
	CURL *easy;
	char *body;
	size_t len, cap;
};

struct rtt_sock {
	struct event *ev;
	struct rtt *r;
};

struct rtt {
	struct rtt_opts o;
	struct event_base *base;
	struct bench_device *devs;
	size_t ndev;
	struct event *tick_ev, *sweep_ev, *sig_int, *sig_term, *curl_timer;
	uint64_t t0, k, total, t_last_sent, t_end, max_lag;
	bool sending_done, started;
	/* http */
	CURLM *multi;
	struct curl_slist *headers;
	char *body;                     /* {"type":..,"params":..} */
	struct rtt_req **free_reqs;
	size_t nfree, nfree_cap;
	struct rtt_req **all_reqs;      /* every easy handle made, for the exit */
	size_t nall, nall_cap;
	/* raw */
	struct mosquitto *m;
	struct mqev io;
	struct rtt_req *ring;
	size_t ring_cap;
	char prefix[64];
	/* results */
	uint64_t sent, completed, ok, dev_failed, timeouts, pending_202, unmatched, send_errors;
	json_t *errors, *states;
	struct hist lat;
	struct bench_herald herald;
	uint64_t inflight;
	int rc;
};

static const struct option rtt_longopts[] = {
	{ "url", required_argument, NULL, 'u' },
	{ "token", required_argument, NULL, 'T' },
	{ "devices", required_argument, NULL, 'n' },
	{ "id-prefix", required_argument, NULL, 'P' },
	{ "devices-file", required_argument, NULL, 'F' },
	{ "rate", required_argument, NULL, 'R' },
	{ "duration", required_argument, NULL, 'd' },
	{ "count", required_argument, NULL, 'c' },
	{ "wait", required_argument, NULL, 'w' },
	{ "timeout", required_argument, NULL, 't' },
	{ "type", required_argument, NULL, 'y' },
	{ "params", required_argument, NULL, 'a' },
	{ "conns", required_argument, NULL, 'C' },
	{ "raw", no_argument, NULL, 'r' },
	{ "host", required_argument, NULL, 'H' },
	{ "port", required_argument, NULL, 'p' },
	{ "username", required_argument, NULL, 'U' },
	{ "password", required_argument, NULL, 'W' },
	{ "herald-pid", required_argument, NULL, 'h' + 256 },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, '?' + 256 },
	{ NULL, 0, NULL, 0 }
};

static void
rtt_usage(FILE *out)
{
	fprintf(out,
"usage: herald-bench rtt [options]\n"
"Open-loop round trips: requests sent at fixed times whatever the answers,\n"
"spread over the devices in turn; latency counted from each scheduled time.\n"
"\n"
"  --url URL              herald's API base (http://127.0.0.1:8480): POST\n"
"                         URL/v1/devices/{id}/requests?wait=S\n"
"  --token T              bearer token for the API\n"
"  --devices N            devices <prefix>1..<prefix>N (10)\n"
"  --id-prefix P          (bench-)\n"
"  --devices-file F       \"id token [key]\" lines instead\n"
"  --rate R               requests per second, all devices together (100)\n"
"  --duration S           send for S seconds (10)\n"
"  --count N              send N requests instead\n"
"  --wait S               ?wait=S, and how long a round trip may take (10, at most 60)\n"
"  --timeout S            HTTP timeout of one call (wait + 5)\n"
"  --type T               request type (ping)\n"
"  --params JSON          request params ({})\n"
"  --conns N              at most N HTTP connections (512)\n"
"  --raw                  bare MQTT instead: publish to device/<id>/command, wait\n"
"                         for device/<id>/response (herald-bench fleet answers)\n"
"  --host H  --port P     broker for --raw (127.0.0.1:1883)\n"
"  --username U --password P   broker credentials for --raw\n"
"  --herald-pid PID       report CPU and RSS of PID and its descendants\n"
"  --json                 print the report as JSON\n");
}

static int
rtt_opts_parse(struct rtt_opts *o, int argc, char **argv)
{
	int c, li = 0;
	uint64_t v;
	json_t *j;

	memset(o, 0, sizeof(*o));
	o->url = "http://127.0.0.1:8480";    /* [api] listen default */
	o->prefix = "bench-";
	o->type = "ping";
	o->params = "{}";
	o->host = "127.0.0.1";
	o->port = 1883;
	o->devices = 10;
	o->rate = 100;
	o->duration = 10000000;
	o->wait = 10000000;
	o->conns = 512;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", rtt_longopts, &li)) != -1) {
		int bad = 0;

		switch (c) {
		case 'u': o->url = optarg; break;
		case 'T': o->token = optarg; break;
		case 'n': bad = bench_parse_u64(optarg, &v) || v == 0 || v > 10000000; o->devices = v; break;
		case 'P': o->prefix = optarg; break;
		case 'F': o->file = optarg; break;
		case 'R': bad = bench_parse_double(optarg, &o->rate) || o->rate <= 0 || o->rate > 1e6; break;
		case 'd': bad = bench_parse_duration(optarg, &o->duration); break;
		case 'c': bad = bench_parse_u64(optarg, &o->count) || o->count == 0; break;
		case 'w': bad = bench_parse_duration(optarg, &o->wait) || o->wait < 1000000 || o->wait > 60000000; break;
		case 't': bad = bench_parse_duration(optarg, &o->timeout); break;
		case 'y': o->type = optarg; break;
		case 'a':
			j = json_loads(optarg, 0, NULL);
			bad = !json_is_object(j);
			json_decref(j);
			o->params = optarg;
			break;
		case 'C': bad = bench_parse_u64(optarg, &v) || v == 0 || v > 100000; o->conns = (long)v; break;
		case 'r': o->raw = true; break;
		case 'H': o->host = optarg; break;
		case 'p': bad = bench_parse_u64(optarg, &v) || v == 0 || v > 65535; o->port = (int)v; break;
		case 'U': o->username = optarg; break;
		case 'W': o->password = optarg; break;
		case 'h' + 256: bad = bench_parse_u64(optarg, &v) || v == 0 || v > INT32_MAX; o->herald_pid = (pid_t)v; break;
		case 'j': o->json = true; break;
		case '?' + 256: rtt_usage(stdout); return 1;
		default: rtt_usage(stderr); return -1;
		}
		if (bad) {
			fprintf(stderr, "herald-bench rtt: bad value for --%s: %s\n",
			    rtt_longopts[li].name, optarg);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "herald-bench rtt: unexpected argument %s\n", argv[optind]);
		return -1;
	}
	if (o->timeout == 0)
		o->timeout = o->wait + 5000000;
	return 0;
}

static void
rtt_count_error(struct rtt *r, const char *what)
{
	json_t *n = json_object_get(r->errors, what);

	json_object_set_new(r->errors, what, json_integer(n ? json_integer_value(n) + 1 : 1));
}

static void
rtt_count_state(struct rtt *r, const char *state)
{
	json_t *n = json_object_get(r->states, state);

	json_object_set_new(r->states, state, json_integer(n ? json_integer_value(n) + 1 : 1));
}

static void rtt_maybe_end(struct rtt *r);

/* A round trip ended (answered by the device, either way). */
static void
rtt_done(struct rtt *r, uint64_t sched, bool success)
{
	uint64_t now = mono_us();

	r->completed++;
	if (success)
		r->ok++;
	else
		r->dev_failed++;
	hist_add(&r->lat, now > sched ? now - sched : 0);
}

/* --- HTTP: libcurl multi on the libevent loop ------------------------------ */

static size_t
rtt_write_cb(char *p, size_t size, size_t n, void *arg)
{
	struct rtt_req *q = arg;
	size_t len = size * n;

	if (q->len + len + 1 > q->cap) {
		size_t cap = q->cap ? q->cap : 1024;
		char *b;

		while (cap < q->len + len + 1)
			cap *= 2;
		if (cap > (1 << 20) || (b = realloc(q->body, cap)) == NULL)
			return 0;       /* a runaway answer fails the transfer */
		q->body = b;
		q->cap = cap;
	}
	memcpy(q->body + q->len, p, len);
	q->len += len;
	q->body[q->len] = '\0';
	return len;
}

/* Keep an idle easy handle (and its connection-reuse state) for the next request. */
static void
rtt_req_release(struct rtt *r, struct rtt_req *q)
{
	q->len = 0;
	q->active = false;
	if (r->nfree == r->nfree_cap) {
		size_t cap = r->nfree_cap ? r->nfree_cap * 2 : 64;
		struct rtt_req **n = realloc(r->free_reqs, cap * sizeof(*n));

		if (n == NULL)
			return;         /* not reused; freed at the exit */
		r->free_reqs = n;
		r->nfree_cap = cap;
	}
	r->free_reqs[r->nfree++] = q;
}

static void
rtt_http_finish(struct rtt *r, CURL *easy, CURLcode res)
{
	struct rtt_req *q = NULL;
	long code = 0;
	char what[48];

	curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&q);
	curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
	curl_multi_remove_handle(r->multi, easy);
	r->inflight--;
	if (res != CURLE_OK) {
		if (res == CURLE_OPERATION_TIMEDOUT) {
			r->timeouts++;
		} else {
			snprintf(what, sizeof(what), "curl: %s", curl_easy_strerror(res));
			rtt_count_error(r, what);
		}
	} else if (code == 200) {
		json_t *doc = json_loadb(q->body ? q->body : "", q->len, 0, NULL);
		const char *state = json_string_value(json_object_get(doc, "state"));

		rtt_count_state(r, state ? state : "(none)");
		if (state && strcmp(state, "confirmed") == 0)
			rtt_done(r, q->sched, true);
		else if (state && strcmp(state, "failed") == 0)
			rtt_done(r, q->sched, false);
		else if (state && (strcmp(state, "timeout") == 0 || strcmp(state, "expired") == 0))
			r->timeouts++;
		else
			rtt_count_error(r, "200 without an ended state");
		json_decref(doc);
	} else if (code == 202) {
		/* the wait ran out before the device answered */
		r->pending_202++;
		r->timeouts++;
	} else {
		snprintf(what, sizeof(what), "http %ld", code);
		rtt_count_error(r, what);
	}
	rtt_req_release(r, q);
}

static void
rtt_http_check(struct rtt *r)
{
	CURLMsg *msg;
	int left;

	while ((msg = curl_multi_info_read(r->multi, &left)) != NULL)
		if (msg->msg == CURLMSG_DONE)
			rtt_http_finish(r, msg->easy_handle, msg->data.result);
	rtt_maybe_end(r);
}

static void
rtt_sock_cb(evutil_socket_t fd, short what, void *arg)
{
	struct rtt *r = arg;
	int running, flags = 0;

	if (what & EV_READ)
		flags |= CURL_CSELECT_IN;
	if (what & EV_WRITE)
		flags |= CURL_CSELECT_OUT;
	curl_multi_socket_action(r->multi, fd, flags, &running);
	rtt_http_check(r);
}

static int
rtt_curl_socket(CURL *e, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct rtt *r = userp;
	struct rtt_sock *rs = socketp;
	short kind;

	if (what == CURL_POLL_REMOVE) {
		if (rs != NULL) {
			event_free(rs->ev);
			free(rs);
			curl_multi_assign(r->multi, s, NULL);
		}
		return 0;
	}
	kind = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
	    ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
	if (rs == NULL) {
		if ((rs = calloc(1, sizeof(*rs))) == NULL)
			return -1;
		rs->r = r;
		curl_multi_assign(r->multi, s, rs);
	} else {
		event_free(rs->ev);
	}
	rs->ev = event_new(r->base, s, kind, rtt_sock_cb, r);
	event_add(rs->ev, NULL);
	return 0;
}

static void
rtt_curl_timer_cb(evutil_socket_t s, short what, void *arg)
{
	struct rtt *r = arg;
	int running;

	curl_multi_socket_action(r->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	rtt_http_check(r);
}

static int
rtt_curl_timer(CURLM *multi, long ms, void *userp)
{
	struct rtt *r = userp;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	if (ms < 0)
		evtimer_del(r->curl_timer);
	else
		evtimer_add(r->curl_timer, &tv);
	return 0;
}

static void
rtt_http_send(struct rtt *r, const struct bench_device *d, uint64_t sched)
{
	struct rtt_req *q;
	char url[1024];
	char *esc;

	if (r->nfree > 0) {
		q = r->free_reqs[--r->nfree];
	} else {
		if (r->nall == r->nall_cap) {
			size_t cap = r->nall_cap ? r->nall_cap * 2 : 64;
			struct rtt_req **n = realloc(r->all_reqs, cap * sizeof(*n));

			if (n == NULL) {
				r->send_errors++;
				return;
			}
			r->all_reqs = n;
			r->nall_cap = cap;
		}
		if ((q = calloc(1, sizeof(*q))) == NULL || (q->easy = curl_easy_init()) == NULL) {
			free(q);
			r->send_errors++;
			return;
		}
		r->all_reqs[r->nall++] = q;
		q->r = r;
		curl_easy_setopt(q->easy, CURLOPT_PRIVATE, q);
		curl_easy_setopt(q->easy, CURLOPT_WRITEFUNCTION, rtt_write_cb);
		curl_easy_setopt(q->easy, CURLOPT_WRITEDATA, q);
		curl_easy_setopt(q->easy, CURLOPT_HTTPHEADER, r->headers);
		curl_easy_setopt(q->easy, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(q->easy, CURLOPT_TCP_NODELAY, 1L);
		curl_easy_setopt(q->easy, CURLOPT_TIMEOUT_MS, (long)(r->o.timeout / 1000));
	}
	esc = curl_easy_escape(q->easy, d->id, 0);
	snprintf(url, sizeof(url), "%s/v1/devices/%s/requests?wait=%" PRIu64, r->o.url,
	    esc ? esc : d->id, r->o.wait / 1000000);
	curl_free(esc);
	curl_easy_setopt(q->easy, CURLOPT_URL, url);
	curl_easy_setopt(q->easy, CURLOPT_COPYPOSTFIELDS, r->body);
	q->sched = sched;
	q->len = 0;
	q->active = true;
	if (curl_multi_add_handle(r->multi, q->easy) != CURLM_OK) {
		r->send_errors++;
		rtt_req_release(r, q);
		return;
	}
	r->inflight++;
	r->sent++;
}

/* --- raw MQTT --------------------------------------------------------------- */

static void
rtt_raw_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
	struct rtt *r = obj;
	json_t *doc = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL);
	const char *cid = json_string_value(json_object_get(doc, "commandId"));
	size_t plen = strlen(r->prefix);
	uint64_t seq;
	struct rtt_req *q;

	if (cid == NULL || strncmp(cid, r->prefix, plen) != 0 ||
	    bench_parse_u64(cid + plen, &seq) != 0) {
		r->unmatched++;         /* not ours: another client's request */
		json_decref(doc);
		return;
	}
	q = &r->ring[seq & (r->ring_cap - 1)];
	if (!q->active || q->seq != seq) {
		r->unmatched++;         /* late (already counted as a timeout) or repeated */
	} else {
		q->active = false;
		r->inflight--;
		rtt_done(r, q->sched, json_is_true(json_object_get(doc, "success")));
	}
	json_decref(doc);
	rtt_maybe_end(r);
}

static void
rtt_raw_subscribed(struct mosquitto *m, void *obj, int mid, int n, const int *granted)
{
	struct rtt *r = obj;
	struct timeval now = { 0, 0 };

	if (n < 1 || granted[0] > 2) {
		fprintf(stderr, "herald-bench rtt: subscription to device/+/response refused\n");
		r->rc = BENCH_EXIT_FAIL;
		event_base_loopexit(r->base, NULL);
		return;
	}
	r->started = true;
	r->t0 = mono_us();
	evtimer_add(r->tick_ev, &now);
}

static void
rtt_raw_connected(struct mosquitto *m, void *obj, int rc)
{
	struct rtt *r = obj;

	if (rc != 0) {
		fprintf(stderr, "herald-bench rtt: broker refused the connection: %s\n",
		    mosquitto_connack_string(rc));
		r->rc = BENCH_EXIT_FAIL;
		event_base_loopexit(r->base, NULL);
		return;
	}
	mosquitto_subscribe(m, NULL, "device/+/response", 1);
}

static void
rtt_raw_closed(struct mqev *io, void *arg)
{
	struct rtt *r = arg;

	fprintf(stderr, "herald-bench rtt: lost the broker connection\n");
	r->rc = BENCH_EXIT_FAIL;
	event_base_loopexit(r->base, NULL);
}

static void
rtt_raw_send(struct rtt *r, const struct bench_device *d, uint64_t sched)
{
	struct rtt_req *q = &r->ring[r->k & (r->ring_cap - 1)];
	char topic[192], body[4096], when[RFC3339_LEN];
	int n;

	if (q->active) {
		/* its slot is still waiting: the ring is sized for rate * wait, so it is late */
		q->active = false;
		r->inflight--;
		r->timeouts++;
	}
	fmt_rfc3339(now_ms() + (int64_t)(r->o.wait / 1000), when);
	snprintf(topic, sizeof(topic), "device/%s/command", d->id);
	/* r->body is {"type":..,"params":..}: put commandId first and expiresAt last */
	n = snprintf(body, sizeof(body), "{\"commandId\":\"%s%" PRIu64 "\",%.*s,\"expiresAt\":\"%s\"}",
	    r->prefix, r->k, (int)strlen(r->body) - 2, r->body + 1, when);
	if (n < 0 || (size_t)n >= sizeof(body)) {
		r->send_errors++;
		return;
	}
	q->seq = r->k;
	q->sched = sched;
	if (mosquitto_publish(r->m, NULL, topic, n, body, 1, false) != MOSQ_ERR_SUCCESS) {
		r->send_errors++;
		return;
	}
	q->active = true;
	r->inflight++;
	r->sent++;
	mqev_sync(&r->io);
}

/* Requests older than --wait without an answer are timeouts. */
static void
rtt_sweep_cb(evutil_socket_t s, short what, void *arg)
{
	struct rtt *r = arg;
	uint64_t now = mono_us();

	if (r->o.raw) {
		for (size_t i = 0; i < r->ring_cap; i++) {
			struct rtt_req *q = &r->ring[i];

			if (q->active && now - q->sched > r->o.wait) {
				q->active = false;
				r->inflight--;
				r->timeouts++;
			}
		}
		mosquitto_loop_misc(r->m);
		mqev_sync(&r->io);
	}
	bench_herald_sample(&r->herald);
	rtt_maybe_end(r);
}

/* --- the schedule ------------------------------------------------------------ */

static void
rtt_tick_cb(evutil_socket_t s, short what, void *arg)
{
	struct rtt *r = arg;
	uint64_t now = mono_us(), due, d;
	double period = 1e6 / r->o.rate;

	while (!r->sending_done) {
		due = r->t0 + (uint64_t)((double)r->k * period);
		if (due > now)
			break;
		if (now - due > r->max_lag)
			r->max_lag = now - due;
		if (r->o.raw)
			rtt_raw_send(r, &r->devs[r->k % r->ndev], due);
		else
			rtt_http_send(r, &r->devs[r->k % r->ndev], due);
		r->k++;
		if (r->k >= r->total) {
			r->sending_done = true;
			r->t_last_sent = mono_us();
		}
	}
	if (!r->sending_done) {
		due = r->t0 + (uint64_t)((double)r->k * period);
		d = due > now ? due - now : 0;
		struct timeval tv = { (time_t)(d / 1000000), (suseconds_t)(d % 1000000) };
		evtimer_add(r->tick_ev, &tv);
	}
	rtt_maybe_end(r);
}

static void
rtt_maybe_end(struct rtt *r)
{
	if (r->sending_done && r->inflight == 0 && r->t_end == 0) {
		r->t_end = mono_us();
		event_base_loopexit(r->base, NULL);
	}
}

static void
rtt_signal_cb(evutil_socket_t s, short what, void *arg)
{
	struct rtt *r = arg;

	if (!r->sending_done) {
		r->sending_done = true;         /* stop sending; wait for what is in flight */
		r->t_last_sent = mono_us();
		rtt_maybe_end(r);
	} else {
		r->t_end = mono_us();
		event_base_loopexit(r->base, NULL);
	}
}

static void
rtt_report(struct rtt *r)
{
	uint64_t errs = 0;
	double span = r->t_last_sent > r->t0 ? (double)(r->t_last_sent - r->t0) / 1e6 : 0;
	/* n sends span n - 1 intervals */
	double rate = span > 0 && r->sent > 1 ? (double)(r->sent - 1) / span : 0;
	const char *key;
	json_t *v, *doc;

	json_object_foreach(r->errors, key, v)
		errs += (uint64_t)json_integer_value(v);
	errs += r->send_errors;
	doc = json_pack("{ss ss sI sf sI sI sI sI sI sI sI sI sI sf sf}",
	    "command", "rtt", "mode", r->o.raw ? "raw" : "http",
	    "devices", (json_int_t)r->ndev, "rate", r->o.rate,
	    "sent", (json_int_t)r->sent, "completed", (json_int_t)r->completed,
	    "ok", (json_int_t)r->ok, "device_failed", (json_int_t)r->dev_failed,
	    "timeouts", (json_int_t)r->timeouts, "errors", (json_int_t)errs,
	    "send_errors", (json_int_t)r->send_errors, "unmatched", (json_int_t)r->unmatched,
	    "max_send_lag_us", (json_int_t)r->max_lag,
	    "achieved_rate", rate,
	    "elapsed_s", (double)((r->t_end ? r->t_end : mono_us()) - r->t0) / 1e6);
	if (r->o.raw) {
		char target[300];

		snprintf(target, sizeof(target), "mqtt://%s:%d", r->o.host, r->o.port);
		json_object_set_new(doc, "target", json_string(target));
	} else {
		json_object_set_new(doc, "target", json_string(r->o.url));
		json_object_set_new(doc, "answered_202", json_integer((json_int_t)r->pending_202));
		json_object_set_new(doc, "states", json_incref(r->states));
	}
	json_object_set_new(doc, "unfinished", json_integer((json_int_t)r->inflight));
	json_object_set_new(doc, "error_kinds", json_incref(r->errors));
	json_object_set_new(doc, "latency_us", hist_json(&r->lat));
	if (r->herald.pid > 0)
		json_object_set_new(doc, "herald", bench_herald_json(&r->herald, r->sent));
	if (r->o.json) {
		bench_json_print(stdout, doc);
	} else {
		printf("rtt (%s) %s: %" PRIu64 " sent at %.0f/s to %zu devices in %.1f s\n",
		    r->o.raw ? "raw MQTT" : "REST API", json_string_value(json_object_get(doc, "target")),
		    r->sent, rate, r->ndev, span);
		printf("  completed %" PRIu64 " (ok %" PRIu64 ", device failed %" PRIu64 "), timeouts %"
		    PRIu64 ", errors %" PRIu64 ", unfinished %" PRIu64 ", unmatched %" PRIu64
		    ", max send lag %.1f ms\n", r->completed, r->ok, r->dev_failed, r->timeouts, errs,
		    r->inflight, r->unmatched, (double)r->max_lag / 1e3);
		json_object_foreach(r->errors, key, v)
			printf("    %s: %lld\n", key, (long long)json_integer_value(v));
		hist_print_ms(stdout, "  round trip", &r->lat);
		fflush(stdout);
	}
	json_decref(doc);
}

static int
rtt_raw_setup(struct rtt *r)
{
	char id[64];
	int rc;

	r->ring_cap = 1024;
	while ((double)r->ring_cap < r->o.rate * ((double)r->o.wait / 1e6 + 2))
		r->ring_cap *= 2;
	if ((r->ring = calloc(r->ring_cap, sizeof(*r->ring))) == NULL)
		return -1;
	snprintf(r->prefix, sizeof(r->prefix), "rtt-%d-", (int)getpid());
	snprintf(id, sizeof(id), "herald-bench-rtt-%d", (int)getpid());
	r->m = mosq_new(id, true, r, false);
	if (r->m == NULL)
		return -1;
	mosquitto_int_option(r->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
	/* small packets both ways: Nagle plus delayed ACKs would add 40 ms */
	mosquitto_int_option(r->m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_max_inflight_messages_set(r->m, 0);   /* no cap: open loop */
	if (r->o.username)
		mosquitto_username_pw_set(r->m, r->o.username, r->o.password);
	mosquitto_connect_callback_set(r->m, rtt_raw_connected);
	mosquitto_subscribe_callback_set(r->m, rtt_raw_subscribed);
	mosquitto_message_callback_set(r->m, rtt_raw_message);
	rc = mosquitto_connect_async(r->m, r->o.host, r->o.port, 60);
	if (rc != MOSQ_ERR_SUCCESS) {
		fprintf(stderr, "herald-bench rtt: %s:%d: %s\n", r->o.host, r->o.port,
		    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
		return -1;
	}
	r->io.m = r->m;
	r->io.closed = rtt_raw_closed;
	r->io.arg = r;
	return mqev_attach(&r->io, r->base);
}

static int
rtt_http_setup(struct rtt *r)
{
	char auth[1024];
	struct timeval now = { 0, 0 };

	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || (r->multi = curl_multi_init()) == NULL)
		return -1;
	curl_multi_setopt(r->multi, CURLMOPT_SOCKETFUNCTION, rtt_curl_socket);
	curl_multi_setopt(r->multi, CURLMOPT_SOCKETDATA, r);
	curl_multi_setopt(r->multi, CURLMOPT_TIMERFUNCTION, rtt_curl_timer);
	curl_multi_setopt(r->multi, CURLMOPT_TIMERDATA, r);
	curl_multi_setopt(r->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, r->o.conns);
	curl_multi_setopt(r->multi, CURLMOPT_MAXCONNECTS, r->o.conns);
	r->curl_timer = evtimer_new(r->base, rtt_curl_timer_cb, r);
	r->headers = curl_slist_append(NULL, "Content-Type: application/json");
	r->headers = curl_slist_append(r->headers, "Expect:");
	if (r->o.token) {
		snprintf(auth, sizeof(auth), "Authorization: Bearer %s", r->o.token);
		r->headers = curl_slist_append(r->headers, auth);
	}
	r->started = true;
	r->t0 = mono_us();
	evtimer_add(r->tick_ev, &now);
	return 0;
}

int
rtt_main(int argc, char **argv)
{
	struct rtt *r = calloc(1, sizeof(*r));
	struct timeval sweep = { 0, 100000 };
	int rc;

	if (r == NULL)
		return BENCH_EXIT_FAIL;
	if ((rc = rtt_opts_parse(&r->o, argc, argv)) != 0) {
		free(r);
		return rc > 0 ? BENCH_EXIT_OK : BENCH_EXIT_USAGE;
	}
	if (r->o.file ? bench_devices_load(r->o.file, &r->devs, &r->ndev) :
	    bench_devices_generate(r->o.prefix, r->o.devices, NULL, &r->devs, &r->ndev)) {
		free(r);
		return BENCH_EXIT_USAGE;
	}
	{
		json_t *params = json_loads(r->o.params, 0, NULL);
		json_t *b = json_pack("{ss so}", "type", r->o.type, "params", params);

		r->body = b ? json_dumps(b, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
		json_decref(b);
		if (r->body == NULL)
			return BENCH_EXIT_USAGE;
	}
	r->total = r->o.count ? r->o.count : (uint64_t)(r->o.rate * (double)r->o.duration / 1e6);
	if (r->total == 0)
		r->total = 1;
	bench_raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	hist_init(&r->lat);
	r->errors = json_object();
	r->states = json_object();
	r->rc = BENCH_EXIT_OK;
	if ((r->base = bench_event_base()) == NULL)
		return BENCH_EXIT_FAIL;
	r->tick_ev = evtimer_new(r->base, rtt_tick_cb, r);
	r->sweep_ev = event_new(r->base, -1, EV_PERSIST, rtt_sweep_cb, r);
	r->sig_int = evsignal_new(r->base, SIGINT, rtt_signal_cb, r);
	r->sig_term = evsignal_new(r->base, SIGTERM, rtt_signal_cb, r);
	event_add(r->sig_int, NULL);
	event_add(r->sig_term, NULL);
	event_add(r->sweep_ev, &sweep);
	bench_herald_begin(&r->herald, r->o.herald_pid);
	if (r->o.raw) {
		mosquitto_lib_init();
		rc = rtt_raw_setup(r);
	} else {
		rc = rtt_http_setup(r);
	}
	if (rc == 0)
		event_base_dispatch(r->base);
	else
		r->rc = BENCH_EXIT_FAIL;
	bench_herald_end(&r->herald);
	if (r->started)
		rtt_report(r);
	if (r->rc == BENCH_EXIT_OK && r->sent > 0 && r->completed == 0)
		r->rc = BENCH_EXIT_FAIL;        /* not one round trip: something is down */
	rc = r->rc;
	/* cleanup */
	if (r->o.raw) {
		mqev_detach(&r->io);
		if (r->m)
			mosquitto_destroy(r->m);
		mosquitto_lib_cleanup();
		free(r->ring);
	} else if (r->multi) {
		for (size_t i = 0; i < r->nall; i++) {
			struct rtt_req *q = r->all_reqs[i];

			if (q->active)          /* still in flight: stopped by a signal */
				curl_multi_remove_handle(r->multi, q->easy);
			curl_easy_cleanup(q->easy);
			free(q->body);
			free(q);
		}
		free(r->all_reqs);
		free(r->free_reqs);
		curl_multi_cleanup(r->multi);
		curl_slist_free_all(r->headers);
		event_free(r->curl_timer);
		curl_global_cleanup();
	}
	event_free(r->tick_ev);
	event_free(r->sweep_ev);
	event_free(r->sig_int);
	event_free(r->sig_term);
	event_base_free(r->base);
	json_decref(r->errors);
	json_decref(r->states);
	bench_devices_free(r->devs, r->ndev);
	free(r->body);
	free(r);
	return rc;
}
