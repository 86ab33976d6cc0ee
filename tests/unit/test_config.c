/*
 * Unit tests of the configuration parser (src/config.c): defaults, every value
 * type, every error with its line, quoting, comments, and the shipped file.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* "config.h" alone would find autoconf's header in the build directory. */
#include "src/config.h"
#include "src/log.h"

#define T_PATH  "t.conf"

/* The minimum config_validate accepts, to append keys to. */
#define T_VALID "[backend]\nurl = http://b.example/x\n[api]\ntokens = tok\n"

static void
check_err(const char *err, const char *prefix, const char *needle)
{
	if (strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, needle) == NULL)
		fail_msg("error \"%s\": want prefix \"%s\" and \"%s\"", err, prefix, needle);
}

/* Parse must fail on `line` with `needle` in the message and leave cf alone. */
static void
expect_error(const char *text, int line, const char *needle)
{
	struct config cf, before;
	char err[CONFIG_ERRLEN] = "", prefix[64];

	config_defaults(&cf);
	before = cf;
	if (config_parse(&cf, T_PATH, text, err, sizeof(err)) != -1)
		fail_msg("parse of \"%s\" succeeded, want error \"%s\"", text, needle);
	snprintf(prefix, sizeof(prefix), "%s:%d: ", T_PATH, line);
	check_err(err, prefix, needle);
	assert_memory_equal(&cf, &before, sizeof(cf));
}

static void
parse_ok(struct config *cf, const char *text)
{
	char err[CONFIG_ERRLEN] = "";

	config_defaults(cf);
	if (config_parse(cf, T_PATH, text, err, sizeof(err)) != 0)
		fail_msg("parse of \"%s\" failed: %s", text, err);
}

static char *
repeat(char c, size_t n)
{
	char *s = malloc(n + 1);

	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

static char *
fmt(const char *f, ...)
{
	va_list ap;
	char *s;

	va_start(ap, f);
	assert_true(vasprintf(&s, f, ap) >= 0);
	va_end(ap);
	return s;
}

static void
test_defaults(void **state)
{
	struct config cf;
	char host[256] = "";

	config_defaults(&cf);
	assert_string_equal(cf.path, "");
	assert_int_equal(gethostname(host, sizeof(host)), 0);
	host[63] = '\0';
	assert_string_equal(cf.node_name, host[0] ? host : "herald");
	assert_string_equal(cf.state_dir, "/var/lib/herald");
	assert_string_equal(cf.run_dir, "/run/herald");
	assert_int_equal(cf.log_level, LOG_INFO);
	assert_int_equal(cf.mqtt_workers, 1);
	assert_int_equal(cf.ready_timeout_ms, 10000);
	assert_int_equal(cf.ping_interval_ms, 1000);
	assert_int_equal(cf.ping_timeout_ms, 3000);
	assert_int_equal(cf.stop_timeout_ms, 10000);
	assert_int_equal(cf.throttle_restarts, 5);
	assert_int_equal(cf.throttle_window_ms, 10000);
	assert_int_equal(cf.throttle_pause_ms, 60000);
	assert_string_equal(cf.mqtt_host, "127.0.0.1");
	assert_int_equal(cf.mqtt_port, 1883);
	assert_string_equal(cf.mqtt_username, "herald");
	assert_string_equal(cf.mqtt_password, "");
	assert_int_equal(cf.connections_per_worker, 1);
	assert_int_equal(cf.keepalive, 30);
	assert_string_equal(cf.share_group, "herald");
	assert_true(cf.outbox_bytes == 64u * 1024 * 1024);
	assert_string_equal(cf.api_listen, "127.0.0.1:8480");
	assert_int_equal(cf.api_ntokens, 0);
	assert_true(cf.api_max_body == 1024u * 1024);
	assert_string_equal(cf.backend_url, "");
	assert_string_equal(cf.backend_secret, "");
	assert_int_equal(cf.batch_max, 1);
	assert_int_equal(cf.concurrency, 4);
	assert_int_equal(cf.timeout_ms, 10000);
	assert_true(cf.spool_max_bytes == (size_t)1024 * 1024 * 1024);
	assert_int_equal(cf.spool_fsync, FSYNC_BATCH);
	assert_int_equal(cf.e2e, E2E_OFF);
	assert_int_equal(cf.key_grace, 86400);
	assert_int_equal(cf.default_timeout, 30);
	assert_int_equal(cf.max_timeout, 3600);
	assert_int_equal(cf.max_pending_per_device, 1000);
	assert_true(cf.requests_max_bytes == (size_t)4 << 30);
	assert_true(cf.max_payload == 256u * 1024);
	assert_int_equal(cf.max_depth, 64);
	assert_string_equal(cf.admin_socket, "/run/herald/herald.sock");
}

/* Defaults lack only url and tokens to pass validation. */
static void
test_defaults_validate(void **state)
{
	struct config cf;
	char err[CONFIG_ERRLEN];

	config_defaults(&cf);
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, "(configuration): ", "[backend] url is not set");
	parse_ok(&cf, T_VALID);
	assert_int_equal(config_validate(&cf, err, sizeof(err)), 0);
	assert_string_equal(cf.path, T_PATH);
}

