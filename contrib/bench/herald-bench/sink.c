/*
 * herald-bench sink: a backend that checks what herald delivers.  Verifies
 * Standard Webhooks signatures, counts every envelope per device and kind,
 * finds loss, duplicates and reordering, measures latency, misbehaves on a schedule.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "bench.h"
#include "webhook.h"
#include "jsoncheck.h"
#include "util.h"

#define SINK_MAX_PHASES 64
#define SINK_MAX_RULES 16
#define SINK_CODES 600
#define SINK_FIELD_MAX 256              /* longest id, device, ... counted */

/* What the sink needs of one envelope. */
struct env_view {
	bool ok;                        /* id, device, kind, receivedAt strings; payload an object */
	char id[SINK_FIELD_MAX], device[SINK_FIELD_MAX], kind[32];
	bool has_seq, has_ts, has_pdev, has_state;
	int64_t seq, ts;                /* payload's, when integers */
	char pdev[SINK_FIELD_MAX], state[64];
};

enum sink_mode { SM_OK, SM_CODE, SM_REFUSE };

struct sink_phase {
	enum sink_mode mode;
	int code;
	uint64_t dur;                   /* µs; 0 = until the end */
};

struct sink_rule {                      /* CODE@device=ID */
	int code;
	char *device;
};

/* An answer held back by --delay-ms; listed so the exit can answer and free it. */
struct sink_reply {
	struct evhttp_request *req;
	int code;
	struct sink *k;
	struct event *ev;
	uint64_t distinct;              /* GET /wait: answer once this many are counted */
	int kind;                       /* of this kind (enum track_kind), or -1: all */
	LIST_ENTRY(sink_reply) link;
};

struct sink_opts {
	char host[64];
	int port;
	uint8_t *key;
	size_t keylen;
	uint64_t tolerance, delay, timeout, expect, retry_after, max_body;
	struct sink_phase phase[SINK_MAX_PHASES + 1];   /* + the "ok" after the last */
	int nphases;
	struct sink_rule rule[SINK_MAX_RULES];
	int nrules;
	bool json, per_device, have_expect;
	const char *seq_in;
	pid_t herald_pid;
};

struct sink {
	struct sink_opts o;
	struct event_base *base;
	struct evhttp *http;
	struct evhttp_bound_socket *bound;
	struct event *phase_ev, *rebind_ev, *sig_usr1, *sig_term, *sig_int, *timeout_ev,
	    *sec_ev, *exit_ev;
	struct track *track;
	struct hist lat, lat_kind[TK_NKINDS];
	int cur;                        /* phase index */
	uint64_t t_start, refuse_since, refused_us;
	uint64_t requests, answers[SINK_CODES], refused_requests, rebind_failures;
	uint64_t malformed, dev_mismatch, id_mismatch, negative_latency, rejected_rule;
	uint64_t sig_ok, sig_bad, sig_missing, sig_stale;
	uint64_t batches, batch_envelopes, max_batch;
	uint64_t first_us, last_us, max_silence_us;  /* mono, of accepted requests */
	struct bench_herald herald;
	json_t *req_states;             /* kind "request" envelopes per payload state */
	struct env_view *views;         /* the envelopes of the body being counted */
	size_t nviews_cap;
	struct jsoncheck jc;
	LIST_HEAD(, sink_reply) delayed;
	LIST_HEAD(, sink_reply) waiters;        /* GET /wait, until their count */
	bool finishing;
	int exit_code;
};

static const struct option sink_longopts[] = {
	{ "listen", required_argument, NULL, 'l' },
	{ "secret", required_argument, NULL, 's' },
	{ "tolerance", required_argument, NULL, 't' },
	{ "delay-ms", required_argument, NULL, 'd' },
	{ "schedule", required_argument, NULL, 'S' },
	{ "retry-after", required_argument, NULL, 'r' },
	{ "expect", required_argument, NULL, 'e' },
	{ "timeout", required_argument, NULL, 'T' },
	{ "seq-in", required_argument, NULL, 'i' },
	{ "max-body", required_argument, NULL, 'b' },
	{ "per-device", no_argument, NULL, 'D' },
	{ "herald-pid", required_argument, NULL, 'h' + 256 },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, '?' + 256 },
	{ NULL, 0, NULL, 0 }
};

static void
sink_usage(FILE *out)
{
	fprintf(out,
"usage: herald-bench sink [options]\n"
"An HTTP backend for herald: counts envelopes (SPEC 2) per device and kind,\n"
"finds loss, duplicates and reordering from the payloads' seq, measures latency\n"
"from their ts.  GET /report answers the JSON report; GET /wait?distinct=N\n"
"[&kind=K][&timeout_ms=T] answers 200 once N distinct messages (of kind K) are\n"
"counted, 504 after T ms (60000): the end of a run without polling;  SIGUSR1\n"
"prints the summary; SIGTERM prints the final report and exits 0.\n"
"\n"
"  --listen [H:]P         address to listen on (127.0.0.1:0 = a free port); the\n"
"                         first stdout line is \"listening H:P\"\n"
"  --secret S             verify Standard Webhooks signatures (whsec_<base64> or raw)\n"
"  --tolerance S          reject webhook-timestamp further than S from now (300; 0 = off)\n"
"  --delay-ms MS          answer every request MS milliseconds late\n"
"  --schedule SPEC        phases from the start, comma-separated: CODE:DUR answers\n"
"                         CODE, refuse:DUR closes the listening socket, ok[:DUR]\n"
"                         answers normally; after the last phase: ok.  Rules:\n"
"                         CODE@device=ID answers CODE to any body with that device\n"
"                         e.g. \"ok:5s,503:20s,refuse:20s,ok,400@device=d7\"\n"
"  --retry-after S        add Retry-After: S to error answers\n"
"  --expect N             exit 0 once N distinct messages are counted\n"
"  --timeout S            exit 1 after S seconds if --expect is not reached\n"
"  --seq-in FILE          fleet's --seq-out: count messages missing at the tail too\n"
"  --max-body B           largest body accepted (64 MiB)\n"
"  --per-device           per-device counts in the reports\n"
"  --herald-pid PID       report CPU and RSS of PID and its descendants\n"
"  --json                 print reports as JSON\n");
}

