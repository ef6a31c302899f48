/*
 * The configuration file: reading the YAML, checking every key against
 * what it may hold, and naming the keys only a restart can change.
 *
 * This file turns the text an operator typed into the plain tg_config_t the
 * master publishes; it never opens sockets, touches shared memory or logs.
 * Each refusal reads "FILE:LINE: key: problem" because on SIGHUP a bad file
 * is refused and that one line is all the operator gets. A file is parsed
 * into a private copy, so the caller's struct changes only on success.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>

#include <yaml.h>

#include "lib/addr.h"
#include "lib/log.h"
#include "lib/sha256.h"
#include "master/config.h"

/* A config is a page of text; anything bigger is the wrong file. */
#define CFG_MAX_BYTES (1024 * 1024)
#define CFG_KEY_MAX   96
#define CFG_MAP_MAX   24
#define CFG_SIP_PORT  5060

typedef struct cfg_parse {
	const char *file; /* as the operator named it, for messages */
	yaml_document_t *doc;
	tg_config_t *cfg;
	char *err;
	size_t errlen;
} cfg_parse_t;

typedef int (*cfg_field_fn)(cfg_parse_t *p, yaml_node_t *n, const char *key);

/* One key a mapping may hold; parse is NULL where the caller handles the value itself. */
typedef struct cfg_field {
	const char *name;
	cfg_field_fn parse;
} cfg_field_t;

