/*
 * The loader's set of changed rows waiting to be fetched. Plain memory,
 * no I/O: the loader adds ids as notifications arrive and takes them as
 * sorted arrays when it fetches.
 *
 * Each table keeps its ids in an array (for sorting and for the query's
 * parameter) and an open-addressing index over it (so a row changed a
 * thousand times is fetched once). The index is sized once for the limit
 * and never grows, so adding is O(1) and never allocates.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sql/pending.h"

typedef struct idset {
	int64_t *ids;
	uint32_t n;
	uint32_t *slots; /* index into ids + 1; 0 = empty */
	uint32_t mask;   /* slots - 1, a power of two at least twice the limit */
	int sorted;
} idset_t;

struct pending {
	idset_t set[PENDING_NTABLES];
	uint32_t limit;
	int overflowed;
};

static uint32_t slot_of(int64_t id, uint32_t mask)
{
	uint64_t h = (uint64_t)id * 0x9e3779b97f4a7c15ULL;

	return (uint32_t)(h >> 32) & mask;
}

pending_t *pending_new(uint32_t limit)
{
	pending_t *p = calloc(1, sizeof(*p));
	uint32_t nslots = 16;

	if (p == NULL)
		return NULL;
	while (nslots < 2 * (limit + 1))
		nslots *= 2;
	p->limit = limit;
	for (int t = 0; t < PENDING_NTABLES; t++) {
		p->set[t].ids = malloc(sizeof(int64_t) * (limit + 1));
		p->set[t].slots = calloc(nslots, sizeof(uint32_t));
		p->set[t].mask = nslots - 1;
		if (p->set[t].ids == NULL || p->set[t].slots == NULL) {
			pending_free(p);
			return NULL;
		}
	}
	return p;
}

void pending_free(pending_t *p)
{
	if (p == NULL)
		return;
	for (int t = 0; t < PENDING_NTABLES; t++) {
		free(p->set[t].ids);
		free(p->set[t].slots);
	}
	free(p);
}

static void set_clear(idset_t *s)
{
	/* The table is small (a few hundred KiB at most) next to the query that follows. */
	if (s->n > 0)
		memset(s->slots, 0, sizeof(uint32_t) * ((size_t)s->mask + 1));
	s->n = 0;
	s->sorted = 1;
}

void pending_clear(pending_t *p)
{
	for (int t = 0; t < PENDING_NTABLES; t++)
		set_clear(&p->set[t]);
	p->overflowed = 0;
}

void pending_overflow(pending_t *p)
{
	pending_clear(p);
	p->overflowed = 1;
}

int pending_add(pending_t *p, enum pending_table t, int64_t id)
{
	idset_t *s = &p->set[t];
	uint32_t i;

	if (p->overflowed)
		return 1;
	for (i = slot_of(id, s->mask); s->slots[i] != 0; i = (i + 1) & s->mask)
		if (s->ids[s->slots[i] - 1] == id)
			return 0;
	if (pending_total(p) >= p->limit) {
		pending_overflow(p);
		return 1;
	}
	s->ids[s->n++] = id;
	s->slots[i] = s->n;
	s->sorted = 0;
	return 0;
}

int pending_overflowed(const pending_t *p)
{
	return p->overflowed;
}

uint32_t pending_count(const pending_t *p, enum pending_table t)
{
	return p->set[t].n;
}

uint32_t pending_total(const pending_t *p)
{
	uint32_t n = 0;

	for (int t = 0; t < PENDING_NTABLES; t++)
		n += p->set[t].n;
	return n;
}

int pending_empty(const pending_t *p)
{
	return !p->overflowed && pending_total(p) == 0;
}

static int id_cmp(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	return (x > y) - (x < y);
}

/* Sorting moves ids, so the index is rebuilt; callers sort once per fetch. */
const int64_t *pending_sorted(pending_t *p, enum pending_table t)
{
	idset_t *s = &p->set[t];

	if (s->sorted)
		return s->ids;
	qsort(s->ids, s->n, sizeof(int64_t), id_cmp);
	memset(s->slots, 0, sizeof(uint32_t) * ((size_t)s->mask + 1));
	for (uint32_t k = 0; k < s->n; k++) {
		uint32_t i = slot_of(s->ids[k], s->mask);

		while (s->slots[i] != 0)
			i = (i + 1) & s->mask;
		s->slots[i] = k + 1;
	}
	s->sorted = 1;
	return s->ids;
}

char *pending_array_text(pending_t *p, enum pending_table t)
{
	const int64_t *ids = pending_sorted(p, t);
	uint32_t n = p->set[t].n;
	/* "-9223372036854775808," is 21 bytes; braces and the NUL take 3. */
	size_t cap = (size_t)n * 21 + 3, used = 0;
	char *out = malloc(cap);

	if (out == NULL)
		return NULL;
	out[used++] = '{';
	for (uint32_t k = 0; k < n; k++)
		used += (size_t)snprintf(out + used, cap - used, "%s%" PRId64, k ? "," : "", ids[k]);
	out[used++] = '}';
	out[used] = '\0';
	return out;
}
