/*
 * The loader's resolver for host-name rules (see resolve.h). It owns the
 * evdns base and the table of host-name rules with their last good
 * addresses; it never touches the model or shared memory itself, but
 * tells the loader through its hooks.
 *
 * Nothing here blocks: lookups are evdns_getaddrinfo() requests answered
 * from the loader's event loop. A lookup is started from the tick (or
 * from a zero-delay "soon" event right after a rule arrives), never from
 * inside resolve_put(): evdns answers a hosts-file name before returning,
 * and the loader must not be called back while it is still putting that
 * very rule.
 *
 * A rule deleted while its lookup is in flight is unhooked from the table
 * and marked dead; evdns calls back exactly once, even for a cancelled
 * request, and the callback frees it.
 *
 * The tick walks the whole table once a second: host-name rules are
 * expected in the hundreds, not the millions.
 */
#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include "lib/clock.h"
#include "lib/log.h"
#include "sql/resolve.h"

#define RESOLVE_TICK_MS       1000
#define RESOLVE_INFLIGHT_MAX  64    /* lookups at once; the rest wait for a tick */
#define RESOLVE_RETRY_MAX_MS  30000 /* a failed lookup is retried at least this often */
#define RESOLVE_ANSWER_MAX    64    /* addresses read from one answer, before sorting */
#define RESOLVE_BUCKETS_FIRST 64

typedef struct entry {
	resolve_rule_t rule;
	struct entry *next; /* hash chain */
	struct resolve *owner;
	struct evdns_getaddrinfo_request *req;
	char asked[256]; /* the host the lookup in flight is for */
	uint64_t due_ms; /* next lookup, monotonic */
	uint64_t mark;   /* full-load mark last seen at */
	int busy;        /* a lookup is in flight */
	int dead;        /* out of the table; the callback frees it */
} entry_t;

struct resolve {
	struct event_base *base;
	struct evdns_base *dns; /* NULL until a host name needs it */
	resolve_hooks_t hooks;
	entry_t **buckets;
	uint32_t nbuckets; /* a power of two */
	uint32_t count;
	uint32_t inflight;
	uint64_t mark;
	struct event *tick; /* every RESOLVE_TICK_MS while there are rules */
	struct event *soon; /* zero delay: a rule needs its first lookup */
	uint32_t refresh_s;
	char hosts_file[PATH_MAX];
	struct stat hosts_st; /* as last loaded, to notice an edit */
	int hosts_stale;      /* load hosts_file again at the next tick */
};

static void tick_cb(evutil_socket_t fd, short what, void *arg);

/* ------------------------------------------------------------------ */
/* the table                                                          */

static uint32_t bucket_of(const resolve_t *r, int64_t id)
{
	return (uint32_t)(((uint64_t)id * 0x9e3779b97f4a7c15ULL) >> 32) & (r->nbuckets - 1);
}

static entry_t *find(const resolve_t *r, int64_t id)
{
	entry_t *e;

	for (e = r->buckets[bucket_of(r, id)]; e != NULL; e = e->next)
		if (e->rule.id == id)
			return e;
	return NULL;
}

/* Doubles the buckets; on failure the table stays as it was, only slower. */
static void grow(resolve_t *r)
{
	uint32_t n = r->nbuckets * 2, old = r->nbuckets;
	entry_t **b = calloc(n, sizeof(*b)), **prev = r->buckets;

	if (b == NULL)
		return;
	r->buckets = b;
	r->nbuckets = n;
	for (uint32_t i = 0; i < old; i++) {
		entry_t *e = prev[i], *next;

		for (; e != NULL; e = next) {
			uint32_t k = bucket_of(r, e->rule.id);

			next = e->next;
			e->next = b[k];
			b[k] = e;
		}
	}
	free(prev);
}

static void unlink_entry(resolve_t *r, entry_t *e)
{
	entry_t **p = &r->buckets[bucket_of(r, e->rule.id)];

	while (*p != e)
		p = &(*p)->next;
	*p = e->next;
	r->count--;
	if (r->count == 0)
		event_del(r->tick);
}