static int fail(cfg_parse_t *p, const yaml_node_t *at, const char *key, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static int fail(cfg_parse_t *p, const yaml_node_t *at, const char *key, const char *fmt, ...)
{
	char msg[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (p->errlen > 0)
		snprintf(p->err, p->errlen, "%s:%zu: %s: %s", p->file, at ? at->start_mark.line + 1 : 1, key,
		         msg);
	return -1;
}

static const char *text_of(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

/* YAML's null: an empty plain value, "~" or "null". Quoted, they are strings. */
static int is_null(const yaml_node_t *n)
{
	static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};

	if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return 0;
	for (size_t i = 0; i < sizeof nulls / sizeof nulls[0]; i++)
		if (strcmp(text_of(n), nulls[i]) == 0)
			return 1;
	return 0;
}

static const char *kind_of(const yaml_node_t *n)
{
	if (n->type == YAML_SEQUENCE_NODE)
		return "a sequence";
	if (n->type == YAML_MAPPING_NODE)
		return "a mapping";
	if (is_null(n))
		return "null";
	return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE ? "a scalar" : "a quoted string";
}

/* The operator's value echoed back: printable and bounded, whatever the file held. */
static const char *shown(const char *s, char *buf, size_t len)
{
	size_t i;

	for (i = 0; s[i] && i + 1 < len; i++)
		buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
	buf[i] = '\0';
	if (s[i] && len > 4)
		memcpy(buf + len - 4, "...", 4);
	return buf;
}

static void join_key(char *out, size_t len, const char *prefix, const char *name)
{
	char safe[CFG_KEY_MAX];
	int n;

	shown(name, safe, sizeof safe);
	n = snprintf(out, len, "%s%s%s", prefix, prefix[0] ? "." : "", safe);
	/* a cut key still has to read as one */
	if (n >= (int)len && len > 4)
		memcpy(out + len - 4, "...", 4);
}

/* ---- scalars ---- */

static int get_string(cfg_parse_t *p, yaml_node_t *n, const char *key, const char **out)
{
	if (n->type != YAML_SCALAR_NODE || is_null(n))
		return fail(p, n, key, "wrong type: expected a string, got %s", kind_of(n));
	/* "\0" in a double-quoted string would cut the value short where C reads it */
	if (strlen(text_of(n)) != n->data.scalar.length)
		return fail(p, n, key, "bad value: contains a NUL byte");
	*out = text_of(n);
	return 0;
}

static int copy_string(cfg_parse_t *p, yaml_node_t *n, const char *key, char *dst, size_t dstlen)
{
	const char *s;

	if (get_string(p, n, key, &s) < 0)
		return -1;
	if (strlen(s) >= dstlen)
		return fail(p, n, key, "bad value: longer than %zu bytes", dstlen - 1);
	memcpy(dst, s, strlen(s) + 1);
	return 0;
}

/*
 * Digits with an optional minus, nothing else: no 0x, no 1e3, no 1_000, and
 * no leading zero, which YAML 1.1 readers take for octal. Values too large
 * for any range saturate rather than overflow.
 */
static int parse_decimal(const char *s, long long *v)
{
	int neg = (*s == '-');
	const char *d = s + neg;
	long long acc = 0;

	if (*d == '\0' || (d[0] == '0' && d[1] != '\0'))
		return -1;
	for (; *d; d++) {
		if (*d < '0' || *d > '9')
			return -1;
		if (acc < 1000000000000LL)
			acc = acc * 10 + (*d - '0');
	}
	*v = neg ? -acc : acc;
	return 0;
}

static int get_int(cfg_parse_t *p, yaml_node_t *n, const char *key, long long min, long long max,
                   long long *out)
{
	char buf[48];
	long long v;

	if (n->type != YAML_SCALAR_NODE || is_null(n) || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return fail(p, n, key, "wrong type: expected an integer, got %s", kind_of(n));
	if (parse_decimal(text_of(n), &v) < 0)
		return fail(p, n, key, "bad value: \"%s\" is not a decimal integer",
		            shown(text_of(n), buf, sizeof buf));
	if (v < min || v > max)
		return fail(p, n, key, "bad value: %s is out of range %lld..%lld",
		            shown(text_of(n), buf, sizeof buf), min, max);
	*out = v;
	return 0;
}

/* An integer key stored as uint32_t; min and max must lie within its range. */
static int set_u32(cfg_parse_t *p, yaml_node_t *n, const char *key, long long min, long long max,
                   uint32_t *dst)
{
	long long v;

	if (get_int(p, n, key, min, max, &v) < 0)
		return -1;
	*dst = (uint32_t)v;
	return 0;
}

/* ---- addresses ---- */

static uint16_t port_of(const struct sockaddr_storage *ss)
{
	tg_ip_t ip;
	uint16_t port = 0;

	if (tg_ip_from_sockaddr((const struct sockaddr *)ss, &ip, &port) < 0)
		return 0;
	return port;
}

/* 0.0.0.0 or ::, which a socket may bind but a peer can never send to. */
static int ip_unspecified(const tg_ip_t *ip)
{
	return ip->hi == 0 && (ip->lo == 0 || ip->lo == 0x0000ffff00000000ULL);
}

static int sockaddr_unspecified(const struct sockaddr_storage *ss)
{
	tg_ip_t ip;
	uint16_t port;

	return tg_ip_from_sockaddr((const struct sockaddr *)ss, &ip, &port) == 0 && ip_unspecified(&ip);
}

static int get_sockaddr(cfg_parse_t *p, yaml_node_t *n, const char *key, uint16_t default_port,
                        struct sockaddr_storage *ss, socklen_t *len)
{
	const char *s, *why = NULL;
	char buf[48];

	if (get_string(p, n, key, &s) < 0)
		return -1;
	memset(ss, 0, sizeof *ss);
	if (tg_sockaddr_parse(s, default_port, ss, len, &why) < 0)
		return fail(p, n, key, "bad value: \"%s\": %s", shown(s, buf, sizeof buf),
		            why ? why : "not an ip:port address");
	if (port_of(ss) == 0)
		return fail(p, n, key, "bad value: \"%s\": needs a port from 1 to 65535",
		            shown(s, buf, sizeof buf));
	return 0;
}

static int hostname_ok(const char *s, size_t len)
{
	if (len == 0 || len > 253 || s[0] == '-' || s[0] == '.')
		return 0;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || s[i] == '-' || s[i] == '.'))
			return 0;
	return 1;
}

/*
 * Splits "host[:port]" or "[v6][:port]" and checks the host is something a
 * SIP peer can parse in a Via. Returns the problem, or NULL.
 */
static const char *split_hostport(const char *s, char *host, size_t hostlen, long long *port, int *v6)
{
	const char *h = s, *rest;
	size_t hlen;
	tg_ip_t ip;

	*v6 = (s[0] == '[');
	if (*v6) {
		h = s + 1;
		rest = strchr(h, ']');
		if (!rest)
			return "missing ']'";
		hlen = (size_t)(rest - h);
		rest++;
	} else {
		rest = strchr(s, ':');
		if (rest && strchr(rest + 1, ':'))
			return "an IPv6 address needs brackets: [v6]:port";
		hlen = rest ? (size_t)(rest - s) : strlen(s);
		rest = rest ? rest : s + hlen;
	}
	if (hlen >= hostlen || !(*v6 ? hlen > 0 : hostname_ok(h, hlen)))
		return "not a hostname or address";
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	if (*v6 && tg_ip_parse(host, &ip) < 0)
		return "not an IPv6 address";
	if (tg_ip_parse(host, &ip) == 0 && ip_unspecified(&ip))
		return "peers cannot send to the unspecified address";
	if (*rest == ':' && (parse_decimal(rest + 1, port) < 0 || *port < 1 || *port > 65535))
		return "needs a port from 1 to 65535";
	if (*rest != ':' && *rest != '\0')
		return "unexpected text after the host";
	return NULL;
}

/*
 * advertise goes verbatim into our Via and Record-Route. A missing port
 * takes the listener's, so the stored form always carries one.
 */
static int get_advertise(cfg_parse_t *p, yaml_node_t *n, const char *key, uint16_t listen_port, char *out)
{
	char host[TG_SOCKADDR_STRLEN], buf[48];
	long long port = listen_port;
	const char *s, *why;
	int v6, len;

	if (get_string(p, n, key, &s) < 0)
		return -1;
	why = split_hostport(s, host, sizeof host, &port, &v6);
	if (why)
		return fail(p, n, key, "bad value: \"%s\": %s", shown(s, buf, sizeof buf), why);
	len = snprintf(out, TG_SOCKADDR_STRLEN, v6 ? "[%s]:%lld" : "%s:%lld", host, port);
	if (len >= TG_SOCKADDR_STRLEN)
		return fail(p, n, key, "bad value: longer than %d bytes", TG_SOCKADDR_STRLEN - 1);
	return 0;
}

/* ---- mappings ---- */

static int find_field(const cfg_field_t *fields, int nfields, const char *name)
{
	for (int i = 0; i < nfields; i++)
		if (strcmp(fields[i].name, name) == 0)
			return i;
	return -1;
}

/*
 * Checks a mapping against the keys it may hold and hands back each value
 * (NULL where absent). Unknown and repeated keys are refused here: a typo
 * must never leave a default silently in force.
 */
static int map_fields(cfg_parse_t *p, yaml_node_t *map, const char *prefix, const cfg_field_t *fields,
                      int nfields, yaml_node_t **found)
{
	yaml_node_t *keys[CFG_MAP_MAX] = {NULL};
	char key[CFG_KEY_MAX];
	yaml_node_pair_t *pair;
	int i;

	assert(nfields <= CFG_MAP_MAX);
	if (map->type != YAML_MAPPING_NODE)
		return fail(p, map, prefix[0] ? prefix : "(top level)",
		            "wrong type: expected a mapping, got %s", kind_of(map));
	for (i = 0; i < nfields; i++)
		found[i] = NULL;
	for (pair = map->data.mapping.pairs.start; pair < map->data.mapping.pairs.top; pair++) {
		yaml_node_t *k = yaml_document_get_node(p->doc, pair->key);

		if (k->type != YAML_SCALAR_NODE)
			return fail(p, k, prefix[0] ? prefix : "(top level)",
			            "wrong type: a key must be a string, got %s", kind_of(k));
		join_key(key, sizeof key, prefix, text_of(k));
		i = find_field(fields, nfields, text_of(k));
		if (i < 0)
			return fail(p, k, key, "unknown key");
		if (keys[i])
			return fail(p, k, key, "duplicate key (first at line %zu)",
			            keys[i]->start_mark.line + 1);
		keys[i] = k;
		found[i] = yaml_document_get_node(p->doc, pair->value);
	}
	return 0;
}

/* map_fields, then each present value through its field's parser. */
static int map_apply(cfg_parse_t *p, yaml_node_t *map, const char *prefix, const cfg_field_t *fields,
                     int nfields, yaml_node_t **found)
{
	char key[CFG_KEY_MAX];

	if (map_fields(p, map, prefix, fields, nfields, found) < 0)
		return -1;
	for (int i = 0; i < nfields; i++) {
		if (!found[i] || !fields[i].parse)
			continue;
		join_key(key, sizeof key, prefix, fields[i].name);
		if (fields[i].parse(p, found[i], key) < 0)
			return -1;
	}
	return 0;
}

#define NFIELDS(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* ---- listen ---- */

static int listen_add(cfg_parse_t *p, yaml_node_t *addr, const char *akey, yaml_node_t *adv, const char *vkey)
{
	tg_config_t *cfg = p->cfg;
	tg_listen_t *l = &cfg->listen[cfg->nlisten];
	char buf[TG_SOCKADDR_STRLEN];

	if (get_sockaddr(p, addr, akey, CFG_SIP_PORT, &l->addr, &l->addrlen) < 0)
		return -1;
	tg_sockaddr_format((const struct sockaddr *)&l->addr, buf, sizeof buf);
	for (int i = 0; i < cfg->nlisten; i++)
		if (tg_sockaddr_equal((const struct sockaddr *)&l->addr,
		                      (const struct sockaddr *)&cfg->listen[i].addr))
			return fail(p, addr, akey, "bad value: %s is already listen[%d]", buf, i);
	if (adv) {
		if (get_advertise(p, adv, vkey, port_of(&l->addr), l->advertise) < 0)
			return -1;
	} else if (sockaddr_unspecified(&l->addr)) {
		return fail(p, addr, akey,
		            "bad value: %s listens on every address; add advertise: with the address peers "
		            "should use",
		            buf);
	} else {
		snprintf(l->advertise, sizeof l->advertise, "%s", buf);
	}
	cfg->nlisten++;
	return 0;
}

static int listen_item(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {{"address", NULL}, {"advertise", NULL}};
	yaml_node_t *found[NFIELDS(fields)];
	char akey[CFG_KEY_MAX], vkey[CFG_KEY_MAX];

	if (n->type == YAML_SCALAR_NODE)
		return listen_add(p, n, key, NULL, NULL);
	if (n->type != YAML_MAPPING_NODE)
		return fail(p, n, key, "wrong type: expected an address or a mapping, got %s", kind_of(n));
	if (map_fields(p, n, key, fields, NFIELDS(fields), found) < 0)
		return -1;
	join_key(akey, sizeof akey, key, "address");
	join_key(vkey, sizeof vkey, key, "advertise");
	if (!found[0])
		return fail(p, n, akey, "required");
	return listen_add(p, found[0], akey, found[1], vkey);
}

static int parse_listen(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	char ikey[CFG_KEY_MAX];
	yaml_node_item_t *it;
	int i = 0;

	p->cfg->nlisten = 0;
	if (n->type == YAML_SCALAR_NODE && !is_null(n))
		return listen_add(p, n, key, NULL, NULL);
	if (n->type != YAML_SEQUENCE_NODE)
		return fail(p, n, key, "wrong type: expected a sequence of addresses, got %s", kind_of(n));
	if (n->data.sequence.items.start == n->data.sequence.items.top)
		return fail(p, n, key, "bad value: at least one listener is needed");
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++, i++) {
		yaml_node_t *item = yaml_document_get_node(p->doc, *it);

		snprintf(ikey, sizeof ikey, "%s[%d]", key, i);
		if (i >= TG_MAX_LISTEN)
			return fail(p, item, ikey, "bad value: at most %d listeners", TG_MAX_LISTEN);
		if (listen_item(p, item, ikey) < 0)
			return -1;
	}
	return 0;
}

