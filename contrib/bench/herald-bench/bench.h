/*
 * herald-bench: fleet simulator, checking backend and round-trip meter.
 * Declarations shared by the commands (fleet.c, sink.c, rtt.c) and their helpers.
 */
#ifndef HERALD_BENCH_H
#define HERALD_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include <jansson.h>

/* Exit codes: 0 done (or --expect reached), 1 failed / timed out, 2 usage. */
#define BENCH_EXIT_OK    0
#define BENCH_EXIT_FAIL  1
#define BENCH_EXIT_USAGE 2

int fleet_main(int argc, char **argv);
int sink_main(int argc, char **argv);
int rtt_main(int argc, char **argv);

/* --- bench.c: helpers every command uses ----------------------------------- */

/* "20s", "500ms", "250us", "2m", "1h" or a plain number of seconds -> µs. */
int bench_parse_duration(const char *s, uint64_t *us);
int bench_parse_u64(const char *s, uint64_t *v);
int bench_parse_double(const char *s, double *v);
/* "127.0.0.1:8080", ":8080" or "8080" -> host (default 127.0.0.1) and port. */
int bench_parse_hostport(const char *s, char *host, size_t hostlen, int *port);


/* Raise RLIMIT_NOFILE's soft limit to the hard limit; returns the new soft limit. */
long bench_raise_nofile(void);

/* This process: open fds, resident set, CPU used (user + system, µs). */
int bench_self_fds(void);
long bench_self_rss_kb(void);
uint64_t bench_self_cpu_us(void);

/*
 * A process and every descendant (found through /proc/<pid>/task/<tid>/children
 * or, without it, by scanning /proc): CPU in µs (utime + stime + cutime +
 * cstime of each live process, so reaped children count once, in their
 * parent) and resident set in kB.  Returns -1 if the root is gone.
 */
struct bench_proc {
	uint64_t cpu_us;
	long rss_kb;
	int procs;
};
int bench_proc_tree(pid_t root, struct bench_proc *out);

/* Sampling helper for --herald-pid: start, sample (RSS max), end. */
struct bench_herald {
	pid_t pid;
	bool ok_start, ok_end;
	struct bench_proc start, end;
	long rss_max_kb;
};
void bench_herald_begin(struct bench_herald *h, pid_t pid);
void bench_herald_sample(struct bench_herald *h);
void bench_herald_end(struct bench_herald *h);
/* {"pid","procs","cpu_us","cpu_us_per_msg","rss_kb_start","rss_kb_end","rss_kb_max"} */
json_t *bench_herald_json(const struct bench_herald *h, uint64_t msgs);

/* An event base whose timers fire to the µs (timerfd), not rounded up to the ms:
 * open-loop schedules and added delays depend on it. */
struct event_base *bench_event_base(void);

/* Print a JSON document (indented) and a newline to f. */
void bench_json_print(FILE *f, json_t *doc);

/* Devices: from "id token [key_base64]" lines, or generated "<prefix><n>" (n from 1). */
struct bench_device {
	char *id;
	char *token;            /* NULL: no password */
	bool has_key;
	uint8_t key[32];
};
int bench_devices_load(const char *path, struct bench_device **out, size_t *n);
int bench_devices_generate(const char *prefix, size_t count, const char *token,
    struct bench_device **out, size_t *n);
void bench_devices_free(struct bench_device *d, size_t n);

/* "127.0.0.1-127.0.255.254" (host order, inclusive). */
int bench_parse_range(const char *s, uint32_t *first, uint32_t *last);
void bench_ipv4_str(uint32_t host_order, char out[16]);

/* Small reproducible PRNG (xorshift64*): --seed makes runs repeatable. */
uint64_t bench_rand(uint64_t *state);

/* --- hist.c: latency histogram (log-linear, < 0.8 % relative error) -------- */

#define HIST_BUCKETS 3776
struct hist {
	uint64_t count;
	uint64_t sum;
	uint64_t min, max;
	uint64_t bucket[HIST_BUCKETS];
};
void hist_init(struct hist *h);
void hist_add(struct hist *h, uint64_t v);
/* q in [0,1]; 0 when empty.  Exact below 128, else the bucket's middle clamped to [min,max]. */
uint64_t hist_quantile(const struct hist *h, double q);
unsigned hist_index(uint64_t v);
/* {"count","min","mean","p50","p90","p99","p99_9","max"} in the histogram's unit. */
json_t *hist_json(const struct hist *h);
/* "p50 1.234 ms  p90 ...  p99.9 ...  max ..." from a µs histogram. */
void hist_print_ms(FILE *f, const char *label, const struct hist *h);

