/*
 * The provisioning snapshot's shared-memory side: the interval index
 * (built for a base or an overlay), the two-level lookup workers run per
 * request, the SIP user lookup, the accounts' call policy, the checksum,
 * and the arena protocol described in snapshot.h.
 * What goes into a base or a head, and when, is decided by the loader's
 * model in snapmodel.c. This file never logs, never allocates on the
 * lookup path, and writes only the region it is handed.
 *
 * The index. Every entry contributes its first address and last+1 as cut
 * points; the points cut the 128-bit space into elementary intervals, the
 * first always starting at ::, so a lookup's binary search for "the
 * largest start <= ip" always lands somewhere. One sweep over the points,
 * in address order, keeps the set of entries covering the current
 * interval sorted by specificity rank and copies it out as the interval's
 * candidate list. Adjacent intervals whose lists came out equal are merged.
 *
 * Truncation. A list may stop after its first catch-all entry (no port,
 * no tech prefix, both directions): a lookup walking the list always stops
 * there, so entries after it are unreachable. This holds only while that
 * entry cannot disappear: in a base, a tombstone may remove it, and the
 * wider rules behind it must then answer. So overlays are truncated and
 * bases are not; a base list is as long as the rules nest at that address.
 *
 * Buckets. A binary search over two million intervals is twenty-odd
 * dependent cache and TLB misses, and a lookup runs two (base and
 * overlay). IPv4, the common case, gets a first level: a table by the top
 * bits of the address naming the few intervals its bucket spans, sized to
 * about eight intervals a bucket (at most 2^16 buckets, 256 KB). IPv6
 * addresses search the whole array.
 *
 * Cost: three sorts of n compact keys, plus, at each cut point, work
 * proportional to how many entries cover it. Realistic rule sets (mostly
 * disjoint, a few levels of nesting) build in O(n log n); a pathological
 * set of deeply overlapping ranges costs more and, once its lists outgrow
 * the arena, is refused with ENOSPC.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "lib/siphash.h"
#include "shm/snapshot.h"
#include "shm/snapshot_int.h"

#define MAX_ENTRIES (UINT32_MAX / 2) /* counts stay far from uint32 wrap */

/* ------------------------------------------------------------------ */
/* checksum                                                            */

/*
 * Four independent multiply-rotate lanes over 64-bit words: the CPU runs
 * the lanes' multiplies in parallel, several bytes a cycle, where FNV-1a
 * byte by byte spent 140 ms on a 150 MB base. It only has to catch a
 * region rewritten or torn under a reader, not an adversary.
 */
#define HASH_P1 0x9e3779b97f4a7c15ULL
#define HASH_P2 0xc2b2ae3d27d4eb4fULL

static uint64_t load64(const unsigned char *p)
{
	uint64_t w;

	memcpy(&w, p, sizeof(w));
	return w;
}

static uint64_t hash_round(uint64_t h, uint64_t w)
{
	h += w * HASH_P2;
	h = h << 31 | h >> 33;
	return h * HASH_P1;
}