/* ---- downstream and trusted sources ---- */

static int parse_downstream(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	tg_config_t *cfg = p->cfg;
	tg_range_t *self = &cfg->trusted[0];
	uint16_t port;

	if (get_sockaddr(p, n, key, CFG_SIP_PORT, &cfg->downstream, &cfg->downstream_len) < 0)
		return -1;
	if (sockaddr_unspecified(&cfg->downstream))
		return fail(p, n, key, "bad value: the unspecified address cannot be sent to");
	/* The softswitch's replies and egress requests come from its own address. */
	tg_ip_from_sockaddr((const struct sockaddr *)&cfg->downstream, &self->first, &port);
	self->last = self->first;
	self->family = cfg->downstream.ss_family;
	if (cfg->ntrusted < 1)
		cfg->ntrusted = 1;
	return 0;
}

static int parse_trusted(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	char ikey[CFG_KEY_MAX], buf[48];
	yaml_node_item_t *it;
	const char *s, *why;
	int i = 0;

	if (n->type != YAML_SEQUENCE_NODE)
		return fail(p, n, key, "wrong type: expected a sequence of addresses, got %s", kind_of(n));
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++, i++) {
		yaml_node_t *item = yaml_document_get_node(p->doc, *it);

		snprintf(ikey, sizeof ikey, "%s[%d]", key, i);
		if (i >= TG_MAX_TRUSTED - 1)
			return fail(p, item, ikey,
			            "bad value: at most %d entries (the downstream takes one more)",
			            TG_MAX_TRUSTED - 1);
		if (get_string(p, item, ikey, &s) < 0)
			return -1;
		why = NULL;
		if (tg_range_parse(s, &p->cfg->trusted[i + 1], &why) < 0)
			return fail(p, item, ikey, "bad value: \"%s\": %s", shown(s, buf, sizeof buf),
			            why ? why : "not an address or range");
	}
	/* slot 0 is the downstream's, filled by parse_downstream */
	p->cfg->ntrusted = i + 1;
	return 0;
}

