/*
 * What the dialog table and call limits cost: bytes per dialog slot and
 * per limit key, and ns per operation of a new call (begin, acquire of an
 * account and a rule, commit), an in-dialog lookup (find), a hang-up (end,
 * channels given back) and the sweep, per entry. The peer, measured in
 * the same run, is the same tables and the same sequence behind one
 * pthread mutex shared between processes (PTHREAD_PROCESS_SHARED), the
 * way a locked shared-memory table is usually written; both also run in
 * two processes at once, calls on the same account, to show what the lock
 * costs when workers contend. The nonce-count check is printed for scale.
 *
 * Prints results; asserts nothing.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/siphash.h"
#include "shm/dialog.h"
#include "shm/limits.h"
#include "shm/nonce.h"

#define CAP      (1u << 16) /* dialog slots */
#define LCAP     1024       /* limit keys */
#define NCALLS   20000      /* calls per run: a third of the table, as lingering calls would fill it */
#define REPS     5          /* each figure is the best of REPS runs: the machine may be shared */
#define NPROCS   2          /* processes in the contended runs */
#define PROCALLS 200000     /* calls each process makes in a contended run */
#define T0       1760000000ULL
#define M0       90000000ULL

static const uint8_t seed[16] = "bench-seed-16byt";
static volatile uint64_t sink;

#define BEST(var, expr)                                                                                      \
	do {                                                                                                 \
		var = 1e300;                                                                                 \
		for (int rep_ = 0; rep_ < REPS; rep_++) {                                                    \
			double v_ = (expr);                                                                  \
			var = v_ < var ? v_ : var;                                                           \
		}                                                                                            \
	} while (0)

static void *shared_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

static uint64_t key_of(uint64_t n)
{
	return tg_siphash(seed, &n, sizeof(n)) | 1;
}

static const shm_limit_req_t reqs[2] = {{SHM_LIMIT_ACCOUNT, 1, 100000, 0, 0, "acme"},
                                        {SHM_LIMIT_RULE, 2, 0, 0, 0, NULL}};

/* ---- the lock-free tables ---- */

typedef struct lf {
	shm_dialog_sh_t *d;
	shm_limits_sh_t *l;
	shm_dialog_ref_t *refs; /* [NCALLS] */
} lf_t;

static double ns_per(uint64_t t0, int n)
{
	return (double)(tg_now_ns() - t0) / n;
}

static void lf_reset(lf_t *t)
{
	shm_dialog_init(t->d, CAP, seed);
	shm_limits_init(t->l, LCAP, CAP, seed);
}

static int lf_new_call(lf_t *t, uint64_t key, shm_dialog_ref_t *ref)
{
	int which;

	return shm_dialog_begin(t->d, t->l, key, T0, ref) == SHM_DIALOG_NEW &&
	       shm_dialog_acquire(t->d, t->l, *ref, reqs, 2, M0, &which) == SHM_LIMIT_OK &&
	       shm_dialog_commit(t->d, *ref, 1, 2, SHM_DIALOG_INGRESS, 0);
}

/* ns per new call, per find, per end; *failures counts calls that did not go through */
static void lf_ops(lf_t *t, uint64_t base, double *begin, double *find, double *end, int *failures)
{
	uint64_t t0;
	shm_dialog_ref_t ref;

	lf_reset(t);
	t0 = tg_now_ns();
	for (int i = 0; i < NCALLS; i++)
		*failures += !lf_new_call(t, key_of(base + (uint64_t)i), &t->refs[i]);
	*begin = ns_per(t0, NCALLS);
	t0 = tg_now_ns();
	for (int i = 0; i < NCALLS; i++)
		sink += shm_dialog_find(t->d, key_of(base + (uint64_t)i), &ref) + ref;
	*find = ns_per(t0, NCALLS);
	t0 = tg_now_ns();
	for (int i = 0; i < NCALLS; i++)
		*failures += !shm_dialog_end(t->d, t->l, t->refs[i], SHM_DE_BYE, T0 + 60);
	*end = ns_per(t0, NCALLS);
}

/* ns per slot of a sweep over the whole table with NCALLS entries, none due */
static double lf_sweep(lf_t *t)
{
	shm_dialog_timeouts_t to = {3600, 0, 3600, 5};
	uint64_t t0;

	lf_reset(t);
	for (int i = 0; i < NCALLS; i++)
		lf_new_call(t, key_of(7000000 + (uint64_t)i), &t->refs[i]);
	t0 = tg_now_ns();
	shm_dialog_sweep(t->d, t->l, T0 + 1, &to, NULL, NULL);
	return ns_per(t0, CAP);
}

