/*
 * The rows notifications named and the loader has not applied yet: one
 * deduplicated set of ids per table, bounded. Past the bound the set gives
 * up on ids and only says "overflowed": a full resync is then cheaper than
 * fetching that many rows one by one.
 */
#ifndef TG_PENDING_H
#define TG_PENDING_H

#include <stddef.h>
#include <stdint.h>

enum pending_table {
	PENDING_ACCOUNTS,
	PENDING_RULES,
	PENDING_USERS, /* sip_users */
	PENDING_NTABLES,
};

typedef struct pending pending_t;

/* limit: most distinct ids held, all tables together. NULL when out of memory. */
pending_t *pending_new(uint32_t limit);
void pending_free(pending_t *p);
/* Returns 0, or 1 once the limit is passed (the ids are dropped, overflowed set). */
int pending_add(pending_t *p, enum pending_table t, int64_t id);
/* A change no id describes (TRUNCATE, a bulk statement): only a full resync covers it. */
void pending_overflow(pending_t *p);
int pending_overflowed(const pending_t *p);
uint32_t pending_count(const pending_t *p, enum pending_table t);
uint32_t pending_total(const pending_t *p);
int pending_empty(const pending_t *p);
/* The ids of t in ascending order (sorted in place on the first call after a change). */
const int64_t *pending_sorted(pending_t *p, enum pending_table t);
/* Writes "{1,2,3}" (a bigint[] literal) into a fresh string; NULL when out of memory. */
char *pending_array_text(pending_t *p, enum pending_table t);
void pending_clear(pending_t *p);

#endif
