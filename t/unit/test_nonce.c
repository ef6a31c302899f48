/*
 * The shared tables of authentication: nonce-count replay detection
 * (shm/nonce.c) and failures per source address (shm/failures.c).
 *
 * Nonces: an nc that does not increase is refused; a higher one passes;
 * entries expire and their slots are reused; a full probe window refuses
 * and counts, and leaves the live entries alone, also where the window
 * wraps round the end of the table; a slot left half-inserted by a dead
 * worker answers BUSY until it expires. Then four processes over one
 * MAP_SHARED mapping all present the same (nonce, nc) pairs, with keys
 * crowded onto shared home slots so that inserts collide: no pair may
 * ever pass twice, and every pair passes exactly once (a shortfall is
 * only allowed where a BUSY answer accounts for it); and a storm of
 * inserts at one home slot by processes whose clocks straddle a second.
 *
 * Failures: counts add up, windows rotate with time, entries expire and
 * are reused, a full window refuses, counts saturate; four processes
 * counting the same addresses at once lose nothing.
 */
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/addr.h"
#include "shm/failures.h"
#include "shm/nonce.h"
#include "t/unit/tap.h"

#define NPROCS 4
#define T0     1760000000ULL

static const uint8_t seed[16] = "tollgate-test-sd";

static void *shared_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

/* A key whose home slot is home and whose fingerprint is fp. */
static uint64_t key_at(uint32_t home, uint32_t fp)
{
	return (uint64_t)fp << 32 | home;
}

static void test_nonce_basics(void)
{
	size_t len = shm_nonce_size(1024);
	shm_nonce_sh_t *sh = shm_nonce_init(shared_map(len), 1024, seed);
	uint64_t k = shm_nonce_key(sh, "abc", 3, "alice", 5), exp = T0 + 300;

	is_int(len % 64, 0, "table size is a whole number of cache lines");
	is_int(shm_nonce_check(sh, k, 1, 0, exp, T0), SHM_NONCE_OK, "first nc=1 of a nonce: OK");
	is_int(shm_nonce_check(sh, k, 1, 0, exp, T0), SHM_NONCE_REPLAY, "nc=1 again: REPLAY");
	is_int(shm_nonce_check(sh, k, 2, 0, exp, T0), SHM_NONCE_OK, "nc=2: OK");
	is_int(shm_nonce_check(sh, k, 5, 0, exp, T0), SHM_NONCE_OK, "nc=5 (skipping some): OK");
	is_int(shm_nonce_check(sh, k, 3, 0, exp, T0), SHM_NONCE_REPLAY, "nc=3 after 5: REPLAY");
	is_int(shm_nonce_check(sh, k, 5, 0, exp, T0 + 1), SHM_NONCE_REPLAY,
	       "nc=5 again a second later: REPLAY");
	is_int(shm_nonce_check(sh, k, 0, 0, exp, T0), SHM_NONCE_REPLAY, "nc=0: REPLAY");
	is_int(shm_nonce_check(sh, shm_nonce_key(sh, "abc", 3, "bob", 3), 1, 0, exp, T0), SHM_NONCE_OK,
	       "same nonce, another username: its own count");
	ok(shm_nonce_key(sh, "ab", 2, "c", 1) != shm_nonce_key(sh, "a", 1, "bc", 2),
	   "key of (\"ab\",\"c\") differs from (\"a\",\"bc\")");
	is_int(atomic_load(&sh->inserts), 2, "two keys inserted");
	is_int(atomic_load(&sh->replays), 4, "four replays counted");

	is_int(shm_nonce_check(sh, k, 6, 0, exp, exp - 1), SHM_NONCE_OK, "a second before expiry: OK");
	is_int(shm_nonce_check(sh, k, 7, 0, exp, exp), SHM_NONCE_EXPIRED, "at expiry: EXPIRED");
	is_int(shm_nonce_check(sh, k, 7, 0, exp + 300, exp), SHM_NONCE_OK,
	       "the same key with a later expiry once the old entry expired: a new entry");
	munmap(sh, len);
}

