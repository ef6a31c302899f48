/*
 * The shared-memory segment: one anonymous MAP_SHARED mapping made by the
 * master before any fork, so every child sees it at the same address. Even
 * so, structures inside refer to each other by offsets, never pointers, so
 * the layout stays valid if it is ever mapped elsewhere (a file, a debugger).
 *
 * Layout, each part aligned to a cache line:
 *   shm_header_sh_t         magic, layout version, offsets and sizes
 *   shm_proc_sh_t[]         one slot per child (loader, then workers)
 *   shm_stats_sh_t[]        per-worker counters (each written by its worker only)
 *   shm_loader_sh_t         loader status (database state, snapshot stats)
 *   shm_confbuf_sh_t        the running configuration, seqlock double buffer
 *   shm_snapctl_sh_t        the published snapshot generation, base bookkeeping
 *   shm_nonce_sh_t          digest nonce counts (shm/nonce.h), capacity.nonces slots
 *   shm_failures_sh_t       authentication failures by source (shm/failures.h)
 *   head arena[2]           provisioning heads: accounts, overlay, tombstones
 *                           (header.head_size bytes each, snap_head_size_bound())
 *   base arena[2]           provisioning bases: rule entries and their index
 *                           (header.base_size bytes each, snap_base_size_bound())
 * Arenas start on a page; see snapshot.h for what they hold and when
 * each may be rewritten.
 *
 * Ordering: every field names its writer. Fields read by other processes
 * are C11 atomics; a process never waits for another.
 */
#ifndef TG_SHM_H
#define TG_SHM_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "master/config.h"

#define SHM_CACHELINE        64
#define SHM_MAGIC            0x74676174654d454dULL /* "tgateMEM" */
#define SHM_LAYOUT_VERSION   4
#define SHM_FAILURE_WINDOW_S 60 /* seconds per window of the failure counts (shm/failures.h) */

/* Request methods and outcomes counted per worker. */
enum shm_method {
	SHM_M_INVITE,
	SHM_M_ACK,
	SHM_M_BYE,
	SHM_M_CANCEL,
	SHM_M_REGISTER,
	SHM_M_OPTIONS,
	SHM_M_OTHER,
	SHM_M_RESPONSE, /* SIP responses relayed */
	SHM_M_COUNT
};

enum shm_outcome {
	SHM_O_FORWARDED, /* sent on downstream or towards a customer */
	SHM_O_REJECTED,  /* answered with an error reply by us */
	SHM_O_DROPPED,   /* silently discarded */
	SHM_O_ANSWERED,  /* answered by us with success (OPTIONS keepalive to tollgate) */
	SHM_O_COUNT
};

/* What digest authentication did with a request. */
enum shm_digest {
	SHM_D_CHALLENGED, /* answered 401/407 without stale */
	SHM_D_STALE,      /* answered 401/407 with stale=true */
	SHM_D_ACCEPTED,   /* credentials verified */
	SHM_D_FAILED,     /* refused: a reason in refusals[] */
	SHM_D_DIALOG,     /* in-dialog request let through by the token in our Record-Route */
	SHM_D_COUNT
};

const char *shm_digest_name(int d);

/* Why a request did not pass. Stable strings in shm_reason_name(). */
enum shm_reason {
	SHM_R_UNKNOWN_SOURCE,
	SHM_R_NO_RULE_FITS, /* address matched, port/prefix did not */
	SHM_R_ACCOUNT_INACTIVE,
	SHM_R_NO_PROVISIONING, /* no snapshot loaded yet */
	SHM_R_MALFORMED,       /* unparseable or missing mandatory headers */
	SHM_R_TOO_MANY_HOPS,   /* Max-Forwards reached 0 */
	SHM_R_LOOP,            /* next hop is ourselves */
	SHM_R_BAD_VIA,         /* response whose top Via is not ours */
	SHM_R_NO_ROUTE,        /* no usable next hop */
	SHM_R_SEND_FAILED,
	SHM_R_TOO_LARGE,
	/* digest (the log says which user; see worker/auth.c) */
	SHM_R_BAD_CREDENTIALS, /* credentials that do not parse, or not for our realm's rules */
	SHM_R_UNKNOWN_USER,
	SHM_R_USER_INACTIVE,
	SHM_R_SOURCE_NOT_ALLOWED, /* the user's allowed sources exclude the address */
	SHM_R_WRONG_PASSWORD,
	SHM_R_NONCE_REPLAY,       /* a nonce count that did not increase */
	SHM_R_NONCE_TABLE_FULL,   /* capacity.nonces too small for the traffic */
	SHM_R_EGRESS_DENIED,      /* the softswitch's request to an address no egress rule covers */
	SHM_R_AOR_MISMATCH,       /* a REGISTER for another user than the one authenticated */
	SHM_R_CHANNELS_EXCEEDED,  /* the account's or the rule's max_channels */
	SHM_R_CPS_EXCEEDED,       /* the account's or the rule's max_cps */
	SHM_R_DESTINATION_DENIED, /* the account's allowed/denied destination prefixes */
	SHM_R_NO_CODEC,           /* nothing left of the SDP offer after restricted codecs: 488 */
	SHM_R_DIALOG_TABLE_FULL,  /* capacity.dialogs (or capacity.limit_keys) too small */
	SHM_R_NO_DIALOG,          /* an in-dialog request matching no dialog: 481 */
	SHM_R_REFUSED_AGAIN,      /* a retransmission of a refused INVITE: the same refusal */
	SHM_R_DIALOG_REUSED, /* a new INVITE (another CSeq) with the Call-ID and From tag of a known dialog */
	SHM_R_COUNT
};

