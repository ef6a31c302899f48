/*
 * SIP digest authentication (worker/digest.c): the published vectors of
 * RFC 2617 section 3.5 and RFC 7616 section 3.9.1 (MD5 and SHA-256),
 * parsed from the headers exactly as the RFCs print them; header parsing
 * (full-URI usernames, quoting, escapes, spaces, every refusal reason);
 * stateless nonces forged, expired, from another secret, truncated,
 * re-dated, bound elsewhere; challenges; and one whole round trip as a
 * phone would do it.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/digest.h"
#include "t/unit/tap.h"

static const uint8_t secret[DIGEST_SECRET_LEN] = "0123456789abcdef0123456789abcdef";

static int parse(const char *hdr, digest_creds_t *c, const char **reason)
{
	*reason = NULL;
	return digest_parse(hdr, strlen(hdr), c, reason);
}

static void test_rfc2617(void)
{
	/* RFC 2617 section 3.5, line folds and all */
	static const char hdr[] = "Digest username=\"Mufasa\",\r\n"
	                          "       realm=\"testrealm@host.com\",\r\n"
	                          "       nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\",\r\n"
	                          "       uri=\"/dir/index.html\",\r\n"
	                          "       qop=auth,\r\n"
	                          "       nc=00000001,\r\n"
	                          "       cnonce=\"0a4f113b\",\r\n"
	                          "       response=\"6629fae49393a05397450978507c4ef1\",\r\n"
	                          "       opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
	digest_creds_t c;
	const char *reason;
	char ha1[DIGEST_HEX_MAX + 1], resp[DIGEST_HEX_MAX + 1];

	is_int(parse(hdr, &c, &reason), 0, "RFC 2617 3.5: header parses");
	is_str(c.username, "Mufasa", "RFC 2617: username");
	is_str(c.realm, "testrealm@host.com", "RFC 2617: realm");
	is_str(c.uri, "/dir/index.html", "RFC 2617: uri");
	is_str(c.nc, "00000001", "RFC 2617: nc as sent");
	is_int(c.nc_value, 1, "RFC 2617: nc value");
	is_int(c.alg, DIGEST_ALG_MD5, "RFC 2617: no algorithm means MD5");
	is_str(c.opaque, "5ccc069c403ebaf9f0171e9517f40e41", "RFC 2617: opaque kept");
	is_int(digest_ha1(DIGEST_ALG_MD5, "Mufasa", "testrealm@host.com", "Circle Of Life", ha1, sizeof(ha1)),
	       32, "RFC 2617: HA1 is 32 hex characters");
	is_int(digest_response(DIGEST_ALG_MD5, ha1, "GET", c.uri, c.nonce, c.nc, c.cnonce, c.qop, resp,
	                       sizeof(resp)),
	       32, "RFC 2617: response computed");
	is_str(resp, "6629fae49393a05397450978507c4ef1", "RFC 2617 3.5: response 6629fae4...");
	ok(digest_verify(&c, "GET", ha1), "RFC 2617: verify accepts the right password");
	ok(!digest_verify(&c, "POST", ha1), "RFC 2617: verify refuses another method");
	digest_ha1(DIGEST_ALG_MD5, "Mufasa", "testrealm@host.com", "Circle of Life", ha1, sizeof(ha1));
	ok(!digest_verify(&c, "GET", ha1), "RFC 2617: verify refuses a password one letter off");
}

