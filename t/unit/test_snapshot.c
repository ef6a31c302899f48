/*
 * shm/snapshot.c and shm/snapmodel.c: which rule a source gets (most
 * specific wins, the refusals a customer would see), whether a rule lives
 * in the base or the overlay, the arena limits, the checksums, the
 * loader's model (row changes, mark and sweep, slots), and the publish
 * protocol with its busy answers, all on a real shared-memory segment
 * made by shm_create(). A randomized run of puts and deletes checks every
 * published view against a linear scan and against a fresh single-level
 * build of the same rows.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "lib/addr.h"
#include "lib/clock.h"
#include "lib/log.h"
#include "master/config.h"
#include "shm/snapshot.h"
#include "shm/snapshot_int.h"
#include "t/unit/tap.h"

#define CAP_ACCOUNTS 1000
#define CAP_RULES    20000
#define CAP_USERS    64

static shm_t shm, shm2; /* shm2: where fresh single-level builds go, to compare with */
static snap_view_t view, view2;
static snap_publish_stats_t last; /* of the last publish_view() */

static tg_range_t range_of(const char *s)
{
	tg_range_t r;
	const char *err = NULL;

	memset(&r, 0, sizeof(r));
	if (tg_range_parse(s, &r, &err) < 0)
		printf("# test bug: range %s: %s\n", s, err);
	return r;
}

static tg_ip_t ip_of(const char *s)
{
	tg_ip_t ip = {0, 0};

	if (tg_ip_parse(s, &ip) < 0)
		printf("# test bug: ip %s\n", s);
	return ip;
}

static void account(snap_model_t *m, int64_t id, int active)
{
	char name[32];
	const char *err = NULL;

	snprintf(name, sizeof(name), "acct%lld", (long long)id);
	if (snap_model_account_put(m, id, name, active, 0, 0, &err) < 0)
		printf("# test bug: account %lld: %s\n", (long long)id, err);
}

static void rule(snap_model_t *m, int64_t id, int64_t acct, const char *range, uint16_t port,
                 const char *prefix, int active, unsigned dir)
{
	tg_range_t r = range_of(range);
	const char *err = NULL;

	if (snap_model_rule_put(m, id, acct, &r, 1, port, prefix, active, dir, &err) < 0)
		printf("# test bug: rule %lld: %s\n", (long long)id, err);
}

/* Simple rule: active, any port, no prefix, both directions. */
static void rule_plain(snap_model_t *m, int64_t id, int64_t acct, const char *range)
{
	rule(m, id, acct, range, 0, "", 1, SNAP_DIR_BOTH);
}

/* Publish (base: always a compaction) into sh and hold the new view as worker 0 there. */
static const snap_view_t *publish_in(shm_t *sh, snap_view_t *v, snap_model_t *m, int base)
{
	shm_proc_sh_t *w0 = &sh->procs[SHM_PROC_WORKER(0)];
	int rc;

	snap_release(w0, v);
	rc = base ? snap_model_publish_base(m, sh, 1234, &last) : snap_model_publish(m, sh, 1234, &last);
	if (rc != 0) {
		printf("# publish failed: rc %d errno %d\n", rc, errno);
		return NULL;
	}
	snap_acquire(sh, w0, v);
	return v;
}

static const snap_view_t *publish_view(snap_model_t *m, int base)
{
	return publish_in(&shm, &view, m, base);
}

static const char *result_name(int r)
{
	static const char *names[] = {"MATCH", "NO_ADDRESS", "NO_FIT", "ACCOUNT_INACTIVE"};

	return r >= 0 && r < 4 ? names[r] : "?";
}

/*
 * Looks up ip:port with user (NULL for none) in direction dir and checks
 * the result and, for MATCH and ACCOUNT_INACTIVE, the rule id.
 */
static void expect(const snap_view_t *v, const char *ip, uint16_t port, const char *user, unsigned dir,
                   int want, int64_t want_rule, const char *what)
{
	tg_ip_t a = ip_of(ip);
	snap_match_t m;

	if (v == NULL || v->head == NULL) {
		ok(0, "%s: no snapshot", what);
		return;
	}

	int got = snap_lookup(v, &a, port, user, user ? strlen(user) : 0, dir, &m);
	int64_t got_rule = m.rule ? m.rule->id : -1;
	int same = got == want && (want == SNAP_NO_ADDRESS || want == SNAP_NO_FIT || got_rule == want_rule);

	ok(same, "%s: %s:%u user %s -> %s rule %lld", what, ip, port, user ? user : "(none)",
	   result_name(want), (long long)want_rule);
	if (!same)
		printf("#   got %s rule %lld\n", result_name(got), (long long)got_rule);
}

/* ------------------------------------------------------------------ */
/* precedence and edges, in the base, in the overlay, and split        */

static const int64_t basic_ids[] = {1,  10, 11, 12, 20, 21, 22, 23, 30, 31, 32, 40, 41,
                                    50, 60, 61, 62, 63, 70, 71, 80, 81, 82, 90, 91, 92};

static void basic_accounts(snap_model_t *m)
{
	for (int i = 1; i <= 9; i++)
		account(m, i, 1);
	account(m, 100, 0); /* inactive */
}

static void basic_rules(snap_model_t *m)
{
	rule_plain(m, 1, 1, "1.2.3.4");
	rule_plain(m, 10, 1, "10.0.0.0/8");
	rule_plain(m, 11, 2, "10.1.0.0/16");
	rule_plain(m, 12, 3, "10.1.2.0/24");
	rule_plain(m, 20, 1, "11.1.1.1");
	rule(m, 21, 2, "11.1.1.1", 5070, "", 1, SNAP_DIR_BOTH);
	rule_plain(m, 22, 3, "11.2.2.2");
	rule(m, 23, 4, "11.2.2.0/24", 5080, "", 1, SNAP_DIR_BOTH);
	rule(m, 30, 1, "12.3.3.3", 0, "99", 1, SNAP_DIR_BOTH);
	rule(m, 31, 2, "12.3.3.3", 0, "9912", 1, SNAP_DIR_BOTH);
	rule_plain(m, 32, 3, "12.3.3.3");
	rule(m, 40, 4, "13.4.4.4", 0, "11", 1, SNAP_DIR_BOTH);
	rule(m, 41, 5, "13.4.4.4", 0, "22", 1, SNAP_DIR_BOTH);
	rule(m, 50, 1, "14.5.5.5", 5060, "", 1, SNAP_DIR_BOTH);
	rule_plain(m, 60, 1, "15.6.6.0/24");
	rule_plain(m, 61, 2, "15.6.6.6");
	rule(m, 62, 2, "15.6.6.7", 0, "", 0, SNAP_DIR_BOTH);
	rule(m, 63, 2, "15.6.7.7", 0, "", 0, SNAP_DIR_BOTH);
	rule_plain(m, 70, 100, "16.7.7.7");
	rule_plain(m, 71, 1, "16.7.7.0/24");
	rule(m, 80, 1, "17.8.8.8", 0, "", 1, SNAP_DIR_INGRESS);
	rule(m, 81, 2, "17.8.8.8", 0, "", 1, SNAP_DIR_EGRESS);
	rule(m, 82, 2, "17.8.8.9", 0, "", 1, SNAP_DIR_EGRESS);
	rule_plain(m, 90, 1, "18.9.9.10-18.9.9.20");
	rule_plain(m, 91, 1, "2001:db8::/32");
	rule_plain(m, 92, 1, "2001:db8:1::10-2001:db8:1::20");
}

static void basic_expect(const snap_view_t *s)
{
	const unsigned in = SNAP_DIR_INGRESS, out = SNAP_DIR_EGRESS;

	expect(s, "1.2.3.4", 5060, NULL, in, SNAP_MATCH, 1, "single IP");
	expect(s, "1.2.3.3", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "single IP, one below");
	expect(s, "1.2.3.5", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "single IP, one above");

	expect(s, "10.1.2.3", 5060, NULL, in, SNAP_MATCH, 12, "/24 inside /16 inside /8");
	expect(s, "10.1.2.0", 5060, NULL, in, SNAP_MATCH, 12, "first of the /24");
	expect(s, "10.1.2.255", 5060, NULL, in, SNAP_MATCH, 12, "last of the /24");
	expect(s, "10.1.1.255", 5060, NULL, in, SNAP_MATCH, 11, "just below the /24: the /16");
	expect(s, "10.1.3.0", 5060, NULL, in, SNAP_MATCH, 11, "just above the /24: the /16");
	expect(s, "10.2.0.0", 5060, NULL, in, SNAP_MATCH, 10, "outside the /16: the /8");
	expect(s, "10.255.255.255", 5060, NULL, in, SNAP_MATCH, 10, "last of the /8");
	expect(s, "11.0.0.0", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "just past the /8");

	expect(s, "11.1.1.1", 5070, NULL, in, SNAP_MATCH, 21, "port-bound wins on its port");
	expect(s, "11.1.1.1", 5060, NULL, in, SNAP_MATCH, 20, "portless on another port");
	expect(s, "11.2.2.2", 5080, NULL, in, SNAP_MATCH, 23, "port-bound /24 beats portless /32");
	expect(s, "11.2.2.2", 5060, NULL, in, SNAP_MATCH, 22, "portless /32 on another port");
	expect(s, "11.2.2.3", 5060, NULL, in, SNAP_NO_FIT, 0, "port-bound /24, wrong port: no fit");

	expect(s, "12.3.3.3", 5060, "99123456", in, SNAP_MATCH, 31, "longer tech prefix wins");
	expect(s, "12.3.3.3", 5060, "995", in, SNAP_MATCH, 30, "shorter tech prefix when the longer fails");
	expect(s, "12.3.3.3", 5060, "12345", in, SNAP_MATCH, 32, "no prefix rule catches the rest");
	expect(s, "12.3.3.3", 5060, "", in, SNAP_MATCH, 32, "empty user: only the prefix-less rule fits");
	expect(s, "12.3.3.3", 5060, NULL, in, SNAP_MATCH, 31, "no user: prefixes ignored, most specific");

	expect(s, "13.4.4.4", 5060, "1100", in, SNAP_MATCH, 40, "shared IP, prefix 11: account 4");
	expect(s, "13.4.4.4", 5060, "2200", in, SNAP_MATCH, 41, "shared IP, prefix 22: account 5");
	expect(s, "13.4.4.4", 5060, "3300", in, SNAP_NO_FIT, 0, "shared IP, unknown prefix: no fit");
	expect(s, "13.4.4.4", 5060, "1", in, SNAP_NO_FIT, 0, "user shorter than any prefix: no fit");
	{
		tg_ip_t a = ip_of("13.4.4.4");
		snap_match_t m;

		is_int(snap_lookup(s, &a, 5060, "1100", 1, in, &m), SNAP_NO_FIT,
		       "user_len counts, not the NUL: \"1\" of \"1100\" fits no prefix");
		is_int(snap_lookup(s, &a, 5060, "2299", 2, in, &m), SNAP_MATCH,
		       "\"22\" of \"2299\" fits prefix 22");
	}

	expect(s, "14.5.5.5", 5060, NULL, in, SNAP_MATCH, 50, "IP+port rule on its port");
	expect(s, "14.5.5.5", 5061, NULL, in, SNAP_NO_FIT, 0, "IP+port rule, other port: no fit");
	expect(s, "14.5.5.6", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "next address: no address");

	expect(s, "15.6.6.6", 5060, NULL, in, SNAP_MATCH, 61, "active /32 inside /24");
	expect(s, "15.6.6.7", 5060, NULL, in, SNAP_MATCH, 60, "inactive /32 skipped, /24 matches");
	expect(s, "15.6.7.7", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "only an inactive rule: no address");

	expect(s, "16.7.7.7", 5060, NULL, in, SNAP_ACCOUNT_INACTIVE, 70, "best rule's account inactive");
	{
		tg_ip_t a = ip_of("16.7.7.7");
		snap_match_t m;

		snap_lookup(s, &a, 5060, NULL, 0, in, &m);
		ok(m.account && m.account->id == 100 && m.account->active == 0 &&
		           strcmp(m.account->name, "acct100") == 0,
		   "inactive account is reported with its row");
	}
	expect(s, "16.7.7.8", 5060, NULL, in, SNAP_MATCH, 71, "beside it, the active /24");

	expect(s, "17.8.8.8", 5060, NULL, in, SNAP_MATCH, 80, "ingress lookup gets the ingress rule");
	expect(s, "17.8.8.8", 5060, NULL, out, SNAP_MATCH, 81, "egress lookup gets the egress rule");
	expect(s, "17.8.8.9", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "egress-only rule is absent for ingress");
	expect(s, "17.8.8.9", 5060, NULL, out, SNAP_MATCH, 82, "egress-only rule for egress");

	expect(s, "18.9.9.9", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "range first-1");
	expect(s, "18.9.9.10", 5060, NULL, in, SNAP_MATCH, 90, "range first");
	expect(s, "18.9.9.20", 5060, NULL, in, SNAP_MATCH, 90, "range last");
	expect(s, "18.9.9.21", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "range last+1");

	expect(s, "2001:db8:1::f", 5060, NULL, in, SNAP_MATCH, 91, "v6 range first-1: the /32");
	expect(s, "2001:db8:1::10", 5060, NULL, in, SNAP_MATCH, 92, "v6 range first");
	expect(s, "2001:db8:1::20", 5060, NULL, in, SNAP_MATCH, 92, "v6 range last");
	expect(s, "2001:db8:1::21", 5060, NULL, in, SNAP_MATCH, 91, "v6 range last+1: the /32");
	expect(s, "2001:db9::", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "past the v6 /32");
	expect(s, "32.1.13.184", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "v4 with the /32's bits: no match");
	expect(s, "::102:304", 5060, NULL, in, SNAP_NO_ADDRESS, 0, "v4-compatible ::1.2.3.4 is not 1.2.3.4");
	expect(s, "::ffff:1.2.3.4", 5060, NULL, in, SNAP_MATCH, 1, "v4-mapped ::ffff:1.2.3.4 is 1.2.3.4");

	/* A NULL match pointer is allowed. */
	tg_ip_t a = ip_of("1.2.3.4");

	is_int(snap_lookup(s, &a, 5060, NULL, 0, in, NULL), SNAP_MATCH, "lookup without a match struct");
}

/* Every rule in the base. */
static void test_basic_in_base(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *v;

	basic_accounts(m);
	basic_rules(m);
	v = publish_view(m, 1);
	if (v == NULL)
		goto out;
	printf("# every rule in the base\n");
	is_int(snap_model_nrules(m), 26, "the model holds every rule, active or not");
	is_int(v->base->nrules, 24, "the base holds the 24 active rules");
	ok(v->head->overlay.nentries == 0 && v->head->ntombs == 0, "a compaction leaves the overlay empty");
	is_int(last.kind, SNAP_PUBLISH_COMPACTION, "publish_base compacts");
	basic_expect(v);
out:
	snap_model_free(m);
}

/* Accounts in the base, every rule arriving afterwards as a delta. */
static void test_basic_in_overlay(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *v;

	basic_accounts(m);
	publish_view(m, 1);
	basic_rules(m);
	v = publish_view(m, 0);
	if (v == NULL)
		goto out;
	printf("# every rule in the overlay\n");
	is_int(last.kind, SNAP_PUBLISH_DELTA, "rules added after the base go out as a delta");
	ok(v->base->index.nentries == 0 && v->head->overlay.nentries == 24 && last.overlay_rules == 24,
	   "the base is empty, the overlay holds the 24 active rules");
	basic_expect(v);
out:
	snap_model_free(m);
}

/* Everything in the base, then every other rule deleted and put again: those are tombstoned and in the
 * overlay. */
static void test_basic_split(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *v;

	basic_accounts(m);
	basic_rules(m);
	publish_view(m, 1);
	/* Every other id: 13 rules, 12 of them active (63 is not, so the base never held it). */
	for (size_t i = 0; i < sizeof(basic_ids) / sizeof(basic_ids[0]); i += 2)
		snap_model_rule_del(m, basic_ids[i]);
	basic_rules(m);
	v = publish_view(m, 0);
	if (v == NULL)
		goto out;
	printf("# rules split between the base and the overlay\n");
	ok(last.kind == SNAP_PUBLISH_DELTA && v->head->ntombs == 12 && last.overlay_rules == 12,
	   "12 ids tombstoned, the same 12 back in the overlay (got %u tombs, %u rules)", v->head->ntombs,
	   last.overlay_rules);
	basic_expect(v);
	basic_rules(m);
	publish_view(m, 0);
	ok(last.overlay_rules == 12 && v->head->ntombs == 12, "putting identical rows again changes nothing");
out:
	snap_model_free(m);
}

