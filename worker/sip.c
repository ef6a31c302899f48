/*
 * The stateless proxy (RFC 3261 section 16.11) and the decision of who may
 * pass.
 *
 *  - Responses: our Via must be on top and carry a branch we minted (keyed
 *    by the secret in shared memory); it is removed and the response goes
 *    to the next Via, honouring received and rport.
 *  - Requests from a trusted source (the softswitch) are routed by Route,
 *    then Request-URI, towards the customer.
 *  - Requests from anyone else must come from an address an active rule of
 *    an active account covers; they go to the downstream and nowhere else,
 *    whatever their Request-URI says, so tollgate is never an open relay.
 *
 * Nothing here keeps state between packets: retransmissions are forwarded
 * again and get the same branch.
 */
#include <ctype.h>
#include <osipparser2/osip_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/siphash.h"
#include "shm/dialog.h"
#include "worker/auth.h"
#include "worker/calls.h"
#include "worker/worker.h"

#define BRANCH_PREFIX        "z9hG4bKtg"
#define DEFAULT_MAX_FORWARDS "70"

static const char *const method_names[] = {"INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS"};

int sip_method_index(const char *method)
{
	if (method == NULL)
		return SHM_M_OTHER;
	for (int i = 0; i < (int)(sizeof(method_names) / sizeof(method_names[0])); i++)
		if (strcmp(method, method_names[i]) == 0)
			return i;
	return SHM_M_OTHER;
}

void sip_refresh_config(worker_t *w)
{
	const tg_config_t *cfg = &w->c->cfg;

	for (int i = 0; i < cfg->nlisten; i++) {
		socklen_t len;
		const char *err;
		w->adv_numeric[i] =
		        tg_sockaddr_parse(cfg->listen[i].advertise, 5060, &w->adv[i], &len, &err) == 0;
	}
}

/*
 * The whole Call-ID ("number@host": libosip2 keeps the halves apart), in a
 * buffer that lives until the next call; NULL when there is none.
 */
const char *sip_call_id(const osip_message_t *msg)
{
	static char buf[512];
	const osip_call_id_t *c = msg->call_id;

	if (c == NULL || c->number == NULL)
		return NULL;
	if (c->host == NULL)
		return c->number;
	snprintf(buf, sizeof(buf), "%s@%s", c->number, c->host);
	return buf;
}

const char *sip_tag_of(osip_from_t *f)
{
	osip_generic_param_t *tag = NULL;

	if (f == NULL || osip_from_get_tag(f, &tag) != 0 || tag == NULL)
		return NULL;
	return tag->gvalue;
}

static int has_to_tag(osip_message_t *msg)
{
	return sip_tag_of(msg->to) != NULL;
}

/* Branch = prefix + keyed hash of what a response and a CANCEL or non-2xx ACK repeat from the request. */
static const char *via_param(osip_via_t *via, char *name)
{
	osip_generic_param_t *p = NULL;

	if (via == NULL || osip_via_param_get_byname(via, name, &p) != 0 || p == NULL || p->gvalue == NULL)
		return "";
	return p->gvalue;
}

/*
 * The MAC covers where the response will be sent (the previous hop's
 * host, port, received and rport, which tollgate stamped before calling
 * this) as well as its branch: a customer who has seen one of our branches
 * cannot re-aim a forged response at a third party by editing the next Via.
 */
static void make_branch(const worker_t *w, osip_message_t *msg, osip_via_t *prev, char *out, size_t outlen)
{
	char in[1024];
	int n;

	n = snprintf(in, sizeof(in), "%s|%s|%s|%s|%s|%s|%s", via_param(prev, "branch"),
	             prev && prev->host ? prev->host : "", prev && prev->port ? prev->port : "",
	             via_param(prev, "received"), via_param(prev, "rport"),
	             sip_call_id(msg) ? sip_call_id(msg) : "",
	             msg->cseq && msg->cseq->number ? msg->cseq->number : "");
	if (n < 0 || (size_t)n >= sizeof(in))
		n = sizeof(in) - 1;
	snprintf(out, outlen, BRANCH_PREFIX "%016llx",
	         (unsigned long long)tg_siphash(w->c->shm->hdr->secret, in, (size_t)n));
}

static void set_param(osip_list_t *params, char *name, const char *value)
{
	osip_generic_param_t *p = NULL;

	if (osip_generic_param_get_byname(params, name, &p) == 0 && p != NULL) {
		osip_free(p->gvalue);
		p->gvalue = osip_strdup(value);
		return;
	}
	osip_generic_param_add(params, osip_strdup(name), osip_strdup(value));
}

/*
 * RFC 3261 18.2.1 and RFC 3581: record where the request really came from
 * in the sender's Via, so responses go back to that address and port even
 * through NAT (tollgate always answers symmetrically).
 */