/* ---- the peer: the same tables behind one process-shared mutex ---- */

typedef struct pk_entry {
	uint64_t key;
	uint32_t state, created_s, answered_s, ended_s;
	int64_t account, rule;
	uint32_t held[2];
	int nheld;
	uint32_t pad[3];
} pk_entry_t;

typedef struct pk_limit {
	uint64_t key; /* kind << 63 | id, 0 = free */
	uint32_t channels, pad;
	uint64_t tat_ns, calls_total, refusals_channels, refusals_cps;
	char name[64];
} pk_limit_t;

typedef struct pk_sh {
	pthread_mutex_t mu;
	pk_limit_t limit[LCAP];
	pk_entry_t entry[CAP];
} pk_sh_t;

static void pk_reset(pk_sh_t *sh)
{
	pthread_mutexattr_t a;

	memset(sh, 0, sizeof(*sh));
	pthread_mutexattr_init(&a);
	pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
	pthread_mutex_init(&sh->mu, &a);
	pthread_mutexattr_destroy(&a);
}

/* Same probing as the lock-free tables: a 16-slot window, every slot looked at. */
static int pk_probe(pk_sh_t *sh, uint64_t key, int *free)
{
	uint32_t home = (uint32_t)key & (CAP - 1);

	*free = -1;
	for (uint32_t i = 0; i < SHM_DIALOG_PROBE; i++) {
		uint32_t j = (home + i) & (CAP - 1);

		if (sh->entry[j].state == SHM_DS_FREE) {
			if (*free < 0)
				*free = (int)j;
		} else if (sh->entry[j].key == key) {
			return (int)j;
		}
	}
	return -1;
}

static pk_limit_t *pk_limit(pk_sh_t *sh, const shm_limit_req_t *req)
{
	uint64_t key = (uint64_t)req->kind << 63 | (uint64_t)req->id;
	uint32_t home = (uint32_t)tg_siphash(seed, &key, sizeof(key)) & (LCAP - 1);

	for (uint32_t i = 0; i < SHM_LIMITS_PROBE; i++) {
		pk_limit_t *l = &sh->limit[(home + i) & (LCAP - 1)];

		if (l->key == key)
			return l;
		if (l->key == 0) {
			l->key = key;
			strncpy(l->name, req->name ? req->name : "", sizeof(l->name) - 1);
			return l;
		}
	}
	return NULL;
}

static int pk_new_call(pk_sh_t *sh, uint64_t key, uint32_t *idx)
{
	pk_limit_t *l[2];
	int free, ok = 0;

	pthread_mutex_lock(&sh->mu);
	if (pk_probe(sh, key, &free) < 0 && free >= 0) {
		pk_entry_t *e = &sh->entry[free];

		ok = 1;
		for (int i = 0; i < 2 && ok; i++) {
			l[i] = pk_limit(sh, &reqs[i]);
			ok = l[i] && (!reqs[i].max_channels || l[i]->channels < reqs[i].max_channels);
		}
		if (ok) {
			memset(e, 0, sizeof(*e));
			e->key = key;
			e->state = SHM_DS_EARLY;
			e->created_s = (uint32_t)T0;
			e->account = 1;
			e->rule = 2;
			for (int i = 0; i < 2; i++) {
				l[i]->channels++;
				l[i]->calls_total++;
				l[i]->tat_ns = M0 * 1000000;
				e->held[i] = (uint32_t)(l[i] - sh->limit);
			}
			e->nheld = 2;
			*idx = (uint32_t)free;
		}
	}
	pthread_mutex_unlock(&sh->mu);
	return ok;
}

static int pk_end(pk_sh_t *sh, uint32_t idx)
{
	pk_entry_t *e = &sh->entry[idx];
	int ok = 0;

	pthread_mutex_lock(&sh->mu);
	if (e->state == SHM_DS_EARLY || e->state == SHM_DS_CONFIRMED) {
		e->state = SHM_DS_ENDED;
		e->ended_s = (uint32_t)T0 + 60;
		for (int i = 0; i < e->nheld; i++)
			sh->limit[e->held[i]].channels--;
		e->nheld = 0;
		ok = 1;
	}
	pthread_mutex_unlock(&sh->mu);
	return ok;
}

