/*
 * Call limits (shm/limits.h has the layout and the ordering rule).
 * Lock-free: every change is one CAS, nobody waits for anybody, and a
 * CAS that keeps failing gives up with BUSY rather than spin. A release
 * that gives up leaves its holder record saying so, for the next call of
 * shm_limits_release() to finish; nothing is lost by giving up. Owns only
 * its region of shared memory; knows nothing of SIP: a key, a maximum,
 * a rate, a holder.
 */
#include <assert.h>
#include <string.h>

#include "lib/siphash.h"
#include "shm/limits.h"

/* hdr */
#define H_LIVE    (1ULL << 63)
#define H_CLAIMED (1ULL << 62)
#define H_RULE    (1ULL << 61)
#define H_ID_MASK ((1ULL << 61) - 1)
#define H_KEY(w)  ((w) & (H_RULE | H_ID_MASK))

/* tk and rl: a 20-bit count over 44 bits of evidence */
#define C_SHIFT      44
#define C_MASK       0xFFFFFu
#define EV_MASK      ((1ULL << C_SHIFT) - 1)
#define COUNT(w)     ((uint32_t)((w) >> C_SHIFT))
#define EV(w)        ((w)&EV_MASK)
#define CWORD(c, ev) ((uint64_t)((c)&C_MASK) << C_SHIFT | (ev))
#define EV_DEAD      0xFFFFFFu                  /* holder field of a tk that takes no more */
#define EV_HOLDER(e) ((uint32_t)((e)&0xFFFFFF)) /* holder + 1, 0 = none */
#define EV_SLOT(e)   ((int)(((e) >> 24) & 1))
#define EV_GEN(e)    ((uint32_t)((e) >> 25) & GEN_MASK)

/* holder words */
#define W_CLOSED       (1ULL << 63)
#define GEN_MASK       0x7FFFFu
#define W_GEN(w)       ((uint32_t)((w) >> 42) & GEN_MASK)
#define W_SLOT(w, i)   ((uint32_t)((w) >> (21 * (i))) & 0x1FFFFFu)
#define W_SET(w, i, s) (((w) & ~(0x1FFFFFULL << (21 * (i)))) | (uint64_t)(s) << (21 * (i)))
#define W_EMPTY(w)     (W_SLOT(w, 0) == 0 && W_SLOT(w, 1) == 0)
#define S_PHASE(s)     ((s) >> 19)
#define S_MAKE(p, l)   ((uint32_t)(p) << 19 | ((l) + 1))

enum phase { NONE, PENDING, HELD, RELEASING };

/* Internal outcome of take(): the entry changed hands, look it up again. */
#define AGAIN (-1)

size_t shm_limits_size(uint32_t capacity, uint32_t nholders)
{
	size_t holders = (size_t)nholders * sizeof(shm_limit_holder_sh_t);

	return sizeof(shm_limits_sh_t) + (size_t)capacity * sizeof(shm_limit_entry_sh_t) +
	       (holders + 63) / 64 * 64;
}

shm_limits_sh_t *shm_limits_init(void *mem, uint32_t capacity, uint32_t nholders, const uint8_t seed[16])
{
	shm_limits_sh_t *sh = mem;

	assert(capacity >= SHM_LIMITS_PROBE && capacity <= SHM_LIMITS_MAX_CAPACITY);
	assert((capacity & (capacity - 1)) == 0);
	assert(nholders <= SHM_LIMITS_MAX_HOLDERS);
	assert(((uintptr_t)mem & 63) == 0);
	memset(mem, 0, shm_limits_size(capacity, nholders));
	sh->capacity = capacity;
	sh->mask = capacity - 1;
	sh->nholders = nholders;
	sh->off_holders = sizeof(shm_limits_sh_t) + (size_t)capacity * sizeof(shm_limit_entry_sh_t);
	memcpy(sh->seed, seed, sizeof(sh->seed));
	for (uint32_t h = 0; h < nholders; h++) {
		shm_limit_holder_sh_t *hw = (shm_limit_holder_sh_t *)((char *)sh + sh->off_holders) + h;

		atomic_store(&hw->word, W_CLOSED);
	}
	return sh;
}

