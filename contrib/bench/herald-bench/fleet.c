/*
 * herald-bench fleet: N simulated devices on one broker.  Each publishes
 * numbered, timestamped status, telemetry and events, answers requests, and
 * may drop off and come back; every count is in the final report.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <mosquitto.h>

#include "bench.h"
#include "mosq.h"
#include "util.h"

/* What a device publishes; index into the seq and sent arrays. */
enum fleet_kind { FK_TELEMETRY, FK_STATUS, FK_RESPONSE, FK_EVENT, FK_NKINDS };
static const char *const fleet_topic[FK_NKINDS] = { "telemetry", "status", "response", "events" };
/* the names the sink (and herald's envelopes) use */
static const char *const fleet_kind_name[FK_NKINDS] = { "telemetry", "status", "response", "event" };

enum fleet_state { FS_IDLE, FS_CONNECTING, FS_UP, FS_WAIT, FS_DONE };

struct fleet;

struct fleet_dev {
	struct fleet *f;
	struct bench_device *d;
	struct mosquitto *m;
	struct mqev io;
	struct event *tick;             /* next publication while up */
	struct event *retry;            /* reconnect, or come back after churn */
	enum fleet_state state;
	bool churned;                   /* this drop was ours */
	bool refused;                   /* CONNACK said no */
	char bind[16];
	uint64_t seq[FK_NKINDS];        /* last seq sent, per kind */
	uint64_t t0;                    /* telemetry slot 0 (mono µs) */
	uint64_t slot;                  /* next telemetry slot */
	uint64_t next_status, next_event;
	uint64_t counter;               /* e2e counter, device -> herald */
	uint64_t out_sent, out_done;    /* messages handed to libmosquitto, and completed */
	unsigned backoff_ms;
};

struct fleet_opts {
	const char *host;
	int port;
	size_t devices;
	const char *prefix, *token, *file;
	double ramp, rate, fail_ratio, churn;
	uint64_t status_every, event_every, duration, churn_down, drain, answer_delay;
	uint64_t count;
	int qos, keepalive, max_inflight, key_version;
	size_t size;
	bool have_range, churn_clean, e2e, json, wakeup_pair;
	uint32_t range_first, range_last;
	const char *seq_out;
	pid_t herald_pid;
	uint64_t seed, progress;
};

struct fleet_stats {
	uint64_t connects, connect_failures, connack_refused, drops, churn_drops;
	uint64_t reconnects, sent[FK_NKINDS], publish_errors, published, skipped_offline;
	uint64_t req_received, events_received, config_received, invalid_received;
	uint64_t answered_ok, answered_fail, answers_dropped, open_failed;
	size_t connected, connected_max;
};

struct fleet {
	struct fleet_opts o;
	struct fleet_stats s;
	struct event_base *base;
	struct bench_device *devs;
	struct fleet_dev *fd;
	size_t ndev, started;
	struct event *ramp_ev, *sec_ev, *end_ev, *sig_int, *sig_term, *drain_ev;
	uint64_t t_start, t_all_connected, t_stop, t_end;
	uint64_t cpu_start, cpu_all, cpu_stop, sent_all, sent_stop;
	int fds_base, fds_peak;
	long rss_base, rss_peak;
	size_t peak_open;               /* clients with an open socket at the sample */
	bool stopping, disconnecting;
	uint64_t answers_total, churn_carry_milli, churn_last, rng;
	uint64_t last_progress, last_progress_sent;
	struct bench_herald herald;
	LIST_HEAD(, fleet_answer) answers;      /* waiting for --answer-delay-ms */
	size_t tele_done;               /* devices that sent their --count */
};

static void fleet_connect(struct fleet_dev *fd);
static void fleet_schedule(struct fleet_dev *fd);
static void fleet_stop(struct fleet *f, const char *why);
static uint64_t fleet_period(const struct fleet *f);
static uint64_t fleet_sent_total(const struct fleet *f);

static const struct option fleet_longopts[] = {
	{ "host", required_argument, NULL, 'H' },
	{ "port", required_argument, NULL, 'p' },
	{ "devices", required_argument, NULL, 'n' },
	{ "id-prefix", required_argument, NULL, 'P' },
	{ "token", required_argument, NULL, 'T' },
	{ "devices-file", required_argument, NULL, 'F' },
	{ "ramp", required_argument, NULL, 'r' },
	{ "rate", required_argument, NULL, 'R' },
	{ "status-every", required_argument, NULL, 'S' },
	{ "event-every", required_argument, NULL, 'E' },
	{ "duration", required_argument, NULL, 'd' },
	{ "count", required_argument, NULL, 'c' },
	{ "qos", required_argument, NULL, 'q' },
	{ "size", required_argument, NULL, 'z' },
	{ "keepalive", required_argument, NULL, 'k' },
	{ "source-range", required_argument, NULL, 'b' },
	{ "answer-delay-ms", required_argument, NULL, 'a' },
	{ "fail-ratio", required_argument, NULL, 'f' },
	{ "churn", required_argument, NULL, 'C' },
	{ "churn-down", required_argument, NULL, 'D' },
	{ "churn-clean", no_argument, NULL, 'L' },
	{ "e2e", no_argument, NULL, 'e' },
	{ "key-version", required_argument, NULL, 'K' },
	{ "max-inflight", required_argument, NULL, 'I' },
	{ "drain", required_argument, NULL, 'W' },
	{ "seq-out", required_argument, NULL, 'o' },
	{ "herald-pid", required_argument, NULL, 'h' + 256 },
	{ "seed", required_argument, NULL, 's' },
	{ "progress", required_argument, NULL, 'g' },
	{ "mosq-wakeup-pair", no_argument, NULL, 'w' },
	{ "json", no_argument, NULL, 'j' },
	{ "help", no_argument, NULL, '?' + 256 },
	{ NULL, 0, NULL, 0 }
};

