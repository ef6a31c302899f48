/*
 * How the provisioning snapshot scales: build time, bytes per rule and ns
 * per lookup at 1k, 100k and 1M rules, against the peer every naive
 * gateway uses, a linear scan over the rules, measured in the same run.
 *
 * The rule mix is what a wholesale carrier's table looks like: 80% single
 * IPv4 addresses, 10% IPv4 networks /24 to /28, 5% a-b ranges, 5% IPv6;
 * one rule in twenty is port-bound and one in twenty carries a tech
 * prefix. Lookups are half hits (an address inside a random rule) and
 * half random IPv4 addresses, nearly all misses.
 *
 * Prints results; asserts nothing.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/addr.h"
#include "lib/clock.h"
#include "shm/snapshot.h"

#define NLOOKUPS  2000000
#define SCAN_WORK 200000000ULL /* rule checks the linear-scan peer may spend per size */

static uint64_t rng = 0x2545f4914f6cdd1dULL;

static uint64_t rnd64(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static uint32_t rnd(uint32_t n)
{
	return (uint32_t)((rnd64() >> 11) % n);
}

static void v4(tg_ip_t *ip, uint32_t a)
{
	ip->hi = 0;
	ip->lo = 0x0000ffff00000000ULL | a;
}

static tg_range_t random_rule_range(void)
{
	tg_range_t r = {.family = AF_INET};
	uint32_t kind = rnd(100), a = (uint32_t)rnd64();

	if (kind < 80) {
		v4(&r.first, a);
		r.last = r.first;
	} else if (kind < 90) {
		uint32_t host_bits = 4 + rnd(5); /* /28../24 */

		v4(&r.first, a & ~((1u << host_bits) - 1));
		v4(&r.last, a | ((1u << host_bits) - 1));
	} else if (kind < 95) {
		uint32_t len = 1 + rnd(1000);

		if (a > UINT32_MAX - len)
			a -= len;
		v4(&r.first, a);
		v4(&r.last, a + len);
	} else {
		r.family = AF_INET6;
		r.first.hi = 0x20010db800000000ULL | (rnd64() & 0xffffffffULL);
		r.first.lo = rnd(2) ? rnd64() : 0;
		r.last.hi = r.first.hi;
		r.last.lo = r.first.lo ? r.first.lo : UINT64_MAX; /* a single address or a /64 */
	}
	return r;
}

/* A random address inside r (only the low half varies in this mix). */
static tg_ip_t ip_in(const tg_range_t *r)
{
	tg_ip_t ip = r->first;
	uint64_t span = r->last.lo - r->first.lo;

	ip.lo += span ? rnd64() % span : 0;
	return ip;
}

static double elapsed_ms(uint64_t t0)
{
	return (double)(tg_now_ns() - t0) / 1e6;
}

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

static snap_builder_t *make_rules(uint32_t nrules, tg_range_t *ranges)
{
	snap_builder_t *b = snap_builder_new();
	uint32_t naccounts = nrules / 20 + 10;
	char name[32];

	for (uint32_t a = 0; a < naccounts; a++) {
		snprintf(name, sizeof(name), "customer-%u", a);
		snap_builder_account(b, a + 1, name, 1, 100, 10, NULL);
	}
	for (uint32_t i = 0; i < nrules; i++) {
		uint32_t kind = rnd(20);

		ranges[i] = random_rule_range();
		snap_builder_rule(b, i + 1, 1 + rnd(naccounts), &ranges[i], kind == 0 ? 5060 : 0,
		                  kind == 1 ? "0044" : "", 1, SNAP_DIR_BOTH, NULL);
	}
	return b;
}

static void bench_size(uint32_t nrules)
{
	tg_range_t *ranges = malloc(nrules * sizeof(*ranges));
	tg_ip_t *probes = malloc(NLOOKUPS * sizeof(*probes));
	uint64_t t0 = tg_now_ns();
	snap_builder_t *b = make_rules(nrules, ranges);
	double add_ms = elapsed_ms(t0);
	size_t arena_size = snap_size_bound(snap_builder_naccounts(b), nrules);
	void *arena = malloc(arena_size);

	t0 = tg_now_ns();
	size_t used = snap_builder_write(b, arena, arena_size, 1, 0);
	double write_ms = elapsed_ms(t0);

	if (used == 0) {
		printf("%8u rules: snapshot does not fit its bound of %zu bytes\n", nrules, arena_size);
		goto out;
	}

	const snap_sh_t *s = arena;

	for (uint32_t i = 0; i < NLOOKUPS; i++) {
		if (i % 2)
			probes[i] = ip_in(&ranges[rnd(nrules)]);
		else
			v4(&probes[i], (uint32_t)rnd64());
	}

	uint64_t matches = 0;
	snap_match_t m;

	t0 = tg_now_ns();
	for (uint32_t i = 0; i < NLOOKUPS; i++)
		matches +=
		        snap_lookup(s, &probes[i], 5060, "00441234", 8, SNAP_DIR_INGRESS, &m) == SNAP_MATCH;
	double ns = (double)(tg_now_ns() - t0) / NLOOKUPS;

	uint32_t nscan = (uint32_t)(SCAN_WORK / nrules);
	int found = 0;

	nscan = nscan > NLOOKUPS ? NLOOKUPS : nscan < 20 ? 20 : nscan;
	t0 = tg_now_ns();
	for (uint32_t i = 0; i < nscan; i++)
		found += linear_lookup(snap_rules(s), nrules, &probes[i], 5060) >= 0;
	double scan_ns = (double)(tg_now_ns() - t0) / nscan;

	printf("%8u rules: build %7.1f ms (add %6.1f + write %6.1f), %9zu bytes = %5.1f bytes/rule, "
	       "%6u intervals, %7u candidates\n",
	       nrules, add_ms + write_ms, add_ms, write_ms, used, (double)used / nrules, s->nivals,
	       s->ncands);
	printf("%8s        lookup %7.1f ns (%2.0f%% match); linear scan %11.1f ns (%u lookups): %.0fx "
	       "faster\n",
	       "", ns, 100.0 * (double)matches / NLOOKUPS, scan_ns, nscan, scan_ns / ns);
	if (found < 0)
		printf("unreachable\n");
out:
	free(arena);
	snap_builder_free(b);
	free(probes);
	free(ranges);
}

int main(void)
{
	printf("snapshot: sizeof rule %zu, account %zu, interval %zu; %d lookups per size\n",
	       sizeof(snap_rule_sh_t), sizeof(snap_account_sh_t), sizeof(snap_ival_sh_t), NLOOKUPS);
	bench_size(1000);
	bench_size(100000);
	bench_size(1000000);
	return 0;
}