static int
sink_schedule_parse(struct sink_opts *o, const char *spec)
{
	char *copy = strdup(spec), *save = NULL, *item;

	if (copy == NULL)
		return -1;
	for (item = strtok_r(copy, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
		char *at = strchr(item, '@'), *colon;
		struct sink_phase *p;
		uint64_t v;

		while (*item == ' ')
			item++;
		if (at != NULL) {
			*at = '\0';
			if (o->nrules == SINK_MAX_RULES || bench_parse_u64(item, &v) || v < 100 ||
			    v > 599 || strncmp(at + 1, "device=", 7) != 0 || at[8] == '\0')
				goto bad;
			o->rule[o->nrules].code = (int)v;
			o->rule[o->nrules++].device = strdup(at + 8);
			continue;
		}
		if (o->nphases == SINK_MAX_PHASES)
			goto bad;
		p = &o->phase[o->nphases++];
		colon = strchr(item, ':');
		if (colon != NULL) {
			*colon = '\0';
			if (bench_parse_duration(colon + 1, &p->dur) || p->dur == 0)
				goto bad;
		}
		if (strcmp(item, "ok") == 0) {
			p->mode = SM_OK;
		} else if (strcmp(item, "refuse") == 0) {
			p->mode = SM_REFUSE;
		} else if (bench_parse_u64(item, &v) == 0 && v >= 100 && v <= 599) {
			p->mode = SM_CODE;
			p->code = (int)v;
		} else {
			goto bad;
		}
		if (p->dur == 0 && p->mode != SM_OK)
			goto bad;       /* only "ok" may last forever */
	}
	free(copy);
	return 0;
bad:
	fprintf(stderr, "herald-bench sink: bad --schedule item: %s\n", item);
	free(copy);
	return -1;
}

static int
sink_opts_parse(struct sink_opts *o, int argc, char **argv)
{
	int c, li = 0;
	uint64_t v;

	memset(o, 0, sizeof(*o));
	strlcpy_h(o->host, "127.0.0.1", sizeof(o->host));
	o->tolerance = 300000000;
	o->max_body = 64 << 20;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", sink_longopts, &li)) != -1) {
		int bad = 0;

		switch (c) {
		case 'l': bad = bench_parse_hostport(optarg, o->host, sizeof(o->host), &o->port); break;
		case 's':
			free(o->key);
			bad = webhook_secret_parse(optarg, &o->key, &o->keylen);
			break;
		case 't': bad = bench_parse_duration(optarg, &o->tolerance); break;
		case 'd': bad = bench_parse_u64(optarg, &v); o->delay = v * 1000; break;
		case 'S': if (sink_schedule_parse(o, optarg)) return -1; break;
		case 'r': bad = bench_parse_u64(optarg, &o->retry_after); break;
		case 'e': bad = bench_parse_u64(optarg, &o->expect); o->have_expect = true; break;
		case 'T': bad = bench_parse_duration(optarg, &o->timeout); break;
		case 'i': o->seq_in = optarg; break;
		case 'b': bad = bench_parse_u64(optarg, &o->max_body) || o->max_body == 0; break;
		case 'D': o->per_device = true; break;
		case 'h' + 256: bad = bench_parse_u64(optarg, &v) || v == 0 || v > INT32_MAX; o->herald_pid = (pid_t)v; break;
		case 'j': o->json = true; break;
		case '?' + 256: sink_usage(stdout); return 1;
		default: sink_usage(stderr); return -1;
		}
		if (bad) {
			fprintf(stderr, "herald-bench sink: bad value for --%s: %s\n",
			    sink_longopts[li].name, optarg);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "herald-bench sink: unexpected argument %s\n", argv[optind]);
		return -1;
	}
	return 0;
}

/* --- listening ------------------------------------------------------------- */

static int
sink_listen(struct sink *k)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	int fd, one = 1;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)k->o.port);
	if (inet_pton(AF_INET, k->o.host, &sa.sin_addr) != 1) {
		fprintf(stderr, "herald-bench sink: %s is not an IPv4 address\n", k->o.host);
		return -1;
	}
	if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) == -1)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == -1 || listen(fd, 4096) == -1 ||
	    getsockname(fd, (struct sockaddr *)&sa, &len) == -1) {
		close(fd);
		return -1;
	}
	k->o.port = ntohs(sa.sin_port);         /* a rebind after "refuse" takes the same port */
	if ((k->bound = evhttp_accept_socket_with_handle(k->http, fd)) == NULL) {
		close(fd);
		return -1;
	}
	return 0;
}

static void
sink_rebind_cb(evutil_socket_t s, short what, void *arg)
{
	struct sink *k = arg;
	struct timeval tv = { 0, 100000 };

	if (k->bound != NULL || k->o.phase[k->cur].mode == SM_REFUSE)
		return;
	if (sink_listen(k) == -1) {
		/* the port may be held for a moment by a connection's ephemeral end */
		k->rebind_failures++;
		evtimer_add(k->rebind_ev, &tv);
	}
}

static void
sink_phase_enter(struct sink *k, int i)
{
	uint64_t now = mono_us();

	k->cur = i;
	if (k->o.phase[i].mode == SM_REFUSE) {
		if (k->bound != NULL) {
			evhttp_del_accept_socket(k->http, k->bound);
			k->bound = NULL;
			k->refuse_since = now;
		}
	} else {
		if (k->refuse_since) {
			k->refused_us += now - k->refuse_since;
			k->refuse_since = 0;
		}
		sink_rebind_cb(-1, 0, k);
	}
	if (k->o.phase[i].dur) {
		struct timeval tv = { (time_t)(k->o.phase[i].dur / 1000000),
			(suseconds_t)(k->o.phase[i].dur % 1000000) };
		evtimer_add(k->phase_ev, &tv);
	}
}

