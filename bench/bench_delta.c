/*
 * What one provisioning change costs with a million rules loaded: the
 * loader applies it to its model and publishes a delta (a new head: the
 * accounts, the overlay of rules changed since the base, the tombstones),
 * after which a worker uses it from its next batch of packets. The
 * target: every worker within 100 ms at p99.
 *
 * Measured, on a real shm_create() segment sized for the table, with the
 * rule mix of bench_mix.h:
 *   - the initial base build (a compaction), and bytes per rule in shm;
 *   - 200 single changes (add a rule, move a rule to a new address,
 *     delete a rule, deactivate an account), each applied and published
 *     as a delta: p50 / p99 / max microseconds, first over an empty
 *     overlay, then over an overlay nearly full;
 *   - lookups through the view with the overlay empty and nearly full;
 *   - the compaction that follows when the overlay overflows.
 * The peer, measured in the same run: publishing each change the way the
 * gateway did before, as a whole new snapshot (a compaction every time).
 *
 * Prints results; asserts nothing.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_mix.h"

#define NRULES   1000000
#define NCHANGES 200
#define NLOOKUPS 2000000
#define NPEER    5 /* full rebuilds timed for the peer: each costs a second or so */

enum change { CH_ADD, CH_MOVE, CH_DELETE, CH_DEACTIVATE, CH_KINDS };

static const char *const change_names[CH_KINDS] = {"add", "move", "delete", "deactivate"};

typedef struct bench {
	shm_t shm;
	snap_model_t *m;
	tg_range_t *ranges; /* [NRULES] by id - 1 */
	uint32_t naccounts;
	int64_t next_id; /* for added rules */
	uint64_t us[NCHANGES];
	uint64_t kind_us_max[CH_KINDS];
	snap_publish_stats_t last;
} bench_t;

static void change(bench_t *b, enum change kind)
{
	uint32_t i = rnd(NRULES);
	tg_range_t fresh;
	char name[32];

	switch (kind) {
	case CH_ADD:
		fresh = random_rule_range();
		mix_rule_put(b->m, b->next_id++, &fresh, b->naccounts);
		return;
	case CH_MOVE:
		b->ranges[i] = random_rule_range();
		mix_rule_put(b->m, i + 1, &b->ranges[i], b->naccounts);
		return;
	case CH_DELETE:
		while (snap_model_rule_del(b->m, i + 1) < 0)
			i = rnd(NRULES);
		return;
	default:
		i = rnd(b->naccounts);
		snprintf(name, sizeof(name), "customer-%u", i);
		snap_model_account_put(b->m, i + 1, name, 0, 100, 10, NULL);
		return;
	}
}

/* Publishes what the model holds; nothing reads, so never busy. Returns 0 or -1. */
static int publish(bench_t *b, int base)
{
	int rc = base ? snap_model_publish_base(b->m, &b->shm, tg_wall_ms(), &b->last)
	              : snap_model_publish(b->m, &b->shm, tg_wall_ms(), &b->last);

	if (rc != 0)
		printf("publish failed: rc %d errno %d\n", rc, errno);
	return rc;
}

static int cmp_u64(const void *pa, const void *pb)
{
	uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;

	return a < b ? -1 : a > b;
}

/* NCHANGES single changes, each applied and published alone. */
static void single_changes(bench_t *b, const char *what)
{
	uint64_t compactions = 0, head_bytes = 0;

	memset(b->kind_us_max, 0, sizeof(b->kind_us_max));
	for (int k = 0; k < NCHANGES; k++) {
		enum change kind = (enum change)(k % CH_KINDS);
		uint64_t t0 = tg_now_ns();

		change(b, kind);
		if (publish(b, 0) != 0)
			return;
		b->us[k] = (tg_now_ns() - t0) / 1000;
		if (b->us[k] > b->kind_us_max[kind])
			b->kind_us_max[kind] = b->us[k];
		compactions += b->last.kind == SNAP_PUBLISH_COMPACTION;
		head_bytes += b->last.head_bytes;
	}
	qsort(b->us, NCHANGES, sizeof(b->us[0]), cmp_u64);
	printf("%d single changes, %s: apply+publish p50 %llu us, p99 %llu us, max %llu us "
	       "(head %llu bytes on average, %llu compactions)\n",
	       NCHANGES, what, (unsigned long long)b->us[NCHANGES / 2],
	       (unsigned long long)b->us[NCHANGES * 99 / 100], (unsigned long long)b->us[NCHANGES - 1],
	       (unsigned long long)(head_bytes / NCHANGES), (unsigned long long)compactions);
	printf("    max by kind:");
	for (int k = 0; k < CH_KINDS; k++)
		printf(" %s %llu us", change_names[k], (unsigned long long)b->kind_us_max[k]);
	printf("; overlay now %u entries, %u tombstones\n", b->last.overlay_entries, b->last.tombstones);
}

