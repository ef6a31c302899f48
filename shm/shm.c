/*
 * The shared-memory segment: layout, creation, and the running
 * configuration's double buffer.
 *
 * Owns the mapping and the offsets in its header. Each table that lives in
 * the segment (snapshot arenas, counters) has its own file with its own
 * algorithm; this file only carves the space and hands out pointers.
 */
#include <assert.h>
#include <errno.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>

#include "lib/log.h"
#include "shm/dialog.h"
#include "shm/failures.h"
#include "shm/limits.h"
#include "shm/nonce.h"
#include "shm/shm.h"
#include "shm/snapshot.h"

static const char *const method_names[SHM_M_COUNT] = {
        "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "OTHER", "RESPONSE",
};
static const char *const outcome_names[SHM_O_COUNT] = {"forwarded", "rejected", "dropped", "answered"};
static const char *const reason_names[SHM_R_COUNT] = {
        "unknown_source",
        "no_rule_fits",
        "account_inactive",
        "no_provisioning",
        "malformed",
        "too_many_hops",
        "loop",
        "bad_via",
        "no_route",
        "send_failed",
        "too_large",
        "bad_credentials",
        "unknown_user",
        "user_inactive",
        "source_not_allowed",
        "wrong_password",
        "nonce_replay",
        "nonce_table_full",
        "egress_denied",
        "aor_mismatch",
        "channels_exceeded",
        "cps_exceeded",
        "destination_denied",
        "no_codec",
        "dialog_table_full",
        "no_dialog",
        "refused_again",
        "dialog_reused",
};
static const char *const digest_names[SHM_D_COUNT] = {"challenged", "stale", "accepted", "failed", "dialog"};

const char *shm_digest_name(int d)
{
	return (d >= 0 && d < SHM_D_COUNT) ? digest_names[d] : "unknown";
}

const char *shm_method_name(int m)
{
	return (m >= 0 && m < SHM_M_COUNT) ? method_names[m] : "OTHER";
}

const char *shm_outcome_name(int o)
{
	return (o >= 0 && o < SHM_O_COUNT) ? outcome_names[o] : "unknown";
}

const char *shm_reason_name(int r)
{
	return (r >= 0 && r < SHM_R_COUNT) ? reason_names[r] : "unknown";
}

static size_t align_up(size_t n, size_t a)
{
	return (n + a - 1) & ~(a - 1);
}

size_t shm_head_arena_size(const tg_config_t *cfg)
{
	return align_up(snap_head_size_bound(cfg->cap_accounts, cfg->cap_ip_rules, cfg->cap_sip_users), 4096);
}

size_t shm_base_arena_size(const tg_config_t *cfg)
{
	return align_up(snap_base_size_bound(cfg->cap_ip_rules), 4096);
}

static void shm_bind(shm_t *shm)
{
	char *base = shm->base;
	shm_header_sh_t *h = shm->hdr = (shm_header_sh_t *)shm->base;

	shm->procs = (shm_proc_sh_t *)(base + h->off_procs);
	shm->stats = (shm_stats_sh_t *)(base + h->off_stats);
	shm->loader = (shm_loader_sh_t *)(base + h->off_loader);
	shm->conf = (shm_confbuf_sh_t *)(base + h->off_conf);
	shm->snapctl = (shm_snapctl_sh_t *)(base + h->off_snapctl);
	for (int i = 0; i < 2; i++) {
		shm->head_arena[i] = base + h->off_head[i];
		shm->base_arena[i] = base + h->off_base[i];
	}
	shm->head_size = h->head_size;
	shm->base_size = h->base_size;
	shm->nonce = (shm_nonce_sh_t *)(base + h->off_nonce);
	shm->failures = (shm_failures_sh_t *)(base + h->off_failures);
	shm->dialogs = (shm_dialog_sh_t *)(base + h->off_dialogs);
	shm->limits = (shm_limits_sh_t *)(base + h->off_limits);
}