const char *shm_method_name(int m);
const char *shm_outcome_name(int o);
const char *shm_reason_name(int r);

typedef struct shm_header_sh {
	uint64_t magic;          /* SHM_MAGIC; writer: master, once */
	uint32_t layout_version; /* SHM_LAYOUT_VERSION */
	uint32_t nprocs;         /* loader + workers */
	uint32_t nworkers;
	uint32_t pad;
	uint64_t total_size; /* bytes */
	uint64_t off_procs, off_stats, off_loader, off_conf, off_snapctl;
	uint64_t off_head[2];  /* head arenas, from the segment's start */
	uint64_t head_size;    /* bytes each */
	uint64_t off_base[2];  /* base arenas */
	uint64_t base_size;    /* bytes each */
	uint32_t cap_accounts; /* the capacity the arenas were sized for */
	uint32_t cap_ip_rules;
	uint8_t secret[32];        /* random at master start; keys the Via branch check and route tokens */
	uint8_t digest_secret[32]; /* random at master start; keys nonces unless digest.secret_file is set */
	uint64_t off_nonce,
	        off_failures; /* the nonce-count and failure tables (shm/nonce.h, shm/failures.h) */
	uint64_t off_dialogs,
	        off_limits; /* the dialog table and channel/CPS counters (shm/dialog.h, shm/limits.h) */
	uint32_t cap_sip_users, cap_nonces, cap_failures;
	uint32_t pad2;
} shm_header_sh_t;

/* One per child. Index 0 is the loader, 1..N the workers. */
typedef struct shm_proc_sh {
	_Alignas(SHM_CACHELINE) _Atomic uint64_t
	        epoch; /* snapshot generation held, 0 = none; writer: the child, master clears on death */
	_Atomic int32_t pid;          /* writer: master */
	_Atomic uint32_t serving;     /* 1 once its loop runs; writer: the child (master clears) */
	_Atomic uint64_t config_gen;  /* config generation applied; writer: the child */
	_Atomic uint64_t resync_done; /* loader only: config_gen whose resync finished; writer: loader */
	_Atomic uint64_t started_ms;  /* writer: master */
	_Atomic uint64_t log_gen;     /* the log reopen request it has carried out; writer: the child */
} shm_proc_sh_t;

typedef struct shm_stats_sh {
	_Alignas(SHM_CACHELINE) _Atomic uint64_t
	        requests[SHM_M_COUNT][SHM_O_COUNT]; /* count; writer: the worker */
	_Atomic uint64_t refusals[SHM_R_COUNT];     /* count; writer: the worker */
	_Atomic uint64_t digest[SHM_D_COUNT];       /* count; writer: the worker */
} shm_stats_sh_t;

