/*
 * Calls on the SIP path: the dialog table (shm/dialog.h) and the channel
 * and CPS limits (shm/limits.h), plus the per-account destination and
 * codec policy, applied to requests that already passed authentication.
 *
 *  - An INVITE without a To tag begins a dialog keyed by its Call-ID and
 *    From tag. The one worker that creates it takes a CPS token and a
 *    channel from the account and, when the matched rule has limits of
 *    its own, from the rule; all or nothing, lock-free. A retransmission
 *    or a spiral finds the dialog and takes nothing; a retransmission of
 *    a refused INVITE gets the same refusal.
 *  - The channel comes back exactly once, whoever ends the dialog first:
 *    a final non-2xx response to the INVITE, a CANCEL from an
 *    authenticated sender, a BYE from either side, or the master's sweep
 *    (no final response within calls.early_timeout_s, or a confirmed call
 *    older than calls.max_duration_s).
 *  - In-dialog requests of INVITE dialogs (BYE, re-INVITE, ACK, UPDATE,
 *    INFO, PRACK, REFER) must match a dialog by Call-ID and their From or
 *    To tag: 481 otherwise (an ACK is dropped). An ended dialog is still
 *    matched for calls.linger_s, for retransmissions.
 *
 * Clocks: seconds and milliseconds of CLOCK_MONOTONIC, which every
 * process of the machine shares, as the sweep in the master does.
 */
#include <osipparser2/osip_parser.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "shm/dialog.h"
#include "shm/limits.h"
#include "worker/calls.h"
#include "worker/sdp.h"

static uint64_t now_s(void)
{
	return tg_now_ms() / 1000;
}

static uint64_t key_of(worker_t *w, osip_message_t *msg, const char *tag)
{
	const char *cid = sip_call_id(msg);

	return shm_dialog_key(w->c->shm->dialogs, cid ? cid : "", cid ? strlen(cid) : 0, tag ? tag : "",
	                      tag ? strlen(tag) : 0);
}

/* The dialog of an in-dialog request or a response: by the From tag, then the To tag. */
static int find(worker_t *w, osip_message_t *msg, shm_dialog_ref_t *ref)
{
	const char *ft = sip_tag_of(msg->from), *tt = sip_tag_of(msg->to);

	if (ft != NULL && shm_dialog_find(w->c->shm->dialogs, key_of(w, msg, ft), ref) == SHM_DIALOG_EXISTS)
		return 1;
	return tt != NULL &&
	       shm_dialog_find(w->c->shm->dialogs, key_of(w, msg, tt), ref) == SHM_DIALOG_EXISTS;
}

/* Retry-After goes only on the replies RFC 3261 20.33 allows it on. */
static int retry_after_allowed(int code)
{
	return code == 404 || code == 413 || code == 480 || code == 486 || code == 500 || code == 503 ||
	       code == 600 || code == 603;
}

static void refuse(worker_t *w, const pkt_t *p, osip_message_t *msg, int reason, const tg_refusal_t *r,
                   const char *account, const char *limit)
{
	const tg_config_t *cfg = &w->c->cfg;
	char ra[16];
	const char *names[1] = {"Retry-After"}, *values[1] = {ra};
	int n = 0;

	worker_refusal(w, reason);
	worker_count(w, sip_method_index(msg->sip_method), SHM_O_REJECTED);
	log_notice("request_refused", "src=%s method=%s call_id=%s reason=%s account=%s limit=%s code=%d",
	           p->srcstr, msg->sip_method, sip_call_id(msg), shm_reason_name(reason),
	           account ? account : "", limit ? limit : "", r->code);
	if (cfg->retry_after_s > 0 && retry_after_allowed(r->code)) {
		snprintf(ra, sizeof ra, "%u", cfg->retry_after_s);
		n = 1;
	}
	reply_send_headers(w, p, msg, r->code, r->reason, names, values, n);
}

/* The configured refusal a remembered code stands for (a retransmission gets the same answer). */
static const tg_refusal_t *refusal_of(const tg_config_t *cfg, int code)
{
	const tg_refusal_t *all[] = {&cfg->refuse_channels, &cfg->refuse_cps, &cfg->refuse_dialogs_full,
	                             &cfg->refuse_destination};

	for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
		if (all[i]->code == code)
			return all[i];
	return &cfg->refuse_channels;
}

