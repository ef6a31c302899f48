/*
 * The dialog table (shm/dialog.h has the layout and the ordering rule).
 * Lock-free: every transition is one CAS of an entry's state word, made
 * from a value carrying the caller's generation; nobody waits, and a
 * begin that cannot settle in a few attempts is refused as BUSY. Channels
 * are held through the slot's holder in the limits table (shm/limits.h),
 * which makes their release exactly-once; this file only decides when.
 * Owns its region of shared memory; knows nothing of SIP beyond a key.
 */
#include <assert.h>
#include <string.h>

#include "lib/siphash.h"
#include "shm/dialog.h"

#define ST(w)          ((int)((w)&7))
#define GEN(w)         ((uint32_t)((w) >> 32))
#define SWORD(gen, st) ((uint64_t)(gen) << 32 | (uint64_t)(st))
#define REF(gen, idx)  ((uint64_t)(gen) << 32 | (uint32_t)(idx))
#define REF_IDX(r)     ((uint32_t)(r))
#define REF_GEN(r)     ((uint32_t)((r) >> 32))
#define MARK_SEEN      (1ULL << 63)

/* Fields published by the state CAS that follows (or, for a reader, read after loading state). */
#define PUT(field, v) atomic_store_explicit(&(field), (v), memory_order_relaxed)
#define GET(field)    atomic_load_explicit(&(field), memory_order_relaxed)

#define META(code, reason, dir) ((uint32_t)(code) << 16 | (uint32_t)(reason) << 8 | (uint32_t)(dir))

/* Internal outcome of claim(): look again. */
#define AGAIN (-1)

size_t shm_dialog_size(uint32_t capacity)
{
	return sizeof(shm_dialog_sh_t) + (size_t)capacity * sizeof(shm_dialog_entry_sh_t);
}

shm_dialog_sh_t *shm_dialog_init(void *mem, uint32_t capacity, const uint8_t seed[16])
{
	shm_dialog_sh_t *sh = mem;

	assert(capacity >= SHM_DIALOG_PROBE && (capacity & (capacity - 1)) == 0);
	assert(capacity <= SHM_LIMITS_MAX_HOLDERS);
	assert(((uintptr_t)mem & 63) == 0);
	memset(mem, 0, shm_dialog_size(capacity));
	sh->capacity = capacity;
	sh->mask = capacity - 1;
	memcpy(sh->seed, seed, sizeof(sh->seed));
	return sh;
}

uint64_t shm_dialog_key(const shm_dialog_sh_t *sh, const char *call_id, size_t cid_len, const char *tag,
                        size_t tag_len)
{
	uint64_t part[2] = {tg_siphash(sh->seed, call_id, cid_len), tg_siphash(sh->seed, tag, tag_len)};
	uint64_t key = tg_siphash(sh->seed, part, sizeof(part));

	return key ? key : 1; /* 0 means "no key" in an entry */
}

/* Seconds from t to now on a 32-bit clock; 0 when t is ahead (another worker's clock). */
static uint32_t age(uint64_t now_s, uint32_t t)
{
	int32_t d = (int32_t)((uint32_t)now_s - t);

	return d < 0 ? 0 : (uint32_t)d;
}

static void set_reason(shm_dialog_entry_sh_t *e, int reason)
{
	uint32_t m = GET(e->meta);

	PUT(e->meta, (m & ~0xFF00u) | (uint32_t)reason << 8);
}

/*
 * Claim slot idx (seen as free_w) for key, validate against the home
 * slot's ins (read as ins_seen before the scan), open its holder.
 * Returns NEW or AGAIN.
 */
