/*
 * The dialog table shared by all workers: one entry per call tollgate let
 * through (or refused), keyed by a 64-bit SipHash of the Call-ID and the
 * From tag of the INVITE that opened it; a fixed-capacity, lock-free,
 * open-addressing table in shared memory. It answers "is this a
 * retransmission, an in-dialog request of a live call, or nothing we
 * know?", and it holds the call's channels (shm/limits.h) so that they
 * are given back exactly once, whichever of a final non-2xx, a CANCEL, a
 * BYE from either side or the sweep ends the call, in whichever worker.
 *
 * A new call, in this order:
 *   shm_dialog_begin()    NEW: the slot is this caller's (CLAIMED);
 *   shm_dialog_acquire()  its limits: channels and CPS tokens, recorded in
 *                         the slot's holder as they are taken;
 *   shm_dialog_commit()   OK: EARLY; or shm_dialog_refuse(): REFUSED with
 *                         the code to repeat to retransmissions; or
 *                         shm_dialog_abandon(): FREE again.
 * then shm_dialog_confirm() (2xx) and shm_dialog_end() (final non-2xx,
 * CANCEL, BYE). Limits are taken after the slot is claimed because the
 * slot's holder is where a take is recorded: a worker killed at any
 * instruction leaves either a CLAIMED slot (the sweep ends it after
 * claim_s) or a slot whose holder says exactly what it holds or was
 * taking (the sweep finishes it). No count leaks and none is given back
 * twice; see the ordering rule in shm/limits.h.
 *
 * Identity is the 64-bit keyed hash: two dialogs whose hashes collide
 * (2^-64 a pair, not aimable without the key) share an entry.
 *
 * Capacity: a power of two, at most SHM_LIMITS_MAX_HOLDERS (the limits
 * table has one holder per dialog slot). Entries live while the call
 * lives and linger_s after it ends or is refused (so retransmissions,
 * the 200 to a BYE and the ACK of a non-2xx still match), so size it for
 * (concurrent calls + call attempts per second x linger_s) x 2. A full
 * probe window refuses the call with SHM_DIALOG_FULL, counted.
 */
#ifndef TG_SHM_DIALOG_H
#define TG_SHM_DIALOG_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "shm/limits.h"

#define SHM_DIALOG_PROBE   16 /* slots a key may occupy, from its home slot on */
#define SHM_DIALOG_RETRIES 8  /* attempts before giving up with SHM_DIALOG_BUSY */

enum shm_dialog_state {
	SHM_DS_FREE,
	SHM_DS_CLAIMED,   /* being created by the worker that got NEW */
	SHM_DS_EARLY,     /* committed, no final answer yet */
	SHM_DS_CONFIRMED, /* answered 2xx */
	SHM_DS_ENDED,     /* over; lingers linger_s */
	SHM_DS_REFUSED,   /* refused by limits; lingers linger_s, repeating its code */
	SHM_DS_COUNT
};

/* Why a dialog ended. Stable strings in shm_dialog_reason_name(). */
enum shm_dialog_reason {
	SHM_DE_REJECTED,      /* a final non-2xx to the INVITE */
	SHM_DE_CANCEL,        /* the caller cancelled */
	SHM_DE_BYE,           /* either side hung up */
	SHM_DE_EARLY_TIMEOUT, /* sweep: no final answer within early_s */
	SHM_DE_MAX_DURATION,  /* sweep: answered longer than max_duration_s ago */
	SHM_DE_CLAIM_TIMEOUT, /* sweep: claimed, never committed (its worker died) */
	SHM_DE_ABANDONED,     /* the creator let it go (shm_dialog_abandon) */
	SHM_DE_COUNT
};

enum shm_dialog_direction {
	SHM_DIALOG_INGRESS, /* a customer's call to the softswitch */
	SHM_DIALOG_EGRESS,  /* the softswitch's call to a customer */
};