static void test_whole_space(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;
	const unsigned in = SNAP_DIR_INGRESS;

	account(m, 1, 1);
	rule_plain(m, 1, 1, "::/0");
	rule_plain(m, 2, 1, "::ffff:0:0/96");
	rule_plain(m, 3, 1,
	           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	rule_plain(m, 4, 1, "::-::3");
	rule_plain(m, 5, 1, "2001:db8::/64");
	s = publish_view(m, 1);
	if (s == NULL) {
		snap_model_free(m);
		return;
	}
	expect(s, "::", 1, NULL, in, SNAP_MATCH, 4, ":: is in the rule starting at ::");
	expect(s, "::3", 1, NULL, in, SNAP_MATCH, 4, "::3, its last");
	expect(s, "::4", 1, NULL, in, SNAP_MATCH, 1, "::4 falls back to ::/0");
	expect(s, "::fffe:ffff:ffff", 1, NULL, in, SNAP_MATCH, 1, "just below ::ffff:0:0/96");
	expect(s, "0.0.0.0", 1, NULL, in, SNAP_MATCH, 2, "0.0.0.0 is the first of ::ffff:0:0/96");
	expect(s, "255.255.255.255", 1, NULL, in, SNAP_MATCH, 2, "255.255.255.255 is its last");
	expect(s, "::1:0:0:0", 1, NULL, in, SNAP_MATCH, 1, "just above it: ::/0");
	expect(s, "2001:db8::", 1, NULL, in, SNAP_MATCH, 5, "a /64 ending at the top of the low half: first");
	expect(s, "2001:db8::ffff:ffff:ffff:ffff", 1, NULL, in, SNAP_MATCH, 5, "... last");
	expect(s, "2001:db8:0:1::", 1, NULL, in, SNAP_MATCH, 1, "... last+1 carries into the high half");
	expect(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffef", 1, NULL, in, SNAP_MATCH, 1,
	       "below the top range");
	expect(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0", 1, NULL, in, SNAP_MATCH, 3, "top range first");
	expect(s, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, NULL, in, SNAP_MATCH, 3,
	       "the all-ones address");
	ok(s->base->index.nivals == 7,
	   "seven intervals: ::, ::4, the v4 space, after it, the /64, after it, the top (got %u)",
	   s->base->index.nivals);
	ok(s->base->index.ncands == 11 && !s->base->index.truncated,
	   "base lists are not cut after a catch-all: ::/0 stays behind the others (%u candidates)",
	   s->base->index.ncands);
	snap_model_free(m);

	/* A rule ending at the top with nothing else, and an empty model. */
	m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	account(m, 1, 1);
	rule_plain(m, 1, 1, "ffff::/16");
	s = publish_view(m, 1);
	expect(s, "ffff::", 1, NULL, in, SNAP_MATCH, 1, "only a rule at the top: first");
	expect(s, "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, NULL, in, SNAP_NO_ADDRESS, 0, "below it");
	snap_model_free(m);

	m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	s = publish_view(m, 0);
	ok(s != NULL && last.kind == SNAP_PUBLISH_COMPACTION && s->base->index.nentries == 0 &&
	           s->base->index.nivals == 1 && s->head->naccounts == 0,
	   "an empty model gives one empty interval, and its first publish is a compaction");
	expect(s, "1.2.3.4", 1, NULL, in, SNAP_NO_ADDRESS, 0, "empty snapshot: no address");
	snap_model_free(m);
}

/* ------------------------------------------------------------------ */
/* the model's refusals and bookkeeping                                */

static void test_model_errors(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	tg_range_t r = range_of("1.2.3.4"), many[SNAP_MAX_RANGES + 1];
	const char *err = NULL;
	char longname[SNAP_NAME_MAX + 1];
	char longprefix[SNAP_PREFIX_MAX + 1];

	memset(longname, 'n', SNAP_NAME_MAX);
	longname[SNAP_NAME_MAX] = '\0';
	memset(longprefix, '1', SNAP_PREFIX_MAX);
	longprefix[SNAP_PREFIX_MAX] = '\0';
	for (int i = 0; i <= SNAP_MAX_RANGES; i++) {
		many[i] = r;
		many[i].first.lo += (uint64_t)i * 2;
		many[i].last = many[i].first;
	}

	is_int(snap_model_account_put(m, 1, "one", 1, 10, 5, &err), 0, "account added");
	is_int(snap_model_account_put(m, 1, "uno", 1, 10, 5, &err), 0, "same id again: updated in place");
	is_int(snap_model_naccounts(m), 1, "... still one account");
	is_int(snap_model_account_put(m, 2, longname, 1, 0, 0, &err), -1, "name of 64 bytes refused");
	is_str(err, "account name too long", "... with a reason");
	longname[SNAP_NAME_MAX - 1] = '\0';
	is_int(snap_model_account_put(m, 2, longname, 1, 0, 0, &err), 0, "name of 63 bytes fits");
	is_int(snap_model_naccounts(m), 2, "two accounts");

	is_int(snap_model_rule_put(m, 1, 99, &r, 1, 0, "", 1, SNAP_DIR_BOTH, &err), -1,
	       "unknown account refused");
	is_str(err, "unknown account", "... with a reason");
	is_int(snap_model_rule_put(m, 1, 1, &r, 1, 0, longprefix, 1, SNAP_DIR_BOTH, &err), -1,
	       "long prefix refused");
	is_str(err, "tech prefix too long", "... with a reason");
	is_int(snap_model_rule_put(m, 1, 1, &r, 1, 0, "", 1, 0, &err), -1, "direction 0 refused");
	is_str(err, "bad direction", "... with a reason");
	is_int(snap_model_rule_put(m, 1, 1, &r, 1, 0, "", 1, 4, &err), -1, "direction 4 refused");

	tg_range_t rev = r;

	rev.first.lo++;
	is_int(snap_model_rule_put(m, 1, 1, &rev, 1, 0, "", 1, SNAP_DIR_BOTH, &err), -1,
	       "reversed range refused");
	is_str(err, "range end before start", "... with a reason");
	rev = r;
	rev.family = AF_UNIX;
	is_int(snap_model_rule_put(m, 1, 1, &rev, 1, 0, "", 1, SNAP_DIR_BOTH, &err), -1,
	       "bad family refused");
	is_int(snap_model_rule_put(m, 1, 1, many, SNAP_MAX_RANGES + 1, 0, "", 1, SNAP_DIR_BOTH, &err), -1,
	       "17 ranges refused");
	is_str(err, "too many ranges", "... with a reason");
	is_int(snap_model_nrules(m), 0, "nothing refused went in");
	longprefix[SNAP_PREFIX_MAX - 1] = '\0';
	is_int(snap_model_rule_put(m, 1, 1, &r, 1, 0, longprefix, 1, SNAP_DIR_BOTH, &err), 0,
	       "31-char prefix fits");
	is_int(snap_model_rule_put(m, 1, 2, &r, 1, 0, "", 1, SNAP_DIR_BOTH, &err), 0,
	       "same rule id again: replaced, not refused");
	is_int(snap_model_rule_put(m, 2, 2, &r, 1, 0, NULL, 1, SNAP_DIR_BOTH, NULL), 0,
	       "NULL prefix and err are fine");
	is_int(snap_model_rule_put(m, 3, 2, many, SNAP_MAX_RANGES, 0, "", 1, SNAP_DIR_BOTH, &err), 0,
	       "16 ranges fit");
	is_int(snap_model_rule_put(m, 4, 2, NULL, 0, 0, "", 1, SNAP_DIR_BOTH, &err), 0,
	       "no range (a host name not resolved yet) fits");
	is_int(snap_model_nrules(m), 4, "four rules");
	is_int(snap_model_rule_del(m, 99), -1, "deleting an unknown rule: -1");
	is_int(errno, ENOENT, "... ENOENT");
	is_int(snap_model_account_del(m, 99), -1, "deleting an unknown account: -1");
	is_int(errno, ENOENT, "... ENOENT");

	const snap_view_t *s = publish_view(m, 1);
	const snap_account_sh_t *a = s ? snap_accounts(s->head) : NULL;

	ok(a && s->head->naccounts == 2 && a[0].max_channels == 10 && a[0].max_cps == 5 &&
	           strcmp(a[0].name, "uno") == 0 && strcmp(a[1].name, longname) == 0,
	   "accounts take slots in the order added, with their limits");
	ok(s && s->base->index.nentries == 1 + 1 + SNAP_MAX_RANGES && s->base->nrules == 3,
	   "one entry per range: 18 entries for 3 rules, none for the rule without a range");
	ok(s && snap_index_entries(s->base, &s->base->index)[0].account == 1,
	   "entries name their account by slot: rule 1 moved to account 2, slot 1");
	expect(s, "1.2.3.4", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 1,
	       "the replaced rule matches (lower id)");
	expect(s, "1.2.3.34", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 3,
	       "a 16-address rule, its last address");
	expect(s, "1.2.3.33", 1, NULL, SNAP_DIR_INGRESS, SNAP_NO_ADDRESS, 0, "... not between its addresses");
	snap_model_free(m);
	snap_model_free(NULL);
}

/* Changes after the base: what a tombstone hides, what the overlay adds, accounts as head-only changes. */
static void test_delta_semantics(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;
	const unsigned in = SNAP_DIR_INGRESS;
	tg_range_t three[3] = {range_of("40.0.0.1"), range_of("40.0.0.5"), range_of("2001:db8:40::1")};
	tg_ip_t at = ip_of("33.0.0.1");
	snap_match_t mt;

	account(m, 1, 1);
	account(m, 2, 1);
	account(m, 3, 1);
	rule_plain(m, 1, 1, "30.0.0.0/24");
	rule_plain(m, 2, 2, "30.0.0.7"); /* a catch-all inside the /24 */
	rule_plain(m, 3, 3, "31.0.0.1");
	rule(m, 4, 1, "32.0.0.0/16", 0, "44", 1, SNAP_DIR_BOTH);
	rule_plain(m, 5, 3, "33.0.0.1");
	publish_view(m, 1);

	snap_model_rule_del(m, 2);
	s = publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_DELTA && last.head_bytes > 0 && last.tombstones == 1,
	   "a rule deleted: a delta with one tombstone (%llu us, %zu bytes)",
	   (unsigned long long)last.build_us, last.head_bytes);
	expect(s, "30.0.0.7", 1, NULL, in, SNAP_MATCH, 1,
	       "a deleted catch-all /32 uncovers the /24 behind it");

	rule_plain(m, 3, 3, "31.0.0.2");
	s = publish_view(m, 0);
	expect(s, "31.0.0.1", 1, NULL, in, SNAP_NO_ADDRESS, 0, "a rule moved: its old address is gone");
	expect(s, "31.0.0.2", 1, NULL, in, SNAP_MATCH, 3, "... and its new one matches");

	rule_plain(m, 6, 2, "30.0.0.8");
	s = publish_view(m, 0);
	expect(s, "30.0.0.8", 1, NULL, in, SNAP_MATCH, 6, "an overlay /32 beats the base /24");
	rule_plain(m, 6, 2, "30.0.0.0/16");
	s = publish_view(m, 0);
	expect(s, "30.0.0.8", 1, NULL, in, SNAP_MATCH, 1, "an overlay /16 loses to the base /24");
	expect(s, "30.0.1.8", 1, NULL, in, SNAP_MATCH, 6, "... outside the /24 the /16 answers");

	expect(s, "32.0.0.1", 1, "999", in, SNAP_NO_FIT, 0, "a prefix rule, other number: no fit");
	snap_model_rule_del(m, 4);
	s = publish_view(m, 0);
	expect(s, "32.0.0.1", 1, "999", in, SNAP_NO_ADDRESS, 0,
	       "its only rule deleted: no address, not no fit (a tombstoned entry is absent)");

	snap_model_account_put(m, 3, "renamed", 0, 7, 0, NULL);
	s = publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_DELTA && last.overlay_rules == 2,
	   "an account change is a head-only delta: no rule entered the overlay");
	expect(s, "33.0.0.1", 1, NULL, in, SNAP_ACCOUNT_INACTIVE, 5, "its base rule now finds it inactive");
	snap_lookup(s, &at, 1, NULL, 0, in, &mt);
	ok(mt.account && strcmp(mt.account->name, "renamed") == 0 && mt.account->max_channels == 7,
	   "... under its new name and limits");

	snap_model_rule_put(m, 7, 1, three, 3, 0, "", 1, SNAP_DIR_BOTH, NULL);
	s = publish_view(m, 0);
	expect(s, "40.0.0.5", 1, NULL, in, SNAP_MATCH, 7, "a host name's second address");
	expect(s, "2001:db8:40::1", 1, NULL, in, SNAP_MATCH, 7, "... and its IPv6 one");
	expect(s, "40.0.0.3", 1, NULL, in, SNAP_NO_ADDRESS, 0, "... not what lies between");
	snap_model_rule_put(m, 7, 1, three, 1, 0, "", 1, SNAP_DIR_BOTH, NULL);
	s = publish_view(m, 0);
	expect(s, "40.0.0.5", 1, NULL, in, SNAP_NO_ADDRESS, 0, "re-resolved to one address: the others go");
	snap_model_rule_put(m, 7, 1, NULL, 0, 0, "", 1, SNAP_DIR_BOTH, NULL);
	s = publish_view(m, 0);
	expect(s, "40.0.0.1", 1, NULL, in, SNAP_NO_ADDRESS, 0, "resolved to nothing: matches nothing");
	snap_model_free(m);
}

/* An account's slot outlives it until a compaction; its rules go with it. */
static void test_account_slots(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;

	for (int i = 1; i <= 3; i++)
		account(m, i, 1);
	rule_plain(m, 1, 2, "50.0.0.1");
	rule_plain(m, 2, 2, "50.0.0.2");
	rule_plain(m, 3, 3, "50.0.0.3");
	publish_view(m, 1);
	is_int(snap_model_account_del(m, 2), 0, "account 2 deleted");
	is_int(snap_model_nrules(m), 1, "... its two rules with it");
	account(m, 4, 1);
	s = publish_view(m, 0);
	ok(s && last.kind == SNAP_PUBLISH_DELTA && s->head->naccounts == 4 &&
	           snap_accounts(s->head)[1].state == SNAP_ACCOUNT_DELETED &&
	           snap_accounts(s->head)[3].id == 4 && s->head->live_accounts == 3,
	   "a delta keeps the deleted slot marked deleted; the new account takes a fresh slot");
	expect(s, "50.0.0.1", 1, NULL, SNAP_DIR_INGRESS, SNAP_NO_ADDRESS, 0,
	       "the deleted account's rules are gone");
	s = publish_view(m, 1);
	ok(s && snap_accounts(s->head)[1].state == SNAP_ACCOUNT_DELETED,
	   "the compaction's own head still shows it deleted");
	account(m, 5, 1);
	rule_plain(m, 4, 5, "50.0.0.4");
	s = publish_view(m, 0);
	ok(s && snap_accounts(s->head)[1].id == 5 && s->head->naccounts == 4,
	   "after the compaction the slot is reused");
	expect(s, "50.0.0.4", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 4, "a rule of the slot's new account");
	expect(s, "50.0.0.3", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 3, "the others are untouched");
	snap_model_free(m);
}

static int count_account(void *arg, const snap_account_info_t *a)
{
	(void)a;
	(*(int *)arg)++;
	return 0;
}

static int stop_at_rule_3(void *arg, const snap_rule_info_t *r)
{
	(*(int *)arg)++;
	return r->id == 3 ? 42 : 0;
}

static void test_mark_sweep(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;
	int n = 0;

	for (int i = 1; i <= 4; i++)
		account(m, i, 1);
	for (int i = 1; i <= 8; i++) {
		char text[32];

		snprintf(text, sizeof(text), "60.0.0.%d", i);
		rule_plain(m, i, 1 + (i - 1) % 4, text);
	}
	publish_view(m, 1);
	snap_model_mark_begin(m);
	account(m, 1, 1);
	account(m, 2, 0);
	account(m, 3, 1);
	rule_plain(m, 1, 1, "60.0.0.1");
	rule_plain(m, 2, 2, "60.0.0.2");
	rule_plain(m, 5, 1, "60.0.0.55"); /* changed */
	rule_plain(m, 8, 3, "60.0.0.8");  /* was account 4's */
	is_int(snap_model_sweep(m), 5, "sweep: account 4 and rules 3, 4, 6, 7 were not seen");
	ok(snap_model_naccounts(m) == 3 && snap_model_nrules(m) == 4, "three accounts and four rules remain");
	s = publish_view(m, 0);
	ok(s && last.kind == SNAP_PUBLISH_COMPACTION && last.reason && strcmp(last.reason, "full load") == 0,
	   "the publish after a sweep is a compaction (%s)", last.reason ? last.reason : "?");
	expect(s, "60.0.0.3", 1, NULL, SNAP_DIR_INGRESS, SNAP_NO_ADDRESS, 0, "an unseen rule is gone");
	expect(s, "60.0.0.55", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 5,
	       "a changed rule has its new address");
	expect(s, "60.0.0.2", 1, NULL, SNAP_DIR_INGRESS, SNAP_ACCOUNT_INACTIVE, 2,
	       "a changed account its state");
	expect(s, "60.0.0.8", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 8,
	       "a rule moved off a swept account stays");
	snap_model_foreach_account(m, count_account, &n);
	is_int(n, 3, "foreach_account visits the live accounts");
	n = 0;
	is_int(snap_model_foreach_rule(m, stop_at_rule_3, &n), 0, "foreach_rule: rule 3 is gone, no stop");
	rule_plain(m, 3, 1, "60.0.0.3");
	n = 0;
	ok(snap_model_foreach_rule(m, stop_at_rule_3, &n) == 42 && n <= 5,
	   "a nonzero return stops the walk and is returned");
	snap_model_free(m);
}

/* When a publish must compact, and why. */
static void test_compaction_triggers(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS), *other;
	uint32_t cap = snap_overlay_cap(CAP_RULES);
	tg_range_t r = range_of("70.0.0.0");

	is_int(cap, SNAP_OVERLAY_MIN, "20000 rules: the overlay holds the minimum, 4096");
	is_int(snap_overlay_cap(1000000), 15625, "a million rules: one in 64");
	account(m, 1, 1);
	for (uint32_t i = 0; i < cap; i++) {
		r.first.lo = r.last.lo = (r.first.lo & ~0xffffULL) | i;
		snap_model_rule_put(m, i + 1, 1, &r, 1, 0, "", 1, SNAP_DIR_BOTH, NULL);
	}
	publish_view(m, 1);
	for (uint32_t i = 0; i < cap; i++)
		snap_model_rule_del(m, i + 1);
	publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_DELTA && last.tombstones == cap, "4096 deletes: still a delta");
	rule_plain(m, 99999, 1, "71.0.0.1");
	snap_model_rule_del(m, 99999);
	publish_view(m, 0);
	is_int(last.kind, SNAP_PUBLISH_DELTA, "a rule added and deleted since the base leaves no tombstone");
	account(m, 2, 1);
	rule_plain(m, 5000, 2, "70.0.255.255");
	snap_model_account_del(m, 2);
	publish_view(m, 0);
	is_int(last.kind, SNAP_PUBLISH_DELTA, "nor does a rule dropped with its account");
	for (uint32_t i = 0; i <= cap; i++) {
		r.first.lo = r.last.lo = (r.first.lo & ~0xffffULL) | i;
		snap_model_rule_put(m, i + 1, 1, &r, 1, 0, "", 1, SNAP_DIR_BOTH, NULL);
	}
	publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_COMPACTION && strcmp(last.reason, "overlay full") == 0,
	   "4097 rules changed since the base: a compaction (%s)", last.reason ? last.reason : "delta");
	snap_model_rule_del(m, 1);
	publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_DELTA && last.tombstones == 1, "then deltas again");

	other = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	account(other, 1, 1);
	publish_view(other, 0);
	is_str(last.reason, "first", "another model's first publish compacts");
	snap_model_rule_del(m, 2);
	publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_COMPACTION && strcmp(last.reason, "base replaced") == 0,
	   "a model whose base was replaced compacts");
	expect(&view, "70.0.0.1", 1, NULL, SNAP_DIR_INGRESS, SNAP_NO_ADDRESS, 0,
	       "... holding all its changes");
	expect(&view, "70.0.0.3", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 4, "... and all its rules");

	for (int i = 0; i <= CAP_ACCOUNTS / 2; i++)
		account(m, 1000 + i, 1);
	publish_view(m, 0);
	for (int i = 0; i <= CAP_ACCOUNTS / 2; i++)
		snap_model_account_del(m, 1000 + i);
	publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_COMPACTION && strcmp(last.reason, "account slots") == 0,
	   "501 deleted accounts waiting for their slots: a compaction (%s)",
	   last.reason ? last.reason : "delta");
	snap_model_free(other);
	snap_model_free(m);
}