static void log_ended(worker_t *w, shm_dialog_ref_t ref, const char *call_id, int reason)
{
	shm_dialog_info_t info;
	shm_limit_stat_t st;
	const char *name = "";

	if (shm_dialog_read(w->c->shm->dialogs, w->c->shm->limits, ref, &info) &&
	    shm_limits_lookup(w->c->shm->limits, SHM_LIMIT_ACCOUNT, info.account, &st))
		name = st.name;
	log_info("dialog_ended", "call_id=%s account=%s reason=%s", call_id ? call_id : "", name,
	         calls_end_reason_name(reason));
}

const char *calls_end_reason_name(int reason)
{
	switch (reason) {
	case SHM_DE_REJECTED:
		return "failed";
	case SHM_DE_CANCEL:
		return "cancelled";
	case SHM_DE_BYE:
		return "bye";
	case SHM_DE_EARLY_TIMEOUT:
		return "expired_early";
	case SHM_DE_MAX_DURATION:
		return "expired_duration";
	case SHM_DE_CLAIM_TIMEOUT:
		return "expired_claim";
	default:
		return shm_dialog_reason_name(reason);
	}
}

/* Restricted codecs: the callback for sdp_filter_codecs(). */
typedef struct codec_ctx {
	const snap_view_t *v;
	const snap_account_sh_t *a;
} codec_ctx_t;

static int codec_restricted(void *arg, const char *name, size_t len)
{
	const codec_ctx_t *c = arg;

	return snap_account_codec_restricted(c->v, c->a, name, len);
}

int calls_codecs(worker_t *w, const pkt_t *p, osip_message_t *msg, const snap_account_sh_t *a)
{
	osip_body_t *body = NULL;
	codec_ctx_t ctx = {&w->snap, a};
	size_t outlen = 0;
	char *out;
	int rc;

	if (snap_account_ncodecs(&w->snap, a) == 0 || osip_message_get_body(msg, 0, &body) != 0 ||
	    body == NULL || body->body == NULL || body->length == 0)
		return CALLS_PASS;
	/* filtering only removes: the input's length is room enough */
	out = osip_malloc(body->length + 1);
	if (out == NULL)
		return CALLS_PASS;
	rc = sdp_filter_codecs(body->body, body->length, codec_restricted, &ctx, out, body->length, &outlen);
	if (rc == SDP_NO_CODEC) {
		tg_refusal_t r = {488, "Not Acceptable Here"};
		osip_free(out);
		refuse(w, p, msg, SHM_R_NO_CODEC, &r, a->name, NULL);
		return CALLS_ANSWERED;
	}
	if (rc != SDP_CHANGED) {
		osip_free(out);
		return CALLS_PASS;
	}
	out[outlen] = '\0';
	osip_free(body->body);
	body->body = out;
	body->length = outlen;
	/* libosip2 writes Content-Length from the bodies when re-serialising */
	osip_content_length_free(msg->content_length);
	msg->content_length = NULL;
	return CALLS_PASS;
}

int calls_policy(worker_t *w, const pkt_t *p, osip_message_t *msg, const snap_account_sh_t *a)
{
	const tg_config_t *cfg = &w->c->cfg;
	const char *user = msg->req_uri && msg->req_uri->username ? msg->req_uri->username : "";

	if (!snap_account_destination_allowed(&w->snap, a, user, strlen(user))) {
		refuse(w, p, msg, SHM_R_DESTINATION_DENIED, &cfg->refuse_destination, a->name, NULL);
		return CALLS_ANSWERED;
	}
	return calls_codecs(w, p, msg, a);
}

