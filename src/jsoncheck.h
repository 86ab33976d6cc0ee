/*
 * A strict JSON validator (RFC 8259) for device payloads that go on
 * verbatim: it builds no tree, allocates nothing per value, and refuses
 * what jansson refuses with JSON_REJECT_DUPLICATES (bad UTF-8, lone
 * surrogates, \u0000, duplicate keys, nesting over 2048 or max_depth), so the crypto
 * worker checks a payload several times faster than json_loadb() would.
 * Numbers are checked for their grammar only: 1e400 is valid JSON.
 */
#ifndef HERALD_JSONCHECK_H
#define HERALD_JSONCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum jc_type { JC_NONE = -1, JC_OBJECT, JC_ARRAY, JC_STRING, JC_NUMBER, JC_TRUE, JC_FALSE, JC_NULL };

#define JC_MAX_DEPTH 2048

struct jc_key;

/* Scratch space reused from one check to the next; zero it before first use. */
struct jsoncheck {
	int            max_depth;    /* nesting allowed: 1..JC_MAX_DEPTH, 0 = JC_MAX_DEPTH */
	struct jc_key *tab;          /* keys seen, by (object, key) */
	size_t         tabcap, nkeys;
	uint32_t       gen;          /* a slot is used when its gen is this */
	char          *keys;         /* decoded key bytes */
	size_t         keycap, keylen;
	uint32_t       objects;      /* objects opened in this check */
	uint64_t       probes;       /* key slots compared, all checks (a test watches it) */
	/* the current check */
	const char    *p, *end, *start;
	int            depth, limit;
	bool           too_deep;
	bool           type_empty;   /* the top object's "type" is "" */
	const char    *err;
	size_t         err_at;
};

struct jc_result {
	enum jc_type top;            /* the document's value */
	enum jc_type type_member;    /* the top object's "type" member, JC_NONE if absent */
	bool         type_empty;     /* ... and it is the empty string */
	size_t       error_at;       /* byte offset of the error */
	const char  *error;          /* static text; NULL when valid */
	bool         too_deep;       /* the error: nesting over max_depth */
};

/* 0 when p[0..len) is one JSON value (whitespace around it allowed), -1 when
 * it is not (res says why and where), -2 when out of memory. */
int  jsoncheck(struct jsoncheck *jc, const char *p, size_t len, struct jc_result *res);
void jsoncheck_free(struct jsoncheck *jc);

/* A span of a document's bytes. */
struct jc_span {
	const char *p;
	size_t      len;
};

/*
 * The members of the top object of p[0..len), which jsoncheck() found
 * valid, one per call: *pos is 0 for the first.  Sets key (with its
 * quotes, escapes as written) and val (the value's bytes as written) and
 * returns 1, or returns 0 after the last member.
 */
int  jc_member(const char *p, size_t len, size_t *pos, struct jc_span *key, struct jc_span *val);
/* Valid JSON p[0..len) into out (room for len bytes) without the whitespace
 * between tokens; every token is copied as written.  Its length. */
size_t jc_minify(const char *p, size_t len, char *out);
/* Valid JSON p[0..len) into out (room for len bytes), each number that
 * jansson cannot hold (an integer past int64, a real past a double's
 * range: 18446744073709551615, 1e400) as null, so that json_loadb() reads
 * it; the rest as written.  Its length; *ntamed (if not NULL): how many
 * numbers became null. */
size_t jc_tame(const char *p, size_t len, char *out, size_t *ntamed);

#endif