static void pk_ops(pk_sh_t *sh, uint32_t *idx, uint64_t base, double *begin, double *find, double *end,
                   int *failures)
{
	uint64_t t0;
	int free;

	pk_reset(sh);
	t0 = tg_now_ns();
	for (int i = 0; i < NCALLS; i++)
		*failures += !pk_new_call(sh, key_of(base + (uint64_t)i), &idx[i]);
	*begin = ns_per(t0, NCALLS);
	t0 = tg_now_ns();
	for (int i = 0; i < NCALLS; i++) {
		pthread_mutex_lock(&sh->mu);
		sink += (uint64_t)pk_probe(sh, key_of(base + (uint64_t)i), &free);
		pthread_mutex_unlock(&sh->mu);
	}
	*find = ns_per(t0, NCALLS);
	t0 = tg_now_ns();
	for (int i = 0; i < NCALLS; i++)
		*failures += !pk_end(sh, idx[i]);
	*end = ns_per(t0, NCALLS);
}

/* The peer's sweep: the same checks per slot, the lock held for 1024 slots at a time. */
static double pk_sweep(pk_sh_t *sh, uint32_t *idx)
{
	uint64_t t0, live = 0;

	pk_reset(sh);
	for (int i = 0; i < NCALLS; i++)
		pk_new_call(sh, key_of(7000000 + (uint64_t)i), &idx[i]);
	t0 = tg_now_ns();
	for (uint32_t j = 0; j < CAP; j++) {
		pk_entry_t *e = &sh->entry[j];

		if (j % 1024 == 0)
			pthread_mutex_lock(&sh->mu);
		if (e->state == SHM_DS_EARLY && (uint32_t)T0 + 1 - e->created_s >= 3600)
			e->state = SHM_DS_ENDED;
		live += e->state != SHM_DS_FREE;
		if (j % 1024 == 1023)
			pthread_mutex_unlock(&sh->mu);
	}
	sink += live;
	return ns_per(t0, CAP);
}

/*
 * ---- whole calls (new, find, end) on the same account, in one process
 * and in two at once. The sweep (the master's) runs every SWEEP_EVERY
 * calls of all processes, by whichever process notices first and takes
 * the sweep flag (never two sweeps at once, nobody waits for it); each
 * process's time excludes the sweeps it ran. A call refused (a probe
 * window full of ended calls not yet swept; BUSY, a CAS that kept failing)
 * is counted, not retried.
 */
#define SWEEP_EVERY 8192

typedef struct duel {
	_Atomic int ready, go, sweeping;
	_Atomic long calls, swept_at, failures, refused;
	_Atomic uint64_t busy_ns; /* summed over processes: their time less their sweeps */
} duel_t;

/* Count a batch of calls; sweep when due. Returns ns spent sweeping. */
static uint64_t duel_tick(duel_t *g, void (*sweep)(void *arg), void *arg)
{
	long n = atomic_fetch_add(&g->calls, 256) + 256;
	int zero = 0;
	uint64_t t0;

	if (n - atomic_load(&g->swept_at) < SWEEP_EVERY ||
	    !atomic_compare_exchange_strong(&g->sweeping, &zero, 1))
		return 0;
	t0 = tg_now_ns();
	sweep(arg);
	atomic_store(&g->swept_at, n);
	atomic_store(&g->sweeping, 0);
	return tg_now_ns() - t0;
}

static void lf_sweep_free(void *arg)
{
	lf_t *t = arg;
	shm_dialog_timeouts_t to = {3600, 0, 0, 5};

	shm_dialog_sweep(t->d, t->l, T0, &to, NULL, NULL);
}

/* The peer's sweep holds the lock for 1024 slots at a time: short holds, few handovers. */
static void pk_sweep_free(void *arg)
{
	pk_sh_t *sh = arg;

	for (uint32_t j = 0; j < CAP; j++) {
		if (j % 1024 == 0)
			pthread_mutex_lock(&sh->mu);
		if (sh->entry[j].state == SHM_DS_ENDED)
			sh->entry[j].state = SHM_DS_FREE;
		if (j % 1024 == 1023)
			pthread_mutex_unlock(&sh->mu);
	}
}

