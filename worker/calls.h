/*
 * Dialogs, channel and CPS limits, destination and codec policy on the
 * SIP path; see calls.c.
 */
#ifndef TG_CALLS_H
#define TG_CALLS_H

#include "shm/snapshot.h"
#include "worker/worker.h"

enum calls_verdict {
	CALLS_PASS,     /* forward it */
	CALLS_ANSWERED, /* refused (and answered, or dropped): nothing to forward */
};

/* A new INVITE's destination and SDP against its account's policy; may rewrite the body. */
int calls_policy(worker_t *w, const pkt_t *p, osip_message_t *msg, const snap_account_sh_t *a);
/*
 * A new INVITE (no To tag) that passed authentication: its dialog and
 * limits. rule: the IP rule matched, or NULL (digest, route token).
 * direction: SHM_DIALOG_INGRESS or SHM_DIALOG_EGRESS.
 */
int calls_admit(worker_t *w, const pkt_t *p, osip_message_t *msg, const snap_account_sh_t *a,
                const snap_rule_sh_t *rule, int direction);
/* An in-dialog request (To tag): must match a dialog (481 / ACK dropped); a BYE ends it. */
int calls_in_dialog(worker_t *w, const pkt_t *p, osip_message_t *msg);
/* The restricted codecs alone, for an offer in a re-INVITE or UPDATE. */
int calls_codecs(worker_t *w, const pkt_t *p, osip_message_t *msg, const snap_account_sh_t *a);
/* A response being relayed: a final answer to an INVITE confirms or ends its dialog. */
void calls_response(worker_t *w, osip_message_t *msg);
/* "failed", "cancelled", "bye", "expired_early", "expired_duration", ... for dialog_ended. */
const char *calls_end_reason_name(int reason);

#endif
