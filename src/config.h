/*
 * herald configuration: the INI file of SPEC.md section 4, parsed by a table of
 * keys (config.c) into one plain struct that every process reads after fork.
 */
#ifndef HERALD_CONFIG_H
#define HERALD_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define CONFIG_MAX_TOKENS   16
#define CONFIG_MAX_MQTT     64      /* upper bound of [workers] mqtt */
#define CONFIG_MAX_THROTTLE 32      /* upper bound of [workers] throttle_restarts */
#define CONFIG_ERRLEN       512

enum fsync_mode { FSYNC_OFF = 0, FSYNC_BATCH, FSYNC_ALWAYS };
enum e2e_mode { E2E_OFF = 0, E2E_OPTIONAL, E2E_REQUIRED };

#define CONFIG_MAX_KEYS     64

struct config {
	char     path[1024];                /* the file it came from */
	int      key_line[CONFIG_MAX_KEYS]; /* line of each key set, by table order; 0: default */

	/* [herald] */
	char     node_name[64];
	char     state_dir[512];
	char     run_dir[512];
	int      log_level;                 /* LOG_ERR .. LOG_DEBUG (log.h) */

	/* [workers] */
	int      mqtt_workers;
	int      ready_timeout_ms;          /* a worker must say READY within this */
	int      ping_interval_ms;          /* supervisor health ping period */
	int      ping_timeout_ms;           /* no PONG within this: kill and restart */
	int      stop_timeout_ms;           /* SIGTERM drain deadline before SIGKILL */
	int      throttle_restarts;         /* deaths within throttle_window ... */
	int      throttle_window_ms;
	int      throttle_pause_ms;         /* ... pause the slot this long */

	/* [mqtt] */
	char     mqtt_host[256];
	int      mqtt_port;
	char     mqtt_username[128];
	char     mqtt_password[256];
	int      connections_per_worker;
	int      keepalive;
	char     share_group[64];
	size_t   outbox_bytes;              /* per mqtt worker slot */

	/* [api] */
	char     api_listen[256];           /* host:port */
	char     api_tokens[CONFIG_MAX_TOKENS][128];
	int      api_ntokens;
	size_t   api_max_body;

	/* [backend] */
	char     backend_url[1024];
	char     backend_secret[256];
	char     backend_ca_file[1024];     /* "": the system's CA certificates */
	char     backend_cert_file[1024];   /* "": no client certificate */
	char     backend_key_file[1024];    /* "": the key is in cert_file */
	uint64_t backend_tls_stamp;         /* those files as they were at load (no key) */
	int      batch_max;
	int      concurrency;
	int      timeout_ms;

	/* [spool] */
	size_t   spool_max_bytes;
	enum fsync_mode spool_fsync;

	/* [security] */
	enum e2e_mode e2e;
	int      key_grace;                 /* seconds */

	/* [requests] */
	int      default_timeout;           /* seconds */
	int      max_timeout;
	int      max_pending_per_device;
	size_t   requests_max_bytes;

	/* [limits] */
	size_t   max_payload;
	int      max_depth;

	/* [admin] */
	char     admin_socket[512];
};

/* Fill with the documented defaults of etc/herald.conf. */
void config_defaults(struct config *cf);

/*
 * Parse a file over the defaults.  0 on success; -1 with err holding
 * "FILE:LINE: message" (or "FILE: message" when the file cannot be read).
 */
int  config_load(struct config *cf, const char *path, char *err, size_t errlen);

/* Parse from a string (path used only for messages); for tests. */
int  config_parse(struct config *cf, const char *path, const char *text,
         char *err, size_t errlen);

/* Checks across keys once the file is read (e.g. default_timeout <= max_timeout). */
int  config_validate(const struct config *cf, char *err, size_t errlen);

#endif
