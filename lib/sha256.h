/*
 * SHA-256 (FIPS 180-4) and HMAC-SHA-256 (RFC 2104), for SIP digest
 * authentication with algorithm=SHA-256 (RFC 7616, RFC 8760) and for the
 * stateless digest nonce. Incremental and one-shot; no allocation.
 */
#ifndef TG_SHA256_H
#define TG_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define TG_SHA256_LEN   32 /* bytes of a digest */
#define TG_SHA256_BLOCK 64 /* bytes of a message block */

typedef struct tg_sha256 {
	uint32_t h[8];                /* chaining value */
	uint64_t len;                 /* bytes hashed so far */
	uint8_t buf[TG_SHA256_BLOCK]; /* a partial block */
	size_t nbuf;                  /* bytes in buf, < TG_SHA256_BLOCK */
} tg_sha256_t;

void tg_sha256_init(tg_sha256_t *c);
void tg_sha256_update(tg_sha256_t *c, const void *data, size_t len);
/* Writes the digest; c must be initialised again before reuse. */
void tg_sha256_final(tg_sha256_t *c, uint8_t out[TG_SHA256_LEN]);
void tg_sha256(const void *data, size_t len, uint8_t out[TG_SHA256_LEN]);

/*
 * HMAC-SHA-256. A context keyed once may be copied by value and each copy
 * fed a different message: the key schedule is then paid once.
 */
typedef struct tg_hmac_sha256 {
	tg_sha256_t inner; /* already fed key ^ ipad */
	tg_sha256_t outer; /* already fed key ^ opad */
} tg_hmac_sha256_t;

void tg_hmac_sha256_init(tg_hmac_sha256_t *c, const void *key, size_t keylen);
void tg_hmac_sha256_update(tg_hmac_sha256_t *c, const void *data, size_t len);
void tg_hmac_sha256_final(tg_hmac_sha256_t *c, uint8_t out[TG_SHA256_LEN]);
void tg_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[TG_SHA256_LEN]);

#endif
