/*
 * Who sent a request that no IP rule covers: SIP digest (RFC 3261 22,
 * RFC 7616, RFC 8760), and the route tokens that let a dialog or a
 * registration that passed come back through tollgate without asking
 * again.
 *
 * Digest. A request without credentials for our realm is challenged
 * (407, or 401 for REGISTER) with one nonce offered twice, SHA-256 first
 * and MD5 second. Credentials are checked in this order, each refusal a
 * 403 with the reason in the log and a failure counted against the
 * source address in shared memory (shm/failures.h), for the threat
 * protection to act on:
 *   parse (bad_credentials) -> user (unknown_user, user_inactive,
 *   account_inactive, source_not_allowed) -> response (wrong_password)
 *   -> nonce: expired or not ours but answered with the right password:
 *   challenge again with stale=true -> nonce count, shared by every
 *   worker (shm/nonce.h): not increasing is nonce_replay.
 * The nonce table is consulted only once the response verified, so
 * nobody without a password can advance a count or fill the table.
 *
 * Route tokens. Our Record-Route and Path URIs carry, as their user part,
 * a token made under the shared-memory secret:
 *   kind ('D' dialog, 'P' path) + hex(ip 16 | port 2 | account id 8 | mac 8)
 * naming the address the request really came from. A 'D' token's MAC also
 * covers the Call-ID and the From tag of the request that opened the
 * dialog. With it:
 *   - an in-dialog request from that caller (its Route carries the token,
 *     the Call-ID matches, the opening tag is its From or To tag) passes
 *     without credentials: an ACK for a 2xx cannot be challenged, and a
 *     BYE should not need to be;
 *   - a request from the softswitch whose Route names a token goes to the
 *     token's address, not to the Request-URI: a registered phone behind
 *     NAT is reached where its REGISTER came from (RFC 3327 Path, and the
 *     "received" idea of RFC 5626 flow tokens), and such a request needs
 *     no egress rule, the token being our own word that the address
 *     authenticated.
 * Tokens are stateless: any worker of any node with the same secret
 * checks them, and a restart does not break calls in progress only when
 * the secret survives it (it is random per start today).
 */
#include <ctype.h>
#include <osipparser2/osip_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "lib/log.h"
#include "lib/siphash.h"
#include "shm/failures.h"
#include "shm/nonce.h"
#include "worker/auth.h"
#include "worker/digest.h"

#define TOKEN_RAW 42 /* ip 16, port 2, account id 8, account slot 4, issued 4, mac 8 */
#define TOKEN_MAC 34 /* offset of the mac */

static uint64_t wall_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec;
}

static const uint8_t *nonce_secret(const worker_t *w)
{
	const tg_config_t *cfg = &w->c->cfg;

	return cfg->digest_secret_set ? cfg->digest_secret : w->c->shm->hdr->digest_secret;
}

/* ---- route tokens ---- */