/* ns per lookup through the current view; *hits gets the share that matched, in percent. */
static double lookup_ns(bench_t *b, tg_ip_t *probes, double *hits)
{
	shm_proc_sh_t *slot = &b->shm.procs[SHM_PROC_WORKER(0)];
	snap_view_t v;
	snap_match_t m;
	uint64_t t0, matches = 0;

	for (uint32_t i = 0; i < NLOOKUPS; i++) {
		if (i % 2)
			probes[i] = ip_in(&b->ranges[rnd(NRULES)]);
		else
			v4(&probes[i], (uint32_t)rnd64());
	}
	snap_acquire(&b->shm, slot, &v);
	t0 = tg_now_ns();
	for (uint32_t i = 0; i < NLOOKUPS; i++)
		matches +=
		        snap_lookup(&v, &probes[i], 5060, "00441234", 8, SNAP_DIR_INGRESS, &m) == SNAP_MATCH;
	*hits = 100.0 * (double)matches / NLOOKUPS;
	snap_release(slot, &v);
	return (double)(tg_now_ns() - t0) / NLOOKUPS;
}

/* Moves many rules without publishing, then publishes them as one delta. */
static void burst(bench_t *b, uint32_t n)
{
	uint64_t t0;

	for (uint32_t k = 0; k < n; k++)
		change(b, CH_MOVE);
	t0 = tg_now_ns();
	if (publish(b, 0) == 0)
		printf("a burst of %u moves published as one %s: %.1f ms (overlay %u entries, %u "
		       "tombstones)\n",
		       n, b->last.kind == SNAP_PUBLISH_DELTA ? "delta" : "compaction", elapsed_ms(t0),
		       b->last.overlay_entries, b->last.tombstones);
}

/* Single changes until one publish overflows the overlay: that one compacts. */
static void overflow(bench_t *b)
{
	for (int k = 0; k < 100000; k++) {
		uint64_t t0 = tg_now_ns();

		change(b, CH_MOVE);
		if (publish(b, 0) != 0)
			return;
		if (b->last.kind == SNAP_PUBLISH_COMPACTION) {
			printf("the change that overflowed the overlay compacted (%s): apply+publish %.1f "
			       "ms, "
			       "build %.1f ms\n",
			       b->last.reason, elapsed_ms(t0), b->last.build_us / 1e3);
			return;
		}
	}
}

/* The way it was: every change a whole new snapshot. */
static void peer(bench_t *b)
{
	double worst = 0, sum = 0;

	for (int k = 0; k < NPEER; k++) {
		uint64_t t0 = tg_now_ns();

		change(b, (enum change)(k % CH_KINDS));
		if (publish(b, 1) != 0)
			return;

		double ms = elapsed_ms(t0);

		sum += ms;
		worst = ms > worst ? ms : worst;
	}
	printf("peer, every change a full rebuild: %.1f ms on average, %.1f ms max (%d changes)\n",
	       sum / NPEER, worst, NPEER);
}

int main(void)
{
	static bench_t b;
	tg_ip_t *probes = malloc(NLOOKUPS * sizeof(*probes));
	uint64_t t0;
	double model_ms, empty_ns, full_ns, empty_hits, full_hits;

	b.ranges = malloc(NRULES * sizeof(*b.ranges));
	b.naccounts = mix_accounts(NRULES);
	b.next_id = NRULES + 1;
	mix_shm(&b.shm, NRULES);
	t0 = tg_now_ns();
	b.m = mix_model(NRULES, b.ranges);
	model_ms = elapsed_ms(t0);
	if (publish(&b, 1) != 0)
		return 1;
	printf("%d rules, %u accounts: model filled in %.1f ms; initial base build %.1f ms\n", NRULES,
	       b.naccounts, model_ms, b.last.build_us / 1e3);
	printf("shm: base %zu bytes = %.1f bytes/rule, head %zu bytes = %.1f bytes/account; arenas reserved: "
	       "2 x %zu (base) + 2 x %zu (head) bytes\n",
	       b.last.base_bytes, (double)b.last.base_bytes / NRULES, b.last.head_bytes,
	       (double)b.last.head_bytes / b.naccounts, b.shm.base_size, b.shm.head_size);
	empty_ns = lookup_ns(&b, probes, &empty_hits);
	single_changes(&b, "overlay empty at the start");
	burst(&b, snap_overlay_cap(mix_cap(NRULES)) - NCHANGES - 1000);
	single_changes(&b, "overlay nearly full");
	full_ns = lookup_ns(&b, probes, &full_hits);
	printf("lookup through the view: %.1f ns with the overlay empty (%.0f%% match), %.1f ns nearly full "
	       "(%u entries, %u tombstones; %.0f%% match)\n",
	       empty_ns, empty_hits, full_ns, b.last.overlay_entries, b.last.tombstones, full_hits);
	overflow(&b);
	peer(&b);
	snap_model_free(b.m);
	shm_destroy(&b.shm);
	free(b.ranges);
	free(probes);
	return 0;
}
