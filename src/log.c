/*
 * herald logging: "<time> herald[pid] role: level: message" on stderr, or
 * "<N>role[pid]: message" when stderr is the journal (systemd reads the
 * priority prefix).  The last error is also kept in the worker's shm slot.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "util.h"

static char  log_role[32] = "herald";
static int   log_level = LOG_INFO;
static int   log_journal = -1;
static char *log_panic;
static size_t log_panic_len;

static const char *level_names[] = {
	"emerg", "alert", "crit", "error", "warning", "notice", "info", "debug"
};

void
log_init(const char *role, int slot)
{
	if (slot >= 0)
		snprintf(log_role, sizeof(log_role), "%s.%d", role, slot);
	else
		snprintf(log_role, sizeof(log_role), "%s", role);
	log_journal = getenv("JOURNAL_STREAM") != NULL;
}

void log_set_level(int level) { log_level = level; }
int  log_get_level(void) { return log_level; }

int
log_level_parse(const char *name)
{
	if (strcasecmp(name, "err") == 0)
		return LOG_ERR;
	if (strcasecmp(name, "warn") == 0)
		return LOG_WARNING;
	for (int i = LOG_ERR; i <= LOG_DEBUG; i++)
		if (strcasecmp(name, level_names[i]) == 0)
			return i;
	return -1;
}

const char *
log_level_name(int level)
{
	return level >= 0 && level <= LOG_DEBUG ? level_names[level] : "?";
}

void
log_set_panic_buffer(char *buf, size_t len)
{
	log_panic = buf;
	log_panic_len = len;
}

void
log_vmsg(int level, const char *fmt, va_list ap)
{
	char msg[1024], line[1200], ts[RFC3339_LEN];
	int n;

	if (level > log_level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	/* One write(2) per line, so lines of concurrent processes never mix. */
	if (log_journal == 1)
		n = snprintf(line, sizeof(line), "<%d>%s[%d]: %s\n", level,
		    log_role, (int)getpid(), msg);
	else {
		fmt_rfc3339(now_ms(), ts);
		n = snprintf(line, sizeof(line), "%s herald[%d] %s: %s: %s\n", ts,
		    (int)getpid(), log_role, level_names[level], msg);
	}
	if (n > (int)sizeof(line) - 1) {
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	if (write(STDERR_FILENO, line, (size_t)n) < 0) {
		/* nowhere left to say it */
	}
	if (level <= LOG_ERR && log_panic != NULL)
		strlcpy_h(log_panic, msg, log_panic_len);
}

void
log_msg(int level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	log_vmsg(level, fmt, ap);
	va_end(ap);
}

static struct log_rl *log_rl_sites;     /* every call site used so far */

/* *dropped: how many the window before this one did not log (set when a
 * new window starts and they were not flushed, else left alone). */
int
log_ratelimit_ok(struct log_rl *rl, int level, const char *fmt, int *dropped)
{
	long w = (long)(mono_ms() / 10000);

	if (rl->fmt == NULL) {         /* the call site's first line: list it */
		rl->level = level;
		rl->fmt = fmt;
		rl->next = log_rl_sites;
		log_rl_sites = rl;
	}
	if (rl->window != w) {
		if (rl->count > 10)
			*dropped = rl->count - 10;
		rl->window = w;
		rl->count = 0;
	}
	return ++rl->count <= 10;
}

/* Count what windows now over left out, without waiting for the call
 * site's next line (there may be none: a burst that ended). */
void
log_ratelimit_flush(void)
{
	long w = (long)(mono_ms() / 10000);

	for (struct log_rl *rl = log_rl_sites; rl != NULL; rl = rl->next)
		if (rl->window != w && rl->count > 10) {
			log_msg(rl->level, "%d more messages like \"%s\" were not logged "
			    "(at most 10 in 10 s)", rl->count - 10, rl->fmt);
			rl->count = 0;
		}
}