static void
test_every_key(void **state)
{
	struct config cf;

	parse_ok(&cf,
	    "[herald]\n"
	    "node_name = node-a.1_x\n"
	    "state_dir = /srv/herald/state\n"
	    "run_dir = /tmp/herald-run\n"
	    "log_level = debug\n"
	    "[workers]\n"
	    "mqtt = 64\n"
	    "ready_timeout_ms = 100\n"
	    "ping_interval_ms = 250\n"
	    "ping_timeout_ms = 600000\n"
	    "stop_timeout_ms = 1234\n"
	    "throttle_restarts = 7\n"
	    "throttle_window_ms = 20000\n"
	    "throttle_pause_ms = 3600000\n"
	    "[mqtt]\n"
	    "host = broker.example.com\n"
	    "port = 8883\n"
	    "username = svc\n"
	    "password = p@ss word\n"
	    "connections_per_worker = 64\n"
	    "keepalive = 5\n"
	    "share_group = grp\n"
	    "outbox_bytes = 4G\n"
	    "[api]\n"
	    "listen = [::1]:9000\n"
	    "tokens = one, two three\n"
	    "max_body = 1K\n"
	    "[backend]\n"
	    "url = https://backend.example/hook?a=1\n"
	    "secret = whsec_c2VjcmV0\n"
	    "batch_max = 1000\n"
	    "concurrency = 256\n"
	    "timeout_ms = 600000\n"
	    "[spool]\n"
	    "max_bytes = 1T\n"
	    "fsync = always\n"
	    "[security]\n"
	    "e2e = required\n"
	    "key_grace = 0\n"
	    "[requests]\n"
	    "default_timeout = 86400\n"
	    "max_timeout = 604800\n"
	    "max_pending_per_device = 1000000\n"
	    "max_bytes = 16M\n"
	    "[limits]\n"
	    "max_payload = 64\n"
	    "max_depth = 2048\n"
	    "[admin]\n"
	    "socket = /tmp/h.sock\n");
	assert_string_equal(cf.node_name, "node-a.1_x");
	assert_string_equal(cf.state_dir, "/srv/herald/state");
	assert_string_equal(cf.run_dir, "/tmp/herald-run");
	assert_int_equal(cf.log_level, LOG_DEBUG);
	assert_int_equal(cf.mqtt_workers, 64);
	assert_int_equal(cf.ready_timeout_ms, 100);
	assert_int_equal(cf.ping_interval_ms, 250);
	assert_int_equal(cf.ping_timeout_ms, 600000);
	assert_int_equal(cf.stop_timeout_ms, 1234);
	assert_int_equal(cf.throttle_restarts, 7);
	assert_int_equal(cf.throttle_window_ms, 20000);
	assert_int_equal(cf.throttle_pause_ms, 3600000);
	assert_string_equal(cf.mqtt_host, "broker.example.com");
	assert_int_equal(cf.mqtt_port, 8883);
	assert_string_equal(cf.mqtt_username, "svc");
	assert_string_equal(cf.mqtt_password, "p@ss word");
	assert_int_equal(cf.connections_per_worker, 64);
	assert_int_equal(cf.keepalive, 5);
	assert_string_equal(cf.share_group, "grp");
	assert_true(cf.outbox_bytes == (size_t)4 << 30);
	assert_string_equal(cf.api_listen, "[::1]:9000");
	assert_int_equal(cf.api_ntokens, 3);
	assert_string_equal(cf.api_tokens[0], "one");
	assert_string_equal(cf.api_tokens[1], "two");
	assert_string_equal(cf.api_tokens[2], "three");
	assert_true(cf.api_max_body == 1024);
	assert_string_equal(cf.backend_url, "https://backend.example/hook?a=1");
	assert_string_equal(cf.backend_secret, "whsec_c2VjcmV0");
	assert_int_equal(cf.batch_max, 1000);
	assert_int_equal(cf.concurrency, 256);
	assert_int_equal(cf.timeout_ms, 600000);
	assert_true(cf.spool_max_bytes == (size_t)1 << 40);
	assert_int_equal(cf.spool_fsync, FSYNC_ALWAYS);
	assert_int_equal(cf.e2e, E2E_REQUIRED);
	assert_int_equal(cf.key_grace, 0);
	assert_int_equal(cf.default_timeout, 86400);
	assert_int_equal(cf.max_timeout, 604800);
	assert_int_equal(cf.max_pending_per_device, 1000000);
	assert_true(cf.requests_max_bytes == (size_t)16 << 20);
	assert_true(cf.max_payload == 64);
	assert_int_equal(cf.max_depth, 2048);
	assert_string_equal(cf.admin_socket, "/tmp/h.sock");
}

static void
test_ints(void **state)
{
	struct config cf;

	parse_ok(&cf, "[mqtt]\nport = 1\n");
	assert_int_equal(cf.mqtt_port, 1);
	parse_ok(&cf, "[mqtt]\nport = 65535\n");
	assert_int_equal(cf.mqtt_port, 65535);
	parse_ok(&cf, "[mqtt]\nport = +80\n");
	assert_int_equal(cf.mqtt_port, 80);
	parse_ok(&cf, "[workers]\nmqtt = 1\n");
	assert_int_equal(cf.mqtt_workers, 1);
}

static void
test_sizes(void **state)
{
	static const struct {
		const char *text;
		size_t      bytes;
	} cases[] = {
		{ "1048576", 1048576 },
		{ "1k", 1024 }, { "1K", 1024 }, { "1KiB", 1024 }, { "2kib", 2048 },
		{ "3m", 3 << 20 }, { "3MiB", 3 << 20 }, { "3MIB", 3 << 20 },
		{ "5 M", 5 << 20 }, { "7\tKiB", 7 << 10 },
		{ "64M", 64 << 20 }, { "65536K", 64 << 20 },
	};
	struct config cf;
	char text[128];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(text, sizeof(text), "[api]\nmax_body = %s\n", cases[i].text);
		parse_ok(&cf, text);
		if (cf.api_max_body != cases[i].bytes)
			fail_msg("%s: got %zu, want %zu", cases[i].text, cf.api_max_body,
			    cases[i].bytes);
	}
	parse_ok(&cf, "[mqtt]\noutbox_bytes = 1g\n[spool]\nmax_bytes = 2GiB\n");
	assert_true(cf.outbox_bytes == (size_t)1 << 30);
	assert_true(cf.spool_max_bytes == (size_t)2 << 30);
	parse_ok(&cf, "[spool]\nmax_bytes = 1tib\n[limits]\nmax_payload = 16M\n");
	assert_true(cf.spool_max_bytes == (size_t)1 << 40);
	assert_true(cf.max_payload == 16u << 20);
	parse_ok(&cf, "[mqtt]\noutbox_bytes = 1M\n");
	assert_true(cf.outbox_bytes == 1u << 20);
}

