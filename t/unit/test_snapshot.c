/*
 * shm/snapshot.c: which rule a source gets (most specific wins, the
 * refusals a customer would see), the arena layout limits, and the
 * two-arena publish protocol, on a fake shared-memory segment made from
 * one malloc'ed region, with a reader thread racing a writer.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "lib/addr.h"
#include "shm/snapshot.h"
#include "t/unit/tap.h"

#define ARENA_SIZE (64u << 20)

static void *arena_a, *arena_b;

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

static void account(snap_builder_t *b, int64_t id, int active)
{
	char name[32];
	const char *err = NULL;

	snprintf(name, sizeof(name), "acct%lld", (long long)id);
	if (snap_builder_account(b, id, name, active, 0, 0, &err) < 0)
		printf("# test bug: account %lld: %s\n", (long long)id, err);
}

static void rule(snap_builder_t *b, int64_t id, int64_t acct, const char *range, uint16_t port,
                 const char *prefix, int active, unsigned dir)
{
	tg_range_t r = range_of(range);
	const char *err = NULL;

	if (snap_builder_rule(b, id, acct, &r, port, prefix, active, dir, &err) < 0)
		printf("# test bug: rule %lld: %s\n", (long long)id, err);
}

/* Simple rule: active, any port, no prefix, both directions. */
static void rule_plain(snap_builder_t *b, int64_t id, int64_t acct, const char *range)
{
	rule(b, id, acct, range, 0, "", 1, SNAP_DIR_BOTH);
}

