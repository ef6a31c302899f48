/*
 * MD5, written from RFC 1321 section 3: the four auxiliary functions, the
 * sine table T, the per-round shifts and word orders, little-endian words
 * and length. One loop per round, one line per round's function and word
 * order, short enough to check against the RFC line by line. Owns
 * nothing shared.
 */
#include <string.h>

#include "lib/md5.h"

#define ROTL(x, n) (((x) << (n)) | ((x) >> (32 - (n))))

/* T[i] = floor(4294967296 * abs(sin(i + 1))), section 3.4. */
static const uint32_t T[64] = {
        0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
        0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
        0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
        0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
        0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
        0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
        0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
        0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
};

/* Left rotations: four per round, repeating within the round. */
static const uint8_t S[4][4] = {{7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};

static uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void store_le32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
	p[2] = (uint8_t)(v >> 16);
	p[3] = (uint8_t)(v >> 24);
}

/* One step of section 3.4: a = b + ((a + f + X[k] + T[i]) <<< s), then the words rotate. */
#define STEP(f, g, i)                                                                                        \
	do {                                                                                                 \
		uint32_t t_ = a + (f) + x[(g)] + T[(i)];                                                     \
		a = d;                                                                                       \
		d = c;                                                                                       \
		c = b;                                                                                       \
		b = b + ROTL(t_, S[(i) / 16][(i) % 4]);                                                      \
	} while (0)

/*
 * Section 3.4: one 16-word block; each round has its function F, G, H, I
 * and its word order. Unrolled, the word indexes, T and the shifts become
 * constants: as fast as the RFC's own fully written-out code.
 */
static void compress(uint32_t s[4], const uint8_t *block)
{
	uint32_t x[16], a = s[0], b = s[1], c = s[2], d = s[3];
	unsigned i;

	for (i = 0; i < 16; i++)
		x[i] = load_le32(block + 4 * i);
#pragma GCC unroll 16
	for (i = 0; i < 16; i++)
		STEP((b & c) | (~b & d), i, i);
#pragma GCC unroll 16
	for (; i < 32; i++)
		STEP((b & d) | (c & ~d), (5 * i + 1) % 16, i);
#pragma GCC unroll 16
	for (; i < 48; i++)
		STEP(b ^ c ^ d, (3 * i + 5) % 16, i);
#pragma GCC unroll 16
	for (; i < 64; i++)
		STEP(c ^ (b | ~d), (7 * i) % 16, i);
	s[0] += a, s[1] += b, s[2] += c, s[3] += d;
}

void tg_md5_init(tg_md5_t *c)
{
	/* Section 3.3: words A, B, C, D, low-order bytes first */
	c->s[0] = 0x67452301;
	c->s[1] = 0xefcdab89;
	c->s[2] = 0x98badcfe;
	c->s[3] = 0x10325476;
	c->len = 0;
	c->nbuf = 0;
}

void tg_md5_update(tg_md5_t *c, const void *data, size_t len)
{
	const uint8_t *p = data;

	c->len += len;
	if (c->nbuf) {
		size_t take = TG_MD5_BLOCK - c->nbuf;

		if (take > len)
			take = len;
		memcpy(c->buf + c->nbuf, p, take);
		c->nbuf += take;
		p += take;
		len -= take;
		if (c->nbuf < TG_MD5_BLOCK)
			return;
		compress(c->s, c->buf);
		c->nbuf = 0;
	}
	for (; len >= TG_MD5_BLOCK; p += TG_MD5_BLOCK, len -= TG_MD5_BLOCK)
		compress(c->s, p);
	memcpy(c->buf, p, len);
	c->nbuf = len;
}

/* Sections 3.1 and 3.2: a 1 bit, zeros to 448 mod 512, the bit length as 64 bits, low word first. */
void tg_md5_final(tg_md5_t *c, uint8_t out[TG_MD5_LEN])
{
	uint64_t bits = c->len * 8;

	c->buf[c->nbuf++] = 0x80;
	if (c->nbuf > TG_MD5_BLOCK - 8) {
		memset(c->buf + c->nbuf, 0, TG_MD5_BLOCK - c->nbuf);
		compress(c->s, c->buf);
		c->nbuf = 0;
	}
	memset(c->buf + c->nbuf, 0, TG_MD5_BLOCK - 8 - c->nbuf);
	store_le32(c->buf + 56, (uint32_t)bits);
	store_le32(c->buf + 60, (uint32_t)(bits >> 32));
	compress(c->s, c->buf);
	for (int i = 0; i < 4; i++)
		store_le32(out + 4 * i, c->s[i]);
}

void tg_md5(const void *data, size_t len, uint8_t out[TG_MD5_LEN])
{
	tg_md5_t c;

	tg_md5_init(&c);
	tg_md5_update(&c, data, len);
	tg_md5_final(&c, out);
}
