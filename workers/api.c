/*
 * The api worker: the REST API of SPEC §3 on libevent's evhttp.  It checks
 * bearer tokens, parses and validates every input (the router gets only
 * well-formed arguments), turns each call into one FAB_REQUEST and answers
 * when the router's FAB_REPLY arrives; /metrics and /healthz are read
 * straight from the shared stats region.
 */
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>
#include <jansson.h>
#include <sodium.h>

#include "jsoncheck.h"
#include "log.h"
#include "proto.h"
#include "util.h"
#include "worker.h"
#include "workers.h"

#define API_MAX_HEADERS     (16 * 1024)
#define API_CLIENT_TIMEOUT  30        /* seconds a client may stay silent */
#define API_CALL_TIMEOUT_MS 15000     /* the router answers within this ... */
#define API_WAIT_GRACE_MS   5000      /* ... or ?wait=S plus this */
#define API_WAIT_MAX        60
#define API_LIST_MAX        1000
#define API_CURSOR_MAX      19        /* digits of a request list's cursor */
#define API_TYPE_MAX        256
#define API_STOP_GRACE_MS   3000
#define API_MAX_SEGS        5
#define API_NCALLB          1024      /* buckets of the pending-call table */
#define API_GEN_CHECK_MS    100       /* how soon calls follow a restarted router */

struct api_call {
	LIST_ENTRY(api_call) link;
	struct api             *a;
	uint64_t                reqid;
	struct evhttp_request  *req;
	struct event           *timer;
	const char             *op;         /* a literal */
	json_t                 *args;       /* kept to be sent again */
	int                     wait_s;
	int64_t                 sent_ms;    /* first sent (monotonic) */
	uint32_t                router_gen; /* the router's life it was sent to */
};
LIST_HEAD(api_calls, api_call);

struct api {
	struct worker              *w;
	struct evhttp              *http;
	struct evhttp_bound_socket *bound;
	struct event               *accept_resume;
	struct event               *stop_timer;
	struct event               *gen_check;  /* while calls wait: did the router restart? */
	uint32_t                    router_gen;
	int64_t                     stop_deadline;
	bool                        flushed;
	uint64_t                    next_reqid;
	struct api_calls            calls[API_NCALLB];
	size_t                      ncalls;
	unsigned char               tokens[CONFIG_MAX_TOKENS][crypto_generichash_BYTES];
	int                         ntokens;
	struct jsoncheck            jc;       /* scratch of the body checks */
};

static struct api api;

/* ---- answers ---- */

static const char *
api_reason(int status)
{
	switch (status) {
	case 200: return "OK";
	case 201: return "Created";
	case 202: return "Accepted";
	case 204: return "No Content";
	case 400: return "Bad Request";
	case 401: return "Unauthorized";
	case 403: return "Forbidden";
	case 404: return "Not Found";
	case 405: return "Method Not Allowed";
	case 409: return "Conflict";
	case 413: return "Payload Too Large";
	case 417: return "Expectation Failed";
	case 429: return "Too Many Requests";
	case 501: return "Not Implemented";
	case 503: return "Service Unavailable";
	default:  return status < 400 ? "OK" : "Error";
	}
}

/*
 * Every answer goes out here.  A HEAD answer has GET's headers, with the
 * Content-Length of GET's body, and no body (RFC 9110 9.3.2): libevent 2.1
 * would send the body and no length.
 */
static void
api_finish(struct evhttp_request *req, int status, struct evbuffer *buf)
{
	char len[32];

	if (buf != NULL && evhttp_request_get_command(req) == EVHTTP_REQ_HEAD) {
		snprintf(len, sizeof(len), "%zu", evbuffer_get_length(buf));
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Length", len);
		buf = NULL;
	}
	evhttp_send_reply(req, status, api_reason(status), buf);
}

static void
api_send(struct api *a, struct evhttp_request *req, int status, const char *ctype,
    const char *body, size_t len)
{
	struct evbuffer *buf = NULL;

	if (status >= 400)
		worker_count(a->w, STAT_api_errors, 1);
	if (status != 204 && body != NULL) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type", ctype);
		buf = evbuffer_new();
		if (buf != NULL)
			evbuffer_add(buf, body, len);
	}
	api_finish(req, status, buf);
	if (buf != NULL)
		evbuffer_free(buf);
}

static void
api_send_json(struct api *a, struct evhttp_request *req, int status, json_t *doc)
{
	char *text = json_dumps(doc, JSON_COMPACT);

	json_decref(doc);
	if (text == NULL) {
		static const char oom[] = "{\"error\":{\"code\":\"unavailable\",\"message\":\"out of memory\"}}";
		api_send(a, req, 503, "application/json", oom, sizeof(oom) - 1);
		return;
	}
	api_send(a, req, status, "application/json", text, strlen(text));
	free(text);
}

static void __attribute__((format(printf, 5, 6)))
api_error(struct api *a, struct evhttp_request *req, int status, const char *code,
    const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	/* It may quote the client's bytes (else the 400 would become a 503). */
	str_printable(msg);
	api_send_json(a, req, status, json_pack("{s:{s:s,s:s}}", "error", "code", code,
	    "message", msg));
}

/*
 * libevent 2.1 answers what it rejects itself (a body over max_body,
 * headers over the limit, a malformed request line) with a fixed HTML page
 * and offers no hook to change it (2.2 adds evhttp_set_errorcb).  Every
 * connection's output buffer is watched: when such a page has just been
 * written, and before the loop sends it, it is replaced with SPEC's JSON
 * error body.  Our own bodies are JSON or metrics text and cannot contain
 * the page's markup with its raw newlines.
 */
static const char canned_body[] = "<HTML><HEAD>\n<TITLE>";
static const char canned_end[] = "</BODY></HTML>\n";