static void
sink_phase_cb(evutil_socket_t s, short what, void *arg)
{
	struct sink *k = arg;

	if (k->cur + 1 < k->o.nphases)
		sink_phase_enter(k, k->cur + 1);
	else {
		/* after the last phase: back to normal */
		k->o.phase[k->o.nphases].mode = SM_OK;
		k->o.phase[k->o.nphases].dur = 0;
		sink_phase_enter(k, k->o.nphases);
	}
}

/* --- the report ------------------------------------------------------------ */

static json_t *
sink_counts_json(const struct track_counts *c)
{
	return json_pack("{sI sI sI sI sI sI sI sI}",
	    "envelopes", (json_int_t)c->envelopes,
	    "distinct", (json_int_t)c->distinct,
	    "unsequenced", (json_int_t)c->unsequenced,
	    "lost", (json_int_t)c->gaps,
	    "duplicates", (json_int_t)c->dup_ids,
	    "seq_repeats", (json_int_t)c->seq_repeats,
	    "reordered", (json_int_t)c->reordered,
	    "seq_invalid", (json_int_t)c->seq_invalid);
}

static json_t *
sink_report_json(struct sink *k, bool per_device)
{
	struct track_counts tot;
	json_t *doc, *kinds, *answers, *o;
	uint64_t now = mono_us(), span, refused = k->refused_us;
	uint64_t missing = 0, expected = 0;

	track_total(k->track, &tot);
	span = k->last_us > k->first_us ? k->last_us - k->first_us : 0;
	if (k->refuse_since)
		refused += now - k->refuse_since;
	doc = json_pack("{ss ss si sf sI}", "command", "sink", "host", k->o.host,
	    "port", k->o.port, "elapsed_s", (double)(now - k->t_start) / 1e6,
	    "requests", (json_int_t)k->requests);
	answers = json_object();
	for (int c = 0; c < SINK_CODES; c++) {
		char name[16];

		if (k->answers[c] == 0)
			continue;
		snprintf(name, sizeof(name), "%d", c);
		json_object_set_new(answers, name, json_integer((json_int_t)k->answers[c]));
	}
	json_object_set_new(doc, "answers", answers);
	json_object_set_new(doc, "refused_requests", json_integer((json_int_t)k->refused_requests));
	json_object_set_new(doc, "refused_s", json_real((double)refused / 1e6));
	json_object_set_new(doc, "envelopes", json_integer((json_int_t)tot.envelopes));
	json_object_set_new(doc, "distinct", json_integer((json_int_t)tot.distinct));
	json_object_set_new(doc, "unsequenced", json_integer((json_int_t)tot.unsequenced));
	json_object_set_new(doc, "lost", json_integer((json_int_t)tot.gaps));
	if (k->o.seq_in != NULL) {
		if (track_missing_from_file(k->track, k->o.seq_in, &missing, &expected) == 0) {
			json_object_set_new(doc, "missing", json_integer((json_int_t)missing));
			json_object_set_new(doc, "expected", json_integer((json_int_t)expected));
		} else {
			json_object_set_new(doc, "missing", json_null());
		}
	}
	json_object_set_new(doc, "duplicates", json_integer((json_int_t)tot.dup_ids));
	json_object_set_new(doc, "seq_repeats", json_integer((json_int_t)tot.seq_repeats));
	json_object_set_new(doc, "reordered", json_integer((json_int_t)tot.reordered));
	json_object_set_new(doc, "seq_invalid", json_integer((json_int_t)tot.seq_invalid));
	json_object_set_new(doc, "malformed", json_integer((json_int_t)k->malformed));
	json_object_set_new(doc, "rejected_by_rule", json_integer((json_int_t)k->rejected_rule));
	json_object_set_new(doc, "dev_mismatch", json_integer((json_int_t)k->dev_mismatch));
	json_object_set_new(doc, "webhook_id_mismatch", json_integer((json_int_t)k->id_mismatch));
	json_object_set_new(doc, "signatures", json_pack("{sb sI sI sI sI}",
	    "checked", k->o.key != NULL,
	    "ok", (json_int_t)k->sig_ok, "bad", (json_int_t)k->sig_bad,
	    "missing", (json_int_t)k->sig_missing, "stale", (json_int_t)k->sig_stale));
	json_object_set_new(doc, "devices", json_integer((json_int_t)track_devices(k->track)));
	json_object_set_new(doc, "batches", json_pack("{sI sI sf}",
	    "arrays", (json_int_t)k->batches, "max", (json_int_t)k->max_batch,
	    "mean", k->batches ? (double)k->batch_envelopes / (double)k->batches : 0.0));
	json_object_set_new(doc, "rate_msgs_s",
	    json_real(span ? (double)tot.distinct * 1e6 / (double)span : 0));
	json_object_set_new(doc, "longest_silence_ms", json_real((double)k->max_silence_us / 1e3));
	o = hist_json(&k->lat);
	json_object_set_new(doc, "latency_us", o);
	json_object_set_new(doc, "negative_latency", json_integer((json_int_t)k->negative_latency));
	kinds = json_object();
	for (int i = 0; i < TK_NKINDS; i++) {
		const struct track_counts *c = track_counts(k->track, (enum track_kind)i);

		if (c->envelopes == 0)
			continue;
		o = sink_counts_json(c);
		json_object_set_new(o, "latency_us", hist_json(&k->lat_kind[i]));
		json_object_set_new(kinds, track_kind_names[i], o);
	}
	json_object_set_new(doc, "kinds", kinds);
	json_object_set_new(doc, "request_states", json_incref(k->req_states));
	if (k->herald.pid > 0) {
		bench_herald_end(&k->herald);
		json_object_set_new(doc, "herald", bench_herald_json(&k->herald, tot.distinct));
	}
	if (per_device)
		json_object_set_new(doc, "per_device", track_devices_json(k->track));
	return doc;
}