int shm_create(shm_t *shm, const tg_config_t *cfg)
{
	shm_header_sh_t h;
	size_t off = align_up(sizeof(h), SHM_CACHELINE);

	memset(&h, 0, sizeof(h));
	h.magic = SHM_MAGIC;
	h.layout_version = SHM_LAYOUT_VERSION;
	h.nworkers = (uint32_t)cfg->workers;
	h.nprocs = h.nworkers + 1;
	h.off_procs = off;
	off = align_up(off + h.nprocs * sizeof(shm_proc_sh_t), SHM_CACHELINE);
	h.off_stats = off;
	off = align_up(off + h.nworkers * sizeof(shm_stats_sh_t), SHM_CACHELINE);
	h.off_loader = off;
	off = align_up(off + sizeof(shm_loader_sh_t), SHM_CACHELINE);
	h.off_conf = off;
	off = align_up(off + sizeof(shm_confbuf_sh_t), SHM_CACHELINE);
	h.off_snapctl = off;
	off = align_up(off + sizeof(shm_snapctl_sh_t), SHM_CACHELINE);
	h.off_nonce = off;
	off = align_up(off + shm_nonce_size(cfg->cap_nonces), SHM_CACHELINE);
	h.off_failures = off;
	off = align_up(off + shm_failures_size(cfg->cap_failures), SHM_CACHELINE);
	h.off_dialogs = off;
	off = align_up(off + shm_dialog_size(cfg->cap_dialogs), SHM_CACHELINE);
	h.off_limits = off;
	off = align_up(off + shm_limits_size(cfg->cap_limit_keys, cfg->cap_dialogs), 4096);
	h.cap_sip_users = cfg->cap_sip_users;
	h.cap_nonces = cfg->cap_nonces;
	h.cap_failures = cfg->cap_failures;
	h.cap_accounts = cfg->cap_accounts;
	h.cap_ip_rules = cfg->cap_ip_rules;
	h.head_size = shm_head_arena_size(cfg);
	h.off_head[0] = off;
	h.off_head[1] = off + h.head_size;
	off += 2 * h.head_size;
	h.base_size = shm_base_arena_size(cfg);
	h.off_base[0] = off;
	h.off_base[1] = off + h.base_size;
	h.total_size = off + 2 * h.base_size;
	if (getrandom(h.secret, sizeof(h.secret), 0) != (ssize_t)sizeof(h.secret) ||
	    getrandom(h.digest_secret, sizeof(h.digest_secret), 0) != (ssize_t)sizeof(h.digest_secret)) {
		log_error("shm_failed", "call=%s", "getrandom()");
		return -1;
	}

	/* MAP_NORESERVE: arenas are sized for capacity, pages are touched only as a snapshot fills them */
	shm->base = mmap(NULL, h.total_size, PROT_READ | PROT_WRITE,
	                 MAP_SHARED | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (shm->base == MAP_FAILED) {
		log_error("shm_failed", "call=%s bytes=%llu", "mmap()", (unsigned long long)h.total_size);
		shm->base = NULL;
		return -1;
	}
	shm->size = h.total_size;
	memcpy(shm->base, &h, sizeof(h));
	shm_bind(shm);
	{
		/* the tables' hash seeds: from the secret, so they are as unguessable */
		uint8_t seed[16];
		memcpy(seed, h.secret + 16, sizeof seed);
		seed[0] ^= 'n';
		shm_nonce_init(shm->nonce, cfg->cap_nonces, seed);
		seed[0] ^= 'n' ^ 'f';
		shm_failures_init(shm->failures, cfg->cap_failures, SHM_FAILURE_WINDOW_S, seed);
		seed[0] ^= 'f' ^ 'd';
		shm_dialog_init(shm->dialogs, cfg->cap_dialogs, seed);
		seed[0] ^= 'd' ^ 'l';
		shm_limits_init(shm->limits, cfg->cap_limit_keys, cfg->cap_dialogs, seed);
	}
	atomic_store(&shm->conf->generation, 0);
	log_info("shm_created", "bytes=%llu head_arena_bytes=%llu base_arena_bytes=%llu workers=%u",
	         (unsigned long long)h.total_size, (unsigned long long)h.head_size,
	         (unsigned long long)h.base_size, h.nworkers);
	return 0;
}

void shm_destroy(shm_t *shm)
{
	if (shm->base != NULL)
		munmap(shm->base, shm->size);
	shm->base = NULL;
}

void shm_config_publish(shm_t *shm, const tg_config_t *cfg)
{
	uint64_t gen = atomic_load(&shm->conf->generation) + 1;
	shm_confslot_sh_t *s = &shm->conf->slot[gen & 1];

	atomic_fetch_add(&s->seq, 1); /* odd: being written */
	memcpy(&s->cfg, cfg, sizeof(*cfg));
	atomic_fetch_add(&s->seq, 1); /* even: stable */
	atomic_store(&shm->conf->generation, gen);
}

int shm_config_read(shm_t *shm, uint64_t *gen, tg_config_t *out)
{
	/*
	 * The copy lands here first and reaches *out only once the sequence
	 * word shows it consistent: *out is the caller's live configuration,
	 * and a torn copy must never replace it (least of all on the give-up
	 * path below). Static, as tg_config_t is several KB; thread-local, so
	 * that two threads reading at once do not share it.
	 */
	static _Thread_local tg_config_t tmp;

	for (int tries = 0; tries < 1000; tries++) {
		uint64_t g = atomic_load(&shm->conf->generation);
		shm_confslot_sh_t *s = &shm->conf->slot[g & 1];
		uint64_t seq1, seq2;

		if (g == *gen)
			return 0;
		seq1 = atomic_load(&s->seq);
		if (seq1 & 1)
			continue;
		memcpy(&tmp, &s->cfg, sizeof(tmp));
		atomic_thread_fence(memory_order_acquire);
		seq2 = atomic_load(&s->seq);
		if (seq1 != seq2 || atomic_load(&shm->conf->generation) != g)
			continue;
		memcpy(out, &tmp, sizeof(*out));
		*gen = g;
		return 1;
	}
	/* the master died mid-copy; *out still holds the last consistent copy */
	return 0;
}
