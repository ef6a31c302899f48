/*
 * The loader: the only process that talks to PostgreSQL and the only writer
 * of the provisioning snapshot. It reads tollgate.accounts and
 * tollgate.ip_rules in one consistent read-only transaction, builds the next
 * snapshot in its own heap, and publishes it into the idle arena once no
 * worker still reads that arena. It owns shm->loader (status for metrics)
 * and the resync_done field of its own slot. It never touches SIP, the
 * workers' slots or counters, nor the configuration in shm (it only reads
 * its copy on SIGHUP).
 *
 * libpq runs asynchronously inside the libevent loop, so a slow or dead
 * database never keeps the loader from answering signals; workers serve the
 * last published snapshot whatever happens here. The connection is a small
 * state machine:
 *
 *   DISCONNECTED --timer--> CONNECTING --> CHECKING --> LOADING --> IDLE
 *        ^                      |             |            |          |
 *        +---- failure, lost ---+-------------+------------+----------+
 *
 * CHECKING reads the schema version; an unknown one parks the connection
 * in IDLE and re-checks slowly. IDLE keeps the socket watched, so a lost
 * connection is noticed at once (and so LISTEN can be added there).
 *
 * Resync acknowledgement: the master waits for resync_done to reach the
 * configuration generation it published. want_gen holds the generation of
 * a resync asked for but not started; a load takes it into load_gen when it
 * begins (a SIGHUP during a load asks for another load, since the running
 * one may predate the change). Every outcome - published, failed, database
 * unreachable - stores the generation it was carrying.
 */
#include <event2/event.h>
#include <libpq-fe.h>
#include <limits.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/addr.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "master/proc.h"
#include "shm/shm.h"
#include "shm/snapshot.h"

/* The tollgate.schema_version this binary reads; bump with sql/install.sql. */
#define LOADER_SCHEMA_VERSION 1

/* PQconnectPoll() honours no connect_timeout of its own. */
#define LOADER_CONNECT_TIMEOUT_MS 10000
/* Publish retries while a worker still reads the arena we need. */
#define LOADER_PUBLISH_FIRST_MS 1
#define LOADER_PUBLISH_MAX_MS   50
#define LOADER_PUBLISH_WARN_MS  1000
/* rule_invalid lines per load; the invalid count covers the rest. */
#define LOADER_INVALID_LOG_MAX 100
#define LOADER_REASON_MAX      512

enum loader_state {
	LOADER_DISCONNECTED, /* no connection; retry timer armed */
	LOADER_CONNECTING,   /* PQconnectPoll() in progress; timeout armed */
	LOADER_CHECKING,     /* schema_version query in flight */
	LOADER_LOADING,      /* full-load transaction in flight; step says where */
	LOADER_IDLE,         /* connected, nothing in flight */
};

enum load_step {
	LOAD_BEGIN,
	LOAD_ACCOUNTS,
	LOAD_RULES,
	LOAD_COMMIT,
	LOAD_ROLLBACK,
};

static const char *const load_sql[] = {
        [LOAD_BEGIN] = "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        [LOAD_ACCOUNTS] = "SELECT id, name, status, max_channels, max_cps FROM tollgate.accounts",
        [LOAD_RULES] = "SELECT id, account_id, address, port, tech_prefix, status, direction"
                       " FROM tollgate.ip_rules",
        [LOAD_COMMIT] = "COMMIT",
        [LOAD_ROLLBACK] = "ROLLBACK",
};