static void
sink_report_print(struct sink *k, FILE *out)
{
	json_t *doc = sink_report_json(k, k->o.per_device && k->o.json);
	struct track_counts tot;

	if (k->o.json) {
		bench_json_print(out, doc);
		json_decref(doc);
		return;
	}
	track_total(k->track, &tot);
	fprintf(out, "sink %s:%d: %" PRIu64 " requests in %.1f s",
	    k->o.host, k->o.port, k->requests, json_real_value(json_object_get(doc, "elapsed_s")));
	for (int c = 0; c < SINK_CODES; c++)
		if (k->answers[c])
			fprintf(out, ", %d: %" PRIu64, c, k->answers[c]);
	if (k->refused_requests)
		fprintf(out, ", cut: %" PRIu64, k->refused_requests);
	fprintf(out, "\n  envelopes %" PRIu64 ", distinct %" PRIu64 " (%.0f msgs/s) from %zu devices\n",
	    tot.envelopes, tot.distinct, json_real_value(json_object_get(doc, "rate_msgs_s")),
	    track_devices(k->track));
	fprintf(out, "  lost %" PRIu64, tot.gaps);
	if (json_is_integer(json_object_get(doc, "missing")))
		fprintf(out, " (missing against --seq-in: %lld of %lld)",
		    (long long)json_integer_value(json_object_get(doc, "missing")),
		    (long long)json_integer_value(json_object_get(doc, "expected")));
	fprintf(out, ", duplicates %" PRIu64 ", seq repeats %" PRIu64 ", reordered %" PRIu64
	    ", unsequenced %" PRIu64 ", invalid seq %" PRIu64 ", malformed %" PRIu64 "\n",
	    tot.dup_ids, tot.seq_repeats, tot.reordered, tot.unsequenced, tot.seq_invalid,
	    k->malformed);
	for (int i = 0; i < TK_NKINDS; i++) {
		const struct track_counts *c = track_counts(k->track, (enum track_kind)i);

		if (c->envelopes)
			fprintf(out, "  %-10s distinct %" PRIu64 ", lost %" PRIu64 ", duplicates %" PRIu64
			    ", seq repeats %" PRIu64 ", reordered %" PRIu64 "\n", track_kind_names[i],
			    c->distinct, c->gaps, c->dup_ids, c->seq_repeats, c->reordered);
	}
	if (k->o.key != NULL)
		fprintf(out, "  signatures ok %" PRIu64 ", bad %" PRIu64 ", missing %" PRIu64
		    ", stale %" PRIu64 "\n", k->sig_ok, k->sig_bad, k->sig_missing, k->sig_stale);
	hist_print_ms(out, "  latency", &k->lat);
	fprintf(out, "  longest silence %.1f ms\n", (double)k->max_silence_us / 1e3);
	if (k->herald.pid > 0) {
		json_t *h = json_object_get(doc, "herald");

		fprintf(out, "  herald pid %d: %.2f us CPU per message, RSS %lld -> %lld kB (max %lld)\n",
		    (int)k->herald.pid, json_real_value(json_object_get(h, "cpu_us_per_msg")),
		    (long long)json_integer_value(json_object_get(h, "rss_kb_start")),
		    (long long)json_integer_value(json_object_get(h, "rss_kb_end")),
		    (long long)json_integer_value(json_object_get(h, "rss_kb_max")));
	}
	fflush(out);
	json_decref(doc);
}

static void
sink_finish(struct sink *k, int code)
{
	/* let the answer to the last request go out first */
	uint64_t d = k->o.delay + 50000;
	struct timeval tv = { (time_t)(d / 1000000), (suseconds_t)(d % 1000000) };

	if (k->finishing)
		return;
	k->finishing = true;
	k->exit_code = code;
	evtimer_add(k->exit_ev, &tv);
}

/* --- requests -------------------------------------------------------------- */


static void
sink_send(struct sink *k, struct evhttp_request *req, int code, const char *body)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(req);
	struct evbuffer *buf = NULL;
	char ra[32];

	if (code >= 0 && code < SINK_CODES)
		k->answers[code]++;
	if (code >= 400 && k->o.retry_after) {
		snprintf(ra, sizeof(ra), "%" PRIu64, k->o.retry_after);
		evhttp_add_header(h, "Retry-After", ra);
	}
	if (body != NULL) {
		evhttp_add_header(h, "Content-Type", "application/json");
		buf = evbuffer_new();
		evbuffer_add(buf, body, strlen(body));
	}
	evhttp_send_reply(req, code, code < 300 ? "OK" : "Error", buf);
	if (buf)
		evbuffer_free(buf);
}

static void
sink_reply_cb(evutil_socket_t s, short what, void *arg)
{
	struct sink_reply *r = arg;

	/* if the client went away meanwhile, libevent detached the request and
	 * sending just frees it */
	sink_send(r->k, r->req, r->code, NULL);
	LIST_REMOVE(r, link);
	event_free(r->ev);
	free(r);
}

static void
sink_answer(struct sink *k, struct evhttp_request *req, int code)
{
	struct sink_reply *r;
	struct timeval tv = { (time_t)(k->o.delay / 1000000), (suseconds_t)(k->o.delay % 1000000) };

	if (k->o.delay == 0 || (r = calloc(1, sizeof(*r))) == NULL) {
		sink_send(k, req, code, NULL);
		return;
	}
	r->req = req;
	r->code = code;
	r->k = k;
	if ((r->ev = evtimer_new(k->base, sink_reply_cb, r)) == NULL || evtimer_add(r->ev, &tv) == -1) {
		if (r->ev)
			event_free(r->ev);
		free(r);
		sink_send(k, req, code, NULL);
		return;
	}
	LIST_INSERT_HEAD(&k->delayed, r, link);
}

/* --- GET /wait: the end of a run without polling the report ---------------- */

