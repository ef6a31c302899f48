/*
 * /metrics: Prometheus text exposition, served by the master with evhttp.
 *
 * Reads the per-worker counters in shared memory and sums them; never
 * writes to shared memory. Workers each own their counters, so summing
 * here is the only place they meet, and a scrape costs the SIP path
 * nothing.
 */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <string.h>
#include <unistd.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "master/master.h"
#include "shm/dialog.h"
#include "shm/failures.h"
#include "shm/limits.h"
#include "shm/nonce.h"
#include "shm/shm.h"
#include "shm/snapshot.h"

static struct {
	struct evhttp *http;
	shm_t *shm;
	const master_stats_t *st;
	const tg_config_t *cfg;
	int fd;
} mx = {.fd = -1};

static void put_requests(struct evbuffer *b)
{
	evbuffer_add_printf(b, "# HELP tollgate_requests_total SIP messages handled, by method and outcome.\n"
	                       "# TYPE tollgate_requests_total counter\n");
	for (int me = 0; me < SHM_M_COUNT; me++) {
		for (int o = 0; o < SHM_O_COUNT; o++) {
			uint64_t sum = 0;
			for (uint32_t w = 0; w < mx.shm->hdr->nworkers; w++)
				sum += atomic_load_explicit(&mx.shm->stats[w].requests[me][o],
				                            memory_order_relaxed);
			evbuffer_add_printf(b, "tollgate_requests_total{method=\"%s\",outcome=\"%s\"} %llu\n",
			                    shm_method_name(me), shm_outcome_name(o),
			                    (unsigned long long)sum);
		}
	}
}

static void put_refusals(struct evbuffer *b)
{
	evbuffer_add_printf(b, "# HELP tollgate_refusals_total Requests refused or dropped, by reason.\n"
	                       "# TYPE tollgate_refusals_total counter\n");
	for (int r = 0; r < SHM_R_COUNT; r++) {
		uint64_t sum = 0;
		for (uint32_t w = 0; w < mx.shm->hdr->nworkers; w++)
			sum += atomic_load_explicit(&mx.shm->stats[w].refusals[r], memory_order_relaxed);
		evbuffer_add_printf(b, "tollgate_refusals_total{reason=\"%s\"} %llu\n", shm_reason_name(r),
		                    (unsigned long long)sum);
	}
}

static void put_gauge(struct evbuffer *b, const char *name, const char *help, const char *type, double v)
{
	evbuffer_add_printf(b, "# HELP %s %s\n# TYPE %s %s\n%s %.15g\n", name, help, name, type, name, v);
}

/* Label values are account names: escape what the exposition format needs escaped. */
static void put_label(struct evbuffer *b, const char *v)
{
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			evbuffer_add_printf(b, "\\%c", *v);
		else if (*v == '\n')
			evbuffer_add_printf(b, "\\n");
		else
			evbuffer_add(b, v, 1);
	}
}

enum { LM_CHANNELS, LM_CALLS, LM_REFUSALS, LM_COUNT };

typedef struct limit_walk {
	struct evbuffer *b;
	int what;
} limit_walk_t;

/* "tollgate_account_NAME{account=\"acme\"" or "tollgate_rule_NAME{rule=\"42\"": the caller closes it. */
static void put_limit_series(struct evbuffer *b, const char *name, const shm_limit_stat_t *st)
{
	if (st->kind == SHM_LIMIT_ACCOUNT) {
		evbuffer_add_printf(b, "tollgate_account_%s{account=\"", name);
		put_label(b, st->name);
	} else {
		evbuffer_add_printf(b, "tollgate_rule_%s{rule=\"%lld", name, (long long)st->id);
	}
}

static void put_limit(void *arg, const shm_limit_stat_t *st)
{
	limit_walk_t *lw = arg;
	struct evbuffer *b = lw->b;

	if (lw->what == LM_REFUSALS) {
		for (int i = 0; i < 2; i++) {
			put_limit_series(b, "refusals_total", st);
			evbuffer_add_printf(
			        b, "\",limit=\"%s\"} %llu\n", i ? "cps" : "channels",
			        (unsigned long long)(i ? st->refusals_cps : st->refusals_channels));
		}
		return;
	}
	put_limit_series(b, lw->what == LM_CHANNELS ? "channels" : "calls_total", st);
	evbuffer_add_printf(b, "\"} %llu\n",
	                    (unsigned long long)(lw->what == LM_CHANNELS ? st->channels : st->calls_total));
}