static void put_be(uint8_t *p, uint64_t v, int n)
{
	for (int i = n - 1; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
	uint64_t v = 0;

	for (int i = 0; i < n; i++)
		v = v << 8 | p[i];
	return v;
}

static uint64_t token_mac(const worker_t *w, char kind, const uint8_t *raw, const char *call_id,
                          const char *tag)
{
	char in[1024];
	int n;

	/* the raw fields are fixed length; the strings are separated by a byte neither holds */
	in[0] = kind;
	memcpy(in + 1, raw, TOKEN_MAC);
	n = 1 + TOKEN_MAC;
	if (kind == 'D')
		n += snprintf(in + n, sizeof in - (size_t)n, "%s\n%s", call_id ? call_id : "",
		              tag ? tag : "");
	if (n >= (int)sizeof in)
		n = sizeof in - 1;
	/* the second half of the secret: the branch MAC uses the first */
	return tg_siphash(w->c->shm->hdr->secret + 16, in, (size_t)n);
}

int auth_token_make(const worker_t *w, char kind, const tg_ip_t *ip, uint16_t port,
                    const snap_account_sh_t *account, const char *call_id, const char *tag, char *out,
                    size_t outlen)
{
	uint8_t raw[TOKEN_RAW];
	static const char hex[] = "0123456789abcdef";

	if (outlen < 2 + 2 * TOKEN_RAW || w->snap.head == NULL)
		return -1;
	put_be(raw, ip->hi, 8);
	put_be(raw + 8, ip->lo, 8);
	put_be(raw + 16, port, 2);
	put_be(raw + 18, (uint64_t)account->id, 8);
	put_be(raw + 26, (uint64_t)(account - snap_accounts(w->snap.head)), 4);
	put_be(raw + 30, wall_s() & 0xffffffffu, 4);
	put_be(raw + TOKEN_MAC, token_mac(w, kind, raw, call_id, tag), 8);
	out[0] = kind;
	for (int i = 0; i < TOKEN_RAW; i++) {
		out[1 + 2 * i] = hex[raw[i] >> 4];
		out[2 + 2 * i] = hex[raw[i] & 15];
	}
	out[1 + 2 * TOKEN_RAW] = '\0';
	return 0;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int auth_token_check(const worker_t *w, const char *token, const char *call_id, const char *tag1,
                     const char *tag2, auth_token_t *t)
{
	uint8_t raw[TOKEN_RAW];
	uint64_t mac;

	if (token == NULL || (token[0] != 'D' && token[0] != 'P') || strlen(token) != 1 + 2 * TOKEN_RAW)
		return -1;
	for (int i = 0; i < TOKEN_RAW; i++) {
		int h = hexval(token[1 + 2 * i]), l = hexval(token[2 + 2 * i]);
		if (h < 0 || l < 0)
			return -1;
		raw[i] = (uint8_t)(h << 4 | l);
	}
	mac = get_be(raw + TOKEN_MAC, 8);
	if (token[0] == 'P') {
		if (token_mac(w, 'P', raw, NULL, NULL) != mac)
			return -1;
	} else if ((tag1 == NULL || token_mac(w, 'D', raw, call_id, tag1) != mac) &&
	           (tag2 == NULL || token_mac(w, 'D', raw, call_id, tag2) != mac)) {
		return -1;
	}
	/* ours: is it still good? Not too old, and its account still there */
	{
		uint32_t issued = (uint32_t)get_be(raw + 30, 4), now = (uint32_t)wall_s();
		uint32_t slot = (uint32_t)get_be(raw + 26, 4);
		const snap_account_sh_t *a;

		if ((uint32_t)(now - issued) > AUTH_TOKEN_MAX_AGE_S || w->snap.head == NULL ||
		    slot >= w->snap.head->naccounts)
			return -1;
		a = &snap_accounts(w->snap.head)[slot];
		/*
		 * A dialog's requests pass while its account exists, active or not,
		 * so that a call can always be ended; a Path opens new calls, which
		 * an inactive account may not receive.
		 */
		if (a->state != SNAP_ACCOUNT_LIVE || a->id != (int64_t)get_be(raw + 18, 8) ||
		    (token[0] == 'P' && !a->active))
			return -1;
		t->account = a;
	}
	t->kind = token[0];
	t->ip.hi = get_be(raw, 8);
	t->ip.lo = get_be(raw + 8, 8);
	t->port = (uint16_t)get_be(raw + 16, 2);
	return 0;
}

/* ---- digest ---- */

static void count_failure(worker_t *w, const pkt_t *p)
{
	tg_ip_t ip = p->src_ip;

	/* one attacker holds a whole /64: count it as one source */
	if (!tg_ip_is_v4(&ip))
		ip.lo = 0;
	shm_failures_add(w->c->shm->failures, &ip, 1, wall_s(), NULL);
	atomic_fetch_add_explicit(&w->stats->digest[SHM_D_FAILED], 1, memory_order_relaxed);
}

/* A reply with our challenges: one nonce, SHA-256 offered first (RFC 8760 2.4), then MD5. */
/*
 * A reply with our challenges: one nonce, one header per algorithm in the
 * configured order (RFC 8760 2.4: most preferred first). only: offer that
 * algorithm alone (0: all configured).
 */
static void challenge(worker_t *w, const pkt_t *p, osip_message_t *msg, int stale, digest_alg_t only)
{
	const tg_config_t *cfg = &w->c->cfg;
	int reg = MSG_IS_REGISTER(msg), n = 0;
	const char *name = reg ? "WWW-Authenticate" : "Proxy-Authenticate";
	char nonce[DIGEST_NONCE_LEN + 1], v[2][512];
	const char *names[2] = {name, name}, *values[2] = {v[0], v[1]};
	static uint64_t salt;

	/* unique per worker and call, even within one second; the top bits say which worker */
	salt = (salt + 1) & 0xffffffffffffULL;
	digest_nonce_make(nonce_secret(w), wall_s(), (uint64_t)w->c->index << 48 | salt, NULL, 0, nonce);
	for (int i = 0; i < cfg->ndigest_algs && i < 2; i++) {
		digest_alg_t alg = (digest_alg_t)cfg->digest_algs[i];

		if (only != 0 && alg != only)
			continue;
		if (digest_challenge(v[n], sizeof v[n], cfg->digest_realm, nonce, stale, alg) < 0)
			return;
		n++;
	}
	if (n == 0)
		return;
	atomic_fetch_add_explicit(&w->stats->digest[stale ? SHM_D_STALE : SHM_D_CHALLENGED], 1,
	                          memory_order_relaxed);
	worker_count(w, sip_method_index(msg->sip_method), SHM_O_REJECTED);
	tg_log(TG_LOG_DEBUG, 0, "digest_challenge", "src=%s method=%s call_id=%s stale=%d algorithms=%d",
	       p->srcstr, msg->sip_method, sip_call_id(msg), stale, n);
	reply_send_headers(w, p, msg, reg ? 401 : 407, reg ? "Unauthorized" : "Proxy Authentication Required",
	                   names, values, n);
}

static int alg_offered(const tg_config_t *cfg, digest_alg_t alg)
{
	for (int i = 0; i < cfg->ndigest_algs && i < 2; i++)
		if (cfg->digest_algs[i] == alg)
			return 1;
	return 0;
}

static void fail(worker_t *w, const pkt_t *p, osip_message_t *msg, int reason, const char *user, int code,
                 const char *phrase)
{
	count_failure(w, p);
	worker_refusal(w, reason);
	worker_count(w, sip_method_index(msg->sip_method), SHM_O_REJECTED);
	log_notice("request_refused", "src=%s method=%s call_id=%s reason=%s user=%s code=%d", p->srcstr,
	           msg->sip_method, sip_call_id(msg), shm_reason_name(reason), user, code);
	reply_send(w, p, msg, code, phrase);
}

/* 1 when libosip2's parse of a credential names realm (it keeps the quotes). */
static int for_realm(const osip_authorization_t *a, const char *realm)
{
	size_t n = strlen(realm);

	return a != NULL && a->realm != NULL && strlen(a->realm) == n + 2 &&
	       strncmp(a->realm + 1, realm, n) == 0;
}

/*
 * The next header field of a raw message from *pos (which starts past the
 * start line): its name and its value, continuation lines included (the
 * digest parser skips folds). Returns 0 at the blank line or the end.
 */
static int next_field(const char *buf, size_t len, size_t *pos, const char **name, size_t *nlen,
                      const char **val, size_t *vlen)
{
	size_t i = *pos, colon, end;

	if (i >= len || buf[i] == '\r' || buf[i] == '\n')
		return 0;
	for (colon = i; colon < len && buf[colon] != ':' && buf[colon] != '\n'; colon++)
		;
	if (colon >= len || buf[colon] != ':')
		return 0; /* the parser accepted the message, so this does not happen */
	/* the value runs to the line end not followed by a space or tab */
	for (end = colon; end < len; end++)
		if (buf[end] == '\n' && (end + 1 >= len || (buf[end + 1] != ' ' && buf[end + 1] != '\t')))
			break;
	*name = buf + i;
	*nlen = colon - i;
	while (*nlen > 0 && (buf[i + *nlen - 1] == ' ' || buf[i + *nlen - 1] == '\t'))
		(*nlen)--;
	*val = buf + colon + 1;
	*vlen = end - colon - 1;
	if (*vlen > 0 && (*val)[*vlen - 1] == '\r')
		(*vlen)--;
	*pos = end < len ? end + 1 : len;
	return 1;
}

/*
 * The credentials meant for us: the first Authorization or
 * Proxy-Authorization (REGISTER looks at the former first) whose realm is
 * ours. Returns 1 and *c filled, 0 when there are none, -1 with *why when
 * one names our realm but does not parse.
 *
 * They are parsed from the datagram as sent, not from libosip2's copy:
 * re-serialised, that copy drops duplicate and unknown parameters (so
 * userhash would go unnoticed) and can misread an unquoted value.
 */
static int find_credentials(worker_t *w, const pkt_t *p, osip_message_t *msg, digest_creds_t *c,
                            const char **why)
{
	const char *realm = w->c->cfg.digest_realm;
	const char *names[2];
	const char *first_why = NULL;
	const char *eol = memchr(p->buf, '\n', p->len);
	osip_list_t *lists[2] = {&msg->authorizations, &msg->proxy_authorizations};

	names[0] = MSG_IS_REGISTER(msg) ? "Authorization" : "Proxy-Authorization";
	names[1] = MSG_IS_REGISTER(msg) ? "Proxy-Authorization" : "Authorization";
	for (int pass = 0; pass < 2 && eol != NULL; pass++) {
		size_t pos = (size_t)(eol - p->buf) + 1, nlen, vlen;
		const char *name, *val;

		while (next_field(p->buf, p->len, &pos, &name, &nlen, &val, &vlen)) {
			const char *r = NULL;

			if (nlen != strlen(names[pass]) || strncasecmp(name, names[pass], nlen) != 0)
				continue;
			if (digest_parse(val, vlen, c, &r) == 0) {
				if (strcmp(c->realm, realm) == 0)
					return 1;
			} else if (first_why == NULL) {
				first_why = r;
			}
		}
	}
	/* none of ours parsed: was one of them ours at all? libosip2 read the realm of each */
	for (int l = 0; l < 2; l++)
		for (int i = 0; i < osip_list_size(lists[l]); i++) {
			osip_authorization_t *a = osip_list_get(lists[l], i);

			if (for_realm(a, realm)) {
				*why = first_why != NULL ? first_why : "syntax";
				memset(c->bad_param, 0, sizeof c->bad_param);
				return -1;
			}
		}
	return 0;
}

/* Take out every credential for our realm: they end here and are nobody else's business. */
void auth_strip_credentials(worker_t *w, osip_message_t *msg)
{
	osip_list_t *lists[2] = {&msg->authorizations, &msg->proxy_authorizations};
	const char *realm = w->c->cfg.digest_realm;

	for (int l = 0; l < 2; l++) {
		for (int i = 0; i < osip_list_size(lists[l]);) {
			osip_authorization_t *a = osip_list_get(lists[l], i);

			if (for_realm(a, realm)) {
				osip_list_remove(lists[l], i);
				osip_authorization_free(a);
			} else {
				i++;
			}
		}
	}
}

/* The domain a plain username belongs to: the host of the From URI (To for REGISTER). */
static const char *user_domain(osip_message_t *msg)
{
	osip_from_t *f = MSG_IS_REGISTER(msg) ? msg->to : msg->from;

	return f != NULL && f->url != NULL && f->url->host != NULL ? f->url->host : "";
}

/*
 * What makes a request the same one again (RFC 3261 17.2.3: branch,
 * Call-ID, CSeq) from the same place: a retransmission's fingerprint.
 */
static uint64_t request_fingerprint(const worker_t *w, const pkt_t *p, osip_message_t *msg)
{
	osip_via_t *via = NULL;
	osip_generic_param_t *br = NULL;
	char in[1024];
	int n;

	osip_message_get_via(msg, 0, &via);
	if (via != NULL)
		osip_via_param_get_byname(via, "branch", &br);
	n = snprintf(in, sizeof in, "%s\n%s\n%s\n%s\n%s", br && br->gvalue ? br->gvalue : "",
	             sip_call_id(msg) ? sip_call_id(msg) : "",
	             msg->cseq && msg->cseq->number ? msg->cseq->number : "", msg->sip_method, p->srcstr);
	if (n < 0 || n >= (int)sizeof in)
		n = sizeof in - 1;
	return tg_siphash(w->c->shm->hdr->secret, in, (size_t)n) | 1; /* 0 means "none" */
}

static int register_is_own(osip_message_t *msg, const snap_user_sh_t *u)
{
	const osip_uri_t *to = msg->to != NULL ? msg->to->url : NULL;

	if (to == NULL || to->username == NULL || strcmp(to->username, u->username) != 0)
		return 0;
	return u->domain[0] == '\0' || (to->host != NULL && strcasecmp(to->host, u->domain) == 0);
}

int auth_digest(worker_t *w, const pkt_t *p, osip_message_t *msg, auth_id_t *id)
{
	const tg_config_t *cfg = &w->c->cfg;
	digest_creds_t c;
	const char *why = NULL, *ha1;
	const snap_user_sh_t *u;
	const snap_account_sh_t *a;
	digest_nonce_status_t ns;
	uint64_t now = wall_s(), issued = 0;
	int full, rc;

	rc = find_credentials(w, p, msg, &c, &why);
	if (rc == 0) {
		challenge(w, p, msg, 0, 0);
		return AUTH_ANSWERED;
	}
	if (rc < 0) {
		log_info("digest_unparsed", "src=%s reason=%s param=%s", p->srcstr, why, c.bad_param);
		fail(w, p, msg, SHM_R_BAD_CREDENTIALS, "", 403, "Forbidden");
		return AUTH_ANSWERED;
	}
	/* "alice@example.com" was hashed as sent: only a user with that domain has its HA1 */
	full = c.domain[0] != '\0';
	if (full) {
		u = snap_user_find(&w->snap, c.user, c.user_len, c.domain, c.domain_len);
	} else {
		const char *dom = user_domain(msg);
		u = snap_user_find(&w->snap, c.username, c.username_len, dom, strlen(dom));
	}
	if (u == NULL) {
		fail(w, p, msg, SHM_R_UNKNOWN_USER, c.username, 403, "Forbidden");
		return AUTH_ANSWERED;
	}
	a = snap_user_account(&w->snap, u);
	if (!u->active) {
		fail(w, p, msg, SHM_R_USER_INACTIVE, c.username, 403, "Forbidden");
		return AUTH_ANSWERED;
	}
	if (a == NULL || !a->active) {
		fail(w, p, msg, SHM_R_ACCOUNT_INACTIVE, c.username, 403, "Forbidden");
		return AUTH_ANSWERED;
	}
	if (!snap_user_source_allowed(&w->snap, u, &p->src_ip)) {
		fail(w, p, msg, SHM_R_SOURCE_NOT_ALLOWED, c.username, 403, "Forbidden");
		return AUTH_ANSWERED;
	}
	if (c.alg == DIGEST_ALG_SHA256)
		ha1 = full ? u->ha1_sha256_full : u->ha1_sha256;
	else
		ha1 = full ? u->ha1_md5_full : u->ha1_md5;
	if (ha1[0] == '\0' && c.alg == DIGEST_ALG_SHA256 && alg_offered(cfg, DIGEST_ALG_MD5) &&
	    (full ? u->ha1_md5_full : u->ha1_md5)[0] != '\0') {
		/* only an MD5 HA1 is stored (imported hashes): ask for MD5 alone rather than fail the user */
		challenge(w, p, msg, 1, DIGEST_ALG_MD5);
		return AUTH_ANSWERED;
	}
	if (ha1[0] == '\0' || !digest_verify(&c, msg->sip_method, ha1)) {
		fail(w, p, msg, SHM_R_WRONG_PASSWORD, c.username, 403, "Forbidden");
		return AUTH_ANSWERED;
	}
	if (!alg_offered(cfg, c.alg)) {
		/* right, in an algorithm no longer offered (a reload changed the list): ask again, stale */
		challenge(w, p, msg, 1, 0);
		return AUTH_ANSWERED;
	}
	/*
	 * RFC 3261 10.3: a REGISTER binds the To address; alice's password must
	 * not register bob. The To user is alice's name, and its host her
	 * domain when she has one.
	 */
	if (MSG_IS_REGISTER(msg) && !register_is_own(msg, u)) {
		fail(w, p, msg, SHM_R_AOR_MISMATCH, c.username, 403, "Forbidden");
		return AUTH_ANSWERED;
	}
	/* the password was right: a nonce that is old or not ours asks for a fresh one, not a refusal */
	ns = digest_nonce_check(nonce_secret(w), c.nonce, c.nonce_len, now, cfg->nonce_ttl_s, NULL, 0,
	                        &issued);
	if (ns != DIGEST_NONCE_OK) {
		challenge(w, p, msg, 1, 0);
		return AUTH_ANSWERED;
	}
	switch (shm_nonce_check(
	        w->c->shm->nonce,
	        shm_nonce_key(w->c->shm->nonce, c.nonce, c.nonce_len, c.username, c.username_len), c.nc_value,
	        request_fingerprint(w, p, msg), issued + cfg->nonce_ttl_s, now)) {
	case SHM_NONCE_OK:
	case SHM_NONCE_RETRANSMIT: /* the accepted request again, lost on the way: forward it again */
		break;
	case SHM_NONCE_REPLAY:
		fail(w, p, msg, SHM_R_NONCE_REPLAY, c.username, 403, "Forbidden");
		return AUTH_ANSWERED;
	case SHM_NONCE_FULL:
		worker_refusal(w, SHM_R_NONCE_TABLE_FULL);
		worker_count(w, sip_method_index(msg->sip_method), SHM_O_REJECTED);
		log_warn("request_refused", "src=%s method=%s call_id=%s reason=%s user=%s code=%d",
		         p->srcstr, msg->sip_method, sip_call_id(msg),
		         shm_reason_name(SHM_R_NONCE_TABLE_FULL), c.username, 503);
		reply_send(w, p, msg, 503, "Service Unavailable");
		return AUTH_ANSWERED;
	default: /* expired under us, or another worker mid-insert of this nonce: a fresh one */
		challenge(w, p, msg, 1, 0);
		return AUTH_ANSWERED;
	}
	atomic_fetch_add_explicit(&w->stats->digest[SHM_D_ACCEPTED], 1, memory_order_relaxed);
	auth_strip_credentials(w, msg);
	id->account = a;
	id->user = u;
	if (u->domain[0] != '\0')
		snprintf(id->user_name, sizeof id->user_name, "%s@%s", u->username, u->domain);
	else
		snprintf(id->user_name, sizeof id->user_name, "%s", u->username);
	return AUTH_PASS;
}