/* Why a load stopped taking rows; the rest are only counted. */
enum load_over {
	OVER_NONE,
	OVER_ACCOUNTS, /* cap_accounts reached */
	OVER_RULES,    /* cap_ip_rules reached */
	OVER_MEMORY,   /* the builder ran out of heap */
};

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
	enum load_step step;
	int qfailed;
	char qerr[LOADER_REASON_MAX];
	char qstate[6];  /* SQLSTATE */
	size_t err_seen; /* see conn_error() */
	int schema_rows;
	long long schema_found;
	long long schema_logged; /* last schema_unknown finding logged, to log changes only */

	/* the load in flight: build != NULL until its outcome is reported */
	snap_builder_t *build;
	uint64_t load_gen;
	uint64_t load_start_ms;
	uint64_t invalid;
	uint64_t rows_accounts, rows_rules; /* seen, valid or not */
	enum load_over over;
	int retry_load; /* after the ROLLBACK in flight: load again later */

	/* built, waiting for a free arena */
	snap_builder_t *pending;
	uint64_t pending_gen, pending_invalid, pending_start_ms;
	struct event *publish_ev;
	uint64_t wait_since_ms; /* 0: not waiting */
	uint32_t wait_ms;
	int wait_warned;

	uint64_t want_gen; /* a resync asked for and not started yet; 0 = none */
} loader_t;

static void io_cb(evutil_socket_t fd, short what, void *arg);
static void check_start(loader_t *l);
static void publish_try(loader_t *l);

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

static void arm_timer(struct event *ev, uint32_t ms)
{
	struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (suseconds_t)(ms % 1000) * 1000};

	event_del(ev);
	event_add(ev, &tv);
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