static uint64_t
sink_distinct(const struct sink *k, int kind)
{
	struct track_counts tot;

	if (kind >= 0)
		return track_counts(k->track, (enum track_kind)kind)->distinct;
	track_total(k->track, &tot);
	return tot.distinct;
}

static void
sink_wait_answer(struct sink_reply *r, int code)
{
	char body[64];

	snprintf(body, sizeof(body), "{\"distinct\": %" PRIu64 "}", sink_distinct(r->k, r->kind));
	sink_send(r->k, r->req, code, body);
	r->k->answers[code]--;          /* not traffic, as /report */
	LIST_REMOVE(r, link);
	event_free(r->ev);
	free(r);
}

static void
sink_wait_timeout_cb(evutil_socket_t s, short what, void *arg)
{
	sink_wait_answer(arg, 504);
}

/* Answer the waiters whose count is reached. */
static void
sink_wait_check(struct sink *k)
{
	struct sink_reply *r, *next;

	for (r = LIST_FIRST(&k->waiters); r != NULL; r = next) {
		next = LIST_NEXT(r, link);
		if (sink_distinct(k, r->kind) >= r->distinct)
			sink_wait_answer(r, 200);
	}
}

static void
sink_wait(struct sink *k, struct evhttp_request *req)
{
	struct evkeyvalq q;
	const char *query = evhttp_uri_get_query(evhttp_request_get_evhttp_uri(req));
	const char *n, *t, *kn;
	char *end;
	unsigned long long want, ms = 60000;
	struct sink_reply *r;
	struct timeval tv;
	int kind = -1, code = 400;

	TAILQ_INIT(&q);
	if (query == NULL || evhttp_parse_query_str(query, &q) == -1 ||
	    (n = evhttp_find_header(&q, "distinct")) == NULL)
		goto refuse;
	errno = 0;
	want = strtoull(n, &end, 10);
	if (errno != 0 || *n == '\0' || *end != '\0')
		goto refuse;
	if ((t = evhttp_find_header(&q, "timeout_ms")) != NULL &&
	    ((ms = strtoull(t, &end, 10)) == 0 || *end != '\0' || ms > 86400000ULL))
		goto refuse;
	if ((kn = evhttp_find_header(&q, "kind")) != NULL &&
	    (kind = (int)track_kind_parse(kn)) == TK_OTHER)
		goto refuse;
	evhttp_clear_headers(&q);
	code = 503;
	if ((r = calloc(1, sizeof(*r))) == NULL)
		goto refuse;
	if ((r->ev = evtimer_new(k->base, sink_wait_timeout_cb, r)) == NULL) {
		free(r);
		goto refuse;
	}
	r->req = req;
	r->k = k;
	r->distinct = want;
	r->kind = kind;
	LIST_INSERT_HEAD(&k->waiters, r, link);
	tv.tv_sec = (time_t)(ms / 1000);
	tv.tv_usec = (suseconds_t)(ms % 1000 * 1000);
	evtimer_add(r->ev, &tv);
	sink_wait_check(k);
	return;
refuse:
	evhttp_clear_headers(&q);
	sink_send(k, req, code, code == 503 ? NULL : "{\"error\": \"usage: GET "
	    "/wait?distinct=N[&kind=telemetry|status|response|event|request][&timeout_ms=T]\"}");
	k->answers[code]--;
}

/* 0 = signature fine (or not checked), else the status to answer. */
static int
sink_check_signature(struct sink *k, struct evhttp_request *req, const void *body, size_t len,
    const char **wid)
{
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);
	const char *id = evhttp_find_header(h, "webhook-id");
	const char *ts = evhttp_find_header(h, "webhook-timestamp");
	const char *sig = evhttp_find_header(h, "webhook-signature");
	uint64_t t;

	*wid = id;
	if (k->o.key == NULL)
		return 0;
	if (id == NULL || ts == NULL || sig == NULL) {
		k->sig_missing++;
		return 401;
	}
	if (webhook_verify(k->o.key, k->o.keylen, id, ts, body, len, sig) != 1) {
		k->sig_bad++;
		return 401;
	}
	if (k->o.tolerance && (bench_parse_u64(ts, &t) != 0 ||
	    (t * 1000000 > now_us() + k->o.tolerance) ||
	    (t * 1000000 + k->o.tolerance < now_us()))) {
		k->sig_stale++;
		return 401;
	}
	k->sig_ok++;
	return 0;
}

/* webhook-id is the envelope id, or for an array "<first id>.<count>". */
static bool
sink_webhook_id_matches(const char *wid, const char *fid, bool array, size_t n)
{
	char want[512];

	if (wid == NULL)
		return true;
	if (!array)
		return strcmp(wid, fid) == 0;
	snprintf(want, sizeof(want), "%s.%zu", fid, n);
	return strcmp(wid, want) == 0 || (n == 1 && strcmp(wid, fid) == 0);
}

/*
 * Reading the envelopes.  The body is first checked to be strict JSON
 * (jsoncheck), then read in place for the few fields counted: building a
 * jansson tree of every envelope cost the sink as much CPU per message as
 * herald's http worker, on the same cores as herald.  A string the fast
 * reader would have to unescape, or one too long for a view, sends the
 * whole body to jansson instead.
 */
static const char *
fp_ws(const char *p, const char *e)
{
	while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
		p++;
	return p;
}

/* p at '"': the raw content is [*s, *s + *len); returns what follows. */
static const char *
fp_str(const char *p, const char *e, const char **s, size_t *len, bool *esc)
{
	*s = ++p;
	*esc = false;
	while (p < e && *p != '"') {
		if (*p == '\\') {
			*esc = true;
			p++;
		}
		p++;
	}
	*len = (size_t)(p - *s);
	return p + 1;
}