static int claim(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, uint32_t idx, uint64_t free_w, uint32_t home,
                 uint64_t ins_seen, uint64_t key, uint64_t now_s, shm_dialog_ref_t *ref)
{
	shm_dialog_entry_sh_t *e = &sh->entry[idx];
	uint32_t gen = GEN(free_w) + 1;
	uint64_t claimed = SWORD(gen, SHM_DS_CLAIMED);

	if (!atomic_compare_exchange_strong(&e->state, &free_w, claimed))
		return AGAIN;
	PUT(e->key, key); /* published by the validation CAS: see the ordering rule */
	PUT(e->created_s, (uint32_t)now_s);
	PUT(e->answered_s, 0);
	PUT(e->ended_s, 0);
	PUT(e->account, 0);
	PUT(e->rule, 0);
	PUT(e->meta, 0);
	if (!atomic_compare_exchange_strong(&sh->entry[home].ins, &ins_seen, ins_seen + 1) ||
	    !shm_limits_open(lsh, idx, gen)) {
		/* another claim homed here validated since the scan (maybe this key): let go, look again */
		atomic_store(&e->key, 0);
		atomic_compare_exchange_strong(&e->state, &claimed, SWORD(gen, SHM_DS_FREE));
		return AGAIN;
	}
	*ref = REF(gen, idx);
	return SHM_DIALOG_NEW;
}

shm_dialog_result_t shm_dialog_begin(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, uint64_t key, uint64_t now_s,
                                     shm_dialog_ref_t *ref)
{
	uint32_t home = (uint32_t)key & sh->mask;

	assert(key != 0 && sh->capacity <= lsh->nholders);
	for (int attempt = 0; attempt < SHM_DIALOG_RETRIES; attempt++) {
		uint64_t ins_seen = atomic_load(&sh->entry[home].ins), free_w = 0;
		int pending = 0, free = -1;

		for (uint32_t i = 0; i < SHM_DIALOG_PROBE; i++) {
			uint32_t j = (home + i) & sh->mask;
			shm_dialog_entry_sh_t *e = &sh->entry[j];
			uint64_t w = atomic_load(&e->state);

			if (ST(w) == SHM_DS_FREE) {
				if (free < 0) {
					free = (int)j;
					free_w = w;
				}
			} else if (atomic_load(&e->key) == key) {
				if (ST(w) == SHM_DS_CLAIMED) {
					pending = 1; /* a settled entry of the key, further on, still wins */
					continue;
				}
				*ref = REF(GEN(w), j);
				return SHM_DIALOG_EXISTS;
			}
		}
		if (pending)
			return SHM_DIALOG_PENDING;
		if (free < 0) {
			atomic_fetch_add(&sh->full, 1);
			return SHM_DIALOG_FULL;
		}
		if (claim(sh, lsh, (uint32_t)free, free_w, home, ins_seen, key, now_s, ref) == SHM_DIALOG_NEW)
			return SHM_DIALOG_NEW;
	}
	atomic_fetch_add(&sh->busy, 1);
	return SHM_DIALOG_BUSY;
}

shm_limit_result_t shm_dialog_acquire(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref,
                                      const shm_limit_req_t *reqs, int n, uint64_t now_ms, int *which)
{
	if (atomic_load(&sh->entry[REF_IDX(ref)].state) != SWORD(REF_GEN(ref), SHM_DS_CLAIMED))
		return SHM_LIMIT_LOST;
	return shm_limits_acquire(lsh, REF_IDX(ref), REF_GEN(ref), reqs, n, now_ms, which);
}

int shm_dialog_commit(shm_dialog_sh_t *sh, shm_dialog_ref_t ref, int64_t account, int64_t rule, int direction,
                      uint16_t txn)
{
	shm_dialog_entry_sh_t *e = &sh->entry[REF_IDX(ref)];
	uint64_t w = SWORD(REF_GEN(ref), SHM_DS_CLAIMED);

	if (atomic_load(&e->state) != w)
		return 0;
	PUT(e->account, account);
	PUT(e->rule, rule);
	PUT(e->meta, META(txn, 0, direction)); /* the code field: free until a refusal, which never follows */
	return atomic_compare_exchange_strong(&e->state, &w, SWORD(REF_GEN(ref), SHM_DS_EARLY));
}

