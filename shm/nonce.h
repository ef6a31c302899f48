/*
 * Nonce-count replay detection shared by all workers: a fixed-capacity,
 * lock-free, open-addressing table in shared memory, keyed by a 64-bit
 * hash of (nonce, username), holding for each key the highest nonce
 * count accepted and when the nonce expires.
 *
 * A request passes when its nc is above every nc accepted before for the
 * same key; two workers racing with the same (key, nc) can never both
 * pass, whichever worker each packet reaches. Call it only after the
 * digest response was verified (worker/digest.h): then nobody without a
 * password can advance a counter or fill the table.
 *
 * Capacity: a power of two, fixed at init (from the config). An entry is
 * 32 bytes. Entries live until their nonce expires, so size it for the
 * nonces answered within one nonce lifetime, with room to spare: at a
 * load of one half, a 16-slot probe window is practically never full.
 * When it is, the request is refused with SHM_NONCE_FULL and counted;
 * live entries are never overwritten.
 */
#ifndef TG_SHM_NONCE_H
#define TG_SHM_NONCE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SHM_NONCE_PROBE   16 /* slots a key may occupy, from its home slot on */
#define SHM_NONCE_RETRIES 8  /* attempts before giving up with SHM_NONCE_BUSY */

/*
 * One slot. id and count each carry the key's 32-bit fingerprint (the
 * high half of the key; the low bits chose the home slot) so that each
 * can be checked on its own.
 *
 * Ordering rule (all accesses sequentially consistent):
 *   - id goes 0 or expired -> (fp, expiry) by CAS: a claim. Only a claim
 *     whose key found no live slot in its whole probe window is tried.
 *     Only the claimer moves it back to 0, and only before its claim is
 *     validated (below). Nobody changes a live id otherwise.
 *   - after a claim the claimer stores count = (fp, 0): "pending". Then
 *     it validates: CAS on the home slot's ins from the value it read
 *     before scanning. Success means no other claim homed there was
 *     validated since its scan began, so no other slot holds this key
 *     (any claim validated earlier was visible to that scan). Failure:
 *     release (id -> 0) and start again. Once validated, the claimer CASes
 *     count (fp, 0) -> (fp, nc).
 *   - an accepted nc is a CAS of count from (fp, old) to (fp, nc), nc >
 *     old: of two workers with the same nc exactly one CAS succeeds and
 *     the other then sees nc <= old, a replay. After its CAS a worker
 *     re-reads id: changed means the slot expired and was reclaimed under
 *     it, and the request is refused as expired.
 *   - a reader may see: a claimed id with the previous owner's count, or
 *     a pending count (both "being inserted"); a count whose fp is not
 *     the id's (the same); an expired id (free for reuse, never a match);
 *     two live slots of one key, one pending, while a claimer that lost
 *     its validation has not let go yet. A settled slot is always used
 *     in preference to a pending one (only one slot of a key can be
 *     settled); a key with only a pending slot is retried a few times,
 *     then answered SHM_NONCE_BUSY: nobody waits.
 * A worker killed mid-insert (a window of a few instructions) leaves a
 * pending slot. If it had lost its validation, the key's settled slot
 * wins as above; otherwise that one nonce answers BUSY until it expires
 * (the caller challenges afresh, with stale=true, so the client moves to
 * a new nonce at once) and the slot is then reused. Nothing else is held.
 *
 * Two entries share a cache line: a probe window then spans 8 lines, not
 * 16, and memory is halved; the price is false sharing between two
 * unrelated nonces written at the same instant, which hashing makes rare.
 * The counters below, which every worker bumps, each get a line.
 */
typedef struct shm_nonce_entry_sh {
	_Atomic uint64_t id;    /* fp << 32 | expiry (s, caller clock), 0 = unused; writer: workers, CAS */
	_Atomic uint64_t count; /* fp << 32 | highest nc accepted, 0 = pending; writer: workers, CAS */
	_Atomic uint64_t ins;   /* validated claims of keys homed here; writer: workers, CAS */
	_Atomic uint64_t txn;   /* the request that set count, see shm_nonce_check(); writer: workers */
} shm_nonce_entry_sh_t;

