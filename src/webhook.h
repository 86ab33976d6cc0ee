/*
 * Standard Webhooks signatures (SPEC §2): HMAC-SHA256 over "id.timestamp.body",
 * sent as "v1,<base64>".  herald's http worker signs with it; herald-bench's
 * sink and the tests verify with it.
 */
#ifndef HERALD_WEBHOOK_H
#define HERALD_WEBHOOK_H

#include <stddef.h>
#include <stdint.h>

/* "whsec_<base64>" -> decoded bytes; anything else -> its raw bytes.  Caller frees. */
int  webhook_secret_parse(const char *s, uint8_t **key, size_t *keylen);
#define WEBHOOK_SIG_LEN 48    /* "v1," + base64(32 bytes) + NUL */
/* 0, or -1 if OpenSSL failed (no memory). */
int  webhook_sign(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, char out[WEBHOOK_SIG_LEN]);
/* 1: one of the space-separated signatures in header matches; 0: none does; -1: malformed. */
int  webhook_verify(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, const char *header);

#endif
