/*
 * What one SIP digest verification costs a worker, in ns of CPU: parsing
 * the Proxy-Authorization value, checking the stateless nonce (an
 * HMAC-SHA-256), computing and comparing the response (MD5 or SHA-256),
 * and the nonce-count replay check in the shared table; and what a
 * challenge costs to make. The peer, measured in the same run, is the
 * same MD5 response computed with libosip2's MD5 (the RSA reference code
 * tollgate already links), the way SIP stacks built on it compute it.
 *
 * Prints results; asserts nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <osipparser2/osip_md5.h>

#include "lib/clock.h"
#include "lib/md5.h"
#include "lib/sha256.h"
#include "shm/nonce.h"
#include "worker/digest.h"

#define N      100000
#define REPS   5 /* each figure is the best of REPS runs: the machine may be shared */
#define T0     1760000000ULL
#define REALM  "tollgate"
#define URI    "sip:+442071234567@gw.example.net"
#define METHOD "INVITE"
#define CNONCE "0a4f113b9c"

static const uint8_t secret[DIGEST_SECRET_LEN] = "bench-secret-bench-secret-bench!";
static volatile uint64_t sink; /* keeps results alive */
static uint32_t nc_base;       /* nonce counts keep rising across runs, so every run is accepted */

#define BEST(var, expr)                                                                                      \
	do {                                                                                                 \
		var = 1e300;                                                                                 \
		for (int rep_ = 0; rep_ < REPS; rep_++) {                                                    \
			double v_ = (expr);                                                                  \
			var = v_ < var ? v_ : var;                                                           \
		}                                                                                            \
	} while (0)

typedef struct fixture {
	digest_alg_t alg;
	char nonce[DIGEST_NONCE_LEN + 1];
	char ha1[DIGEST_HEX_MAX + 1];
	char header[1024];
	size_t header_len;
} fixture_t;

/* What a phone would send after a challenge. */
static void make_fixture(fixture_t *f, digest_alg_t alg)
{
	char resp[DIGEST_HEX_MAX + 1];

	f->alg = alg;
	digest_nonce_make(secret, T0, (uint64_t)alg, NULL, 0, f->nonce); /* a nonce each */
	digest_ha1(alg, "alice@example.com", REALM, "correct horse", f->ha1, sizeof(f->ha1));
	digest_response(alg, f->ha1, METHOD, URI, f->nonce, "00000001", CNONCE, "auth", resp, sizeof(resp));
	f->header_len =
	        (size_t)snprintf(f->header, sizeof(f->header),
	                         "Digest username=\"alice@example.com\", realm=\"" REALM "\", nonce=\"%s\", "
	                         "uri=\"" URI "\", response=\"%s\", algorithm=%s, cnonce=\"" CNONCE "\", "
	                         "qop=auth, nc=00000001",
	                         f->nonce, resp, digest_alg_name(alg));
}

static double ns_per(uint64_t t0, int n)
{
	return (double)(tg_now_ns() - t0) / n;
}

static double bench_parse(const fixture_t *f)
{
	digest_creds_t c;
	const char *reason;
	uint64_t t0 = tg_now_ns();

	for (int i = 0; i < N; i++)
		sink += (uint64_t)digest_parse(f->header, f->header_len, &c, &reason) + c.nc_value;
	return ns_per(t0, N);
}

static double bench_nonce_check(const fixture_t *f)
{
	uint64_t t0 = tg_now_ns();

	for (int i = 0; i < N; i++)
		sink += digest_nonce_check(secret, f->nonce, DIGEST_NONCE_LEN, T0 + 5, 300, NULL, 0, NULL);
	return ns_per(t0, N);
}

static double bench_verify(const fixture_t *f)
{
	digest_creds_t c;
	const char *reason;
	uint64_t t0;

	digest_parse(f->header, f->header_len, &c, &reason);
	t0 = tg_now_ns();
	for (int i = 0; i < N; i++)
		sink += (uint64_t)digest_verify(&c, METHOD, f->ha1);
	return ns_per(t0, N);
}