/* Out of the table now; freed now, or by its callback when a lookup is in flight. */
static void drop(resolve_t *r, entry_t *e)
{
	unlink_entry(r, e);
	if (!e->busy) {
		free(e);
		return;
	}
	e->dead = 1;
	evdns_getaddrinfo_cancel(e->req);
}

/* ------------------------------------------------------------------ */
/* evdns                                                              */

static int same_file(const struct stat *a, const struct stat *b)
{
	return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

/*
 * (Re)load the hosts file when it is new or was edited since the last
 * load; returns 1 when the answers may have changed. Names in the file are
 * answered before any nameserver is asked.
 */
static int hosts_refresh(resolve_t *r)
{
	struct stat st;

	memset(&st, 0, sizeof(st));
	if (r->hosts_file[0] != '\0' && stat(r->hosts_file, &st) < 0)
		memset(&st, 0, sizeof(st));
	if (!r->hosts_stale && same_file(&st, &r->hosts_st))
		return 0;
	evdns_base_clear_host_addresses(r->dns);
	if (r->hosts_file[0] != '\0' && evdns_base_load_hosts(r->dns, r->hosts_file) != 0)
		log_warnx("hosts_file_failed", "path=%s", r->hosts_file);
	r->hosts_st = st;
	r->hosts_stale = 0;
	return 1;
}

/*
 * Nameservers and options (timeout, attempts) from /etc/resolv.conf
 * (127.0.0.1 when it names none); hosts from the configured file rather
 * than the one resolv.conf implies; no search domains: a rule's name is
 * looked up as the operator wrote it, not as whatever a search list makes
 * of it.
 */
static int dns_ready(resolve_t *r)
{
	if (r->dns != NULL)
		return 0;
	r->dns = evdns_base_new(r->base, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (r->dns == NULL) {
		log_errorx("dns_setup_failed", "call=%s", "evdns_base_new()");
		return -1;
	}
	evdns_base_resolv_conf_parse(r->dns, DNS_OPTION_NAMESERVERS | DNS_OPTION_MISC, "/etc/resolv.conf");
	r->hosts_stale = 1;
	hosts_refresh(r);
	return 0;
}

static int range_cmp(const void *a, const void *b)
{
	return tg_ip_cmp(&((const tg_range_t *)a)->first, &((const tg_range_t *)b)->first);
}

/* The answer as sorted single-address ranges, duplicates dropped, at most SNAP_MAX_RANGES. */
static unsigned answer_ranges(const struct evutil_addrinfo *ai, tg_range_t *out)
{
	tg_range_t all[RESOLVE_ANSWER_MAX];
	unsigned n = 0, k = 0;

	for (; ai != NULL && n < RESOLVE_ANSWER_MAX; ai = ai->ai_next) {
		uint16_t port;

		if (tg_ip_from_sockaddr(ai->ai_addr, &all[n].first, &port) < 0)
			continue;
		all[n].last = all[n].first;
		all[n].family = ai->ai_addr->sa_family;
		n++;
	}
	qsort(all, n, sizeof(all[0]), range_cmp);
	for (unsigned i = 0; i < n && k < SNAP_MAX_RANGES; i++)
		if (k == 0 || tg_ip_cmp(&all[i].first, &out[k - 1].first) != 0)
			out[k++] = all[i];
	return k;
}

static int ranges_equal(const tg_range_t *a, unsigned na, const tg_range_t *b, unsigned nb)
{
	if (na != nb)
		return 0;
	for (unsigned i = 0; i < na; i++)
		if (tg_ip_cmp(&a[i].first, &b[i].first) != 0 || tg_ip_cmp(&a[i].last, &b[i].last) != 0)
			return 0;
	return 1;
}

static uint32_t retry_ms(const resolve_t *r)
{
	uint64_t ms = (uint64_t)r->refresh_s * 1000;

	return ms < RESOLVE_RETRY_MAX_MS ? (uint32_t)ms : RESOLVE_RETRY_MAX_MS;
}

static void lookup_failed(resolve_t *r, entry_t *e, const char *why)
{
	e->due_ms = tg_now_ms() + retry_ms(r);
	log_warnx("dns_failed", "id=%lld host=%s reason=%s addresses_kept=%u", (long long)e->rule.id,
	          e->rule.host, why, e->rule.nranges);
	if (r->hooks.failed != NULL)
		r->hooks.failed(r->hooks.arg);
}

static void lookup_answered(resolve_t *r, entry_t *e, struct evutil_addrinfo *ai)
{
	tg_range_t got[SNAP_MAX_RANGES];
	unsigned n = answer_ranges(ai, got);

	if (n == 0) {
		lookup_failed(r, e, "no address in the answer");
		return;
	}
	if (ranges_equal(got, n, e->rule.ranges, e->rule.nranges)) {
		log_debug("dns_unchanged", "id=%lld host=%s addresses=%u", (long long)e->rule.id,
		          e->rule.host, n);
		return;
	}
	memcpy(e->rule.ranges, got, sizeof(got[0]) * n);
	e->rule.nranges = n;
	log_info("dns_resolved", "id=%lld host=%s addresses=%u", (long long)e->rule.id, e->rule.host, n);
	/*
	 * A full load in progress that has not put this rule yet will put it
	 * with these addresses, or sweep it if the database no longer has it:
	 * putting it into the model now would keep a deleted rule alive.
	 */
	if (e->mark == r->mark)
		r->hooks.changed(r->hooks.arg, &e->rule);
}

static void answer_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
	entry_t *e = arg;
	resolve_t *r = e->owner;

	e->busy = 0;
	e->req = NULL;
	r->inflight--;
	if (e->dead || result == EVUTIL_EAI_CANCEL) {
		if (e->dead)
			free(e);
	} else if (strcmp(e->asked, e->rule.host) != 0) {
		e->due_ms = 0; /* the rule's host changed meanwhile: ask about the new one */
		event_active(r->soon, EV_TIMEOUT, 0);
	} else if (result != 0) {
		lookup_failed(r, e, evutil_gai_strerror(result));
	} else {
		e->due_ms = tg_now_ms() + (uint64_t)r->refresh_s * 1000;
		lookup_answered(r, e, ai);
	}
	if (ai != NULL)
		evutil_freeaddrinfo(ai);
}

static void lookup_start(resolve_t *r, entry_t *e)
{
	struct evutil_addrinfo hints;
	struct evdns_getaddrinfo_request *req;

	if (dns_ready(r) < 0) {
		lookup_failed(r, e, "resolver setup failed");
		return;
	}
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC; /* A and AAAA */
	hints.ai_socktype = SOCK_DGRAM;
	snprintf(e->asked, sizeof(e->asked), "%s", e->rule.host);
	e->busy = 1;
	r->inflight++;
	req = evdns_getaddrinfo(r->dns, e->asked, NULL, &hints, answer_cb, e);
	/* Answered already (a hosts-file name, or an immediate error): req is NULL and busy cleared. */
	if (e->busy)
		e->req = req;
}

static void lookups_due(resolve_t *r)
{
	uint64_t now = tg_now_ms();

	for (uint32_t i = 0; i < r->nbuckets && r->inflight < RESOLVE_INFLIGHT_MAX; i++)
		for (entry_t *e = r->buckets[i]; e != NULL && r->inflight < RESOLVE_INFLIGHT_MAX; e = e->next)
			if (!e->busy && e->due_ms <= now)
				lookup_start(r, e);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
	resolve_t *r = arg;

	(void)fd;
	(void)what;
	/* An edited hosts file may change any answer: ask again about every name. */
	if (r->dns != NULL && hosts_refresh(r))
		for (uint32_t i = 0; i < r->nbuckets; i++)
			for (entry_t *e = r->buckets[i]; e != NULL; e = e->next)
				e->due_ms = 0;
	lookups_due(r);
}

/* ------------------------------------------------------------------ */
/* public                                                             */

resolve_t *resolve_new(struct event_base *base, const resolve_hooks_t *hooks)
{
	resolve_t *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->base = base;
	r->hooks = *hooks;
	r->nbuckets = RESOLVE_BUCKETS_FIRST;
	r->buckets = calloc(r->nbuckets, sizeof(*r->buckets));
	r->tick = event_new(base, -1, EV_PERSIST, tick_cb, r);
	r->soon = event_new(base, -1, 0, tick_cb, r);
	r->refresh_s = 300;
	if (r->buckets == NULL || r->tick == NULL || r->soon == NULL) {
		resolve_free(r);
		return NULL;
	}
	return r;
}

/*
 * At exit only: the loop never runs again, so evdns is freed without
 * calling back, and every entry goes here, dead or alive.
 */
void resolve_free(resolve_t *r)
{
	if (r == NULL)
		return;
	if (r->dns != NULL)
		evdns_base_free(r->dns, 0);
	for (uint32_t i = 0; r->buckets != NULL && i < r->nbuckets; i++) {
		entry_t *e = r->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->next;
			free(e);
		}
	}
	if (r->tick != NULL)
		event_free(r->tick);
	if (r->soon != NULL)
		event_free(r->soon);
	free(r->buckets);
	free(r);
}

