/*
 * herald configuration parser: one table of key descriptors (section, key,
 * type, field offset, range, default) drives parsing, defaults and messages,
 * so a new key is one table line, not another strcmp branch.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <curl/curl.h>

#include "config.h"
#include "jsoncheck.h"
#include "log.h"
#include "outbox.h"
#include "util.h"

#define CFG_LINE_MAX    4096            /* bytes per line, newline excluded */
#define CFG_FILE_MAX    (1024 * 1024)   /* a config file is text, not data */

#define KIB     1024LL
#define MIB     (1024LL * KIB)
#define GIB     (1024LL * MIB)
#define TIB     (1024LL * GIB)

enum cfg_type {
	CFG_STRING,             /* char[] field, at most size - 1 bytes */
	CFG_INT,                /* int, in [min, max] */
	CFG_SIZE,               /* size_t bytes with optional K/M/G/T suffix */
	CFG_ENUM,               /* int-sized field, one of names[] */
	CFG_TOKENS,             /* api_tokens / api_ntokens */
	CFG_HOSTPORT,           /* char[] "host:port" or "[v6]:port" */
};

#define CFG_EMPTY_OK    0x01    /* "key =" is a meaningful value (unset) */

struct cfg_name {
	const char *name;
	int         value;
};

/* A per-key value check beyond its type; fills msg and returns -1 on refusal. */
typedef int cfg_check_fn(const char *v, char *msg, size_t msglen);

struct cfg_key {
	const char             *section;
	const char             *key;
	enum cfg_type           type;
	size_t                  off;
	size_t                  size;
	long long               min, max;
	const struct cfg_name  *names;
	int                     flags;
	cfg_check_fn           *check;
	const char             *def;    /* default, in config file syntax; NULL: none */
};

static const struct cfg_name cfg_log_levels[] = {
	{ "error", LOG_ERR }, { "err", LOG_ERR },
	{ "warning", LOG_WARNING }, { "warn", LOG_WARNING },
	{ "notice", LOG_NOTICE }, { "info", LOG_INFO }, { "debug", LOG_DEBUG },
	{ NULL, 0 }
};

static const struct cfg_name cfg_fsync_modes[] = {
	{ "off", FSYNC_OFF }, { "batch", FSYNC_BATCH }, { "always", FSYNC_ALWAYS },
	{ NULL, 0 }
};

static const struct cfg_name cfg_e2e_modes[] = {
	{ "off", E2E_OFF }, { "optional", E2E_OPTIONAL }, { "required", E2E_REQUIRED },
	{ NULL, 0 }
};

/* Enum fields are written through an int. */
_Static_assert(sizeof(enum fsync_mode) == sizeof(int), "enum fsync_mode is not int-sized");
_Static_assert(sizeof(enum e2e_mode) == sizeof(int), "enum e2e_mode is not int-sized");

static cfg_check_fn cfg_check_node_name;
static cfg_check_fn cfg_check_abs_path;
static cfg_check_fn cfg_check_socket_path;
static cfg_check_fn cfg_check_pem_file;
static cfg_check_fn cfg_check_url;
static cfg_check_fn cfg_check_share_group;
static cfg_check_fn cfg_check_secret;
static cfg_check_fn cfg_check_host;

#define FIELD(f)    offsetof(struct config, f), sizeof(((struct config *)0)->f)

#define STR(s, k, f, flags, check, def) \
	{ s, k, CFG_STRING, FIELD(f), 0, 0, NULL, flags, check, def }
#define INT(s, k, f, lo, hi, def) \
	{ s, k, CFG_INT, FIELD(f), lo, hi, NULL, 0, NULL, def }
#define SIZE(s, k, f, lo, hi, def) \
	{ s, k, CFG_SIZE, FIELD(f), lo, hi, NULL, 0, NULL, def }
#define ENUM(s, k, f, names, def) \
	{ s, k, CFG_ENUM, FIELD(f), 0, 0, names, 0, NULL, def }

/*
 * Every key of SPEC.md section 4.  The defaults here are the ones
 * etc/herald.conf documents; node_name (the host name), tokens and url
 * (none: they must be set, and "url =" is an empty value) have no text
 * default.
 */