/* Everything a worker does for one request with credentials, but the user lookup. */
static double bench_whole(const fixture_t *f, shm_nonce_sh_t *sh, int *failures)
{
	digest_creds_t c;
	const char *reason;
	uint64_t t0 = tg_now_ns(), issued;

	for (int i = 0; i < N; i++) {
		int good = digest_parse(f->header, f->header_len, &c, &reason) == 0 &&
		           digest_nonce_check(secret, c.nonce, c.nonce_len, T0 + 5, 300, NULL, 0, &issued) ==
		                   DIGEST_NONCE_OK &&
		           digest_verify(&c, METHOD, f->ha1) &&
		           shm_nonce_check(
		                   sh, shm_nonce_key(sh, c.nonce, c.nonce_len, c.username, c.username_len),
		                   ++nc_base, 0, issued + 300, T0 + 5) == SHM_NONCE_OK;

		*failures += !good;
	}
	return ns_per(t0, N);
}

static double bench_replay_check(shm_nonce_sh_t *sh)
{
	uint64_t t0 = tg_now_ns();

	for (int i = 0; i < N; i++) {
		if (i % 4096 == 0)
			nc_base++;
		sink += shm_nonce_check(sh, 0x9e3779b97f4a7c15ULL * (uint64_t)(i % 4096 + 1), nc_base, 0,
		                        T0 + 300, T0 + 5);
	}
	return ns_per(t0, N);
}

static double bench_challenge(void)
{
	char nonce[DIGEST_NONCE_LEN + 1], a[256], b[256];
	uint64_t t0 = tg_now_ns();

	for (int i = 0; i < N; i++) {
		digest_nonce_make(secret, T0, (uint64_t)i, NULL, 0, nonce);
		sink += (uint64_t)digest_challenge(a, sizeof(a), REALM, nonce, 0, DIGEST_ALG_SHA256);
		sink += (uint64_t)digest_challenge(b, sizeof(b), REALM, nonce, 0, DIGEST_ALG_MD5);
	}
	return ns_per(t0, N);
}

/* ---- the peer: the same MD5 response with libosip2's MD5 ---- */

static void peer_hex(const unsigned char d[16], char out[33])
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < 16; i++) {
		out[2 * i] = digits[d[i] >> 4];
		out[2 * i + 1] = digits[d[i] & 15];
	}
	out[32] = '\0';
}

static void peer_feed(osip_MD5_CTX *ctx, const char *s, int colon)
{
	unsigned char buf[256];
	size_t n = strlen(s);

	memcpy(buf, s, n); /* osip_MD5Update takes a non-const pointer */
	if (colon)
		buf[n++] = ':';
	osip_MD5Update(ctx, buf, (unsigned int)n);
}

static int peer_verify(const digest_creds_t *c, const char *ha1, const char *response_hex)
{
	osip_MD5_CTX ctx;
	unsigned char d[16];
	char ha2[33], resp[33];

	osip_MD5Init(&ctx);
	peer_feed(&ctx, METHOD, 1);
	peer_feed(&ctx, c->uri, 0);
	osip_MD5Final(d, &ctx);
	peer_hex(d, ha2);
	osip_MD5Init(&ctx);
	peer_feed(&ctx, ha1, 1);
	peer_feed(&ctx, c->nonce, 1);
	peer_feed(&ctx, c->nc, 1);
	peer_feed(&ctx, c->cnonce, 1);
	peer_feed(&ctx, c->qop, 1);
	peer_feed(&ctx, ha2, 0);
	osip_MD5Final(d, &ctx);
	peer_hex(d, resp);
	return strcmp(resp, response_hex) == 0;
}

static double bench_peer(const fixture_t *f, int *agree)
{
	digest_creds_t c;
	const char *reason;
	char response_hex[33];
	uint64_t t0;

	digest_parse(f->header, f->header_len, &c, &reason);
	peer_hex(c.response, response_hex);
	*agree = peer_verify(&c, f->ha1, response_hex) == digest_verify(&c, METHOD, f->ha1);
	t0 = tg_now_ns();
	for (int i = 0; i < N; i++)
		sink += (uint64_t)peer_verify(&c, f->ha1, response_hex);
	return ns_per(t0, N);
}