static void test_nonce_full(void)
{
	const uint32_t cap = 64;
	size_t len = shm_nonce_size(cap);
	shm_nonce_sh_t *sh = shm_nonce_init(shared_map(len), cap, seed);
	int oks = 0, replays = 0;

	for (uint32_t i = 0; i < SHM_NONCE_PROBE; i++)
		oks += shm_nonce_check(sh, key_at(5, 100 + i), 1, 0, T0 + 10, T0) == SHM_NONCE_OK;
	is_int(oks, SHM_NONCE_PROBE, "%d keys with one home slot fill its probe window", SHM_NONCE_PROBE);
	is_int(shm_nonce_check(sh, key_at(5, 999), 1, 0, T0 + 10, T0), SHM_NONCE_FULL, "one more: FULL");
	is_int(atomic_load(&sh->full), 1, "FULL counted");
	for (uint32_t i = 0; i < SHM_NONCE_PROBE; i++)
		replays += shm_nonce_check(sh, key_at(5, 100 + i), 1, 0, T0 + 10, T0) == SHM_NONCE_REPLAY;
	is_int(replays, SHM_NONCE_PROBE, "every live entry survived the refusal (nc=1 still a replay)");
	is_int(shm_nonce_check(sh, key_at(6, 998), 1, 0, T0 + 10, T0), SHM_NONCE_OK,
	       "a key homed one slot later still finds the slot after the window");
	is_int(shm_nonce_check(sh, key_at(5, 999), 1, 0, T0 + 20, T0 + 10), SHM_NONCE_OK,
	       "after the window's entries expire, the refused key gets a reused slot");

	/* a window that wraps round the end of the table, once everything above expired */
	for (uint32_t i = 0; i < SHM_NONCE_PROBE; i++)
		oks += shm_nonce_check(sh, key_at(cap - 3, 200 + i), 1, 0, T0 + 1000, T0 + 20) ==
		       SHM_NONCE_OK;
	is_int(oks, 2 * SHM_NONCE_PROBE, "a window wrapping round the table's end takes %d keys",
	       SHM_NONCE_PROBE);
	oks = 0;
	for (uint32_t i = 0; i < 4; i++)
		oks += shm_nonce_check(sh, key_at(0, 300 + i), 1, 0, T0 + 1000, T0 + 20) == SHM_NONCE_OK;
	is_int(oks, 3, "keys homed at slot 0 find the 3 slots the wrapped window left (0..12 taken)");
	munmap(sh, len);
}

/* A worker killed between claiming a slot and settling it. */
static void test_nonce_dead_claimer(void)
{
	const uint32_t cap = 64;
	size_t len = shm_nonce_size(cap);
	shm_nonce_sh_t *sh = shm_nonce_init(shared_map(len), cap, seed);
	uint64_t k = key_at(9, 77);

	atomic_store(&sh->entry[9].id, (uint64_t)77 << 32 | (T0 + 10));
	atomic_store(&sh->entry[9].count, (uint64_t)77 << 32); /* pending */
	is_int(shm_nonce_check(sh, k, 1, 0, T0 + 10, T0), SHM_NONCE_BUSY,
	       "a key left pending by a dead worker: BUSY");
	is_int(atomic_load(&sh->busy), 1, "BUSY counted");
	is_int(shm_nonce_check(sh, key_at(9, 78), 1, 0, T0 + 10, T0), SHM_NONCE_OK,
	       "another key with the same home is not held up");
	is_int(shm_nonce_check(sh, k, 1, 0, T0 + 30, T0 + 10), SHM_NONCE_OK,
	       "once the pending slot expires: reused");

	/* a claimer that lost its validation and died before letting go, in front of the key's real slot */
	k = key_at(20, 55);
	atomic_store(&sh->entry[20].id, (uint64_t)55 << 32 | (T0 + 100));
	atomic_store(&sh->entry[20].count, (uint64_t)55 << 32);
	atomic_store(&sh->entry[21].id, (uint64_t)55 << 32 | (T0 + 100));
	atomic_store(&sh->entry[21].count, (uint64_t)55 << 32 | 1);
	is_int(shm_nonce_check(sh, k, 2, 0, T0 + 100, T0), SHM_NONCE_OK,
	       "a stale pending slot before the key's settled one does not hide it: nc=2 OK");
	is_int(shm_nonce_check(sh, k, 2, 0, T0 + 100, T0), SHM_NONCE_REPLAY,
	       "... and nc=2 again is a REPLAY");
	munmap(sh, len);
}

