/*
 * Strict JSON validation without a tree (see jsoncheck.h): one pass over
 * the bytes, recursion bounded by JC_MAX_DEPTH, object keys decoded into a
 * scratch buffer and kept in one hash set keyed by (object, key) so that a
 * hostile payload with thousands of keys costs linear time.  The hash is
 * keyed with a secret of the process (SipHash): a device cannot choose keys
 * that pile up in a few slots.
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "jsoncheck.h"
#include "util.h"

struct jc_key {
	uint32_t gen;       /* used in the check of this generation */
	uint32_t obj;       /* the object it belongs to */
	uint64_t hash;
	uint32_t off, len;  /* decoded bytes in jc->keys */
};

#define JC_OOM (-2)

static int
jc_fail(struct jsoncheck *jc, const char *at, const char *msg)
{
	if (jc->err == NULL) {
		jc->err = msg;
		jc->err_at = (size_t)(at - jc->start);
	}
	return -1;
}

static void
jc_ws(struct jsoncheck *jc)
{
	const char *p = jc->p;

	while (p < jc->end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t'))
		p++;
	jc->p = p;
}

static int
jc_key_bytes(struct jsoncheck *jc, const void *b, size_t n)
{
	char *nk;

	/* Offsets into the keys are 32-bit. */
	if (jc->keylen + n > UINT32_MAX ||
	    (nk = grow_array(jc->keys, &jc->keycap, jc->keylen + n, 1, 1024)) == NULL)
		return JC_OOM;
	jc->keys = nk;
	memcpy(jc->keys + jc->keylen, b, n);
	jc->keylen += n;
	return 0;
}

static int
jc_key_cp(struct jsoncheck *jc, uint32_t cp)
{
	unsigned char u[4];
	size_t n;

	if (cp < 0x80) {
		u[0] = (unsigned char)cp;
		n = 1;
	} else if (cp < 0x800) {
		u[0] = (unsigned char)(0xc0 | (cp >> 6));
		u[1] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 2;
	} else if (cp < 0x10000) {
		u[0] = (unsigned char)(0xe0 | (cp >> 12));
		u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 3;
	} else {
		u[0] = (unsigned char)(0xf0 | (cp >> 18));
		u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3f));
		u[3] = (unsigned char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	return jc_key_bytes(jc, u, n);
}

/* Length of the valid UTF-8 sequence at p (lead byte >= 0x80), 0 if invalid. */
static size_t
jc_utf8(const unsigned char *p, const unsigned char *end)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t n;

	if (c < 0xc2)
		return 0;               /* a continuation byte, or an overlong pair */
	if (c < 0xe0)
		n = 2;
	else if (c < 0xf0) {
		n = 3;
		if (c == 0xe0)
			lo = 0xa0;      /* overlong */
		else if (c == 0xed)
			hi = 0x9f;      /* UTF-16 surrogates */
	} else if (c < 0xf5) {
		n = 4;
		if (c == 0xf0)
			lo = 0x90;      /* overlong */
		else if (c == 0xf4)
			hi = 0x8f;      /* over U+10FFFF */
	} else
		return 0;
	if ((size_t)(end - p) < n || p[1] < lo || p[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++)
		if ((p[i] & 0xc0) != 0x80)
			return 0;
	return n;
}

static int
jc_hex4(const char *p, const char *end, uint32_t *cp)
{
	uint32_t v = 0;

	if (end - p < 4)
		return -1;
	for (int i = 0; i < 4; i++) {
		char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (uint32_t)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (uint32_t)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (uint32_t)(c - 'A' + 10);
		else
			return -1;
	}
	*cp = v;
	return 0;
}

/* A string at jc->p (on its quote); a key's decoded bytes go to jc->keys. */
static int
jc_string(struct jsoncheck *jc, bool key)
{
	const char *p = jc->p + 1, *end = jc->end, *run = p;
	int rc;

	for (;;) {
		unsigned char c;

		if (p >= end)
			return jc_fail(jc, p, "unterminated string");
		c = (unsigned char)*p;
		if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
			p++;
			continue;
		}
		if (key && p > run && (rc = jc_key_bytes(jc, run, (size_t)(p - run))) != 0)
			return rc;
		if (c == '"') {
			jc->p = p + 1;
			return 0;
		}
		if (c < 0x20)
			return jc_fail(jc, p, "control character in a string");
		if (c >= 0x80) {
			size_t n = jc_utf8((const unsigned char *)p, (const unsigned char *)end);

			if (n == 0)
				return jc_fail(jc, p, "invalid UTF-8 in a string");
			if (key && (rc = jc_key_bytes(jc, p, n)) != 0)
				return rc;
			p += n;
			run = p;
			continue;
		}
		/* an escape */
		if (p + 1 >= end)
			return jc_fail(jc, p, "unterminated string");
		switch (p[1]) {
		case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't': {
			static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
			char d = to[strchr(from, p[1]) - from];

			if (key && (rc = jc_key_bytes(jc, &d, 1)) != 0)
				return rc;
			p += 2;
			break;
		}
		case 'u': {
			uint32_t cp, lo;

			if (jc_hex4(p + 2, end, &cp) == -1)
				return jc_fail(jc, p, "invalid \\u escape");
			if (cp >= 0xdc00 && cp <= 0xdfff)
				return jc_fail(jc, p, "invalid Unicode escape (lone low surrogate)");
			if (cp >= 0xd800 && cp <= 0xdbff) {
				if (end - p < 12 || p[6] != '\\' || p[7] != 'u' ||
				    jc_hex4(p + 8, end, &lo) == -1 || lo < 0xdc00 || lo > 0xdfff)
					return jc_fail(jc, p, "invalid Unicode escape (lone high surrogate)");
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
				p += 6;
			} else if (cp == 0)
				return jc_fail(jc, p, "\\u0000 is not allowed");
			if (key && (rc = jc_key_cp(jc, cp)) != 0)
				return rc;
			p += 6;
			break;
		}
		default:
			return jc_fail(jc, p, "invalid escape");
		}
		run = p;
	}
}