void resolve_configure(resolve_t *r, const char *hosts_file, uint32_t refresh_s)
{
	r->refresh_s = refresh_s > 0 ? refresh_s : 1;
	if (strcmp(r->hosts_file, hosts_file) == 0)
		return;
	snprintf(r->hosts_file, sizeof(r->hosts_file), "%s", hosts_file);
	/* Another file: the next tick loads it and asks again about every name. */
	r->hosts_stale = 1;
}

static entry_t *entry_new(resolve_t *r, const resolve_rule_t *rule, const tg_range_t *last, unsigned nlast)
{
	entry_t *e = calloc(1, sizeof(*e));
	uint32_t k;

	if (e == NULL)
		return NULL;
	e->rule = *rule;
	e->owner = r;
	e->rule.nranges = nlast <= SNAP_MAX_RANGES ? nlast : SNAP_MAX_RANGES;
	if (last != NULL)
		memcpy(e->rule.ranges, last, sizeof(last[0]) * e->rule.nranges);
	if (r->count >= r->nbuckets)
		grow(r);
	k = bucket_of(r, rule->id);
	e->next = r->buckets[k];
	r->buckets[k] = e;
	if (r->count++ == 0) {
		struct timeval tv = {RESOLVE_TICK_MS / 1000, (RESOLVE_TICK_MS % 1000) * 1000};

		event_add(r->tick, &tv);
	}
	return e;
}