int shm_dialog_refuse(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int code,
                      uint64_t now_s)
{
	shm_dialog_entry_sh_t *e = &sh->entry[REF_IDX(ref)];
	uint64_t w = SWORD(REF_GEN(ref), SHM_DS_CLAIMED);

	if (atomic_load(&e->state) != w)
		return 0;
	/* normally nothing is held (a refused acquire gave it back); a release that gives up: the sweep */
	shm_limits_release(lsh, REF_IDX(ref), REF_GEN(ref));
	PUT(e->meta, META(code, 0, 0));
	PUT(e->ended_s, (uint32_t)now_s);
	if (!atomic_compare_exchange_strong(&e->state, &w, SWORD(REF_GEN(ref), SHM_DS_REFUSED)))
		return 0;
	atomic_fetch_add(&sh->refused, 1);
	return 1;
}

int shm_dialog_abandon(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, uint64_t now_s)
{
	shm_dialog_entry_sh_t *e = &sh->entry[REF_IDX(ref)];
	uint64_t w = SWORD(REF_GEN(ref), SHM_DS_CLAIMED);
	int empty;

	if (atomic_load(&e->state) != w)
		return 0;
	empty = shm_limits_release(lsh, REF_IDX(ref), REF_GEN(ref)) &&
	        shm_limits_close(lsh, REF_IDX(ref), REF_GEN(ref));
	PUT(e->ended_s, (uint32_t)now_s);
	set_reason(e, SHM_DE_ABANDONED);
	if (empty)
		atomic_store(&e->key, 0); /* freed at once: nothing to repeat to retransmissions */
	/* a holder that could not be emptied now goes through ENDED: the sweep finishes it */
	if (!atomic_compare_exchange_strong(&e->state, &w,
	                                    SWORD(REF_GEN(ref), empty ? SHM_DS_FREE : SHM_DS_ENDED)))
		return 0;
	atomic_fetch_add(&sh->ends[SHM_DE_ABANDONED], 1);
	return 1;
}

shm_dialog_result_t shm_dialog_find(shm_dialog_sh_t *sh, uint64_t key, shm_dialog_ref_t *ref)
{
	uint32_t home = (uint32_t)key & sh->mask;
	int pending = 0;

	for (uint32_t i = 0; i < SHM_DIALOG_PROBE; i++) {
		uint32_t j = (home + i) & sh->mask;
		shm_dialog_entry_sh_t *e = &sh->entry[j];
		uint64_t w = atomic_load(&e->state);

		if (ST(w) == SHM_DS_FREE || atomic_load(&e->key) != key)
			continue;
		if (ST(w) == SHM_DS_CLAIMED) {
			pending = 1;
			continue;
		}
		*ref = REF(GEN(w), j);
		return SHM_DIALOG_EXISTS;
	}
	return pending ? SHM_DIALOG_PENDING : SHM_DIALOG_NONE;
}

int shm_dialog_confirm(shm_dialog_sh_t *sh, shm_dialog_ref_t ref, uint64_t now_s)
{
	shm_dialog_entry_sh_t *e = &sh->entry[REF_IDX(ref)];
	uint64_t w = SWORD(REF_GEN(ref), SHM_DS_EARLY);

	if (atomic_load(&e->state) != w)
		return 0;
	PUT(e->answered_s, (uint32_t)now_s);
	return atomic_compare_exchange_strong(&e->state, &w, SWORD(REF_GEN(ref), SHM_DS_CONFIRMED));
}

/* EARLY (and CONFIRMED when confirmed_too) -> ENDED; see shm_dialog_end(). */
static int end_from(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int reason,
                    uint64_t now_s, int confirmed_too)
{
	shm_dialog_entry_sh_t *e = &sh->entry[REF_IDX(ref)];
	uint64_t w = atomic_load(&e->state);

	assert(reason >= 0 && reason < SHM_DE_COUNT);
	/* EARLY may become CONFIRMED under us, once: the loop runs at most twice before ENDED */
	for (int a = 0; a < SHM_DIALOG_RETRIES; a++) {
		if (GEN(w) != REF_GEN(ref) ||
		    (ST(w) != SHM_DS_EARLY && (!confirmed_too || ST(w) != SHM_DS_CONFIRMED)))
			return 0;
		PUT(e->ended_s, (uint32_t)now_s);
		if (atomic_compare_exchange_strong(&e->state, &w, SWORD(REF_GEN(ref), SHM_DS_ENDED))) {
			set_reason(e, reason);
			atomic_fetch_add(&sh->ends[reason], 1);
			/* killed from here on, or giving up: the holder says what is left; the sweep ends it
			 */
			shm_limits_release(lsh, REF_IDX(ref), REF_GEN(ref));
			return 1;
		}
	}
	return 0;
}