/* The page at the end of buf, replaced; 0 when there is none. */
static int
api_canned_replace(struct api *a, struct evbuffer *buf)
{
	size_t len = evbuffer_get_length(buf), elen = sizeof(canned_end) - 1, start;
	struct evbuffer_ptr p, body;
	char tail[sizeof(canned_end)], line[16], json[320], msg[160], *text;
	const char *code;
	struct evbuffer *prefix;
	int status, n;

	if (len < elen)
		return 0;
	if (evbuffer_ptr_set(buf, &p, len - elen, EVBUFFER_PTR_SET) == -1 ||
	    evbuffer_copyout_from(buf, &p, tail, elen) != (ev_ssize_t)elen ||
	    memcmp(tail, canned_end, elen) != 0)
		return 0;
	evbuffer_ptr_set(buf, &p, len > 1024 ? len - 1024 : 0, EVBUFFER_PTR_SET);
	body = evbuffer_search(buf, canned_body, sizeof(canned_body) - 1, &p);
	if (body.pos < 0)
		return 0;
	/* The page's status line: the last "HTTP/1." before its body. */
	start = (size_t)-1;
	evbuffer_ptr_set(buf, &p, body.pos > 2048 ? (size_t)body.pos - 2048 : 0, EVBUFFER_PTR_SET);
	for (;;) {
		p = evbuffer_search(buf, "HTTP/1.", 7, &p);
		if (p.pos < 0 || p.pos >= body.pos)
			break;
		start = (size_t)p.pos;
		if (evbuffer_ptr_set(buf, &p, 1, EVBUFFER_PTR_ADD) == -1)
			break;
	}
	if (start == (size_t)-1)
		return 0;
	evbuffer_ptr_set(buf, &p, start, EVBUFFER_PTR_SET);
	memset(line, 0, sizeof(line));
	evbuffer_copyout_from(buf, &p, line, 12);
	status = atoi(line + 9);
	switch (status) {
	case 413:
		code = "payload_too_large";
		snprintf(msg, sizeof(msg), "the request body is over [api] max_body (%zu bytes)",
		    a->w->cf->api_max_body);
		break;
	case 400:
		code = "bad_request";
		snprintf(msg, sizeof(msg), "malformed HTTP request, or headers over %d bytes",
		    API_MAX_HEADERS);
		break;
	case 417:
		code = "expectation_failed";
		snprintf(msg, sizeof(msg), "unsupported Expect header");
		break;
	case 501:
		code = "not_implemented";
		snprintf(msg, sizeof(msg), "method not implemented");
		break;
	default:
		code = "http_error";
		snprintf(msg, sizeof(msg), "the request could not be served");
	}
	snprintf(json, sizeof(json), "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code, msg);
	n = asprintf(&text, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\n"
	    "Connection: close\r\nContent-Length: %zu\r\n\r\n%s", status, api_reason(status),
	    strlen(json), json);
	if (n < 0)
		return 0;
	if ((prefix = evbuffer_new()) == NULL) {
		free(text);
		return 0;
	}
	if (evbuffer_remove_buffer(buf, prefix, start) != (int)start ||
	    evbuffer_drain(buf, evbuffer_get_length(buf)) == -1) {
		/* Leave the page rather than a mix of it and JSON. */
		evbuffer_prepend_buffer(buf, prefix);
		evbuffer_free(prefix);
		free(text);
		return 0;
	}
	evbuffer_add_buffer(buf, prefix);
	evbuffer_add(buf, text, (size_t)n);
	evbuffer_free(prefix);
	free(text);
	worker_count(a->w, STAT_api_requests, 1);
	worker_count(a->w, STAT_api_errors, 1);
	log_ratelimited(LOG_INFO, "rejected a malformed or oversized HTTP request (%d)", status);
	return 1;
}

/*
 * A socket bufferevent keeps the start of its output buffer frozen except
 * while it writes (bufferevent_sock.c), and then reading and removing from
 * the front fail: on a connection that has answered a request before, the
 * page went out as HTML.  The start is thawed for the replacement and
 * frozen again as it was.
 */
static void
api_canned_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	static bool busy;
	char c;
	bool frozen;

	if (busy || info->n_added == 0 || evbuffer_get_length(buf) < sizeof(canned_end) - 1)
		return;
	busy = true;
	frozen = evbuffer_copyout(buf, &c, 1) == -1;
	if (frozen)
		evbuffer_unfreeze(buf, 1);
	api_canned_replace(arg, buf);
	if (frozen)
		evbuffer_freeze(buf, 1);
	busy = false;
}

static struct bufferevent *
api_bevcb(struct event_base *base, void *arg)
{
	struct bufferevent *bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE);

	if (bev != NULL)
		evbuffer_add_cb(bufferevent_get_output(bev), api_canned_cb, arg);
	return bev;
}

/* ---- pending calls to the router ---- */

static struct api_calls *
api_bucket(struct api *a, uint64_t reqid)
{
	return &a->calls[reqid % API_NCALLB];
}

static void
api_call_free(struct api *a, struct api_call *c)
{
	LIST_REMOVE(c, link);
	a->ncalls--;
	event_free(c->timer);
	json_decref(c->args);
	free(c);
}

static void
api_call_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct api_call *c = arg;
	struct api *a = c->a;

	log_ratelimited(LOG_WARNING, "the router did not answer call %llu in time",
	    (unsigned long long)c->reqid);
	api_error(a, c->req, 503, "unavailable", "the request router did not answer in time");
	api_call_free(a, c);
}

static uint32_t
api_router_gen(struct api *a)
{
	return worker_generation_of(a->w, ROLE_ROUTER, 0);
}

/* Send (again) a call to the router; a ?wait is what is left of it. */
static int
api_call_send(struct api *a, struct api_call *c)
{
	struct msg_request m;
	struct hmw out;
	char *text;
	int rc;

	if (c->wait_s > 0) {
		int64_t left = c->wait_s - (mono_ms() - c->sent_ms + 999) / 1000;

		json_object_set_new(c->args, "wait", json_integer(left > 0 ? left : 0));
	}
	if ((text = json_dumps(c->args, JSON_COMPACT)) == NULL)
		return -1;
	c->router_gen = api_router_gen(a);
	m.reqid = c->reqid;
	m.op = (struct pstr){ c->op, strlen(c->op) };
	m.args = (struct pstr){ text, strlen(text) };
	hmw_init(&out, HM_FAB_REQUEST);
	proto_write_request(&out, &m);
	rc = worker_send(a->w, NULL, &out);
	hmw_free(&out);
	free(text);
	return rc;
}