static _Atomic uint64_t *holder_at(shm_limits_sh_t *sh, uint32_t h)
{
	return &((shm_limit_holder_sh_t *)((char *)sh + sh->off_holders) + h)->word;
}

static uint64_t ev_make(uint32_t holder, int slot, uint32_t gen)
{
	return (uint64_t)(gen & GEN_MASK) << 25 | (uint64_t)slot << 24 | (holder + 1);
}

static uint32_t channels_of(uint64_t tk, uint64_t rl)
{
	return (COUNT(tk) - COUNT(rl)) & C_MASK;
}

static uint64_t hdr_key(uint8_t kind, int64_t id)
{
	return (kind == SHM_LIMIT_RULE ? H_RULE : 0) | ((uint64_t)id & H_ID_MASK);
}

static uint32_t key_home(const shm_limits_sh_t *sh, uint64_t key)
{
	uint8_t b[8];

	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(key >> (8 * i));
	return (uint32_t)tg_siphash(sh->seed, b, sizeof(b)) & sh->mask;
}

/* ---- the CPS bucket: GCRA, one word ---- */

/* 1 token taken, 0 none left, -1 busy. Unlimited keys only stamp the last use. */
static int take_token(shm_limit_entry_sh_t *e, const shm_limit_req_t *req, uint64_t now_ns)
{
	uint64_t tat = atomic_load(&e->tat_ns), t, limit;

	if (!req->max_cps) {
		if (tat < now_ns)
			atomic_compare_exchange_strong(&e->tat_ns, &tat, now_ns);
		return 1;
	}
	t = 1000000000ULL / req->max_cps;
	limit = (uint64_t)(req->cps_burst ? req->cps_burst : req->max_cps) * t;
	for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
		uint64_t next = (tat > now_ns ? tat : now_ns) + t;

		if (next - now_ns > limit)
			return 0;
		if (atomic_compare_exchange_strong(&e->tat_ns, &tat, next))
			return 1;
	}
	return -1;
}

/* Give a token back; a refund lost to contention costs one token, nothing more. */
static void refund_token(shm_limit_entry_sh_t *e, const shm_limit_req_t *req)
{
	uint64_t tat = atomic_load(&e->tat_ns), t;

	if (!req->max_cps)
		return;
	t = 1000000000ULL / req->max_cps;
	for (int a = 0; a < SHM_LIMITS_RETRIES && tat >= t; a++)
		if (atomic_compare_exchange_strong(&e->tat_ns, &tat, tat - t))
			return;
}

/* ---- holders ---- */

/* Slot i of holder word *hw, generation gen (and open when must_open), from `from` to `to`. */
static int slot_cas(_Atomic uint64_t *hw, uint32_t gen, int i, uint32_t from, uint32_t to, int must_open)
{
	uint64_t w = atomic_load(hw);

	for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
		if (W_GEN(w) != (gen & GEN_MASK) || (must_open && (w & W_CLOSED)) || W_SLOT(w, i) != from)
			return 0;
		if (atomic_compare_exchange_strong(hw, &w, W_SET(w, i, to)))
			return 1;
	}
	return 0;
}

/*
 * The take carrying evidence ev has no record: take it back, unless
 * someone already did (the evidence is gone). Giving up leaves the
 * evidence for the key's next take, which undoes it before counting.
 */
static void undo_take(shm_limits_sh_t *sh, shm_limit_entry_sh_t *e, uint64_t ev)
{
	uint64_t t = atomic_load(&e->tk);

	for (int a = 0; a < SHM_LIMITS_RETRIES && EV(t) == ev; a++) {
		if (atomic_compare_exchange_strong(&e->tk, &t, CWORD(COUNT(t) - 1, 0))) {
			atomic_fetch_add(&sh->orphans, 1);
			return;
		}
	}
}

/*
 * tk (seen as t) carries another holder slot's evidence: finish that
 * slot's record before the evidence is overwritten. Returns 1 when tk
 * changed (an orphan was undone), 0 when t may be CASed as it is.
 */
