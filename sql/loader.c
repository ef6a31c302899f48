/*
 * The loader: the only process that talks to PostgreSQL and the only writer
 * of the provisioning snapshot. It keeps every account, IP rule and SIP
 * user in a model in its own heap (shm/snapmodel.c), changes the model row
 * by row as the database changes, and publishes it into shared memory: a
 * small head over the current base for a few changes, a new base after a
 * full load.
 * It owns shm->loader (status for metrics), the resync_done field of its
 * own slot, the snapshot file and the DNS lookups of host-name rules. It
 * never touches SIP, the workers' slots or counters, nor the configuration
 * in shm (it only reads its copy on SIGHUP).
 *
 * libpq runs asynchronously inside the libevent loop, so a slow or dead
 * database never keeps the loader from answering signals; workers serve the
 * last published snapshot whatever happens here. The connection is a small
 * state machine:
 *
 *   DISCONNECTED --timer--> CONNECTING --> CHECKING --> SYNCING (full) --> IDLE
 *        ^                      |             |               |          |  ^
 *        |                      |             |               |          v  |
 *        +---- failure, lost ---+-------------+---------------+--- SYNCING (delta)
 *
 * CHECKING reads the schema version; an unknown one parks the connection
 * in IDLE and re-checks slowly. A full sync is LISTEN, then one read-only
 * REPEATABLE READ transaction reading the digest realm and the three
 * tables, marking every row in the model and sweeping what was not seen.
 * LISTEN comes first so that every commit the transaction's snapshot
 * misses is notified to us: the server delivers notifications between
 * transactions, so those that arrive during a load are queued and applied
 * after it, and applying a change twice is harmless.
 *
 * Changes. Each notification ("ip_rules,UPDATE,42") adds an id to the
 * collect set. The set is fetched once the changes have been quiet for
 * provisioning.coalesce_ms, or provisioning.max_delay_ms after the first,
 * in a delta sync: one transaction, one query per table for all its ids
 * (plus the accounts the fetched rules and users name), ORDER BY id,
 * merged with the sorted ids: a row present is put, an id without a row
 * is deleted. That is order-independent and idempotent, so a burst of any
 * size costs one fetch and one publish. TRUNCATE, a bulk statement, a new
 * digest realm, a bad payload or more than LOADER_DELTA_MAX ids make a
 * full sync instead.
 *
 * Publishing. A sync that fails half-way leaves the model "mixed" (part of
 * a snapshot, part of the one before); nothing is published from it until
 * a full sync succeeds. While a sync is putting rows nothing is published
 * either, so a worker never sees half a change.
 *
 * The snapshot file: after a publish, at most once per
 * provisioning.save_interval_ms, a forked child writes the model to
 * snapshot_file (the fork is a consistent copy for free, and the loop goes
 * on while the disk works); at SIGTERM the last changes are written in the
 * loop. At start, when the database cannot be reached (or its schema is
 * unknown) and no snapshot is published yet, the file is loaded and
 * published, and the database is tried on as usual.
 *
 * Resync acknowledgement: the master waits for resync_done to reach the
 * configuration generation it published. want_gen holds the generation of
 * a resync asked for but not started; a load takes it into load_gen when it
 * begins (a SIGHUP during a load asks for another load, since the running
 * one may predate the change). Every outcome - published, failed, database
 * unreachable - stores the generation it was carrying.
 */
#include <errno.h>
#include <event2/event.h>
#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/addr.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "master/proc.h"
#include "shm/shm.h"
#include "shm/snapshot.h"
#include "sql/loader_file.h"
#include "sql/pending.h"
#include "sql/resolve.h"

/* The tollgate.schema_version this binary reads; bump with sql/install.sql. */
#define LOADER_SCHEMA_VERSION 4
#define LOADER_CHANNEL        "tollgate_changes"

/* PQconnectPoll() honours no connect_timeout of its own. */
#define LOADER_CONNECT_TIMEOUT_MS 10000
/* Publish retries while a worker still reads the arena we need. */
#define LOADER_PUBLISH_FIRST_MS 1
#define LOADER_PUBLISH_MAX_MS   50
#define LOADER_PUBLISH_WARN_MS  1000
/* rule_invalid (and user_invalid) lines per sync; the invalid count covers the rest. */
#define LOADER_INVALID_LOG_MAX 100
#define LOADER_REASON_MAX      512
/* Changed ids fetched one by one up to here; past it a full sync is cheaper. */
#define LOADER_DELTA_MAX 10000
/* Skipped accounts remembered by id; past it any account a delta puts may be one. */
#define LOADER_REFUSED_MAX 1024
/* A full sync a burst forced waits for the burst to end, but no longer than this. */
#define LOADER_FORCED_WAIT_MS 1000
/* Quiet this long with the overlay (or the tombstones) more than half full: compact now. */
#define LOADER_IDLE_COMPACT_MS 100

enum loader_state {
	LOADER_DISCONNECTED, /* no connection; retry timer armed */
	LOADER_CONNECTING,   /* PQconnectPoll() in progress; timeout armed */
	LOADER_CHECKING,     /* schema_version query in flight */
	LOADER_SYNCING,      /* a full or delta sync in flight; kind and step say which and where */
	LOADER_IDLE,         /* connected, nothing in flight */
};

enum sync_kind {
	SYNC_FULL,
	SYNC_DELTA,
};

enum sync_step {
	STEP_LISTEN, /* full only */
	STEP_BEGIN,
	STEP_REALM, /* full only */
	STEP_ACCOUNTS,
	STEP_RULES,
	STEP_USERS,
	STEP_COMMIT,
	STEP_ROLLBACK,
};

/*
 * The account's columns, of table alias t ("" or "a."). No destination
 * prefix or codec holds a blank (the schema's checks), so each list
 * travels as one string, its elements joined with ' '.
 */
#define ACCOUNT_FIELDS(t)                                                                                    \
	t "id, " t "name, " t "status, " t "max_channels, " t "max_cps, " t "cps_burst, "                    \
	  "array_to_string(" t "allowed_prefixes, ' '), array_to_string(" t "denied_prefixes, ' '), "        \
	  "array_to_string(" t "restricted_codecs, ' ')"
#define ACCOUNT_COLS   "SELECT " ACCOUNT_FIELDS("") " FROM tollgate.accounts"
#define ACCOUNT_COLS_A "SELECT " ACCOUNT_FIELDS("a.") " FROM tollgate.accounts a"
#define RULE_COLS                                                                                            \
	"SELECT id, account_id, address, port, tech_prefix, status, direction, host_name, max_channels, "    \
	"max_cps, cps_burst FROM tollgate.ip_rules"
/* No address notation holds a ',', so the allowed sources travel as one string. */
#define USER_COLS                                                                                            \
	"SELECT id, account_id, username, domain, status, ha1_md5, ha1_sha256, ha1_md5_full, "               \
	"ha1_sha256_full, restrict_sources, array_to_string(allowed_sources, ',') FROM tollgate.sip_users"

static const char *const full_sql[] = {
        [STEP_LISTEN] = "LISTEN " LOADER_CHANNEL,
        [STEP_BEGIN] = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        [STEP_REALM] = "SELECT value FROM tollgate.settings WHERE key = 'digest_realm'",
        [STEP_ACCOUNTS] = ACCOUNT_COLS,
        [STEP_RULES] = RULE_COLS,
        [STEP_USERS] = USER_COLS,
        [STEP_COMMIT] = "COMMIT",
        [STEP_ROLLBACK] = "ROLLBACK",
};

/*
 * $1: account ids, $2: rule ids, $3: user ids. The accounts of the rules
 * and users come along: a new rule or user may name a new account. A
 * UNION rather than "OR id IN (...)", which the planner turns into a scan
 * of every account.
 */
static const char *const delta_sql[] = {
        [STEP_LISTEN] = NULL,
        [STEP_BEGIN] = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        [STEP_REALM] = NULL,
        [STEP_ACCOUNTS] =
                ACCOUNT_COLS " WHERE id = ANY($1::bigint[])"
                             " UNION " ACCOUNT_COLS_A " JOIN tollgate.ip_rules r ON r.account_id = a.id"
                             " WHERE r.id = ANY($2::bigint[])"
                             " UNION " ACCOUNT_COLS_A " JOIN tollgate.sip_users u ON u.account_id = a.id"
                             " WHERE u.id = ANY($3::bigint[]) ORDER BY id",
        [STEP_RULES] = RULE_COLS " WHERE id = ANY($1::bigint[]) ORDER BY id",
        [STEP_USERS] = USER_COLS " WHERE id = ANY($1::bigint[]) ORDER BY id",
        [STEP_COMMIT] = "COMMIT",
        [STEP_ROLLBACK] = "ROLLBACK",
};

/* Why a full sync stopped taking rows; the rest are only counted. */
enum load_over {
	OVER_NONE,
	OVER_ACCOUNTS,  /* cap_accounts reached */
	OVER_RULES,     /* cap_ip_rules reached */
	OVER_USERS,     /* cap_sip_users reached */
	OVER_MEMORY,    /* the model ran out of heap */
	OVER_SLOTS,     /* no free account slot: deleted accounts hold them until a compaction */
	OVER_USER_ROOM, /* no room for another user: a full load sweeps the old ones last */
};

/* What the next publish carries, strongest first wins the log line. */
enum pub_kind {
	PUB_NONE,
	PUB_DNS,   /* a host name resolved to other addresses */
	PUB_DELTA, /* changes from notifications */
	PUB_FILE,  /* the snapshot file, at start */
	PUB_FULL,  /* a full sync */
};

static const char *const pub_kind_name[] = {"none", "dns", "delta", "file", "full"};