static void stamp_received(const pkt_t *p, osip_via_t *via)
{
	char ip[64], port[8];

	tg_ip_format(&p->src_ip, ip, sizeof(ip));
	snprintf(port, sizeof(port), "%u", p->src_port);
	set_param(&via->via_params, "received", ip);
	set_param(&via->via_params, "rport", port);
}

static int add_via(worker_t *w, osip_message_t *msg, int out_lidx)
{
	char branch[64], v[256];
	osip_via_t *top = NULL, *via = NULL;

	osip_message_get_via(msg, 0, &top);
	make_branch(w, msg, top, branch, sizeof(branch));
	snprintf(v, sizeof(v), "SIP/2.0/UDP %s;branch=%s", w->c->cfg.listen[out_lidx].advertise, branch);
	if (osip_via_init(&via) != 0)
		return -1;
	if (osip_via_parse(via, v) != 0) {
		osip_via_free(via);
		return -1;
	}
	osip_list_add(&msg->vias, via, 0);
	return 0;
}

/* Record-Route naming a listener; user (a route token, auth.h) may be NULL. */
static int add_record_route(worker_t *w, osip_message_t *msg, int lidx, const char *user)
{
	char v[256];
	osip_record_route_t *rr = NULL;

	snprintf(v, sizeof(v), "<sip:%s%s%s;lr>", user ? user : "", user ? "@" : "",
	         w->c->cfg.listen[lidx].advertise);
	if (osip_record_route_init(&rr) != 0)
		return -1;
	if (osip_record_route_parse(rr, v) != 0) {
		osip_record_route_free(rr);
		return -1;
	}
	osip_list_add(&msg->record_routes, rr, 0);
	return 0;
}

/*
 * RFC 3327: a Path on top naming the listener that faces the registrar,
 * with a path token for where the REGISTER came from, so requests to the
 * registered contact come back through us and on to that address.
 */
static void add_path(worker_t *w, const pkt_t *p, osip_message_t *msg, int lidx,
                     const snap_account_sh_t *account)
{
	char token[AUTH_TOKEN_LEN + 1], v[256];
	osip_header_t *h = NULL;

	if (auth_token_make(w, 'P', &p->src_ip, p->src_port, account, NULL, NULL, token, sizeof token) < 0)
		return;
	snprintf(v, sizeof v, "<sip:%s@%s;lr>", token, w->c->cfg.listen[lidx].advertise);
	if (osip_header_init(&h) != 0)
		return;
	h->hname = osip_strdup("Path");
	h->hvalue = osip_strdup(v);
	osip_list_add(&msg->headers, h, 0);
}

/* Host of a URI or Via as a socket address; numeric only (no DNS on the SIP path). */
static int host_addr(const char *host, const char *port, struct sockaddr_storage *ss, socklen_t *len)
{
	char h[128];
	tg_ip_t ip;
	long pn = 5060;
	size_t hl;

	if (host == NULL)
		return -1;
	hl = strlen(host);
	if (hl >= sizeof(h))
		return -1;
	if (host[0] == '[' && hl > 2 && host[hl - 1] == ']') {
		memcpy(h, host + 1, hl - 2);
		h[hl - 2] = '\0';
	} else {
		memcpy(h, host, hl + 1);
	}
	if (tg_ip_parse(h, &ip) < 0)
		return -1;
	if (port != NULL && *port != '\0') {
		char *end;
		pn = strtol(port, &end, 10);
		if (*end != '\0' || pn < 1 || pn > 65535)
			return -1;
	}
	tg_ip_to_sockaddr(&ip, (uint16_t)pn, ss, len);
	return 0;
}

static int uri_is_ours(const worker_t *w, const osip_uri_t *uri)
{
	const tg_config_t *cfg = &w->c->cfg;
	struct sockaddr_storage ss;
	socklen_t len;

	if (uri == NULL || uri->host == NULL)
		return 0;
	if (host_addr(uri->host, uri->port, &ss, &len) == 0) {
		for (int i = 0; i < cfg->nlisten; i++)
			if ((w->adv_numeric[i] && tg_sockaddr_equal((const struct sockaddr *)&ss,
			                                            (const struct sockaddr *)&w->adv[i])) ||
			    tg_sockaddr_equal((const struct sockaddr *)&ss,
			                      (const struct sockaddr *)&cfg->listen[i].addr))
				return 1;
		return 0;
	}
	/* a name: compare with an advertised "name:port" */
	for (int i = 0; i < cfg->nlisten; i++) {
		const char *adv = cfg->listen[i].advertise;
		size_t hl = strlen(uri->host);
		const char *port = uri->port ? uri->port : "5060";
		if (strncasecmp(adv, uri->host, hl) == 0 && adv[hl] == ':' && strcmp(adv + hl + 1, port) == 0)
			return 1;
	}
	return 0;
}

