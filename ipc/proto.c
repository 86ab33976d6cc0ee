/*
 * Typed fabric message bodies: writers and strict readers (see proto.h).
 */
#include <string.h>

#include "proto.h"

#define RD(x) do { if ((x) == -1) return -1; } while (0)

static int
rd_u32(struct hmr *r, uint32_t *v)
{
	uint64_t u;

	if (hmr_u64(r, &u) == -1 || u > UINT32_MAX)
		return -1;
	*v = (uint32_t)u;
	return 0;
}

static int rd_str(struct hmr *r, struct pstr *s) { return hmr_str(r, &s->p, &s->len); }

static int
rd_bin(struct hmr *r, struct pstr *s)
{
	const void *p;

	if (hmr_bin(r, &p, &s->len) == -1)
		return -1;
	s->p = p;
	return 0;
}

static void wr_str(struct hmw *w, struct pstr s) { hmw_str(w, s.p, s.len); }
static void wr_bin(struct hmw *w, struct pstr s) { hmw_bin(w, s.p, s.len); }

int
proto_write_hello(struct hmw *w, const struct msg_hello *m)
{
	hmw_u64(w, m->role);
	hmw_u64(w, m->slot);
	hmw_u64(w, m->generation);
	return 0;
}

int
proto_read_hello(struct hmr *r, struct msg_hello *m)
{
	RD(rd_u32(r, &m->role));
	RD(rd_u32(r, &m->slot));
	RD(rd_u32(r, &m->generation));
	return hmr_end(r);
}

int
proto_write_dev_in(struct hmw *w, const struct msg_dev_in *m)
{
	hmw_u64(w, m->slot);
	hmw_u64(w, m->epoch);
	hmw_u64(w, m->seq);
	hmw_i64(w, m->received_ms);
	wr_str(w, m->id);
	wr_str(w, m->topic);
	wr_bin(w, m->payload);
	return 0;
}

int
proto_read_dev_in(struct hmr *r, struct msg_dev_in *m)
{
	RD(rd_u32(r, &m->slot));
	RD(hmr_u64(r, &m->epoch));
	RD(hmr_u64(r, &m->seq));
	RD(hmr_i64(r, &m->received_ms));
	RD(rd_str(r, &m->id));
	RD(rd_str(r, &m->topic));
	RD(rd_bin(r, &m->payload));
	return 0;       /* one record of a batch: the caller loops while hmr_more() */
}

int
proto_write_envelope(struct hmw *w, const struct msg_envelope *m)
{
	hmw_u64(w, m->slot);
	hmw_u64(w, m->epoch);
	hmw_u64(w, m->seq);
	hmw_i64(w, m->received_ms);
	wr_str(w, m->id);
	wr_str(w, m->device);
	wr_str(w, m->json);
	return 0;
}

int
proto_read_envelope(struct hmr *r, struct msg_envelope *m)
{
	RD(rd_u32(r, &m->slot));
	RD(hmr_u64(r, &m->epoch));
	RD(hmr_u64(r, &m->seq));
	RD(hmr_i64(r, &m->received_ms));
	RD(rd_str(r, &m->id));
	RD(rd_str(r, &m->device));
	RD(rd_str(r, &m->json));
	return 0;       /* one record of a batch: the caller loops while hmr_more() */
}

int
proto_write_reject(struct hmw *w, const struct msg_reject *m)
{
	hmw_u64(w, m->slot);
	hmw_u64(w, m->epoch);
	hmw_u64(w, m->seq);
	hmw_i64(w, m->received_ms);
	wr_str(w, m->id);
	wr_str(w, m->device);
	wr_str(w, m->topic);
	wr_str(w, m->reason);
	wr_str(w, m->detail);
	wr_bin(w, m->payload);
	return 0;
}

int
proto_read_reject(struct hmr *r, struct msg_reject *m)
{
	RD(rd_u32(r, &m->slot));
	RD(hmr_u64(r, &m->epoch));
	RD(hmr_u64(r, &m->seq));
	RD(hmr_i64(r, &m->received_ms));
	RD(rd_str(r, &m->id));
	RD(rd_str(r, &m->device));
	RD(rd_str(r, &m->topic));
	RD(rd_str(r, &m->reason));
	RD(rd_str(r, &m->detail));
	RD(rd_bin(r, &m->payload));
	return hmr_end(r);
}