const resolve_rule_t *resolve_put(resolve_t *r, const resolve_rule_t *rule, const tg_range_t *last,
                                  unsigned nlast)
{
	entry_t *e = find(r, rule->id);

	if (e == NULL) {
		if ((e = entry_new(r, rule, last, nlast)) == NULL)
			return NULL;
		e->due_ms = 0;
		event_active(r->soon, EV_TIMEOUT, 0);
	} else {
		tg_range_t keep[SNAP_MAX_RANGES];
		unsigned nkeep = e->rule.nranges;
		int moved = strcmp(e->rule.host, rule->host) != 0;

		memcpy(keep, e->rule.ranges, sizeof(keep));
		e->rule = *rule;
		/* The last good answer stays, unless it was about another name. */
		e->rule.nranges = moved ? 0 : nkeep;
		memcpy(e->rule.ranges, keep, sizeof(keep));
		if (moved) {
			e->due_ms = 0;
			event_active(r->soon, EV_TIMEOUT, 0);
		}
	}
	e->mark = r->mark;
	return &e->rule;
}

void resolve_del(resolve_t *r, int64_t id)
{
	entry_t *e = find(r, id);

	if (e != NULL)
		drop(r, e);
}

const resolve_rule_t *resolve_get(const resolve_t *r, int64_t id)
{
	const entry_t *e = find(r, id);

	return e != NULL ? &e->rule : NULL;
}

uint32_t resolve_count(const resolve_t *r)
{
	return r->count;
}

void resolve_mark_begin(resolve_t *r)
{
	r->mark++;
}

void resolve_sweep(resolve_t *r)
{
	for (uint32_t i = 0; i < r->nbuckets; i++) {
		entry_t *e = r->buckets[i], *next;

		for (; e != NULL; e = next) {
			next = e->next;
			if (e->mark != r->mark)
				drop(r, e);
		}
	}
}