static int help_take(shm_limits_sh_t *sh, uint32_t entry, shm_limit_entry_sh_t *e, uint64_t t)
{
	uint64_t ev = EV(t);
	uint32_t h = EV_HOLDER(ev) - 1;
	int slot = EV_SLOT(ev);

	if (h < sh->nholders) {
		_Atomic uint64_t *hw = holder_at(sh, h);
		uint64_t w = atomic_load(hw);

		for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
			uint32_t s = W_SLOT(w, slot);

			if (W_GEN(w) != EV_GEN(ev) || (s & 0x7FFFF) != entry + 1)
				break; /* resolved to NONE, or the holder has a new owner: an orphan */
			if (S_PHASE(s) == HELD || S_PHASE(s) == RELEASING)
				return 0;
			if (atomic_compare_exchange_strong(hw, &w, W_SET(w, slot, S_MAKE(HELD, entry))))
				return 0;
		}
	}
	if (atomic_compare_exchange_strong(&e->tk, &t, CWORD(COUNT(t) - 1, 0)))
		atomic_fetch_add(&sh->orphans, 1);
	return 1;
}

/* rl carries evidence of a release that landed: finish that slot (RELEASING -> NONE). */
static void help_release(shm_limits_sh_t *sh, uint32_t entry, uint64_t r)
{
	uint64_t ev = EV(r);
	uint32_t h = EV_HOLDER(ev) - 1;

	if (h >= sh->nholders)
		return;
	slot_cas(holder_at(sh, h), EV_GEN(ev), EV_SLOT(ev), S_MAKE(RELEASING, entry), 0, 0);
}

/*
 * Slot i is RELEASING entry: land its release in rl, once, and set it
 * NONE. Returns 1 when the slot is no longer RELEASING, 0 when a CAS
 * kept failing (call again).
 */
static int give_back(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen, int i, uint32_t entry)
{
	shm_limit_entry_sh_t *e = &sh->entry[entry];
	_Atomic uint64_t *hw = holder_at(sh, holder);
	uint64_t ev = ev_make(holder, i, gen), t = atomic_load(&e->tk), r, w;
	int a;

	/* the take's evidence goes first: a NONE slot must never be named in tk */
	for (a = 0; EV(t) == ev; a++) {
		if (a == SHM_LIMITS_RELEASE_RETRIES)
			return 0;
		if (atomic_compare_exchange_strong(&e->tk, &t, CWORD(COUNT(t), 0)))
			break;
	}
	for (a = 0; a < SHM_LIMITS_RELEASE_RETRIES; a++) {
		r = atomic_load(&e->rl);
		if (EV(r) == ev)
			break; /* landed (by us or for us) */
		if (EV_HOLDER(EV(r)))
			help_release(sh, entry, r);
		w = atomic_load(hw);
		if (W_GEN(w) != (gen & GEN_MASK) || W_SLOT(w, i) != S_MAKE(RELEASING, entry))
			return 1; /* landed and finished by someone else */
		if (channels_of(atomic_load(&e->tk), r) == 0) {
			atomic_fetch_add(&sh->underflows, 1); /* never by this protocol: a bug elsewhere */
			break;
		}
		if (atomic_compare_exchange_strong(&e->rl, &r, CWORD(COUNT(r) + 1, ev)))
			break;
	}
	if (a == SHM_LIMITS_RELEASE_RETRIES)
		return 0;
	slot_cas(hw, gen, i, S_MAKE(RELEASING, entry), 0, 0);
	w = atomic_load(hw);
	return W_GEN(w) != (gen & GEN_MASK) || W_SLOT(w, i) != S_MAKE(RELEASING, entry);
}

/* Make slot i of holder (generation gen) hold nothing. 1 done, 0 gave up. */
static int release_slot(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen, int i)
{
	_Atomic uint64_t *hw = holder_at(sh, holder);

	for (int a = 0; a < SHM_LIMITS_RELEASE_RETRIES; a++) {
		uint64_t w = atomic_load(hw);
		uint32_t s = W_SLOT(w, i), entry = (s & 0x7FFFF) - 1;

		if (W_GEN(w) != (gen & GEN_MASK) || s == 0)
			return 1;
		switch (S_PHASE(s)) {
		case PENDING:
			/* took iff tk names this slot: resolve to NONE first, then undo it if it did */
			if (atomic_compare_exchange_strong(hw, &w, W_SET(w, i, 0))) {
				undo_take(sh, &sh->entry[entry], ev_make(holder, i, gen));
				return 1;
			}
			break;
		case HELD:
			atomic_compare_exchange_strong(hw, &w, W_SET(w, i, S_MAKE(RELEASING, entry)));
			break;
		case RELEASING:
			if (!give_back(sh, holder, gen, i, entry))
				return 0;
			break;
		default:
			return 1; /* a slot of NONE phase with an index: not written by this file */
		}
	}
	return 0;
}