typedef struct loader {
	tg_child_t *c;
	shm_t *shm;
	shm_loader_sh_t *sh;
	struct event_base *base;
	enum loader_state state;

	PGconn *conn;
	struct event *io;      /* on PQsocket(conn) */
	short io_what;         /* what io was last armed for */
	struct event *retry;   /* DISCONNECTED: reconnect; IDLE: check and load again */
	struct event *timeout; /* CONNECTING: give up */
	uint32_t backoff_ms;   /* next reconnect delay, before jitter */
	uint64_t rng;          /* jitter only */

	/* the query in flight */
	enum sync_kind kind;
	enum sync_step step;
	int qfailed;
	char qerr[LOADER_REASON_MAX];
	char qstate[6];  /* SQLSTATE */
	size_t err_seen; /* see conn_error() */
	int schema_rows;
	long long schema_found;
	long long schema_logged; /* last schema_unknown finding logged, to log changes only */

	/* the model and what feeds it */
	snap_model_t *model;
	resolve_t *resolve;
	int applying; /* a sync is putting rows: publishing now would show half of it */
	int mixed;    /* a sync failed half-way: publish nothing until a full sync succeeds */
	int synced;   /* a full sync from the database succeeded since start */

	/* the sync in flight */
	uint64_t load_gen;
	uint64_t sync_start_us;
	uint64_t invalid;                               /* rows skipped, rules and users */
	uint64_t invalid_users;                         /* of which users */
	uint64_t rows_accounts, rows_rules, rows_users; /* seen, valid or not */
	char db_realm[TG_DIGEST_REALM_MAX + 1];         /* tollgate.settings digest_realm, for the log */
	int realm_found, realm_same;                    /* the load found it; it equals the config's */
	enum load_over over;
	const char *over_reason; /* OVER_USER_ROOM: the model's words */
	int retry_load;          /* after the ROLLBACK in flight: load again later */
	int reload_now;          /* after the ROLLBACK in flight: load again at once (a fresh model) */
	int slot_reset; /* the model was replaced for want of account slots; the load has not succeeded yet */
	int retry_due;  /* the retry timer fired during a delta: act on it once idle */

	/* changes: collected from notifications, and the batch a delta sync fetches */
	pending_t *collect, *batch;
	/*
	 * Accounts skipped as invalid since the last full load began (the ids,
	 * in PENDING_ACCOUNTS): the model dropped their rules and users with
	 * them, and a delta that finds one valid again fetches the account
	 * only, so it asks for a full load to bring them back.
	 */
	pending_t *refused;
	uint64_t collect_first_us; /* the first change in collect arrived; 0 = none */
	uint64_t batch_first_us;
	const char *resync_reason; /* why collect overflowed; NULL = it did not */
	char *params[3];           /* the batch's ids as bigint[] literals: accounts, rules, users */
	uint32_t cursor[PENDING_NTABLES];
	uint32_t changes; /* rows put or deleted by the delta sync in flight */
	struct event *coalesce_ev;

	/* built, waiting to be published */
	int dirty;
	enum pub_kind pub_kind;
	uint64_t dirty_since_us; /* the oldest change not yet published */
	uint64_t pub_changes, pub_invalid;
	uint64_t ack_gen; /* answered by the next publish, or its failure */
	uint64_t data_ms; /* wall clock of the database state the model holds, for ages */
	struct event *publish_ev;
	struct event *compact_ev; /* the idle compaction */
	uint64_t wait_since_ms;   /* 0: not waiting */
	uint32_t wait_ms;
	int wait_warned;
	int capacity_logged;

	/* the snapshot file */
	struct event *save_ev;
	pid_t save_pid;           /* the child writing it; 0 = none */
	uint64_t save_started_ms; /* monotonic; 0 = never */
	uint32_t save_accounts, save_rules, save_users;
	uint64_t save_fork_us; /* the loop's share of a save: fork() copying the page tables */
	int save_dirty;        /* published since the last save began */
	int file_tried;

	uint64_t want_gen; /* a resync asked for and not started yet; 0 = none */
} loader_t;

static void io_cb(evutil_socket_t fd, short what, void *arg);
static void check_start(loader_t *l);
static void publish_try(loader_t *l);
static void load_start(loader_t *l);

/* ------------------------------------------------------------------ */
/* small helpers                                                      */

/*
 * libpq messages span lines ("...failed: No such file\n\tIs the server
 * running...?\n"); fold every run of blanks into one space so a log line
 * reads as one sentence.
 */
static const char *reason_copy(char *out, size_t len, const char *in)
{
	size_t n = 0;
	int blank = 0;

	for (in = in != NULL ? in : ""; *in != '\0' && n + 1 < len; in++) {
		if (*in == ' ' || *in == '\t' || *in == '\n' || *in == '\r') {
			blank = 1;
			continue;
		}
		if (blank && n > 0) {
			if (n + 2 >= len)
				break;
			out[n++] = ' ';
		}
		blank = 0;
		out[n++] = *in;
	}
	out[n] = '\0';
	return out;
}

static uint64_t now_us(void)
{
	return tg_now_ns() / 1000;
}

static void arm_timer_us(struct event *ev, uint64_t us)
{
	struct timeval tv = {.tv_sec = (time_t)(us / 1000000), .tv_usec = (suseconds_t)(us % 1000000)};

	event_del(ev);
	event_add(ev, &tv);
}

static void arm_timer(struct event *ev, uint32_t ms)
{
	arm_timer_us(ev, (uint64_t)ms * 1000);
}

static uint32_t retry_min_ms(const loader_t *l)
{
	return l->c->cfg.db_retry_min_ms > 0 ? l->c->cfg.db_retry_min_ms : 1;
}

static uint32_t retry_max_ms(const loader_t *l)
{
	uint32_t min = retry_min_ms(l);

	return l->c->cfg.db_retry_max_ms > min ? l->c->cfg.db_retry_max_ms : min;
}

/*
 * Spread by +-25%, kept within the configured bounds, so the loaders of
 * many nodes that lost the same server do not come back in step.
 */
static uint32_t jitter(loader_t *l, uint32_t ms)
{
	uint32_t spread = ms / 4;
	uint32_t out;

	l->rng ^= l->rng << 13;
	l->rng ^= l->rng >> 7;
	l->rng ^= l->rng << 17;
	out = ms - spread + (uint32_t)(l->rng % (2 * (uint64_t)spread + 1));
	if (out < retry_min_ms(l))
		return retry_min_ms(l);
	return out > retry_max_ms(l) ? retry_max_ms(l) : out;
}

/* Tell the master a resync asked for by configuration generation gen is over. */
static void ack(loader_t *l, uint64_t gen)
{
	if (gen != 0 && atomic_load(&l->c->slot->resync_done) < gen)
		atomic_store(&l->c->slot->resync_done, gen);
}

static uint64_t take_want(loader_t *l)
{
	uint64_t gen = l->want_gen;

	l->want_gen = 0;
	return gen;
}

/* The model holds what workers do not have yet; since: when the oldest of it happened. */
static void mark_dirty(loader_t *l, enum pub_kind kind, uint64_t since_us)
{
	l->dirty = 1;
	if (kind > l->pub_kind)
		l->pub_kind = kind;
	if (l->dirty_since_us == 0 || since_us < l->dirty_since_us)
		l->dirty_since_us = since_us;
}

/* ------------------------------------------------------------------ */
/* the connection                                                     */

/*
 * Watch the socket for what. While connecting the events are one-shot and
 * re-registered from scratch each time: libpq may close the socket and open
 * another between polls, and the new one can reuse the number. Once
 * connected the socket stays, so an unchanged persistent watch is kept.
 */
static int io_watch(loader_t *l, short what)
{
	int fd = PQsocket(l->conn);

	if ((what & EV_PERSIST) && l->io_what == what && event_pending(l->io, EV_READ | EV_WRITE, NULL))
		return 0;
	event_del(l->io);
	l->io_what = 0;
	if (fd < 0)
		return -1;
	event_assign(l->io, l->base, fd, what, io_cb, l);
	if (event_add(l->io, NULL) < 0)
		return -1;
	l->io_what = what;
	return 0;
}

/* The event goes before PQfinish(), which closes the socket it watches. */
static void conn_close(loader_t *l)
{
	event_del(l->io);
	event_del(l->timeout);
	if (l->conn != NULL)
		PQfinish(l->conn);
	l->conn = NULL;
}

static uint32_t schedule_reconnect(loader_t *l)
{
	uint32_t ms = jitter(l, l->backoff_ms);

	l->backoff_ms = l->backoff_ms >= retry_max_ms(l) / 2 ? retry_max_ms(l) : l->backoff_ms * 2;
	l->state = LOADER_DISCONNECTED;
	arm_timer(l->retry, ms);
	return ms;
}

static void params_free(loader_t *l)
{
	for (int i = 0; i < 3; i++) {
		free(l->params[i]);
		l->params[i] = NULL;
	}
}

/*
 * The sync in flight will not finish. Rows it put stay in the model, which
 * is then a mix of two snapshots: nothing is published from it until a
 * full sync succeeds. A full sync reports its outcome here.
 */
static void sync_abandon(loader_t *l, int failed)
{
	if (l->state != LOADER_SYNCING)
		return;
	if (l->applying)
		l->mixed = 1;
	l->applying = 0;
	params_free(l);
	if (l->kind != SYNC_FULL || l->step >= STEP_COMMIT)
		return;
	if (failed) {
		atomic_fetch_add(&l->sh->load_failures, 1);
		ack(l, l->load_gen);
	} else if (l->load_gen > l->want_gen) {
		l->want_gen = l->load_gen; /* the next load answers for it */
	}
	l->load_gen = 0;
}

static void file_fallback(loader_t *l);

static void connect_failed(loader_t *l, const char *reason)
{
	char why[LOADER_REASON_MAX];
	uint32_t ms;

	reason_copy(why, sizeof(why), reason); /* before PQfinish frees it */
	conn_close(l);
	ms = schedule_reconnect(l);
	log_warnx("db_connect_failed", "reason=%s retry_ms=%u", why, ms);
	/* A resync cannot happen while the database is unreachable: say so now. */
	ack(l, take_want(l));
	file_fallback(l);
}

/*
 * libpq keeps appending to the connection's error message until the next
 * query, so after a failed query the message still starts with that
 * query's error; err_seen marks how much of it was already reported.
 */
static const char *conn_error(const loader_t *l)
{
	const char *msg = PQerrorMessage(l->conn);

	return strlen(msg) > l->err_seen ? msg + l->err_seen : msg;
}

static void db_lost(loader_t *l)
{
	char why[LOADER_REASON_MAX];
	uint32_t ms;

	reason_copy(why, sizeof(why), conn_error(l));
	conn_close(l);
	atomic_store(&l->sh->db_connected, 0);
	if (l->state == LOADER_SYNCING && l->kind == SYNC_FULL && l->step < STEP_COMMIT)
		log_errorx("load_failed", "reason=%s", "connection lost");
	sync_abandon(l, 1);
	ms = schedule_reconnect(l);
	log_warnx("db_disconnected", "reason=%s retry_ms=%u", why, ms);
	ack(l, take_want(l));
	file_fallback(l);
}

static void notice_cb(void *arg, const PGresult *res)
{
	const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
	char msg[LOADER_REASON_MAX];

	(void)arg;
	reason_copy(msg, sizeof(msg), PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY));
	/* The server says why it is about to drop us (FATAL) through here. */
	if (sev != NULL && (!strcmp(sev, "FATAL") || !strcmp(sev, "PANIC") || !strcmp(sev, "ERROR")))
		log_notice("db_notice", "severity=%s message=%s", sev, msg);
	else
		log_debug("db_notice", "severity=%s message=%s", sev, msg);
}

/*
 * Start connecting. The defaults come before dbname, so the configured
 * conninfo may override them. Keepalives make a silently dead server show
 * up within a minute or so on TCP instead of hanging a load. Note that
 * PQconnectStartParams() resolves host names synchronously.
 */
static void db_connect(loader_t *l)
{
	static const char *const keys[] = {"application_name", "keepalives_idle", "keepalives_interval",
	                                   "keepalives_count", "dbname",          NULL};
	const char *const vals[] = {"tollgate-loader", "30", "10", "3", l->c->cfg.database, NULL};

	event_del(l->retry);
	l->conn = PQconnectStartParams(keys, vals, 1);
	if (l->conn == NULL) {
		connect_failed(l, "out of memory");
		return;
	}
	if (PQstatus(l->conn) == CONNECTION_BAD) {
		connect_failed(l, PQerrorMessage(l->conn));
		return;
	}
	PQsetNoticeReceiver(l->conn, notice_cb, l);
	l->state = LOADER_CONNECTING;
	arm_timer(l->timeout, LOADER_CONNECT_TIMEOUT_MS);
	/* libpq: before the first PQconnectPoll(), wait as if it had said WRITING. */
	if (io_watch(l, EV_WRITE) < 0)
		connect_failed(l, "no socket");
}

