/*
 * SHA-256, written from FIPS 180-4 sections 4.1.2, 4.2.2, 5.1.1, 5.3.3
 * and 6.2, and HMAC from RFC 2104. Portable C, no tables beyond K; a SIP
 * digest check hashes a few hundred bytes, so clarity wins over the last
 * cycle. Owns nothing shared; touches no global state.
 */
#include <string.h>

#include "lib/sha256.h"

#define ROTR(x, n)   (((x) >> (n)) | ((x) << (32 - (n))))
#define CH(x, y, z)  (((x) & (y)) ^ (~(x) & (z)))
#define MAJ(x, y, z) (((x) & (y)) ^ ((x) & (z)) ^ ((y) & (z)))
#define BSIG0(x)     (ROTR(x, 2) ^ ROTR(x, 13) ^ ROTR(x, 22))
#define BSIG1(x)     (ROTR(x, 6) ^ ROTR(x, 11) ^ ROTR(x, 25))
#define SSIG0(x)     (ROTR(x, 7) ^ ROTR(x, 18) ^ ((x) >> 3))
#define SSIG1(x)     (ROTR(x, 17) ^ ROTR(x, 19) ^ ((x) >> 10))

/* The first 32 bits of the fractional parts of the cube roots of the first 64 primes (4.2.2). */
static const uint32_t K[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t load_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static void store_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* 6.2.2: one 512-bit block into the chaining value. */
static void compress(uint32_t h[8], const uint8_t *block)
{
	uint32_t w[64], a, b, c, d, e, f, g, k, t1, t2;

	for (int t = 0; t < 16; t++)
		w[t] = load_be32(block + 4 * t);
	for (int t = 16; t < 64; t++)
		w[t] = SSIG1(w[t - 2]) + w[t - 7] + SSIG0(w[t - 15]) + w[t - 16];
	a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
	for (int t = 0; t < 64; t++) {
		t1 = k + BSIG1(e) + CH(e, f, g) + K[t] + w[t];
		t2 = BSIG0(a) + MAJ(a, b, c);
		k = g;
		g = f;
		f = e;
		e = d + t1;
		d = c;
		c = b;
		b = a;
		a = t1 + t2;
	}
	h[0] += a, h[1] += b, h[2] += c, h[3] += d, h[4] += e, h[5] += f, h[6] += g, h[7] += k;
}

void tg_sha256_init(tg_sha256_t *c)
{
	/* 5.3.3: the first 32 bits of the fractional parts of the square roots of the first 8 primes */
	static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
	                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};

	memcpy(c->h, h0, sizeof(h0));
	c->len = 0;
	c->nbuf = 0;
}

void tg_sha256_update(tg_sha256_t *c, const void *data, size_t len)
{
	const uint8_t *p = data;

	c->len += len;
	if (c->nbuf) {
		size_t take = TG_SHA256_BLOCK - c->nbuf;

		if (take > len)
			take = len;
		memcpy(c->buf + c->nbuf, p, take);
		c->nbuf += take;
		p += take;
		len -= take;
		if (c->nbuf < TG_SHA256_BLOCK)
			return;
		compress(c->h, c->buf);
		c->nbuf = 0;
	}
	for (; len >= TG_SHA256_BLOCK; p += TG_SHA256_BLOCK, len -= TG_SHA256_BLOCK)
		compress(c->h, p);
	memcpy(c->buf, p, len);
	c->nbuf = len;
}

/* 5.1.1: a 1 bit, zeros up to 448 mod 512, then the length in bits as a 64-bit big-endian number. */
void tg_sha256_final(tg_sha256_t *c, uint8_t out[TG_SHA256_LEN])
{
	uint64_t bits = c->len * 8;

	c->buf[c->nbuf++] = 0x80;
	if (c->nbuf > TG_SHA256_BLOCK - 8) {
		memset(c->buf + c->nbuf, 0, TG_SHA256_BLOCK - c->nbuf);
		compress(c->h, c->buf);
		c->nbuf = 0;
	}
	memset(c->buf + c->nbuf, 0, TG_SHA256_BLOCK - 8 - c->nbuf);
	store_be32(c->buf + 56, (uint32_t)(bits >> 32));
	store_be32(c->buf + 60, (uint32_t)bits);
	compress(c->h, c->buf);
	for (int i = 0; i < 8; i++)
		store_be32(out + 4 * i, c->h[i]);
}

void tg_sha256(const void *data, size_t len, uint8_t out[TG_SHA256_LEN])
{
	tg_sha256_t c;

	tg_sha256_init(&c);
	tg_sha256_update(&c, data, len);
	tg_sha256_final(&c, out);
}

/* RFC 2104 section 2: a key longer than a block is hashed first; shorter keys are zero-padded. */
void tg_hmac_sha256_init(tg_hmac_sha256_t *c, const void *key, size_t keylen)
{
	uint8_t k[TG_SHA256_BLOCK] = {0}, pad[TG_SHA256_BLOCK];

	if (keylen > TG_SHA256_BLOCK)
		tg_sha256(key, keylen, k);
	else if (keylen)
		memcpy(k, key, keylen);
	for (int i = 0; i < TG_SHA256_BLOCK; i++)
		pad[i] = k[i] ^ 0x36;
	tg_sha256_init(&c->inner);
	tg_sha256_update(&c->inner, pad, sizeof(pad));
	for (int i = 0; i < TG_SHA256_BLOCK; i++)
		pad[i] = k[i] ^ 0x5c;
	tg_sha256_init(&c->outer);
	tg_sha256_update(&c->outer, pad, sizeof(pad));
	explicit_bzero(k, sizeof(k));
	explicit_bzero(pad, sizeof(pad));
}

void tg_hmac_sha256_update(tg_hmac_sha256_t *c, const void *data, size_t len)
{
	tg_sha256_update(&c->inner, data, len);
}

void tg_hmac_sha256_final(tg_hmac_sha256_t *c, uint8_t out[TG_SHA256_LEN])
{
	uint8_t ih[TG_SHA256_LEN];

	tg_sha256_final(&c->inner, ih);
	tg_sha256_update(&c->outer, ih, sizeof(ih));
	tg_sha256_final(&c->outer, out);
}

void tg_hmac_sha256(const void *key, size_t keylen, const void *data, size_t len, uint8_t out[TG_SHA256_LEN])
{
	tg_hmac_sha256_t c;

	tg_hmac_sha256_init(&c, key, keylen);
	tg_hmac_sha256_update(&c, data, len);
	tg_hmac_sha256_final(&c, out);
}
