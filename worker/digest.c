/*
 * SIP digest authentication as pure functions: the credentials parser,
 * the response computation (RFC 7616 3.4.1, qop=auth), HMAC-signed
 * stateless nonces and the challenge text. Owns no state and touches
 * nothing shared; the nonce-count replay table is shm/nonce.c, user
 * lookup is the caller's. Every buffer is fixed-size: a hostile header
 * is refused with a reason, never allocated for.
 */
#include <string.h>
#include <strings.h>

#include "lib/md5.h"
#include "lib/sha256.h"
#include "worker/digest.h"

/* ---- hashing either algorithm ---- */

typedef struct hash_ctx {
	digest_alg_t alg;
	union {
		tg_md5_t md5;
		tg_sha256_t sha256;
	} u;
} hash_ctx_t;

const char *digest_alg_name(digest_alg_t alg)
{
	return alg == DIGEST_ALG_SHA256 ? "SHA-256" : alg == DIGEST_ALG_MD5 ? "MD5" : "unknown";
}

size_t digest_alg_len(digest_alg_t alg)
{
	return alg == DIGEST_ALG_SHA256 ? TG_SHA256_LEN : alg == DIGEST_ALG_MD5 ? TG_MD5_LEN : 0;
}

static void h_init(hash_ctx_t *h, digest_alg_t alg)
{
	h->alg = alg;
	if (alg == DIGEST_ALG_SHA256)
		tg_sha256_init(&h->u.sha256);
	else
		tg_md5_init(&h->u.md5);
}

static void h_update(hash_ctx_t *h, const void *p, size_t n)
{
	if (h->alg == DIGEST_ALG_SHA256)
		tg_sha256_update(&h->u.sha256, p, n);
	else
		tg_md5_update(&h->u.md5, p, n);
}

/* Feeds s, then ':' unless s is the last part. */
static void h_part(hash_ctx_t *h, const char *s, int last)
{
	h_update(h, s, strlen(s));
	if (!last)
		h_update(h, ":", 1);
}

static void h_final(hash_ctx_t *h, uint8_t *out)
{
	if (h->alg == DIGEST_ALG_SHA256)
		tg_sha256_final(&h->u.sha256, out);
	else
		tg_md5_final(&h->u.md5, out);
}

static void to_hex(const uint8_t *p, size_t n, char *out)
{
	static const char digits[] = "0123456789abcdef";

	for (size_t i = 0; i < n; i++) {
		out[2 * i] = digits[p[i] >> 4];
		out[2 * i + 1] = digits[p[i] & 15];
	}
	out[2 * n] = '\0';
}

