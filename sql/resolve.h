/*
 * Host names in ip_rules: the loader's resolver. It keeps each host-name
 * rule with its last good addresses, looks the names up with libevent's
 * evdns (A and AAAA, the hosts file first) without ever blocking the
 * loader's loop, and looks them up again every refresh period. A lookup
 * that fails keeps the last addresses; one whose answer differs tells the
 * loader, which puts the rule into its model again.
 */
#ifndef TG_RESOLVE_H
#define TG_RESOLVE_H

#include <stdint.h>

#include "lib/addr.h"
#include "shm/snapshot.h"

struct event_base;

/* A host-name rule as the database has it, and what it resolved to. */
typedef struct resolve_rule {
	int64_t id, account_id;
	uint16_t port;
	char tech_prefix[SNAP_PREFIX_MAX];
	int active;
	unsigned direction;
	char host[256];
	tg_range_t ranges[SNAP_MAX_RANGES]; /* sorted, one address each */
	unsigned nranges;                   /* 0 until the first good answer */
} resolve_rule_t;

typedef struct resolve_hooks {
	/*
	 * The rule's addresses changed: put it into the model again. Not
	 * called, while a full load runs, for rules that load has not put yet.
	 */
	void (*changed)(void *arg, const resolve_rule_t *r);
	/* A lookup failed (already logged as dns_failed); for the metrics. */
	void (*failed)(void *arg);
	void *arg;
} resolve_hooks_t;

typedef struct resolve resolve_t;

/* NULL when out of memory. evdns is set up at the first host name, not before. */
resolve_t *resolve_new(struct event_base *base, const resolve_hooks_t *hooks);
/* Cancels every lookup in flight. */
void resolve_free(resolve_t *r);
/* From the configuration, at start and on SIGHUP. */
void resolve_configure(resolve_t *r, const char *hosts_file, uint32_t refresh_s);

/*
 * The rule as read from the database or the snapshot file. Returns the
 * entry, whose ranges are what the model should get now: the last good
 * answer for this host (a rule whose host changed starts from last, or
 * from nothing), looked up at once if it has none yet. last/nlast: the
 * addresses to start from when the resolver does not know the rule
 * (a snapshot file's); NULL/0 otherwise. NULL when out of memory.
 */
const resolve_rule_t *resolve_put(resolve_t *r, const resolve_rule_t *rule, const tg_range_t *last,
                                  unsigned nlast);
void resolve_del(resolve_t *r, int64_t id);
const resolve_rule_t *resolve_get(const resolve_t *r, int64_t id);
uint32_t resolve_count(const resolve_t *r);

/* A full load: mark, put every host-name rule seen, sweep the others. */
void resolve_mark_begin(resolve_t *r);
void resolve_sweep(resolve_t *r);

#endif