static void
fleet_usage(FILE *out)
{
	fprintf(out,
"usage: herald-bench fleet [options]\n"
"Simulate devices on an MQTT broker: numbered status, telemetry and events;\n"
"requests on device/<id>/command answered on device/<id>/response.\n"
"\n"
"  --host H               broker address (127.0.0.1)\n"
"  --port P               broker port (1883)\n"
"  --devices N            generated devices <prefix>1..<prefix>N (10)\n"
"  --id-prefix P          prefix of generated ids (bench-)\n"
"  --token T              password of generated devices (none)\n"
"  --devices-file F       \"id token [key_base64]\" lines instead (token - = none)\n"
"  --ramp R               connect R devices per second (0 = all at once)\n"
"  --rate R               telemetry messages per second per device (1; 0 = none)\n"
"  --status-every S       a status message every S seconds (0 = only at connect)\n"
"  --event-every S        an event message every S seconds (0 = none)\n"
"  --duration S           stop after S seconds (0 = until --count or a signal)\n"
"  --count N              stop each device after N telemetry messages\n"
"  --qos Q                telemetry QoS, 0 or 1 (1); status, events, responses use 1\n"
"  --size B               pad payloads to B bytes\n"
"  --keepalive S          MQTT keepalive (60)\n"
"  --source-range A-B     bind device i to address A+i (mod range) before connect\n"
"  --answer-delay-ms MS   answer requests after MS milliseconds (0)\n"
"  --fail-ratio F         answer this fraction of requests with success:false (0)\n"
"  --churn P              P%% of the connected devices drop off per minute (0..6000)\n"
"  --churn-down S         a dropped device comes back after S seconds (5)\n"
"  --churn-clean          drop with DISCONNECT (no Last Will) instead of a cut\n"
"  --e2e                  seal payloads of devices that have a key (SPEC 1)\n"
"  --key-version V        key version written in sealed payloads (1)\n"
"  --max-inflight N       QoS 1 messages in flight per device (20)\n"
"  --drain S              at the end, wait up to S seconds for PUBACKs (10)\n"
"  --seq-out FILE         write \"id kind last_seq\" per device at the end\n"
"  --herald-pid PID       report CPU and RSS of PID and its descendants\n"
"  --seed N               random seed (1)\n"
"  --progress S           a progress line on stderr every S seconds\n"
"  --mosq-wakeup-pair     keep libmosquitto's per-client socketpair (2 more fds)\n"
"  --json                 print the report as JSON\n");
}

static int
fleet_opts_parse(struct fleet_opts *o, int argc, char **argv)
{
	int c, li = 0;
	uint64_t v;

	memset(o, 0, sizeof(*o));
	o->host = "127.0.0.1";
	o->port = 1883;
	o->devices = 10;
	o->prefix = "bench-";
	o->rate = 1;
	o->qos = 1;
	o->keepalive = 60;
	o->max_inflight = 20;
	o->key_version = 1;
	o->churn_down = 5000000;
	o->drain = 10000000;
	o->seed = 1;
	optind = 1;
	while ((c = getopt_long(argc, argv, "", fleet_longopts, &li)) != -1) {
		int bad = 0;

		switch (c) {
		case 'H': o->host = optarg; break;
		case 'p': bad = bench_parse_u64(optarg, &v) || v == 0 || v > 65535; o->port = (int)v; break;
		case 'n': bad = bench_parse_u64(optarg, &v) || v == 0 || v > 10000000; o->devices = v; break;
		case 'P': o->prefix = optarg; break;
		case 'T': o->token = optarg; break;
		case 'F': o->file = optarg; break;
		case 'r': bad = bench_parse_double(optarg, &o->ramp) || o->ramp < 0; break;
		case 'R': bad = bench_parse_double(optarg, &o->rate) || o->rate < 0 || o->rate > 1e6; break;
		case 'S': bad = bench_parse_duration(optarg, &o->status_every); break;
		case 'E': bad = bench_parse_duration(optarg, &o->event_every); break;
		case 'd': bad = bench_parse_duration(optarg, &o->duration); break;
		case 'c': bad = bench_parse_u64(optarg, &o->count); break;
		case 'q': bad = bench_parse_u64(optarg, &v) || v > 1; o->qos = (int)v; break;
		case 'z': bad = bench_parse_u64(optarg, &v) || v > 16 * 1024 * 1024; o->size = v; break;
		case 'k': bad = bench_parse_u64(optarg, &v) || v < 5 || v > 65535; o->keepalive = (int)v; break;
		case 'b': bad = bench_parse_range(optarg, &o->range_first, &o->range_last); o->have_range = true; break;
		case 'a': bad = bench_parse_u64(optarg, &o->answer_delay); o->answer_delay *= 1000; break;
		case 'f': bad = bench_parse_double(optarg, &o->fail_ratio) || o->fail_ratio < 0 || o->fail_ratio > 1; break;
		case 'C': bad = bench_parse_double(optarg, &o->churn) || o->churn < 0 || o->churn > 6000; break;
		case 'D': bad = bench_parse_duration(optarg, &o->churn_down); break;
		case 'L': o->churn_clean = true; break;
		case 'e': o->e2e = true; break;
		case 'K': bad = bench_parse_u64(optarg, &v) || v < 1 || v > 255; o->key_version = (int)v; break;
		case 'I': bad = bench_parse_u64(optarg, &v) || v < 1 || v > 65535; o->max_inflight = (int)v; break;
		case 'W': bad = bench_parse_duration(optarg, &o->drain); break;
		case 'o': o->seq_out = optarg; break;
		case 'h' + 256: bad = bench_parse_u64(optarg, &v) || v == 0 || v > INT32_MAX; o->herald_pid = (pid_t)v; break;
		case 's': bad = bench_parse_u64(optarg, &o->seed); break;
		case 'g': bad = bench_parse_duration(optarg, &o->progress); break;
		case 'w': o->wakeup_pair = true; break;
		case 'j': o->json = true; break;
		case '?' + 256: fleet_usage(stdout); return 1;
		default: fleet_usage(stderr); return -1;
		}
		if (bad) {
			fprintf(stderr, "herald-bench fleet: bad value for --%s: %s\n",
			    fleet_longopts[li].name, optarg);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "herald-bench fleet: unexpected argument %s\n", argv[optind]);
		return -1;
	}
	if (o->file == NULL && o->devices == 0)
		return -1;
	return 0;
}

/* --- publishing ------------------------------------------------------------ */

static bool
fleet_sealed(const struct fleet_dev *fd)
{
	return fd->f->o.e2e && fd->d->has_key;
}

