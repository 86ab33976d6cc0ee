/*
 * The router's request store (stub until the backend -> device issue lands):
 * it answers every API operation with 503 so nothing pretends to work.
 */
#include <stdlib.h>

#include "requests.h"
#include "worker.h"

struct requests {
	struct worker *w;
};

struct requests *
requests_open(struct worker *w)
{
	struct requests *q = calloc(1, sizeof(*q));

	if (q != NULL)
		q->w = w;
	return q;
}

void requests_close(struct requests *q) { free(q); }

void
requests_on_request(struct requests *q, const char *peer, const struct msg_request *m)
{
	static const char body[] =
	    "{\"error\":{\"code\":\"not_implemented\",\"message\":\"requests are not available yet\"}}";
	struct msg_reply rep = { m->reqid, 503, { body, sizeof(body) - 1 } };
	struct hmw out;

	hmw_init(&out, HM_FAB_REPLY);
	proto_write_reply(&out, &rep);
	worker_send(q->w, peer, &out);
	hmw_free(&out);
}

void requests_on_published(struct requests *q, const struct msg_published *m) { (void)q; (void)m; }
void requests_on_device(struct requests *q, const struct msg_device_info *m) { (void)q; (void)m; }
void requests_on_ack(struct requests *q, const struct msg_ack *m) { (void)q; (void)m; }
void requests_on_mqtt_up(struct requests *q, int slot) { (void)q; (void)slot; }
json_t *requests_admin(struct requests *q, int argc, char **argv) { (void)q; (void)argc; (void)argv; return NULL; }
void requests_reload(struct requests *q) { (void)q; }