/* The load in flight did not finish; its outcome is reported here. */
static void load_end_failed(loader_t *l)
{
	snap_builder_free(l->build);
	l->build = NULL;
	atomic_fetch_add(&l->sh->load_failures, 1);
	ack(l, l->load_gen);
	l->load_gen = 0;
}

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
	ms = schedule_reconnect(l);
	log_warnx("db_disconnected", "reason=%s retry_ms=%u", why, ms);
	if (l->build != NULL) {
		log_errorx("load_failed", "reason=%s", "connection lost");
		load_end_failed(l);
	}
	ack(l, take_want(l));
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
static int send_query(loader_t *l, const char *sql, int single_row)
{
	l->qfailed = 0;
	l->qerr[0] = '\0';
	l->qstate[0] = '\0';
	l->err_seen = 0; /* libpq starts a new error message with each query */
	if (!PQsendQuery(l->conn, sql)) {
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
	if (retry)
		arm_timer(l->retry, retry_max_ms(l));
	/* A SIGHUP arrived during the load that just ended: load again. */
	if (l->want_gen != 0)
		check_start(l);
}

/* ------------------------------------------------------------------ */
/* schema check                                                       */

static void check_start(loader_t *l)
{
	event_del(l->retry);
	l->state = LOADER_CHECKING;
	l->schema_rows = 0;
	l->schema_found = -1;
	send_query(l, "SELECT version FROM tollgate.schema_version", 0);
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
}

static void load_start(loader_t *l);

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
/* full load                                                          */

static void load_send(loader_t *l, enum load_step step)
{
	l->step = step;
	send_query(l, load_sql[step], step == LOAD_ACCOUNTS || step == LOAD_RULES);
}

static void load_start(loader_t *l)
{
	l->load_gen = take_want(l);
	l->build = snap_builder_new();
	if (l->build == NULL) {
		log_errorx("load_failed", "reason=%s", "out of memory");
		atomic_fetch_add(&l->sh->load_failures, 1);
		ack(l, l->load_gen);
		l->load_gen = 0;
		enter_idle(l, 1);
		return;
	}
	l->load_start_ms = tg_now_ms();
	l->invalid = 0;
	l->rows_accounts = 0;
	l->rows_rules = 0;
	l->over = OVER_NONE;
	l->state = LOADER_LOADING;
	load_send(l, LOAD_BEGIN);
}

/* A builder short of heap fails the load: a snapshot missing rows would refuse real customers. */
static int out_of_memory(loader_t *l, const char *err)
{
	if (err == NULL || strcmp(err, "out of memory") != 0)
		return 0;
	l->over = OVER_MEMORY;
	return 1;
}

static long long field_ll(const PGresult *res, int row, int col)
{
	return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

static void account_row(loader_t *l, const PGresult *res, int row)
{
	const char *err = NULL;
	long long id = field_ll(res, row, 0);
	const char *name = PQgetvalue(res, row, 1);
	int active = !strcmp(PQgetvalue(res, row, 2), "active");

	l->rows_accounts++;
	if (l->over != OVER_NONE)
		return;
	if (snap_builder_naccounts(l->build) >= l->c->cfg.cap_accounts) {
		l->over = OVER_ACCOUNTS;
		return;
	}
	if (snap_builder_account(l->build, id, name, active, (uint32_t)field_ll(res, row, 3),
	                         (uint32_t)field_ll(res, row, 4), &err) == 0)
		return;
	if (out_of_memory(l, err))
		return;
	/* Its rules will be refused as "unknown account" and counted there. */
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

/*
 * The schema's checks and trigger refuse most bad rows already; what is
 * left (a parser disagreement, an account the builder refused) is skipped
 * here rather than failing the whole load.
 */
static void rule_row(loader_t *l, const PGresult *res, int row)
{
	long long id = field_ll(res, row, 0);
	const char *address = PQgetvalue(res, row, 2);
	long long port = PQgetisnull(res, row, 3) ? 0 : field_ll(res, row, 3);
	const char *prefix = PQgetisnull(res, row, 4) ? "" : PQgetvalue(res, row, 4);
	int active = !strcmp(PQgetvalue(res, row, 5), "active");
	unsigned dir = direction_parse(PQgetvalue(res, row, 6));
	const char *err = NULL;
	tg_range_t r;

	l->rows_rules++;
	if (l->over != OVER_NONE)
		return;
	if (dir == 0)
		err = "unknown direction";
	else if (port < 0 || port > 65535)
		err = "port out of range";
	else if (tg_range_parse(address, &r, &err) == 0) {
		if (snap_builder_nrules(l->build) >= l->c->cfg.cap_ip_rules) {
			l->over = OVER_RULES;
			return;
		}
		if (snap_builder_rule(l->build, id, field_ll(res, row, 1), &r, (uint16_t)port, prefix, active,
		                      dir, &err) == 0 ||
		    out_of_memory(l, err))
			return;
	}
	rule_invalid(l, id, address, err != NULL ? err : "refused");
}

static void on_row(loader_t *l, const PGresult *res, int row)
{
	if (l->qfailed)
		return;
	if (l->state == LOADER_CHECKING)
		check_row(l, res, row);
	else if (l->state == LOADER_LOADING && l->step == LOAD_ACCOUNTS)
		account_row(l, res, row);
	else if (l->state == LOADER_LOADING && l->step == LOAD_RULES)
		rule_row(l, res, row);
}

/* Ends the transaction if one is open; then idle, and with retry load again later. */
static void load_rollback(loader_t *l, int retry)
{
	PGTransactionStatusType ts = PQtransactionStatus(l->conn);

	l->retry_load = retry;
	if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR)
		load_send(l, LOAD_ROLLBACK);
	else
		enter_idle(l, retry);
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

	if (l->over == OVER_MEMORY)
		log_errorx("load_failed", "reason=%s", "out of memory");
	else if (l->over == OVER_ACCOUNTS)
		log_errorx("capacity_exceeded", "table=%s rows=%llu capacity=%u", "accounts",
		           (unsigned long long)l->rows_accounts, l->c->cfg.cap_accounts);
	else
		log_errorx("capacity_exceeded", "table=%s rows=%llu capacity=%u", "ip_rules",
		           (unsigned long long)l->rows_rules, l->c->cfg.cap_ip_rules);
	load_end_failed(l);
	load_rollback(l, retry);
}

static void publish_take(loader_t *l);

static void load_step_done(loader_t *l)
{
	if (l->qfailed && l->step <= LOAD_RULES) {
		log_errorx("load_failed", "reason=%s", l->qerr);
		load_end_failed(l);
		load_rollback(l, 1);
		return;
	}
	switch (l->step) {
	case LOAD_BEGIN:
		load_send(l, LOAD_ACCOUNTS);
		return;
	case LOAD_ACCOUNTS:
		if (l->over != OVER_NONE)
			load_over_capacity(l);
		else
			load_send(l, LOAD_RULES);
		return;
	case LOAD_RULES:
		if (l->over != OVER_NONE) {
			load_over_capacity(l);
			return;
		}
		/* Every row is in: end the transaction first, then build while the server rests. */
		publish_take(l);
		load_send(l, LOAD_COMMIT);
		publish_try(l);
		return;
	case LOAD_COMMIT:
	case LOAD_ROLLBACK:
		/* A read-only transaction: nothing to lose if its end failed. */
		if (l->qfailed)
			log_warnx("db_query_failed", "query=%s reason=%s", load_sql[l->step], l->qerr);
		enter_idle(l, l->step == LOAD_ROLLBACK && l->retry_load);
		return;
	}
}

/* ------------------------------------------------------------------ */
/* results                                                            */

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
	else if (l->state == LOADER_LOADING)
		load_step_done(l);
}

/* Take every complete result; query_done() may send the next query or change state. */
static void drain(loader_t *l)
{
	while (l->conn != NULL && (l->state == LOADER_CHECKING || l->state == LOADER_LOADING) &&
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
	/* Idle: parse what came anyway (notices, parameter changes) so it does not pile up. */
	if (l->conn != NULL && l->state == LOADER_IDLE)
		PQisBusy(l->conn);
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
	if (!(what & EV_READ))
		return;
	/* In IDLE this is how a server that went away is noticed. */
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
}

/* ------------------------------------------------------------------ */
/* publishing                                                         */

/* The finished build waits to be published; a newer one replaces an older one still waiting. */
static void publish_take(loader_t *l)
{
	if (l->pending != NULL)
		snap_builder_free(l->pending);
	l->pending = l->build;
	l->pending_gen = l->load_gen > l->pending_gen ? l->load_gen : l->pending_gen;
	l->pending_invalid = l->invalid;
	l->pending_start_ms = l->load_start_ms;
	l->build = NULL;
	l->load_gen = 0;
}

static void publish_done(loader_t *l)
{
	snap_builder_free(l->pending);
	l->pending = NULL;
	ack(l, l->pending_gen);
	l->pending_gen = 0;
	l->wait_since_ms = 0;
	l->wait_warned = 0;
	event_del(l->publish_ev);
}

/*
 * A worker still reads the arena the next generation goes into. Never
 * wait on it: come back shortly, sooner at first since a worker holds a
 * snapshot for one batch of packets only.
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

static void publish_stats(loader_t *l, uint64_t gen, uint64_t built_ms, size_t bytes)
{
	uint32_t accounts = snap_builder_naccounts(l->pending);
	uint32_t rules = snap_builder_nrules(l->pending);
	uint64_t now = tg_now_ms();

	atomic_store(&l->sh->accounts, accounts);
	atomic_store(&l->sh->ip_rules, rules);
	atomic_store(&l->sh->rules_invalid, l->pending_invalid);
	atomic_store(&l->sh->snapshot_ms, built_ms);
	atomic_store(&l->sh->have_snapshot, 1);
	atomic_fetch_add(&l->sh->loads, 1);
	/* load_ms counts from BEGIN to publish; waited_ms is the part spent waiting for a reader. */
	log_notice(
	        "snapshot_published",
	        "generation=%llu accounts=%u ip_rules=%u invalid=%llu load_ms=%llu waited_ms=%llu bytes=%zu",
	        (unsigned long long)gen, accounts, rules, (unsigned long long)l->pending_invalid,
	        (unsigned long long)(now - l->pending_start_ms),
	        (unsigned long long)(l->wait_since_ms != 0 ? now - l->wait_since_ms : 0), bytes);
}

static void publish_try(loader_t *l)
{
	uint64_t gen, built_ms = tg_wall_ms();
	void *arena;
	size_t used;

	if (l->pending == NULL)
		return;
	arena = snap_arena_for_next(l->shm, &gen);
	if (arena == NULL) {
		publish_wait(l);
		return;
	}
	used = snap_builder_write(l->pending, arena, l->shm->arena_size, gen, built_ms);
	if (used == 0) {
		log_errorx("capacity_exceeded", "table=%s bytes=%zu accounts=%u ip_rules=%u", "snapshot",
		           l->shm->arena_size, snap_builder_naccounts(l->pending),
		           snap_builder_nrules(l->pending));
		atomic_fetch_add(&l->sh->load_failures, 1);
	} else {
		snap_publish(l->shm, gen);
		publish_stats(l, gen, built_ms, used);
	}
	publish_done(l);
}

static void publish_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	publish_try(arg);
}