static const struct cfg_key cfg_keys[] = {
	STR("herald", "node_name", node_name, 0, cfg_check_node_name, NULL),
	STR("herald", "state_dir", state_dir, 0, cfg_check_abs_path, "/var/lib/herald"),
	STR("herald", "run_dir", run_dir, 0, cfg_check_abs_path, "/run/herald"),
	ENUM("herald", "log_level", log_level, cfg_log_levels, "info"),

	INT("workers", "mqtt", mqtt_workers, 1, CONFIG_MAX_MQTT, "1"),
	INT("workers", "ready_timeout_ms", ready_timeout_ms, 100, 600000, "10000"),
	INT("workers", "ping_interval_ms", ping_interval_ms, 100, 600000, "1000"),
	INT("workers", "ping_timeout_ms", ping_timeout_ms, 100, 600000, "3000"),
	INT("workers", "stop_timeout_ms", stop_timeout_ms, 100, 600000, "10000"),
	INT("workers", "throttle_restarts", throttle_restarts, 1, CONFIG_MAX_THROTTLE, "5"),
	INT("workers", "throttle_window_ms", throttle_window_ms, 1000, 3600000, "10000"),
	INT("workers", "throttle_pause_ms", throttle_pause_ms, 1000, 3600000, "60000"),

	STR("mqtt", "host", mqtt_host, 0, cfg_check_host, "127.0.0.1"),
	INT("mqtt", "port", mqtt_port, 1, 65535, "1883"),
	STR("mqtt", "username", mqtt_username, 0, NULL, "herald"),
	STR("mqtt", "password", mqtt_password, CFG_EMPTY_OK, NULL, ""),
	INT("mqtt", "connections_per_worker", connections_per_worker, 1, 64, "1"),
	INT("mqtt", "keepalive", keepalive, 5, 3600, "30"),
	STR("mqtt", "share_group", share_group, CFG_EMPTY_OK, cfg_check_share_group, "herald"),
	SIZE("mqtt", "outbox_bytes", outbox_bytes, 1 * MIB, 4 * GIB, "64M"),

	{ "api", "listen", CFG_HOSTPORT, FIELD(api_listen), 0, 0, NULL, 0, NULL,
	  "127.0.0.1:8480" },
	{ "api", "tokens", CFG_TOKENS, FIELD(api_tokens), 0, 0, NULL, 0, NULL, NULL },
	SIZE("api", "max_body", api_max_body, 1 * KIB, 64 * MIB, "1M"),

	STR("backend", "url", backend_url, 0, cfg_check_url, NULL),
	STR("backend", "secret", backend_secret, CFG_EMPTY_OK, cfg_check_secret, ""),
	STR("backend", "ca_file", backend_ca_file, CFG_EMPTY_OK, cfg_check_pem_file, ""),
	STR("backend", "cert_file", backend_cert_file, CFG_EMPTY_OK, cfg_check_pem_file, ""),
	STR("backend", "key_file", backend_key_file, CFG_EMPTY_OK, cfg_check_pem_file, ""),
	INT("backend", "batch_max", batch_max, 1, 1000, "1"),
	INT("backend", "concurrency", concurrency, 1, 256, "4"),
	INT("backend", "timeout_ms", timeout_ms, 100, 600000, "10000"),

	SIZE("spool", "max_bytes", spool_max_bytes, 1 * MIB, 1 * TIB, "1G"),
	ENUM("spool", "fsync", spool_fsync, cfg_fsync_modes, "batch"),

	ENUM("security", "e2e", e2e, cfg_e2e_modes, "off"),
	INT("security", "key_grace", key_grace, 0, 31536000, "86400"),

	INT("requests", "default_timeout", default_timeout, 1, 86400, "30"),
	INT("requests", "max_timeout", max_timeout, 1, 604800, "3600"),
	INT("requests", "max_pending_per_device", max_pending_per_device, 1, 1000000, "1000"),
	SIZE("requests", "max_bytes", requests_max_bytes, 16 * MIB, 1 * TIB, "4G"),

	SIZE("limits", "max_payload", max_payload, 64, 16 * MIB, "256K"),
	INT("limits", "max_depth", max_depth, 1, JC_MAX_DEPTH, "64"),

	STR("admin", "socket", admin_socket, 0, cfg_check_socket_path,
	    "/run/herald/herald.sock"),
};

#define CFG_NKEYS   (sizeof(cfg_keys) / sizeof(cfg_keys[0]))
_Static_assert(CFG_NKEYS <= CONFIG_MAX_KEYS, "CONFIG_MAX_KEYS is too small");

/* Suffixes of a size, matched without regard to case. */
static const struct {
	const char *suffix;
	long long   mult;
} cfg_size_units[] = {
	{ "", 1 },
	{ "k", KIB }, { "kib", KIB },
	{ "m", MIB }, { "mib", MIB },
	{ "g", GIB }, { "gib", GIB },
	{ "t", TIB }, { "tib", TIB },
};

static void __attribute__((format(printf, 3, 4)))
cfg_msg(char *msg, size_t msglen, const char *fmt, ...)
{
	va_list ap;

	if (msglen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, msglen, fmt, ap);
	va_end(ap);
}

static void *
cfg_field(struct config *cf, const struct cfg_key *k)
{
	return (char *)cf + k->off;
}

/* "1M", "4G", or plain bytes: ranges are printed in the units one writes. */
static void
cfg_fmt_size(long long v, char *buf, size_t len)
{
	if (v != 0 && v % TIB == 0)
		snprintf(buf, len, "%lldT", v / TIB);
	else if (v != 0 && v % GIB == 0)
		snprintf(buf, len, "%lldG", v / GIB);
	else if (v != 0 && v % MIB == 0)
		snprintf(buf, len, "%lldM", v / MIB);
	else if (v != 0 && v % KIB == 0)
		snprintf(buf, len, "%lldK", v / KIB);
	else
		snprintf(buf, len, "%lld", v);
}

static int
cfg_parse_int(const struct cfg_key *k, const char *v, int *out, char *msg, size_t msglen)
{
	char *end;
	long long n;

	errno = 0;
	n = strtoll(v, &end, 10);
	/* strtoll skips leading blanks; a value never has them here, but reject
	 * them anyway so " 1" from a quoted value is not silently accepted. */
	if (end == v || *end != '\0' || isspace((unsigned char)*v)) {
		cfg_msg(msg, msglen, "bad integer \"%.64s\"", v);
		return -1;
	}
	if (errno == ERANGE || n < k->min || n > k->max) {
		cfg_msg(msg, msglen, "%.64s out of range %lld..%lld", v, k->min, k->max);
		return -1;
	}
	*out = (int)n;
	return 0;
}