int shm_limits_release(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen)
{
	int done = 1;

	assert(holder < sh->nholders);
	for (int i = 0; i < SHM_LIMITS_PER_HOLDER; i++)
		done &= release_slot(sh, holder, gen, i);
	return done;
}

int shm_limits_open(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen)
{
	_Atomic uint64_t *hw = holder_at(sh, holder);
	uint64_t w = atomic_load(hw);

	assert(holder < sh->nholders);
	for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
		if (!W_EMPTY(w))
			return 0;
		if (atomic_compare_exchange_strong(hw, &w, (uint64_t)(gen & GEN_MASK) << 42))
			return 1;
	}
	return 0;
}

int shm_limits_close(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen)
{
	_Atomic uint64_t *hw = holder_at(sh, holder);
	uint64_t w = atomic_load(hw);

	assert(holder < sh->nholders);
	for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
		if (!W_EMPTY(w))
			return 0;
		/* never opened for gen (its owner died before opening it): closed by the owner before */
		if (W_GEN(w) != (gen & GEN_MASK))
			return (w & W_CLOSED) != 0;
		if ((w & W_CLOSED) || atomic_compare_exchange_strong(hw, &w, w | W_CLOSED))
			return 1;
	}
	return 0;
}

int shm_limits_held(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen, uint32_t idx[SHM_LIMITS_PER_HOLDER])
{
	uint64_t w = atomic_load(holder_at(sh, holder));
	int n = 0;

	if (W_GEN(w) != (gen & GEN_MASK))
		return 0;
	for (int i = 0; i < SHM_LIMITS_PER_HOLDER; i++)
		if (W_SLOT(w, i))
			idx[n++] = (W_SLOT(w, i) & 0x7FFFF) - 1;
	return n;
}

/* ---- finding and creating entries ---- */

typedef struct scan {
	int match;         /* live slot of the key, or -1 */
	int free;          /* first free or reclaimable slot, or -1 */
	uint64_t free_hdr; /* its hdr as seen */
	int pending;       /* the key is being created elsewhere */
} scan_t;

/* tk as seen; a count that changed since makes the reclaim's CAS on tk fail, so no exact read is needed */
static int reclaimable(shm_limit_entry_sh_t *e, uint64_t tk, uint64_t now_ns)
{
	uint64_t tat = atomic_load(&e->tat_ns);

	return EV_HOLDER(EV(tk)) == 0 && channels_of(tk, atomic_load(&e->rl)) == 0 && tat <= now_ns &&
	       now_ns - tat >= SHM_LIMITS_IDLE_MS * 1000000ULL;
}

/* A claim whose claimer is gone: its claim time (tat) is SHM_LIMITS_CLAIM_MS old. */
static int stuck(shm_limit_entry_sh_t *e, uint64_t now_ns)
{
	uint64_t tat = atomic_load(&e->tat_ns);

	return tat <= now_ns && now_ns - tat >= SHM_LIMITS_CLAIM_MS * 1000000ULL;
}

/*
 * One look at key's probe window. Finishes on the way what dead or
 * stalled processes left: a reclaim between its two CASes, a stuck claim.
 */
