/*
 * Standard Webhooks signatures as herald sends them (SPEC §2): the sink checks
 * them, the tests make them.  HMAC-SHA256 over "id.timestamp.body".
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "bench.h"

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

static void
webhook_mac(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, uint8_t mac[crypto_auth_hmacsha256_BYTES])
{
	crypto_auth_hmacsha256_state st;

	crypto_auth_hmacsha256_init(&st, key, keylen);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)id, strlen(id));
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)".", 1);
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)ts, strlen(ts));
	crypto_auth_hmacsha256_update(&st, (const unsigned char *)".", 1);
	crypto_auth_hmacsha256_update(&st, body, len);
	crypto_auth_hmacsha256_final(&st, mac);
}

void
webhook_sign(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, char out[WEBHOOK_SIG_LEN])
{
	uint8_t mac[crypto_auth_hmacsha256_BYTES];

	webhook_mac(key, keylen, id, ts, body, len, mac);
	memcpy(out, "v1,", 3);
	sodium_bin2base64(out + 3, WEBHOOK_SIG_LEN - 3, mac, sizeof(mac),
	    sodium_base64_VARIANT_ORIGINAL);
}

int
webhook_verify(const uint8_t *key, size_t keylen, const char *id, const char *ts,
    const void *body, size_t len, const char *header)
{
	uint8_t mac[crypto_auth_hmacsha256_BYTES], got[crypto_auth_hmacsha256_BYTES + 4];
	const char *p = header;
	int wellformed = 0;

	webhook_mac(key, keylen, id, ts, body, len, mac);
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
