/*
 * Call limits shared by all workers: per account and per IP rule, the
 * channels (concurrent calls) in use and a calls-per-second bucket, exact
 * under concurrency and brought back to zero whoever dies where. A
 * fixed-capacity, lock-free, open-addressing table in shared memory keyed
 * by (kind, database id), and beside it one holder record per dialog slot
 * (shm/dialog.h) saying which entries that dialog holds a channel of.
 *
 * Keyed by id, not by a snapshot slot: slots are reused after deletes,
 * and a call that ends after a reload must give its channel back to the
 * counter it took it from.
 *
 * Entries: created at a key's first call; an entry holding no channel
 * whose bucket has been idle SHM_LIMITS_IDLE_MS (an hour) may be taken
 * over by a new key that finds its probe window full. Its counters, kept
 * for metrics, then start again from zero (a counter reset to a scraper).
 * Capacity: a power of two, at most SHM_LIMITS_MAX_CAPACITY; size it for
 * the accounts and rules that carry calls within an hour, twice over.
 * A full probe window refuses the call with SHM_LIMIT_FULL, counted.
 *
 * Why holders. A channel is a count in one word (the entry's) and the
 * fact that a given call holds it is a record in another (the holder's);
 * no single atomic instruction changes both, so a process killed between
 * the two would leak a channel or give one back twice. Here every change
 * of a count carries, in the same word, evidence of which holder slot made
 * it, and every process about to overwrite that evidence first finishes
 * the other holder's record ("helping"). A holder record is thus never
 * ambiguous: whoever finds it half done (the dialog sweep, another call)
 * can finish it, exactly once. See the ordering rule below.
 */
#ifndef TG_SHM_LIMITS_H
#define TG_SHM_LIMITS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define SHM_LIMITS_PROBE           16         /* slots a key may occupy, from its home slot on */
#define SHM_LIMITS_RETRIES         8          /* attempts at one CAS before giving up with SHM_LIMIT_BUSY */
#define SHM_LIMITS_RELEASE_RETRIES 32         /* the same for a release, which only defers when it gives up */
#define SHM_LIMITS_IDLE_MS         3600000    /* an entry with no channel idle this long may be reclaimed */
#define SHM_LIMITS_CLAIM_MS        2000       /* an entry claimed and not published this long: claimer died */
#define SHM_LIMITS_MAX_CAPACITY    (1u << 18) /* entries; an index + 1 fits a holder slot's 19 bits */
#define SHM_LIMITS_MAX_HOLDERS     (1u << 23) /* holder + 1 fits 24 bits of evidence, one value spare */
#define SHM_LIMITS_MAX_CHANNELS    ((1u << 19) - 1) /* per key; counts are 20 bits modulo */
#define SHM_LIMITS_PER_HOLDER      2                /* keys one call takes: its account and its rule */

enum shm_limit_kind {
	SHM_LIMIT_ACCOUNT, /* tollgate.accounts.id */
	SHM_LIMIT_RULE,    /* tollgate.ip_rules.id */
};

