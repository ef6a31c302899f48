/*
 * Publishing under fire, across processes, over a real shm_create()
 * segment: one publisher process applies random row changes to a model
 * and publishes as fast as it can (deltas, and a compaction now and
 * then); three reader processes acquire, check that what they hold is
 * exactly what the publisher says that generation holds, look up, and
 * release, in a loop. Then one reader takes a view and is SIGKILLed while
 * reading it; the test, playing the master, shows the publisher stuck
 * with that view's arenas intact, clears the dead reader's slot, and
 * shows the publisher moving again.
 *
 * What "exactly what the publisher says" means: for each generation g the
 * publisher writes, before publishing g, the account and rule counts g
 * holds into a shared table, and it puts into g itself an account whose
 * max_channels is derived from g and a port-bound rule whose port is
 * derived from g. A reader holding g checks both checksums, the base the
 * head names, those counts, that account, and that a lookup on the
 * derived port finds that rule (and on the next port does not), then
 * re-checks the checksums after its lookups: a region rewritten or torn
 * under it cannot pass. Problems are counted in shared memory; the test
 * asserts there were none. No timing assertions: a slow machine does
 * fewer rounds, not different ones.
 */
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/addr.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "master/config.h"
#include "shm/snapshot.h"
#include "t/unit/tap.h"

#define NREADERS     3
#define KILLED       2 /* the reader that will die holding a view */
#define RING         (1u << 16)
#define CAP_ACCOUNTS 64
#define CAP_RULES    4096
#define CAP_USERS    64
#define NACCOUNTS    20
#define RULE_IDS     3000
#define SENTINEL     1 /* rule id; account 1 is the marker */

/* What the publisher says generation gen holds. gen is stored last (release), cleared first. */
typedef struct expect_sh {
	_Atomic uint64_t gen;
	_Atomic uint32_t accounts, rules;
} expect_sh_t;

/* Between the processes of this test; every field names its writer. */
typedef struct shared_sh {
	_Atomic int stop;          /* parent */
	_Atomic int hold;          /* parent: reader KILLED takes a view and keeps it */
	_Atomic uint64_t held_gen; /* reader KILLED: the generation it holds */
	_Atomic long problems;     /* readers, publisher */
	_Atomic int have_first;    /* whoever reports the first problem */
	char first[256];           /* its description */
	_Atomic long reads;        /* readers */
	_Atomic long lookups;      /* readers */
	_Atomic long matches;      /* readers */
	_Atomic long deltas;       /* publisher */
	_Atomic long compactions;  /* publisher */
	_Atomic long busy;         /* publisher: publishes answered "busy" */
	expect_sh_t ring[RING];    /* publisher */
} shared_sh_t;

static shm_t shm;
static shared_sh_t *sh;