typedef struct shm_loader_sh {
	_Alignas(SHM_CACHELINE) _Atomic uint32_t db_connected; /* 0/1; writer: loader */
	_Atomic uint32_t have_snapshot;                        /* 0/1 */
	_Atomic uint64_t snapshot_ms;   /* wall clock ms when the current snapshot was built */
	_Atomic uint64_t accounts;      /* in the current snapshot */
	_Atomic uint64_t ip_rules;      /* in the current snapshot */
	_Atomic uint64_t sip_users;     /* in the current snapshot */
	_Atomic uint64_t users_invalid; /* SIP users skipped at the last load */
	_Atomic uint64_t rules_invalid; /* rows skipped at the last load */
	_Atomic uint64_t loads;         /* full loads published */
	_Atomic uint64_t load_failures; /* full loads that failed */
	_Atomic uint64_t db_connects;   /* successful connections */
	_Atomic uint64_t publish_waits; /* times a publish waited for a reader */
	/* live provisioning; writer: loader */
	_Atomic uint64_t notifications;      /* NOTIFY messages received */
	_Atomic uint64_t deltas;             /* publishes of changes without a full load */
	_Atomic uint64_t forced_resyncs;     /* full loads a change forced (TRUNCATE, bulk, too many ids) */
	_Atomic uint64_t publish_latency_us; /* last publish: first change received -> published */
	_Atomic uint32_t snapshot_from_file; /* 0/1: serving the snapshot file, not the database */
	_Atomic uint32_t hostname_rules;     /* rules whose address is a host name */
	_Atomic uint64_t dns_failures;       /* host-name lookups that failed */
	_Atomic uint64_t snapshot_saves;     /* snapshot files written */
	_Atomic uint64_t snapshot_save_failures;
} shm_loader_sh_t;

/*
 * The running configuration. The master writes slot (gen+1)&1 then stores
 * gen+1; slot seq is odd while being written. A reader copies slot gen&1
 * and retries if its seq changed or was odd (a seqlock with two slots: the
 * writer never waits, a reader retries only while a reload is mid-copy).
 */
typedef struct shm_confslot_sh {
	_Alignas(SHM_CACHELINE) _Atomic uint64_t seq;
	tg_config_t cfg;
} shm_confslot_sh_t;

typedef struct shm_confbuf_sh {
	_Alignas(SHM_CACHELINE) _Atomic uint64_t generation; /* writer: master; starts at 1 */
	_Atomic uint64_t log_gen; /* SIGUSR1 reopen requests so far; writer: master */
	shm_confslot_sh_t slot[2];
} shm_confbuf_sh_t;

/*
 * Snapshot publication; the order of stores and what a reader may see is
 * in snapshot.h. Only the loader writes; workers read generation alone.
 * base_last_head lives here, not in the loader's heap, so that a
 * respawned loader still knows which base a worker may be reading.
 */
typedef struct shm_snapctl_sh {
	_Alignas(SHM_CACHELINE) _Atomic uint64_t
	        generation; /* published head, 0 = none; head arena = gen & 1; writer: loader */
	_Atomic uint64_t base_last_head[2]; /* last head generation published that reads base arena i,
	                                       0 = none; writer: loader, before it stores generation */
} shm_snapctl_sh_t;

/* Process-local view: pointers computed from the base once after mapping. */
typedef struct shm {
	void *base;
	size_t size;
	shm_header_sh_t *hdr;
	shm_proc_sh_t *procs;  /* [nprocs] */
	shm_stats_sh_t *stats; /* [nworkers] */
	shm_loader_sh_t *loader;
	shm_confbuf_sh_t *conf;
	shm_snapctl_sh_t *snapctl;
	void *head_arena[2];
	size_t head_size; /* bytes each */
	void *base_arena[2];
	size_t base_size;                 /* bytes each */
	struct shm_nonce_sh *nonce;       /* nonce counts, all workers */
	struct shm_failures_sh *failures; /* authentication failures by source */
	struct shm_dialog_sh *dialogs;    /* calls in progress */
	struct shm_limits_sh *limits;     /* channels and CPS per account and rule */
} shm_t;

#define SHM_PROC_LOADER    0
#define SHM_PROC_WORKER(i) (1 + (i))

/* Bytes one head arena, and one base arena, need for the capacity in cfg. */
size_t shm_head_arena_size(const tg_config_t *cfg);
size_t shm_base_arena_size(const tg_config_t *cfg);
/* Master: map and initialise. Returns 0 or -1 (logged). */
int shm_create(shm_t *shm, const tg_config_t *cfg);
void shm_destroy(shm_t *shm);

/* Master: publish a new configuration to every child. */
void shm_config_publish(shm_t *shm, const tg_config_t *cfg);
/*
 * Child: copy the running configuration into *out if its generation
 * differs from *gen. Returns 1 when a new one was copied, 0 when unchanged.
 */
int shm_config_read(shm_t *shm, uint64_t *gen, tg_config_t *out);

#endif