/* ---- plain values ---- */

static int parse_workers(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	long long v;

	if (get_int(p, n, key, 1, TG_MAX_WORKERS, &v) < 0)
		return -1;
	p->cfg->workers = (int)v;
	return 0;
}

static int parse_database(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return copy_string(p, n, key, p->cfg->database, sizeof p->cfg->database);
}

static int parse_metrics(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	tg_config_t *cfg = p->cfg;
	const char *s;

	if (get_string(p, n, key, &s) < 0)
		return -1;
	if (strcmp(s, "off") == 0 || s[0] == '\0') {
		memset(&cfg->metrics, 0, sizeof cfg->metrics);
		cfg->metrics_len = 0;
		return 0;
	}
	return get_sockaddr(p, n, key, 0, &cfg->metrics, &cfg->metrics_len);
}

static int parse_reject(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	const char *s;
	char buf[48];

	if (get_string(p, n, key, &s) < 0)
		return -1;
	if (strcmp(s, "reply") == 0)
		p->cfg->reject = TG_REJECT_REPLY;
	else if (strcmp(s, "drop") == 0)
		p->cfg->reject = TG_REJECT_DROP;
	else
		return fail(p, n, key, "bad value: \"%s\" is not one of reply, drop",
		            shown(s, buf, sizeof buf));
	return 0;
}

/*
 * The worker strips any copy of the account header a sender put in, so a
 * name the SIP path itself relies on would be stripped from every request.
 * Single letters are compact forms (t is To, v is Via, ...), refused alike.
 */
static int header_reserved(const char *name)
{
	static const char *const reserved[] = {
	        "Via",
	        "From",
	        "To",
	        "Call-ID",
	        "CSeq",
	        "Route",
	        "Record-Route",
	        "Contact",
	        "Max-Forwards",
	        "Content-Length",
	        "Content-Type",
	        "Authorization",
	        "Proxy-Authorization",
	        "Path",
	};

	if (name[1] == '\0')
		return 1;
	for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
		if (strcasecmp(name, reserved[i]) == 0)
			return 1;
	return 0;
}

/* RFC 3261 token: the characters a header name may hold. */
static int sip_token(const char *s)
{
	if (!*s)
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
		      strchr("-.!%*_+`'~", *s)))
			return 0;
	return 1;
}

static int parse_account_header(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	char *dst = p->cfg->account_header, buf[48];

	if (copy_string(p, n, key, dst, sizeof p->cfg->account_header) < 0)
		return -1;
	if (!sip_token(dst))
		return fail(p, n, key, "bad value: \"%s\" is not a SIP header name (RFC 3261 token)",
		            shown(dst, buf, sizeof buf));
	if (header_reserved(dst))
		return fail(p, n, key, "bad value: %s is a header the SIP path needs", dst);
	return 0;
}

static int parse_server_name(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	const char *s;

	if (copy_string(p, n, key, p->cfg->server_name, sizeof p->cfg->server_name) < 0)
		return -1;
	s = p->cfg->server_name;
	if (!*s)
		return fail(p, n, key, "bad value: empty");
	/* it goes into a header: no CR, LF or other control that could split it */
	for (; *s; s++)
		if (*s < 0x20 || *s > 0x7e)
			return fail(p, n, key, "bad value: only printable ASCII is allowed");
	return 0;
}

/* ---- log ---- */

static int parse_log_level(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	const char *s;
	char buf[48];
	int level;

	if (get_string(p, n, key, &s) < 0)
		return -1;
	level = tg_log_level_parse(s);
	/* alert is for the process's own last words; as a threshold it would hide errors */
	if (level < TG_LOG_DEBUG || level > TG_LOG_ERROR)
		return fail(p, n, key, "bad value: \"%s\" is not one of debug, info, notice, warn, error",
		            shown(s, buf, sizeof buf));
	p->cfg->log_level = level;
	return 0;
}

static int parse_log_file(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	if (copy_string(p, n, key, p->cfg->log_file, sizeof p->cfg->log_file) < 0)
		return -1;
	if (!p->cfg->log_file[0])
		return fail(p, n, key, "bad value: empty; \"-\" means stdout");
	return 0;
}

static int parse_log(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {{"level", parse_log_level}, {"file", parse_log_file}};
	yaml_node_t *found[NFIELDS(fields)];

	return map_apply(p, n, key, fields, NFIELDS(fields), found);
}

/* ---- capacity ---- */

static int parse_cap_accounts(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 10000000, &p->cfg->cap_accounts);
}

static int parse_cap_ip_rules(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 50000000, &p->cfg->cap_ip_rules);
}

static int parse_cap_sip_users(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 10000000, &p->cfg->cap_sip_users);
}

/* Hash tables in shared memory: a power of two, at least one probe window. */
static int set_pow2(cfg_parse_t *p, yaml_node_t *n, const char *key, uint32_t *dst)
{
	uint32_t v;

	if (set_u32(p, n, key, 16, 1U << 26, &v) < 0)
		return -1;
	if (v & (v - 1))
		return fail(p, n, key, "bad value: %u is not a power of two", v);
	*dst = v;
	return 0;
}

static int parse_cap_nonces(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_pow2(p, n, key, &p->cfg->cap_nonces);
}