/* A retransmission of the accepted request passes; the same nc from another request does not. */
static void test_nonce_retransmit(void)
{
	size_t len = shm_nonce_size(64);
	shm_nonce_sh_t *sh = shm_nonce_init(shared_map(len), 64, seed);
	uint64_t k = shm_nonce_key(sh, "n1", 2, "alice", 5), exp = T0 + 300;

	is_int(shm_nonce_check(sh, k, 1, 111, exp, T0), SHM_NONCE_OK, "nc=1 by request A: OK");
	is_int(shm_nonce_check(sh, k, 1, 111, exp, T0 + 1), SHM_NONCE_RETRANSMIT,
	       "A again (a retransmission): RETRANSMIT");
	is_int(shm_nonce_check(sh, k, 1, 222, exp, T0 + 1), SHM_NONCE_REPLAY, "nc=1 by request B: REPLAY");
	is_int(shm_nonce_check(sh, k, 1, 0, exp, T0 + 1), SHM_NONCE_REPLAY,
	       "nc=1 with no fingerprint: REPLAY");
	is_int(shm_nonce_check(sh, k, 2, 333, exp, T0 + 2), SHM_NONCE_OK, "nc=2 by request C: OK");
	is_int(shm_nonce_check(sh, k, 1, 111, exp, T0 + 2), SHM_NONCE_REPLAY,
	       "A again after C: REPLAY (nc no longer the highest)");
	is_int(shm_nonce_check(sh, k, 2, 333, exp, T0 + 2), SHM_NONCE_RETRANSMIT, "C again: RETRANSMIT");
	is_int((int)atomic_load(&sh->retransmits), 2, "retransmissions counted");
	munmap(sh, len);
}

/* ---- four processes, the same (nonce, nc) pairs ---- */

#define RACE_CAP    1024
#define RACE_KEYS   256 /* per epoch: a quarter of the table */
#define RACE_NC     8
#define RACE_EPOCHS 32 /* each a new set of keys, 1000 s after the last: the old ones have expired */

typedef struct race_sh {
	_Atomic int ready;   /* processes at the start line; writer: each */
	_Atomic int go;      /* writer: parent */
	_Atomic int arrived; /* epoch barrier: arrivals so far; writer: each */
	_Atomic int wins[RACE_EPOCHS][RACE_KEYS][RACE_NC + 1]; /* OK answers per pair; writer: each */
	_Atomic long busy, full, expired, replays;             /* writer: each */
} race_sh_t;

static uint64_t race_key(int epoch, int i)
{
	/* two keys per home, homes 8 apart: windows overlap, and inserts contend on homes and slots */
	return key_at((uint32_t)(i % 128) * 8, 1 + (uint32_t)(epoch * RACE_KEYS + i));
}

/* All processes share one clock, as workers do: nobody starts epoch e before all finished e - 1. */
static void race_barrier(race_sh_t *r, int epoch)
{
	atomic_fetch_add(&r->arrived, 1);
	while (atomic_load(&r->arrived) < NPROCS * (epoch + 1))
		sched_yield();
}

static void race_count(race_sh_t *r, shm_nonce_result_t res, int epoch, int i, uint32_t nc)
{
	switch (res) {
	case SHM_NONCE_OK:
		atomic_fetch_add(&r->wins[epoch][i][nc], 1);
		break;
	case SHM_NONCE_BUSY:
		atomic_fetch_add(&r->busy, 1);
		break;
	case SHM_NONCE_FULL:
	case SHM_NONCE_RETRANSMIT: /* never: no fingerprint given; counted as a failure of the table */
		atomic_fetch_add(&r->full, 1);
		break;
	case SHM_NONCE_EXPIRED:
		atomic_fetch_add(&r->expired, 1);
		break;
	case SHM_NONCE_REPLAY:
		atomic_fetch_add(&r->replays, 1);
		break;
	}
}

static void nonce_racer(shm_nonce_sh_t *sh, race_sh_t *r, int me)
{
	atomic_fetch_add(&r->ready, 1);
	while (!atomic_load(&r->go))
		;
	for (int e = 0; e < RACE_EPOCHS; e++) {
		uint64_t now = T0 + 1000 * (uint64_t)e;

		for (uint32_t nc = 1; nc <= RACE_NC; nc++) {
			for (int j = 0; j < RACE_KEYS; j++) {
				int i = me & 1 ? RACE_KEYS - 1 - j : j; /* two go up, two go down */

				race_count(r, shm_nonce_check(sh, race_key(e, i), nc, 0, now + 600, now), e,
				           i, nc);
			}
		}
		race_barrier(r, e);
	}
	_exit(0);
}