/* ------------------------------------------------------------------ */
/* signals                                                            */

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
	loader_t *l = arg;

	(void)sig;
	(void)what;
	event_base_loopbreak(l->base);
}

static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	(void)arg;
	if (tg_log_reopen() < 0)
		log_error("log_reopen_failed", "call=%s", "tg_log_reopen()");
}

/* A new conninfo: drop the old connection, whatever it was doing, and start over now. */
static void db_switch(loader_t *l)
{
	conn_close(l);
	atomic_store(&l->sh->db_connected, 0);
	if (l->build != NULL) {
		/* Not a failure: the load on the new connection answers for it. */
		if (l->load_gen > l->want_gen)
			l->want_gen = l->load_gen;
		snap_builder_free(l->build);
		l->build = NULL;
		l->load_gen = 0;
	}
	log_notice("db_reconnecting", "reason=%s", "database changed");
	l->backoff_ms = retry_min_ms(l);
	db_connect(l);
}

/*
 * Resync on the new configuration. CONNECTING and CHECKING need nothing:
 * the load that follows starts after this signal. LOADING finishes the
 * current load, then enter_idle() sees want_gen and loads again.
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

static int loader_setup(loader_t *l)
{
	l->io = event_new(l->base, -1, 0, io_cb, l);
	l->retry = evtimer_new(l->base, retry_cb, l);
	l->timeout = evtimer_new(l->base, timeout_cb, l);
	l->publish_ev = evtimer_new(l->base, publish_cb, l);
	if (l->io == NULL || l->retry == NULL || l->timeout == NULL || l->publish_ev == NULL)
		return -1;
	/*
	 * SIGINT stays ignored as the master set it: a terminal's Ctrl-C reaches
	 * the whole group, and the master turns it into an orderly SIGTERM.
	 */
	if (add_signal(l, SIGTERM, on_stop) < 0 || add_signal(l, SIGHUP, on_reload) < 0 ||
	    add_signal(l, SIGUSR1, on_reopen) < 0)
		return -1;
	proc_watch_parent(l->base, l->c);
	return 0;
}

static void loader_cleanup(loader_t *l)
{
	conn_close(l);
	atomic_store(&l->sh->db_connected, 0);
	snap_builder_free(l->build);
	snap_builder_free(l->pending);
	/* event_base_free() unhooks the signal events; the process exits right after. */
	event_free(l->io);
	event_free(l->retry);
	event_free(l->timeout);
	event_free(l->publish_ev);
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
	db_connect(&l);
	atomic_store(&c->slot->serving, 1);
	rc = event_base_dispatch(l.base);
	loader_cleanup(&l);
	log_info("loader_stopped", "pid=%d", (int)getpid());
	return rc < 0 ? 1 : 0;
}
