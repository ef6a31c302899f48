/*
 * Call limits (shm/limits.c) and the dialog table (shm/dialog.c).
 *
 * Limits: channels never pass max_channels and come back when released;
 * a call of two keys takes all or nothing, giving back channels and CPS
 * tokens when its second key refuses; the CPS bucket passes a burst and
 * then its rate; unlimited keys still count; a full window refuses, and
 * an entry idle an hour is taken over, never one holding channels; a
 * claim left by a dead process answers BUSY, then is freed. Each half
 * done state a killed process can leave in a holder (a take pending,
 * landed or not; a release under way, landed or not; an orphan take) is
 * finished exactly once: counts end where they should, never twice.
 *
 * Dialogs: every transition and result; stale refs change nothing; the
 * sweep's timeouts, lingering, a claim whose creator died, a release an
 * ender left half done.
 *
 * Then, four processes over one MAP_SHARED mapping: (a) calls against
 * max_channels 5: the count never seen above 5 (nor wrapped below 0) and
 * back to 0 at the end; (b) all begin the same dialog at once: exactly
 * one NEW; (c) ends racing each other and the sweep's expiry: each
 * dialog released exactly once, counts back to 0; (d) a child killed
 * again and again in a loop of begin/acquire/commit/end, then a sweep
 * with short timeouts: every count back to 0, every holder empty; (e) a
 * CPS bucket of rate 10 and burst 10 offered 50/s for 5 s of a simulated
 * clock by four processes at once passes burst + rate x 5, within 1.
 */
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shm/dialog.h"
#include "shm/limits.h"
#include "t/unit/tap.h"

#define NPROCS 4
#define T0     1760000000ULL /* s, the caller clock of dialogs */
#define M0     90000000ULL   /* ms, a monotonic clock's reading */

static const uint8_t seed[16] = "tollgate-test-sd";

/* The layout shm/limits.h documents, to build what a killed process leaves. */
#define EVID(h, slot, gen) ((uint64_t)(gen) << 25 | (uint64_t)(slot) << 24 | ((uint64_t)(h) + 1))
#define CWORD(c, ev)       ((uint64_t)((c)&0xFFFFF) << 44 | (ev))
#define COUNT(w)           ((uint32_t)((w) >> 44))
#define HWORD(gen, s1, s0) ((uint64_t)(gen) << 42 | (uint64_t)(s1) << 21 | (uint64_t)(s0))
#define SLOT(phase, entry) ((uint32_t)(phase) << 19 | ((entry) + 1))
#define HSLOT(w, i)        ((uint32_t)((w) >> (21 * (i))) & 0x1FFFFF)
#define H_CLAIMED          (1ULL << 62)
enum { NONE, PENDING, HELD, RELEASING };

static void *shared_map(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	return p;
}

typedef struct tables {
	shm_dialog_sh_t *d;
	shm_limits_sh_t *l;
	size_t dlen, llen;
} tables_t;

static void tables_make(tables_t *t, uint32_t dialogs, uint32_t limits)
{
	t->dlen = shm_dialog_size(dialogs);
	t->llen = shm_limits_size(limits, dialogs);
	t->d = shm_dialog_init(shared_map(t->dlen), dialogs, seed);
	t->l = shm_limits_init(shared_map(t->llen), limits, dialogs, seed);
}

static void tables_free(tables_t *t)
{
	munmap(t->d, t->dlen);
	munmap(t->l, t->llen);
}

static shm_limit_req_t account(int64_t id, uint32_t max_channels, uint32_t max_cps)
{
	return (shm_limit_req_t){SHM_LIMIT_ACCOUNT, id, max_channels, max_cps, 0, "acme"};
}

static shm_limit_req_t rule(int64_t id, uint32_t max_channels)
{
	return (shm_limit_req_t){SHM_LIMIT_RULE, id, max_channels, 0, 0, NULL};
}

/* Channels of a key, or -1 when it has no entry. */
static long channels(shm_limits_sh_t *l, uint8_t kind, int64_t id)
{
	shm_limit_stat_t st;

	return shm_limits_lookup(l, kind, id, &st) ? (long)st.channels : -1;
}

static uint64_t stat_of(shm_limits_sh_t *l, uint8_t kind, int64_t id, int which)
{
	shm_limit_stat_t st;

	if (!shm_limits_lookup(l, kind, id, &st))
		return UINT64_MAX;
	return which == 0 ? st.calls_total : which == 1 ? st.refusals_channels : st.refusals_cps;
}

/* A call outside any dialog, on holder h with generation g. */
static shm_limit_result_t call(shm_limits_sh_t *l, uint32_t h, uint32_t g, const shm_limit_req_t *reqs, int n,
                               uint64_t now_ms, int *which)
{
	if (!shm_limits_open(l, h, g))
		return SHM_LIMIT_LOST;
	return shm_limits_acquire(l, h, g, reqs, n, now_ms, which);
}

static _Atomic uint64_t *holder_word(shm_limits_sh_t *l, uint32_t h)
{
	return &((shm_limit_holder_sh_t *)((char *)l + l->off_holders) + h)->word;
}

static int holder_empty(shm_limits_sh_t *l, uint32_t h)
{
	uint64_t w = atomic_load(holder_word(l, h));

	return HSLOT(w, 0) == 0 && HSLOT(w, 1) == 0;
}

/* ---- limits ---- */

static void test_limits_basics(void)
{
	tables_t t;
	shm_limit_req_t a = account(7, 2, 0);
	uint32_t idx[2];
	int which = -1;

	tables_make(&t, 64, 64);
	is_int(t.llen % 64, 0, "limits table size is a whole number of cache lines");
	is_int(sizeof(shm_limit_entry_sh_t), 128, "a limit entry is two cache lines");
	is_int(call(t.l, 0, 1, &a, 1, M0, &which), SHM_LIMIT_OK, "first call of an account: OK");
	is_int(shm_limits_held(t.l, 0, 1, idx), 1, "its holder holds one entry");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 7), 1, "1 channel in use");
	is_int(call(t.l, 1, 1, &a, 1, M0, &which), SHM_LIMIT_OK, "second call: OK");
	is_int(call(t.l, 2, 1, &a, 1, M0, &which), SHM_LIMIT_CHANNELS,
	       "third call at max_channels 2: CHANNELS");
	is_int(which, 0, "... refused by reqs[0]");
	ok(holder_empty(t.l, 2), "... and its holder holds nothing");
	is_int(stat_of(t.l, SHM_LIMIT_ACCOUNT, 7, 1), 1, "the refusal is counted in the account's entry");
	is_int(shm_limits_release(t.l, 0, 1), 1, "release of the first call: done");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 7), 1, "1 channel in use");
	is_int(shm_limits_release(t.l, 0, 1), 1, "releasing the same holder again: nothing left to do");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 7), 1, "... and nothing given back twice");
	is_int(call(t.l, 2, 2, &a, 1, M0, &which), SHM_LIMIT_OK, "a channel free again: OK");
	shm_limits_release(t.l, 1, 1);
	shm_limits_release(t.l, 2, 2);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 7), 0, "all released: 0 channels");
	is_int(stat_of(t.l, SHM_LIMIT_ACCOUNT, 7, 0), 3, "calls_total counts the 3 admitted");
	is_int(channels(t.l, SHM_LIMIT_RULE, 7), -1, "rule 7 is another key than account 7");
	is_int(atomic_load(&t.l->underflows), 0, "no underflow");
	tables_free(&t);
}