/*
 * A router killed with calls in flight forgets them (and the ?wait of a
 * request it had accepted): each call sent to an earlier life of the
 * router goes to the new one again.  The supervisor counts the router's
 * lives in the stats region.  Every call may be repeated: a request's
 * commandId is chosen here when the client gave none, so a repeated create
 * finds the request if the first one made it (200 with the record, or its
 * ?wait held again); reads, cancels and config are the same again; an event
 * may reach its device twice.  A call that reached the new router before it
 * is sent again is answered by the first reply, and the second is dropped.
 */
static void
api_gen_check(evutil_socket_t fd, short what, void *arg)
{
	struct api *a = arg;
	struct timeval tv = { 0, API_GEN_CHECK_MS * 1000 };
	uint32_t gen = api_router_gen(a);
	struct api_call *c;
	size_t n = 0, failed = 0;

	if (gen != a->router_gen) {
		a->router_gen = gen;
		for (int i = 0; i < API_NCALLB; i++)
			LIST_FOREACH(c, &a->calls[i], link)
				if (c->router_gen != gen) {
					if (api_call_send(a, c) == 0)
						n++;
					else
						failed++;
				}
		if (n + failed > 0)
			log_notice("the router restarted: %zu API call(s) sent to it again%s",
			    n, failed > 0 ? " (some could not be; they time out)" : "");
	}
	if (a->ncalls > 0)
		evtimer_add(a->gen_check, &tv);
}

/* Hand a validated call to the router; the answer comes in api_reply(). */
static void
api_call(struct api *a, struct evhttp_request *req, const char *op, json_t *args, int wait_s)
{
	struct api_call *c;
	int64_t ms = API_CALL_TIMEOUT_MS;
	struct timeval tv;

	if ((c = calloc(1, sizeof(*c))) == NULL) {
		json_decref(args);
		api_error(a, req, 503, "unavailable", "out of memory");
		return;
	}
	c->a = a;
	c->req = req;
	c->reqid = ++a->next_reqid;
	c->op = op;
	c->args = args;
	c->wait_s = wait_s;
	c->sent_ms = mono_ms();
	if ((c->timer = evtimer_new(a->w->base, api_call_timeout, c)) == NULL) {
		json_decref(args);
		free(c);
		api_error(a, req, 503, "unavailable", "out of memory");
		return;
	}
	if (api_call_send(a, c) == -1) {
		event_free(c->timer);
		json_decref(args);
		free(c);
		api_error(a, req, 503, "unavailable", "the request router is not reachable");
		return;
	}
	if (wait_s * 1000 + API_WAIT_GRACE_MS > ms)
		ms = wait_s * 1000 + API_WAIT_GRACE_MS;
	tv.tv_sec = ms / 1000;
	tv.tv_usec = (ms % 1000) * 1000;
	evtimer_add(c->timer, &tv);
	LIST_INSERT_HEAD(api_bucket(a, c->reqid), c, link);
	a->ncalls++;
	if (!evtimer_pending(a->gen_check, NULL)) {
		tv.tv_sec = 0;
		tv.tv_usec = API_GEN_CHECK_MS * 1000;
		evtimer_add(a->gen_check, &tv);
	}
}

static void
api_reply(struct api *a, struct hmr *r)
{
	struct msg_reply rep;
	struct api_call *c;

	if (proto_read_reply(r, &rep) == -1) {
		worker_bad_msg(a->w, r->type, NULL);
		return;
	}
	LIST_FOREACH(c, api_bucket(a, rep.reqid), link)
		if (c->reqid == rep.reqid)
			break;
	if (c == NULL) {
		/* Answered after its timeout, or meant for an earlier life. */
		log_debug("reply to unknown call %llu dropped", (unsigned long long)rep.reqid);
		return;
	}
	if (rep.status < 200 || rep.status > 599)
		api_error(a, c->req, 503, "unavailable", "the router gave no valid answer");
	else
		api_send(a, c->req, (int)rep.status, "application/json", rep.body.p, rep.body.len);
	api_call_free(a, c);
}

static void
api_fabric(struct worker *w, const char *peer, struct hmr *r)
{
	struct api *a = w->arg;

	if (r->type == HM_FAB_REPLY) {
		api_reply(a, r);
		return;
	}
	worker_bad_msg(w, r->type, peer);
}

/* ---- /metrics and /healthz ---- */

static void
api_label(struct evbuffer *b, const struct stats_slot *s)
{
	evbuffer_add_printf(b, "{role=\"%s\",slot=\"%d\"}", stats_role_name(s->role), s->slot);
}

static bool
api_slot_used(const struct stats_slot *s)
{
	return __atomic_load_n(&s->state, __ATOMIC_RELAXED) != WS_EMPTY ||
	    __atomic_load_n(&s->pid, __ATOMIC_RELAXED) != 0;
}