static int parse_cap_failures(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_pow2(p, n, key, &p->cfg->cap_failures);
}

/* The dialog table's slots are the limit table's holders: at most 2^23 (shm/limits.h). */
static int parse_cap_dialogs(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	if (set_pow2(p, n, key, &p->cfg->cap_dialogs) < 0)
		return -1;
	if (p->cfg->cap_dialogs > (1u << 23))
		return fail(p, n, key, "bad value: %u is above 8388608", p->cfg->cap_dialogs);
	return 0;
}

static int parse_cap_limit_keys(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	if (set_pow2(p, n, key, &p->cfg->cap_limit_keys) < 0)
		return -1;
	if (p->cfg->cap_limit_keys > (1u << 18))
		return fail(p, n, key, "bad value: %u is above 262144", p->cfg->cap_limit_keys);
	return 0;
}

static int parse_capacity(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {
	        {"accounts", parse_cap_accounts},        {"ip_rules", parse_cap_ip_rules},
	        {"sip_users", parse_cap_sip_users},      {"nonces", parse_cap_nonces},
	        {"failure_sources", parse_cap_failures}, {"dialogs", parse_cap_dialogs},
	        {"limit_keys", parse_cap_limit_keys},
	};
	yaml_node_t *found[NFIELDS(fields)];

	return map_apply(p, n, key, fields, NFIELDS(fields), found);
}

/* ---- calls ---- */

static int parse_early_timeout_s(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 3600, &p->cfg->early_timeout_s);
}

static int parse_max_duration_s(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 0, 604800, &p->cfg->max_duration_s);
}

static int parse_linger_s(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 3600, &p->cfg->linger_s);
}

static int parse_retry_after_s(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 0, 86400, &p->cfg->retry_after_s);
}

static int parse_calls(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {
	        {"early_timeout_s", parse_early_timeout_s},
	        {"max_duration_s", parse_max_duration_s},
	        {"linger_s", parse_linger_s},
	        {"retry_after_s", parse_retry_after_s},
	};
	yaml_node_t *found[NFIELDS(fields)];

	return map_apply(p, n, key, fields, NFIELDS(fields), found);
}

/* ---- refusals ---- */

static tg_refusal_t *refusal_target; /* the kind being parsed: map_apply's field callbacks take no argument */

static int parse_refusal_code(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	long long v;

	if (get_int(p, n, key, 400, 699, &v) < 0)
		return -1;
	refusal_target->code = (int)v;
	return 0;
}

static int parse_refusal_reason(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	const char *s;

	if (copy_string(p, n, key, refusal_target->reason, sizeof refusal_target->reason) < 0)
		return -1;
	if (!refusal_target->reason[0])
		return fail(p, n, key, "bad value: empty");
	for (s = refusal_target->reason; *s; s++)
		if (*s < 0x20 || *s > 0x7e)
			return fail(p, n, key, "bad value: only printable ASCII is allowed");
	return 0;
}

static int parse_refusal(cfg_parse_t *p, yaml_node_t *n, const char *key, tg_refusal_t *r)
{
	static const cfg_field_t fields[] = {{"code", parse_refusal_code}, {"reason", parse_refusal_reason}};
	yaml_node_t *found[NFIELDS(fields)];

	refusal_target = r;
	return map_apply(p, n, key, fields, NFIELDS(fields), found);
}

static int parse_refuse_channels(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return parse_refusal(p, n, key, &p->cfg->refuse_channels);
}

static int parse_refuse_cps(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return parse_refusal(p, n, key, &p->cfg->refuse_cps);
}

static int parse_refuse_destination(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return parse_refusal(p, n, key, &p->cfg->refuse_destination);
}

static int parse_refuse_dialogs_full(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return parse_refusal(p, n, key, &p->cfg->refuse_dialogs_full);
}

static int parse_refusals(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {
	        {"channels", parse_refuse_channels},
	        {"cps", parse_refuse_cps},
	        {"destination", parse_refuse_destination},
	        {"dialog_table_full", parse_refuse_dialogs_full},
	};
	yaml_node_t *found[NFIELDS(fields)];

	return map_apply(p, n, key, fields, NFIELDS(fields), found);
}

/* ---- digest ---- */

static int parse_digest_realm(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	const char *s;

	if (copy_string(p, n, key, p->cfg->digest_realm, sizeof p->cfg->digest_realm) < 0)
		return -1;
	if (!p->cfg->digest_realm[0])
		return fail(p, n, key, "bad value: empty; leave out the digest section to turn digest off");
	/* it is written inside a quoted-string of our challenges */
	for (s = p->cfg->digest_realm; *s; s++)
		if (*s < 0x20 || *s > 0x7e || *s == '"' || *s == '\\')
			return fail(p, n, key, "bad value: only printable ASCII without '\"' or '\\'");
	return 0;
}

static int parse_nonce_ttl_s(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 86400, &p->cfg->nonce_ttl_s);
}

static int parse_user_header(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	char *dst = p->cfg->user_header, buf[48];

	if (copy_string(p, n, key, dst, sizeof p->cfg->user_header) < 0)
		return -1;
	if (!sip_token(dst))
		return fail(p, n, key, "bad value: \"%s\" is not a SIP header name (RFC 3261 token)",
		            shown(dst, buf, sizeof buf));
	if (header_reserved(dst))
		return fail(p, n, key, "bad value: %s is a header the SIP path needs", dst);
	return 0;
}

/*
 * The nonce secret, shared by the nodes that should accept each other's
 * nonces: the file's first 32 bytes or more, hashed down to 32. Without a
 * file every start makes a random one (a restart then answers the nonces
 * in flight with stale=true, which clients follow without asking anyone).
 */
