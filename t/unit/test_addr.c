/*
 * lib/addr.c: every notation an operator may type for a rule or an
 * endpoint, every one we refuse and why, and the 128-bit arithmetic the
 * rule index relies on (containment, prefix bits, v4 inside ::ffff:0:0/96).
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "lib/addr.h"
#include "t/unit/tap.h"

/* Parse s and check it yields [want_first, want_last] of want_family. */
static void range_is(const char *s, const char *want_first, const char *want_last, int want_family)
{
	tg_range_t r;
	const char *err = NULL;
	char a[64], b[64];

	if (tg_range_parse(s, &r, &err) < 0) {
		ok(0, "range \"%s\" parses", s);
		printf("#   error: %s\n", err);
		return;
	}
	tg_ip_format(&r.first, a, sizeof(a));
	tg_ip_format(&r.last, b, sizeof(b));
	ok(strcmp(a, want_first) == 0 && strcmp(b, want_last) == 0 && r.family == want_family,
	   "range \"%s\" is %s - %s", s, want_first, want_last);
	if (strcmp(a, want_first) != 0 || strcmp(b, want_last) != 0)
		printf("#   got %s - %s\n", a, b);
}

static void range_refused(const char *s, const char *want_err)
{
	tg_range_t r;
	const char *err = NULL;
	int rc = tg_range_parse(s, &r, &err);

	ok(rc == -1 && err != NULL && strcmp(err, want_err) == 0, "range \"%s\" refused: %s", s, want_err);
	if (rc != -1 || err == NULL || strcmp(err, want_err) != 0)
		printf("#   rc %d, error \"%s\"\n", rc, err ? err : "(null)");
}

static void test_ranges_v4(void)
{
	range_is("1.2.3.4", "1.2.3.4", "1.2.3.4", AF_INET);
	range_is("  1.2.3.4\t", "1.2.3.4", "1.2.3.4", AF_INET);
	range_is("1.2.3.0/24", "1.2.3.0", "1.2.3.255", AF_INET);
	range_is("1.2.3.77/24", "1.2.3.0", "1.2.3.255", AF_INET);
	range_is("1.2.3.4/32", "1.2.3.4", "1.2.3.4", AF_INET);
	range_is("1.2.3.4/0", "0.0.0.0", "255.255.255.255", AF_INET);
	range_is("10.0.0.0/8", "10.0.0.0", "10.255.255.255", AF_INET);
	range_is("10.1.2.3/31", "10.1.2.2", "10.1.2.3", AF_INET);
	range_is("1.2.3.0/255.255.255.0", "1.2.3.0", "1.2.3.255", AF_INET);
	range_is("1.2.3.0/255.255.255.255", "1.2.3.0", "1.2.3.0", AF_INET);
	range_is("1.2.3.9/0.0.0.0", "0.0.0.0", "255.255.255.255", AF_INET);
	range_is("172.16.5.5/255.240.0.0", "172.16.0.0", "172.31.255.255", AF_INET);
	range_is("1.2.3.1-1.2.3.100", "1.2.3.1", "1.2.3.100", AF_INET);
	range_is("1.2.3.1 - 1.2.3.100", "1.2.3.1", "1.2.3.100", AF_INET);
	range_is("1.2.3.7-1.2.3.7", "1.2.3.7", "1.2.3.7", AF_INET);
	range_is("0.0.0.0-255.255.255.255", "0.0.0.0", "255.255.255.255", AF_INET);
}