static void
api_metrics(struct api *a, struct evhttp_request *req)
{
	const struct stats_region *rg = a->w->region;
	uint32_t n = rg->hdr.nslots;
	struct evbuffer *b = evbuffer_new();
	const struct stats_slot *s;

	if (b == NULL) {
		api_error(a, req, 503, "unavailable", "out of memory");
		return;
	}
	/* Exposition format 0.0.4: each family's HELP and TYPE, then its samples. */
	for (int c = 0; c < STAT_NCOUNTERS; c++) {
		evbuffer_add_printf(b, "# HELP herald_%s_total %s\n# TYPE herald_%s_total counter\n",
		    stats_counter_name(c), stats_counter_help(c), stats_counter_name(c));
		for (uint32_t i = 0; i < n; i++) {
			s = &rg->slots[i];
			if (!api_slot_used(s))
				continue;
			evbuffer_add_printf(b, "herald_%s_total", stats_counter_name(c));
			api_label(b, s);
			evbuffer_add_printf(b, " %llu\n", (unsigned long long)
			    __atomic_load_n(&s->counters[c], __ATOMIC_RELAXED));
		}
	}
	for (int g = 0; g < STAT_NGAUGES; g++) {
		evbuffer_add_printf(b, "# HELP herald_%s %s\n# TYPE herald_%s gauge\n",
		    stats_gauge_name(g), stats_gauge_help(g), stats_gauge_name(g));
		for (uint32_t i = 0; i < n; i++) {
			s = &rg->slots[i];
			if (!api_slot_used(s))
				continue;
			evbuffer_add_printf(b, "herald_%s", stats_gauge_name(g));
			api_label(b, s);
			evbuffer_add_printf(b, " %lld\n", (long long)
			    __atomic_load_n(&s->gauges[g], __ATOMIC_RELAXED));
		}
	}
	evbuffer_add_printf(b, "# HELP herald_worker_restarts_total times the supervisor restarted the worker\n"
	    "# TYPE herald_worker_restarts_total counter\n");
	for (uint32_t i = 0; i < n; i++) {
		s = &rg->slots[i];
		if (!api_slot_used(s))
			continue;
		evbuffer_add_printf(b, "herald_worker_restarts_total");
		api_label(b, s);
		evbuffer_add_printf(b, " %u\n", __atomic_load_n(&s->restarts, __ATOMIC_RELAXED));
	}
	evbuffer_add_printf(b, "# HELP herald_worker_up 1 while the worker is ready\n"
	    "# TYPE herald_worker_up gauge\n");
	for (uint32_t i = 0; i < n; i++) {
		s = &rg->slots[i];
		if (!api_slot_used(s))
			continue;
		evbuffer_add_printf(b, "herald_worker_up");
		api_label(b, s);
		evbuffer_add_printf(b, " %d\n",
		    __atomic_load_n(&s->state, __ATOMIC_RELAXED) == WS_READY);
	}
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	    "text/plain; version=0.0.4; charset=utf-8");
	api_finish(req, 200, b);
	evbuffer_free(b);
}

static void
api_healthz(struct api *a, struct evhttp_request *req)
{
	static const int roles[] = { ROLE_ROUTER, ROLE_CRYPTO, ROLE_HTTP, ROLE_API };
	const struct stats_region *rg = a->w->region;
	json_t *bad = json_array();
	int idx, state;
	char name[32];

	for (int i = 0; i < 4 + a->w->cf->mqtt_workers; i++) {
		int role = i < 4 ? roles[i] : ROLE_MQTT, slot = i < 4 ? 0 : i - 4;
		idx = stats_slot_index(role, slot);
		state = idx >= 0 && (uint32_t)idx < rg->hdr.nslots ?
		    __atomic_load_n(&rg->slots[idx].state, __ATOMIC_RELAXED) : WS_EMPTY;
		if (state == WS_READY)
			continue;
		snprintf(name, sizeof(name), "%s.%d", stats_role_name(role), slot);
		json_array_append_new(bad, json_pack("{s:s,s:s}", "worker", name,
		    "state", stats_state_name(state)));
	}
	if (json_array_size(bad) == 0) {
		json_decref(bad);
		api_send_json(a, req, 200, json_pack("{s:s}", "status", "ok"));
	} else
		api_send_json(a, req, 503, json_pack("{s:s,s:o}", "status", "unavailable",
		    "notReady", bad));
}

/* ---- input ---- */

static void
api_hash_tokens(struct api *a)
{
	const struct config *cf = a->w->cf;

	a->ntokens = cf->api_ntokens;
	for (int i = 0; i < cf->api_ntokens; i++)
		crypto_generichash(a->tokens[i], sizeof(a->tokens[i]),
		    (const unsigned char *)cf->api_tokens[i], strlen(cf->api_tokens[i]), NULL, 0);
}

/* Compares hashes, so neither a token's length nor its bytes leak by timing. */
static bool
api_authorized(struct api *a, struct evhttp_request *req)
{
	const char *h = evhttp_find_header(evhttp_request_get_input_headers(req), "Authorization");
	unsigned char got[crypto_generichash_BYTES];
	bool ok = false;

	if (h == NULL || strncasecmp(h, "Bearer ", 7) != 0)
		return false;
	h += 7;
	while (*h == ' ')
		h++;
	if (*h == '\0')
		return false;
	crypto_generichash(got, sizeof(got), (const unsigned char *)h, strlen(h), NULL, 0);
	for (int i = 0; i < a->ntokens; i++)
		ok |= sodium_memcmp(got, a->tokens[i], sizeof(got)) == 0;
	return ok;
}

/*
 * The body's bytes once they are one JSON object (RFC 8259, checked by
 * herald's own checker as device payloads are: no duplicate keys, no
 * \u0000, nesting up to 2,048, numbers of any range), or NULL with an
 * error answered.
 */
static const char *
api_body_text(struct api *a, struct evhttp_request *req, size_t *lenp)
{
	struct evbuffer *in = evhttp_request_get_input_buffer(req);
	size_t len = evbuffer_get_length(in);
	struct jc_result res;
	const char *p;
	int rc;

	if (len > a->w->cf->api_max_body) {
		api_error(a, req, 413, "payload_too_large", "the body is over [api] max_body (%zu bytes)",
		    a->w->cf->api_max_body);
		return NULL;
	}
	if (len == 0) {
		api_error(a, req, 400, "invalid_json", "a JSON object body is required");
		return NULL;
	}
	if ((p = (const char *)evbuffer_pullup(in, -1)) == NULL ||
	    (rc = jsoncheck(&a->jc, p, len, &res)) == -2) {
		api_error(a, req, 503, "unavailable", "out of memory");
		return NULL;
	}
	if (rc != 0) {
		api_error(a, req, 400, "invalid_json", "invalid JSON at byte %zu: %s", res.error_at,
		    res.error);
		return NULL;
	}
	if (res.top != JC_OBJECT) {
		api_error(a, req, 400, "invalid_json", "the body must be a JSON object");
		return NULL;
	}
	*lenp = len;
	return p;
}

/* Valid JSON p[0..len) without the whitespace between tokens, as a jansson
 * string (the text goes on as the client wrote it); NULL if out of memory. */
static json_t *
api_raw(const char *p, size_t len)
{
	char *t = malloc(len + 1);
	json_t *s;

	if (t == NULL)
		return NULL;
	s = json_stringn(t, jc_minify(p, len, t));
	free(t);
	return s;
}