int calls_admit(worker_t *w, const pkt_t *p, osip_message_t *msg, const snap_account_sh_t *a,
                const snap_rule_sh_t *rule, int direction)
{
	const tg_config_t *cfg = &w->c->cfg;
	shm_dialog_sh_t *dh = w->c->shm->dialogs;
	shm_limits_sh_t *lh = w->c->shm->limits;
	shm_dialog_ref_t ref = 0;
	shm_dialog_info_t info;
	shm_limit_req_t reqs[2];
	int n = 0, which = 0;
	uint64_t now = now_s();
	shm_limit_result_t lr;
	/* the INVITE's CSeq number, never 0: what its retransmissions and spirals repeat */
	uint16_t txn = (uint16_t)(strtoul(msg->cseq->number, NULL, 10) % 65535 + 1);

	switch (shm_dialog_begin(dh, lh, key_of(w, msg, sip_tag_of(msg->from)), now, &ref)) {
	case SHM_DIALOG_NEW:
		break;
	case SHM_DIALOG_EXISTS:
		/* a retransmission or a spiral: it holds what it took; a refused one is refused alike */
		if (!shm_dialog_read(dh, lh, ref, &info))
			return CALLS_PASS; /* gone this instant: the dialog's retransmission, late */
		if (info.state == SHM_DS_REFUSED) {
			refuse(w, p, msg, SHM_R_REFUSED_AGAIN, refusal_of(cfg, info.code), a->name, NULL);
			return CALLS_ANSWERED;
		}
		/*
		 * Another CSeq is another INVITE reusing the key (after a 3xx or a
		 * 401 from the softswitch, or on purpose): admitted as a
		 * retransmission it would be a call that holds no channel. The key
		 * is taken until the dialog is forgotten (calls.linger_s after its
		 * end), so it is refused until then.
		 */
		if (info.txn != txn) {
			refuse(w, p, msg, SHM_R_DIALOG_REUSED, &cfg->refuse_dialogs_full, a->name, NULL);
			return CALLS_ANSWERED;
		}
		return CALLS_PASS;
	case SHM_DIALOG_PENDING:
		/* another worker is admitting this very INVITE: it answers */
		worker_count(w, SHM_M_INVITE, SHM_O_DROPPED);
		return CALLS_ANSWERED;
	default: /* FULL, BUSY */
		refuse(w, p, msg, SHM_R_DIALOG_TABLE_FULL, &cfg->refuse_dialogs_full, a->name, NULL);
		return CALLS_ANSWERED;
	}
	reqs[n++] = (shm_limit_req_t){SHM_LIMIT_ACCOUNT, a->id,        a->max_channels,
	                              a->max_cps,        a->cps_burst, a->name};
	if (rule != NULL && (rule->max_channels > 0 || rule->max_cps > 0))
		reqs[n++] = (shm_limit_req_t){SHM_LIMIT_RULE, rule->id,        rule->max_channels,
		                              rule->max_cps,  rule->cps_burst, NULL};
	lr = shm_dialog_acquire(dh, lh, ref, reqs, n, tg_now_ms(), &which);
	if (lr == SHM_LIMIT_OK && shm_dialog_commit(dh, ref, a->id, rule ? rule->id : 0, direction, txn))
		return CALLS_PASS;
	if (lr == SHM_LIMIT_CHANNELS || lr == SHM_LIMIT_CPS) {
		const tg_refusal_t *r = lr == SHM_LIMIT_CHANNELS ? &cfg->refuse_channels : &cfg->refuse_cps;
		shm_dialog_refuse(dh, lh, ref, r->code, now);
		refuse(w, p, msg, lr == SHM_LIMIT_CHANNELS ? SHM_R_CHANNELS_EXCEEDED : SHM_R_CPS_EXCEEDED, r,
		       a->name, reqs[which].kind == SHM_LIMIT_RULE ? "rule" : "account");
		return CALLS_ANSWERED;
	}
	/* the limit table full or racing, or the dialog swept under us: nothing held; let a retransmission
	 * retry */
	shm_dialog_abandon(dh, lh, ref, now);
	refuse(w, p, msg, SHM_R_DIALOG_TABLE_FULL, &cfg->refuse_dialogs_full, a->name,
	       shm_limit_result_name(lr));
	return CALLS_ANSWERED;
}