/*
 * Loose routing (RFC 3261 16.4): drop the Route entries that name us (two
 * when we double-record-routed). The first user part found among them (a
 * route token, when we minted it) is copied into token ("" when none).
 */
static void pop_our_routes(worker_t *w, osip_message_t *msg, char *token, size_t toklen)
{
	osip_route_t *r = NULL;

	token[0] = '\0';
	while (osip_message_get_route(msg, 0, &r) == 0 && r != NULL && uri_is_ours(w, r->url)) {
		if (token[0] == '\0' && r->url->username != NULL && strlen(r->url->username) < toklen)
			snprintf(token, toklen, "%s", r->url->username);
		osip_list_remove(&msg->routes, 0);
		osip_route_free(r);
		r = NULL;
	}
}

static void remove_header(osip_message_t *msg, const char *name)
{
	for (int i = 0; i < osip_list_size(&msg->headers);) {
		osip_header_t *h = osip_list_get(&msg->headers, i);
		if (h != NULL && h->hname != NULL && osip_strcasecmp(h->hname, name) == 0) {
			osip_list_remove(&msg->headers, i);
			osip_header_free(h);
		} else {
			i++;
		}
	}
}

/* Returns -1 when Max-Forwards is exhausted (or unreadable), else decrements it. */
static int max_forwards_step(osip_message_t *msg)
{
	osip_header_t *mf = NULL;
	char buf[16];
	long v;
	char *end;

	if (osip_message_get_max_forwards(msg, 0, &mf) != 0 || mf == NULL || mf->hvalue == NULL) {
		osip_message_set_max_forwards(msg, DEFAULT_MAX_FORWARDS);
		return 0;
	}
	v = strtol(mf->hvalue, &end, 10);
	if (end == mf->hvalue || v <= 0)
		return -1;
	if (v > 255)
		v = 255;
	snprintf(buf, sizeof(buf), "%ld", v - 1);
	osip_free(mf->hvalue);
	mf->hvalue = osip_strdup(buf);
	return 0;
}

static int serialize_and_send(worker_t *w, osip_message_t *msg, int lidx, const struct sockaddr *dst,
                              socklen_t dstlen)
{
	char *out = NULL;
	size_t outlen = 0;
	int rc;

	osip_message_force_update(msg);
	if (osip_message_to_str(msg, &out, &outlen) != 0 || out == NULL)
		return -1;
	rc = worker_send(w, lidx, dst, dstlen, out, outlen);
	osip_free(out);
	return rc;
}

static void refuse(worker_t *w, const pkt_t *p, osip_message_t *msg, int reason, int code, const char *phrase,
                   const char *account)
{
	int m = sip_method_index(msg->sip_method);
	int silent = MSG_IS_ACK(msg) || (w->c->cfg.reject == TG_REJECT_DROP &&
	                                 (reason == SHM_R_UNKNOWN_SOURCE || reason == SHM_R_NO_PROVISIONING));

	worker_refusal(w, reason);
	worker_count(w, m, silent ? SHM_O_DROPPED : SHM_O_REJECTED);
	if (account != NULL)
		log_notice("request_refused", "src=%s method=%s call_id=%s reason=%s account=%s code=%d",
		           p->srcstr, msg->sip_method, sip_call_id(msg), shm_reason_name(reason), account,
		           silent ? 0 : code);
	else
		log_notice("request_refused", "src=%s method=%s call_id=%s reason=%s code=%d", p->srcstr,
		           msg->sip_method, sip_call_id(msg), shm_reason_name(reason), silent ? 0 : code);
	if (!silent)
		reply_send(w, p, msg, code, phrase);
}

static int via_names_us(const worker_t *w, osip_message_t *msg)
{
	osip_via_t *top = NULL;
	osip_uri_t u;

	if (osip_message_get_via(msg, 0, &top) != 0 || top == NULL)
		return 0;
	memset(&u, 0, sizeof(u));
	u.host = top->host;
	u.port = top->port;
	return uri_is_ours(w, &u);
}

/* A request may be forwarded only once these hold (RFC 3261 16.3 and 8.2). */
static const char *request_insane(osip_message_t *msg)
{
	osip_via_t *via = NULL;

	if (osip_message_get_via(msg, 0, &via) != 0 || via == NULL)
		return "no Via";
	if (msg->from == NULL || msg->to == NULL)
		return "no From or To";
	if (msg->call_id == NULL || msg->call_id->number == NULL)
		return "no Call-ID";
	if (msg->cseq == NULL || msg->cseq->method == NULL || msg->cseq->number == NULL)
		return "no CSeq";
	if (strcmp(msg->cseq->method, msg->sip_method) != 0)
		return "CSeq method differs from the request method";
	if (msg->req_uri == NULL || msg->req_uri->host == NULL)
		return "no Request-URI host";
	return NULL;
}

