/*
 * Helpers every herald-bench command uses: option values, clocks, limits,
 * what /proc says about a process tree, device lists, JSON output.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/resource.h>

#include <event2/event.h>
#include <sodium.h>

#include "bench.h"
#include "util.h"

int
bench_parse_duration(const char *s, uint64_t *us)
{
	char *end;
	double v, mul = 1e6;

	errno = 0;
	v = strtod(s, &end);
	if (end == s || errno != 0 || v < 0 || !isfinite(v))
		return -1;
	if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
		mul = 1e6;
	else if (strcmp(end, "ms") == 0)
		mul = 1e3;
	else if (strcmp(end, "us") == 0)
		mul = 1;
	else if (strcmp(end, "m") == 0)
		mul = 60e6;
	else if (strcmp(end, "h") == 0)
		mul = 3600e6;
	else
		return -1;
	if (v * mul > 1e17)
		return -1;
	*us = (uint64_t)llround(v * mul);
	return 0;
}

int
bench_parse_u64(const char *s, uint64_t *v)
{
	char *end;
	unsigned long long x;

	if (*s == '-' || *s == '\0')
		return -1;
	errno = 0;
	x = strtoull(s, &end, 10);
	if (*end != '\0' || errno != 0)
		return -1;
	*v = x;
	return 0;
}

int
bench_parse_double(const char *s, double *v)
{
	char *end;

	errno = 0;
	*v = strtod(s, &end);
	return (end == s || *end != '\0' || errno != 0 || !isfinite(*v)) ? -1 : 0;
}

int
bench_parse_hostport(const char *s, char *host, size_t hostlen, int *port)
{
	const char *colon = strrchr(s, ':');
	const char *p = colon ? colon + 1 : s;
	uint64_t v;

	if (bench_parse_u64(p, &v) == -1 || v > 65535)
		return -1;
	*port = (int)v;
	if (colon == NULL || colon == s) {
		strlcpy_h(host, "127.0.0.1", hostlen);
	} else {
		size_t n = (size_t)(colon - s);

		if (n >= hostlen)
			return -1;
		memcpy(host, s, n);
		host[n] = '\0';
	}
	return 0;
}

long
bench_raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return -1;
	if (rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			return -1;
	}
	return (long)rl.rlim_cur;
}

int
bench_self_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;                   /* not the directory's own fd */
}

long
bench_self_rss_kb(void)
{
	long size, resident = -1;
	FILE *f = fopen("/proc/self/statm", "r");

	if (f == NULL)
		return -1;
	if (fscanf(f, "%ld %ld", &size, &resident) != 2)
		resident = -1;
	fclose(f);
	return resident < 0 ? -1 : resident * (sysconf(_SC_PAGESIZE) / 1024);
}