/* Publish body on device/<id>/<kind>; seals it when the device does e2e. */
static int
fleet_publish(struct fleet_dev *fd, enum fleet_kind k, const char *body, size_t len,
    int qos, bool retain)
{
	struct fleet *f = fd->f;
	char topic[192];
	uint8_t *sealed = NULL;
	const void *payload = body;
	int rc;

	snprintf(topic, sizeof(topic), "device/%s/%s", fd->d->id, fleet_topic[k]);
	if (fleet_sealed(fd)) {
		int n;

		if ((sealed = malloc(len + SEAL_OVERHEAD)) == NULL)
			return -1;
		n = seal_box(fd->d->key, (uint8_t)f->o.key_version, ++fd->counter, topic,
		    body, len, sealed, len + SEAL_OVERHEAD);
		if (n < 0) {
			free(sealed);
			f->s.publish_errors++;
			return -1;
		}
		payload = sealed;
		len = (size_t)n;
	}
	rc = mosquitto_publish(fd->m, NULL, topic, (int)len, payload, qos, retain);
	free(sealed);
	switch (rc) {
	case MOSQ_ERR_SUCCESS:
		break;
	case MOSQ_ERR_NO_CONN:
	case MOSQ_ERR_ERRNO:
	case MOSQ_ERR_CONN_LOST:
		/*
		 * The socket failed under the write.  At QoS 1 the message is queued
		 * all the same and libmosquitto sends it again after the reconnect;
		 * at QoS 0 it went into the output queue, which the reconnect drops.
		 * Either way its seq is spent: it is counted as sent (a QoS 0 loss
		 * shows at the sink), except at QoS 0 without a connection, where
		 * nothing was queued.
		 */
		f->s.publish_errors++;
		if (qos == 0 && rc == MOSQ_ERR_NO_CONN)
			return -1;
		break;
	default:
		f->s.publish_errors++;
		return -1;
	}
	f->s.sent[k]++;
	fd->out_sent++;
	return 0;
}

/*
 * {"seq":N,"ts":µs,"dev":"id",<extra>,"pad":"xxx"}: extra is already JSON
 * members (or empty); pad brings the payload up to --size bytes.
 */
static size_t
fleet_payload(const struct fleet_dev *fd, enum fleet_kind k, const char *extra,
    char *buf, size_t cap)
{
	size_t n, want = fd->f->o.size;

	n = (size_t)snprintf(buf, cap, "{\"seq\":%" PRIu64 ",\"ts\":%" PRIu64 ",\"dev\":\"%s\"%s%s",
	    fd->seq[k], now_us(), fd->d->id, *extra ? "," : "", extra);
	if (n >= cap - 2)
		return 0;
	if (want > n + 10 && want < cap - 1) {
		size_t pad = want - n - 10;     /* ,"pad":"" and } */

		memcpy(buf + n, ",\"pad\":\"", 8);
		memset(buf + n + 8, 'x', pad);
		n += 8 + pad;
		buf[n++] = '"';
	}
	buf[n++] = '}';
	buf[n] = '\0';
	return n;
}

static void
fleet_send(struct fleet_dev *fd, enum fleet_kind k, const char *extra, int qos, bool retain)
{
	size_t cap = fd->f->o.size + 1024, n;
	char stackbuf[2048], *buf = cap <= sizeof(stackbuf) ? stackbuf : malloc(cap);

	if (buf == NULL)
		return;
	fd->seq[k]++;
	n = fleet_payload(fd, k, extra, buf, cap);
	if (n == 0 || fleet_publish(fd, k, buf, n, qos, retain) == -1)
		fd->seq[k]--;           /* not sent: the next one takes this seq */
	if (buf != stackbuf)
		free(buf);
}

static void
fleet_send_telemetry(struct fleet_dev *fd)
{
	char extra[128];

	snprintf(extra, sizeof(extra), "\"cpu\":%u,\"memory\":512,\"uptime\":%" PRIu64,
	    (unsigned)(fd->seq[FK_TELEMETRY] % 100), (mono_us() - fd->f->t_start) / 1000000);
	fleet_send(fd, FK_TELEMETRY, extra, fd->f->o.qos, false);
}

static void
fleet_send_status(struct fleet_dev *fd)
{
	char extra[128];

	snprintf(extra, sizeof(extra), "\"state\":\"online\",\"version\":\"herald-bench\",\"ip\":\"%s\"",
	    fd->bind[0] ? fd->bind : "127.0.0.1");
	fleet_send(fd, FK_STATUS, extra, 1, true);
}

static void
fleet_send_event(struct fleet_dev *fd)
{
	fleet_send(fd, FK_EVENT, "\"type\":\"bench\"", 1, false);
}

/* --- requests ------------------------------------------------------------- */

/* A request waiting for --answer-delay-ms; listed so the exit can free it. */
struct fleet_answer {
	struct fleet_dev *fd;
	bool fail;
	char *command_id, *type;
	struct event *ev;
	LIST_ENTRY(fleet_answer) link;
};

static void
fleet_answer_free(struct fleet_answer *a)
{
	if (a->ev != NULL) {
		LIST_REMOVE(a, link);
		event_free(a->ev);
	}
	free(a->command_id);
	free(a->type);
	free(a);
}