static int hex_val(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* 2n hex characters (either case) -> n bytes. 0 or -1. */
static int from_hex(const char *s, size_t n, uint8_t *out)
{
	for (size_t i = 0; i < n; i++) {
		int hi = hex_val((unsigned char)s[2 * i]), lo = hex_val((unsigned char)s[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int digest_equal(const void *a, const void *b, size_t n)
{
	/* volatile: no early exit, no clever vectorised compare that stops at a difference */
	const volatile uint8_t *x = a, *y = b;
	unsigned d = 0;

	for (size_t i = 0; i < n; i++)
		d |= (unsigned)(x[i] ^ y[i]);
	return (int)(((d - 1) >> 8) & 1);
}

/* ---- the credentials parser ---- */

enum param_id {
	P_USERNAME,
	P_REALM,
	P_NONCE,
	P_URI,
	P_RESPONSE,
	P_ALGORITHM,
	P_CNONCE,
	P_OPAQUE,
	P_QOP,
	P_NC,
	P_USERHASH,
	P_USERNAME_STAR,
	P_COUNT
};

static const char *const param_names[P_COUNT] = {
        "username", "realm",  "nonce", "uri", "response", "algorithm",
        "cnonce",   "opaque", "qop",   "nc",  "userhash", "username*",
};

typedef struct parse {
	const char *p, *end;
	digest_creds_t *c;
	unsigned seen; /* bit per enum param_id */
	char response[DIGEST_HEX_MAX + 1];
	char algorithm[16];
	char nc[DIGEST_NC_LEN + 1];
	char qop[16];
	char userhash[8];
	size_t response_len, algorithm_len, nc_len, qop_len, userhash_len;
	size_t skip_len; /* username* and unknown parameters: checked, not kept */
} parse_t;

static int is_lws(unsigned char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/* RFC 7230 tchar: what a parameter name is made of. */
static int is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static void skip_lws(parse_t *ps)
{
	while (ps->p < ps->end && is_lws((unsigned char)*ps->p))
		ps->p++;
}

static int param_lookup(const char *name, size_t n)
{
	for (int i = 0; i < P_COUNT; i++)
		if (strlen(param_names[i]) == n && strncasecmp(param_names[i], name, n) == 0)
			return i;
	return -1;
}

/* Where the value of parameter id goes, and how many bytes fit (a NUL more is there). */
static char *param_dest(parse_t *ps, int id, size_t *cap, size_t **lenp)
{
	digest_creds_t *c = ps->c;

#define DEST(buf, len)                                                                                       \
	do {                                                                                                 \
		*cap = sizeof(buf) - 1;                                                                      \
		*lenp = &(len);                                                                              \
		return buf;                                                                                  \
	} while (0)
	switch (id) {
	case P_USERNAME:
		DEST(c->username, c->username_len);
	case P_REALM:
		DEST(c->realm, c->realm_len);
	case P_NONCE:
		DEST(c->nonce, c->nonce_len);
	case P_URI:
		DEST(c->uri, c->uri_len);
	case P_CNONCE:
		DEST(c->cnonce, c->cnonce_len);
	case P_OPAQUE:
		DEST(c->opaque, c->opaque_len);
	case P_QOP:
		DEST(ps->qop, ps->qop_len);
	case P_RESPONSE:
		DEST(ps->response, ps->response_len);
	case P_ALGORITHM:
		DEST(ps->algorithm, ps->algorithm_len);
	case P_NC:
		DEST(ps->nc, ps->nc_len);
	case P_USERHASH:
		DEST(ps->userhash, ps->userhash_len);
	default:
		*cap = 0;
		*lenp = &ps->skip_len;
		return NULL;
	}
#undef DEST
}

/*
 * A value at ps->p: a quoted-string (RFC 7230 3.2.6, quoted-pair allowed,
 * control characters other than HTAB refused) or an unquoted run up to
 * whitespace or ','. Copied into dst (unless NULL) with its length in
 * *len. Returns 0, -1 on bad syntax, -2 when longer than cap.
 */
static int scan_value(parse_t *ps, char *dst, size_t cap, size_t *len)
{
	size_t n = 0;
	unsigned char ch;

	if (ps->p < ps->end && *ps->p == '"') {
		for (ps->p++;; ps->p++) {
			if (ps->p == ps->end)
				return -1;
			ch = (unsigned char)*ps->p;
			if (ch == '"')
				break;
			if (ch == '\\') {
				if (++ps->p == ps->end)
					return -1;
				ch = (unsigned char)*ps->p;
			}
			if (is_ctl(ch) && ch != '\t')
				return -1;
			if (dst && n == cap)
				return -2;
			if (dst)
				dst[n] = (char)ch;
			n++;
		}
		ps->p++;
	} else {
		for (; ps->p < ps->end; ps->p++) {
			ch = (unsigned char)*ps->p;
			if (is_lws(ch) || ch == ',')
				break;
			if (is_ctl(ch) || ch == '"' || ch == '\\')
				return -1;
			if (dst && n == cap)
				return -2;
			if (dst)
				dst[n] = (char)ch;
			n++;
		}
		if (n == 0)
			return -1;
	}
	if (dst)
		dst[n] = '\0';
	*len = n;
	return 0;
}

static int refuse(digest_creds_t *c, const char **reason, const char *why, const char *param, size_t n)
{
	if (param) {
		if (n >= sizeof(c->bad_param))
			n = sizeof(c->bad_param) - 1;
		memcpy(c->bad_param, param, n);
		c->bad_param[n] = '\0';
	}
	*reason = why;
	return -1;
}

#define REFUSE(why, id) refuse(c, reason, why, param_names[id], strlen(param_names[id]))

/* One name=value; ps->p is at the name. 0, or -1 with *reason. */
static int parse_param(parse_t *ps, const char **reason)
{
	digest_creds_t *c = ps->c;
	const char *name = ps->p;
	size_t nlen, cap, *lenp;
	char *dst;
	int id, r;

	while (ps->p < ps->end && is_tchar((unsigned char)*ps->p))
		ps->p++;
	nlen = (size_t)(ps->p - name);
	if (nlen == 0)
		return refuse(c, reason, "syntax", NULL, 0);
	id = param_lookup(name, nlen);
	if (id >= 0)
		name = param_names[id]; /* reasons name a known parameter in its own spelling */
	skip_lws(ps);
	if (ps->p == ps->end || *ps->p != '=')
		return refuse(c, reason, "syntax", name, nlen);
	ps->p++;
	skip_lws(ps);
	if (id >= 0 && (ps->seen & (1u << id)))
		return refuse(c, reason, "duplicate_param", name, nlen);
	if (id >= 0)
		ps->seen |= 1u << id;
	dst = param_dest(ps, id, &cap, &lenp);
	r = scan_value(ps, dst, cap, lenp);
	if (r == -2)
		return refuse(c, reason, "value_too_long", name, nlen);
	if (r < 0)
		return refuse(c, reason, "syntax", name, nlen);
	skip_lws(ps);
	if (ps->p < ps->end && *ps->p != ',')
		return refuse(c, reason, "syntax", name, nlen);
	return 0;
}

/* username -> user and domain, split at the last '@' (a user part may itself hold one). */
static int split_username(digest_creds_t *c)
{
	const char *at = memchr(c->username, '@', c->username_len), *next;

	if (c->username_len == 0)
		return -1;
	while (at && (next = memchr(at + 1, '@', c->username_len - (size_t)(at + 1 - c->username))))
		at = next;
	if (!at) {
		memcpy(c->user, c->username, c->username_len + 1);
		c->user_len = c->username_len;
		return 0;
	}
	c->user_len = (size_t)(at - c->username);
	c->domain_len = c->username_len - c->user_len - 1;
	if (c->user_len == 0 || c->domain_len == 0)
		return -1;
	memcpy(c->user, c->username, c->user_len);
	c->user[c->user_len] = '\0';
	memcpy(c->domain, at + 1, c->domain_len + 1);
	return 0;
}

/* After the list: what must be there, and the values with a grammar of their own. */
static int check_params(parse_t *ps, const char **reason)
{
	static const int needed[] = {P_USERNAME, P_REALM, P_NONCE, P_URI, P_RESPONSE, P_QOP, P_NC, P_CNONCE};
	digest_creds_t *c = ps->c;

	if (ps->seen & (1u << P_USERNAME_STAR))
		return REFUSE("userhash_unsupported", P_USERNAME_STAR);
	if ((ps->seen & (1u << P_USERHASH)) && strcasecmp(ps->userhash, "false") != 0)
		return REFUSE("userhash_unsupported", P_USERHASH);
	for (size_t i = 0; i < sizeof(needed) / sizeof(needed[0]); i++)
		if (!(ps->seen & (1u << needed[i])))
			return REFUSE(needed[i] == P_QOP ? "qop_required" : "missing_param", needed[i]);
	if (!(ps->seen & (1u << P_ALGORITHM)) || strcasecmp(ps->algorithm, "MD5") == 0)
		c->alg = DIGEST_ALG_MD5;
	else if (strcasecmp(ps->algorithm, "SHA-256") == 0)
		c->alg = DIGEST_ALG_SHA256;
	else
		return REFUSE("unsupported_algorithm", P_ALGORITHM);
	if (strcasecmp(ps->qop, "auth") != 0)
		return REFUSE("unsupported_qop", P_QOP);
	memcpy(c->qop, ps->qop, sizeof(c->qop));
	if (ps->nc_len != DIGEST_NC_LEN)
		return REFUSE("bad_nc", P_NC);
	for (int i = 0; i < DIGEST_NC_LEN; i++) {
		int x = hex_val((unsigned char)ps->nc[i]);

		if (x < 0)
			return REFUSE("bad_nc", P_NC);
		c->nc_value = c->nc_value << 4 | (uint32_t)x;
	}
	if (c->nc_value == 0)
		return REFUSE("bad_nc", P_NC);
	memcpy(c->nc, ps->nc, sizeof(c->nc));
	c->response_len = digest_alg_len(c->alg);
	if (ps->response_len != 2 * c->response_len ||
	    from_hex(ps->response, c->response_len, c->response) < 0)
		return REFUSE("bad_response", P_RESPONSE);
	if (!c->realm_len)
		return REFUSE("empty_value", P_REALM);
	if (!c->nonce_len)
		return REFUSE("empty_value", P_NONCE);
	if (!c->uri_len)
		return REFUSE("empty_value", P_URI);
	if (!c->cnonce_len)
		return REFUSE("empty_value", P_CNONCE);
	if (split_username(c) < 0)
		return REFUSE("bad_username", P_USERNAME);
	c->has_opaque = !!(ps->seen & (1u << P_OPAQUE));
	return 0;
}

int digest_parse(const char *value, size_t len, digest_creds_t *c, const char **reason)
{
	parse_t ps = {.p = value, .end = value ? value + len : value, .c = c};

	memset(c, 0, sizeof(*c));
	if (!value)
		return refuse(c, reason, "not_digest", NULL, 0);
	skip_lws(&ps);
	if (ps.end - ps.p < 6 || strncasecmp(ps.p, "Digest", 6) != 0)
		return refuse(c, reason, "not_digest", NULL, 0);
	ps.p += 6;
	if (ps.p < ps.end && !is_lws((unsigned char)*ps.p))
		return refuse(c, reason, "not_digest", NULL, 0);
	for (;;) {
		/* empty list elements are allowed: "a=1, , b=2" (RFC 7230 7) */
		while (ps.p < ps.end && (is_lws((unsigned char)*ps.p) || *ps.p == ','))
			ps.p++;
		if (ps.p == ps.end)
			break;
		if (parse_param(&ps, reason) < 0)
			return -1;
	}
	return check_params(&ps, reason);
}

/* ---- responses ---- */

/* The response of RFC 7616 3.4.1 as bytes into out. Returns its length, or -1. */
static int response_bytes(digest_alg_t alg, const char *ha1_hex, const char *method, const char *uri,
                          const char *nonce, const char *nc, const char *cnonce, const char *qop,
                          uint8_t *out)
{
	size_t n = digest_alg_len(alg);
	char ha1[DIGEST_HEX_MAX + 1], ha2[DIGEST_HEX_MAX + 1];
	uint8_t d[DIGEST_HASH_MAX];
	hash_ctx_t h;

	if (!n || !ha1_hex || !method || !uri || !nonce || !nc || !cnonce || !qop)
		return -1;
	if (strlen(ha1_hex) != 2 * n || from_hex(ha1_hex, n, d) < 0 || strcasecmp(qop, "auth") != 0)
		return -1;
	to_hex(d, n, ha1); /* lowercase, whatever case the database holds */
	h_init(&h, alg);
	h_part(&h, method, 0);
	h_part(&h, uri, 1);
	h_final(&h, d);
	to_hex(d, n, ha2);
	h_init(&h, alg);
	h_part(&h, ha1, 0);
	h_part(&h, nonce, 0);
	h_part(&h, nc, 0);
	h_part(&h, cnonce, 0);
	h_part(&h, qop, 0);
	h_part(&h, ha2, 1);
	h_final(&h, out);
	return (int)n;
}

int digest_response(digest_alg_t alg, const char *ha1_hex, const char *method, const char *uri,
                    const char *nonce, const char *nc, const char *cnonce, const char *qop, char *out,
                    size_t outlen)
{
	uint8_t d[DIGEST_HASH_MAX];
	int n = response_bytes(alg, ha1_hex, method, uri, nonce, nc, cnonce, qop, d);

	if (n < 0 || !out || outlen < 2 * (size_t)n + 1)
		return -1;
	to_hex(d, (size_t)n, out);
	return 2 * n;
}

int digest_verify(const digest_creds_t *c, const char *method, const char *ha1_hex)
{
	uint8_t d[DIGEST_HASH_MAX];
	int n = response_bytes(c->alg, ha1_hex, method, c->uri, c->nonce, c->nc, c->cnonce, c->qop, d);

	if (n < 0 || (size_t)n != c->response_len)
		return 0;
	return digest_equal(d, c->response, (size_t)n);
}

int digest_ha1(digest_alg_t alg, const char *username, const char *realm, const char *password, char *out,
               size_t outlen)
{
	size_t n = digest_alg_len(alg);
	uint8_t d[DIGEST_HASH_MAX];
	hash_ctx_t h;

	if (!n || !username || !realm || !password || !out || outlen < 2 * n + 1)
		return -1;
	h_init(&h, alg);
	h_part(&h, username, 0);
	h_part(&h, realm, 0);
	h_part(&h, password, 1);
	h_final(&h, d);
	to_hex(d, n, out);
	return (int)(2 * n);
}

/* ---- stateless nonces ---- */

#define NONCE_VERSION 1
#define NONCE_SIGNED  17 /* version, issued_s, salt: the bytes the MAC covers */
#define NONCE_MAC     16 /* HMAC-SHA-256 truncated to 128 bits (RFC 2104 section 5 allows it) */
#define NONCE_RAW     (NONCE_SIGNED + NONCE_MAC) /* 33 bytes: 44 base64 characters, no padding */

/* Keeps a MAC made here from meaning anything elsewhere if the secret is ever shared with another use. */
static const char nonce_label[] = "tollgate digest nonce";

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static void nonce_mac(const uint8_t secret[DIGEST_SECRET_LEN], const uint8_t *raw, const void *bind,
                      size_t bind_len, uint8_t mac[TG_SHA256_LEN])
{
	tg_hmac_sha256_t h;

	tg_hmac_sha256_init(&h, secret, DIGEST_SECRET_LEN);
	tg_hmac_sha256_update(&h, nonce_label, sizeof(nonce_label)); /* its NUL ends it */
	tg_hmac_sha256_update(&h, raw, NONCE_SIGNED);
	if (bind_len)
		tg_hmac_sha256_update(&h, bind,
		                      bind_len); /* last and alone of variable length: unambiguous */
	tg_hmac_sha256_final(&h, mac);
}

void digest_nonce_make(const uint8_t secret[DIGEST_SECRET_LEN], uint64_t now_s, uint64_t salt,
                       const void *bind, size_t bind_len, char out[DIGEST_NONCE_LEN + 1])
{
	uint8_t raw[NONCE_RAW], mac[TG_SHA256_LEN];

	raw[0] = NONCE_VERSION;
	for (int i = 0; i < 8; i++) {
		raw[1 + i] = (uint8_t)(now_s >> (56 - 8 * i));
		raw[9 + i] = (uint8_t)(salt >> (56 - 8 * i));
	}
	nonce_mac(secret, raw, bind, bind_len, mac);
	memcpy(raw + NONCE_SIGNED, mac, NONCE_MAC);
	for (int i = 0, o = 0; i < NONCE_RAW; i += 3, o += 4) {
		uint32_t v = (uint32_t)raw[i] << 16 | (uint32_t)raw[i + 1] << 8 | raw[i + 2];

		out[o] = b64url[v >> 18];
		out[o + 1] = b64url[(v >> 12) & 63];
		out[o + 2] = b64url[(v >> 6) & 63];
		out[o + 3] = b64url[v & 63];
	}
	out[DIGEST_NONCE_LEN] = '\0';
}

static int b64url_val(unsigned char c)
{
	const char *p = c ? strchr(b64url, c) : NULL;

	return p ? (int)(p - b64url) : -1;
}

digest_nonce_status_t digest_nonce_check(const uint8_t secret[DIGEST_SECRET_LEN], const char *nonce,
                                         size_t len, uint64_t now_s, uint32_t ttl_s, const void *bind,
                                         size_t bind_len, uint64_t *issued_s)
{
	uint8_t raw[NONCE_RAW], mac[TG_SHA256_LEN];
	uint64_t ts = 0;

	if (!nonce || len != DIGEST_NONCE_LEN)
		return DIGEST_NONCE_BAD;
	for (size_t i = 0, o = 0; i < len; i += 4, o += 3) {
		uint32_t v = 0;

		for (size_t j = 0; j < 4; j++) {
			int x = b64url_val((unsigned char)nonce[i + j]);

			if (x < 0)
				return DIGEST_NONCE_BAD;
			v = v << 6 | (uint32_t)x;
		}
		raw[o] = (uint8_t)(v >> 16);
		raw[o + 1] = (uint8_t)(v >> 8);
		raw[o + 2] = (uint8_t)v;
	}
	if (raw[0] != NONCE_VERSION)
		return DIGEST_NONCE_BAD;
	nonce_mac(secret, raw, bind, bind_len, mac);
	if (!digest_equal(mac, raw + NONCE_SIGNED, NONCE_MAC))
		return DIGEST_NONCE_BAD;
	/* genuine from here on: time can only make it stale */
	for (int i = 0; i < 8; i++)
		ts = ts << 8 | raw[1 + i];
	if (issued_s)
		*issued_s = ts;
	if (ts > now_s + DIGEST_NONCE_SKEW)
		return DIGEST_NONCE_STALE; /* the clock went back: ours, but do not let it live longer */
	if (now_s >= ts && now_s - ts >= ttl_s)
		return DIGEST_NONCE_STALE;
	return DIGEST_NONCE_OK;
}

const char *digest_nonce_status_name(digest_nonce_status_t s)
{
	switch (s) {
	case DIGEST_NONCE_OK:
		return "ok";
	case DIGEST_NONCE_STALE:
		return "stale";
	case DIGEST_NONCE_BAD:
		return "bad";
	}
	return "unknown";
}

/* ---- challenges ---- */

typedef struct out {
	char *buf;
	size_t len, pos;
	int bad;
} out_t;

static void put(out_t *o, const char *s, size_t n)
{
	if (o->bad || n >= o->len - o->pos) {
		o->bad = 1;
		return;
	}
	memcpy(o->buf + o->pos, s, n);
	o->pos += n;
	o->buf[o->pos] = '\0';
}

static void put_str(out_t *o, const char *s)
{
	put(o, s, strlen(s));
}

/* A quoted-string: '"' and '\' escaped; a control character cannot be sent at all. */
static void put_quoted(out_t *o, const char *s)
{
	put(o, "\"", 1);
	for (; *s; s++) {
		if (is_ctl((unsigned char)*s) && *s != '\t')
			o->bad = 1;
		if (*s == '"' || *s == '\\')
			put(o, "\\", 1);
		put(o, s, 1);
	}
	put(o, "\"", 1);
}

int digest_challenge(char *buf, size_t len, const char *realm, const char *nonce, int stale, digest_alg_t alg)
{
	out_t o = {.buf = buf, .len = len};

	if (!buf || !len || !realm || !nonce || !digest_alg_len(alg))
		return -1;
	buf[0] = '\0';
	put_str(&o, "Digest realm=");
	put_quoted(&o, realm);
	put_str(&o, ", nonce=");
	put_quoted(&o, nonce);
	put_str(&o, ", algorithm=");
	put_str(&o, digest_alg_name(alg));
	put_str(&o, ", qop=\"auth\"");
	if (stale)
		put_str(&o, ", stale=true");
	if (o.bad) {
		buf[0] = '\0';
		return -1;
	}
	return (int)o.pos;
}