static void
test_enums(void **state)
{
	static const struct {
		const char *name;
		int         level;
	} levels[] = {
		{ "error", LOG_ERR }, { "err", LOG_ERR }, { "warning", LOG_WARNING },
		{ "warn", LOG_WARNING }, { "notice", LOG_NOTICE }, { "info", LOG_INFO },
		{ "debug", LOG_DEBUG }, { "DEBUG", LOG_DEBUG },
	};
	struct config cf;
	char text[128];
	size_t i;

	for (i = 0; i < sizeof(levels) / sizeof(levels[0]); i++) {
		snprintf(text, sizeof(text), "[herald]\nlog_level = %s\n", levels[i].name);
		parse_ok(&cf, text);
		assert_int_equal(cf.log_level, levels[i].level);
	}
	parse_ok(&cf, "[spool]\nfsync = off\n");
	assert_int_equal(cf.spool_fsync, FSYNC_OFF);
	parse_ok(&cf, "[spool]\nfsync = batch\n");
	assert_int_equal(cf.spool_fsync, FSYNC_BATCH);
	parse_ok(&cf, "[spool]\nfsync = always\n");
	assert_int_equal(cf.spool_fsync, FSYNC_ALWAYS);
	parse_ok(&cf, "[security]\ne2e = off\n");
	assert_int_equal(cf.e2e, E2E_OFF);
	parse_ok(&cf, "[security]\ne2e = optional\n");
	assert_int_equal(cf.e2e, E2E_OPTIONAL);
	parse_ok(&cf, "[security]\ne2e = required\n");
	assert_int_equal(cf.e2e, E2E_REQUIRED);
}

static void
test_tokens(void **state)
{
	struct config cf;
	char *text, *t127;
	int i;

	parse_ok(&cf, "[api]\ntokens = a,b , c\t d  ,e,\tf\n");
	assert_int_equal(cf.api_ntokens, 6);
	assert_string_equal(cf.api_tokens[0], "a");
	assert_string_equal(cf.api_tokens[3], "d");
	assert_string_equal(cf.api_tokens[5], "f");

	parse_ok(&cf, "[api]\ntokens = \"x#y, z\"\n");
	assert_int_equal(cf.api_ntokens, 2);
	assert_string_equal(cf.api_tokens[0], "x#y");
	assert_string_equal(cf.api_tokens[1], "z");

	t127 = repeat('t', 127);
	text = fmt("[api]\ntokens = %s\n", t127);
	parse_ok(&cf, text);
	assert_int_equal(cf.api_ntokens, 1);
	assert_string_equal(cf.api_tokens[0], t127);
	free(text);
	free(t127);

	text = strdup("[api]\ntokens = t0");
	for (i = 1; i < CONFIG_MAX_TOKENS; i++) {
		char *n = fmt("%s,t%d", text, i);

		free(text);
		text = n;
	}
	parse_ok(&cf, text);
	assert_int_equal(cf.api_ntokens, CONFIG_MAX_TOKENS);
	assert_string_equal(cf.api_tokens[CONFIG_MAX_TOKENS - 1], "t15");
	free(text);
}

static void
test_hostport(void **state)
{
	static const char *ok[] = {
		"127.0.0.1:8480", "0.0.0.0:1", "localhost:65535", "[::1]:80",
		"[fe80::1%eth0]:8080", "*:8480", "api.example.com:443",
	};
	struct config cf;
	char text[128];
	size_t i;

	for (i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		snprintf(text, sizeof(text), "[api]\nlisten = %s\n", ok[i]);
		parse_ok(&cf, text);
		assert_string_equal(cf.api_listen, ok[i]);
	}
}

static void
test_quoting(void **state)
{
	struct config cf;

	parse_ok(&cf, "[mqtt]\npassword = \"  a # b  \"\n");
	assert_string_equal(cf.mqtt_password, "  a # b  ");
	parse_ok(&cf, "[mqtt]\npassword = \"q\\\"b\\\\s\"\n");
	assert_string_equal(cf.mqtt_password, "q\"b\\s");
	parse_ok(&cf, "[mqtt]\npassword = \"x\" # comment\n");
	assert_string_equal(cf.mqtt_password, "x");
	parse_ok(&cf, "[mqtt]\npassword = \"x\"# comment\n");
	assert_string_equal(cf.mqtt_password, "x");
	parse_ok(&cf, "[mqtt]\npassword = \"\"\n");
	assert_string_equal(cf.mqtt_password, "");
	parse_ok(&cf, "[mqtt]\npassword = \"=;[x]\"\n");
	assert_string_equal(cf.mqtt_password, "=;[x]");
	/* Unquoted: a '#' only starts a comment after a blank; quotes in the
	 * middle and backslashes are literal. */
	parse_ok(&cf, "[mqtt]\npassword = a#b\n");
	assert_string_equal(cf.mqtt_password, "a#b");
	parse_ok(&cf, "[mqtt]\npassword = a #b\n");
	assert_string_equal(cf.mqtt_password, "a");
	parse_ok(&cf, "[mqtt]\npassword = a\t#b\n");
	assert_string_equal(cf.mqtt_password, "a");
	parse_ok(&cf, "[mqtt]\npassword=#x\n");
	assert_string_equal(cf.mqtt_password, "#x");
	parse_ok(&cf, "[mqtt]\npassword = a;b \\n \"c\" = d\n");
	assert_string_equal(cf.mqtt_password, "a;b \\n \"c\" = d");
	parse_ok(&cf, "[mqtt]\npassword =   \n");
	assert_string_equal(cf.mqtt_password, "");
	parse_ok(&cf, "[mqtt]\npassword = # nothing\n");
	assert_string_equal(cf.mqtt_password, "");
	/* A quoted number is still a number. */
	parse_ok(&cf, "[mqtt]\nport = \"1884\"\n");
	assert_int_equal(cf.mqtt_port, 1884);
}

