/*
 * The nonce-count replay table (shm/nonce.h has the layout and the
 * ordering rule). Lock-free: every change is one CAS, nobody waits for
 * anybody; an insert that cannot be settled in a few attempts is refused
 * as BUSY rather than spun on. Owns only its region of shared memory;
 * knows nothing of SIP or digest beyond a key, a count and an expiry.
 */
#include <assert.h>
#include <string.h>

#include "lib/siphash.h"
#include "shm/nonce.h"

#define FP(word)     ((uint32_t)((word) >> 32))
#define LOW(word)    ((uint32_t)(word))
#define WORD(fp, lo) ((uint64_t)(fp) << 32 | (uint32_t)(lo))

/* What one look at a key's probe window found. */
typedef struct probe {
	shm_nonce_entry_sh_t *match; /* live slot of the key, or NULL */
	uint64_t match_id;
	shm_nonce_entry_sh_t *free; /* first unused or expired slot, or NULL */
	uint64_t free_id;
} probe_t;

/* Internal outcome of advance(): look again. */
#define AGAIN (-1)

size_t shm_nonce_size(uint32_t capacity)
{
	return sizeof(shm_nonce_sh_t) + (size_t)capacity * sizeof(shm_nonce_entry_sh_t);
}

shm_nonce_sh_t *shm_nonce_init(void *mem, uint32_t capacity, const uint8_t seed[16])
{
	shm_nonce_sh_t *sh = mem;

	assert(capacity >= SHM_NONCE_PROBE && (capacity & (capacity - 1)) == 0);
	assert(((uintptr_t)mem & 63) == 0);
	memset(mem, 0, shm_nonce_size(capacity));
	sh->capacity = capacity;
	sh->mask = capacity - 1;
	memcpy(sh->seed, seed, sizeof(sh->seed));
	return sh;
}

uint64_t shm_nonce_key(const shm_nonce_sh_t *sh, const char *nonce, size_t nonce_len, const char *username,
                       size_t username_len)
{
	uint64_t part[2] = {tg_siphash(sh->seed, nonce, nonce_len),
	                    tg_siphash(sh->seed, username, username_len)};

	/* hashing the two hashes keeps ("ab", "c") and ("a", "bc") apart without a length limit */
	return tg_siphash(sh->seed, part, sizeof(part));
}

static uint32_t key_fp(uint64_t key)
{
	uint32_t fp = (uint32_t)(key >> 32);

	return fp ? fp : 1; /* an id of 0 must mean "never used" */
}

/*
 * A settled slot of the key wins over a pending one: a claimer that lost
 * its validation and died before letting go leaves a pending slot that
 * may come first in the window, and must not hide the key's real one.
 */
static void probe(shm_nonce_sh_t *sh, uint32_t home, uint32_t fp, uint32_t now, probe_t *p)
{
	int settled = 0;

	memset(p, 0, sizeof(*p));
	for (uint32_t i = 0; i < SHM_NONCE_PROBE && !settled; i++) {
		shm_nonce_entry_sh_t *e = &sh->entry[(home + i) & sh->mask];
		uint64_t id = atomic_load(&e->id), c;
		int live = id && LOW(id) > now;

		if (live && FP(id) == fp) {
			c = atomic_load(&e->count);
			settled = FP(c) == fp && LOW(c) != 0;
			if (settled || !p->match) {
				p->match = e;
				p->match_id = id;
			}
		} else if (!live && !p->free) {
			p->free = e;
			p->free_id = id;
		}
	}
}

/*
 * The key lives in e (whose id was seen as id): accept nc if higher.
 * Returns a result, or AGAIN when the slot changed hands or is pending.
 */
static int advance(shm_nonce_entry_sh_t *e, uint64_t id, uint32_t fp, uint32_t nc, uint64_t txn)
{
	for (;;) {
		uint64_t c = atomic_load(&e->count);

		if (atomic_load(&e->id) != id)
			return AGAIN; /* released by a claimer that lost, or expired and reclaimed */
		if (FP(c) != fp || LOW(c) == 0)
			return AGAIN; /* claimed, not yet settled: another worker is mid-insert */
		if (nc == LOW(c) && txn != 0 && atomic_load(&e->txn) == txn)
			return SHM_NONCE_RETRANSMIT;
		if (nc <= LOW(c))
			return SHM_NONCE_REPLAY;
		if (atomic_compare_exchange_strong(&e->count, &c, WORD(fp, nc))) {
			atomic_store(&e->txn, txn);
			return atomic_load(&e->id) == id ? SHM_NONCE_OK : SHM_NONCE_EXPIRED;
		}
	}
}

