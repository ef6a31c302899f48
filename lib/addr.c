/*
 * Address text and numbers: what operators type into rules and the config
 * (a single address, CIDR, IPv4 netmask, a-b range; "ip:port" endpoints),
 * and the 128-bit form the SIP path compares. IPv4 becomes the IPv4-mapped
 * IPv6 address ::ffff:a.b.c.d, so one ordering covers both families.
 *
 * Numeric only: no name is ever resolved here (the loader resolves
 * hostnames, off the packet path). Errors are static strings, so a caller
 * can log them without owning memory.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "lib/addr.h"

#define V4_MAPPED_HI     0ULL
#define V4_MAPPED_LO_TAG 0x0000ffff00000000ULL
#define ADDR_TEXT_MAX    128 /* longest v6 range is 81 characters; leave room */

static uint64_t load_be64(const unsigned char *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return v;
}

static void store_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)v;
		v >>= 8;
	}
}

static void ip_from_v4(tg_ip_t *ip, uint32_t host_order)
{
	ip->hi = V4_MAPPED_HI;
	ip->lo = V4_MAPPED_LO_TAG | host_order;
}

static void ip_from_v6(tg_ip_t *ip, const unsigned char b[16])
{
	ip->hi = load_be64(b);
	ip->lo = load_be64(b + 8);
}

int tg_ip_cmp(const tg_ip_t *a, const tg_ip_t *b)
{
	if (a->hi != b->hi)
		return a->hi < b->hi ? -1 : 1;
	if (a->lo != b->lo)
		return a->lo < b->lo ? -1 : 1;
	return 0;
}

int tg_ip_is_v4(const tg_ip_t *ip)
{
	return ip->hi == V4_MAPPED_HI && (ip->lo >> 32) == (V4_MAPPED_LO_TAG >> 32);
}

int tg_ip_from_sockaddr(const struct sockaddr *sa, tg_ip_t *ip, uint16_t *port)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		ip_from_v4(ip, ntohl(sin->sin_addr.s_addr));
		if (port)
			*port = ntohs(sin->sin_port);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

		ip_from_v6(ip, sin6->sin6_addr.s6_addr);
		if (port)
			*port = ntohs(sin6->sin6_port);
		return 0;
	}
	return -1;
}

static void sockaddr_v6(const tg_ip_t *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	memset(ss, 0, sizeof(*ss));
	sin6->sin6_family = AF_INET6;
	sin6->sin6_port = htons(port);
	store_be64(sin6->sin6_addr.s6_addr, ip->hi);
	store_be64(sin6->sin6_addr.s6_addr + 8, ip->lo);
	*len = sizeof(*sin6);
}

void tg_ip_to_sockaddr(const tg_ip_t *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len)
{
	memset(ss, 0, sizeof(*ss));
	if (tg_ip_is_v4(ip)) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		sin->sin_port = htons(port);
		sin->sin_addr.s_addr = htonl((uint32_t)ip->lo);
		*len = sizeof(*sin);
		return;
	}
	sockaddr_v6(ip, port, ss, len);
}

/* Like tg_ip_parse(), and says which notation the text used. */
static int ip_parse_family(const char *s, tg_ip_t *ip, int *family)
{
	struct in_addr a4;
	struct in6_addr a6;

	if (inet_pton(AF_INET, s, &a4) == 1) {
		ip_from_v4(ip, ntohl(a4.s_addr));
		*family = AF_INET;
		return 0;
	}
	if (inet_pton(AF_INET6, s, &a6) == 1) {
		ip_from_v6(ip, a6.s6_addr);
		*family = AF_INET6;
		return 0;
	}
	return -1;
}

int tg_ip_parse(const char *s, tg_ip_t *ip)
{
	int family;

	return ip_parse_family(s, ip, &family);
}