static int
cfg_parse_size(const struct cfg_key *k, const char *v, long long *out,
    char *msg, size_t msglen)
{
	char lo[32], hi[32];
	const char *p = v, *suf;
	unsigned long long n = 0;
	long long mult = 0;
	size_t i;

	if (!isdigit((unsigned char)*p)) {
		cfg_msg(msg, msglen, "bad size \"%.64s\" (a number of bytes, "
		    "optionally with K, M, G, T, KiB, MiB, GiB or TiB)", v);
		return -1;
	}
	for (; isdigit((unsigned char)*p); p++) {
		if (n > (ULLONG_MAX - 9) / 10) {
			n = ULLONG_MAX;     /* saturate; reported as out of range */
			continue;
		}
		n = n * 10 + (unsigned long long)(*p - '0');
	}
	for (suf = p; *suf == ' ' || *suf == '\t'; suf++)
		;
	for (i = 0; i < sizeof(cfg_size_units) / sizeof(cfg_size_units[0]); i++) {
		if (strcasecmp(suf, cfg_size_units[i].suffix) == 0) {
			mult = cfg_size_units[i].mult;
			break;
		}
	}
	if (mult == 0 || (*suf == '\0' && suf != p)) {
		cfg_msg(msg, msglen, "bad size suffix \"%.16s\" in \"%.64s\" "
		    "(use K, M, G, T, KiB, MiB, GiB, TiB or plain bytes)", suf, v);
		return -1;
	}
	cfg_fmt_size(k->min, lo, sizeof(lo));
	cfg_fmt_size(k->max, hi, sizeof(hi));
	if (n > (unsigned long long)LLONG_MAX / (unsigned long long)mult ||
	    (long long)n * mult < k->min || (long long)n * mult > k->max ||
	    (unsigned long long)n * (unsigned long long)mult > SIZE_MAX) {
		cfg_msg(msg, msglen, "%.64s out of range %s..%s", v, lo, hi);
		return -1;
	}
	*out = (long long)n * mult;
	return 0;
}

static int
cfg_parse_enum(const struct cfg_key *k, const char *v, int *out, char *msg, size_t msglen)
{
	char list[256];
	size_t used = 0;
	const struct cfg_name *n;

	for (n = k->names; n->name != NULL; n++) {
		if (strcasecmp(v, n->name) == 0) {
			*out = n->value;
			return 0;
		}
	}
	list[0] = '\0';
	for (n = k->names; n->name != NULL && used < sizeof(list); n++)
		used += (size_t)snprintf(list + used, sizeof(list) - used, "%s%s",
		    n == k->names ? "" : ", ", n->name);
	cfg_msg(msg, msglen, "bad value \"%.64s\" (accepted: %s)", v, list);
	return -1;
}

/* Bearer tokens: printable ASCII, separated by commas and/or blanks. */
static int
cfg_parse_tokens(struct config *cf, const char *v, char *msg, size_t msglen)
{
	const char *p = v;
	int n = 0;

	cf->api_ntokens = 0;
	memset(cf->api_tokens, 0, sizeof(cf->api_tokens));
	for (;;) {
		const char *start;
		size_t len;
		int commas = 0;

		/* A separator is blanks with at most one comma among them; a
		 * second comma (or a leading or trailing one) leaves an empty token. */
		while (*p == ',' || isspace((unsigned char)*p)) {
			if (*p == ',')
				commas++;
			p++;
		}
		if (commas > 1 || (commas == 1 && (n == 0 || *p == '\0'))) {
			cfg_msg(msg, msglen, "empty token (between commas, or a "
			    "leading or trailing comma) after %d token%s", n, n == 1 ? "" : "s");
			return -1;
		}
		if (*p == '\0')
			break;
		start = p;
		while (*p != '\0' && *p != ',' && !isspace((unsigned char)*p)) {
			if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e) {
				cfg_msg(msg, msglen, "token %d has a character that is "
				    "not printable ASCII", n + 1);
				return -1;
			}
			p++;
		}
		len = (size_t)(p - start);
		if (n == CONFIG_MAX_TOKENS) {
			cfg_msg(msg, msglen, "too many tokens (at most %d)", CONFIG_MAX_TOKENS);
			return -1;
		}
		if (len >= sizeof(cf->api_tokens[0])) {
			cfg_msg(msg, msglen, "token %d is too long (at most %zu characters)",
			    n + 1, sizeof(cf->api_tokens[0]) - 1);
			return -1;
		}
		memcpy(cf->api_tokens[n], start, len);
		cf->api_tokens[n][len] = '\0';
		n++;
	}
	if (n == 0) {
		cfg_msg(msg, msglen, "no token");
		return -1;
	}
	cf->api_ntokens = n;
	return 0;
}