static void db_connected(loader_t *l)
{
	event_del(l->timeout);
	if (PQsetnonblocking(l->conn, 1) != 0) {
		connect_failed(l, PQerrorMessage(l->conn));
		return;
	}
	/* Hosts tried before the one that answered leave their errors behind. */
	l->err_seen = strlen(PQerrorMessage(l->conn));
	atomic_store(&l->sh->db_connected, 1);
	atomic_fetch_add(&l->sh->db_connects, 1);
	l->schema_logged = LLONG_MIN;
	log_notice("db_connected", "database=%s host=%s port=%s server_version=%d", PQdb(l->conn),
	           PQhost(l->conn), PQport(l->conn), PQserverVersion(l->conn));
	/* Notifications are lost while disconnected: always start with a full load. */
	check_start(l);
}

static void connect_step(loader_t *l)
{
	switch (PQconnectPoll(l->conn)) {
	case PGRES_POLLING_READING:
		if (io_watch(l, EV_READ) < 0)
			connect_failed(l, "no socket");
		return;
	case PGRES_POLLING_WRITING:
		if (io_watch(l, EV_WRITE) < 0)
			connect_failed(l, "no socket");
		return;
	case PGRES_POLLING_OK:
		db_connected(l);
		return;
	default:
		connect_failed(l, PQerrorMessage(l->conn));
		return;
	}
}

static void timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	loader_t *l = arg;
	char why[64];

	(void)fd;
	(void)what;
	if (l->state != LOADER_CONNECTING)
		return;
	snprintf(why, sizeof(why), "no connection within %d ms", LOADER_CONNECT_TIMEOUT_MS);
	connect_failed(l, why);
}

/* ------------------------------------------------------------------ */
/* queries                                                            */

/*
 * Send what libpq has buffered. While it cannot send everything, wait for
 * the socket to be writable too; keep reading meanwhile, since the server
 * may be blocked sending to us.
 */
static int flush(loader_t *l)
{
	int r = PQflush(l->conn);

	if (r < 0)
		return -1;
	return io_watch(l, (short)(EV_READ | EV_PERSIST | (r == 1 ? EV_WRITE : 0)));
}

/* Returns 0, or -1 after declaring the connection lost. */
static int send_query(loader_t *l, const char *sql, int nparams, char *const *params, int single_row)
{
	int sent;

	l->qfailed = 0;
	l->qerr[0] = '\0';
	l->qstate[0] = '\0';
	l->err_seen = 0; /* libpq starts a new error message with each query */
	if (nparams == 0)
		sent = PQsendQuery(l->conn, sql);
	else
		sent = PQsendQueryParams(l->conn, sql, nparams, NULL, (const char *const *)params, NULL, NULL,
		                         0);
	if (!sent) {
		db_lost(l);
		return -1;
	}
	/* One PGresult per row, so a million rules never sit in memory twice. */
	if (single_row)
		PQsetSingleRowMode(l->conn);
	if (flush(l) < 0) {
		db_lost(l);
		return -1;
	}
	return 0;
}

/* Connected with nothing in flight. retry: try the check and load again later. */
static void enter_idle(loader_t *l, int retry)
{
	l->state = LOADER_IDLE;
	if (flush(l) < 0) {
		db_lost(l);
		return;
	}
	if (l->retry_due) {
		/* The retry fell due while a delta ran: now. */
		l->retry_due = 0;
		arm_timer(l->retry, 0);
	} else if (retry) {
		arm_timer(l->retry, retry_max_ms(l));
	}
	/* A SIGHUP arrived during the sync that just ended, or the model was replaced: load again. */
	if (l->reload_now) {
		load_start(l);
		return;
	}
	if (l->want_gen != 0) {
		check_start(l);
		return;
	}
	/* Changes that came in meanwhile: their quiet period may be over already. */
	if (!pending_empty(l->collect) && !event_pending(l->coalesce_ev, EV_TIMEOUT, NULL))
		event_active(l->coalesce_ev, EV_TIMEOUT, 0);
}

/* ------------------------------------------------------------------ */
/* schema check                                                       */

static void check_start(loader_t *l)
{
	event_del(l->retry);
	l->retry_due = 0;
	l->state = LOADER_CHECKING;
	l->schema_rows = 0;
	l->schema_found = -1;
	send_query(l, "SELECT version FROM tollgate.schema_version", 0, NULL, 0);
}

static void check_row(loader_t *l, const PGresult *res, int row)
{
	l->schema_rows++;
	l->schema_found = strtoll(PQgetvalue(res, row, 0), NULL, 10);
}

/*
 * Log a finding once per connection and whenever it changes; the retries
 * are slow but endless. found is 0 when no version can be read, as
 * install.sql counts an empty schema.
 */
static void schema_unknown(loader_t *l)
{
	int missing = !strcmp(l->qstate, "42P01") || !strcmp(l->qstate, "3F000");
	long long finding = l->qfailed ? (missing ? -1 : -2) : l->schema_rows != 1 ? -3 : l->schema_found;
	const char *why = missing      ? "tollgate.schema_version does not exist: run sql/install.sql"
	                  : l->qfailed ? l->qerr
	                               : "tollgate.schema_version must hold one row";

	if (finding != l->schema_logged) {
		l->schema_logged = finding;
		if (finding < 0)
			log_errorx("schema_unknown", "found=%d want=%d reason=%s", 0, LOADER_SCHEMA_VERSION,
			           why);
		else
			log_errorx("schema_unknown", "found=%lld want=%d", finding, LOADER_SCHEMA_VERSION);
	}
	ack(l, take_want(l));
	enter_idle(l, 1);
	file_fallback(l);
}

static void check_done(loader_t *l)
{
	if (l->qfailed || l->schema_rows != 1 || l->schema_found != LOADER_SCHEMA_VERSION) {
		schema_unknown(l);
		return;
	}
	/* Only a connection that got this far counts as healthy again. */
	l->backoff_ms = retry_min_ms(l);
	l->schema_logged = LLONG_MIN;
	load_start(l);
}

/* ------------------------------------------------------------------ */
/* syncs: the queries                                                 */

static void sync_send(loader_t *l, enum sync_step step)
{
	int rows = step == STEP_ACCOUNTS || step == STEP_RULES || step == STEP_USERS;

	l->step = step;
	if (l->kind == SYNC_FULL)
		send_query(l, full_sql[step], 0, NULL, rows);
	else if (step == STEP_ACCOUNTS)
		send_query(l, delta_sql[step], 3, l->params, 0);
	else if (step == STEP_RULES)
		send_query(l, delta_sql[step], 1, &l->params[1], 0);
	else if (step == STEP_USERS)
		send_query(l, delta_sql[step], 1, &l->params[2], 0);
	else
		send_query(l, delta_sql[step], 0, NULL, 0);
}

static void sync_reset(loader_t *l, enum sync_kind kind)
{
	l->kind = kind;
	l->state = LOADER_SYNCING;
	l->sync_start_us = now_us();
	l->invalid = 0;
	l->invalid_users = 0;
	l->rows_accounts = 0;
	l->rows_rules = 0;
	l->rows_users = 0;
	l->realm_found = 0;
	l->realm_same = 0;
	l->over = OVER_NONE;
	l->over_reason = NULL;
	l->changes = 0;
}

static void load_start(loader_t *l)
{
	event_del(l->retry);
	l->retry_due = 0;
	/* Only the load right after a model replacement is its retry (see load_out_of_slots()). */
	if (!l->reload_now)
		l->slot_reset = 0;
	l->reload_now = 0;
	l->load_gen = take_want(l);
	sync_reset(l, SYNC_FULL);
	sync_send(l, STEP_LISTEN);
}

/* Everything collected so far is in the snapshot the load is about to take. */
static void load_begin(loader_t *l)
{
	pending_clear(l->collect);
	l->collect_first_us = 0;
	l->resync_reason = NULL;
	event_del(l->coalesce_ev);
	snap_model_mark_begin(l->model);
	resolve_mark_begin(l->resolve);
	pending_clear(l->refused);
	l->applying = 1;
	sync_send(l, STEP_BEGIN);
}

/* The collected changes become the batch, fetched in one transaction. */
static void delta_start(loader_t *l)
{
	pending_t *swap = l->batch;

	l->batch = l->collect;
	l->collect = swap;
	pending_clear(l->collect);
	l->batch_first_us = l->collect_first_us;
	l->collect_first_us = 0;
	l->resync_reason = NULL;
	l->params[0] = pending_array_text(l->batch, PENDING_ACCOUNTS);
	l->params[1] = pending_array_text(l->batch, PENDING_RULES);
	l->params[2] = pending_array_text(l->batch, PENDING_USERS);
	if (l->params[0] == NULL || l->params[1] == NULL || l->params[2] == NULL) {
		params_free(l);
		log_errorx("delta_failed", "reason=%s", "out of memory");
		l->mixed = 1;
		load_start(l);
		return;
	}
	memset(l->cursor, 0, sizeof(l->cursor));
	sync_reset(l, SYNC_DELTA);
	sync_send(l, STEP_BEGIN);
}

/* Ends the transaction if one is open; then idle, and with retry load again later. */
static void sync_rollback(loader_t *l, int retry)
{
	PGTransactionStatusType ts = PQtransactionStatus(l->conn);

	l->retry_load = retry;
	if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
		sync_send(l, STEP_ROLLBACK);
	else
		enter_idle(l, retry);
}

/* ------------------------------------------------------------------ */
/* syncs: rows into the model                                         */

