/*
 * The provisioning snapshot: the builder the loader fills from the
 * database, the writer that lays a snapshot out in an idle arena, the
 * lookup workers run per request, and the two-arena publish protocol
 * described in snapshot.h. It never logs and never touches the database
 * or SIP; it writes only the arena the loader hands it, and returns
 * errors (ENOSPC, ENOMEM, a static reason) for the loader to report.
 *
 * The index. Every active rule contributes its first address and last+1
 * as cut points; the points cut the 128-bit space into elementary
 * intervals, the first always starting at ::, so a lookup's binary search
 * for "the largest start <= ip" always lands somewhere. One sweep over the
 * points, in address order, keeps the set of rules covering the current
 * interval sorted by specificity rank and copies it out as the interval's
 * candidate list. Two refinements keep the lists short without changing
 * any lookup's answer:
 *   - inactive rules are left out of the index (a lookup skips them
 *     anyway); they stay in the rules array so indices remain stable;
 *   - a list stops after its first catch-all rule (no port, no tech
 *     prefix, both directions): a lookup walking the list always stops
 *     there, so rules after it are unreachable. This is what keeps
 *     /32s inside a broad /24 at two candidates per interval.
 * Adjacent intervals whose lists came out equal are merged.
 *
 * Cost: three sorts of n compact keys, plus, at each cut point, work
 * proportional to how many rules cover it. Realistic rule sets (mostly
 * disjoint, a few levels of nesting) build in O(n log n); a pathological
 * set of deeply overlapping ranges costs more and, once its lists outgrow
 * the arena, is refused with ENOSPC.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "shm/snapshot.h"

#define ALIGN8(n) (((size_t)(n) + 7) & ~(size_t)7)

#define FNV64_OFFSET 0xcbf29ce484222325ULL
#define FNV64_PRIME  0x100000001b3ULL

#define MAX_ENTRIES (UINT32_MAX / 2) /* counts stay far from uint32 wrap */

/* ------------------------------------------------------------------ */
/* id -> index maps for the builder                                    */

/* Open addressing, linear probing, at most half full. */
typedef struct id_slot {
	int64_t id;
	uint32_t idx1; /* index + 1; 0 = empty */
} id_slot_t;

typedef struct id_map {
	id_slot_t *slots;
	size_t mask; /* capacity - 1, capacity a power of two */
	size_t used;
} id_map_t;