static void
test_comments_and_layout(void **state)
{
	struct config cf;

	parse_ok(&cf,
	    "# leading comment\n"
	    "; another\n"
	    "\n"
	    "   # indented\n"
	    "\t; indented\n"
	    "[ mqtt ]   # header comment\n"
	    "  port   =   1999   # trailing\n"
	    "\n"
	    "[api]#x\n"
	    "max_body=2K\n"
	    "[mqtt]\n"              /* a repeated section is allowed */
	    "host = h\n"
	    "[limits]\r\n"          /* CRLF */
	    "max_payload = 100\r\n"
	    "[herald]\n"
	    "log_level = warn");    /* no final newline */
	assert_int_equal(cf.mqtt_port, 1999);
	assert_true(cf.api_max_body == 2048);
	assert_string_equal(cf.mqtt_host, "h");
	assert_true(cf.max_payload == 100);
	assert_int_equal(cf.log_level, LOG_WARNING);

	parse_ok(&cf, "");
	parse_ok(&cf, "\n\n# only comments\n");
	assert_int_equal(cf.mqtt_port, 1883);
}

/* config_parse applies over what cf holds: defaults stay where no key is. */
static void
test_parse_over_existing(void **state)
{
	struct config cf;
	char err[CONFIG_ERRLEN];

	config_defaults(&cf);
	assert_int_equal(config_parse(&cf, "a.conf", "[mqtt]\nport = 1\n", err,
	    sizeof(err)), 0);
	assert_int_equal(config_parse(&cf, "b.conf", "[mqtt]\nhost = h\n", err,
	    sizeof(err)), 0);
	assert_int_equal(cf.mqtt_port, 1);
	assert_string_equal(cf.mqtt_host, "h");
	assert_string_equal(cf.path, "b.conf");
	assert_int_equal(cf.keepalive, 30);
}

static void
test_line_length(void **state)
{
	struct config cf;
	char *line, *text;

	/* 4096 bytes is the limit, newline excluded. */
	line = repeat('x', 4095);
	text = fmt("[mqtt]\n#%s\nport = 2\n", line);
	parse_ok(&cf, text);
	assert_int_equal(cf.mqtt_port, 2);
	free(text);
	text = fmt("[mqtt]\n#%s\r\nport = 2\n", line);
	parse_ok(&cf, text);
	free(text);

	text = fmt("[mqtt]\nport = 2\n##%s\n", line);
	expect_error(text, 3, "line longer than 4096 bytes");
	free(text);
	free(line);
}

static void
test_errors_syntax(void **state)
{
	expect_error("[nope]\n", 1, "unknown section [nope]");
	expect_error("[mqtt]\n[Mqtt]\n", 2, "unknown section [Mqtt]");
	expect_error("[mqtt]\nfoo = 1\n", 2, "unknown key \"foo\" in [mqtt]");
	expect_error("[api]\nport = 1\n", 2, "unknown key \"port\" in [api]");
	expect_error("# c\n\nport = 1\n", 3, "key \"port\" before any [section]");
	expect_error("[mqtt]\n\nport 1883\n", 3, "missing \"=\"");
	expect_error("[mqtt]\n = 1\n", 2, "missing key before \"=\"");
	expect_error("[mqtt\n", 1, "bad section header");
	expect_error("[mqtt]\n[]\n", 2, "bad section header");
	expect_error("[mqtt] x\n", 1, "bad section header");
	expect_error("[mq tt]\n", 1, "bad section header");
	expect_error("[[mqtt]]\n", 1, "bad section header");
	expect_error("[mqtt]\nhost = a\nport = 1\n\nport = 2\n", 5,
	    "duplicate key \"port\" in [mqtt], first set on line 3");
	expect_error("[mqtt]\nport = 1\n[api]\nmax_body = 1M\n[mqtt]\nport = 2\n", 6,
	    "duplicate key \"port\" in [mqtt], first set on line 2");
	expect_error("[mqtt]\npassword = \"abc\n", 2, "unterminated quote");
	expect_error("[mqtt]\npassword = \"abc\\\"\n", 2, "unterminated quote");
	expect_error("[mqtt]\npassword = \"a\\nb\"\n", 2, "bad escape");
	expect_error("[mqtt]\npassword = \"a\" b\n", 2,
	    "unexpected text after the closing quote");
}