/*
 * The body as a JSON object of its members, or NULL with an error answered.
 * The member named raw, when it is an object, is a string of its text as
 * sent (see api_raw), any other value of it null; the others are parsed,
 * and one jansson cannot hold (a number past int64 or a double's range)
 * is null, which every field's check refuses.
 */
static json_t *
api_body(struct api *a, struct evhttp_request *req, const char *raw)
{
	size_t len, pos = 0;
	const char *p = api_body_text(a, req, &len);
	struct jc_span k, v;
	json_t *doc, *key, *val;

	if (p == NULL || (doc = json_object()) == NULL) {
		if (p != NULL)
			api_error(a, req, 503, "unavailable", "out of memory");
		return NULL;
	}
	while (jc_member(p, len, &pos, &k, &v)) {
		/* jsoncheck said the key is a valid string */
		if ((key = json_loadb(k.p, k.len, JSON_DECODE_ANY, NULL)) == NULL)
			goto oom;
		if (raw != NULL && strcmp(json_string_value(key), raw) == 0)
			val = v.p[0] == '{' ? api_raw(v.p, v.len) : json_null();
		else if ((val = json_loadb(v.p, v.len, JSON_DECODE_ANY, NULL)) == NULL)
			val = json_null();
		if (val == NULL || json_object_set_new(doc, json_string_value(key), val) == -1) {
			json_decref(key);
			goto oom;
		}
		json_decref(key);
	}
	return doc;
oom:
	json_decref(doc);
	api_error(a, req, 503, "unavailable", "out of memory");
	return NULL;
}

static bool
api_id_ok(const char *s)
{
	return s != NULL && device_id_valid(s, strlen(s));
}

/* "type" and "params" of an event or a request. */
/* A body's fields are these, or a typo ("timout") would go unnoticed. */
static bool
api_known_fields(struct api *a, struct evhttp_request *req, json_t *body,
    const char *const *fields, const char *list)
{
	const char *key;
	json_t *v;

	json_object_foreach(body, key, v) {
		size_t i;

		for (i = 0; fields[i] != NULL && strcmp(key, fields[i]) != 0; i++)
			;
		if (fields[i] == NULL) {
			api_error(a, req, 400, "invalid_field", "unknown field \"%.64s\" (known: %s)",
			    key, list);
			return false;
		}
	}
	return true;
}

static bool
api_type_params(struct api *a, struct evhttp_request *req, json_t *body, json_t *args)
{
	json_t *type = json_object_get(body, "type"), *params = json_object_get(body, "params");

	if (!json_is_string(type) || json_string_length(type) == 0 ||
	    json_string_length(type) > API_TYPE_MAX) {
		api_error(a, req, 400, "invalid_field", "\"type\" must be a non-empty string of at most %d bytes",
		    API_TYPE_MAX);
		return false;
	}
	/* api_body() made an object the string of its text */
	if (params != NULL && !json_is_string(params)) {
		api_error(a, req, 400, "invalid_field", "\"params\" must be an object");
		return false;
	}
	json_object_set(args, "type", type);
	if (params != NULL)
		json_object_set(args, "params", params);
	return true;
}

/* A query parameter as a bounded integer: -1 if malformed or out of range. */
static long
api_query_int(const char *v, long lo, long hi)
{
	char *end;
	long n;

	if (v == NULL || !isdigit((unsigned char)v[0]) || strlen(v) > 9)
		return -1;
	errno = 0;
	n = strtol(v, &end, 10);
	if (*end != '\0' || errno != 0 || n < lo || n > hi)
		return -1;
	return n;
}

struct route {
	struct api            *a;
	struct evhttp_request *req;
	int                    method;
	int                    nseg;
	char                  *seg[API_MAX_SEGS];
	struct evkeyvalq       query;
};

static void
api_method_not_allowed(struct route *rt, const char *allow)
{
	evhttp_add_header(evhttp_request_get_output_headers(rt->req), "Allow", allow);
	api_error(rt->a, rt->req, 405, "method_not_allowed", "allowed: %s", allow);
}

static bool
api_is_get(const struct route *rt)
{
	return rt->method == EVHTTP_REQ_GET || rt->method == EVHTTP_REQ_HEAD;
}

/*
 * A list's limit (1..API_LIST_MAX) and cursor (the "next" of the page
 * before) into args; false with an error answered (args freed).  The
 * cursor of a device's request list is a number, of a device list a
 * device id.
 */
static bool
api_list_args(struct route *rt, json_t *args)
{
	struct api *a = rt->a;
	bool numeric = rt->nseg > 3;
	const char *v;
	long limit;
	unsigned long long cursor = 0;

	if ((v = evhttp_find_header(&rt->query, "limit")) != NULL && *v != '\0') {
		if ((limit = api_query_int(v, 1, API_LIST_MAX)) < 0) {
			json_decref(args);
			api_error(a, rt->req, 400, "invalid_field", "limit must be 1..%d", API_LIST_MAX);
			return false;
		}
		json_object_set_new(args, "limit", json_integer(limit));
	}
	if ((v = evhttp_find_header(&rt->query, "cursor")) != NULL && *v != '\0') {
		/* a sequence: up to INT64_MAX (strtoull clamps only past UINT64_MAX) */
		if (numeric) {
			errno = 0;
			cursor = strtoull(v, NULL, 10);
		}
		if (numeric ? strspn(v, "0123456789") != strlen(v) || strlen(v) > API_CURSOR_MAX ||
		    errno != 0 || cursor > INT64_MAX : !api_id_ok(v)) {
			json_decref(args);
			api_error(a, rt->req, 400, "invalid_field", "bad cursor (give the \"next\" "
			    "of the page before)");
			return false;
		}
		json_object_set_new(args, "cursor", numeric ?
		    json_integer((json_int_t)cursor) : json_string(v));
	}
	return true;
}