static uint64_t
jc_hash(const char *p, size_t n)
{
	static unsigned char key[crypto_shorthash_KEYBYTES];
	static bool keyed;
	unsigned char out[crypto_shorthash_BYTES];
	uint64_t h;

	if (!keyed) {
		if (sodium_init() < 0)
			abort();
		randombytes_buf(key, sizeof(key));
		keyed = true;
	}
	crypto_shorthash(out, (const unsigned char *)p, n, key);
	memcpy(&h, out, sizeof(h));
	return h;
}

static int
jc_grow(struct jsoncheck *jc)
{
	size_t cap = jc->tabcap ? jc->tabcap * 2 : 64;
	struct jc_key *t = calloc(cap, sizeof(*t));

	if (t == NULL)
		return JC_OOM;
	for (size_t i = 0; i < jc->tabcap; i++) {
		struct jc_key *k = &jc->tab[i];
		size_t j;

		if (k->gen != jc->gen)
			continue;
		for (j = k->hash & (cap - 1); t[j].gen == jc->gen; j = (j + 1) & (cap - 1))
			;
		t[j] = *k;
	}
	free(jc->tab);
	jc->tab = t;
	jc->tabcap = cap;
	return 0;
}

/* The key at jc->keys[off..] of object obj: -1 if the object has it already. */
static int
jc_key_add(struct jsoncheck *jc, uint32_t obj, uint32_t off, const char *at)
{
	uint32_t len = (uint32_t)(jc->keylen - off);
	uint64_t h = jc_hash(jc->keys + off, len) ^ ((uint64_t)obj * 0x9e3779b97f4a7c15ULL);
	size_t j;
	int rc;

	if (2 * (jc->nkeys + 1) > jc->tabcap && (rc = jc_grow(jc)) != 0)
		return rc;
	for (j = h & (jc->tabcap - 1); jc->tab[j].gen == jc->gen; j = (j + 1) & (jc->tabcap - 1)) {
		struct jc_key *k = &jc->tab[j];

		jc->probes++;
		if (k->hash == h && k->obj == obj && k->len == len &&
		    memcmp(jc->keys + k->off, jc->keys + off, len) == 0)
			return jc_fail(jc, at, "duplicate object key");
	}
	jc->tab[j] = (struct jc_key){ jc->gen, obj, h, off, len };
	jc->nkeys++;
	return 0;
}