int shm_dialog_end(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int reason,
                   uint64_t now_s)
{
	return end_from(sh, lsh, ref, reason, now_s, 1);
}

int shm_dialog_fail(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int reason,
                    uint64_t now_s)
{
	return end_from(sh, lsh, ref, reason, now_s, 0);
}

void shm_dialog_ring(shm_dialog_sh_t *sh, shm_dialog_ref_t ref, uint64_t now_s)
{
	shm_dialog_entry_sh_t *e = &sh->entry[REF_IDX(ref)];
	uint64_t w = atomic_load(&e->state);

	/* a store, not a CAS: the sweep racing it ends a call that rang at the very last second, at worst */
	if (GEN(w) == REF_GEN(ref) && ST(w) == SHM_DS_EARLY)
		PUT(e->created_s, (uint32_t)now_s);
}

int shm_dialog_read(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, shm_dialog_info_t *out)
{
	shm_dialog_entry_sh_t *e = &sh->entry[REF_IDX(ref)];
	uint64_t w = atomic_load(&e->state);
	uint32_t meta;

	if (GEN(w) != REF_GEN(ref) || ST(w) == SHM_DS_FREE)
		return 0;
	out->created_s = GET(e->created_s);
	out->answered_s = GET(e->answered_s);
	out->ended_s = GET(e->ended_s);
	out->account = GET(e->account);
	out->rule = GET(e->rule);
	meta = GET(e->meta);
	out->direction = (uint8_t)meta;
	out->reason = (uint8_t)(meta >> 8);
	out->code = ST(w) == SHM_DS_REFUSED ? (uint16_t)(meta >> 16) : 0;
	out->txn = ST(w) == SHM_DS_REFUSED ? 0 : (uint16_t)(meta >> 16);
	out->nheld = shm_limits_held(lsh, REF_IDX(ref), REF_GEN(ref), out->held);
	w = atomic_load(&e->state);
	out->state = (uint32_t)ST(w);
	return GEN(w) == REF_GEN(ref) && ST(w) != SHM_DS_FREE;
}

/* ---- the sweep ---- */

static void report(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, shm_dialog_ref_t ref, int reason,
                   shm_dialog_swept_fn *swept, void *arg)
{
	shm_dialog_info_t info;

	if (swept && shm_dialog_read(sh, lsh, ref, &info))
		swept(arg, ref, &info, reason);
}

/*
 * A CLAIMED slot: the first sweep to see this generation claimed marks
 * the time; claim_s later, still claimed, its creator is taken for dead
 * and the dialog ended (its holder given back). A creator merely stopped
 * that long finds its commit refused.
 */
static void sweep_claimed(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, uint32_t idx, uint64_t w, uint64_t now_s,
                          const shm_dialog_timeouts_t *t, shm_dialog_swept_fn *swept, void *arg)
{
	shm_dialog_entry_sh_t *e = &sh->entry[idx];
	uint64_t mark = atomic_load(&e->mark), seen = MARK_SEEN | (uint64_t)(GEN(w) & 0x7FFFFFFF) << 32;

	if ((mark & ~0xFFFFFFFFULL) != seen) {
		atomic_store(&e->mark, seen | (uint32_t)now_s);
		return;
	}
	if (age(now_s, (uint32_t)mark) < t->claim_s)
		return;
	PUT(e->ended_s, (uint32_t)now_s);
	if (!atomic_compare_exchange_strong(&e->state, &w, SWORD(GEN(w), SHM_DS_ENDED)))
		return;
	set_reason(e, SHM_DE_CLAIM_TIMEOUT);
	atomic_fetch_add(&sh->ends[SHM_DE_CLAIM_TIMEOUT], 1);
	shm_limits_release(lsh, idx, GEN(w));
	report(sh, lsh, REF(GEN(w), idx), SHM_DE_CLAIM_TIMEOUT, swept, arg);
}