/* Skip one value of valid JSON. */
static const char *
fp_skip(const char *p, const char *e)
{
	const char *s;
	size_t len;
	bool esc;
	int d = 0;

	if (*p == '"')
		return fp_str(p, e, &s, &len, &esc);
	if (*p != '{' && *p != '[') {
		while (p < e && strchr(",}] \t\n\r", *p) == NULL)
			p++;
		return p;
	}
	do {
		if (*p == '"') {
			p = fp_str(p, e, &s, &len, &esc);
			continue;
		}
		if (*p == '{' || *p == '[')
			d++;
		else if (*p == '}' || *p == ']')
			d--;
		p++;
	} while (d > 0 && p < e);
	return p;
}

/* A string value into dst; -1 (read it with jansson) if escaped or too long. */
static int
fp_copy(char *dst, size_t cap, const char *s, size_t len, bool esc)
{
	if (esc || len >= cap)
		return -1;
	memcpy(dst, s, len);
	dst[len] = '\0';
	return 0;
}

/* A number token that is an integer (jansson's json_is_integer) into *v. */
static bool
fp_int(const char *p, const char *end, int64_t *v)
{
	char buf[32];
	size_t len = 0;

	while (p + len < end && strchr(",}] \t\n\r", p[len]) == NULL)
		len++;
	if (len == 0 || len >= sizeof(buf) || strspn(p, "-0123456789") < len)
		return false;
	memcpy(buf, p, len);
	buf[len] = '\0';
	errno = 0;
	*v = strtoll(buf, NULL, 10);
	return errno == 0;
}

/* p at '{' of an envelope (payload: of its payload); NULL to use jansson. */
static const char *
fp_object(const char *p, const char *e, struct env_view *v, bool payload, bool *has_payload,
    bool *has_recv)
{
	p = fp_ws(p + 1, e);
	if (p < e && *p == '}')
		return p + 1;
	while (p < e) {
		const char *key, *val;
		size_t klen, vlen;
		bool esc, str;

		p = fp_str(p, e, &key, &klen, &esc);
		if (esc)
			return NULL;
		p = fp_ws(fp_ws(p, e) + 1, e);          /* the ':' */
		str = p < e && *p == '"';
#define KEY(name) (klen == sizeof(name) - 1 && memcmp(key, name, klen) == 0)
		if (!payload && str && (KEY("id") || KEY("device") || KEY("kind") || KEY("receivedAt"))) {
			p = fp_str(p, e, &val, &vlen, &esc);
			if ((KEY("id") && fp_copy(v->id, sizeof(v->id), val, vlen, esc) == -1) ||
			    (KEY("device") && fp_copy(v->device, sizeof(v->device), val, vlen, esc) == -1) ||
			    (KEY("kind") && fp_copy(v->kind, sizeof(v->kind), val, vlen, esc) == -1))
				return NULL;
			if (KEY("receivedAt"))
				*has_recv = true;
		} else if (!payload && KEY("payload") && p < e && *p == '{') {
			*has_payload = true;
			if ((p = fp_object(p, e, v, true, NULL, NULL)) == NULL)
				return NULL;
		} else if (payload && (KEY("seq") || KEY("ts")) && p < e && strchr("-0123456789", *p)) {
			if (KEY("seq"))
				v->has_seq = fp_int(p, e, &v->seq);
			else
				v->has_ts = fp_int(p, e, &v->ts);
			p = fp_skip(p, e);
		} else if (payload && str && (KEY("dev") || KEY("state"))) {
			p = fp_str(p, e, &val, &vlen, &esc);
			if (KEY("dev")) {
				if (fp_copy(v->pdev, sizeof(v->pdev), val, vlen, esc) == -1)
					return NULL;
				v->has_pdev = true;
			} else {
				if (fp_copy(v->state, sizeof(v->state), val, vlen, esc) == -1)
					return NULL;
				v->has_state = true;
			}
		} else {
			p = fp_skip(p, e);
		}
#undef KEY
		p = fp_ws(p, e);
		if (p < e && *p == '}')
			return p + 1;
		p = fp_ws(p + 1, e);                    /* the ',' */
	}
	return NULL;
}

static struct env_view *
sink_view(struct sink *k, size_t i)
{
	struct env_view *n = grow_array(k->views, &k->nviews_cap, i + 1, sizeof(*n), 128);

	if (n == NULL)
		return NULL;
	k->views = n;
	memset(&k->views[i], 0, sizeof(k->views[i]));
	return &k->views[i];
}

/* Valid JSON read in place: 1 with *n views, 0 to use jansson, -1 out of memory. */
static int
sink_read_fast(struct sink *k, const char *body, size_t len, size_t *n, bool *array)
{
	const char *p = fp_ws(body, body + len), *e = body + len;

	*n = 0;
	*array = p < e && *p == '[';
	if (*array)
		p = fp_ws(p + 1, e);
	while (p < e && *p != ']') {
		struct env_view *v = sink_view(k, *n);
		bool has_payload = false, has_recv = false;

		if (v == NULL)
			return -1;
		if (*p == '{') {
			if ((p = fp_object(p, e, v, false, &has_payload, &has_recv)) == NULL)
				return 0;
			v->ok = v->id[0] != '\0' && v->device[0] != '\0' && v->kind[0] != '\0' &&
			    has_recv && has_payload;
		} else {
			p = fp_skip(p, e);
		}
		(*n)++;
		if (!*array)
			break;
		p = fp_ws(p, e);
		if (p < e && *p == ',')
			p = fp_ws(p + 1, e);
	}
	return 1;
}

static void
sink_view_str(char *dst, size_t cap, json_t *s)
{
	snprintf(dst, cap, "%s", json_string_value(s) ? json_string_value(s) : "");
}