static void scan(shm_limits_sh_t *sh, uint32_t home, uint64_t key, uint64_t now_ns, scan_t *s)
{
	s->match = s->free = -1;
	s->pending = 0;
	for (uint32_t i = 0; i < SHM_LIMITS_PROBE; i++) {
		uint32_t j = (home + i) & sh->mask;
		shm_limit_entry_sh_t *e = &sh->entry[j];
		uint64_t h = atomic_load(&e->hdr), tk;

		if (h & H_LIVE) {
			tk = atomic_load(&e->tk);
			if (EV_HOLDER(EV(tk)) == EV_DEAD) {
				if (atomic_compare_exchange_strong(&e->hdr, &h, 0))
					h = 0; /* a reclaim's second step, for a reclaimer that stopped */
			} else if (H_KEY(h) == key) {
				s->match = (int)j;
				return;
			} else if (s->free < 0 && reclaimable(e, tk, now_ns)) {
				s->free = (int)j;
				s->free_hdr = h;
			}
		} else if (h & H_CLAIMED) {
			if (stuck(e, now_ns) && atomic_compare_exchange_strong(&e->hdr, &h, 0))
				h = 0;
			else if (H_KEY(h) == key)
				s->pending = 1;
		}
		if (h == 0 && s->free < 0) {
			s->free = (int)j;
			s->free_hdr = 0;
		}
	}
}

static void name_put(shm_limit_entry_sh_t *e, const char *name)
{
	size_t len = strnlen(name, 63);

	for (int k = 0; k < 8; k++) {
		uint64_t w = 0;

		for (int b = 0; b < 8; b++) {
			size_t at = (size_t)(8 * k + b);

			w |= (uint64_t)(uint8_t)(at < len ? name[at] : 0) << (8 * b);
		}
		if (atomic_load_explicit(&e->name[k], memory_order_relaxed) != w)
			atomic_store_explicit(&e->name[k], w, memory_order_relaxed);
	}
}

/*
 * Claim slot s->free for key, validate, publish. The slot may be a LIVE
 * entry to reclaim (s->free_hdr): its tk goes DEAD first, so no take can
 * slip in between the check and the reclaim.
 */
static int claim(shm_limits_sh_t *sh, const scan_t *s, uint32_t home, uint64_t ins_seen, uint64_t key,
                 const shm_limit_req_t *req, uint64_t now_ns, uint32_t *out)
{
	shm_limit_entry_sh_t *e = &sh->entry[s->free];
	uint64_t h = s->free_hdr, claimed = H_CLAIMED | key, tk, stamp;

	if (h) {
		tk = atomic_load(&e->tk);
		if (!reclaimable(e, tk, now_ns) || !atomic_compare_exchange_strong(&e->tk, &tk, EV_DEAD))
			return AGAIN;
		atomic_fetch_add(&sh->reclaims, 1);
		if (!atomic_compare_exchange_strong(&e->hdr, &h, 0) && h != 0)
			return AGAIN;
		h = 0;
	}
	if (!atomic_compare_exchange_strong(&e->hdr, &h, claimed))
		return AGAIN;
	/*
	 * The claim time, and a full bucket once published. Until this store a
	 * scanner may take the claim for a stuck one and free it: the publish
	 * below then fails and the call looks again.
	 */
	atomic_store(&e->tat_ns, now_ns);
	tk = atomic_load(&e->tk);
	/* metrics only, published by the CASes below */
	atomic_store_explicit(&e->calls_total, 0, memory_order_relaxed);
	atomic_store_explicit(&e->refusals_channels, 0, memory_order_relaxed);
	atomic_store_explicit(&e->refusals_cps, 0, memory_order_relaxed);
	name_put(e, req->name ? req->name : "");
	if (!atomic_compare_exchange_strong(&sh->entry[home].ins, &ins_seen, ins_seen + 1)) {
		atomic_compare_exchange_strong(&e->hdr, &claimed, 0);
		return AGAIN;
	}
	/* channels start at 0 (taken = released); the stamp makes this tk value never seen before */
	stamp = atomic_fetch_add(&sh->stamps, 1) % 0xFFFFF + 1;
	if (!atomic_compare_exchange_strong(&e->tk, &tk, CWORD(COUNT(atomic_load(&e->rl)), stamp << 24))) {
		atomic_compare_exchange_strong(&e->hdr, &claimed, 0);
		return AGAIN;
	}
	if (!atomic_compare_exchange_strong(&e->hdr, &claimed, H_LIVE | key))
		return AGAIN; /* freed as stuck under a claimer that stalled: look again */
	atomic_fetch_add(&sh->creates, 1);
	*out = (uint32_t)s->free;
	return SHM_LIMIT_OK;
}

