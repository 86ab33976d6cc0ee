/*
 * The stats region: allocation before fork, and the names of roles, states,
 * counters and gauges shared by the admin socket, heraldctl and /metrics.
 */
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "stats.h"

static const char *role_names[ROLE_MAX] = {
	"supervisor", "router", "crypto", "http", "api", "mqtt"
};
static const char *state_names[] = {
	"empty", "starting", "ready", "stopping", "throttled", "dead"
};
static const char *counter_names[] = {
#define X(name, help) #name,
	STATS_COUNTERS(X)
#undef X
};
static const char *counter_helps[] = {
#define X(name, help) help,
	STATS_COUNTERS(X)
#undef X
};
static const char *gauge_names[] = {
#define X(name, help) #name,
	STATS_GAUGES(X)
#undef X
};
static const char *gauge_helps[] = {
#define X(name, help) help,
	STATS_GAUGES(X)
#undef X
};

const char *
stats_role_name(int role)
{
	return role >= 0 && role < ROLE_MAX ? role_names[role] : "?";
}

int
stats_role_parse(const char *name)
{
	for (int i = 0; i < ROLE_MAX; i++)
		if (strcmp(name, role_names[i]) == 0)
			return i;
	return -1;
}

const char *
stats_state_name(int state)
{
	return state >= 0 && state <= WS_DEAD ? state_names[state] : "?";
}

const char *stats_counter_name(int i) { return i >= 0 && i < STAT_NCOUNTERS ? counter_names[i] : "?"; }
const char *stats_counter_help(int i) { return i >= 0 && i < STAT_NCOUNTERS ? counter_helps[i] : "?"; }
const char *stats_gauge_name(int i) { return i >= 0 && i < STAT_NGAUGES ? gauge_names[i] : "?"; }
const char *stats_gauge_help(int i) { return i >= 0 && i < STAT_NGAUGES ? gauge_helps[i] : "?"; }

size_t
stats_size(int nslots)
{
	return sizeof(struct stats_header) + (size_t)nslots * sizeof(struct stats_slot);
}

int
stats_slot_index(int role, int slot)
{
	switch (role) {
	case ROLE_SUPERVISOR: return 0;
	case ROLE_ROUTER:     return 1;
	case ROLE_CRYPTO:     return 2;
	case ROLE_HTTP:       return 3;
	case ROLE_API:        return 4;
	case ROLE_MQTT:       return 5 + slot;
	default:              return -1;
	}
}

struct stats_region *
stats_create(int nslots)
{
	struct stats_region *r;
	struct timespec ts;
	size_t len = stats_size(nslots);

	r = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return NULL;
	memset(r, 0, len);
	clock_gettime(CLOCK_REALTIME, &ts);
	r->hdr.magic = STATS_MAGIC;
	r->hdr.version = STATS_VERSION;
	r->hdr.nslots = (uint32_t)nslots;
	r->hdr.slot_size = sizeof(struct stats_slot);
	r->hdr.created_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
	for (int i = 0; i < nslots; i++) {
		r->slots[i].role = i < 5 ? i : ROLE_MQTT;
		r->slots[i].slot = i < 5 ? 0 : i - 5;
	}
	return r;
}

void
stats_destroy(struct stats_region *r)
{
	if (r != NULL)
		munmap(r, stats_size((int)r->hdr.nslots));
}
