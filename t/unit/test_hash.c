/*
 * SHA-256, MD5 and HMAC-SHA-256 against their published vectors: FIPS
 * 180-4 / NIST examples for SHA-256, the RFC 1321 test suite for MD5,
 * RFC 4231 cases 1-4, 6 and 7 for HMAC. Then the padding boundaries
 * (55, 56, 63, 64, 65, 119, 120 bytes, where a second length block is or
 * is not needed) and incremental feeding in every split, which one-shot
 * vectors alone would not catch.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/md5.h"
#include "lib/sha256.h"
#include "t/unit/tap.h"

static char hexbuf[2 * TG_SHA256_LEN + 1];

static const char *hex(const uint8_t *p, size_t n)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		hexbuf[2 * i] = digits[p[i] >> 4];
		hexbuf[2 * i + 1] = digits[p[i] & 15];
	}
	hexbuf[2 * n] = '\0';
	return hexbuf;
}

static const char *sha256_hex(const void *p, size_t n)
{
	uint8_t d[TG_SHA256_LEN];

	tg_sha256(p, n, d);
	return hex(d, sizeof(d));
}

static const char *md5_hex(const void *p, size_t n)
{
	uint8_t d[TG_MD5_LEN];

	tg_md5(p, n, d);
	return hex(d, sizeof(d));
}

static const char *hmac_hex(const void *k, size_t klen, const void *p, size_t n)
{
	uint8_t d[TG_SHA256_LEN];

	tg_hmac_sha256(k, klen, p, n, d);
	return hex(d, sizeof(d));
}

static void test_sha256_vectors(void)
{
	static const char m448[] = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	tg_sha256_t c;
	uint8_t d[TG_SHA256_LEN];
	char block[1000];

	is_str(sha256_hex("abc", 3), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
	       "SHA-256 \"abc\" (FIPS 180-4 example, one block)");
	is_str(sha256_hex(m448, strlen(m448)),
	       "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
	       "SHA-256 448-bit message (two blocks)");
	is_str(sha256_hex("", 0), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
	       "SHA-256 empty string");
	memset(block, 'a', sizeof(block));
	tg_sha256_init(&c);
	for (int i = 0; i < 1000; i++)
		tg_sha256_update(&c, block, sizeof(block));
	tg_sha256_final(&c, d);
	is_str(hex(d, sizeof(d)), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
	       "SHA-256 one million 'a' fed 1000 bytes at a time");
}

static void test_md5_vectors(void)
{
	static const struct {
		const char *msg, *md5;
	} v[] = {
	        {"", "d41d8cd98f00b204e9800998ecf8427e"},
	        {"a", "0cc175b9c0f1b6a831c399e269772661"},
	        {"abc", "900150983cd24fb0d6963f7d28e17f72"},
	        {"message digest", "f96b697d7cb7938d525a2f31aaf161d0"},
	        {"abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b"},
	        {"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
	         "d174ab98d277d9f5a5611c2c9f419d9f"},
	        {"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
	         "57edf4a22be3c955ac49da2e2107b67a"},
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
		is_str(md5_hex(v[i].msg, strlen(v[i].msg)), v[i].md5, "MD5 RFC 1321 suite: \"%.20s%s\"",
		       v[i].msg, strlen(v[i].msg) > 20 ? "..." : "");
}

static void test_hmac_vectors(void)
{
	static const char t7[] =
	        "This is a test using a larger than block-size key and a larger than block-size "
	        "data. The key needs to be hashed before being used by the HMAC algorithm.";
	static const char t6[] = "Test Using Larger Than Block-Size Key - Hash Key First";
	uint8_t key[131], data[50];
	tg_hmac_sha256_t c, copy;
	uint8_t d[TG_SHA256_LEN];

	memset(key, 0x0b, 20);
	is_str(hmac_hex(key, 20, "Hi There", 8),
	       "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
	       "HMAC-SHA-256 RFC 4231 test case 1");
	is_str(hmac_hex("Jefe", 4, "what do ya want for nothing?", 28),
	       "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
	       "HMAC-SHA-256 RFC 4231 test case 2 (key shorter than the output)");
	memset(key, 0xaa, 20);
	memset(data, 0xdd, 50);
	is_str(hmac_hex(key, 20, data, 50),
	       "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
	       "HMAC-SHA-256 RFC 4231 test case 3");
	for (int i = 0; i < 25; i++)
		key[i] = (uint8_t)(i + 1);
	memset(data, 0xcd, 50);
	is_str(hmac_hex(key, 25, data, 50),
	       "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
	       "HMAC-SHA-256 RFC 4231 test case 4");
	memset(key, 0xaa, 131);
	is_str(hmac_hex(key, 131, t6, strlen(t6)),
	       "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
	       "HMAC-SHA-256 RFC 4231 test case 6 (key longer than a block is hashed first)");
	is_str(hmac_hex(key, 131, t7, strlen(t7)),
	       "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
	       "HMAC-SHA-256 RFC 4231 test case 7 (key and data longer than a block)");

	/* a keyed context copied by value serves two messages (what the nonce code relies on) */
	tg_hmac_sha256_init(&c, key, 131);
	copy = c;
	tg_hmac_sha256_update(&c, t7, 40);
	tg_hmac_sha256_update(&c, t7 + 40, strlen(t7) - 40);
	tg_hmac_sha256_final(&c, d);
	is_str(hex(d, sizeof(d)), "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
	       "HMAC-SHA-256 fed in two parts");
	tg_hmac_sha256_update(&copy, t6, strlen(t6));
	tg_hmac_sha256_final(&copy, d);
	is_str(hex(d, sizeof(d)), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
	       "HMAC-SHA-256 from a copy of a keyed context");
}