/* The same views from a jansson tree; *n 0 when malformed. */
static int
sink_read_jansson(struct sink *k, const char *body, size_t len, size_t *n, bool *array)
{
	json_t *doc = json_loadb(body, len, 0, NULL);

	*n = 0;
	*array = json_is_array(doc);
	for (size_t i = 0; doc != NULL && i < (*array ? json_array_size(doc) : 1); i++) {
		json_t *e = *array ? json_array_get(doc, i) : doc, *p = json_object_get(e, "payload");
		struct env_view *v = sink_view(k, i);

		if (v == NULL) {
			json_decref(doc);
			return -1;
		}
		v->ok = json_is_object(e) && json_is_string(json_object_get(e, "id")) &&
		    json_is_string(json_object_get(e, "device")) &&
		    json_is_string(json_object_get(e, "kind")) &&
		    json_is_string(json_object_get(e, "receivedAt")) && json_is_object(p);
		sink_view_str(v->id, sizeof(v->id), json_object_get(e, "id"));
		sink_view_str(v->device, sizeof(v->device), json_object_get(e, "device"));
		sink_view_str(v->kind, sizeof(v->kind), json_object_get(e, "kind"));
		if ((v->has_seq = json_is_integer(json_object_get(p, "seq"))))
			v->seq = json_integer_value(json_object_get(p, "seq"));
		if ((v->has_ts = json_is_integer(json_object_get(p, "ts"))))
			v->ts = json_integer_value(json_object_get(p, "ts"));
		if ((v->has_pdev = json_is_string(json_object_get(p, "dev"))))
			sink_view_str(v->pdev, sizeof(v->pdev), json_object_get(p, "dev"));
		if ((v->has_state = json_is_string(json_object_get(p, "state"))))
			sink_view_str(v->state, sizeof(v->state), json_object_get(p, "state"));
		(*n)++;
	}
	json_decref(doc);
	return 0;
}

static void
sink_count(struct sink *k, const struct env_view *v, uint64_t wall)
{
	enum track_kind kind = track_kind_parse(v->kind);
	enum track_result r;

	if (v->has_pdev && strcmp(v->pdev, v->device) != 0)
		k->dev_mismatch++;
	r = track_add(k->track, v->id, v->device, kind, v->has_seq ? v->seq : -1);
	if (kind == TK_REQUEST && r != TRACK_DUP_ID) {
		/* which state changes herald reports (SPEC §2: the request record) */
		const char *name = v->has_state ? v->state : "(none)";
		json_t *n = json_object_get(k->req_states, name);

		json_object_set_new(k->req_states, name, json_integer(n ? json_integer_value(n) + 1 : 1));
	}
	if ((r == TRACK_NEW || r == TRACK_REORDERED || r == TRACK_UNSEQUENCED) &&
	    v->has_ts && v->ts > 0) {
		uint64_t t = (uint64_t)v->ts, lat = 0;

		if (wall >= t)
			lat = wall - t;
		else
			k->negative_latency++;
		hist_add(&k->lat, lat);
		hist_add(&k->lat_kind[kind], lat);
	}
}

static void
sink_post(struct sink *k, struct evhttp_request *req)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	const char *body = len ? (const char *)evbuffer_pullup(in, -1) : "";
	uint64_t wall = now_us(), mono = mono_us();
	const struct sink_phase *ph = &k->o.phase[k->cur];
	const char *wid = NULL;
	struct jc_result jr;
	struct track_counts tot;
	size_t n = 0;
	bool array = false;
	int code, rc;

	if (ph->mode == SM_CODE) {
		sink_answer(k, req, ph->code);
		return;
	}
	if ((code = sink_check_signature(k, req, body, len, &wid)) != 0) {
		sink_answer(k, req, code);
		return;
	}
	rc = jsoncheck(&k->jc, body, len, &jr);
	if (rc == 0 && (rc = sink_read_fast(k, body, len, &n, &array)) == 0)
		rc = sink_read_jansson(k, body, len, &n, &array);
	else if (rc == -1)
		rc = n = 0;     /* not JSON: malformed */
	if (rc < 0) {
		sink_answer(k, req, 503);       /* out of memory */
		return;
	}
	if (n == 0) {
		k->malformed++;
		sink_answer(k, req, 400);
		return;
	}
	for (size_t i = 0; i < n; i++) {
		if (!k->views[i].ok) {
			k->malformed++;
			sink_answer(k, req, 400);
			return;
		}
		for (int r = 0; r < k->o.nrules; r++) {
			if (strcmp(k->views[i].device, k->o.rule[r].device) == 0) {
				k->rejected_rule++;
				sink_answer(k, req, k->o.rule[r].code);
				return;
			}
		}
	}
	if (!sink_webhook_id_matches(wid, k->views[0].id, array, n))
		k->id_mismatch++;
	if (array) {
		k->batches++;
		k->batch_envelopes += n;
		if (n > k->max_batch)
			k->max_batch = n;
	}
	for (size_t i = 0; i < n; i++)
		sink_count(k, &k->views[i], wall);
	if (k->first_us == 0)
		k->first_us = mono;
	else if (mono - k->last_us > k->max_silence_us)
		k->max_silence_us = mono - k->last_us;
	k->last_us = mono;
	sink_answer(k, req, 204);
	track_total(k->track, &tot);
	if (!LIST_EMPTY(&k->waiters))
		sink_wait_check(k);
	if (k->o.have_expect && tot.distinct >= k->o.expect)
		sink_finish(k, BENCH_EXIT_OK);
}

static void
sink_request_cb(struct evhttp_request *req, void *arg)
{
	struct sink *k = arg;
	const char *uri = evhttp_request_get_uri(req);
	enum evhttp_cmd_type cmd = evhttp_request_get_command(req);

	if (cmd == EVHTTP_REQ_GET && strncmp(uri, "/report", 7) == 0) {
		/* reports are not traffic: neither counted as requests nor as answers */
		json_t *doc = sink_report_json(k, strstr(uri, "devices=1") != NULL || k->o.per_device);
		char *s = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));

		sink_send(k, req, 200, s ? s : "{}");
		k->answers[200]--;
		free(s);
		json_decref(doc);
		return;
	}
	if (cmd == EVHTTP_REQ_GET && strncmp(uri, "/wait?", 6) == 0) {
		sink_wait(k, req);
		return;
	}
	k->requests++;
	if (cmd != EVHTTP_REQ_POST) {
		sink_send(k, req, 405, NULL);
		return;
	}
	if (k->o.phase[k->cur].mode == SM_REFUSE) {
		/* the listener is closed; a kept-alive connection is cut, not answered */
		struct evhttp_connection *evcon = evhttp_request_get_connection(req);
		struct bufferevent *bev = evcon ? evhttp_connection_get_bufferevent(evcon) : NULL;

		k->refused_requests++;
		if (bev != NULL)
			shutdown(bufferevent_getfd(bev), SHUT_RDWR);
		evhttp_send_reply(req, 503, "Refused", NULL);
		return;
	}
	sink_post(k, req);
}