static void
api_device_requests(struct route *rt, const char *device)
{
	struct api *a = rt->a;
	const char *v;
	json_t *body, *args, *x;
	long wait = 0;

	if (api_is_get(rt)) {
		args = json_pack("{s:s}", "device", device);
		if ((v = evhttp_find_header(&rt->query, "state")) != NULL) {
			static const char *states[] = { "queued", "sent", "confirmed", "failed",
			    "timeout", "expired", "cancelled" };
			bool known = false;
			for (size_t i = 0; i < sizeof(states) / sizeof(states[0]); i++)
				known |= strcmp(v, states[i]) == 0;
			if (!known) {
				json_decref(args);
				api_error(a, rt->req, 400, "invalid_field", "unknown state \"%.32s\"", v);
				return;
			}
			json_object_set_new(args, "state", json_string(v));
		}
		if (!api_list_args(rt, args))
			return;
		api_call(a, rt->req, "device.requests", args, 0);
		return;
	}
	if (rt->method != EVHTTP_REQ_POST) {
		api_method_not_allowed(rt, "GET, HEAD, POST");
		return;
	}
	if ((v = evhttp_find_header(&rt->query, "wait")) != NULL &&
	    (wait = api_query_int(v, 0, API_WAIT_MAX)) < 0) {
		api_error(a, rt->req, 400, "invalid_field", "wait must be an integer of 0..%d seconds",
		    API_WAIT_MAX);
		return;
	}
	if ((body = api_body(a, rt->req, "params")) == NULL)
		return;
	args = json_pack("{s:s,s:I}", "device", device, "wait", (json_int_t)wait);
	if (!api_known_fields(a, rt->req, body, (const char *const[]){ "type", "params",
	    "timeout", "commandId", NULL }, "type, params, timeout, commandId") ||
	    !api_type_params(a, rt->req, body, args))
		goto out;
	if ((x = json_object_get(body, "timeout")) != NULL) {
		if (!json_is_integer(x) || json_integer_value(x) < 1 ||
		    json_integer_value(x) > a->w->cf->max_timeout) {
			api_error(a, rt->req, 400, "invalid_field",
			    "\"timeout\" must be an integer of 1..%d seconds", a->w->cf->max_timeout);
			goto out;
		}
		json_object_set(args, "timeout", x);
	}
	if ((x = json_object_get(body, "commandId")) != NULL) {
		if (!api_id_ok(json_string_value(x))) {
			api_error(a, rt->req, 400, "invalid_field",
			    "\"commandId\" must be a string of 1..128 characters of [A-Za-z0-9._:-], "
			    "starting alphanumeric");
			goto out;
		}
		json_object_set(args, "commandId", x);
	} else {
		/* Ours, so that the call can be repeated (api_gen_check). */
		char cid[ULID_LEN];

		ulid_random(cid);
		json_object_set_new(args, "commandId", json_string(cid));
	}
	json_decref(body);
	api_call(a, rt->req, "request.create", args, (int)wait);
	return;
out:
	json_decref(args);
	json_decref(body);
}

static void
api_devices(struct route *rt)
{
	struct api *a = rt->a;
	const char *device = rt->nseg > 2 ? rt->seg[2] : NULL, *sub = rt->nseg > 3 ? rt->seg[3] : NULL;
	const char *v;
	json_t *args, *body;
	const char *text;
	size_t len;

	if (device == NULL) {
		if (rt->method == EVHTTP_REQ_POST) {
			api_error(a, rt->req, 501, "not_implemented", "device provisioning is not available yet");
			return;
		}
		if (!api_is_get(rt)) {
			api_method_not_allowed(rt, "GET, HEAD, POST");
			return;
		}
		args = json_object();
		if ((v = evhttp_find_header(&rt->query, "online")) != NULL) {
			if (strcmp(v, "true") != 0 && strcmp(v, "false") != 0) {
				json_decref(args);
				api_error(a, rt->req, 400, "invalid_field", "online must be true or false");
				return;
			}
			json_object_set_new(args, "online", json_boolean(strcmp(v, "true") == 0));
		}
		if (!api_list_args(rt, args))
			return;
		api_call(a, rt->req, "device.list", args, 0);
		return;
	}
	if (!api_id_ok(device)) {
		api_error(a, rt->req, 400, "invalid_id",
		    "a device id is 1..128 characters of [A-Za-z0-9._:-], starting alphanumeric");
		return;
	}
	if (sub == NULL) {
		if (api_is_get(rt))
			api_call(a, rt->req, "device.get", json_pack("{s:s}", "device", device), 0);
		else if (rt->method == EVHTTP_REQ_DELETE)
			api_error(a, rt->req, 501, "not_implemented", "device revocation is not available yet");
		else
			api_method_not_allowed(rt, "GET, HEAD, DELETE");
		return;
	}
	if (rt->nseg > 4) {
		api_error(a, rt->req, 404, "not_found", "no such resource");
		return;
	}
	if (strcmp(sub, "requests") == 0) {
		api_device_requests(rt, device);
	} else if (strcmp(sub, "events") == 0) {
		if (rt->method != EVHTTP_REQ_POST) {
			api_method_not_allowed(rt, "POST");
			return;
		}
		if ((body = api_body(a, rt->req, "params")) == NULL)
			return;
		args = json_pack("{s:s}", "device", device);
		if (api_known_fields(a, rt->req, body, (const char *const[]){ "type", "params",
		    NULL }, "type, params") && api_type_params(a, rt->req, body, args))
			api_call(a, rt->req, "event.publish", json_incref(args), 0);
		json_decref(args);
		json_decref(body);
	} else if (strcmp(sub, "config") == 0) {
		if (rt->method == EVHTTP_REQ_PUT) {
			/* Published as sent (whitespace between tokens out). */
			if ((text = api_body_text(a, rt->req, &len)) == NULL)
				return;
			if ((body = api_raw(text, len)) == NULL) {
				api_error(a, rt->req, 503, "unavailable", "out of memory");
				return;
			}
			api_call(a, rt->req, "config.put", json_pack("{s:s,s:o}", "device", device,
			    "config", body), 0);
		} else if (rt->method == EVHTTP_REQ_DELETE)
			api_call(a, rt->req, "config.delete", json_pack("{s:s}", "device", device), 0);
		else
			api_method_not_allowed(rt, "PUT, DELETE");
	} else if (strcmp(sub, "rotate") == 0) {
		if (rt->method == EVHTTP_REQ_POST)
			api_error(a, rt->req, 501, "not_implemented", "key rotation is not available yet");
		else
			api_method_not_allowed(rt, "POST");
	} else
		api_error(a, rt->req, 404, "not_found", "no such resource");
}

