/*
 * Digest authentication and route tokens for the SIP path; see auth.c.
 */
#ifndef TG_AUTH_H
#define TG_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "shm/snapshot.h"
#include "worker/worker.h"

enum auth_outcome {
	AUTH_PASS,     /* identified: forward */
	AUTH_ANSWERED, /* challenged or refused: the reply is sent, nothing to forward */
};

/* Who a request that passed digest is. */
typedef struct auth_id {
	const snap_account_sh_t *account;
	const snap_user_sh_t *user;
	char user_name[SNAP_USER_MAX + SNAP_DOMAIN_MAX + 2]; /* "alice" or "alice@example.com" */
} auth_id_t;

/*
 * Digest for a request no IP rule covers (digest on, a snapshot held).
 * AUTH_PASS: *id set and our credentials removed from msg. AUTH_ANSWERED:
 * a challenge or a refusal was sent and counted.
 */
int auth_digest(worker_t *w, const pkt_t *p, osip_message_t *msg, auth_id_t *id);

/* Remove every credential for our realm (digest on): they end at tollgate. */
void auth_strip_credentials(worker_t *w, osip_message_t *msg);

/* A route token (auth.c explains what it carries and why). */
typedef struct auth_token {
	char kind; /* 'D' dialog, 'P' path */
	tg_ip_t ip;
	uint16_t port;
	const snap_account_sh_t *account; /* live (and active for 'P'), in the worker's current view */
} auth_token_t;

#define AUTH_TOKEN_LEN 85 /* characters, without the NUL */
#define AUTH_TOKEN_MAX_AGE_S                                                                                 \
	86400 /* a token older than this is refused: a day-long call, a daily re-REGISTER */

/*
 * kind 'D' binds call_id and tag (the From tag of the opening request);
 * 'P' ignores both. account: in the worker's current view (w->snap).
 */
int auth_token_make(const worker_t *w, char kind, const tg_ip_t *ip, uint16_t port,
                    const snap_account_sh_t *account, const char *call_id, const char *tag, char *out,
                    size_t outlen);
/*
 * 0 and *t when token is ours, at most AUTH_TOKEN_MAX_AGE_S old, and its
 * account still live (and active, for a 'P' token); a 'D' token must also match call_id and
 * tag1 or tag2 (either may be NULL). -1 otherwise.
 */
int auth_token_check(const worker_t *w, const char *token, const char *call_id, const char *tag1,
                     const char *tag2, auth_token_t *t);

#endif
