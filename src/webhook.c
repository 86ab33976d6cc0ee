/*
 * Standard Webhooks signatures (SPEC §2).  The HMAC is OpenSSL's: its SHA-256
 * uses the CPU's SHA extensions where there are some, and a batch body of
 * 50 KB is signed about five times faster than with libsodium's portable
 * SHA-256 (measured here: 50 against 259 µs).  Base64 stays libsodium's.
 */
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <sodium.h>

#include "webhook.h"

#define WEBHOOK_MAC_LEN 32

int
webhook_secret_parse(const char *s, uint8_t **key, size_t *keylen)
{
	size_t n = strlen(s), len;
	uint8_t *k;

	if (strncmp(s, "whsec_", 6) != 0) {
		if (n == 0 || (k = malloc(n)) == NULL)
			return -1;
		memcpy(k, s, n);
		*key = k;
		*keylen = n;
		return 0;
	}
	s += 6;
	n -= 6;
	if ((k = malloc(n + 1)) == NULL)
		return -1;
	if (sodium_base642bin(k, n + 1, s, n, NULL, &len, NULL,
	    sodium_base64_VARIANT_ORIGINAL) != 0 || len == 0) {
		free(k);
		return -1;
	}
	*key = k;
	*keylen = len;
	return 0;
}

/*
 * HMAC-SHA256(key, id "." ts "." body).  The MAC implementation is fetched
 * once per process (herald's processes and herald-bench are single-threaded);
 * a context is made per call.  -1 only if OpenSSL itself fails (no memory).
 */
static int
webhook_mac(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, uint8_t mac[WEBHOOK_MAC_LEN])
{
	static EVP_MAC *hmac;
	OSSL_PARAM params[2];
	EVP_MAC_CTX *ctx;
	size_t maclen = 0;
	int ok;

	if (hmac == NULL && (hmac = EVP_MAC_fetch(NULL, "HMAC", NULL)) == NULL)
		return -1;
	if ((ctx = EVP_MAC_CTX_new(hmac)) == NULL)
		return -1;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
	    (char *)"SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	ok = EVP_MAC_init(ctx, key, keylen, params) &&
	    EVP_MAC_update(ctx, (const unsigned char *)id, strlen(id)) &&
	    EVP_MAC_update(ctx, (const unsigned char *)".", 1) &&
	    EVP_MAC_update(ctx, (const unsigned char *)ts, strlen(ts)) &&
	    EVP_MAC_update(ctx, (const unsigned char *)".", 1) &&
	    EVP_MAC_update(ctx, body, len) &&
	    EVP_MAC_final(ctx, mac, &maclen, WEBHOOK_MAC_LEN) &&
	    maclen == WEBHOOK_MAC_LEN;
	EVP_MAC_CTX_free(ctx);
	return ok ? 0 : -1;
}

int
webhook_sign(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, char out[WEBHOOK_SIG_LEN])
{
	uint8_t mac[WEBHOOK_MAC_LEN];

	if (webhook_mac(key, keylen, id, ts, body, len, mac) == -1)
		return -1;
	memcpy(out, "v1,", 3);
	sodium_bin2base64(out + 3, WEBHOOK_SIG_LEN - 3, mac, sizeof(mac),
	    sodium_base64_VARIANT_ORIGINAL);
	return 0;
}

int
webhook_verify(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, const char *header)
{
	uint8_t mac[WEBHOOK_MAC_LEN], got[WEBHOOK_MAC_LEN + 4];
	const char *p = header;
	int wellformed = 0;

	if (webhook_mac(key, keylen, id, ts, body, len, mac) == -1)
		return 0;       /* cannot tell: never say it matches */
	/* "v1,<b64> v1,<b64> ...": any one matching is enough (key rotation) */
	while (*p) {
		const char *end;
		size_t glen;

		while (*p == ' ')
			p++;
		if (*p == '\0')
			break;
		end = strchr(p, ' ');
		if (end == NULL)
			end = p + strlen(p);
		if (end - p > 3 && strncmp(p, "v1,", 3) == 0 &&
		    sodium_base642bin(got, sizeof(got), p + 3, (size_t)(end - p - 3), NULL,
		    &glen, NULL, sodium_base64_VARIANT_ORIGINAL) == 0) {
			wellformed = 1;
			if (glen == sizeof(mac) && sodium_memcmp(got, mac, sizeof(mac)) == 0)
				return 1;
		}
		p = end;
	}
	return wellformed ? 0 : -1;
}