/* ------------------------------------------------------------------ */
/* sizes, capacity, checksums                                          */

static snap_model_t *sample_model(int nrules)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	char text[64];

	account(m, 1, 1);
	account(m, 2, 1);
	for (int i = 0; i < nrules; i++) {
		snprintf(text, sizeof(text), "10.%d.%d.%d", i >> 16 & 255, i >> 8 & 255, i & 255);
		rule(m, i + 1, 1 + i % 2, text, i % 3 ? 0 : 5060, i % 5 ? "" : "44", 1, SNAP_DIR_BOTH);
	}
	rule_plain(m, nrules + 1, 1, "10.0.0.0/8");
	return m;
}

/* Publish into a copy of shm whose arenas claim the given sizes (0: as they are). */
static int publish_sized(snap_model_t *m, size_t base_size, size_t head_size, int base)
{
	shm_t small = shm;

	snap_release(&shm.procs[SHM_PROC_WORKER(0)], &view);
	if (base_size)
		small.base_size = base_size;
	if (head_size)
		small.head_size = head_size;
	errno = 0;
	return base ? snap_model_publish_base(m, &small, 0, &last) : snap_model_publish(m, &small, 0, &last);
}

static void test_space(void)
{
	snap_model_t *m = sample_model(10000);
	size_t bound = snap_base_size_bound(10001);
	uint64_t gen;

	is_int(publish_sized(m, 0, 0, 1), 0, "10k /32s in a /8 published");
	size_t used = last.base_bytes;

	ok(used > 0 && used <= bound, "... within the bound (%zu <= %zu)", used, bound);
	ok(used % 8 == 0 && last.head_bytes % 8 == 0, "sizes are 8-byte aligned");
	gen = atomic_load(&shm.snapctl->generation);
	is_int(publish_sized(m, used - 1, 0, 1), -1, "one byte short: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	is_int(atomic_load(&shm.snapctl->generation), gen, "... and nothing published");
	is_int(publish_sized(m, used, 0, 1), 0, "exactly enough: published");
	is_int(last.base_bytes, used, "... the same size");
	is_int(publish_sized(m, 64, 0, 1), -1, "smaller than a header: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	is_int(publish_sized(m, sizeof(snap_base_sh_t) + 1000, 0, 1), -1, "entries do not fit: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	is_int(publish_sized(m, 0, last.head_bytes - 8, 1), -1, "the head one word short: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	snap_model_free(m);

	/* Heavily overlapping rules outgrow the bound and are refused, not overrun. */
	m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	account(m, 1, 1);
	for (int i = 0; i < 300; i++) {
		char text[64];

		snprintf(text, sizeof(text), "20.0.%d.%d-20.0.%d.%d", i / 256, i % 256, (i + 300) / 256,
		         (i + 300) % 256);
		rule(m, i + 1, 1, text, 0, "7", 1, SNAP_DIR_BOTH);
	}
	bound = snap_base_size_bound(300);
	is_int(publish_sized(m, bound, 0, 1), -1, "300 mutually overlapping ranges exceed the bound");
	is_int(errno, ENOSPC, "... refused with ENOSPC");
	ok(publish_sized(m, 0, 0, 1) == 0 && last.base_bytes > bound, "... and fit a larger arena");

	/* The same 300 as changes since an empty base: the overlay outgrows the head, a base takes them. */
	snap_model_free(m);
	m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	account(m, 1, 1);
	publish_sized(m, 0, 0, 1);
	for (int i = 0; i < 300; i++) {
		char text[64];

		snprintf(text, sizeof(text), "20.0.%d.%d-20.0.%d.%d", i / 256, i % 256, (i + 300) / 256,
		         (i + 300) % 256);
		rule(m, i + 1, 1, text, 0, "7", 1, SNAP_DIR_BOTH);
	}
	ok(publish_sized(m, 0, 200000, 0) == 0 && last.kind == SNAP_PUBLISH_COMPACTION &&
	           strcmp(last.reason, "overlay bytes") == 0,
	   "an overlay too big for its head falls back to a compaction (%s)",
	   last.reason ? last.reason : "delta");
	snap_model_free(m);

	m = snap_model_new(2, CAP_RULES, CAP_USERS);
	account(m, 1, 1);
	account(m, 2, 1);
	account(m, 3, 1);
	is_int(publish_sized(m, 0, 0, 0), -1, "three accounts in a model for two: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	snap_model_free(m);
}

static void test_checksum(void)
{
	snap_model_t *m1 = sample_model(3000), *m2 = sample_model(3000);
	snap_publish_stats_t s1, s2;

	memset(shm.base_arena[0], 0xaa, 1 << 20);
	memset(shm.base_arena[1], 0x55, 1 << 20);
	publish_sized(m1, 0, 0, 1);
	s1 = last;
	publish_sized(m2, 0, 0, 1);
	s2 = last;

	const snap_base_sh_t *b1 = shm.base_arena[0], *b2 = shm.base_arena[1];
	size_t hdr = sizeof(snap_base_sh_t);

	if (b1->generation > b2->generation) {
		const snap_base_sh_t *t = b1;

		b1 = b2;
		b2 = t;
	}
	ok(s1.base_bytes == s2.base_bytes && b1->size == b2->size &&
	           memcmp((const char *)b1 + hdr, (const char *)b2 + hdr, b1->size - hdr) == 0,
	   "same rules, same bytes after the header, whatever the arena held");
	ok(snap_base_checksum(b1) == b1->checksum && snap_base_checksum(b2) == b2->checksum,
	   "base checksums verify");
	ok(b1->checksum != b2->checksum && b2->generation == b1->generation + 1,
	   "the checksum covers the header: another generation, another checksum");
	ok(b2->built_ms == 0 && b2->magic == SNAP_BASE_MAGIC, "header carries generation and time");

	const snap_head_sh_t *h = shm.head_arena[b2->generation & 1];

	ok(h->generation == b2->generation && h->base_generation == b2->generation &&
	           snap_head_checksum(h) == h->checksum && h->checksum != 0,
	   "the head names its base and its checksum verifies");
	((unsigned char *)shm.base_arena[0])[b1->size - 1] ^= 1;
	((unsigned char *)shm.head_arena[b2->generation & 1])[h->size - 1] ^= 1;
	ok(snap_base_checksum(shm.base_arena[0]) != ((const snap_base_sh_t *)shm.base_arena[0])->checksum,
	   "a flipped byte in a base is detected");
	ok(snap_head_checksum(h) != h->checksum, "a flipped byte in a head is detected");
	((unsigned char *)shm.head_arena[b2->generation & 1])[h->size - 1] ^= 1;
	snap_model_free(m1);
	snap_model_free(m2);
}

static void test_layout(void)
{
	const shm_header_sh_t *h = shm.hdr;

	ok(h->layout_version == SHM_LAYOUT_VERSION && h->cap_accounts == CAP_ACCOUNTS &&
	           h->cap_ip_rules == CAP_RULES,
	   "the header records the layout version and the capacity");
	ok(h->off_head[0] % 4096 == 0 && h->off_head[1] == h->off_head[0] + h->head_size &&
	           h->off_base[0] == h->off_head[1] + h->head_size &&
	           h->off_base[1] == h->off_base[0] + h->base_size &&
	           h->total_size == h->off_base[1] + h->base_size,
	   "head arenas, then base arenas, page-aligned, back to back, to the end");
	ok(h->head_size >= snap_head_size_bound(CAP_ACCOUNTS, CAP_RULES, CAP_USERS) &&
	           h->base_size >= snap_base_size_bound(CAP_RULES) && h->head_size < h->base_size,
	   "arenas are sized by their bounds (head %llu, base %llu bytes)", (unsigned long long)h->head_size,
	   (unsigned long long)h->base_size);
}

/* ------------------------------------------------------------------ */
/* call policy and limits                                              */

static void policy_account(snap_model_t *m, int64_t id, const char *const *allowed, unsigned nallowed,
                           const char *const *denied, unsigned ndenied, const char *const *codecs,
                           unsigned ncodecs)
{
	char name[32];
	snap_account_info_t a;
	const char *err = NULL;

	snprintf(name, sizeof(name), "acct%lld", (long long)id);
	memset(&a, 0, sizeof(a));
	a.id = id;
	a.name = name;
	a.active = 1;
	a.allowed_prefixes = allowed;
	a.nallowed = nallowed;
	a.denied_prefixes = denied;
	a.ndenied = ndenied;
	a.restricted_codecs = codecs;
	a.ncodecs = ncodecs;
	if (snap_model_account_put2(m, &a, &err) < 0)
		printf("# test bug: account %lld: %s\n", (long long)id, err);
}

/* The account the rule at ip matches, or NULL. */
static const snap_account_sh_t *account_at(const snap_view_t *v, const char *ip)
{
	tg_ip_t a = ip_of(ip);
	snap_match_t m;

	if (v == NULL || snap_lookup(v, &a, 1, NULL, 0, SNAP_DIR_INGRESS, &m) != SNAP_MATCH)
		return NULL;
	return m.account;
}

static int dest_ok(const snap_view_t *v, const char *ip, const char *user)
{
	const snap_account_sh_t *a = account_at(v, ip);

	return a == NULL ? -1 : snap_account_destination_allowed(v, a, user, strlen(user));
}

static int codec_off(const snap_view_t *v, const char *ip, const char *codec)
{
	const snap_account_sh_t *a = account_at(v, ip);

	return a == NULL ? -1 : snap_account_codec_restricted(v, a, codec, strlen(codec));
}

/* The destinations and codecs of the accounts test_policy sets up, as first put. */
static void policy_expect(const snap_view_t *s, const char *where)
{
	const snap_account_sh_t *a5 = account_at(s, "80.0.0.5");

	ok(dest_ok(s, "80.0.0.1", "") == 1 && dest_ok(s, "80.0.0.1", "0044123") == 1,
	   "%s: no lists: every destination, the empty one too", where);
	ok(dest_ok(s, "80.0.0.2", "447700900123") == 1 && dest_ok(s, "80.0.0.2", "3312") == 1,
	   "%s: allowed 44 and 331: 4477... and 3312 may be called", where);
	ok(dest_ok(s, "80.0.0.2", "33") == 0 && dest_ok(s, "80.0.0.2", "1") == 0 &&
	           dest_ok(s, "80.0.0.2", "") == 0,
	   "%s: ... 33 (shorter than 331), 1 and nothing may not", where);
	ok(dest_ok(s, "80.0.0.2", "4490123") == 0 && dest_ok(s, "80.0.0.2", "4490") == 0,
	   "%s: denied 4490 wins over allowed 44", where);
	ok(dest_ok(s, "80.0.0.2", "449") == 1, "%s: ... but not for 449, which 4490 does not start", where);
	ok(dest_ok(s, "80.0.0.3", "9001") == 0 && dest_ok(s, "80.0.0.3", "+19005551234") == 0 &&
	           dest_ok(s, "80.0.0.3", "901") == 1 && dest_ok(s, "80.0.0.3", "") == 1,
	   "%s: denied only: the rest may be called", where);
	ok(dest_ok(s, "80.0.0.4", "441") == 0 && dest_ok(s, "80.0.0.4", "4") == 0,
	   "%s: the same prefix allowed and denied: denied", where);
	ok(dest_ok(s, "80.0.0.3", "+1900") == 0 && dest_ok(s, "80.0.0.3", "+190") == 1 &&
	           dest_ok(s, "80.0.0.2", "4A") == 0,
	   "%s: prefixes compare byte for byte", where);
	ok(codec_off(s, "80.0.0.5", "G729") == 1 && codec_off(s, "80.0.0.5", "g729") == 1 &&
	           codec_off(s, "80.0.0.5", "pcma") == 1 && codec_off(s, "80.0.0.5", "Telephone-Event") == 1,
	   "%s: restricted codecs in any case", where);
	ok(codec_off(s, "80.0.0.5", "G72") == 0 && codec_off(s, "80.0.0.5", "G7291") == 0 &&
	           codec_off(s, "80.0.0.5", "PCMU") == 0 && codec_off(s, "80.0.0.5", "") == 0,
	   "%s: ... and only those, whole", where);
	ok(a5 != NULL && snap_account_ncodecs(s, a5) == 3 &&
	           snap_account_ncodecs(s, account_at(s, "80.0.0.1")) == 0 &&
	           codec_off(s, "80.0.0.1", "G729") == 0,
	   "%s: ncodecs counts them; an account with none restricts nothing", where);
}

static void test_policy(void)
{
	static const char *const a2_allowed[] = {"44", "331"}, *const a2_denied[] = {"4490"};
	static const char *const a3_denied[] = {"900", "+1900"}, *const a4[] = {"44"};
	static const char *const a5_codecs[] = {"g729", "PCMA", "telephone-event"};
	static const char *const a2_new[] = {"1"};
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;
	char user[8];
	uint32_t pool;

	account(m, 1, 1);
	policy_account(m, 2, a2_allowed, 2, a2_denied, 1, NULL, 0);
	policy_account(m, 3, NULL, 0, a3_denied, 2, NULL, 0);
	policy_account(m, 4, a4, 1, a4, 1, NULL, 0);
	policy_account(m, 5, NULL, 0, NULL, 0, a5_codecs, 3);
	for (int i = 1; i <= 5; i++) {
		char ip[32];

		snprintf(ip, sizeof(ip), "80.0.0.%d", i);
		rule_plain(m, i, i, ip);
	}
	s = publish_view(m, 1);
	policy_expect(s, "base");
	pool = s ? s->head->policy_bytes : 0;
	is_int(pool, 3 + 4 + 5 + 4 + 6 + 3 + 3 + 5 + 5 + 16,
	       "the pool holds each entry's bytes and a length byte");

	memcpy(user, "44901", 5);
	ok(s && snap_account_destination_allowed(s, account_at(s, "80.0.0.2"), user, 3) == 1 &&
	           snap_account_destination_allowed(s, account_at(s, "80.0.0.2"), user, 4) == 0,
	   "the user is len bytes, not a C string: 449 may, 4490 may not");

	/* Identical puts change nothing; a head-only delta carries the pool as it was. */
	policy_account(m, 2, a2_allowed, 2, a2_denied, 1, NULL, 0);
	policy_account(m, 5, NULL, 0, NULL, 0, a5_codecs, 3);
	s = publish_view(m, 0);
	ok(s && last.kind == SNAP_PUBLISH_DELTA && last.overlay_rules == 0 && s->head->policy_bytes == pool,
	   "the same lists put again: a delta, nothing in the overlay, the same pool");
	policy_expect(s, "delta");

	/* A new list for one account, none for another: a head-only delta. */
	policy_account(m, 2, a2_new, 1, NULL, 0, NULL, 0);
	account(m, 3, 1); /* the old put: no lists */
	s = publish_view(m, 0);
	ok(s && last.kind == SNAP_PUBLISH_DELTA && last.overlay_rules == 0,
	   "lists changed: a head-only delta");
	ok(dest_ok(s, "80.0.0.2", "12") == 1 && dest_ok(s, "80.0.0.2", "44") == 0,
	   "... account 2 now allows 1 only");
	ok(dest_ok(s, "80.0.0.3", "9001") == 1, "... account 3, put without lists, has none");
	ok(codec_off(s, "80.0.0.5", "PCMA") == 1 && dest_ok(s, "80.0.0.4", "441") == 0,
	   "... the others keep theirs wherever the pool put them");
	is_int(s ? s->head->policy_bytes : 0, 2 + 3 + 3 + 5 + 5 + 16, "... and the pool holds what is left");

	/* Deleted, its slot reclaimed by a compaction and reused: no list of the old account comes back. */
	snap_model_account_del(m, 4);
	s = publish_view(m, 1);
	policy_account(m, 6, NULL, 0, NULL, 0, NULL, 0);
	rule_plain(m, 6, 6, "80.0.0.6");
	s = publish_view(m, 0);
	ok(s && snap_accounts(s->head)[3].id == 6 && dest_ok(s, "80.0.0.6", "441") == 1,
	   "a deleted account's slot, reused, carries none of its lists");
	ok(codec_off(s, "80.0.0.5", "g729") == 1 && dest_ok(s, "80.0.0.2", "44") == 0,
	   "after a compaction the others' lists are intact");
	snap_model_free(m);
}

static int rule_limits_are(const snap_view_t *v, const char *ip, int64_t id, uint32_t ch, uint32_t cps,
                           uint32_t burst)
{
	tg_ip_t a = ip_of(ip);
	snap_match_t m;

	return v != NULL && snap_lookup(v, &a, 1, NULL, 0, SNAP_DIR_INGRESS, &m) == SNAP_MATCH &&
	       m.rule->id == id && m.rule->max_channels == ch && m.rule->max_cps == cps &&
	       m.rule->cps_burst == burst;
}

static void rule_limited(snap_model_t *m, int64_t id, int64_t acct, const char *range, uint32_t ch,
                         uint32_t cps, uint32_t burst)
{
	tg_range_t r = range_of(range);
	snap_rule_info_t ri = {id, acct, &r, 1, 0, "", 1, SNAP_DIR_BOTH, ch, cps, burst};
	const char *err = NULL;

	if (snap_model_rule_put2(m, &ri, &err) < 0)
		printf("# test bug: rule %lld: %s\n", (long long)id, err);
}

static void test_rule_limits(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	snap_account_info_t ai = {1, "burst", 1, 30, 5, 0, 12, NULL, 0, NULL, 0, NULL, 0};
	snap_rule_info_t got;
	const snap_view_t *s;
	const char *err = NULL;

	ok(snap_model_account_put2(m, &ai, &err) == 0, "an account with a burst of its own");
	rule_limited(m, 1, 1, "81.0.0.0/24", 4, 2, 3);
	rule_limited(m, 2, 1, "81.0.0.7", 0, 0, 0);
	rule_plain(m, 3, 1, "81.0.1.0/24");
	s = publish_view(m, 1);
	ok(rule_limits_are(s, "81.0.0.1", 1, 4, 2, 3), "a rule's limits come with its match (base)");
	ok(rule_limits_are(s, "81.0.0.7", 2, 0, 0, 0) && rule_limits_are(s, "81.0.1.1", 3, 0, 0, 0),
	   "rules without limits carry 0 (put2 with zeros, and the old put)");
	ok(account_at(s, "81.0.0.1") && account_at(s, "81.0.0.1")->cps_burst == 12 &&
	           account_at(s, "81.0.0.1")->max_cps == 5,
	   "the account's burst comes with it");
	ok(snap_model_rule_get(m, 1, &got) == 0 && got.max_channels == 4 && got.max_cps == 2 &&
	           got.cps_burst == 3 && got.account_id == 1 && got.nranges == 1,
	   "rule_get gives the rule back, limits and all");
	errno = 0;
	ok(snap_model_rule_get(m, 99, &got) == -1 && errno == ENOENT, "... and ENOENT for an unknown id");

	rule_limited(m, 1, 1, "81.0.0.0/24", 4, 2, 3);
	s = publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_DELTA && last.overlay_rules == 0 && last.tombstones == 0,
	   "the same limits put again change nothing");
	rule_limited(m, 1, 1, "81.0.0.0/24", 4, 9, 3);
	s = publish_view(m, 0);
	ok(last.kind == SNAP_PUBLISH_DELTA && last.overlay_rules == 1 && last.tombstones == 1,
	   "other limits: a changed rule, into the overlay, its base entry tombstoned");
	ok(rule_limits_are(s, "81.0.0.1", 1, 4, 9, 3), "... and the match carries the new limits");
	ok(rule_limits_are(s, "81.0.0.7", 2, 0, 0, 0), "... a more specific base rule still wins over it");
	rule(m, 1, 1, "81.0.0.0/24", 0, "", 1, SNAP_DIR_BOTH);
	s = publish_view(m, 0);
	ok(rule_limits_are(s, "81.0.0.1", 1, 0, 0, 0), "put with the old call: the limits are gone");
	rule_limited(m, 3, 1, "81.0.1.0/24", 1, 1, 1);
	s = publish_view(m, 1);
	ok(last.kind == SNAP_PUBLISH_COMPACTION && rule_limits_are(s, "81.0.1.1", 3, 1, 1, 1) &&
	           rule_limits_are(s, "81.0.0.1", 1, 0, 0, 0),
	   "a compaction keeps every rule's limits");
	snap_model_free(m);
}

/* A put refused with want, leaving account 1 with its allowed prefix "7". */
static void policy_refused(snap_model_t *m, snap_account_info_t a, const char *want, const char *what)
{
	const char *err = NULL;
	int rc = snap_model_account_put2(m, &a, &err);
	const snap_view_t *s;

	ok(rc == -1 && err != NULL && strcmp(err, want) == 0, "refused: %s (%s)", what, err ? err : "taken");
	s = publish_view(m, 0);
	ok(dest_ok(s, "82.0.0.1", "7") == 1 && dest_ok(s, "82.0.0.1", "8") == 0,
	   "... and the account is as it was");
}

static void test_policy_refused(void)
{
	static const char *const seven[] = {"7"};
	const char *many[SNAP_DEST_PREFIXES + 1], *codecs[SNAP_CODECS + 1], *one[1];
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	snap_account_info_t base = {1, "strict", 1, 0, 0, 0, 0, seven, 1, NULL, 0, NULL, 0}, a;
	static const char *const bad_prefixes[][2] = {
	        {"12;3", "';'"},   {"a@b", "'@'"},        {"sip:1", "':'"},     {"1 2", "a blank"},
	        {"1\t2", "a tab"}, {"\x01", "a control"}, {"\xc3\xa9", "UTF-8"}};
	const char *err = NULL;

	for (int i = 0; i <= SNAP_DEST_PREFIXES; i++)
		many[i] = "44";
	for (int i = 0; i <= SNAP_CODECS; i++)
		codecs[i] = "PCMA";
	ok(snap_model_account_put2(m, &base, &err) == 0, "an account allowed to call 7 only");
	rule_plain(m, 1, 1, "82.0.0.1");
	publish_view(m, 1);

	a = base;
	a.allowed_prefixes = many;
	a.nallowed = SNAP_DEST_PREFIXES + 1;
	policy_refused(m, a, "too many allowed prefixes", "65 allowed prefixes");
	a = base;
	a.denied_prefixes = many;
	a.ndenied = SNAP_DEST_PREFIXES + 1;
	policy_refused(m, a, "too many denied prefixes", "65 denied prefixes");
	a = base;
	a.restricted_codecs = codecs;
	a.ncodecs = SNAP_CODECS + 1;
	policy_refused(m, a, "too many restricted codecs", "33 codecs");
	a = base;
	a.ncodecs = 1;
	policy_refused(m, a, "no list given", "a count without its list");
	a = base;
	a.denied_prefixes = one;
	a.ndenied = 1;
	one[0] = "";
	policy_refused(m, a, "bad destination prefix: empty or longer than 32 bytes", "an empty prefix");
	one[0] = "123456789012345678901234567890123";
	policy_refused(m, a, "bad destination prefix: empty or longer than 32 bytes", "a prefix of 33 bytes");
	for (size_t k = 0; k < sizeof(bad_prefixes) / sizeof(bad_prefixes[0]); k++) {
		char what[64];

		one[0] = bad_prefixes[k][0];
		snprintf(what, sizeof(what), "a prefix with %s", bad_prefixes[k][1]);
		policy_refused(m, a, "bad destination prefix: a character a SIP user part cannot carry",
		               what);
	}
	a = base;
	a.restricted_codecs = one;
	a.ncodecs = 1;
	one[0] = "G.729 A";
	policy_refused(m, a, "bad codec name: only letters, digits, '.', '_' and '-'",
	               "a codec with a blank");
	one[0] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456";
	policy_refused(m, a, "bad codec name: empty or longer than 32 bytes", "a codec of 33 bytes");

	/* The limits themselves are taken. */
	a = base;
	a.allowed_prefixes = many;
	a.nallowed = SNAP_DEST_PREFIXES;
	a.denied_prefixes = one;
	a.ndenied = 1;
	one[0] = "aZ09-_.!~*'()%&=+$,?/#";
	a.restricted_codecs = codecs;
	a.ncodecs = SNAP_CODECS;
	ok(snap_model_account_put2(m, &a, &err) == 0,
	   "64 prefixes, every character a prefix may hold, 32 codecs: taken");
	snap_model_free(m);
}

/* An account with every list full of the longest entries: 5,280 bytes of pool. */
static int full_policy(snap_model_t *m, int64_t id, const char **err)
{
	static char prefixes[2 * SNAP_DEST_PREFIXES][SNAP_DEST_PREFIX_MAX + 1],
	        codecs[SNAP_CODECS][SNAP_CODEC_MAX + 1];
	static const char *pp[2 * SNAP_DEST_PREFIXES], *cp[SNAP_CODECS];
	char name[32];
	snap_account_info_t a = {id,
	                         name,
	                         1,
	                         0,
	                         0,
	                         0,
	                         0,
	                         pp,
	                         SNAP_DEST_PREFIXES,
	                         pp + SNAP_DEST_PREFIXES,
	                         SNAP_DEST_PREFIXES,
	                         cp,
	                         SNAP_CODECS};

	for (int i = 0; i < 2 * SNAP_DEST_PREFIXES; i++) {
		snprintf(prefixes[i], sizeof(prefixes[i]), "%032d", i);
		pp[i] = prefixes[i];
	}
	for (int i = 0; i < SNAP_CODECS; i++) {
		snprintf(codecs[i], sizeof(codecs[i]), "CODEC%027d", i);
		cp[i] = codecs[i];
	}
	snprintf(name, sizeof(name), "full%lld", (long long)id);
	return snap_model_account_put2(m, &a, err);
}

static void test_policy_pool(void)
{
	enum {
		CAP = 20,
		FULL = 2 * SNAP_DEST_PREFIXES * (1 + SNAP_DEST_PREFIX_MAX) +
		       SNAP_CODECS * (1 + SNAP_CODEC_MAX)
	};
	snap_model_t *m = snap_model_new(CAP, CAP_RULES, CAP_USERS);
	uint64_t total = SNAP_POLICY_TOTAL(CAP);
	int fit = (int)(total / FULL);
	const char *err = NULL;
	int taken = 0;

	is_int(FULL, 5280, "an account's lists take at most 5,280 bytes");
	is_int(total, 70656, "a pool for 20 accounts: 256 bytes each and 64 KiB");
	for (int i = 1; i <= fit; i++)
		taken += full_policy(m, i, &err) == 0;
	is_int(taken, fit, "%d accounts with full lists fit", fit);
	ok(full_policy(m, fit + 1, &err) == -1 && err &&
	           strcmp(err, "too many destination prefixes and codecs in total") == 0,
	   "one more is refused (%s)", err ? err : "taken");
	ok(snap_model_naccounts(m) == (uint32_t)fit, "... and not added");
	account(m, fit + 1, 1);
	ok(full_policy(m, fit + 1, &err) == -1, "an account without lists may not get them either");
	ok(publish_sized(m, 0, snap_head_size_bound(CAP, CAP_RULES, CAP_USERS), 1) == 0,
	   "a head with the pool full fits the head bound for its capacity");
	snap_model_account_del(m, 1);
	ok(full_policy(m, fit + 1, &err) == 0, "one deleted: its room is free for another");

	/*
	 * A full load that replaces every account: the old ones still hold
	 * the pool until the sweep, but only what the load has put counts.
	 */
	snap_model_mark_begin(m);
	taken = 0;
	for (int i = 100; i < 100 + fit; i++)
		taken += full_policy(m, i, &err) == 0;
	is_int(taken, fit, "a full load with %d new full accounts takes them all, the old ones aside", fit);
	ok(full_policy(m, 100 + fit, &err) == -1,
	   "... and refuses one more, as the sweep would leave too many");
	is_int(snap_model_sweep(m), fit, "the sweep drops the old ones");
	ok(publish_sized(m, 0, snap_head_size_bound(CAP, CAP_RULES, CAP_USERS), 0) == 0,
	   "... and the model publishes within the bound");

	/* A load that reads an unchanged account again counts it too, or the sweep would keep too much. */
	snap_model_mark_begin(m);
	taken = 0;
	for (int i = 300; i < 300 + fit - 1; i++)
		taken += full_policy(m, i, &err) == 0;
	ok(taken == fit - 1 && full_policy(m, 100, &err) == 0,
	   "a full load: %d new full accounts and one unchanged one fit", fit - 1);
	ok(full_policy(m, 101, &err) == -1 && err &&
	           strcmp(err, "too many destination prefixes and codecs in total") == 0,
	   "... a second unchanged one, put the same, does not (%s)", err ? err : "taken");
	snap_model_sweep(m);
	ok(publish_sized(m, 0, snap_head_size_bound(CAP, CAP_RULES, CAP_USERS), 0) == 0,
	   "... and the swept model publishes within the bound");
	snap_model_free(m);
}

/* ------------------------------------------------------------------ */
/* randomized cross-checks against a linear scan                       */

typedef struct ref_rule {
	int64_t id;
	int live;
	int64_t account;
	tg_range_t r[3];
	unsigned nr;
	uint16_t port;
	char prefix[8];
	int active;
	unsigned dir;
	uint32_t max_channels, max_cps, cps_burst;
} ref_rule_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 11) % n;
}

/* The spec, written out the slow way: is rule a with range ra more specific than b with rb? */
static int ref_better(const ref_rule_t *a, const tg_range_t *ra, const ref_rule_t *b, const tg_range_t *rb)
{
	int ab = tg_range_prefix_bits(ra), bb = tg_range_prefix_bits(rb);
	uint64_t asz = ra->last.lo - ra->first.lo, bsz = rb->last.lo - rb->first.lo;

	if ((a->port != 0) != (b->port != 0))
		return a->port != 0;
	if (strlen(a->prefix) != strlen(b->prefix))
		return strlen(a->prefix) > strlen(b->prefix);
	if (ab != bb)
		return ab > bb;
	if (asz != bsz) /* ranges here stay within one 64-bit half */
		return asz < bsz;
	if (a->id != b->id)
		return a->id < b->id;
	return tg_ip_cmp(&ra->first, &rb->first) < 0;
}

typedef struct ref_answer {
	int result;
	int64_t id;
	const ref_rule_t *rule;
	const tg_range_t *range;
} ref_answer_t;

static ref_answer_t ref_lookup(const ref_rule_t *rules, int n, const int *acct_active, const tg_ip_t *ip,
                               uint16_t port, const char *user, unsigned dir)
{
	const ref_rule_t *best = NULL;
	const tg_range_t *best_r = NULL;
	int usable = 0;

	for (int i = 0; i < n; i++) {
		const ref_rule_t *r = &rules[i];
		size_t plen;

		if (!r->live || !r->active || !(r->dir & dir))
			continue;
		plen = strlen(r->prefix);
		for (unsigned k = 0; k < r->nr; k++) {
			if (!tg_range_contains(&r->r[k], ip))
				continue;
			usable = 1;
			if (r->port && r->port != port)
				continue;
			if (user && plen && (strlen(user) < plen || memcmp(user, r->prefix, plen) != 0))
				continue;
			if (best == NULL || ref_better(r, &r->r[k], best, best_r)) {
				best = r;
				best_r = &r->r[k];
			}
		}
	}
	if (best)
		return (ref_answer_t){acct_active[best->account] ? SNAP_MATCH : SNAP_ACCOUNT_INACTIVE,
		                      best->id, best, best_r};
	return (ref_answer_t){usable ? SNAP_NO_FIT : SNAP_NO_ADDRESS, -1, NULL, NULL};
}

/* A random address in 10.0.0.0/16 or 2001:db8::/112, or now and then elsewhere. */
static tg_ip_t random_ip(void)
{
	tg_ip_t ip;
	uint32_t k = rnd(100);

	if (k < 70) {
		tg_ip_parse("10.0.0.0", &ip);
		ip.lo |= rnd(65536);
	} else if (k < 95) {
		tg_ip_parse("2001:db8::", &ip);
		ip.lo |= rnd(65536);
	} else {
		ip.hi = (uint64_t)rnd(1u << 31) << 33 | rnd(2);
		ip.lo = (uint64_t)rnd(1u << 31) << 32 | rnd(1u << 31);
	}
	return ip;
}

static tg_range_t random_range(void)
{
	tg_range_t r;
	uint32_t kind = rnd(10);
	int width;

	memset(&r, 0, sizeof(r));
	r.first = random_ip();
	r.family = tg_ip_is_v4(&r.first) ? AF_INET : AF_INET6;
	if (kind < 5) { /* single address */
		r.last = r.first;
	} else if (kind < 8) { /* CIDR, /20../31 in v4 terms */
		width = 1 + (int)rnd(12);
		r.first.lo &= ~((1ULL << width) - 1);
		r.last = r.first;
		r.last.lo |= (1ULL << width) - 1;
	} else { /* a-b range */
		r.last = r.first;
		r.last.lo += rnd(2000);
		if (r.last.lo < r.first.lo || (r.family == AF_INET && !tg_ip_is_v4(&r.last)))
			r.last = r.first;
	}
	return r;
}

static const char *prefixes[] = {"", "", "", "", "1", "12", "123", "9"};
static const uint16_t ports[] = {0, 0, 0, 0, 5060, 5070};
static const char *users[] = {NULL, "", "1234", "12", "9", "5", "123"};

static void random_rule(ref_rule_t *r, int64_t id, int naccounts, int multi)
{
	memset(r, 0, sizeof(*r));
	r->id = id;
	r->live = 1;
	r->account = rnd((uint32_t)naccounts);
	r->nr = multi ? rnd(4) : 1;
	for (unsigned k = 0; k < r->nr; k++)
		r->r[k] = random_range();
	r->port = ports[rnd(6)];
	strcpy(r->prefix, prefixes[rnd(8)]);
	r->active = rnd(10) != 0;
	r->dir = 1 + rnd(3);
	if (rnd(3) == 0) {
		r->max_channels = rnd(5);
		r->max_cps = rnd(5);
		r->cps_burst = rnd(5);
	}
}

static int ref_put(snap_model_t *m, const ref_rule_t *r)
{
	snap_rule_info_t ri = {r->id,           r->account, r->r,        r->nr,
	                       r->port,         r->prefix,  r->active,   r->dir,
	                       r->max_channels, r->max_cps, r->cps_burst};

	if (r->max_channels == 0 && r->max_cps == 0 && r->cps_burst == 0 && rnd(2))
		return snap_model_rule_put(m, r->id, r->account, r->r, r->nr, r->port, r->prefix, r->active,
		                           r->dir, NULL);
	return snap_model_rule_put2(m, &ri, NULL);
}

static void test_random_cross_check(void)
{
	enum { NACCT = 50, NRULES = 2000, NLOOKUPS = 20000 };
	static ref_rule_t rules[NRULES];
	int acct_active[NACCT];
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	int mismatches = 0, counts[4] = {0};

	for (int a = 0; a < NACCT; a++) {
		acct_active[a] = rnd(10) != 0;
		account(m, a, acct_active[a]);
	}
	for (int i = 0; i < NRULES; i++) {
		int64_t id = 1000 + rnd(1000000) * 2 + 1 + i * 2000000LL; /* unique, not in insertion order */

		random_rule(&rules[i], i % 2 ? id : -id, NACCT, 0);
		if (ref_put(m, &rules[i]) < 0)
			printf("# test bug: random rule %d refused\n", i);
	}

	const snap_view_t *s = publish_view(m, 1);

	for (int i = 0; s && i < NLOOKUPS; i++) {
		tg_ip_t ip = random_ip();
		uint16_t port = rnd(2) ? 5060 : 5070;
		const char *user = users[rnd(7)];
		unsigned dir = 1 + rnd(2);
		ref_answer_t want = ref_lookup(rules, NRULES, acct_active, &ip, port, user, dir);
		snap_match_t mt;
		int got = snap_lookup(s, &ip, port, user, user ? strlen(user) : 0, dir, &mt);
		int same = got == want.result && (mt.rule ? mt.rule->id : -1) == want.id;

		if (same && want.rule != NULL)
			same = mt.account == &snap_accounts(s->head)[mt.rule->account] &&
			       mt.account->id == want.rule->account;
		counts[want.result]++;
		if (!same && mismatches++ < 5) {
			char text[64];

			printf("# mismatch at %s port %u user %s dir %u: got %s %lld, want %s %lld\n",
			       tg_ip_format(&ip, text, sizeof(text)), port, user ? user : "(null)", dir,
			       result_name(got), (long long)(mt.rule ? mt.rule->id : -1),
			       result_name(want.result), (long long)want.id);
		}
	}
	ok(s != NULL && mismatches == 0, "%d random lookups over %d random rules agree with a linear scan",
	   NLOOKUPS, NRULES);
	printf("# outcomes: %d match, %d no address, %d no fit, %d account inactive; %u intervals, %u "
	       "candidates\n",
	       counts[0], counts[1], counts[2], counts[3], s ? s->base->index.nivals : 0,
	       s ? s->base->index.ncands : 0);
	ok(counts[0] > 1000 && counts[1] > 1000 && counts[2] > 100 && counts[3] > 100,
	   "the random mix exercises every outcome");
	snap_model_free(m);
}

/*
 * Rules all over the IPv4 space, many straddling bucket edges, some in
 * the overlay: every bucket's first and last address, and its
 * neighbours, agree with a linear scan.
 */
static void test_bucket_edges(void)
{
	enum { NRULES = 3000 };
	static ref_rule_t rules[NRULES];
	int acct_active[1] = {1};
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *v;
	long wrong = 0, checked = 0;

	account(m, 0, 1);
	for (int i = 0; i < NRULES; i++) {
		ref_rule_t *r = &rules[i];
		uint32_t a = (uint32_t)rnd(1u << 31) << 1 | rnd(2), len = rnd(4) ? rnd(3) : rnd(1u << 24);

		memset(r, 0, sizeof(*r));
		r->id = i + 1;
		r->live = r->active = 1;
		r->dir = SNAP_DIR_BOTH;
		r->nr = 1;
		r->r[0].family = AF_INET;
		r->r[0].first = (tg_ip_t){0, 0x0000ffff00000000ULL | (a > UINT32_MAX - len ? a - len : a)};
		r->r[0].last = r->r[0].first;
		r->r[0].last.lo += len;
		if (i == NRULES / 2)
			publish_view(m, 1); /* the second half goes out as a delta */
		ref_put(m, r);
	}
	v = publish_view(m, 0);
	for (uint32_t b = 0; v && b < (1u << v->base->index.bucket_bits); b++) {
		uint32_t first = (uint32_t)((uint64_t)b << (32 - v->base->index.bucket_bits));

		for (int k = -1; k <= 1; k++) {
			tg_ip_t ip = {0, 0x0000ffff00000000ULL | (uint32_t)(first + (uint32_t)k)};
			ref_answer_t want =
			        ref_lookup(rules, NRULES, acct_active, &ip, 1, NULL, SNAP_DIR_INGRESS);
			snap_match_t mt;
			int got = snap_lookup(v, &ip, 1, NULL, 0, SNAP_DIR_INGRESS, &mt);

			checked++;
			wrong += got != want.result || (mt.rule ? mt.rule->id : -1) != want.id;
		}
	}
	ok(v && v->base->index.bucket_bits >= 8 && v->head->overlay.bucket_bits >= 8,
	   "both indexes have a bucket table (%u and %u bits)", v ? v->base->index.bucket_bits : 0,
	   v ? v->head->overlay.bucket_bits : 0);
	ok(checked > 700 && wrong == 0, "%ld lookups at bucket edges agree with a linear scan (%ld wrong)",
	   checked, wrong);
	snap_model_free(m);
}

/* The randomized run of changes: the reference rows, and a model to copy them into. */
enum { RD_ACCT = 40, RD_IDS = 2500 };

typedef struct rd {
	ref_rule_t rules[RD_IDS]; /* by id - 1 */
	int acct_live[RD_ACCT], acct_active[RD_ACCT];
	unsigned acct_policy[RD_ACCT]; /* index into ref_policies */
	snap_model_t *m;
	long mismatches, fresh_mismatches, policy_mismatches, lookups, counts[4], policy_checks;
	long deltas, compactions, refused;
} rd_t;

/* Call policies the random run gives accounts, and the answers a linear scan gives for them. */
typedef struct ref_policy {
	const char *allowed[3], *denied[2], *codecs[2];
	unsigned nallowed, ndenied, ncodecs;
} ref_policy_t;

static const ref_policy_t ref_policies[] = {
        {{NULL}, {NULL}, {NULL}, 0, 0, 0},      {{"12"}, {NULL}, {"PCMA"}, 1, 0, 1},
        {{"1", "9"}, {"123"}, {NULL}, 2, 1, 0}, {{NULL}, {"5", "12"}, {"g729", "opus"}, 0, 2, 2},
        {{"12"}, {"12"}, {NULL}, 1, 1, 0},      {{"1234", "9"}, {"12345"}, {"PCMU"}, 2, 1, 1},
};
#define REF_POLICIES (sizeof(ref_policies) / sizeof(ref_policies[0]))

static int ref_starts(const char *const *list, unsigned n, const char *user)
{
	for (unsigned k = 0; k < n; k++)
		if (strncmp(user, list[k], strlen(list[k])) == 0)
			return 1;
	return 0;
}

static int ref_allowed(const ref_policy_t *p, const char *user)
{
	if (ref_starts(p->denied, p->ndenied, user))
		return 0;
	return p->nallowed == 0 || ref_starts(p->allowed, p->nallowed, user);
}

static int ref_codec(const ref_policy_t *p, const char *codec)
{
	for (unsigned k = 0; k < p->ncodecs; k++)
		if (strcasecmp(p->codecs[k], codec) == 0)
			return 1;
	return 0;
}

static int ref_account_put(snap_model_t *m, int64_t id, int active, unsigned policy)
{
	const ref_policy_t *p = &ref_policies[policy];
	char name[32];
	snap_account_info_t a = {
	        id,         name,        active,    0,          0,         0,         (uint32_t)policy,
	        p->allowed, p->nallowed, p->denied, p->ndenied, p->codecs, p->ncodecs};

	snprintf(name, sizeof(name), "acct%lld", (long long)id);
	if (policy == 0 && rnd(2))
		return snap_model_account_put(m, id, name, active, 0, 0, NULL);
	return snap_model_account_put2(m, &a, NULL);
}

static int copy_account(void *arg, const snap_account_info_t *a)
{
	return snap_model_account_put2(arg, a, NULL);
}

static int copy_rule(void *arg, const snap_rule_info_t *r)
{
	return snap_model_rule_put2(arg, r, NULL);
}

/* A single-level build of the same rows, through the model's iteration, into shm2. */
static const snap_view_t *fresh_build(const snap_model_t *m, snap_model_t **out)
{
	snap_model_t *f = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);

	if (snap_model_foreach_account(m, copy_account, f) != 0 ||
	    snap_model_foreach_rule(m, copy_rule, f) != 0)
		printf("# test bug: copying the model failed\n");
	*out = f;
	return publish_in(&shm2, &view2, f, 1);
}