static long long field_ll(const PGresult *res, int row, int col)
{
	return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* A model short of heap fails a full sync: a snapshot missing rows would refuse real customers. */
static int out_of_memory(const char *err)
{
	return err != NULL && strcmp(err, "out of memory") == 0;
}

/* Deleted accounts hold every slot until a compaction: not the row's fault, and fatal to the sync. */
static int out_of_slots(const char *err)
{
	return err != NULL && strcmp(err, "no free account slot") == 0;
}

/* A delta's id with no row: the row is gone. */
static void batch_delete(loader_t *l, enum pending_table t, int64_t id)
{
	if (t == PENDING_ACCOUNTS) {
		snap_model_account_del(l->model, id);
	} else if (t == PENDING_USERS) {
		snap_model_user_del(l->model, id);
	} else {
		snap_model_rule_del(l->model, id);
		resolve_del(l->resolve, id);
	}
	l->changes++;
}

/*
 * Rows arrive ORDER BY id and the batch's ids are sorted: every id passed
 * over without its row was deleted. An id not in the batch (an account a
 * fetched rule names) is just put.
 */
static void batch_seen(loader_t *l, enum pending_table t, int64_t id)
{
	const int64_t *ids = pending_sorted(l->batch, t);
	uint32_t n = pending_count(l->batch, t), *k = &l->cursor[t];

	while (*k < n && ids[*k] < id)
		batch_delete(l, t, ids[(*k)++]);
	if (*k < n && ids[*k] == id)
		(*k)++;
	l->changes++;
}

static void batch_rest(loader_t *l, enum pending_table t)
{
	const int64_t *ids = pending_sorted(l->batch, t);
	uint32_t n = pending_count(l->batch, t);

	while (l->cursor[t] < n)
		batch_delete(l, t, ids[l->cursor[t]++]);
}

/* The sync cannot go on: the model is short of heap or of room, whatever the rows hold. */
static int over_fatal(const loader_t *l)
{
	return l->over == OVER_MEMORY || l->over == OVER_SLOTS || l->over == OVER_USER_ROOM;
}

/* A full sync counts every row, so capacity_exceeded can say how many there are. */
static int full_row_fits(loader_t *l, uint64_t *rows, uint32_t cap, enum load_over over)
{
	(*rows)++;
	if (l->over == OVER_NONE && *rows > cap)
		l->over = over;
	return l->over == OVER_NONE;
}

/* An account's three lists, split out of the strings the query joined them into. */
typedef struct account_lists {
	char text[3][SNAP_DEST_PREFIXES * (SNAP_DEST_PREFIX_MAX + 1)];
	const char *allowed[SNAP_DEST_PREFIXES], *denied[SNAP_DEST_PREFIXES], *codecs[SNAP_CODECS];
} account_lists_t;

/*
 * s, elements joined with ' ', into buf (len bytes) and out[] (max).
 * Returns NULL, or why not; an empty element is the model's to refuse.
 */
static const char *list_split(const char *s, char *buf, size_t len, const char **out, unsigned max,
                              unsigned *n)
{
	size_t slen = strlen(s);
	char *p = buf;

	*n = 0;
	if (slen == 0)
		return NULL;
	if (slen >= len)
		return "longer than the gateway keeps";
	memcpy(buf, s, slen + 1);
	for (;;) {
		if (*n == max)
			return "more elements than the gateway keeps";
		out[(*n)++] = p;
		if ((p = strchr(p, ' ')) == NULL)
			return NULL;
		*p++ = '\0';
	}
}

/* Columns 5.. of an accounts row into a (its lists into al). Returns NULL, or why not. */
static const char *account_policy(const PGresult *res, int row, snap_account_info_t *a, account_lists_t *al,
                                  char *why, size_t len)
{
	static const char *const col[3] = {"allowed_prefixes", "denied_prefixes", "restricted_codecs"};
	const char **out[3] = {al->allowed, al->denied, al->codecs};
	unsigned *n[3] = {&a->nallowed, &a->ndenied, &a->ncodecs};
	const unsigned max[3] = {SNAP_DEST_PREFIXES, SNAP_DEST_PREFIXES, SNAP_CODECS};
	long long burst = PQgetisnull(res, row, 5) ? 0 : field_ll(res, row, 5);
	const char *err;

	if (burst < 0 || burst > UINT32_MAX)
		return "cps_burst out of range";
	a->cps_burst = (uint32_t)burst;
	for (int k = 0; k < 3; k++) {
		if ((err = list_split(PQgetvalue(res, row, 6 + k), al->text[k], sizeof(al->text[k]), out[k],
		                      max[k], n[k])) != NULL) {
			snprintf(why, len, "%s: %s", col[k], err);
			return why;
		}
	}
	a->allowed_prefixes = al->allowed;
	a->denied_prefixes = al->denied;
	a->restricted_codecs = al->codecs;
	return NULL;
}

/* Was account id skipped as invalid since the last full load began? Overflowed: maybe. */
static int account_was_refused(loader_t *l, int64_t id)
{
	const int64_t *ids = pending_sorted(l->refused, PENDING_ACCOUNTS);
	uint32_t lo = 0, hi = pending_count(l->refused, PENDING_ACCOUNTS);

	if (pending_overflowed(l->refused))
		return 1;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (ids[mid] < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < pending_count(l->refused, PENDING_ACCOUNTS) && ids[lo] == id;
}

/* A full load after this delta: what only a full load can bring back (see user_row()). */
static void delta_wants_full(loader_t *l, const char *reason)
{
	if (l->resync_reason == NULL)
		l->resync_reason = reason;
	pending_overflow(l->collect);
	if (l->collect_first_us == 0)
		l->collect_first_us = now_us();
}

static void account_row(loader_t *l, const PGresult *res, int row)
{
	char why[LOADER_REASON_MAX];
	const char *err = NULL;
	long long id = field_ll(res, row, 0);
	const char *name = PQgetvalue(res, row, 1);
	snap_account_info_t a;
	account_lists_t al;

	if (l->kind == SYNC_DELTA)
		batch_seen(l, PENDING_ACCOUNTS, id);
	else if (!full_row_fits(l, &l->rows_accounts, l->c->cfg.cap_accounts, OVER_ACCOUNTS))
		return;
	memset(&a, 0, sizeof(a));
	a.id = id;
	a.name = name;
	a.active = !strcmp(PQgetvalue(res, row, 2), "active");
	a.max_channels = (uint32_t)field_ll(res, row, 3);
	a.max_cps = (uint32_t)field_ll(res, row, 4);
	if ((err = account_policy(res, row, &a, &al, why, sizeof(why))) == NULL &&
	    snap_model_account_put2(l->model, &a, &err) == 0) {
		if (l->kind == SYNC_DELTA && account_was_refused(l, id))
			delta_wants_full(l, "an account skipped before is valid again");
		return;
	}
	if (out_of_memory(err)) {
		l->over = OVER_MEMORY;
		return;
	}
	if (out_of_slots(err)) {
		l->over = OVER_SLOTS;
		return;
	}
	/* Its rules will be refused as "unknown account" and counted there. */
	snap_model_account_del(l->model, id);
	(void)pending_add(l->refused, PENDING_ACCOUNTS, id); /* past the limit: every one counts as refused */
	log_warnx("account_invalid", "id=%lld name=%s reason=%s", id, name, err);
}

static unsigned direction_parse(const char *s)
{
	if (!strcmp(s, "ingress"))
		return SNAP_DIR_INGRESS;
	if (!strcmp(s, "egress"))
		return SNAP_DIR_EGRESS;
	if (!strcmp(s, "both"))
		return SNAP_DIR_BOTH;
	return 0;
}

static void rule_invalid(loader_t *l, long long id, const char *address, const char *reason)
{
	if (l->invalid++ < LOADER_INVALID_LOG_MAX)
		log_warnx("rule_invalid", "id=%lld address=%s reason=%s", id, address, reason);
	else if (l->invalid == LOADER_INVALID_LOG_MAX + 1)
		log_warnx("rule_invalid_suppressed", "after=%d", LOADER_INVALID_LOG_MAX);
}

/* Letters, digits, '-', '.' and '_': what a DNS name in a rule may hold. */
static int host_ok(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n <= 253 &&
	       strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	                 "0123456789-._") == n;
}

/* One ip_rules row, parsed. */
typedef struct rule_row {
	long long id, account_id, port;
	long long max_channels, max_cps, cps_burst; /* 0 for NULL */
	const char *address, *prefix;
	const char *host; /* the schema's normalised host name (lower case, no trailing dot), or NULL */
	int active, is_host;
	unsigned dir;
} rule_row_t;

static void rule_parse(const PGresult *res, int row, rule_row_t *r)
{
	r->id = field_ll(res, row, 0);
	r->account_id = field_ll(res, row, 1);
	r->address = PQgetvalue(res, row, 2);
	r->port = PQgetisnull(res, row, 3) ? 0 : field_ll(res, row, 3);
	r->prefix = PQgetisnull(res, row, 4) ? "" : PQgetvalue(res, row, 4);
	r->active = !strcmp(PQgetvalue(res, row, 5), "active");
	r->dir = direction_parse(PQgetvalue(res, row, 6));
	r->host = PQgetisnull(res, row, 7) ? NULL : PQgetvalue(res, row, 7);
	r->is_host = r->host != NULL;
	r->max_channels = PQgetisnull(res, row, 8) ? 0 : field_ll(res, row, 8);
	r->max_cps = PQgetisnull(res, row, 9) ? 0 : field_ll(res, row, 9);
	r->cps_burst = PQgetisnull(res, row, 10) ? 0 : field_ll(res, row, 10);
}

/* A host-name rule gets the resolver's last good addresses (none before its first answer). */
static const char *rule_host(loader_t *l, const rule_row_t *r, const tg_range_t **ranges, unsigned *n)
{
	const resolve_rule_t *got;
	resolve_rule_t q;

	if (!host_ok(r->host))
		return "not a host name";
	memset(&q, 0, sizeof(q));
	q.id = r->id;
	q.account_id = r->account_id;
	q.port = (uint16_t)r->port;
	snprintf(q.tech_prefix, sizeof(q.tech_prefix), "%s", r->prefix);
	q.active = r->active;
	q.direction = r->dir;
	snprintf(q.host, sizeof(q.host), "%s", r->host);
	if ((got = resolve_put(l->resolve, &q, NULL, 0)) == NULL)
		return "out of memory";
	*ranges = got->ranges;
	*n = got->nranges;
	return NULL;
}

/* Returns NULL once the rule is in the model, else why not. */
static const char *rule_apply(loader_t *l, const rule_row_t *r)
{
	const tg_range_t *ranges;
	const char *err = NULL;
	snap_rule_info_t ri;
	tg_range_t one;
	unsigned n = 1;

	if (r->dir == 0)
		return "unknown direction";
	if (r->port < 0 || r->port > 65535)
		return "port out of range";
	if (r->max_channels < 0 || r->max_channels > UINT32_MAX || r->max_cps < 0 ||
	    r->max_cps > UINT32_MAX || r->cps_burst < 0 || r->cps_burst > UINT32_MAX)
		return "limit out of range";
	if (r->is_host) {
		if ((err = rule_host(l, r, &ranges, &n)) != NULL)
			return err;
	} else {
		if (tg_range_parse(r->address, &one, &err) < 0)
			return err;
		ranges = &one;
		resolve_del(l->resolve, r->id); /* it may have been a host name until now */
	}
	memset(&ri, 0, sizeof(ri));
	ri.id = r->id;
	ri.account_id = r->account_id;
	ri.ranges = ranges;
	ri.nranges = n;
	ri.port = (uint16_t)r->port;
	ri.tech_prefix = r->prefix;
	ri.active = r->active;
	ri.direction = r->dir;
	ri.max_channels = (uint32_t)r->max_channels;
	ri.max_cps = (uint32_t)r->max_cps;
	ri.cps_burst = (uint32_t)r->cps_burst;
	if (snap_model_rule_put2(l->model, &ri, &err) < 0)
		return err != NULL ? err : "refused";
	return NULL;
}

/*
 * The schema's checks and trigger refuse most bad rows already; what is
 * left (a parser disagreement, an account the model refused) is skipped
 * here rather than failing the whole sync, and an older version of the
 * row leaves the model with it.
 */
static void rule_row(loader_t *l, const PGresult *res, int row)
{
	const char *err;
	rule_row_t r;

	rule_parse(res, row, &r);
	if (l->kind == SYNC_DELTA)
		batch_seen(l, PENDING_RULES, r.id);
	else if (!full_row_fits(l, &l->rows_rules, l->c->cfg.cap_ip_rules, OVER_RULES))
		return;
	if ((err = rule_apply(l, &r)) == NULL)
		return;
	if (out_of_memory(err)) {
		l->over = OVER_MEMORY;
		return;
	}
	snap_model_rule_del(l->model, r.id);
	resolve_del(l->resolve, r.id);
	rule_invalid(l, r.id, r.address, err);
}

/* ---- SIP users ---- */

/*
 * The model has room for cap_sip_users users and a total of allowed
 * source ranges; during a full load the users it has not seen again
 * still hold theirs until the sweep. Not the row's fault, and fatal to
 * the sync (see load_out_of_slots()).
 */
static int out_of_user_room(const char *err)
{
	return err != NULL && (strncmp(err, "no room", 7) == 0 ||
	                       strcmp(err, "too many allowed source ranges in total") == 0);
}

static void user_invalid(loader_t *l, long long id, const char *username, const char *reason)
{
	l->invalid++;
	if (l->invalid_users++ < LOADER_INVALID_LOG_MAX)
		log_warnx("user_invalid", "id=%lld username=%s reason=%s", id, username, reason);
	else if (l->invalid_users == LOADER_INVALID_LOG_MAX + 1)
		log_warnx("user_invalid_suppressed", "after=%d", LOADER_INVALID_LOG_MAX);
}

static const char *field_or_null(const PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

/*
 * allowed_sources, joined with ',' by the query, through the parser the
 * rules use (the schema checked them with the same notation). Returns
 * NULL, or why not (in why when it names the element).
 */
static const char *user_sources(const char *list, tg_range_t *ranges, unsigned *n, char *why, size_t len)
{
	const char *err = NULL;
	char one[128];

	for (*n = 0; *list != '\0'; (*n)++) {
		size_t k = strcspn(list, ",");

		if (*n == SNAP_USER_RANGES)
			return "more allowed sources than the gateway keeps";
		snprintf(one, sizeof(one), "%.*s", (int)k, list);
		if (k >= sizeof(one) || tg_range_parse(one, &ranges[*n], &err) < 0) {
			snprintf(why, len, "allowed source \"%s\": %s", one,
			         k >= sizeof(one) ? "too long" : err);
			return why;
		}
		list += list[k] == ',' ? k + 1 : k;
	}
	return NULL;
}

/* Returns NULL once the user is in the model, else why not. */
static const char *user_apply(loader_t *l, const PGresult *res, int row, snap_user_info_t *u, char *why,
                              size_t len)
{
	tg_range_t ranges[SNAP_USER_RANGES];
	const char *err = NULL;

	u->account_id = field_ll(res, row, 1);
	u->domain = field_or_null(res, row, 3);
	u->active = !strcmp(PQgetvalue(res, row, 4), "active");
	u->ha1_md5 = field_or_null(res, row, 5);
	u->ha1_sha256 = field_or_null(res, row, 6);
	u->ha1_md5_full = field_or_null(res, row, 7);
	u->ha1_sha256_full = field_or_null(res, row, 8);
	u->restrict_sources = !strcmp(PQgetvalue(res, row, 9), "t");
	u->ranges = ranges;
	if ((err = user_sources(PQgetvalue(res, row, 10), ranges, &u->nranges, why, len)) != NULL)
		return err;
	if (snap_model_user_put(l->model, u, &err) < 0)
		return err != NULL ? err : "refused";
	return NULL;
}

/*
 * Like rule_row(): a row the model refuses is skipped and logged, and an
 * older version of it leaves the model with it. Users count against
 * cap_sip_users as rules do against theirs.
 */
static void user_row(loader_t *l, const PGresult *res, int row)
{
	char why[LOADER_REASON_MAX];
	snap_user_info_t u;
	const char *err;

	memset(&u, 0, sizeof(u));
	u.id = field_ll(res, row, 0);
	u.username = PQgetvalue(res, row, 2);
	if (l->kind == SYNC_DELTA)
		batch_seen(l, PENDING_USERS, u.id);
	else if (!full_row_fits(l, &l->rows_users, l->c->cfg.cap_sip_users, OVER_USERS))
		return;
	if ((err = user_apply(l, res, row, &u, why, sizeof(why))) == NULL)
		return;
	if (out_of_memory(err)) {
		l->over = OVER_MEMORY;
		return;
	}
	if (out_of_user_room(err)) {
		l->over = OVER_USER_ROOM;
		l->over_reason = err;
		return;
	}
	if (l->kind == SYNC_DELTA && strcmp(err, "another user already has this username and domain") == 0) {
		/*
		 * Two users swapped names in one transaction and this one's row came
		 * first: the database holds each name once, so a full load (which
		 * puts every row before it sweeps) settles it. Until then the row
		 * is out, as an invalid one would be.
		 */
		delta_wants_full(l, "a SIP user's new name was still held by a row of the same change");
	}
	snap_model_user_del(l->model, u.id);
	user_invalid(l, (long long)u.id, u.username, err);
}

/* tollgate.settings digest_realm: one row, or none. */
static void realm_row(loader_t *l, const PGresult *res, int row)
{
	const char *v = PQgetvalue(res, row, 0);

	l->realm_found = 1;
	l->realm_same = !strcmp(v, l->c->cfg.digest_realm);
	snprintf(l->db_realm, sizeof(l->db_realm), "%s", v);
}

/*
 * HA1 values are hashed over the database's realm, and workers challenge
 * with the config's: when they differ no digest can ever verify. Said at
 * every full load while it lasts; the load goes on, since every other
 * field of the users is good, and only an operator knows which side is
 * right. digest_realm "" in the config: digest is off, nothing to compare.
 */
static void realm_check(loader_t *l)
{
	const char *want = l->c->cfg.digest_realm;

	if (want[0] == '\0' || l->realm_same)
		return;
	log_errorx("digest_realm_mismatch", "config_realm=%s database_realm=%s reason=%s", want,
	           l->realm_found ? l->db_realm : NULL,
	           l->realm_found ? "stored HA1 values cannot verify against the configured realm"
	                          : "tollgate.settings has no digest_realm");
}

static void on_row(loader_t *l, const PGresult *res, int row)
{
	if (l->qfailed || (l->state == LOADER_SYNCING && over_fatal(l)))
		return;
	if (l->state == LOADER_CHECKING)
		check_row(l, res, row);
	else if (l->state == LOADER_SYNCING && l->step == STEP_REALM)
		realm_row(l, res, row);
	else if (l->state == LOADER_SYNCING && l->step == STEP_ACCOUNTS)
		account_row(l, res, row);
	else if (l->state == LOADER_SYNCING && l->step == STEP_RULES)
		rule_row(l, res, row);
	else if (l->state == LOADER_SYNCING && l->step == STEP_USERS)
		user_row(l, res, row);
}

/* ------------------------------------------------------------------ */
/* syncs: steps                                                       */

/*
 * A full load ran out of account slots: the model's deleted accounts hold
 * them until a compaction, and the load has already changed accounts, so
 * the model is no longer the one published and no compaction may publish
 * it. Load again, at once, into a fresh model, where every slot is free
 * (a load holds at most cap_accounts accounts; a head has twice as many
 * slots). Workers keep the last snapshot meanwhile; the host names keep
 * their addresses in the resolver. Once only: a second time, the old
 * snapshot stays and capacity_exceeded says why. The same goes for users:
 * until the sweep, the users the load has not seen again still hold their
 * room, so a load that replaces many of them can run out of it.
 */
static void load_out_of_slots(loader_t *l)
{
	int users = l->over == OVER_USER_ROOM;
	const char *table = users ? "sip_users" : "accounts";
	const char *why = users ? l->over_reason : "no free account slot";
	unsigned long long rows = users ? l->rows_users : l->rows_accounts;
	uint32_t cap = users ? l->c->cfg.cap_sip_users : l->c->cfg.cap_accounts;
	snap_model_t *fresh = l->slot_reset ? NULL
	                                    : snap_model_new(l->c->cfg.cap_accounts, l->c->cfg.cap_ip_rules,
	                                                     l->c->cfg.cap_sip_users);

	if (fresh == NULL) {
		if (l->slot_reset)
			log_errorx("capacity_exceeded", "table=%s rows=%llu capacity=%u reason=%s", table,
			           rows, cap, why);
		else
			log_errorx("load_failed", "reason=%s", "out of memory");
		l->slot_reset = 0;
		sync_abandon(l, 1);
		sync_rollback(l, 1);
		return;
	}
	log_notice("load_restarted", "reason=%s table=%s rows=%llu capacity=%u", why, table, rows, cap);
	snap_model_free(l->model);
	l->model = fresh;
	l->mixed = 1; /* empty: nothing is published from it until the load fills it */
	l->slot_reset = 1;
	l->reload_now = 1;
	/* Not a failure: the next load answers for this one's generation. */
	sync_abandon(l, 0);
	sync_rollback(l, 0);
}

/*
 * Above capacity: the old snapshot stays, since a partial one would refuse
 * real customers. Loading again only helps once rows are deleted, which
 * the SIGHUP after that delete asks for; so no timed retry, except after
 * running short of memory.
 */
static void load_over_capacity(loader_t *l)
{
	int retry = l->over == OVER_MEMORY;

	if (l->over == OVER_SLOTS || l->over == OVER_USER_ROOM) {
		load_out_of_slots(l);
		return;
	}
	if (l->over == OVER_MEMORY)
		log_errorx("load_failed", "reason=%s", "out of memory");
	else if (l->over == OVER_ACCOUNTS)
		log_errorx("capacity_exceeded", "table=%s rows=%llu capacity=%u", "accounts",
		           (unsigned long long)l->rows_accounts, l->c->cfg.cap_accounts);
	else if (l->over == OVER_RULES)
		log_errorx("capacity_exceeded", "table=%s rows=%llu capacity=%u", "ip_rules",
		           (unsigned long long)l->rows_rules, l->c->cfg.cap_ip_rules);
	else
		log_errorx("capacity_exceeded", "table=%s rows=%llu capacity=%u", "sip_users",
		           (unsigned long long)l->rows_users, l->c->cfg.cap_sip_users);
	sync_abandon(l, 1);
	sync_rollback(l, retry);
}

/* Every row is in: what was not seen is gone, and the model is whole again. */
static void load_done(loader_t *l)
{
	uint32_t swept = snap_model_sweep(l->model);

	resolve_sweep(l->resolve);
	l->applying = 0;
	l->mixed = 0;
	l->synced = 1;
	l->slot_reset = 0;
	log_debug("load_swept", "rows=%u", swept);
	mark_dirty(l, PUB_FULL, l->sync_start_us);
	if (l->load_gen > l->ack_gen)
		l->ack_gen = l->load_gen;
	l->load_gen = 0;
	l->pub_invalid = l->invalid;
	l->pub_changes = l->rows_accounts + l->rows_rules + l->rows_users;
	/* Rules only, as the metric says; the users skipped are in the log (and in invalid). */
	atomic_store(&l->sh->rules_invalid, l->invalid - l->invalid_users);
	atomic_store(&l->sh->users_invalid, l->invalid_users);
	atomic_store(&l->sh->hostname_rules, resolve_count(l->resolve));
}

/* A delta query failed: what it put is half a change, so the next sync is a full one. */
static void delta_failed(loader_t *l)
{
	log_errorx("delta_failed", "reason=%s", l->qerr);
	sync_abandon(l, 1);
	l->resync_reason = "delta failed";
	pending_overflow(l->collect);
	if (l->collect_first_us == 0)
		l->collect_first_us = now_us();
	sync_rollback(l, 0);
}

static void full_step_done(loader_t *l)
{
	switch (l->step) {
	case STEP_LISTEN:
		load_begin(l);
		return;
	case STEP_BEGIN:
		sync_send(l, STEP_REALM);
		return;
	case STEP_REALM:
		realm_check(l);
		sync_send(l, STEP_ACCOUNTS);
		return;
	case STEP_ACCOUNTS:
		if (l->over != OVER_NONE)
			load_over_capacity(l);
		else
			sync_send(l, STEP_RULES);
		return;
	case STEP_RULES:
		if (l->over != OVER_NONE)
			load_over_capacity(l);
		else
			sync_send(l, STEP_USERS);
		return;
	case STEP_USERS:
		if (l->over != OVER_NONE) {
			load_over_capacity(l);
			return;
		}
		load_done(l);
		/* End the transaction first, then build while the server rests. */
		sync_send(l, STEP_COMMIT);
		publish_try(l);
		return;
	default:
		return;
	}
}

static void delta_step_done(loader_t *l)
{
	/*
	 * Out of slots or user room too: a full sync follows, and frees them
	 * (see load_out_of_slots()), or says capacity_exceeded when the
	 * database holds more users than the capacity.
	 */
	if (over_fatal(l)) {
		snprintf(l->qerr, sizeof(l->qerr), "%s",
		         l->over == OVER_MEMORY  ? "out of memory"
		         : l->over == OVER_SLOTS ? "no free account slot"
		                                 : l->over_reason);
		delta_failed(l);
		return;
	}
	switch (l->step) {
	case STEP_BEGIN:
		l->applying = 1;
		sync_send(l, STEP_ACCOUNTS);
		return;
	case STEP_ACCOUNTS:
		batch_rest(l, PENDING_ACCOUNTS);
		sync_send(l, STEP_RULES);
		return;
	case STEP_RULES:
		batch_rest(l, PENDING_RULES);
		sync_send(l, STEP_USERS);
		return;
	case STEP_USERS:
		batch_rest(l, PENDING_USERS);
		l->applying = 0;
		params_free(l);
		mark_dirty(l, PUB_DELTA, l->batch_first_us);
		l->pub_changes += l->changes;
		l->pub_invalid += l->invalid;
		atomic_store(&l->sh->hostname_rules, resolve_count(l->resolve));
		sync_send(l, STEP_COMMIT);
		publish_try(l);
		return;
	default:
		return;
	}
}

static void sync_step_done(loader_t *l)
{
	if (l->qfailed && l->step <= STEP_USERS) {
		if (l->kind == SYNC_DELTA) {
			delta_failed(l);
			return;
		}
		log_errorx("load_failed", "reason=%s", l->qerr);
		sync_abandon(l, 1);
		sync_rollback(l, 1);
		return;
	}
	if (l->step == STEP_COMMIT || l->step == STEP_ROLLBACK) {
		/* A read-only transaction: nothing to lose if its end failed. */
		if (l->qfailed)
			log_warnx("db_query_failed", "query=%s reason=%s", full_sql[l->step], l->qerr);
		enter_idle(l, l->step == STEP_ROLLBACK && l->retry_load);
		return;
	}
	if (l->kind == SYNC_FULL)
		full_step_done(l);
	else
		delta_step_done(l);
}

/* ------------------------------------------------------------------ */
/* results and notifications                                          */

static void on_result(loader_t *l, const PGresult *res)
{
	const char *state;

	switch (PQresultStatus(res)) {
	case PGRES_SINGLE_TUPLE:
	case PGRES_TUPLES_OK:
		for (int i = 0; i < PQntuples(res); i++)
			on_row(l, res, i);
		return;
	case PGRES_COMMAND_OK:
		return;
	default:
		/* The first error explains; what follows is fallout. */
		if (l->qfailed)
			return;
		l->qfailed = 1;
		reason_copy(l->qerr, sizeof(l->qerr), PQresultErrorMessage(res));
		state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		snprintf(l->qstate, sizeof(l->qstate), "%s", state != NULL ? state : "");
		return;
	}
}

static void query_done(loader_t *l)
{
	if (l->state == LOADER_CHECKING)
		check_done(l);
	else if (l->state == LOADER_SYNCING)
		sync_step_done(l);
}

/*
 * Quiet for coalesce_ms, but at most max_delay_ms after the first change
 * (a forced full sync waits for its burst to end, up to a second: the
 * rest of a 100,000-row burst is on its way and the load will cover it).
 */
static void coalesce_arm(loader_t *l)
{
	uint64_t now = now_us(), quiet = (uint64_t)l->c->cfg.coalesce_ms * 1000, cap, at;

	if (l->collect_first_us == 0)
		l->collect_first_us = now;
	cap = (uint64_t)(pending_overflowed(l->collect) ? LOADER_FORCED_WAIT_MS : l->c->cfg.max_delay_ms) *
	      1000;
	at = now + quiet < l->collect_first_us + cap ? now + quiet : l->collect_first_us + cap;
	arm_timer_us(l->coalesce_ev, at > now ? at - now : 0);
}

/* Not a table of ids: a setting the load reads (the digest realm) changed. */
#define TABLE_SETTINGS PENDING_NTABLES

static int table_of(const char *name, size_t len)
{
	if (len == 8 && !memcmp(name, "accounts", 8))
		return PENDING_ACCOUNTS;
	if (len == 8 && !memcmp(name, "ip_rules", 8))
		return PENDING_RULES;
	if (len == 9 && !memcmp(name, "sip_users", 9))
		return PENDING_USERS;
	if (len == 8 && !memcmp(name, "settings", 8))
		return TABLE_SETTINGS;
	return -1;
}

/* The first reason given stands for the burst. */
static void resync_wanted(loader_t *l, const char *reason)
{
	if (l->resync_reason == NULL)
		l->resync_reason = reason;
	pending_overflow(l->collect);
}

/* Returns 1 when the payload asks for something, 0 when it is about a table we do not load. */
static int notify_one(loader_t *l, const char *payload)
{
	const char *op = strchr(payload, ','), *id = op != NULL ? strchr(op + 1, ',') : NULL;
	size_t oplen = id != NULL ? (size_t)(id - op - 1) : 0;
	int t = op != NULL ? table_of(payload, (size_t)(op - payload)) : -1;
	char *end;
	long long v;

	if (id == NULL) {
		log_warnx("notify_invalid", "payload=%s", payload);
		resync_wanted(l, "bad notification");
		return 1;
	}
	if (t < 0)
		return 0;
	if (t == TABLE_SETTINGS) {
		resync_wanted(l, "settings changed");
		return 1;
	}
	if ((oplen == 8 && !memcmp(op + 1, "TRUNCATE", 8)) || (oplen == 4 && !memcmp(op + 1, "BULK", 4))) {
		resync_wanted(l, oplen == 4 ? "bulk change" : "truncate");
		return 1;
	}
	errno = 0;
	v = strtoll(id + 1, &end, 10);
	if (id[1] == '\0' || *end != '\0' || errno != 0) {
		log_warnx("notify_invalid", "payload=%s", payload);
		resync_wanted(l, "bad notification");
	} else if (pending_add(l->collect, (enum pending_table)t, v) == 1 && l->resync_reason == NULL) {
		l->resync_reason = "too many changes";
	}
	return 1;
}

/* Every notification libpq has parsed; one timer update for the lot. */
static void notifies(loader_t *l)
{
	PGnotify *n;
	uint64_t count = 0;
	int wanted = 0;

	while (l->conn != NULL && (n = PQnotifies(l->conn)) != NULL) {
		if (!strcmp(n->relname, LOADER_CHANNEL))
			wanted |= notify_one(l, n->extra);
		count++;
		PQfreemem(n);
	}
	if (count > 0)
		atomic_fetch_add(&l->sh->notifications, count);
	if (wanted)
		coalesce_arm(l);
}

/* Take every complete result; query_done() may send the next query or change state. */
static void drain(loader_t *l)
{
	while (l->conn != NULL && (l->state == LOADER_CHECKING || l->state == LOADER_SYNCING) &&
	       !PQisBusy(l->conn)) {
		PGresult *res = PQgetResult(l->conn);

		if (res == NULL) {
			l->err_seen = strlen(PQerrorMessage(l->conn));
			query_done(l);
			continue;
		}
		on_result(l, res);
		PQclear(res);
	}
	/* Idle: parse what came anyway (notifications, notices) so it does not pile up. */
	if (l->conn != NULL && l->state == LOADER_IDLE)
		PQisBusy(l->conn);
	notifies(l);
	if (l->conn != NULL && PQstatus(l->conn) == CONNECTION_BAD)
		db_lost(l);
}

/*
 * The socket failed or closed. Parse what did arrive first: when idle, the
 * server's FATAL saying why ("terminating connection due to administrator
 * command") reaches notice_cb that way.
 */
static void consume_failed(loader_t *l)
{
	PQisBusy(l->conn);
	db_lost(l);
}

static void io_cb(evutil_socket_t fd, short what, void *arg)
{
	loader_t *l = arg;

	(void)fd;
	if (l->state == LOADER_CONNECTING) {
		connect_step(l);
		return;
	}
	if ((what & EV_WRITE) && flush(l) < 0) {
		db_lost(l);
		return;
	}
	/*
	 * Read after a write wake-up too: PQflush() may have read input into
	 * libpq's buffer (it reads while the server is blocked sending to us),
	 * and no read event comes for bytes the socket no longer holds. In
	 * IDLE this is how a server that went away is noticed.
	 */
	if (!PQconsumeInput(l->conn)) {
		consume_failed(l);
		return;
	}
	drain(l);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
	loader_t *l = arg;

	(void)fd;
	(void)what;
	if (l->state == LOADER_DISCONNECTED)
		db_connect(l);
	else if (l->state == LOADER_IDLE)
		check_start(l);
	else if (l->state == LOADER_SYNCING && l->kind == SYNC_DELTA)
		l->retry_due = 1; /* a delta does not do what the retry asks: enter_idle() re-arms it */
}

/*
 * The burst is over (or has waited long enough). Connected and idle: fetch
 * it, or load everything when it overflowed. Otherwise the sync in flight
 * ends in enter_idle(), which comes back here. Changes that need no query
 * (a host name's new addresses) are published whatever the connection does.
 */
static void coalesce_cb(evutil_socket_t fd, short what, void *arg)
{
	loader_t *l = arg;

	(void)fd;
	(void)what;
	/* A model left mixed by a failed sync takes no delta: the change may be what lets a load pass. */
	if (l->state == LOADER_IDLE && !pending_empty(l->collect) &&
	    (pending_overflowed(l->collect) || l->mixed)) {
		atomic_fetch_add(&l->sh->forced_resyncs, 1);
		log_info("resync_forced", "reason=%s",
		         pending_overflowed(l->collect) ? l->resync_reason : "last sync failed");
		load_start(l);
	} else if (l->state == LOADER_IDLE && !pending_empty(l->collect)) {
		delta_start(l);
	} else {
		publish_try(l);
	}
}

/* ------------------------------------------------------------------ */
/* publishing                                                         */

static void publish_done(loader_t *l)
{
	ack(l, l->ack_gen);
	l->ack_gen = 0;
	l->wait_since_ms = 0;
	l->wait_warned = 0;
	event_del(l->publish_ev);
}

/*
 * A worker still reads an arena the publish needs. Never wait on it: come
 * back shortly, sooner at first since a worker holds a snapshot for one
 * batch of packets only.
 */
static void publish_wait(loader_t *l)
{
	uint64_t now = tg_now_ms();

	if (l->wait_since_ms == 0) {
		l->wait_since_ms = now;
		l->wait_ms = LOADER_PUBLISH_FIRST_MS;
		atomic_fetch_add(&l->sh->publish_waits, 1);
	} else if (l->wait_ms < LOADER_PUBLISH_MAX_MS) {
		l->wait_ms = l->wait_ms * 2 < LOADER_PUBLISH_MAX_MS ? l->wait_ms * 2 : LOADER_PUBLISH_MAX_MS;
	}
	if (!l->wait_warned && now - l->wait_since_ms > LOADER_PUBLISH_WARN_MS) {
		l->wait_warned = 1;
		log_warnx("publish_waiting", "held_generation=%llu waited_ms=%llu",
		          (unsigned long long)atomic_load(&l->shm->snapctl->generation) - 1,
		          (unsigned long long)(now - l->wait_since_ms));
	}
	arm_timer(l->publish_ev, l->wait_ms);
}

static void publish_stats(loader_t *l, const snap_publish_stats_t *st, uint64_t built_ms)
{
	uint64_t latency_us = now_us() - l->dirty_since_us;
	uint64_t waited_ms = l->wait_since_ms != 0 ? tg_now_ms() - l->wait_since_ms : 0;
	uint32_t users = snap_model_nusers(l->model); /* what was published: the model, as it stands */

	atomic_store(&l->sh->accounts, st->accounts);
	atomic_store(&l->sh->ip_rules, st->rules);
	atomic_store(&l->sh->sip_users, users);
	/* A file's data, and what DNS changed in it, is as old as the file says. */
	if (l->pub_kind == PUB_FULL || l->pub_kind == PUB_DELTA || l->data_ms == 0)
		l->data_ms = built_ms;
	atomic_store(&l->sh->snapshot_ms, l->data_ms);
	atomic_store(&l->sh->have_snapshot, 1);
	atomic_store(&l->sh->publish_latency_us, latency_us);
	if (l->pub_kind == PUB_FULL || l->pub_kind == PUB_FILE)
		atomic_store(&l->sh->snapshot_from_file, l->pub_kind == PUB_FILE);
	if (l->pub_kind == PUB_FULL)
		atomic_fetch_add(&l->sh->loads, 1);
	else if (l->pub_kind != PUB_FILE)
		atomic_fetch_add(&l->sh->deltas, 1);
	/* latency_us counts from the oldest change (or the load's start) to the publish. */
	log_notice("snapshot_published",
	           "kind=%s generation=%llu base_generation=%llu compaction=%d reason=%s accounts=%u "
	           "ip_rules=%u sip_users=%u changes=%llu invalid=%llu latency_us=%llu load_ms=%llu "
	           "waited_ms=%llu build_us=%llu head_bytes=%zu base_bytes=%zu overlay_rules=%u "
	           "tombstones=%u",
	           pub_kind_name[l->pub_kind], (unsigned long long)st->generation,
	           (unsigned long long)st->base_generation, st->kind == SNAP_PUBLISH_COMPACTION,
	           st->reason != NULL ? st->reason : "", st->accounts, st->rules, users,
	           (unsigned long long)l->pub_changes, (unsigned long long)l->pub_invalid,
	           (unsigned long long)latency_us, (unsigned long long)(latency_us / 1000),
	           (unsigned long long)waited_ms, (unsigned long long)st->build_us, st->head_bytes,
	           st->base_bytes, st->overlay_rules, st->tombstones);
}

/* ENOSPC: more rows than the capacity, or a base too big for its arena. The old snapshot stays. */
static void publish_failed(loader_t *l)
{
	int saved = errno;

	if (!l->capacity_logged || saved != ENOSPC)
		log_errorx("capacity_exceeded",
		           "table=%s accounts=%u ip_rules=%u sip_users=%u capacity_accounts=%u "
		           "capacity_ip_rules=%u capacity_sip_users=%u reason=%s",
		           "snapshot", snap_model_naccounts(l->model), snap_model_nrules(l->model),
		           snap_model_nusers(l->model), l->c->cfg.cap_accounts, l->c->cfg.cap_ip_rules,
		           l->c->cfg.cap_sip_users, strerror(saved));
	l->capacity_logged = saved == ENOSPC;
	if (l->pub_kind == PUB_FULL)
		atomic_fetch_add(&l->sh->load_failures, 1);
	publish_done(l);
}

static void save_schedule(loader_t *l);

/*
 * The overlay (or the tombstone list) is more than half full: compact
 * while nothing changes, so that the change that would overflow it does
 * not wait for a base to be built (about a second at a million rules).
 * Any change since pushes this back: its own publish checks again.
 */
static void compact_schedule(loader_t *l, const snap_publish_stats_t *st)
{
	uint32_t cap = snap_overlay_cap(l->c->cfg.cap_ip_rules);

	if (st->kind == SNAP_PUBLISH_DELTA && (st->overlay_entries > cap / 2 || st->tombstones > cap / 2))
		arm_timer(l->compact_ev, LOADER_IDLE_COMPACT_MS);
	else
		event_del(l->compact_ev);
}

static void compact_cb(evutil_socket_t fd, short what, void *arg)
{
	loader_t *l = arg;
	snap_publish_stats_t st;
	int rc;

	(void)fd;
	(void)what;
	/* Only a model that equals the published one, with nothing on its way. */
	if (l->dirty || l->applying || l->mixed || l->state == LOADER_SYNCING || !pending_empty(l->collect) ||
	    event_pending(l->coalesce_ev, EV_TIMEOUT, NULL))
		return;
	rc = snap_model_publish_base(l->model, l->shm, tg_wall_ms(), &st);
	if (rc == 1) {
		arm_timer(l->compact_ev, LOADER_PUBLISH_MAX_MS); /* a worker holds an arena: soon */
		return;
	}
	if (rc < 0) {
		log_warn("idle_compaction_failed", "accounts=%u ip_rules=%u", snap_model_naccounts(l->model),
		         snap_model_nrules(l->model));
		return;
	}
	log_notice("snapshot_published",
	           "kind=%s generation=%llu base_generation=%llu compaction=%d reason=%s accounts=%u "
	           "ip_rules=%u sip_users=%u changes=%d invalid=%d latency_us=%d load_ms=%d waited_ms=%d "
	           "build_us=%llu head_bytes=%zu base_bytes=%zu overlay_rules=%u tombstones=%u",
	           "idle", (unsigned long long)st.generation, (unsigned long long)st.base_generation, 1,
	           "idle_compaction", st.accounts, st.rules, snap_model_nusers(l->model), 0, 0, 0, 0, 0,
	           (unsigned long long)st.build_us, st.head_bytes, st.base_bytes, st.overlay_rules,
	           st.tombstones);
}

static void publish_try(loader_t *l)
{
	uint64_t built_ms = tg_wall_ms();
	int from_file = l->pub_kind == PUB_FILE;
	snap_publish_stats_t st;
	int rc;

	if (!l->dirty || l->applying || l->mixed)
		return;
	rc = snap_model_publish(l->model, l->shm, built_ms, &st);
	if (rc == 1) {
		publish_wait(l);
		return;
	}
	if (rc < 0) {
		publish_failed(l);
		return;
	}
	publish_stats(l, &st, built_ms);
	publish_done(l);
	compact_schedule(l, &st);
	l->capacity_logged = 0;
	l->dirty = 0;
	l->pub_kind = PUB_NONE;
	l->dirty_since_us = 0;
	l->pub_changes = 0;
	l->pub_invalid = 0;
	/* The file's own data goes back to it only once something changed it. */
	l->save_dirty = l->save_dirty || !from_file;
	save_schedule(l);
}

static void publish_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	publish_try(arg);
}

/* ------------------------------------------------------------------ */
/* host names                                                         */

/*
 * New addresses for a host-name rule: into the model, published after the
 * usual quiet period. The resolver keeps what matching needs; the rule's
 * limits, which the same row put into the model, stay as they are there.
 */
static void dns_changed(void *arg, const resolve_rule_t *r)
{
	loader_t *l = arg;
	const char *err = NULL;
	snap_rule_info_t ri, held;

	memset(&ri, 0, sizeof(ri));
	if (snap_model_rule_get(l->model, r->id, &held) == 0) {
		ri.max_channels = held.max_channels;
		ri.max_cps = held.max_cps;
		ri.cps_burst = held.cps_burst;
	}
	ri.id = r->id;
	ri.account_id = r->account_id;
	ri.ranges = r->ranges;
	ri.nranges = r->nranges;
	ri.port = r->port;
	ri.tech_prefix = r->tech_prefix;
	ri.active = r->active;
	ri.direction = r->direction;
	if (snap_model_rule_put2(l->model, &ri, &err) < 0) {
		log_debug("dns_not_applied", "id=%lld reason=%s", (long long)r->id, err);
		return;
	}
	mark_dirty(l, PUB_DNS, now_us());
	if (!event_pending(l->coalesce_ev, EV_TIMEOUT, NULL))
		arm_timer(l->coalesce_ev, l->c->cfg.coalesce_ms);
}

static void dns_failed(void *arg)
{
	loader_t *l = arg;

	atomic_fetch_add(&l->sh->dns_failures, 1);
}

/* ------------------------------------------------------------------ */
/* the snapshot file                                                  */

/*
 * An empty model and resolver. Empty is not a snapshot anyone may see (it
 * would refuse every customer), so it stays mixed until something fills it.
 */
static int model_reset(loader_t *l)
{
	snap_model_t *m =
	        snap_model_new(l->c->cfg.cap_accounts, l->c->cfg.cap_ip_rules, l->c->cfg.cap_sip_users);

	if (m == NULL)
		return -1;
	snap_model_free(l->model);
	l->model = m;
	resolve_mark_begin(l->resolve);
	resolve_sweep(l->resolve);
	l->mixed = 1;
	l->dirty = 0;
	l->pub_kind = PUB_NONE;
	l->dirty_since_us = 0;
	return 0;
}

static void file_loaded(loader_t *l, const snapfile_info_t *info)
{
	uint64_t now = tg_wall_ms();

	log_notice("snapshot_loaded_from_file",
	           "path=%s accounts=%llu ip_rules=%llu sip_users=%llu age_s=%llu", l->c->cfg.snapshot_file,
	           (unsigned long long)info->naccounts, (unsigned long long)info->nrules,
	           (unsigned long long)info->nusers,
	           (unsigned long long)(now > info->built_ms ? (now - info->built_ms) / 1000 : 0));
	mark_dirty(l, PUB_FILE, now_us());
	l->data_ms = info->built_ms;
	l->pub_changes = info->naccounts + info->nrules + info->nusers;
	atomic_store(&l->sh->hostname_rules, resolve_count(l->resolve));
	publish_try(l);
}

/*
 * The database is out of reach before anything was loaded from it: serve
 * the snapshot file, once. Not when workers already hold a snapshot (a
 * respawned loader): that is at least as new as any file we wrote.
 */
static void file_fallback(loader_t *l)
{
	const char *path = l->c->cfg.snapshot_file;
	char reason[LOADER_REASON_MAX];
	snapfile_info_t info;

	if (l->file_tried || l->synced || path[0] == '\0')
		return;
	l->file_tried = 1;
	if (atomic_load(&l->shm->snapctl->generation) != 0) {
		log_info("snapshot_file_skipped", "path=%s reason=%s", path,
		         "workers hold a snapshot already");
		return;
	}
	if (model_reset(l) < 0) {
		log_errorx("snapshot_file_rejected", "path=%s reason=%s", path, "out of memory");
		return;
	}
	if (loader_file_load(path, l->model, l->resolve, l->c->cfg.cap_accounts, l->c->cfg.cap_ip_rules,
	                     l->c->cfg.cap_sip_users, &info, reason, sizeof(reason)) == 0) {
		l->mixed = 0;
		file_loaded(l, &info);
		return;
	}
	if (errno == ENOENT)
		log_notice("snapshot_file_absent", "path=%s", path);
	else
		log_errorx("snapshot_file_rejected", "path=%s reason=%s", path, reason);
	/* What the file put in before it failed goes; a failed reset keeps a model that stays mixed. */
	model_reset(l);
}

static void save_log(loader_t *l, int status, uint64_t ms)
{
	const char *path = l->c->cfg.snapshot_file;
	struct stat st;

	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		atomic_fetch_add(&l->sh->snapshot_saves, 1);
		log_info("snapshot_saved",
		         "path=%s accounts=%u ip_rules=%u sip_users=%u bytes=%lld ms=%llu fork_us=%llu", path,
		         l->save_accounts, l->save_rules, l->save_users,
		         stat(path, &st) == 0 ? (long long)st.st_size : -1LL, (unsigned long long)ms,
		         (unsigned long long)l->save_fork_us);
		return;
	}
	atomic_fetch_add(&l->sh->snapshot_save_failures, 1);
	if (WIFEXITED(status))
		log_warnx("snapshot_save_failed", "path=%s reason=%s", path, strerror(WEXITSTATUS(status)));
	else
		log_warnx("snapshot_save_failed", "path=%s reason=%s signal=%d", path, "killed",
		          WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

/* In the forked child: write, and say how it went in the exit status (an errno). */
static void save_child(loader_t *l, pid_t loader)
{
	int rc;

	/*
	 * Dies with the loader, so a respawned one never races a leftover
	 * writer. The loader's libevent handlers write to a socket the loader
	 * still reads: a signal here must not look like one there.
	 */
	signal(SIGTERM, SIG_DFL);
	signal(SIGHUP, SIG_DFL);
	signal(SIGUSR1, SIG_DFL);
	signal(SIGCHLD, SIG_DFL);
	prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
	if (getppid() != loader)
		_exit(ESRCH);
	rc = loader_file_save(l->c->cfg.snapshot_file, l->model, l->resolve, l->data_ms, NULL);
	_exit(rc == 0 ? 0 : (errno > 0 && errno < 256 ? errno : EIO));
}

static void save_start(loader_t *l)
{
	pid_t loader = getpid(), pid;
	uint64_t t0 = now_us();

	l->save_started_ms = tg_now_ms();
	l->save_accounts = snap_model_naccounts(l->model);
	l->save_rules = snap_model_nrules(l->model);
	l->save_users = snap_model_nusers(l->model);
	pid = fork();
	if (pid < 0) {
		log_warn("snapshot_save_failed", "path=%s call=%s", l->c->cfg.snapshot_file, "fork()");
		arm_timer(l->save_ev, l->c->cfg.save_interval_ms);
		return;
	}
	if (pid == 0)
		save_child(l, loader);
	l->save_fork_us = now_us() - t0;
	l->save_pid = pid;
	l->save_dirty = 0;
}

/*
 * After a publish: write now, or when save_interval_ms has passed since
 * the last write began. Only a published, whole model is written.
 */
static void save_schedule(loader_t *l)
{
	uint64_t now = tg_now_ms(), next = l->save_started_ms + l->c->cfg.save_interval_ms;

	if (!l->save_dirty || l->save_pid > 0 || l->c->cfg.snapshot_file[0] == '\0')
		return;
	if (l->applying || l->mixed || l->dirty || (l->save_started_ms != 0 && now < next)) {
		if (!event_pending(l->save_ev, EV_TIMEOUT, NULL))
			arm_timer(l->save_ev, l->save_started_ms != 0 && now < next
			                              ? (uint32_t)(next - now)
			                              : l->c->cfg.save_interval_ms);
		return;
	}
	save_start(l);
}

static void save_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	save_schedule(arg);
}

static void child_cb(evutil_socket_t sig, short what, void *arg)
{
	loader_t *l = arg;
	int status;
	pid_t pid;

	(void)sig;
	(void)what;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid != l->save_pid)
			continue;
		l->save_pid = 0;
		save_log(l, status, tg_now_ms() - l->save_started_ms);
	}
	save_schedule(l);
}