static int parse_digest_secret_file(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	tg_config_t *cfg = p->cfg;
	unsigned char buf[4096];
	size_t len;
	FILE *f;

	if (copy_string(p, n, key, cfg->digest_secret_file, sizeof cfg->digest_secret_file) < 0)
		return -1;
	if (!cfg->digest_secret_file[0]) {
		cfg->digest_secret_set = 0;
		return 0;
	}
	f = fopen(cfg->digest_secret_file, "rb");
	if (f == NULL)
		return fail(p, n, key, "cannot read %s: %s", cfg->digest_secret_file, strerror(errno));
	len = fread(buf, 1, sizeof buf, f);
	fclose(f);
	if (len < 32)
		return fail(p, n, key, "bad value: %s holds %zu bytes, at least 32 are needed",
		            cfg->digest_secret_file, len);
	tg_sha256(buf, len, cfg->digest_secret);
	explicit_bzero(buf, sizeof buf);
	cfg->digest_secret_set = 1;
	return 0;
}

/*
 * Offered in the order given. SHA-256 first is RFC 8760's advice, but
 * some clients answer only the first challenge and know only MD5 (older
 * pjsip, sipp 3.6), so the operator decides; one algorithm alone is
 * allowed too.
 */
static int parse_digest_algorithms(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	char ikey[CFG_KEY_MAX], buf[48];
	yaml_node_item_t *it;
	tg_config_t *cfg = p->cfg;
	const char *s;
	int i = 0;

	if (n->type != YAML_SEQUENCE_NODE)
		return fail(p, n, key, "wrong type: expected a sequence like [SHA-256, MD5], got %s",
		            kind_of(n));
	cfg->ndigest_algs = 0;
	for (it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++, i++) {
		yaml_node_t *item = yaml_document_get_node(p->doc, *it);
		uint8_t alg;

		snprintf(ikey, sizeof ikey, "%s[%d]", key, i);
		if (get_string(p, item, ikey, &s) < 0)
			return -1;
		if (strcasecmp(s, "MD5") == 0)
			alg = 1;
		else if (strcasecmp(s, "SHA-256") == 0)
			alg = 2;
		else
			return fail(p, item, ikey, "bad value: \"%s\" is not MD5 or SHA-256",
			            shown(s, buf, sizeof buf));
		if (cfg->ndigest_algs == 1 && cfg->digest_algs[0] == alg)
			return fail(p, item, ikey, "bad value: %s given twice", s);
		if (cfg->ndigest_algs == 2)
			return fail(p, item, ikey, "bad value: at most MD5 and SHA-256");
		cfg->digest_algs[cfg->ndigest_algs++] = alg;
	}
	if (cfg->ndigest_algs == 0)
		return fail(p, n, key, "bad value: empty; give MD5, SHA-256 or both");
	return 0;
}

static int parse_digest(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {
	        {"realm", parse_digest_realm},           {"nonce_ttl_s", parse_nonce_ttl_s},
	        {"user_header", parse_user_header},      {"secret_file", parse_digest_secret_file},
	        {"algorithms", parse_digest_algorithms},
	};
	yaml_node_t *found[NFIELDS(fields)];

	if (map_apply(p, n, key, fields, NFIELDS(fields), found) < 0)
		return -1;
	if (found[0] == NULL)
		return fail(p, n, key, "realm: required (the realm the HA1 hashes were computed with)");
	return 0;
}

/* ---- db_retry ---- */

static int parse_retry_min(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 10, 60000, &p->cfg->db_retry_min_ms);
}

static int parse_retry_max(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 10, 600000, &p->cfg->db_retry_max_ms);
}

static int parse_db_retry(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {{"min_ms", parse_retry_min}, {"max_ms", parse_retry_max}};
	yaml_node_t *found[NFIELDS(fields)];
	tg_config_t *cfg = p->cfg;
	char k[CFG_KEY_MAX];

	if (map_apply(p, n, key, fields, NFIELDS(fields), found) < 0)
		return -1;
	if (cfg->db_retry_max_ms >= cfg->db_retry_min_ms)
		return 0;
	/* blame the key the operator wrote; with both written, the ceiling */
	join_key(k, sizeof k, key, found[1] ? "max_ms" : "min_ms");
	return fail(p, found[1] ? found[1] : found[0], k, "bad value: max_ms (%u) is below min_ms (%u)",
	            cfg->db_retry_max_ms, cfg->db_retry_min_ms);
}

/* ---- snapshot_file ---- */

/* The loader writes FILE.tmp.PID first: leave room for that suffix. */
#define CFG_TMP_SUFFIX_MAX 32

static int parse_snapshot_file(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	char *dst = p->cfg->snapshot_file;
	size_t len;

	if (copy_string(p, n, key, dst, sizeof p->cfg->snapshot_file - CFG_TMP_SUFFIX_MAX) < 0)
		return -1;
	len = strlen(dst);
	if (len > 0 && dst[len - 1] == '/')
		return fail(p, n, key, "bad value: names a directory; give a file path, or \"\" for none");
	return 0;
}

/* ---- provisioning ---- */

static int parse_coalesce_ms(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 0, 10000, &p->cfg->coalesce_ms);
}

static int parse_max_delay_ms(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 60000, &p->cfg->max_delay_ms);
}

static int parse_save_interval_ms(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 100, 86400000, &p->cfg->save_interval_ms);
}

static int parse_dns_refresh_s(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return set_u32(p, n, key, 1, 86400, &p->cfg->dns_refresh_s);
}

static int parse_hosts_file(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	return copy_string(p, n, key, p->cfg->hosts_file, sizeof p->cfg->hosts_file);
}