/* --- signals and timers ---------------------------------------------------- */

static void
sink_usr1_cb(evutil_socket_t s, short what, void *arg)
{
	struct sink *k = arg;
	bool json = k->o.json;

	k->o.json = false;
	sink_report_print(k, stdout);
	k->o.json = json;
}

static void
sink_term_cb(evutil_socket_t s, short what, void *arg)
{
	struct sink *k = arg;

	k->exit_code = BENCH_EXIT_OK;
	event_base_loopexit(k->base, NULL);
}

static void
sink_timeout_cb(evutil_socket_t s, short what, void *arg)
{
	struct sink *k = arg;

	if (!k->finishing) {
		fprintf(stderr, "herald-bench sink: timeout before --expect was reached\n");
		k->exit_code = BENCH_EXIT_FAIL;
		event_base_loopexit(k->base, NULL);
	}
}

static void
sink_exit_cb(evutil_socket_t s, short what, void *arg)
{
	event_base_loopexit(((struct sink *)arg)->base, NULL);
}

static void
sink_sec_cb(evutil_socket_t s, short what, void *arg)
{
	bench_herald_sample(&((struct sink *)arg)->herald);
}

int
sink_main(int argc, char **argv)
{
	struct sink *k = calloc(1, sizeof(*k));
	struct timeval sec = { 1, 0 };
	int r;

	if (k == NULL)
		return BENCH_EXIT_FAIL;
	if ((r = sink_opts_parse(&k->o, argc, argv)) != 0) {
		free(k->o.key);
		free(k);
		return r > 0 ? BENCH_EXIT_OK : BENCH_EXIT_USAGE;
	}
	bench_raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	LIST_INIT(&k->delayed);
	LIST_INIT(&k->waiters);
	k->req_states = json_object();
	hist_init(&k->lat);
	for (int i = 0; i < TK_NKINDS; i++)
		hist_init(&k->lat_kind[i]);
	k->track = track_new();
	k->base = bench_event_base();
	k->http = k->base ? evhttp_new(k->base) : NULL;
	if (k->track == NULL || k->http == NULL)
		return BENCH_EXIT_FAIL;
	evhttp_set_max_body_size(k->http, (ev_ssize_t)k->o.max_body);
	evhttp_set_timeout(k->http, 120);
	evhttp_set_allowed_methods(k->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
	    EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE);
	evhttp_set_default_content_type(k->http, "application/json");
	evhttp_set_gencb(k->http, sink_request_cb, k);
	if (sink_listen(k) == -1) {
		fprintf(stderr, "herald-bench sink: cannot listen on %s:%d: %s\n", k->o.host,
		    k->o.port, strerror(errno));
		return BENCH_EXIT_FAIL;
	}
	printf("listening %s:%d\n", k->o.host, k->o.port);
	fflush(stdout);
	k->phase_ev = evtimer_new(k->base, sink_phase_cb, k);
	k->rebind_ev = evtimer_new(k->base, sink_rebind_cb, k);
	k->timeout_ev = evtimer_new(k->base, sink_timeout_cb, k);
	k->exit_ev = evtimer_new(k->base, sink_exit_cb, k);
	k->sec_ev = event_new(k->base, -1, EV_PERSIST, sink_sec_cb, k);
	k->sig_usr1 = evsignal_new(k->base, SIGUSR1, sink_usr1_cb, k);
	k->sig_term = evsignal_new(k->base, SIGTERM, sink_term_cb, k);
	k->sig_int = evsignal_new(k->base, SIGINT, sink_term_cb, k);
	event_add(k->sig_usr1, NULL);
	event_add(k->sig_term, NULL);
	event_add(k->sig_int, NULL);
	event_add(k->sec_ev, &sec);
	bench_herald_begin(&k->herald, k->o.herald_pid);
	k->t_start = mono_us();
	if (k->o.nphases > 0)
		sink_phase_enter(k, 0);
	if (k->o.timeout) {
		struct timeval tv = { (time_t)(k->o.timeout / 1000000),
			(suseconds_t)(k->o.timeout % 1000000) };
		evtimer_add(k->timeout_ev, &tv);
	}
	k->exit_code = BENCH_EXIT_OK;
	event_base_dispatch(k->base);
	sink_report_print(k, stdout);
	r = k->exit_code;
	while (!LIST_EMPTY(&k->delayed))
		sink_reply_cb(-1, 0, LIST_FIRST(&k->delayed));
	while (!LIST_EMPTY(&k->waiters))
		sink_wait_answer(LIST_FIRST(&k->waiters), 503);
	if (k->bound != NULL)
		evhttp_del_accept_socket(k->http, k->bound);
	evhttp_free(k->http);
	event_free(k->phase_ev);
	event_free(k->rebind_ev);
	event_free(k->timeout_ev);
	event_free(k->exit_ev);
	event_free(k->sec_ev);
	event_free(k->sig_usr1);
	event_free(k->sig_term);
	event_free(k->sig_int);
	event_base_free(k->base);
	track_free(k->track);
	json_decref(k->req_states);
	free(k->views);
	jsoncheck_free(&k->jc);
	for (int i = 0; i < k->o.nrules; i++)
		free(k->o.rule[i].device);
	free(k->o.key);
	free(k);
	return r;
}