typedef struct shm_nonce_sh {
	uint32_t capacity; /* slots, a power of two >= SHM_NONCE_PROBE; writer: master, at init */
	uint32_t mask;     /* capacity - 1 */
	uint8_t seed[16];  /* SipHash key of shm_nonce_key(); writer: master, at init */
	_Alignas(64) _Atomic uint64_t inserts;     /* keys inserted (a nonce's first nc); writer: workers */
	_Alignas(64) _Atomic uint64_t replays;     /* nc refused as not increasing; writer: workers */
	_Alignas(64) _Atomic uint64_t full;        /* refused: probe window full; writer: workers */
	_Alignas(64) _Atomic uint64_t busy;        /* refused: key mid-insert elsewhere; writer: workers */
	_Alignas(64) _Atomic uint64_t expired;     /* refused: entry or nonce expired; writer: workers */
	_Alignas(64) _Atomic uint64_t retransmits; /* the accepted request again: passed; writer: workers */
	_Alignas(64) shm_nonce_entry_sh_t entry[]; /* [capacity] */
} shm_nonce_sh_t;

typedef enum shm_nonce_result {
	SHM_NONCE_OK,         /* nc above all accepted before: accepted and recorded */
	SHM_NONCE_REPLAY,     /* nc not above the highest accepted for this key (or 0) */
	SHM_NONCE_EXPIRED,    /* expires_s <= now_s, or the entry expired during the call */
	SHM_NONCE_FULL,       /* no free slot in the key's probe window */
	SHM_NONCE_BUSY,       /* another worker is mid-insert of this key (or died there) */
	SHM_NONCE_RETRANSMIT, /* nc equals the highest accepted, by the same request (txn): pass again */
} shm_nonce_result_t;

/* Bytes the table takes for capacity slots (a multiple of 64). */
size_t shm_nonce_size(uint32_t capacity);
/* Master, before any fork: mem is shm_nonce_size(capacity) bytes, 64-byte aligned. */
shm_nonce_sh_t *shm_nonce_init(void *mem, uint32_t capacity, const uint8_t seed[16]);
/* The key of a nonce as answered by a username (both as sent). */
uint64_t shm_nonce_key(const shm_nonce_sh_t *sh, const char *nonce, size_t nonce_len, const char *username,
                       size_t username_len);
/*
 * Check nc against the highest accepted for key and, when higher, record
 * it. expires_s is when the nonce stops being valid (issued_s + ttl_s
 * from digest_nonce_check()), on the same clock as now_s; both < 2^32.
 * txn fingerprints the request (0: none): a UDP retransmission of the
 * request that was accepted repeats its nonce count, and must pass again
 * rather than fail the call with a 403 (a stateless proxy forwards
 * retransmissions). The caller makes it from the top Via branch, Call-ID,
 * CSeq and the source address and port, so a captured request replayed
 * from anywhere else is still a replay; one replayed from the very same
 * address and port is a retransmission to the next hop too (same branch),
 * which absorbs it. txn is stored just after the count, so the retransmission
 * of the one request of two racing on the same nonce that lost that last
 * store reads as a replay.
 * What to answer: OK and RETRANSMIT pass; REPLAY 403; EXPIRED and BUSY a fresh
 * challenge with stale=true (the password was right, the client retries
 * with a new nonce at once); FULL 503, logged: the table is too small
 * for the traffic, an operator's matter (a fresh nonce would likely find
 * the table as full).
 */
shm_nonce_result_t shm_nonce_check(shm_nonce_sh_t *sh, uint64_t key, uint32_t nc, uint64_t txn,
                                   uint64_t expires_s, uint64_t now_s);
const char *shm_nonce_result_name(shm_nonce_result_t r);

#endif
