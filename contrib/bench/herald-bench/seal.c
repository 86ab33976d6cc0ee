/*
 * End-to-end sealed payloads as a device makes and opens them (SPEC §1):
 * XChaCha20-Poly1305 with the header and the topic as additional data.
 */
#include <string.h>

#include <sodium.h>

#include "bench.h"

static size_t
seal_ad(uint8_t *ad, size_t cap, const uint8_t hdr[10], const char *topic)
{
	size_t tl = strlen(topic);

	if (10 + tl > cap)
		return 0;
	memcpy(ad, hdr, 10);
	memcpy(ad + 10, topic, tl);
	return 10 + tl;
}

int
seal_box(const uint8_t key[32], uint8_t keyver, uint64_t counter, const char *topic,
    const void *pt, size_t ptlen, uint8_t *out, size_t outcap)
{
	uint8_t ad[10 + 512];
	unsigned long long clen;
	size_t adlen;

	if (outcap < ptlen + SEAL_OVERHEAD)
		return -1;
	out[0] = 0x01;
	out[1] = keyver;
	for (int i = 0; i < 8; i++)
		out[2 + i] = (uint8_t)(counter >> (8 * (7 - i)));
	randombytes_buf(out + 10, 24);
	if ((adlen = seal_ad(ad, sizeof(ad), out, topic)) == 0)
		return -1;
	crypto_aead_xchacha20poly1305_ietf_encrypt(out + SEAL_HDR, &clen, pt, ptlen,
	    ad, adlen, NULL, out + 10, key);
	return (int)(SEAL_HDR + clen);
}

int
seal_open(const uint8_t key[32], const char *topic, const uint8_t *in, size_t inlen,
    uint8_t *out, size_t outcap, uint8_t *keyver, uint64_t *counter)
{
	uint8_t ad[10 + 512];
	unsigned long long plen;
	size_t adlen;

	if (inlen < SEAL_OVERHEAD || in[0] != 0x01 || outcap < inlen - SEAL_OVERHEAD)
		return -1;
	if ((adlen = seal_ad(ad, sizeof(ad), in, topic)) == 0)
		return -1;
	if (crypto_aead_xchacha20poly1305_ietf_decrypt(out, &plen, NULL, in + SEAL_HDR,
	    inlen - SEAL_HDR, ad, adlen, in + 10, key) != 0)
		return -1;
	*keyver = in[1];
	*counter = 0;
	for (int i = 0; i < 8; i++)
		*counter = (*counter << 8) | in[2 + i];
	return (int)plen;
}