static int jc_value(struct jsoncheck *jc, enum jc_type *type, enum jc_type *type_member);

static int
jc_object(struct jsoncheck *jc, enum jc_type *type_member)
{
	uint32_t obj = ++jc->objects;
	bool top = jc->depth == 1;
	int rc;

	jc->p++;
	jc_ws(jc);
	if (jc->p < jc->end && *jc->p == '}') {
		jc->p++;
		return 0;
	}
	for (;;) {
		const char *at = jc->p;
		uint32_t off = (uint32_t)jc->keylen;
		enum jc_type t;
		bool is_type;

		if (jc->p >= jc->end || *jc->p != '"')
			return jc_fail(jc, jc->p, "string or '}' expected");
		if ((rc = jc_string(jc, true)) != 0 || (rc = jc_key_add(jc, obj, off, at)) != 0)
			return rc;
		is_type = top && jc->keylen - off == 4 && memcmp(jc->keys + off, "type", 4) == 0;
		jc_ws(jc);
		if (jc->p >= jc->end || *jc->p != ':')
			return jc_fail(jc, jc->p, "':' expected");
		jc->p++;
		jc_ws(jc);
		at = jc->p;
		if ((rc = jc_value(jc, &t, NULL)) != 0)
			return rc;
		if (is_type && type_member != NULL) {
			*type_member = t;
			/* "" is the only string of two bytes */
			jc->type_empty = t == JC_STRING && jc->p - at == 2;
		}
		jc_ws(jc);
		if (jc->p < jc->end && *jc->p == ',') {
			jc->p++;
			jc_ws(jc);
			continue;
		}
		if (jc->p < jc->end && *jc->p == '}') {
			jc->p++;
			return 0;
		}
		return jc_fail(jc, jc->p, "',' or '}' expected");
	}
}

static int
jc_array(struct jsoncheck *jc)
{
	int rc;

	jc->p++;
	jc_ws(jc);
	if (jc->p < jc->end && *jc->p == ']') {
		jc->p++;
		return 0;
	}
	for (;;) {
		enum jc_type t;

		if ((rc = jc_value(jc, &t, NULL)) != 0)
			return rc;
		jc_ws(jc);
		if (jc->p < jc->end && *jc->p == ',') {
			jc->p++;
			continue;
		}
		if (jc->p < jc->end && *jc->p == ']') {
			jc->p++;
			return 0;
		}
		return jc_fail(jc, jc->p, "',' or ']' expected");
	}
}

static bool
jc_digit(const struct jsoncheck *jc, const char *p)
{
	return p < jc->end && *p >= '0' && *p <= '9';
}

static int
jc_number(struct jsoncheck *jc)
{
	const char *p = jc->p;

	if (*p == '-')
		p++;
	if (!jc_digit(jc, p))
		return jc_fail(jc, jc->p, "invalid number");
	if (*p == '0')
		p++;
	else
		while (jc_digit(jc, p))
			p++;
	if (p < jc->end && *p == '.') {
		p++;
		if (!jc_digit(jc, p))
			return jc_fail(jc, p, "invalid number (digit expected after '.')");
		while (jc_digit(jc, p))
			p++;
	}
	if (p < jc->end && (*p == 'e' || *p == 'E')) {
		p++;
		if (p < jc->end && (*p == '+' || *p == '-'))
			p++;
		if (!jc_digit(jc, p))
			return jc_fail(jc, p, "invalid number (digit expected in the exponent)");
		while (jc_digit(jc, p))
			p++;
	}
	jc->p = p;
	return 0;
}