/* Lengths around the padding boundary: 'x' repeated n times. */
static void test_boundaries(void)
{
	static const struct {
		size_t n;
		const char *sha256, *md5;
	} v[] = {
	        {55, "d5e285683cd4efc02d021a5c62014694958901005d6f71e89e0989fac77e4072",
	         "04364420e25c512fd958a70738aa8f72"},
	        {56, "04c26261370ee7541549d16dee320c723e3fd14671e66a099afe0a377c16888e",
	         "668a72d5ba17f08e62dabcafad6db14b"},
	        {63, "75220b47218278e656f2013bb8f0c455a25eaf01e86c64924e9d48d89776d6f2",
	         "7dc2ca208106a2f703567bdff99d8981"},
	        {64, "7ce100971f64e7001e8fe5a51973ecdfe1ced42befe7ee8d5fd6219506b5393c",
	         "c1bb4f81d892b2d57947682aeb252456"},
	        {65, "9537c5fdf120482f7d58d25e9ed583f52c02b4e304ea814db1633ad565aed7e9",
	         "1bc932052302d074bdec39795fe00cf6"},
	        {119, "000b48d4edf0fa7bee3c6236ecd2785baa5db4eeb8bb54341b029e0d9fa5fb0c",
	         "ab347a5f68c8a443cfcddc633f12c24f"},
	        {120, "13f05a0b594787f5ecd315edc96141bd3243203d1b7d4f0836f37308b276ba98",
	         "fb98667f98096de92620b64f46e1c5b5"},
	};
	char x[128];

	memset(x, 'x', sizeof(x));
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		is_str(sha256_hex(x, v[i].n), v[i].sha256, "SHA-256 of %zu bytes (padding boundary)", v[i].n);
		is_str(md5_hex(x, v[i].n), v[i].md5, "MD5 of %zu bytes (padding boundary)", v[i].n);
	}
}

/* Every split of a 150-byte message into three parts gives the one-shot digest. */
static void test_splits(void)
{
	uint8_t msg[150], one_sha[TG_SHA256_LEN], one_md5[TG_MD5_LEN], d_sha[TG_SHA256_LEN],
	        d_md5[TG_MD5_LEN];
	int bad_sha = 0, bad_md5 = 0;

	for (size_t i = 0; i < sizeof(msg); i++)
		msg[i] = (uint8_t)(i * 7 + 3);
	tg_sha256(msg, sizeof(msg), one_sha);
	tg_md5(msg, sizeof(msg), one_md5);
	for (size_t a = 0; a <= sizeof(msg); a += 3) {
		for (size_t b = a; b <= sizeof(msg); b += 5) {
			tg_sha256_t s;
			tg_md5_t m;

			tg_sha256_init(&s);
			tg_sha256_update(&s, msg, a);
			tg_sha256_update(&s, msg + a, b - a);
			tg_sha256_update(&s, msg + b, sizeof(msg) - b);
			tg_sha256_final(&s, d_sha);
			bad_sha += memcmp(d_sha, one_sha, sizeof(d_sha)) != 0;
			tg_md5_init(&m);
			tg_md5_update(&m, msg, a);
			tg_md5_update(&m, msg + a, b - a);
			tg_md5_update(&m, msg + b, sizeof(msg) - b);
			tg_md5_final(&m, d_md5);
			bad_md5 += memcmp(d_md5, one_md5, sizeof(d_md5)) != 0;
		}
	}
	is_int(bad_sha, 0, "SHA-256: every three-way split of a message gives the one-shot digest");
	is_int(bad_md5, 0, "MD5: every three-way split of a message gives the one-shot digest");
}

int main(void)
{
	test_sha256_vectors();
	test_md5_vectors();
	test_hmac_vectors();
	test_boundaries();
	test_splits();
	return done_testing();
}