static int same_entry(const snap_rule_sh_t *a, const snap_rule_sh_t *b)
{
	if (a == NULL || b == NULL)
		return a == b;
	return a->id == b->id && tg_ip_cmp(&a->range.first, &b->range.first) == 0 &&
	       tg_ip_cmp(&a->range.last, &b->range.last) == 0 && a->max_channels == b->max_channels &&
	       a->max_cps == b->max_cps && a->cps_burst == b->cps_burst;
}

/* Same result, same rule, same range of it, same limits, same account. */
static int rd_same(int got, const snap_match_t *mt, const ref_answer_t *want)
{
	if (got != want->result || (mt->rule ? mt->rule->id : -1) != want->id)
		return 0;
	if (want->rule == NULL)
		return 1;
	return tg_ip_cmp(&mt->rule->range.first, &want->range->first) == 0 &&
	       mt->account->id == want->rule->account && mt->rule->max_channels == want->rule->max_channels &&
	       mt->rule->max_cps == want->rule->max_cps && mt->rule->cps_burst == want->rule->cps_burst;
}

/* The matched account's policy answers as the reference's, for every destination and codec tried. */
static void rd_policy(rd_t *d, const snap_view_t *v, const snap_account_sh_t *a)
{
	static const char *dests[] = {"", "1", "12", "123", "1234", "12345", "9", "99", "5", "55", "+1"};
	static const char *codecs[] = {"PCMA", "pcma", "G729", "g729",
	                               "OPUS", "PCMU", "G72",  "telephone-event"};
	const ref_policy_t *p = &ref_policies[d->acct_policy[a->id]];
	int bad = a->cps_burst != d->acct_policy[a->id] || snap_account_ncodecs(v, a) != p->ncodecs;

	for (size_t k = 0; k < sizeof(dests) / sizeof(dests[0]); k++)
		bad |= snap_account_destination_allowed(v, a, dests[k], strlen(dests[k])) !=
		       ref_allowed(p, dests[k]);
	for (size_t k = 0; k < sizeof(codecs) / sizeof(codecs[0]); k++)
		bad |= snap_account_codec_restricted(v, a, codecs[k], strlen(codecs[k])) !=
		       ref_codec(p, codecs[k]);
	d->policy_checks++;
	if (bad && d->policy_mismatches++ < 5)
		printf("# account %lld (generation %llu): policy %u answers otherwise\n", (long long)a->id,
		       (unsigned long long)v->head->generation, d->acct_policy[a->id]);
}