static int
jc_literal(struct jsoncheck *jc, const char *word, size_t n)
{
	if ((size_t)(jc->end - jc->p) < n || memcmp(jc->p, word, n) != 0)
		return jc_fail(jc, jc->p, "invalid token");
	jc->p += n;
	return 0;
}

static int
jc_value(struct jsoncheck *jc, enum jc_type *type, enum jc_type *type_member)
{
	int rc;

	jc_ws(jc);
	if (jc->p >= jc->end)
		return jc_fail(jc, jc->p, "unexpected end of input");
	switch (*jc->p) {
	case '{':
	case '[':
		if (++jc->depth > jc->limit) {
			jc->too_deep = true;
			return jc_fail(jc, jc->p, "maximum nesting depth reached");
		}
		if (*jc->p == '{') {
			*type = JC_OBJECT;
			rc = jc_object(jc, type_member);
		} else {
			*type = JC_ARRAY;
			rc = jc_array(jc);
		}
		jc->depth--;
		return rc;
	case '"':
		*type = JC_STRING;
		return jc_string(jc, false);
	case 't':
		*type = JC_TRUE;
		return jc_literal(jc, "true", 4);
	case 'f':
		*type = JC_FALSE;
		return jc_literal(jc, "false", 5);
	case 'n':
		*type = JC_NULL;
		return jc_literal(jc, "null", 4);
	default:
		if (*jc->p == '-' || (*jc->p >= '0' && *jc->p <= '9')) {
			*type = JC_NUMBER;
			return jc_number(jc);
		}
		return jc_fail(jc, jc->p, "invalid token");
	}
}

int
jsoncheck(struct jsoncheck *jc, const char *p, size_t len, struct jc_result *res)
{
	enum jc_type top = JC_NONE, type_member = JC_NONE;
	int rc;

	if (++jc->gen == 0) {
		/* generations wrapped: forget every slot */
		if (jc->tab != NULL)
			memset(jc->tab, 0, jc->tabcap * sizeof(*jc->tab));
		jc->gen = 1;
	}
	jc->nkeys = 0;
	jc->keylen = 0;
	jc->objects = 0;
	jc->start = jc->p = p;
	jc->end = p + len;
	jc->depth = 0;
	jc->limit = jc->max_depth > 0 && jc->max_depth < JC_MAX_DEPTH ? jc->max_depth : JC_MAX_DEPTH;
	jc->too_deep = false;
	jc->type_empty = false;
	jc->err = NULL;
	jc->err_at = 0;
	rc = jc_value(jc, &top, &type_member);
	if (rc == 0) {
		jc_ws(jc);
		if (jc->p != jc->end)
			rc = jc_fail(jc, jc->p, "end of input expected");
	}
	res->top = rc == 0 ? top : JC_NONE;
	res->type_member = rc == 0 ? type_member : JC_NONE;
	res->type_empty = rc == 0 && jc->type_empty;
	res->error = rc == 0 ? NULL : rc == JC_OOM ? "out of memory" : jc->err;
	res->error_at = rc == 0 ? 0 : jc->err_at;
	res->too_deep = rc == -1 && jc->too_deep;
	return rc == 0 ? 0 : rc == JC_OOM ? JC_OOM : -1;
}

void
jsoncheck_free(struct jsoncheck *jc)
{
	free(jc->tab);
	free(jc->keys);
	memset(jc, 0, sizeof(*jc));
}

/* ---- walking a document already checked ---- */