static void duel_start(duel_t *g)
{
	atomic_fetch_add(&g->ready, 1);
	while (!atomic_load(&g->go))
		;
}

static void lf_worker(lf_t *t, duel_t *g, int me)
{
	shm_dialog_ref_t ref, f;
	uint64_t t0, swept = 0;
	int which;

	duel_start(g);
	t0 = tg_now_ns();
	for (int i = 0; i < PROCALLS; i++) {
		uint64_t key = key_of((uint64_t)me << 40 | (uint64_t)i);
		shm_dialog_result_t r = shm_dialog_begin(t->d, t->l, key, T0, &ref);
		shm_limit_result_t lr;

		if (r == SHM_DIALOG_FULL || r == SHM_DIALOG_BUSY) {
			atomic_fetch_add(&g->refused, 1);
		} else if (r != SHM_DIALOG_NEW) {
			atomic_fetch_add(&g->failures, 1);
		} else if ((lr = shm_dialog_acquire(t->d, t->l, ref, reqs, 2, M0, &which)) != SHM_LIMIT_OK) {
			/* BUSY: a CAS on the account kept failing; the worker answers 503, the caller retries
			 */
			atomic_fetch_add(lr == SHM_LIMIT_BUSY ? &g->refused : &g->failures, 1);
			shm_dialog_abandon(t->d, t->l, ref, T0);
		} else if (!shm_dialog_commit(t->d, ref, 1, 2, SHM_DIALOG_INGRESS, 0) ||
		           shm_dialog_find(t->d, key, &f) != SHM_DIALOG_EXISTS ||
		           !shm_dialog_end(t->d, t->l, ref, SHM_DE_BYE, T0)) {
			atomic_fetch_add(&g->failures, 1);
		}
		if (i % 256 == 255)
			swept += duel_tick(g, lf_sweep_free, t);
	}
	atomic_fetch_add(&g->busy_ns, tg_now_ns() - t0 - swept);
	_exit(0);
}

static void pk_worker(pk_sh_t *sh, duel_t *g, int me)
{
	uint64_t t0, swept = 0;
	uint32_t idx;
	int free;

	duel_start(g);
	t0 = tg_now_ns();
	for (int i = 0; i < PROCALLS; i++) {
		uint64_t key = key_of((uint64_t)me << 40 | (uint64_t)i);
		int found;

		if (!pk_new_call(sh, key, &idx)) {
			atomic_fetch_add(&g->refused, 1); /* the only refusal there is: no free slot */
		} else {
			pthread_mutex_lock(&sh->mu);
			found = pk_probe(sh, key, &free) >= 0;
			pthread_mutex_unlock(&sh->mu);
			if (!found || !pk_end(sh, idx))
				atomic_fetch_add(&g->failures, 1);
		}
		if (i % 256 == 255)
			swept += duel_tick(g, pk_sweep_free, sh);
	}
	atomic_fetch_add(&g->busy_ns, tg_now_ns() - t0 - swept);
	_exit(0);
}

/* ns per whole call in each process (its time less its sweeps); which: 0 lock-free, 1 peer */
static double duel(lf_t *t, pk_sh_t *sh, int which, int nprocs, long *failures, long *refused)
{
	duel_t *g = shared_map(sizeof(duel_t));
	pid_t pid[NPROCS];
	double ns;

	if (which == 0)
		lf_reset(t);
	else
		pk_reset(sh);
	for (int p = 0; p < nprocs; p++) {
		pid[p] = fork();
		if (pid[p] == 0) {
			if (which == 0)
				lf_worker(t, g, p);
			pk_worker(sh, g, p);
		}
	}
	while (atomic_load(&g->ready) < nprocs)
		sched_yield();
	atomic_store(&g->go, 1);
	for (int p = 0; p < nprocs; p++)
		waitpid(pid[p], NULL, 0);
	ns = (double)atomic_load(&g->busy_ns) / ((double)PROCALLS * nprocs);
	*failures += atomic_load(&g->failures);
	refused[which] += atomic_load(&g->refused);
	munmap(g, sizeof(duel_t));
	return ns;
}

/* ---- for scale: the nonce-count check ---- */

static double nonce_op(shm_nonce_sh_t *nsh, uint32_t *nc)
{
	uint64_t t0 = tg_now_ns();

	(*nc)++;
	for (int i = 0; i < NCALLS; i++)
		sink += shm_nonce_check(nsh, key_of((uint64_t)i), *nc, 0, T0 + 300, T0);
	return ns_per(t0, NCALLS);
}