static void
test_errors_values(void **state)
{
	expect_error("[mqtt]\nport = 12x\n", 2, "[mqtt] port: bad integer \"12x\"");
	expect_error("[mqtt]\nport = x\n", 2, "bad integer \"x\"");
	expect_error("[mqtt]\nport = \" 1\"\n", 2, "bad integer");
	expect_error("[mqtt]\nport = 1.5\n", 2, "bad integer");
	expect_error("[mqtt]\nport =\n", 2, "[mqtt] port: empty value");
	expect_error("[mqtt]\nhost = # none\n", 2, "[mqtt] host: empty value");
	expect_error("[mqtt]\nhost = \"\"\n", 2, "empty value");
	expect_error("[mqtt]\nport = 0\n", 2, "0 out of range 1..65535");
	expect_error("[mqtt]\nport = 65536\n", 2, "out of range 1..65535");
	expect_error("[mqtt]\nport = -1\n", 2, "out of range 1..65535");
	expect_error("[mqtt]\nport = 99999999999999999999999\n", 2, "out of range 1..65535");
	expect_error("[workers]\nmqtt = 65\n", 2, "[workers] mqtt: 65 out of range 1..64");
	expect_error("[workers]\nmqtt = 0\n", 2, "out of range 1..64");
	/* The supervisor remembers 32 deaths a slot: more could never throttle. */
	expect_error("[workers]\nthrottle_restarts = 33\n", 2,
	    "[workers] throttle_restarts: 33 out of range 1..32");
	expect_error("[mqtt]\nkeepalive = 4\n", 2, "out of range 5..3600");
	expect_error("[mqtt]\nconnections_per_worker = 65\n", 2, "out of range 1..64");
	expect_error("[backend]\nbatch_max = 1001\n", 2, "out of range 1..1000");
	expect_error("[backend]\nconcurrency = 257\n", 2, "out of range 1..256");
	expect_error("[backend]\ntimeout_ms = 99\n", 2, "out of range 100..600000");
	expect_error("[requests]\ndefault_timeout = 86401\n", 2, "out of range 1..86400");
	expect_error("[requests]\nmax_timeout = 604801\n", 2, "out of range 1..604800");
	expect_error("[requests]\nmax_pending_per_device = 0\n", 2,
	    "out of range 1..1000000");
	expect_error("[requests]\nmax_bytes = 8M\n", 2, "[requests] max_bytes");

	expect_error("[api]\nmax_body = 1X\n", 2, "bad size suffix \"X\"");
	expect_error("[api]\nmax_body = 1KB\n", 2, "bad size suffix \"KB\"");
	expect_error("[api]\nmax_body = 1 M M\n", 2, "bad size suffix");
	expect_error("[api]\nmax_body = M\n", 2, "[api] max_body: bad size \"M\"");
	expect_error("[api]\nmax_body = -1\n", 2, "bad size \"-1\"");
	expect_error("[api]\nmax_body = 1023\n", 2, "1023 out of range 1K..64M");
	expect_error("[api]\nmax_body = 65M\n", 2, "65M out of range 1K..64M");
	expect_error("[mqtt]\noutbox_bytes = 5G\n", 2, "out of range 1M..4G");
	expect_error("[mqtt]\noutbox_bytes = 99999999999999999999999G\n", 2,
	    "out of range 1M..4G");
	expect_error("[mqtt]\noutbox_bytes = 9999999999T\n", 2, "out of range 1M..4G");
	expect_error("[spool]\nmax_bytes = 2T\n", 2, "out of range 1M..1T");
	expect_error("[limits]\nmax_payload = 63\n", 2, "out of range 64..16M");
	expect_error("[limits]\nmax_depth = 0\n", 2, "out of range 1..2048");
	expect_error("[limits]\nmax_depth = 2049\n", 2, "out of range 1..2048");

	expect_error("[spool]\nfsync = sometimes\n", 2,
	    "[spool] fsync: bad value \"sometimes\" (accepted: off, batch, always)");
	expect_error("[herald]\nlog_level = verbose\n", 2,
	    "(accepted: error, err, warning, warn, notice, info, debug)");
	expect_error("[security]\ne2e = on\n", 2, "(accepted: off, optional, required)");
}

static void
test_errors_tokens(void **state)
{
	char *text, *t128;
	int i;

	text = strdup("[api]\ntokens = t0");
	for (i = 1; i <= CONFIG_MAX_TOKENS; i++) {
		char *n = fmt("%s t%d", text, i);

		free(text);
		text = n;
	}
	expect_error(text, 2, "[api] tokens: too many tokens (at most 16)");
	free(text);

	t128 = repeat('t', 128);
	text = fmt("[api]\ntokens = ok,%s\n", t128);
	expect_error(text, 2, "token 2 is too long (at most 127 characters)");
	free(text);
	free(t128);

	expect_error("[api]\ntokens = a,,b\n", 2, "empty token");
	expect_error("[api]\ntokens = a, ,b\n", 2, "empty token");
	expect_error("[api]\ntokens = ,a\n", 2, "empty token");
	expect_error("[api]\ntokens = a,\n", 2, "empty token");
	expect_error("[api]\ntokens = \",\"\n", 2, "empty token");
	expect_error("[api]\ntokens =\n", 2, "[api] tokens: empty value");
	expect_error("[api]\ntokens = a\x7f" "b\n", 2, "not printable ASCII");
}

