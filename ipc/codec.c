/*
 * herald message codec: msgpack-c packer into an sbuffer, and a strict
 * reader that unpacks one object at a time and insists on the exact end.
 */
#include <errno.h>
#include <string.h>

#include "codec.h"

static const char *hm_names[HM_TYPE_MAX];

static void
hm_names_init(void)
{
	if (hm_names[HM_CTL_READY] != NULL)
		return;
#define HM_NAME(name, val) hm_names[val] = #name;
	HM_TYPES(HM_NAME)
#undef HM_NAME
}

const char *
hm_type_name(int type)
{
	hm_names_init();
	if (type < 0 || type >= HM_TYPE_MAX || hm_names[type] == NULL)
		return "?";
	return hm_names[type];
}

bool
hm_type_known(int type)
{
	hm_names_init();
	return type > 0 && type < HM_TYPE_MAX && hm_names[type] != NULL;
}

void
hmw_init(struct hmw *w, enum hm_type type)
{
	w->hdr[0] = HM_VERSION;
	w->hdr[1] = (uint8_t)type;
	msgpack_sbuffer_init(&w->sb);
	msgpack_packer_init(&w->pk, &w->sb, msgpack_sbuffer_write);
}

void
hmw_free(struct hmw *w)
{
	msgpack_sbuffer_destroy(&w->sb);
}

void hmw_u64(struct hmw *w, uint64_t v) { msgpack_pack_uint64(&w->pk, v); }
void hmw_i64(struct hmw *w, int64_t v) { msgpack_pack_int64(&w->pk, v); }
void hmw_nil(struct hmw *w) { msgpack_pack_nil(&w->pk); }

void
hmw_bool(struct hmw *w, bool v)
{
	if (v)
		msgpack_pack_true(&w->pk);
	else
		msgpack_pack_false(&w->pk);
}

void
hmw_str(struct hmw *w, const char *s, size_t len)
{
	if (s == NULL)
		s = "", len = 0;
	if (len == (size_t)-1)
		len = strlen(s);
	msgpack_pack_str(&w->pk, len);
	msgpack_pack_str_body(&w->pk, s, len);
}

void
hmw_bin(struct hmw *w, const void *p, size_t len)
{
	msgpack_pack_bin(&w->pk, len);
	if (len > 0)
		msgpack_pack_bin_body(&w->pk, p, len);
}

int
hmr_init(struct hmr *r, const void *hdr, size_t hdrlen, const void *body,
    size_t len, const char **why)
{
	const uint8_t *h = hdr;

	memset(r, 0, sizeof(*r));
	msgpack_unpacked_init(&r->u);
	if (hdrlen != HM_HDRLEN) {
		*why = "bad header length";
		return -1;
	}
	if (h[0] != HM_VERSION) {
		*why = "unknown protocol version";
		return -1;
	}
	if (!hm_type_known(h[1])) {
		*why = "unknown message type";
		return -1;
	}
	r->type = h[1];
	r->data = body;
	r->len = len;
	return 0;
}

void
hmr_free(struct hmr *r)
{
	msgpack_unpacked_destroy(&r->u);
}

static const msgpack_object *
hmr_next(struct hmr *r)
{
	msgpack_unpack_return ret;

	if (r->off >= r->len)
		return NULL;
	/* Bodies hold scalars, strings and bytes only.  An array or map header
	 * would make msgpack allocate for as many elements as it claims (up to
	 * 2^32) before finding the body too short: refuse it unread. */
	{
		uint8_t b = (uint8_t)r->data[r->off];
		if ((b >= 0x80 && b <= 0x9f) || (b >= 0xdc && b <= 0xdf))
			return NULL;
	}
	ret = msgpack_unpack_next(&r->u, r->data, r->len, &r->off);
	if (ret != MSGPACK_UNPACK_SUCCESS && ret != MSGPACK_UNPACK_EXTRA_BYTES)
		return NULL;
	return &r->u.data;
}

int
hmr_u64(struct hmr *r, uint64_t *v)
{
	const msgpack_object *o = hmr_next(r);

	if (o == NULL || o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
		return -1;
	*v = o->via.u64;
	return 0;
}

int
hmr_i64(struct hmr *r, int64_t *v)
{
	const msgpack_object *o = hmr_next(r);

	if (o == NULL)
		return -1;
	if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER)
		*v = o->via.i64;
	else if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 <= INT64_MAX)
		*v = (int64_t)o->via.u64;
	else
		return -1;
	return 0;
}

int
hmr_bool(struct hmr *r, bool *v)
{
	const msgpack_object *o = hmr_next(r);

	if (o == NULL || o->type != MSGPACK_OBJECT_BOOLEAN)
		return -1;
	*v = o->via.boolean;
	return 0;
}

int
hmr_str(struct hmr *r, const char **s, size_t *len)
{
	const msgpack_object *o = hmr_next(r);

	if (o == NULL || o->type != MSGPACK_OBJECT_STR)
		return -1;
	*s = o->via.str.ptr;
	*len = o->via.str.size;
	return 0;
}

int
hmr_nil_or_str(struct hmr *r, const char **s, size_t *len)
{
	const msgpack_object *o = hmr_next(r);

	if (o == NULL)
		return -1;
	if (o->type == MSGPACK_OBJECT_NIL) {
		*s = NULL;
		*len = 0;
		return 0;
	}
	if (o->type != MSGPACK_OBJECT_STR)
		return -1;
	*s = o->via.str.ptr;
	*len = o->via.str.size;
	return 0;
}

int
hmr_bin(struct hmr *r, const void **p, size_t *len)
{
	const msgpack_object *o = hmr_next(r);

	if (o == NULL || o->type != MSGPACK_OBJECT_BIN)
		return -1;
	*p = o->via.bin.ptr;
	*len = o->via.bin.size;
	return 0;
}

int
hmr_strcpy(struct hmr *r, char *buf, size_t buflen)
{
	const char *s;
	size_t len;

	if (hmr_str(r, &s, &len) == -1 || len >= buflen)
		return -1;
	memcpy(buf, s, len);
	buf[len] = '\0';
	return 0;
}

int
hmr_end(struct hmr *r)
{
	return r->off == r->len ? 0 : -1;
}