uint64_t
bench_self_cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 +
	    (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

struct bench_pstat {
	pid_t pid, ppid;
	uint64_t ticks;                 /* utime + stime + cutime + cstime */
	long rss_pages;
};

static int
bench_pstat_read(const char *pid, struct bench_pstat *st)
{
	char path[64], buf[1024], *p;
	unsigned long long ut, stt;
	long long cut, cst;
	long rss;
	int ppid;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/%s/stat", pid);
	if ((f = fopen(path, "r")) == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* the command name is in parentheses and may hold anything: skip past the last ')' */
	if ((p = strrchr(buf, ')')) == NULL)
		return -1;
	if (sscanf(p + 2, "%*c %d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld "
	    "%*d %*d %*d %*d %*u %*u %ld", &ppid, &ut, &stt, &cut, &cst, &rss) != 6)
		return -1;
	st->pid = (pid_t)atoi(pid);
	st->ppid = (pid_t)ppid;
	st->ticks = ut + stt + (uint64_t)(cut > 0 ? cut : 0) + (uint64_t)(cst > 0 ? cst : 0);
	st->rss_pages = rss;
	return 0;
}

int
bench_proc_tree(pid_t root, struct bench_proc *out)
{
	struct bench_pstat *all = NULL, st;
	size_t n = 0, cap = 0;
	DIR *d;
	struct dirent *e;
	bool found = false;
	long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	uint64_t ticks = 0;

	memset(out, 0, sizeof(*out));
	if ((d = opendir("/proc")) == NULL)
		return -1;
	while ((e = readdir(d)) != NULL) {
		if (!isdigit((unsigned char)e->d_name[0]) || bench_pstat_read(e->d_name, &st) == -1)
			continue;
		if (n == cap) {
			struct bench_pstat *nn = realloc(all, (cap ? cap * 2 : 256) * sizeof(*nn));

			if (nn == NULL)
				break;
			all = nn;
			cap = cap ? cap * 2 : 256;
		}
		all[n++] = st;
	}
	closedir(d);
	/* mark the tree: repeat until no process joins (parents may come after children) */
	bool *in = calloc(n ? n : 1, sizeof(*in));
	bool grew = true;

	if (in == NULL) {
		free(all);
		return -1;
	}
	for (size_t i = 0; i < n; i++)
		if (all[i].pid == root)
			in[i] = found = true;
	while (found && grew) {
		grew = false;
		for (size_t i = 0; i < n; i++) {
			if (in[i])
				continue;
			for (size_t j = 0; j < n; j++) {
				if (in[j] && all[j].pid == all[i].ppid) {
					in[i] = grew = true;
					break;
				}
			}
		}
	}
	for (size_t i = 0; i < n; i++) {
		if (!in[i])
			continue;
		ticks += all[i].ticks;
		out->rss_kb += all[i].rss_pages * (page / 1024);
		out->procs++;
	}
	out->cpu_us = tck > 0 ? ticks * (uint64_t)(1000000 / tck) : 0;
	free(in);
	free(all);
	return found ? 0 : -1;
}

void
bench_herald_begin(struct bench_herald *h, pid_t pid)
{
	memset(h, 0, sizeof(*h));
	h->pid = pid;
	if (pid <= 0)
		return;
	h->ok_start = bench_proc_tree(pid, &h->start) == 0;
	h->rss_max_kb = h->start.rss_kb;
}

void
bench_herald_sample(struct bench_herald *h)
{
	struct bench_proc p;

	if (h->pid > 0 && bench_proc_tree(h->pid, &p) == 0 && p.rss_kb > h->rss_max_kb)
		h->rss_max_kb = p.rss_kb;
}

void
bench_herald_end(struct bench_herald *h)
{
	if (h->pid <= 0)
		return;
	h->ok_end = bench_proc_tree(h->pid, &h->end) == 0;
	if (h->ok_end && h->end.rss_kb > h->rss_max_kb)
		h->rss_max_kb = h->end.rss_kb;
}

json_t *
bench_herald_json(const struct bench_herald *h, uint64_t msgs)
{
	uint64_t cpu;

	if (h->pid <= 0)
		return json_null();
	if (!h->ok_start || !h->ok_end)
		return json_pack("{si ss}", "pid", (int)h->pid, "error", "process not found");
	cpu = h->end.cpu_us > h->start.cpu_us ? h->end.cpu_us - h->start.cpu_us : 0;
	return json_pack("{si si sI sf sI sI sI}",
	    "pid", (int)h->pid, "procs", h->end.procs,
	    "cpu_us", (json_int_t)cpu,
	    "cpu_us_per_msg", msgs ? (double)cpu / (double)msgs : 0.0,
	    "rss_kb_start", (json_int_t)h->start.rss_kb,
	    "rss_kb_end", (json_int_t)h->end.rss_kb,
	    "rss_kb_max", (json_int_t)h->rss_max_kb);
}

struct event_base *
bench_event_base(void)
{
	struct event_config *cfg = event_config_new();
	struct event_base *base;

	if (cfg == NULL)
		return NULL;
	event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	return base;
}

void
bench_json_print(FILE *f, json_t *doc)
{
	json_dumpf(doc, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(6));
	fputc('\n', f);
	fflush(f);
}

static int
bench_device_key(struct bench_device *d, const char *b64)
{
	size_t len;

	if (sodium_base642bin(d->key, sizeof(d->key), b64, strlen(b64), NULL, &len, NULL,
	    sodium_base64_VARIANT_ORIGINAL) != 0 || len != sizeof(d->key))
		return -1;
	d->has_key = true;
	return 0;
}

int
bench_devices_load(const char *path, struct bench_device **out, size_t *n)
{
	char line[1024], id[256], token[512], key[128];
	struct bench_device *v = NULL;
	size_t len = 0, cap = 0;
	int lineno = 0;
	FILE *f;

	if ((f = fopen(path, "r")) == NULL) {
		fprintf(stderr, "herald-bench: %s: %s\n", path, strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof(line), f) != NULL) {
		int k;

		lineno++;
		k = sscanf(line, "%255s %511s %127s", id, token, key);
		if (k <= 0 || id[0] == '#')
			continue;
		if (!device_id_valid(id, strlen(id))) {
			fprintf(stderr, "herald-bench: %s:%d: invalid device id\n", path, lineno);
			goto fail;
		}
		if (len == cap) {
			struct bench_device *nv = realloc(v, (cap ? cap * 2 : 64) * sizeof(*nv));

			if (nv == NULL)
				goto fail;
			v = nv;
			cap = cap ? cap * 2 : 64;
		}
		memset(&v[len], 0, sizeof(v[len]));
		v[len].id = strdup(id);
		v[len].token = (k >= 2 && strcmp(token, "-") != 0) ? strdup(token) : NULL;
		len++;
		if (k == 3 && bench_device_key(&v[len - 1], key) == -1) {
			fprintf(stderr, "herald-bench: %s:%d: key is not 32 bytes of base64\n",
			    path, lineno);
			goto fail;
		}
	}
	fclose(f);
	if (len == 0) {
		fprintf(stderr, "herald-bench: %s: no devices\n", path);
		free(v);
		return -1;
	}
	*out = v;
	*n = len;
	return 0;
fail:
	fclose(f);
	bench_devices_free(v, len);
	return -1;
}

int
bench_devices_generate(const char *prefix, size_t count, const char *token,
    struct bench_device **out, size_t *n)
{
	struct bench_device *v = calloc(count ? count : 1, sizeof(*v));
	char id[256];

	if (v == NULL)
		return -1;
	for (size_t i = 0; i < count; i++) {
		snprintf(id, sizeof(id), "%s%zu", prefix, i + 1);
		if (!device_id_valid(id, strlen(id))) {
			fprintf(stderr, "herald-bench: %s is not a valid device id\n", id);
			bench_devices_free(v, i);
			return -1;
		}
		v[i].id = strdup(id);
		v[i].token = token ? strdup(token) : NULL;
	}
	*out = v;
	*n = count;
	return 0;
}

void
bench_devices_free(struct bench_device *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(d[i].id);
		free(d[i].token);
	}
	free(d);
}

int
bench_parse_range(const char *s, uint32_t *first, uint32_t *last)
{
	char a[32], b[32];
	const char *dash = strchr(s, '-');
	struct in_addr x, y;

	if (dash == NULL) {
		if (inet_pton(AF_INET, s, &x) != 1)
			return -1;
		*first = *last = ntohl(x.s_addr);
		return 0;
	}
	if ((size_t)(dash - s) >= sizeof(a) || strlen(dash + 1) >= sizeof(b))
		return -1;
	memcpy(a, s, (size_t)(dash - s));
	a[dash - s] = '\0';
	strlcpy_h(b, dash + 1, sizeof(b));
	if (inet_pton(AF_INET, a, &x) != 1 || inet_pton(AF_INET, b, &y) != 1)
		return -1;
	*first = ntohl(x.s_addr);
	*last = ntohl(y.s_addr);
	return *first <= *last ? 0 : -1;
}

void
bench_ipv4_str(uint32_t h, char out[16])
{
	snprintf(out, 16, "%u.%u.%u.%u", h >> 24, (h >> 16) & 255, (h >> 8) & 255, h & 255);
}

uint64_t
bench_rand(uint64_t *s)
{
	uint64_t x = *s ? *s : 0x9E3779B97F4A7C15ULL;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	*s = x;
	return x * 0x2545F4914F6CDD1DULL;
}
