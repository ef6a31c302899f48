/*
 * How the provisioning snapshot scales: build time, bytes per rule and ns
 * per lookup at 1k, 100k and 1M rules, through the two-level view the
 * workers use (a base, and a head with its overlay and tombstones), first
 * with every rule in the base, then with 1% of the rules changed since the
 * base; against the peer every naive gateway uses, a linear scan over the
 * rules, measured in the same run. The rule mix is in bench_mix.h.
 *
 * Prints results; asserts nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/bench_mix.h"

#define NLOOKUPS  2000000
#define SCAN_WORK 200000000ULL /* rule checks the linear-scan peer may spend per size */

/* The peer: every rule checked, most specific by prefix bits kept. */
static int linear_lookup(const snap_rule_sh_t *rules, uint32_t n, const tg_ip_t *ip, uint16_t port)
{
	int best = -1, best_bits = -1;

	for (uint32_t i = 0; i < n; i++) {
		const snap_rule_sh_t *r = &rules[i];

		if (!tg_range_contains(&r->range, ip) || (r->port && r->port != port))
			continue;
		int bits = tg_range_prefix_bits(&r->range);

		if (bits > best_bits) {
			best = (int)i;
			best_bits = bits;
		}
	}
	return best;
}

static void make_probes(tg_ip_t *probes, const tg_range_t *ranges, uint32_t nrules)
{
	for (uint32_t i = 0; i < NLOOKUPS; i++) {
		if (i % 2)
			probes[i] = ip_in(&ranges[rnd(nrules)]);
		else
			v4(&probes[i], (uint32_t)rnd64());
	}
}

/* ns per lookup over the probes; *matches gets how many matched. */
static double time_lookups(const snap_view_t *v, const tg_ip_t *probes, uint64_t *matches)
{
	snap_match_t m;
	uint64_t t0 = tg_now_ns();

	*matches = 0;
	for (uint32_t i = 0; i < NLOOKUPS; i++)
		*matches +=
		        snap_lookup(v, &probes[i], 5060, "00441234", 8, SNAP_DIR_INGRESS, &m) == SNAP_MATCH;
	return (double)(tg_now_ns() - t0) / NLOOKUPS;
}

static double time_scan(const snap_view_t *v, const tg_ip_t *probes, uint32_t *nscan)
{
	const snap_index_sh_t *ix = &v->base->index;
	uint64_t t0;
	int found = 0;

	*nscan = (uint32_t)(SCAN_WORK / ix->nentries);
	*nscan = *nscan > NLOOKUPS ? NLOOKUPS : *nscan < 20 ? 20 : *nscan;
	t0 = tg_now_ns();
	for (uint32_t i = 0; i < *nscan; i++)
		found += linear_lookup(snap_index_entries(v->base, ix), ix->nentries, &probes[i], 5060) >= 0;
	if (found < 0)
		printf("unreachable\n");
	return (double)(tg_now_ns() - t0) / *nscan;
}

/* One rule in a hundred moved to a new address since the base. */
static void change_one_percent(snap_model_t *m, tg_range_t *ranges, uint32_t nrules)
{
	for (uint32_t k = 0; k < nrules / 100; k++) {
		uint32_t i = rnd(nrules);

		ranges[i] = random_rule_range();
		mix_rule_put(m, i + 1, &ranges[i], mix_accounts(nrules));
	}
}

static void bench_size(uint32_t nrules)
{
	tg_range_t *ranges = malloc(nrules * sizeof(*ranges));
	tg_ip_t *probes = malloc(NLOOKUPS * sizeof(*probes));
	shm_proc_sh_t *slot;
	snap_publish_stats_t st, dst;
	snap_view_t v;
	shm_t shm;
	uint64_t matches, dmatches, t0;
	uint32_t nscan;

	mix_shm(&shm, nrules);
	slot = &shm.procs[SHM_PROC_WORKER(0)];
	t0 = tg_now_ns();
	snap_model_t *m = mix_model(nrules, ranges);
	double add_ms = elapsed_ms(t0);

	if (snap_model_publish_base(m, &shm, 0, &st) != 0) {
		printf("%8u rules: the snapshot does not fit its arenas\n", nrules);
		goto out;
	}
	make_probes(probes, ranges, nrules);
	snap_acquire(&shm, slot, &v);

	double ns = time_lookups(&v, probes, &matches), scan_ns = time_scan(&v, probes, &nscan);

	printf("%8u rules: build %7.1f ms (model %6.1f + publish %6.1f), base %9zu bytes = %5.1f bytes/rule, "
	       "head %zu bytes, %u intervals, %u candidates\n",
	       nrules, add_ms + st.build_us / 1e3, add_ms, st.build_us / 1e3, st.base_bytes,
	       (double)st.base_bytes / nrules, st.head_bytes, v.base->index.nivals, v.base->index.ncands);
	snap_release(slot, &v);
	change_one_percent(m, ranges, nrules);
	snap_model_publish(m, &shm, 0, &dst);
	make_probes(probes, ranges, nrules);
	snap_acquire(&shm, slot, &v);

	double dns = time_lookups(&v, probes, &dmatches);

	printf("%8s        lookup %6.1f ns (%2.0f%% match); after 1%% changed (%s: %u overlay entries, %u "
	       "tombstones) %6.1f ns (%2.0f%% match)\n",
	       "", ns, 100.0 * (double)matches / NLOOKUPS,
	       dst.kind == SNAP_PUBLISH_DELTA ? "delta" : "compaction", dst.overlay_entries, dst.tombstones,
	       dns, 100.0 * (double)dmatches / NLOOKUPS);
	printf("%8s        linear scan %11.1f ns (%u lookups): %.0fx slower than the index\n", "", scan_ns,
	       nscan, scan_ns / ns);
	snap_release(slot, &v);
out:
	snap_model_free(m);
	shm_destroy(&shm);
	free(probes);
	free(ranges);
}

int main(void)
{
	printf("snapshot: sizeof rule entry %zu, account %zu, interval %zu; %d lookups per size\n",
	       sizeof(snap_rule_sh_t), sizeof(snap_account_sh_t), sizeof(snap_ival_sh_t), NLOOKUPS);
	bench_size(1000);
	bench_size(100000);
	bench_size(1000000);
	return 0;
}