/*
 * Send a request on, from the listener facing dst; adds our Via and, for
 * a new dialog, Record-Route (rr_user: a route token for its user part,
 * or NULL). path_account (not NULL) adds a Path (REGISTER) for that account.
 */
static void forward_request(worker_t *w, const pkt_t *p, osip_message_t *msg, const struct sockaddr *dst,
                            socklen_t dstlen, const char *account, const char *rr_user,
                            const snap_account_sh_t *path_account)
{
	int m = sip_method_index(msg->sip_method);
	int out = worker_pick_listener(w, p->lidx, dst->sa_family);
	int initial = !has_to_tag(msg);
	osip_via_t *top = NULL;

	if (out < 0) {
		refuse(w, p, msg, SHM_R_NO_ROUTE, 480, "No Route To Destination", account);
		return;
	}
	osip_message_get_via(msg, 0, &top);
	stamp_received(p, top);
	if (initial && !MSG_IS_REGISTER(msg) && !MSG_IS_ACK(msg) && !MSG_IS_CANCEL(msg)) {
		/* double Record-Route when the two sides reach us on different listeners (e.g. v4 and v6) */
		add_record_route(w, msg, p->lidx, rr_user);
		if (out != p->lidx)
			add_record_route(w, msg, out, rr_user);
	}
	if (initial && MSG_IS_REGISTER(msg) && path_account != NULL)
		add_path(w, p, msg, out, path_account);
	if (add_via(w, msg, out) < 0 || serialize_and_send(w, msg, out, dst, dstlen) < 0) {
		worker_count(w, m, SHM_O_DROPPED);
		return;
	}
	worker_count(w, m, SHM_O_FORWARDED);
	if (account != NULL)
		tg_log(initial ? TG_LOG_INFO : TG_LOG_DEBUG, 0, "request_forwarded",
		       "src=%s method=%s call_id=%s account=%s", p->srcstr, msg->sip_method, sip_call_id(msg),
		       account);
	else
		tg_log(initial ? TG_LOG_INFO : TG_LOG_DEBUG, 0, "request_forwarded",
		       "src=%s method=%s call_id=%s", p->srcstr, msg->sip_method, sip_call_id(msg));
}

/* Path entries naming one of our listeners: only tollgate mints those, with a token it checks. */
static void strip_our_paths(worker_t *w, osip_message_t *msg)
{
	const tg_config_t *cfg = &w->c->cfg;

	for (int i = 0; i < osip_list_size(&msg->headers);) {
		osip_header_t *h = osip_list_get(&msg->headers, i);
		int ours = 0;

		if (h != NULL && h->hname != NULL && osip_strcasecmp(h->hname, "Path") == 0 &&
		    h->hvalue != NULL)
			for (int l = 0; l < cfg->nlisten && !ours; l++)
				ours = strstr(h->hvalue, cfg->listen[l].advertise) != NULL;
		if (ours) {
			osip_list_remove(&msg->headers, i);
			osip_header_free(h);
		} else {
			i++;
		}
	}
}

/*
 * What a customer said about who it is goes: only tollgate names the
 * account and the user, mints Path entries naming itself, and reads the
 * credentials for its realm.
 */
static void strip_identity(worker_t *w, osip_message_t *msg)
{
	remove_header(msg, w->c->cfg.account_header);
	remove_header(msg, w->c->cfg.user_header);
	strip_our_paths(w, msg);
}

static void to_downstream(worker_t *w, const pkt_t *p, osip_message_t *msg, const char *account,
                          const char *rr_user, const snap_account_sh_t *path_account);

/* Every customer request leaves this way; credentials for our realm never leave at all. */
static void to_downstream(worker_t *w, const pkt_t *p, osip_message_t *msg, const char *account,
                          const char *rr_user, const snap_account_sh_t *path_account)
{
	const tg_config_t *cfg = &w->c->cfg;

	if (cfg->digest_realm[0] != '\0')
		auth_strip_credentials(w, msg);

	forward_request(w, p, msg, (const struct sockaddr *)&cfg->downstream, cfg->downstream_len, account,
	                rr_user, path_account);
}

/*
 * A source no IP rule covers, with digest on: a dialog our token vouches
 * for, an ACK or CANCEL (which cannot be challenged), or digest.
 */