static void test_ranges_v6(void)
{
	range_is("::1", "::1", "::1", AF_INET6);
	range_is("2001:db8::/32", "2001:db8::", "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", AF_INET6);
	range_is("2001:db8::abcd/64", "2001:db8::", "2001:db8::ffff:ffff:ffff:ffff", AF_INET6);
	range_is("2001:db8::1/128", "2001:db8::1", "2001:db8::1", AF_INET6);
	range_is("2001:db8::1-2001:db8::ff", "2001:db8::1", "2001:db8::ff", AF_INET6);
	range_is(" 2001:db8::1 -  2001:db8::ff ", "2001:db8::1", "2001:db8::ff", AF_INET6);
	range_is("::/0", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", AF_INET6);
	range_is("2001:db8::/65", "2001:db8::", "2001:db8::7fff:ffff:ffff:ffff", AF_INET6);
	/* The IPv4 space seen from IPv6: formats back as dotted quads. */
	range_is("::ffff:0:0/96", "0.0.0.0", "255.255.255.255", AF_INET6);
}

static void test_range_refusals(void)
{
	range_refused("", "empty address");
	range_refused("   ", "empty address");
	range_refused(NULL, "empty address");
	range_refused("example.com", "not an IP address");
	range_refused("1.2.3", "not an IP address");
	range_refused("1.2.3.256", "not an IP address");
	range_refused("1.2.3.4 x", "not an IP address");
	range_refused("1.2.3.4x", "not an IP address");
	range_refused("01.2.3.4", "not an IP address");
	range_refused("2001:db8::g", "not an IP address");
	range_refused("1.2.3.0/33", "prefix length out of range");
	range_refused("2001:db8::/129", "prefix length out of range");
	range_refused("1.2.3.0/", "bad prefix length");
	range_refused("1.2.3.0/-1", "bad prefix length");
	range_refused("1.2.3.0/ -1", "bad prefix length");
	range_refused("1.2.3.0/24x", "bad prefix length");
	range_refused("1.2.3.0/24 x", "bad prefix length");
	range_refused("1.2.3.0/24/8", "bad prefix length");
	range_refused("1.2.3.0/1000", "bad prefix length");
	range_refused("/24", "not an IP address");
	range_refused("1.2.3.0/255.0.255.0", "netmask is not contiguous");
	range_refused("1.2.3.0/0.255.255.255", "netmask is not contiguous");
	range_refused("1.2.3.0/255.255.255", "bad netmask");
	range_refused("2001:db8::/255.255.0.0", "netmask notation is IPv4 only");
	range_refused("1.2.3.100-1.2.3.1", "range end before start");
	range_refused("2001:db8::ff-2001:db8::1", "range end before start");
	range_refused("1.2.3.4-2001:db8::1", "range mixes IPv4 and IPv6");
	range_refused("2001:db8::1-1.2.3.4", "range mixes IPv4 and IPv6");
	range_refused("-1.2.3.4", "range start is not an IP address");
	range_refused("1.2.3.4-", "range end is not an IP address");
	range_refused("1.2.3.4-1.2.3.5-1.2.3.6", "range end is not an IP address");
	range_refused("1.2.3.4-1.2.3.5 junk", "range end is not an IP address");
	range_refused("1.2.3.0/24-1.2.4.0/24", "a range joins two addresses, not networks");

	char longtext[300];

	memset(longtext, '1', sizeof(longtext) - 1);
	longtext[sizeof(longtext) - 1] = '\0';
	range_refused(longtext, "address too long");

	tg_range_t r = {.family = 12345};

	tg_range_parse("1.2.3.0/99", &r, NULL);
	is_int(r.family, 12345, "a refused range leaves the output untouched (and err may be NULL)");
}

static tg_ip_t ip_of(const char *s)
{
	tg_ip_t ip = {0, 0};

	if (tg_ip_parse(s, &ip) < 0)
		printf("# test bug: cannot parse %s\n", s);
	return ip;
}

static void test_ip_numbers(void)
{
	tg_ip_t ip;
	char buf[64];

	ok(tg_ip_parse("1.2.3.4", &ip) == 0 && ip.hi == 0 && ip.lo == 0x0000ffff01020304ULL,
	   "1.2.3.4 is ::ffff:102:304 as a number");
	ok(tg_ip_is_v4(&ip), "1.2.3.4 is v4");
	ok(tg_ip_parse("::ffff:1.2.3.4", &ip) == 0 && ip.lo == 0x0000ffff01020304ULL && tg_ip_is_v4(&ip),
	   "::ffff:1.2.3.4 is the same number");
	ok(tg_ip_parse("2001:db8::1", &ip) == 0 && ip.hi == 0x20010db800000000ULL && ip.lo == 1,
	   "2001:db8::1 halves in host order");
	ok(!tg_ip_is_v4(&ip), "2001:db8::1 is not v4");
	ip = ip_of("::1");
	ok(!tg_ip_is_v4(&ip), "::1 is not v4");
	ip = ip_of("::fffe:ffff:ffff");
	ok(!tg_ip_is_v4(&ip), "::fffe:ffff:ffff, just below the mapped space, is not v4");
	ip = ip_of("::1:0:0:0");
	ok(!tg_ip_is_v4(&ip), "::1:0:0:0, just above the mapped space, is not v4");
	ok(tg_ip_parse("1.2.3.4:5060", &ip) < 0, "tg_ip_parse refuses a port");
	ok(tg_ip_parse("[::1]", &ip) < 0, "tg_ip_parse refuses brackets");
	ok(tg_ip_parse("", &ip) < 0, "tg_ip_parse refuses empty text");

	ip = ip_of("10.0.0.1");
	is_str(tg_ip_format(&ip, buf, sizeof(buf)), "10.0.0.1", "v4 formats as a dotted quad");
	ip = ip_of("2001:db8::1");
	is_str(tg_ip_format(&ip, buf, sizeof(buf)), "2001:db8::1", "v6 formats compressed");
	ip = ip_of("::");
	is_str(tg_ip_format(&ip, buf, sizeof(buf)), "::", ":: formats");
	ip = ip_of("10.0.0.1");
	is_str(tg_ip_format(&ip, buf, 4), "", "a buffer too small gives an empty string");

	tg_ip_t a = ip_of("1.2.3.4"), b = ip_of("1.2.3.5"), c = ip_of("2001:db8::");
	is_int(tg_ip_cmp(&a, &b), -1, "cmp: 1.2.3.4 < 1.2.3.5");
	is_int(tg_ip_cmp(&b, &a), 1, "cmp: 1.2.3.5 > 1.2.3.4");
	is_int(tg_ip_cmp(&a, &a), 0, "cmp: equal");
	is_int(tg_ip_cmp(&a, &c), -1, "cmp: every v4 sorts below 2001:db8::");
	a = ip_of("::1:0:0:1");
	b = ip_of("::1");
	is_int(tg_ip_cmp(&b, &a), -1, "cmp: high half decides before the low half");
}

static void test_contains(void)
{
	tg_range_t r;
	tg_ip_t ip;

	tg_range_parse("1.2.3.1-1.2.3.100", &r, NULL);
	ip = ip_of("1.2.3.0");
	ok(!tg_range_contains(&r, &ip), "range excludes first-1");
	ip = ip_of("1.2.3.1");
	ok(tg_range_contains(&r, &ip), "range includes first");
	ip = ip_of("1.2.3.100");
	ok(tg_range_contains(&r, &ip), "range includes last");
	ip = ip_of("1.2.3.101");
	ok(!tg_range_contains(&r, &ip), "range excludes last+1");

	tg_range_parse("0.0.0.0/0", &r, NULL);
	ip = ip_of("255.255.255.255");
	ok(tg_range_contains(&r, &ip), "0.0.0.0/0 holds 255.255.255.255");
	ip = ip_of("::1");
	ok(!tg_range_contains(&r, &ip), "0.0.0.0/0 does not hold ::1");
	ip = ip_of("2001:db8::1");
	ok(!tg_range_contains(&r, &ip), "0.0.0.0/0 does not hold 2001:db8::1");

	tg_range_parse("2001:db8::/32", &r, NULL);
	ip = ip_of("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff");
	ok(tg_range_contains(&r, &ip), "2001:db8::/32 holds its last address");
	ip = ip_of("2001:db9::");
	ok(!tg_range_contains(&r, &ip), "2001:db8::/32 excludes 2001:db9::");
	ip = ip_of("1.2.3.4");
	ok(!tg_range_contains(&r, &ip), "2001:db8::/32 does not hold 1.2.3.4");

	tg_range_parse("::ffff:0:0/96", &r, NULL);
	ip = ip_of("1.2.3.4");
	ok(tg_range_contains(&r, &ip), "::ffff:0:0/96 holds every IPv4 address");
}

static void prefix_bits_is(const char *s, int want)
{
	tg_range_t r;

	if (tg_range_parse(s, &r, NULL) < 0) {
		ok(0, "prefix bits of %s: parses", s);
		return;
	}
	is_int(tg_range_prefix_bits(&r), want, "prefix bits of %s", s);
}

static void test_prefix_bits(void)
{
	prefix_bits_is("1.2.3.4", 128);
	prefix_bits_is("1.2.3.0/24", 120);
	prefix_bits_is("0.0.0.0/0", 96);
	prefix_bits_is("1.2.3.0/255.255.255.128", 121);
	prefix_bits_is("1.2.3.1-1.2.3.100", 121);
	prefix_bits_is("1.2.3.255-1.2.4.0", 117);
	prefix_bits_is("::1", 128);
	prefix_bits_is("2001:db8::/32", 32);
	prefix_bits_is("2001:db8::/64", 64);
	prefix_bits_is("2001:db8::/65", 65);
	prefix_bits_is("::/0", 0);
}

static void sockaddr_is(const char *s, uint16_t def, int want_family, const char *want_text)
{
	struct sockaddr_storage ss;
	socklen_t len = 0;
	const char *err = NULL;
	char buf[TG_SOCKADDR_STRLEN];

	if (tg_sockaddr_parse(s, def, &ss, &len, &err) < 0) {
		ok(0, "sockaddr \"%s\" parses", s);
		printf("#   error: %s\n", err);
		return;
	}
	tg_sockaddr_format((struct sockaddr *)&ss, buf, sizeof(buf));
	ok(ss.ss_family == want_family && strcmp(buf, want_text) == 0 &&
	           len == (want_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6)),
	   "sockaddr \"%s\" is %s", s, want_text);
	if (strcmp(buf, want_text) != 0)
		printf("#   got %s\n", buf);
}