static void rd_check(rd_t *d, const snap_view_t *v, int with_fresh)
{
	snap_model_t *f = NULL;
	const snap_view_t *fv = with_fresh ? fresh_build(d->m, &f) : NULL;

	for (int i = 0; i < 200; i++) {
		tg_ip_t ip = random_ip();
		uint16_t port = rnd(2) ? 5060 : 5070;
		const char *user = users[rnd(7)];
		unsigned dir = 1 + rnd(2);
		ref_answer_t want = ref_lookup(d->rules, RD_IDS, d->acct_active, &ip, port, user, dir);
		snap_match_t mt, ft;
		int got = snap_lookup(v, &ip, port, user, user ? strlen(user) : 0, dir, &mt);

		d->lookups++;
		d->counts[want.result]++;
		if (!rd_same(got, &mt, &want)) {
			if (d->mismatches++ < 5)
				printf("# mismatch (generation %llu): got %s %lld, want %s %lld\n",
				       (unsigned long long)v->head->generation, result_name(got),
				       (long long)(mt.rule ? mt.rule->id : -1), result_name(want.result),
				       (long long)want.id);
		}
		if (fv != NULL &&
		    (snap_lookup(fv, &ip, port, user, user ? strlen(user) : 0, dir, &ft) != got ||
		     !same_entry(ft.rule, mt.rule)))
			d->fresh_mismatches++;
		if (mt.account != NULL && i % 4 == 0)
			rd_policy(d, v, mt.account);
		if (fv != NULL && ft.account != NULL && i % 4 == 0)
			rd_policy(d, fv, ft.account);
	}
	snap_model_free(f);
}

static void rd_rule_put(rd_t *d)
{
	int64_t id = 1 + rnd(RD_IDS);
	ref_rule_t r;

	random_rule(&r, id, RD_ACCT, 1);
	if (ref_put(d->m, &r) < 0) {
		d->refused++;
		if (d->acct_live[r.account] && d->mismatches++ < 5)
			printf("# rule %lld refused for a live account\n", (long long)id);
		return;
	}
	if (!d->acct_live[r.account] && d->mismatches++ < 5)
		printf("# rule %lld taken for a deleted account\n", (long long)id);
	d->rules[id - 1] = r;
}

static void rd_rule_del(rd_t *d)
{
	int64_t id = 1 + rnd(RD_IDS);
	int rc = snap_model_rule_del(d->m, id);

	if ((rc == 0) != d->rules[id - 1].live && d->mismatches++ < 5)
		printf("# delete of rule %lld: %d, but live %d\n", (long long)id, rc, d->rules[id - 1].live);
	d->rules[id - 1].live = 0;
}

static void rd_account(rd_t *d)
{
	int a = (int)rnd(RD_ACCT);

	if (rnd(20) == 0 && d->acct_live[a]) {
		snap_model_account_del(d->m, a);
		d->acct_live[a] = 0;
		for (int i = 0; i < RD_IDS; i++)
			if (d->rules[i].account == a)
				d->rules[i].live = 0;
		return;
	}
	d->acct_active[a] = rnd(3) != 0;
	d->acct_live[a] = 1;
	d->acct_policy[a] = rnd(REF_POLICIES);
	if (ref_account_put(d->m, a, d->acct_active[a], d->acct_policy[a]) < 0 && d->mismatches++ < 5)
		printf("# account %d refused\n", a);
}