/*
 * Account: 2 calls per second, no channel limit. Rule: 1 channel. A
 * second call passes the account (a token) and is refused by the rule:
 * the account's token must come back, so the next call still finds one.
 */
static void test_limits_all_or_nothing(void)
{
	tables_t t;
	shm_limit_req_t two[2] = {account(1, 0, 2), rule(10, 1)};
	int which = -1;

	tables_make(&t, 64, 64);
	is_int(call(t.l, 0, 1, two, 2, M0, &which), SHM_LIMIT_OK, "call A, account + rule: OK");
	is_int(call(t.l, 1, 1, two, 2, M0, &which), SHM_LIMIT_CHANNELS, "call B: the rule is full: CHANNELS");
	is_int(which, 1, "... refused by reqs[1], the rule");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 1, "the account's channel taken by B was given back");
	ok(holder_empty(t.l, 1), "B holds nothing");
	is_int(call(t.l, 2, 1, two, 1, M0, &which), SHM_LIMIT_OK,
	       "call C, account only, same ms: OK (B's token was refunded)");
	is_int(call(t.l, 3, 1, two, 1, M0, &which), SHM_LIMIT_CPS, "call D, same ms: CPS (2 tokens used)");
	is_int(stat_of(t.l, SHM_LIMIT_ACCOUNT, 1, 2), 1, "the CPS refusal is counted in the account");
	is_int(stat_of(t.l, SHM_LIMIT_RULE, 10, 1), 1, "the channel refusal is counted in the rule");
	is_int(stat_of(t.l, SHM_LIMIT_ACCOUNT, 1, 0), 2, "calls_total: A and C, not B");
	is_int(call(t.l, 3, 2, two, 1, M0 + 500, &which), SHM_LIMIT_OK, "500 ms later a token is back: OK");
	tables_free(&t);
}

/* (e), one process: rate 10, burst 10, 50 calls a second for 5 s. */
static void test_limits_cps(void)
{
	tables_t t;
	shm_limit_req_t a = account(3, 0, 10);
	int passed = 0, which;

	tables_make(&t, 64, 64);
	for (int k = 0; k < 250; k++) {
		if (call(t.l, 0, (uint32_t)k + 1, &a, 1, M0 + 20 * (uint64_t)k, &which) == SHM_LIMIT_OK)
			passed++;
		shm_limits_release(t.l, 0, (uint32_t)k + 1);
	}
	ok(passed >= 59 && passed <= 61,
	   "rate 10 burst 10, 50/s for 5 s: %d passed (burst + rate x 5 = 60, +-1)", passed);
	passed = 0;
	for (int k = 0; k < 20; k++) {
		if (call(t.l, 0, 1000 + (uint32_t)k, &a, 1, M0 + 60000, &which) == SHM_LIMIT_OK)
			passed++;
		shm_limits_release(t.l, 0, 1000 + (uint32_t)k);
	}
	is_int(passed, 10, "after a quiet minute, a burst of 20 at once: the burst of 10 passes");
	a.cps_burst = 2;
	passed = 0;
	for (int k = 0; k < 20; k++) {
		if (call(t.l, 0, 2000 + (uint32_t)k, &a, 1, M0 + 120000, &which) == SHM_LIMIT_OK)
			passed++;
		shm_limits_release(t.l, 0, 2000 + (uint32_t)k);
	}
	is_int(passed, 2, "with cps_burst 2: 2 pass at once");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 3), 0, "every call released: 0 channels");
	tables_free(&t);
}

static void test_limits_unlimited(void)
{
	tables_t t;
	shm_limit_req_t a = account(5, 0, 0);
	int oks = 0, which;

	tables_make(&t, 128, 64);
	for (uint32_t h = 0; h < 100; h++)
		oks += call(t.l, h, 1, &a, 1, M0, &which) == SHM_LIMIT_OK;
	is_int(oks, 100, "max 0: 100 calls at once pass");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 5), 100, "... and are counted: 100 channels");
	for (uint32_t h = 0; h < 100; h++)
		shm_limits_release(t.l, h, 1);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 5), 0, "released: 0");
	tables_free(&t);
}

static void count_entry(void *arg, const shm_limit_stat_t *st)
{
	int *n = arg;

	(*n)++;
	if (st->kind == SHM_LIMIT_ACCOUNT && st->id == 100 && strcmp(st->name, "acme") == 0)
		n[1] = (int)st->channels;
}

/* A table of 16 slots: every key shares the one probe window. */
static void test_limits_full_reclaim(void)
{
	tables_t t;
	int oks = 0, which, n[2] = {0, -1};

	tables_make(&t, 64, SHM_LIMITS_PROBE);
	for (int i = 0; i < SHM_LIMITS_PROBE; i++) {
		shm_limit_req_t a = account(100 + i, 0, 0);

		oks += call(t.l, (uint32_t)i, 1, &a, 1, M0, &which) == SHM_LIMIT_OK;
		if (i > 0)
			shm_limits_release(t.l, (uint32_t)i, 1); /* account 100 keeps its channel */
	}
	is_int(oks, SHM_LIMITS_PROBE, "%d keys fill the table", SHM_LIMITS_PROBE);
	{
		shm_limit_req_t a = account(999, 0, 0);

		is_int(call(t.l, 20, 1, &a, 1, M0 + 1000, &which), SHM_LIMIT_FULL, "one more: FULL");
		is_int(atomic_load(&t.l->full), 1, "FULL counted");
		is_int(call(t.l, 20, 1, &a, 1, M0 + SHM_LIMITS_IDLE_MS - 1, &which), SHM_LIMIT_FULL,
		       "a ms before the idle hour: still FULL");
		is_int(call(t.l, 20, 1, &a, 1, M0 + SHM_LIMITS_IDLE_MS, &which), SHM_LIMIT_OK,
		       "an idle hour later: OK, an idle entry taken over");
	}
	is_int(atomic_load(&t.l->reclaims), 1, "one reclaim counted");
	shm_limits_foreach(t.l, count_entry, n);
	is_int(n[0], SHM_LIMITS_PROBE, "foreach: %d live entries", SHM_LIMITS_PROBE);
	is_int(n[1], 1, "foreach: the account holding a channel kept it (and its name)");
	tables_free(&t);
}

/* A claim whose claimer died before publishing: BUSY for its key, until SHM_LIMITS_CLAIM_MS. */
static void test_limits_stuck_claim(void)
{
	tables_t t;
	shm_limit_req_t a = account(77, 0, 0), b = account(78, 0, 0);
	int which;

	tables_make(&t, 64, SHM_LIMITS_PROBE);
	atomic_store(&t.l->entry[5].hdr, H_CLAIMED | 77);
	atomic_store(&t.l->entry[5].tat_ns, M0 * 1000000ULL);
	is_int(call(t.l, 0, 1, &a, 1, M0, &which), SHM_LIMIT_BUSY, "a key claimed by a dead process: BUSY");
	is_int(atomic_load(&t.l->busy), 1, "BUSY counted");
	is_int(call(t.l, 1, 1, &b, 1, M0, &which), SHM_LIMIT_OK, "another key is not held up");
	is_int(call(t.l, 0, 1, &a, 1, M0 + SHM_LIMITS_CLAIM_MS, &which), SHM_LIMIT_OK,
	       "%d ms later the claim is freed: OK", SHM_LIMITS_CLAIM_MS);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 77), 1, "... with its channel counted once");
	tables_free(&t);
}