static int run_racers(_Atomic int *ready, _Atomic int *go, void (*body)(int me, void *arg), void *arg)
{
	pid_t pid[NPROCS];
	int clean = 1, status;

	for (int p = 0; p < NPROCS; p++) {
		pid[p] = fork();
		if (pid[p] == 0)
			body(p, arg);
		if (pid[p] < 0) {
			perror("fork");
			exit(1);
		}
	}
	while (atomic_load(ready) < NPROCS)
		sched_yield();
	atomic_store(go, 1);
	for (int p = 0; p < NPROCS; p++) {
		waitpid(pid[p], &status, 0);
		clean &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
	}
	return clean;
}

typedef struct nonce_race_arg {
	shm_nonce_sh_t *sh;
	race_sh_t *r;
} nonce_race_arg_t;

static void nonce_body(int me, void *arg)
{
	nonce_race_arg_t *a = arg;

	nonce_racer(a->sh, a->r, me);
}

static void test_nonce_race(void)
{
	size_t len = shm_nonce_size(RACE_CAP);
	nonce_race_arg_t a = {shm_nonce_init(shared_map(len), RACE_CAP, seed), shared_map(sizeof(race_sh_t))};
	const int pairs = RACE_EPOCHS * RACE_KEYS * RACE_NC;
	int twice = 0, never = 0, once = 0;
	long busy;

	ok(run_racers(&a.r->ready, &a.r->go, nonce_body, &a), "%d processes raced and exited cleanly",
	   NPROCS);
	for (int e = 0; e < RACE_EPOCHS; e++) {
		for (int i = 0; i < RACE_KEYS; i++) {
			for (int nc = 1; nc <= RACE_NC; nc++) {
				int w = atomic_load(&a.r->wins[e][i][nc]);

				twice += w > 1;
				never += w == 0;
				once += w == 1;
			}
		}
	}
	busy = atomic_load(&a.r->busy);
	printf("# race: %d pairs passed once, %d never; busy %ld, replays %ld, inserts %lu\n", once, never,
	       busy, atomic_load(&a.r->replays), (unsigned long)atomic_load(&a.sh->inserts));
	is_int(twice, 0, "no (nonce, nc) pair of %d passed twice across %d processes", pairs, NPROCS);
	ok(never == 0 || never <= busy,
	   "every pair passed exactly once (%d of %d; a shortfall only with BUSY)", once, pairs);
	is_int(atomic_load(&a.r->full) + atomic_load(&a.r->expired), 0,
	       "no FULL, no EXPIRED at a quarter load");
	is_int(atomic_load(&a.sh->inserts), RACE_EPOCHS * RACE_KEYS,
	       "each key inserted once, expired slots reused: no duplicate slots");
	munmap(a.sh, len);
	munmap(a.r, sizeof(race_sh_t));
}

/*
 * Inserts at one home slot, with clocks a second apart: in round k every
 * process presents nc=1 for the same four new keys, all homed at slot 0;
 * the odd processes' clock reads one second later, so the keys of round
 * k - 1 have expired for them and not for the others. Their views of
 * which slots are free differ, so two of them can claim two different
 * slots for one key: only the validation on the home slot stops the key
 * from passing twice (a build without it fails here).
 */
#define STORM_CAP    64
#define STORM_ROUNDS 2000

typedef struct storm_sh {
	_Atomic int ready, go, arrived;         /* start line and round barrier; writer: each */
	_Atomic int wins[STORM_ROUNDS][NPROCS]; /* OK answers per (round, key); writer: each */
	_Atomic long busy, other;               /* writer: each */
} storm_sh_t;

typedef struct storm_arg {
	shm_nonce_sh_t *sh;
	storm_sh_t *r;
} storm_arg_t;