static void test_rfc7616(void)
{
	static const char fmt[] = "Digest username=\"Mufasa\",\n"
	                          "    realm=\"http-auth@example.org\",\n"
	                          "    uri=\"/dir/index.html\",\n"
	                          "    algorithm=%s,\n"
	                          "    nonce=\"7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v\",\n"
	                          "    nc=00000001,\n"
	                          "    cnonce=\"f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ\",\n"
	                          "    qop=auth,\n"
	                          "    response=\"%s\",\n"
	                          "    opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\"";
	static const struct {
		digest_alg_t alg;
		const char *name, *ha1, *response;
	} v[] = {
	        {DIGEST_ALG_MD5, "MD5", "3d78807defe7de2157e2b0b6573a855f",
	         "8ca523f5e9506fed4657c9700eebdbec"},
	        {DIGEST_ALG_SHA256, "SHA-256",
	         "7987c64c30e25f1b74be53f966b49b90f2808aa92faf9a00262392d7b4794232",
	         "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"},
	};

	for (size_t i = 0; i < 2; i++) {
		char hdr[1024], ha1[DIGEST_HEX_MAX + 1], resp[DIGEST_HEX_MAX + 1], upper[DIGEST_HEX_MAX + 1];
		digest_creds_t c;
		const char *reason;

		snprintf(hdr, sizeof(hdr), fmt, v[i].name, v[i].response);
		is_int(parse(hdr, &c, &reason), 0, "RFC 7616 3.9.1 %s: header parses", v[i].name);
		is_int(c.alg, v[i].alg, "RFC 7616 %s: algorithm", v[i].name);
		digest_ha1(v[i].alg, "Mufasa", "http-auth@example.org", "Circle of Life", ha1, sizeof(ha1));
		is_str(ha1, v[i].ha1, "RFC 7616 %s: HA1 as the database stores it", v[i].name);
		digest_response(v[i].alg, ha1, "GET", c.uri, c.nonce, c.nc, c.cnonce, c.qop, resp,
		                sizeof(resp));
		is_str(resp, v[i].response, "RFC 7616 3.9.1 %s: response", v[i].name);
		ok(digest_verify(&c, "GET", ha1), "RFC 7616 %s: verify accepts", v[i].name);
		for (size_t j = 0; ha1[j]; j++)
			upper[j] = (char)(ha1[j] >= 'a' ? ha1[j] - 32 : ha1[j]);
		upper[strlen(ha1)] = '\0';
		ok(digest_verify(&c, "GET", upper), "RFC 7616 %s: an HA1 stored in uppercase works too",
		   v[i].name);
		c.response[c.response_len - 1] ^= 1;
		ok(!digest_verify(&c, "GET", ha1), "RFC 7616 %s: last bit of the response flipped: refused",
		   v[i].name);
	}
}

static void test_response_args(void)
{
	char out[DIGEST_HEX_MAX + 1];
	const char *md5 = "939e7578ed9e3c518a452acee763bce9";
	digest_creds_t c;
	const char *reason;

	is_int(digest_response(DIGEST_ALG_SHA256, md5, "GET", "/", "n", "00000001", "c", "auth", out,
	                       sizeof(out)),
	       -1, "an MD5 HA1 given for SHA-256: refused");
	is_int(digest_response(DIGEST_ALG_MD5, "939e7578ed9e3c518a452acee763bcez", "GET", "/", "n",
	                       "00000001", "c", "auth", out, sizeof(out)),
	       -1, "an HA1 with a non-hex character: refused");
	is_int(digest_response(DIGEST_ALG_MD5, md5, "GET", "/", "n", "00000001", "c", "auth-int", out,
	                       sizeof(out)),
	       -1, "qop=auth-int: refused (only auth)");
	is_int(digest_response(DIGEST_ALG_MD5, md5, "GET", "/", "n", "00000001", "c", "auth", out, 32), -1,
	       "output buffer without room for the NUL: refused");
	is_int(digest_response(DIGEST_ALG_MD5, md5, "GET", "/", "n", "00000001", "c", "AUTH", out, 33), 32,
	       "qop in capitals is still auth");
	parse("Digest username=\"Mufasa\", realm=\"r\", nonce=\"n\", uri=\"/\", qop=auth, nc=00000001, "
	      "cnonce=\"c\", "
	      "response=\"00000000000000000000000000000000\"",
	      &c, &reason);
	ok(!digest_verify(&c, "GET", "short"), "verify with a malformed HA1 refuses rather than crashes");
	ok(digest_equal("abcd", "abcd", 4) && !digest_equal("abcd", "xbcd", 4) &&
	           !digest_equal("abcd", "abcx", 4) && digest_equal("a", "b", 0),
	   "digest_equal: equal, first byte differs, last byte differs, empty");
}

