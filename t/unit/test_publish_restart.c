/*
 * A loader killed mid-publish, then respawned, on a real shm_create()
 * segment. The publish stores base_last_head[b] = g+1 before generation =
 * g+1 (snapshot.h), so a loader that dies between the two leaves
 * base_last_head[b] past the current generation. When it was compacting
 * into b, b is again the idle base its successor compacts into; taken at
 * face value, that g+1 refuses the compaction while any slot holds any
 * generation up to g+1, the current one included, i.e. until every
 * worker is idle at one scan. Shown here: a worker holding the current
 * generation does not block that compaction, and its view stays intact;
 * a slot holding a head that really read the idle base still does; and
 * the same clamp holds for the current base and for a dead loader's first
 * publish.
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "master/config.h"
#include "shm/snapshot.h"
#include "shm/snapshot_int.h"
#include "t/unit/tap.h"

#define CAP_ACCOUNTS 64
#define CAP_RULES    256
#define CAP_USERS    64

static void make_shm(shm_t *sh)
{
	tg_config_t cfg;

	tg_config_defaults(&cfg);
	cfg.workers = 2;
	cfg.cap_accounts = CAP_ACCOUNTS;
	cfg.cap_ip_rules = CAP_RULES;
	if (shm_create(sh, &cfg) < 0) {
		printf("Bail out! shm_create failed\n");
		exit(1);
	}
}

static void account(snap_model_t *m, int64_t id, uint32_t max_channels)
{
	const char *err = NULL;

	if (snap_model_account_put(m, id, "acct", 1, max_channels, 0, &err) < 0)
		printf("# test bug: account %lld: %s\n", (long long)id, err);
}

static uint64_t gen_of(shm_t *sh)
{
	return atomic_load(&sh->snapctl->generation);
}

static unsigned base_of(shm_t *sh, uint64_t g)
{
	return ((const snap_head_sh_t *)sh->head_arena[g & 1])->base_arena;
}

/* The crash in a compaction: the idle base's last head is the dead loader's g+1, then a new loader. */
static void test_compaction_after_crash(void)
{
	shm_t shm;
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS), *fresh;
	shm_proc_sh_t *w0, *w1;
	snap_publish_stats_t st;
	snap_view_t v = {0};
	unsigned cur_base, idle;
	uint64_t g;

	make_shm(&shm);
	w0 = &shm.procs[SHM_PROC_WORKER(0)];
	w1 = &shm.procs[SHM_PROC_WORKER(1)];
	account(m, 1, 10);
	is_int(snap_model_publish(m, &shm, 0, &st), 0, "generation 1: a compaction");
	account(m, 1, 11);
	is_int(snap_model_publish(m, &shm, 0, &st), 0, "generation 2: a delta");
	ok(st.kind == SNAP_PUBLISH_DELTA, "... a delta indeed");
	snap_model_free(m); /* the loader dies ... */

	g = gen_of(&shm);
	cur_base = base_of(&shm, g);
	idle = 1 - cur_base;
	/* ... having stored base_last_head for the compaction into idle it was publishing, not generation. */
	atomic_store(&shm.snapctl->base_last_head[idle], g + 1);
	ok(g == 2 && atomic_load(&shm.snapctl->base_last_head[idle]) > g,
	   "a dead loader's base_last_head[%u] = %llu, past generation %llu", idle,
	   (unsigned long long)(g + 1), (unsigned long long)g);

	ok(snap_acquire(&shm, w0, &v) == 1 && atomic_load(&w0->epoch) == g && v.head->generation == g,
	   "a busy worker holds the current generation");
	ok(snap_base_arena_free(&shm, idle), "the idle base is free: no head that read it is held");

	/* The respawned loader: a fresh model, whose first publish compacts into the idle base. */
	fresh = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	account(fresh, 1, 12);
	is_int(snap_model_publish(fresh, &shm, 0, &st), 0,
	       "the respawned loader's compaction is not refused while the worker holds generation %llu",
	       (unsigned long long)g);
	ok(st.kind == SNAP_PUBLISH_COMPACTION && gen_of(&shm) == g + 1 && base_of(&shm, g + 1) == idle &&
	           atomic_load(&shm.snapctl->base_last_head[idle]) == g + 1,
	   "... generation %llu, in base arena %u", (unsigned long long)(g + 1), idle);
	ok(v.head->generation == g && snap_head_checksum(v.head) == v.head->checksum &&
	           v.base == shm.base_arena[cur_base] && snap_base_checksum(v.base) == v.base->checksum,
	   "... and the worker's view (head %llu, base %u) is untouched", (unsigned long long)g, cur_base);
	snap_release(w0, &v);

	/*
	 * Safety: the clamp stays at or above every head that really read the
	 * base. Make head cur - 1 read the idle base (a compaction, then a
	 * compaction into the other base), then crash again into the idle one.
	 */
	account(fresh, 1, 13);
	is_int(snap_model_publish_base(fresh, &shm, 0, &st), 0, "another compaction");
	g = gen_of(&shm);
	idle = 1 - base_of(&shm, g);
	ok(base_of(&shm, g - 1) == idle, "head %llu reads base %u, head %llu the other",
	   (unsigned long long)(g - 1), idle, (unsigned long long)g);
	atomic_store(&shm.snapctl->base_last_head[idle], g + 1); /* a crash again */
	atomic_store(&w1->epoch, g - 1);
	ok(!snap_base_arena_free(&shm, idle), "a slot holding head %llu, which read base %u, still blocks it",
	   (unsigned long long)(g - 1), idle);
	atomic_store(&w1->epoch, g);
	ok(snap_base_arena_free(&shm, idle), "a slot holding the current head %llu does not",
	   (unsigned long long)g);
	/* A crash in a delta: base_last_head of the current base past the generation. */
	atomic_store(&shm.snapctl->base_last_head[1 - idle], g + 1);
	ok(!snap_base_arena_free(&shm, 1 - idle), "the current base is still held by a slot holding %llu",
	   (unsigned long long)g);
	atomic_store(&w1->epoch, 0);
	ok(snap_base_arena_free(&shm, 1 - idle) && snap_base_arena_free(&shm, idle),
	   "with every slot idle both bases are free");
	snap_model_free(fresh);
	shm_destroy(&shm);
}

/* A loader that died before anything was published: no head ever read the base. */
static void test_crash_before_first_publish(void)
{
	shm_t shm;
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	snap_publish_stats_t st;

	make_shm(&shm);
	atomic_store(&shm.snapctl->base_last_head[0], 1);
	atomic_store(&shm.procs[SHM_PROC_WORKER(0)].epoch, 1); /* cannot be a real reader of anything */
	ok(snap_base_arena_free(&shm, 0), "generation 0: base 0 is free whatever base_last_head says");
	account(m, 1, 1);
	is_int(snap_model_publish(m, &shm, 0, &st), 0, "the first publish goes through");
	ok(gen_of(&shm) == 1 && base_of(&shm, 1) == 0, "... generation 1, base 0");
	snap_model_free(m);
	shm_destroy(&shm);
}

int main(void)
{
	tg_log_set_level(TG_LOG_WARN); /* shm_created is info */
	test_compaction_after_crash();
	test_crash_before_first_publish();
	return done_testing();
}
