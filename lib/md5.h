/*
 * MD5 (RFC 1321), for SIP digest authentication with algorithm=MD5, which
 * nearly every SIP device still uses (RFC 2617, RFC 7616). Not for
 * anything that needs collision resistance. Incremental and one-shot.
 */
#ifndef TG_MD5_H
#define TG_MD5_H

#include <stddef.h>
#include <stdint.h>

#define TG_MD5_LEN   16 /* bytes of a digest */
#define TG_MD5_BLOCK 64 /* bytes of a message block */

typedef struct tg_md5 {
	uint32_t s[4];             /* A, B, C, D */
	uint64_t len;              /* bytes hashed so far */
	uint8_t buf[TG_MD5_BLOCK]; /* a partial block */
	size_t nbuf;               /* bytes in buf, < TG_MD5_BLOCK */
} tg_md5_t;

void tg_md5_init(tg_md5_t *c);
void tg_md5_update(tg_md5_t *c, const void *data, size_t len);
/* Writes the digest; c must be initialised again before reuse. */
void tg_md5_final(tg_md5_t *c, uint8_t out[TG_MD5_LEN]);
void tg_md5(const void *data, size_t len, uint8_t out[TG_MD5_LEN]);

#endif