/*
 * One slot, one cache line.
 *
 * Ordering rule (state, ins and mark sequentially consistent; key and the
 * other fields relaxed, published by the CAS that follows their store):
 *   - state goes FREE(g) -> CLAIMED(g + 1) by CAS: a claim, tried only
 *     by a worker whose scan of the key's whole window found no entry of
 *     it; the claimer writes key and created_s, validates on the home
 *     slot's ins as in shm/nonce.h (none other homed there validated
 *     since its scan began, so exactly one of N racing workers gets NEW
 *     for a key), and opens the slot's holder for generation g + 1.
 *     A claimer that fails validation moves it back to FREE.
 *   - every later change is a CAS of state from a value carrying the
 *     caller's generation (the ref's), so a worker holding a ref to a
 *     dialog that ended and whose slot was reused changes nothing:
 *       CLAIMED -> EARLY (commit), REFUSED (refuse), FREE (abandon),
 *       ENDED (the sweep: claim_s old);
 *       EARLY -> CONFIRMED (confirm); EARLY, CONFIRMED -> ENDED (end,
 *       or the sweep's timeouts): one CAS, so exactly one caller ends it
 *       and gets 1; it (or, if it dies, the sweep) then releases the
 *       holder, which the limits protocol makes exactly-once;
 *       ENDED, REFUSED -> FREE (the sweep, after linger_s, once the
 *       holder holds nothing and is closed; key is cleared first, by
 *       CAS). One process sweeps: two would race on mark and the gauges.
 *   - the fields each transition sets are written before its CAS (by the
 *     one worker that owns a CLAIMED slot, or by every racer of a CAS
 *     with the same value give or take a second), so whoever sees the
 *     new state sees them.
 *   - a reader may see: a CLAIMED slot with key 0 (its claimer is about
 *     to write it); fields of a slot that changed generation after the
 *     reader checked state (shm_dialog_read() checks again).
 * A worker stopped for claim_s between claiming and committing finds its
 * dialog ENDED by the sweep and its holder given back: commit answers 0
 * and the call is refused. One stopped longer than linger_s while
 * holding a ref may write one time field of the slot's next dialog (its
 * CAS then fails): a time off by a little, for that one call.
 */
typedef struct shm_dialog_entry_sh {
	_Alignas(64) _Atomic uint64_t state; /* generation << 32 | enum shm_dialog_state; writer: CAS */
	_Atomic uint64_t key;                /* shm_dialog_key(), 0 = none; writer: the claimer */
	_Atomic uint64_t ins;                /* validated claims of keys homed here; writer: workers, CAS */
	_Atomic uint64_t mark;       /* 1 << 63 | gen << 32 | s first seen CLAIMED; writer: the sweep */
	_Atomic int64_t account;     /* tollgate.accounts.id, 0 = none; writer: the claimer, at commit */
	_Atomic int64_t rule;        /* tollgate.ip_rules.id, 0 = none; writer: the claimer, at commit */
	_Atomic uint32_t created_s;  /* claimed at (caller clock); writer: the claimer */
	_Atomic uint32_t answered_s; /* 2xx at; writer: the confirmer, before its CAS */
	_Atomic uint32_t ended_s;    /* ended or refused at; writer: the ender, before its CAS */
	_Atomic uint32_t meta; /* code << 16 | reason << 8 | direction; writer: committer, refuser, ender */
} shm_dialog_entry_sh_t;

typedef struct shm_dialog_sh {
	uint32_t capacity; /* slots, a power of two >= SHM_DIALOG_PROBE; writer: master, at init */
	uint32_t mask;     /* capacity - 1 */
	uint8_t seed[16];  /* SipHash key of shm_dialog_key(); writer: master, at init */
	_Alignas(64) _Atomic uint64_t full;    /* begins refused: probe window full; writer: workers */
	_Alignas(64) _Atomic uint64_t busy;    /* begins refused: kept losing races; writer: workers */
	_Alignas(64) _Atomic uint64_t refused; /* dialogs refused by limits; writer: workers */
	_Alignas(64) _Atomic uint64_t ends[SHM_DE_COUNT]; /* dialogs ended, by reason; writer: the ender */
	_Alignas(64) _Atomic uint64_t
	        live[SHM_DS_COUNT];                 /* entries by state at the last sweep; writer: sweep */
	_Atomic uint64_t sweeps;                    /* sweeps run; writer: the sweep */
	_Alignas(64) shm_dialog_entry_sh_t entry[]; /* [capacity] */
} shm_dialog_sh_t;

typedef enum shm_dialog_result {
	SHM_DIALOG_NEW,     /* begin: the slot is the caller's; acquire, then commit, refuse or abandon */
	SHM_DIALOG_EXISTS,  /* an entry of the key, in a state shm_dialog_read() gives */
	SHM_DIALOG_PENDING, /* another worker is creating it right now: drop the packet */
	SHM_DIALOG_NONE,    /* find: no entry of the key */
	SHM_DIALOG_FULL,    /* begin: no free slot in the key's probe window */
	SHM_DIALOG_BUSY,    /* begin: the window kept changing under the call */
} shm_dialog_result_t;

/* A dialog: generation << 32 | slot. Stale once the slot's generation moves on. */
typedef uint64_t shm_dialog_ref_t;

/* A copy of an entry. */
typedef struct shm_dialog_info {
	uint32_t state; /* enum shm_dialog_state */
	uint32_t created_s, answered_s, ended_s;
	int64_t account, rule;
	uint8_t direction; /* enum shm_dialog_direction */
	uint8_t reason;    /* enum shm_dialog_reason, once ENDED */
	uint16_t code;     /* the SIP status refused with, once REFUSED */
	uint16_t txn;      /* the committer's fingerprint of the opening INVITE (its CSeq); 0 when REFUSED */
	int nheld;         /* limit entries held (or being taken or given back) */
	uint32_t held[SHM_LIMITS_PER_HOLDER];
} shm_dialog_info_t;