static void from_digest(worker_t *w, const pkt_t *p, osip_message_t *msg, const char *token)
{
	const tg_config_t *cfg = &w->c->cfg;
	int initial = !has_to_tag(msg);
	auth_token_t t;
	auth_id_t id;
	char rr[AUTH_TOKEN_LEN + 1];

	strip_identity(w, msg);
	/*
	 * The token names the caller's address: its requests must come from
	 * that address still (any port: a NAT may rebind the port), so a
	 * token seen on the wire is no use to anyone else.
	 */
	if (!initial && token[0] != '\0' && !MSG_IS_REGISTER(msg) && !MSG_IS_PUBLISH(msg) &&
	    auth_token_check(w, token, sip_call_id(msg), sip_tag_of(msg->from), sip_tag_of(msg->to), &t) ==
	            0 &&
	    t.kind == 'D' && tg_ip_cmp(&t.ip, &p->src_ip) == 0) {
		/*
		 * In a dialog that passed digest (or reached a registered device): no
		 * credentials asked. Never a REGISTER or PUBLISH: those are not
		 * dialog requests, and a token must not stand in for a login.
		 */
		if (calls_in_dialog(w, p, msg) != CALLS_PASS)
			return;
		if ((MSG_IS_INVITE(msg) || MSG_IS_UPDATE(msg)) &&
		    calls_codecs(w, p, msg, t.account) != CALLS_PASS)
			return;
		atomic_fetch_add_explicit(&w->stats->digest[SHM_D_DIALOG], 1, memory_order_relaxed);
		osip_message_set_header(msg, cfg->account_header, t.account->name);
		to_downstream(w, p, msg, t.account->name, NULL, NULL);
		return;
	}
	if (MSG_IS_ACK(msg)) {
		/*
		 * An ACK cannot be challenged. The ACK of our own 401/407 ends here.
		 * Any other (a non-2xx ACK, which carries the INVITE's route and no
		 * token; a 2xx ACK from a phone that ignored our Record-Route) goes
		 * on like a CANCEL: our branch covers its source address, so it
		 * matches only a transaction that came from there.
		 */
		if (reply_tag_is_ours(w, msg, sip_tag_of(msg->to)))
			worker_count(w, SHM_M_ACK, SHM_O_DROPPED);
		else if (calls_in_dialog(w, p, msg) == CALLS_PASS)
			to_downstream(w, p, msg, NULL, NULL, NULL);
		return;
	}
	if (MSG_IS_CANCEL(msg) && initial) {
		/*
		 * A CANCEL cannot be challenged (RFC 3261 22.1). It reaches the
		 * softswitch with our branch, which covers the address it came
		 * from: it matches only an INVITE that came from there too.
		 */
		to_downstream(w, p, msg, NULL, NULL, NULL);
		return;
	}
	if (auth_digest(w, p, msg, &id) != AUTH_PASS)
		return;
	if (initial && MSG_IS_INVITE(msg)) {
		if (calls_policy(w, p, msg, id.account) != CALLS_PASS ||
		    calls_admit(w, p, msg, id.account, NULL, SHM_DIALOG_INGRESS) != CALLS_PASS)
			return;
	} else if (!initial) {
		if (calls_in_dialog(w, p, msg) != CALLS_PASS)
			return;
		if ((MSG_IS_INVITE(msg) || MSG_IS_UPDATE(msg)) &&
		    calls_codecs(w, p, msg, id.account) != CALLS_PASS)
			return;
	}
	osip_message_set_header(msg, cfg->account_header, id.account->name);
	osip_message_set_header(msg, cfg->user_header, id.user_name);
	rr[0] = '\0';
	if (initial && auth_token_make(w, 'D', &p->src_ip, p->src_port, id.account, sip_call_id(msg),
	                               sip_tag_of(msg->from), rr, sizeof rr) < 0)
		rr[0] = '\0';
	tg_log(TG_LOG_DEBUG, 0, "digest_accepted", "src=%s method=%s call_id=%s account=%s user=%s",
	       p->srcstr, msg->sip_method, sip_call_id(msg), id.account->name, id.user_name);
	to_downstream(w, p, msg, id.account->name, rr[0] ? rr : NULL, id.account);
}