/* SIGTERM: the write in progress ends, then what was published since is written too. */
static void save_at_exit(loader_t *l)
{
	uint64_t t0 = tg_now_ms();
	int status;

	if (l->save_pid > 0 && waitpid(l->save_pid, &status, 0) == l->save_pid)
		save_log(l, status, tg_now_ms() - l->save_started_ms);
	l->save_pid = 0;
	if (!l->save_dirty || l->applying || l->mixed || l->c->cfg.snapshot_file[0] == '\0')
		return;
	l->save_accounts = snap_model_naccounts(l->model);
	l->save_rules = snap_model_nrules(l->model);
	l->save_users = snap_model_nusers(l->model);
	l->save_fork_us = 0;
	if (loader_file_save(l->c->cfg.snapshot_file, l->model, l->resolve, l->data_ms, NULL) == 0)
		status = 0;
	else
		status = (errno > 0 && errno < 256 ? errno : EIO) << 8;
	save_log(l, status, tg_now_ms() - t0);
}

/* ------------------------------------------------------------------ */
/* signals                                                            */

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
	loader_t *l = arg;

	(void)sig;
	(void)what;
	save_at_exit(l);
	event_base_loopbreak(l->base);
}

static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
	loader_t *l = arg;

	(void)sig;
	(void)what;
	proc_log_reopen(l->c);
}