static void
api_requests(struct route *rt)
{
	struct api *a = rt->a;
	const char *cid = rt->nseg == 3 ? rt->seg[2] : NULL;

	if (cid == NULL) {
		api_error(a, rt->req, 404, "not_found", "no such resource");
		return;
	}
	if (!api_id_ok(cid)) {
		api_error(a, rt->req, 400, "invalid_id",
		    "a commandId is 1..128 characters of [A-Za-z0-9._:-], starting alphanumeric");
		return;
	}
	if (api_is_get(rt))
		api_call(a, rt->req, "request.get", json_pack("{s:s}", "commandId", cid), 0);
	else if (rt->method == EVHTTP_REQ_DELETE)
		api_call(a, rt->req, "request.cancel", json_pack("{s:s}", "commandId", cid), 0);
	else
		api_method_not_allowed(rt, "GET, HEAD, DELETE");
}

/* Split "/v1/devices/x/requests" into decoded segments; -1 if malformed. */
static int
api_split(struct route *rt, const char *path)
{
	const char *p = path, *slash;
	char enc[512];
	size_t len, dlen;

	if (*p != '/')
		return -1;
	while (*p == '/') {
		p++;
		if (*p == '\0')
			break;       /* a trailing slash */
		if (rt->nseg == API_MAX_SEGS)
			return -1;
		slash = strchr(p, '/');
		len = slash ? (size_t)(slash - p) : strlen(p);
		if (len == 0 || len >= sizeof(enc))
			return -1;
		memcpy(enc, p, len);
		enc[len] = '\0';
		rt->seg[rt->nseg] = evhttp_uridecode(enc, 0, &dlen);
		if (rt->seg[rt->nseg] == NULL)
			return -1;
		if (strlen(rt->seg[rt->nseg]) != dlen) {   /* an encoded NUL */
			free(rt->seg[rt->nseg]);
			return -1;
		}
		rt->nseg++;
		p += len;
	}
	return 0;
}

/*
 * The query's parameters into q (a lookup finds the first of a name).  A
 * parameter without "=" has the empty value (as WHATWG URLs read "?foo"),
 * and empty ones ("?&&") are nothing; evhttp_parse_query_str() refuses
 * both.  -1 if out of memory or malformed.
 */
static int
api_query(const char *query, struct evkeyvalq *q)
{
	char *fixed, *o;
	const char *p = query, *amp;
	size_t n;
	int rc;

	if (query == NULL || *query == '\0')
		return 0;
	if ((fixed = o = malloc(2 * strlen(query) + 1)) == NULL)
		return -1;
	for (; *p != '\0'; p = *amp != '\0' ? amp + 1 : amp) {
		amp = strchrnul(p, '&');
		if ((n = (size_t)(amp - p)) == 0)
			continue;
		if (o != fixed)
			*o++ = '&';
		memcpy(o, p, n);
		o += n;
		if (memchr(p, '=', n) == NULL)
			*o++ = '=';
	}
	*o = '\0';
	rc = fixed[0] != '\0' ? evhttp_parse_query_str(fixed, q) : 0;
	free(fixed);
	return rc;
}

static void
api_handle(struct evhttp_request *req, void *arg)
{
	struct api *a = arg;
	const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
	const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
	const char *query = uri ? evhttp_uri_get_query(uri) : NULL;
	struct route rt;

	worker_count(a->w, STAT_api_requests, 1);
	memset(&rt, 0, sizeof(rt));
	rt.a = a;
	rt.req = req;
	rt.method = evhttp_request_get_command(req);
	TAILQ_INIT(&rt.query);
	if (a->w->stopping) {
		api_error(a, req, 503, "shutting_down", "herald is shutting down");
		return;
	}
	if (path == NULL || *path == '\0')
		path = "/";
	/* With or without a trailing slash, as the API's own paths. */
	if (strcmp(path, "/metrics") == 0 || strcmp(path, "/healthz") == 0 ||
	    strcmp(path, "/metrics/") == 0 || strcmp(path, "/healthz/") == 0) {
		if (!api_is_get(&rt))
			api_method_not_allowed(&rt, "GET, HEAD");
		else if (path[1] == 'm')
			api_metrics(a, req);
		else
			api_healthz(a, req);
		return;
	}
	if (!api_authorized(a, req)) {
		evhttp_add_header(evhttp_request_get_output_headers(req), "WWW-Authenticate",
		    "Bearer realm=\"herald\"");
		api_error(a, req, 401, "unauthorized", "a valid bearer token is required");
		return;
	}
	if (api_split(&rt, path) == -1 || api_query(query, &rt.query) == -1) {
		api_error(a, req, 400, "bad_request", "malformed path or query");
		goto out;
	}
	if (rt.nseg < 2 || strcmp(rt.seg[0], "v1") != 0)
		api_error(a, req, 404, "not_found", "no such resource");
	else if (strcmp(rt.seg[1], "devices") == 0)
		api_devices(&rt);
	else if (strcmp(rt.seg[1], "requests") == 0)
		api_requests(&rt);
	else
		api_error(a, req, 404, "not_found", "no such resource");
out:
	for (int i = 0; i < rt.nseg; i++)
		free(rt.seg[i]);
	evhttp_clear_headers(&rt.query);
}

/* ---- listening ---- */

static void
api_accept_resume(evutil_socket_t fd, short what, void *arg)
{
	struct api *a = arg;

	if (a->bound != NULL && !a->w->stopping)
		evconnlistener_enable(evhttp_bound_socket_get_listener(a->bound));
}

/* Out of file descriptors: pause accepting instead of spinning on accept(). */
static void
api_accept_error(struct evconnlistener *l, void *arg)
{
	struct api *a = &api;   /* arg is evhttp's, not ours */
	struct timeval tv = { 0, 200 * 1000 };
	int err = EVUTIL_SOCKET_ERROR();

	log_ratelimited(LOG_WARNING, "accept: %s; pausing for 200 ms", strerror(err));
	evconnlistener_disable(l);
	evtimer_add(a->accept_resume, &tv);
}

int api_listen_fd = -1;