static void test_usernames(void)
{
	static const struct {
		const char *username, *user, *domain;
	} v[] = {
	        {"alice", "alice", ""},
	        {"alice@example.com", "alice", "example.com"},
	        {"john@corp.com@carrier.net", "john@corp.com", "carrier.net"},
	        {"+4420123@10.0.0.1", "+4420123", "10.0.0.1"},
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char hdr[512];
		digest_creds_t c;
		const char *reason;

		snprintf(hdr, sizeof(hdr),
		         "Digest username=\"%s\", realm=\"r\", nonce=\"n\", uri=\"sip:x@y\", qop=auth, "
		         "nc=00000001, "
		         "cnonce=\"c\", response=\"00000000000000000000000000000000\"",
		         v[i].username);
		is_int(parse(hdr, &c, &reason), 0, "username \"%s\" parses", v[i].username);
		ok(strcmp(c.username, v[i].username) == 0 && strcmp(c.user, v[i].user) == 0 &&
		           strcmp(c.domain, v[i].domain) == 0 && c.user_len == strlen(v[i].user) &&
		           c.domain_len == strlen(v[i].domain),
		   "username \"%s\" -> user \"%s\", domain \"%s\"", v[i].username, c.user, c.domain);
	}
}

static void test_lenient(void)
{
	digest_creds_t c;
	const char *reason;

	is_int(parse("  digest  UserName = bob ,,REALM=\"tollgate\"\t, nonce=\"n\" , uri=\"sip:1@2\", "
	             "QOP=\"auth\", nc=\"0000000A\", cnonce=abc, algorithm=\"sha-256\", foo=\"x, y=z\", "
	             "bar=baz, "
	             "response=\"753927FA0E85D155564E2E272A28D1802CA10DAF4496794697CF8DB5856CB6C1\", ,",
	             &c, &reason),
	       0, "lenient: case, spaces, tabs, empty elements, quoted tokens, unknown parameters");
	ok(strcmp(c.username, "bob") == 0 && strcmp(c.realm, "tollgate") == 0 && strcmp(c.cnonce, "abc") == 0,
	   "lenient: values read right");
	is_int(c.alg, DIGEST_ALG_SHA256, "lenient: algorithm in quotes and lowercase is SHA-256");
	is_int(c.nc_value, 10, "lenient: nc in quotes, hex in capitals");
	is_str(c.qop, "auth", "lenient: qop in quotes");
	ok(c.response_len == 32 && c.response[0] == 0x75 && c.response[31] == 0xc1,
	   "lenient: response in capitals decoded");
	ok(!c.has_opaque, "no opaque sent, none recorded");

	is_int(parse("Digest username=\"a\\\"b\\\\c\", realm=\"r\\,\", nonce=\"n\", uri=\"u\", qop=auth, "
	             "nc=00000001, cnonce=\"c\", response=\"00000000000000000000000000000000\"",
	             &c, &reason),
	       0, "escapes inside quoted strings");
	is_str(c.username, "a\"b\\c", "quoted-pair: \\\" and \\\\ unescaped");
	is_str(c.realm, "r,", "a comma inside quotes belongs to the value");
	is_int(parse("Digest username=\"\xc3\xa9mile\", realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, "
	             "nc=00000001, "
	             "cnonce=\"c\", response=\"00000000000000000000000000000000\"",
	             &c, &reason),
	       0, "UTF-8 in a username is taken as bytes");
}