/* A new conninfo: drop the old connection, whatever it was doing, and start over now. */
static void db_switch(loader_t *l)
{
	conn_close(l);
	atomic_store(&l->sh->db_connected, 0);
	/* Not a failure: the load on the new connection answers for it. */
	sync_abandon(l, 0);
	log_notice("db_reconnecting", "reason=%s", "database changed");
	l->backoff_ms = retry_min_ms(l);
	db_connect(l);
}

/*
 * Resync on the new configuration. CONNECTING and CHECKING need nothing:
 * the load that follows starts after this signal. SYNCING finishes the
 * current sync, then enter_idle() sees want_gen and loads again.
 */
static void on_reload(evutil_socket_t sig, short what, void *arg)
{
	loader_t *l = arg;
	char old_db[TG_CONNINFO_MAX];

	(void)sig;
	(void)what;
	memcpy(old_db, l->c->cfg.database, sizeof(old_db));
	if (shm_config_read(l->shm, &l->c->cfg_gen, &l->c->cfg))
		tg_log_set_level(l->c->cfg.log_level);
	atomic_store(&l->c->slot->config_gen, l->c->cfg_gen);
	resolve_configure(l->resolve, l->c->cfg.hosts_file, l->c->cfg.dns_refresh_s);
	if (l->backoff_ms < retry_min_ms(l) || l->backoff_ms > retry_max_ms(l))
		l->backoff_ms = retry_min_ms(l);
	l->want_gen = l->c->cfg_gen;
	if (l->state != LOADER_DISCONNECTED && strcmp(old_db, l->c->cfg.database) != 0)
		db_switch(l);
	else if (l->state == LOADER_DISCONNECTED)
		db_connect(l); /* try now rather than at the end of the back-off */
	else if (l->state == LOADER_IDLE)
		check_start(l);
}