static void
test_errors_strings(void **state)
{
	char *long_path, *text;

	long_path = repeat('d', 511);
	text = fmt("[herald]\nstate_dir = /%s\n", long_path);
	expect_error(text, 2, "[herald] state_dir: value too long (at most 511 bytes)");
	free(text);
	text = fmt("[herald]\nstate_dir = /%.510s\n", long_path);
	{
		struct config cf;

		parse_ok(&cf, text);
		assert_int_equal(strlen(cf.state_dir), 511);
	}
	free(text);
	free(long_path);

	long_path = repeat('n', 64);
	text = fmt("[herald]\nnode_name = %s\n", long_path);
	expect_error(text, 2, "value too long (at most 63 bytes)");
	free(text);
	free(long_path);

	expect_error("[herald]\nnode_name = \"bad name\"\n", 2,
	    "must be 1 to 63 characters of A-Z a-z 0-9 . _ -");
	expect_error("[herald]\nnode_name = a/b\n", 2, "[herald] node_name:");
	expect_error("[herald]\nstate_dir = var/lib\n", 2,
	    "[herald] state_dir: \"var/lib\" is not an absolute path");
	expect_error("[herald]\nrun_dir = run\n", 2, "not an absolute path");
	expect_error("[admin]\nsocket = herald.sock\n", 2, "not an absolute path");
	long_path = repeat('s', 110);
	text = fmt("[admin]\nsocket = /%s\n", long_path);
	expect_error(text, 2, "too long for a unix socket");
	free(text);
	free(long_path);
	/* Before, "url =" passed the parse and validation said "url is not
	 * set" without the line. */
	expect_error("[backend]\nurl =\n", 2, "[backend] url: empty value");
	expect_error("[backend]\nurl = ftp://x/\n", 2,
	    "must start with http:// or https://");
	expect_error("[backend]\nurl = http://\n", 2, "has no host");
	expect_error("[backend]\nurl = \"http://a b\"\n", 2, "contains a blank");
	/* Urls libcurl cannot post to: every delivery would fail, forever. */
	expect_error("[backend]\nurl = http://:80/x\n", 2,
	    "[backend] url: url \"http://:80/x\" has no host");
	expect_error("[backend]\nurl = http://@/x\n", 2, "has no host");
	expect_error("[backend]\nurl = http://h:99999/x\n", 2,
	    "port out of range 1..65535");
	expect_error("[backend]\nurl = http://h:65536\n", 2, "port out of range 1..65535");
	expect_error("[backend]\nurl = http://h:0/x\n", 2, "port out of range 1..65535");
	expect_error("[backend]\nurl = http://h:-1/x\n", 2, "port out of range 1..65535");
	expect_error("[backend]\nurl = http://h:8x/\n", 2, "port out of range 1..65535");
	expect_error("[backend]\nsecret = whsec_\n", 2, "followed by base64");
	expect_error("[backend]\nsecret = whsec_a!b\n", 2, "followed by base64");
	expect_error("[mqtt]\nshare_group = a/b\n", 2, "must not contain");
	expect_error("[mqtt]\nshare_group = a+\n", 2, "must not contain");

	expect_error("[api]\nlisten = 127.0.0.1\n", 2, "[api] listen: bad address");
	expect_error("[api]\nlisten = :80\n", 2, "bad address");
	expect_error("[api]\nlisten = ::1:80\n", 2, "bad address");
	expect_error("[api]\nlisten = [::1]80\n", 2, "bad address");
	expect_error("[api]\nlisten = []:80\n", 2, "bad address");
	expect_error("[api]\nlisten = [::1%]:80\n", 2, "empty zone");
	expect_error("[api]\nlisten = [::1%a%b]:80\n", 2, "bad address");
	expect_error("[api]\nlisten = [::g]:80\n", 2, "bad address");
	expect_error("[api]\nlisten = host:\n", 2, "missing port");
	expect_error("[api]\nlisten = host:8x\n", 2, "bad port");
	expect_error("[api]\nlisten = host:0\n", 2, "out of range 1..65535");
	expect_error("[api]\nlisten = host:65536\n", 2, "out of range 1..65535");
	expect_error("[api]\nlisten = host:999999999999999999999\n", 2,
	    "out of range 1..65535");
	expect_error("[api]\nlisten = \"a b:80\"\n", 2, "bad host");
}

static void
expect_invalid(const char *extra, int line, const char *needle)
{
	struct config cf;
	char err[CONFIG_ERRLEN] = "", *text, *prefix;

	text = fmt("%s%s", T_VALID, extra);
	parse_ok(&cf, text);
	free(text);
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	prefix = fmt(T_PATH ":%d: ", line);
	check_err(err, prefix, needle);
	free(prefix);
}