char *tg_ip_format(const tg_ip_t *ip, char *buf, size_t len)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	const void *src;

	tg_ip_to_sockaddr(ip, 0, &ss, &sslen);
	if (ss.ss_family == AF_INET)
		src = &((const struct sockaddr_in *)&ss)->sin_addr;
	else
		src = &((const struct sockaddr_in6 *)&ss)->sin6_addr;
	if (inet_ntop(ss.ss_family, src, buf, (socklen_t)len) == NULL && len > 0)
		buf[0] = '\0';
	return buf;
}

/* Bit masks of the top `bits` of 128, as two halves. */
static void mask_for_prefix(int bits, tg_ip_t *mask)
{
	mask->hi = bits <= 0 ? 0 : bits >= 64 ? ~0ULL : ~0ULL << (64 - bits);
	mask->lo = bits <= 64 ? 0 : bits >= 128 ? ~0ULL : ~0ULL << (128 - bits);
}

static int is_space(char c)
{
	return c == ' ' || c == '\t';
}

/*
 * Copy s without surrounding blanks into buf. Returns the length, or -1
 * when it does not fit.
 */
static int trim_copy(const char *s, size_t slen, char *buf, size_t size)
{
	while (slen > 0 && is_space(*s)) {
		s++;
		slen--;
	}
	while (slen > 0 && is_space(s[slen - 1]))
		slen--;
	if (slen >= size)
		return -1;
	memcpy(buf, s, slen);
	buf[slen] = '\0';
	return (int)slen;
}

/* Decimal digits only, at most max_digits of them. Returns the value or -1. */
static long parse_digits(const char *s, int max_digits)
{
	long v = 0;
	int n = 0;

	for (; *s; s++, n++) {
		if (*s < '0' || *s > '9' || n >= max_digits)
			return -1;
		v = v * 10 + (*s - '0');
	}
	return n == 0 ? -1 : v;
}

/* An IPv4 netmask -> prefix length in the IPv4 sense (0..32), or -1 with *err. */
static int netmask_bits(const char *s, const char **err)
{
	struct in_addr a4;
	uint32_t mask, inverse;

	if (inet_pton(AF_INET, s, &a4) != 1) {
		*err = "bad netmask";
		return -1;
	}
	mask = ntohl(a4.s_addr);
	inverse = ~mask;
	/* Contiguous ones then zeros: the inverse is 2^k - 1. */
	if ((inverse & (inverse + 1)) != 0) {
		*err = "netmask is not contiguous";
		return -1;
	}
	return __builtin_popcount(mask);
}

/* "addr/len" or "addr/netmask", text already trimmed. */
static int parse_cidr(const char *text, const char *slash, tg_range_t *r, const char **err)
{
	char left[ADDR_TEXT_MAX], right[ADDR_TEXT_MAX];
	tg_ip_t ip, mask;
	int family, bits, width;

	if (trim_copy(text, (size_t)(slash - text), left, sizeof(left)) < 0 ||
	    trim_copy(slash + 1, strlen(slash + 1), right, sizeof(right)) < 0) {
		*err = "address too long";
		return -1;
	}
	if (ip_parse_family(left, &ip, &family) < 0) {
		*err = "not an IP address";
		return -1;
	}
	width = family == AF_INET ? 32 : 128;
	if (strchr(right, '.') != NULL) {
		if (family != AF_INET) {
			*err = "netmask notation is IPv4 only";
			return -1;
		}
		bits = netmask_bits(right, err);
		if (bits < 0)
			return -1;
	} else {
		long v = parse_digits(right, 3);

		if (v < 0) {
			*err = "bad prefix length";
			return -1;
		}
		if (v > width) {
			*err = "prefix length out of range";
			return -1;
		}
		bits = (int)v;
	}
	/* An IPv4 prefix counts within the mapped space, below ::ffff:0:0/96. */
	if (family == AF_INET)
		bits += 96;
	mask_for_prefix(bits, &mask);
	r->first.hi = ip.hi & mask.hi;
	r->first.lo = ip.lo & mask.lo;
	r->last.hi = ip.hi | ~mask.hi;
	r->last.lo = ip.lo | ~mask.lo;
	r->family = family;
	return 0;
}