/* ------------------------------------------------------------------ */
/* entry                                                              */

static int add_signal(loader_t *l, int sig, event_callback_fn cb)
{
	struct event *ev = evsignal_new(l->base, sig, cb, l);

	return ev != NULL && event_add(ev, NULL) == 0 ? 0 : -1;
}

static int loader_alloc(loader_t *l)
{
	resolve_hooks_t hooks = {dns_changed, dns_failed, l};

	l->io = event_new(l->base, -1, 0, io_cb, l);
	l->retry = evtimer_new(l->base, retry_cb, l);
	l->timeout = evtimer_new(l->base, timeout_cb, l);
	l->publish_ev = evtimer_new(l->base, publish_cb, l);
	l->compact_ev = evtimer_new(l->base, compact_cb, l);
	l->coalesce_ev = evtimer_new(l->base, coalesce_cb, l);
	l->save_ev = evtimer_new(l->base, save_cb, l);
	l->model = snap_model_new(l->c->cfg.cap_accounts, l->c->cfg.cap_ip_rules, l->c->cfg.cap_sip_users);
	l->resolve = resolve_new(l->base, &hooks);
	l->collect = pending_new(LOADER_DELTA_MAX);
	l->batch = pending_new(LOADER_DELTA_MAX);
	l->refused = pending_new(LOADER_REFUSED_MAX);
	return l->io != NULL && l->retry != NULL && l->timeout != NULL && l->publish_ev != NULL &&
	                       l->compact_ev != NULL && l->coalesce_ev != NULL && l->save_ev != NULL &&
	                       l->model != NULL && l->resolve != NULL && l->collect != NULL &&
	                       l->batch != NULL && l->refused != NULL
	               ? 0
	               : -1;
}