/* What the sweep does, in seconds of the caller clock. */
typedef struct shm_dialog_timeouts {
	uint32_t early_s;        /* EARLY this long (since created, or its last 1xx): ended (180, Timer C) */
	uint32_t max_duration_s; /* CONFIRMED this long (since answered): ended; 0 = never */
	uint32_t linger_s;       /* ENDED or REFUSED this long: freed (32 covers Timer J and H) */
	uint32_t claim_s;        /* CLAIMED this long: its worker died; ended (e.g. 5) */
} shm_dialog_timeouts_t;

/* Called by the sweep for each dialog it ended, after its channels were given back. */
typedef void shm_dialog_swept_fn(void *arg, shm_dialog_ref_t ref, const shm_dialog_info_t *info, int reason);

/* Bytes the table takes for capacity slots (a multiple of 64). */
size_t shm_dialog_size(uint32_t capacity);
/* Master, before any fork: mem is shm_dialog_size() bytes, 64-byte aligned; capacity = the limits' nholders.
 */
shm_dialog_sh_t *shm_dialog_init(void *mem, uint32_t capacity, const uint8_t seed[16]);
/* The key of a dialog: its Call-ID and the From tag of the INVITE that opened it (as sent). */
uint64_t shm_dialog_key(const shm_dialog_sh_t *sh, const char *call_id, size_t cid_len, const char *tag,
                        size_t tag_len);

/* For an INVITE without a To tag. NEW and EXISTS set *ref. */
shm_dialog_result_t shm_dialog_begin(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, uint64_t key, uint64_t now_s,
                                     shm_dialog_ref_t *ref);
/*
 * The limits of the call just begun: one token and one channel of each
 * key, all or nothing (shm_limits_acquire()); they stay with the dialog
 * until it ends. Then commit on OK, refuse otherwise.
 */
shm_limit_result_t shm_dialog_acquire(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref,
                                      const shm_limit_req_t *reqs, int n, uint64_t now_ms, int *which);
/*
 * CLAIMED -> EARLY. Returns 1, or 0 when the dialog is no longer CLAIMED:
 * swept after claim_s, the sweep gives back what it held; refuse the call.
 */
int shm_dialog_commit(shm_dialog_sh_t *sh, shm_dialog_ref_t ref, int64_t account, int64_t rule, int direction,
                      uint16_t txn);
/* CLAIMED -> REFUSED with a SIP status to repeat; gives back anything held. 1, or 0 when not CLAIMED. */
int shm_dialog_refuse(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int code,
                      uint64_t now_s);
/* CLAIMED -> FREE (the call is not going ahead and needs no memory); gives back anything held. */
int shm_dialog_abandon(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, uint64_t now_s);

/* For an in-dialog request or a response: try the From tag, then the To tag. EXISTS sets *ref. */
shm_dialog_result_t shm_dialog_find(shm_dialog_sh_t *sh, uint64_t key, shm_dialog_ref_t *ref);
/* EARLY -> CONFIRMED (a 2xx to the INVITE). 1 for the one caller that confirmed it. */
int shm_dialog_confirm(shm_dialog_sh_t *sh, shm_dialog_ref_t ref, uint64_t now_s);
/*
 * EARLY or CONFIRMED -> ENDED, and its channels given back: returns 1 to
 * the one caller, of any number racing here and in the sweep, that ended
 * it; 0 to the others (already ended, refused, or another dialog now).
 */
int shm_dialog_end(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int reason,
                   uint64_t now_s);
/*
 * EARLY -> ENDED only: a final failure to the INVITE that opened the
 * dialog. Once CONFIRMED a failure answers a re-INVITE and ends nothing;
 * the one CAS decides, so a 2xx confirming at the same instant wins.
 */
int shm_dialog_fail(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int reason,
                    uint64_t now_s);
/* A provisional response: an EARLY dialog's early timer starts again (RFC 3261 Timer C). */
void shm_dialog_ring(shm_dialog_sh_t *sh, shm_dialog_ref_t ref, uint64_t now_s);
/* A copy of ref's entry: 1, or 0 when the slot no longer holds that dialog. */
int shm_dialog_read(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, shm_dialog_info_t *out);

/*
 * Housekeeping, once a second by one process (the master): ends what
 * timed out (and gives its channels back, exactly once, via the same CAS
 * as shm_dialog_end()), calling swept (may be NULL) for each; finishes
 * releases that workers left half done; frees ENDED and REFUSED entries
 * after linger_s; counts entries by state into sh->live[].
 */
void shm_dialog_sweep(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, uint64_t now_s,
                      const shm_dialog_timeouts_t *t, shm_dialog_swept_fn *swept, void *arg);

const char *shm_dialog_result_name(shm_dialog_result_t r);
const char *shm_dialog_state_name(int state);
const char *shm_dialog_reason_name(int reason);

#endif