static void put_limit_account(void *arg, const shm_limit_stat_t *st)
{
	if (st->kind == SHM_LIMIT_ACCOUNT)
		put_limit(arg, st);
}

static void put_limit_rule(void *arg, const shm_limit_stat_t *st)
{
	if (st->kind == SHM_LIMIT_RULE)
		put_limit(arg, st);
}

/* Calls: channels per account and rule, refusals by limit, the dialog table. */
static void put_calls(struct evbuffer *b)
{
	static const char *const help[LM_COUNT][2] = {
	        {"gauge", "Channels (calls) in use"},
	        {"counter", "Calls admitted"},
	        {"counter", "Calls refused at a limit, by limit"},
	};
	static const char *const names[LM_COUNT] = {"channels", "calls_total", "refusals_total"};
	shm_dialog_sh_t *d = mx.shm->dialogs;
	static const int states[] = {SHM_DS_EARLY, SHM_DS_CONFIRMED, SHM_DS_ENDED, SHM_DS_REFUSED};

	for (int k = 0; k < 2; k++)
		for (int what = 0; what < LM_COUNT; what++) {
			limit_walk_t lw = {b, what};
			const char *kind = k == 0 ? "account" : "rule";

			evbuffer_add_printf(
			        b, "# HELP tollgate_%s_%s %s, per %s.\n# TYPE tollgate_%s_%s %s\n", kind,
			        names[what], help[what][1], kind, kind, names[what], help[what][0]);
			/* one walk per metric keeps each family's lines together, as the format wants */
			shm_limits_foreach(mx.shm->limits, k == 0 ? put_limit_account : put_limit_rule, &lw);
		}
	evbuffer_add_printf(b, "# HELP tollgate_dialogs Dialogs in the table by state, at the last sweep.\n"
	                       "# TYPE tollgate_dialogs gauge\n");
	for (size_t i = 0; i < sizeof states / sizeof states[0]; i++)
		evbuffer_add_printf(b, "tollgate_dialogs{state=\"%s\"} %llu\n",
		                    shm_dialog_state_name(states[i]),
		                    (unsigned long long)atomic_load(&d->live[states[i]]));
	put_gauge(b, "tollgate_dialog_table_full_total",
	          "New calls refused: no free slot (capacity.dialogs).", "counter",
	          (double)atomic_load(&d->full));
	evbuffer_add_printf(b,
	                    "# HELP tollgate_dialogs_expired_total Dialogs ended by the sweep, by reason.\n"
	                    "# TYPE tollgate_dialogs_expired_total counter\n"
	                    "tollgate_dialogs_expired_total{reason=\"early\"} %llu\n"
	                    "tollgate_dialogs_expired_total{reason=\"duration\"} %llu\n",
	                    (unsigned long long)atomic_load(&d->ends[SHM_DE_EARLY_TIMEOUT]),
	                    (unsigned long long)atomic_load(&d->ends[SHM_DE_MAX_DURATION]));
}

/* Digest: what was done with requests, and the two shared tables behind it. */
static void put_digest(struct evbuffer *b)
{
	shm_nonce_sh_t *n = mx.shm->nonce;
	shm_failures_sh_t *f = mx.shm->failures;
	uint64_t failed = 0;

	evbuffer_add_printf(
	        b, "# HELP tollgate_digest_total Requests handled by digest authentication, by result.\n"
	           "# TYPE tollgate_digest_total counter\n");
	for (int d = 0; d < SHM_D_COUNT; d++) {
		uint64_t sum = 0;
		for (uint32_t w = 0; w < mx.shm->hdr->nworkers; w++)
			sum += atomic_load_explicit(&mx.shm->stats[w].digest[d], memory_order_relaxed);
		if (d == SHM_D_FAILED)
			failed = sum;
		evbuffer_add_printf(b, "tollgate_digest_total{result=\"%s\"} %llu\n", shm_digest_name(d),
		                    (unsigned long long)sum);
	}
	put_gauge(b, "tollgate_auth_failures_total",
	          "Authentication failures counted against their source address (reasons in "
	          "tollgate_refusals_total).",
	          "counter", (double)failed);
	put_gauge(b, "tollgate_nonce_replays_total", "Nonce counts refused as not increasing.", "counter",
	          (double)atomic_load(&n->replays));
	put_gauge(b, "tollgate_nonce_table_full_total", "Requests refused: capacity.nonces too small.",
	          "counter", (double)atomic_load(&n->full));
	put_gauge(b, "tollgate_nonce_inserts_total", "Nonces answered for the first time.", "counter",
	          (double)atomic_load(&n->inserts));
	put_gauge(b, "tollgate_failure_sources_full_total",
	          "Failures not counted: capacity.failure_sources too small.", "counter",
	          (double)atomic_load(&f->full));
}