/* Raw hash speed on 1 KiB, for scale, ns per byte: returns tollgate's MD5; *osip and *sha keep their best. */
static double bench_hashes(double *osip, double *sha)
{
	unsigned char buf[1024], d[32];
	uint64_t t0;
	osip_MD5_CTX ctx;
	const int n = N / 10;
	double md5, v;

	memset(buf, 'x', sizeof(buf));
	t0 = tg_now_ns();
	for (int i = 0; i < n; i++) {
		tg_md5(buf, sizeof(buf), d);
		sink += d[0];
	}
	md5 = ns_per(t0, n) / sizeof(buf);
	t0 = tg_now_ns();
	for (int i = 0; i < n; i++) {
		osip_MD5Init(&ctx);
		osip_MD5Update(&ctx, buf, sizeof(buf));
		osip_MD5Final(d, &ctx);
		sink += d[0];
	}
	v = ns_per(t0, n) / sizeof(buf);
	*osip = v < *osip ? v : *osip;
	t0 = tg_now_ns();
	for (int i = 0; i < n; i++) {
		tg_sha256(buf, sizeof(buf), d);
		sink += d[0];
	}
	v = ns_per(t0, n) / sizeof(buf);
	*sha = v < *sha ? v : *sha;
	return md5;
}

int main(void)
{
	const uint32_t cap = 1u << 16;
	shm_nonce_sh_t *sh = shm_nonce_init(aligned_alloc(64, shm_nonce_size(cap)), cap,
	                                    (const uint8_t *)"bench-seed-16byt");
	fixture_t f[2];
	double parse[2], nonce, verify[2], replay, whole[2], challenge, peer, md5_b, osip_b = 1e300,
	                                                                             sha_b = 1e300;
	int failures = 0, agree = 0;

	make_fixture(&f[0], DIGEST_ALG_MD5);
	make_fixture(&f[1], DIGEST_ALG_SHA256);
	for (int a = 0; a < 2; a++) {
		BEST(parse[a], bench_parse(&f[a]));
		BEST(verify[a], bench_verify(&f[a]));
		BEST(whole[a], bench_whole(&f[a], sh, &failures));
	}
	BEST(nonce, bench_nonce_check(&f[0]));
	BEST(replay, bench_replay_check(sh));
	BEST(challenge, bench_challenge());
	BEST(peer, bench_peer(&f[0], &agree));
	BEST(md5_b, bench_hashes(&osip_b, &sha_b));

	printf("digest verification, ns per request (best of %d runs of %d)\n\n", REPS, N);
	printf("%-44s %10s %10s\n", "step", "MD5", "SHA-256");
	printf("%-44s %10.0f %10.0f\n", "parse Proxy-Authorization", parse[0], parse[1]);
	printf("%-44s %10.0f %10s\n", "nonce check (HMAC-SHA-256)", nonce, "same");
	printf("%-44s %10.0f %10.0f\n", "response: compute and compare", verify[0], verify[1]);
	printf("%-44s %10.0f %10s\n", "replay check (shm table, 4096 live keys)", replay, "same");
	printf("%-44s %10.0f %10.0f\n", "whole: parse + nonce + response + replay", whole[0], whole[1]);
	printf("%-44s %10.0f %10s\n", "challenge: nonce + both header values", challenge, "");
	if (failures)
		printf("# the whole-path loop refused %d requests: its numbers are wrong\n", failures);
	printf("\npeer: the MD5 response with libosip2's MD5 (RFC 1321 reference code)\n");
	printf("%-44s %10.0f ns   (tollgate %.0f ns: ratio %.2f)%s\n", "response: compute and compare", peer,
	       verify[0], verify[0] / peer, agree ? "" : "  ** results disagree **");
	printf("%-44s %10.2f ns/B (libosip2 MD5 %.2f ns/B: ratio %.2f; SHA-256 %.2f ns/B)\n",
	       "hash speed, 1 KiB: MD5", md5_b, osip_b, md5_b / osip_b, sha_b);
	printf("\nwhole SHA-256 check costs %.2fx the MD5 one; one core checks ~%.0f MD5 or ~%.0f SHA-256 "
	       "requests per second\n",
	       whole[1] / whole[0], 1e9 / whole[0], 1e9 / whole[1]);
	free(sh);
	return 0;
}