static int needs_dialog(const osip_message_t *msg)
{
	static const char *const methods[] = {"INVITE", "ACK", "BYE", "UPDATE", "INFO", "PRACK", "REFER"};

	for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++)
		if (strcmp(msg->sip_method, methods[i]) == 0)
			return 1;
	return 0;
}

int calls_in_dialog(worker_t *w, const pkt_t *p, osip_message_t *msg)
{
	shm_dialog_ref_t ref = 0;
	shm_dialog_info_t info;

	if (!needs_dialog(msg))
		return CALLS_PASS;
	if (!find(w, msg, &ref) || !shm_dialog_read(w->c->shm->dialogs, w->c->shm->limits, ref, &info) ||
	    info.state == SHM_DS_REFUSED) {
		if (MSG_IS_ACK(msg) && reply_tag_is_ours(w, msg, sip_tag_of(msg->to))) {
			/* the ACK of our own refusal: it ends here, and is no fault of anyone's */
			worker_count(w, SHM_M_ACK, SHM_O_DROPPED);
			return CALLS_ANSWERED;
		}
		worker_refusal(w, SHM_R_NO_DIALOG);
		if (MSG_IS_ACK(msg)) {
			worker_count(w, SHM_M_ACK, SHM_O_DROPPED);
			return CALLS_ANSWERED;
		}
		worker_count(w, sip_method_index(msg->sip_method), SHM_O_REJECTED);
		log_notice("request_refused", "src=%s method=%s call_id=%s reason=%s code=%d", p->srcstr,
		           msg->sip_method, sip_call_id(msg), shm_reason_name(SHM_R_NO_DIALOG), 481);
		reply_send(w, p, msg, 481, "Call/Transaction Does Not Exist");
		return CALLS_ANSWERED;
	}
	return CALLS_PASS;
}

void calls_response(worker_t *w, osip_message_t *msg)
{
	shm_dialog_sh_t *dh = w->c->shm->dialogs;
	shm_limits_sh_t *lh = w->c->shm->limits;
	shm_dialog_ref_t ref = 0;
	const char *method = msg->cseq ? msg->cseq->method : NULL;
	int code = msg->status_code, reason;

	if (method == NULL || code < 100)
		return;
	if (strcmp(method, "BYE") == 0) {
		/*
		 * A BYE ends the call when it is answered 2xx. Not on the request: a
		 * customer could free its channel with a BYE the softswitch refuses
		 * while the call goes on. Not on a 481 or 408 either, though RFC 3261
		 * 12.2.1.2 ends the dialog then: the table knows the dialog by its
		 * Call-ID and one tag, so a BYE with a made-up To tag would draw a
		 * 481 for a call that lives on; a call whose softswitch side is
		 * really gone ends by calls.max_duration_s. Sent by either side: its
		 * From tag is the caller's or the callee's, and find() tries both.
		 */
		if (code >= 200 && code < 300 && find(w, msg, &ref) &&
		    shm_dialog_end(dh, lh, ref, SHM_DE_BYE, now_s()))
			log_ended(w, ref, sip_call_id(msg), SHM_DE_BYE);
		return;
	}
	if (strcmp(method, "INVITE") != 0)
		return;
	/* the caller's tag is the From tag of every response to its INVITE */
	if (shm_dialog_find(dh, key_of(w, msg, sip_tag_of(msg->from)), &ref) != SHM_DIALOG_EXISTS)
		return;
	if (code < 200) {
		shm_dialog_ring(dh, ref, now_s());
		return;
	}
	if (code < 300) {
		shm_dialog_confirm(dh, ref, now_s());
		return;
	}
	/*
	 * A failure ends the call only while it is unanswered (one CAS from
	 * EARLY): once confirmed, a non-2xx to an INVITE answers a re-INVITE
	 * (491, 488...) and the call goes on. A CANCEL ends it here too, by the
	 * 487 it brings: on the CANCEL itself, one the softswitch does not match
	 * (another branch, or crossing the 200) would free a live call's channel.
	 */
	reason = code == 487 ? SHM_DE_CANCEL : SHM_DE_REJECTED;
	if (shm_dialog_fail(dh, lh, ref, reason, now_s()))
		log_ended(w, ref, sip_call_id(msg), reason);
}