static uint64_t id_hash(int64_t id)
{
	/* splitmix64's finaliser: sequential database ids spread evenly. */
	uint64_t x = (uint64_t)id;

	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* Returns the slot holding id, or the empty slot where it belongs. */
static id_slot_t *id_map_slot(const id_map_t *map, int64_t id)
{
	size_t i = id_hash(id) & map->mask;

	while (map->slots[i].idx1 != 0 && map->slots[i].id != id)
		i = (i + 1) & map->mask;
	return &map->slots[i];
}

static int id_map_grow(id_map_t *map)
{
	size_t cap = map->slots ? (map->mask + 1) * 2 : 1024;
	id_map_t bigger = {calloc(cap, sizeof(id_slot_t)), cap - 1, map->used};

	if (bigger.slots == NULL)
		return -1;
	for (size_t i = 0; map->slots && i <= map->mask; i++)
		if (map->slots[i].idx1 != 0)
			*id_map_slot(&bigger, map->slots[i].id) = map->slots[i];
	free(map->slots);
	*map = bigger;
	return 0;
}

/* Returns the index stored for id, or -1. */
static int64_t id_map_get(const id_map_t *map, int64_t id)
{
	if (map->slots == NULL)
		return -1;

	const id_slot_t *slot = id_map_slot(map, id);

	return slot->idx1 ? (int64_t)slot->idx1 - 1 : -1;
}

/* id must be absent. Returns 0, or -1 when out of memory. */
static int id_map_put(id_map_t *map, int64_t id, uint32_t idx)
{
	if ((map->used + 1) * 2 > (map->slots ? map->mask + 1 : 0) && id_map_grow(map) < 0)
		return -1;

	id_slot_t *slot = id_map_slot(map, id);

	slot->id = id;
	slot->idx1 = idx + 1;
	map->used++;
	return 0;
}

/* ------------------------------------------------------------------ */
/* builder                                                             */

struct snap_builder {
	snap_account_sh_t *accounts;
	uint32_t naccounts, cap_accounts;
	snap_rule_sh_t *rules;
	uint32_t nrules, cap_rules;
	id_map_t account_ids;
	id_map_t rule_ids;
};

snap_builder_t *snap_builder_new(void)
{
	return calloc(1, sizeof(snap_builder_t));
}

void snap_builder_free(snap_builder_t *b)
{
	if (b == NULL)
		return;
	free(b->accounts);
	free(b->rules);
	free(b->account_ids.slots);
	free(b->rule_ids.slots);
	free(b);
}

uint32_t snap_builder_naccounts(const snap_builder_t *b)
{
	return b->naccounts;
}

uint32_t snap_builder_nrules(const snap_builder_t *b)
{
	return b->nrules;
}

/* Makes room for one more element of *arr. Returns 0 or -1. */
static int grow_array(void **arr, uint32_t n, uint32_t *cap, size_t elem)
{
	if (n < *cap)
		return 0;
	if (n >= MAX_ENTRIES)
		return -1;

	uint32_t want = *cap ? *cap * 2 : 256;
	void *p = realloc(*arr, (size_t)want * elem);

	if (p == NULL)
		return -1;
	*arr = p;
	*cap = want;
	return 0;
}

int snap_builder_account(snap_builder_t *b, int64_t id, const char *name, int active, uint32_t max_channels,
                         uint32_t max_cps, const char **err)
{
	snap_account_sh_t *a;
	const char *dummy;

	if (err == NULL)
		err = &dummy;
	if (name == NULL)
		name = "";
	if (strlen(name) >= SNAP_NAME_MAX) {
		*err = "account name too long";
		return -1;
	}
	if (id_map_get(&b->account_ids, id) >= 0) {
		*err = "duplicate account id";
		return -1;
	}
	if (grow_array((void **)&b->accounts, b->naccounts, &b->cap_accounts, sizeof(*a)) < 0 ||
	    id_map_put(&b->account_ids, id, b->naccounts) < 0) {
		*err = "out of memory";
		return -1;
	}
	a = &b->accounts[b->naccounts++];
	/* Zeroed padding keeps the checksum a function of the content only. */
	memset(a, 0, sizeof(*a));
	a->id = id;
	a->active = active ? 1 : 0;
	a->max_channels = max_channels;
	a->max_cps = max_cps;
	strcpy(a->name, name);
	return 0;
}

static const char *rule_check(const snap_builder_t *b, int64_t id, const tg_range_t *r,
                              const char *tech_prefix, unsigned direction)
{
	if (r->family != AF_INET && r->family != AF_INET6)
		return "bad range family";
	if (tg_ip_cmp(&r->first, &r->last) > 0)
		return "range end before start";
	if (strlen(tech_prefix) >= SNAP_PREFIX_MAX)
		return "tech prefix too long";
	if (direction < SNAP_DIR_INGRESS || direction > SNAP_DIR_BOTH)
		return "bad direction";
	if (id_map_get(&b->rule_ids, id) >= 0)
		return "duplicate rule id";
	return NULL;
}

int snap_builder_rule(snap_builder_t *b, int64_t id, int64_t account_id, const tg_range_t *r, uint16_t port,
                      const char *tech_prefix, int active, unsigned direction, const char **err)
{
	int64_t account = id_map_get(&b->account_ids, account_id);
	snap_rule_sh_t *rule;
	const char *dummy;

	if (err == NULL)
		err = &dummy;
	if (tech_prefix == NULL)
		tech_prefix = "";
	if (account < 0) {
		*err = "unknown account";
		return -1;
	}
	if ((*err = rule_check(b, id, r, tech_prefix, direction)) != NULL)
		return -1;
	if (grow_array((void **)&b->rules, b->nrules, &b->cap_rules, sizeof(*rule)) < 0 ||
	    id_map_put(&b->rule_ids, id, b->nrules) < 0) {
		*err = "out of memory";
		return -1;
	}
	rule = &b->rules[b->nrules++];
	memset(rule, 0, sizeof(*rule));
	rule->id = id;
	rule->range.first = r->first;
	rule->range.last = r->last;
	rule->range.family = r->family;
	rule->account = (uint32_t)account;
	rule->port = port;
	rule->active = active ? 1 : 0;
	rule->direction = (uint8_t)direction;
	rule->prefix_len = (uint8_t)strlen(tech_prefix);
	strcpy(rule->tech_prefix, tech_prefix);
	return 0;
}

/* ------------------------------------------------------------------ */
/* specificity rank                                                    */

/* Sorts ascending into "most specific first". */
typedef struct spec_key {
	uint32_t major;            /* port-bound, tech prefix length, prefix bits; see spec_major() */
	uint32_t idx;              /* rule index */
	uint64_t size_hi, size_lo; /* last - first */
	int64_t id;
} spec_key_t;

static uint32_t spec_major(const snap_rule_sh_t *r)
{
	uint32_t portless = r->port == 0;
	uint32_t shorter_prefix = SNAP_PREFIX_MAX - r->prefix_len;
	uint32_t wider = 128 - (uint32_t)tg_range_prefix_bits(&r->range);

	return portless << 16 | shorter_prefix << 8 | wider;
}

static int spec_cmp(const void *pa, const void *pb)
{
	const spec_key_t *a = pa, *b = pb;

	if (a->major != b->major)
		return a->major < b->major ? -1 : 1;
	if (a->size_hi != b->size_hi)
		return a->size_hi < b->size_hi ? -1 : 1;
	if (a->size_lo != b->size_lo)
		return a->size_lo < b->size_lo ? -1 : 1;
	if (a->id != b->id)
		return a->id < b->id ? -1 : 1;
	return a->idx < b->idx ? -1 : a->idx > b->idx;
}

/* A rule every lookup that reaches it accepts: nothing after it matters. */
static int rule_catches_all(const snap_rule_sh_t *r)
{
	return r->port == 0 && r->prefix_len == 0 && r->direction == SNAP_DIR_BOTH;
}

/*
 * Fills order[rank] = rule index for the active rules, most specific
 * first. Returns how many, or -1 when out of memory.
 */
static int64_t rank_rules(const snap_builder_t *b, uint32_t *order)
{
	spec_key_t *keys = malloc((size_t)(b->nrules ? b->nrules : 1) * sizeof(*keys));
	uint32_t m = 0;

	if (keys == NULL)
		return -1;
	for (uint32_t i = 0; i < b->nrules; i++) {
		const snap_rule_sh_t *r = &b->rules[i];

		if (!r->active)
			continue;
		keys[m].major = spec_major(r);
		keys[m].idx = i;
		keys[m].size_lo = r->range.last.lo - r->range.first.lo;
		keys[m].size_hi =
		        r->range.last.hi - r->range.first.hi - (r->range.last.lo < r->range.first.lo);
		keys[m].id = r->id;
		m++;
	}
	qsort(keys, m, sizeof(*keys), spec_cmp);
	for (uint32_t k = 0; k < m; k++)
		order[k] = keys[k].idx;
	free(keys);
	return m;
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
	uint32_t m;       /* indexed (active) rules */
	uint32_t *order;  /* [m] rank -> rule index */
	uint8_t *flags;   /* [m] RANK_* by rank */
	cut_t *starts;    /* [m] by (first, rank) */
	cut_t *ends;      /* [m] by last */
	uint32_t *active; /* ranks covering the current point, ascending */
	uint32_t *scratch;
	uint32_t nactive;
	uint32_t *cands; /* heap copy, moved into the arena at the end */
	size_t ncands, cap_cands;
	snap_ival_sh_t *ivals; /* written straight into the arena */
	size_t nivals;
	size_t room; /* arena bytes from the intervals on */
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

static int cut_cmp(const void *pa, const void *pb)
{
	const cut_t *a = pa, *b = pb;

	if (!ip_eq(&a->at, &b->at))
		return ip_lt(&a->at, &b->at) ? -1 : 1;
	return a->rank < b->rank ? -1 : a->rank > b->rank;
}

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

/* Ranks the rules and sorts their cut points. Returns 0 or -1 (ENOMEM). */
static int sweep_prepare(sweep_t *w, const snap_builder_t *b)
{
	size_t n = b->nrules ? b->nrules : 1;
	int64_t m;

	w->order = malloc(n * sizeof(uint32_t));
	if (w->order == NULL || (m = rank_rules(b, w->order)) < 0)
		return -1;
	w->m = (uint32_t)m;
	w->flags = calloc(n, 1);
	w->starts = malloc(n * sizeof(cut_t));
	w->ends = malloc(n * sizeof(cut_t));
	w->active = malloc(n * sizeof(uint32_t));
	w->scratch = malloc(n * sizeof(uint32_t));
	if (!w->flags || !w->starts || !w->ends || !w->active || !w->scratch)
		return -1;
	for (uint32_t k = 0; k < w->m; k++) {
		const snap_rule_sh_t *r = &b->rules[w->order[k]];

		w->flags[k] = rule_catches_all(r) ? RANK_CATCH_ALL : 0;
		w->starts[k] = (cut_t){r->range.first, k, 0};
		w->ends[k] = (cut_t){r->range.last, k, 0};
	}
	qsort(w->starts, w->m, sizeof(cut_t), cut_cmp);
	qsort(w->ends, w->m, sizeof(cut_t), cut_cmp);
	return 0;
}

/* Drops the rules whose last address is below p. */
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

/* Merges the rules starting at p (already in rank order) into the active set. */
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
	if (ALIGN8((w->nivals + 1) * sizeof(snap_ival_sh_t)) + w->ncands * sizeof(uint32_t) > w->room ||
	    w->ncands > MAX_ENTRIES) {
		errno = ENOSPC;
		return -1;
	}
	w->ivals[w->nivals++] = (snap_ival_sh_t){*p, (uint32_t)off, (uint32_t)n};
	return 0;
}

/* The cut point after p: the next rule start or the next last+1. */
static int sweep_next(const sweep_t *w, uint32_t i, uint32_t j, tg_ip_t *p)
{
	int have = 0;

	if (i < w->m) {
		*p = w->starts[i].at;
		have = 1;
	}
	/* A rule ending at the top of the space leaves no cut point after it. */
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

/* ------------------------------------------------------------------ */
/* writing                                                             */

uint64_t snap_checksum(const snap_sh_t *s)
{
	const unsigned char *p = (const unsigned char *)s;
	uint64_t h = FNV64_OFFSET;

	for (uint64_t i = sizeof(snap_sh_t); i < s->size; i++) {
		h ^= p[i];
		h *= FNV64_PRIME;
	}
	return h;
}

size_t snap_size_bound(uint32_t accounts, uint32_t rules)
{
	/*
	 * Intervals: at most two cut points per rule plus the one at ::.
	 * Candidates: 4 per rule covers rule sets nested two deep, or deeper
	 * under catch-all rules. Many rules overlapping at the same addresses
	 * need more and are refused with ENOSPC rather than grown into.
	 */
	return ALIGN8(sizeof(snap_sh_t)) + ALIGN8((size_t)accounts * sizeof(snap_account_sh_t)) +
	       ALIGN8((size_t)rules * sizeof(snap_rule_sh_t)) +
	       ALIGN8(((size_t)rules * 2 + 2) * sizeof(snap_ival_sh_t)) +
	       ALIGN8(((size_t)rules * 4 + 16) * sizeof(uint32_t));
}

/* Copies n bytes to base + off and zeroes up to the next 8-byte boundary. */
static size_t put_aligned(unsigned char *base, size_t off, const void *src, size_t n)
{
	if (n > 0)
		memcpy(base + off, src, n);
	memset(base + off + n, 0, ALIGN8(n) - n);
	return off + ALIGN8(n);
}

/* Builds the index into the arena after off_ivals. Returns 0 or -1 with errno. */
static int write_index(const snap_builder_t *b, unsigned char *base, size_t arena_size, snap_sh_t *h)
{
	sweep_t w = {0};
	int rc = -1;

	w.ivals = (snap_ival_sh_t *)(base + h->off_ivals);
	w.room = arena_size - h->off_ivals;
	if (sweep_prepare(&w, b) < 0) {
		errno = ENOMEM;
		goto out;
	}
	if (sweep_run(&w) < 0)
		goto out;
	h->nivals = (uint32_t)w.nivals;
	h->ncands = (uint32_t)w.ncands;
	h->off_cands = h->off_ivals + ALIGN8(w.nivals * sizeof(snap_ival_sh_t));
	memset(base + h->off_ivals + w.nivals * sizeof(snap_ival_sh_t), 0,
	       h->off_cands - h->off_ivals - w.nivals * sizeof(snap_ival_sh_t));
	if (ALIGN8(w.ncands * sizeof(uint32_t)) > arena_size - h->off_cands) {
		errno = ENOSPC;
		goto out;
	}
	h->size = put_aligned(base, h->off_cands, w.cands, w.ncands * sizeof(uint32_t));
	rc = 0;
out:
	sweep_free(&w);
	return rc;
}

size_t snap_builder_write(snap_builder_t *b, void *arena, size_t arena_size, uint64_t generation,
                          uint64_t built_ms)
{
	unsigned char *base = arena;
	size_t acc_bytes = (size_t)b->naccounts * sizeof(snap_account_sh_t);
	size_t rule_bytes = (size_t)b->nrules * sizeof(snap_rule_sh_t);
	snap_sh_t h;

	memset(&h, 0, sizeof(h));
	h.off_accounts = ALIGN8(sizeof(snap_sh_t));
	h.off_rules = h.off_accounts + ALIGN8(acc_bytes);
	h.off_ivals = h.off_rules + ALIGN8(rule_bytes);
	/* Room for at least the interval at :: */
	if (h.off_ivals + sizeof(snap_ival_sh_t) > arena_size) {
		errno = ENOSPC;
		return 0;
	}
	put_aligned(base, h.off_accounts, b->accounts, acc_bytes);
	put_aligned(base, h.off_rules, b->rules, rule_bytes);
	if (write_index(b, base, arena_size, &h) < 0)
		return 0;
	h.magic = SNAP_MAGIC;
	h.generation = generation;
	h.built_ms = built_ms;
	h.naccounts = b->naccounts;
	h.nrules = b->nrules;
	memcpy(base, &h, sizeof(h));
	((snap_sh_t *)arena)->checksum = snap_checksum(arena);
	return h.size;
}

/* ------------------------------------------------------------------ */
/* lookup                                                              */

const snap_account_sh_t *snap_accounts(const snap_sh_t *s)
{
	return (const snap_account_sh_t *)((const unsigned char *)s + s->off_accounts);
}

const snap_rule_sh_t *snap_rules(const snap_sh_t *s)
{
	return (const snap_rule_sh_t *)((const unsigned char *)s + s->off_rules);
}

/* The interval holding ip: the one with the largest start <= ip. */
static const snap_ival_sh_t *find_interval(const snap_sh_t *s, const tg_ip_t *ip)
{
	const snap_ival_sh_t *iv = (const snap_ival_sh_t *)((const unsigned char *)s + s->off_ivals);
	size_t lo = 0, n = s->nivals;

	if (n == 0 || ip_lt(ip, &iv[0].start))
		return NULL;
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

static int rule_fits(const snap_rule_sh_t *r, uint16_t port, const char *user, size_t user_len)
{
	if (r->port != 0 && r->port != port)
		return 0;
	if (user == NULL || r->prefix_len == 0)
		return 1;
	return user_len >= r->prefix_len && memcmp(user, r->tech_prefix, r->prefix_len) == 0;
}

int snap_lookup(const snap_sh_t *s, const tg_ip_t *ip, uint16_t port, const char *user, size_t user_len,
                unsigned dir, snap_match_t *m)
{
	const snap_ival_sh_t *iv = find_interval(s, ip);
	const uint32_t *cands = (const uint32_t *)((const unsigned char *)s + s->off_cands);
	const snap_rule_sh_t *rules = snap_rules(s);
	int usable = 0;

	if (m) {
		m->rule = NULL;
		m->account = NULL;
	}
	for (uint32_t i = 0; iv != NULL && i < iv->cand_n; i++) {
		const snap_rule_sh_t *r = &rules[cands[iv->cand_off + i]];

		if (!r->active || (r->direction & dir) == 0)
			continue;
		usable = 1;
		if (!rule_fits(r, port, user, user_len))
			continue;

		const snap_account_sh_t *a = &snap_accounts(s)[r->account];

		if (m) {
			m->rule = r;
			m->account = a;
		}
		return a->active ? SNAP_MATCH : SNAP_ACCOUNT_INACTIVE;
	}
	return usable ? SNAP_NO_FIT : SNAP_NO_ADDRESS;
}

/* ------------------------------------------------------------------ */
/* publication: see the protocol in snapshot.h                         */

const snap_sh_t *snap_acquire(shm_t *shm, shm_proc_sh_t *slot)
{
	for (;;) {
		uint64_t g = atomic_load(&shm->snapctl->generation);

		if (g == 0)
			return NULL;
		atomic_store(&slot->epoch, g);
		/* Unchanged: the writer's scan for g-1 reuse will see our epoch. */
		if (atomic_load(&shm->snapctl->generation) == g) {
			const snap_sh_t *s = shm->arena[g & 1];

			assert(s->magic == SNAP_MAGIC);
			assert(s->generation == g);
			return s;
		}
	}
}

void snap_release(shm_proc_sh_t *slot)
{
	atomic_store(&slot->epoch, 0);
}

/* Does any reader slot still announce generation g? */
static int generation_held(shm_t *shm, uint64_t g)
{
	if (atomic_load(&shm->procs[SHM_PROC_LOADER].epoch) == g)
		return 1;
	for (uint32_t i = 0; i < shm->hdr->nworkers; i++)
		if (atomic_load(&shm->procs[SHM_PROC_WORKER(i)].epoch) == g)
			return 1;
	return 0;
}

void *snap_arena_for_next(shm_t *shm, uint64_t *next_gen)
{
	uint64_t cur = atomic_load(&shm->snapctl->generation);

	/*
	 * The next arena last held cur - 1. Generation 0 is "none", which
	 * every idle slot reads as, so publishing 1 and 2 never waits.
	 */
	if (cur >= 2 && generation_held(shm, cur - 1))
		return NULL;
	*next_gen = cur + 1;
	return shm->arena[(cur + 1) & 1];
}

void snap_publish(shm_t *shm, uint64_t gen)
{
	const snap_sh_t *s = shm->arena[gen & 1];

	assert(gen == atomic_load(&shm->snapctl->generation) + 1);
	assert(s->magic == SNAP_MAGIC && s->generation == gen);
	(void)s;
	atomic_store(&shm->snapctl->generation, gen);
}