int
proto_write_ack(struct hmw *w, const struct msg_ack *m)
{
	uint8_t buf[ACK_MAX * 8];

	if (m->n > ACK_MAX)
		return -1;
	for (uint32_t i = 0; i < m->n; i++)
		for (int b = 0; b < 8; b++)
			buf[i * 8 + b] = (uint8_t)(m->seqs[i] >> (8 * (7 - b)));
	hmw_u64(w, m->slot);
	hmw_u64(w, m->epoch);
	hmw_bin(w, buf, (size_t)m->n * 8);
	return 0;
}

int
proto_read_ack(struct hmr *r, struct msg_ack *m)
{
	const void *p;
	const uint8_t *b;
	size_t len;

	RD(rd_u32(r, &m->slot));
	RD(hmr_u64(r, &m->epoch));
	RD(hmr_bin(r, &p, &len));
	if (len % 8 != 0 || len / 8 > ACK_MAX)
		return -1;
	b = p;
	m->n = (uint32_t)(len / 8);
	for (uint32_t i = 0; i < m->n; i++) {
		uint64_t v = 0;
		for (int k = 0; k < 8; k++)
			v = (v << 8) | b[i * 8 + k];
		m->seqs[i] = v;
	}
	return hmr_end(r);
}

int
proto_write_publish(struct hmw *w, const struct msg_publish *m)
{
	hmw_u64(w, m->ref);
	wr_str(w, m->topic);
	wr_bin(w, m->payload);
	hmw_u64(w, m->qos);
	hmw_u64(w, m->retain);
	return 0;
}

int
proto_read_publish(struct hmr *r, struct msg_publish *m)
{
	RD(hmr_u64(r, &m->ref));
	RD(rd_str(r, &m->topic));
	RD(rd_bin(r, &m->payload));
	RD(rd_u32(r, &m->qos));
	RD(rd_u32(r, &m->retain));
	if (m->qos > 2)
		return -1;
	return hmr_end(r);
}

int
proto_write_published(struct hmw *w, const struct msg_published *m)
{
	hmw_u64(w, m->ref);
	hmw_u64(w, m->result);
	return 0;
}

int
proto_read_published(struct hmr *r, struct msg_published *m)
{
	RD(hmr_u64(r, &m->ref));
	RD(rd_u32(r, &m->result));
	return hmr_end(r);
}

int
proto_write_device_info(struct hmw *w, const struct msg_device_info *m)
{
	wr_str(w, m->device);
	wr_str(w, m->kind);
	hmw_i64(w, m->received_ms);
	wr_str(w, m->json);
	hmw_u64(w, m->life);
	hmw_u64(w, m->hseq);
	hmw_u64(w, m->resent);
	return 0;
}

int
proto_read_device_info(struct hmr *r, struct msg_device_info *m)
{
	RD(rd_str(r, &m->device));
	RD(rd_str(r, &m->kind));
	RD(hmr_i64(r, &m->received_ms));
	RD(rd_str(r, &m->json));
	RD(hmr_u64(r, &m->life));
	RD(hmr_u64(r, &m->hseq));
	RD(rd_u32(r, &m->resent));
	return hmr_end(r);
}

int
proto_write_request(struct hmw *w, const struct msg_request *m)
{
	hmw_u64(w, m->reqid);
	wr_str(w, m->op);
	wr_str(w, m->args);
	return 0;
}

int
proto_read_request(struct hmr *r, struct msg_request *m)
{
	RD(hmr_u64(r, &m->reqid));
	RD(rd_str(r, &m->op));
	RD(rd_str(r, &m->args));
	return hmr_end(r);
}

int
proto_write_reply(struct hmw *w, const struct msg_reply *m)
{
	hmw_u64(w, m->reqid);
	hmw_u64(w, m->status);
	wr_str(w, m->body);
	return 0;
}

int
proto_read_reply(struct hmr *r, struct msg_reply *m)
{
	RD(hmr_u64(r, &m->reqid));
	RD(rd_u32(r, &m->status));
	RD(rd_str(r, &m->body));
	return hmr_end(r);
}