static void
test_validate(void **state)
{
	struct config cf;
	char err[CONFIG_ERRLEN] = "";

	parse_ok(&cf, "[api]\ntokens = t\n");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, T_PATH ": ", "[backend] url is not set");
	parse_ok(&cf, "[backend]\nurl = https://x\n");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, T_PATH ": ", "[api] tokens: at least one token is needed");

	/* T_VALID is 4 lines: extra starts on line 5.  Of two keys checked
	 * against each other, the later line is named. */
	expect_invalid("[requests]\ndefault_timeout = 61\nmax_timeout = 60\n", 7,
	    "[requests] default_timeout (61) is greater than max_timeout (60)");
	expect_invalid("[workers]\nping_interval_ms = 3000\n", 6,
	    "[workers] ping_timeout_ms (3000) must be greater than ping_interval_ms (3000)");
	expect_invalid("[workers]\nping_timeout_ms = 500\n", 6,
	    "ping_timeout_ms (500) must be greater");
	/* End-to-end encryption needs the device registry, not built yet: a
	 * configuration (or a reload) asking for it is refused, not accepted
	 * for a crypto worker that could never start. */
	expect_invalid("[security]\ne2e = required\n", 6, "[security] e2e = required needs");
	expect_invalid("[security]\ne2e = optional\n", 6, "[security] e2e = optional needs");
	/* An outbox that cannot take two of the largest messages (the mqtt
	 * workers would exit at their start). */
	expect_invalid("[mqtt]\noutbox_bytes = 1M\n[limits]\nmax_payload = 1M\n", 8,
	    "[mqtt] outbox_bytes (1048576) is too small for [limits] max_payload (1048576)");
	parse_ok(&cf, T_VALID "[mqtt]\noutbox_bytes = 1M\n");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), 0);
	/* An empty share_group is a plain subscription: one connection only. */
	expect_invalid("[workers]\nmqtt = 2\n[mqtt]\nshare_group =\n", 8,
	    "[mqtt] share_group is empty (a plain subscription), which needs one broker "
	    "connection: [workers] mqtt = 1 and connections_per_worker = 1 (now 2 and 1)");
	expect_invalid("[mqtt]\nshare_group =\nconnections_per_worker = 2\n", 6,
	    "(now 1 and 2)");
	parse_ok(&cf, T_VALID "[mqtt]\nshare_group =\n");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), 0);
	assert_string_equal(cf.share_group, "");

	/* Limits that are fine on their own boundary. */
	parse_ok(&cf, T_VALID "[requests]\ndefault_timeout = 60\nmax_timeout = 60\n"
	    "[workers]\nping_interval_ms = 2999\n");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), 0);

	/* Ports at the ends of their range, an IPv6 host, a query. */
	parse_ok(&cf, "[backend]\nurl = http://h:65535/x\n");
	parse_ok(&cf, "[backend]\nurl = https://h:1\n");
	parse_ok(&cf, "[backend]\nurl = http://[::1]:8080/a?b=c\n");

	/* Values that only a caller, not the file, can break. */
	parse_ok(&cf, T_VALID);
	strcpy(cf.node_name, "bad name");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, T_PATH ": ", "[herald] node_name \"bad name\" must be");
	parse_ok(&cf, T_VALID);
	cf.node_name[0] = '\0';
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, T_PATH ": ", "[herald] node_name");
	parse_ok(&cf, T_VALID);
	strcpy(cf.state_dir, "rel");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, T_PATH ": ", "[herald] state_dir: \"rel\" is not an absolute path");
	parse_ok(&cf, T_VALID);
	strcpy(cf.run_dir, "rel");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, T_PATH ": ", "[herald] run_dir:");
	parse_ok(&cf, T_VALID);
	strcpy(cf.admin_socket, "rel.sock");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	check_err(err, T_PATH ": ", "[admin] socket:");
	parse_ok(&cf, T_VALID);
	strcpy(cf.backend_url, "gopher://x");
	assert_int_equal(config_validate(&cf, err, sizeof(err)), -1);
	/* url was set on line 2 of T_VALID */
	check_err(err, T_PATH ":2: ", "must start with http:// or https://");
}

/* The shipped example, found from the source tree. */
static char *
shipped_conf_path(void)
{
	const char *srcdir = getenv("HERALD_SRCDIR");
	const char *self = __FILE__, *tail = "tests/unit/test_config.c";
	size_t n = strlen(self), t = strlen(tail);

	if (srcdir != NULL && srcdir[0] != '\0')
		return fmt("%s/etc/herald.conf", srcdir);
	assert_true(n >= t && strcmp(self + n - t, tail) == 0);
	return fmt("%.*setc/herald.conf", (int)(n - t), self);
}

static char *
read_all(const char *path)
{
	FILE *fp = fopen(path, "r");
	char *buf;
	long len;

	if (fp == NULL)
		fail_msg("%s: %s", path, strerror(errno));
	assert_int_equal(fseek(fp, 0, SEEK_END), 0);
	len = ftell(fp);
	rewind(fp);
	buf = malloc((size_t)len + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)len, fp), (size_t)len);
	buf[len] = '\0';
	fclose(fp);
	return buf;
}

static void
test_shipped_conf(void **state)
{
	/* Every key, so that the example documents each one. */
	static const char *keys[] = {
		"node_name", "state_dir", "run_dir", "log_level", "mqtt",
		"ready_timeout_ms", "ping_interval_ms", "ping_timeout_ms",
		"stop_timeout_ms", "throttle_restarts", "throttle_window_ms",
		"throttle_pause_ms", "host", "port", "username", "password",
		"connections_per_worker", "keepalive", "share_group", "outbox_bytes",
		"listen", "tokens", "max_body", "url", "secret", "batch_max",
		"concurrency", "timeout_ms", "max_bytes", "fsync", "e2e", "key_grace",
		"default_timeout", "max_timeout", "max_pending_per_device",
		"max_payload", "max_depth", "socket",
	};
	static const char *sections[] = {
		"[herald]", "[workers]", "[mqtt]", "[api]", "[backend]", "[spool]",
		"[security]", "[requests]", "[limits]", "[admin]",
	};
	struct config cf, def;
	char err[CONFIG_ERRLEN] = "", *path, *text, *needle;
	size_t i;

	path = shipped_conf_path();
	if (config_load(&cf, path, err, sizeof(err)) != 0)
		fail_msg("shipped config does not load: %s", err);
	assert_string_equal(cf.path, path);
	assert_string_equal(cf.backend_url, "http://127.0.0.1:8080/herald");
	assert_int_equal(cf.api_ntokens, 1);
	assert_string_equal(cf.api_tokens[0], "change-me-to-a-long-random-token");

	/* Its values are the documented defaults, apart from url and tokens. */
	config_defaults(&def);
	strcpy(def.path, cf.path);
	strcpy(def.backend_url, cf.backend_url);
	memcpy(def.api_tokens, cf.api_tokens, sizeof(def.api_tokens));
	def.api_ntokens = cf.api_ntokens;
	memcpy(def.key_line, cf.key_line, sizeof(def.key_line));
	assert_memory_equal(&cf, &def, sizeof(cf));

	text = read_all(path);
	for (i = 0; i < sizeof(sections) / sizeof(sections[0]); i++) {
		needle = fmt("\n%s\n", sections[i]);
		if (strstr(text, needle) == NULL)
			fail_msg("shipped config lacks section %s", sections[i]);
		free(needle);
	}
	for (i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		char *set = fmt("\n%s =", keys[i]), *unset = fmt("\n#%s =", keys[i]);
		char *at = strstr(text, set), after;

		if (at == NULL)
			at = strstr(text, unset);
		if (at == NULL)
			fail_msg("shipped config lacks key %s", keys[i]);
		after = at[strlen(keys[i]) + 3 + (at[1] == '#')];
		if (after != ' ' && after != '\n')
			fail_msg("shipped config: bad line for key %s", keys[i]);
		/* with a comment right above it */
		if (at - text < 2 || at[-1] == '\n')
			fail_msg("shipped config: key %s has no comment above", keys[i]);
		while (at > text && at[-1] != '\n')
			at--;
		if (*at != '#')
			fail_msg("shipped config: key %s has no comment above", keys[i]);
		free(set);
		free(unset);
	}
	free(text);
	free(path);
}