/* "host:port", "[v6 address]:port"; a bare v6 address must be bracketed. */
static int
cfg_parse_hostport(const char *v, char *msg, size_t msglen)
{
	const char *colon, *host_end, *p;
	long port = 0;

	if (v[0] == '[') {
		host_end = strchr(v, ']');
		if (host_end == NULL || host_end == v + 1 || host_end[1] != ':') {
			cfg_msg(msg, msglen, "bad address \"%.64s\" (want host:port "
			    "or [v6 address]:port)", v);
			return -1;
		}
		colon = host_end + 1;
		/* hex, ':' and '.' (v4-mapped), then maybe a %zone (an interface name) */
		for (p = v + 1; p < host_end && *p != '%'; p++) {
			if (!isxdigit((unsigned char)*p) && *p != ':' && *p != '.') {
				cfg_msg(msg, msglen, "bad address \"%.64s\" (want host:port "
				    "or [v6 address]:port)", v);
				return -1;
			}
		}
		if (p < host_end && p + 1 == host_end) {
			cfg_msg(msg, msglen, "bad address \"%.64s\" (empty zone)", v);
			return -1;
		}
		for (p += p < host_end; p < host_end; p++) {
			if (!isalnum((unsigned char)*p) && *p != '.' &&
			    *p != '-' && *p != '_') {
				cfg_msg(msg, msglen, "bad address \"%.64s\" (want host:port "
				    "or [v6 address]:port)", v);
				return -1;
			}
		}
	} else {
		colon = strrchr(v, ':');
		if (colon == NULL || colon == v || memchr(v, ':', (size_t)(colon - v)) != NULL) {
			cfg_msg(msg, msglen, "bad address \"%.64s\" (want host:port "
			    "or [v6 address]:port)", v);
			return -1;
		}
		for (p = v; p < colon; p++) {
			if (!isalnum((unsigned char)*p) && *p != '.' && *p != '-' &&
			    *p != '_' && *p != '*') {
				cfg_msg(msg, msglen, "bad host in \"%.64s\"", v);
				return -1;
			}
		}
	}
	p = colon + 1;
	if (*p == '\0') {
		cfg_msg(msg, msglen, "missing port in \"%.64s\"", v);
		return -1;
	}
	for (; *p != '\0'; p++) {
		if (!isdigit((unsigned char)*p)) {
			cfg_msg(msg, msglen, "bad port in \"%.64s\"", v);
			return -1;
		}
		if (port <= 65535)
			port = port * 10 + (*p - '0');
	}
	if (port < 1 || port > 65535) {
		cfg_msg(msg, msglen, "port of \"%.64s\" out of range 1..65535", v);
		return -1;
	}
	return 0;
}

/* Set one key from its (unquoted) text; msg gets the reason on refusal. */
static int
cfg_set(struct config *cf, const struct cfg_key *k, const char *v,
    char *msg, size_t msglen)
{
	long long sz;
	int n;

	if (*v == '\0' && !(k->flags & CFG_EMPTY_OK)) {
		cfg_msg(msg, msglen, "empty value");
		return -1;
	}
	switch (k->type) {
	case CFG_STRING:
	case CFG_HOSTPORT:
		if (strlen(v) >= k->size) {
			cfg_msg(msg, msglen, "value too long (at most %zu bytes)", k->size - 1);
			return -1;
		}
		if (k->type == CFG_HOSTPORT && cfg_parse_hostport(v, msg, msglen) == -1)
			return -1;
		if (*v != '\0' && k->check != NULL && k->check(v, msg, msglen) == -1)
			return -1;
		/* Clear the whole field: no tail of an old value (a password)
		 * stays behind the new one. */
		memset(cfg_field(cf, k), 0, k->size);
		memcpy(cfg_field(cf, k), v, strlen(v));
		return 0;
	case CFG_INT:
		if (cfg_parse_int(k, v, &n, msg, msglen) == -1)
			return -1;
		*(int *)cfg_field(cf, k) = n;
		return 0;
	case CFG_SIZE:
		if (cfg_parse_size(k, v, &sz, msg, msglen) == -1)
			return -1;
		*(size_t *)cfg_field(cf, k) = (size_t)sz;
		return 0;
	case CFG_ENUM:
		if (cfg_parse_enum(k, v, &n, msg, msglen) == -1)
			return -1;
		*(int *)cfg_field(cf, k) = n;
		return 0;
	case CFG_TOKENS:
		return cfg_parse_tokens(cf, v, msg, msglen);
	}
	cfg_msg(msg, msglen, "internal error: unknown key type");
	return -1;
}

/* ^[A-Za-z0-9._-]{1,63}$: it goes into envelopes and message ids. */
static int
cfg_check_node_name(const char *v, char *msg, size_t msglen)
{
	size_t len = strlen(v);

	if (len < 1 || len > 63 || strspn(v, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	    "abcdefghijklmnopqrstuvwxyz0123456789._-") != len) {
		cfg_msg(msg, msglen, "node_name \"%.64s\" must be 1 to 63 characters "
		    "of A-Z a-z 0-9 . _ -", v);
		return -1;
	}
	return 0;
}

/* Daemons chdir and fork; a relative path would mean something else later. */
static int
cfg_check_abs_path(const char *v, char *msg, size_t msglen)
{
	if (v[0] != '/') {
		cfg_msg(msg, msglen, "\"%.64s\" is not an absolute path", v);
		return -1;
	}
	return 0;
}

/* A PEM file for an https backend (certificates to trust, a client
 * certificate or its key): readable now, so that a typo is an error of
 * `herald -t`, not a backend that never answers. */