/*
 * What a process killed at each point leaves in its holder (slot 0,
 * generation 5, holder 0), built by hand from the documented layout, and
 * what finishing it must give: each count taken is given back once.
 */
static void test_limits_dead_holder(void)
{
	tables_t t;
	shm_limit_req_t a = account(9, 2, 0);
	uint32_t idx[2], e;
	_Atomic uint64_t *tk, *rl, *hw;
	int which;

	tables_make(&t, 64, 64);
	call(t.l, 1, 1, &a, 1, M0, &which); /* creates the entry; holder 1 keeps a channel */
	shm_limits_held(t.l, 1, 1, idx);
	e = idx[0];
	tk = &t.l->entry[e].tk;
	rl = &t.l->entry[e].rl;
	hw = holder_word(t.l, 0);

	/* killed after marking PENDING, before the take */
	atomic_store(hw, HWORD(5, 0, SLOT(PENDING, e)));
	is_int(shm_limits_release(t.l, 0, 5), 1, "PENDING, no take: finished");
	ok(holder_empty(t.l, 0) && channels(t.l, SHM_LIMIT_ACCOUNT, 9) == 1,
	   "... nothing given back (still 1)");

	/* killed between the take and its record */
	atomic_store(tk, CWORD(COUNT(atomic_load(tk)) + 1, EVID(0, 0, 6)));
	atomic_store(hw, HWORD(6, 0, SLOT(PENDING, e)));
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 2, "PENDING whose take landed: 2 in use");
	is_int(shm_limits_release(t.l, 0, 6), 1, "... finished");
	ok(holder_empty(t.l, 0) && channels(t.l, SHM_LIMIT_ACCOUNT, 9) == 1, "... its take given back: 1");
	is_int(atomic_load(&t.l->orphans), 1, "... counted as an orphan undone");

	/* the same, but the key's next call comes first: it must finish the record, not double it */
	atomic_store(tk, CWORD(COUNT(atomic_load(tk)) + 1, EVID(0, 0, 7)));
	atomic_store(hw, HWORD(7, 0, SLOT(PENDING, e)));
	is_int(call(t.l, 2, 1, &a, 1, M0, &which), SHM_LIMIT_CHANNELS,
	       "a PENDING take that landed counts: the next call finds 2 of 2 in use");
	is_int(HSLOT(atomic_load(hw), 0), SLOT(HELD, e), "... and the next take made its record HELD");
	shm_limits_release(t.l, 0, 7);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 1, "released: 1");

	/* killed in a release, before it landed */
	atomic_store(tk, CWORD(COUNT(atomic_load(tk)) + 1, EVID(0, 0, 8)));
	atomic_store(hw, HWORD(8, 0, SLOT(RELEASING, e)));
	is_int(shm_limits_release(t.l, 0, 8), 1, "RELEASING, not landed: finished");
	ok(holder_empty(t.l, 0) && channels(t.l, SHM_LIMIT_ACCOUNT, 9) == 1, "... given back once: 1");

	/* killed in a release, after it landed */
	atomic_store(tk, CWORD(COUNT(atomic_load(tk)) + 1, 0));
	atomic_store(rl, CWORD(COUNT(atomic_load(rl)) + 1, EVID(0, 0, 9)));
	atomic_store(hw, HWORD(9, 0, SLOT(RELEASING, e)));
	is_int(shm_limits_release(t.l, 0, 9), 1, "RELEASING, landed: finished");
	ok(holder_empty(t.l, 0) && channels(t.l, SHM_LIMIT_ACCOUNT, 9) == 1, "... not given back twice: 1");

	/* an orphan: a take whose slot was resolved to NONE, found by the key's next call */
	shm_limits_open(t.l, 0, 10);
	atomic_store(tk, CWORD(COUNT(atomic_load(tk)) + 1, EVID(0, 0, 10)));
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 2, "an orphan take: 2 seem in use");
	is_int(call(t.l, 3, 1, &a, 1, M0, &which), SHM_LIMIT_OK, "the next call undoes it first: OK");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 2, "... 2 in use, the orphan gone");
	shm_limits_release(t.l, 1, 1);
	shm_limits_release(t.l, 3, 1);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 0, "all released: 0");
	/* the same slot and generation holding the same entry a second time (a call that looked again) */
	shm_limits_open(t.l, 0, 30);
	is_int(shm_limits_acquire(t.l, 0, 30, &a, 1, M0, &which), SHM_LIMIT_OK,
	       "a take by holder 0, generation 30");
	shm_limits_release(t.l, 0, 30);
	shm_limits_open(t.l, 0, 30);
	is_int(shm_limits_acquire(t.l, 0, 30, &a, 1, M0, &which), SHM_LIMIT_OK,
	       "... given back, and taken again");
	shm_limits_release(t.l, 0, 30);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 0, "... and given back again");

	/* an orphan naming the very slot that takes next (its undo gave up): not to be counted as its take */
	shm_limits_open(t.l, 0, 40);
	atomic_store(tk, CWORD(COUNT(atomic_load(tk)) + 1, EVID(0, 0, 40)));
	is_int(shm_limits_acquire(t.l, 0, 40, &a, 1, M0, &which), SHM_LIMIT_OK,
	       "a take by the slot an orphan names: OK");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 1, "... the orphan undone, the take counted once: 1");
	shm_limits_release(t.l, 0, 40);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 9), 0, "... released: 0");
	is_int(atomic_load(&t.l->underflows), 0, "no underflow");
	tables_free(&t);
}

/* ---- dialogs ---- */

