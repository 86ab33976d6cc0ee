/*
 * Entry points of the worker roles: each sets its process up, fills its
 * hooks and enters the loop.  Returns the process exit code.
 */
#ifndef HERALD_WORKERS_H
#define HERALD_WORKERS_H

struct worker;

int router_main(struct worker *w);
int crypto_main(struct worker *w);
int http_main(struct worker *w);
int api_main(struct worker *w);
/* The REST API's listening socket: opened by the supervisor and kept across
 * api worker restarts; the api worker serves its copy, api_listen_fd. */
int api_listen_open(const char *listen, char *err, size_t errlen);
extern int api_listen_fd;
int mqtt_main(struct worker *w);

#endif