/* splitmix64's finaliser */
static uint64_t hash_mix(uint64_t x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

uint64_t snap_region_hash(const void *region, size_t size)
{
	const unsigned char *p = (const unsigned char *)region + SNAP_HASHED_FROM;
	const unsigned char *end = (const unsigned char *)region + size;
	uint64_t h0 = HASH_P1, h1 = HASH_P2, h2 = ~HASH_P1, h3 = ~HASH_P2;

	assert(size >= SNAP_HASHED_FROM && size % 8 == 0);
	for (; end - p >= 32; p += 32) {
		h0 = hash_round(h0, load64(p));
		h1 = hash_round(h1, load64(p + 8));
		h2 = hash_round(h2, load64(p + 16));
		h3 = hash_round(h3, load64(p + 24));
	}
	for (; p < end; p += 8)
		h0 = hash_round(h0, load64(p));
	return hash_mix(hash_mix(hash_mix(hash_mix(size ^ h0) ^ h1) ^ h2) ^ h3);
}

uint64_t snap_head_checksum(const snap_head_sh_t *h)
{
	return snap_region_hash(h, h->size);
}

uint64_t snap_base_checksum(const snap_base_sh_t *b)
{
	return snap_region_hash(b, b->size);
}

/* ------------------------------------------------------------------ */
/* specificity rank                                                    */

/* Sorts ascending into "most specific first". */
typedef struct spec_key {
	uint32_t major;            /* port-bound, tech prefix length, prefix bits; see spec_major() */
	uint32_t idx;              /* entry index */
	uint64_t size_hi, size_lo; /* last - first */
	int64_t id;
	uint64_t first_hi, first_lo;
} spec_key_t;

static uint32_t spec_major(const snap_rule_sh_t *r)
{
	uint32_t portless = r->port == 0;
	uint32_t shorter_prefix = SNAP_PREFIX_MAX - r->prefix_len;
	uint32_t wider = 128 - (uint32_t)tg_range_prefix_bits(&r->range);

	return portless << 16 | shorter_prefix << 8 | wider;
}

static void spec_key_of(const snap_rule_sh_t *r, uint32_t idx, spec_key_t *k)
{
	k->major = spec_major(r);
	k->idx = idx;
	k->size_lo = r->range.last.lo - r->range.first.lo;
	k->size_hi = r->range.last.hi - r->range.first.hi - (r->range.last.lo < r->range.first.lo);
	k->id = r->id;
	k->first_hi = r->range.first.hi;
	k->first_lo = r->range.first.lo;
}

#define CMP_FIELD(a, b, f)                                                                                   \
	if ((a)->f != (b)->f)                                                                                \
	return (a)->f < (b)->f ? -1 : 1

/* The order of the spec, idx last so the sort is total. */
static int spec_cmp(const spec_key_t *a, const spec_key_t *b)
{
	CMP_FIELD(a, b, major);
	CMP_FIELD(a, b, size_hi);
	CMP_FIELD(a, b, size_lo);
	CMP_FIELD(a, b, id);
	CMP_FIELD(a, b, first_hi);
	CMP_FIELD(a, b, first_lo);
	return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* Is a more specific than b? Entries of different indexes never tie: their ids differ. */
static int entry_before(const snap_rule_sh_t *a, const snap_rule_sh_t *b)
{
	spec_key_t ka, kb;

	spec_key_of(a, 0, &ka);
	spec_key_of(b, 0, &kb);
	return spec_cmp(&ka, &kb) < 0;
}

/* An entry every lookup that reaches it accepts: nothing after it matters. */
static int entry_catches_all(const snap_rule_sh_t *r)
{
	return r->port == 0 && r->prefix_len == 0 && r->direction == SNAP_DIR_BOTH;
}

/* ------------------------------------------------------------------ */
/* the sweep                                                           */

typedef struct cut {
	tg_ip_t at;
	uint32_t rank;
	uint32_t pad;
} cut_t;

enum { RANK_CATCH_ALL = 1, RANK_GONE = 2 };

typedef struct sweep {
	const snap_rule_sh_t *entries;
	uint32_t m;       /* entries */
	int truncate;     /* stop lists after a catch-all */
	uint32_t *order;  /* [m] rank -> entry index */
	uint8_t *flags;   /* [m] RANK_* by rank */
	cut_t *starts;    /* [m] by (first, rank) */
	cut_t *ends;      /* [m] by last */
	uint32_t *active; /* ranks covering the current point, ascending */
	uint32_t *scratch;
	uint32_t nactive;
	uint32_t *cands; /* heap copy, moved into the region at the end */
	size_t ncands, cap_cands;
	snap_ival_sh_t *ivals; /* written straight into the region */
	size_t nivals;
	size_t room; /* region bytes from the intervals on */
} sweep_t;

static int ip_lt(const tg_ip_t *a, const tg_ip_t *b)
{
	return a->hi < b->hi || (a->hi == b->hi && a->lo < b->lo);
}

static int ip_eq(const tg_ip_t *a, const tg_ip_t *b)
{
	return a->hi == b->hi && a->lo == b->lo;
}

static int ip_is_top(const tg_ip_t *a)
{
	return a->hi == UINT64_MAX && a->lo == UINT64_MAX;
}

static int cut_lt(const cut_t *a, const cut_t *b)
{
	if (!ip_eq(&a->at, &b->at))
		return ip_lt(&a->at, &b->at);
	return a->rank < b->rank;
}

static int spec_lt(const spec_key_t *a, const spec_key_t *b)
{
	return spec_cmp(a, b) < 0;
}

/*
 * Bottom-up merge sort with the comparison inlined, where qsort() spent
 * most of a build calling its comparator through a pointer (and sorted
 * keys above 32 bytes indirectly). tmp holds n elements. Both orders are
 * total, so stability does not matter.
 */
#define SORT_RUN 8
#define DEFINE_SORT(name, type, lt)                                                                          \
	static void name(type *a, size_t n, type *tmp)                                                       \
	{                                                                                                    \
		type *src = a, *dst = tmp, *t;                                                               \
                                                                                                             \
		for (size_t lo = 0; lo < n; lo += SORT_RUN) {                                                \
			size_t hi = lo + SORT_RUN < n ? lo + SORT_RUN : n;                                   \
                                                                                                             \
			for (size_t i = lo + 1; i < hi; i++) {                                               \
				type x = a[i];                                                               \
				size_t j = i;                                                                \
                                                                                                             \
				for (; j > lo && lt(&x, &a[j - 1]); j--)                                     \
					a[j] = a[j - 1];                                                     \
				a[j] = x;                                                                    \
			}                                                                                    \
		}                                                                                            \
		for (size_t w = SORT_RUN; w < n; w *= 2, t = src, src = dst, dst = t) {                      \
			for (size_t lo = 0; lo < n; lo += 2 * w) {                                           \
				size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;  \
				size_t i = lo, j = mid, k = lo;                                              \
                                                                                                             \
				while (i < mid && j < hi)                                                    \
					dst[k++] = lt(&src[j], &src[i]) ? src[j++] : src[i++];               \
				while (i < mid)                                                              \
					dst[k++] = src[i++];                                                 \
				while (j < hi)                                                               \
					dst[k++] = src[j++];                                                 \
			}                                                                                    \
		}                                                                                            \
		if (src != a)                                                                                \
			memcpy(a, src, n * sizeof(type));                                                    \
	}

DEFINE_SORT(sort_keys, spec_key_t, spec_lt)
DEFINE_SORT(sort_cuts, cut_t, cut_lt)

static void sweep_free(sweep_t *w)
{
	free(w->order);
	free(w->flags);
	free(w->starts);
	free(w->ends);
	free(w->active);
	free(w->scratch);
	free(w->cands);
}

/* Fills order[rank] = entry index, most specific first. Returns 0 or -1. */
static int sweep_rank(sweep_t *w)
{
	size_t n = w->m ? w->m : 1;
	spec_key_t *keys = malloc(n * sizeof(*keys)), *tmp = malloc(n * sizeof(*tmp));

	if (keys == NULL || tmp == NULL) {
		free(keys);
		free(tmp);
		return -1;
	}
	for (uint32_t i = 0; i < w->m; i++)
		spec_key_of(&w->entries[i], i, &keys[i]);
	sort_keys(keys, w->m, tmp);
	for (uint32_t k = 0; k < w->m; k++)
		w->order[k] = keys[k].idx;
	free(keys);
	free(tmp);
	return 0;
}

/* Ranks the entries and sorts their cut points. Returns 0 or -1 (ENOMEM). */
static int sweep_prepare(sweep_t *w)
{
	size_t n = w->m ? w->m : 1;

	w->order = malloc(n * sizeof(uint32_t));
	w->flags = calloc(n, 1);
	w->starts = malloc(n * sizeof(cut_t));
	w->ends = malloc(n * sizeof(cut_t));
	w->active = malloc(n * sizeof(uint32_t));
	w->scratch = malloc(n * sizeof(uint32_t));
	if (!w->order || !w->flags || !w->starts || !w->ends || !w->active || !w->scratch ||
	    sweep_rank(w) < 0)
		return -1;
	for (uint32_t k = 0; k < w->m; k++) {
		const snap_rule_sh_t *r = &w->entries[w->order[k]];

		w->flags[k] = w->truncate && entry_catches_all(r) ? RANK_CATCH_ALL : 0;
		w->starts[k] = (cut_t){r->range.first, k, 0};
		w->ends[k] = (cut_t){r->range.last, k, 0};
	}
	cut_t *tmp = malloc(n * sizeof(cut_t));

	if (tmp == NULL)
		return -1;
	sort_cuts(w->starts, w->m, tmp);
	sort_cuts(w->ends, w->m, tmp);
	free(tmp);
	return 0;
}

/* Drops the entries whose last address is below p. */
static void sweep_remove(sweep_t *w, uint32_t *j, const tg_ip_t *p)
{
	uint32_t k = 0, gone = 0;

	for (; *j < w->m && ip_lt(&w->ends[*j].at, p); (*j)++, gone++)
		w->flags[w->ends[*j].rank] |= RANK_GONE;
	if (gone == 0)
		return;
	for (uint32_t i = 0; i < w->nactive; i++)
		if (!(w->flags[w->active[i]] & RANK_GONE))
			w->active[k++] = w->active[i];
	w->nactive = k;
}

/* Merges the entries starting at p (already in rank order) into the active set. */
static void sweep_add(sweep_t *w, uint32_t *i, const tg_ip_t *p)
{
	uint32_t a = 0, k = 0, from = *i;

	while (*i < w->m && ip_eq(&w->starts[*i].at, p))
		(*i)++;
	if (*i == from)
		return;
	while (a < w->nactive || from < *i) {
		if (from == *i || (a < w->nactive && w->active[a] < w->starts[from].rank))
			w->scratch[k++] = w->active[a++];
		else
			w->scratch[k++] = w->starts[from++].rank;
	}
	uint32_t *t = w->active;

	w->active = w->scratch;
	w->scratch = t;
	w->nactive = k;
}

/* Makes room for n more candidates. Returns 0 or -1. */
static int sweep_reserve(sweep_t *w, size_t n)
{
	if (w->ncands + n <= w->cap_cands)
		return 0;

	size_t want = w->cap_cands ? w->cap_cands : 4096;

	while (want < w->ncands + n)
		want *= 2;

	uint32_t *p = realloc(w->cands, want * sizeof(uint32_t));

	if (p == NULL)
		return -1;
	w->cands = p;
	w->cap_cands = want;
	return 0;
}

/*
 * Writes the interval starting at p with the active set as its list, or
 * folds it into the previous one when the lists are equal. Returns 0, or
 * -1 with errno (ENOSPC, ENOMEM).
 */
static int sweep_emit(sweep_t *w, const tg_ip_t *p)
{
	size_t off = w->ncands, n;

	if (sweep_reserve(w, w->nactive) < 0) {
		errno = ENOMEM;
		return -1;
	}
	for (uint32_t i = 0; i < w->nactive; i++) {
		uint32_t rank = w->active[i];

		w->cands[w->ncands++] = w->order[rank];
		if (w->flags[rank] & RANK_CATCH_ALL)
			break;
	}
	n = w->ncands - off;
	if (w->nivals > 0) {
		const snap_ival_sh_t *prev = &w->ivals[w->nivals - 1];

		if (prev->cand_n == n && memcmp(w->cands + prev->cand_off, w->cands + off, n * 4) == 0) {
			w->ncands = off;
			return 0;
		}
	}
	if (SNAP_ALIGN8((w->nivals + 1) * sizeof(snap_ival_sh_t)) + w->ncands * sizeof(uint32_t) > w->room ||
	    w->ncands > MAX_ENTRIES) {
		errno = ENOSPC;
		return -1;
	}
	w->ivals[w->nivals++] = (snap_ival_sh_t){*p, (uint32_t)off, (uint32_t)n};
	return 0;
}

/* The cut point after p: the next entry start or the next last+1. */
static int sweep_next(const sweep_t *w, uint32_t i, uint32_t j, tg_ip_t *p)
{
	int have = 0;

	if (i < w->m) {
		*p = w->starts[i].at;
		have = 1;
	}
	/* An entry ending at the top of the space leaves no cut point after it. */
	if (j < w->m && !ip_is_top(&w->ends[j].at)) {
		tg_ip_t after = w->ends[j].at;

		if (++after.lo == 0)
			after.hi++;
		if (!have || ip_lt(&after, p))
			*p = after;
		have = 1;
	}
	return have;
}

static int sweep_run(sweep_t *w)
{
	tg_ip_t p = {0, 0}, prev;
	uint32_t i = 0, j = 0;

	for (;;) {
		sweep_remove(w, &j, &p);
		sweep_add(w, &i, &p);
		if (sweep_emit(w, &p) < 0)
			return -1;
		prev = p;
		if (!sweep_next(w, i, j, &p))
			return 0;
		/* Cut points strictly increase, or the sweep would never end. */
		assert(ip_lt(&prev, &p));
		(void)prev;
	}
}

/* About eight intervals a bucket: past that a bigger table buys less than it costs in cache. */
static uint32_t bucket_bits_for(size_t nivals)
{
	uint32_t bits = 0;

	while (bits < SNAP_BUCKET_BITS_MAX && ((size_t)8 << bits) < nivals)
		bits++;
	return bits;
}

static size_t bucket_bytes(uint32_t bits)
{
	return SNAP_ALIGN8((((size_t)1 << bits) + 1) * sizeof(uint32_t));
}

/* The IPv4 address a, as the index holds it. */
static tg_ip_t ip_of_v4(uint32_t a)
{
	return (tg_ip_t){0, 0x0000ffff00000000ULL | a};
}

/* One walk over the intervals, in step with the buckets' first addresses. */
static void buckets_fill(const snap_ival_sh_t *iv, uint32_t nivals, uint32_t bits, uint32_t *bk)
{
	uint32_t nb = 1u << bits, i = 0;

	for (uint32_t b = 0; b <= nb; b++) {
		tg_ip_t at = ip_of_v4(b < nb ? (uint32_t)((uint64_t)b << (32 - bits)) : UINT32_MAX);

		while (i + 1 < nivals && !ip_lt(&at, &iv[i + 1].start))
			i++;
		bk[b] = i;
	}
}

/*
 * After the intervals: the candidate lists, then the bucket table.
 * Returns the end offset, or 0 with errno ENOSPC.
 */
static size_t index_tail(unsigned char *region, size_t region_size, snap_index_sh_t *ix,
                         const uint32_t *cands)
{
	size_t ival_bytes = (size_t)ix->nivals * sizeof(snap_ival_sh_t);
	size_t cand_bytes = (size_t)ix->ncands * sizeof(uint32_t);

	ix->bucket_bits = bucket_bits_for(ix->nivals);
	ix->off_cands = ix->off_ivals + SNAP_ALIGN8(ival_bytes);
	ix->off_buckets = ix->off_cands + SNAP_ALIGN8(cand_bytes);
	if (ix->off_buckets > region_size || bucket_bytes(ix->bucket_bits) > region_size - ix->off_buckets) {
		errno = ENOSPC;
		return 0;
	}
	/* Padding zeroed: the bytes, and so the checksum, depend on the content only. */
	memset(region + ix->off_ivals + ival_bytes, 0, ix->off_cands - ix->off_ivals - ival_bytes);
	if (cand_bytes > 0)
		memcpy(region + ix->off_cands, cands, cand_bytes);
	memset(region + ix->off_cands + cand_bytes, 0, ix->off_buckets - ix->off_cands - cand_bytes);
	memset(region + ix->off_buckets, 0, bucket_bytes(ix->bucket_bits));
	buckets_fill((const snap_ival_sh_t *)(region + ix->off_ivals), ix->nivals, ix->bucket_bits,
	             (uint32_t *)(region + ix->off_buckets));
	return ix->off_buckets + bucket_bytes(ix->bucket_bits);
}

size_t snap_index_build(unsigned char *region, size_t region_size, snap_index_sh_t *ix, int truncate)
{
	sweep_t w = {0};
	size_t end = 0;

	assert(ix->off_entries % 8 == 0 && ix->nentries <= MAX_ENTRIES);
	ix->off_ivals = ix->off_entries + SNAP_ALIGN8((size_t)ix->nentries * sizeof(snap_rule_sh_t));
	/* Room for at least the interval at :: */
	if (ix->off_ivals + sizeof(snap_ival_sh_t) > region_size) {
		errno = ENOSPC;
		return 0;
	}
	w.entries = (const snap_rule_sh_t *)(region + ix->off_entries);
	w.m = ix->nentries;
	w.truncate = truncate;
	w.ivals = (snap_ival_sh_t *)(region + ix->off_ivals);
	w.room = region_size - ix->off_ivals;
	if (sweep_prepare(&w) < 0) {
		errno = ENOMEM;
		goto out;
	}
	if (sweep_run(&w) < 0)
		goto out;
	ix->nivals = (uint32_t)w.nivals;
	ix->ncands = (uint32_t)w.ncands;
	ix->truncated = truncate ? 1 : 0;
	end = index_tail(region, region_size, ix, w.cands);
out:
	sweep_free(&w);
	return end;
}

/* ------------------------------------------------------------------ */
/* sizes                                                               */

/*
 * An index of n entries: at most two cut points per entry plus the one
 * at ::; candidates: 4 per entry covers rules nested three deep. Many
 * rules overlapping at the same addresses need more and are refused with
 * ENOSPC rather than grown into.
 */
static size_t index_size_bound(size_t n)
{
	return SNAP_ALIGN8(n * sizeof(snap_rule_sh_t)) + SNAP_ALIGN8((n * 2 + 2) * sizeof(snap_ival_sh_t)) +
	       SNAP_ALIGN8((n * 4 + 16) * sizeof(uint32_t)) + bucket_bytes(bucket_bits_for(n * 2 + 2));
}

/* An eighth more entries than rules, for hostnames that resolve to several addresses. */
size_t snap_base_size_bound(uint32_t rules)
{
	return SNAP_ALIGN8(sizeof(snap_base_sh_t)) + index_size_bound((size_t)rules + rules / 8 + 256);
}

uint32_t snap_overlay_cap(uint32_t rules)
{
	return rules / 64 > SNAP_OVERLAY_MIN ? rules / 64 : SNAP_OVERLAY_MIN;
}

uint32_t snap_account_slots(uint32_t accounts)
{
	return accounts > UINT32_MAX / 2 ? UINT32_MAX : accounts * 2;
}

uint32_t snap_user_bucket_bits(uint32_t users)
{
	uint32_t bits = SNAP_USER_BUCKET_BITS_MIN;

	/* 31 bits: 2^31 buckets, for a billion users, more than any config allows. */
	while (bits < 31 && ((uint64_t)1 << bits) < (uint64_t)users * 2)
		bits++;
	return bits;
}

uint32_t snap_user_range_cap(uint32_t users)
{
	uint64_t n = SNAP_USER_RANGES_TOTAL(users);

	return n > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)n;
}

/* The users, their buckets, and all their ranges. */
static size_t users_size_bound(uint32_t users)
{
	return SNAP_ALIGN8((size_t)users * sizeof(snap_user_sh_t)) +
	       SNAP_ALIGN8(((size_t)1 << snap_user_bucket_bits(users)) * sizeof(uint32_t)) +
	       SNAP_ALIGN8((size_t)snap_user_range_cap(users) * sizeof(tg_range_t));
}

uint32_t snap_policy_cap(uint32_t accounts)
{
	uint64_t n = SNAP_POLICY_TOTAL(accounts);

	return n > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)n;
}