/* The entry of req's key, created if need be: OK, FULL or BUSY. */
static int get(shm_limits_sh_t *sh, const shm_limit_req_t *req, uint64_t now_ns, uint32_t *out)
{
	uint64_t key = hdr_key(req->kind, req->id);
	uint32_t home = key_home(sh, key);
	scan_t s;

	for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
		uint64_t ins_seen = atomic_load(&sh->entry[home].ins);

		scan(sh, home, key, now_ns, &s);
		if (s.match >= 0) {
			*out = (uint32_t)s.match;
			return SHM_LIMIT_OK;
		}
		if (s.pending)
			continue;
		if (s.free < 0)
			return SHM_LIMIT_FULL;
		if (claim(sh, &s, home, ins_seen, key, req, now_ns, out) == SHM_LIMIT_OK)
			return SHM_LIMIT_OK;
	}
	return SHM_LIMIT_BUSY;
}

/* ---- taking ---- */

static uint32_t max_channels(const shm_limit_req_t *req)
{
	return req->max_channels && req->max_channels < SHM_LIMITS_MAX_CHANNELS ? req->max_channels
	                                                                        : SHM_LIMITS_MAX_CHANNELS;
}

/*
 * Channels in use at one instant, or -1 when tk kept moving: tk, then rl,
 * then tk again unchanged (taken and released are two words), the tk seen
 * in *tk. Evidence of another holder slot than self is helped first, so
 * that an orphan does not count.
 */
static int64_t channels_exact(shm_limits_sh_t *sh, uint32_t entry, uint64_t self, uint64_t *tk)
{
	shm_limit_entry_sh_t *e = &sh->entry[entry];

	for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
		uint64_t t = atomic_load(&e->tk), r;

		if (EV_HOLDER(EV(t)) && EV_HOLDER(EV(t)) != EV_DEAD && EV(t) != self &&
		    help_take(sh, entry, e, t))
			continue;
		r = atomic_load(&e->rl);
		if (atomic_load(&e->tk) == t) {
			*tk = t;
			return channels_of(t, r);
		}
	}
	return -1;
}

/*
 * The tk CAS of a take, evidence ev: the channel, if one is free. Returns
 * OK with the slot still PENDING, CHANNELS, LOST (the slot was resolved
 * under us: nothing taken), AGAIN (the entry is going away) or BUSY.
 */
static int take_channel(shm_limits_sh_t *sh, uint32_t entry, uint64_t ev, uint32_t max, _Atomic uint64_t *hw,
                        uint32_t pending)
{
	shm_limit_entry_sh_t *e = &sh->entry[entry];
	int slot = EV_SLOT(ev);

	for (int a = 0; a < SHM_LIMITS_RETRIES; a++) {
		uint64_t t, w;
		int64_t c = channels_exact(sh, entry, ev, &t);

		if (c < 0)
			continue;
		if (EV_HOLDER(EV(t)) == EV_DEAD)
			return AGAIN;
		/* c were in use at the instant rl was read: refuse on that, never on a torn pair */
		if (c >= max)
			return SHM_LIMIT_CHANNELS;
		w = atomic_load(hw);
		if (W_GEN(w) != EV_GEN(ev) || (w & W_CLOSED) || W_SLOT(w, slot) != pending)
			return SHM_LIMIT_LOST;
		/* tk unchanged since: released only grew, so at most c are in use now, c + 1 after */
		if (atomic_compare_exchange_strong(&e->tk, &t, CWORD(COUNT(t) + 1, ev)))
			return SHM_LIMIT_OK;
	}
	return SHM_LIMIT_BUSY;
}

/*
 * Evidence naming this slot (holder, slot, generation) before it takes
 * again is from an earlier hold of the same entry by the same slot (a
 * call that looked again after giving its take back). In tk it can only
 * be a take whose record was resolved away, an orphan: undo it. In rl it
 * is an old landing: clear it, or this hold's release would take it for
 * its own. Done while the slot is still NONE, so that no helper can
 * mistake the old evidence for a take of the PENDING to come.
 */