static int
cfg_check_pem_file(const char *v, char *msg, size_t msglen)
{
	struct stat st;

	if (v[0] == '\0')
		return 0;
	if (cfg_check_abs_path(v, msg, msglen) == -1)
		return -1;
	if (stat(v, &st) == -1 || access(v, R_OK) == -1) {
		cfg_msg(msg, msglen, "%.200s: %s", v, strerror(errno));
		return -1;
	}
	if (!S_ISREG(st.st_mode)) {
		cfg_msg(msg, msglen, "%.200s is not a file", v);
		return -1;
	}
	return 0;
}

/* Does the PEM file hold an encrypted private key (PKCS#8 or the older
 * "Proc-Type: 4,ENCRYPTED")?  Only the first 64 KiB are looked at. */
static bool
cfg_pem_encrypted(const char *path)
{
	char buf[65536];
	size_t n;
	FILE *fp;

	if ((fp = fopen(path, "re")) == NULL)
		return false;
	n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	return strstr(buf, "-----BEGIN ENCRYPTED PRIVATE KEY-----") != NULL ||
	    strstr(buf, "Proc-Type: 4,ENCRYPTED") != NULL;
}

/*
 * What a reload compares to see the backend's TLS files changed, under the
 * same names too (a renewed certificate written over the old one): each
 * one's device, inode, size and time of last change, hashed (FNV-1a); 0
 * when none is set.
 */
static uint64_t
cfg_tls_stamp(const struct config *cf)
{
	const char *files[] = { cf->backend_ca_file, cf->backend_cert_file, cf->backend_key_file };
	uint64_t h = 14695981039346656037ULL;
	struct stat st;

	if (files[0][0] == '\0' && files[1][0] == '\0' && files[2][0] == '\0')
		return 0;

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		uint64_t v[6] = { 0 };

		if (files[i][0] != '\0' && stat(files[i], &st) == 0) {
			v[0] = (uint64_t)st.st_dev;
			v[1] = (uint64_t)st.st_ino;
			v[2] = (uint64_t)st.st_size;
			v[3] = (uint64_t)st.st_ctim.tv_sec;
			v[4] = (uint64_t)st.st_ctim.tv_nsec;
			v[5] = (uint64_t)st.st_mtim.tv_nsec;
		}
		for (size_t j = 0; j < sizeof(v); j++) {
			h ^= ((const unsigned char *)v)[j];
			h *= 1099511628211ULL;
		}
	}
	return h;
}