static void problem(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void problem(const char *fmt, ...)
{
	int no = 0;
	va_list ap;

	atomic_fetch_add(&sh->problems, 1);
	if (!atomic_compare_exchange_strong(&sh->have_first, &no, 1))
		return;
	va_start(ap, fmt);
	vsnprintf(sh->first, sizeof(sh->first), fmt, ap);
	va_end(ap);
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static uint32_t rnd(uint64_t *s, uint32_t n)
{
	return (uint32_t)((rng_next(s) >> 11) % n);
}

/* What generation g carries, so that a reader can tell one generation from another. */
static uint32_t marker_of(uint64_t g)
{
	return (uint32_t)(g * 0x9e3779b1u) | 1;
}

static uint16_t port_of(uint64_t g)
{
	return (uint16_t)(1 + g % 60000);
}

static tg_ip_t v4(uint32_t a)
{
	return (tg_ip_t){0, 0x0000ffff00000000ULL | a};
}

static const tg_ip_t sentinel_ip = {0, 0x0000ffffc0000201ULL}; /* 192.0.2.1 */

/* ------------------------------------------------------------------ */
/* the publisher                                                      */

/* Rules live in 10.0.0.0/16: single addresses, small networks, short ranges; now and then IPv6. */
static tg_range_t random_range(uint64_t *s)
{
	tg_range_t r = {.family = AF_INET};
	uint32_t a = 0x0a000000u | rnd(s, 65536), kind = rnd(s, 10);

	if (kind < 6) {
		r.first = r.last = v4(a);
	} else if (kind < 8) {
		uint32_t bits = 2 + rnd(s, 7);

		r.first = v4(a & ~((1u << bits) - 1));
		r.last = v4(a | ((1u << bits) - 1));
	} else if (kind < 9) {
		r.first = v4(a);
		r.last = v4(a + rnd(s, 300));
	} else {
		r.family = AF_INET6;
		r.first.hi = r.last.hi = 0x20010db800000000ULL;
		r.first.lo = r.last.lo = rnd(s, 65536);
	}
	return r;
}

static void random_rule_put(snap_model_t *m, uint64_t *s)
{
	static const char *prefixes[] = {"", "", "", "1", "12"};
	tg_range_t r[3];
	unsigned n = rnd(s, 10) == 0 ? rnd(s, 4) : 1;
	int64_t id = 2 + rnd(s, RULE_IDS);

	for (unsigned k = 0; k < n; k++)
		r[k] = random_range(s);
	/* A refusal for an account deleted a moment ago is expected; anything else is not. */
	snap_model_rule_put(m, id, 2 + rnd(s, NACCOUNTS - 1), r, n, rnd(s, 8) == 0 ? 5060 : 0,
	                    prefixes[rnd(s, 5)], rnd(s, 10) != 0, 1 + rnd(s, 3), NULL);
}

static void random_change(snap_model_t *m, uint64_t *s)
{
	uint32_t k = rnd(s, 100);
	int64_t acct = 2 + rnd(s, NACCOUNTS - 1);
	char name[32];

	if (k < 55) {
		random_rule_put(m, s);
	} else if (k < 85) {
		snap_model_rule_del(m, 2 + rnd(s, RULE_IDS));
	} else if (k < 98) {
		snprintf(name, sizeof(name), "customer-%lld-%u", (long long)acct, rnd(s, 100));
		snap_model_account_put(m, acct, name, rnd(s, 4) != 0, 0, 0, NULL);
	} else {
		snap_model_account_del(m, acct);
	}
}

/* Generation g: the marker account and the sentinel rule say g; the ring says what else g holds. */
static void stamp(snap_model_t *m, uint64_t g)
{
	tg_range_t r = {sentinel_ip, sentinel_ip, AF_INET};
	expect_sh_t *e = &sh->ring[g % RING];
	const char *err = NULL;

	if (snap_model_account_put(m, 1, "marker", 1, marker_of(g), (uint32_t)g, &err) < 0 ||
	    snap_model_rule_put(m, SENTINEL, 1, &r, 1, port_of(g), "", 1, SNAP_DIR_BOTH, &err) < 0)
		problem("publisher: stamping generation %llu: %s", (unsigned long long)g, err);
	atomic_store(&e->gen, 0);
	atomic_store(&e->accounts, snap_model_naccounts(m));
	atomic_store(&e->rules, snap_model_nrules(m));
	atomic_store(&e->gen, g);
}

/* Publishes one generation, retrying while busy. Returns 0, or -1 when told to stop. */
static int publish_one(snap_model_t *m, int base)
{
	snap_publish_stats_t st;
	uint64_t g = atomic_load(&shm.snapctl->generation) + 1;
	int rc;

	stamp(m, g);
	while ((rc = base ? snap_model_publish_base(m, &shm, 0, &st) : snap_model_publish(m, &shm, 0, &st)) ==
	       1) {
		atomic_fetch_add(&sh->busy, 1);
		if (atomic_load(&sh->stop))
			return -1;
		sched_yield();
	}
	if (rc < 0) {
		problem("publisher: publish failed: errno %d", errno);
		return -1;
	}
	if (st.generation != g)
		problem("publisher: published %llu, expected %llu", (unsigned long long)st.generation,
		        (unsigned long long)g);
	atomic_fetch_add(st.kind == SNAP_PUBLISH_DELTA ? &sh->deltas : &sh->compactions, 1);
	return 0;
}

static void publisher(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	uint64_t s = 0x243f6a8885a308d3ULL;
	char name[32];

	for (int a = 1; a <= NACCOUNTS; a++) {
		snprintf(name, sizeof(name), "customer-%d", a);
		snap_model_account_put(m, a, name, 1, 0, 0, NULL);
	}
	for (int i = 0; i < 1500; i++)
		random_rule_put(m, &s);
	while (!atomic_load(&sh->stop)) {
		int changes = 1 + (int)rnd(&s, 8);

		for (int i = 0; i < changes; i++)
			random_change(m, &s);
		if (publish_one(m, rnd(&s, 25) == 0) < 0)
			break;
	}
	snap_model_free(m);
}

/* ------------------------------------------------------------------ */
/* the readers                                                        */

static int tombstoned(const snap_head_sh_t *h, int64_t id)
{
	const int64_t *t = snap_tombstones(h);

	for (uint32_t lo = 0, hi = h->ntombs; lo < hi;) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (t[mid] == id)
			return 1;
		if (t[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

/* Both regions whole and the base the one the head names. Returns 0 or -1 (reported). */
static int check_regions(const snap_view_t *v, uint64_t g, const char *when)
{
	const snap_head_sh_t *h = v->head;
	const snap_base_sh_t *b = v->base;

	if (h->magic != SNAP_HEAD_MAGIC || h->generation != g || snap_head_checksum(h) != h->checksum) {
		problem("%s: head of generation %llu torn or rewritten (holds %llu)", when,
		        (unsigned long long)g, (unsigned long long)h->generation);
		return -1;
	}
	if (b->magic != SNAP_BASE_MAGIC || b->generation != h->base_generation ||
	    snap_base_checksum(b) != b->checksum) {
		problem("%s: base %llu of generation %llu torn or rewritten (holds %llu)", when,
		        (unsigned long long)h->base_generation, (unsigned long long)g,
		        (unsigned long long)b->generation);
		return -1;
	}
	return 0;
}

/* What the publisher said g holds, and what g itself says. */
static void check_content(const snap_view_t *v, uint64_t g)
{
	const snap_head_sh_t *h = v->head;
	const expect_sh_t *e = &sh->ring[g % RING];
	uint32_t accounts = atomic_load(&e->accounts), rules = atomic_load(&e->rules);
	snap_match_t m;

	if (atomic_load(&e->gen) == g && (h->live_accounts != accounts || h->nrules != rules))
		problem("generation %llu holds %u accounts and %u rules, the publisher said %u and %u",
		        (unsigned long long)g, h->live_accounts, h->nrules, accounts, rules);
	if (h->naccounts == 0 || snap_accounts(h)[0].id != 1 ||
	    snap_accounts(h)[0].max_channels != marker_of(g))
		problem("generation %llu: marker account does not carry its generation",
		        (unsigned long long)g);
	if (snap_lookup(v, &sentinel_ip, port_of(g), NULL, 0, SNAP_DIR_INGRESS, &m) != SNAP_MATCH ||
	    m.rule->id != SENTINEL || m.rule->port != port_of(g) || m.account != &snap_accounts(h)[0])
		problem("generation %llu: the sentinel rule does not match on its port",
		        (unsigned long long)g);
	if (snap_lookup(v, &sentinel_ip, (uint16_t)(port_of(g) + 1), NULL, 0, SNAP_DIR_INGRESS, &m) !=
	    SNAP_NO_FIT)
		problem("generation %llu: the sentinel rule matches another port", (unsigned long long)g);
}

/* A match must cover the address, name a live account, and not be a base entry hidden by a tombstone. */
static void check_lookups(const snap_view_t *v, uint64_t *s, int n)
{
	const unsigned char *base = (const unsigned char *)v->base;
	snap_match_t m;
	long matches = 0;

	for (int i = 0; i < n; i++) {
		tg_ip_t ip = v4(0x0a000000u | rnd(s, 65536));
		int r = snap_lookup(v, &ip, rnd(s, 2) ? 5060 : 5070, "1234", 4, 1 + rnd(s, 2), &m);

		if (r != SNAP_MATCH && r != SNAP_ACCOUNT_INACTIVE)
			continue;
		matches++;
		if (!tg_range_contains(&m.rule->range, &ip) || m.account->state != SNAP_ACCOUNT_LIVE ||
		    (r == SNAP_MATCH) != (m.account->active == 1) ||
		    ((const unsigned char *)m.rule > base &&
		     (const unsigned char *)m.rule < base + v->base->size && tombstoned(v->head, m.rule->id)))
			problem("generation %llu: lookup gave rule %lld, which does not fit",
			        (unsigned long long)v->head->generation, (long long)m.rule->id);
	}
	atomic_fetch_add(&sh->lookups, n);
	atomic_fetch_add(&sh->matches, matches);
}

/* Reader KILLED, told to hold: keeps one view and reads it until the SIGKILL. */
static void hold_until_killed(shm_proc_sh_t *slot, uint64_t *s)
{
	snap_view_t v;

	snap_acquire(&shm, slot, &v);
	atomic_store(&sh->held_gen, v.head->generation);
	for (;;) {
		check_regions(&v, v.head->generation, "held view");
		check_lookups(&v, s, 50);
	}
}

static void reader(int i)
{
	shm_proc_sh_t *slot = &shm.procs[SHM_PROC_WORKER(i)];
	uint64_t s = 0x9e3779b97f4a7c15ULL * (uint64_t)(i + 1);
	snap_view_t v;

	while (!atomic_load(&sh->stop)) {
		if (i == KILLED && atomic_load(&sh->hold))
			hold_until_killed(slot, &s);
		if (!snap_acquire(&shm, slot, &v))
			continue;

		uint64_t g = v.head->generation;

		if (check_regions(&v, g, "on acquire") == 0) {
			check_content(&v, g);
			check_lookups(&v, &s, 20);
			check_regions(&v, g, "after lookups");
		}
		atomic_fetch_add(&sh->reads, 1);
		snap_release(slot, &v);
	}
}

/* ------------------------------------------------------------------ */
/* the test: the master's part                                         */

static pid_t spawn(void (*fn)(int), int arg)
{
	pid_t pid;

	fflush(stdout); /* or the child would print the parent's buffered TAP again */
	pid = fork();
	if (pid == 0) {
		alarm(30); /* never outlive a broken test */
		fn(arg);
		_exit(0);
	}
	return pid;
}

static void publisher_main(int arg)
{
	(void)arg;
	publisher();
}

static void sleep_ms(long ms)
{
	struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Waits until cond(arg) or timeout_ms passed. Returns whether cond held. */
static int wait_for(int (*cond)(void), long timeout_ms)
{
	for (uint64_t until = tg_now_ms() + (uint64_t)timeout_ms; tg_now_ms() < until; sleep_ms(5))
		if (cond())
			return 1;
	return cond();
}

static long base_deltas, base_compactions;

static int warmed_up(void)
{
	return atomic_load(&sh->deltas) > 200 && atomic_load(&sh->compactions) > 3 &&
	       atomic_load(&sh->reads) > 300;
}

static int holding(void)
{
	return atomic_load(&sh->held_gen) != 0;
}

static int moving_again(void)
{
	return atomic_load(&sh->deltas) > base_deltas + 20 &&
	       atomic_load(&sh->compactions) > base_compactions;
}

/* The held view's arenas, read by the test while the dead reader's slot still pins them. */
static void check_pinned(uint64_t held)
{
	const snap_head_sh_t *h = shm.head_arena[held & 1];
	const snap_base_sh_t *b = shm.base_arena[h->base_arena & 1];
	uint64_t g1 = atomic_load(&shm.snapctl->generation);
	long busy1 = atomic_load(&sh->busy);

	sleep_ms(300);

	uint64_t g2 = atomic_load(&shm.snapctl->generation);

	ok(g1 <= held + 1 && g2 == g1,
	   "with the dead reader's slot holding %llu, the publisher stops at %llu", (unsigned long long)held,
	   (unsigned long long)g2);
	ok(atomic_load(&sh->busy) > busy1 + 10, "... answered busy, and retrying (%ld busy answers)",
	   atomic_load(&sh->busy) - busy1);
	ok(h->generation == held && snap_head_checksum(h) == h->checksum,
	   "... the held head's arena was not reused: it still holds %llu, checksum intact",
	   (unsigned long long)held);
	ok(b->generation == h->base_generation && snap_base_checksum(b) == b->checksum,
	   "... nor its base's: base %llu, checksum intact", (unsigned long long)h->base_generation);
}

static void run(pid_t *pids)
{
	shm_proc_sh_t *dead = &shm.procs[SHM_PROC_WORKER(KILLED)];
	int status;

	ok(wait_for(warmed_up, 10000),
	   "publisher and readers under way (%ld deltas, %ld compactions, %ld reads)",
	   atomic_load(&sh->deltas), atomic_load(&sh->compactions), atomic_load(&sh->reads));
	atomic_store(&sh->hold, 1);
	ok(wait_for(holding, 5000), "reader %d holds generation %llu", KILLED,
	   (unsigned long long)atomic_load(&sh->held_gen));
	sleep_ms(20); /* mid-read: it loops over its view */
	kill(pids[1 + KILLED], SIGKILL);
	waitpid(pids[1 + KILLED], &status, 0);
	ok(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && atomic_load(&dead->epoch) != 0,
	   "reader %d SIGKILLed mid-read; its slot still says %llu", KILLED,
	   (unsigned long long)atomic_load(&dead->epoch));
	check_pinned(atomic_load(&sh->held_gen));
	base_deltas = atomic_load(&sh->deltas);
	base_compactions = atomic_load(&sh->compactions);
	atomic_store(&dead->epoch, 0); /* what the master does when it reaps a child */
	ok(wait_for(moving_again, 10000),
	   "slot cleared: the publisher moves again (%ld deltas, %ld compactions since)",
	   atomic_load(&sh->deltas) - base_deltas, atomic_load(&sh->compactions) - base_compactions);
}

int main(void)
{
	tg_config_t cfg;
	pid_t pids[1 + NREADERS];
	int status, clean = 1;

	alarm(60);
	tg_log_set_level(TG_LOG_WARN);
	tg_config_defaults(&cfg);
	cfg.workers = NREADERS;
	cfg.cap_accounts = CAP_ACCOUNTS;
	cfg.cap_ip_rules = CAP_RULES;
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || shm_create(&shm, &cfg) < 0) {
		printf("Bail out! no shared memory\n");
		return 1;
	}
	pids[0] = spawn(publisher_main, 0);
	for (int i = 0; i < NREADERS; i++)
		pids[1 + i] = spawn(reader, i);
	run(pids);
	atomic_store(&sh->stop, 1);
	for (int i = 0; i < 1 + NREADERS; i++) {
		if (i == 1 + KILLED)
			continue;
		waitpid(pids[i], &status, 0);
		clean = clean && WIFEXITED(status) && WEXITSTATUS(status) == 0;
	}
	ok(clean, "the publisher and the surviving readers exited cleanly");
	printf("# %ld deltas, %ld compactions, %ld busy answers; %ld reads, %ld lookups, %ld matches\n",
	       atomic_load(&sh->deltas), atomic_load(&sh->compactions), atomic_load(&sh->busy),
	       atomic_load(&sh->reads), atomic_load(&sh->lookups), atomic_load(&sh->matches));
	is_int(atomic_load(&sh->problems), 0,
	       "no reader ever saw a generation other than what was published");
	if (atomic_load(&sh->problems) > 0)
		printf("# first: %s\n", sh->first);
	ok(atomic_load(&sh->deltas) > 0 && atomic_load(&sh->compactions) > 0, "both kinds of publish ran");
	ok(atomic_load(&sh->lookups) > 0 && atomic_load(&sh->matches) > 0, "lookups ran, and matched");
	shm_destroy(&shm);
	munmap(sh, sizeof(*sh));
	return done_testing();
}
