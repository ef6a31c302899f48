/*
 * Authentication failures per source address (shm/failures.h has the
 * layout and the ordering rule). Lock-free, one CAS per change; owns only
 * its region of shared memory. Deciding what a count means (a ban) is
 * the threat-detection code's business, not this file's.
 */
#include <assert.h>
#include <string.h>

#include "lib/siphash.h"
#include "shm/failures.h"

#define FP(word)     ((uint32_t)((word) >> 32))
#define LOW(word)    ((uint32_t)(word))
#define WORD(hi, lo) ((uint64_t)(hi) << 32 | (uint32_t)(lo))

size_t shm_failures_size(uint32_t capacity)
{
	return sizeof(shm_failures_sh_t) + (size_t)capacity * sizeof(shm_failures_entry_sh_t);
}

shm_failures_sh_t *shm_failures_init(void *mem, uint32_t capacity, uint32_t window_s, const uint8_t seed[16])
{
	shm_failures_sh_t *sh = mem;

	assert(capacity >= SHM_FAILURES_PROBE && (capacity & (capacity - 1)) == 0);
	assert(window_s >= 1);
	assert(((uintptr_t)mem & 63) == 0);
	memset(mem, 0, shm_failures_size(capacity));
	sh->capacity = capacity;
	sh->mask = capacity - 1;
	sh->window_s = window_s;
	memcpy(sh->seed, seed, sizeof(sh->seed));
	return sh;
}

/* The address's home slot and fingerprint, from a keyed hash an attacker cannot aim. */
static void ip_hash(const shm_failures_sh_t *sh, const tg_ip_t *ip, uint32_t *home, uint32_t *fp)
{
	uint8_t b[16];
	uint64_t h;

	for (int i = 0; i < 8; i++) {
		b[i] = (uint8_t)(ip->hi >> (56 - 8 * i));
		b[8 + i] = (uint8_t)(ip->lo >> (56 - 8 * i));
	}
	h = tg_siphash(sh->seed, b, sizeof(b));
	*home = (uint32_t)h & sh->mask;
	*fp = (uint32_t)(h >> 32) ? (uint32_t)(h >> 32) : 1;
}

static uint32_t clamp32(uint64_t v)
{
	return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static shm_failures_entry_sh_t *slot(shm_failures_sh_t *sh, uint32_t home, uint32_t i)
{
	return &sh->entry[(home + i) & sh->mask];
}

/* Adds k to window w of e: the count of an older window is replaced, not added to. */
static void bump(shm_failures_entry_sh_t *e, uint32_t w, uint32_t k)
{
	_Atomic uint64_t *win = &e->win[w & 1];
	uint64_t old = atomic_load(win), new;

	do {
		uint64_t n = FP(old) == w ? (uint64_t)LOW(old) + k : k;

		new = WORD(w, clamp32(n));
	} while (!atomic_compare_exchange_weak(win, &old, new));
}

static uint32_t sat_add(uint32_t a, uint32_t b)
{
	return clamp32((uint64_t)a + b);
}

void shm_failures_read(shm_failures_sh_t *sh, const tg_ip_t *ip, uint64_t now_s, shm_failures_count_t *out)
{
	uint32_t home, fp, now = clamp32(now_s), w = clamp32(now_s / sh->window_s);

	ip_hash(sh, ip, &home, &fp);
	out->current = out->previous = 0;
	for (uint32_t i = 0; i < SHM_FAILURES_PROBE; i++) {
		shm_failures_entry_sh_t *e = slot(sh, home, i);
		uint64_t id = atomic_load(&e->id), cur, prev;

		if (!id || FP(id) != fp || LOW(id) <= now)
			continue;
		cur = atomic_load(&e->win[w & 1]);
		prev = atomic_load(&e->win[(w - 1) & 1]);
		if (FP(cur) == w)
			out->current = sat_add(out->current, LOW(cur));
		if (w > 0 && FP(prev) == w - 1)
			out->previous = sat_add(out->previous, LOW(prev));
	}
}

/*
 * One attempt: find the address's first live slot and count there, or
 * claim a free one. 1 counted, 0 look again, -1 full.
 */
static int add_once(shm_failures_sh_t *sh, uint32_t home, uint32_t fp, uint32_t now, uint32_t w,
                    uint32_t expiry, uint32_t n)
{
	shm_failures_entry_sh_t *match = NULL, *empty = NULL;
	uint64_t match_id = 0, empty_id = 0;

	for (uint32_t i = 0; i < SHM_FAILURES_PROBE && !match; i++) {
		shm_failures_entry_sh_t *e = slot(sh, home, i);
		uint64_t id = atomic_load(&e->id);
		int live = id && LOW(id) > now;

		if (live && FP(id) == fp) {
			match = e;
			match_id = id;
		} else if (!live && !empty) {
			empty = e;
			empty_id = id;
		}
	}
	if (match) {
		/* keep it alive through the window after this one before counting into it */
		if (LOW(match_id) < expiry &&
		    !atomic_compare_exchange_strong(&match->id, &match_id, WORD(fp, expiry)))
			return 0;
		bump(match, w, n);
		return 1;
	}
	if (!empty)
		return -1;
	if (!atomic_compare_exchange_strong(&empty->id, &empty_id, WORD(fp, expiry)))
		return 0;
	atomic_fetch_add(&sh->inserts, 1);
	bump(empty, w, n);
	return 1;
}

shm_failures_result_t shm_failures_add(shm_failures_sh_t *sh, const tg_ip_t *ip, uint32_t n, uint64_t now_s,
                                       shm_failures_count_t *out)
{
	uint32_t home, fp, now = clamp32(now_s), w = clamp32(now_s / sh->window_s);
	uint32_t expiry = clamp32(((uint64_t)w + 2) * sh->window_s);

	ip_hash(sh, ip, &home, &fp);
	for (int attempt = 0; attempt < SHM_FAILURES_RETRIES; attempt++) {
		int r = add_once(sh, home, fp, now, w, expiry, n);

		if (r < 0) {
			atomic_fetch_add(&sh->full, 1);
			return SHM_FAILURES_FULL;
		}
		if (r > 0) {
			if (out)
				shm_failures_read(sh, ip, now_s, out);
			return SHM_FAILURES_OK;
		}
	}
	atomic_fetch_add(&sh->busy, 1);
	return SHM_FAILURES_BUSY;
}

const char *shm_failures_result_name(shm_failures_result_t r)
{
	switch (r) {
	case SHM_FAILURES_OK:
		return "ok";
	case SHM_FAILURES_FULL:
		return "full";
	case SHM_FAILURES_BUSY:
		return "busy";
	}
	return "unknown";
}