/*
 * One entry, two cache lines: the words every call of the key CASes, then
 * the display name.
 *
 * hdr, the key and its state:  bit 63 LIVE, bit 62 CLAIMED (being
 *     created), bit 61 kind, bits 0-60 id; 0 = free.
 * tk, channels taken:          bits 44-63 taken (modulo 2^20), bits 0-43
 *     evidence of the last change (below).
 * rl, channels given back:     bits 44-63 released (modulo 2^20), 0-43
 *     evidence of the last release.
 * Channels in use = taken - released (modulo 2^20). Evidence is
 * (holder gen:19 | slot:1 | holder + 1:24); holder + 1 == 0 means none
 * (the upper bits then carry a stamp that makes each publish unique), and
 * all ones in the holder field, DEAD, marks a tk that takes no more (the
 * entry is being reclaimed). While an entry is CLAIMED, tat_ns holds the
 * claim time.
 *
 * Ordering rule (all accesses sequentially consistent, but the metrics
 * counters and the name: relaxed):
 *   - hdr: 0 -> CLAIMED(key) by CAS, only by a process whose scan of the
 *     key's whole window found no live slot of it; the claimer stores its
 *     claim time, resets the counters, validates against the home slot's
 *     ins as in shm/nonce.h (no other claim homed there validated since
 *     its scan), then publishes CLAIMED -> LIVE by CAS. A claim older than
 *     SHM_LIMITS_CLAIM_MS, or a LIVE hdr whose tk is DEAD, is freed by any
 *     scanner (CAS to 0): the claimer died, or will fail its CAS.
 *   - reclaim: tk (taken == released, no evidence, bucket idle) -> DEAD
 *     by CAS, then hdr LIVE -> 0. Once DEAD nobody takes; a take seen
 *     in tk before is seen by the CAS.
 *   - a take by holder slot D: first any evidence naming D left in tk or
 *     rl by an earlier hold of D is cleared (an orphan undone), while D is
 *     still NONE; then D NONE -> PENDING(entry) by CAS; a CPS token (tat,
 *     CAS); then tk (t, E) -> (t + 1, D) by CAS, after helping E (below)
 *     and checking that D is still PENDING and that t - released < max,
 *     released read between two reads of tk that agree (a refusal is
 *     never made on a torn pair); then D PENDING -> HELD by CAS. If D was
 *     resolved meanwhile (NONE), the taker undoes its take: tk (t + 1, D)
 *     -> (t, none).
 *   - a release of D: D HELD -> RELEASING by CAS (one releaser wins); tk's
 *     evidence, if still D, -> none (no count change); then rl (r, E) ->
 *     (r + 1, D) by CAS after helping E and checking D is still RELEASING
 *     and rl's evidence is not already D; then D RELEASING -> NONE.
 *   - helping evidence E in tk: E PENDING on this entry -> HELD; E HELD or
 *     RELEASING: nothing; otherwise (E resolved to NONE, or its holder
 *     reused) E's take is an orphan: tk (t, E) -> (t - 1, none). In rl: E
 *     RELEASING on this entry -> NONE. Evidence is only overwritten after
 *     this, so a slot's phase plus the evidence tell whether its count
 *     changed: a PENDING slot took iff tk's evidence is that slot; a
 *     RELEASING slot gave back iff rl's evidence is that slot.
 *   - a reader may see: a LIVE entry whose channels include a take whose
 *     holder is still PENDING (it holds it) or an orphan not yet helped
 *     (the next take of the key undoes it before deciding); counters and
 *     name torn or from the previous owner of a reclaimed slot (metrics
 *     only).
 * A SIGKILL anywhere leaves at most: a PENDING or RELEASING holder slot,
 * finished by shm_limits_release() from the dialog sweep; a claimed
 * entry, freed after SHM_LIMITS_CLAIM_MS (its key answers BUSY until
 * then); a CPS token spent. One case is finished late rather than by the
 * sweep: a holder stopped (not killed) for the dialog sweep's claim
 * timeout, resumed, and then killed between its take and its record,
 * leaves an orphan that the key's next take undoes (before it counts).
 */
typedef struct shm_limit_entry_sh {
	_Alignas(64) _Atomic uint64_t hdr;  /* key and state, above; writer: workers, CAS */
	_Atomic uint64_t tk;                /* taken | evidence; writer: workers, CAS */
	_Atomic uint64_t rl;                /* released | evidence; writer: workers, CAS */
	_Atomic uint64_t tat_ns;            /* CPS bucket (GCRA): theoretical arrival, ns; CAS */
	_Atomic uint64_t calls_total;       /* calls admitted; writer: workers */
	_Atomic uint64_t refusals_channels; /* calls refused here at max_channels; writer: workers */
	_Atomic uint64_t refusals_cps;      /* calls refused here at max_cps; writer: workers */
	_Atomic uint64_t ins;               /* validated claims of keys homed here; writer: workers, CAS */
	_Atomic uint64_t name[8]; /* display name, NUL-padded, 8 chars a word; writer: the acquirer */
} shm_limit_entry_sh_t;

/*
 * A holder: what one dialog slot holds. Bit 63 CLOSED (nothing may be
 * taken: between two owners), bits 42-60 the owner's generation (the
 * dialog's, modulo 2^19), then one 21-bit slot per key (bits 21-41 key 1,
 * 0-20 key 0): phase in its top 2 bits (NONE, PENDING, HELD, RELEASING),
 * entry index + 1 in the low 19. Eight share a cache line.
 */
typedef struct shm_limit_holder_sh {
	_Atomic uint64_t word; /* writer: the owner, helpers, the sweep; CAS */
} shm_limit_holder_sh_t;

typedef struct shm_limits_sh {
	uint32_t capacity; /* entries, a power of two >= SHM_LIMITS_PROBE; writer: master, at init */
	uint32_t mask;     /* capacity - 1 */
	uint32_t nholders; /* holder records, one per dialog slot; writer: master, at init */
	uint32_t pad;
	uint64_t off_holders;                   /* holders' offset from this struct, bytes */
	uint8_t seed[16];                       /* SipHash key for homes; writer: master, at init */
	_Alignas(64) _Atomic uint64_t creates;  /* keys given an entry; writer: workers */
	_Alignas(64) _Atomic uint64_t reclaims; /* idle entries taken over; writer: workers */
	_Alignas(64) _Atomic uint64_t full;     /* calls refused: probe window full; writer: workers */
	_Alignas(64) _Atomic uint64_t busy;     /* calls refused: a CAS kept failing; writer: workers */
	_Alignas(64) _Atomic uint64_t
	        underflows;                    /* releases refused: channels already 0 (a bug); writer: any */
	_Alignas(64) _Atomic uint64_t orphans; /* takes undone whose record was lost; writer: any */
	_Alignas(64) _Atomic uint64_t stamps;  /* publishes so far, for the stamp in tk; writer: workers */
	_Alignas(64) shm_limit_entry_sh_t entry[]; /* [capacity], then holders[nholders] */
} shm_limits_sh_t;