/*
 * No slot holds the key: claim p->free for it and validate the claim
 * against the home slot's ins, read as ins_seen before the probe.
 * Returns OK, or AGAIN when the slot went to someone else or another
 * claim homed here was validated meanwhile (it may be this very key).
 */
static int insert(shm_nonce_sh_t *sh, const probe_t *p, uint32_t home, uint64_t ins_seen, uint32_t fp,
                  uint32_t nc, uint64_t txn, uint32_t expiry)
{
	shm_nonce_entry_sh_t *e = p->free;
	uint64_t id = p->free_id, mine = WORD(fp, expiry), pending = WORD(fp, 0);

	if (!atomic_compare_exchange_strong(&e->id, &id, mine))
		return AGAIN;
	atomic_store(&e->count, pending);
	atomic_store(&e->txn, txn); /* the slot is ours until count settles */
	if (!atomic_compare_exchange_strong(&sh->entry[home].ins, &ins_seen, ins_seen + 1)) {
		/* nobody advanced a pending slot, so nothing is lost by letting it go */
		atomic_compare_exchange_strong(&e->id, &mine, 0);
		return AGAIN;
	}
	/*
	 * Validated: this is the key's only slot. Nobody else settles a pending
	 * count; it can only have changed if the slot expired and was claimed
	 * again while this call straddled the expiry second.
	 */
	if (!atomic_compare_exchange_strong(&e->count, &pending, WORD(fp, nc)))
		return SHM_NONCE_EXPIRED;
	atomic_fetch_add(&sh->inserts, 1);
	return SHM_NONCE_OK;
}

shm_nonce_result_t shm_nonce_check(shm_nonce_sh_t *sh, uint64_t key, uint32_t nc, uint64_t txn,
                                   uint64_t expires_s, uint64_t now_s)
{
	uint32_t home = (uint32_t)key & sh->mask, fp = key_fp(key);
	uint32_t now = now_s > UINT32_MAX ? UINT32_MAX : (uint32_t)now_s;
	uint32_t expiry = expires_s > UINT32_MAX ? UINT32_MAX : (uint32_t)expires_s;
	int r = AGAIN;
	probe_t p;

	if (nc == 0) {
		atomic_fetch_add(&sh->replays, 1);
		return SHM_NONCE_REPLAY;
	}
	if (expiry <= now) {
		atomic_fetch_add(&sh->expired, 1);
		return SHM_NONCE_EXPIRED;
	}
	for (int attempt = 0; attempt < SHM_NONCE_RETRIES && r == AGAIN; attempt++) {
		uint64_t ins_seen = atomic_load(&sh->entry[home].ins);

		probe(sh, home, fp, now, &p);
		if (p.match) {
			r = advance(p.match, p.match_id, fp, nc, txn);
		} else if (p.free) {
			r = insert(sh, &p, home, ins_seen, fp, nc, txn, expiry);
		} else {
			atomic_fetch_add(&sh->full, 1);
			return SHM_NONCE_FULL;
		}
	}
	if (r == AGAIN) {
		atomic_fetch_add(&sh->busy, 1);
		return SHM_NONCE_BUSY;
	}
	if (r == SHM_NONCE_REPLAY)
		atomic_fetch_add(&sh->replays, 1);
	else if (r == SHM_NONCE_EXPIRED)
		atomic_fetch_add(&sh->expired, 1);
	else if (r == SHM_NONCE_RETRANSMIT)
		atomic_fetch_add(&sh->retransmits, 1);
	return (shm_nonce_result_t)r;
}

const char *shm_nonce_result_name(shm_nonce_result_t r)
{
	switch (r) {
	case SHM_NONCE_OK:
		return "ok";
	case SHM_NONCE_REPLAY:
		return "replay";
	case SHM_NONCE_EXPIRED:
		return "expired";
	case SHM_NONCE_FULL:
		return "full";
	case SHM_NONCE_BUSY:
		return "busy";
	case SHM_NONCE_RETRANSMIT:
		return "retransmit";
	}
	return "unknown";
}