static void test_dialog_basics(void)
{
	tables_t t;
	shm_limit_req_t reqs[2] = {account(1, 10, 0), rule(2, 0)};
	uint64_t k;
	shm_dialog_ref_t ref, r2, old;
	shm_dialog_info_t info;
	int which;

	tables_make(&t, 64, 64);
	is_int(t.dlen % 64, 0, "dialog table size is a whole number of cache lines");
	is_int(sizeof(shm_dialog_entry_sh_t), 64, "a dialog entry is one cache line");
	k = shm_dialog_key(t.d, "a84b4c76e66710", 14, "1928301774", 10);
	ok(k != shm_dialog_key(t.d, "a84b4c76e6671", 13, "01928301774", 11),
	   "key of (\"...10\", \"19...\") differs from (\"...1\", \"019...\")");
	is_int(shm_dialog_begin(t.d, t.l, k, T0, &ref), SHM_DIALOG_NEW, "INVITE: NEW");
	is_int(shm_dialog_begin(t.d, t.l, k, T0, &r2), SHM_DIALOG_PENDING,
	       "its retransmission meanwhile: PENDING");
	is_int(shm_dialog_find(t.d, k, &r2), SHM_DIALOG_PENDING, "find meanwhile: PENDING");
	is_int(shm_dialog_acquire(t.d, t.l, ref, reqs, 2, M0, &which), SHM_LIMIT_OK, "limits: OK");
	is_int(shm_dialog_commit(t.d, ref, 1, 2, SHM_DIALOG_INGRESS, 0), 1, "commit");
	is_int(shm_dialog_commit(t.d, ref, 1, 2, SHM_DIALOG_INGRESS, 0), 0, "commit again: 0");
	is_int(shm_dialog_begin(t.d, t.l, k, T0 + 1, &r2), SHM_DIALOG_EXISTS, "retransmission: EXISTS");
	ok(r2 == ref, "... the same dialog");
	ok(shm_dialog_read(t.d, t.l, ref, &info) && info.state == SHM_DS_EARLY && info.nheld == 2 &&
	           info.account == 1 && info.rule == 2 && info.created_s == (uint32_t)T0,
	   "read: EARLY, holding 2, account 1, rule 2, created at T0");
	is_int(shm_dialog_find(t.d, k, &r2), SHM_DIALOG_EXISTS, "find: EXISTS");
	is_int(shm_dialog_find(t.d, shm_dialog_key(t.d, "a84b4c76e66710", 14, "x", 1), &r2), SHM_DIALOG_NONE,
	       "find with another tag: NONE");
	is_int(shm_dialog_confirm(t.d, ref, T0 + 2), 1, "200: confirm");
	is_int(shm_dialog_confirm(t.d, ref, T0 + 2), 0, "its retransmission: confirm 0");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 1, "1 channel held");
	is_int(shm_dialog_end(t.d, t.l, ref, SHM_DE_BYE, T0 + 60), 1, "BYE: end 1");
	is_int(shm_dialog_end(t.d, t.l, ref, SHM_DE_BYE, T0 + 60), 0, "BYE again (other side): end 0");
	ok(channels(t.l, SHM_LIMIT_ACCOUNT, 1) == 0 && channels(t.l, SHM_LIMIT_RULE, 2) == 0,
	   "account and rule channels back to 0");
	ok(shm_dialog_read(t.d, t.l, ref, &info) && info.state == SHM_DS_ENDED && info.reason == SHM_DE_BYE &&
	           info.answered_s == (uint32_t)T0 + 2 && info.ended_s == (uint32_t)T0 + 60 &&
	           info.nheld == 0,
	   "read: ENDED by bye, answered and ended times, holding nothing");
	is_int(shm_dialog_find(t.d, k, &r2), SHM_DIALOG_EXISTS,
	       "the 200 to the BYE still finds it (lingering)");
	is_int(atomic_load(&t.d->ends[SHM_DE_BYE]), 1, "ends by bye: 1");

	/* freed after linger; the same key begins anew; the old ref changes nothing */
	shm_dialog_sweep(t.d, t.l, T0 + 60 + 32, &(shm_dialog_timeouts_t){32, 0, 32, 5}, NULL, NULL);
	is_int(shm_dialog_find(t.d, k, &r2), SHM_DIALOG_NONE, "after linger_s: NONE");
	old = ref;
	is_int(shm_dialog_begin(t.d, t.l, k, T0 + 100, &ref), SHM_DIALOG_NEW, "the same key again: NEW");
	ok(ref != old, "... a new generation");
	shm_dialog_acquire(t.d, t.l, ref, reqs, 2, M0, &which);
	shm_dialog_commit(t.d, ref, 1, 2, SHM_DIALOG_INGRESS, 0);
	ok(shm_dialog_end(t.d, t.l, old, SHM_DE_BYE, T0 + 101) == 0 &&
	           shm_dialog_confirm(t.d, old, T0) == 0 && shm_dialog_read(t.d, t.l, old, &info) == 0 &&
	           shm_dialog_commit(t.d, old, 0, 0, 0, 0) == 0,
	   "a stale ref: end, confirm, read, commit all 0");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 1, "... and the new call keeps its channel");
	is_int(shm_dialog_end(t.d, t.l, ref, SHM_DE_CANCEL, T0 + 101), 1, "CANCEL of the new one: end 1");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 0, "0 channels");
	tables_free(&t);
}

static void test_dialog_refuse_abandon(void)
{
	tables_t t;
	shm_limit_req_t a = account(1, 1, 0), free_req = account(2, 0, 0);
	uint64_t k1, k2, k3;
	shm_dialog_ref_t r1, r2, r3, r;
	shm_dialog_info_t info;
	int which;

	tables_make(&t, 64, 64);
	k1 = shm_dialog_key(t.d, "c1", 2, "t", 1);
	k2 = shm_dialog_key(t.d, "c2", 2, "t", 1);
	k3 = shm_dialog_key(t.d, "c3", 2, "t", 1);
	shm_dialog_begin(t.d, t.l, k1, T0, &r1);
	shm_dialog_acquire(t.d, t.l, r1, &a, 1, M0, &which);
	shm_dialog_commit(t.d, r1, 1, 0, SHM_DIALOG_INGRESS, 0);
	is_int(shm_dialog_begin(t.d, t.l, k2, T0, &r2), SHM_DIALOG_NEW, "a second call: NEW");
	is_int(shm_dialog_acquire(t.d, t.l, r2, &a, 1, M0, &which), SHM_LIMIT_CHANNELS,
	       "max_channels 1 in use: CHANNELS");
	is_int(shm_dialog_refuse(t.d, t.l, r2, 503, T0), 1, "refuse with 503");
	is_int(shm_dialog_begin(t.d, t.l, k2, T0 + 1, &r), SHM_DIALOG_EXISTS, "its retransmission: EXISTS");
	ok(shm_dialog_read(t.d, t.l, r, &info) && info.state == SHM_DS_REFUSED && info.code == 503,
	   "... REFUSED, code 503 to repeat");
	is_int(shm_dialog_end(t.d, t.l, r2, SHM_DE_CANCEL, T0 + 1), 0, "a CANCEL of a refused call: end 0");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 1, "the first call's channel only");
	is_int(atomic_load(&t.d->refused), 1, "refused counted");

	is_int(shm_dialog_begin(t.d, t.l, k3, T0, &r3), SHM_DIALOG_NEW, "a third call: NEW");
	is_int(shm_dialog_acquire(t.d, t.l, r3, &free_req, 1, M0, &which), SHM_LIMIT_OK, "limits OK");
	is_int(shm_dialog_abandon(t.d, t.l, r3, T0), 1, "abandon (say, no route)");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 2), 0, "... its channel given back");
	is_int(shm_dialog_begin(t.d, t.l, k3, T0, &r), SHM_DIALOG_NEW, "... and its slot free at once: NEW");
	is_int(shm_dialog_refuse(t.d, t.l, r3, 503, T0), 0, "refuse with the abandoned ref: 0");
	shm_dialog_abandon(t.d, t.l, r, T0);
	is_int(shm_dialog_acquire(t.d, t.l, r1, &a, 1, M0, &which), SHM_LIMIT_LOST,
	       "acquire for a committed dialog: LOST, nothing taken");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 1, "... still 1");
	tables_free(&t);
}

typedef struct swept_log {
	int n, reason[8];
} swept_log_t;