static const snap_sh_t *build(snap_builder_t *b, void *arena)
{
	size_t n = snap_builder_write(b, arena, ARENA_SIZE, 1, 0);

	if (n == 0)
		printf("# build failed: errno %d\n", errno);
	return n ? arena : NULL;
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
static void expect(const snap_sh_t *s, const char *ip, uint16_t port, const char *user, unsigned dir,
                   int want, int64_t want_rule, const char *what)
{
	tg_ip_t a = ip_of(ip);
	snap_match_t m;

	if (s == NULL) {
		ok(0, "%s: no snapshot", what);
		return;
	}

	int got = snap_lookup(s, &a, port, user, user ? strlen(user) : 0, dir, &m);
	int64_t got_rule = m.rule ? m.rule->id : -1;
	int same = got == want && (want == SNAP_NO_ADDRESS || want == SNAP_NO_FIT || got_rule == want_rule);

	ok(same, "%s: %s:%u user %s -> %s rule %lld", what, ip, port, user ? user : "(none)",
	   result_name(want), (long long)want_rule);
	if (!same)
		printf("#   got %s rule %lld\n", result_name(got), (long long)got_rule);
}

static void test_basic_matching(void)
{
	snap_builder_t *b = snap_builder_new();
	const snap_sh_t *s;

	for (int i = 1; i <= 9; i++)
		account(b, i, 1);
	account(b, 100, 0); /* inactive */
	rule_plain(b, 1, 1, "1.2.3.4");
	rule_plain(b, 10, 1, "10.0.0.0/8");
	rule_plain(b, 11, 2, "10.1.0.0/16");
	rule_plain(b, 12, 3, "10.1.2.0/24");
	rule_plain(b, 20, 1, "11.1.1.1");
	rule(b, 21, 2, "11.1.1.1", 5070, "", 1, SNAP_DIR_BOTH);
	rule_plain(b, 22, 3, "11.2.2.2");
	rule(b, 23, 4, "11.2.2.0/24", 5080, "", 1, SNAP_DIR_BOTH);
	rule(b, 30, 1, "12.3.3.3", 0, "99", 1, SNAP_DIR_BOTH);
	rule(b, 31, 2, "12.3.3.3", 0, "9912", 1, SNAP_DIR_BOTH);
	rule_plain(b, 32, 3, "12.3.3.3");
	rule(b, 40, 4, "13.4.4.4", 0, "11", 1, SNAP_DIR_BOTH);
	rule(b, 41, 5, "13.4.4.4", 0, "22", 1, SNAP_DIR_BOTH);
	rule(b, 50, 1, "14.5.5.5", 5060, "", 1, SNAP_DIR_BOTH);
	rule_plain(b, 60, 1, "15.6.6.0/24");
	rule_plain(b, 61, 2, "15.6.6.6");
	rule(b, 62, 2, "15.6.6.7", 0, "", 0, SNAP_DIR_BOTH);
	rule(b, 63, 2, "15.6.7.7", 0, "", 0, SNAP_DIR_BOTH);
	rule_plain(b, 70, 100, "16.7.7.7");
	rule_plain(b, 71, 1, "16.7.7.0/24");
	rule(b, 80, 1, "17.8.8.8", 0, "", 1, SNAP_DIR_INGRESS);
	rule(b, 81, 2, "17.8.8.8", 0, "", 1, SNAP_DIR_EGRESS);
	rule(b, 82, 2, "17.8.8.9", 0, "", 1, SNAP_DIR_EGRESS);
	rule_plain(b, 90, 1, "18.9.9.10-18.9.9.20");
	rule_plain(b, 91, 1, "2001:db8::/32");
	rule_plain(b, 92, 1, "2001:db8:1::10-2001:db8:1::20");
	s = build(b, arena_a);
	if (s == NULL) {
		snap_builder_free(b);
		return;
	}
	is_int(s->nrules, snap_builder_nrules(b), "every rule is in the rules array");

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
	snap_builder_free(b);
}

static void test_whole_space(void)
{
	snap_builder_t *b = snap_builder_new();
	const snap_sh_t *s;

	account(b, 1, 1);
	rule_plain(b, 1, 1, "::/0");
	rule_plain(b, 2, 1, "::ffff:0:0/96");
	rule_plain(b, 3, 1,
	           "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff0-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	rule_plain(b, 4, 1, "::-::3");
	rule_plain(b, 5, 1, "2001:db8::/64");
	s = build(b, arena_a);
	if (s == NULL) {
		snap_builder_free(b);
		return;
	}
	const unsigned in = SNAP_DIR_INGRESS;

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
	ok(s->nivals == 7,
	   "seven intervals: ::, ::4, the v4 space, after it, the /64, after it, the top (got %u)",
	   s->nivals);
	snap_builder_free(b);

	/* A rule ending at the top with nothing else, and an empty builder. */
	b = snap_builder_new();
	account(b, 1, 1);
	rule_plain(b, 1, 1, "ffff::/16");
	s = build(b, arena_a);
	expect(s, "ffff::", 1, NULL, in, SNAP_MATCH, 1, "only a rule at the top: first");
	expect(s, "fffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, NULL, in, SNAP_NO_ADDRESS, 0, "below it");
	snap_builder_free(b);

	b = snap_builder_new();
	s = build(b, arena_a);
	ok(s != NULL && s->nrules == 0 && s->nivals == 1, "an empty builder gives one empty interval");
	expect(s, "1.2.3.4", 1, NULL, in, SNAP_NO_ADDRESS, 0, "empty snapshot: no address");
	snap_builder_free(b);
}

static void test_builder_errors(void)
{
	snap_builder_t *b = snap_builder_new();
	tg_range_t r = range_of("1.2.3.4");
	const char *err = NULL;
	char longname[SNAP_NAME_MAX + 1];
	char longprefix[SNAP_PREFIX_MAX + 1];

	memset(longname, 'n', SNAP_NAME_MAX);
	longname[SNAP_NAME_MAX] = '\0';
	memset(longprefix, '1', SNAP_PREFIX_MAX);
	longprefix[SNAP_PREFIX_MAX] = '\0';

	is_int(snap_builder_account(b, 1, "one", 1, 10, 5, &err), 0, "account added");
	is_int(snap_builder_account(b, 1, "again", 1, 0, 0, &err), -1, "duplicate account id refused");
	is_str(err, "duplicate account id", "... with a reason");
	is_int(snap_builder_account(b, 2, longname, 1, 0, 0, &err), -1, "name of 64 bytes refused");
	is_str(err, "account name too long", "... with a reason");
	longname[SNAP_NAME_MAX - 1] = '\0';
	is_int(snap_builder_account(b, 2, longname, 1, 0, 0, &err), 0, "name of 63 bytes fits");
	is_int(snap_builder_naccounts(b), 2, "two accounts");

	is_int(snap_builder_rule(b, 1, 99, &r, 0, "", 1, SNAP_DIR_BOTH, &err), -1, "unknown account refused");
	is_str(err, "unknown account", "... with a reason");
	is_int(snap_builder_rule(b, 1, 1, &r, 0, longprefix, 1, SNAP_DIR_BOTH, &err), -1,
	       "long prefix refused");
	is_str(err, "tech prefix too long", "... with a reason");
	is_int(snap_builder_rule(b, 1, 1, &r, 0, "", 1, 0, &err), -1, "direction 0 refused");
	is_str(err, "bad direction", "... with a reason");
	is_int(snap_builder_rule(b, 1, 1, &r, 0, "", 1, 4, &err), -1, "direction 4 refused");
	tg_range_t rev = r;

	rev.first.lo++;
	is_int(snap_builder_rule(b, 1, 1, &rev, 0, "", 1, SNAP_DIR_BOTH, &err), -1, "reversed range refused");
	is_str(err, "range end before start", "... with a reason");
	rev = r;
	rev.family = AF_UNIX;
	is_int(snap_builder_rule(b, 1, 1, &rev, 0, "", 1, SNAP_DIR_BOTH, &err), -1, "bad family refused");
	longprefix[SNAP_PREFIX_MAX - 1] = '\0';
	is_int(snap_builder_rule(b, 1, 1, &r, 0, longprefix, 1, SNAP_DIR_BOTH, &err), 0,
	       "31-char prefix fits");
	is_int(snap_builder_rule(b, 1, 2, &r, 0, "", 1, SNAP_DIR_BOTH, &err), -1,
	       "duplicate rule id refused");
	is_str(err, "duplicate rule id", "... with a reason");
	is_int(snap_builder_rule(b, 2, 2, &r, 0, NULL, 1, SNAP_DIR_BOTH, NULL), 0,
	       "NULL prefix and err are fine");
	is_int(snap_builder_nrules(b), 2, "two rules");

	const snap_sh_t *s = build(b, arena_a);

	ok(s && s->naccounts == 2 && snap_accounts(s)[0].max_channels == 10 &&
	           snap_accounts(s)[0].max_cps == 5 && strcmp(snap_accounts(s)[1].name, longname) == 0,
	   "accounts are written in the order added, with their limits");
	ok(s && snap_rules(s)[0].id == 1 && snap_rules(s)[0].prefix_len == SNAP_PREFIX_MAX - 1 &&
	           snap_rules(s)[1].account == 1,
	   "rules are written in the order added, with account indices");
	snap_builder_free(b);
	snap_builder_free(NULL);
}

static snap_builder_t *sample_builder(int nrules)
{
	snap_builder_t *b = snap_builder_new();
	char text[64];

	account(b, 1, 1);
	account(b, 2, 1);
	for (int i = 0; i < nrules; i++) {
		snprintf(text, sizeof(text), "10.%d.%d.%d", i >> 16 & 255, i >> 8 & 255, i & 255);
		rule(b, i + 1, 1 + i % 2, text, i % 3 ? 0 : 5060, i % 5 ? "" : "44", 1, SNAP_DIR_BOTH);
	}
	rule_plain(b, nrules + 1, 1, "10.0.0.0/8");
	return b;
}

static void test_space(void)
{
	snap_builder_t *b = sample_builder(10000);
	size_t bound = snap_size_bound(2, 10001);
	size_t used;

	used = snap_builder_write(b, arena_a, ARENA_SIZE, 1, 0);
	ok(used > 0 && used <= bound, "10k /32s in a /8 fit the bound (%zu <= %zu)", used, bound);
	ok(used % 8 == 0, "size is 8-byte aligned");
	errno = 0;
	is_int(snap_builder_write(b, arena_b, used - 1, 1, 0), 0, "one byte short: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	is_int(snap_builder_write(b, arena_b, used, 1, 0), used, "exactly enough: written");
	errno = 0;
	is_int(snap_builder_write(b, arena_b, 64, 1, 0), 0, "smaller than a header: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	errno = 0;
	is_int(snap_builder_write(b, arena_b, sizeof(snap_sh_t) + 1000, 1, 0), 0,
	       "rules do not fit: refused");
	is_int(errno, ENOSPC, "... with ENOSPC");
	snap_builder_free(b);

	/* Heavily overlapping rules outgrow the bound and are refused, not overrun. */
	b = snap_builder_new();
	account(b, 1, 1);
	for (int i = 0; i < 300; i++) {
		char text[64];

		snprintf(text, sizeof(text), "20.0.%d.%d-20.0.%d.%d", i / 256, i % 256, (i + 300) / 256,
		         (i + 300) % 256);
		rule(b, i + 1, 1, text, 0, "7", 1, SNAP_DIR_BOTH);
	}
	bound = snap_size_bound(1, 300);
	errno = 0;
	is_int(snap_builder_write(b, arena_b, bound, 1, 0), 0,
	       "300 mutually overlapping ranges exceed the bound");
	is_int(errno, ENOSPC, "... refused with ENOSPC");
	ok(snap_builder_write(b, arena_b, ARENA_SIZE, 1, 0) > bound, "... and fit a larger arena");
	snap_builder_free(b);
}

static void test_checksum(void)
{
	snap_builder_t *b1 = sample_builder(3000), *b2 = sample_builder(3000);
	size_t n1, n2;

	memset(arena_a, 0xaa, 1 << 20);
	memset(arena_b, 0x55, 1 << 20);
	n1 = snap_builder_write(b1, arena_a, ARENA_SIZE, 7, 1234);
	n2 = snap_builder_write(b2, arena_b, ARENA_SIZE, 7, 1234);

	const snap_sh_t *s1 = arena_a, *s2 = arena_b;

	ok(n1 == n2 && memcmp(arena_a, arena_b, n1) == 0, "same rules, same bytes, whatever the arena held");
	ok(s1->checksum == s2->checksum && s1->checksum != 0, "same checksum");
	ok(snap_checksum(s1) == s1->checksum, "checksum verifies");
	ok(s1->generation == 7 && s1->built_ms == 1234 && s1->magic == SNAP_MAGIC,
	   "header carries generation and time");
	is_int(snap_builder_write(b1, arena_b, ARENA_SIZE, 8, 99), n1, "rewrite with another generation");
	ok(s2->checksum == s1->checksum, "checksum does not cover the header");
	((unsigned char *)arena_b)[n1 - 1] ^= 1;
	ok(snap_checksum(s2) != s2->checksum, "a flipped byte is detected");
	snap_builder_free(b1);
	snap_builder_free(b2);
}

/* ------------------------------------------------------------------ */
/* randomized cross-check against a linear scan                        */

typedef struct ref_rule {
	int64_t id;
	int64_t account;
	tg_range_t r;
	uint16_t port;
	char prefix[8];
	int active;
	unsigned dir;
} ref_rule_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 11) % n;
}

/* The spec, written out the slow way: is a more specific than b? */
static int ref_better(const ref_rule_t *a, const ref_rule_t *b)
{
	int ab = tg_range_prefix_bits(&a->r), bb = tg_range_prefix_bits(&b->r);
	uint64_t asz = a->r.last.lo - a->r.first.lo, bsz = b->r.last.lo - b->r.first.lo;

	if ((a->port != 0) != (b->port != 0))
		return a->port != 0;
	if (strlen(a->prefix) != strlen(b->prefix))
		return strlen(a->prefix) > strlen(b->prefix);
	if (ab != bb)
		return ab > bb;
	if (asz != bsz) /* ranges here stay within one 64-bit half */
		return asz < bsz;
	return a->id < b->id;
}

static int ref_lookup(const ref_rule_t *rules, int n, const int *acct_active, const tg_ip_t *ip,
                      uint16_t port, const char *user, unsigned dir, int64_t *rule_id)
{
	const ref_rule_t *best = NULL;
	int usable = 0;

	for (int i = 0; i < n; i++) {
		const ref_rule_t *r = &rules[i];
		size_t plen = strlen(r->prefix);

		if (!r->active || !(r->dir & dir) || !tg_range_contains(&r->r, ip))
			continue;
		usable = 1;
		if (r->port && r->port != port)
			continue;
		if (user && plen && (strlen(user) < plen || memcmp(user, r->prefix, plen) != 0))
			continue;
		if (best == NULL || ref_better(r, best))
			best = r;
	}
	if (best) {
		*rule_id = best->id;
		return acct_active[best->account] ? SNAP_MATCH : SNAP_ACCOUNT_INACTIVE;
	}
	return usable ? SNAP_NO_FIT : SNAP_NO_ADDRESS;
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

static void test_random_cross_check(void)
{
	enum { NACCT = 50, NRULES = 2000, NLOOKUPS = 20000 };
	static const char *prefixes[] = {"", "", "", "", "1", "12", "123", "9"};
	static const uint16_t ports[] = {0, 0, 0, 0, 5060, 5070};
	static const char *users[] = {NULL, "", "1234", "12", "9", "5", "123"};
	static ref_rule_t rules[NRULES];
	int acct_active[NACCT];
	snap_builder_t *b = snap_builder_new();
	int mismatches = 0, counts[4] = {0};

	for (int a = 0; a < NACCT; a++) {
		acct_active[a] = rnd(10) != 0;
		account(b, a, acct_active[a]);
	}
	for (int i = 0; i < NRULES; i++) {
		ref_rule_t *r = &rules[i];

		r->id = 1000 + rnd(1000000) * 2 + 1 + i * 2000000LL; /* unique, not in insertion order */
		r->id = i % 2 ? r->id : -r->id;
		r->account = rnd(NACCT);
		r->r = random_range();
		r->port = ports[rnd(6)];
		strcpy(r->prefix, prefixes[rnd(8)]);
		r->active = rnd(10) != 0;
		r->dir = 1 + rnd(3);
		if (snap_builder_rule(b, r->id, r->account, &r->r, r->port, r->prefix, r->active, r->dir,
		                      NULL) < 0)
			printf("# test bug: random rule %d refused\n", i);
	}

	const snap_sh_t *s = build(b, arena_a);

	for (int i = 0; s && i < NLOOKUPS; i++) {
		tg_ip_t ip = random_ip();
		uint16_t port = rnd(2) ? 5060 : 5070;
		const char *user = users[rnd(7)];
		unsigned dir = 1 + rnd(2);
		int64_t want_id = -1;
		int want = ref_lookup(rules, NRULES, acct_active, &ip, port, user, dir, &want_id);
		snap_match_t m;
		int got = snap_lookup(s, &ip, port, user, user ? strlen(user) : 0, dir, &m);
		int same = got == want && (m.rule ? m.rule->id : -1) == (m.rule ? want_id : -1);

		if (got == SNAP_MATCH || got == SNAP_ACCOUNT_INACTIVE)
			same = same && m.rule && m.rule->id == want_id &&
			       m.account == &snap_accounts(s)[m.rule->account];
		counts[want]++;
		if (!same && mismatches++ < 5) {
			char text[64];

			printf("# mismatch at %s port %u user %s dir %u: got %s %lld, want %s %lld\n",
			       tg_ip_format(&ip, text, sizeof(text)), port, user ? user : "(null)", dir,
			       result_name(got), (long long)(m.rule ? m.rule->id : -1), result_name(want),
			       (long long)want_id);
		}
	}
	ok(s != NULL && mismatches == 0, "%d random lookups over %d random rules agree with a linear scan",
	   NLOOKUPS, NRULES);
	printf("# outcomes: %d match, %d no address, %d no fit, %d account inactive; %u intervals, %u "
	       "candidates\n",
	       counts[0], counts[1], counts[2], counts[3], s ? s->nivals : 0, s ? s->ncands : 0);
	ok(counts[0] > 1000 && counts[1] > 1000 && counts[2] > 100 && counts[3] > 100,
	   "the random mix exercises every outcome");
	snap_builder_free(b);
}

/* ------------------------------------------------------------------ */
/* publication                                                         */

enum { NWORKERS = 2, FAKE_ARENA = 1 << 20 };

static void *fake_region;

/* A shm_t carved from one malloc'ed region, as shm_create would lay it out. */
static void fake_shm(shm_t *shm)
{
	size_t procs = ((size_t)(1 + NWORKERS) * sizeof(shm_proc_sh_t) + 63) & ~(size_t)63;
	size_t hdr = (sizeof(shm_header_sh_t) + 63) & ~(size_t)63;
	size_t total = hdr + procs + sizeof(shm_snapctl_sh_t) + 2 * (size_t)FAKE_ARENA;
	unsigned char *p;

	fake_region = aligned_alloc(64, total);
	memset(fake_region, 0, total);
	p = fake_region;
	memset(shm, 0, sizeof(*shm));
	shm->base = p;
	shm->size = total;
	shm->hdr = (shm_header_sh_t *)p;
	shm->hdr->magic = SHM_MAGIC;
	shm->hdr->nworkers = NWORKERS;
	shm->hdr->nprocs = 1 + NWORKERS;
	shm->procs = (shm_proc_sh_t *)(p + hdr);
	shm->snapctl = (shm_snapctl_sh_t *)(p + hdr + procs);
	shm->arena[0] = p + hdr + procs + sizeof(shm_snapctl_sh_t);
	shm->arena[1] = (unsigned char *)shm->arena[0] + FAKE_ARENA;
	shm->arena_size = FAKE_ARENA;
}

/* Generation g: 1.2.3.4 belongs to a rule whose id is g, so readers can tell. */
static int publish_gen(shm_t *shm)
{
	uint64_t next = 0;
	void *arena = snap_arena_for_next(shm, &next);

	if (arena == NULL)
		return -1;

	snap_builder_t *b = snap_builder_new();

	account(b, 1, 1);
	rule_plain(b, (int64_t)next, 1, "1.2.3.4");
	rule_plain(b, (int64_t)next + 1000000, 1, "10.0.0.0/8");
	if (snap_builder_write(b, arena, shm->arena_size, next, 0) == 0)
		printf("# publish_gen: write failed\n");
	snap_builder_free(b);
	snap_publish(shm, next);
	return 0;
}

static void test_publish_protocol(void)
{
	shm_t shm;
	shm_proc_sh_t *w0, *w1;
	const snap_sh_t *s0, *s1;
	uint64_t next = 0;

	fake_shm(&shm);
	w0 = &shm.procs[SHM_PROC_WORKER(0)];
	w1 = &shm.procs[SHM_PROC_WORKER(1)];

	ok(snap_acquire(&shm, w0) == NULL, "nothing published: acquire gives NULL");
	ok(snap_arena_for_next(&shm, &next) == shm.arena[1] && next == 1, "generation 1 goes to arena 1");
	is_int(publish_gen(&shm), 0, "generation 1 published");
	s0 = snap_acquire(&shm, w0);
	ok(s0 == shm.arena[1] && s0->generation == 1 && atomic_load(&w0->epoch) == 1,
	   "worker 0 holds generation 1");
	expect(s0, "1.2.3.4", 5060, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 1, "lookup in generation 1");
	ok(snap_arena_for_next(&shm, &next) == shm.arena[0] && next == 2,
	   "generation 2 goes to arena 0, never used, though worker 0 holds 1");
	is_int(publish_gen(&shm), 0, "generation 2 published");
	ok(snap_arena_for_next(&shm, &next) == NULL, "generation 3 refused while worker 0 holds 1");
	expect(s0, "1.2.3.4", 5060, NULL, SNAP_DIR_INGRESS, SNAP_MATCH, 1,
	       "worker 0 still reads generation 1");
	s1 = snap_acquire(&shm, w1);
	ok(s1 == shm.arena[0] && s1->generation == 2, "worker 1 gets generation 2");
	ok(snap_arena_for_next(&shm, &next) == NULL, "still refused: worker 0 has not released");
	snap_release(w0);
	is_int(atomic_load(&w0->epoch), 0, "release clears the slot");
	ok(snap_arena_for_next(&shm, &next) == shm.arena[1] && next == 3,
	   "after release: arena 1 for generation 3");
	is_int(publish_gen(&shm), 0, "generation 3 published");
	ok(snap_arena_for_next(&shm, &next) == NULL, "generation 4 refused: worker 1 holds 2");
	atomic_store(&w1->epoch, 0); /* the master clearing a dead worker's slot */
	ok(snap_arena_for_next(&shm, &next) != NULL && next == 4, "a cleared slot pins nothing");
	atomic_store(&shm.procs[SHM_PROC_LOADER].epoch, 2);
	ok(snap_arena_for_next(&shm, &next) == NULL, "the loader's own slot is honoured too");
	atomic_store(&shm.procs[SHM_PROC_LOADER].epoch, 0);
	s0 = snap_acquire(&shm, w0);
	ok(s0 == shm.arena[1] && s0->generation == 3 && atomic_load(&w0->epoch) == 3,
	   "acquire sees generation 3");
	snap_release(w0);
	free(fake_region);
}

/* Reader and writer racing: a reader must never see its snapshot change. */
typedef struct race {
	shm_t *shm;
	atomic_int stop;
	long reads, torn;
} race_t;

static void *race_reader(void *arg)
{
	race_t *rc = arg;
	shm_proc_sh_t *slot = &rc->shm->procs[SHM_PROC_WORKER(0)];
	tg_ip_t ip = ip_of("1.2.3.4");

	while (!atomic_load(&rc->stop)) {
		const snap_sh_t *s = snap_acquire(rc->shm, slot);

		if (s == NULL)
			continue;

		uint64_t g = s->generation;
		snap_match_t m;

		for (int i = 0; i < 8; i++) {
			if (snap_lookup(s, &ip, 5060, NULL, 0, SNAP_DIR_INGRESS, &m) != SNAP_MATCH ||
			    m.rule->id != (int64_t)g)
				rc->torn++;
		}
		if (s->generation != g || snap_checksum(s) != s->checksum)
			rc->torn++;
		rc->reads++;
		snap_release(slot);
	}
	return NULL;
}

static void test_publish_race(void)
{
	shm_t shm;
	race_t rc = {.shm = &shm};
	pthread_t th;
	long published = 0, refused = 0;

	fake_shm(&shm);
	publish_gen(&shm);
	published++;
	pthread_create(&th, NULL, race_reader, &rc);
	while (published < 20000) {
		if (publish_gen(&shm) == 0)
			published++;
		else
			refused++;
		if (refused % 64 == 63)
			sched_yield();
	}
	atomic_store(&rc.stop, 1);
	pthread_join(th, NULL);
	printf("# race: %ld published, %ld refused while held, %ld reads\n", published, refused, rc.reads);
	ok(rc.reads > 0 && rc.torn == 0, "a reader never sees its snapshot rewritten (%ld reads, %ld torn)",
	   rc.reads, rc.torn);
	free(fake_region);
}

int main(void)
{
	arena_a = aligned_alloc(64, ARENA_SIZE);
	arena_b = aligned_alloc(64, ARENA_SIZE);
	test_basic_matching();
	test_whole_space();
	test_builder_errors();
	test_space();
	test_checksum();
	test_random_cross_check();
	test_publish_protocol();
	test_publish_race();
	free(arena_a);
	free(arena_b);
	return done_testing();
}