static int loader_setup(loader_t *l)
{
	if (loader_alloc(l) < 0)
		return -1;
	resolve_configure(l->resolve, l->c->cfg.hosts_file, l->c->cfg.dns_refresh_s);
	/*
	 * SIGINT stays ignored as the master set it: a terminal's Ctrl-C reaches
	 * the whole group, and the master turns it into an orderly SIGTERM.
	 */
	if (add_signal(l, SIGTERM, on_stop) < 0 || add_signal(l, SIGHUP, on_reload) < 0 ||
	    add_signal(l, SIGUSR1, on_reopen) < 0 || add_signal(l, SIGCHLD, child_cb) < 0)
		return -1;
	proc_watch_parent(l->base, l->c);
	return 0;
}

static void loader_cleanup(loader_t *l)
{
	conn_close(l);
	atomic_store(&l->sh->db_connected, 0);
	params_free(l);
	resolve_free(l->resolve);
	snap_model_free(l->model);
	pending_free(l->collect);
	pending_free(l->batch);
	pending_free(l->refused);
	/* event_base_free() unhooks the signal events; the process exits right after. */
	event_free(l->io);
	event_free(l->retry);
	event_free(l->timeout);
	event_free(l->publish_ev);
	event_free(l->compact_ev);
	event_free(l->coalesce_ev);
	event_free(l->save_ev);
	event_base_free(l->base);
}

int loader_main(tg_child_t *c)
{
	static loader_t l;
	int rc;

	l.c = c;
	l.shm = c->shm;
	l.sh = c->shm->loader;
	l.rng = (tg_now_ns() ^ ((uint64_t)getpid() << 32)) | 1;
	l.backoff_ms = retry_min_ms(&l);
	l.schema_logged = LLONG_MIN;
	/* The first load answers for the configuration we started with. */
	l.want_gen = c->cfg_gen;
	l.base = event_base_new();
	if (l.base == NULL || loader_setup(&l) < 0) {
		log_errorx("loader_setup_failed", "call=%s", "libevent");
		return 1;
	}
	if (c->cfg.snapshot_file[0] != '\0')
		snapfile_clean_tmp(c->cfg.snapshot_file);
	db_connect(&l);
	proc_signals_ready();
	atomic_store(&c->slot->serving, 1);
	rc = event_base_dispatch(l.base);
	loader_cleanup(&l);
	log_info("loader_stopped", "pid=%d", (int)getpid());
	return rc < 0 ? 1 : 0;
}