static void on_swept(void *arg, shm_dialog_ref_t ref, const shm_dialog_info_t *info, int reason)
{
	swept_log_t *log = arg;

	(void)ref;
	if (log->n < 8 && info->state == SHM_DS_ENDED)
		log->reason[log->n++] = reason;
}

static shm_dialog_ref_t open_call(tables_t *t, const char *cid, const shm_limit_req_t *reqs, int n,
                                  uint64_t now_s, int commit)
{
	shm_dialog_ref_t ref = 0;
	int which;

	if (shm_dialog_begin(t->d, t->l, shm_dialog_key(t->d, cid, strlen(cid), "f", 1), now_s, &ref) !=
	            SHM_DIALOG_NEW ||
	    shm_dialog_acquire(t->d, t->l, ref, reqs, n, M0, &which) != SHM_LIMIT_OK)
		printf("# open_call %s failed\n", cid);
	if (commit)
		shm_dialog_commit(t->d, ref, 1, 0, SHM_DIALOG_INGRESS, 0);
	return ref;
}

static void test_dialog_sweep(void)
{
	tables_t t;
	shm_limit_req_t a = account(1, 0, 0);
	shm_dialog_timeouts_t to = {32, 3600, 32, 5};
	shm_dialog_ref_t early, conf, stuck, ended, refused, old;
	shm_dialog_info_t info;
	swept_log_t log = {0};

	tables_make(&t, 64, 64);
	early = open_call(&t, "early", &a, 1, T0, 1);
	conf = open_call(&t, "conf", &a, 1, T0, 1);
	shm_dialog_confirm(t.d, conf, T0 + 1);
	stuck = open_call(&t, "stuck", &a, 1, T0, 0); /* its worker dies before commit */
	ended = open_call(&t, "ended", &a, 1, T0, 1);
	refused = open_call(&t, "refused", &a, 0, T0, 0);
	shm_dialog_refuse(t.d, t.l, refused, 486, T0);
	/* a worker that ended a call and died before giving its channel back */
	atomic_store(&t.d->entry[(uint32_t)ended].ended_s, (uint32_t)T0);
	atomic_store(&t.d->entry[(uint32_t)ended].state, (ended >> 32) << 32 | SHM_DS_ENDED);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 4, "4 calls hold channels");

	shm_dialog_sweep(t.d, t.l, T0 + 1, &to, on_swept, &log);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 3, "sweep: the dead ender's channel given back");
	is_int(log.n, 0, "nothing timed out yet");
	ok(atomic_load(&t.d->live[SHM_DS_EARLY]) == 1 && atomic_load(&t.d->live[SHM_DS_CONFIRMED]) == 1 &&
	           atomic_load(&t.d->live[SHM_DS_CLAIMED]) == 1 &&
	           atomic_load(&t.d->live[SHM_DS_ENDED]) == 1 && atomic_load(&t.d->live[SHM_DS_REFUSED]) == 1,
	   "live by state: 1 early, 1 confirmed, 1 claimed, 1 ended, 1 refused");
	shm_dialog_sweep(t.d, t.l, T0 + 5, &to, on_swept, &log);
	ok(shm_dialog_read(t.d, t.l, stuck, &info) && info.state == SHM_DS_CLAIMED,
	   "4 s after the sweep first saw it claimed: still CLAIMED");
	shm_dialog_sweep(t.d, t.l, T0 + 6, &to, on_swept, &log);
	ok(shm_dialog_read(t.d, t.l, stuck, &info) && info.state == SHM_DS_ENDED &&
	           info.reason == SHM_DE_CLAIM_TIMEOUT,
	   "claim_s after: ENDED, claim_timeout");
	is_int(shm_dialog_commit(t.d, stuck, 1, 0, 0, 0), 0, "a creator that was only stopped: commit 0");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 2, "its channel given back: 2");
	shm_dialog_sweep(t.d, t.l, T0 + 31, &to, on_swept, &log);
	ok(shm_dialog_read(t.d, t.l, early, &info) && info.state == SHM_DS_EARLY, "31 s: EARLY still");
	shm_dialog_sweep(t.d, t.l, T0 + 32, &to, on_swept, &log);
	ok(shm_dialog_read(t.d, t.l, early, &info) && info.state == SHM_DS_ENDED &&
	           info.reason == SHM_DE_EARLY_TIMEOUT,
	   "32 s: ENDED by early_timeout");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 1, "its channel given back: 1");
	ok(shm_dialog_read(t.d, t.l, ended, &info) == 0, "the dead ender's dialog freed after linger_s");
	ok(shm_dialog_read(t.d, t.l, refused, &info) == 0, "the refused one freed after linger_s");
	shm_dialog_sweep(t.d, t.l, T0 + 1 + 3599, &to, on_swept, &log);
	ok(shm_dialog_read(t.d, t.l, conf, &info) && info.state == SHM_DS_CONFIRMED,
	   "confirmed, a second short of max_duration: still CONFIRMED");
	shm_dialog_sweep(t.d, t.l, T0 + 1 + 3600, &to, on_swept, &log);
	ok(shm_dialog_read(t.d, t.l, conf, &info) && info.state == SHM_DS_ENDED &&
	           info.reason == SHM_DE_MAX_DURATION,
	   "max_duration after the 200: ENDED, max_duration");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 1), 0, "every channel back: 0");
	ok(log.n == 3 && log.reason[0] == SHM_DE_CLAIM_TIMEOUT && log.reason[1] == SHM_DE_EARLY_TIMEOUT &&
	           log.reason[2] == SHM_DE_MAX_DURATION,
	   "the callback saw claim_timeout, early_timeout, max_duration");
	ok(atomic_load(&t.d->ends[SHM_DE_EARLY_TIMEOUT]) == 1 &&
	           atomic_load(&t.d->ends[SHM_DE_MAX_DURATION]) == 1 &&
	           atomic_load(&t.d->ends[SHM_DE_CLAIM_TIMEOUT]) == 1,
	   "expiries counted by reason");

	/* max_duration 0: never */
	to.max_duration_s = 0;
	conf = open_call(&t, "forever", &a, 1, T0 + 4000, 1);
	shm_dialog_confirm(t.d, conf, T0 + 4000);
	shm_dialog_sweep(t.d, t.l, T0 + 4000 + 1000000, &to, NULL, NULL);
	ok(shm_dialog_read(t.d, t.l, conf, &info) && info.state == SHM_DS_CONFIRMED,
	   "max_duration_s 0: confirmed forever");
	old = conf;
	shm_dialog_end(t.d, t.l, old, SHM_DE_BYE, T0 + 4000 + 1000000);
	shm_dialog_sweep(t.d, t.l, T0 + 4000 + 1000000 + 32, &to, NULL, NULL);
	is_int(atomic_load(&t.d->live[SHM_DS_FREE]), 64, "all 64 slots free at the end");
	tables_free(&t);
}