static void sockaddr_refused(const char *s, const char *want_err)
{
	struct sockaddr_storage ss;
	socklen_t len;
	const char *err = NULL;
	int rc = tg_sockaddr_parse(s, 5060, &ss, &len, &err);

	ok(rc == -1 && err != NULL && strcmp(err, want_err) == 0, "sockaddr \"%s\" refused: %s", s, want_err);
	if (rc != -1 || err == NULL || strcmp(err, want_err) != 0)
		printf("#   rc %d, error \"%s\"\n", rc, err ? err : "(null)");
}

static void test_sockaddr(void)
{
	sockaddr_is("1.2.3.4:5060", 9, AF_INET, "1.2.3.4:5060");
	sockaddr_is("1.2.3.4", 5080, AF_INET, "1.2.3.4:5080");
	sockaddr_is("[::1]:5060", 9, AF_INET6, "[::1]:5060");
	sockaddr_is("[::1]", 5080, AF_INET6, "[::1]:5080");
	sockaddr_is("::1", 5080, AF_INET6, "[::1]:5080");
	sockaddr_is("2001:db8::10", 5061, AF_INET6, "[2001:db8::10]:5061");
	sockaddr_is("[2001:db8::10]:65535", 9, AF_INET6, "[2001:db8::10]:65535");
	sockaddr_is("1.2.3.4:1", 9, AF_INET, "1.2.3.4:1");
	sockaddr_is("[::ffff:1.2.3.4]:5060", 9, AF_INET6, "[::ffff:1.2.3.4]:5060");

	sockaddr_refused("", "empty address");
	sockaddr_refused(NULL, "empty address");
	sockaddr_refused("sip.example.com:5060", "not a numeric IP address");
	sockaddr_refused("localhost", "not a numeric IP address");
	sockaddr_refused("1.2.3.4:0", "port out of range");
	sockaddr_refused("1.2.3.4:65536", "port out of range");
	sockaddr_refused("1.2.3.4:123456", "bad port");
	sockaddr_refused("1.2.3.4:", "bad port");
	sockaddr_refused("1.2.3.4:50x", "bad port");
	sockaddr_refused("1.2.3.4:-1", "bad port");
	sockaddr_refused("[::1", "missing ']'");
	sockaddr_refused("[::1]5060", "junk after ']'");
	sockaddr_refused("[::1]:", "bad port");
	sockaddr_refused("[1.2.3.4]:5060", "not an IPv6 address inside []");
	sockaddr_refused("[]:5060", "not an IPv6 address inside []");
	sockaddr_refused("::1:5060x", "not a numeric IP address");
	sockaddr_refused(" 1.2.3.4:5060", "not a numeric IP address");

	/* Round trip through text and back. */
	const char *samples[] = {"10.0.0.1:5060", "[2001:db8::1]:5070", "[::]:1", "255.255.255.255:65535"};

	for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
		struct sockaddr_storage a, b;
		socklen_t la, lb;
		char t1[TG_SOCKADDR_STRLEN], t2[TG_SOCKADDR_STRLEN];

		tg_sockaddr_parse(samples[i], 5060, &a, &la, NULL);
		tg_sockaddr_format((struct sockaddr *)&a, t1, sizeof(t1));
		tg_sockaddr_parse(t1, 5060, &b, &lb, NULL);
		tg_sockaddr_format((struct sockaddr *)&b, t2, sizeof(t2));
		ok(strcmp(t1, samples[i]) == 0 && strcmp(t2, t1) == 0 && la == lb &&
		           tg_sockaddr_equal((struct sockaddr *)&a, (struct sockaddr *)&b),
		   "round trip %s", samples[i]);
	}
}