static void
fleet_answer_send(struct fleet_answer *a)
{
	struct fleet_dev *fd = a->fd;
	struct fleet *f = fd->f;
	json_t *extra;
	char *s;
	size_t len;

	if (fd->state != FS_UP || f->disconnecting) {
		f->s.answers_dropped++;
		goto out;
	}
	if (a->fail)
		extra = json_pack("{ss sb s{ss ss}}", "commandId", a->command_id, "success", 0,
		    "error", "code", "bench_failure", "message", "failed on purpose (--fail-ratio)");
	else
		extra = json_pack("{ss sb s{ss ss}}", "commandId", a->command_id, "success", 1,
		    "result", "type", a->type ? a->type : "", "device", fd->d->id);
	s = extra ? json_dumps(extra, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
	json_decref(extra);
	if (s == NULL) {
		f->s.answers_dropped++;
		goto out;
	}
	/* the members without their braces go after seq, ts and dev */
	len = strlen(s);
	s[len - 1] = '\0';
	fleet_send(fd, FK_RESPONSE, s + 1, 1, false);
	free(s);
	if (a->fail)
		f->s.answered_fail++;
	else
		f->s.answered_ok++;
	mqev_sync(&fd->io);
out:
	fleet_answer_free(a);
}

static void
fleet_answer_cb(evutil_socket_t fd, short what, void *arg)
{
	fleet_answer_send(arg);
}

static void
fleet_request(struct fleet_dev *fd, const char *command_id, const char *type)
{
	struct fleet *f = fd->f;
	struct fleet_answer *a = calloc(1, sizeof(*a));
	uint64_t k = f->answers_total++;

	if (a == NULL)
		return;
	a->fd = fd;
	a->command_id = strdup(command_id);
	a->type = type ? strdup(type) : NULL;
	/* exactly floor(n * ratio) of the first n answers fail, spread evenly */
	a->fail = floor((double)(k + 1) * f->o.fail_ratio) > floor((double)k * f->o.fail_ratio);
	if (f->o.answer_delay == 0) {
		fleet_answer_send(a);
		return;
	}
	struct timeval tv = { (time_t)(f->o.answer_delay / 1000000),
		(suseconds_t)(f->o.answer_delay % 1000000) };
	if ((a->ev = evtimer_new(f->base, fleet_answer_cb, a)) == NULL || evtimer_add(a->ev, &tv) == -1) {
		f->s.answers_dropped++;
		if (a->ev)
			event_free(a->ev);
		a->ev = NULL;
		fleet_answer_free(a);
		return;
	}
	LIST_INSERT_HEAD(&f->answers, a, link);
}

/* --- mosquitto callbacks --------------------------------------------------- */

/*
 * What the simulated devices cost this process: fds and RSS against the
 * baseline taken before the first connect, per client with an open socket.
 * Kept at the largest number of open clients seen.
 */
static void
fleet_sample_self(struct fleet *f)
{
	size_t open = 0;

	for (size_t i = 0; i < f->ndev; i++)
		if (f->fd[i].io.rd != NULL)
			open++;
	if (open == 0 || open < f->peak_open)
		return;
	f->peak_open = open;
	f->fds_peak = bench_self_fds();
	f->rss_peak = bench_self_rss_kb();
}

static void
fleet_on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg)
{
	struct fleet_dev *fd = obj;
	struct fleet *f = fd->f;
	const char *kind = strrchr(msg->topic, '/');
	uint8_t *plain = NULL;
	const char *body = msg->payload;
	size_t len = (size_t)msg->payloadlen;
	json_t *doc, *cid, *eid, *type;

	if (kind != NULL && strcmp(kind, "/config") == 0) {
		f->s.config_received++;
		return;
	}
	if (len > 0 && ((const uint8_t *)body)[0] == 0x01 && fd->d->has_key) {
		uint8_t kv;
		uint64_t ctr;
		int n;

		if ((plain = malloc(len)) == NULL)
			return;
		n = seal_open(fd->d->key, msg->topic, msg->payload, len, plain, len, &kv, &ctr);
		if (n < 0) {
			f->s.open_failed++;
			free(plain);
			return;
		}
		body = (const char *)plain;
		len = (size_t)n;
	}
	doc = json_loadb(body, len, 0, NULL);
	free(plain);
	if (doc == NULL || !json_is_object(doc)) {
		f->s.invalid_received++;
		json_decref(doc);
		return;
	}
	cid = json_object_get(doc, "commandId");
	eid = json_object_get(doc, "eventId");
	type = json_object_get(doc, "type");
	if (json_is_string(cid)) {
		f->s.req_received++;
		fleet_request(fd, json_string_value(cid), json_is_string(type) ?
		    json_string_value(type) : NULL);
	} else if (json_is_string(eid)) {
		f->s.events_received++;
	} else {
		f->s.invalid_received++;
	}
	json_decref(doc);
}

static void
fleet_on_publish(struct mosquitto *m, void *obj, int mid)
{
	struct fleet_dev *fd = obj;

	/* QoS 0: written to the socket; QoS 1: PUBACK received */
	fd->f->s.published++;
	fd->out_done++;
}

static void
fleet_on_connect(struct mosquitto *m, void *obj, int rc)
{
	struct fleet_dev *fd = obj;
	struct fleet *f = fd->f;
	char topic[192];
	uint64_t now = mono_us(), period = fleet_period(f);

	if (rc != 0) {
		/* refused (bad token, server unavailable): libmosquitto closes next */
		fd->refused = true;
		f->s.connack_refused++;
		return;
	}
	fd->state = FS_UP;
	fd->backoff_ms = 0;
	f->s.connects++;
	if (++f->s.connected > f->s.connected_max)
		f->s.connected_max = f->s.connected;
	snprintf(topic, sizeof(topic), "device/%s/command", fd->d->id);
	mosquitto_subscribe(m, NULL, topic, 1);
	snprintf(topic, sizeof(topic), "device/%s/config", fd->d->id);
	mosquitto_subscribe(m, NULL, topic, 1);
	fleet_send_status(fd);
	if (f->o.rate > 0) {
		if (fd->t0 == 0) {
			/* spread the devices over one period so they do not publish in step */
			fd->t0 = now + bench_rand(&f->rng) % period;
			fd->slot = 0;
		} else if (now > fd->t0) {
			uint64_t cur = (now - fd->t0) / period + 1;

			if (cur > fd->slot) {
				f->s.skipped_offline += cur - fd->slot;
				fd->slot = cur;
			}
		}
	}
	if (f->o.status_every)
		fd->next_status = now + f->o.status_every;
	if (f->o.event_every)
		fd->next_event = now + bench_rand(&f->rng) % f->o.event_every;
	if (f->s.connected == f->ndev && f->t_all_connected == 0) {
		f->t_all_connected = now;
		f->cpu_all = bench_self_cpu_us();
		f->sent_all = fleet_sent_total(f);
	}
	if (f->s.connected == f->ndev)
		fleet_sample_self(f);
	fleet_schedule(fd);
}

/* The socket is gone: count why, then come back unless we are stopping. */
static void
fleet_closed(struct mqev *io, void *arg)
{
	struct fleet_dev *fd = arg;
	struct fleet *f = fd->f;
	uint64_t delay_us;

	evtimer_del(fd->tick);
	if (fd->state == FS_UP) {
		f->s.connected--;
		if (!fd->churned && !f->disconnecting)
			f->s.drops++;
	} else if (fd->state == FS_CONNECTING && !fd->refused) {
		f->s.connect_failures++;
	}
	if (f->disconnecting || f->stopping) {
		fd->state = FS_DONE;
		return;
	}
	fd->state = FS_WAIT;
	if (fd->churned) {
		delay_us = f->o.churn_down;
	} else {
		/* 100 ms doubling to 30 s, with jitter so devices do not come back in step */
		fd->backoff_ms = fd->backoff_ms ? fd->backoff_ms * 2 : 100;
		if (fd->backoff_ms > 30000)
			fd->backoff_ms = 30000;
		delay_us = (uint64_t)fd->backoff_ms * 1000 / 2 +
		    bench_rand(&f->rng) % ((uint64_t)fd->backoff_ms * 500 + 1);
	}
	fd->churned = false;
	fd->refused = false;
	struct timeval tv = { (time_t)(delay_us / 1000000), (suseconds_t)(delay_us % 1000000) };
	evtimer_add(fd->retry, &tv);
}