static void test_dialog_full(void)
{
	tables_t t;
	shm_dialog_ref_t ref;
	int news = 0;

	tables_make(&t, SHM_DIALOG_PROBE, 64);
	for (uint64_t i = 0; i < SHM_DIALOG_PROBE; i++)
		news += shm_dialog_begin(t.d, t.l, i << 32 | 3, T0, &ref) == SHM_DIALOG_NEW;
	is_int(news, SHM_DIALOG_PROBE, "%d dialogs fill a table of %d", SHM_DIALOG_PROBE, SHM_DIALOG_PROBE);
	is_int(shm_dialog_begin(t.d, t.l, (uint64_t)99 << 32 | 3, T0, &ref), SHM_DIALOG_FULL,
	       "one more: FULL");
	is_int(atomic_load(&t.d->full), 1, "FULL counted");
	is_int(shm_dialog_begin(t.d, t.l, (uint64_t)5 << 32 | 3, T0, &ref), SHM_DIALOG_PENDING,
	       "one of them (still claimed): PENDING, not FULL");
	tables_free(&t);
}

/* ---- four processes ---- */

#define C_CAP 8192 /* dialog slots of (c) */

typedef struct race_sh {
	_Atomic int ready, go, arrived; /* start line and barriers; writer: each */
	_Atomic long ok, channels, cps, busy, other, samples, inexact, retried;
	_Atomic long max_seen; /* highest channel count seen; writer: each, CAS */
	_Atomic int wins[4096];
	_Atomic long ends[C_CAP];
	_Atomic long stop;
	uint32_t max; /* max_channels of (a); writer: the parent, before fork */
	int hold;     /* calls each process of (a) keeps open, at most 8 */
} race_sh_t;

static void barrier(race_sh_t *r, int n, int round)
{
	atomic_fetch_add(&r->arrived, 1);
	while (atomic_load(&r->arrived) < n * (round + 1))
		sched_yield();
}

static void note_max(race_sh_t *r, long v)
{
	long m = atomic_load(&r->max_seen);

	while (v > m && !atomic_compare_exchange_weak(&r->max_seen, &m, v))
		;
}

static int run_procs(race_sh_t *r, int n, void (*body)(int me, void *arg), void *arg)
{
	pid_t pid[8];
	int clean = 1, status;

	for (int p = 0; p < n; p++) {
		pid[p] = fork();
		if (pid[p] == 0) {
			body(p, arg);
			_exit(0);
		}
		if (pid[p] < 0) {
			perror("fork");
			exit(1);
		}
	}
	while (atomic_load(&r->ready) < n)
		sched_yield();
	atomic_store(&r->go, 1);
	for (int p = 0; p < n; p++) {
		waitpid(pid[p], &status, 0);
		clean &= WIFEXITED(status) && WEXITSTATUS(status) == 0;
	}
	return clean;
}

typedef struct race_arg {
	tables_t *t;
	race_sh_t *r;
} race_arg_t;

static void start_line(race_sh_t *r)
{
	atomic_fetch_add(&r->ready, 1);
	while (!atomic_load(&r->go))
		;
}

/* (a) each process keeps up to `hold` calls of account 50 open, opening and closing in turn */
#define A_ROUNDS 20000

static void channels_body(int me, void *arg)
{
	race_arg_t *a = arg;
	shm_limit_req_t req = account(50, a->r->max, 0);
	uint32_t base = (uint32_t)me * 8, gen = 1;
	int open[8] = {0};

	start_line(a->r);
	for (int k = 0; k < A_ROUNDS; k++) {
		int s = k % a->r->hold, which;
		shm_limit_stat_t st;

		if (open[s]) {
			/* a release that gives up (contention) is finished by calling again, as the sweep
			 * does */
			while (!shm_limits_release(a->t->l, base + (uint32_t)s, (uint32_t)open[s]))
				atomic_fetch_add(&a->r->retried, 1);
			open[s] = 0;
		}
		gen++;
		switch (call(a->t->l, base + (uint32_t)s, gen, &req, 1, M0, &which)) {
		case SHM_LIMIT_OK:
			open[s] = (int)gen;
			atomic_fetch_add(&a->r->ok, 1);
			break;
		case SHM_LIMIT_CHANNELS:
			atomic_fetch_add(&a->r->channels, 1);
			break;
		case SHM_LIMIT_BUSY:
			atomic_fetch_add(&a->r->busy, 1);
			break;
		default:
			atomic_fetch_add(&a->r->other, 1);
		}
		if (shm_limits_lookup(a->t->l, SHM_LIMIT_ACCOUNT, 50, &st)) {
			atomic_fetch_add(st.exact ? &a->r->samples : &a->r->inexact, 1);
			if (st.exact)
				note_max(a->r, st.channels);
		}
	}
	for (int s = 0; s < a->r->hold; s++)
		while (open[s] && !shm_limits_release(a->t->l, base + (uint32_t)s, (uint32_t)open[s]))
			atomic_fetch_add(&a->r->retried, 1);
}

static void test_race_channels(void)
{
	tables_t t;
	race_arg_t a = {&t, shared_map(sizeof(race_sh_t))};
	long total;

	tables_make(&t, 64, 64);
	a.r->max = 5;
	a.r->hold = 6; /* one process alone reaches the limit, whatever the scheduling */
	ok(run_procs(a.r, NPROCS, channels_body, &a),
	   "(a) %d processes raced on max_channels 5 and exited cleanly", NPROCS);
	total = atomic_load(&a.r->ok) + atomic_load(&a.r->channels) + atomic_load(&a.r->busy);
	printf("# (a) %ld calls: %ld ok, %ld refused at max, %ld busy; %ld exact samples (%ld inexact), max "
	       "seen "
	       "%ld\n",
	       total, atomic_load(&a.r->ok), atomic_load(&a.r->channels), atomic_load(&a.r->busy),
	       atomic_load(&a.r->samples), atomic_load(&a.r->inexact), atomic_load(&a.r->max_seen));
	printf("# (a) releases that gave up and were called again: %ld\n", atomic_load(&a.r->retried));
	is_int(atomic_load(&a.r->other), 0, "(a) no FULL, no LOST");
	ok(atomic_load(&a.r->channels) > 0, "(a) the limit was reached (refusals happened)");
	ok(atomic_load(&a.r->max_seen) <= 5,
	   "(a) channels never seen above 5 (nor wrapped below 0) in %ld exact samples",
	   atomic_load(&a.r->samples));
	is_int(atomic_load(&a.r->max_seen), 5, "(a) ... and seen at 5");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 50), 0, "(a) all released: exactly 0");
	is_int((long)stat_of(t.l, SHM_LIMIT_ACCOUNT, 50, 0), atomic_load(&a.r->ok),
	       "(a) calls_total = calls admitted");
	is_int(atomic_load(&t.l->underflows), 0, "(a) no underflow");
	tables_free(&t);
	munmap(a.r, sizeof(race_sh_t));

	/* the same race against max 12: 4 processes holding 3 calls each can never legitimately be refused */
	tables_make(&t, 64, 64);
	a.r = shared_map(sizeof(race_sh_t));
	a.r->max = 3 * NPROCS;
	a.r->hold = 3;
	ok(run_procs(a.r, NPROCS, channels_body, &a), "(a) the same race against max_channels %d",
	   3 * NPROCS);
	printf("# (a) max %d: %ld ok, %ld refused, %ld busy, max seen %ld\n", 3 * NPROCS,
	       atomic_load(&a.r->ok), atomic_load(&a.r->channels), atomic_load(&a.r->busy),
	       atomic_load(&a.r->max_seen));
	is_int(atomic_load(&a.r->channels), 0, "(a) ... no call refused at max: none was ever at max");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 50), 0, "(a) ... all released: exactly 0");
	tables_free(&t);
	munmap(a.r, sizeof(race_sh_t));
}