/* "first-last", text already trimmed. */
static int parse_span(const char *text, const char *dash, tg_range_t *r, const char **err)
{
	char left[ADDR_TEXT_MAX], right[ADDR_TEXT_MAX];
	int family_first, family_last;

	if (trim_copy(text, (size_t)(dash - text), left, sizeof(left)) < 0 ||
	    trim_copy(dash + 1, strlen(dash + 1), right, sizeof(right)) < 0) {
		*err = "address too long";
		return -1;
	}
	if (strchr(left, '/') != NULL || strchr(right, '/') != NULL) {
		*err = "a range joins two addresses, not networks";
		return -1;
	}
	if (ip_parse_family(left, &r->first, &family_first) < 0) {
		*err = "range start is not an IP address";
		return -1;
	}
	if (ip_parse_family(right, &r->last, &family_last) < 0) {
		*err = "range end is not an IP address";
		return -1;
	}
	if (family_first != family_last) {
		*err = "range mixes IPv4 and IPv6";
		return -1;
	}
	if (tg_ip_cmp(&r->first, &r->last) > 0) {
		*err = "range end before start";
		return -1;
	}
	r->family = family_first;
	return 0;
}

/* "1.2.3.0/-1" is a bad prefix, not a range: is the '-' right after a '/'? */
static int follows_slash(const char *text, const char *dash)
{
	while (dash > text && is_space(dash[-1]))
		dash--;
	return dash > text && dash[-1] == '/';
}

int tg_range_parse(const char *s, tg_range_t *r, const char **err)
{
	char text[ADDR_TEXT_MAX];
	const char *sep;
	const char *dummy;
	tg_range_t out;
	int n;

	if (err == NULL)
		err = &dummy;
	memset(&out, 0, sizeof(out));
	n = s == NULL ? 0 : trim_copy(s, strlen(s), text, sizeof(text));
	if (n == 0) {
		*err = "empty address";
		return -1;
	}
	if (n < 0) {
		*err = "address too long";
		return -1;
	}
	sep = strchr(text, '-');
	if (sep != NULL && !follows_slash(text, sep)) {
		if (parse_span(text, sep, &out, err) < 0)
			return -1;
	} else if ((sep = strchr(text, '/')) != NULL) {
		if (parse_cidr(text, sep, &out, err) < 0)
			return -1;
	} else {
		if (ip_parse_family(text, &out.first, &out.family) < 0) {
			*err = "not an IP address";
			return -1;
		}
		out.last = out.first;
	}
	*r = out;
	return 0;
}

int tg_range_contains(const tg_range_t *r, const tg_ip_t *ip)
{
	return tg_ip_cmp(&r->first, ip) <= 0 && tg_ip_cmp(ip, &r->last) <= 0;
}

int tg_range_prefix_bits(const tg_range_t *r)
{
	uint64_t hi = r->first.hi ^ r->last.hi;
	uint64_t lo = r->first.lo ^ r->last.lo;

	if (hi != 0)
		return __builtin_clzll(hi);
	if (lo != 0)
		return 64 + __builtin_clzll(lo);
	return 128;
}

/* Port text after ':' -> 1..65535, or -1 with *err. */
static int parse_port(const char *s, const char **err)
{
	long v = parse_digits(s, 5);

	if (v < 0) {
		*err = "bad port";
		return -1;
	}
	if (v < 1 || v > 65535) {
		*err = "port out of range";
		return -1;
	}
	return (int)v;
}

static void sockaddr_fill(const tg_ip_t *ip, int family, uint16_t port, struct sockaddr_storage *ss,
                          socklen_t *len)
{
	/* Keep the family as written: "[::ffff:1.2.3.4]" names a v6 socket address. */
	if (family == AF_INET6)
		sockaddr_v6(ip, port, ss, len);
	else
		tg_ip_to_sockaddr(ip, port, ss, len);
}