size_t snap_head_size_bound(uint32_t accounts, uint32_t rules, uint32_t users)
{
	size_t ov = snap_overlay_cap(rules);

	return SNAP_ALIGN8(sizeof(snap_head_sh_t)) +
	       SNAP_ALIGN8((size_t)snap_account_slots(accounts) * sizeof(snap_account_sh_t)) +
	       SNAP_ALIGN8(ov * sizeof(int64_t)) + users_size_bound(users) +
	       SNAP_ALIGN8(snap_policy_cap(accounts)) + index_size_bound(ov);
}

/* ------------------------------------------------------------------ */
/* lookup                                                              */

typedef struct query {
	const tg_ip_t *ip;
	uint16_t port;
	const char *user;
	size_t user_len;
	unsigned dir;
} query_t;

const snap_account_sh_t *snap_accounts(const snap_head_sh_t *h)
{
	return (const snap_account_sh_t *)((const unsigned char *)h + h->off_accounts);
}

const int64_t *snap_tombstones(const snap_head_sh_t *h)
{
	return (const int64_t *)((const unsigned char *)h + h->off_tombs);
}

const snap_rule_sh_t *snap_index_entries(const void *region, const snap_index_sh_t *ix)
{
	return (const snap_rule_sh_t *)((const unsigned char *)region + ix->off_entries);
}