/* ENDED or REFUSED: finish what its ender left, and after linger_s free it. */
static void sweep_linger(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, uint32_t idx, uint64_t w, uint64_t now_s,
                         const shm_dialog_timeouts_t *t)
{
	shm_dialog_entry_sh_t *e = &sh->entry[idx];
	uint64_t key = atomic_load(&e->key);

	if (!shm_limits_release(lsh, idx, GEN(w)))
		return; /* still busy: next second */
	if (age(now_s, GET(e->ended_s)) < t->linger_s || !shm_limits_close(lsh, idx, GEN(w)))
		return;
	/* a CAS, not a store: a second sweeper, against the rules, cannot clear a newer dialog's key */
	atomic_compare_exchange_strong(&e->key, &key, 0);
	atomic_compare_exchange_strong(&e->state, &w, SWORD(GEN(w), SHM_DS_FREE));
}

void shm_dialog_sweep(shm_dialog_sh_t *sh, shm_limits_sh_t *lsh, uint64_t now_s,
                      const shm_dialog_timeouts_t *t, shm_dialog_swept_fn *swept, void *arg)
{
	uint64_t live[SHM_DS_COUNT] = {0};

	for (uint32_t idx = 0; idx < sh->capacity; idx++) {
		shm_dialog_entry_sh_t *e = &sh->entry[idx];
		uint64_t w = atomic_load(&e->state);
		shm_dialog_ref_t ref = REF(GEN(w), idx);

		switch (ST(w)) {
		case SHM_DS_CLAIMED:
			sweep_claimed(sh, lsh, idx, w, now_s, t, swept, arg);
			break;
		case SHM_DS_EARLY:
			if (age(now_s, GET(e->created_s)) >= t->early_s &&
			    shm_dialog_end(sh, lsh, ref, SHM_DE_EARLY_TIMEOUT, now_s))
				report(sh, lsh, ref, SHM_DE_EARLY_TIMEOUT, swept, arg);
			break;
		case SHM_DS_CONFIRMED:
			if (t->max_duration_s && age(now_s, GET(e->answered_s)) >= t->max_duration_s &&
			    shm_dialog_end(sh, lsh, ref, SHM_DE_MAX_DURATION, now_s))
				report(sh, lsh, ref, SHM_DE_MAX_DURATION, swept, arg);
			break;
		case SHM_DS_ENDED:
		case SHM_DS_REFUSED:
			sweep_linger(sh, lsh, idx, w, now_s, t);
			break;
		}
		w = atomic_load(&e->state);
		if (ST(w) < SHM_DS_COUNT)
			live[ST(w)]++;
	}
	for (int s = 0; s < SHM_DS_COUNT; s++)
		atomic_store(&sh->live[s], live[s]);
	atomic_fetch_add(&sh->sweeps, 1);
}

const char *shm_dialog_result_name(shm_dialog_result_t r)
{
	switch (r) {
	case SHM_DIALOG_NEW:
		return "new";
	case SHM_DIALOG_EXISTS:
		return "exists";
	case SHM_DIALOG_PENDING:
		return "pending";
	case SHM_DIALOG_NONE:
		return "none";
	case SHM_DIALOG_FULL:
		return "full";
	case SHM_DIALOG_BUSY:
		return "busy";
	}
	return "unknown";
}

const char *shm_dialog_state_name(int state)
{
	static const char *const names[SHM_DS_COUNT] = {"free",      "claimed", "early",
	                                                "confirmed", "ended",   "refused"};

	return state >= 0 && state < SHM_DS_COUNT ? names[state] : "unknown";
}

const char *shm_dialog_reason_name(int reason)
{
	static const char *const names[SHM_DE_COUNT] = {
	        "rejected", "cancel", "bye", "early_timeout", "max_duration", "claim_timeout", "abandoned"};

	return reason >= 0 && reason < SHM_DE_COUNT ? names[reason] : "unknown";
}