/* --- scheduling ------------------------------------------------------------ */

static uint64_t
fleet_period(const struct fleet *f)
{
	uint64_t p = f->o.rate > 0 ? (uint64_t)(1e6 / f->o.rate) : 0;

	return p ? p : 1;
}

static bool
fleet_telemetry_done(const struct fleet *f, const struct fleet_dev *fd)
{
	return f->o.rate <= 0 || (f->o.count && fd->seq[FK_TELEMETRY] >= f->o.count);
}

/* A device just sent its last telemetry message: stop when it was the last one. */
static void
fleet_count_reached(struct fleet *f)
{
	if (++f->tele_done == f->ndev && !f->stopping)
		fleet_stop(f, "count reached");
}

/* Arm the tick for the earliest of next telemetry, status, event. */
static void
fleet_schedule(struct fleet_dev *fd)
{
	struct fleet *f = fd->f;
	uint64_t now = mono_us(), next = UINT64_MAX, d;

	if (fd->state != FS_UP || f->stopping)
		return;
	if (!fleet_telemetry_done(f, fd))
		next = fd->t0 + fd->slot * fleet_period(f);
	if (f->o.status_every && fd->next_status < next)
		next = fd->next_status;
	if (f->o.event_every && fd->next_event < next)
		next = fd->next_event;
	if (next == UINT64_MAX)
		return;
	d = next > now ? next - now : 0;
	struct timeval tv = { (time_t)(d / 1000000), (suseconds_t)(d % 1000000) };
	evtimer_add(fd->tick, &tv);
}

static void
fleet_tick_cb(evutil_socket_t s, short what, void *arg)
{
	struct fleet_dev *fd = arg;
	struct fleet *f = fd->f;
	uint64_t now = mono_us(), period;
	int burst = 0;

	if (fd->state != FS_UP || f->stopping)
		return;
	if (!fleet_telemetry_done(f, fd)) {
		period = fleet_period(f);
		/* fixed rate: catch up on late slots, but never more than 100 at once */
		while (fd->t0 + fd->slot * period <= now && burst < 100 && !fleet_telemetry_done(f, fd)) {
			fleet_send_telemetry(fd);
			fd->slot++;
			burst++;
		}
		if (burst > 0 && fleet_telemetry_done(f, fd))
			fleet_count_reached(f);
	}
	if (f->o.status_every && fd->next_status <= now) {
		fleet_send_status(fd);
		fd->next_status += f->o.status_every;
		if (fd->next_status <= now)
			fd->next_status = now + f->o.status_every;
	}
	if (f->o.event_every && fd->next_event <= now) {
		fleet_send_event(fd);
		fd->next_event += f->o.event_every;
		if (fd->next_event <= now)
			fd->next_event = now + f->o.event_every;
	}
	mqev_sync(&fd->io);
	fleet_schedule(fd);
}

static void
fleet_retry_cb(evutil_socket_t s, short what, void *arg)
{
	struct fleet_dev *fd = arg;

	if (fd->f->stopping)
		return;
	fd->f->s.reconnects++;
	fleet_connect(fd);
}

/* --- connections ----------------------------------------------------------- */

static int
fleet_client_new(struct fleet_dev *fd)
{
	struct fleet *f = fd->f;
	char topic[192];
	const char *will = "{\"state\":\"offline\"}";
	uint8_t sealed[64];
	const void *wp = will;
	int wlen = (int)strlen(will);

	fd->m = mosq_new(fd->d->id, true, fd, f->o.wakeup_pair);
	if (fd->m == NULL)
		return -1;
	mosquitto_int_option(fd->m, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V311);
	/* small packets both ways: Nagle plus delayed ACKs would add 40 ms */
	mosquitto_int_option(fd->m, MOSQ_OPT_TCP_NODELAY, 1);
	mosquitto_max_inflight_messages_set(fd->m, (unsigned)f->o.max_inflight);
	mosquitto_username_pw_set(fd->m, fd->d->id, fd->d->token);
	snprintf(topic, sizeof(topic), "device/%s/status", fd->d->id);
	if (fleet_sealed(fd)) {
		/* the Will is sealed now with the counter of now: it may fall behind the
		 * window by the time the broker sends it */
		int n = seal_box(fd->d->key, (uint8_t)f->o.key_version, ++fd->counter, topic,
		    will, (size_t)wlen, sealed, sizeof(sealed));

		if (n > 0) {
			wp = sealed;
			wlen = n;
		}
	}
	mosquitto_will_set(fd->m, topic, wlen, wp, 1, true);
	mosquitto_connect_callback_set(fd->m, fleet_on_connect);
	mosquitto_publish_callback_set(fd->m, fleet_on_publish);
	mosquitto_message_callback_set(fd->m, fleet_on_message);
	fd->io.m = fd->m;
	fd->io.fd = -1;
	fd->io.closed = fleet_closed;
	fd->io.arg = fd;
	return 0;
}

static void
fleet_retry_later(struct fleet_dev *fd)
{
	uint64_t d;

	fd->state = FS_WAIT;
	fd->backoff_ms = fd->backoff_ms ? fd->backoff_ms * 2 : 100;
	if (fd->backoff_ms > 30000)
		fd->backoff_ms = 30000;
	d = (uint64_t)fd->backoff_ms * 1000;
	struct timeval tv = { (time_t)(d / 1000000), (suseconds_t)(d % 1000000) };
	evtimer_add(fd->retry, &tv);
}

static void
fleet_connect(struct fleet_dev *fd)
{
	struct fleet *f = fd->f;
	int rc;

	if (fd->m == NULL && fleet_client_new(fd) == -1) {
		f->s.connect_failures++;
		fd->state = FS_DONE;
		return;
	}
	rc = mosquitto_connect_bind_async(fd->m, f->o.host, f->o.port, f->o.keepalive,
	    fd->bind[0] ? fd->bind : NULL);
	fd->state = FS_CONNECTING;
	if (rc == MOSQ_ERR_SUCCESS && mqev_attach(&fd->io, f->base) == 0)
		return;
	f->s.connect_failures++;
	if (f->s.connect_failures <= 5)
		fprintf(stderr, "herald-bench fleet: %s: connect: %s\n", fd->d->id,
		    rc == MOSQ_ERR_ERRNO ? strerror(errno) : mosquitto_strerror(rc));
	fleet_retry_later(fd);
}