/* Live provisioning: changes from PostgreSQL, the snapshot file, host names. */
static void put_live(struct evbuffer *b, shm_loader_sh_t *l)
{
	put_gauge(b, "tollgate_notifications_total", "Change notifications received from PostgreSQL.",
	          "counter", (double)atomic_load(&l->notifications));
	put_gauge(b, "tollgate_deltas_total", "Snapshots published for changes, without a full load.",
	          "counter", (double)atomic_load(&l->deltas));
	put_gauge(b, "tollgate_forced_resyncs_total",
	          "Full loads forced by changes (TRUNCATE, bulk statements, too many rows at once).",
	          "counter", (double)atomic_load(&l->forced_resyncs));
	put_gauge(b, "tollgate_publish_latency_seconds",
	          "Last publish: from the first change received to the snapshot published.", "gauge",
	          (double)atomic_load(&l->publish_latency_us) / 1e6);
	put_gauge(b, "tollgate_snapshot_from_file", "1 while serving the snapshot file, not the database.",
	          "gauge", atomic_load(&l->snapshot_from_file));
	put_gauge(b, "tollgate_snapshot_saves_total", "Snapshot files written.", "counter",
	          (double)atomic_load(&l->snapshot_saves));
	put_gauge(b, "tollgate_snapshot_save_failures_total", "Snapshot files that could not be written.",
	          "counter", (double)atomic_load(&l->snapshot_save_failures));
	put_gauge(b, "tollgate_hostname_rules", "IP rules whose address is a host name.", "gauge",
	          atomic_load(&l->hostname_rules));
	put_gauge(b, "tollgate_dns_failures_total", "Host-name lookups that failed (last addresses kept).",
	          "counter", (double)atomic_load(&l->dns_failures));
}

