/*
 * The SIP path inside one worker process: shared declarations.
 */
#ifndef TG_WORKER_H
#define TG_WORKER_H

#include <osipparser2/osip_message.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/addr.h"
#include "master/proc.h"
#include "shm/shm.h"
#include "shm/snapshot.h"

#define WORKER_MAX_DGRAM 65535

typedef struct worker {
	tg_child_t *c;
	shm_stats_sh_t *stats; /* this worker's counters */
	snap_view_t snap;      /* held for the current batch; snap.head NULL when none */
	/* each listener's advertised address, parsed once per config */
	struct sockaddr_storage adv[TG_MAX_LISTEN];
	int adv_numeric[TG_MAX_LISTEN];
} worker_t;

/* One received datagram. */
typedef struct pkt {
	int lidx; /* listen index it arrived on */
	struct sockaddr_storage src;
	socklen_t srclen;
	tg_ip_t src_ip;
	uint16_t src_port;
	char srcstr[TG_SOCKADDR_STRLEN];
	char *buf; /* NUL-terminated */
	size_t len;
} pkt_t;

/* sip.c */
void sip_handle(worker_t *w, pkt_t *p);
int sip_method_index(const char *method);
const char *sip_call_id(const osip_message_t *msg);
/* The tag parameter of a From or To header, or NULL. */
const char *sip_tag_of(osip_from_t *f);
void sip_refresh_config(worker_t *w);

/* reply.c: answers made by tollgate itself, sent back to the packet's source. */
void reply_send(worker_t *w, const pkt_t *p, osip_message_t *req, int code, const char *reason);
/* The same with extra headers (names[i]: values[i]), e.g. a challenge. */
void reply_send_headers(worker_t *w, const pkt_t *p, osip_message_t *req, int code, const char *reason,
                        const char *const *names, const char *const *values, int n);
/* 1 when tag is the To tag tollgate put on its own replies to req (an ACK's, say). */
int reply_tag_is_ours(const worker_t *w, osip_message_t *req, const char *tag);
/* Parser gave up: answer 400 from the raw header lines when a Via is there, else nothing. Returns 1 if sent.
 */
int reply_raw_400(worker_t *w, const pkt_t *p, const char *why);

/* worker.c */
int worker_send(worker_t *w, int lidx, const struct sockaddr *dst, socklen_t dstlen, const char *buf,
                size_t len);
/* The listener to send from towards a family: the arrival one when it fits. -1: none. */
int worker_pick_listener(const worker_t *w, int arrival, int family);

static inline void worker_count(worker_t *w, int method, int outcome)
{
	atomic_fetch_add_explicit(&w->stats->requests[method][outcome], 1, memory_order_relaxed);
}

static inline void worker_refusal(worker_t *w, int reason)
{
	atomic_fetch_add_explicit(&w->stats->refusals[reason], 1, memory_order_relaxed);
}

#endif