/* A live rule put again with other limits only: a changed rule, whose new limits a lookup must see. */
static void rd_rule_limits(rd_t *d)
{
	ref_rule_t *r = &d->rules[rnd(RD_IDS)];

	if (!r->live)
		return;
	r->max_channels = rnd(5);
	r->max_cps = rnd(5);
	r->cps_burst = rnd(5);
	if (ref_put(d->m, r) < 0 && d->mismatches++ < 5)
		printf("# rule %lld: new limits refused\n", (long long)r->id);
}

static void rd_step(rd_t *d)
{
	uint32_t k = rnd(100);

	if (k < 50)
		rd_rule_put(d);
	else if (k < 58)
		rd_rule_limits(d);
	else if (k < 85)
		rd_rule_del(d);
	else
		rd_account(d);
}

static void test_random_deltas(void)
{
	static rd_t d;
	const snap_view_t *v = NULL;

	memset(&d, 0, sizeof(d));
	d.m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	for (int a = 0; a < RD_ACCT; a++) {
		d.acct_live[a] = d.acct_active[a] = 1;
		account(d.m, a, 1);
	}
	for (int i = 0; i < 1500; i++)
		rd_rule_put(&d);
	publish_view(d.m, 1);
	for (int round = 0; round < 300; round++) {
		int steps = 1 + (int)rnd(rnd(10) == 0 ? 200 : 12);

		for (int i = 0; i < steps; i++)
			rd_step(&d);
		if ((v = publish_view(d.m, rnd(40) == 0)) == NULL)
			break;
		if (last.kind == SNAP_PUBLISH_DELTA)
			d.deltas++;
		else
			d.compactions++;
		rd_check(&d, v, round % 10 == 0);
	}
	printf("# %ld publishes (%ld deltas, %ld compactions), %ld lookups: %ld match, %ld no address, %ld "
	       "no fit, "
	       "%ld inactive; %ld puts refused for deleted accounts\n",
	       d.deltas + d.compactions, d.deltas, d.compactions, d.lookups, d.counts[0], d.counts[1],
	       d.counts[2], d.counts[3], d.refused);
	ok(v != NULL && d.mismatches == 0,
	   "every view after random puts and deletes agrees with a linear scan, rule limits included");
	ok(d.policy_mismatches == 0 && d.policy_checks > 1000,
	   "every matched account's call policy answers as its reference does (%ld accounts checked)",
	   d.policy_checks);
	is_int(d.fresh_mismatches, 0,
	       "... and with a fresh single-level build of the same rows, entry for entry");
	ok(d.deltas > 200 && d.compactions > 3 && d.counts[0] > 1000 && d.counts[1] > 1000 &&
	           d.counts[2] > 100 && d.counts[3] > 100,
	   "deltas and compactions both ran, every outcome was seen");
	snap_model_free(d.m);
}

/* ------------------------------------------------------------------ */
/* SIP users                                                           */

static snap_user_info_t user_info(int64_t id, int64_t acct, const char *username, const char *domain)
{
	snap_user_info_t u;

	memset(&u, 0, sizeof(u));
	u.id = id;
	u.account_id = acct;
	u.username = username;
	u.domain = domain;
	u.active = 1;
	return u;
}

static void user(snap_model_t *m, int64_t id, int64_t acct, const char *username, const char *domain)
{
	snap_user_info_t u = user_info(id, acct, username, domain);
	const char *err = NULL;

	if (snap_model_user_put(m, &u, &err) < 0)
		printf("# test bug: user %lld: %s\n", (long long)id, err);
}

static const snap_user_sh_t *find_user(const snap_view_t *v, const char *username, const char *domain)
{
	if (v == NULL || v->head == NULL)
		return NULL;
	return snap_user_find(v, username, strlen(username), domain, domain ? strlen(domain) : 0);
}

/* The id of the user found, or -1. */
static int64_t found(const snap_view_t *v, const char *username, const char *domain)
{
	const snap_user_sh_t *u = find_user(v, username, domain);

	return u ? u->id : -1;
}

/* ok() with the reason when a put is refused, or is accepted though it should not be. */
static void put_is(snap_model_t *m, const snap_user_info_t *u, const char *want_err, const char *what)
{
	const char *err = NULL;
	int rc = snap_model_user_put(m, u, &err);

	if (want_err == NULL) {
		ok(rc == 0, "%s", what);
		if (rc != 0)
			printf("#   refused: %s\n", err ? err : "(no reason)");
		return;
	}
	ok(rc == -1 && err != NULL && strcmp(err, want_err) == 0, "%s: refused, \"%s\"", what, want_err);
	if (rc != -1 || err == NULL || strcmp(err, want_err) != 0)
		printf("#   got rc %d, \"%s\"\n", rc, rc == 0 ? "(accepted)" : err ? err : "(no reason)");
}

static int allowed(const snap_view_t *v, const snap_user_sh_t *u, const char *ip)
{
	tg_ip_t a = ip_of(ip);

	return v != NULL && u != NULL && snap_user_source_allowed(v, u, &a);
}

/* Exact name first, then the any-domain user; users are head-only, so rule lookups carry on. */
static void test_users_find(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;
	const snap_user_sh_t *u;
	snap_user_info_t carol = user_info(4, 3, "carol", "");
	char long_domain[301];
	uint64_t gen;

	account(m, 1, 1);
	account(m, 2, 1);
	account(m, 3, 0);
	rule_plain(m, 1, 1, "1.2.3.4");
	s = publish_view(m, 1);
	ok(s && s->head->nusers == 0 && s->head->user_bucket_bits == 4 &&
	           s->head->off_user_ranges - s->head->off_users == 16 * sizeof(uint32_t),
	   "a head without users carries only an empty table of 16 buckets");
	ok(find_user(s, "alice", NULL) == NULL, "no users: nobody is found");

	user(m, 1, 1, "alice", NULL);
	user(m, 2, 2, "alice", "Example.COM");
	user(m, 3, 2, "bob", "example.org");
	carol.active = 0;
	snap_model_user_put(m, &carol, NULL);
	gen = s ? s->head->generation : 0;
	s = publish_view(m, 0);
	if (s == NULL) {
		snap_model_free(m);
		return;
	}
	printf("# SIP users\n");
	ok(last.kind == SNAP_PUBLISH_DELTA && s->head->generation == gen + 1 && s->head->nusers == 4 &&
	           last.overlay_rules == 0,
	   "users added: a head-only delta, generation %llu -> %llu", (unsigned long long)gen,
	   (unsigned long long)s->head->generation);
	is_int(found(s, "alice", "example.com"), 2, "exact username and domain");
	is_int(found(s, "alice", "EXAMPLE.Com"), 2, "the domain compares case-insensitively");
	u = find_user(s, "alice", "example.com");
	is_str(u ? u->domain : NULL, "example.com", "... and was stored lower case");
	is_int(found(s, "alice", "other.net"), 1, "another domain: the any-domain user");
	is_int(found(s, "alice", NULL), 1, "no domain: the any-domain user");
	is_int(found(s, "alice", ""), 1, "an empty domain likewise");
	is_int(found(s, "bob", "example.org"), 3, "a user with a domain only");
	is_int(found(s, "bob", "example.net"), -1, "... is not found in another domain");
	is_int(found(s, "bob", NULL), -1, "... nor without one");
	is_int(found(s, "Alice", NULL), -1, "usernames compare exactly");
	is_int(found(s, "alic", NULL), -1, "a prefix of a username is not the user");
	is_int(found(s, "alicex", NULL), -1, "nor is a longer name");
	u = snap_user_find(s, "alicex", 5, "example.comx", 11);
	is_int(u ? u->id : -1, 2, "lengths count, not NULs");
	ok(snap_user_find(s, "alice\0", 6, NULL, 0) == NULL,
	   "a NUL inside a username is not the name before it");
	ok(snap_user_find(s, "alice", 0, NULL, 0) == NULL, "an empty username finds nobody");
	memset(long_domain, 'a', 300);
	long_domain[300] = '\0';
	is_int(found(s, "alice", long_domain), 1, "a domain too long to be stored falls back to any-domain");
	u = find_user(s, "carol", "whatever.example");
	ok(u && u->id == 4 && u->active == 0, "an inactive user is found, with its status");
	ok(u && snap_user_account(s, u)->id == 3 && snap_user_account(s, u)->active == 0,
	   "... and its account (inactive too)");
	u = find_user(s, "alice", "example.com");
	ok(u && snap_user_account(s, u)->id == 2 && u->account == 1, "a user's account, by slot");
	expect(s, "1.2.3.4", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 1, "rules still match in the same view");
	ok(snap_head_checksum(s->head) == s->head->checksum, "the head's checksum verifies");

	/* The checksum covers the users. */
	unsigned char *p = (unsigned char *)shm.head_arena[s->head->generation & 1] + s->head->off_users +
	                   offsetof(snap_user_sh_t, username);

	*p ^= 1;
	ok(snap_head_checksum(s->head) != s->head->checksum, "a flipped byte in a username is detected");
	*p ^= 1;

	user(m, 2, 2, "alice", "example.net");
	snap_model_user_del(m, 3);
	gen = s->head->generation;
	s = publish_view(m, 0);
	ok(s && s->head->generation == gen + 1 && last.kind == SNAP_PUBLISH_DELTA && s->head->nusers == 3,
	   "a user moved and one deleted: the next generation");
	is_int(found(s, "alice", "example.com"), 1, "the old domain falls back to any-domain");
	is_int(found(s, "alice", "example.net"), 2, "the new domain finds the user");
	is_int(found(s, "bob", "example.org"), -1, "the deleted user is gone");
	expect(s, "1.2.3.4", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 1, "... and rules still match");

	s = publish_view(m, 1);
	ok(s && last.kind == SNAP_PUBLISH_COMPACTION && s->head->nusers == 3 &&
	           found(s, "alice", "example.net") == 2 && found(s, "carol", NULL) == 4,
	   "a compaction's head carries the users too");
	snap_model_free(m);
}

static int count_user(void *arg, const snap_user_info_t *u)
{
	(void)u;
	(*(int *)arg)++;
	return 0;
}

/* Checks the info of user 7 as it was put in test_users_refused(). */
static int check_user_7(void *arg, const snap_user_info_t *u)
{
	if (u->id != 7)
		return 0;
	*(int *)arg = u->account_id == 1 && strcmp(u->username, "zed") == 0 && strcmp(u->domain, "") == 0 &&
	              strcmp(u->ha1_md5, "0123456789abcdef0123456789abcdef") == 0 &&
	              strcmp(u->ha1_sha256, "") == 0 && strcmp(u->ha1_md5_full, "") == 0 &&
	              strcmp(u->ha1_sha256_full, "") == 0 && u->nranges == 1 && u->ranges != NULL &&
	              u->restrict_sources == 1 && u->active == 1;
	return 7;
}

static void test_users_refused(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const char *md5 = "0123456789ABCDEF0123456789abcdef", *sha = md5; /* sha: too short on purpose */
	char name[SNAP_USER_MAX + 2], dom[SNAP_DOMAIN_MAX + 2], sha256[65];
	tg_range_t many[SNAP_USER_RANGES + 1], r = range_of("10.0.0.1");
	snap_user_info_t u;
	const snap_view_t *s;
	int n = 0;

	for (int i = 0; i <= SNAP_USER_RANGES; i++) {
		many[i] = r;
		many[i].first.lo += (uint64_t)i;
		many[i].last = many[i].first;
	}
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	memset(dom, 'd', sizeof(dom) - 1);
	dom[sizeof(dom) - 1] = '\0';
	memset(sha256, 'F', 64);
	sha256[64] = '\0';
	account(m, 1, 1);

	u = user_info(1, 99, "x", NULL);
	put_is(m, &u, "unknown account", "a user of an unknown account");
	u = user_info(1, 1, "", NULL);
	put_is(m, &u, "username empty", "an empty username");
	u.username = NULL;
	put_is(m, &u, "username empty", "a NULL username");
	u.username = name; /* 65 bytes */
	put_is(m, &u, "username too long", "a username of 65 bytes");
	name[SNAP_USER_MAX] = '\0';
	put_is(m, &u, NULL, "a username of 64 bytes fits");
	u = user_info(2, 1, "a:b", NULL);
	put_is(m, &u, "bad character in username", "a ':' in a username");
	u.username = "a\tb";
	put_is(m, &u, "bad character in username", "a control character in a username");
	u.username = "a\x7f";
	put_is(m, &u, "bad character in username", "DEL in a username");
	u.username = "a@b";
	put_is(m, &u, "bad character in username", "an '@' in a username (the schema refuses it too)");
	u.username = "j\xc3\xbcrgen";
	put_is(m, &u, NULL, "a UTF-8 username fits");
	u = user_info(3, 1, "x", dom); /* 254 bytes */
	put_is(m, &u, "domain too long", "a domain of 254 bytes");
	dom[SNAP_DOMAIN_MAX] = '\0';
	put_is(m, &u, NULL, "a domain of 253 bytes fits");

	u = user_info(4, 1, "h", NULL);
	u.ha1_md5 = "0123456789abcdef0123456789abcde";
	put_is(m, &u, "bad HA1: ha1_md5 is not 32 hex digits", "an MD5 HA1 of 31 digits");
	u.ha1_md5 = "0123456789abcdef0123456789abcdef0";
	put_is(m, &u, "bad HA1: ha1_md5 is not 32 hex digits", "33 digits");
	u.ha1_md5 = "0123456789abcdef0123456789abcdeg";
	put_is(m, &u, "bad HA1: ha1_md5 is not 32 hex digits", "a 'g'");
	u.ha1_md5 = md5;
	u.ha1_sha256 = sha;
	put_is(m, &u, "bad HA1: ha1_sha256 is not 64 hex digits", "a SHA-256 HA1 of 32 digits");
	u.ha1_sha256 = sha256;
	u.ha1_md5_full = md5;
	put_is(m, &u, "bad HA1: a full-URI HA1 needs a domain", "a full-URI HA1 for an any-domain user");
	u.domain = "example.com";
	u.ha1_md5_full = "xyz";
	put_is(m, &u, "bad HA1: ha1_md5_full is not 32 hex digits", "a bad full-URI MD5 HA1");
	u.ha1_md5_full = md5;
	u.ha1_sha256_full = "";
	put_is(m, &u, NULL, "upper-case hex, every HA1 with a domain, \"\" for one unset");

	u = user_info(5, 1, "r", NULL);
	u.restrict_sources = 1;
	u.ranges = many;
	u.nranges = SNAP_USER_RANGES + 1;
	put_is(m, &u, "too many ranges", "33 allowed ranges");
	u.nranges = 1;
	u.ranges = NULL;
	put_is(m, &u, "no ranges given", "a range count without ranges");
	tg_range_t bad = r;

	bad.first.lo++;
	bad.last.lo--;
	u.ranges = &bad;
	put_is(m, &u, "range end before start", "a reversed range");
	bad = r;
	bad.family = AF_UNIX;
	put_is(m, &u, "bad range family", "a range of another family");
	u.ranges = many;
	u.nranges = SNAP_USER_RANGES;
	put_is(m, &u, NULL, "32 allowed ranges fit");
	is_int(snap_model_nusers(m), 5, "only the five good users went in");

	/* A refused replace leaves the user as it was. */
	u = user_info(7, 1, "zed", NULL);
	u.ha1_md5 = md5;
	u.restrict_sources = 1;
	u.ranges = &r;
	u.nranges = 1;
	put_is(m, &u, NULL, "user 7");
	u.ha1_md5 = "nothex";
	put_is(m, &u, "bad HA1: ha1_md5 is not 32 hex digits", "user 7 with a bad HA1");
	s = publish_view(m, 0);
	const snap_user_sh_t *z = find_user(s, "zed", NULL);

	ok(z && strcmp(z->ha1_md5, "0123456789abcdef0123456789abcdef") == 0 && allowed(s, z, "10.0.0.1") &&
	           !allowed(s, z, "10.0.0.2"),
	   "... kept its HA1 (stored lower case) and its range");
	z = find_user(s, "h", "example.com");
	ok(z &&
	           strcmp(z->ha1_sha256,
	                  "ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff") == 0 &&
	           strcmp(z->ha1_md5_full, "0123456789abcdef0123456789abcdef") == 0 &&
	           z->ha1_sha256_full[0] == 0,
	   "every HA1 stored lower case, the unset one \"\"");
	z = find_user(s, name, NULL);
	ok(z && strlen(z->username) == SNAP_USER_MAX, "the 64-byte username is found");
	z = find_user(s, "x", dom);
	ok(z && strlen(z->domain) == SNAP_DOMAIN_MAX, "the user of the 253-byte domain is found");

	snap_model_foreach_user(m, count_user, &n);
	is_int(n, 6, "foreach_user visits every user");
	n = 0;
	ok(snap_model_foreach_user(m, check_user_7, &n) == 7 && n == 1,
	   "its info holds what was put, \"\" for unset strings; a nonzero return stops the walk");
	is_int(snap_model_user_del(m, 99), -1, "deleting an unknown user: -1");
	is_int(errno, ENOENT, "... ENOENT");
	snap_model_free(m);
}