static int clear_stale(shm_limits_sh_t *sh, shm_limit_entry_sh_t *e, uint64_t ev)
{
	uint64_t r = atomic_load(&e->rl);

	undo_take(sh, e, ev);
	for (int a = 0; a < SHM_LIMITS_RETRIES && EV(r) == ev; a++)
		if (atomic_compare_exchange_strong(&e->rl, &r, CWORD(COUNT(r), 0)))
			break;
	return EV(atomic_load(&e->tk)) != ev && EV(atomic_load(&e->rl)) != ev;
}

/*
 * reqs[i] of a call: one token and one channel from entry, recorded in
 * slot i of holder. Returns a result, or AGAIN when the entry changed
 * hands: nothing is then held and no token spent.
 */
static int take(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen, int i, uint32_t entry,
                const shm_limit_req_t *req, uint64_t now_ns)
{
	shm_limit_entry_sh_t *e = &sh->entry[entry];
	_Atomic uint64_t *hw = holder_at(sh, holder);
	uint64_t key = hdr_key(req->kind, req->id), ev = ev_make(holder, i, gen), t;
	uint32_t pending = S_MAKE(PENDING, entry), max = max_channels(req);
	int r, tok;

	if (!clear_stale(sh, e, ev))
		return SHM_LIMIT_BUSY;
	if (!slot_cas(hw, gen, i, 0, pending, 1))
		return SHM_LIMIT_LOST;
	r = AGAIN;
	if (atomic_load(&e->hdr) != (H_LIVE | key))
		goto resolve;
	if (channels_exact(sh, entry, ev, &t) >= max) {
		r = SHM_LIMIT_CHANNELS; /* no token spent on a call that cannot have a channel */
		goto resolve;
	}
	tok = take_token(e, req, now_ns);
	if (tok <= 0) {
		r = tok ? SHM_LIMIT_BUSY : SHM_LIMIT_CPS;
		goto resolve;
	}
	r = take_channel(sh, entry, ev, max, hw, pending);
	if (r != SHM_LIMIT_OK) {
		refund_token(e, req);
		goto resolve;
	}
	/* taken: record it. A failure is a helper's HELD (fine), or the slot resolved: an orphan */
	if (!slot_cas(hw, gen, i, pending, S_MAKE(HELD, entry), 0)) {
		uint64_t w = atomic_load(hw);

		if (W_GEN(w) != (gen & GEN_MASK) ||
		    (W_SLOT(w, i) != S_MAKE(HELD, entry) && W_SLOT(w, i) != pending)) {
			undo_take(sh, e, ev);
			return SHM_LIMIT_LOST;
		}
	}
	if (atomic_load(&e->hdr) != (H_LIVE | key)) {
		/* an ABA on tk across a reclaim (a stall of a whole reclaim): give it back, look again */
		refund_token(e, req);
		release_slot(sh, holder, gen, i);
		return AGAIN;
	}
	return SHM_LIMIT_OK;
resolve:
	if (r == SHM_LIMIT_CHANNELS)
		atomic_fetch_add(&e->refusals_channels, 1);
	else if (r == SHM_LIMIT_CPS)
		atomic_fetch_add(&e->refusals_cps, 1);
	slot_cas(hw, gen, i, pending, 0, 0); /* nothing was taken; failing means the sweep resolved it */
	return r;
}

/* reqs[i]: its entry, found or created, and a token and a channel from it. */
static int acquire_one(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen, int i, const shm_limit_req_t *req,
                       uint64_t now_ns, uint32_t *entry)
{
	int r = AGAIN;

	if (req->id < 0 || (uint64_t)req->id > H_ID_MASK)
		return SHM_LIMIT_FULL; /* cannot be a key: refused as if no slot */
	for (int a = 0; a < SHM_LIMITS_RETRIES && r == AGAIN; a++) {
		r = get(sh, req, now_ns, entry);
		if (r == SHM_LIMIT_OK)
			r = take(sh, holder, gen, i, *entry, req, now_ns);
	}
	return r == AGAIN ? SHM_LIMIT_BUSY : r;
}

