/*
 * Addresses as operators type them, and as the SIP path compares them.
 *
 * Every address is held as a 128-bit number: IPv6 as is, IPv4 as the
 * IPv4-mapped IPv6 address ::ffff:a.b.c.d, so one sorted index serves both
 * families and a v4 rule never matches a v6 source by accident.
 */
#ifndef TG_ADDR_H
#define TG_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct tg_ip {
	uint64_t hi; /* most significant 64 bits, host order */
	uint64_t lo; /* least significant 64 bits, host order */
} tg_ip_t;

/* An inclusive range [first, last]; a single address has first == last. */
typedef struct tg_range {
	tg_ip_t first;
	tg_ip_t last;
	int family; /* AF_INET or AF_INET6 */
} tg_range_t;

int tg_ip_cmp(const tg_ip_t *a, const tg_ip_t *b);
int tg_ip_is_v4(const tg_ip_t *ip);
/* sockaddr (AF_INET/AF_INET6) -> ip and port; returns 0 or -1 on another family. */
int tg_ip_from_sockaddr(const struct sockaddr *sa, tg_ip_t *ip, uint16_t *port);
void tg_ip_to_sockaddr(const tg_ip_t *ip, uint16_t port, struct sockaddr_storage *ss, socklen_t *len);
/* Numeric text (v4 or v6, no brackets) -> ip. 0 or -1. */
int tg_ip_parse(const char *s, tg_ip_t *ip);
/* "1.2.3.4" / "::1" into buf (at least 46 bytes). Returns buf. */
char *tg_ip_format(const tg_ip_t *ip, char *buf, size_t len);

/*
 * Operator notation -> range. Accepted forms, IPv4 and IPv6 alike:
 *   1.2.3.4               a single address
 *   1.2.3.0/24            CIDR (host bits may be set; they are ignored)
 *   1.2.3.0/255.255.255.0 IPv4 netmask, which must be contiguous
 *   1.2.3.1-1.2.3.100     an inclusive range, first <= last, one family
 * Surrounding spaces are ignored. Returns 0, or -1 with a static message
 * describing the problem in *err.
 */
int tg_range_parse(const char *s, tg_range_t *r, const char **err);
int tg_range_contains(const tg_range_t *r, const tg_ip_t *ip);
/* Number of leading bits shared by first and last: 128 for a single address. */
int tg_range_prefix_bits(const tg_range_t *r);

/*
 * "ip:port", "[v6]:port", "ip" or "[v6]" -> sockaddr. A missing port takes
 * default_port. Numeric only: no DNS. Returns 0 or -1 with *err.
 */
int tg_sockaddr_parse(const char *s, uint16_t default_port, struct sockaddr_storage *ss, socklen_t *len,
                      const char **err);
/* "1.2.3.4:5060" or "[::1]:5060". */
char *tg_sockaddr_format(const struct sockaddr *sa, char *buf, size_t len);
int tg_sockaddr_equal(const struct sockaddr *a, const struct sockaddr *b);

#define TG_SOCKADDR_STRLEN 64

#endif
