/*
 * The router's request store and presence (SPEC §3): accepted requests are
 * committed to LMDB before the API is answered, move through their states
 * on timers, broker acknowledgements and device responses, and every change
 * after "queued" reaches the backend as a kind "request" envelope.
 */
#ifndef HERALD_REQUESTS_H
#define HERALD_REQUESTS_H

#include <stdbool.h>
#include <jansson.h>
#include "proto.h"

struct worker;
struct requests;

struct requests *requests_open(struct worker *w);
void    requests_close(struct requests *q);
/* Stopping: commit, and answer the API calls held by ?wait (202, the record). */
void    requests_stop(struct requests *q);
/* FAB_REQUEST from the api worker `peer`; the answer goes back as FAB_REPLY. */
void    requests_on_request(struct requests *q, const char *peer, const struct msg_request *m);
/* FAB_PUBLISHED from an mqtt worker. */
void    requests_on_published(struct requests *q, const struct msg_published *m);
/* FAB_DEVICE_INFO from the crypto worker `peer`: presence, status, responses.
 * A hint with an hseq is acknowledged to peer once the group it changed is
 * committed (at once if it changed nothing stored); a lost group's hints
 * are not, and come again. */
void    requests_on_device(struct requests *q, const char *peer, const struct msg_device_info *m);
/* FAB_ACK for envelopes the router itself sent (slot PROTO_SLOT_ROUTER). */
void    requests_on_ack(struct requests *q, const struct msg_ack *m);
/* An mqtt worker (re)joined: publishing is possible again. */
void    requests_on_mqtt_up(struct requests *q, int slot, bool new_life);
/* The spool said it is full (FAB_PAUSE) or has room again (FAB_RESUME):
 * new requests are refused with 503 while it is full (SPEC §3). */
void    requests_on_pause(struct requests *q, bool paused);
json_t *requests_admin(struct requests *q, int argc, char **argv);
void    requests_reload(struct requests *q);

/* Provided by the router: send to the http worker, or keep it, in order, while
 * that worker is away (the same holding as for device messages). */
void    router_to_http(struct worker *w, struct hmw *m);
/* Provided by the router: send FAB_PUBLISH to the next mqtt worker in
 * rotation.  The slot it went to, or -1 if no mqtt worker is reachable. */
int     router_publish(struct worker *w, const struct msg_publish *m);

#endif
