/*
 * The loader's model of provisioning: every account and rule in the
 * loader's heap, changed row by row (put and delete by id, or a whole
 * load marked and swept), and the decision, at each publish, between a
 * delta (a new head over the current base) and a compaction (a new base
 * and a head with an empty overlay). It writes only the arenas
 * snapshot.c's protocol says are free, never logs, and leaves reporting
 * to the loader.
 *
 * What the model remembers about the current base, per rule:
 *   R_IN_BASE  the base holds entries of this id that no tombstone hides;
 *   R_DIRTY    put since the base: its entries go into the overlay.
 * Putting an R_IN_BASE rule, or deleting it, tombstones its id and clears
 * R_IN_BASE, so each id enters the tombstone list at most once and the
 * list can never outgrow the rules the base held (its room is reserved at
 * compaction: a delete never fails for memory). A compaction writes every
 * live rule into the new base and starts both lists afresh.
 *
 * Accounts sit in slots, in the very format heads carry, so a head's
 * account table is one copy. A deleted account's slot stays DELETED, as
 * tombstoned base entries still name it, until a compaction publishes a
 * base without them; only then is the slot FREE for another account.
 *
 * Call policies (an account's destination prefixes and restricted codecs)
 * are kept per slot, each a heap block in the head's own format (entries
 * of a length byte and the bytes), and laid out into one packed pool only
 * when a publish finds them changed; a head's pool is then one copy, and
 * a delta that changed no policy copies the pool as it was. What the pool
 * may hold in total is checked at every put (see snap_model_account_put2()).
 *
 * SIP users live in the head alone, so every head carries all of them,
 * and the model keeps them the way a head does: a dense array of
 * snap_user_sh_t (a delete moves the last user into the hole), the hash
 * chains through it, sized to the users held, and one array of allowed
 * source ranges. A head's user tables are then three copies, next to
 * nothing when there are no users. Ranges a replaced or deleted user
 * leaves behind are holes until publish() packs the array again.
 */
#include <assert.h>
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/clock.h"
#include "shm/snapshot.h"
#include "shm/snapshot_int.h"

#define NONE UINT32_MAX

enum rule_flag {
	R_LIVE = 1,
	R_DIRTY = 2,
	R_IN_BASE = 4,
	R_SEEN = 8, /* scratch, while de-duplicating the dirty list */
};

typedef struct mrule {
	int64_t id;
	tg_range_t one;   /* the range when nranges == 1 */
	tg_range_t *many; /* heap copy when nranges > 1 */
	uint32_t slot;    /* account slot */
	uint32_t next;    /* the account's rule list; the free list when not live */
	uint32_t prev;
	uint32_t max_channels, max_cps, cps_burst;
	uint32_t mark; /* the mark it was last put under */
	uint16_t port;
	uint8_t nranges, active, direction, prefix_len, flags;
	char prefix[SNAP_PREFIX_MAX]; /* zero-padded, copied into entries whole */
} mrule_t;

typedef struct mslot {
	uint32_t mark;
	uint32_t first_rule; /* NONE: no rules */
	uint32_t next_free;  /* while FREE */
	uint32_t first_user; /* NONE: no users */
	uint8_t *policy;     /* the account's lists as the pool holds them; NULL when it has none */
	uint32_t policy_len; /* bytes of it: allowed_len + denied_len + codecs_len */
} mslot_t;

/* What the model keeps about a user beside its head format, by the same index. */
typedef struct muser {
	uint32_t hash;                 /* snap_user_hash(), low bits: its bucket at any table size */
	uint32_t mark;                 /* the mark it was last put under */
	uint32_t acct_prev, acct_next; /* its account's users */
} muser_t;

/* id -> index: open addressing, linear probing, at most half full. */
typedef struct id_slot {
	int64_t id;
	uint32_t idx1; /* index + 1; 0 = empty */
} id_slot_t;

typedef struct id_map {
	id_slot_t *slots;
	size_t mask; /* capacity - 1, capacity a power of two */
	size_t used;
} id_map_t;

struct snap_model {
	uint32_t cap_accounts, cap_rules; /* what shm was sized for */
	uint32_t slot_cap;                /* account slots a head holds */
	uint32_t ov_cap;                  /* overlay entries and tombstones a head holds */
	uint32_t reclaim_at;              /* deleted slots that call for a compaction */

	snap_account_sh_t *accounts; /* [nslots], by slot, as heads carry them */
	mslot_t *slots;              /* [nslots] */
	uint32_t nslots, cap_slots, live_accounts, deleted_slots, free_slot;
	id_map_t account_ids;

	mrule_t *rules; /* slab: [nused], holes on the free list */
	uint32_t nused, cap_used, live_rules, free_rule;
	id_map_t rule_ids;

	uint32_t *dirty; /* rule indices, maybe stale or repeated until collect_dirty() */
	uint32_t ndirty, cap_dirty;
	int64_t *tombs; /* ids, each once */
	uint32_t ntombs, cap_tombs;
	uint32_t ov_rules, ov_entries; /* from the last collect_dirty() */

	uint32_t cap_users;    /* what shm was sized for */
	uint32_t range_cap;    /* allowed source ranges all users may carry */
	snap_user_sh_t *users; /* [nusers], dense, as heads carry them */
	muser_t *umeta;        /* [nusers] */
	uint32_t nusers, alloc_users;
	id_map_t user_ids;
	uint32_t *ubuckets; /* [1 << ubucket_bits], chained through users[].next, as heads carry them */
	uint32_t ubucket_bits;
	tg_range_t *uranges; /* each user's ranges at its range_off; holes until ranges_pack() */
	uint32_t range_used, range_live, alloc_ranges;

	uint32_t policy_cap;    /* SNAP_POLICY_TOTAL(cap_accounts): bytes the pool may hold */
	uint64_t policy_live;   /* bytes of every live account's lists */
	uint64_t policy_marked; /* of those, the accounts put under the current mark */
	uint8_t *pool;          /* the lists packed in slot order, as heads carry them */
	uint32_t pool_used, pool_alloc;
	int pool_stale; /* a list changed since the pool was packed */

	uint32_t mark;
	int in_load; /* between mark_begin and the sweep */
	int has_base, need_base;
	unsigned base_arena;
	uint64_t base_gen;
};

/* ------------------------------------------------------------------ */
/* id maps                                                             */

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

/* The slot holding id, or the empty slot where it belongs. */
static id_slot_t *id_map_slot(const id_map_t *map, int64_t id)
{
	size_t i = id_hash(id) & map->mask;

	while (map->slots[i].idx1 != 0 && map->slots[i].id != id)
		i = (i + 1) & map->mask;
	return &map->slots[i];
}

