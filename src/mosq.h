/*
 * libmosquitto clients driven from our own event loops (mqtt workers,
 * herald-bench): created without the library's wake-up socketpair.
 */
#ifndef HERALD_MOSQ_H
#define HERALD_MOSQ_H

#include <stdbool.h>
#include <mosquitto.h>

/* mosquitto_new(); wakeup_pair false drops the socketpair (see mosq.c). */
struct mosquitto *mosq_new(const char *id, bool clean_session, void *obj, bool wakeup_pair);

#endif