/* (b) in round k all processes begin the same key at once; the winner commits */
#define B_ROUNDS 3000

static void begin_body(int me, void *arg)
{
	race_arg_t *a = arg;

	start_line(a->r);
	for (int k = 0; k < B_ROUNDS; k++) {
		/* two keys per home, homes 4 apart: windows overlap and claims contend */
		uint64_t key = (uint64_t)(k + 1) << 32 | (uint32_t)(k % 2048) * 4;
		shm_dialog_ref_t ref;
		shm_dialog_result_t res = shm_dialog_begin(a->t->d, a->t->l, key, T0, &ref);

		(void)me;
		if (res == SHM_DIALOG_NEW) {
			atomic_fetch_add(&a->r->wins[k % 4096], 1);
			shm_dialog_commit(a->t->d, ref, 0, 0, 0, 0);
		} else if (res == SHM_DIALOG_BUSY) {
			atomic_fetch_add(&a->r->busy, 1);
		} else if (res != SHM_DIALOG_EXISTS && res != SHM_DIALOG_PENDING) {
			atomic_fetch_add(&a->r->other, 1);
		}
		barrier(a->r, NPROCS, k);
	}
}

static void test_race_begin(void)
{
	tables_t t;
	race_arg_t a = {&t, shared_map(sizeof(race_sh_t))};
	int twice = 0, never = 0;

	tables_make(&t, 8192, 64);
	ok(run_procs(a.r, NPROCS, begin_body, &a),
	   "(b) %d processes began the same dialogs and exited cleanly", NPROCS);
	for (int k = 0; k < B_ROUNDS; k++) {
		twice += atomic_load(&a.r->wins[k]) > 1;
		never += atomic_load(&a.r->wins[k]) == 0;
	}
	printf("# (b) %d rounds: %d without a NEW, busy %ld\n", B_ROUNDS, never, atomic_load(&a.r->busy));
	is_int(twice, 0, "(b) no dialog got NEW twice");
	ok(never == 0 || never <= atomic_load(&a.r->busy),
	   "(b) every dialog got NEW once (%d never; only with BUSY)", never);
	is_int(atomic_load(&a.r->other), 0, "(b) no FULL");
	tables_free(&t);
	munmap(a.r, sizeof(race_sh_t));
}

/* (c) dialogs ended by two processes in opposite orders, a third in strides, and the sweep's expiry */
#define C_DIALOGS 3000

typedef struct end_arg {
	tables_t *t;
	race_sh_t *r;
	shm_dialog_ref_t *refs;
} end_arg_t;

static void on_expired(void *arg, shm_dialog_ref_t ref, const shm_dialog_info_t *info, int reason)
{
	end_arg_t *a = arg;

	(void)info;
	(void)reason;
	atomic_fetch_add(&a->r->ends[(uint32_t)ref], 1);
}

static void end_body(int me, void *arg)
{
	end_arg_t *a = arg;
	shm_dialog_timeouts_t to = {0, 0, 3600, 5}; /* every EARLY expired; nothing freed */

	start_line(a->r);
	if (me == 3) {
		for (int s = 0; s < 200 && atomic_load(&a->r->stop) < 3; s++)
			shm_dialog_sweep(a->t->d, a->t->l, T0 + 100, &to, on_expired, a);
		return;
	}
	for (int j = 0; j < C_DIALOGS; j++) {
		int i = me == 0 ? j : me == 1 ? C_DIALOGS - 1 - j : (j * 7) % C_DIALOGS;

		if (shm_dialog_end(a->t->d, a->t->l, a->refs[i], me == 2 ? SHM_DE_CANCEL : SHM_DE_BYE,
		                   T0 + 100))
			atomic_fetch_add(&a->r->ends[(uint32_t)a->refs[i]], 1);
	}
	atomic_fetch_add(&a->r->stop, 1);
}

static void test_race_end(void)
{
	tables_t t;
	end_arg_t a = {&t, shared_map(sizeof(race_sh_t)), shared_map(C_DIALOGS * sizeof(shm_dialog_ref_t))};
	shm_limit_req_t reqs[2] = {account(60, 0, 0), rule(61, 0)};
	int once = 0, holders = 0;
	char cid[32];

	tables_make(&t, C_CAP, 64);
	for (int i = 0; i < C_DIALOGS; i++) {
		snprintf(cid, sizeof(cid), "end-%d", i);
		a.refs[i] = open_call(&t, cid, reqs, 2, T0, 1);
	}
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 60), C_DIALOGS, "(c) %d dialogs hold the account", C_DIALOGS);
	ok(run_procs(a.r, NPROCS, end_body, &a), "(c) 3 enders and a sweeper raced and exited cleanly");
	for (int i = 0; i < C_DIALOGS; i++)
		once += atomic_load(&a.r->ends[(uint32_t)a.refs[i]]) == 1;
	for (uint32_t h = 0; h < C_CAP; h++)
		holders += !holder_empty(t.l, h);
	printf("# (c) ended by bye %lu, cancel %lu, expiry %lu; releases left for the next sweep: %d\n",
	       (unsigned long)atomic_load(&t.d->ends[SHM_DE_BYE]),
	       (unsigned long)atomic_load(&t.d->ends[SHM_DE_CANCEL]),
	       (unsigned long)atomic_load(&t.d->ends[SHM_DE_EARLY_TIMEOUT]), holders);
	/* the master's next sweep: finishes a release that gave up under contention, ends nothing (all ENDED)
	 */
	shm_dialog_sweep(t.d, t.l, T0 + 101, &(shm_dialog_timeouts_t){0, 0, 3600, 5}, on_expired, &a);
	holders = 0;
	for (uint32_t h = 0; h < C_CAP; h++)
		holders += !holder_empty(t.l, h);
	is_int(once, C_DIALOGS, "(c) each dialog ended exactly once, by one end() or the sweep");
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 60), 0, "(c) account channels back to exactly 0");
	is_int(channels(t.l, SHM_LIMIT_RULE, 61), 0, "(c) rule channels back to exactly 0");
	is_int(holders, 0, "(c) every holder empty");
	is_int(atomic_load(&t.l->underflows), 0, "(c) no underflow");
	tables_free(&t);
	munmap(a.r, sizeof(race_sh_t));
	munmap(a.refs, C_DIALOGS * sizeof(shm_dialog_ref_t));
}

/*
 * (d) a child in a loop of calls, killed at a random instant, again and
 * again, while the parent sweeps as the master does (frees what ended,
 * ends nothing live); after each kill the parent sweeps as the master
 * would over the next seconds, with short timeouts, and every count must
 * be back to 0.
 */
#define D_KILLS 400
#define D_CAP   16384 /* a whole cycle of the child's calls fits, sweep or not */