/* Room for one more id, so that the put after it cannot fail. Returns 0 or -1. */
static int id_map_reserve(id_map_t *map)
{
	size_t cap = map->slots ? map->mask + 1 : 0;

	if ((map->used + 1) * 2 <= cap)
		return 0;
	cap = cap ? cap * 2 : 1024;

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

/* The index stored for id, or -1. */
static int64_t id_map_get(const id_map_t *map, int64_t id)
{
	if (map->slots == NULL)
		return -1;

	const id_slot_t *slot = id_map_slot(map, id);

	return slot->idx1 ? (int64_t)slot->idx1 - 1 : -1;
}

/* id absent, id_map_reserve() done. */
static void id_map_put(id_map_t *map, int64_t id, uint32_t idx)
{
	id_slot_t *slot = id_map_slot(map, id);

	assert(slot->idx1 == 0 && (map->used + 1) * 2 <= map->mask + 1);
	slot->id = id;
	slot->idx1 = idx + 1;
	map->used++;
}

/*
 * id present. Backward shift: later members of the probe run move into
 * the hole when it lies on their own path from their home slot, so a
 * lookup never stops at a hole before the id it seeks.
 */
static void id_map_del(id_map_t *map, int64_t id)
{
	size_t i = (size_t)(id_map_slot(map, id) - map->slots);

	assert(map->slots[i].idx1 != 0);
	map->slots[i].idx1 = 0;
	map->used--;
	for (size_t j = (i + 1) & map->mask; map->slots[j].idx1 != 0; j = (j + 1) & map->mask) {
		size_t home = id_hash(map->slots[j].id) & map->mask;

		if (((j - home) & map->mask) >= ((j - i) & map->mask)) {
			map->slots[i] = map->slots[j];
			map->slots[j].idx1 = 0;
			i = j;
		}
	}
}

/* ------------------------------------------------------------------ */
/* the model                                                           */

/* Room for one more element of *arr. Returns 0 or -1. */
static int grow_array(void **arr, uint32_t n, uint32_t *cap, size_t elem)
{
	if (n < *cap)
		return 0;
	if (n >= UINT32_MAX / 2)
		return -1;

	uint32_t want = *cap ? *cap * 2 : 256;
	void *p = realloc(*arr, (size_t)want * elem);

	if (p == NULL)
		return -1;
	*arr = p;
	*cap = want;
	return 0;
}

snap_model_t *snap_model_new(uint32_t cap_accounts, uint32_t cap_rules, uint32_t cap_users)
{
	snap_model_t *m = calloc(1, sizeof(*m));

	if (m == NULL)
		return NULL;
	m->ubucket_bits = SNAP_USER_BUCKET_BITS_MIN;
	m->ubuckets = malloc(sizeof(uint32_t) << m->ubucket_bits);
	if (m->ubuckets == NULL) {
		free(m);
		return NULL;
	}
	memset(m->ubuckets, 0xff, sizeof(uint32_t) << m->ubucket_bits); /* all NONE */
	m->cap_users = cap_users;
	m->range_cap = snap_user_range_cap(cap_users);
	m->cap_accounts = cap_accounts;
	m->policy_cap = snap_policy_cap(cap_accounts);
	m->cap_rules = cap_rules;
	m->slot_cap = snap_account_slots(cap_accounts);
	m->ov_cap = snap_overlay_cap(cap_rules);
	m->reclaim_at = cap_accounts / 2 > 64 ? cap_accounts / 2 : 64;
	m->free_slot = NONE;
	m->free_rule = NONE;
	m->mark = 1;
	m->need_base = 1;
	return m;
}

void snap_model_free(snap_model_t *m)
{
	if (m == NULL)
		return;
	for (uint32_t i = 0; i < m->nused; i++)
		if (m->rules[i].flags & R_LIVE)
			free(m->rules[i].many);
	for (uint32_t s = 0; s < m->nslots; s++)
		free(m->slots[s].policy);
	free(m->pool);
	free(m->accounts);
	free(m->slots);
	free(m->account_ids.slots);
	free(m->rules);
	free(m->rule_ids.slots);
	free(m->dirty);
	free(m->tombs);
	free(m->users);
	free(m->umeta);
	free(m->user_ids.slots);
	free(m->ubuckets);
	free(m->uranges);
	free(m);
}

uint32_t snap_model_naccounts(const snap_model_t *m)
{
	return m->live_accounts;
}

uint32_t snap_model_nrules(const snap_model_t *m)
{
	return m->live_rules;
}

/* ------------------------------------------------------------------ */
/* accounts                                                            */

/* Room for one more slot at the end. Returns 0 or -1. */
static int slots_grow(snap_model_t *m)
{
	if (m->nslots < m->cap_slots)
		return 0;

	uint32_t want = m->cap_slots ? m->cap_slots * 2 : 64;
	snap_account_sh_t *a = realloc(m->accounts, (size_t)want * sizeof(*a));

	if (a == NULL)
		return -1;
	m->accounts = a;

	mslot_t *s = realloc(m->slots, (size_t)want * sizeof(*s));

	if (s == NULL)
		return -1;
	m->slots = s;
	m->cap_slots = want;
	return 0;
}

/* A slot for a new account: a reclaimed one first. Returns it, or NONE with *err. */
static uint32_t slot_take(snap_model_t *m, const char **err)
{
	uint32_t s = m->free_slot;

	if (s != NONE) {
		m->free_slot = m->slots[s].next_free;
	} else if (m->nslots >= m->slot_cap) {
		/* More deletes than accounts since the last compaction: publish, then retry. */
		*err = "no free account slot";
		return NONE;
	} else if (slots_grow(m) < 0) {
		*err = "out of memory";
		return NONE;
	} else {
		s = m->nslots++;
	}
	m->slots[s].first_rule = NONE;
	m->slots[s].first_user = NONE;
	m->slots[s].policy = NULL;
	m->slots[s].policy_len = 0;
	m->live_accounts++;
	return s;
}

/* What a SIP user part may carry but ';' (parameters follow it), plus '#', which dial strings use raw. */
static int prefix_char_ok(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
	       (c != '\0' && strchr("-_.!~*'()%&=+$,?/#", c) != NULL);
}

static int codec_char_ok(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '.' ||
	       c == '_' || c == '-';
}

/*
 * Appends n entries to the block at out + *len (one length byte, then the
 * bytes; codecs upper case). Returns NULL, or why not.
 */
static const char *policy_list(uint8_t *out, size_t *len, const char *const *list, unsigned n, int codecs)
{
	for (unsigned k = 0; k < n; k++) {
		const char *e = list[k] != NULL ? list[k] : "";
		size_t elen = strlen(e);

		if (elen == 0 || elen > (codecs ? SNAP_CODEC_MAX : SNAP_DEST_PREFIX_MAX))
			return codecs ? "bad codec name: empty or longer than 32 bytes"
			              : "bad destination prefix: empty or longer than 32 bytes";
		out[(*len)++] = (uint8_t)elen;
		for (size_t i = 0; i < elen; i++) {
			unsigned char c = (unsigned char)e[i];

			if (codecs ? !codec_char_ok(c) : !prefix_char_ok(c))
				return codecs ? "bad codec name: only letters, digits, '.', '_' and '-'"
				              : "bad destination prefix: a character a SIP user part cannot "
				                "carry";
			out[(*len)++] = codecs && c >= 'a' && c <= 'z' ? (uint8_t)(c - ('a' - 'A')) : c;
		}
	}
	return NULL;
}

/* An account's block, the most it can be: every list full of the longest entries. */
#define POLICY_BLOCK_MAX                                                                                     \
	(2 * SNAP_DEST_PREFIXES * (1 + SNAP_DEST_PREFIX_MAX) + SNAP_CODECS * (1 + SNAP_CODEC_MAX))

/* The three lists into block (POLICY_BLOCK_MAX bytes), their sizes into acc. Returns NULL, or why not. */
static const char *policy_make(const snap_account_info_t *in, uint8_t *block, snap_account_sh_t *acc)
{
	size_t len = 0, at;
	const char *err;

	if (in->nallowed > SNAP_DEST_PREFIXES)
		return "too many allowed prefixes";
	if (in->ndenied > SNAP_DEST_PREFIXES)
		return "too many denied prefixes";
	if (in->ncodecs > SNAP_CODECS)
		return "too many restricted codecs";
	if ((in->nallowed > 0 && in->allowed_prefixes == NULL) ||
	    (in->ndenied > 0 && in->denied_prefixes == NULL) ||
	    (in->ncodecs > 0 && in->restricted_codecs == NULL))
		return "no list given";
	if ((err = policy_list(block, &len, in->allowed_prefixes, in->nallowed, 0)) != NULL)
		return err;
	acc->allowed_len = (uint16_t)len;
	at = len;
	if ((err = policy_list(block, &len, in->denied_prefixes, in->ndenied, 0)) != NULL)
		return err;
	acc->denied_len = (uint16_t)(len - at);
	at = len;
	if ((err = policy_list(block, &len, in->restricted_codecs, in->ncodecs, 1)) != NULL)
		return err;
	acc->codecs_len = (uint16_t)(len - at);
	acc->nallowed = (uint8_t)in->nallowed;
	acc->ndenied = (uint8_t)in->ndenied;
	acc->ncodecs = (uint8_t)in->ncodecs;
	assert(len <= POLICY_BLOCK_MAX);
	return NULL;
}

/*
 * The pool's total if slot s (NONE: a new account) held len bytes. In a
 * full load only the accounts put since mark_begin count: the sweep drops
 * the rest, and a load that replaces accounts must not find their lists
 * in its way.
 */
static uint64_t policy_total_with(const snap_model_t *m, uint32_t s, uint32_t len)
{
	uint32_t old = s != NONE ? m->slots[s].policy_len : 0;

	if (m->in_load)
		return m->policy_marked - (s != NONE && m->slots[s].mark == m->mark ? old : 0) + len;
	return m->policy_live - old + len;
}

/* Slot s drops its lists (the account is deleted, or about to get new ones). */
static void policy_drop(snap_model_t *m, uint32_t s)
{
	mslot_t *slot = &m->slots[s];

	m->policy_live -= slot->policy_len;
	if (slot->mark == m->mark)
		m->policy_marked -= slot->policy_len;
	if (slot->policy_len > 0)
		m->pool_stale = 1;
	free(slot->policy);
	slot->policy = NULL;
	slot->policy_len = 0;
}

/* A put that changes nothing leaves the pool alone: a full load over unchanged accounts stays cheap. */
static int account_same(const snap_model_t *m, uint32_t s, const snap_account_sh_t *a, const uint8_t *block)
{
	snap_account_sh_t have = m->accounts[s];

	have.policy_off = a->policy_off;
	return memcmp(&have, a, sizeof(have)) == 0 &&
	       (m->slots[s].policy_len == 0 ||
	        memcmp(m->slots[s].policy, block, m->slots[s].policy_len) == 0);
}

/* Checks, then reserves, then stores: a refused put leaves the model as it was. */
int snap_model_account_put2(snap_model_t *m, const snap_account_info_t *in, const char **err)
{
	uint8_t block[POLICY_BLOCK_MAX], *copy = NULL;
	const char *dummy, *name = in->name != NULL ? in->name : "";
	snap_account_sh_t a;
	uint32_t len;
	int64_t s;

	if (err == NULL)
		err = &dummy;
	if (strlen(name) >= SNAP_NAME_MAX) {
		*err = "account name too long";
		return -1;
	}
	/* Zeroed padding keeps a head's bytes a function of its content only. */
	memset(&a, 0, sizeof(a));
	if ((*err = policy_make(in, block, &a)) != NULL)
		return -1;
	len = (uint32_t)a.allowed_len + a.denied_len + a.codecs_len;
	s = id_map_get(&m->account_ids, in->id);
	a.id = in->id;
	a.active = in->active ? 1 : 0;
	a.max_channels = in->max_channels;
	a.max_cps = in->max_cps;
	a.cps_burst = in->cps_burst;
	a.state = SNAP_ACCOUNT_LIVE;
	strcpy(a.name, name);
	/* Before the shortcut: an unchanged account a full load reads again counts anew. */
	if (policy_total_with(m, s >= 0 ? (uint32_t)s : NONE, len) > m->policy_cap) {
		*err = "too many destination prefixes and codecs in total";
		return -1;
	}
	if (s >= 0 && account_same(m, (uint32_t)s, &a, block)) {
		if (m->slots[s].mark != m->mark)
			m->policy_marked += len;
		m->slots[s].mark = m->mark;
		return 0;
	}
	if (len > 0 && (copy = malloc(len)) == NULL) {
		*err = "out of memory";
		return -1;
	}
	if (len > 0)
		memcpy(copy, block, len);
	if (s < 0) {
		if (id_map_reserve(&m->account_ids) < 0) {
			free(copy);
			*err = "out of memory";
			return -1;
		}
		if ((s = slot_take(m, err)) == NONE) {
			free(copy);
			return -1;
		}
		id_map_put(&m->account_ids, in->id, (uint32_t)s);
	} else {
		policy_drop(m, (uint32_t)s);
	}
	m->accounts[s] = a;
	m->slots[s].policy = copy;
	m->slots[s].policy_len = len;
	m->slots[s].mark = m->mark;
	m->policy_live += len;
	m->policy_marked += len;
	if (len > 0)
		m->pool_stale = 1;
	return 0;
}

int snap_model_account_put(snap_model_t *m, int64_t id, const char *name, int active, uint32_t max_channels,
                           uint32_t max_cps, const char **err)
{
	snap_account_info_t a;

	memset(&a, 0, sizeof(a));
	a.id = id;
	a.name = name;
	a.active = active;
	a.max_channels = max_channels;
	a.max_cps = max_cps;
	return snap_model_account_put2(m, &a, err);
}

static void rule_remove(snap_model_t *m, uint32_t i);
static void user_remove(snap_model_t *m, uint32_t i);

int snap_model_account_del(snap_model_t *m, int64_t id)
{
	int64_t s = id_map_get(&m->account_ids, id);

	if (s < 0) {
		errno = ENOENT;
		return -1;
	}
	while (m->slots[s].first_rule != NONE)
		rule_remove(m, m->slots[s].first_rule);
	/* The table cascades: sip_users.account_id is ON DELETE CASCADE. */
	while (m->slots[s].first_user != NONE)
		user_remove(m, m->slots[s].first_user);
	id_map_del(&m->account_ids, id);
	policy_drop(m, (uint32_t)s);
	/* id and name stay, for whoever inspects a head; nothing matches it any more. */
	m->accounts[s].state = SNAP_ACCOUNT_DELETED;
	m->accounts[s].active = 0;
	m->accounts[s].policy_off = 0;
	m->accounts[s].allowed_len = m->accounts[s].denied_len = m->accounts[s].codecs_len = 0;
	m->accounts[s].nallowed = m->accounts[s].ndenied = m->accounts[s].ncodecs = 0;
	m->live_accounts--;
	m->deleted_slots++;
	return 0;
}

/* ------------------------------------------------------------------ */
/* rules                                                               */

static const tg_range_t *rule_ranges(const mrule_t *r)
{
	return r->nranges > 1 ? r->many : &r->one;
}

static void rule_link(snap_model_t *m, uint32_t i, uint32_t slot)
{
	mrule_t *r = &m->rules[i];

	r->slot = slot;
	r->prev = NONE;
	r->next = m->slots[slot].first_rule;
	if (r->next != NONE)
		m->rules[r->next].prev = i;
	m->slots[slot].first_rule = i;
}

static void rule_unlink(snap_model_t *m, uint32_t i)
{
	mrule_t *r = &m->rules[i];

	if (r->prev != NONE)
		m->rules[r->prev].next = r->next;
	else
		m->slots[r->slot].first_rule = r->next;
	if (r->next != NONE)
		m->rules[r->next].prev = r->prev;
}

/* Its old entries in the base must be ignored from now on. Room was reserved at compaction. */
static void rule_tombstone(snap_model_t *m, mrule_t *r)
{
	if (!(r->flags & R_IN_BASE))
		return;
	assert(m->ntombs < m->cap_tombs);
	m->tombs[m->ntombs++] = r->id;
	r->flags &= (uint8_t)~R_IN_BASE;
}

static void rule_remove(snap_model_t *m, uint32_t i)
{
	mrule_t *r = &m->rules[i];

	assert(r->flags & R_LIVE);
	rule_tombstone(m, r);
	rule_unlink(m, i);
	id_map_del(&m->rule_ids, r->id);
	free(r->many);
	r->many = NULL;
	r->flags = 0;
	r->next = m->free_rule;
	m->free_rule = i;
	m->live_rules--;
}

int snap_model_rule_del(snap_model_t *m, int64_t id)
{
	int64_t i = id_map_get(&m->rule_ids, id);

	if (i < 0) {
		errno = ENOENT;
		return -1;
	}
	rule_remove(m, (uint32_t)i);
	return 0;
}

static const char *range_check(const tg_range_t *r)
{
	if (r->family != AF_INET && r->family != AF_INET6)
		return "bad range family";
	if (tg_ip_cmp(&r->first, &r->last) > 0)
		return "range end before start";
	return NULL;
}

/* A rule as put, checked and filled in, before it touches the model. */
typedef struct rule_in {
	mrule_t r;
	const tg_range_t *ranges;
} rule_in_t;

static const char *rule_in_make(const snap_model_t *m, rule_in_t *in, const snap_rule_info_t *ri)
{
	int64_t slot = id_map_get(&m->account_ids, ri->account_id);
	const char *err, *tech_prefix = ri->tech_prefix != NULL ? ri->tech_prefix : "";

	if (slot < 0)
		return "unknown account";
	if (ri->nranges > SNAP_MAX_RANGES)
		return "too many ranges";
	if (ri->nranges > 0 && ri->ranges == NULL)
		return "no ranges given";
	for (unsigned k = 0; k < ri->nranges; k++)
		if ((err = range_check(&ri->ranges[k])) != NULL)
			return err;
	if (strlen(tech_prefix) >= SNAP_PREFIX_MAX)
		return "tech prefix too long";
	if (ri->direction < SNAP_DIR_INGRESS || ri->direction > SNAP_DIR_BOTH)
		return "bad direction";
	memset(in, 0, sizeof(*in));
	in->r.id = ri->id;
	in->r.max_channels = ri->max_channels;
	in->r.max_cps = ri->max_cps;
	in->r.cps_burst = ri->cps_burst;
	in->r.slot = (uint32_t)slot;
	in->r.port = ri->port;
	in->r.nranges = (uint8_t)ri->nranges;
	in->r.active = ri->active ? 1 : 0;
	in->r.direction = (uint8_t)ri->direction;
	in->r.prefix_len = (uint8_t)strlen(tech_prefix);
	strcpy(in->r.prefix, tech_prefix);
	in->ranges = ri->ranges;
	return NULL;
}

static int range_same(const tg_range_t *a, const tg_range_t *b)
{
	return a->family == b->family && tg_ip_cmp(&a->first, &b->first) == 0 &&
	       tg_ip_cmp(&a->last, &b->last) == 0;
}

/* A put that changes nothing dirties nothing: a full load over an unchanged table stays cheap. */
static int rule_same(const mrule_t *r, const rule_in_t *in)
{
	const tg_range_t *have = rule_ranges(r);

	if (r->slot != in->r.slot || r->port != in->r.port || r->nranges != in->r.nranges ||
	    r->active != in->r.active || r->direction != in->r.direction ||
	    strcmp(r->prefix, in->r.prefix) != 0 || r->max_channels != in->r.max_channels ||
	    r->max_cps != in->r.max_cps || r->cps_burst != in->r.cps_burst)
		return 0;
	for (unsigned k = 0; k < r->nranges; k++)
		if (!range_same(&have[k], &in->ranges[k]))
			return 0;
	return 1;
}

/* Copies the ranges where the rule keeps them. Returns 0 or -1 (out of memory). */
static int rule_in_ranges(rule_in_t *in)
{
	uint8_t n = in->r.nranges;

	if (n == 1)
		in->r.one = in->ranges[0];
	if (n <= 1)
		return 0;
	in->r.many = malloc(n * sizeof(tg_range_t));
	if (in->r.many == NULL)
		return -1;
	memcpy(in->r.many, in->ranges, n * sizeof(tg_range_t));
	return 0;
}

/* Room for a new rule's slab slot, its id and its dirty mark. Returns 0 or -1. */
static int rule_reserve(snap_model_t *m, int fresh)
{
	if (grow_array((void **)&m->dirty, m->ndirty, &m->cap_dirty, sizeof(*m->dirty)) < 0)
		return -1;
	if (!fresh)
		return 0;
	if (id_map_reserve(&m->rule_ids) < 0)
		return -1;
	return m->free_rule != NONE
	               ? 0
	               : grow_array((void **)&m->rules, m->nused, &m->cap_used, sizeof(*m->rules));
}

static void rule_dirty(snap_model_t *m, uint32_t i)
{
	mrule_t *r = &m->rules[i];

	if (r->flags & R_DIRTY)
		return;
	r->flags |= R_DIRTY;
	assert(m->ndirty < m->cap_dirty);
	m->dirty[m->ndirty++] = i;
}

/* Writes in over the rule at i (live or a fresh slot), keeping its base flags. */
static void rule_store(snap_model_t *m, uint32_t i, rule_in_t *in, int fresh)
{
	mrule_t *r = &m->rules[i];
	uint8_t keep = fresh ? R_LIVE : r->flags;

	if (!fresh) {
		rule_tombstone(m, r);
		keep = r->flags;
		rule_unlink(m, i);
		free(r->many);
	}
	*r = in->r;
	r->flags = keep;
	r->mark = m->mark;
	rule_link(m, i, in->r.slot);
	rule_dirty(m, i);
}

int snap_model_rule_put2(snap_model_t *m, const snap_rule_info_t *ri, const char **err)
{
	const char *dummy;
	rule_in_t in;
	int64_t have = id_map_get(&m->rule_ids, ri->id);
	uint32_t i;

	if (err == NULL)
		err = &dummy;
	if ((*err = rule_in_make(m, &in, ri)) != NULL)
		return -1;
	if (have >= 0 && rule_same(&m->rules[have], &in)) {
		m->rules[have].mark = m->mark;
		return 0;
	}
	if (rule_reserve(m, have < 0) < 0 || rule_in_ranges(&in) < 0) {
		*err = "out of memory";
		return -1;
	}
	if (have >= 0) {
		rule_store(m, (uint32_t)have, &in, 0);
		return 0;
	}
	if (m->free_rule != NONE) {
		i = m->free_rule;
		m->free_rule = m->rules[i].next;
	} else {
		i = m->nused++;
	}
	id_map_put(&m->rule_ids, ri->id, i);
	rule_store(m, i, &in, 1);
	m->live_rules++;
	return 0;
}

int snap_model_rule_put(snap_model_t *m, int64_t id, int64_t account_id, const tg_range_t *ranges,
                        unsigned nranges, uint16_t port, const char *tech_prefix, int active,
                        unsigned direction, const char **err)
{
	snap_rule_info_t ri;

	memset(&ri, 0, sizeof(ri));
	ri.id = id;
	ri.account_id = account_id;
	ri.ranges = ranges;
	ri.nranges = nranges;
	ri.port = port;
	ri.tech_prefix = tech_prefix;
	ri.active = active;
	ri.direction = direction;
	return snap_model_rule_put2(m, &ri, err);
}

static void rule_info_of(const snap_model_t *m, const mrule_t *r, snap_rule_info_t *out)
{
	memset(out, 0, sizeof(*out));
	out->id = r->id;
	out->account_id = m->accounts[r->slot].id;
	out->ranges = rule_ranges(r);
	out->nranges = r->nranges;
	out->port = r->port;
	out->tech_prefix = r->prefix;
	out->active = r->active;
	out->direction = r->direction;
	out->max_channels = r->max_channels;
	out->max_cps = r->max_cps;
	out->cps_burst = r->cps_burst;
}

int snap_model_rule_get(const snap_model_t *m, int64_t id, snap_rule_info_t *out)
{
	int64_t i = id_map_get(&m->rule_ids, id);

	if (i < 0) {
		errno = ENOENT;
		return -1;
	}
	rule_info_of(m, &m->rules[i], out);
	return 0;
}

/* ------------------------------------------------------------------ */
/* SIP users                                                           */

static uint32_t *user_bucket(const snap_model_t *m, uint32_t hash)
{
	return &m->ubuckets[hash & (((uint32_t)1 << m->ubucket_bits) - 1)];
}

/* The link that leads to user i: its bucket, or the user before it in the chain. */
static uint32_t *user_chain_ref(const snap_model_t *m, uint32_t i)
{
	uint32_t *p = user_bucket(m, m->umeta[i].hash);

	while (*p != i) {
		assert(*p != NONE);
		p = &m->users[*p].next;
	}
	return p;
}

static void user_chain_link(snap_model_t *m, uint32_t i)
{
	uint32_t *b = user_bucket(m, m->umeta[i].hash);

	m->users[i].next = *b;
	*b = i;
}

static void user_acct_link(snap_model_t *m, uint32_t i)
{
	muser_t *mu = &m->umeta[i];
	mslot_t *slot = &m->slots[m->users[i].account];

	mu->acct_prev = NONE;
	mu->acct_next = slot->first_user;
	if (mu->acct_next != NONE)
		m->umeta[mu->acct_next].acct_prev = i;
	slot->first_user = i;
}

static void user_acct_unlink(snap_model_t *m, uint32_t i)
{
	const muser_t *mu = &m->umeta[i];

	if (mu->acct_prev != NONE)
		m->umeta[mu->acct_prev].acct_next = mu->acct_next;
	else
		m->slots[m->users[i].account].first_user = mu->acct_next;
	if (mu->acct_next != NONE)
		m->umeta[mu->acct_next].acct_prev = mu->acct_prev;
}

/* Chains over 1 << bits fresh buckets. Returns 0, or -1 (out of memory) with the old table kept. */
static int users_rehash(snap_model_t *m, uint32_t bits)
{
	uint32_t *b = malloc(sizeof(uint32_t) << bits);

	if (b == NULL)
		return -1;
	memset(b, 0xff, sizeof(uint32_t) << bits); /* all NONE */
	free(m->ubuckets);
	m->ubuckets = b;
	m->ubucket_bits = bits;
	for (uint32_t i = m->nusers; i-- > 0;)
		user_chain_link(m, i);
	return 0;
}

/*
 * Moves user from into the hole at to, which nothing links to any more:
 * whatever led to from (its chain, its account's list, its id) now
 * leads to to.
 */
static void user_move(snap_model_t *m, uint32_t from, uint32_t to)
{
	const muser_t *mu = &m->umeta[from];

	*user_chain_ref(m, from) = to;
	if (mu->acct_prev != NONE)
		m->umeta[mu->acct_prev].acct_next = to;
	else
		m->slots[m->users[from].account].first_user = to;
	if (mu->acct_next != NONE)
		m->umeta[mu->acct_next].acct_prev = to;
	id_map_slot(&m->user_ids, m->users[from].id)->idx1 = to + 1;
	memcpy(&m->users[to], &m->users[from], sizeof(m->users[to]));
	m->umeta[to] = *mu;
}

static void user_remove(snap_model_t *m, uint32_t i)
{
	uint32_t last = m->nusers - 1, fit;

	*user_chain_ref(m, i) = m->users[i].next;
	user_acct_unlink(m, i);
	id_map_del(&m->user_ids, m->users[i].id);
	m->range_live -= m->users[i].nranges; /* its block is a hole now */
	if (i != last)
		user_move(m, last, i);
	m->nusers--;
	/* A table far too big for what is left costs every head its copy. Failing to shrink harms nothing. */
	fit = snap_user_bucket_bits(m->nusers);
	if (m->ubucket_bits > fit + 2)
		(void)users_rehash(m, fit);
}

int snap_model_user_del(snap_model_t *m, int64_t id)
{
	int64_t i = id_map_get(&m->user_ids, id);

	if (i < 0) {
		errno = ENOENT;
		return -1;
	}
	user_remove(m, (uint32_t)i);
	return 0;
}

/*
 * Copies every user's ranges, in user order, into a fresh array of want
 * entries, which leaves no holes. Returns 0, or -1 (out of memory) with
 * nothing changed.
 */
static int ranges_pack(snap_model_t *m, uint32_t want)
{
	tg_range_t *r = malloc((size_t)(want ? want : 1) * sizeof(*r));
	uint32_t n = 0;

	if (r == NULL)
		return -1;
	for (uint32_t i = 0; i < m->nusers; i++) {
		snap_user_sh_t *u = &m->users[i];

		if (u->nranges > 0)
			memcpy(r + n, m->uranges + u->range_off, u->nranges * sizeof(*r));
		u->range_off = u->nranges > 0 ? n : 0;
		n += u->nranges;
	}
	assert(n == m->range_live && n <= want);
	free(m->uranges);
	m->uranges = r;
	m->alloc_ranges = want;
	m->range_used = n;
	return 0;
}

/* Field by field over zeroes: the padding of a caller's range never reaches a head. */
static void range_store(tg_range_t *dst, const tg_range_t *src)
{
	memset(dst, 0, sizeof(*dst));
	dst->first = src->first;
	dst->last = src->last;
	dst->family = src->family;
}

static int is_set(const char *s)
{
	return s != NULL && s[0] != '\0';
}

/* src as lowercase hex of ndigits, or "" when unset. Returns 0 or -1. */
static int ha1_copy(char *dst, const char *src, size_t ndigits)
{
	if (!is_set(src))
		return 0;
	if (strlen(src) != ndigits)
		return -1;
	for (size_t k = 0; k < ndigits; k++) {
		unsigned char c = snap_lower_ascii((unsigned char)src[k]);

		if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
			return -1;
		dst[k] = (char)c;
	}
	return 0;
}

/* The schema's rule, which also keeps "alice@example.com" from meaning two users. */
static int username_ok(const char *s, size_t n)
{
	for (size_t k = 0; k < n; k++) {
		unsigned char c = (unsigned char)s[k];

		if (c < 0x20 || c == 0x7f || c == ':' || c == '@')
			return 0;
	}
	return 1;
}

static const char *user_ranges_check(const snap_user_info_t *in)
{
	const char *err;

	if (in->nranges > SNAP_USER_RANGES)
		return "too many ranges";
	if (in->nranges > 0 && in->ranges == NULL)
		return "no ranges given";
	for (unsigned k = 0; k < in->nranges; k++)
		if ((err = range_check(&in->ranges[k])) != NULL)
			return err;
	return NULL;
}

static const char *user_ha1s(snap_user_sh_t *u, const snap_user_info_t *in)
{
	if (ha1_copy(u->ha1_md5, in->ha1_md5, 32) < 0)
		return "bad HA1: ha1_md5 is not 32 hex digits";
	if (ha1_copy(u->ha1_sha256, in->ha1_sha256, 64) < 0)
		return "bad HA1: ha1_sha256 is not 64 hex digits";
	/* "username@" and any domain is no string a client could hash. */
	if (u->domain[0] == '\0' && (is_set(in->ha1_md5_full) || is_set(in->ha1_sha256_full)))
		return "bad HA1: a full-URI HA1 needs a domain";
	if (ha1_copy(u->ha1_md5_full, in->ha1_md5_full, 32) < 0)
		return "bad HA1: ha1_md5_full is not 32 hex digits";
	if (ha1_copy(u->ha1_sha256_full, in->ha1_sha256_full, 64) < 0)
		return "bad HA1: ha1_sha256_full is not 64 hex digits";
	return NULL;
}

/* A user as put, checked and in the head's format (range_off and next aside), before it touches the model. */
static const char *user_in_make(const snap_model_t *m, const snap_user_info_t *in, snap_user_sh_t *u)
{
	const char *domain = in->domain ? in->domain : "";
	size_t ulen = in->username ? strlen(in->username) : 0, dlen = strlen(domain);
	int64_t slot = id_map_get(&m->account_ids, in->account_id);
	const char *err;

	if (slot < 0)
		return "unknown account";
	if (ulen == 0)
		return "username empty";
	if (ulen > SNAP_USER_MAX)
		return "username too long";
	if (!username_ok(in->username, ulen))
		return "bad character in username";
	if (dlen > SNAP_DOMAIN_MAX)
		return "domain too long";
	if ((err = user_ranges_check(in)) != NULL)
		return err;
	/* Zeroed padding and string tails: a head's bytes stay a function of its content. */
	memset(u, 0, sizeof(*u));
	u->id = in->id;
	u->account = (uint32_t)slot;
	u->next = NONE;
	u->active = in->active ? 1 : 0;
	u->restrict_sources = in->restrict_sources ? 1 : 0;
	u->nranges = (uint16_t)in->nranges;
	memcpy(u->username, in->username, ulen);
	for (size_t k = 0; k < dlen; k++)
		u->domain[k] = (char)snap_lower_ascii((unsigned char)domain[k]);
	return user_ha1s(u, in);
}

/* The user holding u's username and domain, or NONE. */
static uint32_t user_by_name(const snap_model_t *m, uint32_t hash, const snap_user_sh_t *u)
{
	for (uint32_t i = *user_bucket(m, hash); i != NONE; i = m->users[i].next)
		if (m->umeta[i].hash == hash && strcmp(m->users[i].username, u->username) == 0 &&
		    strcmp(m->users[i].domain, u->domain) == 0)
			return i;
	return NONE;
}

/* A put that changes nothing dirties nothing, as for rules. */
static int user_same(const snap_model_t *m, const snap_user_sh_t *have, const snap_user_sh_t *u,
                     const tg_range_t *ranges)
{
	snap_user_sh_t a;

	memcpy(&a, u, sizeof(a));
	a.next = have->next;
	a.range_off = have->range_off;
	if (memcmp(&a, have, sizeof(a)) != 0)
		return 0;
	for (unsigned k = 0; k < u->nranges; k++)
		if (!range_same(&m->uranges[have->range_off + k], &ranges[k]))
			return 0;
	return 1;
}

/* The counts after a put that replaces have (or not) and evicts evict (or not). NULL: within capacity. */
static const char *user_room(const snap_model_t *m, int64_t have, uint32_t evict, const snap_user_sh_t *u)
{
	uint64_t n = (uint64_t)m->nusers + (have < 0) - (evict != NONE);
	uint64_t r = (uint64_t)m->range_live + u->nranges;

	r -= have >= 0 ? m->users[have].nranges : 0;
	r -= evict != NONE ? m->users[evict].nranges : 0;
	if (have < 0 && n > m->cap_users)
		return "no room for another user";
	if (r > m->range_cap)
		return "too many allowed source ranges in total";
	return NULL;
}

static int users_grow(snap_model_t *m)
{
	if (m->nusers < m->alloc_users)
		return 0;

	uint32_t want = m->alloc_users ? m->alloc_users * 2 : 64;
	snap_user_sh_t *u = realloc(m->users, (size_t)want * sizeof(*u));

	if (u == NULL)
		return -1;
	m->users = u;

	muser_t *mu = realloc(m->umeta, (size_t)want * sizeof(*mu));

	if (mu == NULL)
		return -1;
	m->umeta = mu;
	m->alloc_users = want;
	return 0;
}

/*
 * Everything a put may need, before it changes anything: a slot in the
 * arrays and the id map for a new user, buckets for n_after users, room
 * for append ranges at the end of the range array. Returns 0 or -1.
 */
static int user_reserve(snap_model_t *m, int fresh, uint32_t n_after, uint32_t append)
{
	if (fresh && (users_grow(m) < 0 || id_map_reserve(&m->user_ids) < 0))
		return -1;
	if ((uint64_t)n_after * 2 > (uint64_t)1 << m->ubucket_bits &&
	    users_rehash(m, snap_user_bucket_bits(n_after)) < 0)
		return -1;
	if (append > 0 && m->range_used + append > m->alloc_ranges) {
		uint32_t want = 2 * (m->range_live + append); /* range_cap keeps this far from wrapping */

		return ranges_pack(m, want > 256 ? want : 256);
	}
	return 0;
}

/* Writes u over user i (live or the fresh end of the array), reserved for. */
static void user_store(snap_model_t *m, uint32_t i, snap_user_sh_t *u, uint32_t hash,
                       const tg_range_t *ranges, int fresh)
{
	snap_user_sh_t *cur = &m->users[i];
	uint32_t old_n = fresh ? 0 : cur->nranges, off;

	if (!fresh) {
		*user_chain_ref(m, i) = cur->next;
		user_acct_unlink(m, i);
	}
	/* Ranges that fit where the old ones were stay there; more go at the end, leaving a hole. */
	if (u->nranges == 0) {
		off = 0;
	} else if (u->nranges <= old_n) {
		off = cur->range_off;
	} else {
		off = m->range_used;
		m->range_used += u->nranges;
	}
	for (unsigned k = 0; k < u->nranges; k++)
		range_store(&m->uranges[off + k], &ranges[k]);
	m->range_live = m->range_live - old_n + u->nranges;
	u->range_off = off;
	memcpy(cur, u, sizeof(*cur));
	m->umeta[i].hash = hash;
	m->umeta[i].mark = m->mark;
	user_chain_link(m, i);
	user_acct_link(m, i);
}

/*
 * The name's holder under another id is refused, but for a full load's
 * stale row: see snapshot.h. Checks, then reserves, then evicts and
 * stores: a refused put leaves the model as it was.
 */
int snap_model_user_put(snap_model_t *m, const snap_user_info_t *in, const char **err)
{
	const char *dummy;
	snap_user_sh_t u;
	uint32_t hash, holder, evict = NONE, old_n;
	int64_t have;

	if (err == NULL)
		err = &dummy;
	if ((*err = user_in_make(m, in, &u)) != NULL)
		return -1;
	hash = (uint32_t)snap_user_hash(u.username, strlen(u.username), u.domain, strlen(u.domain));
	have = id_map_get(&m->user_ids, u.id);
	holder = user_by_name(m, hash, &u);
	if (holder != NONE && (int64_t)holder != have) {
		if (!m->in_load || m->umeta[holder].mark == m->mark) {
			*err = "another user already has this username and domain";
			return -1;
		}
		evict = holder;
	}
	if (have >= 0 && evict == NONE && user_same(m, &m->users[have], &u, in->ranges)) {
		m->umeta[have].mark = m->mark;
		return 0;
	}
	if ((*err = user_room(m, have, evict, &u)) != NULL)
		return -1;
	old_n = have >= 0 ? m->users[have].nranges : 0;
	if (user_reserve(m, have<0, m->nusers + (have < 0) - (evict != NONE), u.nranges> old_n ? u.nranges
	                                                                                       : 0) < 0) {
		*err = "out of memory";
		return -1;
	}
	if (evict != NONE) {
		user_remove(m, evict);
		have = id_map_get(&m->user_ids, u.id); /* the last user may have moved into the hole */
	}
	if (have >= 0) {
		user_store(m, (uint32_t)have, &u, hash, in->ranges, 0);
		return 0;
	}
	id_map_put(&m->user_ids, u.id, m->nusers);
	user_store(m, m->nusers++, &u, hash, in->ranges, 1);
	return 0;
}

uint32_t snap_model_nusers(const snap_model_t *m)
{
	return m->nusers;
}

int snap_model_foreach_user(const snap_model_t *m, snap_user_fn fn, void *arg)
{
	for (uint32_t i = 0; i < m->nusers; i++) {
		const snap_user_sh_t *u = &m->users[i];
		snap_user_info_t info = {u->id,
		                         m->accounts[u->account].id,
		                         u->username,
		                         u->domain,
		                         u->active,
		                         u->restrict_sources,
		                         u->ha1_md5,
		                         u->ha1_sha256,
		                         u->ha1_md5_full,
		                         u->ha1_sha256_full,
		                         u->nranges > 0 ? &m->uranges[u->range_off] : NULL,
		                         u->nranges};
		int rc = fn(arg, &info);

		if (rc != 0)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* full loads and iteration                                            */

void snap_model_mark_begin(snap_model_t *m)
{
	if (++m->mark == 0)
		m->mark = 1;
	m->in_load = 1;
	m->policy_marked = 0;
}

uint32_t snap_model_sweep(snap_model_t *m)
{
	uint32_t before = m->live_accounts + m->live_rules + m->nusers;

	for (uint32_t s = 0; s < m->nslots; s++)
		if (m->accounts[s].state == SNAP_ACCOUNT_LIVE && m->slots[s].mark != m->mark)
			snap_model_account_del(m, m->accounts[s].id);
	for (uint32_t i = 0; i < m->nused; i++)
		if ((m->rules[i].flags & R_LIVE) && m->rules[i].mark != m->mark)
			rule_remove(m, i);
	/* Downwards: a removal moves the last user, already seen, into the hole. */
	for (uint32_t i = m->nusers; i-- > 0;)
		if (m->umeta[i].mark != m->mark)
			user_remove(m, i);
	m->in_load = 0;
	m->need_base = 1;
	return before - (m->live_accounts + m->live_rules + m->nusers);
}

/*
 * An account's block as the info's three arrays: text (POLICY_BLOCK_MAX
 * bytes) gets the entries NUL-terminated, each in place of its length
 * byte's successor, so it needs no more room than the block.
 */
typedef struct policy_text {
	char bytes[POLICY_BLOCK_MAX];
	const char *allowed[SNAP_DEST_PREFIXES], *denied[SNAP_DEST_PREFIXES], *codecs[SNAP_CODECS];
} policy_text_t;

static void policy_split(const uint8_t *p, unsigned n, char **out, const char **list)
{
	for (unsigned k = 0; k < n; k++) {
		list[k] = *out;
		memcpy(*out, p + 1, p[0]);
		(*out)[p[0]] = '\0';
		*out += p[0] + 1;
		p += 1 + p[0];
	}
}

static void policy_decode(const snap_account_sh_t *a, const uint8_t *block, policy_text_t *t,
                          snap_account_info_t *info)
{
	char *out = t->bytes;

	if (block == NULL) /* no lists: the info's stay NULL and 0 */
		return;
	policy_split(block, a->nallowed, &out, t->allowed);
	policy_split(block + a->allowed_len, a->ndenied, &out, t->denied);
	policy_split(block + a->allowed_len + a->denied_len, a->ncodecs, &out, t->codecs);
	info->allowed_prefixes = t->allowed;
	info->nallowed = a->nallowed;
	info->denied_prefixes = t->denied;
	info->ndenied = a->ndenied;
	info->restricted_codecs = t->codecs;
	info->ncodecs = a->ncodecs;
}

int snap_model_foreach_account(const snap_model_t *m, snap_account_fn fn, void *arg)
{
	policy_text_t text;

	for (uint32_t s = 0; s < m->nslots; s++) {
		const snap_account_sh_t *a = &m->accounts[s];

		if (a->state != SNAP_ACCOUNT_LIVE)
			continue;

		snap_account_info_t info;
		int rc;

		memset(&info, 0, sizeof(info));
		info.id = a->id;
		info.name = a->name;
		info.active = (int)a->active;
		info.max_channels = a->max_channels;
		info.max_cps = a->max_cps;
		info.slot = s;
		info.cps_burst = a->cps_burst;
		policy_decode(a, m->slots[s].policy, &text, &info);
		rc = fn(arg, &info);
		if (rc != 0)
			return rc;
	}
	return 0;
}

int snap_model_foreach_rule(const snap_model_t *m, snap_rule_fn fn, void *arg)
{
	for (uint32_t i = 0; i < m->nused; i++) {
		const mrule_t *r = &m->rules[i];

		if (!(r->flags & R_LIVE))
			continue;

		snap_rule_info_t info;
		int rc;

		rule_info_of(m, r, &info);
		rc = fn(arg, &info);

		if (rc != 0)
			return rc;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* writing a base and a head                                           */

static void entry_write(snap_rule_sh_t *e, const mrule_t *r, const tg_range_t *range)
{
	/* Field by field over zeroes: padding never carries stale bytes into the checksum. */
	memset(e, 0, sizeof(*e));
	e->id = r->id;
	e->range.first = range->first;
	e->range.last = range->last;
	e->range.family = range->family;
	e->account = r->slot;
	e->max_channels = r->max_channels;
	e->max_cps = r->max_cps;
	e->cps_burst = r->cps_burst;
	e->port = r->port;
	e->active = 1;
	e->direction = r->direction;
	e->prefix_len = r->prefix_len;
	memcpy(e->tech_prefix, r->prefix, SNAP_PREFIX_MAX);
}

/* Appends the rule's entries at region + off. Returns the new count, or -1 (ENOSPC). */
static int64_t entries_put(const mrule_t *r, unsigned char *region, size_t size, size_t off, uint32_t n)
{
	const tg_range_t *ranges = rule_ranges(r);

	if (!r->active || r->nranges == 0)
		return n;
	if (off + ((size_t)n + r->nranges) * sizeof(snap_rule_sh_t) > size) {
		errno = ENOSPC;
		return -1;
	}
	for (unsigned k = 0; k < r->nranges; k++)
		entry_write((snap_rule_sh_t *)(region + off) + n++, r, &ranges[k]);
	return n;
}

_Static_assert(offsetof(snap_base_sh_t, checksum) == 8 && offsetof(snap_head_sh_t, checksum) == 8 &&
                       SNAP_HASHED_FROM == 16,
               "base and head share where the checksum sits and what it covers");

/* Header in, checksum over the whole region: it is now ready to publish. */
static void region_seal(unsigned char *region, const void *hdr, size_t hdr_len, size_t size)
{
	memcpy(region, hdr, hdr_len);
	memset(region + hdr_len, 0, SNAP_ALIGN8(hdr_len) - hdr_len);

	uint64_t sum = snap_region_hash(region, size);

	memcpy(region + offsetof(snap_base_sh_t, checksum), &sum, sizeof(sum));
}

/* Every live rule's entries, indexed. Returns the bytes used, or 0 with errno. */
static size_t base_write(const snap_model_t *m, unsigned char *arena, size_t size, uint64_t gen,
                         uint64_t built_ms)
{
	snap_base_sh_t h;
	int64_t n = 0;
	size_t end;

	memset(&h, 0, sizeof(h));
	h.index.off_entries = SNAP_ALIGN8(sizeof(h));
	for (uint32_t i = 0; i < m->nused && n >= 0; i++) {
		if (!(m->rules[i].flags & R_LIVE))
			continue;

		int64_t before = n;

		n = entries_put(&m->rules[i], arena, size, h.index.off_entries, (uint32_t)n);
		h.nrules += n > before;
	}
	if (n < 0)
		return 0;
	h.index.nentries = (uint32_t)n;
	if ((end = snap_index_build(arena, size, &h.index, 0)) == 0)
		return 0;
	h.magic = SNAP_BASE_MAGIC;
	h.size = end;
	h.generation = gen;
	h.built_ms = built_ms;
	region_seal(arena, &h, sizeof(h), end);
	return end;
}

static int id_cmp(const void *pa, const void *pb)
{
	int64_t a = *(const int64_t *)pa, b = *(const int64_t *)pb;

	return a < b ? -1 : a > b;
}

_Static_assert(sizeof(snap_user_sh_t) % 8 == 0 && sizeof(tg_range_t) % 8 == 0 &&
                       (sizeof(uint32_t) << SNAP_USER_BUCKET_BITS_MIN) % 8 == 0,
               "user tables end 8-aligned: no padding between them to zero");

/* The users, their buckets and their ranges, from off: three copies. Returns the end, or 0 (ENOSPC). */
static size_t head_users(const snap_model_t *m, unsigned char *arena, size_t size, snap_head_sh_t *h,
                         size_t off)
{
	size_t users = (size_t)m->nusers * sizeof(snap_user_sh_t);
	size_t buckets = sizeof(uint32_t) << m->ubucket_bits;
	size_t ranges = (size_t)m->range_used * sizeof(tg_range_t);

	assert(m->range_used == m->range_live); /* publish() packed them */
	h->off_users = off;
	h->off_user_buckets = h->off_users + users;
	h->off_user_ranges = h->off_user_buckets + buckets;
	if (h->off_user_ranges + ranges > size) {
		errno = ENOSPC;
		return 0;
	}
	if (users > 0)
		memcpy(arena + h->off_users, m->users, users);
	memcpy(arena + h->off_user_buckets, m->ubuckets, buckets);
	if (ranges > 0)
		memcpy(arena + h->off_user_ranges, m->uranges, ranges);
	h->nusers = m->nusers;
	h->user_bucket_bits = m->ubucket_bits;
	h->nuser_ranges = m->range_used;
	return h->off_user_ranges + ranges;
}

/* The policy pool, from off, zero-padded to 8 bytes. Returns the end, or 0 (ENOSPC). */
static size_t head_policy(const snap_model_t *m, unsigned char *arena, size_t size, snap_head_sh_t *h,
                          size_t off)
{
	size_t end = off + SNAP_ALIGN8(m->pool_used);

	assert(!m->pool_stale); /* publish() packed it */
	if (end > size) {
		errno = ENOSPC;
		return 0;
	}
	if (m->pool_used > 0)
		memcpy(arena + off, m->pool, m->pool_used);
	memset(arena + off + m->pool_used, 0, end - off - m->pool_used);
	h->off_policy = off;
	h->policy_bytes = m->pool_used;
	return end;
}

/* Account slots, (with_overlay) the sorted tombstones, the users and the policy pool, from off. Returns
 * the end, or 0 (ENOSPC). */
static size_t head_tables(snap_model_t *m, unsigned char *arena, size_t size, snap_head_sh_t *h,
                          int with_overlay)
{
	size_t acc = (size_t)m->nslots * sizeof(snap_account_sh_t);
	size_t tombs = with_overlay ? (size_t)m->ntombs * sizeof(int64_t) : 0;

	h->off_accounts = SNAP_ALIGN8(sizeof(*h));
	h->off_tombs = h->off_accounts + SNAP_ALIGN8(acc);
	h->ntombs = with_overlay ? m->ntombs : 0;
	if (h->off_tombs + SNAP_ALIGN8(tombs) > size) {
		errno = ENOSPC;
		return 0;
	}
	if (acc > 0)
		memcpy(arena + h->off_accounts, m->accounts, acc);
	if (tombs > 0) {
		/* The model's list gains ids in no order; sorting it in place keeps later sorts short. */
		qsort(m->tombs, m->ntombs, sizeof(int64_t), id_cmp);
		memcpy(arena + h->off_tombs, m->tombs, tombs);
	}
	size_t end = head_users(m, arena, size, h, h->off_tombs + SNAP_ALIGN8(tombs));

	return end == 0 ? 0 : head_policy(m, arena, size, h, end);
}

/* The entries of every dirty rule, from off. Returns how many, or -1 (ENOSPC). */
static int64_t overlay_entries(const snap_model_t *m, unsigned char *arena, size_t size, size_t off)
{
	int64_t n = 0;

	for (uint32_t k = 0; k < m->ndirty && n >= 0; k++)
		n = entries_put(&m->rules[m->dirty[k]], arena, size, off, (uint32_t)n);
	return n;
}

/* Accounts, tombstones and overlay (with_overlay), indexed. Returns the bytes used, or 0 with errno. */
static size_t head_write(snap_model_t *m, unsigned char *arena, size_t size, snap_head_sh_t *h,
                         int with_overlay)
{
	size_t end = head_tables(m, arena, size, h, with_overlay);
	int64_t n = 0;

	if (end == 0)
		return 0;
	h->overlay.off_entries = end;
	if (with_overlay && (n = overlay_entries(m, arena, size, end)) < 0)
		return 0;
	h->overlay.nentries = (uint32_t)n;
	if ((end = snap_index_build(arena, size, &h->overlay, 1)) == 0)
		return 0;
	h->magic = SNAP_HEAD_MAGIC;
	h->size = end;
	h->naccounts = m->nslots;
	h->live_accounts = m->live_accounts;
	h->nrules = m->live_rules;
	h->overlay_rules = with_overlay ? m->ov_rules : 0;
	region_seal(arena, h, sizeof(*h), end);
	return end;
}

/* ------------------------------------------------------------------ */
/* publishing                                                          */

/*
 * Drops stale and repeated indices from the dirty list (a rule deleted,
 * its slab slot reused) and counts what the overlay would hold.
 */
static void collect_dirty(snap_model_t *m)
{
	uint32_t n = 0;

	m->ov_rules = 0;
	m->ov_entries = 0;
	for (uint32_t k = 0; k < m->ndirty; k++) {
		mrule_t *r = &m->rules[m->dirty[k]];

		if ((r->flags & (R_LIVE | R_DIRTY | R_SEEN)) != (R_LIVE | R_DIRTY))
			continue;
		r->flags |= R_SEEN;
		m->dirty[n++] = m->dirty[k];
		if (r->active && r->nranges > 0) {
			m->ov_rules++;
			m->ov_entries += r->nranges;
		}
	}
	for (uint32_t k = 0; k < n; k++)
		m->rules[m->dirty[k]].flags &= (uint8_t)~R_SEEN;
	m->ndirty = n;
}

static const snap_head_sh_t *current_head(shm_t *shm, uint64_t cur)
{
	/* The loader wrote it and nothing rewrites the current head: no epoch needed to read it. */
	return cur == 0 ? NULL : shm->head_arena[cur & 1];
}

/* Why this publish must be a compaction, or NULL for a delta. */
static const char *compaction_reason(const snap_model_t *m, shm_t *shm, uint64_t cur, int force)
{
	const snap_head_sh_t *h = current_head(shm, cur);

	if (force)
		return "forced";
	if (!m->has_base)
		return "first";
	if (m->need_base)
		return "full load";
	if (h == NULL || h->base_generation != m->base_gen || h->base_arena != m->base_arena)
		return "base replaced";
	if (m->ov_entries > m->ov_cap)
		return "overlay full";
	if (m->ntombs > m->ov_cap)
		return "tombstones full";
	if (m->deleted_slots > m->reclaim_at)
		return "account slots";
	return NULL;
}

static int publish_delta(snap_model_t *m, shm_t *shm, uint64_t cur, uint64_t built_ms,
                         snap_publish_stats_t *st)
{
	snap_head_sh_t h;
	uint64_t gen = cur + 1;

	if (!snap_head_arena_free(shm))
		return 1;
	memset(&h, 0, sizeof(h));
	h.generation = gen;
	h.base_generation = m->base_gen;
	h.base_arena = m->base_arena;
	h.built_ms = built_ms;
	if ((st->head_bytes = head_write(m, shm->head_arena[gen & 1], shm->head_size, &h, 1)) == 0)
		return -1;
	snap_publish(shm, gen);
	st->kind = SNAP_PUBLISH_DELTA;
	st->reason = NULL;
	st->base_bytes = ((const snap_base_sh_t *)shm->base_arena[m->base_arena])->size;
	st->overlay_rules = m->ov_rules;
	st->overlay_entries = m->ov_entries;
	st->tombstones = m->ntombs;
	return 0;
}

/* Room for every tombstone the new base can give rise to. Returns 0 or -1 (ENOMEM). */
static int tombs_reserve(snap_model_t *m)
{
	uint32_t want = 0;

	for (uint32_t i = 0; i < m->nused; i++)
		want += (m->rules[i].flags & R_LIVE) && m->rules[i].active && m->rules[i].nranges > 0;
	if (want <= m->cap_tombs)
		return 0;

	int64_t *p = realloc(m->tombs, (size_t)want * sizeof(int64_t));

	if (p == NULL) {
		errno = ENOMEM;
		return -1;
	}
	m->tombs = p;
	m->cap_tombs = want;
	return 0;
}

/* The new base is published: it holds every live rule, so start the change lists afresh. */
static void compaction_done(snap_model_t *m, unsigned b, uint64_t gen)
{
	for (uint32_t i = 0; i < m->nused; i++) {
		mrule_t *r = &m->rules[i];

		if (r->flags & R_LIVE)
			r->flags = R_LIVE | (r->active && r->nranges > 0 ? R_IN_BASE : 0);
	}
	m->ndirty = 0;
	m->ntombs = 0;
	for (uint32_t s = 0; s < m->nslots; s++) {
		if (m->accounts[s].state != SNAP_ACCOUNT_DELETED)
			continue;
		memset(&m->accounts[s], 0, sizeof(m->accounts[s]));
		m->slots[s].next_free = m->free_slot;
		m->free_slot = s;
	}
	m->deleted_slots = 0;
	m->has_base = 1;
	m->need_base = 0;
	m->base_arena = b;
	m->base_gen = gen;
}

static int publish_compaction(snap_model_t *m, shm_t *shm, uint64_t cur, uint64_t built_ms,
                              snap_publish_stats_t *st)
{
	const snap_head_sh_t *now = current_head(shm, cur);
	unsigned b = now == NULL ? 0 : 1 - now->base_arena;
	uint64_t gen = cur + 1;
	snap_head_sh_t h;

	/* Both arenas checked before a byte is written: a busy one costs nothing. */
	if (!snap_head_arena_free(shm) || !snap_base_arena_free(shm, b))
		return 1;
	if (tombs_reserve(m) < 0)
		return -1;
	if ((st->base_bytes = base_write(m, shm->base_arena[b], shm->base_size, gen, built_ms)) == 0)
		return -1;
	memset(&h, 0, sizeof(h));
	h.generation = gen;
	h.base_generation = gen;
	h.base_arena = b;
	h.built_ms = built_ms;
	if ((st->head_bytes = head_write(m, shm->head_arena[gen & 1], shm->head_size, &h, 0)) == 0)
		return -1;
	snap_publish(shm, gen);
	compaction_done(m, b, gen);
	st->kind = SNAP_PUBLISH_COMPACTION;
	st->overlay_rules = 0;
	st->overlay_entries = 0;
	st->tombstones = 0;
	return 0;
}

/*
 * Every live account's lists, packed in slot order into the pool heads
 * copy, each account's policy_off set to where its lists went. Returns 0,
 * or -1 (out of memory) with the old pool kept and still stale.
 */
static int pool_pack(snap_model_t *m)
{
	uint32_t n = 0;

	assert(m->policy_live <= UINT32_MAX);
	if (m->policy_live > m->pool_alloc) {
		uint8_t *p = realloc(m->pool, (size_t)m->policy_live);

		if (p == NULL)
			return -1;
		m->pool = p;
		m->pool_alloc = (uint32_t)m->policy_live;
	}
	for (uint32_t s = 0; s < m->nslots; s++) {
		const mslot_t *slot = &m->slots[s];

		m->accounts[s].policy_off = slot->policy_len > 0 ? n : 0;
		if (slot->policy_len > 0)
			memcpy(m->pool + n, slot->policy, slot->policy_len);
		n += slot->policy_len;
	}
	assert(n == m->policy_live);
	m->pool_used = n;
	m->pool_stale = 0;
	return 0;
}

static int publish(snap_model_t *m, shm_t *shm, uint64_t built_ms, int force, snap_publish_stats_t *out)
{
	uint64_t t0 = tg_now_ns(), cur = atomic_load(&shm->snapctl->generation);
	snap_publish_stats_t st;
	const char *why;
	int rc;

	/* Puts refuse users past their capacity; the check stands guard over the head arena all the same. */
	if (m->live_accounts > m->cap_accounts || m->live_rules > m->cap_rules || m->nusers > m->cap_users ||
	    m->range_live > m->range_cap || m->policy_live > m->policy_cap) {
		errno = ENOSPC;
		return -1;
	}
	/* Holes out before any head copies the ranges; the same allocation as now. */
	if (m->range_used != m->range_live && ranges_pack(m, m->alloc_ranges) < 0) {
		errno = ENOMEM;
		return -1;
	}
	if (m->pool_stale && pool_pack(m) < 0) {
		errno = ENOMEM;
		return -1;
	}
	memset(&st, 0, sizeof(st));
	collect_dirty(m);
	why = compaction_reason(m, shm, cur, force);
	if (why == NULL) {
		rc = publish_delta(m, shm, cur, built_ms, &st);
		if (rc != -1 || errno != ENOSPC)
			goto out;
		why = "overlay bytes"; /* deeply overlapping changes: a base has the room */
	}
	st.reason = why;
	rc = publish_compaction(m, shm, cur, built_ms, &st);
out:
	if (rc == 0 && out != NULL) {
		st.generation = cur + 1;
		st.base_generation = m->base_gen;
		st.accounts = m->live_accounts;
		st.rules = m->live_rules;
		st.build_us = (tg_now_ns() - t0) / 1000;
		*out = st;
	}
	return rc;
}

int snap_model_publish(snap_model_t *m, shm_t *shm, uint64_t built_ms, snap_publish_stats_t *st)
{
	return publish(m, shm, built_ms, 0, st);
}

int snap_model_publish_base(snap_model_t *m, shm_t *shm, uint64_t built_ms, snap_publish_stats_t *st)
{
	return publish(m, shm, built_ms, 1, st);
}