static void test_refusals(void)
{
	static const char tail[] =
	        "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, cnonce=\"c\", "
	        "response=\"00000000000000000000000000000000\"";
	static const struct {
		const char *what, *head, *tail, *reason, *param;
	} v[] = {
	        {"Basic scheme", "Basic dXNlcjpwYXNz", "", "not_digest", ""},
	        {"empty value", "", "", "not_digest", ""},
	        {"only spaces", "   ", "", "not_digest", ""},
	        {"no space after Digest", "Digestusername=\"a\", ", tail, "not_digest", ""},
	        {"username twice", "Digest username=\"a\", username=\"b\", ", tail, "duplicate_param",
	         "username"},
	        {"nonce twice", "Digest username=\"a\", nonce=\"x\", ", tail, "duplicate_param", "nonce"},
	        {"nonce twice, second in capitals", "Digest username=\"a\", ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\", NONCE=\"x\"",
	         "duplicate_param", "nonce"},
	        {"unterminated quote", "Digest username=\"a, ", tail, "syntax", "username"},
	        {"no '=' after a name", "Digest username \"a\", ", tail, "syntax", "username"},
	        {"two values for one name", "Digest username=\"a\" \"b\", ", tail, "syntax", "username"},
	        {"junk after a closing quote", "Digest username=\"a\"x, ", tail, "syntax", "username"},
	        {"empty unquoted value", "Digest username=, ", tail, "syntax", "username"},
	        {"no name before '='", "Digest =\"a\", ", tail, "syntax", ""},
	        {"control character in a quote", "Digest username=\"a\x01\", ", tail, "syntax", "username"},
	        {"quote inside an unquoted value", "Digest username=a\"b, ", tail, "syntax", "username"},
	        {"no response", "Digest username=\"a\", ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, cnonce=\"c\"", "missing_param",
	         "response"},
	        {"no qop, nc, cnonce (RFC 2069 style)", "Digest username=\"a\", ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", response=\"00000000000000000000000000000000\"",
	         "qop_required", "qop"},
	        {"qop without cnonce", "Digest username=\"a\", ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, "
	         "response=\"00000000000000000000000000000000\"",
	         "missing_param", "cnonce"},
	        {"qop=auth-int", "Digest username=\"a\", qop=auth-int, ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", nc=00000001, cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         "unsupported_qop", "qop"},
	        {"algorithm=MD5-sess", "Digest username=\"a\", algorithm=MD5-sess, ", tail,
	         "unsupported_algorithm", "algorithm"},
	        {"algorithm=SHA-512-256", "Digest username=\"a\", algorithm=SHA-512-256, ", tail,
	         "unsupported_algorithm", "algorithm"},
	        {"SHA-256 with an MD5-length response", "Digest username=\"a\", algorithm=SHA-256, ", tail,
	         "bad_response", "response"},
	        {"nc of 7 digits", "Digest username=\"a\", nc=0000001, ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         "bad_nc", "nc"},
	        {"nc zero", "Digest username=\"a\", nc=00000000, ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         "bad_nc", "nc"},
	        {"nc with a non-hex digit", "Digest username=\"a\", nc=0000000g, ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         "bad_nc", "nc"},
	        {"response of 31 hex digits",
	         "Digest username=\"a\", response=\"0000000000000000000000000000000\", ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, cnonce=\"c\"", "bad_response",
	         "response"},
	        {"response with a non-hex digit",
	         "Digest username=\"a\", response=\"0000000000000000000000000000000x\", ",
	         "realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, cnonce=\"c\"", "bad_response",
	         "response"},
	        {"empty username", "Digest username=\"\", ", tail, "bad_username", "username"},
	        {"username ending in '@'", "Digest username=\"alice@\", ", tail, "bad_username", "username"},
	        {"username starting with '@'", "Digest username=\"@example.com\", ", tail, "bad_username",
	         "username"},
	        {"empty realm", "Digest username=\"a\", ",
	         "realm=\"\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         "empty_value", "realm"},
	        {"userhash=true", "Digest username=\"a\", userhash=true, ", tail, "userhash_unsupported",
	         "userhash"},
	        {"username* (RFC 8187 form)", "Digest username*=UTF-8''J%C3%A4s, ", tail,
	         "userhash_unsupported", "username*"},
	};

	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		char hdr[1024];
		digest_creds_t c;
		const char *reason;
		int r;

		snprintf(hdr, sizeof(hdr), "%s%s", v[i].head, v[i].tail);
		r = parse(hdr, &c, &reason);
		ok(r == -1 && reason && strcmp(reason, v[i].reason) == 0 &&
		           strcmp(c.bad_param, v[i].param) == 0,
		   "refused, %s: %s", v[i].what, v[i].reason);
		if (r != -1 || !reason || strcmp(reason, v[i].reason) || strcmp(c.bad_param, v[i].param))
			printf("#   got %d, reason %s, param \"%s\"\n", r, reason ? reason : "(null)",
			       c.bad_param);
	}
}

static void test_limits(void)
{
	char hdr[2048], big[600];
	digest_creds_t c;
	const char *reason;
	char *exact;
	size_t n;

	memset(big, 'u', sizeof(big));
	snprintf(hdr, sizeof(hdr),
	         "Digest username=\"%.*s\", realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, "
	         "cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         DIGEST_USERNAME_MAX, big);
	is_int(parse(hdr, &c, &reason), 0, "a username of exactly DIGEST_USERNAME_MAX bytes fits");
	snprintf(hdr, sizeof(hdr),
	         "Digest username=\"%.*s\", realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, "
	         "cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         DIGEST_USERNAME_MAX + 1, big);
	ok(parse(hdr, &c, &reason) == -1 && strcmp(reason, "value_too_long") == 0 &&
	           strcmp(c.bad_param, "username") == 0,
	   "a username one byte longer: value_too_long");
	snprintf(hdr, sizeof(hdr),
	         "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"%.*s\", qop=auth, nc=00000001, "
	         "cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"",
	         DIGEST_URI_MAX + 1, big);
	ok(parse(hdr, &c, &reason) == -1 && strcmp(reason, "value_too_long") == 0,
	   "a uri too long: value_too_long");
	snprintf(hdr, sizeof(hdr),
	         "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, "
	         "cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\", x=\"%.*s\"",
	         (int)sizeof(big), big);
	is_int(parse(hdr, &c, &reason), 0, "a long unknown parameter is skipped, not stored");

	/* the length is obeyed: a copy without a NUL (ASan watches the byte after) and a cut in a quote */
	snprintf(hdr, sizeof(hdr),
	         "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", qop=auth, nc=00000001, "
	         "cnonce=\"c\", "
	         "response=\"00000000000000000000000000000000\"");
	n = strlen(hdr);
	exact = malloc(n);
	memcpy(exact, hdr, n);
	is_int(digest_parse(exact, n, &c, &reason), 0,
	       "a value not terminated by NUL parses within its length");
	ok(digest_parse(exact, n - 1, &c, &reason) == -1 && strcmp(reason, "syntax") == 0,
	   "the same cut one byte short (inside a quote): syntax");
	ok(digest_parse(exact, 20, &c, &reason) == -1, "the same cut after 20 bytes: refused");
	free(exact);
}

static void test_nonces(void)
{
	uint8_t other[DIGEST_SECRET_LEN];
	char n1[DIGEST_NONCE_LEN + 1], n2[DIGEST_NONCE_LEN + 1], bad[DIGEST_NONCE_LEN + 2];
	const uint64_t t0 = 1760000000;
	uint64_t issued = 0;
	int forged_ok = 0;

	digest_nonce_make(secret, t0, 1, NULL, 0, n1);
	is_int(strlen(n1), DIGEST_NONCE_LEN, "a nonce is %d characters", DIGEST_NONCE_LEN);
	ok(strspn(n1, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") == DIGEST_NONCE_LEN,
	   "a nonce is base64url: nothing to escape in a quoted-string");
	is_int(digest_nonce_check(secret, n1, strlen(n1), t0, 300, NULL, 0, &issued), DIGEST_NONCE_OK,
	       "fresh nonce: OK");
	ok(issued == t0, "the check returns when it was issued");
	is_int(digest_nonce_check(secret, n1, strlen(n1), t0 + 299, 300, NULL, 0, NULL), DIGEST_NONCE_OK,
	       "one second before its ttl: OK");
	is_int(digest_nonce_check(secret, n1, strlen(n1), t0 + 300, 300, NULL, 0, NULL), DIGEST_NONCE_STALE,
	       "at its ttl: STALE (challenge with stale=true)");
	is_int(digest_nonce_check(secret, n1, strlen(n1), t0 + 86400, 300, NULL, 0, NULL), DIGEST_NONCE_STALE,
	       "a day later: STALE");
	is_int(digest_nonce_check(secret, n1, strlen(n1), t0 - DIGEST_NONCE_SKEW, 300, NULL, 0, NULL),
	       DIGEST_NONCE_OK, "clock stepped back by the allowed skew: OK");
	is_int(digest_nonce_check(secret, n1, strlen(n1), t0 - DIGEST_NONCE_SKEW - 1, 300, NULL, 0, NULL),
	       DIGEST_NONCE_STALE, "dated further in the future: STALE, not trusted for longer");

	memset(other, 0x5a, sizeof(other));
	is_int(digest_nonce_check(other, n1, strlen(n1), t0, 300, NULL, 0, NULL), DIGEST_NONCE_BAD,
	       "another secret: BAD");
	digest_nonce_make(secret, t0, 2, NULL, 0, n2);
	ok(strcmp(n1, n2) != 0, "same second, another salt: another nonce");
	is_int(digest_nonce_check(secret, n2, strlen(n2), t0, 300, NULL, 0, NULL), DIGEST_NONCE_OK,
	       "... and it is valid too");

	/* every single-character change is a forgery */
	for (int i = 0; i < DIGEST_NONCE_LEN; i++) {
		strcpy(bad, n1);
		bad[i] = bad[i] == 'A' ? 'B' : 'A';
		forged_ok += digest_nonce_check(secret, bad, strlen(bad), t0, 300, NULL, 0, NULL) !=
		             DIGEST_NONCE_BAD;
	}
	is_int(forged_ok, 0, "each of the %d characters changed: BAD every time", DIGEST_NONCE_LEN);
	/* a stale nonce with its timestamp moved to now: the timestamp is under the MAC */
	strcpy(bad, n1);
	bad[9] = bad[9] == 'A' ? 'B' : 'A';
	is_int(digest_nonce_check(secret, bad, strlen(bad), t0 + 86400, 300, NULL, 0, NULL), DIGEST_NONCE_BAD,
	       "an expired nonce re-dated: BAD, not merely stale");
	is_int(digest_nonce_check(secret, n1, DIGEST_NONCE_LEN - 1, t0, 300, NULL, 0, NULL), DIGEST_NONCE_BAD,
	       "truncated by one character: BAD");
	snprintf(bad, sizeof(bad), "%sA", n1);
	is_int(digest_nonce_check(secret, bad, strlen(bad), t0, 300, NULL, 0, NULL), DIGEST_NONCE_BAD,
	       "one character appended: BAD");
	strcpy(bad, n1);
	bad[5] = '=';
	is_int(digest_nonce_check(secret, bad, strlen(bad), t0, 300, NULL, 0, NULL), DIGEST_NONCE_BAD,
	       "a character outside base64url: BAD");
	is_int(digest_nonce_check(secret, "", 0, t0, 300, NULL, 0, NULL), DIGEST_NONCE_BAD, "empty: BAD");
	is_int(digest_nonce_check(secret, "dcd98b7102dd2f0e8b11d0f600bfb0c093", 34, t0, 300, NULL, 0, NULL),
	       DIGEST_NONCE_BAD, "someone else's nonce (RFC 2617's): BAD");

	digest_nonce_make(secret, t0, 3, "192.0.2.1", 9, n2);
	is_int(digest_nonce_check(secret, n2, strlen(n2), t0, 300, "192.0.2.1", 9, NULL), DIGEST_NONCE_OK,
	       "bound nonce, same binding: OK");
	is_int(digest_nonce_check(secret, n2, strlen(n2), t0, 300, "192.0.2.2", 9, NULL), DIGEST_NONCE_BAD,
	       "bound nonce, another binding: BAD");
	is_int(digest_nonce_check(secret, n2, strlen(n2), t0, 300, NULL, 0, NULL), DIGEST_NONCE_BAD,
	       "bound nonce checked unbound: BAD");
}

static void test_challenges(void)
{
	char buf[256];
	int n;

	n = digest_challenge(buf, sizeof(buf), "tollgate", "abc", 0, DIGEST_ALG_SHA256);
	is_str(buf, "Digest realm=\"tollgate\", nonce=\"abc\", algorithm=SHA-256, qop=\"auth\"",
	       "SHA-256 challenge");
	is_int(n, (int)strlen(buf), "length returned");
	is_int(digest_challenge(buf, (size_t)n, "tollgate", "abc", 0, DIGEST_ALG_SHA256), -1,
	       "buffer without room for the NUL: -1");
	is_int(digest_challenge(buf, (size_t)n + 1, "tollgate", "abc", 0, DIGEST_ALG_SHA256), n,
	       "buffer just right");
	digest_challenge(buf, sizeof(buf), "tollgate", "abc", 1, DIGEST_ALG_MD5);
	is_str(buf, "Digest realm=\"tollgate\", nonce=\"abc\", algorithm=MD5, qop=\"auth\", stale=true",
	       "MD5 challenge with stale=true");
	digest_challenge(buf, sizeof(buf), "a\"b\\c", "abc", 0, DIGEST_ALG_MD5);
	is_str(buf, "Digest realm=\"a\\\"b\\\\c\", nonce=\"abc\", algorithm=MD5, qop=\"auth\"",
	       "a quote and a backslash in the realm are escaped");
	is_int(digest_challenge(buf, sizeof(buf), "bad\r\nX-Injected: 1", "abc", 0, DIGEST_ALG_MD5), -1,
	       "a CR LF in the realm cannot inject a header: -1");
}

/* Challenge, answer as a phone would, parse, check: for both algorithms. */
static void test_round_trip(void)
{
	const uint64_t t0 = 1760000000;

	for (int alg = DIGEST_ALG_MD5; alg <= DIGEST_ALG_SHA256; alg++) {
		char nonce[DIGEST_NONCE_LEN + 1], chal[256], ha1[DIGEST_HEX_MAX + 1],
		        resp[DIGEST_HEX_MAX + 1];
		char hdr[1024];
		digest_creds_t c;
		const char *reason;
		uint64_t issued;
		int good;

		digest_nonce_make(secret, t0, 42, NULL, 0, nonce);
		digest_challenge(chal, sizeof(chal), "tollgate", nonce, 0, (digest_alg_t)alg);
		/* the phone: its own HA1 from the password, its cnonce */
		digest_ha1((digest_alg_t)alg, "alice@example.com", "tollgate", "s3cret", ha1, sizeof(ha1));
		digest_response((digest_alg_t)alg, ha1, "INVITE", "sip:+441234@gw.example.net", nonce,
		                "00000001", "x7Kq", "auth", resp, sizeof(resp));
		snprintf(hdr, sizeof(hdr),
		         "Digest username=\"alice@example.com\",realm=\"tollgate\",nonce=\"%s\","
		         "uri=\"sip:+441234@gw.example.net\",response=\"%s\",algorithm=%s,cnonce=\"x7Kq\","
		         "qop=auth,"
		         "nc=00000001",
		         nonce, resp, digest_alg_name((digest_alg_t)alg));
		good = parse(hdr, &c, &reason) == 0 &&
		       digest_nonce_check(secret, c.nonce, c.nonce_len, t0 + 5, 300, NULL, 0, &issued) ==
		               DIGEST_NONCE_OK &&
		       digest_verify(&c, "INVITE", ha1);
		ok(good, "%s round trip: challenge, answer, parse, nonce, verify",
		   digest_alg_name((digest_alg_t)alg));
		ok(!digest_verify(&c, "REGISTER", ha1),
		   "%s round trip: the same answer for another method fails",
		   digest_alg_name((digest_alg_t)alg));
	}
}

int main(void)
{
	test_rfc2617();
	test_rfc7616();
	test_response_args();
	test_usernames();
	test_lenient();
	test_refusals();
	test_limits();
	test_nonces();
	test_challenges();
	test_round_trip();
	return done_testing();
}
