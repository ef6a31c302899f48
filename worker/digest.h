/*
 * SIP digest authentication (RFC 3261 22, RFC 7616, RFC 8760), as pure
 * functions: parse the credentials a request carries, compute and check
 * the response from a stored HA1, make and check stateless nonces, and
 * write the challenge. No allocation, no shared state, no I/O; the
 * nonce-count replay table is shm/nonce.h.
 *
 * The order a worker is meant to follow for a request with credentials:
 *   1. digest_parse() the Proxy-Authorization (Authorization for
 *      REGISTER) value whose realm is ours (a request may carry one per
 *      realm); refused: 403 (the reason names why), counted as a failure
 *      of the source address.
 *   2. digest_nonce_check(), and remember the answer.
 *   3. Look the user up (c->username as sent, or c->user and c->domain),
 *      digest_verify() against the stored HA1 for c->alg. Wrong: 403 and
 *      a failure, whatever the nonce was.
 *   4. Right, but the nonce STALE or BAD: challenge again with
 *      stale=true. RFC 7616 3.3 allows stale=true for any invalid nonce
 *      answered with a valid digest, and it tells the client to retry at
 *      once without asking its user; BAD with a valid digest is a nonce
 *      from before a restart or a change of secret, not an attack (an
 *      attacker who can compute a valid digest has the password).
 *   5. Right and OK: shm_nonce_check() with c->nc_value; only now, so
 *      that nobody without the password can advance or fill the replay
 *      table.
 *
 * Only qop=auth is accepted. tollgate always offers qop="auth", and the
 * RFC 2069 form without qop has no client nonce and no nonce count, so
 * nothing would stop a captured response from being replayed for as long
 * as its nonce lives. Algorithms: MD5 and SHA-256; their -sess variants,
 * SHA-512-256 and userhash are refused (never offered).
 */
#ifndef TG_DIGEST_H
#define TG_DIGEST_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of each value, unquoted, without its terminating NUL. Longer: refused. */
#define DIGEST_USERNAME_MAX 128
#define DIGEST_REALM_MAX    128
#define DIGEST_NONCE_MAX    128
#define DIGEST_URI_MAX      512
#define DIGEST_CNONCE_MAX   128
#define DIGEST_OPAQUE_MAX   128
#define DIGEST_NC_LEN       8  /* exactly 8 hex digits */
#define DIGEST_HASH_MAX     32 /* bytes of the largest digest (SHA-256) */
#define DIGEST_HEX_MAX      64 /* hex characters of the largest digest */

typedef enum digest_alg {
	DIGEST_ALG_MD5 = 1,
	DIGEST_ALG_SHA256 = 2,
} digest_alg_t;

/* "MD5" or "SHA-256", as written in headers. */
const char *digest_alg_name(digest_alg_t alg);
/* Bytes of a digest of alg: 16 or 32; 0 for an unknown value. */
size_t digest_alg_len(digest_alg_t alg);

/*
 * What digest_parse() found. Every string is unquoted (escapes removed),
 * NUL-terminated and exactly as sent otherwise: the response is computed
 * over these bytes. A copy by value stays valid (no pointers inside).
 */
typedef struct digest_creds {
	digest_alg_t alg;                       /* MD5 when the header names none (RFC 7616 3.4) */
	char username[DIGEST_USERNAME_MAX + 1]; /* as sent: "alice" or "alice@example.com" */
	char user[DIGEST_USERNAME_MAX + 1];     /* before the last '@', or the whole username */
	char domain[DIGEST_USERNAME_MAX + 1];   /* after the last '@'; "" for a plain username */
	char realm[DIGEST_REALM_MAX + 1];
	char nonce[DIGEST_NONCE_MAX + 1];
	char uri[DIGEST_URI_MAX + 1];
	char cnonce[DIGEST_CNONCE_MAX + 1];
	char opaque[DIGEST_OPAQUE_MAX + 1]; /* "" when absent */
	char qop[8];                        /* "auth" in the case it was sent */
	char nc[DIGEST_NC_LEN + 1];         /* as sent, 8 hex digits */
	uint32_t nc_value;                  /* nc as a number, >= 1 */
	uint8_t response[DIGEST_HASH_MAX];  /* the response, decoded from hex */
	size_t response_len;                /* bytes: 16 (MD5) or 32 (SHA-256) */
	size_t username_len, user_len, domain_len, realm_len, nonce_len, uri_len, cnonce_len, opaque_len;
	int has_opaque;     /* 0/1 */
	char bad_param[24]; /* after a refusal: the parameter concerned, or "" */
} digest_creds_t;

/*
 * Parse one credentials value: "Digest username=..., realm=..., ...".
 * Scheme and parameter names are case-insensitive; spaces, tabs and line
 * folds around '=' and ',' and empty list elements are skipped; every
 * value may be a quoted-string (with \-escapes) or a token, so the
 * strictly unquoted ones (algorithm, qop, nc) are also taken in quotes,
 * which some phones send. Unknown parameters are skipped (RFC 7616 3.4).
 * Needed: username, realm, nonce, uri, response, qop=auth, nc, cnonce.
 *
 * Returns 0, or -1 with *reason one of these static strings (stable, for
 * logs) and c->bad_param naming the parameter when there is one:
 *   not_digest             another scheme, or nothing
 *   syntax                 a missing '=', an unterminated quote, a control character...
 *   duplicate_param        a known parameter twice
 *   value_too_long         a value longer than its DIGEST_*_MAX
 *   missing_param          a needed parameter absent
 *   empty_value            realm, nonce, uri or cnonce given as ""
 *   bad_username           empty, or '@' with nothing on one side
 *   unsupported_algorithm  anything but MD5 and SHA-256
 *   qop_required           no qop (RFC 2069 style)
 *   unsupported_qop        a qop other than auth (auth-int)
 *   bad_nc                 nc not 8 hex digits, or zero
 *   bad_response           response not hex of the algorithm's length
 *   userhash_unsupported   userhash=true, or username* (RFC 7616 3.4.4)
 */