static size_t
jv_ws(const char *p, size_t len, size_t i)
{
	while (i < len && (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t'))
		i++;
	return i;
}

/* Past the string whose quote is at p[i]. */
static size_t
jv_string(const char *p, size_t len, size_t i)
{
	for (i++; i < len && p[i] != '"'; i++)
		if (p[i] == '\\')
			i++;
	return i < len ? i + 1 : len;
}

/* Past the value at p[i]. */
static size_t
jv_value(const char *p, size_t len, size_t i)
{
	size_t depth = 0;

	if (i >= len)
		return len;
	if (p[i] == '"')
		return jv_string(p, len, i);
	if (p[i] != '{' && p[i] != '[') {
		while (i < len && strchr(",}] \n\r\t", p[i]) == NULL)
			i++;
		return i;
	}
	while (i < len) {
		if (p[i] == '"') {
			i = jv_string(p, len, i);
			continue;
		}
		if (p[i] == '{' || p[i] == '[')
			depth++;
		else if ((p[i] == '}' || p[i] == ']') && --depth == 0)
			return i + 1;
		i++;
	}
	return len;
}

int
jc_member(const char *p, size_t len, size_t *pos, struct jc_span *key, struct jc_span *val)
{
	size_t i = jv_ws(p, len, *pos), k;

	if (*pos == 0) {
		if (i >= len || p[i] != '{')
			return 0;
		i = jv_ws(p, len, i + 1);
	} else if (i < len && p[i] == ',')
		i = jv_ws(p, len, i + 1);
	if (i >= len || p[i] != '"')
		return 0;
	k = i;
	i = jv_string(p, len, i);
	*key = (struct jc_span){ p + k, i - k };
	i = jv_ws(p, len, i);
	if (i >= len || p[i] != ':')
		return 0;
	i = jv_ws(p, len, i + 1);
	k = i;
	i = jv_value(p, len, i);
	*val = (struct jc_span){ p + k, i - k };
	*pos = i;
	return 1;
}

size_t
jc_minify(const char *p, size_t len, char *out)
{
	size_t i = 0, n = 0, e;

	while (i < len) {
		if (p[i] == ' ' || p[i] == '\n' || p[i] == '\r' || p[i] == '\t') {
			i++;
			continue;
		}
		e = p[i] == '"' ? jv_string(p, len, i) : i + 1;
		memcpy(out + n, p + i, e - i);
		n += e - i;
		i = e;
	}
	return n;
}

/* Does the number token p[0..n) fit jansson: an integer within int64, a
 * real within a double's range (jansson refuses the others)? */
static bool
jv_number_fits(const char *p, size_t n)
{
	char small[64], *t = n < sizeof(small) ? small : malloc(n + 1);
	bool real = false, fits;
	double d;

	if (t == NULL)
		return false;
	memcpy(t, p, n);
	t[n] = '\0';
	for (size_t i = 0; i < n; i++)
		if (p[i] == '.' || p[i] == 'e' || p[i] == 'E')
			real = true;
	errno = 0;
	if (real) {
		d = strtod(t, NULL);
		fits = !((d == HUGE_VAL || d == -HUGE_VAL) && errno == ERANGE);
	} else {
		(void)strtoll(t, NULL, 10);
		fits = errno != ERANGE;
	}
	if (t != small)
		free(t);
	return fits;
}

size_t
jc_tame(const char *p, size_t len, char *out, size_t *ntamed)
{
	size_t i = 0, n = 0, e, tamed = 0;

	while (i < len) {
		if (p[i] == '"')
			e = jv_string(p, len, i);
		else if (p[i] == '-' || (p[i] >= '0' && p[i] <= '9')) {
			for (e = i + 1; e < len && p[e] != '\0' && strchr("0123456789+-.eE", p[e]) != NULL; e++)
				;
			if (!jv_number_fits(p + i, e - i)) {
				/* "null" is never longer: such a number has 5 bytes at least */
				memcpy(out + n, "null", 4);
				n += 4;
				tamed++;
				i = e;
				continue;
			}
		} else
			e = i + 1;
		memcpy(out + n, p + i, e - i);
		n += e - i;
		i = e;
	}
	if (ntamed != NULL)
		*ntamed = tamed;
	return n;
}