static void storm_body(int me, void *arg)
{
	storm_arg_t *a = arg;

	atomic_fetch_add(&a->r->ready, 1);
	while (!atomic_load(&a->r->go))
		;
	for (int k = 0; k < STORM_ROUNDS; k++) {
		uint64_t now = T0 + (uint64_t)k + (uint64_t)(me & 1), expiry = T0 + (uint64_t)k + 2;

		for (int j = 0; j < NPROCS; j++) {
			int q = (me + j) % NPROCS; /* each starts with a different key */
			uint64_t key = key_at(0, 1 + (uint32_t)(k * NPROCS + q));
			shm_nonce_result_t res = shm_nonce_check(a->sh, key, 1, 0, expiry, now);

			if (res == SHM_NONCE_OK)
				atomic_fetch_add(&a->r->wins[k][q], 1);
			else if (res == SHM_NONCE_BUSY)
				atomic_fetch_add(&a->r->busy, 1);
			else if (res != SHM_NONCE_REPLAY)
				atomic_fetch_add(&a->r->other, 1);
		}
		atomic_fetch_add(&a->r->arrived, 1);
		while (atomic_load(&a->r->arrived) < NPROCS * (k + 1))
			sched_yield();
	}
	_exit(0);
}

static void test_nonce_storm(void)
{
	size_t len = shm_nonce_size(STORM_CAP);
	storm_arg_t a = {shm_nonce_init(shared_map(len), STORM_CAP, seed), shared_map(sizeof(storm_sh_t))};
	int twice = 0, never = 0;

	ok(run_racers(&a.r->ready, &a.r->go, storm_body, &a), "home-slot storm: %d processes exited cleanly",
	   NPROCS);
	for (int k = 0; k < STORM_ROUNDS; k++) {
		for (int q = 0; q < NPROCS; q++) {
			twice += atomic_load(&a.r->wins[k][q]) > 1;
			never += atomic_load(&a.r->wins[k][q]) == 0;
		}
	}
	printf("# storm: %d never, busy %ld, inserts %lu\n", never, atomic_load(&a.r->busy),
	       (unsigned long)atomic_load(&a.sh->inserts));
	is_int(twice, 0, "home-slot storm, clocks a second apart: no key passed nc=1 twice");
	ok(never == 0 || never <= atomic_load(&a.r->busy),
	   "home-slot storm: every key passed once (%d never)", never);
	is_int(atomic_load(&a.r->other), 0, "home-slot storm: no FULL or EXPIRED");
	munmap(a.sh, len);
	munmap(a.r, sizeof(storm_sh_t));
}

/* ---- failures ---- */

static tg_ip_t ip4(uint32_t v)
{
	tg_ip_t ip = {0, 0xffff00000000ULL | v};

	return ip;
}

static void test_failures_basics(void)
{
	size_t len = shm_failures_size(1024);
	shm_failures_sh_t *sh = shm_failures_init(shared_map(len), 1024, 10, seed);
	tg_ip_t a = ip4(0xc0000201), b = ip4(0xc0000202), v6 = {0x20010db800000000ULL, 1};
	shm_failures_count_t c;
	const uint64_t t = 1000; /* window 100 */

	is_int(shm_failures_add(sh, &a, 1, t, &c), SHM_FAILURES_OK, "first failure of an address: OK");
	ok(c.current == 1 && c.previous == 0, "counts 1 now, 0 before");
	shm_failures_add(sh, &a, 2, t + 9, &c);
	ok(c.current == 3 && c.previous == 0, "two more in the same window: 3");
	shm_failures_read(sh, &b, t, &c);
	ok(c.current == 0 && c.previous == 0, "another address: nothing");
	shm_failures_add(sh, &v6, 5, t, &c);
	shm_failures_read(sh, &a, t, &c);
	ok(c.current == 3, "an IPv6 address counts apart");
	shm_failures_read(sh, &a, t + 10, &c);
	ok(c.current == 0 && c.previous == 3, "next window: the 3 are the previous window's");
	shm_failures_add(sh, &a, 1, t + 10, &c);
	ok(c.current == 1 && c.previous == 3, "a failure in the next window: 1 now, 3 before");
	shm_failures_read(sh, &a, t + 20, &c);
	ok(c.current == 0 && c.previous == 1, "two windows on: the first window's 3 are gone");
	shm_failures_add(sh, &a, 4, t + 40, &c);
	ok(c.current == 4 && c.previous == 0, "after two quiet windows the address starts again from zero");
	shm_failures_read(sh, &v6, t + 20, &c);
	ok(c.current == 0 && c.previous == 0, "an address idle for two windows reads zero");
	is_int(atomic_load(&sh->inserts), 3,
	       "slots given: a, the IPv6 address, and a again after it expired");
	shm_failures_add(sh, &b, UINT32_MAX, t, NULL);
	shm_failures_add(sh, &b, 7, t, &c);
	ok(c.current == UINT32_MAX, "a count saturates rather than wraps");
	munmap(sh, len);
}