static int parse_provisioning(cfg_parse_t *p, yaml_node_t *n, const char *key)
{
	static const cfg_field_t fields[] = {
	        {"coalesce_ms", parse_coalesce_ms},
	        {"max_delay_ms", parse_max_delay_ms},
	        {"save_interval_ms", parse_save_interval_ms},
	        {"dns_refresh_s", parse_dns_refresh_s},
	        {"hosts_file", parse_hosts_file},
	};
	yaml_node_t *found[NFIELDS(fields)];
	tg_config_t *cfg = p->cfg;
	char k[CFG_KEY_MAX];

	if (map_apply(p, n, key, fields, NFIELDS(fields), found) < 0)
		return -1;
	if (cfg->max_delay_ms >= cfg->coalesce_ms)
		return 0;
	/* as for db_retry: blame the key the operator wrote; with both written, the ceiling */
	join_key(k, sizeof k, key, found[1] ? "max_delay_ms" : "coalesce_ms");
	return fail(p, found[1] ? found[1] : found[0], k,
	            "bad value: max_delay_ms (%u) is below coalesce_ms (%u)", cfg->max_delay_ms,
	            cfg->coalesce_ms);
}

/* ---- the document ---- */

/* downstream before trusted: it fills trusted[0]. */
static const cfg_field_t top_fields[] = {
        {"listen", parse_listen},
        {"workers", parse_workers},
        {"downstream", parse_downstream},
        {"trusted", parse_trusted},
        {"database", parse_database},
        {"log", parse_log},
        {"metrics", parse_metrics},
        {"reject", parse_reject},
        {"account_header", parse_account_header},
        {"server_name", parse_server_name},
        {"capacity", parse_capacity},
        {"db_retry", parse_db_retry},
        {"snapshot_file", parse_snapshot_file},
        {"provisioning", parse_provisioning},
        {"digest", parse_digest},
        {"calls", parse_calls},
        {"refusals", parse_refusals},
};

static int parse_root(cfg_parse_t *p, yaml_node_t *root)
{
	yaml_node_t *found[NFIELDS(top_fields)];

	/* an empty file, or one holding only comments, is an empty mapping */
	if (root && !is_null(root)) {
		if (map_apply(p, root, "", top_fields, NFIELDS(top_fields), found) < 0)
			return -1;
	}
	if (p->cfg->downstream_len == 0)
		return fail(p, root, "downstream", "required");
	return 0;
}

static int yaml_fail(cfg_parse_t *p, const yaml_parser_t *parser, const char *text)
{
	size_t line = parser->problem_mark.line + 1;
	char ctx[128] = "";

	if (parser->error == YAML_MEMORY_ERROR) {
		snprintf(p->err, p->errlen, "%s: out of memory", p->file);
		return -1;
	}
	/* the reader reports a byte offset (bad UTF-8, control bytes), not a mark */
	if (parser->error == YAML_READER_ERROR) {
		line = 1;
		for (size_t i = 0; i < parser->problem_offset && text[i]; i++)
			line += text[i] == '\n';
	}
	if (parser->context)
		snprintf(ctx, sizeof ctx, " (%s at line %zu)", parser->context,
		         parser->context_mark.line + 1);
	snprintf(p->err, p->errlen, "%s:%zu: syntax error: %s%s", p->file, line,
	         parser->problem ? parser->problem : "malformed YAML", ctx);
	return -1;
}

/* The whole file in memory, NUL-terminated, so a reader error's byte offset maps to a line. */
static int read_file(cfg_parse_t *p, char **out, size_t *outlen)
{
	size_t len = 0, cap = 0;
	char *buf = NULL, *grown;
	ssize_t r;
	int fd, saved;

	if ((fd = open(p->file, O_RDONLY | O_CLOEXEC)) < 0)
		goto fail;
	for (;;) {
		if (len + 1 >= cap) {
			if (len > CFG_MAX_BYTES) {
				close(fd);
				free(buf);
				snprintf(p->err, p->errlen, "%s: larger than %d bytes", p->file,
				         CFG_MAX_BYTES);
				return -1;
			}
			cap = cap ? cap * 2 : 4096;
			if (!(grown = realloc(buf, cap)))
				goto fail_fd;
			buf = grown;
		}
		r = read(fd, buf + len, cap - len - 1);
		if (r == 0)
			break;
		if (r < 0 && errno != EINTR)
			goto fail_fd;
		len += r > 0 ? (size_t)r : 0;
	}
	close(fd);
	buf[len] = '\0';
	*out = buf;
	*outlen = len;
	return 0;

fail_fd:
	saved = errno;
	close(fd);
	free(buf);
	errno = saved;
fail:
	snprintf(p->err, p->errlen, "%s: %s", p->file, strerror(errno));
	return -1;
}

