/*
 * The provisioning snapshot: accounts and IP rules, laid out in one arena
 * of shared memory with offsets only, immutable once published.
 *
 * Publication (writer: the loader, alone):
 *   generation g lives in arena g & 1. To publish g+1 the loader builds it
 *   in arena (g+1) & 1, which last held g-1; it may do so only when no
 *   worker's epoch slot holds g-1 (snap_arena_for_next() checks and
 *   returns NULL otherwise: try again shortly, never wait). Then one
 *   atomic store of snapctl.generation = g+1 publishes it.
 *
 * Readers (workers):
 *   snap_acquire(): g = load(generation); store(slot.epoch, g);
 *   if load(generation) != g, retry. The re-check closes the window where
 *   a reader announces a generation the writer has already moved past:
 *   every load/store is seq_cst, so either the writer's scan after its
 *   publish sees our epoch, or our re-check sees its publish.
 *   snap_release(): store(slot.epoch, 0). Hold a snapshot for one batch of
 *   packets, never across a wait.
 *   The master stores 0 in a dead worker's slot, so a crash mid-read pins
 *   nothing.
 *
 * Lookup index: the rules' ranges cut the 128-bit address space into
 * elementary intervals; each interval lists the rules covering it, most
 * specific first (port-bound before portless, longer tech prefix before
 * shorter, narrower range before wider, then lower id). A lookup is one
 * binary search plus a short walk of that list, so its cost grows with
 * log(rules) and with how many rules overlap at one address, not with the
 * number of rules.
 */
#ifndef TG_SNAPSHOT_H
#define TG_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/addr.h"
#include "shm/shm.h"

#define SNAP_MAGIC      0x74675f736e617031ULL /* "tg_snap1" */
#define SNAP_NAME_MAX   64
#define SNAP_PREFIX_MAX 32

enum snap_dir {
	SNAP_DIR_INGRESS = 1, /* customer to us */
	SNAP_DIR_EGRESS = 2,  /* downstream to customer */
	SNAP_DIR_BOTH = 3,
};

typedef struct snap_sh {
	uint64_t magic;      /* SNAP_MAGIC */
	uint64_t generation; /* as published */
	uint64_t built_ms;   /* wall clock */
	uint64_t size;       /* bytes used, header included */
	uint32_t naccounts, nrules, nivals, ncands;
	uint64_t off_accounts, off_rules, off_ivals, off_cands; /* from the snapshot's start */
	uint64_t checksum; /* FNV-1a 64 of bytes [sizeof(snap_sh_t), size) */
} snap_sh_t;

typedef struct snap_account_sh {
	int64_t id;            /* tollgate.accounts.id */
	uint32_t active;       /* 0/1 */
	uint32_t max_channels; /* 0 = unlimited */
	uint32_t max_cps;      /* 0 = unlimited */
	uint32_t pad;
	char name[SNAP_NAME_MAX]; /* NUL-terminated */
} snap_account_sh_t;

typedef struct snap_rule_sh {
	int64_t id; /* tollgate.ip_rules.id */
	tg_range_t range;
	uint32_t account;                  /* index into the accounts array */
	uint16_t port;                     /* 0 = any source port */
	uint8_t active;                    /* 0/1 */
	uint8_t direction;                 /* enum snap_dir */
	uint8_t prefix_len;                /* strlen(tech_prefix) */
	char tech_prefix[SNAP_PREFIX_MAX]; /* NUL-terminated, "" = none */
} snap_rule_sh_t;

typedef struct snap_ival_sh {
	tg_ip_t start;     /* covers [start, next interval's start - 1] */
	uint32_t cand_off; /* first entry in the candidates array */
	uint32_t cand_n;   /* 0: no rule covers this interval */
} snap_ival_sh_t;

enum snap_result {
	SNAP_MATCH,            /* m->rule and m->account set */
	SNAP_NO_ADDRESS,       /* no usable rule covers the address */
	SNAP_NO_FIT,           /* rules cover the address, none fits port/prefix */
	SNAP_ACCOUNT_INACTIVE, /* the best rule's account is inactive; m set */
};

typedef struct snap_match {
	const snap_rule_sh_t *rule;
	const snap_account_sh_t *account;
} snap_match_t;

/*
 * Find the rule for a source. user/user_len: the Request-URI user part, for
 * tech prefixes; user == NULL ignores tech prefixes (in-dialog requests).
 * dir: SNAP_DIR_INGRESS or SNAP_DIR_EGRESS. Inactive rules and rules whose
 * direction excludes dir are skipped as if absent.
 */
int snap_lookup(const snap_sh_t *s, const tg_ip_t *ip, uint16_t port, const char *user, size_t user_len,
                unsigned dir, snap_match_t *m);
const snap_account_sh_t *snap_accounts(const snap_sh_t *s);
const snap_rule_sh_t *snap_rules(const snap_sh_t *s);
uint64_t snap_checksum(const snap_sh_t *s);

/* Readers. */
const snap_sh_t *snap_acquire(shm_t *shm, shm_proc_sh_t *slot); /* NULL: nothing published yet */
void snap_release(shm_proc_sh_t *slot);

/* Writer. */
void *snap_arena_for_next(shm_t *shm, uint64_t *next_gen); /* NULL: a reader still holds it */
void snap_publish(shm_t *shm, uint64_t gen);

/* Building, in the loader's heap, then written into an arena in one pass. */
typedef struct snap_builder snap_builder_t;

snap_builder_t *snap_builder_new(void);
void snap_builder_free(snap_builder_t *b);
uint32_t snap_builder_naccounts(const snap_builder_t *b);
uint32_t snap_builder_nrules(const snap_builder_t *b);
/* Returns 0, or -1 with *err (duplicate id, name too long). */
int snap_builder_account(snap_builder_t *b, int64_t id, const char *name, int active, uint32_t max_channels,
                         uint32_t max_cps, const char **err);
/* Returns 0, or -1 with *err (unknown account, prefix too long, bad direction). */
int snap_builder_rule(snap_builder_t *b, int64_t id, int64_t account_id, const tg_range_t *r, uint16_t port,
                      const char *tech_prefix, int active, unsigned direction, const char **err);
/*
 * Sort, index and write into arena. Returns the bytes used, or 0 when the
 * snapshot does not fit in arena_size (errno = ENOSPC).
 */
size_t snap_builder_write(snap_builder_t *b, void *arena, size_t arena_size, uint64_t generation,
                          uint64_t built_ms);
/* Upper bound of bytes a snapshot of this many accounts and rules needs. */
size_t snap_size_bound(uint32_t accounts, uint32_t rules);

#endif