/* Split "host:port" or "[v6]:port". */
static int
api_split_listen(const char *addr, char *host, size_t hostlen, char *port, size_t portlen)
{
	const char *colon;

	if (addr[0] == '[') {
		const char *end = strchr(addr, ']');

		if (end == NULL || end[1] != ':')
			return -1;
		snprintf(host, hostlen, "%.*s", (int)(end - addr - 1), addr + 1);
		colon = end + 1;
	} else {
		if ((colon = strrchr(addr, ':')) == NULL)
			return -1;
		snprintf(host, hostlen, "%.*s", (int)(colon - addr), addr);
	}
	snprintf(port, portlen, "%s", colon + 1);
	return 0;
}

/* A listening socket on [api] listen (non-blocking), or -1 with err set. */
int
api_listen_open(const char *addr, char *err, size_t errlen)
{
	struct addrinfo hints, *res, *ai;
	char host[256], port[16];
	int fd = -1, rc, one = 1, e = 0;

	if (api_split_listen(addr, host, sizeof(host), port, sizeof(port)) == -1) {
		snprintf(err, errlen, "not host:port");
		return -1;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	if ((rc = getaddrinfo(host[0] != '\0' ? host : NULL, port, &hints, &res)) != 0) {
		snprintf(err, errlen, "%s", gai_strerror(rc));
		return -1;
	}
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
		    ai->ai_protocol);
		if (fd == -1) {
			e = errno;
			continue;
		}
		if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
		    bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, SOMAXCONN) == 0)
			break;
		e = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1)
		snprintf(err, errlen, "%s", strerror(e != 0 ? e : EADDRNOTAVAIL));
	return fd;
}

/* Serve the socket the supervisor opened (see api_listen_open). */
static int
api_bind(struct api *a)
{
	if (api_listen_fd < 0) {
		errno = EBADF;
		return -1;
	}
	a->bound = evhttp_accept_socket_with_handle(a->http, api_listen_fd);
	if (a->bound == NULL)
		return -1;
	evconnlistener_set_error_cb(evhttp_bound_socket_get_listener(a->bound), api_accept_error);
	return 0;
}

static void
api_limits(struct api *a)
{
	evhttp_set_max_body_size(a->http, (ev_ssize_t)a->w->cf->api_max_body);
	api_hash_tokens(a);
}

static void
api_reload(struct worker *w, const struct config *old)
{
	struct api *a = w->arg;

	/* A new [api] listen restarts this worker instead (supervisor). */
	api_limits(a);
}

/* ---- stopping ---- */

static void
api_stop_check(evutil_socket_t fd, short what, void *arg)
{
	struct api *a = arg;
	struct timeval tv = { 0, 100 * 1000 };
	struct api_call *c;

	if (a->ncalls > 0 && mono_ms() < a->stop_deadline) {
		evtimer_add(a->stop_timer, &tv);
		return;
	}
	for (int i = 0; i < API_NCALLB; i++)
		while ((c = LIST_FIRST(&a->calls[i])) != NULL) {
			api_error(a, c->req, 503, "shutting_down", "herald is shutting down");
			api_call_free(a, c);
		}
	/* One more pass of the loop writes the last answers out. */
	if (!a->flushed) {
		a->flushed = true;
		evtimer_add(a->stop_timer, &tv);
		return;
	}
	worker_exit(a->w, 0);
}

static void
api_stop(struct worker *w)
{
	struct api *a = w->arg;
	struct timeval tv = { 0, 0 };

	/* Stop taking connections; calls in flight get their answers first. */
	if (a->bound != NULL) {
		evhttp_del_accept_socket(a->http, a->bound);
		a->bound = NULL;
	}
	a->stop_deadline = mono_ms() + API_STOP_GRACE_MS;
	evtimer_add(a->stop_timer, &tv);
}

int
api_main(struct worker *w)
{
	struct api *a = &api;
	struct rlimit rl;
	int code;

	a->w = w;
	w->arg = a;
	/* Call numbers differ between lives: a late reply to a call of the
	 * previous api process must not answer a new one. */
	a->next_reqid = (uint64_t)w->generation << 40;
	for (int i = 0; i < API_NCALLB; i++)
		LIST_INIT(&a->calls[i]);
	if (sodium_init() < 0) {
		log_err("libsodium failed to initialize");
		return 1;
	}
	/* Room for many slow clients before accept() runs out of descriptors. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max > 65536 ? 65536 : rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	a->http = evhttp_new(w->base);
	a->accept_resume = evtimer_new(w->base, api_accept_resume, a);
	a->stop_timer = evtimer_new(w->base, api_stop_check, a);
	a->gen_check = evtimer_new(w->base, api_gen_check, a);
	if (a->http == NULL || a->accept_resume == NULL || a->stop_timer == NULL ||
	    a->gen_check == NULL)
		return 1;
	a->router_gen = api_router_gen(a);
	/* Every other method reaches api_handle, which answers 405 with
	 * SPEC's body and an Allow header.  CONNECT (a tunnel: its target is
	 * no path) is left to libevent, which answers 501 as it does for
	 * methods it does not know. */
	evhttp_set_allowed_methods(a->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
	    EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE | EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
	    EVHTTP_REQ_PATCH);
	evhttp_set_max_headers_size(a->http, API_MAX_HEADERS);
	evhttp_set_timeout(a->http, API_CLIENT_TIMEOUT);
	/* Read an oversized body to its end before answering 413, so the
	 * client sees the answer instead of a reset connection. */
	evhttp_set_flags(a->http, EVHTTP_SERVER_LINGERING_CLOSE);
	evhttp_set_bevcb(a->http, api_bevcb, a);
	evhttp_set_gencb(a->http, api_handle, a);
	api_limits(a);
	if (api_bind(a) == -1) {
		log_err("[api] listen %s: cannot listen there: %s", w->cf->api_listen, strerror(errno));
		return WORKER_EXIT_FATAL;
	}
	w->hooks.fabric = api_fabric;
	w->hooks.reload = api_reload;
	w->hooks.stop = api_stop;
	if (worker_join_fabric(w) == -1)
		return 1;
	log_info("REST API listening on %s", w->cf->api_listen);
	code = worker_loop(w);
	evhttp_free(a->http);
	jsoncheck_free(&a->jc);
	return code;
}