static char *
write_temp(const char *text, size_t len)
{
	char *path = strdup("/tmp/test_config.XXXXXX");
	int fd;

	assert_non_null(path);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
	return path;
}

static void
test_load(void **state)
{
	static const char good[] = T_VALID "[mqtt]\nport = 1900\n";
	static const char bad_line[] = "[mqtt]\nport = 1\nbogus = 2\n";
	static const char nul[] = "[mqtt]\nport = 1\0\n";
	struct config cf, before;
	char err[CONFIG_ERRLEN], *path, *want;

	path = write_temp(good, sizeof(good) - 1);
	assert_int_equal(config_load(&cf, path, err, sizeof(err)), 0);
	assert_int_equal(cf.mqtt_port, 1900);
	assert_int_equal(cf.keepalive, 30);    /* defaults under the file */
	assert_string_equal(cf.path, path);
	before = cf;
	unlink(path);
	free(path);

	/* A failed load leaves the config as it was. */
	path = write_temp(bad_line, sizeof(bad_line) - 1);
	assert_int_equal(config_load(&cf, path, err, sizeof(err)), -1);
	want = fmt("%s:3: ", path);
	check_err(err, want, "unknown key \"bogus\" in [mqtt]");
	assert_memory_equal(&cf, &before, sizeof(cf));
	free(want);
	unlink(path);
	free(path);

	/* Cross-key errors name the file, not a line. */
	path = write_temp("[mqtt]\nport = 1\n", 16);
	assert_int_equal(config_load(&cf, path, err, sizeof(err)), -1);
	want = fmt("%s: ", path);
	check_err(err, want, "[backend] url is not set");
	free(want);
	unlink(path);
	free(path);

	path = write_temp(nul, sizeof(nul) - 1);
	assert_int_equal(config_load(&cf, path, err, sizeof(err)), -1);
	want = fmt("%s:2: ", path);
	check_err(err, want, "NUL byte");
	free(want);
	unlink(path);
	free(path);
	assert_memory_equal(&cf, &before, sizeof(cf));
}

static void
test_load_unreadable(void **state)
{
	struct config cf, before;
	char err[CONFIG_ERRLEN], dir[] = "/tmp/test_config.dXXXXXX", *missing;

	config_defaults(&cf);
	before = cf;
	assert_non_null(mkdtemp(dir));
	missing = fmt("%s/missing.conf", dir);
	assert_int_equal(config_load(&cf, missing, err, sizeof(err)), -1);
	check_err(err, missing, ": cannot read: No such file or directory");
	assert_int_equal(strlen(err), strlen(missing) +
	    strlen(": cannot read: No such file or directory"));

	assert_int_equal(config_load(&cf, dir, err, sizeof(err)), -1);
	check_err(err, dir, ": cannot read: Is a directory");
	assert_memory_equal(&cf, &before, sizeof(cf));
	free(missing);
	rmdir(dir);
}

/* A file far larger than any config is refused, not read into memory. */
static void
test_load_too_large(void **state)
{
	struct config cf;
	char err[CONFIG_ERRLEN], *path, *text;
	size_t len = 3 * 1024 * 1024;

	text = repeat('#', len);
	for (size_t i = 100; i < len; i += 100)
		text[i] = '\n';
	path = write_temp(text, len);
	assert_int_equal(config_load(&cf, path, err, sizeof(err)), -1);
	check_err(err, path, ": cannot read: file larger than");
	unlink(path);
	free(path);
	free(text);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_defaults_validate),
		cmocka_unit_test(test_every_key),
		cmocka_unit_test(test_ints),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_enums),
		cmocka_unit_test(test_tokens),
		cmocka_unit_test(test_hostport),
		cmocka_unit_test(test_quoting),
		cmocka_unit_test(test_comments_and_layout),
		cmocka_unit_test(test_parse_over_existing),
		cmocka_unit_test(test_line_length),
		cmocka_unit_test(test_errors_syntax),
		cmocka_unit_test(test_errors_values),
		cmocka_unit_test(test_errors_tokens),
		cmocka_unit_test(test_errors_strings),
		cmocka_unit_test(test_validate),
		cmocka_unit_test(test_shipped_conf),
		cmocka_unit_test(test_load),
		cmocka_unit_test(test_load_unreadable),
		cmocka_unit_test(test_load_too_large),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