static int
cfg_check_socket_path(const char *v, char *msg, size_t msglen)
{
	if (cfg_check_abs_path(v, msg, msglen) == -1)
		return -1;
	if (strlen(v) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
		cfg_msg(msg, msglen, "socket path too long for a unix socket "
		    "(at most %zu bytes)", sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
		return -1;
	}
	return 0;
}

/*
 * What libcurl itself makes of the url: one it cannot post to (an empty host
 * as in "http://:80/", a port over 65535 or 0) would fail every delivery,
 * forever, while the spool fills.
 */
static int
cfg_check_url_parts(const char *v, char *msg, size_t msglen)
{
	CURLU *u;
	CURLUcode rc;
	char *host = NULL, *port = NULL;
	int ret = -1;

	if ((u = curl_url()) == NULL) {
		cfg_msg(msg, msglen, "url: out of memory");
		return -1;
	}
	rc = curl_url_set(u, CURLUPART_URL, v, 0);
	if (rc == CURLUE_OK)
		rc = curl_url_get(u, CURLUPART_HOST, &host, 0);
	if (rc == CURLUE_OK) {
		rc = curl_url_get(u, CURLUPART_PORT, &port, 0);
		if (rc == CURLUE_NO_PORT)
			rc = CURLUE_OK;
	}
	if (rc == CURLUE_NO_HOST || (rc == CURLUE_OK && host[0] == '\0'))
		cfg_msg(msg, msglen, "url \"%.64s\" has no host", v);
	else if (rc == CURLUE_BAD_PORT_NUMBER ||
	    (rc == CURLUE_OK && port != NULL && strtol(port, NULL, 10) == 0))
		cfg_msg(msg, msglen, "url \"%.64s\": port out of range 1..65535", v);
	else if (rc != CURLUE_OK)
		/* curl_url_strerror() is newer than the libcurl herald needs. */
		cfg_msg(msg, msglen, "url \"%.64s\" is not a URL libcurl can use "
		    "(CURLUcode %d)", v, (int)rc);
	else
		ret = 0;
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return ret;
}

static int
cfg_check_url(const char *v, char *msg, size_t msglen)
{
	size_t skip;

	if (strncasecmp(v, "http://", 7) == 0)
		skip = 7;
	else if (strncasecmp(v, "https://", 8) == 0)
		skip = 8;
	else {
		cfg_msg(msg, msglen, "url \"%.64s\" must start with http:// or https://", v);
		return -1;
	}
	if (v[skip] == '\0' || v[skip] == '/') {
		cfg_msg(msg, msglen, "url \"%.64s\" has no host", v);
		return -1;
	}
	if (strpbrk(v, " \t") != NULL) {
		cfg_msg(msg, msglen, "url \"%.64s\" contains a blank", v);
		return -1;
	}
	return cfg_check_url_parts(v, msg, msglen);
}

/* The group goes into "$share/<group>/device/+/<kind>"; empty: "device/+/<kind>". */
static int
cfg_check_share_group(const char *v, char *msg, size_t msglen)
{
	if (strpbrk(v, "/+# \t") != NULL) {
		cfg_msg(msg, msglen, "share_group \"%.64s\" must not contain / + # "
		    "or blanks", v);
		return -1;
	}
	return 0;
}

/* whsec_<base64> is decoded before use: catch a broken one here, with its line. */
static int
cfg_check_secret(const char *v, char *msg, size_t msglen)
{
	const char *b64;
	size_t len, pad;

	if (strncmp(v, "whsec_", 6) != 0)
		return 0;
	b64 = v + 6;
	len = strlen(b64);
	pad = len - strspn(b64, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789+/");
	if (len == 0 || pad > 2 || strspn(b64 + len - pad, "=") != pad) {
		cfg_msg(msg, msglen, "secret starting with whsec_ must be followed "
		    "by base64");
		return -1;
	}
	return 0;
}

static int
cfg_check_host(const char *v, char *msg, size_t msglen)
{
	if (strpbrk(v, " \t") != NULL) {
		cfg_msg(msg, msglen, "host \"%.64s\" contains a blank", v);
		return -1;
	}
	return 0;
}

void
config_defaults(struct config *cf)
{
	char host[256], msg[CONFIG_ERRLEN];
	size_t i;

	memset(cf, 0, sizeof(*cf));
	for (i = 0; i < CFG_NKEYS; i++) {
		if (cfg_keys[i].def == NULL)
			continue;
		/* The table's own defaults cannot fail; the unit test proves it. */
		if (cfg_set(cf, &cfg_keys[i], cfg_keys[i].def, msg, sizeof(msg)) == -1)
			abort();
	}
	if (gethostname(host, sizeof(host)) == -1)
		host[0] = '\0';
	host[sizeof(host) - 1] = '\0';
	strlcpy_h(cf->node_name, host[0] != '\0' ? host : "herald", sizeof(cf->node_name));
}

static const struct cfg_key *
cfg_find(const char *section, const char *key)
{
	size_t i;

	for (i = 0; i < CFG_NKEYS; i++)
		if (strcmp(cfg_keys[i].section, section) == 0 &&
		    (key == NULL || strcmp(cfg_keys[i].key, key) == 0))
			return &cfg_keys[i];
	return NULL;
}

static char *
cfg_trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

/* After a closing quote or a section header only a comment may follow. */
static int
cfg_rest_is_comment(const char *p)
{
	while (isspace((unsigned char)*p))
		p++;
	return *p == '\0' || *p == '#';
}

/*
 * The value part of "key = value", in place: a quoted value keeps '#' and
 * blanks, with \" and \\ as its only escapes; an unquoted one ends at a '#'
 * that follows a blank, and is trimmed.
 */
static int
cfg_value(char *raw, char **out, char *msg, size_t msglen)
{
	char *p = raw, *w;

	while (isspace((unsigned char)*p))
		p++;
	if (*p != '"') {
		char *c;

		for (c = p; *c != '\0'; c++) {
			if (*c == '#' && c > raw && isspace((unsigned char)c[-1])) {
				*c = '\0';
				break;
			}
		}
		*out = cfg_trim(p);
		return 0;
	}
	*out = w = ++p;
	for (;; p++) {
		if (*p == '\0') {
			cfg_msg(msg, msglen, "unterminated quote");
			return -1;
		}
		if (*p == '"')
			break;
		if (*p == '\\') {
			if (p[1] != '"' && p[1] != '\\') {
				cfg_msg(msg, msglen, "bad escape in quoted value "
				    "(only \\\" and \\\\ are allowed)");
				return -1;
			}
			p++;
		}
		*w++ = *p;
	}
	if (!cfg_rest_is_comment(p + 1)) {
		cfg_msg(msg, msglen, "unexpected text after the closing quote");
		return -1;
	}
	*w = '\0';
	return 0;
}

/*
 * One line, already cut out and NUL-terminated.  *section is the current
 * section (a pointer into the key table).  0, or -1 with msg set.
 */
static int
cfg_line(struct config *cf, char *line, int lineno, const char **section,
    int seen[], char *msg, size_t msglen)
{
	const struct cfg_key *k;
	char *p, *eq, *key, *val;
	char vmsg[CONFIG_ERRLEN];

	p = cfg_trim(line);
	if (*p == '\0' || *p == '#' || *p == ';')
		return 0;

	if (*p == '[') {
		char *close = strchr(p, ']');
		char *name;

		if (close == NULL || !cfg_rest_is_comment(close + 1)) {
			cfg_msg(msg, msglen, "bad section header \"%.64s\"", p);
			return -1;
		}
		*close = '\0';
		name = cfg_trim(p + 1);
		if (*name == '\0' || strpbrk(name, "[ \t") != NULL) {
			cfg_msg(msg, msglen, "bad section header \"[%.64s]\"", name);
			return -1;
		}
		if ((k = cfg_find(name, NULL)) == NULL) {
			cfg_msg(msg, msglen, "unknown section [%.64s]", name);
			return -1;
		}
		*section = k->section;
		return 0;
	}

	if ((eq = strchr(p, '=')) == NULL) {
		cfg_msg(msg, msglen, "missing \"=\" (expected key = value) in \"%.64s\"", p);
		return -1;
	}
	*eq = '\0';
	key = cfg_trim(p);
	if (*key == '\0') {
		cfg_msg(msg, msglen, "missing key before \"=\"");
		return -1;
	}
	if (*section == NULL) {
		cfg_msg(msg, msglen, "key \"%.64s\" before any [section]", key);
		return -1;
	}
	if ((k = cfg_find(*section, key)) == NULL) {
		cfg_msg(msg, msglen, "unknown key \"%.64s\" in [%s]", key, *section);
		return -1;
	}
	if (seen[k - cfg_keys] != 0) {
		cfg_msg(msg, msglen, "duplicate key \"%s\" in [%s], first set on line %d",
		    k->key, k->section, seen[k - cfg_keys]);
		return -1;
	}
	if (cfg_value(eq + 1, &val, vmsg, sizeof(vmsg)) == -1 ||
	    cfg_set(cf, k, val, vmsg, sizeof(vmsg)) == -1) {
		cfg_msg(msg, msglen, "[%s] %s: %s", k->section, k->key, vmsg);
		return -1;
	}
	seen[k - cfg_keys] = lineno;
	cf->key_line[k - cfg_keys] = lineno;
	return 0;
}

int
config_parse(struct config *cf, const char *path, const char *text,
    char *err, size_t errlen)
{
	/* Parse into a copy: a failed reload must leave the running config whole. */
	struct config *tmp;
	int seen[CFG_NKEYS] = { 0 };
	const char *section = NULL, *p = text;
	char line[CFG_LINE_MAX + 2], msg[CONFIG_ERRLEN];
	int lineno = 0;

	if ((tmp = malloc(sizeof(*tmp))) == NULL) {
		cfg_msg(err, errlen, "%s: out of memory", path);
		return -1;
	}
	*tmp = *cf;
	strlcpy_h(tmp->path, path, sizeof(tmp->path));
	memset(tmp->key_line, 0, sizeof(tmp->key_line));
	while (*p != '\0') {
		const char *eol = strchr(p, '\n');
		size_t len = eol != NULL ? (size_t)(eol - p) : strlen(p);

		lineno++;
		if (len > 0 && p[len - 1] == '\r')
			len--;
		if (len > CFG_LINE_MAX) {
			cfg_msg(err, errlen, "%s:%d: line longer than %d bytes",
			    path, lineno, CFG_LINE_MAX);
			free(tmp);
			return -1;
		}
		memcpy(line, p, len);
		line[len] = '\0';
		p = eol != NULL ? eol + 1 : p + strlen(p);
		if (cfg_line(tmp, line, lineno, &section, seen, msg, sizeof(msg)) == -1) {
			cfg_msg(err, errlen, "%s:%d: %s", path, lineno, msg);
			free(tmp);
			return -1;
		}
	}
	*cf = *tmp;
	free(tmp);
	return 0;
}

/* The line that set section.key (0: it has its default). */
static int
cfg_key_line(const struct config *cf, const char *section, const char *key)
{
	const struct cfg_key *k = cfg_find(section, key);

	return k != NULL ? cf->key_line[k - cfg_keys] : 0;
}

/* "FILE:LINE: message" (SPEC 4), or "FILE: message" for what no line set:
 * a required key missing, or two keys both at their defaults. */
static int __attribute__((format(printf, 5, 6)))
cfg_fail(const struct config *cf, int line, char *err, size_t errlen, const char *fmt, ...)
{
	const char *path = cf->path[0] != '\0' ? cf->path : "(configuration)";
	char msg[CONFIG_ERRLEN];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (line > 0)
		cfg_msg(err, errlen, "%s:%d: %s", path, line, msg);
	else
		cfg_msg(err, errlen, "%s: %s", path, msg);
	return -1;
}

/* Of two keys checked against each other, the one set later in the file. */
static int
cfg_pair_line(const struct config *cf, const char *s1, const char *k1, const char *s2,
    const char *k2)
{
	int a = cfg_key_line(cf, s1, k1), b = cfg_key_line(cf, s2, k2);

	return a > b ? a : b;
}

int
config_validate(const struct config *cf, char *err, size_t errlen)
{
	char msg[CONFIG_ERRLEN];

	if (cf->backend_url[0] == '\0')
		return cfg_fail(cf, 0, err, errlen, "[backend] url is not set");
	if (cfg_check_url(cf->backend_url, msg, sizeof(msg)) == -1)
		return cfg_fail(cf, cfg_key_line(cf, "backend", "url"), err, errlen,
		    "[backend] %s", msg);
	if (cf->default_timeout > cf->max_timeout)
		return cfg_fail(cf, cfg_pair_line(cf, "requests", "default_timeout", "requests",
		    "max_timeout"), err, errlen, "[requests] default_timeout (%d) is greater "
		    "than max_timeout (%d)", cf->default_timeout, cf->max_timeout);
	if (cf->ping_timeout_ms <= cf->ping_interval_ms)
		return cfg_fail(cf, cfg_pair_line(cf, "workers", "ping_timeout_ms", "workers",
		    "ping_interval_ms"), err, errlen, "[workers] ping_timeout_ms (%d) must be "
		    "greater than ping_interval_ms (%d)", cf->ping_timeout_ms, cf->ping_interval_ms);
	if (cf->share_group[0] == '\0' && (cf->mqtt_workers > 1 || cf->connections_per_worker > 1))
		return cfg_fail(cf, cfg_key_line(cf, "mqtt", "share_group"), err, errlen,
		    "[mqtt] share_group is empty (a plain subscription), which needs one "
		    "broker connection: [workers] mqtt = 1 and connections_per_worker = 1 "
		    "(now %d and %d); each connection would get every message",
		    cf->mqtt_workers, cf->connections_per_worker);
	if (cf->backend_key_file[0] != '\0' && cf->backend_cert_file[0] == '\0')
		return cfg_fail(cf, cfg_key_line(cf, "backend", "key_file"), err, errlen,
		    "[backend] key_file is set without cert_file: the key of which certificate?");
	if (cf->backend_cert_file[0] != '\0') {
		const char *kf = cf->backend_key_file[0] != '\0' ? "key_file" : "cert_file";
		const char *path = kf[0] == 'k' ? cf->backend_key_file : cf->backend_cert_file;

		/* herald has no passphrase to give, and OpenSSL would ask for
		 * one on the terminal. */
		if (cfg_pem_encrypted(path))
			return cfg_fail(cf, cfg_key_line(cf, "backend", kf), err, errlen,
			    "[backend] %s: %.200s holds an encrypted private key; herald needs "
			    "it unencrypted (readable by herald's user only)", kf, path);
	}
	if (cf->api_ntokens < 1)
		return cfg_fail(cf, cfg_key_line(cf, "api", "tokens"), err, errlen,
		    "[api] tokens: at least one token is needed");
	if (cfg_check_node_name(cf->node_name, msg, sizeof(msg)) == -1)
		return cfg_fail(cf, cfg_key_line(cf, "herald", "node_name"), err, errlen,
		    "[herald] %s", msg);
	if (cfg_check_abs_path(cf->state_dir, msg, sizeof(msg)) == -1)
		return cfg_fail(cf, cfg_key_line(cf, "herald", "state_dir"), err, errlen,
		    "[herald] state_dir: %s", msg);
	if (cfg_check_abs_path(cf->run_dir, msg, sizeof(msg)) == -1)
		return cfg_fail(cf, cfg_key_line(cf, "herald", "run_dir"), err, errlen,
		    "[herald] run_dir: %s", msg);
	if (cfg_check_socket_path(cf->admin_socket, msg, sizeof(msg)) == -1)
		return cfg_fail(cf, cfg_key_line(cf, "admin", "socket"), err, errlen,
		    "[admin] socket: %s", msg);
	if (cf->outbox_bytes < outbox_min_bytes(cf->max_payload))
		return cfg_fail(cf, cfg_pair_line(cf, "mqtt", "outbox_bytes", "limits",
		    "max_payload"), err, errlen, "[mqtt] outbox_bytes (%zu) is too small for "
		    "[limits] max_payload (%zu): it needs at least %zu", cf->outbox_bytes,
		    cf->max_payload, outbox_min_bytes(cf->max_payload));
	if (cf->e2e != E2E_OFF)
		return cfg_fail(cf, cfg_key_line(cf, "security", "e2e"), err, errlen,
		    "[security] e2e = %s needs the device registry, which this herald does "
		    "not have yet; set e2e = off", cf->e2e == E2E_REQUIRED ? "required" : "optional");
	return 0;
}

int
config_load(struct config *cf, const char *path, char *err, size_t errlen)
{
	struct config *tmp;
	FILE *fp;
	char *buf = NULL, *nul;
	size_t len = 0, cap = 0;
	int rc = -1;

	if ((fp = fopen(path, "re")) == NULL) {
		cfg_msg(err, errlen, "%s: cannot read: %s", path, strerror(errno));
		return -1;
	}
	for (;;) {
		size_t n;

		if (len + 1 >= cap) {
			char *nbuf;

			if (len > CFG_FILE_MAX) {
				cfg_msg(err, errlen, "%s: cannot read: file larger than %d bytes",
				    path, CFG_FILE_MAX);
				goto out;
			}
			/* Room for one byte over the limit, to see that it is over. */
			cap = cap == 0 ? 16384 : cap * 2;
			if (cap > CFG_FILE_MAX + 2)
				cap = CFG_FILE_MAX + 2;
			if ((nbuf = realloc(buf, cap)) == NULL) {
				cfg_msg(err, errlen, "%s: cannot read: out of memory", path);
				goto out;
			}
			buf = nbuf;
		}
		n = fread(buf + len, 1, cap - len - 1, fp);
		len += n;
		if (n == 0) {
			if (ferror(fp)) {
				cfg_msg(err, errlen, "%s: cannot read: %s", path, strerror(errno));
				goto out;
			}
			break;
		}
	}
	buf[len] = '\0';
	/* A NUL would silently cut the file short; name its line instead. */
	if ((nul = memchr(buf, '\0', len)) != NULL) {
		int lineno = 1;

		for (char *c = buf; c < nul; c++)
			lineno += *c == '\n';
		cfg_msg(err, errlen, "%s:%d: NUL byte in the file", path, lineno);
		goto out;
	}
	if ((tmp = malloc(sizeof(*tmp))) == NULL) {
		cfg_msg(err, errlen, "%s: out of memory", path);
		goto out;
	}
	config_defaults(tmp);
	if (config_parse(tmp, path, buf, err, errlen) == 0 &&
	    config_validate(tmp, err, errlen) == 0) {
		tmp->backend_tls_stamp = cfg_tls_stamp(tmp);
		*cf = *tmp;
		rc = 0;
	}
	free(tmp);
out:
	free(buf);
	fclose(fp);
	return rc;
}