/* Customer to softswitch. */
static void from_customer(worker_t *w, const pkt_t *p, osip_message_t *msg)
{
	const tg_config_t *cfg = &w->c->cfg;
	snap_match_t mt = {0};
	const char *user;
	char token[AUTH_TOKEN_LEN + 8];
	int initial = !has_to_tag(msg);
	int r;

	if (w->snap.head == NULL) {
		refuse(w, p, msg, SHM_R_NO_PROVISIONING, 403, "Forbidden", NULL);
		return;
	}
	/*
	 * In-dialog requests carry the far end's Contact, not the dialled
	 * number: no tech prefix there; and either side of a dialog may send
	 * them, so a rule of either direction will do.
	 */
	user = initial ? (msg->req_uri->username ? msg->req_uri->username : "") : NULL;
	r = snap_lookup(&w->snap, &p->src_ip, p->src_port, user, user ? strlen(user) : 0,
	                initial ? SNAP_DIR_INGRESS : SNAP_DIR_BOTH, &mt);
	pop_our_routes(w, msg, token, sizeof token);
	if (r == SNAP_NO_ADDRESS && cfg->digest_realm[0] != '\0') {
		from_digest(w, p, msg, token);
		return;
	}
	if (r == SNAP_NO_ADDRESS) {
		refuse(w, p, msg, SHM_R_UNKNOWN_SOURCE, 403, "Forbidden", NULL);
		return;
	}
	if (r == SNAP_NO_FIT) {
		refuse(w, p, msg, SHM_R_NO_RULE_FITS, 403, "Forbidden", NULL);
		return;
	}
	if (r == SNAP_ACCOUNT_INACTIVE) {
		refuse(w, p, msg, SHM_R_ACCOUNT_INACTIVE, 403, "Forbidden", mt.account->name);
		return;
	}
	if (initial && mt.rule->prefix_len > 0 && msg->req_uri->username != NULL) {
		char *u = msg->req_uri->username;
		memmove(u, u + mt.rule->prefix_len, strlen(u + mt.rule->prefix_len) + 1);
	}
	strip_identity(w, msg);
	/*
	 * Without the dialled number (a To tag says in-dialog) a rule with a tech
	 * prefix cannot tell accounts sharing the address apart, and a To tag is
	 * the sender's word: name no account then, rather than perhaps the wrong one.
	 */
	if (initial || mt.rule->prefix_len == 0)
		osip_message_set_header(msg, cfg->account_header, mt.account->name);
	if (initial && MSG_IS_INVITE(msg)) {
		if (calls_policy(w, p, msg, mt.account) != CALLS_PASS ||
		    calls_admit(w, p, msg, mt.account, mt.rule, SHM_DIALOG_INGRESS) != CALLS_PASS)
			return;
	} else if (!initial) {
		if (calls_in_dialog(w, p, msg) != CALLS_PASS)
			return;
		/* a new offer in the call: the codec policy holds there too */
		if ((MSG_IS_INVITE(msg) || MSG_IS_UPDATE(msg)) &&
		    calls_codecs(w, p, msg, mt.account) != CALLS_PASS)
			return;
	}
	to_downstream(w, p, msg, mt.account->name, NULL, mt.account);
}

/*
 * May the softswitch open something towards dst? Only towards an address
 * an active egress (or both) rule covers, so an ingress-only customer is
 * never sent calls and tollgate relays nowhere else. Returns 0 or refuses.
 */
static int egress_allowed(worker_t *w, const pkt_t *p, osip_message_t *msg,
                          const struct sockaddr_storage *dst, snap_match_t *out)
{
	snap_match_t mt = {0};
	tg_ip_t ip;
	uint16_t port;
	int r;

	if (w->snap.head == NULL) {
		refuse(w, p, msg, SHM_R_NO_PROVISIONING, 403, "Forbidden", NULL);
		return -1;
	}
	if (tg_ip_from_sockaddr((const struct sockaddr *)dst, &ip, &port) < 0)
		return -1;
	r = snap_lookup(&w->snap, &ip, port, NULL, 0, SNAP_DIR_EGRESS, &mt);
	if (r == SNAP_MATCH) {
		*out = mt;
		return 0;
	}
	/* an inactive account's rule allows nothing: still egress_denied, naming the account */
	refuse(w, p, msg, SHM_R_EGRESS_DENIED, 403, "Forbidden",
	       r == SNAP_ACCOUNT_INACTIVE ? mt.account->name : NULL);
	return -1;
}

/*
 * Softswitch to customer: to the address a route token of ours names, else
 * the top Route left after ours, else the Request-URI.
 */