static void test_users_duplicates(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	snap_user_info_t u;
	const snap_view_t *s;

	account(m, 1, 1);
	user(m, 1, 1, "alice", "example.com");
	u = user_info(2, 1, "alice", "EXAMPLE.com");
	put_is(m, &u, "another user already has this username and domain",
	       "the same username and domain under another id, whatever the case");
	u.domain = NULL;
	put_is(m, &u, NULL, "the same username for any domain is another user");
	u.id = 3;
	u.domain = "";
	put_is(m, &u, "another user already has this username and domain", "a second any-domain user");
	u = user_info(1, 1, "alice", "example.com");
	u.active = 0;
	put_is(m, &u, NULL, "the same id again replaces the user");
	put_is(m, &u, NULL, "... and an identical put is accepted");
	is_int(snap_model_nusers(m), 2, "two users");
	user(m, 1, 1, "alice", "b.example");
	u = user_info(3, 1, "alice", "example.com");
	put_is(m, &u, NULL, "a user that moved to another domain frees its name");
	snap_model_user_del(m, 2);
	u = user_info(4, 1, "alice", NULL);
	put_is(m, &u, NULL, "so does a deleted one");
	s = publish_view(m, 1);
	ok(found(s, "alice", "b.example") == 1 && found(s, "alice", "example.com") == 3 &&
	           found(s, "alice", "c.example") == 4 && s->head->nusers == 3,
	   "three alices, each found by its domain");
	snap_model_free(m);
}

static void test_users_accounts(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;
	snap_user_info_t u;

	account(m, 1, 1);
	account(m, 2, 1);
	user(m, 1, 1, "a1", NULL);
	user(m, 2, 2, "b1", NULL);
	user(m, 3, 1, "a2", NULL);
	user(m, 4, 2, "b2", "x.example");
	user(m, 5, 1, "a3", NULL);
	rule_plain(m, 1, 1, "1.2.3.4");
	publish_view(m, 1);
	is_int(snap_model_account_del(m, 1), 0, "account 1 deleted");
	is_int(snap_model_nusers(m), 2, "... its three users with it");
	u = user_info(6, 1, "a4", NULL);
	put_is(m, &u, "unknown account", "a user of the deleted account");
	s = publish_view(m, 0);
	ok(s && last.kind == SNAP_PUBLISH_DELTA && s->head->nusers == 2 && found(s, "a1", NULL) == -1 &&
	           found(s, "a2", NULL) == -1 && found(s, "a3", NULL) == -1,
	   "the next head has none of them");
	ok(found(s, "b1", NULL) == 2 && found(s, "b2", "x.example") == 4 &&
	           snap_user_account(s, find_user(s, "b1", NULL))->id == 2,
	   "the other account's users stay, with their account");
	account(m, 1, 1);
	user(m, 7, 1, "a1", NULL);
	s = publish_view(m, 1);
	account(m, 3, 1);
	user(m, 8, 3, "c1", NULL);
	s = publish_view(m, 0);
	ok(s && snap_accounts(s->head)[0].id == 3 && found(s, "c1", NULL) == 8 &&
	           snap_user_account(s, find_user(s, "c1", NULL))->id == 3 &&
	           snap_user_account(s, find_user(s, "a1", NULL))->id == 1,
	   "an account in a reused slot: its users name the slot, the new account");
	snap_model_free(m);
}

static void test_users_sweep(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	const snap_view_t *s;
	snap_user_info_t u;

	account(m, 1, 1);
	account(m, 2, 1);
	user(m, 1, 1, "alice", NULL);
	user(m, 2, 1, "bob", NULL);
	user(m, 3, 2, "carol", NULL);
	user(m, 4, 1, "dave", "x.example");
	publish_view(m, 1);

	snap_model_mark_begin(m);
	account(m, 1, 1);
	user(m, 1, 1, "alice", NULL);
	user(m, 4, 1, "dave", "y.example");
	user(m, 5, 1, "erin", NULL);
	is_int(snap_model_sweep(m), 3, "sweep: account 2 with carol, and bob, were not seen");
	s = publish_view(m, 0);
	ok(s && last.kind == SNAP_PUBLISH_COMPACTION && s->head->nusers == 3 &&
	           found(s, "alice", NULL) == 1 && found(s, "bob", NULL) == -1 &&
	           found(s, "carol", NULL) == -1 && found(s, "dave", "y.example") == 4 &&
	           found(s, "dave", "x.example") == -1 && found(s, "erin", NULL) == 5,
	   "the full load's head holds exactly the users it saw");

	/* Deleted and created again between two loads: a new id for the same name. */
	snap_model_mark_begin(m);
	account(m, 1, 1);
	u = user_info(10, 1, "alice", NULL);
	put_is(m, &u, NULL, "in a full load, a new id takes a name from a user the load has not seen");
	u.id = 11;
	put_is(m, &u, "another user already has this username and domain",
	       "... but not from one it has seen");
	user(m, 4, 1, "dave", "y.example");
	user(m, 5, 1, "erin", NULL);
	is_int(snap_model_sweep(m), 0, "the sweep finds nothing more to delete");
	s = publish_view(m, 0);
	ok(s && s->head->nusers == 3 && found(s, "alice", NULL) == 10, "alice is user 10 now");
	u.id = 12;
	put_is(m, &u, "another user already has this username and domain",
	       "outside a full load the name's holder stays");
	snap_model_free(m);
}

static void test_users_sources(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	tg_range_t three[3] = {range_of("10.0.0.0/8"), range_of("2001:db8::/32"),
	                       range_of("192.0.2.1-192.0.2.9")};
	tg_range_t twenty = range_of("20.0.0.0/8"), thirty = range_of("30.0.0.1"),
	           net = range_of("192.0.2.0/24");
	snap_user_info_t u;
	const snap_view_t *s;
	const snap_user_sh_t *any, *none, *multi, *other, *loose;

	account(m, 1, 1);
	user(m, 1, 1, "any", NULL);
	u = user_info(2, 1, "none", NULL);
	u.restrict_sources = 1;
	snap_model_user_put(m, &u, NULL);
	u = user_info(3, 1, "multi", NULL);
	u.restrict_sources = 1;
	u.ranges = three;
	u.nranges = 3;
	snap_model_user_put(m, &u, NULL);
	u = user_info(4, 1, "other", NULL);
	u.restrict_sources = 1;
	u.ranges = &twenty;
	u.nranges = 1;
	snap_model_user_put(m, &u, NULL);
	u = user_info(5, 1, "loose", NULL);
	u.ranges = &thirty;
	u.nranges = 1;
	snap_model_user_put(m, &u, NULL);
	s = publish_view(m, 1);
	any = find_user(s, "any", NULL);
	none = find_user(s, "none", NULL);
	multi = find_user(s, "multi", NULL);
	other = find_user(s, "other", NULL);
	loose = find_user(s, "loose", NULL);
	ok(any && none && multi && other && loose && s->head->nuser_ranges == 5, "five users, five ranges");
	ok(allowed(s, any, "1.2.3.4") && allowed(s, any, "::1"), "a user without restriction: any source");
	ok(!allowed(s, none, "10.0.0.1") && !allowed(s, none, "::1") && !allowed(s, none, "0.0.0.0"),
	   "restricted with no ranges: no source at all");
	ok(allowed(s, multi, "10.1.2.3") && allowed(s, multi, "10.0.0.0") &&
	           allowed(s, multi, "10.255.255.255"),
	   "restricted: inside a /8, its first and last");
	ok(!allowed(s, multi, "11.0.0.0") && !allowed(s, multi, "9.255.255.255"), "... not just outside it");
	ok(allowed(s, multi, "2001:db8::5") && !allowed(s, multi, "2001:db9::"), "an IPv6 range");
	ok(allowed(s, multi, "192.0.2.1") && allowed(s, multi, "192.0.2.9") &&
	           !allowed(s, multi, "192.0.2.10") && !allowed(s, multi, "192.0.2.0"),
	   "an a-b range, its ends and beyond");
	ok(allowed(s, multi, "::ffff:10.0.0.1") && !allowed(s, multi, "::a00:1"),
	   "v4-mapped is the v4 address; v4-compatible is not");
	ok(!allowed(s, other, "10.1.2.3") && allowed(s, other, "20.0.0.1"),
	   "another user's ranges do not leak");
	ok(allowed(s, loose, "1.2.3.4") && loose->nranges == 1,
	   "ranges of a user that does not restrict: kept, unused");

	/* Fewer ranges in place, more at the end, a hole where a user was: the next head is packed. */
	u = user_info(3, 1, "multi", NULL);
	u.restrict_sources = 1;
	u.ranges = &net;
	u.nranges = 1;
	snap_model_user_put(m, &u, NULL);
	u = user_info(2, 1, "none", NULL);
	u.restrict_sources = 1;
	u.ranges = three;
	u.nranges = 2;
	snap_model_user_put(m, &u, NULL);
	snap_model_user_del(m, 4);
	s = publish_view(m, 0);
	multi = find_user(s, "multi", NULL);
	none = find_user(s, "none", NULL);
	loose = find_user(s, "loose", NULL);
	ok(s && s->head->nuser_ranges == 4, "four ranges left, packed (%u)", s ? s->head->nuser_ranges : 0);
	ok(!allowed(s, multi, "10.1.2.3") && allowed(s, multi, "192.0.2.200"), "a user's ranges replaced");
	ok(allowed(s, none, "10.1.2.3") && allowed(s, none, "2001:db8::1") && !allowed(s, none, "192.0.2.5"),
	   "another user's ranges added");
	ok(loose && loose->nranges == 1 && find_user(s, "other", NULL) == NULL, "the rest as it was");
	snap_model_free(m);
}

/* Users and ranges past the capacity are refused, and what fits fits the head arena shm sized. */
static void test_users_capacity(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	tg_range_t many[SNAP_USER_RANGES];
	const uint32_t total = (uint32_t)SNAP_USER_RANGES_TOTAL(CAP_USERS), full = total / SNAP_USER_RANGES;
	snap_user_info_t u;
	const snap_view_t *s;
	char name[32];
	int refused = 0;
	size_t empty_bytes;

	for (int i = 0; i < SNAP_USER_RANGES; i++)
		many[i] = range_of("2001:db8::1");
	for (int i = 0; i < SNAP_USER_RANGES; i++)
		many[i].first.lo = many[i].last.lo = (uint64_t)i * 16;
	account(m, 1, 1);
	publish_view(m, 1);
	empty_bytes = last.head_bytes;
	for (int i = 0; i < CAP_USERS; i++) {
		snprintf(name, sizeof(name), "u%d", i);
		u = user_info(i + 1, 1, name, NULL);
		refused += snap_model_user_put(m, &u, NULL) < 0;
	}
	ok(refused == 0 && snap_model_nusers(m) == CAP_USERS, "%d users fit a model for %d", CAP_USERS,
	   CAP_USERS);
	u = user_info(1000, 1, "one-more", NULL);
	put_is(m, &u, "no room for another user", "one more");
	u = user_info(1, 1, "u0", "renamed.example");
	put_is(m, &u, NULL, "a full model still takes changes");
	snap_model_user_del(m, 2);
	u = user_info(1000, 1, "one-more", NULL);
	put_is(m, &u, NULL, "a delete makes room");
	s = publish_view(m, 0);
	ok(s && s->head->nusers == CAP_USERS && found(s, "one-more", NULL) == 1000 &&
	           found(s, "u0", "renamed.example") == 1 && found(s, "u63", NULL) == 64,
	   "a full user table published");
	snap_model_free(m);

	m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	account(m, 1, 1);
	for (uint32_t i = 0; i < full; i++) {
		snprintf(name, sizeof(name), "r%u", i);
		u = user_info(i + 1, 1, name, NULL);
		u.restrict_sources = 1;
		u.ranges = many;
		u.nranges = SNAP_USER_RANGES;
		refused += snap_model_user_put(m, &u, NULL) < 0;
	}
	ok(refused == 0, "%u users of %d ranges: the %u ranges %d users may carry together", full,
	   SNAP_USER_RANGES, total, CAP_USERS);
	u = user_info(500, 1, "ranged", NULL);
	u.ranges = many;
	u.nranges = 1;
	put_is(m, &u, "too many allowed source ranges in total", "one more range");
	u.nranges = 0;
	put_is(m, &u, NULL, "a user without ranges still fits");
	u = user_info(1, 1, "r0", NULL);
	u.restrict_sources = 1;
	u.ranges = many;
	u.nranges = SNAP_USER_RANGES - 1;
	put_is(m, &u, NULL, "a user with one range fewer");
	u = user_info(501, 1, "ranged2", NULL);
	u.restrict_sources = 1;
	u.ranges = many + SNAP_USER_RANGES - 1;
	u.nranges = 1;
	put_is(m, &u, NULL, "... makes room for a range elsewhere");
	s = publish_view(m, 1);
	ok(s && s->head->nuser_ranges == total, "the head holds all %u ranges (%u)", total,
	   s ? s->head->nuser_ranges : 0);
	ok(s && allowed(s, find_user(s, "ranged2", NULL), "2001:db8::1f0") &&
	           !allowed(s, find_user(s, "ranged2", NULL), "2001:db8::1e0") &&
	           allowed(s, find_user(s, "r0", NULL), "2001:db8::1e0") &&
	           !allowed(s, find_user(s, "r0", NULL), "2001:db8::1f0") &&
	           allowed(s, find_user(s, "r1", NULL), "2001:db8::1f0"),
	   "each user with its own ranges");

	/* Fill the users up as well: the fullest head the capacity allows. */
	for (uint32_t i = full + 2; i < CAP_USERS; i++) {
		snprintf(name, sizeof(name), "f%u", i);
		u = user_info(1000 + i, 1, name, "some.example.com");
		refused += snap_model_user_put(m, &u, NULL) < 0;
	}
	s = publish_view(m, 0);
	/* The bound for no users still holds an empty bucket table and SNAP_USER_RANGES_TOTAL(0) ranges. */
	size_t bound = snap_head_size_bound(CAP_ACCOUNTS, CAP_RULES, CAP_USERS) -
	               snap_head_size_bound(CAP_ACCOUNTS, CAP_RULES, 0) +
	               (sizeof(uint32_t) << SNAP_USER_BUCKET_BITS_MIN) +
	               SNAP_USER_RANGES_TOTAL(0) * sizeof(tg_range_t);
	size_t used =
	        s ? s->head->off_user_ranges + s->head->nuser_ranges * sizeof(tg_range_t) - s->head->off_users
	          : 0;

	ok(refused == 0 && s && s->head->nusers == CAP_USERS && used <= bound &&
	           last.head_bytes - empty_bytes == used - (sizeof(uint32_t) << SNAP_USER_BUCKET_BITS_MIN),
	   "every user and range the capacity allows: %zu bytes of user tables, within the bound's %zu", used,
	   bound);

	for (int i = 0; i < 2000; i++)
		snap_model_user_del(m, i);
	s = publish_view(m, 0);
	ok(s && s->head->nusers == 0 && s->head->nuser_ranges == 0 && s->head->user_bucket_bits == 4,
	   "every user deleted: the bucket table shrinks back to 16 buckets");
	snap_model_free(m);
}

/* The randomized run: users put, moved, deleted, with their accounts, and full loads, against a reference. */
enum { RU_IDS = 150, RU_ACCT = 6, RU_NAMES = 10, RU_DOMS = 4 };

static const char *ru_names[RU_NAMES] = {"alice", "bob",   "carol", "dave", "erin",
                                         "frank", "grace", "heidi", "ivan", "judy"};
static const char *ru_doms[RU_DOMS] = {NULL, "a.example", "B.Example", "c.example"};
static const char *ru_lookups[] = {NULL, "", "a.example", "A.EXAMPLE", "b.example", "c.example", "d.example"};

typedef struct ru_user {
	int live, name, dom, restrict_sources;
	int64_t account;
	unsigned nr;
	tg_range_t r[SNAP_USER_RANGES];
} ru_user_t;

typedef struct ru {
	ru_user_t u[RU_IDS]; /* by id */
	int acct_live[RU_ACCT];
	snap_model_t *m;
	long wrong, finds, found, refused, evicted;
} ru_t;

static void ru_note(ru_t *d, const char *what, int64_t id)
{
	if (d->wrong++ < 5)
		printf("# users: %s (id %lld)\n", what, (long long)id);
}

static snap_user_info_t ru_info(const ru_user_t *r, int64_t id)
{
	snap_user_info_t u = user_info(id, r->account, ru_names[r->name], ru_doms[r->dom]);

	u.restrict_sources = r->restrict_sources;
	u.ranges = r->r;
	u.nranges = r->nr;
	return u;
}

static unsigned ru_total(const ru_t *d)
{
	unsigned n = 0;

	for (int i = 0; i < RU_IDS; i++)
		n += d->u[i].live ? d->u[i].nr : 0;
	return n;
}

/* The live id holding (name, dom), or -1. */
static int ru_holder(const ru_t *d, int name, int dom)
{
	for (int i = 0; i < RU_IDS; i++)
		if (d->u[i].live && d->u[i].name == name && d->u[i].dom == dom)
			return i;
	return -1;
}