/* The interval holding ip: the one with the largest start <= ip. */
static const snap_ival_sh_t *find_interval(const void *region, const snap_index_sh_t *ix, const tg_ip_t *ip)
{
	const snap_ival_sh_t *iv = (const snap_ival_sh_t *)((const unsigned char *)region + ix->off_ivals);
	size_t lo = 0, n = ix->nivals;

	if (n == 0 || ip_lt(ip, &iv[0].start))
		return NULL;
	if (ip->hi == 0 && ip->lo >> 32 == 0xffff) {
		const uint32_t *bk = (const uint32_t *)((const unsigned char *)region + ix->off_buckets);
		uint64_t b = (ip->lo & UINT32_MAX) >> (32 - ix->bucket_bits);

		lo = bk[b];
		n = bk[b + 1] - lo + 1;
		assert(bk[b + 1] >= lo && bk[b + 1] < ix->nivals);
	}
	/*
	 * Invariant: iv[lo].start <= ip, and the answer lies in [lo, lo + n).
	 * Kept branchy on purpose: a predicted branch lets the CPU start the
	 * next probe's cache miss early, which measured faster than a
	 * branch-free form with explicit prefetches.
	 */
	while (n > 1) {
		size_t half = n / 2;

		if (!ip_lt(ip, &iv[lo + half].start))
			lo += half;
		n -= half;
	}
	return &iv[lo];
}