/* One document, fully composed; a second one would be ignored by everyone but us. */
static int parse_text(cfg_parse_t *p, const char *text, size_t len)
{
	yaml_parser_t parser;
	yaml_document_t doc, extra;
	yaml_node_t *second;
	int rc = -1;

	if (!yaml_parser_initialize(&parser)) {
		snprintf(p->err, p->errlen, "%s: out of memory", p->file);
		return -1;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
	if (!yaml_parser_load(&parser, &doc)) {
		yaml_fail(p, &parser, text);
		goto out_parser;
	}
	if (!yaml_parser_load(&parser, &extra)) {
		yaml_fail(p, &parser, text);
		goto out_doc;
	}
	second = yaml_document_get_root_node(&extra);
	/* a stray trailing "---" holds nothing and is harmless */
	if (second && !is_null(second)) {
		/* name the "---" that started it, not its first key */
		snprintf(p->err, p->errlen, "%s:%zu: (top level): a second YAML document is not allowed",
		         p->file, extra.start_mark.line + 1);
	} else {
		p->doc = &doc;
		rc = parse_root(p, yaml_document_get_root_node(&doc));
	}
	yaml_document_delete(&extra);
out_doc:
	yaml_document_delete(&doc);
out_parser:
	yaml_parser_delete(&parser);
	return rc;
}

/* ---- public ---- */

void tg_config_defaults(tg_config_t *cfg)
{
	struct sockaddr_in *sin;

	memset(cfg, 0, sizeof *cfg);
	sin = (struct sockaddr_in *)&cfg->listen[0].addr;
	sin->sin_family = AF_INET;
	sin->sin_port = htons(CFG_SIP_PORT);
	sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cfg->listen[0].addrlen = sizeof *sin;
	tg_sockaddr_format((const struct sockaddr *)sin, cfg->listen[0].advertise,
	                   sizeof cfg->listen[0].advertise);
	cfg->nlisten = 1;
	cfg->workers = 2;
	/* downstream has no default: it is required, and trusted[0] comes with it */
	snprintf(cfg->database, sizeof cfg->database, "dbname=tollgate");
	cfg->log_level = TG_LOG_INFO;
	snprintf(cfg->log_file, sizeof cfg->log_file, "-");
	cfg->reject = TG_REJECT_REPLY;
	snprintf(cfg->account_header, sizeof cfg->account_header, "X-Tollgate-Account");
	snprintf(cfg->server_name, sizeof cfg->server_name, "tollgate");
	cfg->cap_accounts = 10000;
	cfg->cap_ip_rules = 100000;
	cfg->cap_sip_users = 10000;
	cfg->cap_nonces = 65536;
	cfg->cap_failures = 65536;
	cfg->cap_dialogs = 65536;
	cfg->cap_limit_keys = 65536;
	cfg->early_timeout_s = 180; /* RFC 3261 Timer C (more than 3 minutes), restarted by every 1xx */
	cfg->max_duration_s = 14400;
	cfg->linger_s = 32;
	cfg->retry_after_s = 5;
	cfg->refuse_channels = (tg_refusal_t){503, "Service Unavailable"};
	cfg->refuse_cps = (tg_refusal_t){503, "Service Unavailable"};
	cfg->refuse_destination = (tg_refusal_t){403, "Forbidden"};
	cfg->refuse_dialogs_full = (tg_refusal_t){503, "Service Unavailable"};
	cfg->nonce_ttl_s = 300;
	cfg->digest_algs[0] = 2; /* SHA-256, then MD5: RFC 8760 */
	cfg->digest_algs[1] = 1;
	cfg->ndigest_algs = 2;
	snprintf(cfg->user_header, sizeof cfg->user_header, "X-Tollgate-User");
	cfg->db_retry_min_ms = 250;
	cfg->db_retry_max_ms = 10000;
	/* snapshot_file stays "": writing files is the operator's choice */
	cfg->coalesce_ms = 5;
	cfg->max_delay_ms = 50;
	cfg->save_interval_ms = 2000;
	cfg->dns_refresh_s = 300;
	snprintf(cfg->hosts_file, sizeof cfg->hosts_file, "/etc/hosts");
}

int tg_config_load(const char *path, tg_config_t *cfg, char *err, size_t errlen)
{
	cfg_parse_t p = {.file = path, .err = err, .errlen = errlen};
	tg_config_t *next;
	char *text;
	size_t len;
	int rc;

	if (errlen > 0)
		err[0] = '\0';
	if (read_file(&p, &text, &len) < 0)
		return -1;
	/* parsed aside, so a refused reload leaves the caller's config whole */
	if (!(next = malloc(sizeof *next))) {
		free(text);
		snprintf(err, errlen, "%s: out of memory", path);
		return -1;
	}
	tg_config_defaults(next);
	p.cfg = next;
	rc = parse_text(&p, text, len);
	free(text);
	if (rc == 0) {
		if (!realpath(path, next->path))
			snprintf(next->path, sizeof next->path, "%s", path);
		*cfg = *next;
	}
	free(next);
	return rc;
}

static int listen_differs(const tg_config_t *a, const tg_config_t *b)
{
	if (a->nlisten != b->nlisten)
		return 1;
	for (int i = 0; i < a->nlisten; i++)
		if (!tg_sockaddr_equal((const struct sockaddr *)&a->listen[i].addr,
		                       (const struct sockaddr *)&b->listen[i].addr) ||
		    strcmp(a->listen[i].advertise, b->listen[i].advertise) != 0)
			return 1;
	return 0;
}

static int metrics_differs(const tg_config_t *a, const tg_config_t *b)
{
	if (a->metrics_len == 0 || b->metrics_len == 0)
		return a->metrics_len != b->metrics_len;
	return !tg_sockaddr_equal((const struct sockaddr *)&a->metrics, (const struct sockaddr *)&b->metrics);
}

void tg_config_restart_only_diff(const tg_config_t *a, const tg_config_t *b, char *out, size_t outlen)
{
	const char *names[5];
	size_t n = 0, used = 0;

	if (listen_differs(a, b))
		names[n++] = "listen";
	if (a->workers != b->workers)
		names[n++] = "workers";
	if (a->cap_accounts != b->cap_accounts || a->cap_ip_rules != b->cap_ip_rules ||
	    a->cap_sip_users != b->cap_sip_users || a->cap_nonces != b->cap_nonces ||
	    a->cap_failures != b->cap_failures || a->cap_dialogs != b->cap_dialogs ||
	    a->cap_limit_keys != b->cap_limit_keys)
		names[n++] = "capacity";
	if (metrics_differs(a, b))
		names[n++] = "metrics";
	/*
	 * A nonce is fresh for the ttl in force when it is checked, and its
	 * replay-table entry lives as long: a longer ttl after a reload would
	 * make nonces valid again whose entries are gone, and replays pass.
	 */
	if (a->nonce_ttl_s != b->nonce_ttl_s)
		names[n++] = "digest.nonce_ttl_s";
	if (outlen == 0)
		return;
	out[0] = '\0';
	for (size_t i = 0; i < n && used < outlen; i++) {
		int w = snprintf(out + used, outlen - used, "%s%s", i ? "," : "", names[i]);

		used += w > 0 ? (size_t)w : 0;
	}
}