static void test_failures_full(void)
{
	const uint32_t cap = SHM_FAILURES_PROBE; /* every address's window is the whole table */
	size_t len = shm_failures_size(cap);
	shm_failures_sh_t *sh = shm_failures_init(shared_map(len), cap, 10, seed);
	shm_failures_count_t c;
	int oks = 0, kept = 0;

	for (uint32_t i = 0; i < cap; i++) {
		tg_ip_t ip = ip4(0x0a000000 + i);

		oks += shm_failures_add(sh, &ip, i + 1, 1000, NULL) == SHM_FAILURES_OK;
	}
	is_int(oks, cap, "%u addresses fill a %u-slot table", cap, cap);
	tg_ip_t extra = ip4(0x0b000000);
	is_int(shm_failures_add(sh, &extra, 1, 1005, &c), SHM_FAILURES_FULL, "one more address: FULL");
	is_int(atomic_load(&sh->full), 1, "FULL counted");
	for (uint32_t i = 0; i < cap; i++) {
		tg_ip_t ip = ip4(0x0a000000 + i);

		shm_failures_read(sh, &ip, 1005, &c);
		kept += c.current == i + 1;
	}
	is_int(kept, cap, "no live count was overwritten");
	is_int(shm_failures_add(sh, &extra, 1, 1020, &c), SHM_FAILURES_OK,
	       "two windows later the slots are reusable");
	ok(c.current == 1 && c.previous == 0, "the new owner starts from its own count, not the old owner's");
	munmap(sh, len);
}

#define FAIL_IPS    200
#define FAIL_ROUNDS 50

typedef struct fail_race_sh {
	_Atomic int ready, go;
	_Atomic long refused; /* FULL or BUSY answers; writer: each */
} fail_race_sh_t;

typedef struct fail_race_arg {
	shm_failures_sh_t *sh;
	fail_race_sh_t *r;
} fail_race_arg_t;

static void fail_body(int me, void *arg)
{
	fail_race_arg_t *a = arg;

	atomic_fetch_add(&a->r->ready, 1);
	while (!atomic_load(&a->r->go))
		;
	for (int round = 0; round < FAIL_ROUNDS; round++) {
		for (int j = 0; j < FAIL_IPS; j++) {
			tg_ip_t ip = ip4(0xc6336400 + (uint32_t)(me & 1 ? FAIL_IPS - 1 - j : j));

			if (shm_failures_add(a->sh, &ip, 1, 5000, NULL) != SHM_FAILURES_OK)
				atomic_fetch_add(&a->r->refused, 1);
		}
	}
	_exit(0);
}

static void test_failures_race(void)
{
	size_t len = shm_failures_size(1024);
	fail_race_arg_t a = {shm_failures_init(shared_map(len), 1024, 60, seed),
	                     shared_map(sizeof(fail_race_sh_t))};
	int exact = 0;

	ok(run_racers(&a.r->ready, &a.r->go, fail_body, &a), "%d processes counted and exited cleanly",
	   NPROCS);
	for (int j = 0; j < FAIL_IPS; j++) {
		tg_ip_t ip = ip4(0xc6336400 + (uint32_t)j);
		shm_failures_count_t c;

		shm_failures_read(a.sh, &ip, 5000, &c);
		exact += c.current == NPROCS * FAIL_ROUNDS;
	}
	is_int(atomic_load(&a.r->refused), 0, "no failure refused");
	is_int(exact, FAIL_IPS, "every address counts exactly %d failures: none lost to a race",
	       NPROCS * FAIL_ROUNDS);
	printf("# failures race: %lu slots for %d addresses (more: simultaneous first failures, summed)\n",
	       (unsigned long)atomic_load(&a.sh->inserts), FAIL_IPS);
	munmap(a.sh, len);
	munmap(a.r, sizeof(fail_race_sh_t));
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0); /* forked children must not inherit buffered output */
	test_nonce_basics();
	test_nonce_retransmit();
	test_nonce_full();
	test_nonce_dead_claimer();
	test_nonce_race();
	test_nonce_storm();
	test_failures_basics();
	test_failures_full();
	test_failures_race();
	return done_testing();
}