/* Binary search of the head's sorted tombstones. */
static int tombstoned(const int64_t *tombs, uint32_t n, int64_t id)
{
	uint32_t lo = 0, hi = n;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (tombs[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && tombs[lo] == id;
}

static int rule_fits(const snap_rule_sh_t *r, const query_t *q)
{
	if (r->port != 0 && r->port != q->port)
		return 0;
	if (q->user == NULL || r->prefix_len == 0)
		return 1;
	return q->user_len >= r->prefix_len && memcmp(q->user, r->tech_prefix, r->prefix_len) == 0;
}

/*
 * The first fitting entry of ip's list, skipping tombstoned ones and those
 * whose direction excludes the query's; *usable set when any entry was
 * neither.
 */
static const snap_rule_sh_t *index_best(const void *region, const snap_index_sh_t *ix, const int64_t *tombs,
                                        uint32_t ntombs, const query_t *q, int *usable)
{
	const snap_ival_sh_t *iv = find_interval(region, ix, q->ip);
	const uint32_t *cands = (const uint32_t *)((const unsigned char *)region + ix->off_cands);
	const snap_rule_sh_t *entries = snap_index_entries(region, ix);

	for (uint32_t i = 0; iv != NULL && i < iv->cand_n; i++) {
		const snap_rule_sh_t *r = &entries[cands[iv->cand_off + i]];

		if ((r->direction & q->dir) == 0)
			continue;
		if (ntombs > 0 && tombstoned(tombs, ntombs, r->id))
			continue;
		*usable = 1;
		if (rule_fits(r, q))
			return r;
	}
	return NULL;
}

int snap_lookup(const snap_view_t *v, const tg_ip_t *ip, uint16_t port, const char *user, size_t user_len,
                unsigned dir, snap_match_t *m)
{
	const snap_head_sh_t *h = v->head;
	const query_t q = {ip, port, user, user_len, dir};
	const snap_rule_sh_t *over = NULL, *base, *best;
	int usable = 0;

	assert(h != NULL && v->base != NULL && h->base_generation == v->base->generation);
	if (m) {
		m->rule = NULL;
		m->account = NULL;
	}
	if (h->overlay.nentries > 0)
		over = index_best(h, &h->overlay, NULL, 0, &q, &usable);
	base = index_best(v->base, &v->base->index, snap_tombstones(h), h->ntombs, &q, &usable);
	best = over == NULL ? base : base == NULL ? over : entry_before(base, over) ? base : over;
	if (best == NULL)
		return usable ? SNAP_NO_FIT : SNAP_NO_ADDRESS;

	const snap_account_sh_t *a = &snap_accounts(h)[best->account];

	/* A rule names a live account: the model drops an account's rules with it. */
	assert(best->account < h->naccounts && a->state == SNAP_ACCOUNT_LIVE);
	if (m) {
		m->rule = best;
		m->account = a;
	}
	return a->active ? SNAP_MATCH : SNAP_ACCOUNT_INACTIVE;
}

/* ------------------------------------------------------------------ */
/* SIP users                                                           */

/*
 * A fixed key: the model and every worker must put a name in the same
 * bucket, in every head, with nothing more to share. The names are the
 * operator's rows; a client only picks which chain a lookup walks, and
 * chains stay short as there are twice as many buckets as users. Someone
 * who may create many users could still pile them into one bucket, at the
 * cost of a string compare each to the lookups that land there.
 */
static const uint8_t user_hash_key[16] = {0x74, 0x67, 0x5f, 0x75, 0x73, 0x65, 0x72, 0x73,
                                          0x9e, 0x37, 0x79, 0xb9, 0x7f, 0x4a, 0x7c, 0x15};

uint64_t snap_user_hash(const char *username, size_t ulen, const char *domain, size_t dlen)
{
	unsigned char key[SNAP_USER_MAX + 1 + SNAP_DOMAIN_MAX];

	assert(ulen <= SNAP_USER_MAX && dlen <= SNAP_DOMAIN_MAX);
	memcpy(key, username, ulen);
	key[ulen] = '\0';
	for (size_t k = 0; k < dlen; k++)
		key[ulen + 1 + k] = snap_lower_ascii((unsigned char)domain[k]);
	return tg_siphash(user_hash_key, key, ulen + 1 + dlen);
}

static const snap_user_sh_t *head_users(const snap_head_sh_t *h)
{
	return (const snap_user_sh_t *)((const unsigned char *)h + h->off_users);
}

/* Lengths first: a client's name with a NUL inside must not match the name before the NUL. */
static int user_is(const snap_user_sh_t *u, const char *username, size_t ulen, const char *domain,
                   size_t dlen)
{
	if (strnlen(u->username, sizeof(u->username)) != ulen || memcmp(u->username, username, ulen) != 0)
		return 0;
	if (strnlen(u->domain, sizeof(u->domain)) != dlen)
		return 0;
	for (size_t k = 0; k < dlen; k++)
		if ((unsigned char)u->domain[k] != snap_lower_ascii((unsigned char)domain[k]))
			return 0;
	return 1;
}

static const snap_user_sh_t *user_chain_find(const snap_head_sh_t *h, const char *username, size_t ulen,
                                             const char *domain, size_t dlen)
{
	const snap_user_sh_t *users = head_users(h);
	const uint32_t *bk = (const uint32_t *)((const unsigned char *)h + h->off_user_buckets);
	uint64_t mask = ((uint64_t)1 << h->user_bucket_bits) - 1;
	uint32_t i = bk[snap_user_hash(username, ulen, domain, dlen) & mask];

	for (; i != UINT32_MAX; i = users[i].next) {
		assert(i < h->nusers);
		if (user_is(&users[i], username, ulen, domain, dlen))
			return &users[i];
	}
	return NULL;
}

const snap_user_sh_t *snap_user_find(const snap_view_t *v, const char *username, size_t ulen,
                                     const char *domain, size_t dlen)
{
	const snap_head_sh_t *h = v->head;
	const snap_user_sh_t *u;

	/* Too long to be stored is simply not found: the client chose the length. */
	if (h == NULL || h->nusers == 0 || username == NULL || ulen == 0 || ulen > SNAP_USER_MAX)
		return NULL;
	if (domain != NULL && dlen > 0 && dlen <= SNAP_DOMAIN_MAX &&
	    (u = user_chain_find(h, username, ulen, domain, dlen)) != NULL)
		return u;
	return user_chain_find(h, username, ulen, "", 0);
}

int snap_user_source_allowed(const snap_view_t *v, const snap_user_sh_t *u, const tg_ip_t *ip)
{
	const snap_head_sh_t *h = v->head;
	const tg_range_t *r = (const tg_range_t *)((const unsigned char *)h + h->off_user_ranges);

	if (!u->restrict_sources)
		return 1;
	assert(u->nranges == 0 || (uint64_t)u->range_off + u->nranges <= h->nuser_ranges);
	for (uint32_t k = 0; k < u->nranges; k++)
		if (tg_range_contains(&r[u->range_off + k], ip))
			return 1;
	return 0;
}

const snap_account_sh_t *snap_user_account(const snap_view_t *v, const snap_user_sh_t *u)
{
	const snap_account_sh_t *a = &snap_accounts(v->head)[u->account];

	/* A user names a live account: the model drops an account's users with it. */
	assert(u->account < v->head->naccounts && a->state == SNAP_ACCOUNT_LIVE);
	return a;
}

/* ------------------------------------------------------------------ */
/* call policy                                                         */

/* The account's lists: allowed_len, denied_len and codecs_len bytes from here. */
static const uint8_t *account_policy(const snap_view_t *v, const snap_account_sh_t *a)
{
	const snap_head_sh_t *h = v->head;

	assert(a >= snap_accounts(h) && a < snap_accounts(h) + h->naccounts);
	assert((uint64_t)a->policy_off + a->allowed_len + a->denied_len + a->codecs_len <= h->policy_bytes);
	return (const uint8_t *)h + h->off_policy + a->policy_off;
}

/* Does an entry of the list (bytes bytes from p: a length byte, then that many) start s? */
static int list_starts(const uint8_t *p, size_t bytes, const char *s, size_t len)
{
	const uint8_t *end = p + bytes;

	for (; p < end; p += 1 + p[0])
		if (p[0] <= len && memcmp(p + 1, s, p[0]) == 0)
			return 1;
	return 0;
}

int snap_account_destination_allowed(const snap_view_t *v, const snap_account_sh_t *a, const char *user,
                                     size_t len)
{
	const uint8_t *p;

	if (a->nallowed == 0 && a->ndenied == 0)
		return 1;
	p = account_policy(v, a);
	if (a->ndenied > 0 && list_starts(p + a->allowed_len, a->denied_len, user, len))
		return 0;
	return a->nallowed == 0 || list_starts(p, a->allowed_len, user, len);
}

/* Stored upper case; the SDP's case is the sender's. ASCII only, like the names. */
static int codec_is(const uint8_t *stored, const char *codec, size_t len)
{
	for (size_t k = 0; k < len; k++) {
		unsigned char c = (unsigned char)codec[k];

		if ((c >= 'a' && c <= 'z' ? c - ('a' - 'A') : c) != stored[k])
			return 0;
	}
	return 1;
}

int snap_account_codec_restricted(const snap_view_t *v, const snap_account_sh_t *a, const char *codec,
                                  size_t len)
{
	const uint8_t *p, *end;

	if (a->ncodecs == 0 || len == 0 || len > SNAP_CODEC_MAX)
		return 0;
	p = account_policy(v, a) + a->allowed_len + a->denied_len;
	for (end = p + a->codecs_len; p < end; p += 1 + p[0])
		if (p[0] == len && codec_is(p + 1, codec, len))
			return 1;
	return 0;
}

uint32_t snap_account_ncodecs(const snap_view_t *v, const snap_account_sh_t *a)
{
	(void)v;
	return a->ncodecs;
}

/* ------------------------------------------------------------------ */
/* readers: see the protocol in snapshot.h                             */

int snap_acquire(shm_t *shm, shm_proc_sh_t *slot, snap_view_t *v)
{
	for (;;) {
		uint64_t g = atomic_load(&shm->snapctl->generation);

		if (g == 0) {
			v->head = NULL;
			v->base = NULL;
			return 0;
		}
		atomic_store(&slot->epoch, g);
		/* Unchanged: the writer's scans for reuse will see our epoch. */
		if (atomic_load(&shm->snapctl->generation) != g)
			continue;

		const snap_head_sh_t *h = shm->head_arena[g & 1];

		assert(h->magic == SNAP_HEAD_MAGIC && h->generation == g && h->base_arena < 2);
		v->head = h;
		v->base = shm->base_arena[h->base_arena];
		assert(v->base->magic == SNAP_BASE_MAGIC && v->base->generation == h->base_generation);
		return 1;
	}
}

void snap_release(shm_proc_sh_t *slot, snap_view_t *v)
{
	atomic_store(&slot->epoch, 0);
	if (v != NULL) {
		v->head = NULL;
		v->base = NULL;
	}
}

/* ------------------------------------------------------------------ */
/* the writer's side of the protocol                                   */

/* Does any epoch slot, the loader's included, hold a generation in [lo, hi]? */
static int generation_held(shm_t *shm, uint64_t lo, uint64_t hi)
{
	for (uint32_t i = 0; i < shm->hdr->nprocs; i++) {
		uint64_t e = atomic_load(&shm->procs[i].epoch);

		if (e >= lo && e <= hi)
			return 1;
	}
	return 0;
}

int snap_head_arena_free(shm_t *shm)
{
	uint64_t cur = atomic_load(&shm->snapctl->generation);

	/* Generation 0 is "none", which every idle slot reads as: publishing 1 and 2 never waits. */
	return cur < 2 || !generation_held(shm, cur - 1, cur - 1);
}

int snap_base_arena_free(shm_t *shm, unsigned b)
{
	uint64_t cur = atomic_load(&shm->snapctl->generation);
	uint64_t last = atomic_load(&shm->snapctl->base_last_head[b]);

	/*
	 * last may exceed the current generation: a loader that died between
	 * storing base_last_head[b] = cur + 1 and storing generation = cur + 1.
	 * Head cur + 1 was never published, so no reader ever held it, and
	 * taken as it stands last would make this scan wait for every slot to
	 * hold nothing at or below cur + 1, i.e. for every worker to be idle at
	 * one scan: with busy workers, a stall of any length. Clamp it to the
	 * last head that can really have read b:
	 *   - nothing published (cur == 0): no head ever read b;
	 *   - b is the base head cur reads: cur itself;
	 *   - otherwise cur - 1 at most, as head cur reads the other base.
	 * Each bound is at or above the true last reader of b (published heads
	 * are exactly 1..cur), so the clamp never lets b be rewritten under a
	 * reader. The head read here is stable: only the loader, our caller,
	 * rewrites head arenas.
	 */
	if (last > cur) {
		if (cur == 0)
			last = 0;
		else if (((const snap_head_sh_t *)shm->head_arena[cur & 1])->base_arena == b)
			last = cur;
		else
			last = cur - 1;
	}
	return last == 0 || !generation_held(shm, 1, last);
}

void snap_publish(shm_t *shm, uint64_t gen)
{
	const snap_head_sh_t *h = shm->head_arena[gen & 1];
	const snap_base_sh_t *b = shm->base_arena[h->base_arena & 1];

	assert(gen == atomic_load(&shm->snapctl->generation) + 1);
	assert(h->magic == SNAP_HEAD_MAGIC && h->generation == gen && h->base_arena < 2);
	assert(b->magic == SNAP_BASE_MAGIC && b->generation == h->base_generation);
	(void)b;
	atomic_store(&shm->snapctl->base_last_head[h->base_arena], gen);
	atomic_store(&shm->snapctl->generation, gen);
}