/* "[v6]" or "[v6]:port". */
static int parse_bracketed(const char *s, uint16_t default_port, struct sockaddr_storage *ss, socklen_t *len,
                           const char **err)
{
	char host[ADDR_TEXT_MAX];
	const char *close = strchr(s, ']');
	struct in6_addr a6;
	tg_ip_t ip;
	int port = default_port;

	if (close == NULL) {
		*err = "missing ']'";
		return -1;
	}
	if ((size_t)(close - s - 1) >= sizeof(host)) {
		*err = "address too long";
		return -1;
	}
	memcpy(host, s + 1, (size_t)(close - s - 1));
	host[close - s - 1] = '\0';
	if (inet_pton(AF_INET6, host, &a6) != 1) {
		*err = "not an IPv6 address inside []";
		return -1;
	}
	if (close[1] == ':') {
		if ((port = parse_port(close + 2, err)) < 0)
			return -1;
	} else if (close[1] != '\0') {
		*err = "junk after ']'";
		return -1;
	}
	ip_from_v6(&ip, a6.s6_addr);
	sockaddr_fill(&ip, AF_INET6, (uint16_t)port, ss, len);
	return 0;
}

int tg_sockaddr_parse(const char *s, uint16_t default_port, struct sockaddr_storage *ss, socklen_t *len,
                      const char **err)
{
	char host[ADDR_TEXT_MAX];
	const char *colon;
	const char *dummy;
	tg_ip_t ip;
	int family, port = default_port;

	if (err == NULL)
		err = &dummy;
	if (s == NULL || s[0] == '\0') {
		*err = "empty address";
		return -1;
	}
	if (s[0] == '[')
		return parse_bracketed(s, default_port, ss, len, err);
	colon = strchr(s, ':');
	/* One colon is "v4:port"; more is a bare IPv6 address with no port. */
	if (colon != NULL && strchr(colon + 1, ':') == NULL) {
		if ((size_t)(colon - s) >= sizeof(host)) {
			*err = "address too long";
			return -1;
		}
		memcpy(host, s, (size_t)(colon - s));
		host[colon - s] = '\0';
		if ((port = parse_port(colon + 1, err)) < 0)
			return -1;
	} else {
		if (strlen(s) >= sizeof(host)) {
			*err = "address too long";
			return -1;
		}
		strcpy(host, s);
	}
	if (ip_parse_family(host, &ip, &family) < 0) {
		*err = "not a numeric IP address";
		return -1;
	}
	sockaddr_fill(&ip, family, (uint16_t)port, ss, len);
	return 0;
}

char *tg_sockaddr_format(const struct sockaddr *sa, char *buf, size_t len)
{
	char host[INET6_ADDRSTRLEN];

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;

		inet_ntop(AF_INET, &sin->sin_addr, host, sizeof(host));
		snprintf(buf, len, "%s:%u", host, ntohs(sin->sin_port));
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;

		inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof(host));
		snprintf(buf, len, "[%s]:%u", host, ntohs(sin6->sin6_port));
	} else {
		snprintf(buf, len, "(family %d)", sa->sa_family);
	}
	return buf;
}

/*
 * Same address and port. 1.2.3.4 and ::ffff:1.2.3.4 are the same peer: a
 * dual-stack socket reports IPv4 senders in the mapped form.
 */
int tg_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b)
{
	tg_ip_t ia, ib;
	uint16_t pa, pb;

	if (tg_ip_from_sockaddr(a, &ia, &pa) < 0 || tg_ip_from_sockaddr(b, &ib, &pb) < 0)
		return 0;
	if (a->sa_family == AF_INET6 && b->sa_family == AF_INET6 &&
	    ((const struct sockaddr_in6 *)a)->sin6_scope_id !=
	            ((const struct sockaddr_in6 *)b)->sin6_scope_id)
		return 0;
	return pa == pb && tg_ip_cmp(&ia, &ib) == 0;
}