int digest_parse(const char *value, size_t len, digest_creds_t *c, const char **reason);

/*
 * The expected response, RFC 7616 3.4.1 with qop=auth:
 *   H(ha1 ":" nonce ":" nc ":" cnonce ":" qop ":" H(method ":" uri))
 * ha1_hex is the stored H(username ":" realm ":" password) in hex (either
 * case; lowercase is what gets hashed), 32 characters for MD5 and 64 for
 * SHA-256. qop must be "auth" (any case). Writes lowercase hex and a NUL
 * into out (outlen >= 2 * digest_alg_len(alg) + 1). Returns the number of
 * hex characters, or -1 when ha1_hex, qop or outlen is wrong.
 */
int digest_response(digest_alg_t alg, const char *ha1_hex, const char *method, const char *uri,
                    const char *nonce, const char *nc, const char *cnonce, const char *qop, char *out,
                    size_t outlen);

/*
 * 1 when the response in c is right for this HA1 (hex, of c->alg) and
 * the request's method; 0 when it is not or ha1_hex is malformed. The
 * comparison takes the same time wherever the first difference is.
 */
int digest_verify(const digest_creds_t *c, const char *method, const char *ha1_hex);

/* H(username ":" realm ":" password) in lowercase hex, as the database stores it. Returns length or -1. */
int digest_ha1(digest_alg_t alg, const char *username, const char *realm, const char *password, char *out,
               size_t outlen);

/* 1 when the n bytes at a and b are equal; the time taken does not depend on where they differ. */
int digest_equal(const void *a, const void *b, size_t n);

/*
 * Stateless nonces: any worker (and any node configured with the same
 * secret) verifies any nonce without shared state.
 *
 *   nonce = base64url(version 1 | issued_s 8 | salt 8 | mac 16), 44 chars
 *   mac   = HMAC-SHA-256(secret, label | version | issued_s | salt | bind)[0..16)
 *
 * salt makes nonces unique when two challenges share a second (the
 * replay table keys on the nonce): a per-worker counter with the worker
 * index in the top bits, or random. It need not be secret.
 *
 * bind is optional (bind_len 0): bytes the nonce is tied to, which the
 * check must be given again (a source address, a realm). tollgate binds
 * nothing, deliberately. A nonce tied to the source address fails for
 * customers whose requests leave through a NAT pool, a carrier-grade NAT
 * without paired pooling, an SBC cluster or a phone that changes network:
 * the answer to a challenge, or the next call reusing the nonce, comes
 * from another address, gets a fresh challenge without stale=true, and
 * many devices then give up as if the password were wrong (and the
 * failures would count toward banning the customer's own NAT pool). What
 * binding would buy is little: a captured response is already useless
 * to a replayer because the nonce count must increase (shm/nonce.h) and
 * the response covers nc, cnonce, method and URI; an attacker who can
 * sniff and spoof the source can defeat the binding anyway.
 *
 * now_s is wall-clock seconds (CLOCK_REALTIME) so that nodes sharing a
 * secret agree and a restart does not invalidate outstanding nonces.
 */
#define DIGEST_SECRET_LEN 32
#define DIGEST_NONCE_LEN  44 /* characters, without the NUL */
#define DIGEST_NONCE_SKEW 60 /* seconds a nonce may be dated in the future and still count as ours */

typedef enum digest_nonce_status {
	DIGEST_NONCE_OK,
	DIGEST_NONCE_STALE, /* genuine, but older than ttl_s (or dated too far ahead): challenge with
	                       stale=true */
	DIGEST_NONCE_BAD,   /* forged, malformed, truncated, another secret or another bind */
} digest_nonce_status_t;

void digest_nonce_make(const uint8_t secret[DIGEST_SECRET_LEN], uint64_t now_s, uint64_t salt,
                       const void *bind, size_t bind_len, char out[DIGEST_NONCE_LEN + 1]);
/*
 * *issued_s (may be NULL) gets the nonce's timestamp for OK and STALE:
 * the nonce stops being OK at issued_s + ttl_s, which is the expiry to
 * give its replay-table entry.
 */
digest_nonce_status_t digest_nonce_check(const uint8_t secret[DIGEST_SECRET_LEN], const char *nonce,
                                         size_t len, uint64_t now_s, uint32_t ttl_s, const void *bind,
                                         size_t bind_len, uint64_t *issued_s);
const char *digest_nonce_status_name(digest_nonce_status_t s);

/*
 * The value of a WWW-Authenticate (401) or Proxy-Authenticate (407)
 * header: Digest realm="...", nonce="...", algorithm=..., qop="auth"
 * and stale=true when asked. The caller sends two such headers, SHA-256
 * first then MD5 (RFC 8760: most preferred first; a client that knows
 * only MD5 skips the first), with the same nonce. No opaque: the nonce carries all the server needs.
 * Returns the length written (NUL not counted), or -1 when buf is too
 * small or realm or nonce holds a control character.
 */
int digest_challenge(char *buf, size_t len, const char *realm, const char *nonce, int stale,
                     digest_alg_t alg);

#endif
