/*
 * Authentication failures per source address, shared by all workers, for
 * threat detection (fail-to-ban) to act on: a fixed-capacity, lock-free,
 * open-addressing table in shared memory keyed by the address, each entry
 * counting failures in two time windows rotated by time, the current one
 * and the one before (a sliding estimate can weigh the previous one by
 * how much of it the sliding window still covers).
 *
 * The caller chooses what an address is: for IPv6 it should mask to the
 * /64 before calling, or one attacker with one subnet fills the table.
 *
 * Capacity: a power of two, fixed at init. An entry is 32 bytes and lives
 * two windows after its last failure. A full probe window refuses the new
 * address with SHM_FAILURES_FULL, counted; live entries are never
 * overwritten.
 */
#ifndef TG_SHM_FAILURES_H
#define TG_SHM_FAILURES_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/addr.h"

#define SHM_FAILURES_PROBE   16 /* slots an address may occupy, from its home slot on */
#define SHM_FAILURES_RETRIES 8  /* attempts before giving up with SHM_FAILURES_BUSY */

/*
 * One slot. Windows are numbered now_s / window_s; window w counts in
 * win[w & 1], tagged with w, so a slot still tagged with an older window
 * reads as zero and is reset by the next failure (rotation without a
 * sweeper).
 *
 * Ordering rule (all accesses sequentially consistent):
 *   - id goes 0 or expired -> (fp, expiry) by CAS: a claim, tried only by
 *     a worker whose scan of the whole probe window found no live slot
 *     of the address. A live id only moves forward, by CAS, to a later
 *     expiry with the same fp; it is never cleared.
 *   - before counting in a slot a worker extends its expiry to cover two
 *     windows from now (CAS on id, which fails if the slot was reclaimed:
 *     it looks again); then it adds to win[w & 1] by CAS: (w, n) ->
 *     (w, n + k), or (older, any) -> (w, k).
 *   - two workers may claim two slots for the same new address at the
 *     same instant: unlike a nonce count, failure counts add up, so both
 *     slots are kept and every read sums all live slots of the address.
 *     Nothing is lost and nobody arbitrates.
 *   - a reader may see a claimed slot whose windows still hold the
 *     previous owner's counts: those are tagged with windows at least two
 *     old (the previous owner expired two windows after its last count),
 *     so they read as zero.
 * A worker stalled for two windows between extending and adding may add
 * one count to the slot's next owner: counts are advice for bans, not
 * money.
 *
 * Two entries share a cache line, as in shm/nonce.h; the counters each
 * get a line.
 */
typedef struct shm_failures_entry_sh {
	_Atomic uint64_t id;     /* fp << 32 | expiry (s, caller clock), 0 = unused; writer: workers, CAS */
	_Atomic uint64_t win[2]; /* window << 32 | failures in it; writer: workers, CAS */
	uint64_t pad;            /* to 32 bytes */
} shm_failures_entry_sh_t;

typedef struct shm_failures_sh {
	uint32_t capacity; /* slots, a power of two >= SHM_FAILURES_PROBE; writer: master, at init */
	uint32_t mask;     /* capacity - 1 */
	uint32_t window_s; /* seconds per window; writer: master, at init */
	uint32_t pad;
	uint8_t seed[16];                             /* SipHash key for addresses; writer: master, at init */
	_Alignas(64) _Atomic uint64_t inserts;        /* addresses given a slot; writer: workers */
	_Alignas(64) _Atomic uint64_t full;           /* not counted: probe window full; writer: workers */
	_Alignas(64) _Atomic uint64_t busy;           /* not counted: slot kept changing; writer: workers */
	_Alignas(64) shm_failures_entry_sh_t entry[]; /* [capacity] */
} shm_failures_sh_t;

typedef enum shm_failures_result {
	SHM_FAILURES_OK,
	SHM_FAILURES_FULL, /* no free slot in the address's probe window: not counted */
	SHM_FAILURES_BUSY, /* the slot kept changing under this call: not counted */
} shm_failures_result_t;

/* Failures of one address: in the current window and in the one before. */
typedef struct shm_failures_count {
	uint32_t current;
	uint32_t previous;
} shm_failures_count_t;

/* Bytes the table takes for capacity slots (a multiple of 64). */
size_t shm_failures_size(uint32_t capacity);
/* Master, before any fork: mem is shm_failures_size(capacity) bytes, 64-byte aligned; window_s >= 1. */
shm_failures_sh_t *shm_failures_init(void *mem, uint32_t capacity, uint32_t window_s, const uint8_t seed[16]);
/*
 * Count n failures of ip at now_s (seconds, < 2^32 * window_s). *out (may
 * be NULL) gets the address's counts including these, summed over its
 * slots, when the result is OK.
 */
shm_failures_result_t shm_failures_add(shm_failures_sh_t *sh, const tg_ip_t *ip, uint32_t n, uint64_t now_s,
                                       shm_failures_count_t *out);
/* The counts of ip at now_s; zeros for an address not in the table. */
void shm_failures_read(shm_failures_sh_t *sh, const tg_ip_t *ip, uint64_t now_s, shm_failures_count_t *out);
const char *shm_failures_result_name(shm_failures_result_t r);

#endif