static void from_downstream(worker_t *w, const pkt_t *p, osip_message_t *msg)
{
	struct sockaddr_storage dst;
	socklen_t dstlen;
	osip_route_t *r = NULL;
	const osip_uri_t *next;
	char token[AUTH_TOKEN_LEN + 8], rr[AUTH_TOKEN_LEN + 1];
	auth_token_t t;
	int initial = !has_to_tag(msg);

	pop_our_routes(w, msg, token, sizeof token);
	remove_header(msg, w->c->cfg.account_header);
	remove_header(msg, w->c->cfg.user_header);
	if (token[0] != '\0' && auth_token_check(w, token, sip_call_id(msg), sip_tag_of(msg->from),
	                                         sip_tag_of(msg->to), &t) == 0) {
		/* a registered device (Path) or a digest dialog: where its requests really come from */
		tg_ip_to_sockaddr(&t.ip, t.port, &dst, &dstlen);
		if (initial && MSG_IS_INVITE(msg)) {
			if (calls_admit(w, p, msg, t.account, NULL, SHM_DIALOG_EGRESS) != CALLS_PASS)
				return;
		} else if (!initial && calls_in_dialog(w, p, msg) != CALLS_PASS) {
			return;
		}
		rr[0] = '\0';
		if (initial && auth_token_make(w, 'D', &t.ip, t.port, t.account, sip_call_id(msg),
		                               sip_tag_of(msg->from), rr, sizeof rr) < 0)
			rr[0] = '\0';
		forward_request(w, p, msg, (struct sockaddr *)&dst, dstlen, NULL, rr[0] ? rr : NULL, NULL);
		return;
	}
	next = (osip_message_get_route(msg, 0, &r) == 0 && r != NULL) ? r->url : msg->req_uri;
	if (next == msg->req_uri && uri_is_ours(w, next)) {
		if (MSG_IS_OPTIONS(msg)) {
			/* the softswitch's keepalive to us */
			worker_count(w, SHM_M_OPTIONS, SHM_O_ANSWERED);
			reply_send(w, p, msg, 200, "OK");
		} else {
			refuse(w, p, msg, SHM_R_NO_ROUTE, 404, "Not Found", NULL);
		}
		return;
	}
	if (next == NULL || host_addr(next->host, next->port, &dst, &dstlen) < 0) {
		refuse(w, p, msg, SHM_R_NO_ROUTE, 480, "No Route To Destination", NULL);
		return;
	}
	if (uri_is_ours(w, next)) {
		refuse(w, p, msg, SHM_R_LOOP, 482, "Loop Detected", NULL);
		return;
	}
	/* in-dialog requests follow their dialog; an ACK or CANCEL follows its INVITE */
	if (!initial) {
		if (calls_in_dialog(w, p, msg) != CALLS_PASS)
			return;
	} else if (!MSG_IS_ACK(msg) && !MSG_IS_CANCEL(msg)) {
		snap_match_t mt = {0};

		if (egress_allowed(w, p, msg, &dst, &mt) < 0)
			return;
		/* the softswitch's call to a customer takes that customer's channel */
		if (MSG_IS_INVITE(msg) &&
		    calls_admit(w, p, msg, mt.account, mt.rule, SHM_DIALOG_EGRESS) != CALLS_PASS)
			return;
	}
	forward_request(w, p, msg, (struct sockaddr *)&dst, dstlen, NULL, NULL, NULL);
}

static int source_trusted(const worker_t *w, const pkt_t *p)
{
	const tg_config_t *cfg = &w->c->cfg;

	for (int i = 0; i < cfg->ntrusted; i++)
		if (tg_range_contains(&cfg->trusted[i], &p->src_ip))
			return 1;
	return 0;
}

static void handle_request(worker_t *w, const pkt_t *p, osip_message_t *msg)
{
	const char *why = request_insane(msg);

	if (why != NULL) {
		int answer = !MSG_IS_ACK(msg) && strcmp(why, "no Via") != 0;

		worker_refusal(w, SHM_R_MALFORMED);
		worker_count(w, sip_method_index(msg->sip_method), answer ? SHM_O_REJECTED : SHM_O_DROPPED);
		log_notice("malformed", "src=%s reason=%s call_id=%s", p->srcstr, why, sip_call_id(msg));
		if (answer)
			reply_send(w, p, msg, 400, "Bad Request");
		return;
	}
	if (via_names_us(w, msg)) {
		/* our own Via on top: this request has been through us already (a loop or a replay) */
		refuse(w, p, msg, SHM_R_LOOP, 482, "Loop Detected", NULL);
		return;
	}
	if (max_forwards_step(msg) < 0) {
		refuse(w, p, msg, SHM_R_TOO_MANY_HOPS, 483, "Too Many Hops", NULL);
		return;
	}
	if (source_trusted(w, p))
		from_downstream(w, p, msg);
	else
		from_customer(w, p, msg);
}

/* Our Via must be on top, with a branch only we could have made for this transaction. */
static int via_is_ours(worker_t *w, osip_message_t *msg)
{
	osip_via_t *top = NULL, *prev = NULL;
	char want[64];

	if (osip_message_get_via(msg, 0, &top) != 0 || top == NULL)
		return 0;
	osip_message_get_via(msg, 1, &prev);
	make_branch(w, msg, prev, want, sizeof(want));
	/* a missing branch reads as "", which no minted branch equals */
	return strcmp(via_param(top, "branch"), want) == 0;
}