/* One key of a call: max 0 = unlimited (channels are still counted). */
typedef struct shm_limit_req {
	uint8_t kind;          /* enum shm_limit_kind */
	int64_t id;            /* database id, 0 <= id < 2^61 */
	uint32_t max_channels; /* concurrent calls, <= SHM_LIMITS_MAX_CHANNELS (larger: that) */
	uint32_t max_cps;      /* calls per second */
	uint32_t cps_burst;    /* calls allowed at once after a quiet spell; 0 = max_cps */
	const char *name;      /* display name for metrics, or NULL to leave it */
} shm_limit_req_t;

typedef enum shm_limit_result {
	SHM_LIMIT_OK,       /* every key took a token and a channel, recorded in the holder */
	SHM_LIMIT_CHANNELS, /* reqs[*which] is at max_channels; nothing held */
	SHM_LIMIT_CPS,      /* reqs[*which] has no token left; nothing held */
	SHM_LIMIT_FULL,     /* no slot for reqs[*which]'s key; nothing held */
	SHM_LIMIT_BUSY,     /* a CAS kept failing, or the key is mid-creation elsewhere; nothing held */
	SHM_LIMIT_LOST,     /* the holder was closed under the caller (dialog swept); nothing held */
} shm_limit_result_t;

/* What the metrics see of one entry. */
typedef struct shm_limit_stat {
	uint8_t kind;
	int64_t id;
	uint32_t index;    /* entry index, as shm_limits_held() reports */
	char name[64];     /* NUL-terminated; torn if renamed during the read */
	uint32_t channels; /* in use at one instant, when exact; else from two reads a moment apart */
	int exact;         /* 1 when channels is from a consistent pair of reads */
	uint64_t calls_total, refusals_channels, refusals_cps;
} shm_limit_stat_t;

/* Bytes the table takes (a multiple of 64). */
size_t shm_limits_size(uint32_t capacity, uint32_t nholders);
/*
 * Master, before any fork: mem is shm_limits_size() bytes, 64-byte
 * aligned; nholders is the dialog table's capacity (dialog slot i owns
 * holder i). Every holder starts closed.
 */
shm_limits_sh_t *shm_limits_init(void *mem, uint32_t capacity, uint32_t nholders, const uint8_t seed[16]);

/*
 * Give holder to a new owner generation gen (the dialog's): it must hold
 * nothing (shm_limits_release() first). Returns 1, or 0 when it still
 * holds something.
 */
int shm_limits_open(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen);
/*
 * Close holder after its owner generation gen ended: nothing more can be
 * taken into it. Returns 1 (also for a holder never opened for gen, as
 * its previous owner closed it), or 0 when it still holds something.
 */
int shm_limits_close(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen);

/*
 * For a new call: take one CPS token and one channel from the key of
 * every reqs[i] (n <= SHM_LIMITS_PER_HOLDER, distinct keys), recording
 * each in slot i of holder (open, generation gen, empty). All or nothing:
 * when a key refuses, what was taken is given back (channels and tokens)
 * and *which is its index. Refusals are counted in the entry refused.
 * now_ms: a monotonic clock shared by all callers (tg_now_ms()).
 */
shm_limit_result_t shm_limits_acquire(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen,
                                      const shm_limit_req_t *reqs, int n, uint64_t now_ms, int *which);
/*
 * Give back everything holder (generation gen) holds, finishing whatever
 * another process left half done, exactly once whoever else is doing the
 * same. Returns 1 when it holds nothing afterwards, 0 when a CAS kept
 * failing: call again later (the dialog sweep does).
 */
int shm_limits_release(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen);
/* Entry indexes holder (generation gen) holds or is taking, into idx[]; returns how many. */
int shm_limits_held(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen, uint32_t idx[SHM_LIMITS_PER_HOLDER]);

/* The entry of (kind, id), if any: 1 and *out filled, or 0. */
int shm_limits_lookup(shm_limits_sh_t *sh, uint8_t kind, int64_t id, shm_limit_stat_t *out);
/* Every live entry, for metrics; fn sees a copy. */
void shm_limits_foreach(shm_limits_sh_t *sh, void (*fn)(void *arg, const shm_limit_stat_t *st), void *arg);
const char *shm_limit_result_name(shm_limit_result_t r);

#endif
