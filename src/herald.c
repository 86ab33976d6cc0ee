/*
 * herald: the daemon's entry point.  Parses the command line and the
 * configuration, prepares the run and state directories, takes the state
 * lock, creates the stats region, and hands over to the supervisor.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "log.h"
#include "stats.h"
#include "supervisor.h"
#include "util.h"

#define DEFAULT_CONFIG SYSCONFDIR "/herald/herald.conf"

static void
usage(FILE *f)
{
	fprintf(f,
	    "usage: herald [-t] [-c FILE] [-V] [-h]\n"
	    "  -c FILE  configuration file (default %s)\n"
	    "  -t       check the configuration and exit: 0 if valid, 1 with FILE:LINE: message\n"
	    "  -V       print the version\n"
	    "  -h       this help\n", DEFAULT_CONFIG);
}

/* libevent's own messages go through herald's log, with role and pid, at a
 * limited rate (an accept() failing in a loop would flood it otherwise). */
static void
herald_event_log(int severity, const char *msg)
{
	int level = severity == EVENT_LOG_ERR ? LOG_ERR : severity == EVENT_LOG_WARN ?
	    LOG_WARNING : severity == EVENT_LOG_MSG ? LOG_INFO : LOG_DEBUG;

	log_ratelimited(level, "libevent: %s", msg);
}

#define LOCK_WAIT_MS 5000

/* "pid (comm) S ...": the (comm) part and the state letter, or -1. */
static int
proc_comm_state(const char *which, char *comm, size_t len, char *state)
{
	char path[64], line[512] = "", *lp, *rp;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%s/stat", which);
	if ((f = fopen(path, "re")) == NULL)
		return -1;
	if (fgets(line, sizeof(line), f) == NULL)
		line[0] = '\0';
	fclose(f);
	lp = strchr(line, '(');
	rp = strrchr(line, ')');
	if (lp == NULL || rp == NULL || rp < lp || rp[1] != ' ')
		return -1;
	snprintf(comm, len, "%.*s", (int)(rp - lp - 1), lp + 1);
	*state = rp[2];
	return 0;
}

/* Is pid a running process of the same program as this one (not gone, not
 * a zombie, not a pid since reused by something else)? */
static bool
herald_alive(pid_t pid)
{
	char which[32], comm[64], self[64], state, st;

	if (pid == getpid() || (kill(pid, 0) == -1 && errno == ESRCH))
		return false;
	snprintf(which, sizeof(which), "%d", (int)pid);
	if (proc_comm_state(which, comm, sizeof(comm), &state) == -1 ||
	    proc_comm_state("self", self, sizeof(self), &st) == -1)
		return true;    /* it exists (kill says); /proc cannot say more */
	return strcmp(comm, self) == 0 && state != 'Z' && state != 'X';
}

/* One herald per state_dir: two would share outboxes and the spool. */
static int
take_lock(const char *state_dir)
{
	char path[600], pid[32];
	int fd;

	snprintf(path, sizeof(path), "%s/herald.lock", state_dir);
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0640);
	if (fd == -1) {
		fprintf(stderr, "herald: %s: %s\n", path, strerror(errno));
		return -1;
	}
	if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
		ssize_t n = read(fd, pid, sizeof(pid) - 1);
		long holder;

		pid[n > 0 ? n : 0] = '\0';
		holder = strtol(pid, NULL, 10);
		if (holder <= 0 || herald_alive((pid_t)holder)) {
			fprintf(stderr, "herald: another herald (pid %s) runs on state_dir %s\n",
			    n > 0 ? strtok(pid, "\n") : "?", state_dir);
			close(fd);
			return -1;
		}
		/*
		 * Its supervisor is gone (kill -9 of the process group, say) but
		 * a worker still holds the lock: one still exiting (a sanitizer
		 * build takes a while) goes in a moment; wait for it rather than
		 * fail a restart.  One that stays (stopped) is refused.
		 */
		fprintf(stderr, "herald: state_dir %s is locked by the processes of a herald "
		    "whose supervisor (pid %ld) is gone; waiting up to %d s for them to exit\n",
		    state_dir, holder, LOCK_WAIT_MS / 1000);
		for (int i = 0; i < LOCK_WAIT_MS / 50 && flock(fd, LOCK_EX | LOCK_NB) == -1; i++)
			usleep(50 * 1000);
		if (flock(fd, LOCK_EX | LOCK_NB) == -1) {
			fprintf(stderr, "herald: another herald's processes still hold state_dir %s "
			    "after %d s, although its supervisor (pid %ld) is gone: a worker "
			    "that did not exit (stopped?); see fuser %s\n", state_dir,
			    LOCK_WAIT_MS / 1000, holder, path);
			close(fd);
			return -1;
		}
	}
	if (ftruncate(fd, 0) == 0) {
		int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
		if (pwrite(fd, pid, (size_t)n, 0) != n)
			log_warn("cannot write %s", path);
	}
	return fd;
}

int
main(int argc, char **argv)
{
	const char *path = DEFAULT_CONFIG;
	bool check = false;
	struct config *cf;
	struct stats_region *stats;
	char err[CONFIG_ERRLEN];
	int ch, lockfd, code;

	while ((ch = getopt(argc, argv, "c:thV")) != -1) {
		switch (ch) {
		case 'c': path = optarg; break;
		case 't': check = true; break;
		case 'V': printf("herald %s\n", PACKAGE_VERSION); return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return 1;
	}
	log_init("supervisor", -1);
	event_set_log_callback(herald_event_log);
	cf = malloc(sizeof(*cf));
	if (cf == NULL)
		return 1;
	if (config_load(cf, path, err, sizeof(err)) == -1) {
		fprintf(stderr, "%s\n", err);
		free(cf);
		return 1;
	}
	if (check) {
		printf("%s: configuration is valid\n", path);
		free(cf);
		return 0;
	}
	log_set_level(cf->log_level);
	if (mkdir_p(cf->run_dir, 0750) == -1 || mkdir_p(cf->state_dir, 0750) == -1) {
		fprintf(stderr, "herald: cannot create %s or %s: %s\n", cf->run_dir,
		    cf->state_dir, strerror(errno));
		return 1;
	}
	lockfd = take_lock(cf->state_dir);
	if (lockfd == -1)
		return 1;
	stats = stats_create(STATS_NSLOTS(CONFIG_MAX_MQTT));
	if (stats == NULL) {
		fprintf(stderr, "herald: cannot map the stats region: %s\n", strerror(errno));
		return 1;
	}
	code = supervisor_run(cf, stats, lockfd);
	stats_destroy(stats);
	close(lockfd);
	return code;
}