static void test_sockaddr_ip(void)
{
	struct sockaddr_storage ss, ss2;
	socklen_t len;
	tg_ip_t ip;
	uint16_t port = 0;

	tg_sockaddr_parse("192.0.2.7:5062", 5060, &ss, &len, NULL);
	ok(tg_ip_from_sockaddr((struct sockaddr *)&ss, &ip, &port) == 0 && port == 5062 &&
	           ip.lo == 0x0000ffffc0000207ULL && ip.hi == 0,
	   "sockaddr_in -> mapped ip and port");
	tg_ip_to_sockaddr(&ip, port, &ss2, &len);
	ok(ss2.ss_family == AF_INET && len == sizeof(struct sockaddr_in) &&
	           tg_sockaddr_equal((struct sockaddr *)&ss, (struct sockaddr *)&ss2),
	   "mapped ip -> sockaddr_in again");

	tg_sockaddr_parse("[2001:db8::7]:5063", 5060, &ss, &len, NULL);
	ok(tg_ip_from_sockaddr((struct sockaddr *)&ss, &ip, &port) == 0 && port == 5063 &&
	           ip.hi == 0x20010db800000000ULL && ip.lo == 7,
	   "sockaddr_in6 -> ip and port");
	tg_ip_to_sockaddr(&ip, port, &ss2, &len);
	ok(ss2.ss_family == AF_INET6 && len == sizeof(struct sockaddr_in6) &&
	           tg_sockaddr_equal((struct sockaddr *)&ss, (struct sockaddr *)&ss2),
	   "ip -> sockaddr_in6 again");

	/* A dual-stack socket reports a v4 peer as ::ffff:a.b.c.d. */
	tg_sockaddr_parse("[::ffff:192.0.2.7]:5062", 5060, &ss, &len, NULL);
	tg_sockaddr_parse("192.0.2.7:5062", 5060, &ss2, &len, NULL);
	ok(tg_sockaddr_equal((struct sockaddr *)&ss, (struct sockaddr *)&ss2),
	   "v4 equals its mapped v6 form");
	ok(tg_ip_from_sockaddr((struct sockaddr *)&ss, &ip, NULL) == 0 && tg_ip_is_v4(&ip),
	   "mapped sockaddr_in6 gives a v4 ip");
	tg_sockaddr_parse("192.0.2.7:5063", 5060, &ss2, &len, NULL);
	ok(!tg_sockaddr_equal((struct sockaddr *)&ss, (struct sockaddr *)&ss2), "another port is not equal");
	tg_sockaddr_parse("192.0.2.8:5062", 5060, &ss2, &len, NULL);
	ok(!tg_sockaddr_equal((struct sockaddr *)&ss, (struct sockaddr *)&ss2),
	   "another address is not equal");

	struct sockaddr_storage unix_ss;

	memset(&unix_ss, 0, sizeof(unix_ss));
	unix_ss.ss_family = AF_UNIX;
	ok(tg_ip_from_sockaddr((struct sockaddr *)&unix_ss, &ip, &port) == -1, "AF_UNIX has no ip");
	ok(!tg_sockaddr_equal((struct sockaddr *)&unix_ss, (struct sockaddr *)&unix_ss),
	   "AF_UNIX never equal");
}

int main(void)
{
	test_ranges_v4();
	test_ranges_v6();
	test_range_refusals();
	test_ip_numbers();
	test_contains();
	test_prefix_bits();
	test_sockaddr();
	test_sockaddr_ip();
	return done_testing();
}
