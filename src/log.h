/*
 * herald logging: one call family with levels; every line names the role and
 * pid.  stderr by default, with syslog priority prefixes under journald.
 */
#ifndef HERALD_LOG_H
#define HERALD_LOG_H

#include <stdarg.h>

#define LOG_ERR     3
#define LOG_WARNING 4
#define LOG_NOTICE  5
#define LOG_INFO    6
#define LOG_DEBUG   7

void log_init(const char *role, int slot);
void log_set_level(int level);
int  log_get_level(void);
int  log_level_parse(const char *name);          /* -1 if unknown */
const char *log_level_name(int level);

void log_msg(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(int level, const char *fmt, va_list ap);

/*
 * Like log_msg, but at most 10 lines per 10 s per call site.  What a window
 * left out is counted: in a line before the call site's next one, or from
 * log_ratelimit_flush() (each process's timer) once the window is over.
 */
struct log_rl {
	long           window;
	int            count;
	int            level;
	const char    *fmt;
	struct log_rl *next;
};
#define LOG_RL_FMT(fmt, ...) fmt
#define log_ratelimited(level, ...) do {                                    \
	static struct log_rl _rl;                                           \
	int _rl_dropped = 0;                                                \
	if (log_ratelimit_ok(&_rl, level, LOG_RL_FMT(__VA_ARGS__, ""), &_rl_dropped)) { \
		if (_rl_dropped > 0)                                        \
			log_msg(level, "%d more messages like the next one were " \
			    "not logged (at most 10 in 10 s)", _rl_dropped);  \
		log_msg(level, __VA_ARGS__);                                \
	}                                                                   \
} while (0)
int  log_ratelimit_ok(struct log_rl *rl, int level, const char *fmt, int *dropped);
void log_ratelimit_flush(void);

#define log_err(...)     log_msg(LOG_ERR, __VA_ARGS__)
#define log_warn(...)    log_msg(LOG_WARNING, __VA_ARGS__)
#define log_notice(...)  log_msg(LOG_NOTICE, __VA_ARGS__)
#define log_info(...)    log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)   do { if (log_get_level() >= LOG_DEBUG) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)

/* Set by the worker runtime: the last error line is also copied here (shm),
 * so the reason of a crash outlives the process. */
void log_set_panic_buffer(char *buf, size_t len);

#endif