typedef struct kill_sh {
	_Atomic uint64_t next_key; /* keys handed out; writer: the child */
	_Atomic uint64_t calls;    /* calls committed; writer: the child */
	_Atomic uint64_t now_s;    /* the cycle's clock; writer: the parent */
	_Atomic int started;
} kill_sh_t;

static void kill_child(tables_t *t, kill_sh_t *k)
{
	shm_limit_req_t reqs[2] = {account(70, 100000, 0), rule(71, 0)};
	shm_dialog_ref_t live[2] = {0, 0};
	uint64_t now = atomic_load(&k->now_s);

	atomic_store(&k->started, 1);
	for (uint64_t n = 0;; n++) {
		uint64_t key = atomic_fetch_add(&k->next_key, 1) * 0x9e3779b97f4a7c15ULL | 1;
		shm_dialog_ref_t ref;
		int which;

		if (live[n & 1]) /* end the call opened two calls ago: two stay open */
			shm_dialog_end(t->d, t->l, live[n & 1], n % 3 ? SHM_DE_BYE : SHM_DE_CANCEL, now);
		live[n & 1] = 0;
		if (shm_dialog_begin(t->d, t->l, key, now, &ref) != SHM_DIALOG_NEW)
			continue;
		if (shm_dialog_acquire(t->d, t->l, ref, reqs, 2, M0, &which) != SHM_LIMIT_OK) {
			shm_dialog_refuse(t->d, t->l, ref, 503, now);
			continue;
		}
		if (n % 5 == 0) {
			shm_dialog_abandon(t->d, t->l, ref, now);
			continue;
		}
		shm_dialog_commit(t->d, ref, 70, 71, SHM_DIALOG_INGRESS, 0);
		if (n % 2)
			shm_dialog_confirm(t->d, ref, now);
		live[n & 1] = ref;
		atomic_fetch_add(&k->calls, 1);
	}
}

static uint64_t now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Slots of every holder by phase. */
static void count_phases(shm_limits_sh_t *l, long phase[4])
{
	for (uint32_t h = 0; h < D_CAP; h++) {
		uint64_t w = atomic_load(holder_word(l, h));

		for (int s = 0; s < 2; s++)
			if (HSLOT(w, s))
				phase[HSLOT(w, s) >> 19]++;
	}
}

static void test_kill_loop(void)
{
	tables_t t;
	kill_sh_t *k = shared_map(sizeof(kill_sh_t));
	shm_dialog_timeouts_t during = {3600, 0, 0, 3600}, after = {1, 1, 0, 1};
	long phase[4] = {0, 0, 0, 0}, leaked_cycles = 0;
	int holders = 0, killed = 0;

	tables_make(&t, D_CAP, 64);
	srand((unsigned)getpid());
	for (int i = 0; i < D_KILLS; i++) {
		uint64_t now = T0 + 10 * (uint64_t)i, until;
		pid_t pid;
		int status;

		atomic_store(&k->now_s, now);
		atomic_store(&k->started, 0);
		pid = fork();
		if (pid == 0) {
			kill_child(&t, k);
			_exit(0);
		}
		while (!atomic_load(&k->started))
			sched_yield();
		until = now_us() + (uint64_t)(rand() % 2000);
		do
			shm_dialog_sweep(t.d, t.l, now, &during, NULL, NULL);
		while (now_us() < until);
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
		count_phases(t.l, phase); /* what the killed child left, by phase */
		for (uint64_t s = 1; s <= 3; s++)
			shm_dialog_sweep(t.d, t.l, now + 2 * s, &after, NULL, NULL);
		leaked_cycles +=
		        channels(t.l, SHM_LIMIT_ACCOUNT, 70) != 0 || channels(t.l, SHM_LIMIT_RULE, 71) != 0;
	}
	printf("# (d) %d kills, %lu calls (%lu refused FULL); holder slots left by the kills: %ld pending, "
	       "%ld "
	       "held, %ld releasing; takes undone %lu\n",
	       killed, (unsigned long)atomic_load(&k->calls), (unsigned long)atomic_load(&t.d->full),
	       phase[PENDING], phase[HELD], phase[RELEASING], (unsigned long)atomic_load(&t.l->orphans));
	is_int(killed, D_KILLS, "(d) the child was SIGKILLed %d times", D_KILLS);
	ok(atomic_load(&k->calls) > (uint64_t)D_KILLS, "(d) ... while making calls (%lu)",
	   (unsigned long)atomic_load(&k->calls));
	ok(phase[HELD] > 2 * D_KILLS, "(d) ... holding channels when killed (%ld slots)", phase[HELD]);
	is_int(leaked_cycles, 0, "(d) after each kill and the sweeps: account and rule channels exactly 0");
	for (uint32_t h = 0; h < D_CAP; h++)
		holders += !holder_empty(t.l, h);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 70), 0, "(d) at the end: account channels exactly 0");
	is_int(channels(t.l, SHM_LIMIT_RULE, 71), 0, "(d) rule channels exactly 0");
	is_int(holders, 0, "(d) every holder empty");
	is_int(atomic_load(&t.d->live[SHM_DS_FREE]), D_CAP, "(d) every dialog slot free");
	is_int(atomic_load(&t.l->underflows), 0, "(d) no underflow");
	tables_free(&t);
	munmap(k, sizeof(kill_sh_t));
}

/* (e) four processes offer one call each every 80 ms of a shared simulated clock: 50/s for 5 s */
static void cps_body(int me, void *arg)
{
	race_arg_t *a = arg;
	shm_limit_req_t req = account(80, 0, 10);

	start_line(a->r);
	for (int k = 0; k < 63; k++) {
		uint32_t gen = (uint32_t)k + 1;
		int which;

		if (call(a->t->l, (uint32_t)me, gen, &req, 1, M0 + 80 * (uint64_t)k, &which) == SHM_LIMIT_OK)
			atomic_fetch_add(&a->r->ok, 1);
		shm_limits_release(a->t->l, (uint32_t)me, gen);
		barrier(a->r, NPROCS, k);
	}
}

static void test_race_cps(void)
{
	tables_t t;
	race_arg_t a = {&t, shared_map(sizeof(race_sh_t))};
	long passed;

	tables_make(&t, 64, 64);
	ok(run_procs(a.r, NPROCS, cps_body, &a), "(e) %d processes offered calls and exited cleanly", NPROCS);
	passed = atomic_load(&a.r->ok);
	ok(passed >= 59 && passed <= 61,
	   "(e) rate 10 burst 10, 50/s from 4 processes for 5 s: %ld passed (60 +-1)", passed);
	is_int(channels(t.l, SHM_LIMIT_ACCOUNT, 80), 0, "(e) 0 channels");
	tables_free(&t);
	munmap(a.r, sizeof(race_sh_t));
}

int main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0); /* forked children must not inherit buffered output */
	test_limits_basics();
	test_limits_all_or_nothing();
	test_limits_cps();
	test_limits_unlimited();
	test_limits_full_reclaim();
	test_limits_stuck_claim();
	test_limits_dead_holder();
	test_dialog_basics();
	test_dialog_refuse_abandon();
	test_dialog_sweep();
	test_dialog_full();
	test_race_channels();
	test_race_begin();
	test_race_end();
	test_kill_loop();
	test_race_cps();
	return done_testing();
}