static void
fleet_ramp_cb(evutil_socket_t s, short what, void *arg)
{
	struct fleet *f = arg;
	uint64_t now = mono_us();
	size_t due;
	struct timeval tv = { 0, 0 };

	if (f->stopping)
		return;
	if (f->o.ramp > 0) {
		double d = (double)(now - f->t_start) / 1e6 * f->o.ramp + 1;

		due = d >= (double)f->ndev ? f->ndev : (size_t)d;
		tv.tv_usec = 2000;
	} else {
		/* as fast as the loop allows, but let I/O in between batches */
		due = f->started + 256;
	}
	if (due > f->ndev)
		due = f->ndev;
	while (f->started < due)
		fleet_connect(&f->fd[f->started++]);
	if (f->started < f->ndev)
		evtimer_add(f->ramp_ev, &tv);
}

/* Cut P% of the connected devices per minute, pro rata of the time since the
 * last call: a loop that fell behind catches up, as telemetry does. */
static void
fleet_churn(struct fleet *f, uint64_t now)
{
	double secs = (double)(now - f->churn_last) / 1e6;
	uint64_t milli = (uint64_t)((double)f->s.connected * f->o.churn / 100.0 / 60.0 * secs *
	    1000.0) + f->churn_carry_milli;
	uint64_t n = milli / 1000;

	f->churn_last = now;
	f->churn_carry_milli = milli % 1000;
	while (n-- > 0 && f->s.connected > 0) {
		size_t i = (size_t)(bench_rand(&f->rng) % f->ndev), tries;
		struct fleet_dev *fd = NULL;

		for (tries = 0; tries < f->ndev; tries++, i = (i + 1) % f->ndev)
			if (f->fd[i].state == FS_UP) {
				fd = &f->fd[i];
				break;
			}
		if (fd == NULL)
			return;
		fd->churned = true;
		f->s.churn_drops++;
		if (f->o.churn_clean) {
			mosquitto_disconnect(fd->m);
			mqev_sync(&fd->io);
		} else {
			/* a cut, not a goodbye: the broker sends the Last Will */
			shutdown(mosquitto_socket(fd->m), SHUT_RDWR);
		}
	}
}

static uint64_t
fleet_sent_total(const struct fleet *f)
{
	uint64_t n = 0;

	for (int k = 0; k < FK_NKINDS; k++)
		n += f->s.sent[k];
	return n;
}

static void
fleet_second_cb(evutil_socket_t s, short what, void *arg)
{
	struct fleet *f = arg;
	uint64_t now = mono_us();

	for (size_t i = 0; i < f->ndev; i++) {
		struct fleet_dev *fd = &f->fd[i];

		if (fd->io.rd == NULL)
			continue;
		mosquitto_loop_misc(fd->m);     /* keepalive: PINGREQ, or close if silent */
		mqev_sync(&fd->io);
	}
	if (f->o.churn > 0 && !f->stopping)
		fleet_churn(f, now);
	bench_herald_sample(&f->herald);
	if (f->o.progress && now - f->last_progress >= f->o.progress) {
		uint64_t sent = fleet_sent_total(f);

		fprintf(stderr, "fleet t=%.0fs connected=%zu sent=%" PRIu64 " (%.0f/s) published=%"
		    PRIu64 " requests=%" PRIu64 " drops=%" PRIu64 "\n",
		    (double)(now - f->t_start) / 1e6, f->s.connected, sent,
		    (double)(sent - f->last_progress_sent) * 1e6 / (double)(now - f->last_progress),
		    f->s.published, f->s.req_received, f->s.drops + f->s.churn_drops);
		f->last_progress = now;
		f->last_progress_sent = sent;
	}
}

static void
fleet_disconnect_all(struct fleet *f)
{
	f->disconnecting = true;
	fleet_sample_self(f);
	for (size_t i = 0; i < f->ndev; i++) {
		struct fleet_dev *fd = &f->fd[i];

		evtimer_del(fd->tick);
		evtimer_del(fd->retry);
		if (fd->io.rd == NULL)
			continue;
		if (fd->state == FS_UP)
			mosquitto_disconnect(fd->m);    /* clean: no Last Will */
		mqev_sync(&fd->io);
		if (fd->io.rd != NULL) {
			/* still not closed (connect pending, or a full socket): give up on it */
			mqev_detach(&fd->io);
			if (fd->state == FS_UP)
				f->s.connected--;
			fd->state = FS_DONE;
		}
	}
	f->t_end = mono_us();
	event_base_loopexit(f->base, NULL);
}

static void
fleet_drain_cb(evutil_socket_t s, short what, void *arg)
{
	struct fleet *f = arg;
	struct timeval tv = { 0, 20000 };

	/* every connected device's messages are out (QoS 0) or acknowledged (QoS 1);
	 * a device that is down keeps its queue, and its count shows as unacked */
	bool busy = false;

	for (size_t i = 0; i < f->ndev && !busy; i++)
		busy = f->fd[i].state == FS_UP && f->fd[i].out_done < f->fd[i].out_sent;
	if (!busy || mono_us() - f->t_stop >= f->o.drain) {
		fleet_disconnect_all(f);
		return;
	}
	evtimer_add(f->drain_ev, &tv);
}

static void
fleet_stop(struct fleet *f, const char *why)
{
	struct timeval tv = { 0, 0 };

	if (f->stopping) {
		if (!f->disconnecting)
			fleet_disconnect_all(f);        /* second signal: do not wait */
		return;
	}
	f->stopping = true;
	f->t_stop = mono_us();
	f->cpu_stop = bench_self_cpu_us();
	f->sent_stop = fleet_sent_total(f);
	for (size_t i = 0; i < f->ndev; i++)
		evtimer_del(f->fd[i].tick);
	evtimer_del(f->ramp_ev);
	if (!f->o.json)
		fprintf(stderr, "herald-bench fleet: stopping (%s)\n", why);
	evtimer_add(f->drain_ev, &tv);
}

static void
fleet_end_cb(evutil_socket_t s, short what, void *arg)
{
	fleet_stop(arg, "duration reached");
}

static void
fleet_signal_cb(evutil_socket_t s, short what, void *arg)
{
	fleet_stop(arg, "signal");
}

