/*
 * The rule mix both benchmarks load, so their numbers describe the same
 * table: what a wholesale carrier's looks like. 80% single IPv4
 * addresses, 10% IPv4 networks /24 to /28, 5% a-b ranges, 5% IPv6; one
 * rule in twenty is port-bound and one in twenty carries a tech prefix;
 * one account per twenty rules. Lookups are half hits (an address inside
 * a random rule) and half random IPv4 addresses, nearly all misses.
 */
#ifndef TG_BENCH_MIX_H
#define TG_BENCH_MIX_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "lib/addr.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "master/config.h"
#include "shm/snapshot.h"

static uint64_t mix_rng = 0x2545f4914f6cdd1dULL;

static inline uint64_t rnd64(void)
{
	mix_rng ^= mix_rng << 13;
	mix_rng ^= mix_rng >> 7;
	mix_rng ^= mix_rng << 17;
	return mix_rng;
}

static inline uint32_t rnd(uint32_t n)
{
	return (uint32_t)((rnd64() >> 11) % n);
}

static inline void v4(tg_ip_t *ip, uint32_t a)
{
	ip->hi = 0;
	ip->lo = 0x0000ffff00000000ULL | a;
}

static inline tg_range_t random_rule_range(void)
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
static inline tg_ip_t ip_in(const tg_range_t *r)
{
	tg_ip_t ip = r->first;
	uint64_t span = r->last.lo - r->first.lo;

	ip.lo += span ? rnd64() % span : 0;
	return ip;
}

static inline double elapsed_ms(uint64_t t0)
{
	return (double)(tg_now_ns() - t0) / 1e6;
}

static inline uint32_t mix_accounts(uint32_t nrules)
{
	return nrules / 20 + 10;
}

/* The capacity for a table of nrules: room for the rules a benchmark adds on top. */
static inline uint32_t mix_cap(uint32_t nrules)
{
	return nrules + nrules / 50 + 1000;
}

/* One rule of the mix, id and range given. */
static inline void mix_rule_put(snap_model_t *m, int64_t id, const tg_range_t *range, uint32_t naccounts)
{
	uint32_t kind = rnd(20);

	snap_model_rule_put(m, id, 1 + rnd(naccounts), range, 1, kind == 0 ? 5060 : 0,
	                    kind == 1 ? "0044" : "", 1, SNAP_DIR_BOTH, NULL);
}

/* A model of nrules rules (ids 1..nrules); ranges[i] gets rule i+1's range. */
static inline snap_model_t *mix_model(uint32_t nrules, tg_range_t *ranges)
{
	uint32_t naccounts = mix_accounts(nrules);
	snap_model_t *m = snap_model_new(naccounts, mix_cap(nrules), 16);
	char name[32];

	for (uint32_t a = 0; a < naccounts; a++) {
		snprintf(name, sizeof(name), "customer-%u", a);
		snap_model_account_put(m, a + 1, name, 1, 100, 10, NULL);
	}
	for (uint32_t i = 0; i < nrules; i++) {
		ranges[i] = random_rule_range();
		mix_rule_put(m, i + 1, &ranges[i], naccounts);
	}
	return m;
}

/* A real segment, one worker, sized for this many rules. Exits on failure. */
static inline void mix_shm(shm_t *shm, uint32_t nrules)
{
	tg_config_t cfg;

	tg_log_set_level(TG_LOG_WARN);
	tg_config_defaults(&cfg);
	cfg.workers = 1;
	cfg.cap_accounts = mix_accounts(nrules);
	cfg.cap_ip_rules = mix_cap(nrules);
	if (shm_create(shm, &cfg) < 0) {
		fprintf(stderr, "shm_create failed\n");
		exit(1);
	}
}

#endif