static void put_state(struct evbuffer *b)
{
	shm_loader_sh_t *l = mx.shm->loader;
	uint64_t built = atomic_load(&l->snapshot_ms);
	double age = built ? (double)(tg_wall_ms() - built) / 1000.0 : -1;

	put_gauge(b, "tollgate_workers_alive", "Workers serving.", "gauge", mx.st->workers_alive);
	put_gauge(b, "tollgate_workers_configured", "Workers configured.", "gauge", mx.cfg->workers);
	put_gauge(b, "tollgate_loader_alive", "1 when the loader process runs.", "gauge",
	          mx.st->loader_alive);
	put_gauge(b, "tollgate_child_restarts_total", "Children respawned after dying.", "counter",
	          (double)mx.st->child_restarts);
	put_gauge(b, "tollgate_reloads_total", "SIGHUP reloads applied.", "counter",
	          (double)mx.st->reloads_ok);
	put_gauge(b, "tollgate_reload_failures_total", "SIGHUP reloads refused (bad config).", "counter",
	          (double)mx.st->reloads_failed);
	put_gauge(b, "tollgate_database_connected", "1 while the loader holds a PostgreSQL connection.",
	          "gauge", atomic_load(&l->db_connected));
	put_gauge(b, "tollgate_provisioning_loaded", "1 once a provisioning snapshot is published.", "gauge",
	          atomic_load(&l->have_snapshot));
	put_gauge(b, "tollgate_snapshot_generation", "Generation of the published snapshot.", "gauge",
	          (double)atomic_load(&mx.shm->snapctl->generation));
	put_gauge(b, "tollgate_snapshot_age_seconds", "Age of the published snapshot, -1 if none.", "gauge",
	          age);
	put_gauge(b, "tollgate_snapshot_accounts", "Accounts in the published snapshot.", "gauge",
	          (double)atomic_load(&l->accounts));
	put_gauge(b, "tollgate_snapshot_ip_rules", "IP rules in the published snapshot.", "gauge",
	          (double)atomic_load(&l->ip_rules));
	put_gauge(b, "tollgate_snapshot_rules_invalid", "Rules skipped at the last load.", "gauge",
	          (double)atomic_load(&l->rules_invalid));
	put_gauge(b, "tollgate_snapshot_sip_users", "SIP digest users in the published snapshot.", "gauge",
	          (double)atomic_load(&l->sip_users));
	put_gauge(b, "tollgate_snapshot_sip_users_invalid", "SIP users skipped at the last load.", "gauge",
	          (double)atomic_load(&l->users_invalid));
	put_gauge(b, "tollgate_loads_total", "Full provisioning loads published.", "counter",
	          (double)atomic_load(&l->loads));
	put_gauge(b, "tollgate_load_failures_total", "Full provisioning loads that failed.", "counter",
	          (double)atomic_load(&l->load_failures));
	put_gauge(b, "tollgate_publish_waits_total", "Times a publish waited for a reader to leave an arena.",
	          "counter", (double)atomic_load(&l->publish_waits));
	put_live(b, l);
	evbuffer_add_printf(b,
	                    "# HELP tollgate_build_info Version.\n# TYPE tollgate_build_info gauge\n"
	                    "tollgate_build_info{version=\"%s\"} 1\n",
	                    TG_VERSION);
}

static void on_request(struct evhttp_request *req, void *arg)
{
	struct evbuffer *b;

	(void)arg;
	if (strcmp(evhttp_request_get_uri(req), "/metrics") != 0) {
		evhttp_send_error(req, HTTP_NOTFOUND, "try /metrics");
		return;
	}
	b = evbuffer_new();
	if (b == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	put_requests(b);
	put_refusals(b);
	put_digest(b);
	put_calls(b);
	put_state(b);
	evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
	                  "text/plain; version=0.0.4");
	evhttp_send_reply(req, HTTP_OK, "OK", b);
	evbuffer_free(b);
}

int metrics_start(struct event_base *base, const tg_config_t *cfg, shm_t *shm, const master_stats_t *st)
{
	char addr[TG_SOCKADDR_STRLEN];
	evutil_socket_t fd;

	mx.shm = shm;
	mx.st = st;
	mx.cfg = cfg;
	tg_sockaddr_format((const struct sockaddr *)&cfg->metrics, addr, sizeof(addr));
	mx.http = evhttp_new(base);
	if (mx.http == NULL)
		return -1;
	fd = socket(cfg->metrics.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd >= 0)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (fd < 0 || bind(fd, (const struct sockaddr *)&cfg->metrics, cfg->metrics_len) < 0 ||
	    listen(fd, 64) < 0 || evhttp_accept_socket(mx.http, fd) < 0) {
		log_error("metrics_failed", "call=%s listen=%s", "bind()", addr);
		if (fd >= 0)
			close(fd);
		evhttp_free(mx.http);
		mx.http = NULL;
		return -1;
	}
	evhttp_set_allowed_methods(mx.http, EVHTTP_REQ_GET);
	evhttp_set_gencb(mx.http, on_request, NULL);
	mx.fd = fd;
	log_info("metrics_listening", "listen=%s", addr);
	return 0;
}

void metrics_stop(void)
{
	if (mx.http != NULL)
		evhttp_free(mx.http); /* closes the bound socket too */
	mx.fd = -1;
	mx.http = NULL;
}

/*
 * A long-lived worker must not keep the metrics port bound after the
 * master is gone. evhttp_free() here would unregister the master's events
 * from the epoll instance both processes share, so only the fd is closed.
 */
void metrics_close_inherited(void)
{
	if (mx.fd >= 0)
		close(mx.fd);
	mx.fd = -1;
	mx.http = NULL;
}