int main(void)
{
	lf_t t = {shared_map(shm_dialog_size(CAP)), shared_map(shm_limits_size(LCAP, CAP)),
	          malloc(NCALLS * sizeof(shm_dialog_ref_t))};
	pk_sh_t *sh = shared_map(sizeof(pk_sh_t));
	uint32_t *idx = malloc(NCALLS * sizeof(uint32_t)), nc = 0;
	shm_nonce_sh_t *nsh = shm_nonce_init(shared_map(shm_nonce_size(CAP)), CAP, seed);
	double lb = 1e300, lfi = 1e300, le = 1e300, pb = 1e300, pfi = 1e300, pe = 1e300, b, f, e, lsw, psw,
	       nonce;
	double lone[2], two[2];
	int failures = 0;
	long dfail = 0, refused[2] = {0, 0};

	for (int r = 0; r < REPS; r++) {
		lf_ops(&t, 1000000 * (uint64_t)r, &b, &f, &e, &failures);
		lb = b < lb ? b : lb;
		lfi = f < lfi ? f : lfi;
		le = e < le ? e : le;
		pk_ops(sh, idx, 1000000 * (uint64_t)r, &b, &f, &e, &failures);
		pb = b < pb ? b : pb;
		pfi = f < pfi ? f : pfi;
		pe = e < pe ? e : pe;
	}
	BEST(lsw, lf_sweep(&t));
	BEST(psw, pk_sweep(sh, idx));
	BEST(nonce, nonce_op(nsh, &nc));
	for (int w = 0; w < 2; w++) {
		BEST(lone[w], duel(&t, sh, w, 1, &dfail, refused));
		BEST(two[w], duel(&t, sh, w, NPROCS, &dfail, refused));
	}

	printf("dialog table and call limits (best of %d runs; %u dialog slots, %d calls live)\n\n", REPS,
	       CAP, NCALLS);
	printf("bytes per dialog slot: %zu (entry) + %zu (its holder in the limits table)\n",
	       sizeof(shm_dialog_entry_sh_t), sizeof(shm_limit_holder_sh_t));
	printf("bytes per limit key:   %zu\n", sizeof(shm_limit_entry_sh_t));
	printf("table for %u calls and %u keys: %.1f MB\n\n", CAP, LCAP,
	       (double)(shm_dialog_size(CAP) + shm_limits_size(LCAP, CAP)) / 1e6);
	printf("%-52s %10s %10s %8s\n", "ns per operation, one process", "lock-free", "mutex", "ratio");
	printf("%-52s %10.0f %10.0f %8.2f\n", "new call: begin + acquire (account, rule) + commit", lb, pb,
	       lb / pb);
	printf("%-52s %10.0f %10.0f %8.2f\n", "find (in-dialog request)", lfi, pfi, lfi / pfi);
	printf("%-52s %10.0f %10.0f %8.2f\n", "end + channels given back", le, pe, le / pe);
	printf("%-52s %10.1f %10.1f %8.2f\n", "sweep, per slot (1/3 live, none due)", lsw, psw, lsw / psw);
	printf("%-52s %10.0f\n", "for scale: nonce-count check (shm/nonce.h)", nonce);
	printf("\nwhole call (new + find + end) on one account, ns per call in each process (sweeps "
	       "excluded):\n");
	printf("%-52s %10.0f %10.0f %8.2f\n", "1 process", lone[0], lone[1], lone[0] / lone[1]);
	printf("%-52s %10.0f %10.0f %8.2f\n", "2 processes at once", two[0], two[1], two[0] / two[1]);
	printf("%-52s %10ld %10ld   (of %d)\n", "calls refused: window full, or BUSY", refused[0], refused[1],
	       REPS * (1 + NPROCS) * PROCALLS);
	printf("\nratio = lock-free / mutex: below 1, the lock-free table is faster.\n");
	printf("the mutex peer has no answer to a holder SIGKILLed inside its critical section: every "
	       "worker\n"
	       "then blocks (a robust mutex could recover the lock, not the half-updated counts).\n");
	if (failures || dfail)
		printf("# %d + %ld calls failed in the timed loops: the numbers are wrong\n", failures,
		       dfail);
	free(t.refs);
	free(idx);
	return 0;
}