static void ru_random(ru_user_t *r)
{
	memset(r, 0, sizeof(*r));
	r->name = (int)rnd(RU_NAMES);
	r->dom = (int)rnd(RU_DOMS);
	r->account = rnd(RU_ACCT);
	r->restrict_sources = rnd(3) != 0;
	r->nr = rnd(30) == 0 ? SNAP_USER_RANGES : rnd(4);
	for (unsigned k = 0; k < r->nr; k++)
		r->r[k] = random_range();
}

static void ru_put(ru_t *d)
{
	int id = (int)rnd(RU_IDS), holder;
	ru_user_t r;
	snap_user_info_t u;
	int want, rc;

	ru_random(&r);
	holder = ru_holder(d, r.name, r.dom);
	want = d->acct_live[r.account] && (holder < 0 || holder == id) &&
	       ru_total(d) - (d->u[id].live ? d->u[id].nr : 0) + r.nr <= SNAP_USER_RANGES_TOTAL(CAP_USERS);
	u = ru_info(&r, id);
	rc = snap_model_user_put(d->m, &u, NULL);
	if ((rc == 0) != want)
		ru_note(d, rc == 0 ? "put taken, should be refused" : "put refused, should be taken", id);
	if (rc == 0) {
		r.live = 1;
		d->u[id] = r;
	} else {
		d->refused++;
	}
}

static void ru_del(ru_t *d)
{
	int id = (int)rnd(RU_IDS);

	if ((snap_model_user_del(d->m, id) == 0) != d->u[id].live)
		ru_note(d, "delete disagrees", id);
	d->u[id].live = 0;
}

static void ru_account(ru_t *d)
{
	int a = (int)rnd(RU_ACCT);

	if (rnd(4) == 0 && d->acct_live[a]) {
		snap_model_account_del(d->m, a);
		d->acct_live[a] = 0;
		for (int i = 0; i < RU_IDS; i++)
			if (d->u[i].account == a)
				d->u[i].live = 0;
		return;
	}
	d->acct_live[a] = 1;
	account(d->m, a, 1);
}

/* A full load of the reference, some users renumbered (deleted and created again), some gone. */
static void ru_full_load(ru_t *d)
{
	int order[RU_IDS], n = 0;

	snap_model_mark_begin(d->m);
	for (int a = 0; a < RU_ACCT; a++)
		if (d->acct_live[a])
			account(d->m, a, 1);
	account(d->m, 100, 1);
	rule_plain(d->m, 1, 100, "1.2.3.4");
	for (int i = 0; i < RU_IDS; i++) {
		if (!d->u[i].live)
			continue;
		if (rnd(8) == 0) {
			d->u[i].live = 0;
			continue;
		}
		if (rnd(4) == 0) {
			int to = (int)rnd(RU_IDS);

			if (!d->u[to].live) {
				d->u[to] = d->u[i];
				d->u[i].live = 0;
				d->evicted++; /* a to above i comes round again: moved twice, or gone, is fine
				               */
			}
		}
	}
	for (int i = 0; i < RU_IDS; i++)
		if (d->u[i].live)
			order[n++] = i;
	for (int i = n - 1; i > 0; i--) {
		int j = (int)rnd((uint32_t)i + 1), t = order[i];

		order[i] = order[j];
		order[j] = t;
	}
	for (int k = 0; k < n; k++) {
		snap_user_info_t u = ru_info(&d->u[order[k]], order[k]);
		const char *err = NULL;

		if (snap_model_user_put(d->m, &u, &err) < 0)
			ru_note(d, err, order[k]);
	}
	snap_model_sweep(d->m);
}

static void ru_check(ru_t *d, const snap_view_t *v)
{
	int live = 0;

	for (int i = 0; i < RU_IDS; i++)
		live += d->u[i].live;
	if (v == NULL || v->head->nusers != (uint32_t)live || snap_model_nusers(d->m) != (uint32_t)live)
		ru_note(d, "user count", live);
	for (int n = 0; v != NULL && n < RU_NAMES; n++) {
		for (size_t l = 0; l < sizeof(ru_lookups) / sizeof(ru_lookups[0]); l++) {
			const char *dom = ru_lookups[l];
			int want = -1;

			for (int k = 1; dom != NULL && k < RU_DOMS && want < 0; k++)
				if (strcasecmp(dom, ru_doms[k]) == 0)
					want = ru_holder(d, n, k);
			if (want < 0)
				want = ru_holder(d, n, 0);

			const snap_user_sh_t *u = find_user(v, ru_names[n], dom);

			d->finds++;
			if ((u ? u->id : -1) != want) {
				ru_note(d, "find disagrees", want);
				continue;
			}
			if (u == NULL)
				continue;
			d->found++;
			if (snap_user_account(v, u)->id != d->u[want].account)
				ru_note(d, "account disagrees", want);
			for (int k = 0; k < 4; k++) {
				const ru_user_t *r = &d->u[want];
				tg_ip_t ip = k == 0 && r->nr > 0 ? r->r[rnd(r->nr)].last : random_ip();
				int ok_ip = !r->restrict_sources;

				for (unsigned j = 0; j < r->nr && !ok_ip; j++)
					ok_ip = tg_range_contains(&r->r[j], &ip);
				if (snap_user_source_allowed(v, u, &ip) != ok_ip)
					ru_note(d, "allowed source disagrees", want);
			}
		}
	}
	if (v != NULL && snap_head_checksum(v->head) != v->head->checksum)
		ru_note(d, "head checksum", 0);
}

static void test_users_random(void)
{
	static ru_t d;
	const snap_view_t *v = NULL;
	long deltas = 0, compactions = 0;

	memset(&d, 0, sizeof(d));
	d.m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	for (int a = 0; a < RU_ACCT; a++) {
		d.acct_live[a] = 1;
		account(d.m, a, 1);
	}
	account(d.m, 100, 1);
	rule_plain(d.m, 1, 100, "1.2.3.4");
	for (int round = 0; round < 400; round++) {
		int steps = 1 + (int)rnd(rnd(10) == 0 ? 100 : 8);

		for (int i = 0; i < steps; i++) {
			uint32_t k = rnd(100);

			if (k < 60)
				ru_put(&d);
			else if (k < 90)
				ru_del(&d);
			else
				ru_account(&d);
		}
		if (rnd(25) == 0)
			ru_full_load(&d);
		if ((v = publish_view(d.m, rnd(40) == 0)) == NULL)
			break;
		deltas += last.kind == SNAP_PUBLISH_DELTA;
		compactions += last.kind == SNAP_PUBLISH_COMPACTION;
		ru_check(&d, v);
	}
	printf("# users: %ld publishes (%ld deltas), %ld finds (%ld found), %ld puts refused, %ld renumbered "
	       "in full loads\n",
	       deltas + compactions, deltas, d.finds, d.found, d.refused, d.evicted);
	ok(v != NULL && d.wrong == 0, "every head after random user changes agrees with the reference");
	expect(v, "1.2.3.4", 1, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 1, "... and rules still match");
	ok(deltas > 200 && compactions > 10 && d.found > 5000 && d.finds - d.found > 1000 &&
	           d.refused > 100 && d.evicted > 10,
	   "deltas, full loads, found, not found and refused all happened");
	snap_model_free(d.m);
}

/* ------------------------------------------------------------------ */
/* publication                                                         */

static int try_publish(snap_model_t *m, int base)
{
	return base ? snap_model_publish_base(m, &shm, 0, &last) : snap_model_publish(m, &shm, 0, &last);
}

static void test_publish_protocol(void)
{
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	shm_proc_sh_t *w0 = &shm.procs[SHM_PROC_WORKER(0)], *w1 = &shm.procs[SHM_PROC_WORKER(1)];
	shm_proc_sh_t *ld = &shm.procs[SHM_PROC_LOADER];
	snap_view_t v0 = {0}, v1 = {0};
	uint64_t g;

	snap_release(w0, &view);
	account(m, 1, 1);
	g = atomic_load(&shm.snapctl->generation);
	is_int(try_publish(m, 0), 0, "generation g+1 published (a compaction: a new model)");
	ok(snap_acquire(&shm, w0, &v0) == 1 && v0.head == shm.head_arena[(g + 1) & 1] &&
	           v0.head->generation == g + 1 && atomic_load(&w0->epoch) == g + 1,
	   "worker 0 holds g+1, in head arena (g+1) & 1");
	rule_plain(m, 1, 1, "1.2.3.4");
	is_int(try_publish(m, 0), 0, "g+2: a delta, into the other head arena, though worker 0 holds g+1");
	ok(v0.head->generation == g + 1 && v0.head->overlay.nentries == 0 &&
	           snap_head_checksum(v0.head) == v0.head->checksum,
	   "worker 0's head is untouched");
	is_int(try_publish(m, 0), 1, "g+3 refused (busy) while worker 0 holds g+1");
	is_int(try_publish(m, 1), 1, "... a compaction too");
	is_int(atomic_load(&shm.snapctl->generation), g + 2, "... and nothing was published");
	snap_acquire(&shm, w1, &v1);
	ok(v1.head->generation == g + 2 && v1.head->overlay.nentries == 1,
	   "worker 1 gets g+2 and its overlay");
	snap_release(w0, &v0);
	ok(atomic_load(&w0->epoch) == 0 && v0.head == NULL, "release clears the slot and the view");
	is_int(try_publish(m, 0), 0, "after release: g+3 published");
	is_int(try_publish(m, 0), 1, "g+4 refused: worker 1 holds g+2");
	atomic_store(&w1->epoch, 0); /* the master clearing a dead worker's slot */
	is_int(try_publish(m, 0), 0, "a cleared slot pins nothing: g+4 published");
	atomic_store(&ld->epoch, g + 3);
	is_int(try_publish(m, 0), 1, "the loader's own slot is honoured too");
	atomic_store(&ld->epoch, 0);

	/* Bases: a stale epoch (a reader mid-acquire) at or below the idle base's last head blocks only
	 * compactions. */
	is_int(try_publish(m, 1), 0, "g+5: a compaction, into the idle base arena");
	unsigned b_new = ((const snap_head_sh_t *)shm.head_arena[(g + 5) & 1])->base_arena;
	uint64_t last_old = atomic_load(&shm.snapctl->base_last_head[1 - b_new]);

	ok(last_old == g + 4 && atomic_load(&shm.snapctl->base_last_head[b_new]) == g + 5,
	   "base_last_head: g+4 for the old base, g+5 for the new");
	is_int(try_publish(m, 0), 0, "g+6: a delta");
	atomic_store(&w1->epoch, last_old - 2);
	is_int(try_publish(m, 1), 1,
	       "a compaction is refused while a slot holds a head that read the idle base");
	ok(snap_head_arena_free(&shm) && !snap_base_arena_free(&shm, 1 - b_new),
	   "... by the base rule alone");
	is_int(try_publish(m, 0), 0, "... while a delta goes through");
	atomic_store(&w1->epoch, 0);
	is_int(try_publish(m, 1), 0, "cleared: the compaction goes through");
	ok(snap_acquire(&shm, w0, &v0) == 1 && v0.head->generation == g + 8 && v0.base->generation == g + 8 &&
	           v0.base == shm.base_arena[1 - b_new],
	   "acquire sees g+8 and its new base");
	snap_release(w0, &v0);

	/* A loader that died between storing base_last_head and publishing, then a new one. */
	snap_model_t *fresh = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	unsigned idle = 1 - ((const snap_head_sh_t *)shm.head_arena[(g + 8) & 1])->base_arena;

	atomic_store(&shm.snapctl->base_last_head[idle], g + 9);
	account(fresh, 1, 1);
	is_int(try_publish(fresh, 0), 0,
	       "a restarted loader compacts into the base its predecessor left half-done");
	ok(last.kind == SNAP_PUBLISH_COMPACTION && atomic_load(&shm.snapctl->base_last_head[idle]) == g + 9,
	   "... generation g+9, in that base arena");
	snap_model_free(fresh);
	snap_model_free(m);
}

/* Reader and writer racing: a reader must never see its view change. */
typedef struct race {
	atomic_int stop;
	long reads, torn;
} race_t;

static void *race_reader(void *arg)
{
	race_t *rc = arg;
	shm_proc_sh_t *slot = &shm.procs[SHM_PROC_WORKER(1)];
	tg_ip_t ip = ip_of("1.2.3.4");
	snap_view_t v;

	while (!atomic_load(&rc->stop)) {
		if (!snap_acquire(&shm, slot, &v))
			continue;

		uint64_t g = v.head->generation;
		snap_match_t m;

		for (int i = 0; i < 8; i++) {
			if (snap_lookup(&v, &ip, 5060, NULL, 0, SNAP_DIR_INGRESS, &m) != SNAP_MATCH ||
			    m.rule->id != (int64_t)g)
				rc->torn++;
		}
		if (v.head->generation != g || snap_head_checksum(v.head) != v.head->checksum ||
		    v.base->generation != v.head->base_generation ||
		    snap_base_checksum(v.base) != v.base->checksum)
			rc->torn++;
		rc->reads++;
		snap_release(slot, &v);
	}
	return NULL;
}

/* Generation g: 1.2.3.4 belongs to a rule whose id is g, so readers can tell. */
static int publish_gen(snap_model_t *m, int64_t *prev)
{
	int64_t next = (int64_t)atomic_load(&shm.snapctl->generation) + 1;
	int rc;

	if (*prev != next) {
		snap_model_rule_del(m, *prev);
		rule_plain(m, next, 1, "1.2.3.4");
		*prev = next;
	}
	rc = snap_model_publish(m, &shm, 0, &last);
	if (rc == 0 && next % 50 == 0)
		rule_plain(m, 1000000 + next, 1, "10.0.0.0/8");
	return rc;
}

/* What the loader does on a full load: only the current rule survives, and the next publish compacts. */
static void full_load(snap_model_t *m, int64_t current)
{
	snap_model_mark_begin(m);
	account(m, 1, 1);
	rule_plain(m, current, 1, "1.2.3.4");
	snap_model_sweep(m);
}

static void test_publish_race(void)
{
	race_t rc = {0};
	pthread_t th;
	long published = 0, refused = 0, compactions = 0;
	snap_model_t *m = snap_model_new(CAP_ACCOUNTS, CAP_RULES, CAP_USERS);
	int64_t prev = 0;
	uint64_t until_ms = tg_now_ms() + 1500;

	snap_release(&shm.procs[SHM_PROC_WORKER(0)], &view);
	account(m, 1, 1);
	while (publish_gen(m, &prev) != 0)
		;
	pthread_create(&th, NULL, race_reader, &rc);
	/* Each publish waits for the reader to move on, so a slow machine gets fewer: bounded by time too. */
	while (published < 20000 && (published < 500 || tg_now_ms() < until_ms)) {
		if (published % 97 == 0)
			full_load(m, prev);
		if (publish_gen(m, &prev) == 0) {
			published++;
			compactions += last.kind == SNAP_PUBLISH_COMPACTION;
		} else {
			refused++;
		}
		if (refused % 64 == 63)
			sched_yield();
	}
	atomic_store(&rc.stop, 1);
	pthread_join(th, NULL);
	printf("# race: %ld published (%ld compactions), %ld refused while held, %ld reads\n", published,
	       compactions, refused, rc.reads);
	ok(rc.reads > 0 && rc.torn == 0, "a reader never sees its view rewritten (%ld reads, %ld torn)",
	   rc.reads, rc.torn);
	ok(compactions > 3 && compactions < published, "deltas and compactions both raced the reader");
	snap_model_free(m);
}

static void make_shm(shm_t *sh, uint32_t cap_accounts, uint32_t cap_rules)
{
	tg_config_t cfg;

	tg_config_defaults(&cfg);
	cfg.workers = 2;
	cfg.cap_accounts = cap_accounts;
	cfg.cap_ip_rules = cap_rules;
	cfg.cap_sip_users = CAP_USERS;
	if (shm_create(sh, &cfg) < 0) {
		printf("Bail out! shm_create failed\n");
		exit(1);
	}
}

int main(void)
{
	tg_log_set_level(TG_LOG_WARN); /* shm_created is info */
	make_shm(&shm, CAP_ACCOUNTS, CAP_RULES);
	make_shm(&shm2, CAP_ACCOUNTS, CAP_RULES);
	test_layout();
	test_basic_in_base();
	test_basic_in_overlay();
	test_basic_split();
	test_whole_space();
	test_model_errors();
	test_delta_semantics();
	test_account_slots();
	test_mark_sweep();
	test_compaction_triggers();
	test_space();
	test_checksum();
	test_policy();
	test_rule_limits();
	test_policy_refused();
	test_policy_pool();
	test_random_cross_check();
	test_bucket_edges();
	test_random_deltas();
	test_users_find();
	test_users_refused();
	test_users_duplicates();
	test_users_accounts();
	test_users_sweep();
	test_users_sources();
	test_users_capacity();
	test_users_random();
	test_publish_protocol();
	test_publish_race();
	snap_release(&shm.procs[SHM_PROC_WORKER(0)], &view);
	snap_release(&shm2.procs[SHM_PROC_WORKER(0)], &view2);
	shm_destroy(&shm);
	shm_destroy(&shm2);
	return done_testing();
}