shm_limit_result_t shm_limits_acquire(shm_limits_sh_t *sh, uint32_t holder, uint32_t gen,
                                      const shm_limit_req_t *reqs, int n, uint64_t now_ms, int *which)
{
	uint64_t now_ns = now_ms * 1000000ULL;
	uint32_t entry[SHM_LIMITS_PER_HOLDER];

	assert(holder < sh->nholders && n >= 0 && n <= SHM_LIMITS_PER_HOLDER);
	for (int i = 0; i < n; i++) {
		int r = acquire_one(sh, holder, gen, i, &reqs[i], now_ns, &entry[i]);

		if (r == SHM_LIMIT_OK)
			continue;
		/* all or nothing: give back what the keys before took (a release that gives up stays
		 * recorded) */
		for (int j = 0; j < i; j++) {
			release_slot(sh, holder, gen, j);
			refund_token(&sh->entry[entry[j]], &reqs[j]);
		}
		if (r == SHM_LIMIT_FULL)
			atomic_fetch_add(&sh->full, 1);
		else if (r == SHM_LIMIT_BUSY)
			atomic_fetch_add(&sh->busy, 1);
		if (which)
			*which = i;
		return (shm_limit_result_t)r;
	}
	for (int i = 0; i < n; i++) {
		atomic_fetch_add(&sh->entry[entry[i]].calls_total, 1);
		if (reqs[i].name)
			name_put(&sh->entry[entry[i]], reqs[i].name);
	}
	return SHM_LIMIT_OK;
}

/* ---- reading ---- */

/* A copy of entry j, which was LIVE with hdr h; channels from one consistent pair if it can get one. */
static void stat_fill(shm_limits_sh_t *sh, uint32_t j, uint64_t h, shm_limit_stat_t *out)
{
	shm_limit_entry_sh_t *e = &sh->entry[j];
	uint64_t t = atomic_load(&e->tk), r = atomic_load(&e->rl);

	out->exact = 0;
	for (int a = 0; a < 64 && !out->exact; a++) {
		uint64_t t2 = atomic_load(&e->tk);

		out->exact = t2 == t; /* taken did not move while released was read */
		if (!out->exact) {
			t = t2;
			r = atomic_load(&e->rl);
		}
	}
	out->kind = (h & H_RULE) ? SHM_LIMIT_RULE : SHM_LIMIT_ACCOUNT;
	out->id = (int64_t)(h & H_ID_MASK);
	out->index = j;
	out->channels = channels_of(t, r);
	out->calls_total = atomic_load(&e->calls_total);
	out->refusals_channels = atomic_load(&e->refusals_channels);
	out->refusals_cps = atomic_load(&e->refusals_cps);
	for (int k = 0; k < 8; k++) {
		uint64_t w = atomic_load_explicit(&e->name[k], memory_order_relaxed);

		for (int b = 0; b < 8; b++)
			out->name[8 * k + b] = (char)(w >> (8 * b));
	}
	out->name[63] = '\0';
}

int shm_limits_lookup(shm_limits_sh_t *sh, uint8_t kind, int64_t id, shm_limit_stat_t *out)
{
	uint64_t key = hdr_key(kind, id);
	uint32_t home = key_home(sh, key);

	for (uint32_t i = 0; i < SHM_LIMITS_PROBE; i++) {
		uint32_t j = (home + i) & sh->mask;
		uint64_t h = atomic_load(&sh->entry[j].hdr);

		if (h == (H_LIVE | key)) {
			stat_fill(sh, j, h, out);
			return 1;
		}
	}
	return 0;
}

void shm_limits_foreach(shm_limits_sh_t *sh, void (*fn)(void *arg, const shm_limit_stat_t *st), void *arg)
{
	shm_limit_stat_t st;

	for (uint32_t j = 0; j < sh->capacity; j++) {
		uint64_t h = atomic_load(&sh->entry[j].hdr);

		if (h & H_LIVE) {
			stat_fill(sh, j, h, &st);
			fn(arg, &st);
		}
	}
}

const char *shm_limit_result_name(shm_limit_result_t r)
{
	switch (r) {
	case SHM_LIMIT_OK:
		return "ok";
	case SHM_LIMIT_CHANNELS:
		return "channels";
	case SHM_LIMIT_CPS:
		return "cps";
	case SHM_LIMIT_FULL:
		return "full";
	case SHM_LIMIT_BUSY:
		return "busy";
	case SHM_LIMIT_LOST:
		return "lost";
	}
	return "unknown";
}
