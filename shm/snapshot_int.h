/*
 * Between shm/snapshot.c (layout, index, lookup, arena protocol) and
 * shm/snapmodel.c (the loader's model, which decides what to publish).
 * Nothing outside shm/ includes this.
 */
#ifndef TG_SNAPSHOT_INT_H
#define TG_SNAPSHOT_INT_H

#include "shm/snapshot.h"

#define SNAP_ALIGN8(n) (((size_t)(n) + 7) & ~(size_t)7)

/* Checksummed part of a base or head: everything after magic and checksum. */
#define SNAP_HASHED_FROM 16

/* Word-wise hash of region bytes [SNAP_HASHED_FROM, size); size a multiple of 8. */
uint64_t snap_region_hash(const void *region, size_t size);

/*
 * Index the ix->nentries entries at region + ix->off_entries: write the
 * intervals and candidate lists after them, within region_size bytes.
 * truncate: end each list after its first catch-all entry (only for an
 * index no tombstone can reach). Returns the end offset, 8-aligned, or 0
 * with errno (ENOSPC, ENOMEM).
 */
size_t snap_index_build(unsigned char *region, size_t region_size, snap_index_sh_t *ix, int truncate);

/* ASCII only: domains are DNS names, and a locale must not change which bucket a name is in. */
static inline unsigned char snap_lower_ascii(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/*
 * SIP users. The hash a user sits under: SipHash of the username, a NUL
 * and the domain folded to lower case (ASCII), so a model and every reader
 * agree on it without carrying a key around. ulen <= SNAP_USER_MAX,
 * dlen <= SNAP_DOMAIN_MAX.
 */
uint64_t snap_user_hash(const char *username, size_t ulen, const char *domain, size_t dlen);
/* Hash buckets for n users: the smallest power of two >= 2n, at least SNAP_USER_BUCKET_BITS_MIN bits. */
#define SNAP_USER_BUCKET_BITS_MIN 4
uint32_t snap_user_bucket_bits(uint32_t users);
/* SNAP_USER_RANGES_TOTAL(users), kept within what a uint32_t range offset can address. */
uint32_t snap_user_range_cap(uint32_t users);
/* SNAP_POLICY_TOTAL(accounts), kept within what a uint32_t pool offset can address. */
uint32_t snap_policy_cap(uint32_t accounts);

/* May the next head be written: no slot holds current - 1? */
int snap_head_arena_free(shm_t *shm);
/* May base arena b be rewritten: no slot holds a generation up to its last head? */
int snap_base_arena_free(shm_t *shm, unsigned b);
/* Publish head gen, written in head arena gen & 1; see the store order in snapshot.h. */
void snap_publish(shm_t *shm, uint64_t gen);

#endif