/* Where a response goes: the Via's received and rport when present (RFC 3261 18.2.2, RFC 3581). */
static int via_destination(osip_via_t *via, struct sockaddr_storage *ss, socklen_t *len)
{
	osip_generic_param_t *rcvd = NULL, *rport = NULL;
	const char *host = via->host, *port = via->port;

	if (osip_via_param_get_byname(via, "received", &rcvd) == 0 && rcvd != NULL && rcvd->gvalue != NULL)
		host = rcvd->gvalue;
	if (osip_via_param_get_byname(via, "rport", &rport) == 0 && rport != NULL && rport->gvalue != NULL &&
	    rport->gvalue[0] != '\0')
		port = rport->gvalue;
	return host_addr(host, port, ss, len);
}

static void handle_response(worker_t *w, const pkt_t *p, osip_message_t *msg)
{
	osip_via_t *top = NULL, *next = NULL;
	struct sockaddr_storage dst;
	socklen_t dstlen;
	int lidx;

	if (!via_is_ours(w, msg)) {
		worker_refusal(w, SHM_R_BAD_VIA);
		worker_count(w, SHM_M_RESPONSE, SHM_O_DROPPED);
		log_notice("response_dropped", "src=%s reason=%s call_id=%s status=%d", p->srcstr, "bad_via",
		           sip_call_id(msg), msg->status_code);
		return;
	}
	calls_response(w, msg);
	osip_message_get_via(msg, 0, &top);
	osip_list_remove(&msg->vias, 0);
	osip_via_free(top);
	if (osip_message_get_via(msg, 0, &next) != 0 || next == NULL ||
	    via_destination(next, &dst, &dstlen) < 0 ||
	    (lidx = worker_pick_listener(w, p->lidx, dst.ss_family)) < 0) {
		worker_refusal(w, SHM_R_NO_ROUTE);
		worker_count(w, SHM_M_RESPONSE, SHM_O_DROPPED);
		log_notice("response_dropped", "src=%s reason=%s call_id=%s status=%d", p->srcstr, "no_route",
		           sip_call_id(msg), msg->status_code);
		return;
	}
	if (serialize_and_send(w, msg, lidx, (struct sockaddr *)&dst, dstlen) < 0) {
		worker_count(w, SHM_M_RESPONSE, SHM_O_DROPPED);
		return;
	}
	worker_count(w, SHM_M_RESPONSE, SHM_O_FORWARDED);
}

static int token_char(unsigned char c)
{
	return isalnum(c) || strchr("-.!%*_+`'~", c) != NULL;
}

/*
 * libosip2 accepts header lines it cannot make sense of (no colon, a name
 * that is not a token) and would pass them on to the softswitch. RFC 3261
 * 7.3.1: a header is token, optional whitespace, colon; anything else makes
 * the message malformed. Returns NULL or what is wrong.
 */
static const char *headers_insane(const char *s, size_t n)
{
	const char *end = s + n, *line = memchr(s, '\n', n);

	while (line != NULL && ++line < end) {
		const char *eol = memchr(line, '\n', (size_t)(end - line));
		const char *c = line;

		if (*c == '\r' || *c == '\n')
			return NULL; /* the blank line: the body follows */
		if (*c != ' ' && *c != '\t') {
			while (c < end && token_char((unsigned char)*c))
				c++;
			if (c == line)
				return "header line without a name";
			while (c < end && (*c == ' ' || *c == '\t'))
				c++;
			if (c >= end || *c != ':')
				return "header line without a colon after a token name";
		}
		line = eol;
	}
	return NULL;
}

static int only_whitespace(const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (!isspace((unsigned char)s[i]))
			return 0;
	return 1;
}

void sip_handle(worker_t *w, pkt_t *p)
{
	osip_message_t *msg = NULL;
	const char *why;

	/* RFC 5626 keepalives (CRLF) and empty datagrams are not messages */
	if (only_whitespace(p->buf, p->len))
		return;
	if (osip_message_init(&msg) != 0)
		return;
	why = headers_insane(p->buf, p->len);
	if (why == NULL && (osip_message_parse(msg, p->buf, p->len) != 0 ||
	                    (!MSG_IS_RESPONSE(msg) && msg->sip_method == NULL)))
		why = "unparseable";
	if (why != NULL) {
		int replied = reply_raw_400(w, p, why);
		worker_refusal(w, SHM_R_MALFORMED);
		worker_count(w, SHM_M_OTHER, replied ? SHM_O_REJECTED : SHM_O_DROPPED);
		log_notice("malformed", "src=%s reason=%s bytes=%zu replied=%d", p->srcstr, why, p->len,
		           replied);
	} else if (MSG_IS_RESPONSE(msg)) {
		handle_response(w, p, msg);
	} else {
		handle_request(w, p, msg);
	}
	osip_message_free(msg);
}