static int
fleet_seq_out(const struct fleet *f)
{
	FILE *out = fopen(f->o.seq_out, "w");

	if (out == NULL) {
		fprintf(stderr, "herald-bench fleet: %s: %s\n", f->o.seq_out, strerror(errno));
		return -1;
	}
	for (size_t i = 0; i < f->ndev; i++)
		for (int k = 0; k < FK_NKINDS; k++)
			if (f->fd[i].seq[k])
				fprintf(out, "%s %s %" PRIu64 "\n", f->fd[i].d->id, fleet_kind_name[k],
				    f->fd[i].seq[k]);
	return fclose(out) == 0 ? 0 : -1;
}

static uint64_t
fleet_unacked(const struct fleet *f)
{
	uint64_t n = 0;

	for (size_t i = 0; i < f->ndev; i++)
		if (f->fd[i].out_done < f->fd[i].out_sent)
			n += f->fd[i].out_sent - f->fd[i].out_done;
	return n;
}

static void
fleet_report(struct fleet *f)
{
	uint64_t sent = fleet_sent_total(f), cpu_end = bench_self_cpu_us();
	double run_s = (double)((f->t_stop ? f->t_stop : f->t_end) - f->t_start) / 1e6;
	double steady_s = f->t_all_connected && f->t_stop > f->t_all_connected ?
	    (double)(f->t_stop - f->t_all_connected) / 1e6 : 0;
	uint64_t steady_msgs = f->t_all_connected ? f->sent_stop - f->sent_all : 0;
	uint64_t steady_cpu = f->t_all_connected ? f->cpu_stop - f->cpu_all : 0;
	size_t pc = f->peak_open ? f->peak_open : 1;
	json_t *doc, *self;

	self = json_pack("{si si sI sI sf sf sI sf sf}",
	    "fds_base", f->fds_base, "fds_peak", f->fds_peak,
	    "rss_kb_base", (json_int_t)f->rss_base, "rss_kb_peak", (json_int_t)f->rss_peak,
	    "fds_per_device", (double)(f->fds_peak - f->fds_base) / (double)pc,
	    "rss_kb_per_device", (double)(f->rss_peak - f->rss_base) / (double)pc,
	    "cpu_us", (json_int_t)(cpu_end - f->cpu_start),
	    "cpu_us_per_msg", sent ? (double)(f->cpu_stop - f->cpu_start) / (double)sent : 0.0,
	    "cpu_us_per_msg_steady", steady_msgs ? (double)steady_cpu / (double)steady_msgs : 0.0);
	json_object_set_new(self, "clients_sampled", json_integer((json_int_t)f->peak_open));
	json_object_set_new(self, "wakeup_pair", json_boolean(f->o.wakeup_pair));
	doc = json_pack("{ss ss si sI sf sI sI}",
	    "command", "fleet", "host", f->o.host, "port", f->o.port,
	    "devices", (json_int_t)f->ndev,
	    "elapsed_s", run_s,
	    "connected_max", (json_int_t)f->s.connected_max,
	    "connects", (json_int_t)f->s.connects);
	json_object_set_new(doc, "all_connected_s", f->t_all_connected ?
	    json_real((double)(f->t_all_connected - f->t_start) / 1e6) : json_null());
	json_object_set_new(doc, "connect_failures", json_integer((json_int_t)f->s.connect_failures));
	json_object_set_new(doc, "connack_refused", json_integer((json_int_t)f->s.connack_refused));
	json_object_set_new(doc, "drops", json_integer((json_int_t)f->s.drops));
	json_object_set_new(doc, "churn_drops", json_integer((json_int_t)f->s.churn_drops));
	json_object_set_new(doc, "reconnects", json_integer((json_int_t)f->s.reconnects));
	json_object_set_new(doc, "sent", json_pack("{sI sI sI sI sI}",
	    "telemetry", (json_int_t)f->s.sent[FK_TELEMETRY],
	    "status", (json_int_t)f->s.sent[FK_STATUS],
	    "response", (json_int_t)f->s.sent[FK_RESPONSE],
	    "event", (json_int_t)f->s.sent[FK_EVENT],
	    "total", (json_int_t)sent));
	json_object_set_new(doc, "published", json_integer((json_int_t)f->s.published));
	json_object_set_new(doc, "unacked", json_integer((json_int_t)fleet_unacked(f)));
	json_object_set_new(doc, "publish_errors", json_integer((json_int_t)f->s.publish_errors));
	json_object_set_new(doc, "skipped_offline", json_integer((json_int_t)f->s.skipped_offline));
	json_object_set_new(doc, "rate_msgs_s", json_real(run_s > 0 ? (double)f->sent_stop / run_s : 0));
	json_object_set_new(doc, "rate_msgs_s_steady",
	    json_real(steady_s > 0 ? (double)steady_msgs / steady_s : 0));
	json_object_set_new(doc, "received", json_pack("{sI sI sI sI sI}",
	    "requests", (json_int_t)f->s.req_received,
	    "events", (json_int_t)f->s.events_received,
	    "config", (json_int_t)f->s.config_received,
	    "invalid", (json_int_t)f->s.invalid_received,
	    "unopenable", (json_int_t)f->s.open_failed));
	json_object_set_new(doc, "requests_answered", json_integer((json_int_t)(f->s.answered_ok + f->s.answered_fail)));
	json_object_set_new(doc, "requests_failed", json_integer((json_int_t)f->s.answered_fail));
	json_object_set_new(doc, "answers_dropped", json_integer((json_int_t)f->s.answers_dropped));
	json_object_set_new(doc, "self", self);
	json_object_set_new(doc, "herald", bench_herald_json(&f->herald, sent));

	if (f->o.json) {
		bench_json_print(stdout, doc);
	} else {
		printf("fleet: %zu devices on %s:%d, %.1f s\n", f->ndev, f->o.host, f->o.port, run_s);
		printf("  connects %" PRIu64 " (max connected %zu%s), connect failures %" PRIu64
		    ", refused %" PRIu64 ", drops %" PRIu64 ", churn drops %" PRIu64 ", reconnects %" PRIu64 "\n",
		    f->s.connects, f->s.connected_max, f->t_all_connected ? ", all up" : "",
		    f->s.connect_failures, f->s.connack_refused, f->s.drops, f->s.churn_drops,
		    f->s.reconnects);
		printf("  sent: telemetry %" PRIu64 ", status %" PRIu64 ", response %" PRIu64
		    ", event %" PRIu64 " = %" PRIu64 " (%.0f msgs/s); published/acked %" PRIu64
		    ", unacked %" PRIu64 ", publish errors %" PRIu64 "\n",
		    f->s.sent[FK_TELEMETRY], f->s.sent[FK_STATUS], f->s.sent[FK_RESPONSE],
		    f->s.sent[FK_EVENT], sent, run_s > 0 ? (double)f->sent_stop / run_s : 0,
		    f->s.published, fleet_unacked(f), f->s.publish_errors);
		printf("  received: requests %" PRIu64 " (answered %" PRIu64 ", failed on purpose %"
		    PRIu64 ", dropped %" PRIu64 "), events %" PRIu64 ", config %" PRIu64 ", invalid %"
		    PRIu64 "\n", f->s.req_received, f->s.answered_ok + f->s.answered_fail,
		    f->s.answered_fail, f->s.answers_dropped, f->s.events_received,
		    f->s.config_received, f->s.invalid_received + f->s.open_failed);
		printf("  self: %.2f fds and %.1f kB RSS per client (%zu clients), %.2f us CPU per message\n",
		    (double)(f->fds_peak - f->fds_base) / (double)pc,
		    (double)(f->rss_peak - f->rss_base) / (double)pc, f->peak_open,
		    steady_msgs ? (double)steady_cpu / (double)steady_msgs :
		    sent ? (double)(f->cpu_stop - f->cpu_start) / (double)sent : 0.0);
		if (f->herald.pid > 0) {
			json_t *h = json_object_get(doc, "herald");

			printf("  herald pid %d: %.2f us CPU per message, RSS %lld -> %lld kB (max %lld)\n",
			    (int)f->herald.pid,
			    json_real_value(json_object_get(h, "cpu_us_per_msg")),
			    (long long)json_integer_value(json_object_get(h, "rss_kb_start")),
			    (long long)json_integer_value(json_object_get(h, "rss_kb_end")),
			    (long long)json_integer_value(json_object_get(h, "rss_kb_max")));
		}
		fflush(stdout);
	}
	json_decref(doc);
}