/* --- track.c: what a checking backend knows about every message ----------- */

enum track_kind { TK_TELEMETRY, TK_STATUS, TK_RESPONSE, TK_EVENT, TK_REQUEST,
	TK_OTHER, TK_NKINDS };
extern const char *const track_kind_names[TK_NKINDS];
enum track_kind track_kind_parse(const char *s);

enum track_result {
	TRACK_NEW,            /* first time: counted */
	TRACK_REORDERED,      /* first time, but below the highest seq of its stream */
	TRACK_UNSEQUENCED,    /* new id, no "seq" in the payload: counted by id */
	TRACK_DUP_ID,         /* envelope id seen before: a redelivery */
	TRACK_SEQ_REPEAT,     /* new id, but its (device, kind, seq) was seen: a copy */
	TRACK_SEQ_INVALID     /* seq 0, negative or beyond TRACK_SEQ_MAX */
};
#define TRACK_SEQ_MAX (1ULL << 28)

struct track_counts {
	uint64_t envelopes;     /* every envelope accepted (2xx), duplicates included */
	uint64_t distinct;      /* distinct messages: new seqs plus unsequenced new ids */
	uint64_t unsequenced;
	uint64_t dup_ids;
	uint64_t seq_repeats;
	uint64_t reordered;
	uint64_t seq_invalid;
	uint64_t gaps;          /* seqs missing below the highest seen, now */
};

struct track;
struct track *track_new(void);
void track_free(struct track *t);
/* id may be NULL (no duplicate check); seq < 0 = no seq. */
enum track_result track_add(struct track *t, const char *id, const char *device,
    enum track_kind kind, int64_t seq);
const struct track_counts *track_counts(const struct track *t, enum track_kind k);
void track_total(const struct track *t, struct track_counts *out);
size_t track_devices(const struct track *t);
/* Missing messages against what the fleet says it sent ("id kind last_seq" lines):
 * sum over those streams of last_seq minus the distinct seqs seen in 1..last_seq. */
int track_missing_from_file(const struct track *t, const char *path, uint64_t *missing,
    uint64_t *expected);
/* {"<device>":{"<kind>":{"distinct","max_seq","gaps","repeats","reordered"}}} */
json_t *track_devices_json(const struct track *t);

/* --- seal.c: end-to-end sealed payloads (SPEC §1) -------------------------- */

#define SEAL_HDR 34            /* version, key version, counter, nonce */
#define SEAL_OVERHEAD (SEAL_HDR + 16)
int seal_box(const uint8_t key[32], uint8_t keyver, uint64_t counter, const char *topic,
    const void *pt, size_t ptlen, uint8_t *out, size_t outcap);
/* Returns the plaintext length, or -1 if it does not open. */
int seal_open(const uint8_t key[32], const char *topic, const uint8_t *in, size_t inlen,
    uint8_t *out, size_t outcap, uint8_t *keyver, uint64_t *counter);

/* --- mqev.c: a libmosquitto client driven by a libevent loop --------------- */

struct mosquitto;
struct event_base;
struct event;
struct mqev {
	struct mosquitto *m;
	struct event *rd, *wr;
	int fd;
	void (*closed)(struct mqev *c, void *arg);   /* the socket went away */
	void *arg;
};
/* Call after mosquitto_connect*(): watches mosquitto_socket(). */
int mqev_attach(struct mqev *c, struct event_base *base);
/* Call after anything that may write or close outside the loop's own callbacks
 * (publish, disconnect, loop_misc): asks for EV_WRITE while libmosquitto has
 * output, and calls closed() if the socket is gone. */
void mqev_sync(struct mqev *c);
void mqev_detach(struct mqev *c);
/* While set, socketpair() fails, so mosquitto_new() gives the client no wake-up
 * pair (see mqev.c).  Set it around mosquitto_new() only. */

#endif