int
fleet_main(int argc, char **argv)
{
	struct fleet *f = calloc(1, sizeof(*f));
	struct timeval sec = { 1, 0 }, now = { 0, 0 };
	int r;

	if (f == NULL)
		return BENCH_EXIT_FAIL;
	if ((r = fleet_opts_parse(&f->o, argc, argv)) != 0) {
		free(f);
		return r > 0 ? BENCH_EXIT_OK : BENCH_EXIT_USAGE;
	}
	if (f->o.file ? bench_devices_load(f->o.file, &f->devs, &f->ndev) :
	    bench_devices_generate(f->o.prefix, f->o.devices, f->o.token, &f->devs, &f->ndev)) {
		free(f);
		return BENCH_EXIT_USAGE;
	}
	if (bench_raise_nofile() < (long)f->ndev + 64)
		fprintf(stderr, "herald-bench fleet: warning: the open files limit is below %zu\n",
		    f->ndev + 64);
	signal(SIGPIPE, SIG_IGN);
	mosquitto_lib_init();
	f->rng = f->o.seed;
	LIST_INIT(&f->answers);
	f->base = bench_event_base();
	f->fd = calloc(f->ndev, sizeof(*f->fd));
	if (f->base == NULL || f->fd == NULL) {
		fprintf(stderr, "herald-bench fleet: out of memory\n");
		return BENCH_EXIT_FAIL;
	}
	for (size_t i = 0; i < f->ndev; i++) {
		struct fleet_dev *fd = &f->fd[i];

		fd->f = f;
		fd->d = &f->devs[i];
		fd->io.fd = -1;
		fd->tick = evtimer_new(f->base, fleet_tick_cb, fd);
		fd->retry = evtimer_new(f->base, fleet_retry_cb, fd);
		/* e2e counters start at the clock so a restarted fleet stays ahead */
		fd->counter = now_us();
		if (f->o.have_range)
			bench_ipv4_str(f->o.range_first + (uint32_t)(i % ((uint64_t)f->o.range_last -
			    f->o.range_first + 1)), fd->bind);
	}
	f->ramp_ev = evtimer_new(f->base, fleet_ramp_cb, f);
	f->drain_ev = evtimer_new(f->base, fleet_drain_cb, f);
	f->end_ev = evtimer_new(f->base, fleet_end_cb, f);
	f->sec_ev = event_new(f->base, -1, EV_PERSIST, fleet_second_cb, f);
	f->sig_int = evsignal_new(f->base, SIGINT, fleet_signal_cb, f);
	f->sig_term = evsignal_new(f->base, SIGTERM, fleet_signal_cb, f);
	event_add(f->sig_int, NULL);
	event_add(f->sig_term, NULL);
	f->fds_base = bench_self_fds();
	f->rss_base = bench_self_rss_kb();
	bench_herald_begin(&f->herald, f->o.herald_pid);
	f->t_start = f->last_progress = f->churn_last = mono_us();
	f->cpu_start = bench_self_cpu_us();
	event_add(f->sec_ev, &sec);
	evtimer_add(f->ramp_ev, &now);
	if (f->o.duration) {
		struct timeval tv = { (time_t)(f->o.duration / 1000000),
			(suseconds_t)(f->o.duration % 1000000) };
		evtimer_add(f->end_ev, &tv);
	}
	event_base_dispatch(f->base);
	bench_herald_end(&f->herald);
	r = BENCH_EXIT_OK;
	if (f->o.seq_out && fleet_seq_out(f) == -1)
		r = BENCH_EXIT_FAIL;
	while (!LIST_EMPTY(&f->answers)) {
		f->s.answers_dropped++;         /* the run ended before their delay */
		fleet_answer_free(LIST_FIRST(&f->answers));
	}
	fleet_report(f);
	for (size_t i = 0; i < f->ndev; i++) {
		mqev_detach(&f->fd[i].io);
		event_free(f->fd[i].tick);
		event_free(f->fd[i].retry);
		if (f->fd[i].m)
			mosquitto_destroy(f->fd[i].m);
	}
	event_free(f->ramp_ev);
	event_free(f->drain_ev);
	event_free(f->end_ev);
	event_free(f->sec_ev);
	event_free(f->sig_int);
	event_free(f->sig_term);
	event_base_free(f->base);
	bench_devices_free(f->devs, f->ndev);
	free(f->fd);
	free(f);
	mosquitto_lib_cleanup();
	return r;
}
